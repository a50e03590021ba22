/*
 * A guest gone bad: it scribbles over its control page and over every ring
 * header of the job's shared region, asks the host nonsense, then writes.
 * The host must stay up, and end the job cleanly.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "unifork_abi.h"

int
main(int argc, char **argv)
{
	volatile struct uf_boot *boot = (struct uf_boot *)UF_BOOT_ADDR;
	printf("scribbling\n");
	fflush(stdout);
	for (int i = 0; i < UF_SHM_RINGS; i++) {        /* every ring header */
		volatile uint64_t *r = (uint64_t *)(boot->shm_base + UF_SHM_RING_OFF(i));
		for (int k = 0; k < 24; k++)
			r[k] = 0xdeadbeefcafebabeULL * (k + 1);
	}
	/* The control page's request line. */
	memset((void *)(UF_CTL_ADDR + __builtin_offsetof(struct uf_ctl, req)), 0xff, 64);
	if (argc > 1 && fork() == 0)            /* with a corrupt request line */
		_exit(0);
	_exit(3);
}
