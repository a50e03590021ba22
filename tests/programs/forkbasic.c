/* fork, getpid/getppid, exit codes and wait: the smallest family. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	int x = 42;
	printf("parent pid>0: %d\n", getpid() > 0);
	fflush(stdout);
	pid_t c = fork();
	if (c < 0) {
		perror("fork");
		return 1;
	}
	if (c == 0) {
		x++;
		printf("child sees x=%d, ppid is parent: %d\n", x, getppid() > 0);
		fflush(stdout);
		_exit(7);
	}
	int st;
	pid_t w = waitpid(c, &st, 0);
	printf("waited right child: %d, exited: %d, code %d, parent x=%d\n", w == c,
	    WIFEXITED(st), WEXITSTATUS(st), x);
	return 0;
}
