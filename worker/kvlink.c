/* kvlink: the KV link's ZeroMQ transport, peers, flow control and liveness
 * (worker/kvlink.h). kvlink_nccl.c moves a unit's KV through NCCL when the
 * pair has a communicator; everything else is here.
 *
 * Sockets: one ROUTER per kvl receives everything (units, acks, pings,
 * pongs), so kvl_fd covers both sides; one DEALER per peer sends (units and
 * pings to a receiver, acks and pongs back to a sender), with its routing id
 * set to this kvl's endpoint, which the receiver checks against the header. */
#include "kvlink-impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "ids and positions travel in host order, which must be little-endian");

#define KVL__MAX_PARTS 5    /* routing id, header, ids, positions, KV */
#define KVL__MAX_PEERS 4096 /* peers one kvl knows at once */
#define KVL__NEVER_MS ((int64_t)24 * 3600 * 1000)

/* A unit sent and not acknowledged yet. */
struct kvl__sent {
	uint64_t seq;
	size_t bytes; /* its KV bytes (the window's unit) */
};

/* Another kvl this one sends to or answers. */
struct kvl__peer {
	char ep[KVL__EP_MAX];    /* its endpoint as the caller (or its header) spells it */
	void *dealer;
	uint64_t next_seq;       /* starts at the clock so a restarted sender still counts up */
	uint64_t last_seq_in;    /* the last unit seq received from it (pongs report it) */
	struct kvl__sent *sent;  /* [n_sent] unacknowledged, oldest first */
	int n_sent, cap_sent;
	size_t in_flight;        /* KV bytes of sent */
	int64_t alive_us;        /* last ack or pong, or the send that ended a quiet spell */
	int64_t ping_us;         /* last ping sent */
	int64_t ping_wait_us;    /* first ping unanswered since alive_us; 0: none */
	bool dead;
	char why[CM_ERR_MSG_MAX];
	struct kvl__comm *comm;  /* NCCL, or NULL */
	int64_t comm_used_us;
};

/* A received unit the caller has not acknowledged yet. */
struct kvl__held {
	uint64_t seq, req;
	uint32_t index;
	char src[KVL__EP_MAX]; /* the sender */
	char dst[KVL__EP_MAX]; /* this kvl as the sender spelled it */
	zmq_msg_t parts[3];    /* ids, positions, KV as they came */
	void *arr;             /* [2][n_tok] ids and positions copied when unaligned, or NULL */
	void *kv;              /* KV copied when unaligned or received through NCCL, or NULL */
};

struct kvl {
	struct kvl_params p; /* strings cleared: see the copies below */
	char self_id[KVL__ID_MAX];
	char endpoint[KVL__EP_MAX];
	void *ctx, *router;
	struct kvl__peer **peers;
	int n_peers, cap_peers;
	struct kvl__held **held;
	int n_held, cap_held;
	int n_comms;
	int64_t drained_us; /* last time kvl_recv found the socket empty */
	struct kvl_stats st;
};

/* ---- wire header ---------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void put_str(uint8_t *p, size_t cap, const char *s)
{
	size_t n = s ? strnlen(s, cap - 1) : 0;
	memset(p, 0, cap);
	memcpy(p, s ? s : "", n);
}

/* Copies a NUL-terminated printable field; CM_EPROTO otherwise. */
static int get_str(const uint8_t *p, size_t cap, char *out)
{
	const uint8_t *nul = memchr(p, 0, cap);
	if (!nul)
		return CM_EPROTO;
	for (const uint8_t *c = p; c < nul; c++)
		if (*c < 0x20 || *c > 0x7e)
			return CM_EPROTO;
	memcpy(out, p, (size_t)(nul - p) + 1);
	return CM_OK;
}

void kvl__hdr_encode(const struct kvl__hdr *h, uint8_t *b)
{
	memset(b, 0, KVL__HDR_FIXED);
	put32(b + 0, KVL__MAGIC);
	put16(b + 4, KVL__VERSION);
	put16(b + 6, h->kind);
	put64(b + 8, h->req);
	put64(b + 16, h->seq);
	put32(b + 24, h->index);
	put32(b + 28, h->flags);
	put32(b + 32, (uint32_t)h->n_tok);
	put32(b + 36, (uint32_t)h->shape.n_layer);
	put32(b + 40, (uint32_t)h->shape.n_kv_head);
	put32(b + 44, (uint32_t)h->shape.head_dim);
	put32(b + 48, (uint32_t)h->shape.dtype);
	put32(b + 52, h->via);
	put32(b + 56, (uint32_t)h->status);
	put32(b + 60, h->ids_bytes);
	put32(b + 64, h->pos_bytes);
	put64(b + 72, h->kv_bytes);
	put_str(b + KVL__HDR_FIXED, KVL__ID_MAX, h->id);
	put_str(b + KVL__HDR_FIXED + KVL__ID_MAX, KVL__EP_MAX, h->src);
	put_str(b + KVL__HDR_FIXED + KVL__ID_MAX + KVL__EP_MAX, KVL__EP_MAX, h->dst);
}

int kvl__hdr_decode(const uint8_t *b, size_t n, struct kvl__hdr *h, struct cm_err *err)
{
	if (n != KVL__HDR_BYTES)
		return cm_err_set(err, CM_EPROTO, "header of %zu bytes, expected %d", n,
				  KVL__HDR_BYTES);
	if (get32(b) != KVL__MAGIC || get16(b + 4) != KVL__VERSION)
		return cm_err_set(err, CM_EPROTO, "bad magic or version %u (expected %u)",
				  (unsigned)get16(b + 4), KVL__VERSION);
	h->kind = get16(b + 6);
	h->req = get64(b + 8);
	h->seq = get64(b + 16);
	h->index = get32(b + 24);
	h->flags = get32(b + 28);
	h->n_tok = (int32_t)get32(b + 32);
	h->shape.n_layer = (int32_t)get32(b + 36);
	h->shape.n_kv_head = (int32_t)get32(b + 40);
	h->shape.head_dim = (int32_t)get32(b + 44);
	h->shape.dtype = (enum kern_dtype)get32(b + 48);
	h->via = get32(b + 52);
	h->status = (int32_t)get32(b + 56);
	h->ids_bytes = get32(b + 60);
	h->pos_bytes = get32(b + 64);
	h->kv_bytes = get64(b + 72);
	if (get_str(b + KVL__HDR_FIXED, KVL__ID_MAX, h->id) < 0 ||
	    get_str(b + KVL__HDR_FIXED + KVL__ID_MAX, KVL__EP_MAX, h->src) < 0 ||
	    get_str(b + KVL__HDR_FIXED + KVL__ID_MAX + KVL__EP_MAX, KVL__EP_MAX, h->dst) < 0)
		return cm_err_set(err, CM_EPROTO, "header strings not terminated or not printable");
	return CM_OK;
}

