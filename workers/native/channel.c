/*
 * channel.c: reliable, ordered, authenticated and encrypted byte channels
 * over UDP, the transport of the pipe bridge.  The protocol (datagram
 * format, keys, selective repeat, windows, timers) is described in
 * workers/pipes/channel.py, whose classes are this file's face in Python.
 *
 * Nothing here blocks or takes a lock: the caller (Python under the
 * endpoint's lock, or relay.c's thread holding it) owns the endpoint.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "net.h"

static const uint8_t MAGIC[4] = { 'U', 'F', 'B', '2' };
#define RTO_MIN     0.02
#define RTO_MAX     1.0
#define ACK_DELAY   0.002       /* a lone segment's ACK waits this long for a ride */
#define ACK_BYTES   (16u << 10) /* ... unless this much is unacknowledged */
#define PING_EVERY  1.0
#define MSS_ROUND   32          /* segments between two looks at the segment size */

#define MIN(a, b)   ((a) < (b) ? (a) : (b))
#define MAX(a, b)   ((a) > (b) ? (a) : (b))

double
uf_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* -- buffers and small arrays ------------------------------------------- */

int
buf_reserve(struct buf *b, size_t more)
{
	if (b->off + b->len + more <= b->cap)
		return 0;
	if (b->off && b->off >= b->len) {
		/* slide the bytes down first, when fewer than the room it makes
		 * (else each append could move a window's worth) */
		memmove(b->p, b->p + b->off, b->len);
		b->off = 0;
		if (b->len + more <= b->cap)
			return 0;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->off + b->len + more)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p)
		return -1;
	b->p = p, b->cap = cap;
	return 0;
}

uint8_t *
buf_data(struct buf *b)
{
	return b->p + b->off;
}

static int
buf_append(struct buf *b, const uint8_t *data, size_t n)
{
	if (n == 0)
		return 0;
	if (buf_reserve(b, n))
		return -1;
	memcpy(b->p + b->off + b->len, data, n);
	b->len += n;
	return 0;
}

void
buf_drop(struct buf *b, size_t n)
{
	if (n >= b->len)
		b->off = b->len = 0;
	else
		b->off += n, b->len -= n;
}

/* Room for one more element in an array of (size)-byte elements. */
static int
grow(void **a, int n, int *cap, size_t size)
{
	if (n < *cap)
		return 0;
	int c = *cap ? 2 * *cap : 8;
	void *p = realloc(*a, c * size);
	if (!p)
		return -1;
	*a = p, *cap = c;
	return 0;
}

/* -- the user's side ---------------------------------------------------- */

static size_t
wnd(struct chan *ch)
{
	return ch->in.len < WINDOW ? WINDOW - ch->in.len : 0;
}

size_t
uf_chan_room(struct chan *ch)
{
	return ch->out.len < WINDOW ? WINDOW - ch->out.len : 0;
}

/* Queue (data); -1 (nothing queued) when there is no memory for it. */
int
uf_chan_send(struct chan *ch, const uint8_t *data, size_t n)
{
	return buf_append(&ch->out, data, n);
}

void
uf_chan_consume(struct chan *ch, size_t n)
{
	size_t before = wnd(ch);
	buf_drop(&ch->in, n);
	if (before < WINDOW / 4 && WINDOW / 4 <= wnd(ch))
		ch->ack_due = 1;        /* the window opened: tell the sender */
}

int
uf_chan_idle(struct chan *ch)
{
	return ch->snd_una == ch->snd_nxt && ch->out.len == 0;
}

static void
acked(struct chan *ch)
{
	ch->ack_due = 0;
	ch->ack_at = -1;
	ch->unacked_segs = 0;
	ch->unacked_bytes = 0;
}

/* -- datagrams out ------------------------------------------------------ */

static void
put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> 8 * i);
}

static uint64_t
get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void
nonce(uint8_t iv[12], uint64_t n)
{
	put64(iv, n);
	iv[8] = iv[9] = iv[10] = iv[11] = 0;
}

