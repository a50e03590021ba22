/*
 * file.c: file descriptors.  A file is one end of a ring (a pipe, or
 * stdin, stdout and stderr, whose other end is the host), a device served
 * here (/dev/null, /dev/zero, /dev/urandom), or a file of the job's tree,
 * which the host serves (fs.c): its open file description is the host's.
 * Descriptors share files (dup); a file is closed when its last
 * descriptor is.  A forked child has its own copy of every file, so the
 * host counts the child's ring ends and handles in.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

#define NFILE 64

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

struct file *
getfile(long fd)
{
	if (fd < 0 || fd >= NFD)
		return 0;
	return fds[(int)fd].f;
}

static long
io_result(long r)
{
	if (r == -EPIPE)
		proc_sigpipe();
	return r;
}

/* A descriptor of (f) is gone; (wake) unless the process is ending (then
 * the host drops its handles itself, and nobody is woken). */
static void
file_put(struct file *f, int wake)
{
	if (--f->refs > 0)
		return;
	if (f->type == FT_READ)
		ring_ends(f->ring, -1, 0, !wake);
	else if (f->type == FT_WRITE)
		ring_ends(f->ring, 0, -1, !wake);
	else if (f->type == FT_HOST && wake)
		fs_close(f->handle);
	f->type = FT_NONE;
}

long
sys_read(int fd, long buf, long n)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	if (f->type == FT_NULL)
		return 0;
	if (n < 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	return file_read(f, (void *)buf, (size_t)n);
}

/* Read up to (n) bytes of (f) into (buf), which was checked. */
long
file_read(struct file *f, void *buf, size_t n)
{
	switch (f->type) {
	case FT_READ:
		return ring_read(f->ring, buf, n, f->flags & O_NONBLOCK);
	case FT_HOST:
		return fs_call(__NR_read, f->handle, (long)buf, (long)n, 0, 0);
	case FT_NULL:
		return 0;
	case FT_ZERO:
		memset(buf, 0, n);
		return (long)n;
	case FT_RANDOM:
		return sys_getrandom((long)buf, (long)n, 0);
	}
	return -EBADF;
}

/* Write (n) bytes of (buf), which was checked, to (f). */
long
file_write(struct file *f, const void *buf, size_t n)
{
	switch (f->type) {
	case FT_WRITE:
		return io_result(ring_write(f->ring, buf, n, f->flags & O_NONBLOCK));
	case FT_HOST:
		return fs_call(__NR_write, f->handle, (long)buf, (long)n, 0, 0);
	case FT_NULL:
	case FT_ZERO:
	case FT_RANDOM:
		return (long)n;
	}
	return -EBADF;
}

long
sys_write(int fd, long buf, long n)
{
	struct file *f = getfile(fd);
	if (f && f->type == FT_NULL)
		return n < 0 ? -EINVAL : n;
	if (!f || f->type == FT_READ || (f->flags & O_ACCMODE) == O_RDONLY)
		return -EBADF;
	if (n < 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	return file_write(f, (const void *)buf, (size_t)n);
}

/*
 * sendfile: from any file to any other, through a buffer here, as much as
 * one read gives.  From a pipe to a pipe, what is read is all written:
 * the output is waited for first (a signal then interrupts before
 * anything is taken), and the input read for no more than the room it
 * has.  With (offp), the input is read at *offp, which moves on instead
 * of the file's offset (a pipe has none: ESPIPE).
 */
long
sys_sendfile(int out, int in, long offp, long count)
{
	static uint8_t buf[65536];
	struct file *fi = getfile(in), *fo = getfile(out);
	int64_t off = 0;

	if (!fi || !fo || fi->type == FT_WRITE || (fi->flags & O_ACCMODE) == O_WRONLY ||
	    fo->type == FT_READ || (fo->flags & O_ACCMODE) == O_RDONLY)
		return -EBADF;
	if (offp) {
		if (fi->type != FT_HOST)
			return -ESPIPE;
		if (!user_ok((uint64_t)offp, 8))
			return -EFAULT;
		off = *(int64_t *)offp;
		if (off < 0)
			return -EINVAL;
	}
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
	long n = offp ? fs_call(__NR_pread64, fi->handle, (long)buf, (long)want, off, 0) :
	    file_read(fi, buf, want);
	if (n <= 0)
		return n;
	if (offp)
		*(int64_t *)offp = off + n;
	/* Room for all of it, unless another writer took it meanwhile: then
	 * this write waits, and a signal must not cut it off (it is taken
	 * as the call returns): what was read is written. */
	long w;
	while ((w = file_write(fo, buf, (size_t)n)) == -ERESTARTSYS)
		;
	return w;
}

/* The iovec array of readv and the like, and its buffers: 0 if good. */
long
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

	if (!f || f->type == FT_READ || (f->flags & O_ACCMODE) == O_RDONLY)
		return -EBADF;
	if ((e = check_iov(iov, cnt)))
		return e;
	if (f->type == FT_HOST)
		return fs_call(__NR_writev, f->handle, iovp, cnt, 0, 0);
	if (f->type != FT_WRITE) {
		for (long i = 0; i < cnt; i++)
			total += (long)iov[i].len;
		return total;
	}
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

	if (!f || f->type == FT_WRITE || (f->flags & O_ACCMODE) == O_WRONLY)
		return -EBADF;
	if ((e = check_iov(iov, cnt)))
		return e;
	if (f->type == FT_HOST)
		return fs_call(__NR_readv, f->handle, iovp, cnt, 0, 0);
	for (long i = 0; i < cnt; i++) {
		if (!iov[i].len)
			continue;
		/* Block for the first byte only, as Linux does. */
		long r = f->type != FT_READ ? file_read(f, iov[i].base, iov[i].len) :
		    ring_read(f->ring, iov[i].base, iov[i].len, total ? 1 : (f->flags & O_NONBLOCK));
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
		if (f->type == FT_HOST)
			return fs_call(__NR_fcntl, f->handle, cmd, 0, 0, 0);
		return f->flags;
	case F_SETFL:
		if (f->type == FT_HOST)
			return fs_call(__NR_fcntl, f->handle, cmd, arg, 0, 0);
		f->flags = (f->flags & ~O_NONBLOCK) | (arg & O_NONBLOCK);
		return 0;
	}
	if (f->type == FT_HOST)
		return fs_fcntl(f->handle, cmd, arg);
	return -EINVAL;
}

