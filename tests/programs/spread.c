/*
 * Forks N children, one after another, that each hold their VM for MS
 * milliseconds, say who they are and exit with status 10 + i; then waits
 * for them all and prints how each one ended, in fork order.  A fork that
 * fails is reported ("fork 3: Resource temporarily unavailable") and ends
 * the forking.   Usage: spread N MS
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 4;
	long ms = argc > 2 ? atol(argv[2]) : 500;
	pid_t kids[256];
	int made = 0;

	if (n > 256)
		n = 256;
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			printf("fork %d: %s\n", i, strerror(errno));
			break;
		}
		if (pid == 0) {
			struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
			nanosleep(&t, NULL);
			printf("child %d: pid %d, parent %d\n", i, (int)getpid(), (int)getppid());
			fflush(stdout);
			_exit(10 + i);
		}
		kids[made++] = pid;
	}
	int bad = 0;
	for (int i = 0; i < made; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) != kids[i]) {
			printf("wait %d: %s\n", i, strerror(errno));
			bad = 1;
			continue;
		}
		if (WIFEXITED(st))
			printf("child %d exited %d\n", i, WEXITSTATUS(st));
		else
			printf("child %d killed by %d\n", i, WTERMSIG(st));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 10 + i)
			bad = 1;
	}
	printf("%d forked\n", made);
	return bad;
}
