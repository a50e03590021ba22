/*
 * ufnet.h: the interface of libufnet.so, the host's native half.
 *
 * Every function Python calls is declared here, and nothing else is
 * (what the C files share among themselves is in net.h):
 * workers/native/lib.py gives each its ctypes type, and
 * tests/test_native.py checks the two against each other.  So are the
 * constants bridge.py and relay.c must agree on: the pipe bridge's frames.
 *
 * Conventions: a pointer to one of the opaque structs is a handle Python
 * keeps as an integer; (const) char and uint8_t pointers are bytes Python
 * passes or a buffer it lends; void * is memory Python mapped (a region).
 */
#ifndef UF_UFNET_H
#define UF_UFNET_H

#include <stddef.h>
#include <stdint.h>

#include "../../guest/include/unifork_abi.h"

struct ep;              /* a UDP endpoint and its channels (channel.c) */
struct chan;            /* one reliable, sealed byte stream to a peer */
struct relay;           /* a region's data-path thread (relay.c) */
struct bells;           /* the fast doorbells' vhost-user backend (bell.c) */
struct bell;            /* one VM's fast doorbell */

/*
 * The pipe bridge's frames: a channel's bytes are a sequence of them, each
 * a kind (one byte), a length (four, little-endian) and (length) bytes.
 *   DATA   what was in the sender's ring at once (whole guest writes): it
 *          goes into the receiver's ring whole, under its writers' lock;
 *          at most UF_RING_SIZE bytes
 *   STATE  one byte of UF_BEYOND_* flags: what is beyond the sender
 */
#define UF_FRAME_HEAD       5
#define UF_FRAME_DATA       'U'
#define UF_FRAME_STATE      'S'
#define UF_BEYOND_WRITERS   1       /* writers (or data on its way) */
#define UF_BEYOND_READERS   2       /* readers */
#define UF_BEYOND_HUNGRY    4       /* readers waiting on an empty ring */
#define UF_BEYOND_KEEPS     8       /* readers that keep bytes from you unless you say HUNGRY */

/* -- channel.c: endpoints and channels ---------------------------------- */

/* An endpoint on (ip, port) (0: any free port); a peer silent for
 * (dead_after) seconds is gone.  (relay_ip): tests only, every datagram
 * goes through (relay_ip, relay_port).  0 if the socket cannot be made. */
struct ep *uf_ep_new(const char *ip, int port, double dead_after, const char *relay_ip,
    int relay_port);
void uf_ep_free(struct ep *ep);
int uf_ep_fileno(struct ep *ep);
int uf_ep_address(struct ep *ep, char ip[16]);          /* its port; its address in (ip) */
/* Take every datagram waiting; how many were for live channels (each such
 * channel's news is set). */
int uf_ep_receive(struct ep *ep, double now);
void uf_ep_flush(struct ep *ep, double now);            /* send what is due */
/* The ids of the channels heard from since the last call (16 bytes each,
 * up to max); how many. */
int uf_ep_news(struct ep *ep, uint8_t *out, int max);
int uf_ep_count(struct ep *ep);                         /* channels, lingering ones too */
int uf_ep_lingering(struct ep *ep);
uint64_t *uf_ep_stats(struct ep *ep);                   /* UF_EP_ST_* counters */
/* Tests only: (f) decides whether a datagram is lost on its way out. */
typedef int (*uf_filter)(int kind, uint64_t seq);
void uf_ep_set_filter(struct ep *ep, uf_filter f);

/* A channel (cid) to (peer_ip, peer_port) (0: whoever speaks first),
 * sealing with (seal_key), opening with (open_key). */
struct chan *uf_chan_new(struct ep *ep, const uint8_t cid[16], const uint8_t seal_key[32],
    const uint8_t open_key[32], const char *peer_ip, int peer_port);
/* Its user is done with (ch).  It lingers a while to acknowledge what the
 * peer still sends, so that the peer too sees its last words arrive. */
void uf_ep_drop(struct ep *ep, struct chan *ch);
void uf_chan_free(struct chan *ch);
/* Queue (data); -1 (nothing queued) when there is no memory for it. */
int uf_chan_send(struct chan *ch, const uint8_t *data, size_t n);
size_t uf_chan_room(struct chan *ch);                   /* what the window takes now */
const uint8_t *uf_chan_inbuf(struct chan *ch, size_t *n);   /* arrived, in order */
void uf_chan_consume(struct chan *ch, size_t n);        /* ... (n) of it taken */
int uf_chan_idle(struct chan *ch);                      /* all it sent is acknowledged */
int uf_chan_state(struct chan *ch);                     /* UF_CHAN_* flags */
int uf_chan_peer(struct chan *ch, char ip[16]);         /* its peer's port; address in (ip) */
void uf_chan_kill(struct chan *ch);                     /* dead now, as if timed out */
void uf_chan_want_ack(struct chan *ch);                 /* acknowledge at the next flush */
/* Tests only: (data), the opened payload of datagram (seq), arrives. */
void uf_chan_on_data(struct ep *ep, struct chan *ch, uint64_t seq, const uint8_t *data,
    size_t n);

