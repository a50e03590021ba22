/*
 * proc.c: this process and its relatives.  fork, wait, kill of others and
 * execve are requests to the host (struct uf_ctl), which fills a parked VM
 * with a copy of this one (park.c), keeps the job's process table and lays
 * out new images.  Signals themselves are signal.c's.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

#define CLONE_VM             0x00000100
#define CLONE_FS             0x00000200
#define CLONE_FILES          0x00000400
#define CLONE_SIGHAND        0x00000800
#define CLONE_VFORK          0x00004000
#define CLONE_PARENT         0x00008000
#define CLONE_THREAD         0x00010000
#define CLONE_SETTLS         0x00080000
#define CLONE_PARENT_SETTID  0x00100000
#define CLONE_CHILD_CLEARTID 0x00200000
#define CLONE_CHILD_SETTID   0x01000000
#define WNOHANG    1
#define WUNTRACED  2
#define WEXITED    4
#define WCONTINUED 8
#define WNOWAIT    0x01000000
#define P_ALL  0
#define P_PID  1
#define P_PGID 2


static uint64_t clear_tid;

void
proc_init(void)
{
}

static int
replied(void *seq)
{
	return CTL->rep_seq == *(uint32_t *)seq;
}

/* Ask the host (req) with up to four arguments and wait for its answer.
 * A FILE request is answered in the time the host's system call takes
 * (a 1 MiB read: ~0.2 ms here): spin longer before halting, as a wake-up
 * from a halt costs more than that. */
long
host_call(int req, long a0, long a1, long a2, long a3)
{
	uint32_t seq = CTL->req_seq + 1;

	CTL->arg[0] = a0;
	CTL->arg[1] = a1;
	CTL->arg[2] = a2;
	CTL->arg[3] = a3;
	CTL->req = (uint32_t)req;
	__atomic_store_n(&CTL->req_seq, seq, __ATOMIC_RELEASE);
	mfence();
	if (!CTL->host_watch)           /* (else the host sees req_seq itself) */
		doorbell();
	wait_until(replied, &seq, 0, UF_SLEEP_REPLY, -1, req == UF_REQ_FILE ? SPIN_FAR_NS : SPIN_NS);
	CTL->req = UF_REQ_NONE;
	return CTL->ret;
}

/* The process is over: close what it holds, say how it ended, and park
 * the VM for the host to give it another process (park.c). */
static void __attribute__((noreturn))
proc_end(int state, int status)
{
	file_close_all();
	bell_stop();
	CTL->status = status;
	CTL->state = (uint32_t)state;
	park_gate();
}

void
proc_exit(int status)
{
	if (clear_tid && user_ok(clear_tid, 4))
		*(volatile int *)clear_tid = 0;
	proc_end(UF_STATE_EXITED, status & 0xff);
}

