/*
 * The process calls across hosts.  Two children first hold their VMs (so
 * on a host with at most 3 slots every later fork goes to another host);
 * then: a child killed with SIGTERM by its parent, kill(pid, 0) on it
 * before and after it is reaped, a child that reads its parent's pid, and
 * an orphan: a child whose own child outlives it and is adopted by pid 1.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void
nap(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&t, NULL);
}

static pid_t
child_that_sleeps(long ms, int code)
{
	pid_t c = fork();
	if (c < 0) {
		printf("fork: %s\n", strerror(errno));
		exit(1);
	}
	if (c == 0) {
		nap(ms);
		_exit(code);
	}
	return c;
}

int
main(void)
{
	int st;
	pid_t hold[2];
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < 2; i++)
		hold[i] = child_that_sleeps(4000, 0);

	pid_t victim = child_that_sleeps(30000, 1);
	printf("victim alive: %d\n", kill(victim, 0) == 0);
	kill(victim, SIGTERM);
	waitpid(victim, &st, 0);
	printf("victim killed by %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
	printf("after reaping: %s\n", kill(victim, 0) < 0 && errno == ESRCH ? "ESRCH" : "alive");

	pid_t me = getpid(), c = fork();
	if (c == 0) {
		printf("child sees parent %s\n", getppid() == me ? "right" : "wrong");
		fflush(stdout);
		_exit(3);
	}
	waitpid(c, &st, 0);
	printf("child exited %d\n", WEXITSTATUS(st));

	pid_t middle = fork();
	if (middle == 0) {
		pid_t g = fork();
		if (g == 0) {
			nap(800);
			printf("orphan's parent is now %d\n", (int)getppid());
			fflush(stdout);
			_exit(7);
		}
		_exit(g > 0 ? 5 : 6);
	}
	waitpid(middle, &st, 0);
	printf("middle exited %d\n", WEXITSTATUS(st));
	for (int i = 0; i < 2; i++)
		waitpid(hold[i], &st, 0);
	pid_t w;
	while ((w = wait(&st)) > 0)
		printf("adopted orphan exited %d\n", WEXITSTATUS(st));
	printf("then: %s\n", errno == ECHILD ? "ECHILD" : strerror(errno));
	return 0;
}