/* The counters of uf_ep_stats(), uf_relay_stats() and uf_bells_stats(). */
enum { UF_EP_ST_FORGED, UF_EP_ST_STALE, UF_EP_ST_DUPLICATE, UF_EP_ST_TIMEOUTS,
       UF_EP_ST_RECOVERIES, UF_EP_ST_RETRANSMITS, UF_EP_ST_SENT, UF_EP_ST_RECEIVED,
       UF_EP_ST_ACKS, UF_EP_ST_MAX };
enum { UF_RELAY_ST_TURNS, UF_RELAY_ST_SUPERVISOR, UF_RELAY_ST_FORWARDED,
       UF_RELAY_ST_DELIVERED, UF_RELAY_ST_FOR_FRAMES, UF_RELAY_ST_FOR_DEATH,
       UF_RELAY_ST_FOR_DOORBELL, UF_RELAY_ST_MAX };
enum { UF_BELLS_ST_MESSAGES, UF_BELLS_ST_KICKS, UF_BELLS_ST_HANGUPS, UF_BELLS_ST_REFUSED,
       UF_BELLS_ST_MAX };

/* uf_chan_state()'s flags */
enum { UF_CHAN_DEAD = 1, UF_CHAN_HAS_PEER = 2, UF_CHAN_ACK_DUE = 4, UF_CHAN_GONE = 8,
       UF_CHAN_CLOSING = 16, UF_CHAN_ACK_AT = 32 };

/* -- relay.c: the data path between a region's rings and its channels --- */

/* The thread of the region mapped at (shm), on endpoint (ep). */
struct relay *uf_relay_new(struct ep *ep, void *shm);
void uf_relay_free(struct relay *r);
void uf_relay_lock(struct relay *r);                    /* the thread waits meanwhile */
/* Let the thread go on; (kick): have it look again (timers, new routes). */
void uf_relay_unlock(struct relay *r, int kick);
int uf_relay_efd(struct relay *r);                      /* readable: the supervisor is wanted */
void uf_relay_route(struct relay *r, int idx, struct chan *ch);     /* ring idx's bytes go to ch */
void uf_relay_deliver(struct relay *r, struct chan *ch, int idx);   /* ch's DATA into ring idx */
/* Ring (idx)'s bytes into its channel, a frame at a time; whether any went. */
int uf_relay_forward(struct relay *r, int idx);
/* Wake the supervisor once everything sent on (ch) is acknowledged. */
void uf_relay_want_idle(struct relay *r, struct chan *ch);
/* The VMs of the region now: their doorbells (COM2's socket, and the fast
 * doorbell's epoll fd if it has one: 0 in fasts[i] if not), control pages
 * and the requests the supervisor holds back; (stdio) the rings the host
 * reads, (stdin) those it writes.  -1: no memory (nothing changed). */
int uf_relay_vms(struct relay *r, int n, const int *bells, const uint64_t *fasts,
    const uint64_t *ctls, const int64_t *parked, uint64_t stdio, uint64_t stdin);
uint64_t *uf_relay_stats(struct relay *r);
/* Whether the guest of control page (ctl) sleeps on something that is
 * there now, in the region mapped at (shm): the rule the supervisor's
 * wake_sleepers (workers/proc/sleepers.py) applies too. */
int uf_sleeper_ready(const void *ctl, const void *shm);

/* -- bell.c: the fast doorbell's vhost-user backend ---------------------- */

struct bells *uf_bells_new(void);
void uf_bells_free(struct bells *bs);
uint64_t *uf_bells_stats(struct bells *bs);
/* A VM's bell on vhost-user socket (sock), which it owns from now on.
 * Before QEMU starts: it asks at once. */
struct bell *uf_bell_new(struct bells *bs, int sock);
void uf_bell_free(struct bells *bs, struct bell *b);
int uf_bell_fd(struct bell *b);                         /* an epoll fd: readable when kicked */
/* Take the kicks: 1 if the guest rang since the last time. */
int uf_bell_take(struct bell *b);

#endif
