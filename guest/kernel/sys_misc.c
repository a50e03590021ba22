/*
 * sys_misc.c: the small system calls a C library needs to start and run:
 * thread pointer, time and sleep, randomness, limits, names.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

static uint64_t fs_base;

long
sys_arch_prctl(long code, long addr)
{
	switch (code) {
	case ARCH_SET_FS:
		if ((uint64_t)addr >> 47)
			return -EPERM;
		fs_base = (uint64_t)addr;
		if (cpu_features & CPUF_FSGSBASE)   /* unprivileged, fast */
			__asm__ volatile("wrfsbase %0" : : "r"(fs_base));
		else
			gate(GATE_WRFSBASE, (long)fs_base, 0);
		return 0;
	case ARCH_GET_FS:
		if (!user_ok((uint64_t)addr, 8))
			return -EFAULT;
		*(uint64_t *)addr = fs_base;
		return 0;
	}
	return -EINVAL;
}

/* In a forked child: the thread pointer as the parent had it (the value is
 * in RAM, the register is not). */
void
restore_fs_base(void)
{
	if (fs_base)
		sys_arch_prctl(ARCH_SET_FS, (long)fs_base);
}

long
sys_set_tid_address(long p)
{
	(void)p;
	return BOOT->pid;
}

long sys_set_robust_list(long head, long len) { (void)head; (void)len; return 0; }
long sys_gettid(void) { return BOOT->pid; }
long sys_sched_yield(void) { return 0; }

long
sys_futex(long uaddr, long op, long val)
{
	if (!user_ok((uint64_t)uaddr, 4))
		return -EFAULT;
	switch (op & FUTEX_CMD_MASK) {
	case FUTEX_WAIT:
		/* One thread: nobody could ever wake us. */
		return *(volatile int *)uaddr != (int)val ? -EAGAIN : -EDEADLK;
	case FUTEX_WAKE:
		return 0;
	}
	return -ENOSYS;
}

static long
put_ts(long p, uint64_t ns)
{
	if (!user_ok((uint64_t)p, sizeof(struct timespec)))
		return -EFAULT;
	*(struct timespec *)p = (struct timespec){ (int64_t)(ns / 1000000000), (int64_t)(ns % 1000000000) };
	return 0;
}

static long
clock_ns(long clk, uint64_t *ns)
{
	switch (clk) {
	case CLOCK_REALTIME:
	case CLOCK_REALTIME_COARSE:
		*ns = clock_real_ns();
		return 0;
	case CLOCK_MONOTONIC:
	case CLOCK_MONOTONIC_RAW:
	case CLOCK_MONOTONIC_COARSE:
	case CLOCK_BOOTTIME:
	case CLOCK_PROCESS_CPUTIME_ID:  /* the VM is the process */
	case CLOCK_THREAD_CPUTIME_ID:
		*ns = clock_mono_ns();
		return 0;
	}
	return -EINVAL;
}

long
sys_clock_gettime(long clk, long tsp)
{
	uint64_t ns;
	long e = clock_ns(clk, &ns);
	return e ? e : put_ts(tsp, ns);
}

long
sys_clock_getres(long clk, long tsp)
{
	uint64_t ns;
	long e = clock_ns(clk, &ns);
	if (e)
		return e;
	return tsp ? put_ts(tsp, 1) : 0;
}

long
sys_gettimeofday(long tvp, long tzp)
{
	uint64_t ns = clock_real_ns();
	if (tvp) {
		if (!user_ok((uint64_t)tvp, sizeof(struct timeval)))
			return -EFAULT;
		*(struct timeval *)tvp = (struct timeval){ (int64_t)(ns / 1000000000), (int64_t)(ns % 1000000000 / 1000) };
	}
	if (tzp) {
		if (!user_ok((uint64_t)tzp, 8))
			return -EFAULT;
		*(uint64_t *)tzp = 0;
	}
	return 0;
}

long
sys_time(long tp)
{
	int64_t t = (int64_t)(clock_real_ns() / 1000000000);
	if (tp) {
		if (!user_ok((uint64_t)tp, 8))
			return -EFAULT;
		*(int64_t *)tp = t;
	}
	return t;
}

/* Sleep until the monotonic clock reads (end_ns), or a signal may be
 * taken: what was left (ns), 0 if none. */
static uint64_t
sleep_mono(uint64_t end_ns)
{
	uint64_t now;
	while ((now = clock_mono_ns()) < end_ns) {
		if (signal_pending())
			return end_ns - now;
		CTL->asleep = UF_SLEEP_TIMER;
		sleep_until(rdtsc() + ns_to_tsc(end_ns - now));
		CTL->asleep = UF_SLEEP_NONE;
	}
	return 0;
}

