/*
 * Waits the way its first argument says, after printing "ready":
 *   spin      burn CPU forever
 *   sleep N   nanosleep N milliseconds, then print "slept"
 *   stdin     read stdin line by line, echoing, until EOF
 *   flood     write lines to stdout forever (for SIGPIPE)
 *   ignpipe   the same with SIGPIPE ignored: report EPIPE and exit 3
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	const char *how = argc > 1 ? argv[1] : "spin";
	printf("ready\n");
	fflush(stdout);
	if (!strcmp(how, "spin"))
		for (volatile unsigned long i = 0;; i++)
			;
	if (!strcmp(how, "sleep")) {
		long ms = argc > 2 ? atol(argv[2]) : 1000;
		struct timespec t = { ms / 1000, (ms % 1000) * 1000000 };
		nanosleep(&t, NULL);
		printf("slept\n");
		return 0;
	}
	if (!strcmp(how, "stdin")) {
		char line[256];
		while (fgets(line, sizeof line, stdin)) {
			printf("got %s", line);
			fflush(stdout);
		}
		printf("eof\n");
		return 0;
	}
	if (!strcmp(how, "ignpipe"))
		signal(SIGPIPE, SIG_IGN);
	char buf[4096];
	memset(buf, 'x', sizeof buf - 1);
	buf[sizeof buf - 1] = '\n';
	for (;;) {
		if (write(1, buf, sizeof buf) < 0) {
			fprintf(stderr, "write: %s\n", errno == EPIPE ? "EPIPE" : strerror(errno));
			return 3;
		}
	}
}
