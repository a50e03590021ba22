/*
 * wait.c: waking the host, and sleeping until it (or a deadline) wakes us.
 * Both go through the gate, which costs ~22 us on PVM: callers spin a
 * little first and only sleep when the wait is really long.
 */
#include "defs.h"
#include "x86.h"

/* Tell the host something changed: one byte to the doorbell UART. */
void
doorbell(void)
{
	gate(GATE_OUTB, UF_DOORBELL_PORT, 1);
}

/*
 * Halt until an interrupt: the host's wake-up byte, or the TSC reaching
 * tsc_deadline (0: no deadline).  Callers re-check their condition after,
 * since any interrupt ends the halt.
 */
void
sleep_until(uint64_t tsc_deadline)
{
	if (tsc_deadline && !(cpu_features & CPUF_DEADLINE)) {
		while (rdtsc() < tsc_deadline)     /* no timer to wake us */
			cpu_relax();
		return;
	}
	gate(GATE_HALT, (long)tsc_deadline, 0);
}
