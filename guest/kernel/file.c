/*
 * file.c: file descriptors.  A file is one end of a ring: a pipe, or stdin,
 * stdout and stderr, whose other end is the host.  Descriptors share files
 * (dup); a ring end is closed when its last descriptor is.  A forked child
 * has its own copy of every file, so the host counts the child's ends in.
 * The one file that can be opened by name is /dev/null: there is no file
 * system.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

#define NFILE 64

enum { FT_NONE, FT_READ, FT_WRITE, FT_NULL };

struct file {
	int type;               /* FT_*; FT_NONE: slot free */
	int refs;               /* descriptors pointing here */
	int flags;              /* O_NONBLOCK, access mode */
	int tty;                /* the host end is a terminal */
	int ring;               /* index in the job's shared region */
};

static struct file files[NFILE];
static struct { struct file *f; int cloexec; } fds[NFD];

void
file_init(void)
{
	for (int fd = 0; fd < 3; fd++) {
		struct file *f = &files[fd];
		f->type = fd == 0 ? FT_READ : FT_WRITE;
		f->flags = fd == 0 ? O_RDONLY : O_WRONLY;
		f->refs = 1;
		f->tty = (BOOT->tty >> fd) & 1;
		f->ring = (int)BOOT->stdio_ring[fd];
		CTL->ends[f->ring][fd == 0 ? 0 : 1] = 1;
		fds[fd].f = f;
	}
}

static struct file *
getfile(long fd)
{
	if (fd < 0 || fd >= NFD)
		return 0;
	return fds[fd].f;
}

static void
file_put(struct file *f, int wake)
{
	if (--f->refs > 0)
		return;
	if (f->type == FT_READ)
		ring_ends(f->ring, -1, 0, !wake);
	else if (f->type == FT_WRITE)
		ring_ends(f->ring, 0, -1, !wake);
	f->type = FT_NONE;
}

static long
io_result(long r)
{
	if (r == -EPIPE)
		proc_sigpipe();
	return r;
}

long
sys_read(int fd, long buf, long n)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	if (f->type == FT_NULL)
		return 0;
	if (f->type != FT_READ)
		return -EBADF;
	if (n < 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	return ring_read(f->ring, (void *)buf, (size_t)n, f->flags & O_NONBLOCK);
}

