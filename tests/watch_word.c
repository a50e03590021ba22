/*
 * watch_word.c: a thread that watches a 64-bit counter in shared memory as a
 * guest does (one load at a time) and counts the times it went backwards.
 * Loaded by test_units.py with ctypes, so that it runs while Python writes.
 */
#include <pthread.h>
#include <stdint.h>

static volatile uint64_t *word;
static volatile int stop;
static long backwards;
static pthread_t thread;

static void *
watch(void *arg)
{
	uint64_t last = *word;
	(void)arg;
	while (!stop) {
		uint64_t v = *word;
		if (v < last)
			backwards++;
		last = v;
	}
	return 0;
}

void
watch_start(volatile uint64_t *w)
{
	word = w;
	stop = 0;
	backwards = 0;
	pthread_create(&thread, 0, watch, 0);
}

long
watch_stop(void)
{
	stop = 1;
	pthread_join(thread, 0);
	return backwards;
}