/* ---- parameters, shape ---------------------------------------------------- */

size_t kvl_kv_bytes(const struct kvl_shape *s, int32_t n)
{
	if (n <= 0 || s->n_layer <= 0 || s->n_kv_head <= 0 || s->head_dim <= 0)
		return 0;
	return (size_t)s->n_layer * 2 * (size_t)n * (size_t)s->n_kv_head * (size_t)s->head_dim *
	       kern_dtype_size(s->dtype);
}

struct kvl_params kvl_default_params(void)
{
	return (struct kvl_params){
		.bind = "tcp://127.0.0.1:0",
		.self_id = "",
		.transport = KVL_ZMQ,
		.window_bytes = (size_t)64 << 20,
		.max_unit_tokens = 8192,
		.max_comms = 8,
		.peer_timeout_ms = 10000,
	};
}

static bool kvl__shape_eq(const struct kvl_shape *a, const struct kvl_shape *b)
{
	return a->n_layer == b->n_layer && a->n_kv_head == b->n_kv_head &&
	       a->head_dim == b->head_dim && a->dtype == b->dtype;
}

/* Checks p and fills the zero defaults into q. */
static int kvl__params_check(const struct kvl_params *p, struct kvl_params *q, struct cm_err *err)
{
	const struct kvl_shape *s = &p->shape;
	*q = *p;
	if (!p->bind || !*p->bind)
		return cm_err_set(err, CM_EINVAL, "KV link: no bind address");
	if (s->n_layer <= 0 || s->n_layer > 4096 || s->n_kv_head <= 0 || s->n_kv_head > 4096 ||
	    s->head_dim <= 0 || s->head_dim > 65536 || !kern_dtype_size(s->dtype))
		return cm_err_set(err, CM_EINVAL,
				  "KV link: bad shape (n_layer %d, n_kv_head %d, head_dim %d, dtype %d)",
				  s->n_layer, s->n_kv_head, s->head_dim, (int)s->dtype);
	if (p->max_unit_tokens < 0 || p->max_comms < 0)
		return cm_err_set(err, CM_EINVAL, "KV link: negative max_unit_tokens or max_comms");
	if (p->transport != KVL_ZMQ && p->transport != KVL_NCCL)
		return cm_err_set(err, CM_EINVAL, "KV link: unknown transport %d",
				  (int)p->transport);
	if (!q->window_bytes)
		q->window_bytes = (size_t)64 << 20;
	if (!q->max_unit_tokens)
		q->max_unit_tokens = 8192;
	if (!q->max_comms)
		q->max_comms = 8;
	if (!q->peer_timeout_ms)
		q->peer_timeout_ms = 10000;
	if (q->max_unit_tokens > (1 << 20))
		return cm_err_set(err, CM_EINVAL, "KV link: max_unit_tokens %d above 1048576",
				  q->max_unit_tokens);
	return CM_OK;
}

/* peer_timeout_ms, with "never" as a day. */
static int64_t kvl__timeout_ms(const struct kvl *k)
{
	return k->p.peer_timeout_ms < 0 ? KVL__NEVER_MS : k->p.peer_timeout_ms;
}

/* µs between pings while units are in flight: a quarter of the timeout, 1 ms to 1 s. */
static int64_t kvl__ping_us(const struct kvl *k)
{
	int64_t us = kvl__timeout_ms(k) * 1000 / 4;
	return CM_MAX(CM_MIN(us, (int64_t)1000000), (int64_t)1000);
}

/* ---- sockets, endpoint ---------------------------------------------------- */

static void kvl__sockopt_int(void *s, int opt, int v)
{
	zmq_setsockopt(s, opt, &v, sizeof(v));
}

static bool kvl__wildcard(const char *host)
{
	return !strcmp(host, "*") || !strcmp(host, "0.0.0.0") || !strcmp(host, "[::]") ||
	       !strcmp(host, "::");
}

/* Turns the bound address ("tcp://0.0.0.0:41234") into the one peers dial. */
static int kvl__endpoint_set(struct kvl *k, const char *last, const char *advertise,
			     struct cm_err *err)
{
	const char *colon = strrchr(last, ':');
	if (strncmp(last, "tcp://", 6) != 0 || !colon || colon < last + 6) {
		snprintf(k->endpoint, sizeof(k->endpoint), "%s", last);
		return CM_OK;
	}
	char host[KVL__EP_MAX];
	snprintf(host, sizeof(host), "%.*s", (int)(colon - (last + 6)), last + 6);
	if (kvl__wildcard(host)) {
		if (advertise && *advertise)
			snprintf(host, sizeof(host), "%s", advertise);
		else if (gethostname(host, sizeof(host)) != 0)
			return cm_err_set(err, CM_EIO, "KV link: gethostname: %s", strerror(errno));
		host[sizeof(host) - 1] = 0;
	}
	int n = snprintf(k->endpoint, sizeof(k->endpoint), "tcp://%s%s", host, colon);
	if (n < 0 || n >= (int)sizeof(k->endpoint))
		return cm_err_set(err, CM_EINVAL, "KV link: endpoint of host %s too long", host);
	return CM_OK;
}

