/* tandem worker: the engine's batching loop behind the coordinator link. */
#include "worker.h"

#include "kernels/kern.h"
#include "link-impl.h"
#include "model/md.h"
#include "wk.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(tandem_internal_v1_Mode_MODE_STREAMING == (int)WK_MODE_STREAMING &&
		       tandem_internal_v1_Mode_MODE_BATCH == (int)WK_MODE_BATCH &&
		       tandem_internal_v1_Phase_PHASE_THOUGHT == (int)WK_PHASE_THOUGHT &&
		       tandem_internal_v1_Phase_PHASE_ANSWER == (int)WK_PHASE_ANSWER &&
		       tandem_internal_v1_Finish_FINISH_STOP == (int)WK_FINISH_STOP &&
		       tandem_internal_v1_Finish_FINISH_LENGTH == (int)WK_FINISH_LENGTH &&
		       tandem_internal_v1_Finish_FINISH_CONTEXT == (int)WK_FINISH_CONTEXT &&
		       tandem_internal_v1_Finish_FINISH_ABORT == (int)WK_FINISH_ABORT,
	       "internal.proto enums mirror worker/wk.h");

struct wk_worker_params wk_worker_default_params(void)
{
	return (struct wk_worker_params){
		.coordinator = "tcp://127.0.0.1:5557",
		.role = "both",
		.device = "cpu",
		.heartbeat_ms = 200,
		.coordinator_timeout_ms = 5000,
	};
}

enum state { ST_HELLO = 0, ST_READY };

struct worker {
	const struct wk_worker_params *p;
	char id[96];
	struct wk_link *link;
	enum state st;
	char model_dir[1024];
	struct kern_backend *be;
	struct wk_model *model;
	struct md_tok *tok;
	struct md_seg *seg[3]; /* the template at depth 1..3, for its ids */
	struct md_stop_ids stops;
	struct wk_engine *eng;
	struct wk_engine_params ep;
	struct wk_event *ev;
	int max_ev;
	uint64_t *live; /* [n_live] requests in the engine */
	int n_live, cap_live;
	int64_t last_hb, last_hello, last_heard;
	tandem_internal_v1_WorkerMsg *out;
	tandem_internal_v1_CoordMsg *in;
};

/* Copies src into dst[cap], cut to fit (nanopb strings are fixed arrays). */
static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = 0;
}

static void send_msg(struct worker *w)
{
	if (wk_link_send(w->link, w->out) < 0)
		CM_LOG_DEBUG("worker: coordinator not connected, message dropped");
}

static tandem_internal_v1_WorkerMsg *msg(struct worker *w, pb_size_t which)
{
	memset(w->out, 0, sizeof(*w->out));
	w->out->which_msg = which;
	return w->out;
}

static void send_hello(struct worker *w)
{
	tandem_internal_v1_Hello *h = &msg(w, tandem_internal_v1_WorkerMsg_hello_tag)->msg.hello;
	h->protocol_version = tandem_internal_v1_Version_PROTOCOL_VERSION;
	copy_str(h->worker_id, sizeof(h->worker_id), w->id);
	h->role = tandem_internal_v1_Role_ROLE_BOTH;
	snprintf(h->device, sizeof(h->device), "%s", w->p->device);
	h->threads = w->p->threads;
	send_msg(w);
	w->last_hello = cm_time_us();
}

static void send_failed(struct worker *w, uint64_t req, const struct cm_err *err)
{
	tandem_internal_v1_Failed *f = &msg(w, tandem_internal_v1_WorkerMsg_failed_tag)->msg.failed;
	f->req = req;
	f->code = err->code;
	copy_str(f->msg, sizeof(f->msg), err->msg);
	send_msg(w);
}

/* ---- the model ---------------------------------------------------------- */

