/*
 * files: the file system calls of a job's tree, each printed with its
 * result (or the name of its errno), so that a run under unifork can be
 * compared line by line with the same program run natively in a chroot
 * of the same tree.  Run in an empty, writable directory at "/work".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *
ename(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case EEXIST: return "EEXIST";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case ENOTEMPTY: return "ENOTEMPTY";
	case ELOOP: return "ELOOP";
	case EBADF: return "EBADF";
	case EFAULT: return "EFAULT";
	case EINVAL: return "EINVAL";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	case EACCES: return "EACCES";
	case EXDEV: return "EXDEV";
	case EWOULDBLOCK: return "EWOULDBLOCK";
	case ERANGE: return "ERANGE";
	case ESPIPE: return "ESPIPE";
	case EROFS: return "EROFS";
	case EMFILE: return "EMFILE";
	case EDQUOT: return "EDQUOT";
	case ENODEV: return "ENODEV";
	}
	return "E?";
}

#define SHOW(what, call) do { long r_ = (long)(call); \
	if (r_ < 0) printf("%s: -1 %s\n", what, ename(errno)); \
	else printf("%s: %ld\n", what, r_); } while (0)

static void
show_file(const char *path)
{
	char buf[256];
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
	if (n < 0) {
		printf("%s: unreadable %s\n", path, ename(errno));
		return;
	}
	buf[n] = 0;
	printf("%s: [%s]\n", path, buf);
	close(fd);
}

static int
cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
list(const char *dir)
{
	char *names[64];
	int n = 0;
	DIR *d = opendir(dir);
	if (!d) {
		printf("ls %s: %s\n", dir, ename(errno));
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) && n < 64)
		names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, n, sizeof names[0], cmp);
	printf("ls %s:", dir);
	for (int i = 0; i < n; i++)
		printf(" %s", names[i]);
	printf("\n");
}

static void
basics(void)
{
	struct stat st;
	char buf[64];

	SHOW("creat a", open("a", O_CREAT | O_WRONLY | O_TRUNC, 0644));
	SHOW("write a", write(3, "hello, world\n", 13));
	SHOW("close a", close(3));
	SHOW("excl a", open("a", O_CREAT | O_EXCL | O_WRONLY, 0644));
	SHOW("open missing", open("missing", O_RDONLY));
	SHOW("open a/x", open("a/x", O_RDONLY));
	SHOW("open dir for writing", open(".", O_WRONLY));
	SHOW("O_DIRECTORY on a file", open("a", O_RDONLY | O_DIRECTORY));
	int fd = open("a", O_RDWR);
	SHOW("pread", pread(fd, buf, 5, 7));
	printf("  [%.5s]\n", buf);
	SHOW("lseek end", lseek(fd, 0, SEEK_END));
	SHOW("lseek cur", lseek(fd, -6, SEEK_CUR));
	SHOW("read", read(fd, buf, 64));
	SHOW("pwrite", pwrite(fd, "HELLO", 5, 0));
	struct iovec iov[2] = { { "one ", 4 }, { "two\n", 4 } };
	lseek(fd, 0, SEEK_END);
	SHOW("writev", writev(fd, iov, 2));
	char x[3], y[4];
	struct iovec rv[2] = { { x, 3 }, { y, 4 } };
	SHOW("preadv", preadv(fd, rv, 2, 0));
	printf("  [%.3s|%.4s]\n", x, y);
	SHOW("fstat", fstat(fd, &st));
	printf("  size %ld reg %d nlink %ld mode %o\n", (long)st.st_size, S_ISREG(st.st_mode),
	    (long)st.st_nlink, st.st_mode & 0777);
	SHOW("ftruncate", ftruncate(fd, 5));
	SHOW("fsync", fsync(fd));
	SHOW("F_GETFL", fcntl(fd, F_GETFL) & (O_ACCMODE | O_APPEND | O_NONBLOCK));
	SHOW("F_SETFL", fcntl(fd, F_SETFL, O_APPEND));
	SHOW("F_GETFL", fcntl(fd, F_GETFL) & (O_ACCMODE | O_APPEND | O_NONBLOCK));
	SHOW("write appended", write(fd, "!", 1));
	close(fd);
	show_file("a");
	int c = open("c", O_CREAT | O_RDWR | O_TRUNC, 0644), in = open("a", O_RDONLY);
	loff_t from = 3;
	SHOW("copy_file_range", syscall(SYS_copy_file_range, in, &from, c, NULL, 5L, 0));
	SHOW("  and the offset", (long)from);
	SHOW("sendfile", sendfile(c, in, NULL, 4));
	close(c);
	close(in);
	show_file("c");
	SHOW("read closed", read(fd, buf, 1));
	SHOW("read bad pointer", read(open("a", O_RDONLY), (void *)8, 4));
	SHOW("open bad pointer", open((char *)8, O_RDONLY));
	char longname[300];
	memset(longname, 'n', sizeof longname - 1);
	longname[sizeof longname - 1] = 0;
	SHOW("open long name", open(longname, O_RDONLY));
}

static void
tree(void)
{
	struct stat st;
	char buf[256];

	SHOW("mkdir d", mkdir("d", 0755));
	SHOW("mkdir d again", mkdir("d", 0755));
	SHOW("mkdir d/e", mkdir("d/e", 0700));
	SHOW("link", link("a", "d/a2"));
	SHOW("stat nlink", stat("a", &st) == 0 ? (long)st.st_nlink : -1);
	SHOW("symlink", symlink("../a", "d/sa"));
	SHOW("readlink", readlink("d/sa", buf, sizeof buf));
	SHOW("lstat link", lstat("d/sa", &st) == 0 ? S_ISLNK(st.st_mode) : -1);
	SHOW("stat through link", stat("d/sa", &st) == 0 ? (long)st.st_size : -1);
	SHOW("symlink loop", symlink("loop", "loop"));
	SHOW("open loop", open("loop", O_RDONLY));
	SHOW("O_NOFOLLOW", open("d/sa", O_RDONLY | O_NOFOLLOW));
	SHOW("rename", rename("d/a2", "d/e/moved"));
	SHOW("rmdir nonempty", rmdir("d"));
	SHOW("unlink dir", unlink("d/e"));
	SHOW("access x", access("a", X_OK));
	SHOW("chmod", chmod("a", 0755));
	SHOW("access x after", access("a", X_OK));
	SHOW("access missing", access("nope", F_OK));
	list(".");
	list("d");
	SHOW("chdir d/e", chdir("d/e"));
	SHOW("getcwd", getcwd(buf, sizeof buf) ? (long)strlen(buf) : -1);
	printf("  [%s]\n", buf);
	SHOW("getcwd small", getcwd(buf, 3) ? 0 : -1);
	show_file("moved");
	show_file("../../a");
	SHOW("chdir up", chdir("/work"));
	int dfd = open("d", O_RDONLY | O_DIRECTORY);
	SHOW("openat", openat(dfd, "e/moved", O_RDONLY));
	SHOW("fstatat", fstatat(dfd, "sa", &st, AT_SYMLINK_NOFOLLOW) == 0 ? S_ISLNK(st.st_mode) : -1);
	SHOW("mkdirat", mkdirat(dfd, "f", 0755));
	SHOW("unlinkat dir", unlinkat(dfd, "f", AT_REMOVEDIR));
	SHOW("fchdir", fchdir(dfd));
	SHOW("getcwd", getcwd(buf, sizeof buf) ? (long)strlen(buf) : -1);
	printf("  [%s]\n", buf);
	chdir("/work");
	SHOW("truncate", truncate("a", 2));
	show_file("a");
	struct timespec ts[2] = { { 1000000, 0 }, { 2000000, 0 } };
	SHOW("utimensat", utimensat(AT_FDCWD, "a", ts, 0));
	SHOW("mtime", stat("a", &st) == 0 ? (long)st.st_mtime : -1);
	SHOW("umask", umask(077));
	SHOW("creat under umask", open("u", O_CREAT | O_WRONLY, 0666));
	SHOW("mode", stat("u", &st) == 0 ? (long)(st.st_mode & 0777) : -1);
	struct statfs sf;
	SHOW("statfs", statfs(".", &sf));
	SHOW("renameat2 noreplace", syscall(SYS_renameat2, AT_FDCWD, "u", AT_FDCWD, "a", 1 /* RENAME_NOREPLACE */));
	SHOW("unlink", unlink("u"));
	SHOW("rmdir missing", rmdir("nope"));
}