static int kvl__bind(struct kvl *k, const char *bind, const char *advertise, struct cm_err *err)
{
	k->ctx = zmq_ctx_new();
	k->router = k->ctx ? zmq_socket(k->ctx, ZMQ_ROUTER) : NULL;
	if (!k->router)
		return cm_err_set(err, CM_EIO, "KV link: ZeroMQ: %s", zmq_strerror(errno));
	int64_t max_msg = (int64_t)kvl_kv_bytes(&k->p.shape, k->p.max_unit_tokens) + 4096;
	kvl__sockopt_int(k->router, ZMQ_LINGER, 0);
	kvl__sockopt_int(k->router, ZMQ_ROUTER_HANDOVER, 1);
	kvl__sockopt_int(k->router, ZMQ_RCVHWM, 0);
	zmq_setsockopt(k->router, ZMQ_MAXMSGSIZE, &max_msg, sizeof(max_msg));
	if (zmq_bind(k->router, bind) != 0)
		return cm_err_set(err, CM_EIO, "KV link: cannot bind %s: %s", bind,
				  zmq_strerror(errno));
	char last[KVL__EP_MAX];
	size_t n = sizeof(last);
	if (zmq_getsockopt(k->router, ZMQ_LAST_ENDPOINT, last, &n) != 0)
		return cm_err_set(err, CM_EIO, "KV link: bound address of %s: %s", bind,
				  zmq_strerror(errno));
	last[sizeof(last) - 1] = 0;
	return kvl__endpoint_set(k, last, advertise, err);
}

struct kvl *kvl_new(const struct kvl_params *p, struct cm_err *err)
{
	struct kvl_params q;
	if (!p || kvl__params_check(p, &q, err) < 0)
		return p ? NULL : (cm_err_set(err, CM_EINVAL, "KV link: no params"), NULL);
	if (q.transport == KVL_NCCL && !kvl_nccl_available()) {
		cm_err_set(err, CM_EUNSUPPORTED, "KV link: NCCL transport: %s",
			   kvl__cuda_devices() < 0 ? "this build has no CUDA/NCCL" : "no CUDA device");
		return NULL;
	}
	struct kvl *k = calloc(1, sizeof(*k));
	if (!k) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	k->p = q;
	snprintf(k->self_id, sizeof(k->self_id), "%s", p->self_id ? p->self_id : "");
	k->p.bind = k->p.advertise_host = k->p.self_id = NULL;
	if (kvl__bind(k, p->bind, p->advertise_host, err) < 0) {
		kvl_free(k);
		return NULL;
	}
	k->drained_us = cm_time_us();
	return k;
}

const char *kvl_endpoint(const struct kvl *k)
{
	return k->endpoint;
}

int kvl_fd(const struct kvl *k)
{
	int fd = -1;
	size_t n = sizeof(fd);
	if (zmq_getsockopt(k->router, ZMQ_FD, &fd, &n) != 0)
		return -1;
	return fd;
}

void kvl_stats(const struct kvl *k, struct kvl_stats *s)
{
	*s = k->st;
}

/* ---- peers ---------------------------------------------------------------- */

static struct kvl__peer *kvl__peer_find(const struct kvl *k, const char *ep)
{
	for (int i = 0; i < k->n_peers; i++)
		if (!strcmp(k->peers[i]->ep, ep))
			return k->peers[i];
	return NULL;
}

static void kvl__peer_free(struct kvl *k, struct kvl__peer *pe)
{
	if (pe->comm) {
		kvl__comm_free(pe->comm);
		k->n_comms--;
	}
	if (pe->dealer)
		zmq_close(pe->dealer);
	free(pe->sent);
	free(pe);
}

static int kvl__peer_connect(struct kvl *k, struct kvl__peer *pe, struct cm_err *err)
{
	pe->dealer = zmq_socket(k->ctx, ZMQ_DEALER);
	if (!pe->dealer)
		return cm_err_set(err, CM_EIO, "KV link: ZeroMQ: %s", zmq_strerror(errno));
	zmq_setsockopt(pe->dealer, ZMQ_ROUTING_ID, k->endpoint, strlen(k->endpoint));
	kvl__sockopt_int(pe->dealer, ZMQ_LINGER, 0);
	kvl__sockopt_int(pe->dealer, ZMQ_SNDHWM, 0); /* the window bounds what queues */
	kvl__sockopt_int(pe->dealer, ZMQ_RECONNECT_IVL, 100);
	kvl__sockopt_int(pe->dealer, ZMQ_RECONNECT_IVL_MAX, 1000);
	if (zmq_connect(pe->dealer, pe->ep) != 0)
		return cm_err_set(err, CM_EINVAL, "KV link: cannot connect to %s: %s", pe->ep,
				  zmq_strerror(errno));
	return CM_OK;
}

/* Finds the peer at ep, or adds it with its DEALER connected. */
static int kvl__peer_get(struct kvl *k, const char *ep, struct kvl__peer **out,
			 struct cm_err *err)
{
	if (!ep || !*ep || strlen(ep) >= KVL__EP_MAX)
		return cm_err_set(err, CM_EINVAL, "KV link: bad peer endpoint");
	*out = kvl__peer_find(k, ep);
	if (*out)
		return CM_OK;
	if (k->n_peers >= KVL__MAX_PEERS)
		return cm_err_set(err, CM_EFULL, "KV link: %d peers already", k->n_peers);
	if (k->n_peers == k->cap_peers) {
		int cap = k->cap_peers ? 2 * k->cap_peers : 8;
		void *np = realloc(k->peers, (size_t)cap * sizeof(*k->peers));
		if (!np)
			return cm_err_set(err, CM_ENOMEM, "out of memory");
		k->peers = np;
		k->cap_peers = cap;
	}
	struct kvl__peer *pe = calloc(1, sizeof(*pe));
	if (!pe)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	snprintf(pe->ep, sizeof(pe->ep), "%s", ep);
	pe->next_seq = (uint64_t)cm_time_us();
	int rc = kvl__peer_connect(k, pe, err);
	if (rc < 0) {
		kvl__peer_free(k, pe);
		return rc;
	}
	k->peers[k->n_peers++] = pe;
	*out = pe;
	return CM_OK;
}

