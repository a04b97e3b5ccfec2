/* Placement of requests on workers through scheduler/ (sched_place): a Think
 * request is split once the cluster has encode or decode workers (an encode
 * worker prefills the source units and ships their KV to a decode worker that
 * reasons), else it runs whole on a `both` worker; a Generate request runs
 * whole on a decode or `both` worker. When a worker is lost: a lost decode
 * side moves to another decode worker and the encode worker ships its kept
 * shard again (Retarget, nothing is encoded twice); a lost encode side, or a
 * whole request, starts afresh from the input the coordinator kept. Workers'
 * heartbeats refresh the scheduler's charges. */
#include "coord-impl.h"
#include "worker/kvlink.h"

#include <stdlib.h>
#include <string.h>

#define COORD_SOURCE_PRIOR 512 /* source tokens assumed for a Think request still open */
#define COORD_UNIT_TOKENS  25  /* tokens of a unit, for that prior */

/* ---- messages to workers --------------------------------------------------- */

void coord__send_unit(struct coord *c, struct coord_req *r, int32_t k)
{
	int w = r->enc >= 0 ? r->enc : r->worker;
	int64_t b = k ? r->unit_end[k - 1] : 0, e = r->unit_end[k];
	tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_unit_tag);
	m->msg.unit.req = r->id;
	m->msg.unit.ids_count = (pb_size_t)(e - b);
	memcpy(m->msg.unit.ids, r->input + b, (size_t)(e - b) * sizeof(int32_t));
	coord__send(c, w);
}

void coord__send_close(struct coord *c, struct coord_req *r)
{
	tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_close_tag);
	m->msg.close.req = r->id;
	coord__send(c, r->enc >= 0 ? r->enc : r->worker);
}

static void abort_on(struct coord *c, struct coord_req *r, int w)
{
	if (w < 0)
		return;
	tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_abort_tag);
	m->msg.abort.req = r->id;
	coord__send(c, w);
}

void coord__send_abort(struct coord *c, struct coord_req *r)
{
	abort_on(c, r, r->worker);
	abort_on(c, r, r->enc);
}

void coord__release_encode(struct coord *c, struct coord_req *r)
{
	if (r->enc != r->worker)
		abort_on(c, r, r->enc);
}

/* Start of r on worker w: mode, and for a split request the KV peer. */
static void send_start(struct coord *c, struct coord_req *r, int w, int32_t mode, const char *peer,
		       bool remote)
{
	tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_start_tag);
	tandem_internal_v1_Start *s = &m->msg.start;
	s->req = r->id;
	s->mode = (tandem_internal_v1_Mode)mode;
	s->max_tokens = r->max_tokens;
	s->has_sampling = true;
	s->sampling = r->sampling;
	s->stop_ids_count = (pb_size_t)r->n_stop;
	memcpy(s->stop_ids, r->stop_ids, (size_t)r->n_stop * sizeof(int32_t));
	s->phi = 0;
	s->unit_budget = r->unit_budget;
	s->final_budget = r->final_budget;
	s->depth = r->depth;
	coord__strcpy(s->kv_peer, sizeof(s->kv_peer), peer);
	s->remote_source = remote;
	if (r->kind == COORD_M_GENERATE) {
		s->prompt_count = (pb_size_t)r->n_input;
		memcpy(s->prompt, r->input, (size_t)r->n_input * sizeof(int32_t));
	}
	coord__send(c, w);
}

/* One NCCL communicator per (encode, decode) pair of workers that both have
 * NCCL: the coordinator makes the unique id and hands it to both. */
static void nccl_pair(struct coord *c, int e, int d)
{
	struct coord_worker *we = &c->workers[e], *wd = &c->workers[d];
	if (!we->nccl || !wd->nccl || (we->nccl_pairs >> d & 1))
		return;
	uint8_t id[KVL_NCCL_ID_BYTES];
	struct cm_err err = {0};
	if (kvl_nccl_unique_id(id, &err) < 0) {
		CM_LOG_WARN("NCCL id for %s -> %s: %s (the KV link stays on ZeroMQ)", we->id,
			    wd->id, err.msg);
		return;
	}
	we->nccl_pairs |= 1ull << d;
	for (int rank = 0; rank < 2; rank++) {
		tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_nccl_tag);
		tandem_internal_v1_NcclRendezvous *n = &m->msg.nccl;
		coord__strcpy(n->kv_peer, sizeof(n->kv_peer),
			      rank ? we->kv_endpoint : wd->kv_endpoint);
		memcpy(n->unique_id, id, sizeof(n->unique_id));
		n->rank = rank;
		coord__send(c, rank ? d : e);
	}
}

