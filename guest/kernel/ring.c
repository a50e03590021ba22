/*
 * ring.c: reading and writing byte rings in shared memory (struct uf_ring
 * in unifork_abi.h): stdin, stdout and stderr, whose other end is the host.
 *
 * The copies run in the system-call layer, at native speed in ring 3 on
 * PVM.  A side that must wait spins briefly, then raises its wait flag and
 * halts; the side that moves a counter wakes it (see uf_ring).
 */
#include "defs.h"
#include "x86.h"
#include "linux.h"

#define SPIN_NS        5000            /* spin this long before sleeping */
#define SLEEP_SLICE_NS 100000000ULL    /* re-check at least every 100 ms */

volatile struct uf_ring *
shm_ring(uint32_t idx)
{
	return (volatile struct uf_ring *)(BOOT->shm_base + UF_SHM_RING_OFF(idx));
}

/* After moving a counter: wake a peer that waits for it. */
static void
wake(volatile uint32_t *flag)
{
	mfence();
	if (*flag) {
		*flag = 0;
		doorbell();
	}
}

/*
 * Wait until ready(r) holds: spin SPIN_NS, then sleep with (flag) raised.
 * Returns when ready; the caller re-reads the counters.
 */
static void
wait_for(volatile struct uf_ring *r, int (*ready)(volatile struct uf_ring *),
    volatile uint32_t *flag)
{
	uint64_t spin_end = rdtsc() + ns_to_tsc(SPIN_NS);

	while (!ready(r)) {
		if (rdtsc() < spin_end) {
			cpu_relax();
			continue;
		}
		*flag = 1;
		mfence();
		if (ready(r))
			break;
		sleep_until(rdtsc() + ns_to_tsc(SLEEP_SLICE_NS));
	}
}

static int
can_write(volatile struct uf_ring *r)
{
	return r->head - r->tail < r->size || r->readers == 0;
}

static int
can_read(volatile struct uf_ring *r)
{
	return r->head != r->tail || r->writers == 0;
}

/*
 * Write (n) bytes from (buf).  Blocks until all are written, unless
 * (nonblock).  Returns the count written, -EAGAIN, or -EPIPE when no reader
 * is left (the caller raises SIGPIPE).
 */
long
ring_write(volatile struct uf_ring *r, const void *buf, size_t n, int nonblock)
{
	const uint8_t *p = buf;
	size_t done = 0;

	while (done < n) {
		if (r->readers == 0)
			return done ? (long)done : -EPIPE;
		uint64_t head = r->head;
		uint64_t space = r->size - (head - r->tail);
		if (space == 0) {
			if (nonblock)
				return done ? (long)done : -EAGAIN;
			wait_for(r, can_write, &r->wr_wait);
			continue;
		}
		size_t chunk = MIN(space, n - done);
		size_t off = head & (r->size - 1);
		size_t first = MIN(chunk, r->size - off);
		memcpy((void *)&r->data[off], p + done, first);
		memcpy((void *)&r->data[0], p + done + first, chunk - first);
		__asm__ volatile("" ::: "memory");   /* data before head (TSO) */
		r->head = head + chunk;
		done += chunk;
		wake(&r->rd_wait);
	}
	return (long)done;
}

/*
 * Read up to (n) bytes into (buf).  Blocks until at least one byte is there
 * or every writer has closed (returns 0: EOF), unless (nonblock): -EAGAIN.
 */
long
ring_read(volatile struct uf_ring *r, void *buf, size_t n, int nonblock)
{
	if (n == 0)
		return 0;
	while (r->head == r->tail) {
		if (r->writers == 0) {
			mfence();       /* a last write may precede the close */
			if (r->head == r->tail)
				return 0;
			break;
		}
		if (nonblock)
			return -EAGAIN;
		wait_for(r, can_read, &r->rd_wait);
	}
	uint64_t tail = r->tail;
	size_t avail = r->head - tail;
	size_t chunk = MIN(avail, n);
	size_t off = tail & (r->size - 1);
	size_t first = MIN(chunk, r->size - off);
	memcpy(buf, (const void *)&r->data[off], first);
	memcpy((uint8_t *)buf + first, (const void *)&r->data[0], chunk - first);
	__asm__ volatile("" ::: "memory");
	r->tail = tail + chunk;
	wake(&r->wr_wait);
	return (long)chunk;
}
