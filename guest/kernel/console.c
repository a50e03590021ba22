/*
 * console.c: the kernel log.  Lines go into a ring in guest RAM that the
 * host drains and prints on its stderr; the guest never waits for it, so a
 * full log drops lines rather than stall (or deadlock ring 0).
 */
#include <stdarg.h>
#include "defs.h"

#define KLOG ((volatile struct uf_ring *)UF_LOG_ADDR)

void
klog_write(const char *s, size_t n)
{
	volatile struct uf_ring *r = KLOG;
	uint64_t head = r->head;

	if (r->size != UF_LOG_SIZE)     /* first use: the host zeroed it */
		r->size = UF_LOG_SIZE;
	if (n > r->size - (head - r->tail))
		return;
	for (size_t i = 0; i < n; i++)
		r->data[(head + i) & (r->size - 1)] = s[i];
	__asm__ volatile("" ::: "memory");
	r->head = head + n;
}

void
kprintf(const char *f, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, f);
	n = fmt(buf, sizeof(buf), f, ap);
	va_end(ap);
	klog_write(buf, MIN((size_t)n, sizeof(buf) - 1));
}
