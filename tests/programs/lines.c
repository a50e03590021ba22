/*
 * A parent and a child print 3000 lines each to the same stdout at the
 * same time, line-buffered (musl writes each line with writev of two
 * parts): no line may be torn by the other's.
 */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	pid_t c = fork();
	const char *who = c == 0 ? "child" : "parent";
	for (int i = 0; i < 3000; i++)
		printf("%s line %d of 3000\n", who, i);
	if (c == 0)
		_exit(0);
	waitpid(c, NULL, 0);
	return 0;
}
