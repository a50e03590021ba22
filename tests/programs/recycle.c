/*
 * Memory after a VM is recycled: ROUNDS times, a child fills a brk region
 * and an mmap region with a secret and exits; the next child allocates the
 * same sizes (at the same addresses: each starts from the parent's state)
 * and must find them zero, as a fresh process would.  Prints what each
 * checking child found.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 8
#define SIZE (3 << 20)
static const char SECRET[] = "the previous occupant's secret";

static int
nonzero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 1;
	return 0;
}

int
main(void)
{
	for (int round = 0; round < ROUNDS; round++) {
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0) {
			/* (musl's sbrk grows nothing: brk itself) */
			unsigned char *b = (unsigned char *)syscall(SYS_brk, 0);
			if ((unsigned char *)syscall(SYS_brk, b + SIZE) != b + SIZE)
				_exit(2);
			unsigned char *m = mmap(0, SIZE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (m == MAP_FAILED)
				_exit(2);
			if (round % 2) {        /* the checking child */
				printf("round %d: brk %s, mmap %s\n", round,
				    nonzero(b, SIZE) ? "SEES OLD DATA" : "zero",
				    nonzero(m, SIZE) ? "SEES OLD DATA" : "zero");
				fflush(stdout);
				_exit(0);
			}
			for (size_t i = 0; i + sizeof SECRET <= SIZE; i += sizeof SECRET) {
				memcpy(b + i, SECRET, sizeof SECRET);
				memcpy(m + i, SECRET, sizeof SECRET);
			}
			_exit(0);
		}
		int st;
		waitpid(c, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			printf("round %d: the child failed (%#x)\n", round, st);
	}
	return 0;
}
