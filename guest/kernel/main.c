/*
 * main.c: ring-0 start-up, called from boot.S in long mode.  Runs emulated
 * on PVM (thousands of cycles per instruction): only what must be privileged
 * happens here, then the program starts in ring 3.
 */
#include "defs.h"
#include "x86.h"

uint32_t cpu_features;
void user_start(void);

extern uint64_t gdt[];
static struct {
	uint32_t _r0;
	uint64_t rsp0;
	uint64_t _r1;
	uint64_t _r2;
	uint64_t _r3;
	uint64_t ist1;
	uint64_t ist2;
	uint64_t ist3;
	uint64_t _r4[4];
	uint16_t _r5;
	uint16_t iomap;
} __attribute__((packed, aligned(16))) tss;

static uint8_t ring0_stack[16384] __attribute__((aligned(16)));
static uint8_t ist1_stack[16384] __attribute__((aligned(16)));
static uint8_t ist2_stack[8192] __attribute__((aligned(16)));
static uint8_t ist3_stack[8192] __attribute__((aligned(16)));   /* NMI */

static void
tss_init(void)
{
	uint64_t base = (uint64_t)&tss;

	tss.rsp0 = (uint64_t)ring0_stack + sizeof(ring0_stack);
	tss.ist1 = (uint64_t)ist1_stack + sizeof(ist1_stack);
	tss.ist2 = (uint64_t)ist2_stack + sizeof(ist2_stack);
	tss.ist3 = (uint64_t)ist3_stack + sizeof(ist3_stack);
	tss.iomap = sizeof(tss);
	gdt[SEL_TSS / 8] = (sizeof(tss) - 1) | ((base & 0xffffff) << 16) |
	    (0x89UL << 40) | (((base >> 24) & 0xff) << 56);
	gdt[SEL_TSS / 8 + 1] = base >> 32;
	__asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
}

static void
cpu_init(void)
{
	uint32_t r[4];

	cpuid(1, 0, r);
	if (r[2] & (1u << 30))
		cpu_features |= CPUF_RDRAND;
	if (r[2] & (1u << 24))
		cpu_features |= CPUF_DEADLINE;
	cpuid(0, 0, r);
	if (r[0] >= 7) {
		cpuid(7, 0, r);
		if (r[1] & 1) {
			cpu_features |= CPUF_FSGSBASE;
			write_cr4(read_cr4() | CR4_FSGSBASE);
		}
	}
	/* syscall: kernel CS/SS from STAR[47:32], user ones from STAR[63:48]. */
	wrmsr(MSR_STAR, ((uint64_t)SEL_UCODE32 << 48) | ((uint64_t)SEL_KCODE << 32));
	wrmsr(MSR_LSTAR, (uint64_t)syscall_entry);
	wrmsr(MSR_FMASK, RFLAGS_IF | RFLAGS_TF | RFLAGS_DF | RFLAGS_AC | RFLAGS_NT);
}

/* Route the doorbell UART's interrupt, and arm the LAPIC for timed halts. */
static void
irq_init(void)
{
	volatile uint32_t *lapic = (volatile uint32_t *)LAPIC_BASE;
	volatile uint32_t *ioapic = (volatile uint32_t *)IOAPIC_BASE;
	uint16_t com2 = UF_DOORBELL_PORT;

	lapic[0xf0 / 4] = 0x100 | UF_VEC_SPURIOUS;      /* enable */
	lapic[0x80 / 4] = 0;                            /* TPR: accept all */
	lapic[0x320 / 4] = (2u << 17) | UF_VEC_TIMER;   /* TSC-deadline mode */
	lapic[0x350 / 4] = 1u << 16;                    /* LINT0 masked: a pc's PIC
	                                                 * (its firmware's timer) */
	lapic[0x360 / 4] = 0x400;                       /* LINT1: NMI, the host's nudge */
	ioapic[0] = 0x10 + 2 * UF_DOORBELL_IRQ;         /* redirection entry */
	ioapic[4] = UF_VEC_DOORBELL;                    /* edge, fixed, unmasked */
	ioapic[0] = 0x10 + 2 * UF_DOORBELL_IRQ + 1;
	ioapic[4] = 0;                                  /* to APIC 0 */
	outb(com2 + 3, 0x03);                           /* 8N1 */
	outb(com2 + 2, 0x00);                           /* no FIFO: 1 byte */
	outb(com2 + 4, 0x0b);                           /* DTR, RTS, OUT2 */
	outb(com2 + 1, 0x01);                           /* irq on received data */
}

void
kmain(void)
{
	volatile struct uf_boot *b = BOOT;

	if (b->magic != UF_BOOT_MAGIC || b->abi_version != UF_ABI_VERSION) {
		CTL->state = UF_STATE_PANIC;
		gate_ring0(GATE_POWEROFF, 0, 0);
	}
	tss_init();
	idt_init();
	cpu_init();
	irq_init();
	if (!b->entry)                  /* a vessel made ahead of time: park.c */
		park_enter();
	boot_program();
}

/* Ring 0: start the program the boot page describes; at boot, or in a
 * vessel given one before it ran any (park.c), whose kernel data is still
 * as it booted. */
void
boot_program(void)
{
	CTL->state = UF_STATE_RUNNING;
	enter_user((uint64_t)user_start, (uint64_t)sys_stack_top);
}

/*
 * The rest of start-up runs in ring 3, where it is native speed on PVM:
 * clock, memory, files, process state; then the program's entry.
 */
void
user_start(void)
{
	clock_init();
	vm_init();
	file_init();
	proc_init();
	start_program(BOOT->entry, BOOT->sp);
}
