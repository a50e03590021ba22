/*
 * A program that catches its own CPU faults, as Linux lets it: a handler
 * for SIGSEGV, SIGFPE, SIGILL and SIGTRAP gets the fault's siginfo (code,
 * address) and either jumps out (siglongjmp), returns past the faulting
 * instruction by editing its context, or returns after a trap; every
 * register the program held comes back.  A fault whose signal is blocked
 * kills, as on Linux.  Its output must be the native run's.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

static sigjmp_buf back;
static volatile int got_sig, got_code;
static volatile uintptr_t got_addr;

static void
jump_out(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	got_sig = sig;
	got_code = si->si_code;
	got_addr = (uintptr_t)si->si_addr;
	siglongjmp(back, 1);
}

/* Skip the 2-byte `movl (%rax), %eax` that faulted, and make it read 42. */
static void
skip_load(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;
	got_sig = sig;
	got_addr = (uintptr_t)si->si_addr;
	uc->uc_mcontext.gregs[REG_RIP] += 2;
	uc->uc_mcontext.gregs[REG_RAX] = 42;
}

static volatile int traps;

static void
count_trap(int sig)
{
	(void)sig;
	traps++;
}

static void
on(int sig, void (*fn)(int, siginfo_t *, void *))
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = fn;
	sa.sa_flags = SA_SIGINFO;
	sigaction(sig, &sa, NULL);
}

int
main(void)
{
	on(SIGSEGV, jump_out);
	if (!sigsetjmp(back, 1)) {
		*(volatile int *)0 = 1;
		puts("null write: no fault?");
	}
	printf("null write: %s, code %s, addr %#lx\n", strsignal(got_sig),
	    got_code == SEGV_MAPERR ? "SEGV_MAPERR" : "other", (unsigned long)got_addr);

	if (!sigsetjmp(back, 1))
		(void)*(volatile int *)0x10;
	printf("read at 0x10: %s, addr %#lx\n", strsignal(got_sig), (unsigned long)got_addr);

	/* the mask in force in the handler (SIGSEGV) is undone by siglongjmp */
	sigset_t now;
	sigprocmask(SIG_BLOCK, NULL, &now);
	printf("SIGSEGV blocked after the jump: %d\n", sigismember(&now, SIGSEGV));

	on(SIGFPE, jump_out);
	volatile int zero = 0, one = 1;
	if (!sigsetjmp(back, 1))
		printf("1/0 = %d?\n", one / zero);
	printf("divide by zero: %s, code %s\n", strsignal(got_sig),
	    got_code == FPE_INTDIV ? "FPE_INTDIV" : "other");

	on(SIGILL, jump_out);
	extern char ud2_here[];
	if (!sigsetjmp(back, 1))
		__asm__ volatile("ud2_here: ud2");
	printf("ud2: %s, code %s, at the ud2: %d\n", strsignal(got_sig),
	    got_code == ILL_ILLOPN ? "ILL_ILLOPN" : "other", got_addr == (uintptr_t)ud2_here);

	/* the handler edits the context: the load is skipped and reads 42 */
	on(SIGSEGV, skip_load);
	long v;
	__asm__ volatile("movl (%%rax), %%eax" : "=a"(v) : "a"(0x20L) : "memory");
	printf("load at 0x20 skipped by the handler: %ld, addr %#lx\n", v, (unsigned long)got_addr);

	/* a trap resumes after int3 with every register as it was: rcx and
	 * r11 too, which a system call would have clobbered */
	signal(SIGTRAP, count_trap);
	uint64_t rcx = 0x1122334455667788, r11 = 0x0badc0ffee, rbx = 7, r15 = 99;
	__asm__ volatile("int3" : "+c"(rcx), "+b"(rbx) : : "memory");
	__asm__ volatile("mov %1, %%r11\n\tint3\n\tmov %%r11, %0" : "=r"(r11) : "r"(r11) : "r11", "memory");
	__asm__ volatile("mov %1, %%r15\n\tint3\n\tmov %%r15, %0" : "=r"(r15) : "r"(r15) : "r15", "memory");
	printf("int3 three times: %d traps; rcx %#lx r11 %#lx rbx %lu r15 %lu\n", traps,
	    (unsigned long)rcx, (unsigned long)r11, (unsigned long)rbx, (unsigned long)r15);

	/* blocked, a fault's signal kills all the same (Linux forces it) */
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGSEGV);
		sigprocmask(SIG_BLOCK, &s, NULL);
		on(SIGSEGV, jump_out);
		*(volatile int *)8 = 1;
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	printf("blocked SIGSEGV: killed by %s\n", WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "nothing");
	return 0;
}
