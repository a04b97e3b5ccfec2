/* tandem worker: the engine's batching loop behind the coordinator link; the
 * encode and decode roles' KV link work is in disagg.c. */
#include "worker.h"

#include "kernels/kern.h"
#include "proc-impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(tandem_internal_v1_Mode_MODE_STREAMING == (int)WK_MODE_STREAMING &&
		       tandem_internal_v1_Mode_MODE_BATCH == (int)WK_MODE_BATCH &&
		       tandem_internal_v1_Mode_MODE_ENCODE == (int)WK_MODE_ENCODE &&
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
		.kv_listen = "tcp://127.0.0.1:0",
		.heartbeat_ms = 200,
		.coordinator_timeout_ms = 5000,
	};
}

enum state { ST_HELLO = 0, ST_READY };

/* Copies src into dst[cap], cut to fit (nanopb strings are fixed arrays). */
void wk__copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = 0;
}

void wk__send(struct worker *w)
{
	if (wk_link_send(w->link, w->out) < 0)
		CM_LOG_DEBUG("worker: coordinator not connected, message dropped");
}

tandem_internal_v1_WorkerMsg *wk__msg(struct worker *w, pb_size_t which)
{
	memset(w->out, 0, sizeof(*w->out));
	w->out->which_msg = which;
	return w->out;
}

static void send_hello(struct worker *w)
{
	tandem_internal_v1_Hello *h = &wk__msg(w, tandem_internal_v1_WorkerMsg_hello_tag)->msg.hello;
	h->protocol_version = tandem_internal_v1_Version_PROTOCOL_VERSION;
	wk__copy_str(h->worker_id, sizeof(h->worker_id), w->id);
	h->role = (tandem_internal_v1_Role)w->role;
	snprintf(h->device, sizeof(h->device), "%s", w->p->device);
	h->threads = w->p->threads;
	h->peak_flops = w->peak_flops;
	h->read_bytes_per_s = w->read_bps;
	h->nccl = false; /* the NCCL transport needs a GPU device: none in this build */
	wk__send(w);
	w->last_hello = cm_time_us();
}

void wk__send_failed(struct worker *w, uint64_t req, const struct cm_err *err)
{
	tandem_internal_v1_Failed *f = &wk__msg(w, tandem_internal_v1_WorkerMsg_failed_tag)->msg.failed;
	f->req = req;
	f->code = err->code;
	wk__copy_str(f->msg, sizeof(f->msg), err->msg);
	wk__send(w);
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
	fprintf(stderr, "tandem worker: loading %s (%s weights)\n", dir,
		wk_weights_name(w->p->weights));
	if (!(w->model = wk_model_load(dir, w->be, err)) ||
	    wk_model_convert(w->model, w->p->weights, err) < 0 || !(w->tok = md_tok_load(dir, err)))
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
	return wk__split_init(w, err);
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
	wk__split_reset(w);
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
			return wk__send_failed(w, s->req, &err);
		}
		r.think = md_seg_ids(w->seg[d]);
	}
	bool split = r.mode == WK_MODE_ENCODE || s->remote_source;
	r.remote_source = s->remote_source && r.mode != WK_MODE_ENCODE;
	if (split && !w->kvl) {
		cm_err_set(&err, CM_EUNSUPPORTED, "a split request on a worker without a KV link");
		return wk__send_failed(w, s->req, &err);
	}
	if (wk_engine_add(w->eng, &r, &err) < 0)
		return wk__send_failed(w, s->req, &err);
	live_add(w, s->req);
	int rc = CM_OK;
	if (r.mode == WK_MODE_ENCODE)
		rc = wk__enc_start(w, s->req, s->kv_peer);
	else if (r.remote_source)
		rc = wk__dec_start(w, s->req);
	if (rc < 0) {
		wk_engine_abort(w->eng, s->req);
		cm_err_set(&err, rc, "worker out of memory");
		wk__send_failed(w, s->req, &err);
	}
}