long
sys_write(int fd, long buf, long n)
{
	struct file *f = getfile(fd);
	if (f && f->type == FT_NULL)
		return n < 0 ? -EINVAL : n;
	if (!f || f->type != FT_WRITE)
		return -EBADF;
	if (n < 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	return io_result(ring_write(f->ring, (void *)buf, (size_t)n, f->flags & O_NONBLOCK));
}

/*
 * sendfile: from a pipe (or /dev/null) to a pipe, through a buffer here
 * (there are no files to map), as much as one read gives.  No offsets:
 * pipes have none (ESPIPE).  What is read is all written: the output is
 * waited for first (a signal then interrupts before anything is taken),
 * and the input read for no more than the room it has.
 */
long
sys_sendfile(int out, int in, long offp, long count)
{
	static uint8_t buf[65536];
	struct file *fi = getfile(in), *fo = getfile(out);

	if (!fi || !fo || (fi->type != FT_READ && fi->type != FT_NULL) ||
	    (fo->type != FT_WRITE && fo->type != FT_NULL))
		return -EBADF;
	if (offp)
		return -ESPIPE;
	if (count < 0)
		return -EINVAL;
	if (fi->type == FT_NULL || count == 0)
		return 0;
	size_t want = MIN((size_t)count, sizeof buf);
	if (fo->type == FT_WRITE) {
		long e = fo->flags & O_NONBLOCK ? (ring_room(fo->ring) ? 0 : -EAGAIN) :
		    ring_wait_room(fo->ring);
		if (e)
			return e;
		/* (no room at all: no reader left, and the write says EPIPE) */
		want = MIN(want, MAX(ring_room(fo->ring), 1));
	}
	long n = ring_read(fi->ring, buf, want, fi->flags & O_NONBLOCK);
	if (n <= 0 || fo->type == FT_NULL)
		return n;
	/* Room for all of it, unless another writer took it meanwhile: then
	 * this write waits, and a signal must not cut it off (it is taken
	 * as the call returns): what was read is written. */
	long w;
	while ((w = ring_write(fo->ring, buf, (size_t)n, fo->flags & O_NONBLOCK)) == -ERESTARTSYS)
		;
	return io_result(w);
}

static long
check_iov(const struct iovec *iov, long cnt)
{
	if (cnt < 0 || cnt > 1024)
		return -EINVAL;
	if (!user_ok((uint64_t)iov, (uint64_t)cnt * sizeof(*iov)))
		return -EFAULT;
	for (long i = 0; i < cnt; i++)
		if (iov[i].len && !user_ok((uint64_t)iov[i].base, iov[i].len))
			return -EFAULT;
	return 0;
}

long
sys_writev(int fd, long iovp, long cnt)
{
	const struct iovec *iov = (const struct iovec *)iovp;
	struct file *f = getfile(fd);
	long e, total = 0;

	if (f && f->type == FT_NULL) {
		if ((e = check_iov(iov, cnt)))
			return e;
		for (long i = 0; i < cnt; i++)
			total += (long)iov[i].len;
		return total;
	}
	if (!f || f->type != FT_WRITE)
		return -EBADF;
	if ((e = check_iov(iov, cnt)))
		return e;
	/* A writev of up to PIPE_BUF bytes is one write, never interleaved
	 * with another writer's (musl's line-buffered stdio writes a line as
	 * the buffered part and the rest: two iovecs). */
	static char gather[UF_PIPE_BUF];
	uint64_t sum = 0;
	for (long i = 0; i < cnt && sum <= UF_PIPE_BUF; i++)
		sum += iov[i].len;
	if (cnt > 1 && sum <= UF_PIPE_BUF) {
		for (long i = 0, at = 0; i < cnt; at += (long)iov[i].len, i++)
			memcpy(gather + at, iov[i].base, iov[i].len);
		long r = ring_write(f->ring, gather, sum, f->flags & O_NONBLOCK);
		return r < 0 ? io_result(r) : r;
	}
	for (long i = 0; i < cnt; i++) {
		if (!iov[i].len)
			continue;
		long r = ring_write(f->ring, iov[i].base, iov[i].len, f->flags & O_NONBLOCK);
		if (r < 0)
			return total ? total : io_result(r);
		total += r;
		if ((uint64_t)r < iov[i].len)
			break;
	}
	return total;
}

long
sys_readv(int fd, long iovp, long cnt)
{
	const struct iovec *iov = (const struct iovec *)iovp;
	struct file *f = getfile(fd);
	long e, total = 0;

	if (f && f->type == FT_NULL)
		return 0;
	if (!f || f->type != FT_READ)
		return -EBADF;
	if ((e = check_iov(iov, cnt)))
		return e;
	for (long i = 0; i < cnt; i++) {
		if (!iov[i].len)
			continue;
		/* Block for the first byte only, as Linux does. */
		long r = ring_read(f->ring, iov[i].base, iov[i].len,
		    total ? 1 : (f->flags & O_NONBLOCK));
		if (r < 0)
			return total ? total : r;
		total += r;
		if ((uint64_t)r < iov[i].len)
			break;
	}
	return total;
}

static long
fd_close(long fd, int wake)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	fds[fd].f = 0;
	file_put(f, wake);
	return 0;
}

long
sys_close(int fd)
{
	return fd_close(fd, 1);
}

/*
 * Close every descriptor, so that peers see EOF or EPIPE: at exit, just
 * before the VM powers off, which the host notices without a doorbell.
 */
void
file_close_all(void)
{
	for (int fd = 0; fd < NFD; fd++)
		if (fds[fd].f)
			fd_close(fd, 0);
}

