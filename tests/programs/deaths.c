/*
 * How deaths look from the other processes: a crashing child's status, EOF
 * when the only writer is killed (its pipe ends are closed for it), SIGPIPE
 * for a writer blocked on a full pipe when the reader closes, and a child
 * that exits while its parent still writes to it.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int
main(void)
{
	int p[2], st;
	char buf[65536];

	pid_t c = fork();
	if (c == 0) {
		volatile int *null = 0;
		return *null;
	}
	waitpid(c, &st, 0);
	printf("crashing child: signaled %d, SIGSEGV %d\n", WIFSIGNALED(st), WTERMSIG(st) == SIGSEGV);

	pipe(p);
	c = fork();
	if (c == 0) {           /* holds the only write end, then is killed */
		close(p[0]);
		write(p[1], "partial", 7);
		for (;;)
			pause();
	}
	close(p[1]);
	ssize_t n = read(p[0], buf, sizeof buf);
	kill(c, SIGKILL);
	waitpid(c, &st, 0);
	printf("read %zd, then after the writer's SIGKILL: read %zd (EOF)\n", n, read(p[0], buf, 1));
	close(p[0]);

	pipe(p);
	c = fork();
	if (c == 0) {           /* fills the pipe and blocks */
		close(p[0]);
		memset(buf, 'z', sizeof buf);
		for (;;)
			write(p[1], buf, sizeof buf);
	}
	close(p[1]);
	read(p[0], buf, 10);
	struct timespec t = { 0, 200 * 1000 * 1000 };
	nanosleep(&t, NULL);    /* the writer is blocked on a full pipe now */
	close(p[0]);
	waitpid(c, &st, 0);
	printf("blocked writer after the reader closed: signaled %d, SIGPIPE %d\n",
	    WIFSIGNALED(st), WTERMSIG(st) == SIGPIPE);
	return 0;
}
