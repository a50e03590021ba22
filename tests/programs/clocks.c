/*
 * Clocks across fork: CLOCK_MONOTONIC read by a child is not earlier than
 * the parent's reading before fork(), nor later than the parent's after it
 * learns the child ran.  Also vfork (as fork) and waitid.
 */
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long
now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int
main(void)
{
	int p[2], bad = 0;
	for (int gen = 0; gen < 3; gen++) {     /* three generations deep */
		pipe(p);
		long long before = now(), child;
		pid_t c = fork();
		if (c == 0) {
			child = now();
			write(p[1], &child, sizeof child);
			_exit(0);
		}
		read(p[0], &child, sizeof child);
		long long after = now();
		waitpid(c, NULL, 0);
		bad += child < before || child > after;
		close(p[0]);
		close(p[1]);
		if (gen < 2 && fork() != 0) {   /* continue in a grandchild */
			int st;
			wait(&st);
			return WEXITSTATUS(st) + bad;
		}
	}
	printf("child clocks between parent's: %s\n", bad ? "no" : "yes");
	fflush(stdout);

	pid_t v = vfork();
	if (v == 0)
		_exit(9);
	siginfo_t si;
	waitid(P_PID, v, &si, WEXITED);
	printf("vfork child: pid match %d, code %d, CLD_EXITED %d\n", si.si_pid == v,
	    si.si_status, si.si_code == CLD_EXITED);
	return bad;
}
