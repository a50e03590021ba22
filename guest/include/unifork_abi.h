/*
 * unifork_abi.h: the whole interface between a unifork guest and its host.
 *
 * A guest is one Linux process running as a unikernel VM.  Everything the
 * host and the guest tell each other goes through memory described here:
 *
 *   - the boot page (struct uf_boot), written by the host into guest RAM
 *     before the VM starts, read by the guest;
 *   - the control page (struct uf_ctl), written by the guest (why it
 *     stopped), read by the host;
 *   - rings (struct uf_ring): byte streams with one producer side and one
 *     consumer side.  stdin, stdout and stderr are rings in the job's
 *     shared-memory region whose other end is the host; the kernel log is a
 *     ring in guest RAM.
 *
 * plus two rare signals: the guest's doorbell (one byte written to the
 * second UART, UF_DOORBELL_PORT) wakes the host; the host wakes a halted
 * guest by sending one byte to that UART, which raises UF_VEC_DOORBELL.
 * A VM with UF_FEAT_BELL has a faster doorbell as well (see "The fast
 * doorbell" below).
 *
 * Memory is identity mapped (guest virtual == guest physical).  The layout
 * below is fixed; the host writes the page tables, the boot page, the
 * program's segments and its initial stack into the RAM file before boot.
 *
 * Rules for changing this file: UF_ABI_VERSION must be incremented on any
 * material change; structures only grow at their end; enums reserve 0.
 * workers/abi.py is the Python twin, checked against this header by
 * tests/test_abi.py.
 */
#ifndef UNIFORK_ABI_H
#define UNIFORK_ABI_H

#ifdef __ASSEMBLER__
#define UF_UL(x) x
#else
#include <stdint.h>
#define UF_UL(x) x##UL
#endif

#define UF_ABI_VERSION      13

/* Guest physical memory layout. */
#define UF_PAGE_SIZE        UF_UL(0x1000)
#define UF_KERNEL_BASE      UF_UL(0x100000)  /* kernel image, loaded by PVH */
#define UF_BOOT_ADDR        UF_UL(0x200000)  /* struct uf_boot (host writes) */
#define UF_CTL_ADDR         UF_UL(0x201000)  /* struct uf_ctl (guest writes) */
#define UF_PT_ADDR          UF_UL(0x202000)  /* page tables (host writes) */
#define UF_PT_PAGES         8                /* PML4, PDPT, 4 PDs, 1 PT, PD above 4 GiB */
#define UF_LOG_ADDR         UF_UL(0x20a000)  /* kernel log ring, guest RAM */
#define UF_LOG_SIZE         UF_UL(0x4000)    /* its data bytes */
#define UF_PARK_ADDR        UF_UL(0x210000)  /* struct uf_park, and the parked kernel's stack */
#define UF_PARK_SIZE        UF_UL(0x2000)
#define UF_USER_BASE        UF_UL(0x400000)  /* lowest address of the program */
#define UF_PIE_BASE         UF_UL(0x400000)  /* where a static-PIE is loaded */
#define UF_MAX_RAM          UF_UL(0x80000000) /* 2 GiB; the shm region follows RAM */
#define UF_SHM_HIGH         UF_UL(0x100000000) /* or is here: a pc machine's device memory */

/* I/O ports and interrupt vectors. */
#define UF_DOORBELL_PORT    0x2f8   /* COM2 data register: guest -> host doorbell */
#define UF_DOORBELL_IRQ     3       /* COM2's ISA IRQ: host -> guest wake-up */
#define UF_EXIT_PORT        0xf4    /* isa-debug-exit: the VM powers off (microvm) */
#define UF_ACPI_PM1A_CNT    0x604   /* or its ACPI PM1a control (pc, as firmware sets it) */
#define UF_ACPI_SLP_EN      0x2000  /* written there: sleep type 0 (S5, soft off) */
#define UF_VEC_TIMER        0x20    /* LAPIC timer (TSC deadline): timed halt */
#define UF_VEC_DOORBELL     0x21
#define UF_VEC_SPURIOUS     0xff

/* struct uf_boot.magic */
#define UF_BOOT_MAGIC       0x544f4f42464e55UL  /* "UNFBOOT" */