static long
fd_install(struct file *f, long lowest, int cloexec)
{
	for (long fd = lowest; fd < NFD; fd++) {
		if (!fds[fd].f) {
			fds[fd].f = f;
			fds[fd].cloexec = cloexec;
			f->refs++;
			return fd;
		}
	}
	return -EMFILE;
}

long
sys_dup(int fd)
{
	struct file *f = getfile(fd);
	return f ? fd_install(f, 0, 0) : -EBADF;
}

long
sys_dup3(int oldfd, int newfd, int flags)
{
	struct file *f = getfile(oldfd);
	if (!f)
		return -EBADF;
	if (flags & ~O_CLOEXEC)
		return -EINVAL;
	if (oldfd == newfd)
		return -EINVAL;
	if (newfd < 0 || newfd >= NFD)
		return -EBADF;
	f->refs++;              /* before closing newfd: it may share f */
	if (fds[newfd].f)
		fd_close(newfd, 1);
	fds[newfd].f = f;
	fds[newfd].cloexec = (flags & O_CLOEXEC) != 0;
	return newfd;
}

long
sys_dup2(int oldfd, int newfd)
{
	if (oldfd == newfd)
		return getfile(oldfd) ? newfd : -EBADF;
	return sys_dup3(oldfd, newfd, 0);
}

long
sys_fcntl(int fd, int cmd, long arg)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	switch (cmd) {
	case F_DUPFD:
	case F_DUPFD_CLOEXEC:
		if (arg < 0 || arg >= NFD)
			return -EINVAL;
		return fd_install(f, arg, cmd == F_DUPFD_CLOEXEC);
	case F_GETFD:
		return fds[fd].cloexec ? FD_CLOEXEC : 0;
	case F_SETFD:
		fds[fd].cloexec = (arg & FD_CLOEXEC) != 0;
		return 0;
	case F_GETFL:
		return f->flags;
	case F_SETFL:
		f->flags = (f->flags & ~O_NONBLOCK) | (arg & O_NONBLOCK);
		return 0;
	}
	return -EINVAL;
}

static void
fill_stat(struct file *f, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->mode = f->tty ? (S_IFCHR | 0620) : (S_IFIFO | 0600);
	if (f->type == FT_NULL) {
		st->mode = S_IFCHR | 0666;
		st->rdev = (1 << 8) | 3;        /* 1:3, as Linux's /dev/null */
	}
	st->nlink = 1;
	st->uid = BOOT->uid;
	st->gid = BOOT->gid;
	st->blksize = 4096;
	st->dev = 0xc;
	st->ino = (uint64_t)(f - files) + 1;
}

long
sys_fstat(int fd, long stp)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	if (!user_ok((uint64_t)stp, sizeof(struct stat)))
		return -EFAULT;
	fill_stat(f, (struct stat *)stp);
	return 0;
}

long
sys_newfstatat(int dirfd, long path, long stp, int flags)
{
	const char *p = (const char *)path;
	if (!user_str_ok(p, 4096))
		return -EFAULT;
	if (p[0] == 0 && (flags & AT_EMPTY_PATH))
		return sys_fstat(dirfd, stp);
	return -ENOENT;         /* there is no file system */
}

long
sys_ioctl(int fd, unsigned req, long arg)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	switch (req) {
	case TIOCGWINSZ:
		if (!f->tty)
			return -ENOTTY;
		if (!user_ok((uint64_t)arg, sizeof(struct winsize)))
			return -EFAULT;
		*(struct winsize *)arg = (struct winsize){ BOOT->tty_rows, BOOT->tty_cols, 0, 0 };
		return 0;
	case TCGETS:
		if (!f->tty)
			return -ENOTTY;
		if (!user_ok((uint64_t)arg, sizeof(struct termios)))
			return -EFAULT;
		/* A cooked terminal: ICRNL IXON, OPOST ONLCR, B38400 CS8 CREAD, ISIG ICANON ECHO... */
		*(struct termios *)arg = (struct termios){ 0x500, 0x5, 0xbf, 0x8a3b, 0, {0} };
		return 0;
	case FIONREAD:
		if (f->type != FT_READ)
			return -EINVAL;
		if (!user_ok((uint64_t)arg, sizeof(int)))
			return -EFAULT;
		*(int *)arg = (int)ring_avail(f->ring);
		return 0;
	}
	return -ENOTTY;
}

