/*
 * Pipes between processes that may run on different hosts.
 *
 *   xpipes gather N LINES   N children each write LINES numbered lines into
 *                           one pipe; the parent reads to end of file and
 *                           prints, per child, the lines and a checksum
 *   xpipes pipeline LINES   three stages joined by two pipes: numbers, their
 *                           squares mod 1000003, and the sum
 *   xpipes records W R      W writers each write R records of 4096 bytes
 *                           into one pipe; the parent checks that no record
 *                           is torn and counts them per writer
 *   xpipes epipe            a child reads one line and exits; the parent
 *                           writes until EPIPE
 *   xpipes nested LINES     a child that holds its VM, then a child that makes
 *                           a pipe of its own and forks a grandchild, which
 *                           writes LINES numbered lines into it: on a
 *                           cluster, a pipe made on another host than pid 1's
 *                           and reaching a third
 *   xpipes late BYTES       a child that holds its VM; a writer that writes
 *                           BYTES (< 64 KiB: a Linux pipe holds no more) and
 *                           exits before the reader is forked (as
 *                           in a shell pipeline of a fast first stage): the
 *                           reader must get them all
 *   xpipes stdin            a child that holds its VM, then a child that
 *                           reads the program's stdin to end of file and
 *                           prints its size and a checksum; the parent keeps
 *                           its own stdin open and does not read it
 *   xpipes lost             a child that holds its VM, then a child that
 *                           writes into a pipe for ever: the parent reads
 *                           until end of file (the test kills the writer's
 *                           host) and reports how the writer ended
 *   xpipes forked ROUNDS    ping-pong over two pipes, forking as it goes:
 *                           a child C echoes ROUNDS bytes from the parent,
 *                           then forks G, which echoes the rest; the
 *                           parent, past its ROUNDS, releases its holder
 *                           and forks D, which plays ROUNDS, then plays
 *                           ROUNDS more itself.  On a cluster C and G run
 *                           on other hosts than the parent, and every fork
 *                           but the first copies a VM whose fast doorbell
 *                           ran (the ping-pong set it up; the fork stops it,
 *                           each copy sets it up again): a doorbell lost in
 *                           a copy hangs the game
 *   xpipes clock            a child that holds its VM, then a child that
 *                           reads CLOCK_MONOTONIC once its parent's reading,
 *                           taken after the fork, has come to it, and sends
 *                           it back: it must be between the parent's
 *                           readings before and after (one clock for all)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

/* Children of gather and records first hold their VM a moment, so that on
 * a cluster the parent's later forks find their host full and go elsewhere. */
static void
linger(void)
{
	struct timespec t = { 0, 300 * 1000000 };
	nanosleep(&t, NULL);
}

static int
full_read(int fd, char *buf, int n)
{
	int got = 0;
	while (got < n) {
		int r = read(fd, buf + got, n - got);
		if (r <= 0)
			return got;
		got += r;
	}
	return got;
}

/* A child that holds its VM (on a cluster, its host's slot) until released. */
static pid_t
hold(void)
{
	pid_t h = fork();
	if (h == 0) {
		sleep(60);
		_exit(0);
	}
	return h;
}

static void
release(pid_t holder)
{
	int st;
	kill(holder, SIGKILL);
	waitpid(holder, &st, 0);
}

static void
reap_all(void)
{
	int st;
	while (wait(&st) > 0)
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			printf("a child ended badly: %#x\n", st);
}