/* struct uf_boot.features */
#define UF_FEAT_KVM         (1u << 0)  /* the VM runs under KVM (else TCG) */
#define UF_FEAT_BELL        (1u << 1)  /* it has the fast doorbell (below) */

/*
 * The fast doorbell.  Ringing COM2 traps the guest into ring 0 and reaches
 * the host through QEMU's main loop (~50 us each way on PVM).  A VM with
 * UF_FEAT_BELL also has a vhost-user-blk device on one of microvm's
 * virtio-mmio slots (legacy transport), used for nothing but its queue's
 * notify register: KVM turns a write there, from ring 3, into a signal on
 * an eventfd that the host's bridge thread waits on (an ioeventfd), and
 * the guest goes on at once.  The guest sets it up (one queue of
 * UF_BELL_QUEUE entries at UF_BELL_VRING) when a bridged ring makes it
 * worth it; from then on doorbell() writes there.  The host still wakes a
 * halted guest through COM2.
 */
#define UF_VIRTIO_MMIO_BASE UF_UL(0xfeb00000)  /* microvm's virtio-mmio slots */
#define UF_VIRTIO_MMIO_SLOT UF_UL(0x200)
#define UF_VIRTIO_MMIO_SLOTS 8
#define UF_BELL_DEVICE_ID   2                  /* virtio block */
#define UF_BELL_VRING       UF_UL(0x3f0000)    /* 2 pages below UF_USER_BASE */
#define UF_BELL_QUEUE       8

/* struct uf_boot.tty: bit n set when the host's fd n is a terminal */
#define UF_TTY_STDIN        (1u << 0)
#define UF_TTY_STDOUT       (1u << 1)
#define UF_TTY_STDERR       (1u << 2)

#ifndef __ASSEMBLER__

/*
 * The boot page: everything the guest needs to start the program.  The host
 * has already laid out the ELF segments, the initial stack (argc, argv, envp,
 * auxv) and the page tables; the guest enters the program at (entry) with its
 * stack pointer at (sp).  With (entry) 0 there is no program: the VM is a
 * vessel made ahead of time, and parks as soon as it has booted ("Vessels").
 */
struct uf_boot {
	uint64_t magic;             /* UF_BOOT_MAGIC */
	uint32_t abi_version;       /* UF_ABI_VERSION */
	uint32_t features;          /* UF_FEAT_* */
	uint64_t ram_size;          /* bytes of RAM from guest physical 0 */
	uint64_t shm_base;          /* the job's shared-memory region */
	uint64_t shm_size;
	uint64_t tsc_khz;           /* TSC ticks per millisecond */
	uint64_t realtime_ns;       /* CLOCK_REALTIME when the host read host_tsc */
	uint64_t entry;             /* program entry point */
	uint64_t sp;                /* initial stack pointer: argc */
	uint64_t brk;               /* initial program break (page aligned) */
	uint64_t mmap_top;          /* anonymous mappings grow down from here */
	uint64_t stack_low;         /* lowest address of the stack region */
	uint32_t pid, ppid;
	uint32_t uid, gid;
	uint32_t stdio_ring[3];     /* ring index in the shm region, fd 0, 1, 2 */
	uint32_t tty;               /* UF_TTY_* */
	uint16_t tty_rows, tty_cols;/* host terminal size, when a tty */
	uint32_t _pad0;
	uint8_t  seed[32];          /* entropy, for getrandom without RDRAND */
	char     exe[256];          /* absolute path: /proc/self/exe, AT_EXECFN */
	char     hostname[65];      /* uname nodename */
	char     _pad1[7];
	/* Ticks added to the TSC for the clocks.  A forked child's own TSC is
	 * its VM's, unrelated to its parent's, so as it resumes it sets
	 * tsc_adjust to read tsc_resume: the parent's clock when it asked to
	 * fork (FORK's arg1) plus the time the host saw pass since, as of
	 * host_tsc.  The host writes it before it lets the child go (0 until
	 * then: the child waits for it). */
	int64_t  tsc_adjust;
	int64_t  tsc_resume;
	uint64_t host_tsc;          /* the host's TSC at realtime_ns, written last,
	                             * as QEMU starts (0 until then): clock.c; in
	                             * a forked child, at tsc_resume */
};

