/*
 * Forks in a cluster, as the program sees them.
 *
 *   clusterbench lat N PAUSE_MS HOLDERS
 *	first fork HOLDERS children that sleep until the end (they fill the
 *	job's host, so the measured forks go elsewhere); then fork N times,
 *	PAUSE_MS apart, each child printing "child US" (monotonic clock, from
 *	the parent's fork() call until the child runs: it inherits the start
 *	time) and the parent "parent US" (until fork() returns to it).
 *   clusterbench burst N K
 *	fork N children that exit at once, at most K alive at a time;
 *	print "burst N forks in US".
 *
 * Output goes to stdout, which from any host ends up in the job's output.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long
now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static void
nap(long ms)
{
	struct timespec t = { ms / 1000, ms % 1000 * 1000000 };
	nanosleep(&t, NULL);
}

int
main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "lat")) {
		int n = atoi(argv[2]), holders = atoi(argv[4]);
		long pause_ms = atol(argv[3]);
		pid_t hold[16];
		for (int i = 0; i < holders && i < 16; i++)
			if ((hold[i] = fork()) == 0) {
				nap(1000000);
				_exit(0);
			}
		for (int i = 0; i < n; i++) {
			long long t0 = now_us();
			pid_t c = fork();
			if (c == 0) {
				printf("child %lld\n", now_us() - t0);
				_exit(0);
			}
			printf("parent %lld\n", now_us() - t0);
			if (c < 0)
				return 1;
			waitpid(c, NULL, 0);
			nap(pause_ms);
		}
		for (int i = 0; i < holders && i < 16; i++) {
			kill(hold[i], SIGKILL);
			waitpid(hold[i], NULL, 0);
		}
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "burst")) {
		int n = atoi(argv[2]), k = atoi(argv[3]), alive = 0;
		long long t0 = now_us();
		for (int i = 0; i < n; i++) {
			if (alive == k) {
				wait(NULL);
				alive--;
			}
			pid_t c = fork();
			if (c < 0)
				return 1;
			if (c == 0)
				_exit(0);
			alive++;
		}
		while (wait(NULL) > 0)
			;
		printf("burst %d forks in %lld\n", n, now_us() - t0);
		return 0;
	}
	fprintf(stderr, "usage: clusterbench lat N PAUSE_MS HOLDERS | burst N K\n");
	return 2;
}
