/*
 * relay.c: the pipe bridge's data path, a thread of the supervisor.
 *
 * A cross-host round trip used to be four turns of the supervisors'
 * Python (the doorbell, then the datagram, on each side).  This thread
 * does what those turns did for bytes: it owns the region's doorbells
 * (COM2's, and the fast ones of bell.c) and the bridge's socket, and moves
 *   - a ring's bytes, as U frames, into the channel bridge.py routed it to
 *     (uf_relay_route), and
 *   - U frames arriving on a channel into the ring bridge.py said
 *     (uf_relay_deliver), in whole, until a frame is not U or does not fit,
 * wakes the guests that slept on what it moved, and keeps the channels'
 * timers.  Everything else (ends, S frames, held units, links, faults,
 * requests, stdio) stays with bridge.py and the supervisor: the thread
 * wakes the supervisor (uf_relay_efd) when a doorbell is not explained by
 * bytes it forwarded, when frames are left for it, or when a channel dies.
 *
 * One lock: the thread holds it while it works; Python takes it
 * (uf_relay_lock) around everything it does with the endpoint.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../guest/include/unifork_abi.h"
#include "net.h"

#define FRAME       UF_FRAME_HEAD
#define MAX_UNIT    UF_RING_SIZE
#define EVENTS      64                  /* per epoll_wait: the rest come next */
#define LOOK_EVERY  0.05                /* s: a look as if a doorbell rang, when none did */

struct vm {
	int bell;                       /* the supervisor's end of its doorbell */
	struct bell *fast;              /* its fast doorbell (bell.c), or 0 */
	int fastfd;                     /* uf_bell_fd(fast), or -1 */
	volatile struct uf_ctl *ctl;    /* its control page, mapped here */
	int64_t parked;                 /* a request the supervisor holds back */
	uint64_t alarm;                 /* its alarm_real_ns, as the supervisor saw it */
};

struct relay {
	struct ep *ep;
	uint8_t *shm;
	pthread_mutex_t mu;
	pthread_t th;
	int epfd, efd, kick, stop;
	struct chan *route[UF_SHM_RINGS];       /* ring -> channel */
	struct { struct chan *ch; int ring; } dlv[UF_SHM_RINGS];    /* channel -> ring */
	int ndlv;
	struct vm *vms;                 /* (as many as the host runs for the job) */
	int nvms, capvms;
	uint64_t stdio;                 /* rings the host reads (stdout, stderr) */
	uint64_t stdin;                 /* rings the host writes (stdin) */
	uint64_t stdin_waits;           /* ... whose wr_wait the host had raised */
	int dead_seen;
	int moved;                      /* bytes forwarded or delivered since the last doorbell */
	double looked;                  /* when a doorbell (or a look) was last seen to */
	uint64_t armed_rd, armed_wr;    /* rings whose rd_wait (wr_wait) it raised */
	uint64_t ends[UF_SHM_RINGS];    /* each ring's ends as the supervisor saw them */
	uint64_t stats[UF_RELAY_ST_MAX];
	uint8_t frame[FRAME + MAX_UNIT];
};

static volatile struct uf_ring *
ring(struct relay *r, int idx)
{
	return (volatile struct uf_ring *)(r->shm + UF_SHM_RING_OFF(idx));
}

static int
ring_used(struct relay *r, int idx)
{
	return idx >= 0 && idx < UF_SHM_RINGS &&
	    (((volatile struct uf_shm *)r->shm)->used >> idx & 1);
}

/* -- rings, as one of their writers or readers (rings.py's HostRing) ----- */

static void
lock(volatile uint32_t *l)
{
	for (;;) {
		uint32_t free = 0;
		if (__atomic_compare_exchange_n(l, &free, UF_HOST_LOCKER, 0, __ATOMIC_ACQUIRE,
		    __ATOMIC_RELAXED))
			return;
		while (*l)                      /* guests hold it only while they copy */
			__builtin_ia32_pause();
	}
}

static void
unlock(volatile uint32_t *l)
{
	__atomic_store_n(l, 0, __ATOMIC_SEQ_CST);
}

/* Put all of (p, n) in at once, under the writers' lock; 0 if it does not fit. */
static int
write_whole(volatile struct uf_ring *g, const uint8_t *p, size_t n)
{
	uint32_t size = g->size;
	if (size - (g->head - g->tail) < n)
		return 0;
	lock(&g->wlock);
	uint64_t head = g->head;
	if (size - (head - g->tail) < n) {
		unlock(&g->wlock);
		return 0;
	}
	uint64_t off = head & (size - 1), first = size - off < n ? size - off : n;
	memcpy((uint8_t *)g->data + off, p, first);
	memcpy((uint8_t *)g->data, p + first, n - first);
	__atomic_store_n(&g->head, head + n, __ATOMIC_SEQ_CST);
	unlock(&g->wlock);
	return 1;
}

