/*
 * Signal handlers, as programs use them: each step prints what it saw, and
 * the output must be the native run's.
 *
 *   signals     raise with a handler (SA_SIGINFO), a blocked signal taken
 *               when unblocked, SSE state kept across a handler, SIGCHLD
 *               caught in sigsuspend, a blocked read interrupted (EINTR)
 *               and restarted (SA_RESTART) by a signal from the parent, a
 *               nanosleep cut short, ppoll's mask for the call,
 *               timers (alarm, setitimer: one shot, interval, a read
 *               that times out), SA_RESETHAND
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t caught, info_signo, chld, alarms;

static void on_sig(int sig) { caught = sig; }
static void on_info(int sig, siginfo_t *si, void *uc) { (void)uc; caught = sig; info_signo = si->si_signo; }
static void on_chld(int sig) { (void)sig; chld++; }
static void on_alarm(int sig) { (void)sig; alarms++; }

/* A handler that uses the SSE registers itself. */
static void
on_float(int sig)
{
	volatile double x = 0;
	for (int i = 1; i <= 100; i++)
		x += 1.0 / i;
	caught = sig + (x > 5 ? 1000 : 0);
}

static void
handle(int sig, void (*fn)(int), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = fn;
	sa.sa_flags = flags;
	sigaction(sig, &sa, NULL);
}

static void
nap(long ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&t, NULL);
}

/* A child blocked in read() on a pipe gets SIGUSR2 from its parent. */
static void
interrupted_read(int flags)
{
	int ready[2], data[2], st;
	pipe(ready);
	pipe(data);
	pid_t c = fork();
	if (c == 0) {
		char b;
		handle(SIGUSR2, on_sig, flags);
		write(ready[1], "r", 1);
		ssize_t n = read(data[0], &b, 1);
		printf("child: read %s, handler %s\n",
		    n == 1 ? "a byte" : n < 0 && errno == EINTR ? "EINTR" : "???",
		    caught == SIGUSR2 ? "ran" : "did not run");
		_exit(0);
	}
	char b;
	read(ready[0], &b, 1);
	nap(150);                       /* the child is in its read by now */
	kill(c, SIGUSR2);
	nap(150);
	write(data[1], "x", 1);         /* for the restarted read */
	waitpid(c, &st, 0);
	printf("child exited %d\n", WEXITSTATUS(st));
}

