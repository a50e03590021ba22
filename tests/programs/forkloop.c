/*
 * forkloop N EVERY [SIDE_MS]: fork N times, each child exits at once and is
 * waited for; every EVERY forks print how many so far and wait for a byte
 * on stdin (the test looks at the host's resources meanwhile).  With
 * SIDE_MS, first fork a child that holds its VM that long (on a cluster
 * host of two slots, the N children then all run elsewhere), and at the
 * end wait for it and print "side child exited 7".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t
side_child(long ms)
{
	pid_t c = fork();
	if (c == 0) {
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
		nanosleep(&ts, 0);
		_exit(7);
	}
	return c;
}

int
main(int argc, char **argv)
{
	int n = atoi(argv[1]), every = atoi(argv[2]), st;
	pid_t side = argc > 3 ? side_child(atol(argv[3])) : 0;
	if (side < 0) {
		perror("fork");
		return 1;
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
		if (i % every == 0) {
			char b;
			printf("%d\n", i);
			fflush(stdout);
			if (read(0, &b, 1) != 1)
				return 1;
		}
	}
	if (side) {
		if (waitpid(side, &st, 0) != side || !WIFEXITED(st))
			return 1;
		printf("side child exited %d\n", WEXITSTATUS(st));
	}
	return 0;
}
