/* The encode and decode roles of a worker (issue 7, docs/disaggregation.md).
 *
 * Encode: each MODE_ENCODE request keeps its units' ids; after every step the
 * units whose KV is written are exported from the engine and sent to the
 * request's decode worker over the KV link, in order, then a CLOSE unit once
 * the input is closed. A full window (the decode side holds its acks) leaves
 * the rest pending: the loop goes on stepping and retries after acks. The
 * shard stays in the engine until the coordinator aborts the request, so a
 * Retarget ships it again to a new decode worker without encoding anything.
 *
 * Decode: units arrive for remote_source requests and go to the engine with
 * wk_engine_input_kv in index order; a unit the engine cannot take yet (no free
 * KV blocks, or its Start still on its way) is copied and held with its ack,
 * which is how back-pressure reaches the encode worker. */
#include "proc-impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- set-up --------------------------------------------------------------- */

int wk__split_init(struct worker *w, struct cm_err *err)
{
	if (w->kvl)
		return CM_OK; /* every role has one: a `both` worker may take either side */
	const struct md_config *cfg = &w->model->cfg;
	struct kvl_params kp = kvl_default_params();
	kp.bind = w->p->kv_listen;
	kp.self_id = w->id;
	kp.shape = (struct kvl_shape){
		.n_layer = cfg->n_layer,
		.n_kv_head = cfg->n_kv_head,
		.head_dim = cfg->head_dim,
		.dtype = w->ep.kv_dtype,
	};
	kp.transport = KVL_ZMQ;
	if (!(w->kvl = kvl_new(&kp, err)))
		return err->code;
	w->held_tail = &w->held;
	fprintf(stderr, "tandem worker %s: KV link at %s\n", w->id, kvl_endpoint(w->kvl));
	return CM_OK;
}

static void ack(struct worker *w, const struct kvl_unit *u)
{
	struct cm_err err = {0};
	if (kvl_ack(w->kvl, u, &err) < 0)
		CM_LOG_WARN("worker: KV link ack: %s", err.msg);
}

static void held_fix_tail(struct worker *w)
{
	w->held_tail = &w->held;
	while (*w->held_tail)
		w->held_tail = &(*w->held_tail)->next;
}

/* Acknowledges and frees every held unit of req (every unit when all). */
static void held_drop(struct worker *w, uint64_t req, bool all)
{
	for (struct wk_held **pp = &w->held; *pp;) {
		struct wk_held *h = *pp;
		if (!all && h->u.req != req) {
			pp = &h->next;
			continue;
		}
		ack(w, &h->u);
		*pp = h->next;
		free(h);
	}
	held_fix_tail(w);
}

void wk__split_reset(struct worker *w)
{
	for (int i = 0; i < w->n_enc; i++) {
		free(w->enc[i].ids);
		free(w->enc[i].unit_end);
	}
	w->n_enc = 0;
	w->n_dec = 0;
	if (w->kvl)
		held_drop(w, 0, true);
	w->stuck_since = 0;
}

void wk__split_fini(struct worker *w)
{
	wk__split_reset(w);
	free(w->enc);
	free(w->dec);
	free(w->kvbuf);
	free(w->posbuf);
	kvl_free(w->kvl);
	w->kvl = NULL;
}

/* ---- encode role ---------------------------------------------------------- */

static struct wk_enc_req *enc_find(struct worker *w, uint64_t req)
{
	for (int i = 0; i < w->n_enc; i++)
		if (w->enc[i].id == req)
			return &w->enc[i];
	return NULL;
}

int wk__enc_start(struct worker *w, uint64_t req, const char *peer)
{
	if (w->n_enc == w->cap_enc) {
		int cap = CM_MAX(2 * w->cap_enc, 16);
		struct wk_enc_req *p = realloc(w->enc, (size_t)cap * sizeof(*p));
		if (!p)
			return CM_ENOMEM;
		w->enc = p;
		w->cap_enc = cap;
	}
	struct wk_enc_req *r = &w->enc[w->n_enc++];
	memset(r, 0, sizeof(*r));
	r->id = req;
	wk__copy_str(r->peer, sizeof(r->peer), peer);
	return CM_OK;
}

