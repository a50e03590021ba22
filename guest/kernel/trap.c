/*
 * trap.c: ring 0.  CPU exceptions (a fault in the program kills it the way
 * Linux would) and the privileged gate.  All of this is emulated on PVM, so
 * it does little and returns quickly; the hottest ring-0 work (doorbell,
 * halt, the interrupts that end a halt) is in entry.S and never gets here.
 */
#include "defs.h"
#include "x86.h"
#include "linux.h"

struct idtgate {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, _r;
};

static struct idtgate idt[256] __attribute__((aligned(16)));

#define V(n) extern char vector_##n[];
V(0) V(1) V(2) V(3) V(4) V(5) V(6) V(7) V(8) V(9) V(10) V(11) V(12) V(13)
V(14) V(15) V(16) V(17) V(18) V(19) V(20) V(21) V(32) V(33) V(255)
#undef V
extern char gate_ud2[];

static void
setgate(int n, void *fn, int ist, int dpl)
{
	uint64_t a = (uint64_t)fn;

	idt[n] = (struct idtgate){ (uint16_t)a, SEL_KCODE, (uint8_t)ist,
	    (uint8_t)(0x8e | dpl << 5), (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0 };
}

/*
 * Exceptions run on IST1 (a known-good stack even when the fault is in the
 * syscall layer at CPL 0), a double fault on IST2.  Interrupts use no IST:
 * they only arrive inside the halt and nest on its stack.
 */
void
idt_init(void)
{
	static void *exc[22] = {
		vector_0, vector_1, vector_2, vector_3, vector_4, vector_5,
		vector_6, vector_7, vector_8, vector_9, vector_10, vector_11,
		vector_12, vector_13, vector_14, vector_15, vector_16,
		vector_17, vector_18, vector_19, vector_20, vector_21,
	};
	struct { uint16_t lim; uint64_t base; } __attribute__((packed)) p;

	/* int3 and into may be used by the program (a debugger's breakpoint,
	 * a SIGTRAP handler): their gates are DPL 3, as on Linux; a DPL 0
	 * gate turns them into #GP where the CPU checks it (TCG, real KVM). */
	/* An NMI (the host's nudge) can come in the middle of any other
	 * handler: it has a stack of its own, IST3. */
	for (int i = 0; i < 22; i++)
		setgate(i, exc[i], i == 8 ? 2 : i == 2 ? 3 : 1, i == 3 || i == 4 ? 3 : 0);
	setgate(UF_VEC_TIMER, vector_32, 0, 0);
	setgate(UF_VEC_DOORBELL, vector_33, 0, 0);
	setgate(UF_VEC_SPURIOUS, vector_255, 0, 0);
	p.lim = sizeof(idt) - 1;
	p.base = (uint64_t)idt;
	__asm__ volatile("lidt %0" : : "m"(p));
}

static void __attribute__((noreturn))
poweroff(void)
{
	outb(UF_EXIT_PORT, 0);                  /* microvm's isa-debug-exit */
	outw(UF_ACPI_PM1A_CNT, UF_ACPI_SLP_EN); /* a pc machine's ACPI (libvirt) */
	for (;;)        /* neither there: the host's timeout ends us */
		__asm__ volatile("cli; hlt");
}

long
gate_ring0(long op, long a, long b)
{
	(void)b;
	switch (op) {
	case GATE_WRFSBASE:
		wrmsr(MSR_FS_BASE, (uint64_t)a);
		return 0;
	case GATE_POWEROFF:
		poweroff();
	}
	return -EINVAL;
}

/* Linux's choice of signal for each CPU exception that a program can raise. */
static int
exception_signal(uint64_t vector)
{
	switch (vector) {
	case 0: case 16: case 19: return SIGFPE;   /* #DE, #MF, #XM */
	case 1: case 3: return SIGTRAP;
	case 4: case 5: case 10: case 11: case 12: case 13: case 14: case 17:
		return SIGSEGV;
	case 6: return SIGILL;
	case 7: return SIGFPE;
	default: return SIGKILL;
	}
}

/* Linux's si_code and si_addr for a fault (the siginfo a handler gets). */
static int
fault_code(uint64_t vector, uint64_t error)
{
	switch (vector) {
	case 14: return error & 1 ? 2 : 1;      /* SEGV_ACCERR, SEGV_MAPERR */
	case 0: return 1;                       /* FPE_INTDIV */
	case 6: return 2;                       /* ILL_ILLOPN */
	case 17: return 1;                      /* BUS_ADRALN */
	default: return 0x80;                   /* SI_KERNEL */
	}
}

/*
 * Leave for (entry) at CPL 3 with the program's registers in sys_uregs,
 * as syscall_entry would have saved them, and its rip, flags and stack
 * where full_exit finds them when a handler returns.
 */
static void
leave_for(struct trapframe *tf, void (*entry)(void))
{
	struct uregs *u = UREGS;
	u->rax = tf->rax; u->rbx = tf->rbx; u->rcx = tf->rcx; u->rdx = tf->rdx;
	u->rsi = tf->rsi; u->rdi = tf->rdi; u->rbp = tf->rbp;
	u->r8 = tf->r8; u->r9 = tf->r9; u->r10 = tf->r10; u->r11 = tf->r11;
	u->r12 = tf->r12; u->r13 = tf->r13; u->r14 = tf->r14; u->r15 = tf->r15;
	sys_user_rsp = tf->rsp;
	sys_ret_rip = tf->rip;
	sys_ret_flags = USER_FLAGS(tf->rflags);
	sys_full_return = 1;
	tf->rip = (uint64_t)entry;
	tf->rflags = 0x2;
}

static const char *const exception_name[22] = {
	"divide error", "debug", "NMI", "breakpoint", "overflow",
	"bound range", "invalid opcode", "device not available",
	"double fault", "coprocessor overrun", "invalid TSS",
	"segment not present", "stack fault", "general protection",
	"page fault", "reserved", "x87 FP error", "alignment check",
	"machine check", "SIMD FP error", "virtualization", "control protection",
};

void
trap(struct trapframe *tf)
{
	switch (tf->vector) {
	case 2:
		/*
		 * The host's nudge: a signal was posted to a program that has
		 * made no system call since (it computes).  Taken in the
		 * program's own code; anywhere else (the system-call layer, a
		 * halt) the way out looks at signals anyway.
		 */
		if ((tf->cs & 3) && tf->rip >= UF_USER_BASE && signal_async_ready())
			leave_for(tf, async_entry);
		return;
	case 6:
		if (tf->rip == (uint64_t)gate_ud2) {
			tf->rax = (uint64_t)gate_ring0((long)tf->rdi,
			    (long)tf->rsi, (long)tf->rdx);
			tf->rip += 2;
			return;
		}
		break;
	}

	/* A CPU exception in the program, whose signal it catches: its
	 * handler runs (at CPL 3: the frame is built there, see fault_entry). */
	int sig = exception_signal(tf->vector);
	uint64_t addr = tf->vector == 14 ? read_cr2() : 0;
	if ((tf->cs & 3) && tf->rip >= UF_USER_BASE && sig != SIGKILL &&
	    signal_takes_fault(sig)) {
		signal_fault_info(sig, fault_code(tf->vector, tf->error),
		    tf->vector == 14 ? addr : tf->rip, tf->vector, tf->error);
		leave_for(tf, fault_entry);
		return;
	}
	/* Otherwise the process dies as Linux would kill it. */
	CTL->fault_vector = tf->vector;
	CTL->fault_rip = tf->rip;
	CTL->fault_addr = addr;
	CTL->fault_error = tf->error;
	kprintf("%s at rip %#lx addr %#lx (error %#lx%s)\n",
	    tf->vector < 22 ? exception_name[tf->vector] : "exception",
	    tf->rip, addr, tf->error,
	    (tf->cs & 3) ? "" : ", in the kernel");
	CTL->status = sig;
	if ((tf->cs & 3) || tf->rip >= UF_USER_BASE) {
		/* The program's own fault: its VM parks for another process (the
		 * host closes the ends its files held, as the table in the
		 * control page says). */
		CTL->state = UF_STATE_KILLED;
		bell_stop();
		park_enter();
	}
	CTL->state = UF_STATE_PANIC;    /* a kernel that fails is not reused */
	poweroff();
}
