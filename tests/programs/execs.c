/*
 * execs: execve of what a job's tree holds.  Each failure is printed by
 * its errno's name; then, with an argument, one exec that works: a
 * static program, a #! script, or a PATH search with execvp.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *
ename(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case EACCES: return "EACCES";
	case ENOEXEC: return "ENOEXEC";
	case ENOTDIR: return "ENOTDIR";
	case ELOOP: return "ELOOP";
	}
	return "E?";
}

static void
try(const char *path)
{
	char *argv[] = { (char *)path, NULL };
	execve(path, argv, NULL);
	printf("execve %s: %s\n", path, ename(errno));
}

int
main(int argc, char **argv)
{
	char *env[] = { "PATH=/bin", NULL };

	setvbuf(stdout, NULL, _IONBF, 0);
	if (argc < 2) {
		try("/missing");
		try("/bin");
		try("/noexec");
		try("/garbage");
		try("/dynamic");
		try("/bin/missing/x");
		return 0;
	}
	if (!strcmp(argv[1], "static")) {
		char *a[] = { "echo", "static", "program", NULL };
		execve("/bin/echo", a, env);
	} else if (!strcmp(argv[1], "script")) {
		char *a[] = { "script.sh", "one", "two", NULL };
		execve("/script.sh", a, env);
	} else if (!strcmp(argv[1], "path")) {
		char *a[] = { "echo", "found", "on", "the", "PATH", NULL };
		execvpe("echo", a, env);
	} else if (!strcmp(argv[1], "fexecve")) {
		char *a[] = { "echo", "by", "descriptor", NULL };
		int fd = open("/bin/busybox", O_RDONLY | O_CLOEXEC);
		fexecve(fd, a, env);
	} else if (!strcmp(argv[1], "fork")) {
		pid_t pid = fork();
		if (pid == 0) {
			char *a[] = { "cat", "/script.sh", NULL };
			execve("/bin/cat", a, env);
			_exit(127);
		}
		int status;
		waitpid(pid, &status, 0);
		printf("the child's cat exited %d\n", WEXITSTATUS(status));
		return 0;
	}
	printf("exec failed: %s\n", ename(errno));
	return 1;
}
