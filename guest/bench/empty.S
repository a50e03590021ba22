/* A PVH kernel that writes one byte to COM1 and powers off: bench/boot.py's baseline. */
	.section .note.pvh, "a"
	.p2align 2
	.long 4, 4, 18
	.asciz "Xen"
	.long pvh_start
	.section .text.boot, "ax"
	.code32
	.globl pvh_start
pvh_start:
	movw $0x3f8, %dx
	movb $'!', %al
	outb %al, %dx
	movw $0xf4, %dx
	outb %al, %dx
1:	hlt
	jmp 1b
