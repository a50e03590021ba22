/*
 * ring.c: pipes and stdio as byte rings in the job's shared memory
 * (struct uf_ring in unifork_abi.h), shared by every VM of the job on this
 * host and by the host itself.
 *
 * The copies run in the system-call layer, at native speed in ring 3 on
 * PVM.  Writers (readers) serialize on wlock (rlock), holding it only while
 * they copy.  A side that must wait spins briefly, then raises the ring's
 * wait flag and halts (wait_until); the side that moves a counter clears
 * the flag and rings the doorbell, and the host wakes the sleepers.
 */
#include "defs.h"
#include "x86.h"
#include "linux.h"

#define SHM ((volatile struct uf_shm *)BOOT->shm_base)

/* Whether this process's last read of each ring took a small message: a
 * reader that waits for one on a bridged ring spins longer (SPIN_FAR_NS). */
static uint8_t small_reads[UF_SHM_RINGS];

volatile struct uf_ring *
shm_ring(int idx)
{
	return (volatile struct uf_ring *)(BOOT->shm_base + UF_SHM_RING_OFF(idx));
}

/* A lock in shared memory, held by (pid) only while it copies. */
static void
lock(volatile uint32_t *l)
{
	for (;;) {
		uint32_t free = 0;
		if (__atomic_compare_exchange_n(l, &free, BOOT->pid, 0,
		    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return;
		while (*l)
			cpu_relax();
	}
}

static void
unlock(volatile uint32_t *l)
{
	__atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* After moving a counter of (r): wake a peer that waits for it.  On a
 * bridged ring the peer is the host's bridge, and the doorbell's latency
 * the pipe's: the fast doorbell is worth setting up. */
static void
wake(volatile struct uf_ring *r, volatile uint32_t *flag)
{
	mfence();
	if (*flag) {
		*flag = 0;
		if (r->bridged)
			bell_want();
		doorbell();
	}
}

/* Allocate a free ring slot with one reader and one writer; -1 if none. */
int
ring_alloc(void)
{
	for (int i = 3; i < UF_SHM_RINGS; i++) {
		uint64_t bit = 1UL << i;
		if (SHM->used & bit)
			continue;
		if (__atomic_fetch_or(&SHM->used, bit, __ATOMIC_ACQ_REL) & bit)
			continue;
		volatile struct uf_ring *r = shm_ring(i);
		r->head = r->tail = 0;
		r->wlock = r->rlock = r->wr_wait = r->rd_wait = 0;
		r->bridged = r->hungry = 0;
		r->size = UF_RING_SIZE;
		__atomic_store_n((volatile uint64_t *)&r->readers, 1UL | (1UL << 32),
		    __ATOMIC_RELEASE);
		CTL->ends[i][0]++;
		CTL->ends[i][1]++;
		return i;
	}
	return -1;
}

/*
 * Add (dr) readers and (dw) writers to ring (idx): negative to close.  The
 * closer that brings both counts to zero frees the slot; a close wakes the
 * other side (EOF, EPIPE) unless (quiet).
 */
void
ring_ends(int idx, int dr, int dw, int quiet)
{
	volatile struct uf_ring *r = shm_ring(idx);
	int64_t delta = (int64_t)dr + ((int64_t)dw << 32);
	uint64_t now = __atomic_add_fetch((volatile uint64_t *)&r->readers,
	    (uint64_t)delta, __ATOMIC_SEQ_CST);

	CTL->ends[idx][0] += dr;
	CTL->ends[idx][1] += dw;
	if (now == 0 && idx >= 3)
		__atomic_fetch_and(&SHM->used, ~(1UL << idx), __ATOMIC_ACQ_REL);
	if ((dr < 0 || dw < 0) && !quiet) {
		mfence();
		if (r->rd_wait || r->wr_wait) {
			r->rd_wait = r->wr_wait = 0;
			doorbell();
		}
	}
}

struct want {
	volatile struct uf_ring *r;
	uint64_t n;             /* bytes of room a writer needs */
};

static int
can_write(void *p)
{
	struct want *w = p;
	return w->r->size - (w->r->head - w->r->tail) >= w->n || w->r->readers == 0;
}

static int
can_read(void *p)
{
	volatile struct uf_ring *r = p;
	return r->head != r->tail || r->writers == 0;
}

/*
 * Write (n) bytes from (buf) to ring (idx).  A write of up to UF_PIPE_BUF
 * bytes goes in whole, after waiting for room for all of it; a longer one
 * goes in pieces that others' writes may separate.  Blocks until all is
 * written, unless (nonblock).  Returns the count written, -EAGAIN, -EPIPE
 * when no reader is left (the caller raises SIGPIPE), or -ERESTARTSYS
 * when a signal came before anything was written.
 */
long
ring_write(int idx, const void *buf, size_t n, int nonblock)
{
	volatile struct uf_ring *r = shm_ring(idx);
	const uint8_t *p = buf;
	size_t done = 0;

	while (done < n) {
		size_t left = n - done;
		struct want w = { r, n <= UF_PIPE_BUF ? n : 1 };
		if (r->readers == 0)
			return done ? (long)done : -EPIPE;
		if (!can_write(&w)) {
			if (nonblock)
				return done ? (long)done : -EAGAIN;
			if (wait_until(can_write, &w, &r->wr_wait, UF_SLEEP_WRITE, idx, SPIN_NS))
				return done ? (long)done : -ERESTARTSYS;
			continue;
		}
		lock(&r->wlock);
		uint64_t head = r->head;
		uint64_t space = r->size - (head - r->tail);
		if (space < w.n) {              /* another writer took the room */
			unlock(&r->wlock);
			continue;
		}
		size_t chunk = MIN(space, left);
		size_t off = head & (r->size - 1);
		size_t first = MIN(chunk, r->size - off);
		memcpy((void *)&r->data[off], p + done, first);
		memcpy((void *)&r->data[0], p + done + first, chunk - first);
		__atomic_store_n(&r->head, head + chunk, __ATOMIC_RELEASE);
		unlock(&r->wlock);
		done += chunk;
		wake(r, &r->rd_wait);
	}
	return (long)done;
}

/*
 * Read up to (n) bytes from ring (idx) into (buf).  Blocks until at least
 * one byte is there or every writer has closed (returns 0: EOF), unless
 * (nonblock): -EAGAIN; a signal meanwhile: -ERESTARTSYS.
 */
long
ring_read(int idx, void *buf, size_t n, int nonblock)
{
	volatile struct uf_ring *r = shm_ring(idx);

	if (n == 0)
		return 0;
	for (;;) {
		if (r->head == r->tail) {
			if (r->writers == 0) {
				mfence();       /* a last write may precede the close */
				if (r->head == r->tail)
					return 0;
			} else if (nonblock) {
				return -EAGAIN;
			} else if (r->bridged) {   /* tell the bridge bytes are wanted here */
				__atomic_add_fetch(&r->hungry, 1, __ATOMIC_SEQ_CST);
				bell_want();
				if (r->bridged & UF_BRIDGED_TELL)
					doorbell();
				int stop = wait_until(can_read, (void *)r, &r->rd_wait,
				    UF_SLEEP_READ, idx, small_reads[idx] ? SPIN_FAR_NS : SPIN_NS);
				__atomic_sub_fetch(&r->hungry, 1, __ATOMIC_SEQ_CST);
				if (stop)
					return -ERESTARTSYS;
			} else if (wait_until(can_read, (void *)r, &r->rd_wait, UF_SLEEP_READ,
			    idx, SPIN_NS)) {
				return -ERESTARTSYS;
			}
			continue;
		}
		lock(&r->rlock);
		uint64_t tail = r->tail;
		size_t chunk = MIN(r->head - tail, n);
		if (chunk == 0) {               /* another reader took it */
			unlock(&r->rlock);
			continue;
		}
		size_t off = tail & (r->size - 1);
		size_t first = MIN(chunk, r->size - off);
		memcpy(buf, (const void *)&r->data[off], first);
		memcpy((uint8_t *)buf + first, (const void *)&r->data[0], chunk - first);
		__atomic_store_n(&r->tail, tail + chunk, __ATOMIC_RELEASE);
		unlock(&r->rlock);
		wake(r, &r->wr_wait);
		small_reads[idx] = chunk <= UF_PIPE_BUF;
		return (long)chunk;
	}
}

/* Bytes ring (idx) has room for now. */
size_t
ring_room(int idx)
{
	volatile struct uf_ring *r = shm_ring(idx);
	return r->size - (r->head - r->tail);
}

/* Wait until ring (idx) has room for a byte or no reader: 0, or
 * -ERESTARTSYS when a signal came first (sendfile waits here before it
 * takes anything from its input). */
long
ring_wait_room(int idx)
{
	volatile struct uf_ring *r = shm_ring(idx);
	struct want w = { r, 1 };
	if (can_write(&w))
		return 0;
	return wait_until(can_write, &w, &r->wr_wait, UF_SLEEP_WRITE, idx, SPIN_NS) ?
	    -ERESTARTSYS : 0;
}

/* Bytes waiting in ring (idx), for FIONREAD. */
long
ring_avail(int idx)
{
	volatile struct uf_ring *r = shm_ring(idx);
	return (long)(r->head - r->tail);
}
