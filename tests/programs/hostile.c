/*
 * A guest gone bad: it scribbles over its control page and over every ring
 * header of the job's shared region, asks the host nonsense, then writes.
 * The host must stay up, and end the job cleanly.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	volatile uint64_t *boot = (uint64_t *)0x200000;
	uint64_t shm = boot[3];                 /* uf_boot.shm_base */
	printf("scribbling\n");
	fflush(stdout);
	for (int i = 0; i < 64; i++) {          /* every ring header */
		volatile uint64_t *r = (uint64_t *)(shm + 0x1000 + (uint64_t)i * 0x11000);
		for (int k = 0; k < 24; k++)
			r[k] = 0xdeadbeefcafebabeULL * (k + 1);
	}
	memset((void *)0x201040, 0xff, 64);     /* uf_ctl: the request line */
	if (argc > 1 && fork() == 0)            /* with a corrupt request line */
		_exit(0);
	_exit(3);
}
