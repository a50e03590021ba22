/*
 * sidefork N MS: fork a child that holds its VM for MS milliseconds, then
 * fork N children one after another, each exiting at once (status i & 0x7f)
 * and waited for, then wait for the first.  Prints "N forked" and the
 * first child's status.  On a cluster whose host has two slots, the N
 * children all run on other hosts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	int n = atoi(argv[1]), st;
	long ms = atol(argv[2]);
	pid_t side = fork();
	if (side == 0) {
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
		nanosleep(&ts, 0);
		_exit(7);
	}
	for (int i = 1; i <= n; i++) {
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0)
			_exit(i & 0x7f);
		if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != (i & 0x7f)) {
			printf("fork %d: wrong status %#x\n", i, st);
			return 1;
		}
	}
	printf("%d forked\n", n);
	if (waitpid(side, &st, 0) != side || !WIFEXITED(st))
		return 1;
	printf("side child exited %d\n", WEXITSTATUS(st));
	return 0;
}
