/*
 * A process family exercising the process calls: N children with distinct
 * exit codes reaped with wait(-1) in any order, WNOHANG before they end,
 * ECHILD when none is left, a child killed by a signal (SIGKILL and
 * SIGTERM from the parent), kill(pid, 0) to test for life, and an orphan
 * that pid 1 adopts.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void
nap(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&t, NULL);
}

int
main(void)
{
	enum { N = 4 };
	int seen = 0, go[2];

	pipe(go);
	for (int i = 0; i < N; i++) {
		pid_t c = fork();
		if (c == 0) {           /* wait for the go: EOF on the pipe */
			char b;
			close(go[1]);
			read(go[0], &b, 1);
			nap(20 * i);
			_exit(10 + i);
		}
	}
	close(go[0]);
	int st;
	printf("WNOHANG before any ends: %d\n", (int)waitpid(-1, &st, WNOHANG));
	close(go[1]);
	for (int i = 0; i < N; i++) {
		pid_t w = wait(&st);
		if (w > 0 && WIFEXITED(st))
			seen |= 1 << (WEXITSTATUS(st) - 10);
	}
	printf("all %d codes seen: %d\n", N, seen == (1 << N) - 1);
	errno = 0;
	printf("wait with no children: %d %s\n", (int)wait(&st), errno == ECHILD ? "ECHILD" : strerror(errno));

	pid_t sleeper = fork();
	if (sleeper == 0) {
		for (;;)
			nap(1000);
	}
	printf("kill(pid, 0) of a live child: %d\n", kill(sleeper, 0));
	kill(sleeper, SIGKILL);
	waitpid(sleeper, &st, 0);
	printf("SIGKILL: signaled %d sig %d\n", WIFSIGNALED(st), WTERMSIG(st));

	pid_t spinner = fork();
	if (spinner == 0)
		for (volatile long i = 0;; i++)
			;
	kill(spinner, SIGTERM);
	waitpid(spinner, &st, 0);
	printf("SIGTERM: signaled %d sig %d\n", WIFSIGNALED(st), WTERMSIG(st));

	pid_t ign = fork();
	if (ign == 0) {
		signal(SIGTERM, SIG_IGN);
		printf("ignoring SIGTERM\n");
		fflush(stdout);
		nap(300);
		_exit(5);
	}
	nap(150);
	kill(ign, SIGTERM);
	waitpid(ign, &st, 0);
	printf("ignored SIGTERM: exited %d code %d\n", WIFEXITED(st), WEXITSTATUS(st));

	errno = 0;
	printf("kill of no such pid: %d %s\n", kill(4000, SIGTERM), errno == ESRCH ? "ESRCH" : strerror(errno));

	/* An orphan: the middle process exits, the grandchild reports its new parent. */
	int fds[2];
	pipe(fds);
	pid_t mid = fork();
	if (mid == 0) {
		pid_t g = fork();
		if (g == 0) {
			close(fds[0]);
			while (getppid() != 1)
				nap(10);
			write(fds[1], "adopted by 1\n", 13);
			_exit(0);
		}
		_exit(0);
	}
	close(fds[1]);
	waitpid(mid, &st, 0);
	char buf[64];
	ssize_t n = read(fds[0], buf, sizeof buf);
	printf("orphan says: %.*s", (int)(n > 0 ? n : 0), buf);
	while (wait(&st) > 0)           /* reap the adopted one */
		;
	return 0;
}
