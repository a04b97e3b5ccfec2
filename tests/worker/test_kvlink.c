/* The KV link (worker/kvlink.h): two kvl in one process over loopback. Units
 * round-trip bit-exact and in order, the window holds and is restored by acks,
 * bad messages are dropped (never a crash), dead peers are found by timeout.
 * The NCCL transport runs only where two GPUs are present. */
#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "worker/kvlink-impl.h"
#include "worker/kvlink.h"

#define MAX_TOK 64

static struct kvl_shape small_shape(enum kern_dtype dt)
{
	return (struct kvl_shape){.n_layer = 3, .n_kv_head = 2, .head_dim = 8, .dtype = dt};
}

static struct kvl *mk(struct kvl_shape s, size_t window, int64_t timeout_ms)
{
	struct kvl_params p = kvl_default_params();
	p.shape = s;
	p.window_bytes = window;
	p.max_unit_tokens = MAX_TOK;
	p.peer_timeout_ms = timeout_ms;
	p.self_id = "test";
	struct cm_err err = {0};
	struct kvl *k = kvl_new(&p, &err);
	cr_assert(k, "kvl_new: %s", err.msg);
	return k;
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* A unit with contents that depend on (req, index): ids, positions and KV
 * bytes (every bit pattern, NaNs included, must survive). */
struct tunit {
	struct kvl_unit u;
	int32_t ids[MAX_TOK], pos[MAX_TOK];
	uint8_t *kv;
};

static void tunit_make(struct tunit *t, const struct kvl_shape *s, uint64_t req, uint32_t index,
		       int32_t n, uint32_t flags)
{
	uint64_t r = req * 1000003u + index + 1;
	size_t bytes = kvl_kv_bytes(s, n);
	t->kv = malloc(bytes + 1);
	cr_assert(t->kv);
	for (int32_t i = 0; i < n; i++) {
		t->ids[i] = (int32_t)(rng_next(&r) % 151936);
		t->pos[i] = (int32_t)(index * 100 + (uint32_t)i);
	}
	for (size_t i = 0; i < bytes; i++)
		t->kv[i] = (uint8_t)rng_next(&r);
	t->u = (struct kvl_unit){.req = req, .index = index, .flags = flags, .n_tok = n,
				 .ids = t->ids, .pos = t->pos, .kv = t->kv};
}

static void tunit_check(const struct tunit *t, const struct kvl_unit *u, const struct kvl_shape *s)
{
	cr_assert_eq(u->req, t->u.req);
	cr_assert_eq(u->index, t->u.index);
	cr_assert_eq(u->flags, t->u.flags);
	cr_assert_eq(u->n_tok, t->u.n_tok);
	if (!u->n_tok)
		return;
	cr_assert(!memcmp(u->ids, t->ids, 4 * (size_t)u->n_tok), "ids differ");
	cr_assert(!memcmp(u->pos, t->pos, 4 * (size_t)u->n_tok), "positions differ");
	cr_assert(!memcmp(u->kv, t->kv, kvl_kv_bytes(s, u->n_tok)), "KV differs");
}

/* Waits (at most ~5 s) for the next unit on k. */
static void recv_unit(struct kvl *k, struct kvl_unit *u)
{
	struct cm_err err = {0};
	for (int i = 0; i < 100; i++) {
		int rc = kvl_recv(k, 50, u, &err);
		cr_assert_geq(rc, 0, "kvl_recv: %s", err.msg);
		if (rc == 1)
			return;
	}
	cr_assert_fail("no unit arrived");
}

/* Lets a sender handle its acks until peer has no unit unacknowledged. */
static void wait_acked(struct kvl *k, const char *peer)
{
	struct kvl_unit u;
	for (int i = 0; i < 200 && kvl_peer_unacked(k, peer, NULL); i++)
		cr_assert_eq(kvl_recv(k, 20, &u, NULL), 0);
	cr_assert_eq(kvl_peer_unacked(k, peer, NULL), 0, "acks did not come back");
}

static void roundtrip(enum kern_dtype dt)
{
	struct kvl_shape s = small_shape(dt);
	struct kvl *a = mk(s, 0, 0), *b = mk(s, 0, 0);
	const char *eb = kvl_endpoint(b);
	static const int32_t n_tok[] = {5, 1, 17, MAX_TOK, 3, 0};
	enum { N = CM_ARRAY_LEN(n_tok) };
	struct tunit t[N + 1];
	for (int i = 0; i < N; i++)
		tunit_make(&t[i], &s, 42, (uint32_t)i, n_tok[i], i == N - 1 ? KVL_CLOSE : 0);
	tunit_make(&t[N], &s, 42, 0, 4, KVL_RESEND); /* the request again, from unit 0 */
	struct cm_err err = {0};
	for (int i = 0; i <= N; i++)
		cr_assert_eq(kvl_send(a, eb, &t[i].u, &err), CM_OK, "send %d: %s", i, err.msg);
	cr_assert_eq(kvl_peer_unacked(a, eb, NULL), N + 1);
	struct kvl_unit u[N + 1];
	for (int i = 0; i <= N; i++) {
		recv_unit(b, &u[i]);
		tunit_check(&t[i], &u[i], &s);
		cr_assert_str_eq(u[i].from, kvl_endpoint(a));
	}
	for (int i = 0; i <= N; i++) { /* held units stay valid across kvl_recv */
		tunit_check(&t[i], &u[i], &s);
		cr_assert_eq(kvl_ack(b, &u[i], &err), CM_OK, "%s", err.msg);
	}
	cr_assert_eq(kvl_ack(b, &u[0], &err), CM_ENOENT);
	wait_acked(a, eb);
	struct kvl_stats sa, sb;
	kvl_stats(a, &sa);
	kvl_stats(b, &sb);
	cr_assert_eq(sa.units_sent, N + 1);
	cr_assert_eq(sb.units_received, N + 1);
	cr_assert_eq(sb.units_dropped, 0);
	cr_assert_eq(sa.bytes_sent, sb.bytes_received);
	int64_t tok = 4;
	for (int i = 0; i < N; i++)
		tok += n_tok[i];
	cr_assert_eq(sb.bytes_received, (int64_t)kvl_kv_bytes(&s, (int32_t)tok) + 8 * tok);
	for (int i = 0; i <= N; i++)
		free(t[i].kv);
	kvl_free(a);
	kvl_free(b);
}

Test(kvlink, roundtrip_f32, .timeout = 30)
{
	roundtrip(KERN_F32);
}

Test(kvlink, roundtrip_f16, .timeout = 30)
{
	roundtrip(KERN_F16);
}

Test(kvlink, window_and_acks, .timeout = 30)
{
	struct kvl_shape s = small_shape(KERN_F32);
	size_t unit = kvl_kv_bytes(&s, 4);
	struct kvl *a = mk(s, 2 * unit, 0), *b = mk(s, 0, 0);
	const char *eb = kvl_endpoint(b);
	struct tunit t[4];
	for (int i = 0; i < 3; i++)
		tunit_make(&t[i], &s, 7, (uint32_t)i, 4, 0);
	tunit_make(&t[3], &s, 7, 3, 16, 0); /* twice the window */
	struct cm_err err = {0};
	cr_assert_eq(kvl_send(a, eb, &t[0].u, &err), CM_OK);
	cr_assert_eq(kvl_send(a, eb, &t[1].u, &err), CM_OK);
	cr_assert_eq(kvl_send(a, eb, &t[2].u, &err), CM_EAGAIN);
	struct kvl_stats st;
	kvl_stats(a, &st);
	cr_assert_eq(st.stalls, 1);
	size_t bytes;
	cr_assert_eq(kvl_peer_unacked(a, eb, &bytes), 2);
	cr_assert_eq(bytes, 2 * unit);

	struct kvl_unit u;
	recv_unit(b, &u);
	tunit_check(&t[0], &u, &s);
	cr_assert_eq(kvl_ack(b, &u, &err), CM_OK);
	int rc = CM_EAGAIN;
	for (int i = 0; i < 200 && rc == CM_EAGAIN; i++) {
		cr_assert_eq(kvl_recv(a, 20, &u, NULL), 0);
		rc = kvl_send(a, eb, &t[2].u, &err);
	}
	cr_assert_eq(rc, CM_OK, "the ack did not reopen the window: %s", err.msg);
	cr_assert_eq(kvl_send(a, eb, &t[3].u, &err), CM_EAGAIN, "big unit goes alone");
	for (int i = 1; i < 3; i++) {
		recv_unit(b, &u);
		tunit_check(&t[i], &u, &s);
		kvl_ack(b, &u, NULL);
	}
	wait_acked(a, eb);
	cr_assert_eq(kvl_send(a, eb, &t[3].u, &err), CM_OK, "%s", err.msg);
	recv_unit(b, &u);
	tunit_check(&t[3], &u, &s);
	for (int i = 0; i < 4; i++)
		free(t[i].kv);
	kvl_free(a);
	kvl_free(b);
}

static void mismatch(struct kvl_shape sb)
{
	struct kvl_shape s = small_shape(KERN_F32);
	struct kvl *a = mk(s, 0, 0), *b = mk(sb, 0, 0);
	const char *eb = kvl_endpoint(b);
	struct tunit t;
	tunit_make(&t, &s, 1, 0, 4, 0);
	struct cm_err err = {0};
	cr_assert_eq(kvl_send(a, eb, &t.u, &err), CM_OK);
	struct kvl_unit u;
	int rc = 0;
	for (int i = 0; i < 100 && rc == 0; i++)
		rc = kvl_recv(b, 50, &u, &err);
	cr_assert_eq(rc, CM_ESHAPE, "got %d: %s", rc, err.msg);
	cr_assert(strstr(err.msg, kvl_endpoint(a)), "message names the sender: %s", err.msg);
	struct kvl_stats st;
	kvl_stats(b, &st);
	cr_assert_eq(st.units_dropped, 1);
	cr_assert_eq(st.units_received, 0);
	/* the rejection reaches the sender: the peer counts as dead */
	for (int i = 0; i < 100 && !kvl_peer_dead(a, eb, NULL); i++)
		kvl_recv(a, 20, &u, NULL);
	cr_assert(kvl_peer_dead(a, eb, &err));
	cr_assert(strstr(err.msg, "rejected"), "%s", err.msg);
	cr_assert_eq(kvl_send(a, eb, &t.u, &err), CM_EPEER);
	free(t.kv);
	kvl_free(a);
	kvl_free(b);
}

Test(kvlink, shape_mismatch_dropped, .timeout = 30)
{
	struct kvl_shape sb = small_shape(KERN_F32);
	sb.n_kv_head = 4;
	mismatch(sb);
}

Test(kvlink, dtype_mismatch_dropped, .timeout = 30)
{
	mismatch(small_shape(KERN_F16));
}

/* ---- garbage ---- */

#define RAW_ID "tcp://127.0.0.1:9"

struct raw {
	void *ctx, *sock;
};

static void raw_open(struct raw *r, const char *to)
{
	r->ctx = zmq_ctx_new();
	r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
	int linger = 0;
	zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(r->sock, ZMQ_ROUTING_ID, RAW_ID, strlen(RAW_ID));
	cr_assert_eq(zmq_connect(r->sock, to), 0);
}

static void raw_close(struct raw *r)
{
	zmq_close(r->sock);
	zmq_ctx_term(r->ctx);
}

static void raw_send(struct raw *r, void *const *data, const size_t *len, int n)
{
	static uint8_t empty[1];
	for (int i = 0; i < n; i++)
		cr_assert_geq(zmq_send(r->sock, len[i] ? data[i] : empty, len[i],
				       i + 1 < n ? ZMQ_SNDMORE : 0), 0);
}

/* A well-formed unit of n tokens from RAW_ID, as frames the caller may spoil. */
struct forged {
	struct kvl__hdr h;
	uint8_t hdr[KVL__HDR_BYTES];
	int32_t ids[MAX_TOK], pos[MAX_TOK];
	uint8_t kv[8192];
	void *data[4];
	size_t len[4];
};

static void forge(struct forged *f, const struct kvl_shape *s, const char *to, int32_t n)
{
	memset(f, 0, sizeof(*f));
	f->h = (struct kvl__hdr){.kind = KVL__UNIT, .req = 9, .seq = 1, .n_tok = n, .shape = *s,
				 .kv_bytes = kvl_kv_bytes(s, n), .ids_bytes = 4 * (uint32_t)n,
				 .pos_bytes = 4 * (uint32_t)n};
	snprintf(f->h.src, sizeof(f->h.src), "%s", RAW_ID);
	snprintf(f->h.dst, sizeof(f->h.dst), "%s", to);
	cr_assert_leq(f->h.kv_bytes, sizeof(f->kv));
	for (int i = 0; i < n; i++)
		f->ids[i] = f->pos[i] = i;
	kvl__hdr_encode(&f->h, f->hdr);
	void *d[4] = {f->hdr, f->ids, f->pos, f->kv};
	size_t l[4] = {KVL__HDR_BYTES, 4 * (size_t)n, 4 * (size_t)n, f->h.kv_bytes};
	memcpy(f->data, d, sizeof(d));
	memcpy(f->len, l, sizeof(l));
}

/* Reads what k has until it stays quiet; returns the drops, checks the codes. */
static int drain(struct kvl *k, int *units)
{
	int drops = 0, quiet = 0;
	struct cm_err err = {0};
	while (quiet < 3) {
		struct kvl_unit u;
		int rc = kvl_recv(k, 30, &u, &err);
		if (rc == 0) {
			quiet++;
			continue;
		}
		quiet = 0;
		if (rc == 1) {
			(*units)++;
			kvl_ack(k, &u, NULL);
			continue;
		}
		cr_assert(rc == CM_EPROTO || rc == CM_ESHAPE || rc == CM_EPEER, "rc %d: %s", rc,
			  err.msg);
		cr_assert(strchr(err.msg, '\n') == NULL);
		drops++;
	}
	return drops;
}

Test(kvlink, garbage_dropped, .timeout = 60)
{
	struct kvl_shape s = small_shape(KERN_F16);
	struct kvl *a = mk(s, 0, 0), *b = mk(s, 0, 0);
	const char *eb = kvl_endpoint(b);
	struct raw r;
	raw_open(&r, eb);
	struct forged f;
	int n_bad = 0, units = 0;
	/* targeted: each spoils one thing */
	for (int c = 0; c < 11; c++, n_bad++) {
		forge(&f, &s, eb, 4);
		int nf = 4;
		switch (c) {
		case 0: f.len[1] -= 4; break;                           /* ids short */
		case 1: f.h.n_tok = MAX_TOK + 1; break;                 /* too long */
		case 2: f.h.n_tok = -3; break;
		case 3: f.h.kv_bytes += 2; break;                       /* declared size */
		case 4: f.len[3] -= 2; break;                           /* KV frame size */
		case 5: f.h.via = KVL__VIA_NCCL; f.len[3] = 0; break;   /* no communicator */
		case 6: f.h.kind = 77; break;
		case 7: f.h.flags = 0x10; break;
		case 8: f.h.n_tok = 0; f.h.ids_bytes = f.h.pos_bytes = 0; f.h.kv_bytes = 0;
			f.len[1] = f.len[2] = f.len[3] = 0; break;      /* empty, not CLOSE */
		case 9: nf = 3; break;                                  /* a frame missing */
		case 10: f.h.shape.head_dim = 16; break;
		}
		kvl__hdr_encode(&f.h, f.hdr);
		raw_send(&r, f.data, f.len, nf);
	}
	forge(&f, &s, eb, 4);
	f.hdr[0] ^= 1; /* magic */
	raw_send(&r, f.data, f.len, 4);
	forge(&f, &s, eb, 4);
	memset(f.hdr + KVL__HDR_FIXED + KVL__ID_MAX, 'x', KVL__EP_MAX); /* unterminated */
	raw_send(&r, f.data, f.len, 4);
	n_bad += 2;
	cr_assert_eq(drain(b, &units), n_bad);
	cr_assert_eq(units, 0);

	/* a well-formed forged unit is taken */
	forge(&f, &s, eb, 4);
	raw_send(&r, f.data, f.len, 4);
	drain(b, &units);
	cr_assert_eq(units, 1);

	/* random frames, and random bytes flipped in good units */
	uint64_t seed = 0x9e3779b97f4a7c15u;
	static uint8_t junk[7][700];
	for (int m = 0; m < 400; m++) {
		if (m % 2) {
			forge(&f, &s, eb, 1 + (int32_t)(rng_next(&seed) % 8));
			for (int j = 0; j < 3; j++) {
				int fr = (int)(rng_next(&seed) % 4);
				if (f.len[fr])
					((uint8_t *)f.data[fr])[rng_next(&seed) % f.len[fr]] ^=
						(uint8_t)(1u << (rng_next(&seed) % 8));
			}
			raw_send(&r, f.data, f.len, 4);
			continue;
		}
		int nf = 1 + (int)(rng_next(&seed) % 7);
		void *d[7];
		size_t l[7];
		for (int i = 0; i < nf; i++) {
			l[i] = rng_next(&seed) % (i == 0 ? KVL__HDR_BYTES + 2 : 700);
			for (size_t j = 0; j < l[i]; j++)
				junk[i][j] = (uint8_t)rng_next(&seed);
			d[i] = junk[i];
		}
		raw_send(&r, d, l, nf);
	}
	int drops = drain(b, &units);
	cr_assert_geq(drops, 200, "all junk is dropped (%d)", drops);

	/* the link still works */
	struct tunit t;
	tunit_make(&t, &s, 5, 0, 6, 0);
	cr_assert_eq(kvl_send(a, eb, &t.u, NULL), CM_OK);
	struct kvl_unit u;
	recv_unit(b, &u);
	tunit_check(&t, &u, &s);
	free(t.kv);
	raw_close(&r);
	kvl_free(a);
	kvl_free(b);
}

/* ---- liveness ---- */

Test(kvlink, dead_peer_by_timeout, .timeout = 30)
{
	struct kvl_shape s = small_shape(KERN_F32);
	struct kvl *a = mk(s, 0, 300), *b = mk(s, 0, 0);
	char eb[KVL__EP_MAX];
	snprintf(eb, sizeof(eb), "%s", kvl_endpoint(b));
	struct tunit t;
	tunit_make(&t, &s, 3, 0, 2, 0);
	struct cm_err err = {0};
	cr_assert_eq(kvl_send(a, eb, &t.u, &err), CM_OK);
	kvl_free(b); /* never acknowledges */
	struct kvl_unit u;
	for (int i = 0; i < 200 && !kvl_peer_dead(a, eb, NULL); i++)
		cr_assert_eq(kvl_recv(a, 25, &u, NULL), 0);
	cr_assert(kvl_peer_dead(a, eb, &err), "the closed peer is found dead");
	cr_assert(strstr(err.msg, eb) && strstr(err.msg, "did not acknowledge"), "%s", err.msg);
	cr_assert_eq(kvl_send(a, eb, &t.u, &err), CM_EPEER);
	kvl_drop_peer(a, eb);
	cr_assert(!kvl_peer_dead(a, eb, NULL));
	cr_assert_eq(kvl_send(a, eb, &t.u, &err), CM_OK, "a dropped peer starts afresh");
	free(t.kv);
	kvl_free(a);
}

Test(kvlink, held_ack_is_backpressure_not_death, .timeout = 30)
{
	struct kvl_shape s = small_shape(KERN_F32);
	struct kvl *a = mk(s, 0, 150), *b = mk(s, 0, 0);
	const char *eb = kvl_endpoint(b);
	struct tunit t;
	tunit_make(&t, &s, 4, 0, 8, 0);
	cr_assert_eq(kvl_send(a, eb, &t.u, NULL), CM_OK);
	struct kvl_unit u, v;
	recv_unit(b, &u);
	/* b holds the unit (no KV blocks) for 5 timeouts but keeps its loop going */
	int64_t end = cm_time_us() + 750000;
	while (cm_time_us() < end) {
		cr_assert_eq(kvl_recv(a, 5, &v, NULL), 0);
		cr_assert_eq(kvl_recv(b, 5, &v, NULL), 0);
	}
	cr_assert(!kvl_peer_dead(a, eb, NULL), "pings keep a slow receiver alive");
	tunit_check(&t, &u, &s);
	cr_assert_eq(kvl_ack(b, &u, NULL), CM_OK);
	wait_acked(a, eb);
	cr_assert(!kvl_peer_dead(a, eb, NULL));
	free(t.kv);
	kvl_free(a);
	kvl_free(b);
}

Test(kvlink, restarted_peer_lost_units, .timeout = 30)
{
	struct kvl_shape s = small_shape(KERN_F32);
	struct kvl *a = mk(s, 0, 2000), *b = mk(s, 0, 0);
	char eb[KVL__EP_MAX];
	snprintf(eb, sizeof(eb), "%s", kvl_endpoint(b));
	struct tunit t;
	tunit_make(&t, &s, 6, 0, 2, 0);
	cr_assert_eq(kvl_send(a, eb, &t.u, NULL), CM_OK);
	struct kvl_unit u;
	recv_unit(b, &u); /* taken, never acknowledged: b dies */
	kvl_free(b);
	struct kvl_params p = kvl_default_params();
	p.shape = s;
	p.bind = eb; /* a new worker on the same port */
	struct cm_err err = {0};
	b = kvl_new(&p, &err);
	cr_assert(b, "rebind %s: %s", eb, err.msg);
	for (int i = 0; i < 300 && !kvl_peer_dead(a, eb, NULL); i++) {
		kvl_recv(a, 10, &u, NULL);
		kvl_recv(b, 10, &u, NULL);
	}
	cr_assert(kvl_peer_dead(a, eb, &err), "the new worker does not have the unit");
	cr_assert(strstr(err.msg, "lost"), "%s", err.msg);
	free(t.kv);
	kvl_free(a);
	kvl_free(b);
}

Test(kvlink, free_with_unacked_sends, .timeout = 20)
{
	struct kvl_shape s = small_shape(KERN_F32);
	struct kvl *a = mk(s, 0, 0), *b = mk(s, 0, 0);
	char eb[KVL__EP_MAX];
	snprintf(eb, sizeof(eb), "%s", kvl_endpoint(b));
	kvl_free(b);
	struct tunit t;
	tunit_make(&t, &s, 8, 0, MAX_TOK, 0);
	for (uint32_t i = 0; i < 20; i++) {
		t.u.index = i;
		cr_assert_eq(kvl_send(a, eb, &t.u, NULL), CM_OK);
	}
	cr_assert_eq(kvl_send(a, "tcp://127.0.0.1:1", &t.u, NULL), CM_OK);
	cr_assert_eq(kvl_peer_unacked(a, eb, NULL), 20);
	kvl_free(a); /* must not wait for the queued units */
	free(t.kv);
}

/* ---- parameters and endpoints ---- */

Test(kvlink, bad_input_refused)
{
	struct kvl_params p = kvl_default_params();
	struct cm_err err = {0};
	cr_assert_null(kvl_new(&p, &err), "no shape");
	cr_assert_eq(err.code, CM_EINVAL);
	p.shape = small_shape(KERN_Q8_0);
	cr_assert_null(kvl_new(&p, &err));
	cr_assert_eq(err.code, CM_EINVAL);
	p.shape = small_shape(KERN_F32);
	p.bind = "tcp://no-such-interface-xyz:0";
	cr_assert_null(kvl_new(&p, &err));
	cr_assert_eq(err.code, CM_EIO);

	struct kvl *a = mk(small_shape(KERN_F32), 0, 0);
	struct kvl_shape s = small_shape(KERN_F32);
	struct tunit t;
	tunit_make(&t, &s, 1, 0, 4, 0);
	const char *to = "tcp://127.0.0.1:1";
	t.u.n_tok = MAX_TOK + 1;
	cr_assert_eq(kvl_send(a, to, &t.u, &err), CM_EINVAL);
	t.u.n_tok = 0;
	cr_assert_eq(kvl_send(a, to, &t.u, &err), CM_EINVAL, "empty without CLOSE");
	t.u.n_tok = 4;
	t.u.flags = 8;
	cr_assert_eq(kvl_send(a, to, &t.u, &err), CM_EINVAL);
	t.u.flags = 0;
	t.u.kv = NULL;
	cr_assert_eq(kvl_send(a, to, &t.u, &err), CM_EINVAL);
	cr_assert_eq(kvl_send(a, "", &t.u, &err), CM_EINVAL);
	struct kvl_unit u = {.from = to, .seq = 3};
	cr_assert_eq(kvl_ack(a, &u, &err), CM_ENOENT);
	cr_assert_eq(kvl_peer_unacked(a, to, NULL), 0);
	uint8_t id[KVL_NCCL_ID_BYTES] = {0};
	cr_assert_eq(kvl_nccl_connect(a, to, id, 0, &err), CM_EINVAL, "ZeroMQ link");
	free(t.kv);
	kvl_free(a);
}

Test(kvlink, endpoint_and_fd)
{
	struct kvl_params p = kvl_default_params();
	p.shape = small_shape(KERN_F32);
	p.bind = "tcp://*:0";
	p.advertise_host = "kv-host.example";
	struct cm_err err = {0};
	struct kvl *w = kvl_new(&p, &err);
	cr_assert(w, "%s", err.msg);
	const char *ep = kvl_endpoint(w);
	cr_assert(!strncmp(ep, "tcp://kv-host.example:", 22), "%s", ep);
	cr_assert_gt(atoi(ep + 22), 0, "%s", ep);
	kvl_free(w);

	struct kvl *a = mk(small_shape(KERN_F32), 0, 0), *b = mk(small_shape(KERN_F32), 0, 0);
	cr_assert(!strncmp(kvl_endpoint(b), "tcp://127.0.0.1:", 16), "%s", kvl_endpoint(b));
	int fd = kvl_fd(b);
	cr_assert_geq(fd, 0);
	struct kvl_shape s = small_shape(KERN_F32);
	struct tunit t;
	tunit_make(&t, &s, 2, 0, 3, KVL_CLOSE);
	cr_assert_eq(kvl_send(a, kvl_endpoint(b), &t.u, NULL), CM_OK);
	int got = 0;
	struct kvl_unit u;
	for (int i = 0; i < 100 && !got; i++) { /* a poll loop: wait on the fd, then drain */
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		poll(&pfd, 1, 50);
		int rc;
		while ((rc = kvl_recv(b, 0, &u, NULL)) != 0)
			got += rc == 1;
	}
	cr_assert_eq(got, 1);
	tunit_check(&t, &u, &s);
	free(t.kv);
	kvl_free(a);
	kvl_free(b);
}

/* ---- NCCL ---- */

Test(kvlink, nccl_unavailable_says_so)
{
	int n = kvl__cuda_devices();
	if (n > 0)
		cr_skip("%d CUDA device(s) here: the NCCL transport is tested below", n);
	struct cm_err err = {0};
	cr_assert(!kvl_nccl_available());
	struct kvl_params p = kvl_default_params();
	p.shape = small_shape(KERN_F32);
	p.transport = KVL_NCCL;
	cr_assert_null(kvl_new(&p, &err));
	cr_assert_eq(err.code, CM_EUNSUPPORTED, "%s", err.msg);
	if (n < 0) { /* no CUDA in this build */
		uint8_t id[KVL_NCCL_ID_BYTES];
		cr_assert_eq(kvl_nccl_unique_id(id, &err), CM_EUNSUPPORTED);
	}
}

struct nccl_side {
	struct kvl *k;
	const char *peer;
	const uint8_t *id;
	int rank, n_units, ok;
	struct kvl_shape s;
	char msg[CM_ERR_MSG_MAX];
};

static void *nccl_sender(void *arg)
{
	struct nccl_side *sd = arg;
	struct cm_err err = {0};
	if (kvl_nccl_connect(sd->k, sd->peer, sd->id, 0, &err) < 0)
		goto out;
	struct tunit t;
	for (int i = 0; i < sd->n_units; i++) {
		tunit_make(&t, &sd->s, 11, (uint32_t)i, 25, i + 1 == sd->n_units ? KVL_CLOSE : 0);
		int rc = CM_EAGAIN;
		struct kvl_unit u;
		for (int j = 0; j < 2000 && rc == CM_EAGAIN; j++)
			if ((rc = kvl_send(sd->k, sd->peer, &t.u, &err)) == CM_EAGAIN)
				kvl_recv(sd->k, 5, &u, NULL);
		free(t.kv);
		if (rc < 0)
			goto out;
	}
	for (int j = 0; j < 2000 && kvl_peer_unacked(sd->k, sd->peer, NULL); j++) {
		struct kvl_unit u;
		kvl_recv(sd->k, 5, &u, NULL);
	}
	sd->ok = !kvl_peer_unacked(sd->k, sd->peer, NULL);
	snprintf(err.msg, sizeof(err.msg), "acks missing");
out:
	snprintf(sd->msg, sizeof(sd->msg), "%s", err.msg);
	return NULL;
}

static void *nccl_receiver(void *arg)
{
	struct nccl_side *sd = arg;
	struct cm_err err = {0};
	if (kvl_nccl_connect(sd->k, sd->peer, sd->id, 1, &err) < 0)
		goto out;
	int got = 0;
	for (int j = 0; j < 2000 && got < sd->n_units; j++) {
		struct kvl_unit u;
		int rc = kvl_recv(sd->k, 5, &u, &err);
		if (rc < 0)
			goto out;
		if (rc == 0)
			continue;
		struct tunit t;
		tunit_make(&t, &sd->s, 11, (uint32_t)got, 25, 0);
		bool same = u.index == (uint32_t)got && u.n_tok == 25 &&
			    !memcmp(u.kv, t.kv, kvl_kv_bytes(&sd->s, 25)) &&
			    !memcmp(u.ids, t.ids, 100);
		free(t.kv);
		if (!same) {
			snprintf(err.msg, sizeof(err.msg), "unit %d differs", got);
			goto out;
		}
		kvl_ack(sd->k, &u, NULL);
		got++;
	}
	sd->ok = got == sd->n_units;
out:
	snprintf(sd->msg, sizeof(sd->msg), "%s", err.msg);
	return NULL;
}

/* Two ranks on two GPUs, one thread each (NCCL refuses two ranks on one
 * device, and a rank's calls may wait for the other's). */
Test(kvlink, nccl_two_gpus, .timeout = 120)
{
	int n = kvl__cuda_devices();
	if (n < 2)
		cr_skip("the NCCL transport test needs 2 CUDA devices; this machine has %d%s",
			CM_MAX(n, 0), n < 0 ? " (and this build has no CUDA/NCCL)" : "");
	/* Qwen3-0.6B's KV: 28 layers, 8 KV heads of 128, f16; 25-token units */
	struct kvl_shape s = {.n_layer = 28, .n_kv_head = 8, .head_dim = 128, .dtype = KERN_F16};
	struct kvl_params p = kvl_default_params();
	p.shape = s;
	p.transport = KVL_NCCL;
	p.peer_timeout_ms = 30000;
	struct cm_err err = {0};
	p.device = 0;
	struct kvl *a = kvl_new(&p, &err);
	cr_assert(a, "%s", err.msg);
	p.device = 1;
	struct kvl *b = kvl_new(&p, &err);
	cr_assert(b, "%s", err.msg);
	uint8_t id[KVL_NCCL_ID_BYTES];
	cr_assert_eq(kvl_nccl_unique_id(id, &err), CM_OK, "%s", err.msg);
	struct nccl_side sa = {.k = a, .peer = kvl_endpoint(b), .id = id, .n_units = 20, .s = s};
	struct nccl_side sb = {.k = b, .peer = kvl_endpoint(a), .id = id, .n_units = 20, .s = s};
	pthread_t ta, tb;
	pthread_create(&ta, NULL, nccl_sender, &sa);
	pthread_create(&tb, NULL, nccl_receiver, &sb);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	cr_assert(sb.ok, "receiver: %s", sb.msg);
	cr_assert(sa.ok, "sender: %s", sa.msg);
	struct kvl_stats st;
	kvl_stats(a, &st);
	cr_assert_eq(st.units_nccl, 20, "KV went through NCCL");
	kvl_stats(b, &st);
	cr_assert_eq(st.units_nccl, 20);
	kvl_free(a);
	kvl_free(b);
}
