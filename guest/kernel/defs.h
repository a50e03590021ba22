/* defs.h: the kernel's shared types and prototypes, grouped by file. */
#ifndef DEFS_H
#define DEFS_H

#include <stddef.h>
#include <stdint.h>
#include "unifork_abi.h"

#define BOOT   ((volatile struct uf_boot *)UF_BOOT_ADDR)
#define CTL    ((volatile struct uf_ctl *)UF_CTL_ADDR)

#define PAGE_UP(x)   (((x) + UF_PAGE_SIZE - 1) & ~(UF_PAGE_SIZE - 1))
#define PAGE_DOWN(x) ((x) & ~(UF_PAGE_SIZE - 1))
#define MIN(a, b)    ((a) < (b) ? (a) : (b))
#define MAX(a, b)    ((a) > (b) ? (a) : (b))

/* The frame entry.S pushes for an exception or interrupt. */
struct trapframe {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

/*
 * The program's registers at a system call, as syscall_entry pushes them
 * at the top of the system-call stack, and pops them on the way back (a
 * signal handler's entry and rt_sigreturn rewrite them).  rcx holds the
 * return rip, r11 the flags; the rsp is sys_user_rsp.
 */
struct uregs {
	uint64_t rax, r9, r8, r10, rdx, rsi, rdi, r11, rcx;
	uint64_t r15, r14, r13, r12, rbp, rbx;
};
_Static_assert(sizeof(struct uregs) == 15 * 8, "uregs: entry.S pushes 15");
extern struct uregs sys_uregs;     /* at the top of the system-call stack */
extern uint8_t sys_stack_top[];
extern uint64_t sys_user_rsp;
/* Leave through full_exit (entry.S): every register as in sys_uregs, rip
 * and rflags from these (after a fault, or a handler's rt_sigreturn). */
extern uint64_t sys_ret_rip, sys_ret_flags;
/* A program's rflags as we restore them: its arithmetic flags and DF;
 * never IF (it runs with interrupts off: they are taken in the halt only)
 * nor TF. */
#define USER_FLAGS(f) (((f) & 0xcd5) | 0x2)
extern uint8_t sys_full_return;
#define UREGS (&sys_uregs)

// main.c
extern uint32_t cpu_features;   /* CPUF_* */
#define CPUF_RDRAND    (1u << 0)
#define CPUF_FSGSBASE  (1u << 1)
#define CPUF_DEADLINE  (1u << 2)
void boot_program(void) __attribute__((noreturn));  /* ring 0: the boot page's */

// trap.c (ring 0)
void trap(struct trapframe *tf);
long gate_ring0(long op, long a, long b);
void idt_init(void);

// entry.S
enum gate_op { GATE_NONE, GATE_WRFSBASE, GATE_POWEROFF };
long gate(long op, long a, long b);
void doorbell(void);                    /* wake the host (bell.c) */
void doorbell_port(void);               /* ... through COM2 (entry.S) */
void bell_want(void);                   /* set up the fast doorbell, if any */
void bell_stop(void);                   /* ... and stop it (a fork, the end) */
void halt(uint64_t tsc_deadline);       /* until an interrupt or the deadline */
void enter_user(uint64_t entry, uint64_t sp) __attribute__((noreturn));
void fault_entry(void);
void async_entry(void);
void syscall_entry(void);
void start_program(uint64_t entry, uint64_t sp) __attribute__((noreturn));
void park_gate(void) __attribute__((noreturn));   /* into ring 0, to park (park.c) */
void park_enter(void) __attribute__((noreturn));  /* ring 0: onto the park stack */

/*
 * A parent's context at fork, as fork_save stores it and fork_jump loads
 * it (entry.S, by these offsets): where fork_save returns to, the stack
 * pointer after its return, the callee-saved registers, the CPL (CS) it
 * ran at, and the FPU/SSE state (fxsave).  All else of the process is in
 * RAM, the user's registers on the system-call stack.
 */
struct forkctx {
	uint64_t rip, rsp, rbx, rbp, r12, r13, r14, r15;
	uint64_t cs, magic;
	uint64_t _pad[6];
	uint8_t fpu[512] __attribute__((aligned(16)));
};
_Static_assert(__builtin_offsetof(struct forkctx, cs) == 0x40, "entry.S: forkctx");
_Static_assert(__builtin_offsetof(struct forkctx, fpu) == 0x80, "entry.S: forkctx");
long fork_save(struct forkctx *c) __attribute__((returns_twice));
void fork_jump(const struct forkctx *c) __attribute__((noreturn));

// park.c
extern struct forkctx forkctx;
long fork_call(long flags);
void park(void) __attribute__((noreturn));

// syscall.c
long syscall_dispatch(long nr, long a0, long a1, long a2, long a3, long a4, long a5);

// proc.c
void proc_init(void);
long host_call(int req, long a0, long a1, long a2, long a3);
void proc_exit(int status) __attribute__((noreturn));
void proc_kill(int sig) __attribute__((noreturn));
long sys_arch_prctl(long code, long addr);
void random_fork(void);

// signal.c
int  signal_pending(void);
void signal_raise(int sig);
void signal_wait(void);
void signal_exec(void);
void signal_fork(void);
void proc_sigpipe(void);
long signal_return(long nr, long ret);
int  signal_takes_fault(int sig);
void signal_fault_info(int sig, int code, uint64_t addr, uint64_t trapno, uint64_t err);
long signal_fault(void);
int  signal_async_ready(void);
long signal_async(void);
void signal_mask_for_call(uint64_t mask);
long signal_user_set(long p, long size, uint64_t *set);
uint64_t signal_alarm_tsc(void);

// sys_misc.c
long user_timespec_ns(long p, uint64_t *ns);
void restore_fs_base(void);

// vm.c
void vm_init(void);
int  user_ok(uint64_t addr, uint64_t len);
int  user_str_ok(const char *s, size_t max);
void vm_image_written(void);

// file.c
#define NFD      256            /* descriptors per process */
enum { FT_NONE, FT_READ, FT_WRITE, FT_NULL, FT_ZERO, FT_RANDOM, FT_HOST };
struct file {
	int type;               /* FT_*; FT_NONE: slot free */
	int refs;               /* descriptors pointing here */
	int flags;              /* O_NONBLOCK, access mode (FT_HOST: the mode only) */
	int tty;                /* the host end is a terminal */
	int ring;               /* index in the job's shared region */
	long handle;            /* FT_HOST: the host's (fs.c) */
};
struct file *getfile(long fd);
long file_read(struct file *f, void *buf, size_t n);
long file_write(struct file *f, const void *buf, size_t n);
long fd_open(int node, long handle, int flags, int cloexec);
long fd_host(int fd, long otherwise);
long fd_handle(int fd);
long fd_reopen(int fd, int cloexec);
long fd_link(int fd, long buf, long n);
long fd_stat_here(int fd, long stp);
struct iovec;
long check_iov(const struct iovec *iov, long cnt);
#define POLLIN   0x001
#define POLLOUT  0x004
#define POLLERR  0x008
#define POLLHUP  0x010
#define POLLNVAL 0x020
void file_init(void);
short poll_events(int fd, short want);
void file_close_all(void);
void file_exec(void);

// fs.c
long fs_call(long nr, long a0, long a1, long a2, long a3, long a4);
void fs_close(long handle);
long fs_fcntl(long handle, int cmd, long arg);
long fs_map_check(int fd, long prot, long flags, long off);
long fs_map_fill(int fd, uint64_t at, size_t len, long off);

// sys_misc.c (also)
long sys_getrandom(long buf, long n, long flags);

// ring.c
volatile struct uf_ring *shm_ring(int idx);
int  ring_alloc(void);
void ring_ends(int idx, int dr, int dw, int quiet);
long ring_write(int idx, const void *buf, size_t n, int nonblock);
long ring_read(int idx, void *buf, size_t n, int nonblock);
long ring_avail(int idx);
size_t ring_room(int idx);
long ring_wait_room(int idx);

// wait.c
void sleep_until(uint64_t tsc_deadline);
int  wait_until(int (*ready)(void *), void *arg, volatile uint32_t *flag, int what, int ring,
    uint64_t spin_ns);
/*
 * How long to spin before halting.  A halt costs the sleeper a wake-up
 * relayed by the host (a byte through QEMU's UART) and an interrupt taken
 * in ring 0, which PVM emulates: 0.5-1 ms here when these went through
 * trap(); entry.S's short paths cut the guest's part (a timed halt that
 * ends at once: 150-200 -> 36 us).  Measured with bench/pipes.py: a 100 us spin
 * lets streaming and ping-pong fall into halts (100 MB/s, 520 us round
 * trips); 200 us keeps them in the fast path (2.7 GB/s, 7 us).
 *
 * An answer through a pipe between hosts comes through two workers and the
 * network, in more than SPIN_NS: a ping-pong there halted on every
 * exchange.  So a reader of small messages on a bridged ring spins longer
 * (SPIN_FAR_NS; bench/xpipe.py's round trip 1.25 -> 0.78-0.86 ms with
 * the workers' priority, workers/proc/supervisor.py); a bulk reader or a writer does not: its
 * spinning would take the CPU from the worker that moves its bytes
 * (bench/xpipe.py's throughput fell by 40%).
 */
#define SPIN_NS        200000
#define SPIN_FAR_NS    2000000

// clock.c
void clock_init(void);
uint64_t clock_tsc(void);
uint64_t clock_mono_ns(void);
void clock_fork(void);
uint64_t clock_real_ns(void);
uint64_t clock_real_at(uint64_t mono_ns);
uint64_t ns_to_tsc(uint64_t ns);

// console.c
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void klog_write(const char *s, size_t n);

// lib.c
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int   memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int   strcmp(const char *a, const char *b);
int   fmt(char *out, size_t size, const char *f, __builtin_va_list ap);

#endif