static int load_model(struct worker *w, const char *dir, struct cm_err *err)
{
	int rc;
	if (w->model) {
		if (strcmp(dir, w->model_dir))
			CM_LOG_WARN("worker: keeping %s (the coordinator names %s)", w->model_dir,
				    dir);
		return CM_OK;
	}
	snprintf(w->model_dir, sizeof(w->model_dir), "%s", dir);
	fprintf(stderr, "tandem worker: loading %s\n", dir);
	if (!(w->model = wk_model_load(dir, w->be, err)) || !(w->tok = md_tok_load(dir, err)))
		return err->code;
	if ((rc = md_stop_ids_load(dir, &w->model->cfg, &w->stops, err)) < 0)
		return rc;
	for (int d = 0; d < 3; d++) {
		struct md_seg_template t = md_seg_default_template();
		t.depth = d + 1;
		struct cm_err e2 = {0};
		w->seg[d] = md_seg_new(w->tok, &t, &e2);
		if (!w->seg[d] && d == 0)
			CM_LOG_WARN("worker: no streaming template (%s): Think is unavailable",
				    e2.msg);
	}
	w->ep = wk_engine_default_params();
	if (w->p->max_seqs > 0)
		w->ep.max_seqs = w->p->max_seqs;
	if (w->p->kv_tokens > 0)
		w->ep.kv_tokens = w->p->kv_tokens;
	if (!(w->eng = wk_engine_new(w->model, &w->ep, err)))
		return err->code;
	w->max_ev = WK_EV_MIN(&w->ep) + 16;
	w->ev = malloc((size_t)w->max_ev * sizeof(*w->ev));
	if (!w->ev)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	return CM_OK;
}

/* ---- requests ----------------------------------------------------------- */

static void live_add(struct worker *w, uint64_t id)
{
	if (w->n_live == w->cap_live) {
		int cap = CM_MAX(2 * w->cap_live, 64);
		uint64_t *p = realloc(w->live, (size_t)cap * sizeof(*p));
		if (!p)
			return;
		w->live = p;
		w->cap_live = cap;
	}
	w->live[w->n_live++] = id;
}

static void live_del(struct worker *w, uint64_t id)
{
	for (int i = 0; i < w->n_live; i++)
		if (w->live[i] == id) {
			w->live[i] = w->live[--w->n_live];
			return;
		}
}

/* Drops every request (the coordinator that owned them is gone). */
static void abort_all(struct worker *w)
{
	for (int i = 0; i < w->n_live; i++)
		wk_engine_abort(w->eng, w->live[i]);
	w->n_live = 0;
}

static void on_start(struct worker *w, const tandem_internal_v1_Start *s)
{
	struct cm_err err = {0};
	int32_t stops[64];
	int32_t n_stop = 0;
	for (int32_t i = 0; i < w->stops.n; i++)
		stops[n_stop++] = w->stops.ids[i];
	for (pb_size_t i = 0; i < s->stop_ids_count && n_stop < 64; i++)
		stops[n_stop++] = s->stop_ids[i];
	struct wk_request r = {
		.id = s->req,
		.mode = (enum wk_mode)s->mode,
		.phi = s->phi,
		.unit_budget = s->unit_budget,
		.final_budget = s->final_budget,
		.answer_budget = s->answer_budget,
		.prompt = s->prompt,
		.n_prompt = (int32_t)s->prompt_count,
		.max_tokens = s->max_tokens,
		.stop_ids = stops,
		.n_stop = n_stop,
		.sample =
			{
				.temperature = s->sampling.temperature,
				.top_p = s->has_sampling ? s->sampling.top_p : 1,
				.top_k = s->sampling.top_k,
				.min_p = s->sampling.min_p,
				.repetition_penalty =
					s->has_sampling ? s->sampling.repetition_penalty : 1,
				.seed = s->sampling.seed,
			},
	};
	if (r.mode != WK_MODE_GENERATE) {
		int d = s->depth >= 1 && s->depth <= 3 ? s->depth - 1 : 1;
		if (!w->seg[d]) {
			cm_err_set(&err, CM_EUNSUPPORTED,
				   "the model's tokenizer lacks the streaming template's tokens");
			return send_failed(w, s->req, &err);
		}
		r.think = md_seg_ids(w->seg[d]);
	}
	if (wk_engine_add(w->eng, &r, &err) < 0)
		return send_failed(w, s->req, &err);
	live_add(w, s->req);
}