static long
slept(uint64_t left, long rem)
{
	if (rem && user_ok((uint64_t)rem, sizeof(struct timespec)))
		*(struct timespec *)rem = (struct timespec){ (int64_t)(left / 1000000000),
		    (int64_t)(left % 1000000000) };
	return left ? -ERESTARTNOHAND : 0;
}

/* A timespec argument at (p): its ns into (*ns); 0 or an error. */
long
user_timespec_ns(long p, uint64_t *ns)
{
	if (!user_ok((uint64_t)p, sizeof(struct timespec)))
		return -EFAULT;
	const struct timespec *t = (const struct timespec *)p;
	if (t->tv_sec < 0 || t->tv_nsec < 0 || t->tv_nsec >= 1000000000)
		return -EINVAL;
	*ns = (uint64_t)t->tv_sec * 1000000000 + (uint64_t)t->tv_nsec;
	return 0;
}

long
sys_nanosleep(long req, long rem)
{
	uint64_t ns;
	long e = user_timespec_ns(req, &ns);
	if (e)
		return e;
	return slept(sleep_mono(clock_mono_ns() + ns), rem);
}

long
sys_clock_nanosleep(long clk, long flags, long req, long rem)
{
	uint64_t ns, now;
	long e = clock_ns(clk, &now);
	if (e)
		return e;
	if ((e = user_timespec_ns(req, &ns)))
		return e;
	if (flags & TIMER_ABSTIME)
		ns = ns > now ? ns - now : 0;
	return slept(sleep_mono(clock_mono_ns() + ns), flags & TIMER_ABSTIME ? 0 : rem);
}

/*
 * Randomness: RDRAND where the CPU has it (and so fresh in each copy of a
 * forked VM); otherwise a xorshift stream from the host's seed (not
 * cryptographic; said in the limitations).
 */
static uint64_t rng;            /* the fallback stream's state; 0: seed it */

/* In a forked child: the fallback stream restarts from the child's seed. */
void
random_fork(void)
{
	rng = 0;
}

static uint64_t
random64(void)
{
	uint64_t v;
	unsigned char ok;

	if (cpu_features & CPUF_RDRAND) {
		for (int i = 0; i < 10; i++) {
			__asm__ volatile("rdrand %0; setc %1" : "=r"(v), "=qm"(ok));
			if (ok)
				return v;
		}
	}
	if (!rng)
		memcpy(&rng, (const void *)BOOT->seed, 8), rng |= 1;
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng * 0x2545f4914f6cdd1dULL;
}

