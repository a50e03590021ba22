/*
 * Raw UDP between two network namespaces: the baseline of bench/xpipe.py.
 *   udpbench sink PORT            count what arrives; print MB/s once the
 *                                 sender's end marker (a 1-byte datagram) comes
 *   udpbench blast IP PORT SECS   send 64000-byte datagrams for SECS seconds
 *   udpbench echo PORT            send every datagram back
 *   udpbench ping IP PORT N       N 1-byte round trips; print the mean in us
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double
now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int
sock(const char *ip, int port, struct sockaddr_in *to, int bind_it)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0), big = 8 << 20;
	setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
	setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
	memset(to, 0, sizeof *to);
	to->sin_family = AF_INET;
	to->sin_port = htons(port);
	to->sin_addr.s_addr = ip ? inet_addr(ip) : INADDR_ANY;
	if (bind_it && bind(s, (struct sockaddr *)to, sizeof *to) < 0) {
		perror("bind");
		exit(1);
	}
	return s;
}

int
main(int argc, char **argv)
{
	static char buf[65536];
	struct sockaddr_in a, from;
	socklen_t fl = sizeof from;
	if (argc == 3 && !strcmp(argv[1], "sink")) {
		int s = sock(NULL, atoi(argv[2]), &a, 1);
		long total = 0;
		double t0 = 0;
		for (;;) {
			long n = recv(s, buf, sizeof buf, 0);
			if (n == 1)
				break;
			if (!t0)
				t0 = now();
			total += n;
		}
		printf("%.1f\n", total / (now() - t0) / 1e6);
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "blast")) {
		int s = sock(argv[2], atoi(argv[3]), &a, 0);
		double end = now() + atof(argv[4]);
		while (now() < end)
			for (int i = 0; i < 64; i++)
				sendto(s, buf, 64000, 0, (struct sockaddr *)&a, sizeof a);
		usleep(100000);
		for (int i = 0; i < 10; i++)
			sendto(s, buf, 1, 0, (struct sockaddr *)&a, sizeof a);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "echo")) {
		int s = sock(NULL, atoi(argv[2]), &a, 1);
		for (;;) {
			long n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
			sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
		}
	}
	if (argc == 5 && !strcmp(argv[1], "ping")) {
		int s = sock(argv[2], atoi(argv[3]), &a, 0), n = atoi(argv[4]);
		for (int i = 0; i < 100; i++)
			sendto(s, buf, 1, 0, (struct sockaddr *)&a, sizeof a), recv(s, buf, 1, 0);
		double t0 = now();
		for (int i = 0; i < n; i++)
			sendto(s, buf, 1, 0, (struct sockaddr *)&a, sizeof a), recv(s, buf, 1, 0);
		printf("%.2f\n", (now() - t0) / n * 1e6);
		return 0;
	}
	fprintf(stderr, "usage: see the comment at the top\n");
	return 2;
}