void
proc_kill(int sig)
{
	proc_end(UF_STATE_KILLED, sig);
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

/*
 * Process groups and sessions: the job is one of each, led by pid 1 (so
 * kill(0) and kill(-pgid) reach the whole job).  setpgid and setsid
 * succeed and change nothing: a shell or `timeout` that makes a group of
 * its own still works, its group just stays the job's.
 */
long
sys_getpgid(long pid)   { return (int)pid < 0 ? -ESRCH : 1; }
long
sys_getpgrp(void)       { return 1; }
long
sys_getsid(long pid)    { return (int)pid < 0 ? -ESRCH : 1; }
long
sys_setsid(void)        { return BOOT->pid; }

long
sys_setpgid(long pid, long pgid)
{
	if ((int)pid < 0 || (int)pgid < 0)
		return -EINVAL;
	return 0;
}
long
sys_getgid(void)  { return BOOT->gid; }

/*
 * kill: to itself, here; to others (pid > 0, or everyone: 0 and -1, or a
 * process group: all of the job is one), through the host.
 */
long
sys_kill(long pid_, long sig_)
{
	long pid = (int)pid_, sig = (int)sig_;     /* pid_t and int: 32 bits */

	if (sig < 0 || sig > NSIG)
		return -EINVAL;
	if (pid == BOOT->pid) {
		if (sig)
			signal_raise((int)sig);
		return 0;
	}
	long r = host_call(UF_REQ_KILL, pid, sig, 0, 0);
	if (r == 0 && sig && (pid == 0 || pid < -1))
		signal_raise((int)sig); /* the group includes this process */
	return r;
}

long
sys_tgkill(long tgid, long tid, long sig)
{
	if ((int)tgid != (int)tid)
		return -ESRCH;  /* one thread per process: tid == pid */
	return sys_kill(tid, sig);
}

long
sys_tkill(long tid, long sig)
{
	return sys_kill(tid, sig);
}

/* fork, vfork and clone used as fork: the host clones this VM. */
long
sys_clone(long flags, long newsp, long ptid, long ctid, long tls)
{
	if ((flags & (CLONE_THREAD | CLONE_SIGHAND)) ||
	    ((flags & CLONE_VM) && !(flags & CLONE_VFORK))) {
		static int said;
		if (!said++)
			kprintf("clone(%#lx): threads are not supported; returning ENOSYS\n", flags);
		return -ENOSYS;
	}
	if ((flags & CLONE_CHILD_SETTID) && !user_ok((uint64_t)ctid, 4))
		return -EFAULT;
	if ((flags & CLONE_PARENT_SETTID) && !user_ok((uint64_t)ptid, 4))
		return -EFAULT;
	bell_stop();
	long pid = fork_call(flags);
	if (pid < 0)
		return pid;
	if (pid == 0) {                 /* the child, in its own VM */
		clock_fork();
		random_fork();
		signal_fork();
		if (flags & CLONE_CHILD_SETTID)
			*(int *)ctid = (int)BOOT->pid;
		clear_tid = flags & CLONE_CHILD_CLEARTID ? (uint64_t)ctid : 0;
		if (flags & CLONE_SETTLS)
			sys_arch_prctl(ARCH_SET_FS, tls);
		if (newsp)              /* vfork-style clone onto a new stack */
			sys_user_rsp = (uint64_t)newsp;
		return 0;
	}
	if (flags & CLONE_PARENT_SETTID)
		*(int *)ptid = (int)pid;
	return pid;
}

long
sys_fork(void)
{
	return sys_clone(SIGCHLD, 0, 0, 0, 0);
}

long
sys_vfork(void)
{
	return sys_clone(SIGCHLD, 0, 0, 0, 0);
}

/*
 * Wait for child (pid) (-1: any) with (options) WNOHANG, WNOWAIT: its pid
 * and (*status), 0 (WNOHANG, none has ended), or -errno.  From the table
 * of children in the control page when it can tell (unifork_abi.h,
 * "Children"), else from the host.
 */
static long
wait_child(long pid, long options, int *status)
{
	uint32_t alive = __atomic_load_n(&CTL->kids_alive, __ATOMIC_ACQUIRE);
	uint32_t unlisted = CTL->kids_unlisted;

	for (int i = 0; i < UF_KIDS; i++) {
		volatile struct uf_kid *k = &CTL->kids[i];
		if (k->state != UF_KID_ENDED || (pid != -1 && (long)k->pid != pid))
			continue;
		uint32_t kid = k->pid;          /* read before it is ours: then */
		int st = k->wstatus;            /* the host may reuse the entry */
		uint32_t ended = UF_KID_ENDED;
		if (!(options & WNOWAIT) && !__atomic_compare_exchange_n(&k->state, &ended,
		    UF_KID_WAITED, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			continue;
		*status = st;
		return kid;
	}
	if (pid == -1 && !unlisted && (!alive || (options & WNOHANG)))
		return alive ? 0 : -ECHILD;
	long r = host_call(UF_REQ_WAIT, pid, options, 0, 0);
	*status = (int)CTL->val[0];
	return r;
}

long
sys_wait4(long pid_, long wstatus, long options_, long rusage)
{
	long pid = (int)pid_, options = (int)options_;
	int st = 0;

	if (options & ~(WNOHANG | WUNTRACED | WCONTINUED | 0x40000000 | 0x80000000))
		return -EINVAL;
	if (wstatus && !user_ok((uint64_t)wstatus, 4))
		return -EFAULT;
	if (rusage && !user_ok((uint64_t)rusage, 144))
		return -EFAULT;
	long r = wait_child(pid < -1 || pid == 0 ? -1 : pid, options & WNOHANG, &st);
	if (r > 0 && wstatus)
		*(int *)wstatus = st;
	if (r >= 0 && rusage)
		memset((void *)rusage, 0, 144);
	return r;
}

long
sys_waitid(long idtype_, long id_, long infop, long options_)
{
	long idtype = (int)idtype_, id = (int)id_, options = (int)options_;

	if (!(options & WEXITED) || (options & ~(WNOHANG | WEXITED | WNOWAIT |
	    WUNTRACED | WCONTINUED)))
		return -EINVAL;
	if (idtype != P_ALL && idtype != P_PID && idtype != P_PGID)
		return -EINVAL;
	if (infop && !user_ok((uint64_t)infop, 128))
		return -EFAULT;
	int st = 0;
	long r = wait_child(idtype == P_PID ? id : -1, options & (WNOHANG | WNOWAIT), &st);
	if (r < 0)
		return r;
	if (infop) {
		int *si = (int *)infop;
		memset(si, 0, 128);
		if (r > 0) {
			si[0] = SIGCHLD;
			si[2] = (st & 0x7f) ? ((st & 0x80) ? 3 : 2) : 1;  /* CLD_* */
			si[4] = (int)r;
			si[5] = (int)BOOT->uid;
			si[6] = (st & 0x7f) ? (st & 0x7f) : ((st >> 8) & 0xff);
		}
	}
	return 0;
}

/*
 * execve and execveat: the host finds the program in the job's tree
 * (relative to directory handle dirh, or the descriptor itself when the
 * path is empty), reads argv and envp from our memory and lays out the
 * new image; then this process starts over, keeping its descriptors but
 * those marked close-on-exec.
 */
long
sys_execveat(int dirfd, long path, long argv, long envp, int flags)
{
	const char *p = (const char *)path;
	long dirh = AT_FDCWD;

	if (!user_str_ok(p, 4096))
		return -EFAULT;
	if (!user_ok((uint64_t)argv, 8) || (envp && !user_ok((uint64_t)envp, 8)))
		return -EFAULT;
	if (flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -EINVAL;
	if (!p[0] && !(flags & AT_EMPTY_PATH))
		return -ENOENT;
	if (dirfd != AT_FDCWD && p[0] != '/' && (dirh = fd_handle(dirfd)) < 0)
		return dirh;
	long r = host_call(UF_REQ_EXEC, path, argv, envp, dirh);
	if (r < 0)
		return r;
	signal_exec();
	clear_tid = 0;
	file_exec();
	vm_init();
	vm_image_written();
	/*
	 * The host rewrote the code this CPU is about to run (cross-modifying
	 * code): the CPU must serialize before executing it, or it may run
	 * what it prefetched of the old image.  cpuid serializes at any CPL.
	 */
	uint32_t id[4];
	cpuid(0, 0, id);
	start_program(BOOT->entry, BOOT->sp);
}

long
sys_execve(long path, long argv, long envp)
{
	return sys_execveat(AT_FDCWD, path, argv, envp, 0);
}
