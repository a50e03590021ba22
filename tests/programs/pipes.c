/*
 * Pipes between processes: a parent-to-child stream of 1 MiB checked byte
 * for byte, EOF when every writer has closed (including copies inherited
 * by fork), EPIPE and SIGPIPE when every reader has closed, O_NONBLOCK
 * EAGAIN on an empty pipe, dup2 onto stdout in a child, and a pipe's
 * 64 KiB capacity.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	int p[2], st;
	static unsigned char buf[1 << 20], got[1 << 20];

	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (unsigned char)(i * 7 + i / 4096);
	pipe(p);
	pid_t c = fork();
	if (c == 0) {
		close(p[1]);
		size_t n = 0;
		ssize_t r;
		while ((r = read(p[0], got + n, sizeof got - n)) > 0)
			n += r;
		printf("child read %zu bytes, intact: %d, then EOF\n", n,
		    n == sizeof buf && memcmp(buf, got, n) == 0);
		_exit(0);
	}
	close(p[0]);
	for (size_t off = 0; off < sizeof buf; off += 10000) {
		size_t len = sizeof buf - off < 10000 ? sizeof buf - off : 10000;
		write(p[1], buf + off, len);
	}
	close(p[1]);
	waitpid(c, &st, 0);
	fflush(stdout);

	/* Reader gone: EPIPE with SIGPIPE ignored, death by SIGPIPE without. */
	pipe(p);
	close(p[0]);
	signal(SIGPIPE, SIG_IGN);
	errno = 0;
	printf("write with no reader: %d %s\n", (int)write(p[1], "x", 1), errno == EPIPE ? "EPIPE" : strerror(errno));
	signal(SIGPIPE, SIG_DFL);
	fflush(stdout);
	c = fork();
	if (c == 0) {
		write(p[1], "x", 1);
		_exit(0);
	}
	waitpid(c, &st, 0);
	printf("writer without reader: signaled %d sig %d\n", WIFSIGNALED(st), WTERMSIG(st));
	close(p[1]);

	/* Non-blocking. */
	pipe2(p, O_NONBLOCK);
	errno = 0;
	printf("empty nonblocking read: %d %s\n", (int)read(p[0], got, 1), errno == EAGAIN ? "EAGAIN" : strerror(errno));
	size_t cap = 0;
	ssize_t w;
	while ((w = write(p[1], buf, 4096)) > 0)
		cap += w;
	printf("capacity >= 64 KiB: %d, then %s\n", cap >= 65536, errno == EAGAIN ? "EAGAIN" : strerror(errno));
	close(p[0]);
	close(p[1]);
	fflush(stdout);

	/* dup2 onto stdout in a child: its printf goes into the pipe. */
	pipe(p);
	c = fork();
	if (c == 0) {
		dup2(p[1], 1);
		close(p[0]);
		close(p[1]);
		printf("through the pipe\n");
		fflush(stdout);
		_exit(0);
	}
	close(p[1]);
	ssize_t n = read(p[0], got, 100);
	printf("parent got: %.*s", (int)(n > 0 ? n : 0), got);
	waitpid(c, &st, 0);
	printf("fcntl: cloexec flag round trip %d\n", fcntl(p[0], F_SETFD, FD_CLOEXEC) == 0 &&
	    fcntl(p[0], F_GETFD) == FD_CLOEXEC);
	return 0;
}
