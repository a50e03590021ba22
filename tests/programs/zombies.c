/*
 * Waits on many ended children, more than the host lists in the control
 * page: 40 children exit with distinct codes; once they have all ended, a
 * waitid with WNOWAIT looks at one without reaping it, a wait for a pid
 * takes that one, and waits for any take the rest; then ECHILD, with and
 * without WNOHANG.  Prints what it got, sorted.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define N 40

static int
cmp(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

int
main(void)
{
	pid_t kids[N];
	int codes[N], got = 0, st;
	for (int i = 0; i < N; i++)
		if ((kids[i] = fork()) == 0)
			_exit(100 + i);
	struct timespec nap = { 0, 300000000 };
	nanosleep(&nap, NULL);                  /* they have all ended by now */
	siginfo_t si;
	memset(&si, 0, sizeof si);
	if (waitid(P_ALL, 0, &si, WEXITED | WNOWAIT) == 0)
		printf("looked at a child that exited %d, not reaped\n", si.si_status >= 100);
	if (waitpid(kids[7], &st, 0) == kids[7])
		codes[got++] = WEXITSTATUS(st);
	pid_t w;
	while ((w = waitpid(-1, &st, 0)) > 0)
		codes[got++] = WEXITSTATUS(st);
	printf("then: %s\n", errno == ECHILD ? "ECHILD" : strerror(errno));
	printf("WNOHANG then: %s\n", waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD ?
	    "ECHILD" : "something");
	qsort(codes, got, sizeof codes[0], cmp);
	int right = got == N;
	for (int i = 0; i < got && right; i++)
		right = codes[i] == 100 + i;
	printf("%d reaped, each once: %s\n", got, right ? "yes" : "no");
	/* and one still running: WNOHANG says 0, a wait for it waits */
	pid_t c = fork();
	if (c == 0) {
		nanosleep(&nap, NULL);
		_exit(9);
	}
	printf("a running child: WNOHANG gives %d\n", (int)waitpid(-1, &st, WNOHANG));
	printf("then it exits %d\n", waitpid(-1, &st, 0) == c ? WEXITSTATUS(st) : -1);
	return 0;
}
