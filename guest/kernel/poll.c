/*
 * poll.c: waiting for one of several descriptors: poll, ppoll, select and
 * pselect6, all on one loop (wait_ready) over file.c's poll_events.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

#define POLLPRI 0x002
#define FD_SETSIZE 1024

struct pollfd { int fd; short events, revents; };

/*
 * Wait until one of (pfd) is ready, or the timeout (ns; -1: none) passes,
 * or a signal may be taken (-ERESTARTNOHAND).  The wait spins briefly,
 * then halts in short slices: a wake-up for one of several rings is not
 * tracked.  Returns how many are ready.
 */
static long
wait_ready(struct pollfd *pfd, unsigned long nfds, int64_t timeout_ns)
{
	uint64_t start = clock_mono_ns();

	for (;;) {
		long n = 0;
		for (unsigned long i = 0; i < nfds; i++) {
			pfd[i].revents = pfd[i].fd < 0 ? 0 : poll_events(pfd[i].fd, pfd[i].events);
			n += pfd[i].revents != 0;
		}
		uint64_t now = clock_mono_ns();
		if (n || (timeout_ns >= 0 && now - start >= (uint64_t)timeout_ns))
			return n;
		if (signal_pending())
			return -ERESTARTNOHAND;
		uint64_t slice = now - start < 200000 ? 0 : 2000000;   /* spin, then 2 ms */
		if (timeout_ns >= 0 && start + (uint64_t)timeout_ns - now < slice)
			slice = start + (uint64_t)timeout_ns - now;
		if (slice) {
			CTL->asleep = UF_SLEEP_TIMER;
			sleep_until(rdtsc() + ns_to_tsc(slice));
			CTL->asleep = UF_SLEEP_NONE;
		} else {
			__asm__ volatile("pause");
		}
	}
}

static long
do_poll(long fdsp, unsigned long nfds, int64_t timeout_ns)
{
	if (nfds > NFD)
		return -EINVAL;
	if (nfds && !user_ok((uint64_t)fdsp, nfds * sizeof(struct pollfd)))
		return -EFAULT;
	return wait_ready((struct pollfd *)fdsp, nfds, timeout_ns);
}

long
sys_poll(long fdsp, unsigned long nfds, int timeout_ms)
{
	return do_poll(fdsp, nfds, timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000);
}

/* A timeout from the program (a timespec, or none: -1 ns); 0 or an error. */
static long
timeout_of(long tsp, int64_t *ns)
{
	uint64_t v = 0;
	long e = tsp ? user_timespec_ns(tsp, &v) : 0;
	*ns = tsp ? (int64_t)v : -1;
	return e;
}

long
sys_ppoll(long fdsp, unsigned long nfds, long tsp, long mask, long masksize)
{
	int64_t t;
	long e = timeout_of(tsp, &t);
	if (e)
		return e;
	uint64_t m;
	if (mask && (e = signal_user_set(mask, masksize, &m)))
		return e;
	if (mask)               /* for the call only, as rt_sigsuspend does */
		signal_mask_for_call(m);
	return do_poll(fdsp, nfds, t);
}

/*
 * select over poll: the three sets become one pollfd per descriptor named
 * in any of them, and the ready ones go back into the sets.
 */
static long
do_select(long nfds, long rp, long wp, long ep, int64_t timeout_ns)
{
	uint64_t *set[3] = { (uint64_t *)rp, (uint64_t *)wp, (uint64_t *)ep };
	static const short ev[3] = { POLLIN, POLLOUT, POLLPRI };
	struct pollfd pfd[NFD];
	unsigned long n = 0;

	if (nfds < 0 || nfds > FD_SETSIZE)
		return -EINVAL;
	uint64_t words = ((uint64_t)nfds + 63) / 64;
	for (int k = 0; k < 3; k++)
		if (set[k] && !user_ok((uint64_t)set[k], words * 8))
			return -EFAULT;
	for (long fd = 0; fd < nfds; fd++) {
		short want = 0;
		for (int k = 0; k < 3; k++)
			if (set[k] && (set[k][fd / 64] >> (fd % 64) & 1))
				want |= ev[k];
		if (!want)
			continue;
		if (fd >= NFD || poll_events((int)fd, 0) == POLLNVAL)
			return -EBADF;
		pfd[n++] = (struct pollfd){ (int)fd, want, 0 };
	}
	long r = wait_ready(pfd, n, timeout_ns);
	if (r < 0)
		return r;
	for (int k = 0; k < 3; k++)
		if (set[k])
			memset(set[k], 0, words * 8);
	long count = 0;
	for (unsigned long i = 0; i < n; i++) {
		short got = pfd[i].revents;
		int fd = pfd[i].fd;
		int in = (pfd[i].events & POLLIN) && (got & (POLLIN | POLLHUP | POLLERR));
		int out = (pfd[i].events & POLLOUT) && (got & (POLLOUT | POLLERR));
		int pri = (pfd[i].events & POLLPRI) && (got & POLLPRI);
		if (in)
			set[0][fd / 64] |= 1UL << (fd % 64);
		if (out)
			set[1][fd / 64] |= 1UL << (fd % 64);
		if (pri)
			set[2][fd / 64] |= 1UL << (fd % 64);
		count += in + out + pri;
	}
	return count;
}

/* select: Linux also leaves in (tvp) the time that was left. */
long
sys_select(long nfds, long rp, long wp, long ep, long tvp)
{
	int64_t t = -1;
	struct timeval *tv = (struct timeval *)tvp;
	if (tvp) {
		if (!user_ok((uint64_t)tvp, sizeof *tv))
			return -EFAULT;
		if (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1000000)
			return -EINVAL;
		t = tv->tv_sec * 1000000000 + tv->tv_usec * 1000;
	}
	uint64_t start = clock_mono_ns();
	long r = do_select(nfds, rp, wp, ep, t);
	if (tvp && r >= 0) {
		uint64_t spent = clock_mono_ns() - start;
		uint64_t left = (uint64_t)t > spent ? (uint64_t)t - spent : 0;
		*tv = (struct timeval){ (int64_t)(left / 1000000000), (int64_t)(left % 1000000000 / 1000) };
	}
	return r;
}

/* pselect6: a timespec, and a mask for the call ({pointer, size}). */
long
sys_pselect6(long nfds, long rp, long wp, long ep, long tsp, long maskp)
{
	int64_t t;
	long e = timeout_of(tsp, &t);
	if (e)
		return e;
	if (maskp) {
		if (!user_ok((uint64_t)maskp, 16))
			return -EFAULT;
		const uint64_t *m = (const uint64_t *)maskp;     /* {sigset_t *, size} */
		uint64_t set;
		if (m[0] && (e = signal_user_set((long)m[0], (long)m[1], &set)))
			return e;
		if (m[0])
			signal_mask_for_call(set);
	}
	return do_select(nfds, rp, wp, ep, t);
}
