#define _GNU_SOURCE
/*
 * Exercises the start-up system calls and prints what must match a native
 * run: ids, uname fields, clocks that move, sleeping, random bytes, limits,
 * /proc/self/exe, stdio stat and tty answers, brk and mmap behaviour.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	struct utsname u;
	uname(&u);
	printf("uname %s %s\n", u.sysname, u.machine);
	printf("pid>0 %d uid match %d\n", getpid() > 0, getuid() == geteuid());

	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	struct timespec d = { 0, 20 * 1000 * 1000 };
	nanosleep(&d, NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
	printf("slept >= 20 ms: %d, < 2000 ms: %d\n", ms >= 20, ms < 2000);
	time_t now = time(NULL);
	struct timeval tv;
	gettimeofday(&tv, NULL);
	printf("realtime after 2020: %d, agree: %d\n", now > 1577836800, labs(tv.tv_sec - now) <= 1);

	unsigned char r1[32], r2[32];
	getrandom(r1, sizeof r1, 0);
	getrandom(r2, sizeof r2, 0);
	printf("random differs: %d\n", memcmp(r1, r2, sizeof r1) != 0);

	struct rlimit rl;
	printf("getrlimit stack: %d\n", getrlimit(RLIMIT_STACK, &rl) == 0);

	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	exe[n > 0 ? n : 0] = 0;
	printf("exe is absolute: %d, ends like argv[0]: %d\n", exe[0] == '/',
	    n > 0 && strstr(exe, strrchr(argv[0], '/') ? strrchr(argv[0], '/') : argv[0]) != NULL);

	struct stat st;
	fstat(1, &st);
	printf("stdout is a fifo: %d\n", S_ISFIFO(st.st_mode));
	struct winsize ws;
	int rc = ioctl(1, TIOCGWINSZ, &ws);
	printf("TIOCGWINSZ on a pipe: %d %s\n", rc, errno == ENOTTY ? "ENOTTY" : strerror(errno));
	char *m = mmap(NULL, 1 << 22, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int zero = 1;
	for (int i = 0; i < 1 << 22; i += 4096)
		zero &= m[i] == 0;
	memset(m, 7, 1 << 22);
	munmap(m, 1 << 22);
	char *m2 = mmap(NULL, 1 << 22, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 1 << 22; i += 4096)
		zero &= m2[i] == 0;
	printf("mmap zeroed, also when reused: %d\n", zero);
	char *g = mremap(m2, 1 << 22, 1 << 23, MREMAP_MAYMOVE);
	printf("mremap keeps data: %d\n", g != MAP_FAILED && g[0] == 0 && g[(1 << 23) - 1] == 0);
	void *huge = mmap(NULL, (size_t)64 << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	printf("64 GiB mmap fails with ENOMEM: %d\n", huge == MAP_FAILED && errno == ENOMEM);
	volatile long bad = 8;
	ssize_t w = write(1, (void *)bad, 10);
	printf("write to a bad pointer: %zd %s\n", w, errno == EFAULT ? "EFAULT" : strerror(errno));
	printf("fcntl F_GETFL of stdout is write-only: %d\n", (fcntl(1, F_GETFL) & O_ACCMODE) == O_WRONLY);
	printf("argc %d\n", argc);
	return 0;
}