static void on_message(struct worker *w, const tandem_internal_v1_CoordMsg *m, struct cm_err *err)
{
	struct cm_err e = {0};
	w->last_heard = cm_time_us();
	switch (m->which_msg) {
	case tandem_internal_v1_CoordMsg_welcome_tag:
		if (!m->msg.welcome.accepted) {
			cm_err_set(err, CM_EPROTO, "the coordinator refused this worker: %s",
				   m->msg.welcome.reason);
			return;
		}
		if (load_model(w, w->p->model ? w->p->model : m->msg.welcome.model_dir, err) < 0) {
			tandem_internal_v1_Fatal *f =
				&msg(w, tandem_internal_v1_WorkerMsg_fatal_tag)->msg.fatal;
			copy_str(f->msg, sizeof(f->msg), err->msg);
			send_msg(w);
			return;
		}
		abort_all(w);
		w->st = ST_READY;
		tandem_internal_v1_Ready *r =
			&msg(w, tandem_internal_v1_WorkerMsg_ready_tag)->msg.ready;
		r->kv_tokens = w->ep.kv_tokens;
		r->max_seqs = w->ep.max_seqs;
		r->max_context = w->model->cfg.max_pos;
		r->vocab = w->model->cfg.vocab;
		send_msg(w);
		fprintf(stderr, "tandem worker %s: ready\n", w->id);
		return;
	case tandem_internal_v1_CoordMsg_reset_tag:
		CM_LOG_INFO("worker: the coordinator asks to register again");
		if (w->eng)
			abort_all(w);
		w->st = ST_HELLO;
		return send_hello(w);
	case tandem_internal_v1_CoordMsg_ack_tag:
		return;
	default:
		break;
	}
	if (w->st != ST_READY)
		return;
	switch (m->which_msg) {
	case tandem_internal_v1_CoordMsg_start_tag:
		return on_start(w, &m->msg.start);
	case tandem_internal_v1_CoordMsg_unit_tag:
		if (wk_engine_input(w->eng, m->msg.unit.req, m->msg.unit.ids,
				    (int32_t)m->msg.unit.ids_count, &e) < 0)
			send_failed(w, m->msg.unit.req, &e);
		return;
	case tandem_internal_v1_CoordMsg_close_tag:
		if (wk_engine_close_input(w->eng, m->msg.close.req, &e) < 0)
			send_failed(w, m->msg.close.req, &e);
		return;
	case tandem_internal_v1_CoordMsg_abort_tag:
		wk_engine_abort(w->eng, m->msg.abort.req);
		return;
	default:
		CM_LOG_WARN("worker: unknown message %d", (int)m->which_msg);
	}
}

/* ---- the loop ----------------------------------------------------------- */

static int step(struct worker *w, struct cm_err *err)
{
	int n = 0, rc = wk_engine_step(w->eng, w->ev, w->max_ev, &n, err);
	if (rc < 0)
		return rc;
	tandem_internal_v1_Events *evs = NULL;
	for (int i = 0; i < n; i++) {
		const struct wk_event *e = &w->ev[i];
		if (!evs || evs->ev_count == CM_ARRAY_LEN(evs->ev)) {
			if (evs)
				send_msg(w);
			evs = &msg(w, tandem_internal_v1_WorkerMsg_events_tag)->msg.events;
		}
		tandem_internal_v1_TokenEvent *t = &evs->ev[evs->ev_count++];
		t->req = e->req_id;
		t->token = e->token;
		t->phase = (tandem_internal_v1_Phase)e->phase;
		t->unit = e->unit;
		t->finish = (tandem_internal_v1_Finish)e->finish;
		t->n_prompt = e->n_prompt;
		t->n_generated = e->n_generated;
		if (e->finish != WK_FINISH_NONE)
			live_del(w, e->req_id);
	}
	if (evs)
		send_msg(w);
	return CM_OK;
}