/* An open file description is shared by dup and by fork. */
static void
sharing(void)
{
	char c;
	int fd = open("shared", O_CREAT | O_RDWR | O_TRUNC, 0644);
	write(fd, "abcdefgh", 8);
	lseek(fd, 0, SEEK_SET);
	int d = dup(fd);
	read(d, &c, 1);
	SHOW("offset after dup's read", lseek(fd, 0, SEEK_CUR));
	pid_t pid = fork();
	if (pid == 0) {
		read(fd, &c, 1);
		read(fd, &c, 1);
		_exit(c);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("child read %c\n", WEXITSTATUS(status));
	SHOW("offset after the child's reads", lseek(fd, 0, SEEK_CUR));
	read(fd, &c, 1);
	printf("parent reads %c\n", c);
	close(fd);
	close(d);

	int ap = open("log", O_CREAT | O_WRONLY | O_APPEND | O_TRUNC, 0644);
	for (int k = 0; k < 3; k++) {
		if (fork() == 0) {
			for (int i = 0; i < 50; i++)
				write(ap, "child line\n", 11);
			_exit(0);
		}
	}
	for (int i = 0; i < 50; i++)
		write(ap, "parent line\n", 12);
	while (wait(NULL) > 0)
		;
	struct stat st;
	fstat(ap, &st);
	printf("log size %ld (of %d)\n", (long)st.st_size, 150 * 11 + 50 * 12);

	int l1 = open("lock", O_CREAT | O_RDWR, 0644), l2 = open("lock", O_RDWR);
	SHOW("flock ex", flock(l1, LOCK_EX | LOCK_NB));
	SHOW("flock other", flock(l2, LOCK_EX | LOCK_NB));
	pid = fork();
	if (pid == 0) {
		int l3 = open("lock", O_RDWR);
		_exit(flock(l3, LOCK_EX | LOCK_NB) == 0 ? 0 : errno == EWOULDBLOCK ? 1 : 2);
	}
	waitpid(pid, &status, 0);
	printf("the child's flock: %d (1: would block)\n", WEXITSTATUS(status));
	SHOW("unlock", flock(l1, LOCK_UN));
	SHOW("flock other now", flock(l2, LOCK_EX | LOCK_NB));
}

/* Nothing outside the tree can be reached. */
static void
escapes(void)
{
	SHOW("dotdot", open("../../../../etc/passwd", O_RDONLY));
	SHOW("absolute", open("/etc/passwd", O_RDONLY));
	SHOW("symlink out", symlink("/etc/passwd", "out1"));
	SHOW("open via it", open("out1", O_RDONLY));
	SHOW("symlink up", symlink("../../../../../../etc/passwd", "out2"));
	SHOW("open via it", open("out2", O_RDONLY));
	SHOW("proc root", open("/proc/self/root/etc/passwd", O_RDONLY));
	SHOW("proc cwd", open("/proc/self/cwd/../../../etc/passwd", O_RDONLY));
	SHOW("symlink to create", symlink("/../../../tmp/unifork-escape-probe", "out3"));
	SHOW("create via it", open("out3", O_CREAT | O_WRONLY, 0644));
	SHOW("and find it inside", access("/tmp/unifork-escape-probe", F_OK));
	unlink("/tmp/unifork-escape-probe");
	SHOW("dev null", open("/dev/null", O_WRONLY));
	show_file("/dev/null");
	char z[4] = "xxx";
	int fd = open("/dev/zero", O_RDONLY);
	SHOW("read zero", read(fd, z, 3));
	printf("  zeros %d\n", z[0] == 0 && z[1] == 0 && z[2] == 0);
	list("/");
}

/* mmap of a file, record locks between processes, poll and select on
 * files, statx, getrusage. */
static void
more(void)
{
	int fd = open("m", O_CREAT | O_RDWR | O_TRUNC, 0644);
	write(fd, "mapped contents\n", 16);
	char *p = mmap(NULL, 16, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	SHOW("mmap private", p == MAP_FAILED ? -1 : 0);
	printf("  [%.15s]\n", p);
	p[0] = 'M';                      /* a private copy: the file keeps its m */
	show_file("m");
	char *q = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	SHOW("mmap shared read-only", q == MAP_FAILED ? -1 : 0);
	printf("  [%.6s] then zeroes: %d\n", q, q[100] == 0);
	SHOW("mmap of a pipe", (long)mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 0, 0) == -1 ? -1 : 0);

	struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4 };
	SHOW("F_SETLK", fcntl(fd, F_SETLK, &lk));
	pid_t pid = fork();
	if (pid == 0) {
		int other = open("m", O_RDWR);
		struct flock l2 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 2, .l_len = 4 };
		int busy = fcntl(other, F_SETLK, &l2) == -1 && (errno == EAGAIN || errno == EACCES);
		struct flock probe = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1 };
		fcntl(other, F_GETLK, &probe);
		l2.l_start = 8;
		int free_part = fcntl(other, F_SETLK, &l2) == 0;
		_exit(busy | (probe.l_type == F_WRLCK) << 1 | free_part << 2);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("the child: blocked %d, sees the lock %d, locks another range %d\n",
	    WEXITSTATUS(status) & 1, (WEXITSTATUS(status) >> 1) & 1, (WEXITSTATUS(status) >> 2) & 1);
	/* POSIX: locks are the process's, not inherited, and any close of the
	 * file lets go of them. */
	pid = fork();
	if (pid == 0) {
		struct flock l3 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4 };
		_exit(fcntl(fd, F_SETLK, &l3) == -1 ? 1 : 0);   /* the parent's lock, through fd */
	}
	waitpid(pid, &status, 0);
	printf("a child through the shared descriptor: blocked %d\n", WEXITSTATUS(status));
	struct flock again = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4 };
	SHOW("relock own range", fcntl(fd, F_SETLK, &again));
	close(open("m", O_RDONLY));         /* another descriptor of the file, closed */
	pid = fork();
	if (pid == 0) {
		int other = open("m", O_RDWR);
		struct flock l4 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4 };
		_exit(fcntl(other, F_SETLK, &l4) == -1 ? 1 : 0);
	}
	waitpid(pid, &status, 0);
	printf("after a close of the file: a child blocked %d\n", WEXITSTATUS(status));

	struct pollfd pf = { fd, POLLIN | POLLOUT, 0 };
	SHOW("poll", poll(&pf, 1, 0));
	printf("  revents %#x\n", pf.revents);
	fd_set rs;
	FD_ZERO(&rs);
	FD_SET(fd, &rs);
	struct timeval tv = { 0, 0 };
	SHOW("select", select(fd + 1, &rs, NULL, NULL, &tv));
	unsigned char sx[256];          /* struct statx: stx_mode at 28, stx_size at 40 */
	SHOW("statx", syscall(SYS_statx, AT_FDCWD, "m", 0, 0x7ff, sx));
	printf("  size %llu mode %o\n", *(unsigned long long *)(sx + 40),
	    *(unsigned short *)(sx + 28) & 07777);
	struct rusage ru;
	SHOW("getrusage", getrusage(RUSAGE_SELF, &ru));
}

