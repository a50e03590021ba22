/*
 * forkloop N EVERY [side]: fork N times, each child exits at once and is
 * waited for; every EVERY forks print how many so far and wait for a byte
 * on stdin (the test looks at the host's resources meanwhile).  With
 * "side", first fork a child that holds its VM until the N are done (on a
 * cluster host of two slots, the N children then all run elsewhere), and
 * at the end wait for it and print "side child exited 7".
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void
side_done(int sig)
{
	(void)sig;
	_exit(7);
}

/* A child that waits for SIGUSR1, then exits 7. */
static pid_t
side_child(void)
{
	sigset_t usr1, old;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);    /* until it waits: none is lost */
	pid_t c = fork();
	if (c == 0) {
		signal(SIGUSR1, side_done);
		for (;;)
			sigsuspend(&old);
	}
	sigprocmask(SIG_SETMASK, &old, 0);
	return c;
}

int
main(int argc, char **argv)
{
	int n = atoi(argv[1]), every = atoi(argv[2]), st;
	pid_t side = argc > 3 && !strcmp(argv[3], "side") ? side_child() : 0;
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
		kill(side, SIGUSR1);
		if (waitpid(side, &st, 0) != side || !WIFEXITED(st))
			return 1;
		printf("side child exited %d\n", WEXITSTATUS(st));
	}
	return 0;
}
