/*
 * filebench: file system calls timed from inside the program, on paths
 * relative to its working directory (the job's tree under unifork, a
 * directory of the host natively).  Prints one "name ms" line a test.
 *
 *   filebench MIB STATS SMALL [fork]
 *
 * With "fork", a child does it all and the parent waits: in a cluster whose
 * home host has no slot for it, the child runs on another host.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double
now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

int
main(int argc, char **argv)
{
	int mib = argc > 1 ? atoi(argv[1]) : 256;
	int stats = argc > 2 ? atoi(argv[2]) : 2000;
	int small = argc > 3 ? atoi(argv[3]) : 1000;
	static char buf[1 << 20];
	struct stat st;
	double t;

	if (argc > 4 && !strcmp(argv[4], "fork")) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid > 0) {
			int status;
			waitpid(pid, &status, 0);
			return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
		}
	}
	memset(buf, 'x', sizeof buf);
	t = now_ms();
	int fd = open("big", O_CREAT | O_WRONLY | O_TRUNC, 0644);
	if (fd < 0)
		die("open big");
	for (int i = 0; i < mib; i++)
		if (write(fd, buf, sizeof buf) != sizeof buf)
			die("write");
	close(fd);
	printf("write %.3f\n", now_ms() - t);

	t = now_ms();
	fd = open("big", O_RDONLY);
	long total = 0, n;
	while ((n = read(fd, buf, sizeof buf)) > 0)
		total += n;
	close(fd);
	if (total != (long)mib << 20)
		die("read short");
	printf("read %.3f\n", now_ms() - t);

	t = now_ms();
	for (int i = 0; i < stats; i++)
		if (stat("big", &st) != 0)
			die("stat");
	printf("stat %.3f\n", now_ms() - t);

	t = now_ms();
	for (int i = 0; i < stats; i++) {
		fd = open("big", O_RDONLY);
		if (fd < 0)
			die("open");
		close(fd);
	}
	printf("open+close %.3f\n", now_ms() - t);

	if (mkdir("small", 0755) != 0)
		die("mkdir");
	t = now_ms();
	for (int i = 0; i < small; i++) {
		char name[64];
		snprintf(name, sizeof name, "small/f%d", i);
		fd = open(name, O_CREAT | O_WRONLY | O_TRUNC, 0644);
		if (fd < 0 || write(fd, "a small file\n", 13) != 13)
			die("small");
		close(fd);
	}
	printf("small %.3f\n", now_ms() - t);
	return 0;
}
