/*
 * boot.S: from the PVH entry (32-bit protected mode, paging off) to 64-bit
 * long mode, then into C (kmain), which drops to the program in ring 3.
 *
 * Everything here runs in ring 0, which on nested KVM (PVM) is emulated
 * instruction by instruction: keep it short.  The page tables were written
 * by the host into the RAM file before boot (UF_PT_ADDR), so nothing here
 * builds or touches them.
 */
#include "unifork_abi.h"
#include "x86.h"

/* The PVH ELF note tells QEMU where the 32-bit entry point is. */
	.section .note.pvh, "a"
	.p2align 2
	.long 4                 /* name size: "Xen\0" */
	.long 4                 /* descriptor size */
	.long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start

	.section .text.boot, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	/* PAE, and SSE state (OSFXSR, OSXMMEXCPT): the program uses SSE. */
	movl $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
	movl %eax, %cr4
	movl $UF_PT_ADDR, %eax
	movl %eax, %cr3
	/* Long mode, and the syscall instruction. */
	movl $MSR_EFER, %ecx
	rdmsr
	orl $(EFER_LME | EFER_SCE), %eax
	wrmsr
	/* Paging on; FPU native (NE, MP), no emulation (EM clear). */
	movl %cr0, %eax
	andl $~CR0_EM, %eax
	orl $(CR0_PG | CR0_PE | CR0_MP | CR0_NE | CR0_WP), %eax
	movl %eax, %cr0
	lgdt gdt_ptr
	ljmp $SEL_KCODE, $long_mode

	.code64
long_mode:
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	leaq boot_stack_top(%rip), %rsp
	call kmain
1:	hlt
	jmp 1b

/*
 * GDT: the layout the syscall/sysret instructions need (STAR): kernel code,
 * kernel data, then a 32-bit user code placeholder, user data, user code 64.
 * The TSS descriptor is filled in by kmain (its base is split in pieces).
 */
	.data
	.p2align 4
	.globl gdt
gdt:
	.quad 0                         /* 0x00 null */
	.quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
	.quad 0x00cf92000000ffff        /* 0x10 kernel data */
	.quad 0x00cffa000000ffff        /* 0x18 user code, 32-bit (unused) */
	.quad 0x00cff2000000ffff        /* 0x20 user data */
	.quad 0x00affa000000ffff        /* 0x28 user code, 64-bit */
	.quad 0, 0                      /* 0x30 TSS */
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.bss
	.p2align 12
boot_stack:
	.skip 16384
boot_stack_top:
