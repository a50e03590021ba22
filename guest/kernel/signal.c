/*
 * signal.c: signals.  Dispositions and the mask live here and are published
 * in the control page, so that the host acts on a kill() from another
 * process as this process would: it kills the VM for a fatal default
 * action, drops an ignored signal, and posts a caught or blocked one in
 * CTL->sig_posted and wakes us.
 *
 * A caught signal runs its handler on the way out of a system call
 * (signal_return, called by syscall_dispatch): on the program's stack goes
 * the frame Linux lays out (struct rt_sigframe: the registers at the call,
 * the mask, the SSE state), and the call "returns" into the handler, which
 * returns through its restorer to rt_sigreturn, which puts it all back.
 * A blocking call interrupted by a signal returns EINTR, or starts again
 * after the handler with SA_RESTART.  A program computing without system
 * calls gets a signal from elsewhere at its next system call, and so its
 * SIGALRM (alarm, setitimer's ITIMER_REAL: a deadline kept here, which
 * every sleep wakes for).
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

#define SA_SIGINFO   0x00000004UL
#define SA_ONSTACK   0x08000000UL
#define SA_RESTART   0x10000000UL
#define SA_NODEFER   0x40000000UL
#define SA_RESETHAND 0x80000000UL

#define BIT(sig)     (1UL << ((sig) - 1))
#define UNBLOCKABLE  (BIT(SIGKILL) | BIT(SIGSTOP))

static struct k_sigaction actions[NSIG + 1];
static uint64_t sigmask, sigpending;
static uint64_t saved_mask;     /* rt_sigsuspend's caller's mask, to restore */
static int mask_saved;
static uint64_t alarm_ns;       /* monotonic time of the next SIGALRM (0: none) */
static uint64_t alarm_every_ns; /* then again every so often (0: once) */
/* sigaltstack's: handlers with SA_ONSTACK run there (size 0: SS_DISABLE) */
static struct { uint64_t sp, size; } alt;
#define SS_ONSTACK   1
#define SS_DISABLE   2
#define MINSIGSTKSZ  2048

/* The frame a handler finds (Linux x86-64's struct rt_sigframe). */
struct sigcontext64 {
	uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
	uint64_t rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
	uint16_t cs, gs, fs, ss;
	uint64_t err, trapno, oldmask, cr2;
	uint64_t fpstate;               /* the fxsave area, 16-byte aligned */
	uint64_t reserved[8];
};

struct ucontext64 {
	uint64_t uc_flags, uc_link;
	uint64_t ss_sp;
	int32_t  ss_flags, pad;
	uint64_t ss_size;
	struct sigcontext64 mc;
	uint64_t uc_sigmask;
};

struct rt_sigframe {
	uint64_t pretcode;              /* the restorer: the handler's return */
	struct ucontext64 uc;
	int32_t  info[32];              /* siginfo: signo, errno, code, ... */
};

_Static_assert(sizeof(struct sigcontext64) == 256, "sigcontext layout");
_Static_assert(sizeof(struct rt_sigframe) == 440, "rt_sigframe layout");

#define FXSAVE_SIZE 512

static int
default_ignored(int sig)
{
	return (UF_SIG_DEFAULT_IGNORED & BIT(sig)) != 0;
}

/* No job control: a signal that would stop the process does nothing. */
static int
stopping(int sig)
{
	return (UF_SIG_STOPPING & BIT(sig)) != 0;
}

/* Whether (sig), arriving now, would do nothing (SIG_IGN, or a default of nothing). */
static int
ignored(int sig)
{
	uint64_t h = actions[sig].handler;
	return h == SIG_IGN || (h == SIG_DFL && default_ignored(sig));
}

/* Tell the host how each signal would be received here (for kill()),
 * after the dispositions changed; a new mask alone: set_mask(). */
static void
publish(void)
{
	uint64_t ign = 0, caught = 0;
	for (int sig = 1; sig <= NSIG; sig++) {
		if (ignored(sig))
			ign |= BIT(sig);
		else if (actions[sig].handler != SIG_DFL)
			caught |= BIT(sig);
	}
	CTL->sig_ignored = ign;
	CTL->sig_caught = caught;
	CTL->sig_blocked = sigmask;
}

