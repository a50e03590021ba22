/*
 * Prints CLOCK_REALTIME (seconds and nanoseconds) and gettimeofday's
 * seconds, for a test to hold against the host's clock.
 */
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

int
main(void)
{
	struct timespec ts;
	struct timeval tv;
	clock_gettime(CLOCK_REALTIME, &ts);
	gettimeofday(&tv, NULL);
	printf("%ld.%09ld %ld\n", (long)ts.tv_sec, ts.tv_nsec, (long)tv.tv_sec);
	return 0;
}