/* Why the guest stopped: struct uf_ctl.state */
enum uf_state {
	UF_STATE_NONE = 0,          /* reserved: not started, or died silently */
	UF_STATE_RUNNING,           /* the program runs */
	UF_STATE_EXITED,            /* exit_group(status) */
	UF_STATE_KILLED,            /* killed by signal (status): fault or kill */
	UF_STATE_PANIC,             /* the kernel hit a bug; log says which */
	UF_STATE_MAX
};

/*
 * Requests from guest to host (struct uf_ctl.req).  The guest writes arg[],
 * then req, then increments req_seq, rings the doorbell and waits until
 * rep_seq == req_seq.  The host writes ret (a result or -errno) and val[],
 * then rep_seq; the reply is what tells a forked child (ret 0) from its
 * parent (ret = the child's pid).
 *
 *   FORK  (arg0) clone flags, (arg1) the        ret: child pid | 0 | -errno
 *         parent's clock (TSC + tsc_adjust)
 *   WAIT  (arg0) pid or -1, (arg1) options      ret: pid | 0 (WNOHANG) | -errno
 *         (WNOHANG, WNOWAIT); asked only when    val0: wait status, val1: uid
 *         the children's table cannot answer
 *         ("Children", below)
 *   KILL  (arg0) pid, 0 or -1, (arg1) signal    ret: 0 | -errno; the host kills
 *         others; the guest acts on itself after the reply
 *   EXEC  (arg0) path, (arg1) argv, (arg2) envp, ret: 0 | -errno; on success
 *         (arg3) the handle of the directory a     the host has laid out the
 *         relative path starts from, or AT_FDCWD   new image: entry, sp, brk,
 *         (an empty path: that file itself)        mmap_top in the boot page
 *   EXIT  none: the process has ended (state     no reply: the VM is parked
 *         and status say how), or a vessel has      ("Vessels")
 *         booted (state NONE)
 *   FILE  (arg0) a Linux system call number on   ret: its result | -errno;
 *         the job's files; its arguments in        an open's val0: UF_NODE_*
 *         sysarg[], descriptors replaced by
 *         handles ("Files", below)
 */
enum uf_req {
	UF_REQ_NONE = 0,
	UF_REQ_FORK,
	UF_REQ_WAIT,
	UF_REQ_KILL,
	UF_REQ_EXEC,
	UF_REQ_EXIT,
	UF_REQ_FILE,
	UF_REQ_MAX
};

/*
 * Vessels.  A VM outlives its process.  When the process ends (exit, a
 * fatal signal, a fault) the kernel writes state and status, stops the
 * fast doorbell, and parks: in ring 0, interrupts off, on the stack in the
 * park page, it bumps (parked), posts UF_REQ_EXIT and halts until the host
 * sets (go) to (parked).  Parked, it uses no memory but its code, its
 * descriptor tables, the page tables and the park page, so the host may
 * rewrite all the rest of its RAM meanwhile.
 *
 * Fork is a cooperative clone into a parked VM.  The parent's kernel saves
 * its own context in its RAM (registers, FPU/SSE state; the rest of the
 * process is RAM already) and asks to FORK; while it waits, the host copies
 * its RAM into a parked VM of the job on this host (all of it but the park
 * page: what the parent does not hold is punched, and reads as zero), writes
 * the child's pid, ppid, seed, clock and fork's reply (ret 0), sets (go) and
 * wakes it.  The parked kernel flushes its TLB, restores the saved context
 * and returns 0 from fork: no QEMU starts, none pauses, nothing migrates.
 * A context that does not check out kills the child (UF_STATE_KILLED,
 * SIGKILL), which parks again.
 *
 * A vessel made ahead of time may instead be given a program, as if it
 * had booted with it: the host lays out the program and the boot page as
 * before a boot, zeroes the control page, sets (boot) and then (go); the
 * kernel clears (boot) and starts the program.  Only a vessel that has run
 * no process: the kernel's data must be as it booted.  `unifork run`
 * starts pid 1's QEMU so, before it has read the program.
 *
 * The host writes nothing in the park page but (boot) and (go); the guest
 * wrote a (go) that is not (parked) and a (boot) of 0 as it parked, so
 * nothing of a previous occupant's starts it.
 */