static void
set_mask(uint64_t mask)
{
	sigmask = mask & ~UNBLOCKABLE;
	CTL->sig_blocked = sigmask;
}

/* A sigset_t argument at (p), (size) bytes: into (*set); 0 or an error. */
long
signal_user_set(long p, long size, uint64_t *set)
{
	if (size != 8)
		return -EINVAL;
	if (!user_ok((uint64_t)p, 8))
		return -EFAULT;
	*set = *(const uint64_t *)p;
	return 0;
}

/* The next SIGALRM at monotonic (ns), 0: none; the host is told when, in
 * wall-clock time, to nudge a program that computes past it, and (tell)
 * woken to look (alarm, setitimer: it may wait for nothing else). */
static void
set_alarm(uint64_t ns, int tell)
{
	alarm_ns = ns;
	CTL->alarm_real_ns = ns ? clock_real_at(ns) : 0;
	if (tell && ns)
		doorbell();
}

/* The alarm has rung: SIGALRM is pending, and the next one set. */
static void
check_alarm(void)
{
	if (!alarm_ns)
		return;
	uint64_t now = clock_mono_ns();
	if (now < alarm_ns)
		return;
	sigpending |= BIT(SIGALRM);
	set_alarm(alarm_every_ns ? now + alarm_every_ns - (now - alarm_ns) % alarm_every_ns : 0, 0);
}

/* The TSC at which the alarm rings (0: none): sleeps wake for it. */
uint64_t
signal_alarm_tsc(void)
{
	if (!alarm_ns)
		return 0;
	uint64_t now = clock_mono_ns();
	return rdtsc() + (alarm_ns > now ? ns_to_tsc(alarm_ns - now) : 0);
}

/* Signals waiting, ours and those the host posted, that may be taken now. */
static uint64_t
ready(void)
{
	check_alarm();
	if (CTL->sig_posted)
		sigpending |= __atomic_exchange_n(&CTL->sig_posted, 0, __ATOMIC_SEQ_CST);
	return sigpending & ~sigmask;
}

/* Whether a blocking call should give way to a signal (EINTR). */
int
signal_pending(void)
{
	return ready() != 0;
}

/* (sig) is raised in this process (kill of itself, SIGPIPE). */
void
signal_raise(int sig)
{
	if (sig == SIGKILL)
		proc_kill(sig);
	if (!(sigmask & BIT(sig)) && ignored(sig))
		return;
	sigpending |= BIT(sig);
	if (!(sigmask & BIT(sig)) && actions[sig].handler == SIG_DFL && !stopping(sig))
		proc_kill(sig);         /* fatal at once, as on Linux */
}

static int
on_alt_stack(uint64_t sp)
{
	return alt.size && sp > alt.sp && sp <= alt.sp + alt.size;
}

/* Set the alternate stack (SS_DISABLE: none), as sigaltstack and
 * rt_sigreturn do; not while running on it. */
static long
set_alt(uint64_t sp, int32_t flags, uint64_t size)
{
	if (on_alt_stack(sys_user_rsp))
		return -EPERM;
	if (flags & ~(SS_DISABLE | (int32_t)0x80000000))   /* SS_AUTODISARM: accepted */
		return -EINVAL;
	if (flags & SS_DISABLE) {
		alt.sp = alt.size = 0;
		return 0;
	}
	if (size < MINSIGSTKSZ)
		return -ENOMEM;
	alt.sp = sp;
	alt.size = size;
	return 0;
}

/* sigaltstack(ss, old): the stack handlers with SA_ONSTACK run on. */
long
sys_sigaltstack(long ss, long old)
{
	struct stack { uint64_t sp; int32_t flags, pad; uint64_t size; };

	if (ss && !user_ok((uint64_t)ss, sizeof(struct stack)))
		return -EFAULT;
	if (old && !user_ok((uint64_t)old, sizeof(struct stack)))
		return -EFAULT;
	struct stack want = ss ? *(const struct stack *)ss : (struct stack){ 0, 0, 0, 0 };
	if (old)
		*(struct stack *)old = (struct stack){ alt.sp, on_alt_stack(sys_user_rsp) ?
		    SS_ONSTACK : alt.size ? 0 : SS_DISABLE, 0, alt.size };
	return ss ? set_alt(want.sp, want.flags, want.size) : 0;
}