void kvl_drop_peer(struct kvl *k, const char *peer)
{
	for (int i = 0; i < k->n_peers; i++) {
		if (strcmp(k->peers[i]->ep, peer) != 0)
			continue;
		kvl__peer_free(k, k->peers[i]);
		k->peers[i] = k->peers[--k->n_peers];
		return;
	}
}

/* Marks pe dead; the printf-style reason is kept for kvl_send and kvl_peer_dead. */
static void kvl__peer_kill(struct kvl__peer *pe, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void kvl__peer_kill(struct kvl__peer *pe, const char *fmt, ...)
{
	if (pe->dead)
		return;
	pe->dead = true;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(pe->why, sizeof(pe->why), fmt, ap);
	va_end(ap);
	CM_LOG_WARN("%s", pe->why);
}

/* Dead: rejected a unit, or a ping stayed unanswered for the timeout while the
 * socket was drained (so an answer would have been seen). */
static bool kvl__peer_is_dead(const struct kvl *k, struct kvl__peer *pe)
{
	if (pe->dead)
		return true;
	if (!pe->n_sent || !pe->ping_wait_us || k->p.peer_timeout_ms < 0)
		return false;
	if (k->drained_us - pe->ping_wait_us <= k->p.peer_timeout_ms * 1000)
		return false;
	kvl__peer_kill(pe, "KV link: peer %s did not acknowledge %d unit(s) nor answer pings for %lld ms",
		       pe->ep, pe->n_sent, (long long)k->p.peer_timeout_ms);
	return true;
}

bool kvl_peer_dead(struct kvl *k, const char *peer, struct cm_err *err)
{
	struct kvl__peer *pe = peer ? kvl__peer_find(k, peer) : NULL;
	if (!pe || !kvl__peer_is_dead(k, pe))
		return false;
	cm_err_set(err, CM_EPEER, "%s", pe->why);
	return true;
}

int kvl_peer_unacked(const struct kvl *k, const char *peer, size_t *bytes)
{
	struct kvl__peer *pe = peer ? kvl__peer_find(k, peer) : NULL;
	if (bytes)
		*bytes = pe ? pe->in_flight : 0;
	return pe ? pe->n_sent : 0;
}

/* ---- sending -------------------------------------------------------------- */

/* Sends n frames without waiting; CM_EAGAIN when the first is refused. */
static int kvl__frames_send(void *sock, const void *const *data, const size_t *len, int n)
{
	static const uint8_t empty[1];
	for (int i = 0; i < n; i++) {
		int fl = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
		if (zmq_send(sock, len[i] ? data[i] : empty, len[i], fl) < 0)
			return i == 0 && errno == EAGAIN ? CM_EAGAIN : CM_EIO;
	}
	return CM_OK;
}

/* An ack, ping or pong: the header alone. */
static int kvl__signal_send(struct kvl *k, struct kvl__peer *pe, struct kvl__hdr *h)
{
	uint8_t buf[KVL__HDR_BYTES];
	snprintf(h->id, sizeof(h->id), "%s", k->self_id);
	kvl__hdr_encode(h, buf);
	const void *data[1] = {buf};
	size_t len[1] = {sizeof(buf)};
	return kvl__frames_send(pe->dealer, data, len, 1);
}

static int kvl__unit_check(const struct kvl *k, const struct kvl_unit *u, struct cm_err *err)
{
	if (!u)
		return cm_err_set(err, CM_EINVAL, "KV link: no unit");
	if (u->flags & ~(uint32_t)(KVL_CLOSE | KVL_RESEND))
		return cm_err_set(err, CM_EINVAL, "KV link: unknown unit flags 0x%x", u->flags);
	if (u->n_tok < 0 || u->n_tok > k->p.max_unit_tokens)
		return cm_err_set(err, CM_EINVAL, "KV link: unit of %d tokens (at most %d)",
				  u->n_tok, k->p.max_unit_tokens);
	if (!u->n_tok && !(u->flags & KVL_CLOSE))
		return cm_err_set(err, CM_EINVAL, "KV link: empty unit without KVL_CLOSE");
	if (u->n_tok && (!u->ids || !u->pos || !u->kv))
		return cm_err_set(err, CM_EINVAL, "KV link: unit without ids, positions or KV");
	return CM_OK;
}

static int kvl__sent_reserve(struct kvl__peer *pe, struct cm_err *err)
{
	if (pe->n_sent < pe->cap_sent)
		return CM_OK;
	int cap = pe->cap_sent ? 2 * pe->cap_sent : 16;
	void *ns = realloc(pe->sent, (size_t)cap * sizeof(*pe->sent));
	if (!ns)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	pe->sent = ns;
	pe->cap_sent = cap;
	return CM_OK;
}

/* Writes u's frames to pe; the KV frame is empty when it goes through NCCL. */
static int kvl__unit_write(struct kvl *k, struct kvl__peer *pe, const struct kvl_unit *u,
			   size_t bytes, bool nccl, struct cm_err *err)
{
	struct kvl__hdr h = {
		.kind = KVL__UNIT, .req = u->req, .seq = pe->next_seq, .index = u->index,
		.flags = u->flags, .n_tok = u->n_tok, .shape = k->p.shape,
		.via = nccl ? KVL__VIA_NCCL : KVL__VIA_ZMQ, .kv_bytes = bytes,
		.ids_bytes = (uint32_t)u->n_tok * 4, .pos_bytes = (uint32_t)u->n_tok * 4,
	};
	snprintf(h.id, sizeof(h.id), "%s", k->self_id);
	snprintf(h.src, sizeof(h.src), "%s", k->endpoint);
	snprintf(h.dst, sizeof(h.dst), "%s", pe->ep);
	uint8_t buf[KVL__HDR_BYTES];
	kvl__hdr_encode(&h, buf);
	const void *data[4] = {buf, u->ids, u->pos, u->kv};
	size_t len[4] = {sizeof(buf), h.ids_bytes, h.pos_bytes, nccl ? 0 : bytes};
	int rc = kvl__frames_send(pe->dealer, data, len, 4);
	if (rc == CM_EAGAIN) {
		k->st.stalls++;
		return cm_err_set(err, CM_EAGAIN, "KV link: send queue to %s full", pe->ep);
	}
	if (rc < 0)
		return cm_err_set(err, CM_EIO, "KV link: send to %s: %s", pe->ep,
				  zmq_strerror(errno));
	return CM_OK;
}

/* NCCL: ships the KV of the unit whose header just went out. */
static int kvl__unit_nccl(struct kvl *k, struct kvl__peer *pe, const struct kvl_unit *u,
			  size_t bytes, struct cm_err *err)
{
	struct cm_err e = {0};
	if (kvl__comm_send(pe->comm, u->kv, bytes, kvl__timeout_ms(k), &e) < 0) {
		kvl__peer_kill(pe, "KV link: NCCL send to %s failed: %s", pe->ep, e.msg);
		return cm_err_set(err, CM_EPEER, "%s", pe->why);
	}
	pe->comm_used_us = cm_time_us();
	k->st.units_nccl++;
	return CM_OK;
}

int kvl_send(struct kvl *k, const char *peer, const struct kvl_unit *u, struct cm_err *err)
{
	struct kvl__peer *pe;
	int rc = kvl__unit_check(k, u, err);
	if (rc < 0 || (rc = kvl__peer_get(k, peer, &pe, err)) < 0)
		return rc;
	if (kvl__peer_is_dead(k, pe))
		return cm_err_set(err, CM_EPEER, "%s", pe->why);
	size_t bytes = kvl_kv_bytes(&k->p.shape, u->n_tok);
	bool nccl = pe->comm && bytes > 0;
	if ((pe->in_flight > 0 && pe->in_flight + bytes > k->p.window_bytes) ||
	    (nccl && !kvl__comm_idle(pe->comm))) {
		k->st.stalls++;
		return cm_err_set(err, CM_EAGAIN, "KV link: %zu bytes in flight to %s (window %zu)",
				  pe->in_flight, pe->ep, k->p.window_bytes);
	}
	if ((rc = kvl__sent_reserve(pe, err)) < 0 ||
	    (rc = kvl__unit_write(k, pe, u, bytes, nccl, err)) < 0)
		return rc;
	if (nccl && (rc = kvl__unit_nccl(k, pe, u, bytes, err)) < 0)
		return rc;
	if (!pe->n_sent)
		pe->alive_us = cm_time_us();
	pe->sent[pe->n_sent++] = (struct kvl__sent){.seq = pe->next_seq, .bytes = bytes};
	pe->next_seq++;
	pe->in_flight += bytes;
	k->st.units_sent++;
	k->st.bytes_sent += (int64_t)(bytes + 8 * (size_t)u->n_tok);
	return CM_OK;
}

/* Pings every live peer with units in flight that has been quiet for a while. */
static void kvl__heartbeat(struct kvl *k)
{
	int64_t now = cm_time_us(), iv = kvl__ping_us(k);
	for (int i = 0; i < k->n_peers; i++) {
		struct kvl__peer *pe = k->peers[i];
		if (!pe->n_sent || pe->dead || now - CM_MAX(pe->alive_us, pe->ping_us) < iv)
			continue;
		struct kvl__hdr h = {.kind = KVL__PING, .seq = pe->next_seq - 1};
		snprintf(h.src, sizeof(h.src), "%s", k->endpoint);
		snprintf(h.dst, sizeof(h.dst), "%s", pe->ep);
		if (kvl__signal_send(k, pe, &h) < 0)
			continue;
		pe->ping_us = now;
		if (!pe->ping_wait_us)
			pe->ping_wait_us = now;
	}
}

/* ---- receiving: acks and pings -------------------------------------------- */

/* An ack or pong from the peer this kvl knows as h->src. */
static void kvl__on_answer(struct kvl *k, const struct kvl__hdr *h)
{
	struct kvl__peer *pe = kvl__peer_find(k, h->src);
	if (!pe)
		return; /* dropped meanwhile */
	pe->alive_us = cm_time_us();
	pe->ping_wait_us = 0;
	if (h->kind == KVL__PONG) {
		/* a pong echoes the ping's last seq in req: what came before it must have arrived */
		if (pe->n_sent && h->seq < pe->sent[0].seq && h->req >= pe->sent[0].seq)
			kvl__peer_kill(pe, "KV link: peer %s lost unit(s) sent to it (restarted?)",
				       pe->ep);
		return;
	}
	for (int i = 0; i < pe->n_sent; i++) {
		if (pe->sent[i].seq != h->seq)
			continue;
		pe->in_flight -= pe->sent[i].bytes;
		memmove(pe->sent + i, pe->sent + i + 1,
			(size_t)(pe->n_sent - i - 1) * sizeof(*pe->sent));
		pe->n_sent--;
		break;
	}
	if (h->status < 0)
		kvl__peer_kill(pe, "KV link: peer %s rejected unit %u of request %llu: %s", pe->ep,
			       h->index, (unsigned long long)h->req, cm_err_str(h->status));
}

/* Sends an ack (status CM_OK or the rejection) or a pong back to h's sender. */
static void kvl__answer(struct kvl *k, const struct kvl__hdr *h, uint16_t kind, int status)
{
	struct kvl__peer *pe;
	if (kvl__peer_get(k, h->src, &pe, NULL) < 0)
		return;
	struct kvl__hdr a = {
		.kind = kind, .req = h->req, .seq = h->seq, .index = h->index, .status = status,
	};
	if (kind == KVL__PONG) {
		a.req = h->seq; /* the ping's last seq */
		a.seq = pe->last_seq_in;
	}
	snprintf(a.src, sizeof(a.src), "%s", h->dst);
	snprintf(a.dst, sizeof(a.dst), "%s", h->src);
	if (kvl__signal_send(k, pe, &a) < 0)
		CM_LOG_DEBUG("KV link: answer to %s not queued", h->src);
}

/* ---- receiving: units ----------------------------------------------------- */

/* Counts a dropped message and says why, naming the sender. */
static int kvl__drop(struct kvl *k, struct cm_err *err, int code, const char *who,
		     const char *why)
{
	k->st.units_dropped++;
	CM_LOG_DEBUG("KV link: dropped a message from %s: %s", who, why);
	return cm_err_set(err, code, "KV link: dropped a message from %s: %s", who, why);
}

/* Checks a unit's header and frame sizes against this kvl; *why says what failed. */
static int kvl__unit_validate(const struct kvl *k, const struct kvl__hdr *h, zmq_msg_t *parts,
			      char *why, size_t cap)
{
	if (h->flags & ~(uint32_t)(KVL_CLOSE | KVL_RESEND))
		return snprintf(why, cap, "unknown flags 0x%x", h->flags), CM_EPROTO;
	if (h->n_tok < 0 || h->n_tok > k->p.max_unit_tokens || (!h->n_tok && !(h->flags & KVL_CLOSE)))
		return snprintf(why, cap, "unit of %d tokens (at most %d; 0 only with CLOSE)",
				h->n_tok, k->p.max_unit_tokens), CM_EPROTO;
	if (!kvl__shape_eq(&h->shape, &k->p.shape))
		return snprintf(why, cap,
				"shape %d layers x %d kv heads x %d dims dtype %d, expected %d x %d x "
				"%d dtype %d",
				h->shape.n_layer, h->shape.n_kv_head, h->shape.head_dim,
				(int)h->shape.dtype, k->p.shape.n_layer, k->p.shape.n_kv_head,
				k->p.shape.head_dim, (int)k->p.shape.dtype), CM_ESHAPE;
	size_t arr = 4 * (size_t)h->n_tok, kv = kvl_kv_bytes(&k->p.shape, h->n_tok);
	size_t kv_frame = h->via == KVL__VIA_ZMQ ? kv : 0;
	if (h->ids_bytes != arr || h->pos_bytes != arr || h->kv_bytes != kv)
		return snprintf(why, cap, "declared sizes %u/%u/%llu, expected %zu/%zu/%zu",
				h->ids_bytes, h->pos_bytes, (unsigned long long)h->kv_bytes, arr,
				arr, kv), CM_EPROTO;
	if (h->via > KVL__VIA_NCCL || (h->via == KVL__VIA_NCCL && !kv))
		return snprintf(why, cap, "bad KV route %u", h->via), CM_EPROTO;
	if (zmq_msg_size(&parts[2]) != arr || zmq_msg_size(&parts[3]) != arr ||
	    zmq_msg_size(&parts[4]) != kv_frame)
		return snprintf(why, cap, "frames of %zu/%zu/%zu bytes, expected %zu/%zu/%zu",
				zmq_msg_size(&parts[2]), zmq_msg_size(&parts[3]),
				zmq_msg_size(&parts[4]), arr, arr, kv_frame), CM_EPROTO;
	return CM_OK;
}

static void kvl__held_free(struct kvl__held *hd)
{
	for (int i = 0; i < 3; i++)
		zmq_msg_close(&hd->parts[i]);
	free(hd->arr);
	free(hd->kv);
	free(hd);
}

/* Receives the unit's KV through NCCL into hd->kv. */
static int kvl__held_nccl(struct kvl *k, struct kvl__peer *pe, struct kvl__held *hd, size_t kv,
			  char *why, size_t cap)
{
	if (!pe->comm)
		return snprintf(why, cap, "KV over NCCL but no communicator with the sender "
				"(kvl_nccl_connect)"), CM_EPEER;
	hd->kv = malloc(kv);
	if (!hd->kv)
		return snprintf(why, cap, "out of memory"), CM_ENOMEM;
	struct cm_err e = {0};
	if (kvl__comm_recv(pe->comm, hd->kv, kv, kvl__timeout_ms(k), &e) < 0) {
		kvl__comm_free(pe->comm);
		pe->comm = NULL;
		k->n_comms--;
		return snprintf(why, cap, "NCCL receive failed: %.200s", e.msg), CM_EPEER;
	}
	pe->comm_used_us = cm_time_us();
	k->st.units_nccl++;
	return CM_OK;
}

static bool kvl__misaligned(zmq_msg_t *m)
{
	return zmq_msg_size(m) && (uintptr_t)zmq_msg_data(m) % 4;
}

/* Keeps the unit's frames, copying what is not aligned for its type. */
static int kvl__held_take(struct kvl__held *hd, zmq_msg_t *parts)
{
	for (int i = 0; i < 3; i++) {
		zmq_msg_init(&hd->parts[i]);
		zmq_msg_move(&hd->parts[i], &parts[2 + i]);
	}
	size_t arr = zmq_msg_size(&hd->parts[0]), kv = zmq_msg_size(&hd->parts[2]);
	if (kvl__misaligned(&hd->parts[0]) || kvl__misaligned(&hd->parts[1])) {
		hd->arr = malloc(2 * arr);
		if (!hd->arr)
			return CM_ENOMEM;
		memcpy(hd->arr, zmq_msg_data(&hd->parts[0]), arr);
		memcpy((char *)hd->arr + arr, zmq_msg_data(&hd->parts[1]), arr);
	}
	if (kvl__misaligned(&hd->parts[2])) {
		hd->kv = malloc(kv);
		if (!hd->kv)
			return CM_ENOMEM;
		memcpy(hd->kv, zmq_msg_data(&hd->parts[2]), kv);
	}
	return CM_OK;
}

static int kvl__held_add(struct kvl *k, struct kvl__held *hd)
{
	if (k->n_held == k->cap_held) {
		int cap = k->cap_held ? 2 * k->cap_held : 16;
		void *nh = realloc(k->held, (size_t)cap * sizeof(*k->held));
		if (!nh)
			return CM_ENOMEM;
		k->held = nh;
		k->cap_held = cap;
	}
	k->held[k->n_held++] = hd;
	return CM_OK;
}

static void kvl__unit_fill(struct kvl_unit *u, const struct kvl__hdr *h, struct kvl__held *hd)
{
	size_t arr = 4 * (size_t)h->n_tok;
	*u = (struct kvl_unit){
		.req = h->req, .index = h->index, .flags = h->flags, .n_tok = h->n_tok,
		.from = hd->src, .seq = h->seq,
	};
	if (!h->n_tok)
		return;
	u->ids = hd->arr ? hd->arr : zmq_msg_data(&hd->parts[0]);
	u->pos = hd->arr ? (const void *)((const char *)hd->arr + arr) : zmq_msg_data(&hd->parts[1]);
	u->kv = hd->kv ? hd->kv : zmq_msg_data(&hd->parts[2]);
}

/* Validates the unit and keeps it (held until kvl_ack); CM_OK or why not. */
static int kvl__unit_keep(struct kvl *k, struct kvl__peer *pe, zmq_msg_t *parts,
			  const struct kvl__hdr *h, struct kvl_unit *u, char *why, size_t cap)
{
	int rc = kvl__unit_validate(k, h, parts, why, cap);
	if (rc < 0)
		return rc;
	struct kvl__held *hd = calloc(1, sizeof(*hd));
	if (!hd)
		return snprintf(why, cap, "out of memory"), CM_ENOMEM;
	if (h->via == KVL__VIA_NCCL)
		rc = kvl__held_nccl(k, pe, hd, kvl_kv_bytes(&k->p.shape, h->n_tok), why, cap);
	if (!rc && (kvl__held_take(hd, parts) < 0 || kvl__held_add(k, hd) < 0))
		rc = CM_ENOMEM, snprintf(why, cap, "out of memory");
	if (rc < 0) {
		kvl__held_free(hd);
		return rc;
	}
	hd->seq = h->seq;
	hd->req = h->req;
	hd->index = h->index;
	snprintf(hd->src, sizeof(hd->src), "%s", h->src);
	snprintf(hd->dst, sizeof(hd->dst), "%s", h->dst);
	kvl__unit_fill(u, h, hd);
	return CM_OK;
}

/* A unit: kept until kvl_ack, or dropped with a rejection ack. */
static int kvl__on_unit(struct kvl *k, zmq_msg_t *parts, int n, const struct kvl__hdr *h,
			const char *who, struct kvl_unit *u, struct cm_err *err)
{
	char why[CM_ERR_MSG_MAX / 2];
	if (strcmp(who, h->src) != 0)
		return kvl__drop(k, err, CM_EPROTO, who, "routing id differs from the header's");
	struct kvl__peer *pe;
	if (kvl__peer_get(k, h->src, &pe, NULL) < 0)
		return kvl__drop(k, err, CM_EFULL, who, "cannot add the sender as a peer");
	pe->last_seq_in = h->seq;
	int rc = CM_EPROTO;
	if (n != KVL__MAX_PARTS)
		snprintf(why, sizeof(why), "unit of %d frames, expected %d", n - 1,
			 KVL__MAX_PARTS - 1);
	else
		rc = kvl__unit_keep(k, pe, parts, h, u, why, sizeof(why));
	if (rc < 0) {
		kvl__answer(k, h, KVL__ACK, rc);
		return kvl__drop(k, err, rc, who, why);
	}
	size_t kv = kvl_kv_bytes(&k->p.shape, h->n_tok);
	k->st.units_received++;
	k->st.bytes_received += (int64_t)(kv + 8 * (size_t)h->n_tok);
	return 1;
}

/* ---- receiving: the loop -------------------------------------------------- */

/* The routing id as text: itself when printable, else hex. */
static void kvl__who(zmq_msg_t *id, char *out, size_t cap)
{
	const uint8_t *b = zmq_msg_data(id);
	size_t n = zmq_msg_size(id);
	bool text = n > 0 && n < cap;
	for (size_t i = 0; text && i < n; i++)
		text = b[i] >= 0x20 && b[i] <= 0x7e;
	if (text) {
		memcpy(out, b, n);
		out[n] = 0;
		return;
	}
	size_t o = (size_t)snprintf(out, cap, "routing id 0x");
	for (size_t i = 0; i < n && i < 16 && o + 3 < cap; i++)
		o += (size_t)snprintf(out + o, cap - o, "%02x", b[i]);
}

/* Reads one message without waiting: the number of frames kept (0: none),
 * *extra set when it had more than KVL__MAX_PARTS (the rest is discarded). */
static int kvl__read_parts(void *sock, zmq_msg_t *parts, bool *extra)
{
	int n = 0;
	*extra = false;
	zmq_msg_init(&parts[0]);
	if (zmq_msg_recv(&parts[0], sock, ZMQ_DONTWAIT) < 0) {
		zmq_msg_close(&parts[0]);
		return 0;
	}
	n = 1;
	bool more = zmq_msg_more(&parts[0]);
	while (more) {
		zmq_msg_t scratch, *m = n < KVL__MAX_PARTS ? &parts[n] : &scratch;
		zmq_msg_init(m);
		if (zmq_msg_recv(m, sock, 0) < 0) { /* the rest of a message is there already */
			zmq_msg_close(m);
			*extra = true;
			break;
		}
		more = zmq_msg_more(m);
		if (m == &scratch) {
			zmq_msg_close(m);
			*extra = true;
		} else {
			n++;
		}
	}
	return n;
}

/* Handles one message: 1 a unit in *u, 2 an ack or ping handled, < 0 dropped. */
static int kvl__dispatch(struct kvl *k, zmq_msg_t *parts, int n, bool extra, struct kvl_unit *u,
			 struct cm_err *err)
{
	char who[KVL__EP_MAX + 48], why[CM_ERR_MSG_MAX / 2];
	kvl__who(&parts[0], who, sizeof(who));
	if (n < 2 || extra) {
		snprintf(why, sizeof(why), "%s frames", extra ? "too many" : "too few");
		return kvl__drop(k, err, CM_EPROTO, who, why);
	}
	struct kvl__hdr h;
	struct cm_err e = {0};
	if (kvl__hdr_decode(zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), &h, &e) < 0)
		return kvl__drop(k, err, CM_EPROTO, who, e.msg);
	if (h.kind == KVL__UNIT)
		return kvl__on_unit(k, parts, n, &h, who, u, err);
	if (h.kind < KVL__ACK || h.kind > KVL__PONG || n != 2) {
		snprintf(why, sizeof(why), "message kind %u with %d frames", h.kind, n - 1);
		return kvl__drop(k, err, CM_EPROTO, who, why);
	}
	if (h.kind != KVL__PING)
		kvl__on_answer(k, &h);
	else if (!strcmp(who, h.src)) /* answer only a sender who is who it says */
		kvl__answer(k, &h, KVL__PONG, CM_OK);
	return 2;
}