struct uf_park {
	volatile uint32_t parked;   /* guest: bumped as it parks */
	volatile uint32_t go;       /* host: = parked, to make it the child */
	volatile uint32_t boot;     /* host: nonzero: start the boot page's program */
	uint32_t _pad[13];
	/* the rest of UF_PARK_SIZE is the parked kernel's stack */
};

/* What a halted guest waits for (struct uf_ctl.asleep). */
enum uf_sleep {
	UF_SLEEP_NONE = 0,
	UF_SLEEP_REPLY,             /* rep_seq to reach req_seq */
	UF_SLEEP_READ,              /* ring sleep_ring to have data, or no writer */
	UF_SLEEP_WRITE,             /* ring sleep_ring to have room, or no reader */
	UF_SLEEP_TIMER,             /* only its own deadline */
	UF_SLEEP_MAX
};

/*
 * The control page: one per VM, in its RAM (so a fork copies it).  The
 * guest writes state and status as its process ends, before it parks
 * (UF_REQ_EXIT), or before it powers off through UF_EXIT_PORT when its
 * kernel fails (UF_STATE_PANIC); the host reads them then.
 */
struct uf_ctl {
	uint32_t state;             /* enum uf_state */
	int32_t  status;            /* exit code, or signal number when KILLED */
	uint64_t fault_vector;      /* CPU exception that killed it */
	uint64_t fault_rip;
	uint64_t fault_addr;        /* CR2 for a page fault */
	uint64_t fault_error;       /* the exception's error code */
	uint64_t syscalls;          /* system calls served (statistics) */
	uint64_t _pad0[2];
	/* Guest-written: a request, and what the guest sleeps on. */
	uint32_t req;               /* enum uf_req */
	uint32_t req_seq;
	int64_t  arg[4];
	uint32_t asleep;            /* enum uf_sleep; the host wakes it */
	int32_t  sleep_ring;
	uint64_t _pad1[2];
	/* Host-written: the reply. */
	uint32_t rep_seq;
	uint32_t _pad2;
	int64_t  ret;
	int64_t  val[2];
	uint64_t _pad3[4];
	/* Guest-written: signal dispositions, bit (sig - 1), for kill();
	 * before the program's first sigaction, the default ones
	 * (UF_SIG_DEFAULT_IGNORED, below). */
	uint64_t sig_ignored;       /* SIG_IGN, or default-ignore */
	uint64_t sig_caught;        /* a handler */
	uint64_t sig_blocked;
	/* Host-written (atomic OR): signals sent by others that are blocked or
	 * caught here (then the host wakes the guest too); the guest takes
	 * them (atomic exchange) and runs their handlers at its next return
	 * from a system call (a blocking one gives way: EINTR or restart). */
	uint64_t sig_posted;
	/* Guest-written: wall-clock ns of its next SIGALRM (0: none), so that
	 * the host nudges a program that computes past it (see sig_posted). */
	uint64_t alarm_real_ns;
	/* Guest-written at boot: 1 if its TSC is the host's (PVM lets a vCPU's
	 * run on from the host's, clock.c), so that the host knows what its
	 * clocks read at any moment (a fork's child gets its parent's). */
	uint32_t tsc_is_host;
	uint32_t _pad4;
	uint64_t _pad5[2];
	/* Guest-written: ring ends this process holds: [ring][0 read, 1 write].
	 * The host closes them for a VM that dies without closing them. */
	uint16_t ends[64][2];
	/* Host-written: this process's children ("Children", below). */
	volatile uint32_t kids_alive;       /* children still running, anywhere */
	volatile uint32_t kids_unlisted;    /* ended ones the table had no room for */
	uint64_t _pad6;
	struct uf_kid {
		volatile uint32_t state;    /* UF_KID_* */
		uint32_t pid;
		int32_t  wstatus;
		uint32_t _pad;
	} kids[32];
	/* Guest-written: a FILE request's system-call arguments. */
	int64_t  sysarg[6];
	/* Host-written: 1 while the host watches req_seq itself (it does for
	 * a while after a FILE reply, as the next call often follows): a
	 * request then needs no doorbell.  The guest reads it after storing
	 * req_seq, the host reads req_seq again after clearing it (both
	 * behind a full fence), so that one of them sees the other. */
	volatile uint32_t host_watch;
	uint32_t _pad7;
};

