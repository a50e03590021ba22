/*
 * Several writers into one pipe: W children each write R records of 4096
 * bytes (one byte value per record) while the parent forks more children
 * and reads.  Every record must arrive whole (writes of PIPE_BUF bytes are
 * atomic) and none may be lost or overwritten by a fork happening meanwhile.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { W = 4, R = 200, REC = 4096 };

int
main(void)
{
	int p[2], st;
	static unsigned char rec[REC];
	int count[W] = {0}, torn = 0;

	pipe(p);
	for (int w = 0; w < W; w++) {
		if (fork() == 0) {
			close(p[0]);
			memset(rec, 'A' + w, REC);
			for (int r = 0; r < R; r++)
				if (write(p[1], rec, REC) != REC)
					_exit(1);
			_exit(0);
		}
	}
	/* A fork in the middle of the writing: its copy must not rewind the ring. */
	if (fork() == 0)
		_exit(0);
	close(p[1]);
	size_t have = 0;
	ssize_t n;
	while ((n = read(p[0], rec + have, REC - have)) > 0) {
		have += n;
		if (have < REC)
			continue;
		have = 0;
		int w = rec[0] - 'A';
		for (int i = 1; i < REC; i++)
			if (rec[i] != rec[0]) {
				torn++;
				break;
			}
		if (w >= 0 && w < W)
			count[w]++;
	}
	while (wait(&st) > 0)
		;
	printf("records: ");
	for (int w = 0; w < W; w++)
		printf("%d ", count[w]);
	printf("\ntorn: %d, leftover bytes: %zu\n", torn, have);
	return 0;
}
