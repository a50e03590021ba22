/*
 * Heavy malloc and free: many small blocks, a few large ones (which the C
 * libraries take from mmap), realloc growth; prints a checksum.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t
mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	return x ^ (x >> 33);
}

int
main(void)
{
	enum { N = 4096 };
	static unsigned char *blocks[N];
	static size_t sizes[N];
	uint64_t sum = 0, rng = 42;

	for (int round = 0; round < 200000; round++) {
		rng = mix(rng + round);
		int i = rng % N;
		if (blocks[i]) {
			for (size_t k = 0; k < sizes[i]; k += 61)
				sum += blocks[i][k];
			free(blocks[i]);
			blocks[i] = NULL;
		} else {
			size_t n = (rng >> 20) % 512 + 1;
			if (round % 997 == 0)
				n = 256 * 1024 + (rng >> 40) % (2 << 20);  /* mmap-sized */
			blocks[i] = malloc(n);
			if (!blocks[i]) {
				printf("malloc(%zu) failed\n", n);
				return 1;
			}
			memset(blocks[i], (int)(rng & 0xff), n);
			sizes[i] = n;
		}
	}
	char *s = NULL;
	size_t len = 0;
	for (int i = 0; i < 20000; i++) {
		s = realloc(s, len + 64);
		memset(s + len, 'a' + i % 26, 64);
		len += 64;
	}
	for (size_t k = 0; k < len; k += 7)
		sum += (unsigned char)s[k];
	free(s);
	for (int i = 0; i < N; i++)
		free(blocks[i]);
	printf("checksum %llu\n", (unsigned long long)sum);
	return 0;
}
