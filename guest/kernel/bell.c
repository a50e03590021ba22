/*
 * bell.c: ringing the host.  doorbell() writes the fast doorbell's notify
 * register once it is set up (unifork_abi.h, "The fast doorbell"): a
 * ring-3 store that KVM turns into an eventfd signal, ~3 us.  Until then,
 * and in a VM without one, it is COM2 (doorbell_port, entry.S: ~50 us).
 *
 * Setting the device up costs ~0.5 ms of MMIO exits, so it is done only
 * when a ring with ends on other hosts is waited on or woken, where the
 * doorbell's latency is the pipe's (bell_want).  A fork and the end of a
 * process stop it (bell_stop); each process sets it up again only if it
 * needs it.
 */
#include "defs.h"
#include "x86.h"

/* Legacy virtio-mmio registers (virtio 1.x, "Legacy interface"), as
 * indices of 32-bit words.  Legacy, not the modern transport: a queue is
 * set up in fewer register accesses, each an exit to QEMU. */
enum {
	MAGIC = 0x00 / 4, VERSION = 0x04 / 4, DEVICE_ID = 0x08 / 4,
	GUEST_FEATURES = 0x20 / 4, GUEST_FEATURES_SEL = 0x24 / 4,
	GUEST_PAGE_SIZE = 0x28 / 4, QUEUE_SEL = 0x30 / 4, QUEUE_NUM_MAX = 0x34 / 4,
	QUEUE_NUM = 0x38 / 4, QUEUE_ALIGN = 0x3c / 4, QUEUE_PFN = 0x40 / 4,
	QUEUE_NOTIFY = 0x50 / 4, STATUS = 0x70 / 4,
};
#define VIRT_MAGIC      0x74726976      /* "virt" */
#define ACKNOWLEDGE     1
#define DRIVER          2
#define DRIVER_OK       4

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
		if (m[MAGIC] == VIRT_MAGIC && m[VERSION] == 1 && m[DEVICE_ID] == UF_BELL_DEVICE_ID)
			return m;
	}
	return 0;
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
	m[GUEST_FEATURES_SEL] = 0;
	m[GUEST_FEATURES] = 0;                          /* none wanted */
	m[GUEST_PAGE_SIZE] = UF_PAGE_SIZE;
	m[QUEUE_SEL] = 0;
	if (m[QUEUE_NUM_MAX] < UF_BELL_QUEUE) {
		kprintf("unifork: the fast doorbell device refused us: COM2 it is\n");
		m[STATUS] = 0;
		return;
	}
	/* A legacy queue: descriptors at the page, the available ring after
	 * them, the used ring at the next UF_PAGE_SIZE boundary. */
	m[QUEUE_NUM] = UF_BELL_QUEUE;
	m[QUEUE_ALIGN] = UF_PAGE_SIZE;
	m[QUEUE_PFN] = UF_BELL_VRING / UF_PAGE_SIZE;
	m[STATUS] = ACKNOWLEDGE | DRIVER | DRIVER_OK;
	notify = &m[QUEUE_NOTIFY];
}

/* Before a fork, and as the process ends: stop the device.  A child's VM
 * has its own, stopped: the parent's state of it is not the child's, and
 * nothing of it passes to a VM's next process.  Whichever process needs it
 * sets it up again, when it does. */
void
bell_stop(void)
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