/* Take up to (limit) bytes into (out), under the readers' lock; the count. */
static size_t
read_into(volatile struct uf_ring *g, uint8_t *out, size_t limit)
{
	if (g->head == g->tail)
		return 0;
	lock(&g->rlock);
	uint32_t size = g->size;
	uint64_t tail = g->tail, n = g->head - tail;
	if (n > size)
		n = size;
	if (n > limit)
		n = limit;
	uint64_t off = tail & (size - 1), first = size - off < n ? size - off : n;
	memcpy(out, (const uint8_t *)g->data + off, first);
	memcpy(out + first, (const uint8_t *)g->data, n - first);
	__atomic_store_n(&g->tail, tail + n, __ATOMIC_SEQ_CST);
	unlock(&g->rlock);
	return n;
}

/* -- the data path ------------------------------------------------------ */

/* Ring (idx)'s bytes into its channel, a frame at a time; whether any went. */
int
uf_relay_forward(struct relay *r, int idx)
{
	struct chan *ch = r->route[idx];
	int moved = 0;
	if (!ch || !ring_used(r, idx))
		return 0;
	volatile struct uf_ring *g = ring(r, idx);
	for (;;) {
		/* (room in the window, and the memory for it: else the bytes
		 * wait in the ring) */
		while (uf_chan_room(ch) >= FRAME + MAX_UNIT &&
		    !buf_reserve(&ch->out, FRAME + MAX_UNIT)) {
			size_t n = read_into(g, r->frame + FRAME, MAX_UNIT);
			if (!n)
				break;
			r->frame[0] = UF_FRAME_DATA;
			for (int i = 0; i < 4; i++)
				r->frame[1 + i] = (uint8_t)(n >> 8 * i);
			uf_chan_send(ch, r->frame, FRAME + n);  /* (reserved: it fits) */
			moved = 1;
			r->stats[UF_RELAY_ST_FORWARDED]++;
		}
		if (g->rd_wait)
			return moved;
		/* a doorbell for the next write; bytes that came meanwhile go now */
		__atomic_store_n(&g->rd_wait, 1, __ATOMIC_SEQ_CST);
		r->armed_rd |= 1ull << idx;
		if (g->head == g->tail || uf_chan_room(ch) < FRAME + MAX_UNIT)
			return moved;
	}
}

/* The U frames at the head of (ch)'s input into ring (idx), each in whole;
 * whether what is left (if anything) is the supervisor's: a frame not U.
 * A U frame that does not fit waits for room (the ring's reader rings). */
static int
deliver(struct relay *r, struct chan *ch, int idx)
{
	size_t n;
	const uint8_t *in = (const uint8_t *)uf_chan_inbuf(ch, &n);
	size_t used = 0;
	int mine = 1;
	if (!ring_used(r, idx))
		return 0;               /* (its slot was freed: the supervisor drops the link) */
	volatile struct uf_ring *g = ring(r, idx);
	while (n - used >= FRAME) {
		uint32_t len = in[used + 1] | in[used + 2] << 8 | in[used + 3] << 16 |
		    (uint32_t)in[used + 4] << 24;
		if (in[used] != UF_FRAME_DATA || len > MAX_UNIT) {
			mine = 0;
			break;
		}
		if (n - used < FRAME + len)
			break;          /* the rest is on its way */
		if (!write_whole(g, in + used + FRAME, len)) {
			/* wait for room: a doorbell when the reader makes some */
			__atomic_store_n(&g->wr_wait, 1, __ATOMIC_SEQ_CST);
			r->armed_wr |= 1ull << idx;
			if (!write_whole(g, in + used + FRAME, len))
				break;
		}
		used += FRAME + len;
		r->stats[UF_RELAY_ST_DELIVERED]++;
	}
	if (used)
		uf_chan_consume(ch, used);
	return mine;
}

/* Whether the guest of (ctl) sleeps on something that is there now, in the
 * region at (shm); workers/proc/sleepers.py's rule too (test_native.py). */
