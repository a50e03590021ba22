/*
 * killkids N: N times, fork a child that would run for ever and kill it
 * at once (SIGKILL), often before it has run; each must be reported
 * killed by SIGKILL.  Then one child that exits, to show the job is well.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	int n = atoi(argv[1]), killed = 0, st;
	for (int i = 0; i < n; i++) {
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0)
			for (;;)
				pause();
		kill(c, SIGKILL);
		if (waitpid(c, &st, 0) == c && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
			killed++;
	}
	pid_t c = fork();
	if (c == 0)
		_exit(5);
	waitpid(c, &st, 0);
	printf("%d of %d killed; then a child exited %d\n", killed, n, WEXITSTATUS(st));
	return 0;
}
