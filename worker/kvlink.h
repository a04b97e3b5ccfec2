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
 * (sent, not yet acknowledged); kvl_send answers CM_EAGAIN beyond that. The
 * receiver acknowledges a unit with kvl_ack once its engine took it, so a
 * decode worker short of KV blocks (wk_engine_input_kv: CM_EFULL) holds its
 * ack and the encode worker waits (it keeps its shard meanwhile).
 *
 * Validation: every message is checked against the receiver's model shape
 * (n_layer, n_kv_head, head_dim, kv dtype) and size limits before it is
 * delivered; a malformed or mismatched message is dropped with an error for
 * the caller to log, never a crash.
 *
 * Threads: one thread per kvl. Ownership: a received kvl_unit's arrays belong
 * to the kvl until the next kvl_recv.
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
	enum kern_dtype dtype; /* KV dtype: KERN_F32 or KERN_F16 */
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
	int64_t peer_timeout_ms; /* unacknowledged for this long: the peer counts as dead */
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
	const void *kv;     /* kvl_kv_bytes(shape, n_tok) bytes; host memory (ZeroMQ) or
			     * device memory (NCCL) */
	const char *from;   /* received: the sender's endpoint (for kvl_ack) */
};

struct kvl;

/* Binds the receiving socket. Errors: CM_EINVAL (bad params), CM_EIO (bind
 * failed), CM_EUNSUPPORTED (NCCL without CUDA in this build). */
struct kvl *kvl_new(const struct kvl_params *p, struct cm_err *err);
void kvl_free(struct kvl *k);

/* "tcp://host:port" where peers reach this worker. */
const char *kvl_endpoint(const struct kvl *k);

/* A descriptor that becomes readable when kvl_recv may have something (for a
 * poll loop; ZMQ_FD semantics: edge-triggered, so drain with kvl_recv). */
int kvl_fd(const struct kvl *k);

/* Sends u to the worker at endpoint peer without blocking. CM_EAGAIN: the
 * peer's window is full (retry after kvl_recv handled its acks); CM_EINVAL: u
 * does not fit the shape or the limits. */
int kvl_send(struct kvl *k, const char *peer, const struct kvl_unit *u, struct cm_err *err);

/* Waits at most timeout_ms for a unit or an ack. Returns 1 with *u filled (a
 * unit to give to the engine), 0 when nothing (acks are handled inside), or
 * CM_EPROTO / CM_ESHAPE for a dropped message (err says why and from whom). */
int kvl_recv(struct kvl *k, int timeout_ms, struct kvl_unit *u, struct cm_err *err);

/* Tells u's sender the unit was taken, returning its window. */
int kvl_ack(struct kvl *k, const struct kvl_unit *u, struct cm_err *err);

/* Forgets a peer (it died): its window and, for NCCL, its communicator. */
void kvl_drop_peer(struct kvl *k, const char *peer);

/* Bytes sent and received so far, and units sent, received and dropped. */
struct kvl_stats {
	int64_t bytes_sent, bytes_received;
	int64_t units_sent, units_received, units_dropped;
	int64_t stalls; /* kvl_send answers of CM_EAGAIN */
};

void kvl_stats(const struct kvl *k, struct kvl_stats *s);

/* ---- NCCL rendezvous ------------------------------------------------------
 * The coordinator makes one unique id per (sender, receiver) pair with
 * kvl_nccl_unique_id and sends it to both; each calls kvl_nccl_connect with
 * its rank (sender 0, receiver 1). Without CUDA these return CM_EUNSUPPORTED. */
#define KVL_NCCL_ID_BYTES 128

int kvl_nccl_unique_id(uint8_t id[KVL_NCCL_ID_BYTES], struct cm_err *err);
int kvl_nccl_connect(struct kvl *k, const char *peer, const uint8_t id[KVL_NCCL_ID_BYTES],
		     int rank, struct cm_err *err);
/* True when this build has the NCCL transport and a GPU is present. */
bool kvl_nccl_available(void);

#endif