int
uf_sleeper_ready(const void *ctl, const void *shm)
{
	const volatile struct uf_ctl *c = ctl;
	const volatile struct uf_shm *h = shm;
	uint32_t what = c->asleep;
	int idx = c->sleep_ring;
	if (what == UF_SLEEP_NONE || what == UF_SLEEP_TIMER)
		return 0;
	if (what == UF_SLEEP_REPLY)
		return c->rep_seq == c->req_seq;
	if (idx < 0 || idx >= UF_SHM_RINGS || !(h->used >> idx & 1))
		return 1;               /* nonsense: wake it, it re-checks */
	const volatile struct uf_ring *g =
	    (const volatile struct uf_ring *)((const uint8_t *)shm + UF_SHM_RING_OFF(idx));
	uint32_t size = g->size;
	if (size == 0 || size > UF_RING_SIZE || (size & (size - 1)))
		return 1;               /* (a ring of a bad size: the same) */
	if (what == UF_SLEEP_READ)
		return g->head != g->tail || g->writers == 0;
	return g->head - g->tail < size || g->readers == 0;
}

/* Wake the guests whose wait is over. */
static void
wake_sleepers(struct relay *r)
{
	for (int i = 0; i < r->nvms; i++)
		if (uf_sleeper_ready((const void *)r->vms[i].ctl, r->shm))
			send(r->vms[i].bell, "\1", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static uint64_t
ends(volatile struct uf_ring *g)
{
	return (uint64_t)g->writers << 32 | g->readers; /* (only to see a change) */
}

/* Whether the doorbells rung were for bytes moved since the last ones (or
 * for a wait flag it raised, which a guest lowered to ring them),
 * and nothing the supervisor must see: no request, no new alarm, no end
 * opened or closed, no output, no hungry reader to tell of. */
static int
explained(struct relay *r, int cleared)
{
	if (!r->moved && !cleared)
		return 0;
	for (int i = 0; i < r->nvms; i++) {
		volatile struct uf_ctl *c = r->vms[i].ctl;
		if (c->req_seq != c->rep_seq && c->req_seq != r->vms[i].parked)
			return 0;
		if (c->alarm_real_ns != r->vms[i].alarm)
			return 0;
	}
	uint64_t used = ((volatile struct uf_shm *)r->shm)->used;
	for (int i = 0; i < UF_SHM_RINGS; i++) {
		if (!(used >> i & 1))
			continue;
		volatile struct uf_ring *g = ring(r, i);
		if (ends(g) != r->ends[i])
			return 0;
		if ((r->stdio >> i & 1) && g->head != g->tail)
			return 0;
		if ((r->stdin_waits >> i & 1) && !g->wr_wait)
			return 0;       /* a guest made room for the host's input */
		if ((g->bridged & UF_BRIDGED_TELL) && g->hungry)
			return 0;       /* the bridge tells the far side of hunger */
	}
	return 1;
}

/* The supervisor is about to look at everything: what it will have seen. */
static void
seen(struct relay *r)
{
	for (int i = 0; i < r->nvms; i++)
		r->vms[i].alarm = r->vms[i].ctl->alarm_real_ns;
	for (int i = 0; i < UF_SHM_RINGS; i++)
		r->ends[i] = ends(ring(r, i));
}

/* The fast doorbell whose epoll fd is (fd), if it is one. */
static struct bell *
fast_bell(struct relay *r, int fd)
{
	for (int i = 0; i < r->nvms; i++)
		if (r->vms[i].fastfd == fd)
			return r->vms[i].fast;
	return 0;
}

/* Take a doorbell's bytes (they carry no data).  At its end (the VM's QEMU
 * is gone) it leaves the thread's watch: it would be readable for ever. */
static void
drain(struct relay *r, int fd)
{
	char junk[256];
	ssize_t n;
	while ((n = recv(fd, junk, sizeof junk, MSG_DONTWAIT)) > 0)
		;
	if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
		epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, 0);
}

static void *
run(void *arg)
{
	struct relay *r = arg;
	struct epoll_event evs[EVENTS];
	struct timespec wait, *timeout = 0;     /* 0: until something comes */
	for (;;) {
		int n = epoll_pwait2(r->epfd, evs, EVENTS, timeout, 0);
		pthread_mutex_lock(&r->mu);
		if (r->stop)
			break;
		r->stats[UF_RELAY_ST_TURNS]++;
		/* rang: a doorbell; need: the supervisor must look; changed: a
		 * ring moved under a guest that may sleep on it */
		int rang = 0, need = 0, changed = 0;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == r->kick) {
				uint64_t v;
				if (read(fd, &v, 8) < 0) {
					/* nothing: it only woke us */
				}
			} else if (fd != r->ep->sock) {
				struct bell *fast = fast_bell(r, fd);
				if (fast)
					rang |= uf_bell_take(fast);
				else
					drain(r, fd), rang = 1;
			}
		}
		/* A doorbell can be lost (QEMU takes a pending kick for itself
		 * when it stops the device, bell.c): every LOOK_EVERY without
		 * one, look as if one had rung, and wake the supervisor only if
		 * something is left unexplained.  A lost doorbell then costs a
		 * delay, never a hang. */
		double now = uf_now();
		int look = !rang && now - r->looked >= LOOK_EVERY;
		if (rang || look)
			r->looked = now;
		int cleared = look;             /* a guest lowered a flag of ours: it rang */
		if (rang)
			for (int i = 0; i < UF_SHM_RINGS; i++) {
				uint64_t bit = 1ull << i;
				if ((r->armed_rd & bit) && !ring(r, i)->rd_wait)
					cleared = 1, r->armed_rd &= ~bit;
				if ((r->armed_wr & bit) && !ring(r, i)->wr_wait)
					cleared = 1, r->armed_wr &= ~bit;
			}
		uf_ep_receive(r->ep, now);
		for (int i = 0; i < r->ep->nchans; i++) {
			struct chan *ch = r->ep->chans[i];
			if (!ch->news && !ch->in.len)
				continue;       /* (news: the supervisor clears it when it looks) */
			int j = 0, mine = 0;
			while (j < r->ndlv && r->dlv[j].ch != ch)
				j++;
			if (ch->in.len && j < r->ndlv) {
				uint64_t before = r->stats[UF_RELAY_ST_DELIVERED];
				mine = deliver(r, ch, r->dlv[j].ring);
				changed |= r->stats[UF_RELAY_ST_DELIVERED] != before;
				r->moved |= changed;
			}
			if (ch->news && ch->in.len && !mine) {
				need = 1;       /* frames for the supervisor */
				r->stats[UF_RELAY_ST_FOR_FRAMES]++;
			}
			if (ch->want_idle && uf_chan_idle(ch)) {
				ch->want_idle = 0;      /* it waited for that to drop a link */
				need = 1;
			}
		}
		for (int i = 0; i < UF_SHM_RINGS; i++)
			if (r->route[i] && uf_relay_forward(r, i)) {
				r->moved = 1;
				volatile struct uf_ring *g = ring(r, i);
				if (g->wr_wait)         /* a writer sleeps for room */
					g->wr_wait = 0, changed = 1;
			}
		uf_ep_flush(r->ep, now);
		int dead = 0;
		for (int i = 0; i < r->ep->nchans; i++)
			dead += r->ep->chans[i]->dead;
		if (dead != r->dead_seen) {
			need = 1, r->dead_seen = dead;
			r->stats[UF_RELAY_ST_FOR_DEATH]++;
		}
		if (rang || look) {
			if (!explained(r, cleared)) {
				need = 1;
				r->stats[UF_RELAY_ST_FOR_DOORBELL]++;
			}
			if (rang)
				r->moved = 0;
		}
		if (rang || look || changed)
			wake_sleepers(r);
		if (need) {
			uint64_t one = 1;
			seen(r);
			r->stats[UF_RELAY_ST_SUPERVISOR]++;
			if (write(r->efd, &one, 8) < 0) {
				/* full: the supervisor has not looked yet; it will */
			}
		}
		r->stdin_waits = 0;
		for (int i = 0; i < UF_SHM_RINGS; i++)
			if ((r->stdin >> i & 1) && ring(r, i)->wr_wait)
				r->stdin_waits |= 1ull << i;
		double next = fmin(uf_ep_next_event(r->ep, now), r->looked + LOOK_EVERY);
		timeout = 0;            /* (to the microsecond: ACK_DELAY is 2 ms) */
		if (!isinf(next)) {
			double in = fmax(0, next - now);
			wait.tv_sec = (time_t)in;
			wait.tv_nsec = (long)((in - (double)wait.tv_sec) * 1e9);
			timeout = &wait;
		}
		pthread_mutex_unlock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return 0;
}