static void
fill_stat(struct file *f, struct stat *st)
{
	static const uint64_t rdev[] = { [FT_NULL] = 0x103, [FT_ZERO] = 0x105, [FT_RANDOM] = 0x109 };
	memset(st, 0, sizeof(*st));
	st->mode = f->tty ? (S_IFCHR | 0620) : (S_IFIFO | 0600);
	if (f->type == FT_NULL || f->type == FT_ZERO || f->type == FT_RANDOM) {
		st->mode = S_IFCHR | 0666;
		st->rdev = rdev[f->type];       /* 1:3, 1:5, 1:9, as Linux's */
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
	if (f->type == FT_HOST)
		return fs_call(__NR_fstat, f->handle, stp, 0, 0, 0);
	fill_stat(f, (struct stat *)stp);
	return 0;
}

long
sys_ioctl(int fd, unsigned req, long arg)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	if (f->type == FT_HOST)
		return fs_call(__NR_ioctl, f->handle, req, arg, 0, 0);
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
			files[i] = (struct file){ type, 0, flags, 0, ring, -1 };
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
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	if (f->type == FT_HOST)
		return fs_call(__NR_lseek, f->handle, off, whence, 0, 0);
	return f->type == FT_READ || f->type == FT_WRITE ? -ESPIPE : 0;
}

/*
 * A descriptor for what an open gave: a node of kind (node, UF_NODE_*)
 * and, for one the host serves, its handle; the lowest free descriptor,
 * or -EMFILE (the handle is closed then).
 */
long
fd_open(int node, long handle, int flags, int cloexec)
{
	static const int types[] = { [UF_NODE_HOST] = FT_HOST, [UF_NODE_NULL] = FT_NULL,
	    [UF_NODE_ZERO] = FT_ZERO, [UF_NODE_RANDOM] = FT_RANDOM };
	int type = node > 0 && node < UF_NODE_MAX ? types[node] : FT_NONE;
	struct file *f = type ? file_alloc(type, -1, flags & (O_ACCMODE | O_NONBLOCK)) : 0;
	long fd = f ? fd_install(f, 0, cloexec) : -ENFILE;
	if (fd < 0) {
		if (f)
			f->type = FT_NONE;
		if (node == UF_NODE_HOST)
			fs_close(handle);
		return type ? fd : -EIO;
	}
	f->handle = handle;
	return fd;
}

/* Another descriptor of the file of (fd) (open_own_fd in fs.c). */
long
fd_reopen(int fd, int cloexec)
{
	struct file *f = getfile(fd);
	return f ? fd_install(f, 0, cloexec) : -ENOENT;
}

/* readlink of /proc/self/fd/N: the file's path for one the host serves,
 * else what Linux says of a pipe or a device. */
long
fd_link(int fd, long buf, long n)
{
	static const char *const dev[] = { [FT_NULL] = "/dev/null", [FT_ZERO] = "/dev/zero",
	    [FT_RANDOM] = "/dev/urandom" };
	struct file *f = getfile(fd);
	char name[16] = "pipe:[";
	const char *s = name;

	if (!f)
		return -ENOENT;
	if (f->type == FT_HOST)
		return fs_call(__NR_readlinkat, f->handle, 0, buf, n, 0);
	if (f->type == FT_NULL || f->type == FT_ZERO || f->type == FT_RANDOM) {
		s = dev[f->type];
	} else {                        /* pipe:[ino], the ino fstat gives */
		int ino = (int)(f - files) + 1, at = 6;
		if (ino >= 10)
			name[at++] = (char)('0' + ino / 10);
		name[at++] = (char)('0' + ino % 10);
		name[at++] = ']';
		name[at] = 0;
	}
	size_t len = MIN(strlen(s), (size_t)n);
	memcpy((void *)buf, s, len);
	return (long)len;
}

/* The host's handle for (fd); -EBADF if it is not open, (otherwise) if
 * the host does not serve it (a pipe, a device served here). */
long
fd_host(int fd, long otherwise)
{
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	return f->type == FT_HOST ? f->handle : otherwise;
}

/* fchdir's, *at's and execveat's directory: its handle, or -errno. */
long
fd_handle(int fd)
{
	return fd_host(fd, -ENOTDIR);
}

/* Stat a descriptor the host does not serve (fstatat with AT_EMPTY_PATH). */
long
fd_stat_here(int fd, long stp)
{
	struct file *f = getfile(fd);
	return f && f->type == FT_HOST ? -ENOTDIR : sys_fstat(fd, stp);
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
	case FT_ZERO:
	case FT_RANDOM:
	case FT_HOST:           /* files are always ready */
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