void wk__enc_unit(struct worker *w, uint64_t req, const int32_t *ids, int32_t n)
{
	struct wk_enc_req *r = enc_find(w, req);
	if (!r || n <= 0)
		return;
	if (r->n_ids + n > r->cap_ids) {
		int32_t cap = CM_MAX(2 * r->cap_ids, r->n_ids + n + 256);
		int32_t *p = realloc(r->ids, (size_t)cap * sizeof(*p));
		if (!p)
			goto oom;
		r->ids = p;
		r->cap_ids = cap;
	}
	if (r->n_units == r->cap_units) {
		int32_t cap = CM_MAX(2 * r->cap_units, 16);
		int32_t *p = realloc(r->unit_end, (size_t)cap * sizeof(*p));
		if (!p)
			goto oom;
		r->unit_end = p;
		r->cap_units = cap;
	}
	memcpy(r->ids + r->n_ids, ids, (size_t)n * sizeof(*ids));
	r->n_ids += n;
	r->unit_end[r->n_units++] = r->n_ids;
	return;
oom:;
	struct cm_err err = {0};
	cm_err_set(&err, CM_ENOMEM, "encode worker out of memory");
	wk__send_failed(w, req, &err);
}

void wk__enc_close(struct worker *w, uint64_t req)
{
	struct wk_enc_req *r = enc_find(w, req);
	if (r)
		r->closed = true;
}

static bool peer_in_use(const struct worker *w, const char *peer)
{
	for (int i = 0; i < w->n_enc; i++)
		if (!strcmp(w->enc[i].peer, peer))
			return true;
	return false;
}

void wk__enc_retarget(struct worker *w, uint64_t req, const char *peer)
{
	struct wk_enc_req *r = enc_find(w, req);
	if (!r) {
		struct cm_err err = {0};
		cm_err_set(&err, CM_ENOENT, "retarget of a request this worker does not hold");
		return wk__send_failed(w, req, &err);
	}
	char old[WK_PEER_MAX];
	memcpy(old, r->peer, sizeof(old));
	wk__copy_str(r->peer, sizeof(r->peer), peer);
	r->shipped = 0;
	r->close_sent = false;
	r->resend = true;
	r->dead_since = 0;
	CM_LOG_INFO("worker: request %llu now ships to %s", (unsigned long long)req, r->peer);
	if (old[0] && strcmp(old, r->peer) && !peer_in_use(w, old))
		kvl_drop_peer(w->kvl, old);
}

static int grow_bufs(struct worker *w, int32_t n)
{
	size_t bytes = wk_engine_kv_bytes(w->eng, n);
	if (bytes > w->kvbuf_cap) {
		void *p = realloc(w->kvbuf, bytes);
		if (!p)
			return CM_ENOMEM;
		w->kvbuf = p;
		w->kvbuf_cap = bytes;
	}
	if (n > w->posbuf_cap) {
		int32_t *p = realloc(w->posbuf, (size_t)n * sizeof(*p));
		if (!p)
			return CM_ENOMEM;
		w->posbuf = p;
		w->posbuf_cap = n;
	}
	return CM_OK;
}

/* Sends unit k of r (k == n_units: the CLOSE unit). CM_EAGAIN: the window is full. */
static int ship_unit(struct worker *w, struct wk_enc_req *r, int32_t k, struct cm_err *err)
{
	struct kvl_unit u = {.req = r->id, .index = (uint32_t)k};
	if (k == 0 && r->resend)
		u.flags |= KVL_RESEND;
	if (k == r->n_units) {
		u.flags |= KVL_CLOSE;
	} else {
		int32_t from = k ? r->unit_end[k - 1] : 0;
		u.n_tok = r->unit_end[k] - from;
		int rc = grow_bufs(w, u.n_tok);
		if (rc < 0)
			return cm_err_set(err, rc, "encode worker out of memory");
		rc = wk_engine_export_source(w->eng, r->id, from, u.n_tok, w->kvbuf, w->posbuf,
					     err);
		if (rc < 0)
			return rc;
		u.ids = r->ids + from;
		u.pos = w->posbuf;
		u.kv = w->kvbuf;
	}
	int rc = kvl_send(w->kvl, r->peer, &u, err);
	if (rc < 0)
		return rc;
	w->kv_tokens_sent += u.n_tok;
	if (k == 0)
		r->resend = false;
	return CM_OK;
}

/* r's decode worker does not answer: the coordinator retargets r when it sees
 * that worker die; if it does not within WK_PEER_GRACE_US, r fails. True while
 * waiting. */
static bool peer_lost(struct wk_enc_req *r, const struct cm_err *err)
{
	int64_t now = cm_time_us();
	if (!r->dead_since) {
		CM_LOG_WARN("worker: request %llu: %s; waiting for a new decode worker",
			    (unsigned long long)r->id, err->msg);
		r->dead_since = now;
	}
	return now - r->dead_since < WK_PEER_GRACE_US;
}

