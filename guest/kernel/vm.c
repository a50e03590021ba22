/*
 * vm.c: the program's memory.  The page tables are static (the host built
 * them, identity mapping all RAM), so "mapping" is bookkeeping only:
 *
 *   UF_USER_BASE  program segments, then the break (brk) growing up
 *        ...      free
 *   mmap_low      anonymous mappings, allocated top-down from mmap_top
 *   stack_low     the stack, up to the end of RAM
 *
 * Memory below mmap_low that was never handed out is still zero (the RAM
 * file started empty).  Memory that was handed out and given back is kept
 * in a free list and zeroed when handed out again, as Linux guarantees.
 * mprotect is accepted and does nothing: nothing here is ever unmapped.
 */
#include "defs.h"
#include "linux.h"

#define NFREE 1024

struct extent { uint64_t start, end; };

static uint64_t brk_start, brk_cur, brk_max;
static uint64_t mmap_low, mmap_top;
static struct extent freelist[NFREE];   /* sorted, disjoint, not adjacent */
static int nfree;

void
vm_init(void)
{
	brk_start = brk_cur = brk_max = BOOT->brk;
	mmap_low = mmap_top = BOOT->mmap_top;
}

/* Is [addr, addr+len) program memory (not the kernel, not past RAM)? */
int
user_ok(uint64_t addr, uint64_t len)
{
	uint64_t end = addr + len;
	if (end < addr)
		return 0;
	if (addr >= UF_USER_BASE && end <= BOOT->ram_size)
		return 1;
	return 0;
}

int
user_str_ok(const char *s, size_t max)
{
	uint64_t a = (uint64_t)s;
	if (!user_ok(a, 1))
		return 0;
	size_t room = MIN(max, BOOT->ram_size - a);
	return strnlen(s, room) < room;
}

/* Give [start, end) back: merge it into the free list. */
static void
free_range(uint64_t start, uint64_t end)
{
	int i = 0, j;

	if (start < mmap_low)
		start = mmap_low;
	if (end > mmap_top)
		end = mmap_top;
	if (start >= end)
		return;
	while (i < nfree && freelist[i].end < start)
		i++;
	/* Absorb every extent that overlaps or touches [start, end). */
	for (j = i; j < nfree && freelist[j].start <= end; j++) {
		start = MIN(start, freelist[j].start);
		end = freelist[j].end > end ? freelist[j].end : end;
	}
	if (j == i) {
		if (nfree == NFREE)
			return;         /* full: leak the range, stay correct */
		memmove(&freelist[i + 1], &freelist[i], (nfree - i) * sizeof(freelist[0]));
		nfree++;
	} else if (j > i + 1) {
		memmove(&freelist[i + 1], &freelist[j], (nfree - j) * sizeof(freelist[0]));
		nfree -= j - i - 1;
	}
	freelist[i] = (struct extent){ start, end };
}

/* Take [start, end) out of the free list; returns whether any was free. */
static int
take_range(uint64_t start, uint64_t end)
{
	int any = 0;

	for (int i = 0; i < nfree; i++) {
		struct extent e = freelist[i];
		if (e.end <= start || e.start >= end)
			continue;
		any = 1;
		if (e.start < start && e.end > end) {      /* split in two */
			if (nfree == NFREE) {
				freelist[i].end = start;   /* leak the tail */
				continue;
			}
			memmove(&freelist[i + 1], &freelist[i], (nfree - i) * sizeof(freelist[0]));
			nfree++;
			freelist[i].end = start;
			freelist[i + 1].start = end;
			i++;
		} else if (e.start < start) {
			freelist[i].end = start;
		} else if (e.end > end) {
			freelist[i].start = end;
		} else {
			memmove(&freelist[i], &freelist[i + 1], (nfree - i - 1) * sizeof(freelist[0]));
			nfree--;
			i--;
		}
	}
	return any;
}

/* Hand out (len) bytes of zeroed memory: a free extent first, top-down. */
static uint64_t
alloc_range(uint64_t len)
{
	for (int i = nfree - 1; i >= 0; i--) {
		if (freelist[i].end - freelist[i].start >= len) {
			uint64_t a = freelist[i].end - len;
			take_range(a, a + len);
			memset((void *)a, 0, len);
			return a;
		}
	}
	if (mmap_low - brk_cur < len + UF_PAGE_SIZE)
		return 0;
	mmap_low -= len;
	return mmap_low;
}

long
sys_brk(long addr)
{
	uint64_t a = PAGE_UP((uint64_t)addr);

	if (addr == 0 || (uint64_t)addr < brk_start || a + UF_PAGE_SIZE > mmap_low)
		return (long)brk_cur;
	if (addr > (long)brk_cur && brk_cur < brk_max) {
		uint64_t zend = MIN((uint64_t)addr, brk_max);
		memset((void *)brk_cur, 0, zend - brk_cur);
	}
	brk_cur = (uint64_t)addr;
	if (brk_cur > brk_max)
		brk_max = brk_cur;
	return addr;
}

