/*
 * entry.S: the ways into the kernel.
 *
 *  syscall_entry  the program's `syscall`.  On real KVM and TCG it runs at
 *                 CPL 0; on nested KVM (PVM) the CPU lands here still at
 *                 CPL 3.  So this path uses no privileged instruction and
 *                 returns the way the current CPL allows.
 *  vector_N       CPU exceptions and the two interrupts, always ring 0.
 *  gate           the one way from the system-call layer to ring-0 work.
 *  enter_user     the first drop to ring 3.
 */
#include "unifork_abi.h"
#include "x86.h"

	.text

/*
 * The hot ring-0 work, written out in a few instructions: on PVM each
 * ring-0 instruction is emulated (a trap into trap() and back costs ~80 us,
 * these ~20-50), so the doorbell, the halt and the interrupts that end a
 * halt never go through trapframes and C.  They clobber only rax, rcx, rdx
 * (the callers' to lose: they are called as C functions).
 */
.macro DOORBELL_BODY                    /* one byte to the doorbell UART */
	movl $UF_DOORBELL_PORT, %edx
	movb $1, %al
	outb %al, %dx
.endm

/* Halt until an interrupt; arm the TSC deadline first if rdi is not 0.
 * sti's one-instruction shadow makes sti;hlt atomic, so an interrupt that
 * is already pending wakes the hlt. */
.macro HALT_BODY
	testq %rdi, %rdi
	jz 1f
	movl $MSR_TSC_DEADLINE, %ecx
	movl %edi, %eax
	movq %rdi, %rdx
	shrq $32, %rdx
	wrmsr
1:	sti
	hlt
	cli
	testq %rdi, %rdi
	jz 2f
	xorl %eax, %eax                 /* disarm: ecx still names the MSR */
	xorl %edx, %edx
	wrmsr
2:
.endm

.macro LAPIC_EOI
	movl $(LAPIC_BASE + 0xb0), %eax
	movl $0, (%rax)
.endm

/*
 * syscall: rax = number, args in rdi rsi rdx r10 r8 r9, rcx = return rip,
 * r11 = rflags.  The stack is still the program's, and the 128 bytes below
 * its rsp (the red zone) may be live: never touch them.  One thread per VM,
 * so a single saved-rsp slot and a single syscall stack suffice.
 * Linux preserves every register but rax, rcx and r11; the C code is built
 * with -mgeneral-regs-only, so the SSE registers are never touched.
 * All the program's registers are pushed (struct uregs in defs.h) and
 * popped back, so that a signal handler's entry and rt_sigreturn can
 * rewrite them (signal.c).
 */
	.globl syscall_entry
syscall_entry:
	movq %rsp, sys_user_rsp(%rip)
	leaq sys_stack_top(%rip), %rsp
	cld
	pushq %rbx
	pushq %rbp
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	pushq %rcx
	pushq %r11
	pushq %rdi
	pushq %rsi
	pushq %rdx
	pushq %r10
	pushq %r8
	pushq %r9
	pushq %rax
	movq %r10, %rcx                 /* 4th argument, C convention */
	pushq %r9                       /* 7th C argument: the 6th syscall arg */
	movq %r8, %r9
	movq %rcx, %r8
	movq %rdx, %rcx
	movq %rsi, %rdx
	movq %rdi, %rsi
	movq %rax, %rdi                 /* syscall_dispatch(nr, a0..a5): 16 pushes, aligned */
	call syscall_dispatch
syscall_exit:                           /* rax: what the program sees */
	addq $16, %rsp
	popq %r9
	movw %cs, %r8w                  /* CPL test; r8 is popped next */
	testb $3, %r8b                  /* pops below leave the flags alone */
	popq %r8
	popq %r10
	popq %rdx
	popq %rsi
	popq %rdi
	popq %r11
	popq %rcx
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbp
	popq %rbx
	jz 2f
	/*
	 * CPL 3 (PVM): sysretq would #GP.  Restore the flags from our own
	 * stack, then switch stacks and jump: mov and jmp leave flags alone
	 * (the cmpb's are undone by popfq).
	 */
	cmpb $0, sys_full_return(%rip)
	jne 1f
	pushq %r11
	popfq
	movq sys_user_rsp(%rip), %rsp
	jmp *%rcx
	/*
	 * Back to where a fault, or a signal handler's rt_sigreturn, left the
	 * program: every register as it was, rcx and r11 too (a `syscall`
	 * leaves those to us; a fault does not), rip and rflags from
	 * sys_ret_rip and sys_ret_flags.  At CPL 3 that takes the program's
	 * stack below its red zone for two words (popfq, then ret pops rip and
	 * the gap); at CPL 0 an iret frame.
	 */