/*
 * Signals whose default action both sides must know, bit (sig - 1) as in
 * the sig_* masks: those ignored by default (SIGCHLD, SIGCONT, SIGURG,
 * SIGWINCH), and those that would stop the process (SIGSTOP, SIGTSTP,
 * SIGTTIN, SIGTTOU): there is no job control, so they are ignored too.
 */
#define UF_SIG_DEFAULT_IGNORED  (UF_UL(1) << 16 | UF_UL(1) << 17 | UF_UL(1) << 22 | UF_UL(1) << 27)
#define UF_SIG_STOPPING         (UF_UL(1) << 18 | UF_UL(1) << 19 | UF_UL(1) << 20 | UF_UL(1) << 21)

/*
 * Children.  So that most waits need no request, the host lists in the
 * control page the children that have ended and are not waited for (an
 * entry UF_KID_ENDED, written whole before its state, and before the
 * parent is sent SIGCHLD), and counts those still running (kids_alive:
 * lowered only after their entries are in).  A wait takes an entry with an
 * atomic compare-and-swap ENDED -> WAITED, having read its pid and status
 * first; the host frees WAITED entries (-> EMPTY) when it next looks, and
 * drops the entry of a child it reports itself (a WAIT request, during
 * which the guest does not look).  A wait for any child that finds no
 * entry reads kids_alive before the table: 0, and nothing unlisted, is
 * ECHILD; more, with WNOHANG, is 0.  Any other wait asks the host.  A
 * forked child's table starts empty.
 */
#define UF_KIDS             32
enum uf_kid_state {
	UF_KID_EMPTY = 0,
	UF_KID_ENDED,               /* host-written: pid ended with wstatus */
	UF_KID_WAITED,              /* guest-written: a wait took it */
	UF_KID_MAX
};

/*
 * Files.  A job has one file tree, kept by the host; the guest forwards
 * the system calls on it (FILE requests) with Linux's numbers, arguments
 * and error codes.  Pointers in them are the program's own (memory is
 * identity mapped): the host reads paths and writes data, stat buffers
 * and directory entries there itself, after checking them.  A descriptor
 * argument is replaced by its handle: an open of a file the host serves
 * answers ret = a handle (unique in the job) and val0 = UF_NODE_HOST; a
 * directory argument (dirfd) that is AT_FDCWD stays so.  The open file
 * description (offset, status flags) is the host's, so that descriptors
 * sharing it, here and in forked children, share them.  The guest closes
 * a handle (close) when no descriptor of its own still refers to it; a
 * fork or the end of the process needs no request: the host counts the
 * child in, or drops what the process held.  The devices the guest serves
 * itself come with no handle (val0 UF_NODE_NULL, _ZERO, _RANDOM).
 */
enum uf_node {
	UF_NODE_NONE = 0,
	UF_NODE_HOST,               /* a file or directory the host serves */
	UF_NODE_NULL,               /* /dev/null */
	UF_NODE_ZERO,               /* /dev/zero */
	UF_NODE_RANDOM,             /* /dev/urandom, /dev/random */
	UF_NODE_MAX
};

/*
 * A ring: a byte stream in shared memory.  head and tail count bytes ever
 * written and read (they only grow); data[head & (size-1)] is the next byte
 * to write.  Empty when head == tail, full when head - tail == size.
 *
 * Producer-written and consumer-written fields sit on separate cache lines.
 * A side that is about to sleep sets its *_wait flag, issues a full fence
 * and checks the counters again; a side that moves a counter issues a full
 * fence, and if the other side's flag is set, clears it and wakes that side
 * (guest: doorbell; host: a byte to the guest's UART).
 *
 * writers == 0 means no write end is open: the reader sees EOF once the ring
 * is drained.  readers == 0 means no read end is open: a writer gets EPIPE.
 * Several writers (or readers) take wlock (rlock) around each copy; a write
 * of up to UF_PIPE_BUF bytes waits for room for all of it, so it is never
 * interleaved with another.  A VM that dies holding a lock has it released
 * by the host.
 */
