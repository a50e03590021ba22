/*
 * park.c: a VM between two processes (unifork_abi.h, "Vessels").  When
 * its process ends the kernel parks here, in ring 0, until the host has
 * given it a forked child's memory; then it comes back to life as that
 * child, inside the parent's fork().  A vessel that has run no process
 * may be given a program instead, and starts it as at boot (main.c).
 *
 * Parked, the kernel touches only its code, its descriptor tables, the
 * page tables and the park page, whose stack it runs on: the host rewrites
 * everything else of the RAM under it, the kernel's own data included.
 * So nothing here may keep state in kernel data across the halt: what it
 * reads after the halt (forkctx, fs_base, ...) is the parent's.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

#define PARK         ((volatile struct uf_park *)UF_PARK_ADDR)
#define PARK_STACK   (UF_PARK_ADDR + UF_PARK_SIZE)
#define FORKCTX_MAGIC 0x58544358524f4655UL       /* "UFORKCTX" */

/* The parent's context as fork_save (entry.S) left it, in the parent's
 * RAM: in a child, the copy the host made of it. */
struct forkctx forkctx;

extern char __text_start[], __text_end[], sys_stack[];

static void fork_resume(void) __attribute__((noreturn));

/*
 * fork() in the parent: save the context, then ask the host.  The call
 * returns twice: here with the child's pid (or -errno), and with 0 in a
 * parked VM that the host made a copy of us (fork_resume).
 */
long
fork_call(long flags)
{
	if (fork_save(&forkctx)) {
		forkctx.magic = 0;
		CTL->req = UF_REQ_NONE;
		return 0;
	}
	forkctx.magic = FORKCTX_MAGIC;
	long pid = host_call(UF_REQ_FORK, flags, (long)clock_tsc(), 0, 0);
	forkctx.magic = 0;
	return pid;
}

/*
 * Ring 0, interrupts off, on the park stack (park_enter in entry.S): the
 * process has ended.  Tell the host, then halt until it says go.
 */
void
park(void)
{
	volatile struct uf_park *k = PARK;
	uint32_t seq = k->parked + 1;

	k->go = ~seq;                   /* only the host's go starts us, */
	k->boot = 0;                    /* and only the host's boot boots us */
	k->parked = seq;
	CTL->req = UF_REQ_EXIT;
	/* unanswered, whatever the program left in the control page */
	__atomic_store_n(&CTL->req_seq, CTL->rep_seq + 1, __ATOMIC_RELEASE);
	doorbell_port();
	while (k->go != seq)
		halt(0);
	/*
	 * The RAM is the parent's now.  The page tables are identical unless
	 * the parent wrote its own, but the TLB must not keep what the last
	 * occupant's said; the reload also serializes, as code the host
	 * rewrote under this CPU requires before it runs.
	 */
	write_cr3(read_cr3());
	if (k->boot) {                  /* a vessel that ran nothing, given a program */
		k->boot = 0;
		boot_program();
	}
	if (forkctx.cs & 3)             /* the system-call layer's CPL (PVM: 3) */
		enter_user((uint64_t)fork_resume, PARK_STACK);
	fork_resume();
}

/* Whether (c) is a context fork_save could have written. */
static int
forkctx_ok(const struct forkctx *c)
{
	return c->magic == FORKCTX_MAGIC &&
	    c->rip >= (uint64_t)__text_start && c->rip < (uint64_t)__text_end &&
	    c->rsp > (uint64_t)sys_stack && c->rsp <= (uint64_t)sys_stack_top &&
	    !(*(const uint32_t *)(c->fpu + 24) & ~0xffffU);    /* MXCSR: else #GP */
}

/* At the CPL of the parent's system-call layer, still on the park stack:
 * become the child. */
static void
fork_resume(void)
{
	if (!forkctx_ok(&forkctx)) {
		kprintf("fork: the parent's saved context is not one: the child is killed\n");
		proc_kill(SIGKILL);
	}
	restore_fs_base();
	vm_image_written();
	fork_jump(&forkctx);
}
