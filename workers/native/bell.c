/*
 * bell.c: the host's end of the fast doorbell (guest/include/unifork_abi.h,
 * "The fast doorbell").  A vhost-user backend that answers QEMU for a
 * vhost-user-blk device and keeps nothing but its queue's kick eventfd,
 * which KVM signals when the guest writes the queue's notify register.
 * No block device is served: the guest never queues a request.
 *
 * One thread per process serves every VM's vhost-user socket, because QEMU
 * waits for some answers while the guest waits too: as the device is made
 * (QEMU's start), when the guest starts it, when a fork stops and restarts
 * it.  A VM's bell is an epoll fd holding its kick eventfd of the moment:
 * the bridge's thread (relay.c) watches that fd and takes the kicks with
 * uf_bell_take().  QEMU hands over a new kick eventfd whenever it restarts
 * the device (each fork, in both VMs), so it is swapped under the bell's
 * lock, and the new one is signalled at once: a doorbell rung while the
 * device was stopping may have been left in the old one.
 *
 * The protocol is QEMU's docs/interop/vhost-user.rst: a message is a
 * 12-byte header (request, flags, size), then (size) bytes, with file
 * descriptors in the header's ancillary data.  We offer what vhost-user-blk
 * insists on (CONFIG), nothing else: no REPLY_ACK, so QEMU waits only for
 * GETs; no dirty logging (nothing migrates a VM: a fork fills a parked one).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net.h"

enum {                                  /* the requests we look at */
	GET_FEATURES = 1, GET_VRING_BASE = 11, SET_VRING_KICK = 12,
	GET_PROTOCOL_FEATURES = 15, GET_QUEUE_NUM = 17, GET_CONFIG = 24,
};
#define VERSION         1u              /* header flags */
#define IS_REPLY        4u
#define NEED_REPLY      8u
#define F_PROTOCOL      (1ull << 30)
#define F_VERSION_1     (1ull << 32)
#define P_CONFIG        (1ull << 9)
#define KICK_NO_FD      0x100           /* SET_VRING_KICK: polling, no eventfd */
#define MAX_FDS         16
#define MAX_PAYLOAD     4096

struct bell {
	uint64_t id;                    /* the thread's epoll names it so (not by address:
	                                   a freed bell's may be a new one's by then) */
	int sock;                       /* our end of the VM's vhost-user socket */
	int epfd;                       /* holds kick: what relay.c watches */
	int kick;                       /* the queue's kick eventfd, -1: none yet */
	pthread_mutex_t mu;             /* kick, against uf_bell_take */
	struct bell *next;              /* the thread's list */
};

struct bells {
	int epfd;                       /* the bells' sockets, and stop */
	int stop;                       /* an eventfd */
	pthread_t th;
	pthread_mutex_t mu;             /* the list, and a message being served */
	struct bell *list;
	uint64_t ids;                   /* the last bell's id (0: stop) */
	uint64_t stats[UF_BELLS_ST_MAX];
};

struct msg {
	uint32_t req, flags, size;
	uint8_t p[MAX_PAYLOAD];
} __attribute__((packed));

static void
reply(struct bell *b, uint32_t req, const void *p, uint32_t size)
{
	struct msg m = { .req = req, .flags = VERSION | IS_REPLY, .size = size };
	memcpy(m.p, p, size);
	ssize_t n;
	do
		n = send(b->sock, &m, 12 + size, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	/* (n < 0: QEMU is gone; its hang-up comes next) */
}

static void
reply_u64(struct bell *b, uint32_t req, uint64_t v)
{
	reply(b, req, &v, 8);
}

/* The device (re)started with kick eventfd (fd): it is the bell's now. */
static void
install(struct bell *b, int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	pthread_mutex_lock(&b->mu);
	if (b->kick >= 0) {
		epoll_ctl(b->epfd, EPOLL_CTL_DEL, b->kick, 0);
		close(b->kick);
	}
	b->kick = fd;
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev);
	pthread_mutex_unlock(&b->mu);
	uint64_t one = 1;
	if (write(fd, &one, 8) < 0) {
		/* a full counter: it is rung anyway */
	}
}

/* Read one message (and its fds) and answer it.  -1: the socket is over
 * (QEMU hung up, or sent what we cannot read). */
