/*
 * clock.c: time from the TSC, read in ring 3.  The host tells the TSC rate
 * (tsc_khz) and the wall-clock time at TSC 0 in the boot page; the TSC is
 * invariant.  A forked child re-bases its clocks on its parent's (see
 * tsc_resume in unifork_abi.h).
 */
#include "defs.h"
#include "x86.h"

static uint64_t ns_per_tick_32;   /* 10^6 / tsc_khz, fixed point 32.32 */
static uint64_t tsc_khz;

void
clock_init(void)
{
	tsc_khz = BOOT->tsc_khz ? BOOT->tsc_khz : 1000000;
	ns_per_tick_32 = ((uint64_t)1000000 << 32) / tsc_khz;
}

/* The TSC as the clocks see it: continuous across fork. */
uint64_t
clock_tsc(void)
{
	return rdtsc() + (uint64_t)BOOT->tsc_adjust;
}

uint64_t
clock_mono_ns(void)
{
	return (uint64_t)(((unsigned __int128)clock_tsc() * ns_per_tick_32) >> 32);
}

uint64_t
clock_real_ns(void)
{
	return BOOT->realtime_ns + clock_mono_ns();
}

uint64_t
ns_to_tsc(uint64_t ns)
{
	return ns / 1000000 * tsc_khz + ns % 1000000 * tsc_khz / 1000000;
}
