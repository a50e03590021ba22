/*
 * wait.c: waking the host, and sleeping until it (or a deadline) wakes us.
 * Both trap into ring 0 on PVM (entry.S: a doorbell costs the guest ~50 us,
 * a wake-up much more): callers spin a little first and only sleep when
 * the wait is really long.
 *
 * Before it halts, the guest says in its control page what it waits for
 * (asleep, sleep_ring); the host, whenever something changes, wakes each
 * halted VM whose condition now holds.
 */
#include "defs.h"
#include "x86.h"

/*
 * Halt until an interrupt: the host's wake-up byte, or the TSC reaching
 * tsc_deadline (0: no deadline).  Callers re-check their condition after,
 * since any interrupt ends the halt.
 */
void
sleep_until(uint64_t tsc_deadline)
{
	uint64_t alarm = signal_alarm_tsc();    /* a pending alarm wakes us too */
	if (alarm && (!tsc_deadline || alarm < tsc_deadline))
		tsc_deadline = alarm;
	if (tsc_deadline && !(cpu_features & CPUF_DEADLINE)) {
		/* No timer to wake us (TCG): spin a slice at most, so that the
		 * caller re-checks what it waits for, and give way to a signal. */
		uint64_t end = rdtsc() + ns_to_tsc(1000000);
		if (end > tsc_deadline)
			end = tsc_deadline;
		while (rdtsc() < end && !signal_pending())
			cpu_relax();
		return;
	}
	halt(tsc_deadline);
}

#define SLEEP_SLICE_NS 100000000ULL    /* re-check at least every 100 ms */

/*
 * Wait until ready(arg) holds: spin (spin_ns), then halt with (what, ring)
 * published in the control page and (flag), the ring's wait flag, raised
 * so that the side that changes the ring rings the doorbell.  Returns 0,
 * or -1 when a signal may be taken first (never while waiting for the
 * host's reply to a request: that cannot be called back).
 */
int
wait_until(int (*ready)(void *), void *arg, volatile uint32_t *flag, int what, int ring,
    uint64_t spin_ns)
{
	uint64_t spin_end = rdtsc() + ns_to_tsc(spin_ns);
	int interruptible = what != UF_SLEEP_REPLY;     /* a host request is not */

	while (!ready(arg)) {
		if (interruptible && signal_pending())
			return -1;
		if (rdtsc() < spin_end) {
			cpu_relax();
			continue;
		}
		CTL->sleep_ring = ring;
		CTL->asleep = (uint32_t)what;
		if (flag)
			*flag = 1;
		mfence();
		if (!ready(arg))
			sleep_until(rdtsc() + ns_to_tsc(SLEEP_SLICE_NS));
		CTL->asleep = UF_SLEEP_NONE;
	}
	return 0;
}
