/*
 * Pipe throughput and latency between two processes (under unifork: two
 * VMs).  pipebench tput MIB: the parent writes MIB MiB in 64 KiB writes to
 * a child that reads to EOF; prints MB/s.  pipebench pingpong N: a 1-byte
 * ping-pong over two pipes, N round trips; prints the mean round trip in us.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double
now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	int a[2], b[2], st;
	pipe(a);
	pipe(b);
	if (argc > 2 && !strcmp(argv[1], "tput")) {
		long total = atol(argv[2]) << 20;
		static char buf[65536];
		if (fork() == 0) {
			close(a[1]);
			long n = 0;
			ssize_t r;
			while ((r = read(a[0], buf, sizeof buf)) > 0)
				n += r;
			write(b[1], "", 1);     /* all here: the parent stops its clock */
			_exit(n == total ? 0 : 1);
		}
		close(a[0]);
		write(a[1], buf, 1);            /* the child is up and reading */
		double t0 = now(), t1;
		for (long n = 1; n < total; n += sizeof buf)
			write(a[1], buf, total - n < (long)sizeof buf ? total - n : (long)sizeof buf);
		close(a[1]);
		read(b[0], buf, 1);
		t1 = now();             /* the parent's clock only: a child's is
		                         * another VM's, maybe on another host */
		waitpid(-1, &st, 0);
		printf("%.1f\n", total / (t1 - t0) / 1e6);
		return WEXITSTATUS(st);
	}
	int n = argc > 2 ? atoi(argv[2]) : 1000;
	char c = 'x';
	if (fork() == 0) {
		close(a[1]);
		close(b[0]);
		while (read(a[0], &c, 1) == 1)
			write(b[1], &c, 1);
		_exit(0);
	}
	close(a[0]);                            /* each side keeps only its ends */
	close(b[1]);
	for (int i = 0; i < 50; i++)            /* warm up */
		write(a[1], &c, 1), read(b[0], &c, 1);
	double t0 = now();
	for (int i = 0; i < n; i++)
		write(a[1], &c, 1), read(b[0], &c, 1);
	double t = now() - t0;
	close(a[1]);
	waitpid(-1, &st, 0);
	printf("%.2f\n", t / n * 1e6);
	return 0;
}
