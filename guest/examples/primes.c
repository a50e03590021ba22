/*
 * A fork-heavy job: count the primes below LIMIT with N worker processes.
 * Each worker gets a slice of the range and a pipe back to the parent; the
 * parent gathers the counts, then hands a report to a formatter process
 * whose stdin is a pipe put in place with dup2.
 *
 *   primes [LIMIT [N]]      (default 2000000 8)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct result {
	long lo, hi, count, largest;
};

static int
is_prime(long n)
{
	if (n < 2)
		return 0;
	for (long d = 2; d * d <= n; d++)
		if (n % d == 0)
			return 0;
	return 1;
}

static void
work(long lo, long hi, int out)
{
	struct result r = { lo, hi, 0, 0 };
	for (long n = lo; n < hi; n++)
		if (is_prime(n))
			r.count++, r.largest = n;
	if (write(out, &r, sizeof r) != sizeof r)
		_exit(1);
	_exit(0);
}

static int
format(void)            /* the formatter: report lines on stdin, a table out */
{
	char line[256];
	long lo, hi, count, largest;
	printf("%12s %12s %10s %12s\n", "from", "to", "primes", "largest");
	while (fgets(line, sizeof line, stdin)) {
		if (sscanf(line, "%ld %ld %ld %ld", &lo, &hi, &count, &largest) == 4)
			printf("%12ld %12ld %10ld %12ld\n", lo, hi, count, largest);
		else
			fputs(line, stdout);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	long limit = argc > 1 ? atol(argv[1]) : 2000000;
	int n = argc > 2 ? atoi(argv[2]) : 8;
	int pipes[64][2], st;
	struct result res[64];

	if (n < 1 || n > 64 || limit < 2) {
		fprintf(stderr, "usage: primes [LIMIT [N<=64]]\n");
		return 2;
	}
	for (int i = 0; i < n; i++) {
		pipe(pipes[i]);
		if (fork() == 0) {
			for (int j = 0; j <= i; j++)
				close(pipes[j][0]);
			work(limit * i / n, limit * (i + 1) / n, pipes[i][1]);
		}
		close(pipes[i][1]);
	}
	long total = 0;
	for (int i = 0; i < n; i++) {
		if (read(pipes[i][0], &res[i], sizeof res[i]) != sizeof res[i]) {
			fprintf(stderr, "worker %d sent nothing\n", i);
			return 1;
		}
		close(pipes[i][0]);
		total += res[i].count;
	}
	int ok = 1;
	while (wait(&st) > 0)
		ok &= WIFEXITED(st) && WEXITSTATUS(st) == 0;

	int fmt[2];
	pipe(fmt);
	fflush(stdout);
	pid_t f = fork();
	if (f == 0) {
		dup2(fmt[0], 0);
		close(fmt[0]);
		close(fmt[1]);
		exit(format());
	}
	close(fmt[0]);
	FILE *to = fdopen(fmt[1], "w");
	for (int i = 0; i < n; i++)
		fprintf(to, "%ld %ld %ld %ld\n", res[i].lo, res[i].hi, res[i].count, res[i].largest);
	fprintf(to, "%d workers, all well: %s\n", n, ok ? "yes" : "no");
	fprintf(to, "primes below %ld: %ld\n", limit, total);
	fclose(to);
	waitpid(f, &st, 0);
	return ok && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
