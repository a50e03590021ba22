/*
 * A child exits, so its VM parks; "ready"; the test kills what it likes;
 * on a byte of stdin, five more children run and say so.
 */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	int st;
	char b;
	pid_t c = fork();
	if (c == 0)
		_exit(0);
	waitpid(c, &st, 0);
	printf("ready\n");
	fflush(stdout);
	if (read(0, &b, 1) != 1)
		return 1;
	for (int i = 0; i < 5; i++) {
		if ((c = fork()) < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0) {
			printf("child %d ran\n", i);
			fflush(stdout);
			_exit(i);
		}
		waitpid(c, &st, 0);
		printf("child %d exited %d\n", i, WEXITSTATUS(st));
		fflush(stdout);
	}
	return 0;
}