static void on_unit(struct worker *w, const tandem_internal_v1_Unit *u)
{
	struct cm_err e = {0};
	if (wk_engine_input(w->eng, u->req, u->ids, (int32_t)u->ids_count, &e) < 0)
		return wk__send_failed(w, u->req, &e);
	wk__enc_unit(w, u->req, u->ids, (int32_t)u->ids_count);
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
				&wk__msg(w, tandem_internal_v1_WorkerMsg_fatal_tag)->msg.fatal;
			wk__copy_str(f->msg, sizeof(f->msg), err->msg);
			wk__send(w);
			return;
		}
		abort_all(w);
		w->st = ST_READY;
		tandem_internal_v1_Ready *r =
			&wk__msg(w, tandem_internal_v1_WorkerMsg_ready_tag)->msg.ready;
		r->kv_tokens = w->ep.kv_tokens;
		r->max_seqs = w->ep.max_seqs;
		r->max_context = w->model->cfg.max_pos;
		r->vocab = w->model->cfg.vocab;
		r->kv_bytes = (int64_t)wk_engine_kv_bytes(w->eng, w->ep.kv_tokens);
		if (w->kvl)
			wk__copy_str(r->kv_endpoint, sizeof(r->kv_endpoint), kvl_endpoint(w->kvl));
		wk__send(w);
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
		return on_unit(w, &m->msg.unit);
	case tandem_internal_v1_CoordMsg_close_tag:
		if (wk_engine_close_input(w->eng, m->msg.close.req, &e) < 0)
			return wk__send_failed(w, m->msg.close.req, &e);
		return wk__enc_close(w, m->msg.close.req);
	case tandem_internal_v1_CoordMsg_abort_tag:
		wk_engine_abort(w->eng, m->msg.abort.req);
		return wk__split_end(w, m->msg.abort.req);
	case tandem_internal_v1_CoordMsg_retarget_tag:
		if (!w->kvl)
			return;
		return wk__enc_retarget(w, m->msg.retarget.req, m->msg.retarget.kv_peer);
	case tandem_internal_v1_CoordMsg_nccl_tag:
		return wk__nccl(w, &m->msg.nccl);
	default:
		CM_LOG_WARN("worker: unknown message %d", (int)m->which_msg);
	}
}

/* ---- the loop ----------------------------------------------------------- */

/* One engine step and its events; 1 when it ran a batch or reported something,
 * 0 when nothing could move (e.g. every sequence waits for KV blocks). */
static int step(struct worker *w, struct cm_err *err)
{
	int64_t t0 = cm_time_us();
	struct wk_engine_stats before, after;
	wk_engine_stats(w->eng, &before);
	int n = 0, rc = wk_engine_step(w->eng, w->ev, w->max_ev, &n, err);
	if (rc < 0)
		return rc;
	wk_engine_stats(w->eng, &after);
	int64_t dt = cm_time_us() - t0;
	if (dt > 200000)
		CM_LOG_DEBUG("worker: a step took %lld ms", (long long)(dt / 1000));
	tandem_internal_v1_Events *evs = NULL;
	for (int i = 0; i < n; i++) {
		const struct wk_event *e = &w->ev[i];
		if (!evs || evs->ev_count == CM_ARRAY_LEN(evs->ev)) {
			if (evs)
				wk__send(w);
			evs = &wk__msg(w, tandem_internal_v1_WorkerMsg_events_tag)->msg.events;
		}
		tandem_internal_v1_TokenEvent *t = &evs->ev[evs->ev_count++];
		t->req = e->req_id;
		t->token = e->token;
		t->phase = (tandem_internal_v1_Phase)e->phase;
		t->unit = e->unit;
		t->finish = (tandem_internal_v1_Finish)e->finish;
		t->n_prompt = e->n_prompt;
		t->n_generated = e->n_generated;
		if (e->finish != WK_FINISH_NONE) {
			live_del(w, e->req_id);
			wk__split_end(w, e->req_id);
		}
	}
	if (evs)
		wk__send(w);
	return n > 0 || after.steps != before.steps;
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
		&wk__msg(w, tandem_internal_v1_WorkerMsg_heartbeat_tag)->msg.heartbeat;
	h->running = s.running;
	h->queued = s.queued;
	h->kv_blocks_used = s.kv_blocks_used;
	h->kv_blocks_total = s.kv_blocks_total;
	h->steps = s.steps;
	h->tokens_prefilled = s.tokens_prefilled;
	h->tokens_decoded = s.tokens_decoded;
	h->flops = s.flops;
	h->tokens_source = s.tokens_source;
	wk__split_heartbeat(w, h);
	wk__send(w);
	w->last_hb = now;
}