static int
serve(struct bells *bs, struct bell *b)
{
	struct msg m;
	int fds[MAX_FDS], nfds = 0;
	char ctl[CMSG_SPACE(MAX_FDS * sizeof(int))];
	struct iovec iov = { &m, 12 };
	struct msghdr h = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
	    .msg_controllen = sizeof ctl };
	ssize_t n;
	/* Never wait here (the lock is held): QEMU writes a message whole,
	 * header and payload in one write, so the payload is there too. */
	do
		n = recvmsg(b->sock, &h, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return 0;
	/* Only a call that succeeded sets msg_controllen: after a failed one
	 * (ECONNRESET, as QEMU is killed) ctl holds whatever the stack held,
	 * and "descriptors" read from it would be closed: anybody's. */
	if (n > 0)
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (int i = 0; i < k && nfds < MAX_FDS; i++)
					memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int),
					    sizeof(int));
			}
	int ok = n == 12 && !(h.msg_flags & MSG_CTRUNC) && m.size <= MAX_PAYLOAD &&
	    (m.size == 0 || recv(b->sock, m.p, m.size, MSG_DONTWAIT) == (ssize_t)m.size);
	if (!ok) {
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		bs->stats[n == 0 ? UF_BELLS_ST_HANGUPS : UF_BELLS_ST_REFUSED]++;
		return -1;
	}
	bs->stats[UF_BELLS_ST_MESSAGES]++;
	int answered = 1;
	uint64_t u64 = 0;
	if (m.size >= 8)
		memcpy(&u64, m.p, 8);
	switch (m.req) {
	case GET_FEATURES:
		reply_u64(b, m.req, F_VERSION_1 | F_PROTOCOL);
		break;
	case GET_PROTOCOL_FEATURES:
		reply_u64(b, m.req, P_CONFIG);
		break;
	case GET_QUEUE_NUM:
		reply_u64(b, m.req, 1);
		break;
	case GET_VRING_BASE:                    /* stopping: the ring stays where it is */
		reply(b, m.req, (uint32_t[]){ (uint32_t)u64, 0 }, 8);
		break;
	case GET_CONFIG: {                      /* virtio_blk_config: capacity 1 sector */
		uint32_t size;
		memcpy(&size, m.p + 4, 4);
		if (m.size < 12 || size > MAX_PAYLOAD - 12)
			return bs->stats[UF_BELLS_ST_REFUSED]++, -1;
		memset(m.p + 12, 0, size);
		m.p[12] = 1;
		reply(b, m.req, m.p, 12 + size);
		break;
	}
	case SET_VRING_KICK:
		if (!(u64 & KICK_NO_FD) && nfds == 1) {
			install(b, fds[0]);
			bs->stats[UF_BELLS_ST_KICKS]++;
			nfds = 0;
		}
		answered = 0;
		break;
	default:                                /* the rest only inform a real device */
		answered = 0;
	}
	if (!answered && (m.flags & NEED_REPLY))
		reply_u64(b, m.req, 0);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	return 0;
}

static struct bell *
find(struct bells *bs, uint64_t id)
{
	for (struct bell *b = bs->list; b; b = b->next)
		if (b->id == id)
			return b;
	return 0;
}

static void *
run(void *arg)
{
	struct bells *bs = arg;
	struct epoll_event evs[16];
	for (;;) {
		int n = epoll_wait(bs->epfd, evs, 16, -1);
		for (int i = 0; i < n; i++) {
			if (!evs[i].data.u64)
				return 0;
			pthread_mutex_lock(&bs->mu);
			struct bell *b = find(bs, evs[i].data.u64);
			if (b && b->sock >= 0 && serve(bs, b) < 0) {
				/* QEMU is gone (or mad): the socket would be readable for ever */
				epoll_ctl(bs->epfd, EPOLL_CTL_DEL, b->sock, 0);
				close(b->sock);
				b->sock = -1;
			}
			pthread_mutex_unlock(&bs->mu);
		}
	}
}

struct bells *
uf_bells_new(void)
{
	struct bells *bs = calloc(1, sizeof *bs);
	if (!bs)
		return 0;
	bs->epfd = epoll_create1(EPOLL_CLOEXEC);
	bs->stop = eventfd(0, EFD_CLOEXEC);
	pthread_mutex_init(&bs->mu, 0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0 };
	if (bs->epfd < 0 || bs->stop < 0 || epoll_ctl(bs->epfd, EPOLL_CTL_ADD, bs->stop, &ev) ||
	    uf_thread_start(&bs->th, run, bs)) {
		close(bs->epfd), close(bs->stop);
		free(bs);
		return 0;
	}
	return bs;
}

/* A VM's bell on vhost-user socket (sock), which it owns from now on.
 * Before QEMU starts: it asks at once. */
struct bell *
uf_bell_new(struct bells *bs, int sock)
{
	struct bell *b = calloc(1, sizeof *b);
	if (!b)
		return 0;
	b->sock = sock;
	b->kick = -1;
	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	pthread_mutex_init(&b->mu, 0);
	pthread_mutex_lock(&bs->mu);
	b->id = ++bs->ids;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = b->id };
	int bad = b->epfd < 0 || epoll_ctl(bs->epfd, EPOLL_CTL_ADD, sock, &ev);
	if (!bad)
		b->next = bs->list, bs->list = b;
	pthread_mutex_unlock(&bs->mu);
	if (bad) {
		close(b->epfd);
		free(b);
		return 0;
	}
	return b;
}

int
uf_bell_fd(struct bell *b)
{
	return b->epfd;
}

/* Take the kicks: 1 if the guest rang since the last time. */
int
uf_bell_take(struct bell *b)
{
	uint64_t v = 0;
	pthread_mutex_lock(&b->mu);
	int rang = b->kick >= 0 && read(b->kick, &v, 8) == 8;
	pthread_mutex_unlock(&b->mu);
	return rang;
}

void
uf_bell_free(struct bells *bs, struct bell *b)
{
	pthread_mutex_lock(&bs->mu);
	for (struct bell **p = &bs->list; *p; p = &(*p)->next)
		if (*p == b) {
			*p = b->next;
			break;
		}
	if (b->sock >= 0) {
		epoll_ctl(bs->epfd, EPOLL_CTL_DEL, b->sock, 0);
		close(b->sock);
	}
	pthread_mutex_unlock(&bs->mu);
	if (b->kick >= 0)
		close(b->kick);
	close(b->epfd);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

uint64_t *
uf_bells_stats(struct bells *bs)
{
	return bs->stats;
}

void
uf_bells_free(struct bells *bs)
{
	uint64_t one = 1;
	if (write(bs->stop, &one, 8) < 0) {
		/* it stops anyway */
	}
	pthread_join(bs->th, 0);
	while (bs->list)
		uf_bell_free(bs, bs->list);
	close(bs->epfd), close(bs->stop);
	free(bs);
}
