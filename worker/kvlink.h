/* kvlink: ships source KV from encode workers to decode workers (issue 7;
 * algorithms.md §6.1). One interface, two transports:
 *
 *   - ZeroMQ over TCP (every machine): each worker binds one ROUTER socket
 *     (kvl_endpoint tells where) and connects one DEALER per peer it sends to.
 *     A unit travels as one multi-frame message: header, ids, positions, KV.
 *   - NCCL between GPUs (compiled when CUDA is found): the header, ids and
 *     positions still travel over ZeroMQ; the KV bytes go through ncclSend /
 *     ncclRecv on a two-rank communicator per (sender, receiver) pair. The
 *     coordinator hands out the ncclUniqueId (kvl_nccl_*); a worker keeps at
 *     most max_comms communicators and closes the least recently used.
 *
 * Flow control: a sender has at most window_bytes of KV in flight per peer
 * (sent, not yet acknowledged); kvl_send answers CM_EAGAIN beyond that (a unit
 * larger than the window goes alone when nothing is in flight). The receiver
 * acknowledges a unit with kvl_ack once its engine took it, so a decode worker
 * short of KV blocks (wk_engine_input_kv: CM_EFULL) holds the unit and its ack
 * and the encode worker waits (it keeps its shard meanwhile).
 *
 * Liveness: while a sender has units in flight to a peer it pings the peer
 * (every peer_timeout_ms / 4, at most every second), and kvl_recv on the
 * other side answers; a peer that neither acknowledges nor answers for
 * peer_timeout_ms is dead (kvl_peer_dead; kvl_send answers CM_EPEER) until
 * kvl_drop_peer. So holding an ack is back-pressure, not death, as long as
 * the receiver keeps calling kvl_recv. Both ends must call kvl_recv regularly:
 * acks, pings and their answers are handled there.
 *
 * Order: units from one sender to one receiver arrive in the order sent
 * (one ZeroMQ connection); the receiver's caller takes them in index order
 * and drops a repeat.
 *
 * Validation: every message is checked against the receiver's model shape
 * (n_layer, n_kv_head, head_dim, kv dtype) and size limits before it is
 * delivered; a malformed or mismatched message is dropped with an error for
 * the caller to log, never a crash.
 *
 * Threads: a kvl is used by one thread at a time (ZeroMQ sockets are not
 * thread-safe); two kvl may live in one process. Ownership: a received
 * kvl_unit's arrays belong to the kvl and stay valid until kvl_ack(u) (or
 * kvl_free), so a receiver may hold a unit and keep calling kvl_recv.
 *
 * Memory: kv is host memory on both transports for now (the engine's KV is in
 * host memory); the NCCL transport stages it through device buffers
 * (cudaMemcpyAsync host to device before ncclSend, device to host after
 * ncclRecv). kvlink-impl.h has the wire format.
 *
 *     struct kvl_params p = kvl_default_params();
 *     p.bind = "tcp://0.0.0.0:0"; p.shape = (struct kvl_shape){...};
 *     struct kvl *k = kvl_new(&p, &err);
 *     kvl_send(k, peer_endpoint, &unit, &err);       // encode side
 *     if (kvl_recv(k, 100, &u, &err) == 1) {          // decode side
 *             wk_engine_input_kv(e, u.req, u.ids, u.n_tok, u.pos, u.kv, &err);
 *             kvl_ack(k, &u);
 *     }
 */
#ifndef TANDEM_WK_KVLINK_H
#define TANDEM_WK_KVLINK_H

#include "common/cm.h"
#include "kernels/kern.h"

/* The model shape both ends must share. */
struct kvl_shape {
	int32_t n_layer, n_kv_head, head_dim;
	enum kern_dtype dtype; /* KV dtype: KERN_F32, KERN_F16 or KERN_BF16 */
};

/* Bytes of the flat KV of n tokens ([n_layer][2][n][n_kv_head][head_dim]). */
size_t kvl_kv_bytes(const struct kvl_shape *s, int32_t n);

enum kvl_transport {
	KVL_ZMQ = 0,
	KVL_NCCL,
};

struct kvl_params {
	const char *bind;     /* where this worker receives: "tcp://host:port" (port 0: any) */
	const char *advertise_host; /* host put in kvl_endpoint when bind is a wildcard;
				     * NULL: the machine's hostname */
	const char *self_id;  /* this worker's id (messages carry it) */
	struct kvl_shape shape;
	enum kvl_transport transport;
	int device;           /* NCCL: the CUDA device */
	size_t window_bytes;  /* KV bytes in flight per peer; 0: 64 MiB */
	int32_t max_unit_tokens; /* largest unit accepted; 0: 8192 */
	int max_comms;        /* NCCL communicators kept at once; 0: 8 */
	int64_t peer_timeout_ms; /* ms; no ack and no answer to pings for this long while
				  * units are in flight: the peer is dead. 0: 10000;
				  * < 0: never */
};

struct kvl_params kvl_default_params(void);

/* Flags of a unit. */
enum {
	KVL_CLOSE = 1,  /* the request's input is complete after this unit (n_tok may be 0) */
	KVL_RESEND = 2, /* the sender starts the request again from unit 0 (a new decode
			 * worker, or a retarget): the receiver drops what it had */
};

