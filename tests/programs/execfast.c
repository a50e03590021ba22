/*
 * fork, then exec at once in the child: its new image writes into the pipe
 * the parent reads to EOF (what a shell's command substitution does).  The
 * child needs the host within microseconds of being created.
 */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
	if (argc > 1) { printf("1\n2\n3\n"); return 0; }
	int p[2]; pipe(p);
	pid_t c = fork();
	if (c == 0) { close(p[0]); dup2(p[1], 1); close(p[1]);
		char *a[] = { argv[0], "child", NULL }; execve("/proc/self/exe", a, NULL); _exit(127); }
	close(p[1]);
	char buf[64]; ssize_t n, t = 0;
	while ((n = read(p[0], buf + t, sizeof buf - t)) > 0) t += n;
	int st; waitpid(c, &st, 0);
	printf("[%.*s] %d\n", (int)t, buf, WEXITSTATUS(st));
	return 0;
}