/* After execve: handlers are gone (the code is), ignored stays ignored;
 * so is the alternate stack (it was the old program's memory). */
void
signal_exec(void)
{
	alt.sp = alt.size = 0;
	for (int sig = 1; sig <= NSIG; sig++)
		if (actions[sig].handler != SIG_IGN)
			actions[sig] = (struct k_sigaction){ 0, 0, 0, 0 };
	publish();
}

/* In a fork child: nothing of the parent's is pending (Linux clears it
 * too).  The host cleared sig_posted as it made the child: what is there
 * now was sent to the child since. */
void
signal_fork(void)
{
	sigpending = 0;
	alarm_every_ns = 0;             /* alarms are not inherited either */
	set_alarm(0, 0);
}

static void
save_fpu(void *area)
{
	__asm__ volatile("fxsave64 (%0)" : : "r"(area) : "memory");
}

static void
restore_fpu(const void *area)
{
	__asm__ volatile("fxrstor64 (%0)" : : "r"(area) : "memory");
}

/* What trap() says of a fault whose handler runs next (signal_fault). */
struct fault {
	int sig, code;
	uint64_t addr, trapno, err;
};
static struct fault fault;

/*
 * Build (sig)'s frame on the program's stack and make the system call
 * return into its handler; (ret) is what the call returned, kept in the
 * frame for the program to resume with; (fi), a fault's siginfo, or none
 * (SI_USER).  False if the stack is unusable (the process is then killed,
 * as Linux does with SIGSEGV).
 */
static int
push_frame(int sig, struct k_sigaction *a, long ret, uint64_t old_mask,
    const struct fault *fi)
{
	struct uregs *u = UREGS;
	/* Where the program was: at a `syscall` (rcx, r11 hold its rip and
	 * flags), or where a fault or rt_sigreturn leaves it (full_exit). */
	uint64_t rip = sys_full_return ? sys_ret_rip : u->rcx;
	uint64_t flags = sys_full_return ? sys_ret_flags : u->r11;
	uint64_t sp = sys_user_rsp - 128;      /* below the red zone */
	if ((a->flags & SA_ONSTACK) && alt.size && !on_alt_stack(sys_user_rsp))
		sp = alt.sp + alt.size;         /* the alternate stack, from its top */
	sp = (sp - FXSAVE_SIZE) & ~63UL;
	uint64_t fp = sp;
	sp = ((sp - sizeof(struct rt_sigframe)) & ~15UL) - 8;       /* as after a call */
	if (!user_ok(sp, fp + FXSAVE_SIZE - sp))
		return 0;
	struct rt_sigframe *f = (struct rt_sigframe *)sp;
	memset(f, 0, sizeof *f);
	save_fpu((void *)fp);
	f->pretcode = a->restorer;
	struct sigcontext64 *mc = &f->uc.mc;
	mc->r8 = u->r8; mc->r9 = u->r9; mc->r10 = u->r10; mc->r11 = u->r11;
	mc->r12 = u->r12; mc->r13 = u->r13; mc->r14 = u->r14; mc->r15 = u->r15;
	mc->rdi = u->rdi; mc->rsi = u->rsi; mc->rbp = u->rbp; mc->rbx = u->rbx;
	mc->rdx = u->rdx; mc->rax = (uint64_t)ret; mc->rcx = u->rcx;
	mc->rsp = sys_user_rsp; mc->rip = rip; mc->eflags = flags;
	mc->cs = SEL_UCODE; mc->ss = SEL_UDATA;
	mc->oldmask = old_mask;
	mc->fpstate = fp;
	f->uc.ss_sp = alt.sp;           /* uc_stack: the alternate stack's settings */
	f->uc.ss_size = alt.size;
	f->uc.ss_flags = alt.size ? 0 : SS_DISABLE;
	f->uc.uc_sigmask = old_mask;
	f->info[0] = sig;               /* si_code 0: SI_USER */
	if (fi) {                       /* a fault's: what and where */
		f->info[2] = fi->code;
		f->info[4] = (int32_t)fi->addr;         /* si_addr, at byte 16 */
		f->info[5] = (int32_t)(fi->addr >> 32);
		mc->trapno = fi->trapno;
		mc->err = fi->err;
		mc->cr2 = fi->trapno == 14 ? fi->addr : 0;
	}
	/* into the handler: handler(sig, &info, &uc), as if called from the restorer */
	u->rdi = (uint64_t)sig;
	u->rsi = (uint64_t)&f->info;
	u->rdx = (uint64_t)&f->uc;
	u->rcx = a->handler;
	u->r11 = flags & ~(1UL << 10);  /* DF clear, as the ABI wants */
	sys_user_rsp = sp;
	sys_full_return = 0;            /* a call into the handler: rcx, r11 are free */
	return 1;
}

