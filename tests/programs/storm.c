/*
 * storm N: fork N children one after another, each computes ~2 ms and
 * exits 0; count how each ended.  The test kills VMs from outside
 * meanwhile: a child may be killed (SIGKILL) or its fork may fail
 * (EAGAIN), nothing else.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void
spin_ms(long ms)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do
		clock_gettime(CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < ms);
}

int
main(int argc, char **argv)
{
	int n = atoi(argv[1]), exited = 0, killed = 0, failed = 0, other = 0, st;
	for (int i = 0; i < n; i++) {
		pid_t c = fork();
		if (c < 0) {
			if (errno == EAGAIN)
				failed++;
			else
				other++;
			continue;
		}
		if (c == 0) {
			spin_ms(2);
			_exit(0);
		}
		if (waitpid(c, &st, 0) != c)
			other++;
		else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			exited++;
		else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
			killed++;
		else
			other++;
	}
	printf("exited %d killed %d eagain %d other %d\n", exited, killed, failed, other);
	return 0;
}
