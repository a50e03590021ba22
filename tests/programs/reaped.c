/*
 * A child that reaps its own child and ends at once: its reaped child is
 * not pid 1's to adopt.  Twenty times, pid 1 forks a child, which forks a
 * grandchild that exits 9, waits for it (once it has surely ended, so that
 * the wait is answered from the control page) and exits 0; pid 1's wait
 * must get that child, status 0, and then find no child at all.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int
main(void)
{
	int right = 0, st;
	for (int i = 0; i < 20; i++) {
		pid_t c = fork();
		if (c == 0) {
			pid_t g = fork();
			if (g == 0)
				_exit(9);
			struct timespec nap = { 0, 20000000 };
			nanosleep(&nap, NULL);
			_exit(waitpid(g, &st, 0) == g && WEXITSTATUS(st) == 9 ? 0 : 1);
		}
		pid_t w = wait(&st);
		int none = waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD;
		right += w == c && WIFEXITED(st) && WEXITSTATUS(st) == 0 && none;
	}
	printf("%d of 20 right\n", right);
	return 0;
}
