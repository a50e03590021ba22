/*
 * select and pselect on pipes, as programs use them: a timeout, readiness
 * of both ends, end of file, a closed descriptor, a child that writes
 * later, and a signal that cuts the wait short.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; }

int
main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int p[2], st;
	pipe(p);
	fd_set r, w;
	struct timeval tv = { 0, 50000 };

	FD_ZERO(&r);
	FD_SET(p[0], &r);
	int n = select(p[0] + 1, &r, NULL, NULL, &tv);
	printf("empty pipe, 50 ms: %d ready, read end set %d\n", n, FD_ISSET(p[0], &r));

	write(p[1], "x", 1);
	FD_ZERO(&r);
	FD_ZERO(&w);
	FD_SET(p[0], &r);
	FD_SET(p[1], &w);
	n = select(p[1] + 1, &r, &w, NULL, NULL);
	printf("a byte in: %d ready, read %d, write %d\n", n, FD_ISSET(p[0], &r), FD_ISSET(p[1], &w));

	char b;
	read(p[0], &b, 1);
	close(p[1]);
	FD_ZERO(&r);
	FD_SET(p[0], &r);
	n = select(p[0] + 1, &r, NULL, NULL, NULL);
	printf("writer closed: %d ready, read gives %d\n", n, (int)read(p[0], &b, 1));

	FD_ZERO(&r);
	FD_SET(p[1], &r);               /* closed above */
	errno = 0;
	n = select(p[1] + 1, &r, NULL, NULL, NULL);
	printf("closed descriptor: %d %s\n", n, errno == EBADF ? "EBADF" : strerror(errno));
	close(p[0]);

	pipe(p);
	pid_t c = fork();
	if (c == 0) {
		struct timespec t = { 0, 100000000 };
		nanosleep(&t, NULL);
		write(p[1], "late", 4);
		_exit(0);
	}
	FD_ZERO(&r);
	FD_SET(p[0], &r);
	sigset_t none;
	sigemptyset(&none);
	n = pselect(p[0] + 1, &r, NULL, NULL, NULL, &none);
	printf("pselect, a child writes 100 ms later: %d ready\n", n);
	waitpid(c, &st, 0);

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	char buf[8];
	read(p[0], buf, sizeof buf);
	struct itimerval it = { { 0, 0 }, { 0, 50000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	FD_ZERO(&r);
	FD_SET(p[0], &r);
	n = select(p[0] + 1, &r, NULL, NULL, NULL);
	printf("a signal during select: %d %s\n", n, n < 0 && errno == EINTR ? "EINTR" : "?");
	return 0;
}