/* Ships r's complete units; false when its peer's window is full. */
static bool ship_req(struct worker *w, struct wk_enc_req *r)
{
	struct cm_err err = {0};
	int32_t done = wk_engine_source_encoded(w->eng, r->id);
	if (done < 0)
		return true; /* finished in the engine: its event tells the coordinator */
	while (r->shipped < r->n_units || (r->closed && !r->close_sent)) {
		int32_t k = r->shipped;
		if (k < r->n_units && r->unit_end[k] > done)
			return true; /* not encoded yet */
		int rc = ship_unit(w, r, k, &err);
		if (rc == CM_EAGAIN)
			return false;
		if (rc == CM_EPEER && peer_lost(r, &err))
			return false;
		if (rc < 0) {
			CM_LOG_WARN("worker: request %llu: shipping unit %d: %s",
				    (unsigned long long)r->id, (int)k, err.msg);
			r->peer[0] = 0;
			wk__send_failed(w, r->id, &err);
			return true;
		}
		if (k == r->n_units)
			r->close_sent = true;
		else
			r->shipped++;
	}
	return true;
}

void wk__enc_ship(struct worker *w)
{
	if (!w->kvl || !w->n_enc)
		return;
	const char *full[8]; /* peers whose window filled in this pass */
	int n_full = 0;
	for (int i = 0; i < w->n_enc; i++) {
		struct wk_enc_req *r = &w->enc[i];
		if (!r->peer[0])
			continue;
		bool skip = false;
		for (int j = 0; j < n_full && !skip; j++)
			skip = !strcmp(full[j], r->peer);
		if (!skip && !ship_req(w, r) && n_full < (int)CM_ARRAY_LEN(full))
			full[n_full++] = r->peer;
	}
}

/* ---- decode role ---------------------------------------------------------- */

static struct wk_dec_req *dec_find(struct worker *w, uint64_t req)
{
	for (int i = 0; i < w->n_dec; i++)
		if (w->dec[i].id == req)
			return &w->dec[i];
	return NULL;
}

static bool ended(const struct worker *w, uint64_t req)
{
	int n = CM_MIN(w->n_ended, WK_ENDED_RING);
	for (int i = 0; i < n; i++)
		if (w->ended[i] == req)
			return true;
	return false;
}

int wk__dec_start(struct worker *w, uint64_t req)
{
	if (w->n_dec == w->cap_dec) {
		int cap = CM_MAX(2 * w->cap_dec, 16);
		struct wk_dec_req *p = realloc(w->dec, (size_t)cap * sizeof(*p));
		if (!p)
			return CM_ENOMEM;
		w->dec = p;
		w->cap_dec = cap;
	}
	w->dec[w->n_dec++] = (struct wk_dec_req){.id = req};
	return CM_OK;
}

void wk__split_end(struct worker *w, uint64_t req)
{
	struct wk_enc_req *e = enc_find(w, req);
	if (e) {
		free(e->ids);
		free(e->unit_end);
		*e = w->enc[--w->n_enc];
	}
	struct wk_dec_req *d = dec_find(w, req);
	if (d) {
		*d = w->dec[--w->n_dec];
		w->ended[w->n_ended++ % WK_ENDED_RING] = req;
		held_drop(w, req, false);
	}
}

/* Gives u to the engine. CM_EFULL: hold it (not acknowledged); anything else:
 * done with it (acknowledged; a request the engine refused is reported). */
static int dec_take(struct worker *w, struct wk_dec_req *d, const struct kvl_unit *u)
{
	struct cm_err err = {0};
	if (u->index != d->next) {
		/* a repeat, or a resend to a sequence that has taken units: stale */
		CM_LOG_WARN("worker: request %llu: unit %u dropped (expected %u%s)",
			    (unsigned long long)u->req, u->index, d->next,
			    u->flags & KVL_RESEND ? ", stale resend" : "");
		ack(w, u);
		return CM_OK;
	}
	if (u->n_tok > 0) {
		int rc = wk_engine_input_kv(w->eng, u->req, u->ids, u->n_tok, u->pos, u->kv, &err);
		if (rc == CM_EFULL)
			return CM_EFULL;
		if (rc < 0) {
			ack(w, u);
			if (rc != CM_ENOENT) {
				wk__send_failed(w, u->req, &err);
				wk_engine_abort(w->eng, u->req);
			}
			return rc;
		}
		w->kv_tokens_received += u->n_tok;
	}
	d->next++;
	if ((u->flags & KVL_CLOSE) && wk_engine_close_input(w->eng, u->req, &err) < 0 &&
	    err.code != CM_ENOENT)
		wk__send_failed(w, u->req, &err);
	ack(w, u);
	return CM_OK;
}