/* Reads and handles one waiting message: 0 when none waits. */
static int kvl__read_one(struct kvl *k, struct kvl_unit *u, struct cm_err *err)
{
	zmq_msg_t parts[KVL__MAX_PARTS];
	bool extra;
	int n = kvl__read_parts(k->router, parts, &extra);
	if (!n)
		return 0;
	int rc = kvl__dispatch(k, parts, n, extra, u, err);
	for (int i = 0; i < n; i++)
		zmq_msg_close(&parts[i]);
	return rc;
}

int kvl_recv(struct kvl *k, int timeout_ms, struct kvl_unit *u, struct cm_err *err)
{
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : cm_time_us() + (int64_t)timeout_ms * 1000;
	bool handled = false;
	for (;;) {
		int rc = kvl__read_one(k, u, err);
		if (rc == 1 || rc < 0)
			return rc;
		if (rc == 2) {
			handled = true;
			continue;
		}
		k->drained_us = cm_time_us();
		kvl__heartbeat(k);
		int64_t left = deadline - cm_time_us();
		if (handled || left <= 0)
			return 0;
		int64_t wait_us = CM_MIN(left, kvl__ping_us(k));
		zmq_pollitem_t it = {.socket = k->router, .events = ZMQ_POLLIN};
		zmq_poll(&it, 1, (long)((wait_us + 999) / 1000));
	}
}