/* Run (sig)'s handler next (a frame, the handler's mask, SA_RESETHAND). */
static void
run_handler(int sig, long resume, uint64_t old_mask, const struct fault *fi)
{
	struct k_sigaction *a = &actions[sig];
	if (!push_frame(sig, a, resume, old_mask, fi))
		proc_kill(SIGSEGV);
	set_mask(sigmask | a->mask | (a->flags & SA_NODEFER ? 0 : BIT(sig)));
	if (a->flags & SA_RESETHAND) {
		*a = (struct k_sigaction){ 0, 0, 0, 0 };
		publish();
	}
}

/*
 * On the way out of every system call: take one signal that may be taken
 * now.  (ret) is the call's result; -ERESTARTSYS from a blocking call that
 * a signal interrupted becomes EINTR, or a restart of the call after the
 * handler (SA_RESTART) or when no handler runs.  Returns the value the
 * program sees in rax now.
 */
long
signal_return(long nr, long ret)
{
	uint64_t r = ready();
	int restart = nr != __NR_rt_sigreturn && (ret == -ERESTARTSYS || ret == -ERESTARTNOHAND);
	uint64_t old_mask = mask_saved ? saved_mask : sigmask;
	mask_saved = 0;

	for (int sig = 1; r; sig++, r >>= 1) {
		if (!(r & 1))
			continue;
		sigpending &= ~BIT(sig);
		struct k_sigaction *a = &actions[sig];
		if (ignored(sig))
			continue;
		if (a->handler == SIG_DFL) {
			if (stopping(sig))
				continue;
			proc_kill(sig);
		}
		long resume = ret;
		if (restart && ret == -ERESTARTSYS && (a->flags & SA_RESTART)) {
			resume = nr;            /* the call again, after the handler: */
			UREGS->rcx -= 2;        /* back onto the `syscall` instruction */
		} else if (restart) {
			resume = -EINTR;
		}
		run_handler(sig, resume, old_mask, NULL);
		return 0;
	}
	if (old_mask != sigmask)        /* rt_sigsuspend's, ppoll's: no handler ran */
		set_mask(old_mask);
	if (restart && ret == -ERESTARTSYS) {
		UREGS->rcx -= 2;        /* nothing to run: the call goes on */
		return nr;
	}
	return restart ? -EINTR : ret;
}

/*
 * A CPU fault in the program raises (sig): whether its handler is to run
 * (caught and not blocked).  Otherwise the fault kills, as with Linux,
 * which forces the default action on a blocked or ignored fault signal.
 * Called in ring 0 (trap): it only reads.
 */
int
signal_takes_fault(int sig)
{
	return actions[sig].handler > SIG_IGN && !(sigmask & BIT(sig));
}

void
signal_fault_info(int sig, int code, uint64_t addr, uint64_t trapno, uint64_t err)
{
	fault = (struct fault){ sig, code, addr, trapno, err };
}

/* At CPL 3 from fault_entry: the faulting program's registers are in
 * sys_uregs; its handler runs next, like one taken after a system call. */
long
signal_fault(void)
{
	run_handler(fault.sig, (long)UREGS->rax, sigmask, &fault);
	return 0;
}

/* In ring 0, at the host's nudge: whether a signal may be taken now. */
int
signal_async_ready(void)
{
	return ready() != 0;
}