static int
gather(int n, int lines)
{
	int p[2];
	pipe(p);
	for (int i = 0; i < n; i++)
		if (fork() == 0) {
			/* whole lines, at most PIPE_BUF bytes a write:
			 * never torn by the other writers */
			char buf[4096];
			int used = 0;
			close(p[0]);
			linger();
			for (int j = 0; j < lines; j++) {
				if (used > (int)sizeof buf - 32) {
					write(p[1], buf, used);
					used = 0;
				}
				used += sprintf(buf + used, "%d %d\n", i, j);
			}
			write(p[1], buf, used);
			_exit(0);
		}
	close(p[1]);
	long count[64] = { 0 }, sum[64] = { 0 };
	FILE *f = fdopen(p[0], "r");
	int i, j;
	while (fscanf(f, "%d %d", &i, &j) == 2)
		if (i >= 0 && i < 64) {
			count[i]++;
			sum[i] += j;
		}
	for (i = 0; i < n; i++)
		printf("child %d: %ld lines, sum %ld\n", i, count[i], sum[i]);
	reap_all();
	return 0;
}

static int
pipeline(int lines)
{
	int a[2], b[2];
	pipe(a);
	pipe(b);
	if (fork() == 0) {              /* stage 1: numbers */
		close(a[0]); close(b[0]); close(b[1]);
		linger();               /* stage 2 waits for it meanwhile */
		FILE *f = fdopen(a[1], "w");
		for (int i = 1; i <= lines; i++)
			fprintf(f, "%d\n", i);
		fclose(f);
		_exit(0);
	}
	if (fork() == 0) {              /* stage 2: squares */
		close(a[1]); close(b[0]);
		FILE *in = fdopen(a[0], "r"), *out = fdopen(b[1], "w");
		long x;
		while (fscanf(in, "%ld", &x) == 1)
			fprintf(out, "%ld\n", x * x % 1000003);
		fclose(out);
		_exit(0);
	}
	if (fork() == 0) {              /* stage 3: the sum */
		close(a[0]); close(a[1]); close(b[1]);
		FILE *in = fdopen(b[0], "r");
		long x, sum = 0, n = 0;
		while (fscanf(in, "%ld", &x) == 1) {
			sum += x;
			n++;
		}
		printf("stage 3: %ld numbers, sum %ld\n", n, sum);
		fflush(stdout);
		_exit(0);
	}
	close(a[0]); close(a[1]); close(b[0]); close(b[1]);
	reap_all();
	printf("pipeline done\n");
	return 0;
}

static int
records(int w, int r)
{
	int p[2];
	static char rec[4096];
	pipe(p);
	for (int i = 0; i < w; i++)
		if (fork() == 0) {
			close(p[0]);
			linger();
			for (int k = 0; k < r; k++) {
				memset(rec, 'a' + i, sizeof rec);
				snprintf(rec, 32, "%d %d ", i, k);
				if (write(p[1], rec, sizeof rec) != sizeof rec)
					_exit(1);
			}
			_exit(0);
		}
	close(p[1]);
	long count[26] = { 0 }, torn = 0;
	while (full_read(p[0], rec, sizeof rec) == sizeof rec) {
		int i, k;
		if (sscanf(rec, "%d %d", &i, &k) != 2 || i < 0 || i >= w) {
			torn++;
			continue;
		}
		for (int b = 32; b < 4096; b++)
			if (rec[b] != 'a' + i) {
				torn++;
				break;
			}
		count[i]++;
	}
	for (int i = 0; i < w; i++)
		printf("writer %d: %ld records\n", i, count[i]);
	printf("torn: %ld\n", torn);
	reap_all();
	return 0;
}

static int
epipe(void)
{
	int p[2];
	pipe(p);
	signal(SIGPIPE, SIG_IGN);
	pid_t c = fork();
	if (c == 0) {
		char line[64];
		close(p[1]);
		FILE *f = fdopen(p[0], "r");
		if (fgets(line, sizeof line, f))
			printf("child got: %s", line);
		fflush(stdout);
		_exit(0);
	}
	close(p[0]);
	write(p[1], "hello\n", 6);
	static char junk[4096];
	long sent = 0;
	for (;;) {
		long n = write(p[1], junk, sizeof junk);
		if (n < 0) {
			printf("write failed: %s\n", errno == EPIPE ? "EPIPE" : strerror(errno));
			break;
		}
		sent += n;
	}
	reap_all();
	return 0;
}