void coord__nccl_forget(struct coord *c, int w)
{
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		c->workers[i].nccl_pairs &= ~(1ull << w);
	c->workers[w].nccl_pairs = 0;
}

/* Starts r on its workers and replays the input kept so far. */
static void start_sides(struct coord *c, struct coord_req *r)
{
	if (r->enc < 0) {
		send_start(c, r, r->worker, r->mode, "", false);
	} else {
		nccl_pair(c, r->enc, r->worker);
		/* the decode side first: its units may overtake the Start otherwise */
		send_start(c, r, r->worker, r->mode, c->workers[r->enc].kv_endpoint, true);
		send_start(c, r, r->enc, tandem_internal_v1_Mode_MODE_ENCODE,
			   c->workers[r->worker].kv_endpoint, false);
	}
	if (r->kind == COORD_M_GENERATE)
		return;
	for (int32_t k = 0; k < r->n_units; k++)
		coord__send_unit(c, r, k);
	if (r->closed)
		coord__send_close(c, r);
}

/* ---- the scheduler ---------------------------------------------------------- */

/* The cost of r (what is left of it with source_done / gen_done). */
static void estimate(struct coord *c, const struct coord_req *r, bool source_done, bool gen_done,
		     struct sched_estimate *est)
{
	struct sched_req q = {0};
	if (r->kind == COORD_M_GENERATE) {
		q.source = r->n_input;
		q.gen = r->max_tokens;
	} else {
		q.source = r->closed ? r->n_input : CM_MAX(r->n_input, COORD_SOURCE_PRIOR);
		int64_t units = r->closed ? r->n_units
					  : CM_MAX(r->n_units, q.source / COORD_UNIT_TOKENS + 1);
		q.gen = sched_gen_tokens(units, r->unit_budget, r->final_budget, r->max_tokens);
		if (r->mode == tandem_internal_v1_Mode_MODE_STREAMING)
			q.gen_stream = CM_MIN(q.gen, units * (r->unit_budget ? r->unit_budget : 64));
	}
	if (source_done)
		q.source_done = CM_MIN(r->n_input, q.source);
	if (gen_done)
		q.gen_done = CM_MIN((int64_t)r->n_thought + r->n_answer, q.gen);
	struct cm_err err = {0};
	if (sched_req_estimate(&c->cfg, &c->sp, &q, est, &err) < 0) {
		CM_LOG_WARN("request %s: no cost estimate (%s)", r->client_id, err.msg);
		memset(est, 0, sizeof(*est));
	}
}

/* Which workers r may use, as a copy of the scheduler's view: a Generate
 * request runs whole on a decode or both worker (a decode worker counts as
 * `both`); a Think request is split only across workers with a KV link. */
static void view_for(const struct coord *c, const struct coord_req *r, struct sched_worker *w)
{
	bool split = false;
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		split = split || (c->sw[i].live && c->sw[i].role != SCHED_ROLE_BOTH);
	memcpy(w, c->sw, sizeof(c->sw));
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		if (r->kind == COORD_M_GENERATE) {
			if (w[i].role == SCHED_ROLE_ENCODE)
				w[i].live = false;
			w[i].role = SCHED_ROLE_BOTH;
		} else if (split && !c->workers[i].kv_endpoint[0]) {
			w[i].live = false;
		}
	}
}

/* sched_place (or sched_replace) of r as view_for allows; with no worker
 * having room for its KV, it goes where the cost says anyway (the engine
 * queues it). The charges land in c->sw. */
