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
static uint64_t real_at_tsc0;     /* CLOCK_REALTIME when the TSC read 0 */

/* Wait up to 2 s for the host to write a field that is 0 until then. */
static uint64_t
host_written(volatile uint64_t *field)
{
	uint64_t limit = rdtsc() + ns_to_tsc(2000000000ULL);
	while (!*field && rdtsc() < limit)
		cpu_relax();
	return *field;
}

/* Whether this TSC, now at (t), is the host's, which read (h) shortly
 * before (within (ns)): a vCPU's own TSC starts at 0, or where KVM put it. */
static int
tsc_is_hosts(uint64_t t, uint64_t h, uint64_t ns)
{
	return h && t >= h && t - h < ns_to_tsc(ns);
}

void
clock_init(void)
{
	tsc_khz = BOOT->tsc_khz ? BOOT->tsc_khz : 1000000;
	ns_per_tick_32 = ((uint64_t)1000000 << 32) / tsc_khz;
	/*
	 * KVM starts a vCPU's TSC at 0 as QEMU creates it, just after the host
	 * wrote realtime_ns; PVM (and TCG) let it run on from the host's, which
	 * read host_tsc then: a TSC past host_tsc, by less than a minute, is
	 * that one (a fresh vCPU's is smaller: boot takes milliseconds).
	 */
	uint64_t h = host_written(&BOOT->host_tsc);     /* as QEMU starts */
	real_at_tsc0 = BOOT->realtime_ns;
	if (tsc_is_hosts(rdtsc(), h, 60000000000ULL)) {
		real_at_tsc0 -= (uint64_t)(((unsigned __int128)h * ns_per_tick_32) >> 32);
		CTL->tsc_is_host = 1;
	}
}

/*
 * In a forked child, as it first runs: read what the parent's clocks read.
 * The host writes tsc_resume, their reading when the host's TSC was
 * host_tsc, before it lets the child go (park.c); without it in 2 s, the
 * child keeps the parent's adjustment.  A TSC that is the host's (PVM's)
 * gives the exact adjustment; another one (TCG's, a real KVM's, which
 * starts at 0 in each VM), the reading as of now, late by however long
 * this vCPU took to wake since the host wrote it.
 */
void
clock_fork(void)
{
	if (!host_written((volatile uint64_t *)&BOOT->tsc_resume))
		return;
	uint64_t t = rdtsc(), h = BOOT->host_tsc;
	int host = tsc_is_hosts(t, h, 1000000000ULL);
	BOOT->tsc_adjust = BOOT->tsc_resume - (int64_t)(host ? h : t);
	CTL->tsc_is_host = host;
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

/* CLOCK_REALTIME when CLOCK_MONOTONIC reads (mono_ns). */
uint64_t
clock_real_at(uint64_t mono_ns)
{
	return real_at_tsc0 + mono_ns;
}

uint64_t
clock_real_ns(void)
{
	return real_at_tsc0 + clock_mono_ns();
}

uint64_t
ns_to_tsc(uint64_t ns)
{
	return ns / 1000000 * tsc_khz + ns % 1000000 * tsc_khz / 1000000;
}