int kvl_ack(struct kvl *k, const struct kvl_unit *u, struct cm_err *err)
{
	for (int i = 0; u && u->from && i < k->n_held; i++) {
		struct kvl__held *hd = k->held[i];
		if (hd->seq != u->seq || strcmp(hd->src, u->from) != 0)
			continue;
		struct kvl__hdr h = {.req = hd->req, .seq = hd->seq, .index = hd->index};
		snprintf(h.src, sizeof(h.src), "%s", hd->src);
		snprintf(h.dst, sizeof(h.dst), "%s", hd->dst);
		kvl__answer(k, &h, KVL__ACK, CM_OK);
		kvl__held_free(hd);
		k->held[i] = k->held[--k->n_held];
		return CM_OK;
	}
	return cm_err_set(err, CM_ENOENT, "KV link: unit not held (acknowledged already?)");
}

void kvl_free(struct kvl *k)
{
	if (!k)
		return;
	for (int i = 0; i < k->n_held; i++)
		kvl__held_free(k->held[i]);
	for (int i = 0; i < k->n_peers; i++)
		kvl__peer_free(k, k->peers[i]);
	free(k->held);
	free(k->peers);
	if (k->router)
		zmq_close(k->router);
	if (k->ctx)
		zmq_ctx_term(k->ctx);
	free(k);
}

