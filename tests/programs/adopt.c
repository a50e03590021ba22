/*
 * Orphans adopted by pid 1 can be waited for at once: pid 1 -> A -> B -> C;
 * C exits (a zombie: B never waits), then B exits, so C goes to pid 1, whose
 * wait(-1) must return C while A still lives.  Natively the program makes
 * itself a subreaper so that it, not the system's init, adopts orphans.
 */
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void
nap(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&t, NULL);
}

int
main(void)
{
	int p[2], st;
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	pipe(p);
	pid_t a = fork();
	if (a == 0) {                   /* A: makes B, then waits to be killed */
		close(p[0]);
		if (fork() == 0) {      /* B: makes C, lets it die, leaves */
			pid_t c = fork();
			if (c == 0)
				_exit(7);       /* C */
			write(p[1], &c, sizeof c);
			nap(300);
			_exit(0);
		}
		for (;;)
			pause();
	}
	close(p[1]);
	pid_t c;
	read(p[0], &c, sizeof c);
	pid_t w = wait(&st);            /* A is alive: only C can come back */
	printf("reaped the adopted grandchild: %d, its code %d\n", w == c,
	    WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	kill(a, SIGKILL);
	while (wait(&st) > 0)
		;
	return 0;
}
