/*
 * spreadfiles: a parent's files used by children wherever they run.  It
 * writes an input file, opens it once (one offset for all) and a log in
 * append mode, then forks N children that hold their VM for MS ms (so
 * that, in a cluster, they spread over the hosts).  Each child reads its
 * line through the shared descriptor, appends to the log, makes a file
 * of its own in out/, and re-runs itself with execve, which adds a line
 * to that file.  The parent waits, then prints what the files hold,
 * sorted, and where the shared offset is.   Usage: spreadfiles N MS
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int
cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
child(int i, int in, int log, long ms)
{
	char line[8] = { 0 }, name[32], msg[64];
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&t, NULL);
	if (read(in, line, 7) != 7)
		_exit(1);
	int n = snprintf(msg, sizeof msg, "a child read %s", line);
	write(log, msg, n);
	snprintf(name, sizeof name, "out/child.%d", i);
	int fd = open(name, O_CREAT | O_WRONLY | O_TRUNC, 0640);
	n = snprintf(msg, sizeof msg, "made by child %d\n", i);
	write(fd, msg, n);
	close(fd);
	char arg[8];
	snprintf(arg, sizeof arg, "%d", i);
	char *argv[] = { "spreadfiles", "exec", arg, NULL };
	execve("/proc/self/exe", argv, NULL);
	_exit(2);
}

/* After the exec: the file gets one more line; the status says who. */
static int
after_exec(int i)
{
	char name[32], msg[64];
	snprintf(name, sizeof name, "out/child.%d", i);
	int fd = open(name, O_WRONLY | O_APPEND);
	int n = snprintf(msg, sizeof msg, "child %d ran execve\n", i);
	if (fd < 0 || write(fd, msg, n) != n)
		return 3;
	return 10 + i;
}

static void
show(const char *path)
{
	static char buf[4096];
	int fd = open(path, O_RDONLY);
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	char *lines[64];
	int k = 0;
	for (char *s = strtok(buf, "\n"); s && k < 64; s = strtok(NULL, "\n"))
		lines[k++] = s;
	qsort(lines, k, sizeof lines[0], cmp);
	printf("%s:\n", path);
	for (int i = 0; i < k; i++)
		printf("  %s\n", lines[i]);
}

int
main(int argc, char **argv)
{
	if (argc > 2 && !strcmp(argv[1], "exec"))
		return after_exec(atoi(argv[2]));
	int n = argc > 1 ? atoi(argv[1]) : 4;
	long ms = argc > 2 ? atol(argv[2]) : 500;
	int in = open("input", O_CREAT | O_RDWR | O_TRUNC, 0644);
	for (int i = 0; i < n; i++)
		dprintf(in, "line %d\n", i);
	lseek(in, 0, SEEK_SET);
	int log = open("log", O_CREAT | O_WRONLY | O_APPEND | O_TRUNC, 0644);
	mkdir("out", 0755);
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0)
			child(i, in, log, ms);
	}
	int status, good = 0;
	for (int i = 0; i < n; i++)
		if (wait(&status) > 0 && WIFEXITED(status) && WEXITSTATUS(status) >= 10)
			good++;
	printf("%d children ran execve and exited well\n", good);
	printf("the shared offset is at %ld\n", (long)lseek(in, 0, SEEK_CUR));
	show("log");
	for (int i = 0; i < n; i++) {
		char name[32];
		snprintf(name, sizeof name, "out/child.%d", i);
		show(name);
	}
	return 0;
}