/* /proc/self/fd/N: another open of the file (its own offset), and its
 * name; a pipe's is shared.  (Not compared with a chroot: it has no /proc.) */
static void
fdnames(void)
{
	char buf[64], path[32], c = 0;
	int fd = open("n", O_CREAT | O_RDWR | O_TRUNC, 0644);
	write(fd, "abcdef", 6);
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int again = open(path, O_RDONLY);
	read(again, &c, 1);
	printf("reopened: %s, reads %c from its own offset; the first is at %ld\n",
	    again > fd ? "a new descriptor" : "?", c, (long)lseek(fd, 0, SEEK_CUR));
	ssize_t n = readlink(path, buf, sizeof buf);
	printf("readlink: %.*s\n", (int)n, buf);
	int p[2];
	pipe(p);
	snprintf(path, sizeof path, "/dev/fd/%d", p[1]);
	int w = open(path, O_WRONLY);
	write(w, "x", 1);
	read(p[0], &c, 1);
	printf("a pipe reopened carries %c\n", c);
	n = readlink("/proc/self/fd/0", buf, sizeof buf);
	printf("stdin is a %.4s\n", buf);
}

/* The job's limits (set small by the test): open files, bytes written. */
static void
limits(void)
{
	int n = 0, fd = -1;
	while (n < 100000 && (fd = open("many", O_CREAT | O_RDONLY, 0644)) >= 0)
		n++;
	printf("opened %d, then %s\n", n, ename(errno));
	for (int i = 3; i < 3 + n; i++)
		close(i);
	fd = open("big", O_CREAT | O_WRONLY | O_TRUNC, 0644);
	long total = 0, r;
	char buf[300];
	memset(buf, 'q', sizeof buf);
	while ((r = write(fd, buf, sizeof buf)) > 0)
		total += r;
	printf("wrote %ld, then %s\n", total, ename(errno));
	close(fd);
	struct stat st;
	stat("big", &st);
	printf("the file holds %ld\n", (long)st.st_size);
	fd = open("big", O_RDWR);
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	printf("a writable shared mapping: %s\n", p == MAP_FAILED ? ename(errno) : "mapped");
}

int
main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	if (chdir("/work") != 0) {
		perror("chdir /work");
		return 1;
	}
	const char *part = argc > 1 ? argv[1] : "all";
	if (!strcmp(part, "all") || !strcmp(part, "basics"))
		basics();
	if (!strcmp(part, "all") || !strcmp(part, "tree"))
		tree();
	if (!strcmp(part, "all") || !strcmp(part, "sharing"))
		sharing();
	if (!strcmp(part, "all") || !strcmp(part, "escapes"))
		escapes();
	if (!strcmp(part, "all") || !strcmp(part, "more"))
		more();
	if (!strcmp(part, "limits"))
		limits();
	if (!strcmp(part, "fdnames"))
		fdnames();
	return 0;
}