1:	movq sys_user_rsp(%rip), %rsp
	leaq -136(%rsp), %rsp           /* past the red zone, and a word */
	pushq sys_ret_rip(%rip)
	pushq sys_ret_flags(%rip)
	movb $0, sys_full_return(%rip)
	popfq
	ret $136
2:	cmpb $0, sys_full_return(%rip)  /* CPL 0: sysretq sets rflags from r11 */
	jne 3f
	movq sys_user_rsp(%rip), %rsp
	sysretq
3:	pushq $SEL_UDATA
	pushq sys_user_rsp(%rip)
	pushq sys_ret_flags(%rip)
	pushq $SEL_UCODE
	pushq sys_ret_rip(%rip)
	movb $0, sys_full_return(%rip)
	iretq

/*
 * A fault in the program whose signal it catches: trap() put its registers
 * in sys_uregs (and rip, rflags, rsp in sys_ret_*, sys_user_rsp) and came
 * back here, at CPL 3, to build the handler's frame at native speed, as
 * a system call's way out would (signal_fault).
 */
	.globl fault_entry
fault_entry:
	leaq sys_uregs-8(%rip), %rsp    /* as syscall_entry leaves it: aligned */
	cld
	call signal_fault
	jmp syscall_exit

/* Likewise after the host's nudge (an NMI) in the program's code: the
 * signals posted to it are taken now (signal_async). */
	.globl async_entry
async_entry:
	leaq sys_uregs-8(%rip), %rsp
	cld
	call signal_async
	jmp syscall_exit

/*
 * Exceptions and interrupts: push a uniform frame (struct trapframe in
 * defs.h) and call trap().  Exceptions run on IST1, so a fault in the
 * system-call layer (on its own stack, at CPL 0) still gets a good stack.
 */
.macro VEC n, err=0
	.globl vector_\n
vector_\n:
	.if \err == 0
	pushq $0
	.endif
	pushq $\n
	jmp trap_common
.endm

VEC 0
VEC 1
VEC 2
VEC 3
VEC 4
VEC 5
	.globl vector_6
vector_6:                               /* #UD: the doorbell's and halt's first */
	cmpq $doorbell_port_ud2, (%rsp)
	je 1f
	cmpq $halt_ud2, (%rsp)
	je 2f
	cmpq $park_ud2, (%rsp)
	je park_enter                   /* (the frame is dead: never returns) */
	pushq $0
	pushq $6
	jmp trap_common
1:	DOORBELL_BODY
	addq $2, (%rsp)
	iretq
2:	HALT_BODY
	addq $2, (%rsp)
	iretq
VEC 7
VEC 8, 1
VEC 9
VEC 10, 1
VEC 11, 1
VEC 12, 1
VEC 13, 1
VEC 14, 1
VEC 15
VEC 16
VEC 17, 1
VEC 18
VEC 19
VEC 20
VEC 21, 1

/*
 * The two interrupts only end a halt (programs run with IF clear), so they
 * only acknowledge: the doorbell takes the UART's byte so the line drops
 * (with the FIFO off one read clears it, no status read first: each port
 * access is a VM exit).  On the interrupted stack, no trapframe.
 */
	.globl vector_32
vector_32:                              /* LAPIC timer: a timed halt is over */
	pushq %rax
	LAPIC_EOI
	popq %rax
	iretq

	.globl vector_33
vector_33:                              /* the host's wake-up byte */
	pushq %rax
	pushq %rdx
	movl $UF_DOORBELL_PORT, %edx
	inb %dx, %al
	LAPIC_EOI
	popq %rdx
	popq %rax
	iretq

	.globl vector_255
vector_255:                             /* spurious: no EOI */
	iretq

trap_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	cld
	movq %rsp, %rdi
	movq %rsp, %rbx
	andq $-16, %rsp
	call trap
	movq %rbx, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp                  /* vector and error code */
	iretq

/*
 * long gate(long op, long a, long b): ring-0 work for the system-call
 * layer.  At CPL 0 it is a plain call.  At CPL 3 it traps with a ud2 at a
 * known address; trap() recognises gate_ud2, runs the op with the saved
 * rdi/rsi/rdx, puts the result in rax and resumes after the ud2.
 * Each trap costs ~22 us on PVM: keep gates off hot paths.
 */
	.globl gate
gate:
	movw %cs, %ax
	testb $3, %al
	jz gate_ring0
	.globl gate_ud2
gate_ud2:
	ud2
	ret

/*
 * void doorbell_port(void): wake the host through COM2.  void halt(uint64_t tsc_deadline):
 * sleep until an interrupt or the deadline (0: none).  At CPL 0 they run
 * here; at CPL 3 (PVM) each has a ud2 of its own, NAME_ud2, that vector_6
 * recognises before anything else.
 */