static struct file *
file_alloc(int type, int ring, int flags)
{
	for (int i = 0; i < NFILE; i++) {
		if (files[i].type == FT_NONE) {
			files[i] = (struct file){ type, 0, flags, 0, ring };
			return &files[i];
		}
	}
	return 0;
}

long
sys_pipe2(long fdsp, int flags)
{
	int *out = (int *)fdsp;
	if (flags & ~(O_CLOEXEC | O_NONBLOCK))
		return -EINVAL;
	if (!user_ok((uint64_t)fdsp, 2 * sizeof(int)))
		return -EFAULT;
	int ring = ring_alloc();
	if (ring < 0)
		return -ENFILE;
	struct file *r = file_alloc(FT_READ, ring, O_RDONLY | (flags & O_NONBLOCK));
	struct file *w = r ? file_alloc(FT_WRITE, ring, O_WRONLY | (flags & O_NONBLOCK)) : 0;
	long rfd = r ? fd_install(r, 0, (flags & O_CLOEXEC) != 0) : -ENFILE;
	long wfd = w && rfd >= 0 ? fd_install(w, 0, (flags & O_CLOEXEC) != 0) : -ENFILE;
	if (rfd < 0 || wfd < 0) {
		if (rfd >= 0)
			fds[rfd].f = 0;
		if (r)
			r->type = FT_NONE;
		if (w)
			w->type = FT_NONE;
		ring_ends(ring, -1, -1, 1);
		return rfd < 0 ? rfd : wfd;
	}
	out[0] = (int)rfd;
	out[1] = (int)wfd;
	return 0;
}

long
sys_pipe(long fdsp)
{
	return sys_pipe2(fdsp, 0);
}

/* At execve: close the descriptors marked close-on-exec. */
void
file_exec(void)
{
	for (int fd = 0; fd < NFD; fd++)
		if (fds[fd].f && fds[fd].cloexec)
			fd_close(fd, 1);
}

long
sys_lseek(int fd, long off, long whence)
{
	(void)off; (void)whence;
	return getfile(fd) ? -ESPIPE : -EBADF;
}

long
sys_openat(int dirfd, long path, int flags, int mode)
{
	static int said;
	const char *p = (const char *)path;
	(void)dirfd; (void)mode;

	if (!user_str_ok(p, 4096))
		return -EFAULT;
	if (strcmp(p, "/dev/null") == 0) {
		struct file *f = file_alloc(FT_NULL, -1, flags & (O_ACCMODE | O_NONBLOCK));
		if (!f)
			return -ENFILE;
		long fd = fd_install(f, 0, (flags & O_CLOEXEC) != 0);
		if (fd < 0)
			f->type = FT_NONE;
		return fd;
	}
	if (!said++)
		kprintf("open(%s): there is no file system here; ENOENT\n", p);
	return -ENOENT;
}

long
sys_open(long path, int flags, int mode)
{
	return sys_openat(AT_FDCWD, path, flags, mode);
}

/* The events (POLL*, defs.h) that are true of descriptor (fd) now. */
short
poll_events(int fd, short want)
{
	struct file *f = getfile(fd);
	volatile struct uf_ring *r;
	short ev = 0;

	if (!f)
		return POLLNVAL;
	switch (f->type) {
	case FT_NULL:
		return want & (POLLIN | POLLOUT);
	case FT_READ:
		r = shm_ring(f->ring);
		if (r->head != r->tail)
			ev |= POLLIN;
		if (r->writers == 0)
			ev |= POLLHUP;
		return ev & (want | POLLHUP);
	case FT_WRITE:
		r = shm_ring(f->ring);
		if (r->readers == 0)
			return POLLERR;
		if (r->size - (r->head - r->tail) >= UF_PIPE_BUF)
			ev |= POLLOUT;
		return ev & want;
	}
	return POLLNVAL;
}