static int place_ticket(struct coord *c, struct coord_req *r, const struct sched_estimate *est,
			bool replace)
{
	struct sched_worker w[COORD_MAX_WORKERS];
	struct cm_err err = {0};
	view_for(c, r, w);
	int rc = replace ? sched_replace(w, COORD_MAX_WORKERS, est, &c->pol, &r->t, &err)
			 : sched_place(w, COORD_MAX_WORKERS, est, &c->pol, &r->t, &err);
	if (rc == CM_EFULL) {
		for (int i = 0; i < COORD_MAX_WORKERS; i++)
			w[i].cap.kv_bytes = 0;
		rc = replace ? sched_replace(w, COORD_MAX_WORKERS, est, &c->pol, &r->t, &err)
			     : sched_place(w, COORD_MAX_WORKERS, est, &c->pol, &r->t, &err);
	}
	if (rc < 0) {
		CM_LOG_DEBUG("request %s: not placed: %s", r->client_id, err.msg);
		return rc;
	}
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		struct sched_worker keep = c->sw[i];
		c->sw[i] = w[i];
		c->sw[i].live = keep.live;
		c->sw[i].role = keep.role;
		c->sw[i].cap = keep.cap;
	}
	return CM_OK;
}

static void bind_ticket(struct coord_req *r)
{
	r->worker = r->t.worker[SCHED_DECODE];
	r->enc = r->t.worker[SCHED_ENCODE] == r->worker ? -1 : r->t.worker[SCHED_ENCODE];
}

void coord__unplace(struct coord *c, struct coord_req *r)
{
	if (r->t.worker[SCHED_ENCODE] >= 0 || r->t.worker[SCHED_DECODE] >= 0)
		sched_ticket_finish(c->sw, COORD_MAX_WORKERS, &r->t);
	r->t.worker[SCHED_ENCODE] = r->t.worker[SCHED_DECODE] = -1;
	r->worker = r->enc = -1;
}

int coord__req_place(struct coord *c, struct coord_req *r)
{
	struct sched_estimate est;
	estimate(c, r, false, false, &est);
	if (place_ticket(c, r, &est, false) < 0)
		return CM_EAGAIN;
	bind_ticket(r);
	if (!r->t_placed)
		r->t_placed = cm_time_us();
	start_sides(c, r);
	return CM_OK;
}

/* The decode side of split r was lost: another decode worker reasons on the
 * shard the encode worker kept. False when none can. */
static bool retarget(struct coord *c, struct coord_req *r)
{
	struct sched_estimate est;
	int e = r->enc;
	estimate(c, r, true, false, &est);
	if (place_ticket(c, r, &est, true) < 0)
		return false;
	int d = r->t.worker[SCHED_DECODE];
	if (r->t.worker[SCHED_ENCODE] != e || d < 0 || d == e || !c->workers[d].kv_endpoint[0])
		return false;
	r->worker = d;
	nccl_pair(c, e, d);
	send_start(c, r, d, r->mode, c->workers[e].kv_endpoint, true);
	tandem_internal_v1_CoordMsg *m = coord__cmsg(c, tandem_internal_v1_CoordMsg_retarget_tag);
	m->msg.retarget.req = r->id;
	coord__strcpy(m->msg.retarget.kv_peer, sizeof(m->msg.retarget.kv_peer),
		      c->workers[d].kv_endpoint);
	coord__send(c, e);
	return true;
}

int coord__req_replace(struct coord *c, struct coord_req *r, int lost, bool *retargeted)
{
	*retargeted = false;
	if (r->enc >= 0 && r->worker == lost && retarget(c, r)) {
		*retargeted = true;
		return CM_OK;
	}
	/* afresh, under a new id: what survives of the old sequence is dropped */
	if (r->worker != lost)
		abort_on(c, r, r->worker);
	if (r->enc != lost)
		abort_on(c, r, r->enc);
	coord__unplace(c, r);
	r->id = ++c->next_id;
	return coord__req_place(c, r);
}

/* ---- workers' reports ------------------------------------------------------- */

void coord__progress(struct coord *c, int w)
{
	c->sw[w].done_flops = c->workers[w].hb.flops;
	for (struct coord_req *r = c->reqs; r; r = r->next) {
		if (r->worker != w && r->enc != w)
			continue;
		struct sched_estimate est;
		estimate(c, r, true, true, &est);
		if (r->enc == w || r->enc < 0)
			sched_ticket_update(c->sw, COORD_MAX_WORKERS, &r->t, SCHED_ENCODE, NULL,
					    &est.phase[SCHED_ENCODE]);
		if (r->worker == w)
			sched_ticket_update(c->sw, COORD_MAX_WORKERS, &r->t, SCHED_DECODE, NULL,
					    &est.phase[SCHED_DECODE]);
	}
}

void coord__sched_init(struct coord *c)
{
	c->sp = sched_default_params();
	c->pol = (struct sched_policy){.kind = SCHED_POLICY_COST};
}
