/* linux.h: the parts of the Linux x86-64 ABI that the system calls speak. */
#ifndef LINUX_H
#define LINUX_H

#include <stdint.h>
#include <asm/unistd_64.h>      /* __NR_* */
#include <asm-generic/errno.h>  /* E* */

#define SIGHUP   1
#define SIGINT   2
#define SIGQUIT  3
#define SIGILL   4
#define SIGTRAP  5
#define SIGABRT  6
#define SIGBUS   7
#define SIGFPE   8
#define SIGKILL  9
#define SIGUSR1  10
#define SIGSEGV  11
#define SIGUSR2  12
#define SIGPIPE  13
#define SIGALRM  14
#define SIGTERM  15
#define SIGCHLD  17
#define SIGCONT  18
#define SIGSTOP  19
#define SIGTSTP  20
#define SIGURG   23
#define SIGWINCH 28
#define NSIG     64

/* A blocking call a signal interrupted (never seen by the program:
 * signal_return makes them EINTR or a restart of the call). */
#define ERESTARTSYS    512      /* restart if the handler has SA_RESTART */
#define ERESTARTNOHAND 514      /* EINTR if a handler ran */

#define SIG_DFL  0UL
#define SIG_IGN  1UL

struct k_sigaction {
	uint64_t handler;
	uint64_t flags;
	uint64_t restorer;
	uint64_t mask;
};

struct timespec { int64_t tv_sec, tv_nsec; };
struct timeval { int64_t tv_sec, tv_usec; };
struct iovec { void *base; uint64_t len; };
struct rlimit { uint64_t cur, max; };
#define RLIM_INFINITY (~0UL)

struct utsname { char sysname[65], nodename[65], release[65], version[65],
	machine[65], domainname[65]; };

struct stat {
	uint64_t dev, ino, nlink;
	uint32_t mode, uid, gid, _pad0;
	uint64_t rdev;
	int64_t  size, blksize, blocks;
	struct timespec atime, mtime, ctime;
	int64_t  _unused[3];
};
#define S_IFIFO  0010000
#define S_IFCHR  0020000
#define PATH_MAX 4096

struct winsize { uint16_t row, col, xpixel, ypixel; };
struct termios { uint32_t iflag, oflag, cflag, lflag; uint8_t line, cc[19]; };
#define TCGETS      0x5401
#define TIOCGWINSZ  0x5413
#define TIOCGPGRP   0x540f
#define FIONREAD    0x541b

#define O_RDONLY    0
#define O_WRONLY    1
#define O_RDWR      2
#define O_ACCMODE   3
#define O_CREAT     0100
#define O_TRUNC     01000
#define O_APPEND    02000
#define O_NONBLOCK  04000
#define O_DIRECTORY 0200000
#define O_CLOEXEC   02000000
#define F_DUPFD     0
#define F_GETFD     1
#define F_SETFD     2
#define F_GETFL     3
#define F_SETFL     4
#define F_DUPFD_CLOEXEC 1030
#define FD_CLOEXEC  1
#define AT_FDCWD    -100
#define AT_EMPTY_PATH 0x1000
#define AT_SYMLINK_NOFOLLOW 0x100
#define AT_REMOVEDIR  0x200
#define SEEK_CUR    1
#define LOCK_NB     4
#define F_SETLK     6
#define F_SETLKW    7

#define PROT_READ   1
#define PROT_WRITE  2
#define MAP_SHARED  0x01
#define MAP_PRIVATE 0x02
#define MAP_FIXED   0x10
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define MREMAP_MAYMOVE 1
#define MREMAP_FIXED   2

#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003

#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1
#define CLOCK_PROCESS_CPUTIME_ID 2
#define CLOCK_THREAD_CPUTIME_ID 3
#define CLOCK_MONOTONIC_RAW 4
#define CLOCK_REALTIME_COARSE 5
#define CLOCK_MONOTONIC_COARSE 6
#define CLOCK_BOOTTIME 7
#define TIMER_ABSTIME 1

#define GRND_NONBLOCK 1

#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define FUTEX_CMD_MASK 0x7f

#endif
