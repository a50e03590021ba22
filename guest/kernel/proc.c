/*
 * proc.c: this process: its ids, its end, and signals.  Dispositions and
 * the mask are recorded; a signal sent to itself takes its default action
 * (running handlers is not supported yet, and says so in the log).
 */
#include "defs.h"
#include "linux.h"

static struct k_sigaction actions[NSIG + 1];
static uint64_t sigmask, sigpending;

void
proc_init(void)
{
}

void
proc_exit(int status)
{
	file_close_all();
	CTL->status = status & 0xff;
	CTL->state = UF_STATE_EXITED;
	gate(GATE_POWEROFF, 0, 0);
	for (;;)
		;
}

void
proc_kill(int sig)
{
	file_close_all();
	CTL->status = sig;
	CTL->state = UF_STATE_KILLED;
	gate(GATE_POWEROFF, 0, 0);
	for (;;)
		;
}

/* Signals whose default action is to do nothing. */
static int
default_ignored(int sig)
{
	return sig == SIGCHLD || sig == SIGURG || sig == SIGWINCH || sig == SIGCONT;
}

/* Act on (sig) sent to this process, now that it is not blocked. */
static void
deliver(int sig)
{
	uint64_t h = actions[sig].handler;

	if (sig == SIGSTOP || sig == SIGTSTP)
		return;         /* no job control: stopping is not supported */
	if (sig != SIGKILL && (h == SIG_IGN || (h == SIG_DFL && default_ignored(sig))))
		return;
	if (sig != SIGKILL && h != SIG_DFL)
		kprintf("signal %d: running signal handlers is not supported; "
		    "taking the default action\n", sig);
	if (default_ignored(sig))
		return;
	proc_kill(sig);
}

static void
raise_sig(int sig)
{
	if (sig != SIGKILL && sig != SIGSTOP && (sigmask & (1UL << (sig - 1)))) {
		sigpending |= 1UL << (sig - 1);
		return;
	}
	deliver(sig);
}

/* A write found no reader: SIGPIPE, unless ignored (then EPIPE). */
void
proc_sigpipe(void)
{
	raise_sig(SIGPIPE);
}

long
sys_exit_group(long status)
{
	proc_exit((int)status);
}

long
sys_getpid(void)  { return BOOT->pid; }
long
sys_getppid(void) { return BOOT->ppid; }
long
sys_getuid(void)  { return BOOT->uid; }
long
sys_getgid(void)  { return BOOT->gid; }

long
sys_kill(long pid, long sig)
{
	if (sig < 0 || sig > NSIG)
		return -EINVAL;
	if (pid != BOOT->pid && pid != 0 && pid != -1)
		return -ESRCH;  /* no other process in this job yet */
	if (sig)
		raise_sig((int)sig);
	return 0;
}

long
sys_tgkill(long tgid, long tid, long sig)
{
	if (tgid != BOOT->pid)
		return -ESRCH;
	return sys_kill(tid, sig);
}

long
sys_tkill(long tid, long sig)
{
	return sys_kill(tid, sig);
}

long
sys_rt_sigaction(long sig, long act, long oact, long size)
{
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
	if (act)
		actions[sig] = *(const struct k_sigaction *)act;
	return 0;
}

long
sys_rt_sigprocmask(long how, long set, long oset, long size)
{
	if (size != 8)
		return -EINVAL;
	if (set && !user_ok((uint64_t)set, 8))
		return -EFAULT;
	if (oset && !user_ok((uint64_t)oset, 8))
		return -EFAULT;
	if (oset)
		*(uint64_t *)oset = sigmask;
	if (set) {
		uint64_t s = *(const uint64_t *)set;
		switch (how) {
		case 0: sigmask |= s; break;            /* SIG_BLOCK */
		case 1: sigmask &= ~s; break;           /* SIG_UNBLOCK */
		case 2: sigmask = s; break;             /* SIG_SETMASK */
		default: return -EINVAL;
		}
		sigmask &= ~((1UL << (SIGKILL - 1)) | (1UL << (SIGSTOP - 1)));
		uint64_t ready = sigpending & ~sigmask;
		for (int sig = 1; ready; sig++, ready >>= 1) {
			if (ready & 1) {
				sigpending &= ~(1UL << (sig - 1));
				deliver(sig);
			}
		}
	}
	return 0;
}