long
sys_getrandom(long buf, long n, long flags)
{
	(void)flags;
	if (n < 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	for (long i = 0; i < n; i += 8) {
		uint64_t v = random64();
		memcpy((char *)buf + i, &v, MIN(8, (size_t)(n - i)));
	}
	return n;
}

/* sysinfo: this VM's memory and uptime (sort and others size buffers by it). */
struct sysinfo_ {
	int64_t uptime;
	uint64_t loads[3], totalram, freeram, sharedram, bufferram, totalswap, freeswap;
	uint16_t procs, pad;
	uint32_t pad2;
	uint64_t totalhigh, freehigh;
	uint32_t mem_unit;
	char _f[4];
};
_Static_assert(sizeof(struct sysinfo_) == 112, "struct sysinfo");

long
sys_sysinfo(long p)
{
	if (!user_ok((uint64_t)p, sizeof(struct sysinfo_)))
		return -EFAULT;
	struct sysinfo_ *si = (struct sysinfo_ *)p;
	memset(si, 0, sizeof *si);
	si->uptime = (int64_t)(clock_mono_ns() / 1000000000);
	si->totalram = BOOT->ram_size;
	si->freeram = BOOT->stack_low > BOOT->brk ? BOOT->stack_low - BOOT->brk : 0;
	si->procs = 1;
	si->mem_unit = 1;
	return 0;
}

long
sys_uname(long p)
{
	struct utsname *u = (struct utsname *)p;
	if (!user_ok((uint64_t)p, sizeof(*u)))
		return -EFAULT;
	memset(u, 0, sizeof(*u));
	memcpy(u->sysname, "Linux", 6);
	memcpy(u->nodename, (const void *)BOOT->hostname, 64);
	memcpy(u->release, "6.1.0-unifork", 14);
	memcpy(u->version, "#1 unifork", 11);
	memcpy(u->machine, "x86_64", 7);
	memcpy(u->domainname, "(none)", 7);
	return 0;
}

#define RLIMIT_STACK  3
#define RLIMIT_NOFILE 7
#define RLIMIT_AS     9

long
sys_prlimit64(long pid, long res, long newp, long oldp)
{
	if (pid != 0 && pid != BOOT->pid)
		return -ESRCH;
	if (res < 0 || res >= 16)
		return -EINVAL;
	if (oldp) {
		struct rlimit r = { RLIM_INFINITY, RLIM_INFINITY };
		if (!user_ok((uint64_t)oldp, sizeof(r)))
			return -EFAULT;
		if (res == RLIMIT_STACK)
			r.cur = r.max = BOOT->ram_size - BOOT->stack_low;
		else if (res == RLIMIT_NOFILE)
			r.cur = r.max = 256;
		*(struct rlimit *)oldp = r;
	}
	(void)newp;             /* limits are fixed; setting one is accepted */
	return 0;
}

long
sys_getrlimit(long res, long p)
{
	return sys_prlimit64(0, res, 0, p);
}

/* getrusage: the VM is the process; its time is all user time, and its
 * children's is not known here (zero). */
long
sys_getrusage(int who, long p)
{
	if (who != 0 && who != -1 && who != 1)
		return -EINVAL;
	if (!user_ok((uint64_t)p, 144))
		return -EFAULT;
	memset((void *)p, 0, 144);
	if (who == 0 || who == 1) {
		uint64_t ns = clock_mono_ns();
		*(struct timeval *)p = (struct timeval){ (int64_t)(ns / 1000000000),
		    (int64_t)(ns % 1000000000 / 1000) };
	}
	return 0;
}

long
sys_sched_getaffinity(long pid, long n, long mask)
{
	(void)pid;
	if (n < 8)
		return -EINVAL;
	if (!user_ok((uint64_t)mask, (uint64_t)n))
		return -EFAULT;
	memset((void *)mask, 0, (size_t)n);
	*(uint8_t *)mask = 1;   /* one CPU per VM */
	return 8;
}

/*
 * prctl: the process's name (PR_SET_NAME/PR_GET_NAME), and options that
 * are recorded and have no effect here (parent-death signal, dumpable).
 * Any other option fails with EINVAL, said once.
 */
#define PR_SET_PDEATHSIG 1
#define PR_GET_PDEATHSIG 2
#define PR_GET_DUMPABLE  3
#define PR_SET_DUMPABLE  4
#define PR_SET_NAME      15
#define PR_GET_NAME      16
#define PR_SET_CHILD_SUBREAPER 36

long
sys_prctl(int option, unsigned long arg)
{
	static char comm[16];
	static int pdeathsig, dumpable = 1;
	static uint64_t said;

	if (!comm[0]) {         /* the basename of the program, as Linux does */
		const char *exe = (const char *)BOOT->exe, *base = exe;
		for (const char *c = exe; *c; c++)
			if (*c == '/')
				base = c + 1;
		memcpy(comm, base, MIN(strnlen(base, 15), (size_t)15));
	}
	switch (option) {
	case PR_SET_NAME:
		if (!user_ok(arg, 1))
			return -EFAULT;
		memset(comm, 0, sizeof(comm));
		memcpy(comm, (const char *)arg, strnlen((const char *)arg,
		    MIN((size_t)15, BOOT->ram_size - arg)));
		return 0;
	case PR_GET_NAME:
		if (!user_ok(arg, 16))
			return -EFAULT;
		memcpy((void *)arg, comm, 16);
		return 0;
	case PR_SET_PDEATHSIG:
		if (arg > NSIG)
			return -EINVAL;
		pdeathsig = (int)arg;
		return 0;
	case PR_GET_PDEATHSIG:
		if (!user_ok(arg, 4))
			return -EFAULT;
		*(int *)arg = pdeathsig;
		return 0;
	case PR_GET_DUMPABLE:
		return dumpable;
	case PR_SET_DUMPABLE:
		if (arg > 1)
			return -EINVAL;
		dumpable = (int)arg;
		return 0;
	case PR_SET_CHILD_SUBREAPER:
		if (arg && BOOT->pid == 1)
			return 0;       /* pid 1 adopts the job's orphans already */
		break;
	}
	if (option >= 0 && option < 64 && !(said & (1UL << option))) {
		said |= 1UL << option;
		kprintf("prctl option %d is not supported: EINVAL\n", option);
	}
	return -EINVAL;
}
