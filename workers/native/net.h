/*
 * net.h: what the C files of libufnet.so share among themselves: the
 * channel's and the endpoint's structures (channel.c; relay.c reaches
 * into them), and the helpers that are not Python's.  What Python calls
 * is in ufnet.h.
 */
#ifndef UF_NET_H
#define UF_NET_H

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "ufnet.h"

#define WINDOW      (4u << 20)  /* bytes a receiver buffers; a sender keeps unacked */
#define MSS_MAX     65000       /* payload per datagram, when nothing is lost */
#define MSS_MIN     1200        /* ... and on a lossy path (one IP fragment) */
#define MAX_SACK    32          /* SACK blocks per ACK (512 bytes: one IP fragment) */
#define HDR_SIZE    49
#define TAG_SIZE    16

enum { DATA = 1, ACK = 2, PING = 3 };

/* A byte buffer: the bytes p[off, off + len). */
struct buf {
	uint8_t *p;
	size_t off, len, cap;
};

struct range { uint64_t start, end; };
struct seg { uint64_t seq; uint32_t n; uint8_t *data; };
struct resend { uint64_t seq; double at; };

struct chan {
	uint8_t cid[16];
	int has_peer;
	struct sockaddr_in peer;
	EVP_CIPHER_CTX *seal, *open;
	uint64_t sent;                  /* datagrams sent: the next one's nonce */
	/* sending */
	struct buf out;                 /* from snd_una on */
	uint64_t snd_una, snd_nxt, snd_max;
	uint64_t peer_wnd, cwnd;
	uint32_t mss;
	double rto, srtt, timer;        /* timer < 0: not running */
	int probing;                    /* an RTT probe: (probe_seq, probe_at) */
	uint64_t probe_seq;
	double probe_at;
	struct range *sacked;           /* what the peer holds past snd_una */
	int nsacked, capsacked;
	int recovering;                 /* until snd_una reaches (recover) */
	uint64_t recover;
	struct resend *resent;          /* a hole's segment: when last resent */
	int nresent, capresent;
	int round_sent, round_resent;
	/* receiving */
	uint64_t rcv_nxt;
	struct seg *ooo;                /* sorted by seq */
	int nooo, capooo;
	struct buf in;
	int ack_due;
	double ack_at;                  /* a delayed ACK, due then; < 0: none */
	uint32_t unacked_segs;
	uint64_t unacked_bytes;
	double heard, spoke, dead_after, closing;   /* closing < 0: not dropped */
	int dead, news;                 /* news: heard since the user last asked */
	int gone;                       /* out of the endpoint: its user frees it */
	int want_idle;                  /* relay.c: its user waits for it to be idle */
};


struct ep {
	int sock;
	int has_relay;                  /* tests: UNIFORK_TEST_BRIDGE_RELAY */
	struct sockaddr_in relay;
	double dead_after;
	struct chan **chans;
	int nchans, capchans;
	uint64_t stats[UF_EP_ST_MAX];
	uf_filter filter;
	uint8_t rx[65536 + 64], tx[65536 + 64];
};

double uf_now(void);
struct chan *uf_ep_find(struct ep *ep, const uint8_t cid[16]);
double uf_ep_next_event(struct ep *ep, double now);
void uf_chan_flush(struct ep *ep, struct chan *ch, double now);

/* Start a thread with every signal blocked.  Our threads live in Python
 * processes (Celery workers, asyncio) that handle signals: one delivered to
 * our thread would interrupt its system calls (EINTR), and Python runs its
 * handlers in the main thread anyway. */
static inline int
uf_thread_start(pthread_t *th, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = pthread_create(th, 0, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, 0);
	return err;
}

int buf_reserve(struct buf *b, size_t more);
uint8_t *buf_data(struct buf *b);
void buf_drop(struct buf *b, size_t n);

#endif