static void heartbeat(struct worker *w)
{
	int64_t now = cm_time_us();
	if (w->st != ST_READY) {
		if (now - w->last_hello > 500000)
			send_hello(w);
		return;
	}
	if (now - w->last_heard > w->p->coordinator_timeout_ms * 1000) {
		CM_LOG_WARN("worker: the coordinator is silent; registering again");
		abort_all(w);
		w->st = ST_HELLO;
		w->last_heard = now;
		send_hello(w);
		return;
	}
	if (now - w->last_hb < w->p->heartbeat_ms * 1000)
		return;
	struct wk_engine_stats s;
	wk_engine_stats(w->eng, &s);
	tandem_internal_v1_Heartbeat *h =
		&msg(w, tandem_internal_v1_WorkerMsg_heartbeat_tag)->msg.heartbeat;
	h->running = s.running;
	h->queued = s.queued;
	h->kv_blocks_used = s.kv_blocks_used;
	h->kv_blocks_total = s.kv_blocks_total;
	h->steps = s.steps;
	h->tokens_prefilled = s.tokens_prefilled;
	h->tokens_decoded = s.tokens_decoded;
	send_msg(w);
	w->last_hb = now;
}

static int serve(struct worker *w, struct cm_err *err)
{
	send_hello(w);
	w->last_heard = cm_time_us();
	while (!(w->p->stop && *w->p->stop)) {
		bool work = w->st == ST_READY && wk_engine_ready(w->eng);
		int rc = wk_link_recv(w->link, work ? 0 : 20, w->in);
		for (int k = 0; rc != 0 && k < 1024; k++) {
			if (rc > 0) {
				on_message(w, w->in, err);
				if (err->code < 0)
					return err->code;
			}
			rc = wk_link_recv(w->link, 0, w->in);
		}
		if (w->st == ST_READY && wk_engine_ready(w->eng) && (rc = step(w, err)) < 0)
			return rc;
		heartbeat(w);
	}
	return CM_OK;
}

static void worker_fini(struct worker *w)
{
	free(w->ev);
	wk_engine_free(w->eng);
	for (int d = 0; d < 3; d++)
		md_seg_free(w->seg[d]);
	md_tok_free(w->tok);
	wk_model_free(w->model);
	kern_backend_free(w->be);
	wk_link_free(w->link);
	free(w->live);
	free(w->out);
	free(w->in);
}

int wk_worker_run(const struct wk_worker_params *p, struct cm_err *err)
{
	if (strcmp(p->role, "both"))
		return cm_err_set(err, CM_EUNSUPPORTED, "role '%s': only 'both' for now", p->role);
	if (strcmp(p->device, "cpu"))
		return cm_err_set(err, CM_EUNSUPPORTED, "device '%s': only 'cpu' here", p->device);
	struct worker w = {.p = p};
	if (p->id) {
		snprintf(w.id, sizeof(w.id), "%s", p->id);
	} else {
		char host[64] = "worker";
		gethostname(host, sizeof(host) - 1);
		snprintf(w.id, sizeof(w.id), "%.60s-%d", host, (int)getpid());
	}
	int rc;
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = p->threads;
	w.out = malloc(sizeof(*w.out));
	w.in = malloc(sizeof(*w.in));
	if (!w.out || !w.in) {
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
		goto out;
	}
	if (!(w.be = kern_cpu_new(&kp, err)) ||
	    !(w.link = wk_link_new(p->coordinator, w.id, err))) {
		rc = err->code;
		goto out;
	}
	rc = serve(&w, err);
out:
	worker_fini(&w);
	return rc;
}
