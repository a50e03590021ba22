/*
 * net.h: the pipe bridge's native half (libufnet.so): the channel protocol
 * (channel.c), its data path between rings and channels (relay.c), and the
 * fast doorbell's backend (bell.c).
 * workers/pipes/channel.py loads it with ctypes; every function here that is
 * not static is called from there (or from relay.c).
 */
#ifndef UF_NET_H
#define UF_NET_H

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

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

enum { ST_FORGED, ST_STALE, ST_DUPLICATE, ST_TIMEOUTS, ST_RECOVERIES,
       ST_RETRANSMITS, ST_SENT, ST_RECEIVED, ST_ACKS, NSTATS };

/* Tests only: decides whether a datagram is lost on its way out. */
typedef int (*uf_filter)(int kind, uint64_t seq);

struct ep {
	int sock;
	int has_relay;                  /* tests: UNIFORK_TEST_BRIDGE_RELAY */
	struct sockaddr_in relay;
	double dead_after;
	struct chan **chans;
	int nchans, capchans;
	uint64_t stats[NSTATS];
	uf_filter filter;
	uint8_t rx[65536 + 64], tx[65536 + 64];
};

double uf_now(void);
struct ep *uf_ep_new(const char *ip, int port, double dead_after, const char *relay_ip,
    int relay_port);
void uf_ep_free(struct ep *ep);
struct chan *uf_chan_new(struct ep *ep, const uint8_t cid[16], const uint8_t seal_key[32],
    const uint8_t open_key[32], const char *peer_ip, int peer_port);
struct chan *uf_ep_find(struct ep *ep, const uint8_t cid[16]);
void uf_ep_drop(struct ep *ep, struct chan *ch);
int uf_ep_receive(struct ep *ep, double now);
void uf_ep_flush(struct ep *ep, double now);
double uf_ep_next_event(struct ep *ep, double now);
int uf_ep_lingering(struct ep *ep);
int uf_chan_send(struct chan *ch, const uint8_t *data, size_t n);
void uf_chan_consume(struct chan *ch, size_t n);
int uf_chan_idle(struct chan *ch);
size_t uf_chan_room(struct chan *ch);
void uf_chan_flush(struct ep *ep, struct chan *ch, double now);

/* uf_chan_state() */
enum { UF_DEAD = 1, UF_HAS_PEER = 2, UF_ACK_DUE = 4, UF_GONE = 8, UF_CLOSING = 16,
       UF_ACK_AT = 32 };
int uf_chan_state(struct chan *ch);
void uf_chan_free(struct chan *ch);
void uf_chan_on_data(struct ep *ep, struct chan *ch, uint64_t seq, const uint8_t *data,
    size_t n);

const uint8_t *uf_chan_inbuf(struct chan *ch, size_t *n);

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

/* bell.c: a VM's fast doorbell (relay.c watches uf_bell_fd, takes its kicks) */
struct bell;
int uf_bell_fd(struct bell *b);
int uf_bell_take(struct bell *b);

int buf_reserve(struct buf *b, size_t more);
uint8_t *buf_data(struct buf *b);
void buf_drop(struct buf *b, size_t n);

#endif
