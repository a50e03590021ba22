/*
 * fs.c: the job's file tree, which the host keeps (unifork_abi.h,
 * "Files").  Each call here checks the program's pointers (EFAULT is
 * ours to give), puts the host's handles in place of descriptors and
 * forwards the call, by its Linux number, as a FILE request; the host
 * resolves the paths inside the tree and reads and writes the program's
 * buffers itself.  The calls without an *at form are sent as their *at
 * form, as Linux's own entry points do.
 */
#include "defs.h"
#include "linux.h"
#include "x86.h"

static uint32_t umask_ = 022;

long
fs_call(long nr, long a0, long a1, long a2, long a3, long a4)
{
	CTL->sysarg[0] = a0;
	CTL->sysarg[1] = a1;
	CTL->sysarg[2] = a2;
	CTL->sysarg[3] = a3;
	CTL->sysarg[4] = a4;
	CTL->sysarg[5] = 0;
	return host_call(UF_REQ_FILE, nr, 0, 0, 0);
}

void
fs_close(long handle)
{
	fs_call(__NR_close, handle, 0, 0, 0, 0);
}

static int
path_ok(long path)
{
	return user_str_ok((const char *)path, PATH_MAX);
}

/*
 * The handle of (dirfd), the directory a relative (path) starts from:
 * AT_FDCWD for the working directory, or an absolute path.  An empty
 * path is the descriptor itself (with AT_EMPTY_PATH).
 */
static long
at_handle(int dirfd, long path)
{
	const char *p = (const char *)path;
	if (dirfd == AT_FDCWD || (p && p[0] == '/'))
		return AT_FDCWD;
	return fd_handle(dirfd);
}

/* Forward the *at call (nr) on (dirfd, path) with the other arguments. */
static long
at_call(long nr, int dirfd, long path, long a2, long a3, long a4)
{
	if (!path_ok(path))
		return -EFAULT;
	long h = at_handle(dirfd, path);
	if (h < 0 && h != AT_FDCWD)
		return h;
	return fs_call(nr, h, path, a2, a3, a4);
}

/*
 * /proc/self/fd/N and /dev/fd/N (and /dev/stdin, /dev/stdout, /dev/stderr)
 * name descriptor N, which only this kernel knows: N, or -1 if (p) is none
 * of them.
 */
static long
own_fd(const char *p)
{
	static const char *const std[] = { "/dev/stdin", "/dev/stdout", "/dev/stderr" };
	long n = -1;
	for (int i = 0; i < 3; i++)
		if (strcmp(p, std[i]) == 0)
			n = i;
	const char *num = !memcmp(p, "/proc/self/fd/", 14) ? p + 14 :
	    !memcmp(p, "/dev/fd/", 8) ? p + 8 : 0;
	if (num && *num) {
		n = 0;
		for (; *num; num++) {
			if (*num < '0' || *num > '9' || n > NFD)
				return -1;
			n = n * 10 + (*num - '0');
		}
	}
	return n;
}

/* Opening descriptor N's name: a file the host serves is opened afresh (a
 * description of its own, as Linux's reopen), anything else is shared
 * (bash's process substitution passes a pipe so). */
static long
open_own_fd(long n, int flags)
{
	struct file *f = getfile(n);
	if (!f)
		return -ENOENT;
	if (f->type != FT_HOST)
		return fd_reopen((int)n, (flags & O_CLOEXEC) != 0);
	long r = fs_call(__NR_openat, f->handle, 0, flags & ~O_CLOEXEC, 0, 0);
	return r < 0 ? r : fd_open((int)CTL->val[0], r, flags, (flags & O_CLOEXEC) != 0);
}

long
sys_openat(int dirfd, long path, int flags, int mode)
{
	long n = path_ok(path) ? own_fd((const char *)path) : -1;
	if (n >= 0)
		return open_own_fd(n, flags);
	long r = at_call(__NR_openat, dirfd, path, flags & ~O_CLOEXEC, mode & ~umask_ & 07777, 0);
	if (r < 0)
		return r;
	return fd_open((int)CTL->val[0], r, flags, (flags & O_CLOEXEC) != 0);
}

long
sys_open(long path, int flags, int mode)
{
	return sys_openat(AT_FDCWD, path, flags, mode);
}

