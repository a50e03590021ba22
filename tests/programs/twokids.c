/* Two children one after the other; how each ended. */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	for (int i = 0; i < 2; i++) {
		int st;
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0) {
			printf("child %d ran\n", i);
			fflush(stdout);
			_exit(20 + i);
		}
		waitpid(c, &st, 0);
		if (WIFSIGNALED(st))
			printf("child %d: killed by signal %d\n", i, WTERMSIG(st));
		else
			printf("child %d: exited %d\n", i, WEXITSTATUS(st));
		fflush(stdout);
	}
	return 0;
}