/* (n) bytes of zeroed memory, at (addr) with MAP_FIXED. */
static long
map_range(long addr, uint64_t n, long flags)
{
	if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
		uint64_t a = (uint64_t)addr;
		if (a & (UF_PAGE_SIZE - 1))
			return -EINVAL;
		if (!user_ok(a, n) || a < brk_cur || a + n > BOOT->stack_low)
			return -ENOMEM;
		take_range(a, a + n);
		if (a < mmap_low) {     /* the gap stays free (and zero) */
			uint64_t old = mmap_low;
			mmap_low = a;
			if (a + n < old)
				free_range(a + n, old);
		}
		memset((void *)a, 0, n);
		return (long)a;
	}
	uint64_t a = alloc_range(n);
	return a ? (long)a : -ENOMEM;
}

long
sys_mmap(long addr, long len, long prot, long flags, long fd, long off)
{
	uint64_t n = PAGE_UP((uint64_t)len);

	if (len <= 0 || n < (uint64_t)len)
		return -EINVAL;
	if (!(flags & MAP_ANONYMOUS)) {
		long e = fs_map_check((int)fd, prot, flags, off);
		if (e)
			return e;
	}
	long a = map_range(addr, n, flags);
	if (a < 0 || (flags & MAP_ANONYMOUS))
		return a;
	long r = fs_map_fill((int)fd, (uint64_t)a, (size_t)len, off);
	if (r < 0) {
		free_range((uint64_t)a, (uint64_t)a + n);
		return r;
	}
	return a;
}

long
sys_munmap(long addr, long len)
{
	if (((uint64_t)addr & (UF_PAGE_SIZE - 1)) || len <= 0)
		return -EINVAL;
	free_range((uint64_t)addr, (uint64_t)addr + PAGE_UP((uint64_t)len));
	return 0;
}

long
sys_mremap(long old, long old_len, long new_len, long flags, long new_addr)
{
	uint64_t o = (uint64_t)old;
	uint64_t ol = PAGE_UP((uint64_t)old_len), nl = PAGE_UP((uint64_t)new_len);
	(void)new_addr;

	if ((o & (UF_PAGE_SIZE - 1)) || nl == 0 || (flags & MREMAP_FIXED))
		return -EINVAL;
	if (!user_ok(o, ol))
		return -EFAULT;
	if (nl <= ol) {
		free_range(o + nl, o + ol);
		return old;
	}
	/* Grow in place when the pages after it are free. */
	for (int i = 0; i < nfree; i++) {
		if (freelist[i].start <= o + ol && freelist[i].end >= o + nl) {
			take_range(o + ol, o + nl);
			memset((void *)(o + ol), 0, nl - ol);
			return old;
		}
	}
	if (!(flags & MREMAP_MAYMOVE))
		return -ENOMEM;
	uint64_t n = alloc_range(nl);
	if (!n)
		return -ENOMEM;
	memcpy((void *)n, (void *)o, ol);
	free_range(o, o + ol);
	return (long)n;
}

long
sys_mprotect(long addr, long len, long prot)
{
	(void)prot;
	if ((uint64_t)addr & (UF_PAGE_SIZE - 1))
		return -EINVAL;
	return user_ok((uint64_t)addr, (uint64_t)len) ? 0 : -ENOMEM;
}

#define MADV_DONTNEED 4

long
sys_madvise(long addr, long len, long advice)
{
	if ((uint64_t)addr & (UF_PAGE_SIZE - 1))
		return -EINVAL;
	if (!user_ok((uint64_t)addr, (uint64_t)len))
		return -ENOMEM;
	if (advice == MADV_DONTNEED)    /* private anonymous: reads as zero */
		memset((void *)addr, 0, (size_t)len);
	return 0;
}

/*
 * Under TCG, QEMU keeps the code it translated by physical page, and
 * learns that a page changed only when the guest writes to it.  The host
 * rewrites the program image itself (an execve; a fork into a VM that
 * ran another program), so the kernel writes the image over itself, for
 * QEMU to translate it afresh.  Every word: QEMU drops only the
 * translations that overlap the bytes written.  Under KVM there is
 * nothing to do.
 */
void
vm_image_written(void)
{
	if (BOOT->features & UF_FEAT_KVM)
		return;
	for (uint64_t a = UF_USER_BASE; a < BOOT->brk && a < BOOT->ram_size; a += UF_PAGE_SIZE) {
		volatile uint64_t *p = (volatile uint64_t *)a;
		for (int i = 0; i < (int)(UF_PAGE_SIZE / 8); i++)
			p[i] = p[i];
	}
}
