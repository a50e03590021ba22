/* Dies the way its first argument says: segv, ill, fpe, abort, exit N, wild. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
main(int argc, char **argv)
{
	const char *how = argc > 1 ? argv[1] : "segv";
	printf("about to %s\n", how);
	fflush(stdout);
	if (!strcmp(how, "segv")) {
		volatile int *p = NULL;
		return *p;
	}
	if (!strcmp(how, "ill"))
		__asm__ volatile("ud2");
	if (!strcmp(how, "fpe")) {
		volatile int zero = 0;
		return 10 / zero;
	}
	if (!strcmp(how, "abort"))
		abort();
	if (!strcmp(how, "wild")) {
		void (*f)(void) = (void (*)(void))0x10;
		f();
	}
	if (!strcmp(how, "raise"))
		raise(SIGTERM);
	if (!strcmp(how, "exit"))
		exit(argc > 2 ? atoi(argv[2]) : 0);
	return 99;
}
