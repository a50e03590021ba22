/*
 * bell.c: ringing the host.  doorbell() writes the fast doorbell's notify
 * register once it is set up (unifork_abi.h, "The fast doorbell"): a
 * ring-3 store that KVM turns into an eventfd signal, ~3 us.  Until then,
 * and in a VM without one, it is COM2 (doorbell_port, entry.S: ~50 us).
 *
 * Setting the device up costs ~0.5 ms of MMIO exits, so it is done only
 * when a ring with ends on other hosts is waited on or woken, where the
 * doorbell's latency is the pipe's (bell_want).  A fork stops it first
 * (bell_fork): QEMU would otherwise restart it in both copies as they
 * resume, and each copy sets it up again only if it needs it.
 */
#include "defs.h"
#include "x86.h"

/* virtio-mmio registers (virtio 1.x, "MMIO Device Register Layout"), as
 * indices of 32-bit words */
enum {
	MAGIC = 0x00 / 4, VERSION = 0x04 / 4, DEVICE_ID = 0x08 / 4,
	DRIVER_FEATURES = 0x20 / 4, DRIVER_FEATURES_SEL = 0x24 / 4,
	QUEUE_SEL = 0x30 / 4, QUEUE_NUM_MAX = 0x34 / 4, QUEUE_NUM = 0x38 / 4,
	QUEUE_READY = 0x44 / 4, QUEUE_NOTIFY = 0x50 / 4, STATUS = 0x70 / 4,
	QUEUE_DESC = 0x80 / 4, QUEUE_AVAIL = 0x90 / 4, QUEUE_USED = 0xa0 / 4,
};
#define VIRT_MAGIC      0x74726976      /* "virt" */
#define ACKNOWLEDGE     1
#define DRIVER          2
#define DRIVER_OK       4
#define FEATURES_OK     8

static volatile uint32_t *dev;          /* the device's registers, once found */
static volatile uint32_t *notify;       /* the queue's notify register, while running */
static int tried;

/* The device's registers, or 0.  Each read here is an exit to QEMU. */
static volatile uint32_t *
find_device(void)
{
	for (int i = UF_VIRTIO_MMIO_SLOTS - 1; i >= 0; i--) {  /* QEMU fills from the top */
		volatile uint32_t *m = (volatile uint32_t *)(UF_VIRTIO_MMIO_BASE +
		    i * UF_VIRTIO_MMIO_SLOT);
		if (m[MAGIC] == VIRT_MAGIC && m[VERSION] == 2 && m[DEVICE_ID] == UF_BELL_DEVICE_ID)
			return m;
	}
	return 0;
}

static void
set64(volatile uint32_t *lo, uint64_t v)
{
	lo[0] = (uint32_t)v;
	lo[1] = (uint32_t)(v >> 32);
}

/* Bring the device up, as a driver would, with one queue: its rings (at
 * UF_BELL_VRING) stay empty, the host never looks at them. */
void
bell_want(void)
{
	if (tried || !(BOOT->features & UF_FEAT_BELL))
		return;
	tried = 1;
	volatile uint32_t *m = dev ? dev : (dev = find_device());
	if (!m) {
		kprintf("unifork: no fast doorbell device: COM2 it is\n");
		return;
	}
	m[STATUS] = 0;                                  /* reset */
	m[STATUS] = ACKNOWLEDGE | DRIVER;
	m[DRIVER_FEATURES_SEL] = 1;
	m[DRIVER_FEATURES] = 1;                         /* VIRTIO_F_VERSION_1 (bit 32) */
	m[STATUS] = ACKNOWLEDGE | DRIVER | FEATURES_OK;
	m[QUEUE_SEL] = 0;
	if (!(m[STATUS] & FEATURES_OK) || m[QUEUE_NUM_MAX] < UF_BELL_QUEUE) {
		kprintf("unifork: the fast doorbell device refused us: COM2 it is\n");
		m[STATUS] = 0;
		return;
	}
	m[QUEUE_NUM] = UF_BELL_QUEUE;
	set64(&m[QUEUE_DESC], UF_BELL_VRING);           /* 16 bytes an entry */
	set64(&m[QUEUE_AVAIL], UF_BELL_VRING + 0x800);
	set64(&m[QUEUE_USED], UF_BELL_VRING + 0x1000);
	m[QUEUE_READY] = 1;
	m[STATUS] = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
	notify = &m[QUEUE_NOTIFY];
}

/* Before a fork: stop the device.  QEMU restarts a running vhost device
 * as each copy resumes, which held the child ~1 ms more before it ran;
 * stopped, it is set up again by whichever copy needs it, when it does. */
void
bell_fork(void)
{
	if (!notify)
		return;
	notify = 0;
	tried = 0;
	dev[STATUS] = 0;                                /* reset */
}

void
doorbell(void)
{
	if (notify)
		*notify = 0;                            /* queue 0 */
	else
		doorbell_port();
}
