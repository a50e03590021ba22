/*
 * A shell pipeline built by hand: generate | filter | count, each stage a
 * process whose stdin/stdout are pipe ends put in place with dup2, the
 * filter being this same program re-run with execve("/proc/self/exe").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int
filter(void)            /* keep the lines holding a 7 */
{
	char line[128];
	while (fgets(line, sizeof line, stdin))
		if (strchr(line, '7'))
			fputs(line, stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "filter"))
		return filter();
	printf("stage env in the filter: %s\n", getenv("STAGE") ? getenv("STAGE") : "(none)");
	fflush(stdout);

	int a[2], b[2], st;
	pipe(a);
	pipe(b);
	if (fork() == 0) {              /* generate */
		dup2(a[1], 1);
		close(a[0]), close(a[1]), close(b[0]), close(b[1]);
		for (int i = 0; i < 20000; i++)
			printf("%d\n", i);
		return 0;
	}
	if (fork() == 0) {              /* filter, a new image of this program */
		dup2(a[0], 0);
		dup2(b[1], 1);
		close(a[0]), close(a[1]), close(b[0]), close(b[1]);
		char *args[] = { argv[0], "filter", NULL };
		char *env[] = { "STAGE=filter", NULL };
		execve("/proc/self/exe", args, env);
		perror("execve");
		_exit(127);
	}
	close(a[0]), close(a[1]), close(b[1]);
	FILE *in = fdopen(b[0], "r");
	char line[128];
	long lines = 0, sum = 0;
	while (fgets(line, sizeof line, in))
		lines++, sum += atol(line);
	int ok = 1;
	while (wait(&st) > 0)
		ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
	printf("lines with a 7: %ld, their sum %ld, stages ok: %d\n", lines, sum, ok);
	char *bad[] = { "x", NULL };
	fflush(stdout);
	printf("execve of another program fails: %d\n",
	    execve("/no/such/program", bad, environ) == -1);
	return 0;
}
