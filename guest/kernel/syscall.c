/*
 * syscall.c: the system-call table, on the Linux x86-64 numbers.  Each
 * sys_X checks its arguments (the program is not trusted to pass good
 * pointers) and returns a result or -errno.  A number with no entry returns
 * -ENOSYS and is logged once, by number and name.  On the way out, a
 * signal may be taken (signal.c).
 */
#include "defs.h"
#include "linux.h"
#include "syscall_names.h"      /* generated from <asm/unistd_64.h> */

typedef long (*sysfn)(long, long, long, long, long, long);

#define SYS(name) long sys_##name();
#include "syscalls.def"
#undef SYS

/* Known and deliberately unsupported: -ENOSYS without a log line. */
static long sys_quiet_enosys(void) { return -ENOSYS; }

static const sysfn table[] = {
#define SYS(name) [__NR_##name] = (sysfn)sys_##name,
#include "syscalls.def"
#undef SYS
	[__NR_exit] = (sysfn)sys_exit_group,
	[__NR_geteuid] = (sysfn)sys_getuid,
	[__NR_getegid] = (sysfn)sys_getgid,
	[__NR_rseq] = (sysfn)sys_quiet_enosys,
	[__NR_clone3] = (sysfn)sys_quiet_enosys,   /* glibc falls back to clone */
};

#define NSYS (sizeof(table) / sizeof(table[0]))

static uint64_t logged[512 / 64];

long
syscall_dispatch(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
	long ret = -ENOSYS;

	CTL->syscalls++;
	if ((uint64_t)nr < NSYS && table[nr])
		ret = table[nr](a0, a1, a2, a3, a4, a5);
	else if ((uint64_t)nr < 512 && !(logged[nr / 64] & (1UL << (nr % 64)))) {
		logged[nr / 64] |= 1UL << (nr % 64);
		const char *name = (uint64_t)nr < NSYSNAMES && syscall_names[nr] ?
		    syscall_names[nr] : "unknown";
		kprintf("unsupported system call %ld (%s): returning ENOSYS\n", nr, name);
	} else if ((uint64_t)nr >= 512) {
		kprintf("unsupported system call %ld: returning ENOSYS\n", nr);
	}
	return signal_return(nr, ret);
}
