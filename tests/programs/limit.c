/* Forks until fork fails; prints how many children it got and the error. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	int n = 0, go[2], st;
	pipe(go);
	for (;;) {
		pid_t c = fork();
		if (c < 0) {
			printf("fork failed after %d children: %s\n", n,
			    errno == EAGAIN ? "EAGAIN" : strerror(errno));
			break;
		}
		if (c == 0) {
			char b;
			close(go[1]);
			read(go[0], &b, 1);     /* live until the parent is done */
			_exit(0);
		}
		if (++n == 50)
			break;
	}
	close(go[1]);
	while (wait(&st) > 0)
		;
	return 0;
}