/* -- for bridge.py ------------------------------------------------------ */

struct relay *
uf_relay_new(struct ep *ep, void *shm)
{
	struct relay *r = calloc(1, sizeof *r);
	if (!r)
		return 0;
	r->ep = ep;
	r->shm = shm;
	seen(r);                        /* the rings' ends as the supervisor knows them */
	pthread_mutex_init(&r->mu, 0);
	r->epfd = epoll_create1(EPOLL_CLOEXEC);
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	r->kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };
	ev.data.fd = ep->sock;
	epoll_ctl(r->epfd, EPOLL_CTL_ADD, ep->sock, &ev);
	ev.data.fd = r->kick;
	epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->kick, &ev);
	if (r->epfd < 0 || r->efd < 0 || r->kick < 0 || uf_thread_start(&r->th, run, r)) {
		close(r->epfd), close(r->efd), close(r->kick);
		free(r);
		return 0;
	}
	return r;
}

void
uf_relay_lock(struct relay *r)
{
	pthread_mutex_lock(&r->mu);
}

/* Let the thread go on; (kick): have it look again (timers, new routes). */
void
uf_relay_unlock(struct relay *r, int kick)
{
	pthread_mutex_unlock(&r->mu);
	if (kick) {
		uint64_t one = 1;
		if (write(r->kick, &one, 8) < 0) {
			/* full: it has a wake-up pending anyway */
		}
	}
}