/* At CPL 3 from async_entry: take a signal as a system call's way out
 * would (none restarts: the program was not in one), everything else of
 * the program as it was (full_exit). */
long
signal_async(void)
{
	return signal_return(__NR_rt_sigreturn, (long)UREGS->rax);
}

/* The handler has returned (through its restorer): resume the program. */
long
sys_rt_sigreturn(void)
{
	struct uregs *u = UREGS;
	uint64_t at = sys_user_rsp - 8;         /* the handler's ret popped pretcode */
	struct rt_sigframe *f = (struct rt_sigframe *)at;
	if (!user_ok(at, sizeof *f))
		proc_kill(SIGSEGV);
	struct sigcontext64 *mc = &f->uc.mc;
	if (mc->rip >= 0x800000000000UL || mc->rsp >= 0x800000000000UL)
		proc_kill(SIGSEGV);
	if (mc->fpstate) {
		if ((mc->fpstate & 15) || !user_ok(mc->fpstate, FXSAVE_SIZE) ||
		    (*(uint32_t *)(mc->fpstate + 24) & ~0xffffU))   /* MXCSR: #GP */
			proc_kill(SIGSEGV);
		restore_fpu((const void *)mc->fpstate);
	}
	u->r8 = mc->r8; u->r9 = mc->r9; u->r10 = mc->r10;
	u->r12 = mc->r12; u->r13 = mc->r13; u->r14 = mc->r14; u->r15 = mc->r15;
	u->rdi = mc->rdi; u->rsi = mc->rsi; u->rbp = mc->rbp; u->rbx = mc->rbx;
	u->rdx = mc->rdx; u->rcx = mc->rcx; u->r11 = mc->r11;
	/* every register back, rcx and r11 too (a fault may have left the
	 * program mid-computation): out through full_exit */
	sys_ret_rip = mc->rip;
	sys_ret_flags = USER_FLAGS(mc->eflags);
	sys_full_return = 1;
	/* and the alternate stack as the frame has it (Linux restores it too:
	 * a handler's sigaltstack lasts only until it returns); set while
	 * still on the handler's stack, where the frame is */
	(void)set_alt(f->uc.ss_sp, f->uc.ss_flags, f->uc.ss_size);
	sys_user_rsp = mc->rsp;
	set_mask(f->uc.uc_sigmask);
	return (long)mc->rax;
}

long
sys_rt_sigaction(long sig_, long act, long oact, long size)
{
	long sig = (int)sig_;

	if (size != 8)
		return -EINVAL;
	if (sig < 1 || sig > NSIG)
		return -EINVAL;
	if (act && (sig == SIGKILL || sig == SIGSTOP))
		return -EINVAL;
	if (act && !user_ok((uint64_t)act, sizeof(struct k_sigaction)))
		return -EFAULT;
	if (oact && !user_ok((uint64_t)oact, sizeof(struct k_sigaction)))
		return -EFAULT;
	if (oact)
		*(struct k_sigaction *)oact = actions[sig];
	if (act) {
		struct k_sigaction a = *(const struct k_sigaction *)act;
		if (a.handler > SIG_IGN && !user_ok(a.handler, 1))
			return -EFAULT;
		actions[sig] = a;
		publish();
	}
	return 0;
}

long
sys_rt_sigprocmask(long how_, long set, long oset, long size)
{
	long how = (int)how_;
	uint64_t s = 0;
	long e = set ? signal_user_set(set, size, &s) : size != 8 ? -EINVAL : 0;

	if (e)
		return e;
	if (oset && !user_ok((uint64_t)oset, 8))
		return -EFAULT;
	if (set && how != 0 && how != 1 && how != 2)
		return -EINVAL;
	if (oset)
		*(uint64_t *)oset = sigmask;
	if (set)        /* what waited behind the mask is taken on the way out */
		set_mask(how == 0 ? sigmask | s : how == 1 ? sigmask & ~s : s);
	return 0;
}

long
sys_rt_sigpending(long set, long size)
{
	if (size != 8)
		return -EINVAL;
	if (!user_ok((uint64_t)set, 8))
		return -EFAULT;
	ready();
	*(uint64_t *)set = sigpending & sigmask;
	return 0;
}