struct uf_ring {
	/* Written by the producer(s). */
	volatile uint64_t head;
	volatile uint32_t wlock;    /* pid of the writer copying (UF_HOST_LOCKER: the host), 0: free */
	volatile uint32_t wr_wait;  /* a writer sleeps until tail moves */
	uint8_t _pad0[48];
	/* Written by the consumer(s). */
	volatile uint64_t tail;
	volatile uint32_t rlock;    /* pid of the reader copying, 0: free */
	volatile uint32_t rd_wait;  /* a reader sleeps until head moves */
	uint8_t _pad1[48];
	/* Open ends in the job, changed with atomic adds on the whole word so
	 * that exactly one closer sees both reach 0 (and frees the slot). */
	volatile uint32_t readers;
	volatile uint32_t writers;
	uint32_t size;              /* capacity in bytes, a power of two */
	/* A ring whose pipe has ends in other regions (host-written: the
	 * bridge, see workers/pipes/bridge.py; UF_BRIDGED_*): a reader about to wait
	 * on it empty counts itself in (hungry), and rings the doorbell if the
	 * bridge asks to be told, so that it knows where bytes are wanted. */
	volatile uint32_t bridged;
	volatile uint32_t hungry;
	uint32_t _pad2[11];
	uint8_t data[];
};

#define UF_PIPE_BUF         4096  /* writes up to this size are atomic */
#define UF_HOST_LOCKER      0x7fffffff  /* the host's "pid" in wlock and rlock */
#define UF_BRIDGED          1     /* uf_ring.bridged: the pipe has ends elsewhere */
#define UF_BRIDGED_TELL     2     /* ... and a reader going hungry rings */

/*
 * The job's shared-memory region: a header page, then UF_SHM_RINGS ring
 * slots of UF_SHM_SLOT bytes each (a ring header and UF_RING_SIZE data).
 * Bit i of used is set while slot i holds a ring; guests allocate with an
 * atomic or, the last closer frees.  Slots 0-2 are pid 1's stdio.
 */
#define UF_SHM_MAGIC        0x4d485346494e55UL  /* "UNIFSHM" */
#define UF_SHM_RINGS        64
#define UF_RING_SIZE        UF_UL(0x100000)     /* 1 MiB: writer and reader overlap */
#define UF_SHM_SLOT         (UF_RING_SIZE + UF_UL(0x1000))
#define UF_SHM_RING_OFF(i)  (UF_UL(0x1000) + (i) * UF_SHM_SLOT)
#define UF_SHM_SIZE         UF_UL(0x4200000)    /* >= UF_SHM_RING_OFF(64), whole MiB */

struct uf_shm {
	uint64_t magic;             /* UF_SHM_MAGIC */
	uint32_t abi_version;
	uint32_t nrings;
	volatile uint64_t used;     /* bitmap of ring slots in use */
};

_Static_assert(sizeof(struct uf_boot) == 520, "uf_boot layout");
_Static_assert(sizeof(struct uf_ctl) == 1096, "uf_ctl layout");
_Static_assert(sizeof(struct uf_ctl) <= UF_PAGE_SIZE, "uf_ctl fits its page");
_Static_assert(__builtin_offsetof(struct uf_ctl, req) == 64, "uf_ctl lines");
_Static_assert(__builtin_offsetof(struct uf_ctl, rep_seq) == 128, "uf_ctl lines");
_Static_assert(__builtin_offsetof(struct uf_ctl, ends) == 256, "uf_ctl lines");
_Static_assert(sizeof(struct uf_ring) == 192, "uf_ring layout");
_Static_assert(sizeof(struct uf_park) == 64, "uf_park layout");
_Static_assert(__builtin_offsetof(struct uf_ring, tail) == 64, "uf_ring lines");
_Static_assert(__builtin_offsetof(struct uf_ring, readers) == 128, "uf_ring lines");
_Static_assert(UF_SHM_RING_OFF(UF_SHM_RINGS) <= UF_SHM_SIZE, "shm fits");

#endif /* __ASSEMBLER__ */
#endif /* UNIFORK_ABI_H */
