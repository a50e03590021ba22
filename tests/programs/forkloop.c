/*
 * forkloop N EVERY: fork N times, each child exits at once and is waited
 * for; every EVERY forks print how many so far and wait for a byte on
 * stdin (the test looks at the host's resources meanwhile).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	int n = atoi(argv[1]), every = atoi(argv[2]);
	for (int i = 1; i <= n; i++) {
		int st;
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
	return 0;
}