int
uf_relay_efd(struct relay *r)
{
	return r->efd;
}

void
uf_relay_route(struct relay *r, int idx, struct chan *ch)
{
	r->route[idx] = ch;
}

/* Wake the supervisor once everything sent on (ch) is acknowledged. */
void
uf_relay_want_idle(struct relay *r, struct chan *ch)
{
	(void)r;
	ch->want_idle = 1;
}

void
uf_relay_deliver(struct relay *r, struct chan *ch, int idx)
{
	int j = 0;
	while (j < r->ndlv && r->dlv[j].ch != ch)
		j++;
	if (idx < 0) {
		if (j < r->ndlv)
			r->dlv[j] = r->dlv[--r->ndlv];
		return;
	}
	if (j == r->ndlv) {
		if (r->ndlv == UF_SHM_RINGS)
			return;         /* (more links than rings: the supervisor does it) */
		r->ndlv++;
	}
	r->dlv[j].ch = ch;
	r->dlv[j].ring = idx;
}

static int
has_fd(const int *fds, int n, int fd)
{
	for (int i = 0; i < n; i++)
		if (fds[i] == fd)
			return 1;
	return 0;
}

/* The VMs of the region now: their doorbells (COM2's socket, and the fast
 * doorbell's epoll fd if it has one: 0 in fasts[i] if not) become the
 * thread's; those it had already stay in its epoll, those gone leave it.
 * -1: no memory (nothing changed). */
int
uf_relay_vms(struct relay *r, int n, const int *bells, const uint64_t *fasts,
    const uint64_t *ctls, const int64_t *parked, uint64_t stdio, uint64_t stdin)
{
	if (n > r->capvms) {
		struct vm *v = realloc(r->vms, n * sizeof *v);
		if (!v)
			return -1;
		r->vms = v, r->capvms = n;
	}
	int old[2 * r->nvms + 1], nold = 0, now[2 * n + 1], nnow = 0;
	for (int i = 0; i < r->nvms; i++) {
		old[nold++] = r->vms[i].bell;
		if (r->vms[i].fast)
			old[nold++] = r->vms[i].fastfd;
	}
	for (int i = 0; i < n; i++) {
		now[nnow++] = bells[i];
		if (fasts[i])
			now[nnow++] = uf_bell_fd((struct bell *)fasts[i]);
	}
	for (int i = 0; i < nold; i++)
		if (!has_fd(now, nnow, old[i]))
			epoll_ctl(r->epfd, EPOLL_CTL_DEL, old[i], 0);
	for (int i = 0; i < nnow; i++)
		if (!has_fd(old, nold, now[i])) {
			struct epoll_event ev = { .events = EPOLLIN };
			ev.data.fd = now[i];
			epoll_ctl(r->epfd, EPOLL_CTL_ADD, now[i], &ev);
		}
	for (int i = 0; i < n; i++) {
		volatile struct uf_ctl *c = (volatile struct uf_ctl *)ctls[i];
		struct bell *fast = (struct bell *)fasts[i];
		r->vms[i] = (struct vm){ bells[i], fast, fast ? uf_bell_fd(fast) : -1, c, parked[i],
		    c->alarm_real_ns };
	}
	r->nvms = n;
	r->stdio = stdio;
	r->stdin = stdin;
	seen(r);
	return 0;
}

uint64_t *
uf_relay_stats(struct relay *r)
{
	return r->stats;
}

void
uf_relay_free(struct relay *r)
{
	pthread_mutex_lock(&r->mu);
	r->stop = 1;
	pthread_mutex_unlock(&r->mu);
	uint64_t one = 1;
	if (write(r->kick, &one, 8) < 0) {
		/* it wakes anyway */
	}
	pthread_join(r->th, 0);
	close(r->epfd), close(r->efd), close(r->kick);
	free(r->vms);
	free(r);
}
