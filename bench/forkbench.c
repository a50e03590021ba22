/*
 * Fork latency as the program sees it.  forkbench MIB ITERATIONS [PAUSE_MS]:
 * touch MIB MiB of heap, then fork ITERATIONS times, PAUSE_MS apart; each
 * time measure (monotonic clock) from the fork() call until the child runs,
 * and until fork() returns in the parent.  Prints "child_us parent_us".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long
now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int
main(int argc, char **argv)
{
	long mib = argc > 1 ? atol(argv[1]) : 1;
	int iters = argc > 2 ? atoi(argv[2]) : 20;
	long pause_ms = argc > 3 ? atol(argv[3]) : 0;
	char *heap = malloc(mib << 20);
	memset(heap, 1, mib << 20);
	for (int i = 0; i < iters; i++) {
		int p[2], st;
		long long t1;
		pipe(p);
		long long t0 = now_ns();
		pid_t c = fork();
		if (c == 0) {
			t1 = now_ns();
			write(p[1], &t1, sizeof t1);
			_exit(heap[i] == 1 ? 0 : 1);
		}
		long long t2 = now_ns();
		read(p[0], &t1, sizeof t1);
		waitpid(c, &st, 0);
		close(p[0]);
		close(p[1]);
		printf("%lld %lld\n", (t1 - t0) / 1000, (t2 - t0) / 1000);
		struct timespec nap = { pause_ms / 1000, pause_ms % 1000 * 1000000 };
		nanosleep(&nap, NULL);
	}
	return 0;
}
