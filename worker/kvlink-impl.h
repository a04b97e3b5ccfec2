/* kvlink internals shared by kvlink.c (ZeroMQ, peers, flow control) and
 * kvlink_nccl.c (CUDA + NCCL, or stubs when the build has no NCCL), and the
 * wire header, which tests use to forge messages.
 *
 * Wire format (all integers little-endian). A unit is four frames: the header,
 * ids [n_tok] int32, positions [n_tok] int32, KV (empty when it goes over
 * NCCL). An ack, a ping and its answer (pong) are the header alone. */
#ifndef TANDEM_WK_KVLINK_IMPL_H
#define TANDEM_WK_KVLINK_IMPL_H

#include "kvlink.h"

#define KVL__MAGIC 0x4c564b54u /* "TKVL" */
#define KVL__VERSION 1
#define KVL__ID_MAX 64  /* bytes of the sender's id field, NUL included */
#define KVL__EP_MAX 256 /* bytes of an endpoint field, NUL included */
#define KVL__HDR_FIXED 80
#define KVL__HDR_BYTES (KVL__HDR_FIXED + KVL__ID_MAX + 2 * KVL__EP_MAX)

enum kvl__kind {
	KVL__UNIT = 1,
	KVL__ACK,  /* status CM_OK: taken; negative: rejected (the sender's peer is dead) */
	KVL__PING, /* a sender with units in flight asks whether the receiver lives */
	KVL__PONG,
};

enum kvl__via {
	KVL__VIA_ZMQ = 0, /* KV in the fourth frame */
	KVL__VIA_NCCL,    /* KV through the pair's NCCL communicator */
};

/* The header. src: the endpoint of the message's sender (where answers go);
 * dst: the receiver as the sender spelled it. An ack or pong puts the unit's
 * or ping's dst in its src (so the first sender finds its peer under the name
 * it used) and the unit's src in dst. */
struct kvl__hdr {
	uint16_t kind;        /* enum kvl__kind */
	uint64_t req, seq;
	uint32_t index, flags;
	int32_t n_tok;
	struct kvl_shape shape;
	uint32_t via;         /* enum kvl__via */
	int32_t status;       /* ACK: CM_OK or why the unit was rejected */
	uint64_t kv_bytes;
	uint32_t ids_bytes, pos_bytes;
	char id[KVL__ID_MAX];  /* the sender's self_id */
	char src[KVL__EP_MAX];
	char dst[KVL__EP_MAX];
};

/* Writes h into buf[KVL__HDR_BYTES] (strings cut to fit, NUL-padded). */
void kvl__hdr_encode(const struct kvl__hdr *h, uint8_t *buf);
/* Reads buf[n]: CM_EPROTO (err says why) unless n is KVL__HDR_BYTES, magic and
 * version match and the strings are NUL-terminated and printable. */
int kvl__hdr_decode(const uint8_t *buf, size_t n, struct kvl__hdr *h, struct cm_err *err);

/* ---- NCCL (kvlink_nccl.c) ---- */

/* One side of a two-rank communicator with one peer, with its stream, event
 * and device staging buffer. */
struct kvl__comm;

/* Number of CUDA devices: 0 without a driver or a GPU, -1 when this build has
 * no CUDA/NCCL. */
int kvl__cuda_devices(void);
/* Joins the communicator of id as rank (0 or 1) on device; waits at most
 * timeout_ms for the other rank. CM_EPEER on failure, CM_EUNSUPPORTED without NCCL. */
int kvl__comm_new(int device, const uint8_t id[KVL_NCCL_ID_BYTES], int rank, int64_t timeout_ms,
		  struct kvl__comm **out, struct cm_err *err);
/* Aborts c (ncclCommAbort: local, never waits for the other rank, which
 * sees its next transfer fail) and frees its buffers. NULL is a no-op. */
void kvl__comm_free(struct kvl__comm *c);
/* True when no transfer is pending on c. */
bool kvl__comm_idle(struct kvl__comm *c);
/* Copies kv[n] (host) into c's device buffer and posts its ncclSend to the
 * other rank; returns once it is queued (the caller may reuse kv). CM_EAGAIN
 * while the previous send runs; CM_EPEER when NCCL fails. */
int kvl__comm_send(struct kvl__comm *c, const void *kv, size_t n, int64_t timeout_ms,
		   struct cm_err *err);
/* Receives n bytes from the other rank into kv (host); waits at most
 * timeout_ms. CM_EPEER on failure or timeout (then c is unusable). */
int kvl__comm_recv(struct kvl__comm *c, void *kv, size_t n, int64_t timeout_ms,
		   struct cm_err *err);

#endif
