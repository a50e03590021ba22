/* Allocates argv[1] MiB in 1 MiB blocks until malloc says no; touches each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
main(int argc, char **argv)
{
	int want = argc > 1 ? atoi(argv[1]) : 64, got = 0;
	for (; got < want; got++) {
		char *p = malloc(1 << 20);
		if (!p)
			break;
		memset(p, got, 1 << 20);
	}
	if (got < want)
		printf("allocation failed cleanly after %s MiB\n", got > 8 ? "some" : "few");
	else
		printf("allocated all %d MiB\n", got);
	return 0;
}