long
sys_creat(long path, int mode)
{
	return sys_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

/* A call on descriptor (fd), which the host serves, with a buffer of
 * (len) bytes at (buf) that it checks here; (otherwise): its error for a
 * descriptor the host does not serve. */
static long
fd_call(long nr, int fd, long buf, long len, long a3, long otherwise)
{
	long h = fd_host(fd, otherwise);
	if (h < 0)
		return h;
	if (len < 0)
		return -EINVAL;
	if (len && !user_ok((uint64_t)buf, (uint64_t)len))
		return -EFAULT;
	return fs_call(nr, h, buf, len, a3, 0);
}

long sys_pread64(int fd, long buf, long n, long off) { return fd_call(__NR_pread64, fd, buf, n, off, -ESPIPE); }
long sys_pwrite64(int fd, long buf, long n, long off) { return fd_call(__NR_pwrite64, fd, buf, n, off, -ESPIPE); }
long sys_fsync(int fd)      { return fd_call(__NR_fsync, fd, 0, 0, 0, -EINVAL); }
long sys_fdatasync(int fd)  { return fd_call(__NR_fdatasync, fd, 0, 0, 0, -EINVAL); }
long sys_getdents64(int fd, long buf, long n) { return fd_call(__NR_getdents64, fd, buf, n, 0, -ENOTDIR); }

long
sys_ftruncate(int fd, long len)
{
	long h = fd_host(fd, -EINVAL);
	return h < 0 ? h : fs_call(__NR_ftruncate, h, len, 0, 0, 0);
}

/* preadv, pwritev: the host reads the iovec array; its buffers are
 * checked here. */
static long
fd_vcall(long nr, int fd, long iovp, long cnt, long off)
{
	long h = fd_host(fd, -ESPIPE);
	if (h < 0)
		return h;
	long e = check_iov((const struct iovec *)iovp, cnt);
	return e ? e : fs_call(nr, h, iovp, cnt, off, 0);
}

long sys_preadv(int fd, long iov, long cnt, long off) { return fd_vcall(__NR_preadv, fd, iov, cnt, off); }
long sys_pwritev(int fd, long iov, long cnt, long off) { return fd_vcall(__NR_pwritev, fd, iov, cnt, off); }

long
sys_newfstatat(int dirfd, long path, long stp, int flags)
{
	if (!path_ok(path))
		return -EFAULT;
	if (!user_ok((uint64_t)stp, sizeof(struct stat)))
		return -EFAULT;
	if (((const char *)path)[0] == 0 && (flags & AT_EMPTY_PATH) && dirfd != AT_FDCWD) {
		long r = fd_stat_here(dirfd, stp);
		if (r != -ENOTDIR)
			return r;
	}
	return at_call(__NR_newfstatat, dirfd, path, stp, flags, 0);
}

long sys_stat(long path, long stp)  { return sys_newfstatat(AT_FDCWD, path, stp, 0); }
long sys_lstat(long path, long stp) { return sys_newfstatat(AT_FDCWD, path, stp, AT_SYMLINK_NOFOLLOW); }

long
sys_statx(int dirfd, long path, int flags, unsigned mask, long stxp)
{
	if (!user_ok((uint64_t)stxp, 256))
		return -EFAULT;
	return at_call(__NR_statx, dirfd, path, flags, mask, stxp);
}

long
sys_faccessat2(int dirfd, long path, int mode, int flags)
{
	return at_call(__NR_faccessat2, dirfd, path, mode, flags, 0);
}

long sys_faccessat(int dirfd, long path, int mode) { return sys_faccessat2(dirfd, path, mode, 0); }
long sys_access(long path, int mode) { return sys_faccessat2(AT_FDCWD, path, mode, 0); }

long
sys_mkdirat(int dirfd, long path, int mode)
{
	return at_call(__NR_mkdirat, dirfd, path, mode & ~umask_ & 07777, 0, 0);
}

long sys_mkdir(long path, int mode) { return sys_mkdirat(AT_FDCWD, path, mode); }

long
sys_unlinkat(int dirfd, long path, int flags)
{
	return at_call(__NR_unlinkat, dirfd, path, flags, 0, 0);
}

long sys_unlink(long path) { return sys_unlinkat(AT_FDCWD, path, 0); }
long sys_rmdir(long path)  { return sys_unlinkat(AT_FDCWD, path, AT_REMOVEDIR); }

/* Two-path calls: both directories become handles. */
static long
at2_call(long nr, int olddir, long oldpath, int newdir, long newpath, long flags)
{
	if (!path_ok(oldpath) || !path_ok(newpath))
		return -EFAULT;
	long ho = at_handle(olddir, oldpath), hn = at_handle(newdir, newpath);
	if (ho < 0 && ho != AT_FDCWD)
		return ho;
	if (hn < 0 && hn != AT_FDCWD)
		return hn;
	return fs_call(nr, ho, oldpath, hn, newpath, flags);
}

long
sys_renameat2(int olddir, long oldpath, int newdir, long newpath, unsigned flags)
{
	return at2_call(__NR_renameat2, olddir, oldpath, newdir, newpath, flags);
}

long sys_renameat(int od, long op, int nd, long np) { return sys_renameat2(od, op, nd, np, 0); }
long sys_rename(long op, long np) { return sys_renameat2(AT_FDCWD, op, AT_FDCWD, np, 0); }

long
sys_linkat(int olddir, long oldpath, int newdir, long newpath, int flags)
{
	return at2_call(__NR_linkat, olddir, oldpath, newdir, newpath, flags);
}

long sys_link(long op, long np) { return sys_linkat(AT_FDCWD, op, AT_FDCWD, np, 0); }

long
sys_symlinkat(long target, int newdir, long newpath)
{
	if (!path_ok(target))
		return -EFAULT;
	return at_call(__NR_symlinkat, newdir, newpath, target, 0, 0);
}

long sys_symlink(long target, long newpath) { return sys_symlinkat(target, AT_FDCWD, newpath); }

long
sys_readlinkat(int dirfd, long path, long buf, long n)
{
	if (n <= 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	long fd = path_ok(path) ? own_fd((const char *)path) : -1;
	if (fd >= 0)
		return fd_link((int)fd, buf, n);
	return at_call(__NR_readlinkat, dirfd, path, buf, n, 0);
}

long sys_readlink(long path, long buf, long n) { return sys_readlinkat(AT_FDCWD, path, buf, n); }

long
sys_fchmodat(int dirfd, long path, int mode)
{
	return at_call(__NR_fchmodat, dirfd, path, mode & 07777, 0, 0);
}

long sys_chmod(long path, int mode) { return sys_fchmodat(AT_FDCWD, path, mode); }

long
sys_fchmod(int fd, int mode)
{
	long h = fd_handle(fd);
	return h == -ENOTDIR ? 0 : h < 0 ? h : fs_call(__NR_fchmod, h, mode & 07777, 0, 0, 0);
}

long
sys_fchownat(int dirfd, long path, int uid, int gid, int flags)
{
	return at_call(__NR_fchownat, dirfd, path, uid, gid, flags);
}

long sys_chown(long path, int uid, int gid) { return sys_fchownat(AT_FDCWD, path, uid, gid, 0); }
long sys_lchown(long path, int uid, int gid)
{
	return sys_fchownat(AT_FDCWD, path, uid, gid, AT_SYMLINK_NOFOLLOW);
}

long
sys_fchown(int fd, int uid, int gid)
{
	long h = fd_handle(fd);
	return h == -ENOTDIR ? 0 : h < 0 ? h : fs_call(__NR_fchown, h, uid, gid, 0, 0);
}

/* Advice, and syncing everything: nothing to do here (the host's page
 * cache is the host's). */
long sys_fadvise64(int fd) { return getfile(fd) ? 0 : -EBADF; }
long sys_sync(void) { return 0; }
long sys_syncfs(int fd) { return getfile(fd) ? 0 : -EBADF; }

long
sys_utimensat(int dirfd, long path, long times, int flags)
{
	if (times && !user_ok((uint64_t)times, 2 * sizeof(struct timespec)))
		return -EFAULT;
	if (!path) {            /* futimens: the descriptor itself */
		long h = fd_handle(dirfd);
		return h < 0 ? h : fs_call(__NR_utimensat, h, 0, times, flags, 0);
	}
	return at_call(__NR_utimensat, dirfd, path, times, flags, 0);
}

long
sys_truncate(long path, long len)
{
	return at_call(__NR_truncate, AT_FDCWD, path, len, 0, 0);
}

long
sys_chdir(long path)
{
	return at_call(__NR_chdir, AT_FDCWD, path, 0, 0, 0);
}

long
sys_fchdir(int fd)
{
	long h = fd_handle(fd);
	return h < 0 ? h : fs_call(__NR_fchdir, h, 0, 0, 0, 0);
}

long
sys_getcwd(long buf, long n)
{
	if (n < 0)
		return -EINVAL;
	if (!user_ok((uint64_t)buf, (uint64_t)n))
		return -EFAULT;
	return fs_call(__NR_getcwd, 0, buf, n, 0, 0);
}

long
sys_statfs(long path, long buf)
{
	if (!user_ok((uint64_t)buf, 120))
		return -EFAULT;
	return at_call(__NR_statfs, AT_FDCWD, path, buf, 0, 0);
}

long
sys_fstatfs(int fd, long buf)
{
	if (!user_ok((uint64_t)buf, 120))
		return -EFAULT;
	long h = fd_handle(fd);
	return h < 0 ? h : fs_call(__NR_fstatfs, h, buf, 0, 0, 0);
}

long
sys_umask(int mask)
{
	uint32_t old = umask_;
	umask_ = (uint32_t)mask & 0777;
	return old;
}

/* A lock that would block is asked for again, every LOCK_RETRY_NS, until
 * it is granted or a signal comes: the host never blocks on a guest's
 * behalf. */
#define LOCK_RETRY_NS 1000000
static long
retry_lock(long nr, long handle, long a1, long a2)
{
	long r;
	while ((r = fs_call(nr, handle, a1, a2, 0, 0)) == -EAGAIN || r == -EACCES) {
		if (signal_pending())
			return -ERESTARTSYS;
		CTL->asleep = UF_SLEEP_TIMER;
		sleep_until(rdtsc() + ns_to_tsc(LOCK_RETRY_NS));
		CTL->asleep = UF_SLEEP_NONE;
	}
	return r;
}

long
sys_flock(int fd, int op)
{
	long h = fd_handle(fd);
	if (h < 0)
		return h == -ENOTDIR ? -EINVAL : h;
	if (op & LOCK_NB)
		return fs_call(__NR_flock, h, op, 0, 0, 0);
	return retry_lock(__NR_flock, h, op | LOCK_NB, 0);
}

/* fcntl's record locks (F_SETLK, F_SETLKW, F_GETLK) on a file the host serves. */
long
fs_fcntl(long handle, int cmd, long arg)
{
	if (cmd == F_SETLKW)
		return retry_lock(__NR_fcntl, handle, F_SETLK, arg);
	return fs_call(__NR_fcntl, handle, cmd, arg, 0, 0);
}

/*
 * mmap of a file: a private copy of it, read in at mmap time (there is no
 * page cache here to share), which also serves a read-only MAP_SHARED
 * mapping; a writable shared one cannot be kept in step with the file.
 */
long
fs_map_check(int fd, long prot, long flags, long off)
{
	static int said;
	struct file *f = getfile(fd);
	if (!f)
		return -EBADF;
	if (f->type != FT_HOST)
		return f->type == FT_ZERO ? 0 : -ENODEV;
	if (off & (UF_PAGE_SIZE - 1))
		return -EINVAL;
	if ((flags & MAP_SHARED) && (prot & PROT_WRITE)) {
		if (!said++)
			kprintf("mmap: a writable MAP_SHARED mapping of a file is not supported: ENODEV\n");
		return -ENODEV;
	}
	return (f->flags & O_ACCMODE) == O_WRONLY ? -EACCES : 0;
}

long
fs_map_fill(int fd, uint64_t at, size_t len, long off)
{
	struct file *f = getfile(fd);
	if (f->type != FT_HOST)
		return 0;               /* /dev/zero: zeroes already */
	for (size_t done = 0; done < len;) {
		long r = fs_call(__NR_pread64, f->handle, (long)(at + done), (long)(len - done),
		    off + (long)done, 0);
		if (r < 0)
			return r;
		if (r == 0)
			break;          /* past the end: zeroes, as Linux's last page */
		done += (size_t)r;
	}
	return 0;
}

/* An offset argument of copy_file_range: 0 and *off, or -errno. */
static long
off_arg(long p, struct file *f, int64_t *off)
{
	if (!p)
		return 0;
	if (f->type != FT_HOST)
		return -ESPIPE;
	if (!user_ok((uint64_t)p, 8))
		return -EFAULT;
	*off = *(int64_t *)p;
	return *off < 0 ? -EINVAL : 0;
}

/*
 * copy_file_range: as much as one read gives, through a buffer here, from
 * any file to any other (Linux's takes regular files only; a pipe works
 * here as with sendfile).  With an offset pointer, that side is read or
 * written at *off, which moves on, and its file's offset does not.
 */
long
sys_copy_file_range(int in, long offin, int out, long offout, long len, unsigned flags)
{
	static uint8_t buf[65536];
	struct file *fi = getfile(in), *fo = getfile(out);
	int64_t oi = 0, oo = 0;
	long e;

	if (!fi || !fo)
		return -EBADF;
	if (flags)
		return -EINVAL;
	if ((e = off_arg(offin, fi, &oi)) || (e = off_arg(offout, fo, &oo)))
		return e;
	if (len <= 0)
		return len < 0 ? -EINVAL : 0;
	size_t want = MIN((size_t)len, sizeof buf);
	long n = offin ? fs_call(__NR_pread64, fi->handle, (long)buf, (long)want, oi, 0) :
	    file_read(fi, buf, want);
	if (n <= 0)
		return n;
	long w = offout ? fs_call(__NR_pwrite64, fo->handle, (long)buf, n, oo, 0) :
	    file_write(fo, buf, (size_t)n);
	if (w > 0 && offin)
		*(int64_t *)offin = oi + w;
	if (w > 0 && offout)
		*(int64_t *)offout = oo + w;
	return w;
}
