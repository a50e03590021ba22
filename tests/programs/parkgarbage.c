/*
 * A child writes garbage over its VM's park page (unifork_abi.h,
 * "Vessels"), a go that would start it as it parks among it, and exits;
 * its VM parks and is given to the next children, which run as they
 * should.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "unifork_abi.h"

int
main(void)
{
	int st;
	for (int i = 0; i < 6; i++) {
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0) {
			if (i == 0) {
				volatile struct uf_park *k = (struct uf_park *)UF_PARK_ADDR;
				memset((void *)UF_PARK_ADDR, 0xa5, UF_PARK_SIZE);
				k->go = k->parked + 1;  /* its next park's number */
			}
			printf("child %d ran\n", i);
			fflush(stdout);
			_exit(10 + i);
		}
		waitpid(c, &st, 0);
		printf("child %d: exited %d\n", i, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		fflush(stdout);
	}
	return 0;
}
