/*
 * lib.c: string functions and a small printf formatter.  Built without SSE,
 * so safe at CPL 0 too; rep movsb/stosb are fast on CPUs with ERMS.
 */
#include <stdarg.h>
#include "defs.h"

void *
memcpy(void *d, const void *s, size_t n)
{
	void *r = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return r;
}

void *
memset(void *d, int c, size_t n)
{
	void *r = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return r;
}

void *
memmove(void *d, const void *s, size_t n)
{
	if ((uintptr_t)d <= (uintptr_t)s || (uintptr_t)d >= (uintptr_t)s + n)
		return memcpy(d, s, n);
	unsigned char *dp = (unsigned char *)d + n;
	const unsigned char *sp = (const unsigned char *)s + n;
	while (n--)
		*--dp = *--sp;
	return d;
}

int
memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t
strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

size_t
strnlen(const char *s, size_t max)
{
	size_t n = 0;
	while (n < max && s[n])
		n++;
	return n;
}

int
strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}

/* %d %u %x %lu %ld %lx %#lx %s %c %%: all the kernel's messages need. */
int
fmt(char *out, size_t size, const char *f, va_list ap)
{
	size_t n = 0;
#define PUT(c) do { if (n + 1 < size) out[n] = (c); n++; } while (0)
	for (; *f; f++) {
		if (*f != '%') {
			PUT(*f);
			continue;
		}
		int alt = 0, lng = 0;
		f++;
		if (*f == '#')
			alt = 1, f++;
		while (*f == 'l')
			lng = 1, f++;
		char buf[24];
		int len = 0, neg = 0;
		uint64_t v;
		switch (*f) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			for (s = s ? s : "(null)"; *s; s++)
				PUT(*s);
			continue;
		}
		case 'c':
			PUT((char)va_arg(ap, int));
			continue;
		case 'd': {
			int64_t sv = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			neg = sv < 0;
			v = neg ? -(uint64_t)sv : (uint64_t)sv;
			do buf[len++] = '0' + v % 10; while (v /= 10);
			break;
		}
		case 'u':
			v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			do buf[len++] = '0' + v % 10; while (v /= 10);
			break;
		case 'x':
			v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			do buf[len++] = "0123456789abcdef"[v % 16]; while (v /= 16);
			if (alt)
				buf[len++] = 'x', buf[len++] = '0';
			break;
		default:
			PUT('%');
			PUT(*f);
			continue;
		}
		if (neg)
			PUT('-');
		while (len)
			PUT(buf[--len]);
	}
	if (size)
		out[n < size ? n : size - 1] = 0;
	return (int)n;
#undef PUT
}