.macro SHORT_GATE name, body
	.globl \name, \name\()_ud2
\name:
	movw %cs, %ax
	testb $3, %al
	jz 1f
\name\()_ud2:
	ud2
	ret
1:	\body
	ret
.endm
	SHORT_GATE doorbell_port, DOORBELL_BODY
	SHORT_GATE halt, HALT_BODY

/* void park_gate(void): the process has ended; park in ring 0 (park.c),
 * at CPL 3 through a ud2 of its own that vector_6 sends straight there. */
	.globl park_gate, park_ud2
park_gate:
	movw %cs, %ax
	testb $3, %al
	jz park_enter
park_ud2:
	ud2

/* Clear what a Linux program finds clear at its entry (rdx: no atexit). */
.macro CLEAR_REGS
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %edx, %edx
	xorl %esi, %esi
	xorl %edi, %edi
	xorl %ebp, %ebp
	xorl %r8d, %r8d
	xorl %r9d, %r9d
	xorl %r10d, %r10d
	xorl %r11d, %r11d
	xorl %r12d, %r12d
	xorl %r13d, %r13d
	xorl %r14d, %r14d
	xorl %r15d, %r15d
.endm

/*
 * void enter_user(uint64_t rip, uint64_t sp): the one drop from ring 0 to
 * ring 3, to user_start on the syscall stack, with interrupts off.
 */
	.globl enter_user
enter_user:
	pushq $SEL_UDATA
	pushq %rsi
	pushq $0x2
	pushq $SEL_UCODE
	pushq %rdi
	iretq

/* void start_program(uint64_t entry, uint64_t sp): jump to the ELF entry. */
	.globl start_program
start_program:
	movq %rdi, %rcx
	movq %rsi, %rsp
	CLEAR_REGS
	jmp *%rcx

/* void park_enter(void): ring 0, from anywhere (park_gate, a fault): onto
 * the park stack, whose page the host never rewrites, and park there
 * (park.c).  What was on the stacks before is dead. */
	.globl park_enter
park_enter:
	cli
	movq $(UF_PARK_ADDR + UF_PARK_SIZE), %rsp
	call park
	ud2

/*
 * long fork_save(struct forkctx *c): like setjmp, into (c) (defs.h gives
 * the offsets): 0 now, and 1 when a VM given a copy of this one's RAM
 * resumes from it (fork_jump).  The caller-saved registers need no saving
 * (the compiler treats this as a call that returns twice), nor do the
 * kernel's flags: the system-call layer runs with them as they come.
 */
	.globl fork_save
fork_save:
	movq (%rsp), %rax
	movq %rax, 0x00(%rdi)           /* rip: where we return */
	leaq 8(%rsp), %rax
	movq %rax, 0x08(%rdi)           /* rsp, as after the return */
	movq %rbx, 0x10(%rdi)
	movq %rbp, 0x18(%rdi)
	movq %r12, 0x20(%rdi)
	movq %r13, 0x28(%rdi)
	movq %r14, 0x30(%rdi)
	movq %r15, 0x38(%rdi)
	xorl %eax, %eax
	movw %cs, %ax
	movq %rax, 0x40(%rdi)           /* the CPL we run at */
	fxsave64 0x80(%rdi)             /* the program's FPU and SSE state */
	xorl %eax, %eax
	ret

/* void fork_jump(const struct forkctx *c): return 1 from the fork_save
 * that wrote (c), at the CPL it ran at (park.c checked (c)). */
	.globl fork_jump
fork_jump:
	fxrstor64 0x80(%rdi)
	movq 0x10(%rdi), %rbx
	movq 0x18(%rdi), %rbp
	movq 0x20(%rdi), %r12
	movq 0x28(%rdi), %r13
	movq 0x30(%rdi), %r14
	movq 0x38(%rdi), %r15
	movq 0x08(%rdi), %rsp
	movl $1, %eax
	jmpq *0x00(%rdi)

	.bss
	.p2align 12
	.globl sys_user_rsp
sys_user_rsp:
	.quad 0
	.globl sys_ret_rip, sys_ret_flags, sys_full_return
sys_ret_rip:                            /* full_exit's rip and rflags */
	.quad 0
sys_ret_flags:
	.quad 0
sys_full_return:                        /* 1: leave through full_exit */
	.byte 0
	.p2align 12
	.globl sys_stack
sys_stack:
	.skip 32768 - 15 * 8
	.globl sys_uregs                /* struct uregs: syscall_entry's pushes */
sys_uregs:
	.skip 15 * 8
	.globl sys_stack_top
sys_stack_top:
