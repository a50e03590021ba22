/* The smallest job: one line on stdout. */
#include <stdio.h>

int
main(void)
{
	puts("hello from a unikernel");
	return 0;
}