static int serve(struct worker *w, struct cm_err *err)
{
	send_hello(w);
	w->last_heard = cm_time_us();
	bool stuck = false; /* the last step could not move: wait for a message */
	while (!(w->p->stop && *w->p->stop)) {
		bool work = w->st == ST_READY && wk_engine_ready(w->eng) && !stuck;
		wk_link_wait(w->link, w->kvl ? kvl_fd(w->kvl) : -1, work ? 0 : 20);
		int rc = wk_link_recv(w->link, 0, w->in);
		for (int k = 0; rc != 0 && k < 1024; k++) {
			if (rc > 0) {
				on_message(w, w->in, err);
				if (err->code < 0)
					return err->code;
			}
			rc = wk_link_recv(w->link, 0, w->in);
		}
		wk__split_poll(w); /* acks and units; never blocks */
		wk__dec_retry(w);
		stuck = false;
		if (w->st == ST_READY && wk_engine_ready(w->eng)) {
			if ((rc = step(w, err)) < 0)
				return rc;
			stuck = rc == 0;
		}
		wk__dec_retry(w);
		wk__enc_ship(w);
		heartbeat(w);
	}
	return CM_OK;
}

static void worker_fini(struct worker *w)
{
	wk__split_fini(w);
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

/* FLOP/s of the dot product this worker's matmuls use (int8 for q8_0 weights,
 * bf16 with bf16 activations, else f32; f32 where the CPU lacks the other) and
 * read bandwidth of its threads, unless given: about 0.2 s. */
static void measure(struct worker *w)
{
	const struct wk_worker_params *p = w->p;
	double peak = p->peak_gflops;
	if (peak <= 0 && p->weights == WK_WEIGHTS_Q8)
		peak = kern_bench_peak(w->be, KERN_PEAK_INT8, 0.1);
	else if (peak <= 0 && p->bf16_activations)
		peak = kern_bench_peak(w->be, KERN_PEAK_BF16, 0.1);
	if (peak <= 0)
		peak = kern_bench_peak(w->be, KERN_PEAK_F32, 0.1);
	w->peak_flops = peak * 1e9;
	if (p->read_gbps > 0) {
		w->read_bps = p->read_gbps * 1e9;
		return;
	}
	size_t bytes = (size_t)32 << 20;
	void *buf = kern_alloc(w->be, bytes);
	if (!buf)
		return;
	memset(buf, 1, bytes);
	kern_bench_read(w->be, buf, bytes); /* warm */
	w->read_bps = kern_bench_read(w->be, buf, bytes) * 1e9;
	kern_free(w->be, buf);
	CM_LOG_INFO("worker: %.1f GFLOP/s, %.1f GB/s read", w->peak_flops / 1e9, w->read_bps / 1e9);
}

static int parse_role(const char *role, enum wk_role *out, struct cm_err *err)
{
	static const char *const names[] = {"both", "encode", "decode"};
	for (int i = 0; i < (int)CM_ARRAY_LEN(names); i++)
		if (role && !strcmp(role, names[i])) {
			*out = (enum wk_role)i;
			return CM_OK;
		}
	return cm_err_set(err, CM_EINVAL, "role '%s': give both, encode or decode",
			  role ? role : "");
}

int wk_worker_run(const struct wk_worker_params *p, struct cm_err *err)
{
	struct worker w = {.p = p};
	if (parse_role(p->role, &w.role, err) < 0)
		return err->code;
	if (strcmp(p->device, "cpu"))
		return cm_err_set(err, CM_EUNSUPPORTED, "device '%s': only 'cpu' here", p->device);
	if (!p->kv_listen || !p->kv_listen[0])
		return cm_err_set(err, CM_EINVAL, "no KV link address (--kv-listen tcp://HOST:PORT)");
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
	kp.bf16_activations = p->bf16_activations;
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
	CM_LOG_INFO("worker: backend %s", kern_backend_name(w.be));
	measure(&w);
	rc = serve(&w, err);
out:
	worker_fini(&w);
	return rc;
}