/* (mask) is the mask until this system call returns (and its handler,
 * if a signal comes, returns): rt_sigsuspend's, ppoll's. */
void
signal_mask_for_call(uint64_t mask)
{
	saved_mask = sigmask;
	mask_saved = 1;
	set_mask(mask);
}

/* Wait, with (mask) for a mask, until a signal is taken: always EINTR. */
long
sys_rt_sigsuspend(long mask, long size)
{
	uint64_t m;
	long e = signal_user_set(mask, size, &m);
	if (e)
		return e;
	signal_mask_for_call(m);
	signal_wait();
	return -ERESTARTNOHAND;
}

long
sys_pause(void)
{
	signal_wait();
	return -ERESTARTNOHAND;
}

/* Halt until a signal may be taken (the host wakes us when it posts one). */
void
signal_wait(void)
{
	while (!signal_pending()) {
		CTL->asleep = UF_SLEEP_TIMER;     /* (the host wakes us to post) */
		mfence();
		if (!signal_pending())
			sleep_until(rdtsc() + ns_to_tsc(100000000));
		CTL->asleep = UF_SLEEP_NONE;
	}
}

/* alarm(seconds): SIGALRM then; the seconds left of the previous one. */
long
sys_alarm(long seconds)
{
	uint64_t now = clock_mono_ns();
	long left = alarm_ns > now ? (long)((alarm_ns - now + 999999999) / 1000000000) : 0;
	set_alarm(seconds ? now + (uint64_t)(unsigned)seconds * 1000000000 : 0, 1);
	alarm_every_ns = 0;
	return left;
}

struct itimerval { struct timeval interval, value; };
#define ITIMER_REAL 0

static void
to_timeval(uint64_t ns, struct timeval *tv)
{
	tv->tv_sec = (int64_t)(ns / 1000000000);
	tv->tv_usec = (int64_t)(ns % 1000000000 / 1000);
}

static long
itimer_get(struct itimerval *cur)
{
	uint64_t now = clock_mono_ns();
	to_timeval(alarm_ns > now ? alarm_ns - now : (alarm_ns ? 1000 : 0), &cur->value);
	to_timeval(alarm_every_ns, &cur->interval);
	return 0;
}

/* Only ITIMER_REAL (the other two count CPU time, which nothing here does). */
long
sys_getitimer(long which, long cur)
{
	if ((int)which != ITIMER_REAL)
		return -EINVAL;
	if (!user_ok((uint64_t)cur, sizeof(struct itimerval)))
		return -EFAULT;
	return itimer_get((struct itimerval *)cur);
}

long
sys_setitimer(long which, long new, long old)
{
	if ((int)which != ITIMER_REAL) {
		static int said;
		if (!said++)
			kprintf("setitimer(%d): only ITIMER_REAL is supported: EINVAL\n", (int)which);
		return -EINVAL;
	}
	if (!user_ok((uint64_t)new, sizeof(struct itimerval)) ||
	    (old && !user_ok((uint64_t)old, sizeof(struct itimerval))))
		return -EFAULT;
	const struct itimerval *n = (const struct itimerval *)new;
	if (n->value.tv_sec < 0 || n->value.tv_usec < 0 || n->value.tv_usec >= 1000000 ||
	    n->interval.tv_sec < 0 || n->interval.tv_usec < 0 || n->interval.tv_usec >= 1000000)
		return -EINVAL;
	struct itimerval was;
	itimer_get(&was);
	uint64_t value = (uint64_t)n->value.tv_sec * 1000000000 + (uint64_t)n->value.tv_usec * 1000;
	uint64_t every = (uint64_t)n->interval.tv_sec * 1000000000 +
	    (uint64_t)n->interval.tv_usec * 1000;
	set_alarm(value ? clock_mono_ns() + value : 0, 1);
	alarm_every_ns = value ? every : 0;
	if (old)
		*(struct itimerval *)old = was;
	return 0;
}

/* A write found no reader: SIGPIPE (the write returns EPIPE). */
void
proc_sigpipe(void)
{
	signal_raise(SIGPIPE);
}