int
main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_info;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR1, &sa, NULL);
	raise(SIGUSR1);
	printf("raise: handler saw signal %d, si_signo %d\n", caught, info_signo);

	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	caught = 0;
	sigprocmask(SIG_BLOCK, &set, &old);
	raise(SIGUSR1);
	sigset_t pend;
	sigpending(&pend);
	printf("blocked: handler %s, pending %d\n", caught ? "ran" : "waits",
	    sigismember(&pend, SIGUSR1));
	sigprocmask(SIG_SETMASK, &old, NULL);
	printf("unblocked: handler saw signal %d\n", caught);

	handle(SIGUSR2, on_float, 0);
	volatile double sum = 0;
	for (int i = 0; i < 10; i++) {
		double step = 0.25 * i;
		raise(SIGUSR2);
		sum += step;
	}
	printf("SSE across handlers: %.2f (handler said %d)\n", sum, caught);

	handle(SIGCHLD, on_chld, 0);
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);
	pid_t c = fork();
	if (c == 0)
		_exit(3);
	sigset_t none;
	sigemptyset(&none);
	while (!chld)
		sigsuspend(&none);      /* returns -1, EINTR, after the handler */
	int st;
	waitpid(c, &st, 0);
	sigprocmask(SIG_SETMASK, &old, NULL);
	printf("SIGCHLD in sigsuspend: %d time(s), child exited %d\n", (int)chld,
	    WEXITSTATUS(st));
	handle(SIGCHLD, SIG_DFL, 0);

	caught = 0;
	interrupted_read(0);
	interrupted_read(SA_RESTART);

	int ready[2];
	pipe(ready);
	c = fork();
	if (c == 0) {
		handle(SIGTERM, on_sig, 0);
		struct timespec t = { 10, 0 }, left = { 0, 0 };
		write(ready[1], "r", 1);
		int r = nanosleep(&t, &left);
		printf("child: nanosleep %s, %s left\n",
		    r < 0 && errno == EINTR ? "EINTR" : "done",
		    left.tv_sec >= 5 ? "more than 5 s" : "less");
		_exit(0);
	}
	char b;
	read(ready[0], &b, 1);
	nap(100);
	kill(c, SIGTERM);
	waitpid(c, &st, 0);
	printf("sleeper exited %d\n", WEXITSTATUS(st));

	handle(SIGUSR1, on_sig, 0);
	sigprocmask(SIG_BLOCK, &set, &old);     /* (set: SIGCHLD) */
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	caught = 0;
	raise(SIGUSR1);
	struct timespec second = { 1, 0 };
	int r = ppoll(NULL, 0, &second, &none);
	sigprocmask(SIG_BLOCK, NULL, &pend);
	printf("ppoll with an empty mask: %s, handler saw %d, SIGUSR1 blocked again: %d\n",
	    r < 0 && errno == EINTR ? "EINTR" : "no signal", caught, sigismember(&pend, SIGUSR1));
	sigprocmask(SIG_SETMASK, &old, NULL);

	handle(SIGALRM, on_alarm, 0);
	printf("alarm(5) then alarm(0): %u s were left\n", (alarm(5), alarm(0)));
	struct itimerval it = { { 0, 0 }, { 0, 100000 } }, cur;
	setitimer(ITIMER_REAL, &it, NULL);
	getitimer(ITIMER_REAL, &cur);
	printf("setitimer 100 ms: armed %d\n", cur.it_value.tv_sec == 0 && cur.it_value.tv_usec > 0);
	pause();
	printf("pause: SIGALRM %d time(s)\n", (int)alarms);
	it = (struct itimerval){ { 0, 20000 }, { 0, 20000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	while (alarms < 4)
		pause();
	it = (struct itimerval){ { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &it, NULL);
	printf("interval timer: %d SIGALRMs in all\n", (int)alarms);
	int quiet[2];
	pipe(quiet);                    /* nobody writes: a read that times out */
	it = (struct itimerval){ { 0, 0 }, { 0, 50000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	r = read(quiet[0], &b, 1);
	printf("read with a 50 ms timer: %s\n", r < 0 && errno == EINTR ? "EINTR" : "???");

	/* Calls that end as a signal comes are not run again: 1-byte writes
	 * (write returns 1, its own number) under a 1 ms interval timer. */
	int flow[2];
	pipe(flow);
	c = fork();
	if (c == 0) {
		close(flow[1]);
		long got = 0, k;
		char chunk[4096];
		while ((k = read(flow[0], chunk, sizeof chunk)) > 0 || (k < 0 && errno == EINTR))
			got += k > 0 ? k : 0;
		printf("reader got %ld bytes\n", got);
		_exit(0);
	}
	close(flow[0]);
	handle(SIGALRM, on_alarm, SA_RESTART);
	it = (struct itimerval){ { 0, 1000 }, { 0, 1000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	int wrote = 0;
	for (int i = 0; i < 20000; i++)
		wrote += write(flow[1], "z", 1) == 1;
	it = (struct itimerval){ { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &it, NULL);
	close(flow[1]);
	waitpid(c, &st, 0);
	printf("wrote %d one-byte writes under a timer\n", wrote);

	handle(SIGUSR1, on_sig, SA_RESETHAND);
	caught = 0;
	raise(SIGUSR1);
	printf("SA_RESETHAND: first raise caught %d\n", caught);
	c = fork();
	if (c == 0) {
		raise(SIGUSR1);         /* the default action now: killed */
		_exit(0);
	}
	waitpid(c, &st, 0);
	printf("then: %s %d\n", WIFSIGNALED(st) ? "killed by" : "exited",
	    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	return 0;
}
