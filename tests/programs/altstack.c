/*
 * sigaltstack: a handler with SA_ONSTACK runs on the alternate stack (its
 * locals live there, sigaltstack says SS_ONSTACK inside, and changing the
 * stack from there is EPERM); one without runs on the program's stack,
 * and what it changes lasts until it returns (rt_sigreturn restores the
 * frame's uc_stack, as Linux does); the settings read back, SS_DISABLE
 * turns it off, and a child of fork keeps them.  Its output must be the
 * native run's.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char alt[65536] __attribute__((aligned(16)));
static volatile int on_alt, flag_onstack, eperm;

static int
within(const void *p)
{
	return (const char *)p >= alt && (const char *)p < alt + sizeof alt;
}

static void
handler(int sig)
{
	volatile int local = sig;
	stack_t now, again;
	on_alt = within((const void *)&local);
	sigaltstack(NULL, &now);
	flag_onstack = (now.ss_flags & SS_ONSTACK) != 0;
	memset(&again, 0, sizeof again);
	again.ss_flags = SS_DISABLE;
	eperm = sigaltstack(&again, NULL) == -1 && errno == EPERM;
}

static void
install(int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigaction(SIGUSR1, &sa, NULL);
}

int
main(void)
{
	stack_t st, old;
	sigaltstack(NULL, &old);
	printf("at start: disabled %d\n", (old.ss_flags & SS_DISABLE) != 0);

	st.ss_sp = alt;
	st.ss_size = 1000;
	st.ss_flags = 0;
	printf("too small: %s\n", sigaltstack(&st, NULL) == -1 && errno == ENOMEM ? "ENOMEM" : "?");
	st.ss_size = sizeof alt;
	sigaltstack(&st, NULL);
	sigaltstack(NULL, &old);
	printf("set: sp ok %d, size %zu, flags %d\n", old.ss_sp == alt, old.ss_size, old.ss_flags);

	install(SA_ONSTACK);
	raise(SIGUSR1);
	printf("SA_ONSTACK handler: on the alternate stack %d, SS_ONSTACK %d, change EPERM %d\n",
	    on_alt, flag_onstack, eperm);

	install(0);
	raise(SIGUSR1);
	sigaltstack(NULL, &old);
	printf("plain handler: on the alternate stack %d; its disabling undone on return: %d\n",
	    on_alt, old.ss_flags == 0 && old.ss_size == sizeof alt);

	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		install(SA_ONSTACK);
		raise(SIGUSR1);
		printf("child's SA_ONSTACK handler: on the alternate stack %d\n", on_alt);
		fflush(stdout);
		_exit(0);
	}
	waitpid(pid, NULL, 0);

	st.ss_flags = SS_DISABLE;
	sigaltstack(&st, NULL);
	sigaltstack(NULL, &old);
	install(SA_ONSTACK);
	raise(SIGUSR1);
	printf("disabled: flags %d, handler on the alternate stack %d\n", old.ss_flags, on_alt);
	return 0;
}