static void hold(struct worker *w, const struct kvl_unit *u)
{
	struct wk_held *h = calloc(1, sizeof(*h));
	if (!h) {
		struct cm_err err = {0};
		cm_err_set(&err, CM_ENOMEM, "decode worker out of memory holding a unit");
		ack(w, u);
		return wk__send_failed(w, u->req, &err);
	}
	h->u = *u;
	h->since = cm_time_us();
	*w->held_tail = h;
	w->held_tail = &h->next;
}

static bool has_held(const struct worker *w, uint64_t req, const struct wk_held *before)
{
	for (const struct wk_held *h = w->held; h && h != before; h = h->next)
		if (h->u.req == req)
			return true;
	return false;
}

static void dec_unit(struct worker *w, const struct kvl_unit *u)
{
	struct wk_dec_req *d = dec_find(w, u->req);
	if (!d) {
		if (ended(w, u->req))
			return ack(w, u);
		return hold(w, u); /* its Start may still be on its way */
	}
	if (has_held(w, u->req, NULL) || dec_take(w, d, u) == CM_EFULL)
		hold(w, u);
}

void wk__split_poll(struct worker *w)
{
	if (!w->kvl)
		return;
	for (int k = 0; k < 256; k++) {
		struct kvl_unit u;
		struct cm_err err = {0};
		int rc = kvl_recv(w->kvl, 0, &u, &err);
		if (rc == 0)
			return;
		if (rc < 0) {
			CM_LOG_WARN("worker: KV link: %s", err.msg);
			continue;
		}
		if (!w->eng) {
			ack(w, &u);
			continue;
		}
		dec_unit(w, &u);
	}
}

/* The KV pool is full of sequences that all wait for input: none can move, so
 * the request of the oldest held unit fails (the coordinator ends it). */
static void unstick(struct worker *w, bool full)
{
	int64_t now = cm_time_us();
	if (!full || wk_engine_ready(w->eng)) {
		w->stuck_since = 0;
		return;
	}
	if (!w->stuck_since) {
		w->stuck_since = now;
		return;
	}
	if (now - w->stuck_since < WK_HOLD_STUCK_US || !w->held)
		return;
	uint64_t req = w->held->u.req;
	struct cm_err err = {0};
	cm_err_set(&err, CM_EFULL, "the decode worker's KV cache is full");
	CM_LOG_WARN("worker: request %llu: %s", (unsigned long long)req, err.msg);
	wk__send_failed(w, req, &err);
	wk_engine_abort(w->eng, req);
	wk__split_end(w, req);
	w->stuck_since = 0;
}

void wk__dec_retry(struct worker *w)
{
	if (!w->kvl || !w->held)
		return;
	int64_t now = cm_time_us();
	bool full = false;
	for (struct wk_held **pp = &w->held; *pp;) {
		struct wk_held *h = *pp;
		uint64_t req = h->u.req;
		struct wk_dec_req *d = dec_find(w, req);
		int rc = CM_OK;
		if (has_held(w, req, h)) {
			rc = CM_EAGAIN; /* an earlier unit of its request waits */
		} else if (d) {
			rc = dec_take(w, d, &h->u);
			full = full || rc == CM_EFULL;
		} else if (!ended(w, req) && now - h->since < WK_HOLD_UNKNOWN_US) {
			rc = CM_EAGAIN;
		} else {
			if (!ended(w, req))
				CM_LOG_WARN("worker: unit for unknown request %llu dropped",
					    (unsigned long long)req);
			ack(w, &h->u);
		}
		if (rc == CM_EAGAIN || rc == CM_EFULL) {
			pp = &h->next;
			continue;
		}
		*pp = h->next;
		free(h);
	}
	held_fix_tail(w);
	unstick(w, full);
}

/* ---- NCCL and the heartbeat ------------------------------------------------ */

void wk__nccl(struct worker *w, const tandem_internal_v1_NcclRendezvous *m)
{
	struct cm_err err = {0};
	if (!w->kvl || m->rank < 0 || m->rank > 1) {
		CM_LOG_WARN("worker: NCCL rendezvous ignored (no KV link or bad rank)");
		return;
	}
	if (kvl_nccl_connect(w->kvl, m->kv_peer, m->unique_id, m->rank, &err) < 0)
		CM_LOG_WARN("worker: NCCL with %s: %s (the KV link stays on ZeroMQ)", m->kv_peer,
			    err.msg);
}

void wk__split_heartbeat(struct worker *w, tandem_internal_v1_Heartbeat *h)
{
	h->kv_tokens_sent = w->kv_tokens_sent;
	h->kv_tokens_received = w->kv_tokens_received;
	if (!w->kvl)
		return;
	struct kvl_stats s;
	kvl_stats(w->kvl, &s);
	h->kv_bytes_sent = s.bytes_sent;
	h->kv_bytes_received = s.bytes_received;
	h->kv_stalls = s.stalls;
}