static void
transmit(struct ep *ep, struct chan *ch, int kind, uint64_t seq, const uint8_t *payload,
    size_t n)
{
	uint8_t *head = ep->tx, *sealed = ep->tx + HDR_SIZE, iv[12];
	int len;
	ch->sent++;
	memcpy(head, MAGIC, 4);
	memcpy(head + 4, ch->cid, 16);
	head[20] = (uint8_t)kind;
	put64(head + 21, seq);
	put64(head + 29, ch->rcv_nxt);
	uint32_t w = (uint32_t)wnd(ch);
	for (int i = 0; i < 4; i++)
		head[37 + i] = (uint8_t)(w >> 8 * i);
	put64(head + 41, ch->sent);
	ch->spoke = uf_now();
	if (kind == ACK)
		ep->stats[UF_EP_ST_ACKS]++;
	if (ep->filter && ep->filter(kind, seq))
		return;                 /* tests: lost on the way */
	nonce(iv, ch->sent);
	EVP_EncryptInit_ex(ch->seal, NULL, NULL, NULL, iv);
	EVP_EncryptUpdate(ch->seal, NULL, &len, head, HDR_SIZE);
	if (n)
		EVP_EncryptUpdate(ch->seal, sealed, &len, payload, (int)n);
	EVP_EncryptFinal_ex(ch->seal, sealed + n, &len);
	EVP_CIPHER_CTX_ctrl(ch->seal, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, sealed + n);
	uint8_t via[6];
	struct iovec iov[2] = { { via, 6 }, { ep->tx, HDR_SIZE + n + TAG_SIZE } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
	if (ep->has_relay) {            /* the relay learns where it goes */
		memcpy(via, &ch->peer.sin_addr, 4);
		memcpy(via + 4, &ch->peer.sin_port, 2);
		m.msg_name = &ep->relay;
	} else {
		m.msg_iov = iov + 1;
		m.msg_iovlen = 1;
		m.msg_name = &ch->peer;
	}
	m.msg_namelen = sizeof(struct sockaddr_in);
	if (sendmsg(ep->sock, &m, MSG_DONTWAIT) >= 0)
		ep->stats[UF_EP_ST_SENT]++;
	/* else: a full socket buffer is a loss like any; an ICMP error for an
	 * earlier datagram (ECONNREFUSED...) says nothing about this one */
}

static void
lost(struct ep *ep, struct chan *ch, int timeout)
{
	ch->cwnd = MAX(2ull * ch->mss, ch->cwnd / 2);
	ch->probing = 0;
	if (timeout) {
		ep->stats[UF_EP_ST_TIMEOUTS]++;
		ch->mss = MAX(MSS_MIN, ch->mss / 4);
		ch->rto = MIN(RTO_MAX, ch->rto * 2);
		ch->snd_nxt = ch->snd_una;      /* go back (past what the peer holds) */
		ch->recovering = 0;
	} else
		ep->stats[UF_EP_ST_RECOVERIES]++;
}

/* Send the bytes from (seq), one segment, not past (upto, 0: no limit). */
static uint64_t
segment(struct ep *ep, struct chan *ch, uint64_t seq, uint64_t upto)
{
	uint64_t off = seq - ch->snd_una;
	uint64_t n = ch->mss;
	if (upto && upto - seq < n)
		n = upto - seq;
	if (off + n > ch->out.len)
		n = ch->out.len - off;
	if (seq < ch->snd_max) {
		ep->stats[UF_EP_ST_RETRANSMITS]++;
		ch->round_resent++;
	}
	if (++ch->round_sent == MSS_ROUND) {
		if (ch->round_resent * 4 > MSS_ROUND)
			ch->mss = MAX(MSS_MIN, ch->mss / 2);
		else if (ch->round_resent * 20 < MSS_ROUND)
			ch->mss = MIN(MSS_MAX, ch->mss * 2);
		ch->round_sent = ch->round_resent = 0;
	}
	transmit(ep, ch, DATA, seq, buf_data(&ch->out) + off, n);
	return n;
}

/* The first byte at or after (pos) the peer does not hold, and where the
 * next range it holds begins (*next = 0: nothing known beyond). */
static uint64_t
hole(struct chan *ch, uint64_t pos, uint64_t *next)
{
	int lo = 0, hi = ch->nsacked;
	while (lo < hi) {               /* the first range ending past pos */
		int mid = (lo + hi) / 2;
		if (ch->sacked[mid].end <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == ch->nsacked) {
		*next = 0;
		return pos;
	}
	if (pos < ch->sacked[lo].start) {
		*next = ch->sacked[lo].start;
		return pos;
	}
	*next = lo + 1 < ch->nsacked ? ch->sacked[lo + 1].start : 0;
	return ch->sacked[lo].end;
}

static uint64_t
sacked_bytes(struct chan *ch)
{
	uint64_t n = 0;
	for (int i = 0; i < ch->nsacked; i++)
		n += ch->sacked[i].end - ch->sacked[i].start;
	return n;
}

static struct resend *
resent_at(struct chan *ch, uint64_t seq)
{
	for (int i = 0; i < ch->nresent; i++)
		if (ch->resent[i].seq == seq)
			return &ch->resent[i];
	return 0;
}

static double
again_after(struct chan *ch)
{
	return MAX(2 * ch->srtt, 0.002);
}

/* In a recovery: send the holes below the highest SACKed byte, each
 * segment of them once a round trip at most. */
static void
resend_holes(struct ep *ep, struct chan *ch, double now)
{
	uint64_t top = ch->nsacked ? ch->sacked[ch->nsacked - 1].end : ch->snd_una;
	top = MIN(top, ch->snd_nxt);
	uint64_t pos = ch->snd_una, next;
	while (pos < top) {
		pos = hole(ch, pos, &next);
		if (next == 0 || pos >= top)
			break;
		struct resend *r = resent_at(ch, pos);
		if (r && now - r->at < again_after(ch)) {
			pos = MIN(next, pos + ch->mss);     /* just resent: not yet */
			continue;
		}
		if (!r) {
			if (grow((void **)&ch->resent, ch->nresent, &ch->capresent, sizeof *r))
				return;
			r = &ch->resent[ch->nresent++];
			r->seq = pos;
		}
		r->at = now;
		pos += segment(ep, ch, pos, next);
		acked(ch);
	}
}

/* SACK blocks for an ACK: what arrived out of order, lowest first. */
static size_t
sack(struct chan *ch, uint8_t *p)
{
	int n = 0;
	uint64_t s = 0, e = 0;
	for (int i = 0; i < ch->nooo; i++) {
		uint64_t seq = ch->ooo[i].seq, end = seq + ch->ooo[i].n;
		if (n && seq <= e) {
			e = MAX(e, end);
			put64(p + 16 * (n - 1) + 8, e);
			continue;
		}
		if (n == MAX_SACK)
			break;
		s = seq, e = end;
		put64(p + 16 * n, s);
		put64(p + 16 * n + 8, e);
		n++;
	}
	return 16 * (size_t)n;
}

static void
send_ack(struct ep *ep, struct chan *ch)
{
	uint8_t blocks[16 * MAX_SACK];
	size_t n = sack(ch, blocks);
	transmit(ep, ch, ACK, ch->snd_nxt, blocks, n);
	acked(ch);
}

void
uf_chan_flush(struct ep *ep, struct chan *ch, double now)
{
	if (ch->dead)
		return;
	if (ch->closing >= 0) {         /* dropped: only answer what still comes */
		if (ch->ack_due && ch->has_peer)
			send_ack(ep, ch);
		return;
	}
	if (now - ch->heard > ch->dead_after) {
		ch->dead = 1;           /* (or never heard from at all) */
		return;
	}
	if (!ch->has_peer)
		return;
	if (ch->timer >= 0 && now >= ch->timer) {
		lost(ep, ch, 1);
		ch->timer = -1;
		if (ch->peer_wnd == 0) {
			transmit(ep, ch, PING, ch->snd_nxt, 0, 0);   /* probe the window */
			ch->timer = now + ch->rto;
		}
	}
	if (ch->recovering)
		resend_holes(ep, ch, now);
	uint64_t limit = ch->snd_una + MIN(ch->cwnd + sacked_bytes(ch), ch->peer_wnd);
	uint64_t end = ch->snd_una + ch->out.len, next;
	while (ch->snd_nxt < MIN(limit, end)) {
		uint64_t pos = hole(ch, ch->snd_nxt, &next);
		if (pos != ch->snd_nxt) {       /* what the peer holds is not resent */
			ch->snd_nxt = pos;
			continue;
		}
		if (!ch->probing && ch->snd_nxt >= ch->snd_max) {
			ch->probing = 1;
			ch->probe_seq = ch->snd_nxt + 1;
			ch->probe_at = now;
		}
		ch->snd_nxt += segment(ep, ch, ch->snd_nxt, next);
		ch->snd_max = MAX(ch->snd_max, ch->snd_nxt);
		acked(ch);              /* DATA carries the ACK */
	}
	if (ch->snd_nxt > ch->snd_una && ch->timer < 0)
		ch->timer = now + ch->rto;
	if (ch->snd_nxt < end && ch->peer_wnd == 0 && ch->timer < 0)
		ch->timer = now + ch->rto;
	if (ch->ack_due || (ch->ack_at >= 0 && now >= ch->ack_at))
		send_ack(ep, ch);
	else if (now - ch->spoke > PING_EVERY ||
	    (now - ch->heard > PING_EVERY && now - ch->spoke > PING_EVERY / 4))
		transmit(ep, ch, PING, ch->snd_nxt, 0, 0);   /* (a silent peer: 4 a second) */
}

/* -- datagrams in ------------------------------------------------------- */

static void
on_ack(struct chan *ch, uint64_t ack, uint64_t w, double now)
{
	if (ack > ch->snd_max || ack < ch->snd_una)
		return;                 /* from the future (bogus) or the past (replay) */
	ch->peer_wnd = w;
	if (ack > ch->snd_nxt)          /* sent before a timeout went back: not again */
		ch->snd_nxt = ack;
	if (ack <= ch->snd_una)
		return;
	if (ch->probing && ack >= ch->probe_seq) {
		double sample = now - ch->probe_at;
		ch->srtt = ch->srtt == 0 ? sample : 0.875 * ch->srtt + 0.125 * sample;
		ch->probing = 0;
	}
	ch->rto = MIN(RTO_MAX, MAX(RTO_MIN, 3 * ch->srtt));
	buf_drop(&ch->out, ack - ch->snd_una);
	ch->snd_una = ack;
	int i = 0;
	while (i < ch->nsacked && ch->sacked[i].end <= ack)
		i++;
	memmove(ch->sacked, ch->sacked + i, (ch->nsacked - i) * sizeof *ch->sacked);
	ch->nsacked -= i;
	if (ch->nsacked && ch->sacked[0].start < ack)
		ch->sacked[0].start = ack;
	if (ch->recovering && ack >= ch->recover)
		ch->recovering = 0;     /* every hole of that loss is filled */
	int k = 0;
	for (int j = 0; j < ch->nresent; j++)
		if (ch->resent[j].seq >= ack)
			ch->resent[k++] = ch->resent[j];
	ch->nresent = k;
	ch->cwnd = MIN(WINDOW, ch->cwnd + ch->mss);
	ch->timer = ch->snd_nxt > ch->snd_una ? now + ch->rto : -1;
}

static int
by_start(const void *a, const void *b)
{
	const struct range *x = a, *y = b;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

/* The peer holds these ranges past our snd_una: note them; a hole below
 * them starts a recovery (its holes are resent by flush). */
static void
on_sack(struct ep *ep, struct chan *ch, const uint8_t *p, size_t n)
{
	if (n % 16 || n > 16 * MAX_SACK)
		return;
	for (size_t i = 0; i < n; i += 16) {
		uint64_t start = MAX(get64(p + i), ch->snd_una), end = get64(p + i + 8);
		if (!(start < end && end <= ch->snd_max))
			continue;       /* old, or bogus */
		if (grow((void **)&ch->sacked, ch->nsacked, &ch->capsacked, sizeof(struct range)))
			return;
		ch->sacked[ch->nsacked++] = (struct range){ start, end };
	}
	qsort(ch->sacked, ch->nsacked, sizeof(struct range), by_start);
	int m = 0;
	for (int i = 0; i < ch->nsacked; i++) {
		if (m && ch->sacked[i].start <= ch->sacked[m - 1].end)
			ch->sacked[m - 1].end = MAX(ch->sacked[m - 1].end, ch->sacked[i].end);
		else
			ch->sacked[m++] = ch->sacked[i];
	}
	ch->nsacked = m;
	if (m && !ch->recovering) {
		lost(ep, ch, 0);
		ch->recovering = 1;
		ch->recover = ch->snd_nxt;
	}
}

/* (data) is the opened payload.  The ACK waits up to ACK_DELAY for data
 * going back to carry it, except for anything out of order and for every
 * second segment of ACK_BYTES or more (each one is a datagram, and a turn
 * of the peer's worker: on a ping-pong over two pipes, one per round trip). */
void
uf_chan_on_data(struct ep *ep, struct chan *ch, uint64_t seq, const uint8_t *data, size_t n)
{
	ch->unacked_segs++;
	ch->unacked_bytes += n;
	if ((ch->unacked_segs >= 2 && ch->unacked_bytes >= ACK_BYTES) || seq != ch->rcv_nxt)
		ch->ack_due = 1;
	else if (ch->ack_at < 0)
		ch->ack_at = uf_now() + ACK_DELAY;
	uint64_t end = seq + n;
	int at = 0;
	while (at < ch->nooo && ch->ooo[at].seq < seq)
		at++;
	if (end <= ch->rcv_nxt || (at < ch->nooo && ch->ooo[at].seq == seq)) {
		ep->stats[UF_EP_ST_DUPLICATE]++;
		return;
	}
	if (end > ch->rcv_nxt + wnd(ch))
		return;                 /* past the window: the sender will resend */
	if (seq > ch->rcv_nxt) {        /* early: kept, in order of seq */
		uint8_t *copy = malloc(n);
		if (!copy || grow((void **)&ch->ooo, ch->nooo, &ch->capooo, sizeof(struct seg))) {
			free(copy);
			return;
		}
		memcpy(copy, data, n);
		memmove(ch->ooo + at + 1, ch->ooo + at, (ch->nooo - at) * sizeof(struct seg));
		ch->ooo[at] = (struct seg){ seq, (uint32_t)n, copy };
		ch->nooo++;
		return;
	}
	/* (no memory: as if it had not come; the sender sends it again) */
	if (buf_append(&ch->in, data + (ch->rcv_nxt - seq), end - ch->rcv_nxt))
		return;
	ch->rcv_nxt = end;
	int k = 0;                      /* what arrived early may follow now */
	while (k < ch->nooo && ch->ooo[k].seq <= ch->rcv_nxt) {
		struct seg *s = &ch->ooo[k];
		if (s->seq + s->n > ch->rcv_nxt) {
			if (buf_append(&ch->in, s->data + (ch->rcv_nxt - s->seq),
			    s->seq + s->n - ch->rcv_nxt))
				break;  /* kept: it follows once there is memory */
			ch->rcv_nxt = s->seq + s->n;
		}
		free(s->data);
		k++;
	}
	memmove(ch->ooo, ch->ooo + k, (ch->nooo - k) * sizeof(struct seg));
	ch->nooo -= k;
}

static void
on_datagram(struct ep *ep, struct chan *ch, int kind, uint64_t seq, uint64_t ack, uint64_t w,
    const uint8_t *payload, size_t n, double now)
{
	ch->heard = now;
	on_ack(ch, ack, w, now);
	if (kind == ACK && n)
		on_sack(ep, ch, payload, n);
	if (kind == PING)
		ch->ack_due = 1;
	else if (kind == DATA && n)
		uf_chan_on_data(ep, ch, seq, payload, n);
}

/* Take every datagram waiting; how many were for live channels (each such
 * channel's news is set). */
int
uf_ep_receive(struct ep *ep, double now)
{
	int got = 0;
	for (;;) {
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		ssize_t r = recvfrom(ep->sock, ep->rx, sizeof ep->rx, MSG_DONTWAIT,
		    (struct sockaddr *)&from, &fl);
		if (r < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return got;
			continue;       /* an ICMP error for an earlier send */
		}
		uint8_t *d = ep->rx;
		size_t n = (size_t)r;
		if (ep->has_relay && n >= 6) {
			memcpy(&from.sin_addr, d, 4);
			memcpy(&from.sin_port, d + 4, 2);
			d += 6, n -= 6;
		}
		if (n < HDR_SIZE + TAG_SIZE) {
			ep->stats[UF_EP_ST_FORGED]++;
			continue;
		}
		struct chan *ch = memcmp(d, MAGIC, 4) ? 0 : uf_ep_find(ep, d + 4);
		if (!ch || ch->dead) {
			ep->stats[UF_EP_ST_STALE]++;
			continue;
		}
		uint8_t iv[12], plain[65536];
		size_t m = n - HDR_SIZE - TAG_SIZE;
		int len, ok;
		nonce(iv, get64(d + 41));
		EVP_DecryptInit_ex(ch->open, NULL, NULL, NULL, iv);
		EVP_DecryptUpdate(ch->open, NULL, &len, d, HDR_SIZE);
		if (m)
			EVP_DecryptUpdate(ch->open, plain, &len, d + HDR_SIZE, (int)m);
		EVP_CIPHER_CTX_ctrl(ch->open, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, d + HDR_SIZE + m);
		ok = EVP_DecryptFinal_ex(ch->open, plain + m, &len) > 0;
		if (!ok) {
			ep->stats[UF_EP_ST_FORGED]++;
			continue;
		}
		ep->stats[UF_EP_ST_RECEIVED]++;
		if (!ch->has_peer) {    /* the first authentic datagram says where it is */
			ch->peer = from;
			ch->has_peer = 1;
		}
		uint32_t w = 0;
		for (int i = 3; i >= 0; i--)
			w = w << 8 | d[37 + i];
		on_datagram(ep, ch, d[20], get64(d + 21), get64(d + 29), w, plain, m, now);
		if (ch->closing >= 0) {
			buf_drop(&ch->in, ch->in.len);      /* nobody reads a dropped channel */
			ch->ack_due = 1;
			continue;
		}
		ch->news = 1;
		got++;
	}
}

/* -- timers ------------------------------------------------------------- */

static double
chan_next_event(struct chan *ch, double now)
{
	if (ch->dead)
		return INFINITY;
	if (ch->closing >= 0)
		return MIN(ch->closing, ch->ack_due ? now : INFINITY);
	if (!ch->has_peer)
		return ch->heard + ch->dead_after;
	double t = MIN(ch->heard + ch->dead_after, ch->spoke + PING_EVERY);
	t = MIN(t, MAX(ch->heard + PING_EVERY, ch->spoke + PING_EVERY / 4));
	if (ch->ack_at >= 0)
		t = MIN(t, ch->ack_at);
	if (ch->timer >= 0)
		t = MIN(t, ch->timer);
	if (ch->recovering)             /* a resend may be lost too */
		for (int i = 0; i < ch->nresent; i++)
			t = MIN(t, ch->resent[i].at + again_after(ch));
	return t;
}

double
uf_ep_next_event(struct ep *ep, double now)
{
	double t = INFINITY;
	for (int i = 0; i < ep->nchans; i++)
		t = MIN(t, chan_next_event(ep->chans[i], now));
	return t;
}

/* -- the endpoint ------------------------------------------------------- */

struct ep *
uf_ep_new(const char *ip, int port, double dead_after, const char *relay_ip, int relay_port)
{
	struct ep *ep = calloc(1, sizeof *ep);
	if (!ep)
		return 0;
	ep->dead_after = dead_after;
	ep->sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	/* Big socket buffers: past rmem_max (208 KiB by default) as root, so
	 * that a burst of a window's worth is not dropped on arrival. */
	int size = 8 << 20;
	if (setsockopt(ep->sock, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size))
		setsockopt(ep->sock, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
	if (setsockopt(ep->sock, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size))
		setsockopt(ep->sock, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1 ||
	    bind(ep->sock, (struct sockaddr *)&a, sizeof a)) {
		int e = errno;
		close(ep->sock);
		free(ep);
		errno = e ? e : EINVAL;
		return 0;
	}
	if (relay_ip && *relay_ip) {
		ep->has_relay = 1;
		ep->relay.sin_family = AF_INET;
		ep->relay.sin_port = htons(relay_port);
		inet_pton(AF_INET, relay_ip, &ep->relay.sin_addr);
	}
	return ep;
}

static EVP_CIPHER_CTX *
cipher(const uint8_t key[32], int encrypt)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	if (c && !EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, NULL, encrypt)) {
		EVP_CIPHER_CTX_free(c);
		c = 0;
	}
	return c;
}

void
uf_chan_free(struct chan *ch)
{
	EVP_CIPHER_CTX_free(ch->seal);
	EVP_CIPHER_CTX_free(ch->open);
	for (int i = 0; i < ch->nooo; i++)
		free(ch->ooo[i].data);
	free(ch->ooo);
	free(ch->sacked);
	free(ch->resent);
	free(ch->out.p);
	free(ch->in.p);
	free(ch);
}

struct chan *
uf_chan_new(struct ep *ep, const uint8_t cid[16], const uint8_t seal_key[32],
    const uint8_t open_key[32], const char *peer_ip, int peer_port)
{
	struct chan *ch = calloc(1, sizeof *ch);
	if (!ch || grow((void **)&ep->chans, ep->nchans, &ep->capchans, sizeof ch)) {
		free(ch);
		return 0;
	}
	memcpy(ch->cid, cid, 16);
	ch->seal = cipher(seal_key, 1);
	ch->open = cipher(open_key, 0);
	if (!ch->seal || !ch->open) {
		uf_chan_free(ch);
		return 0;
	}
	if (peer_ip) {
		ch->has_peer = 1;
		ch->peer.sin_family = AF_INET;
		ch->peer.sin_port = htons(peer_port);
		inet_pton(AF_INET, peer_ip, &ch->peer.sin_addr);
	}
	ch->peer_wnd = WINDOW;
	ch->cwnd = 1u << 20;
	ch->mss = MSS_MAX;
	ch->rto = 0.1;
	ch->timer = ch->ack_at = ch->closing = -1;
	ch->dead_after = ep->dead_after;
	ch->heard = ch->spoke = uf_now();
	struct chan *old = uf_ep_find(ep, cid);
	if (old) {                      /* the same id again: the new one replaces it */
		for (int i = 0; i < ep->nchans; i++)
			if (ep->chans[i] == old)
				ep->chans[i] = ch;
		old->gone = 1;
	} else
		ep->chans[ep->nchans++] = ch;
	return ch;
}

struct chan *
uf_ep_find(struct ep *ep, const uint8_t cid[16])
{
	for (int i = 0; i < ep->nchans; i++)
		if (!memcmp(ep->chans[i]->cid, cid, 16))
			return ep->chans[i];
	return 0;
}

/* Its user is done with (ch).  It lingers a while to acknowledge what the
 * peer still sends, so that the peer too sees its last words arrive. */
void
uf_ep_drop(struct ep *ep, struct chan *ch)
{
	if (ch->closing >= 0)
		return;
	ch->closing = uf_now() + ep->dead_after;
	ch->ack_due = ch->ack_due || ch->ack_at >= 0;
	buf_drop(&ch->out, ch->out.len);
}

int
uf_ep_lingering(struct ep *ep)
{
	for (int i = 0; i < ep->nchans; i++) {
		struct chan *ch = ep->chans[i];
		if (ch->closing >= 0 && (ch->ack_due || ch->ack_at >= 0))
			return 1;
	}
	return 0;
}

void
uf_ep_flush(struct ep *ep, double now)
{
	for (int i = 0; i < ep->nchans; i++) {
		struct chan *ch = ep->chans[i];
		if (ch->closing >= 0 && now >= ch->closing) {
			ch->gone = 1;           /* its user frees it (uf_chan_free) */
			ep->chans[i--] = ep->chans[--ep->nchans];
		} else
			uf_chan_flush(ep, ch, now);
	}
}

/* -- for workers/pipes/channel.py ---------------------------------------------- */

int
uf_chan_state(struct chan *ch)
{
	return (ch->dead ? UF_CHAN_DEAD : 0) | (ch->has_peer ? UF_CHAN_HAS_PEER : 0) |
	    (ch->ack_due ? UF_CHAN_ACK_DUE : 0) | (ch->gone ? UF_CHAN_GONE : 0) |
	    (ch->closing >= 0 ? UF_CHAN_CLOSING : 0) | (ch->ack_at >= 0 ? UF_CHAN_ACK_AT : 0);
}

void
uf_chan_kill(struct chan *ch)
{
	ch->dead = 1;
}

void
uf_chan_want_ack(struct chan *ch)
{
	ch->ack_due = 1;
}

const uint8_t *
uf_chan_inbuf(struct chan *ch, size_t *n)
{
	*n = ch->in.len;
	return ch->in.p ? buf_data(&ch->in) : (const uint8_t *)"";
}

int
uf_chan_peer(struct chan *ch, char ip[16])
{
	if (!ch->has_peer || !inet_ntop(AF_INET, &ch->peer.sin_addr, ip, 16))
		return -1;
	return ntohs(ch->peer.sin_port);
}

int
uf_ep_address(struct ep *ep, char ip[16])
{
	struct sockaddr_in a;
	socklen_t al = sizeof a;
	if (getsockname(ep->sock, (struct sockaddr *)&a, &al) ||
	    !inet_ntop(AF_INET, &a.sin_addr, ip, 16))
		return -1;
	return ntohs(a.sin_port);
}

/* The ids of the channels heard from since the last call (16 bytes each,
 * up to max); how many. */
int
uf_ep_news(struct ep *ep, uint8_t *out, int max)
{
	int n = 0;
	for (int i = 0; i < ep->nchans && n < max; i++)
		if (ep->chans[i]->news) {
			ep->chans[i]->news = 0;
			memcpy(out + 16 * n++, ep->chans[i]->cid, 16);
		}
	return n;
}

int
uf_ep_count(struct ep *ep)
{
	return ep->nchans;
}

int
uf_ep_fileno(struct ep *ep)
{
	return ep->sock;
}

uint64_t *
uf_ep_stats(struct ep *ep)
{
	return ep->stats;
}

void
uf_ep_set_filter(struct ep *ep, uf_filter f)
{
	ep->filter = f;
}

void
uf_ep_free(struct ep *ep)
{
	for (int i = 0; i < ep->nchans; i++)
		uf_chan_free(ep->chans[i]);
	free(ep->chans);
	close(ep->sock);
	free(ep);
}
