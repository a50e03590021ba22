/*
 * Signals reach a program that computes without system calls: a child
 * spinning on a flag that only its SIGUSR1 handler sets leaves its loop
 * when its parent signals it, its registers intact around the handler;
 * the same with the signal blocked while it spins, then unblocked (taken
 * at that system call); a timer's SIGALRM ends such a loop too, and kills
 * a loop that does not catch it (a watchdog).  Its output must be the
 * native run's.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t flag;

static void
arm_ms(long ms)
{
	struct itimerval it = { { 0, 0 }, { ms / 1000, (ms % 1000) * 1000 } };
	setitimer(ITIMER_REAL, &it, NULL);
}

static void
on_usr1(int sig)
{
	(void)sig;
	flag = 1;
}

static uint64_t
spin_until_flag(void)
{
	uint64_t a = 1, b = 2, n = 0;   /* live across the handler */
	while (!flag) {
		a = a * 6364136223846793005ULL + 1442695040888963407ULL;
		b ^= a >> 7;
		n++;
	}
	return (a ^ b) != 0 && n > 0;
}

static void
rest(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&t, NULL);
}

int
main(void)
{
	signal(SIGUSR1, on_usr1);
	pid_t pid = fork();
	if (pid == 0)
		_exit(spin_until_flag() ? 3 : 4);
	rest(100);
	kill(pid, SIGUSR1);
	int st;
	waitpid(pid, &st, 0);
	printf("spinning child left its loop: exit %d\n", WEXITSTATUS(st));

	pid = fork();
	if (pid == 0) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR1);
		sigprocmask(SIG_BLOCK, &s, NULL);
		volatile uint64_t x = 0;
		for (uint64_t i = 0; i < 300000000ULL; i++)
			x += i;         /* the signal stays pending meanwhile */
		int before = flag;
		sigprocmask(SIG_UNBLOCK, &s, NULL);
		_exit(before == 0 && flag == 1 ? 5 : 6);
	}
	rest(50);
	kill(pid, SIGUSR1);
	waitpid(pid, &st, 0);
	printf("blocked while computing, taken when unblocked: exit %d\n", WEXITSTATUS(st));

	flag = 0;
	signal(SIGALRM, on_usr1);
	arm_ms(50);
	printf("a timer ends a computing loop: %d\n", (int)spin_until_flag());

	pid = fork();
	if (pid == 0) {
		signal(SIGALRM, SIG_DFL);
		arm_ms(50);
		for (volatile uint64_t x = 0;; x++)
			;
	}
	waitpid(pid, &st, 0);
	printf("a watchdog timer kills a computing child: %s\n",
	    WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "it exited");
	return 0;
}
