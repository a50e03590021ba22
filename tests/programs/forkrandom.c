/* After fork, parent and child draw different random numbers. */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
	unsigned long a, b; int p[2]; pipe(p);
	getrandom(&a, 8, 0);
	if (fork() == 0) { getrandom(&a, 8, 0); write(p[1], &a, 8); _exit(0); }
	getrandom(&b, 8, 0); read(p[0], &a, 8); wait(NULL);
	printf("parent and child draw different numbers: %d\n", a != b);
	return 0;
}