/* One source unit of one request. */
struct kvl_unit {
	uint64_t req;
	uint32_t index;     /* units of the request numbered from 0; a receiver takes them in
			     * order and drops a repeat */
	uint32_t flags;
	int32_t n_tok;
	const int32_t *ids; /* [n_tok] */
	const int32_t *pos; /* [n_tok] */
	const void *kv;     /* kvl_kv_bytes(shape, n_tok) bytes, host memory (both
			     * transports; NCCL stages it through the device) */
	const char *from;   /* received: the sender's endpoint (kvl_nccl_connect's peer) */
	uint64_t seq;       /* received: the sender's sequence number (kvl_ack uses it);
			     * ignored by kvl_send */
};

struct kvl;

/* Binds the receiving socket; p's strings are copied. Errors: CM_EINVAL (bad
 * params), CM_EIO (bind failed), CM_EUNSUPPORTED (NCCL without CUDA in this
 * build, or no GPU). */
struct kvl *kvl_new(const struct kvl_params *p, struct cm_err *err);
void kvl_free(struct kvl *k);

/* "tcp://host:port" where peers reach this worker. */
const char *kvl_endpoint(const struct kvl *k);

/* A descriptor that becomes readable when kvl_recv may have something (for a
 * poll loop; ZMQ_FD semantics: edge-triggered, so drain with kvl_recv). Units,
 * acks and pings all arrive on the one receiving socket, so it covers both
 * sides. Pings need a kvl_recv at least every peer_timeout_ms / 4. */
int kvl_fd(const struct kvl *k);

/* Sends u to the worker at endpoint peer without blocking (its arrays are
 * copied; the caller keeps them). CM_EAGAIN: the peer's window is full, or
 * (NCCL) its previous transfer is still running: nothing was sent, retry after
 * kvl_recv handled its acks; CM_EINVAL: u does not fit the shape or the limits
 * (n_tok 0 only with KVL_CLOSE); CM_EPEER: the peer is dead or rejected a
 * unit (kvl_peer_dead; kvl_drop_peer to start over). */
int kvl_send(struct kvl *k, const char *peer, const struct kvl_unit *u, struct cm_err *err);

/* Waits at most timeout_ms (< 0: until something comes) for a unit or an ack.
 * Returns 1 with *u filled (a unit to give to the engine; kvl_ack it), 0 when
 * nothing (acks, pings and their answers are handled inside), or CM_EPROTO /
 * CM_ESHAPE / CM_EPEER (NCCL: no communicator with the sender, or the transfer
 * failed) for a dropped message: err says why and from whom; call again. With
 * kvl_fd, call until it returns 0 (edge-triggered). */
int kvl_recv(struct kvl *k, int timeout_ms, struct kvl_unit *u, struct cm_err *err);

/* Tells u's sender the unit was taken (or discarded), returning its window,
 * and releases u's arrays. CM_ENOENT: u is not a unit this kvl holds. */
int kvl_ack(struct kvl *k, const struct kvl_unit *u, struct cm_err *err);

/* Forgets a peer (it died): its window, its unacknowledged units and, for
 * NCCL, its communicator. A later kvl_send to it starts afresh. */
void kvl_drop_peer(struct kvl *k, const char *peer);

/* True when units to peer went unacknowledged and pings unanswered for
 * peer_timeout_ms, or peer rejected a unit (err, may be NULL, says which).
 * False for an unknown peer. */
bool kvl_peer_dead(struct kvl *k, const char *peer, struct cm_err *err);

/* Units sent to peer and not acknowledged yet (0 for an unknown peer); their
 * KV bytes in *bytes when not NULL. */
int kvl_peer_unacked(const struct kvl *k, const char *peer, size_t *bytes);

/* Bytes sent and received so far, and units sent, received and dropped. */
struct kvl_stats {
	int64_t bytes_sent, bytes_received;
	int64_t units_sent, units_received, units_dropped;
	int64_t stalls; /* kvl_send answers of CM_EAGAIN */
	int64_t units_nccl; /* units sent or received whose KV went through NCCL */
};

void kvl_stats(const struct kvl *k, struct kvl_stats *s);

/* ---- NCCL rendezvous ------------------------------------------------------
 * The coordinator makes one unique id per (sender, receiver) pair with
 * kvl_nccl_unique_id and sends it to both; each calls kvl_nccl_connect with
 * its rank (sender 0, receiver 1) and the other's endpoint at about the same
 * time (it waits at most peer_timeout_ms for the other rank). The two must be
 * on different GPUs (NCCL refuses two ranks on one device). A KVL_NCCL kvl
 * ships a unit's KV over NCCL when it has a communicator with the receiver,
 * else over ZeroMQ. At most max_comms communicators: connecting one more
 * closes the least recently used idle one (CM_EFULL when none is idle); the
 * other side then drops that sender's NCCL units (CM_EPEER) until the pair
 * connects again. kvl_nccl_unique_id needs no GPU: NCCL's bootstrap root
 * listens in the calling process until both ranks joined. Without CUDA in
 * the build these return CM_EUNSUPPORTED. */
#define KVL_NCCL_ID_BYTES 128

int kvl_nccl_unique_id(uint8_t id[KVL_NCCL_ID_BYTES], struct cm_err *err);
/* Errors: CM_EINVAL (not a KVL_NCCL kvl, bad rank), CM_EFULL, CM_EPEER (NCCL
 * failed or the other rank did not join in time), CM_EUNSUPPORTED. */
int kvl_nccl_connect(struct kvl *k, const char *peer, const uint8_t id[KVL_NCCL_ID_BYTES],
		     int rank, struct cm_err *err);
/* True when this build has the NCCL transport and a GPU is present. */
bool kvl_nccl_available(void);

#endif