/* ---- NCCL rendezvous ------------------------------------------------------ */

/* Closes the least recently used idle communicator; CM_EFULL when all are busy. */
static int kvl__comm_evict(struct kvl *k, struct cm_err *err)
{
	struct kvl__peer *lru = NULL;
	for (int i = 0; i < k->n_peers; i++) {
		struct kvl__peer *pe = k->peers[i];
		if (pe->comm && kvl__comm_idle(pe->comm) &&
		    (!lru || pe->comm_used_us < lru->comm_used_us))
			lru = pe;
	}
	if (!lru)
		return cm_err_set(err, CM_EFULL, "KV link: %d NCCL communicators, none idle",
				  k->n_comms);
	CM_LOG_INFO("KV link: closing the NCCL communicator with %s (least recently used)",
		    lru->ep);
	kvl__comm_free(lru->comm);
	lru->comm = NULL;
	k->n_comms--;
	return CM_OK;
}

int kvl_nccl_connect(struct kvl *k, const char *peer, const uint8_t id[KVL_NCCL_ID_BYTES],
		     int rank, struct cm_err *err)
{
	if (k->p.transport != KVL_NCCL)
		return cm_err_set(err, CM_EINVAL, "KV link: NCCL connect on a ZeroMQ link");
	if (rank != 0 && rank != 1)
		return cm_err_set(err, CM_EINVAL, "KV link: NCCL rank %d (0: sender, 1: receiver)",
				  rank);
	struct kvl__peer *pe;
	int rc = kvl__peer_get(k, peer, &pe, err);
	if (rc < 0)
		return rc;
	if (pe->comm) {
		kvl__comm_free(pe->comm);
		pe->comm = NULL;
		k->n_comms--;
	}
	if (k->n_comms >= k->p.max_comms && (rc = kvl__comm_evict(k, err)) < 0)
		return rc;
	rc = kvl__comm_new(k->p.device, id, rank, kvl__timeout_ms(k), &pe->comm, err);
	if (rc < 0)
		return rc;
	k->n_comms++;
	pe->comm_used_us = cm_time_us();
	return CM_OK;
}