static int
nested(int lines)
{
	pid_t holder = hold();
	pid_t c = fork();
	if (c == 0) {
		int p[2];
		pipe(p);
		if (fork() == 0) {
			close(p[0]);
			FILE *f = fdopen(p[1], "w");
			for (int i = 1; i <= lines; i++)
				fprintf(f, "line %d\n", i);
			fclose(f);
			_exit(0);
		}
		close(p[1]);
		FILE *f = fdopen(p[0], "r");
		char line[64];
		long n = 0, sum = 0;
		while (fgets(line, sizeof line, f)) {
			n++;
			sum += atol(line + 5);
		}
		printf("grandchild's pipe: %ld lines, sum %ld\n", n, sum);
		reap_all();
		_exit(0);
	}
	int st;
	waitpid(c, &st, 0);
	printf("child %s %d\n", WIFEXITED(st) ? "exited" : "killed by",
	    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	release(holder);
	return 0;
}

static int
late(long bytes)
{
	int p[2], st;
	static char buf[65536];
	pid_t holder = hold();
	pipe(p);
	pid_t w = fork();
	if (w == 0) {
		close(p[0]);
		memset(buf, 'y', sizeof buf);
		for (long sent = 0; sent < bytes; ) {
			long n = write(p[1], buf, bytes - sent < (long)sizeof buf ?
			    bytes - sent : (long)sizeof buf);
			if (n <= 0)
				_exit(1);
			sent += n;
		}
		_exit(0);
	}
	close(p[1]);
	waitpid(w, &st, 0);
	printf("writer exited %d\n", WEXITSTATUS(st));
	pid_t r = fork();
	if (r == 0) {
		long total = 0, n;
		while ((n = read(p[0], buf, sizeof buf)) > 0)
			total += n;
		printf("late reader got %ld bytes\n", total);
		_exit(0);
	}
	close(p[0]);
	waitpid(r, &st, 0);
	release(holder);
	return 0;
}

static int
readstdin(void)
{
	static char buf[65536];
	pid_t holder = hold();
	pid_t r = fork();
	if (r == 0) {
		unsigned long total = 0, sum = 0;
		long n;
		while ((n = read(0, buf, sizeof buf)) > 0)
			for (long i = 0; i < n; i++, total++)
				sum = sum * 31 + (unsigned char)buf[i];
		printf("stdin: %lu bytes, checksum %lx\n", total, sum);
		_exit(n < 0);
	}
	int st;
	waitpid(r, &st, 0);
	printf("reader exited %d\n", WEXITSTATUS(st));
	release(holder);
	return 0;
}

static int
lost(void)
{
	int p[2];
	static char buf[4096];
	pid_t holder = hold();
	pipe(p);
	pid_t w = fork();
	if (w == 0) {
		close(p[0]);
		memset(buf, 'x', sizeof buf);
		for (;;) {
			write(p[1], buf, sizeof buf);
			struct timespec t = { 0, 10 * 1000000 };
			nanosleep(&t, NULL);
		}
	}
	close(p[1]);
	long total = 0, n;
	while ((n = read(p[0], buf, sizeof buf)) > 0)
		total += n;
	printf("reader saw end of file: %s\n", n == 0 && total > 0 ? "yes" : "no");
	int st;
	waitpid(w, &st, 0);
	printf("writer %s %d\n", WIFSIGNALED(st) ? "killed by" : "exited", WIFSIGNALED(st) ?
	    WTERMSIG(st) : WEXITSTATUS(st));
	release(holder);
	return 0;
}

static int
clock_order(void)
{
	int down[2], up[2];
	struct timespec parent, child;
	pid_t holder = hold();
	pipe(down);
	pipe(up);
	pid_t c = fork();
	if (c == 0) {
		full_read(down[0], (char *)&parent, sizeof parent);
		clock_gettime(CLOCK_MONOTONIC, &child);
		write(up[1], &child, sizeof child);
		_exit(0);
	}
	struct timespec after;
	clock_gettime(CLOCK_MONOTONIC, &parent);
	write(down[1], &parent, sizeof parent);
	full_read(up[0], (char *)&child, sizeof child);
	clock_gettime(CLOCK_MONOTONIC, &after);
	long long behind = (parent.tv_sec - child.tv_sec) * 1000000000LL +
	    (parent.tv_nsec - child.tv_nsec);
	long long ahead = (child.tv_sec - after.tv_sec) * 1000000000LL +
	    (child.tv_nsec - after.tv_nsec);
	if (behind > 0)
		printf("the child's clock is behind its parent's by %lld us\n", behind / 1000);
	else if (ahead > 0)
		printf("the child's clock is ahead of its parent's by %lld us\n", ahead / 1000);
	else
		printf("the child's clock is its parent's\n");
	waitpid(c, NULL, 0);
	release(holder);
	return 0;
}

/* Send (n) bytes on (to), each echoed back on (from); 0 if all came back. */
static int
play(int to, int from, int n, int *seq)
{
	for (int i = 0; i < n; i++, (*seq)++) {
		char c = (char)*seq, back;
		if (write(to, &c, 1) != 1 || read(from, &back, 1) != 1 || back != c)
			return -1;
	}
	return 0;
}

/* Echo (n) bytes from (from) to (to); 0 if all came. */
static int
echo(int from, int to, int n)
{
	char c;
	for (int i = 0; i < n; i++)
		if (read(from, &c, 1) != 1 || write(to, &c, 1) != 1)
			return -1;
	return 0;
}

static int
forked(int rounds)
{
	int ping[2], pong[2], seq = 0, status;
	pid_t holder = hold();
	pipe(ping);
	pipe(pong);
	pid_t c = fork();
	if (c == 0) {
		close(ping[1]), close(pong[0]);
		if (echo(ping[0], pong[1], rounds))
			_exit(1);
		pid_t g = fork();
		if (g == 0)
			_exit(echo(ping[0], pong[1], 2 * rounds) ? 1 : 0);
		close(ping[0]), close(pong[1]);
		waitpid(g, &status, 0);
		_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 2);
	}
	close(ping[0]), close(pong[1]);
	int bad = play(ping[1], pong[0], rounds, &seq);
	kill(holder, SIGKILL);
	waitpid(holder, NULL, 0);
	pid_t d = fork();
	if (d == 0)
		_exit(play(ping[1], pong[0], rounds, &seq) ? 1 : 0);
	waitpid(d, &status, 0);
	bad |= !WIFEXITED(status) || WEXITSTATUS(status);
	seq += rounds;
	bad |= play(ping[1], pong[0], rounds, &seq);
	close(ping[1]), close(pong[0]);
	waitpid(c, &status, 0);
	bad |= !WIFEXITED(status) || WEXITSTATUS(status);
	printf("forked: %d round trips, %s\n", 3 * rounds, bad ? "some lost" : "all back");
	return bad;
}

int
main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "gather"))
		return gather(atoi(argv[2]), atoi(argv[3]));
	if (argc == 3 && !strcmp(argv[1], "pipeline"))
		return pipeline(atoi(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "records"))
		return records(atoi(argv[2]), atoi(argv[3]));
	if (argc == 2 && !strcmp(argv[1], "epipe"))
		return epipe();
	if (argc == 3 && !strcmp(argv[1], "late"))
		return late(atol(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "nested"))
		return nested(atoi(argv[2]));
	if (argc == 2 && !strcmp(argv[1], "stdin"))
		return readstdin();
	if (argc == 2 && !strcmp(argv[1], "lost"))
		return lost();
	if (argc == 3 && !strcmp(argv[1], "forked"))
		return forked(atoi(argv[2]));
	if (argc == 2 && !strcmp(argv[1], "clock"))
		return clock_order();
	fprintf(stderr, "usage: see the comment at the top\n");
	return 2;
}
