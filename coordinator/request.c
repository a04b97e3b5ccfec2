/* Request state machines: Think (Open, Input*, Close) and Generate, the relay of
 * worker tokens to the client as ThinkEvents, and re-placement when a worker is
 * lost (place.c chooses the workers). A request keeps its input (every unit
 * sent to a worker) until it ends, so it can start again on another worker. */
#include "coord-impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- life cycle ----------------------------------------------------------- */

static struct coord_req *req_new(struct coord *c, struct coord_rpc *rpc, enum coord_method kind)
{
	struct coord_req *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->id = ++c->next_id;
	r->kind = kind;
	r->rpc = rpc;
	r->worker = r->enc = -1;
	r->t.worker[SCHED_ENCODE] = r->t.worker[SCHED_DECODE] = -1;
	r->waited = -1;
	r->t_open = cm_time_us();
	snprintf(r->client_id, sizeof(r->client_id), "req-%llu", (unsigned long long)r->id);
	md_tok_stream_init(&r->ts, c->tok);
	r->next = c->reqs;
	if (c->reqs)
		c->reqs->prev = r;
	c->reqs = r;
	c->n_reqs++;
	coord_rpc_set_ud(rpc, r);
	return r;
}

static void req_free(struct coord *c, struct coord_req *r)
{
	coord__unplace(c, r);
	if (r->prev)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	c->n_reqs--;
	md_seg_free(r->seg);
	free(r->instruct);
	free(r->input);
	free(r->unit_end);
	free(r);
}

/* Ends r with an error status: the worker drops it, the client gets the status. */
static void req_fail(struct coord *c, struct coord_req *r, int status, const char *msg)
{
	CM_LOG_INFO("request %s: %s: %s", r->client_id, coord_status_name(status), msg);
	coord__send_abort(c, r);
	if (r->rpc)
		coord_rpc_finish(r->rpc, status, msg);
	c->m.failed++;
	req_free(c, r);
}

void coord__req_abort(struct coord *c, struct coord_req *r)
{
	if (r->worker >= 0)
		coord__send_abort(c, r);
	else
		req_fail(c, r, COORD_CANCELLED, "aborted");
}

struct coord_req *coord__req_find_client(struct coord *c, const char *client_id)
{
	for (struct coord_req *r = c->reqs; r; r = r->next)
		if (!strcmp(r->client_id, client_id))
			return r;
	return NULL;
}

static struct coord_req *req_find(struct coord *c, uint64_t id)
{
	for (struct coord_req *r = c->reqs; r; r = r->next)
		if (r->id == id)
			return r;
	return NULL;
}

void coord__req_end_all(struct coord *c, int status, const char *msg)
{
	while (c->reqs)
		req_fail(c, c->reqs, status, msg);
}

/* ---- events to the client ------------------------------------------------- */

static void emit(struct coord *c, struct coord_req *r)
{
	if (!r->rpc)
		return;
	coord__strcpy(c->ev->request_id, sizeof(c->ev->request_id), r->client_id);
	int n = coord_api_encode(tandem_v1_ThinkEvent_fields, c->ev, c->buf, c->buf_cap);
	if (n >= 0)
		coord_rpc_send(r->rpc, c->buf, (size_t)n);
}

static tandem_v1_ThinkEvent *event(struct coord *c, pb_size_t which)
{
	memset(c->ev, 0, sizeof(*c->ev));
	c->ev->which_event = which;
	return c->ev;
}

/* ---- placement and input -------------------------------------------------- */

static int append_unit(struct coord_req *r, const int32_t *ids, int64_t n)
{
	if (r->n_input + n > r->cap_input) {
		int64_t cap = CM_MAX(r->cap_input * 2, r->n_input + n + 256);
		int32_t *p = realloc(r->input, (size_t)cap * sizeof(*p));
		if (!p)
			return CM_ENOMEM;
		r->input = p;
		r->cap_input = cap;
	}
	if (r->n_units == r->cap_units) {
		int32_t cap = CM_MAX(r->cap_units * 2, 16);
		int64_t *p = realloc(r->unit_end, (size_t)cap * sizeof(*p));
		if (!p)
			return CM_ENOMEM;
		r->unit_end = p;
		r->cap_units = cap;
	}
	memcpy(r->input + r->n_input, ids, (size_t)n * sizeof(*ids));
	r->n_input += n;
	r->unit_end[r->n_units++] = r->n_input;
	return CM_OK;
}

struct unit_ctx {
	struct coord *c;
	struct coord_req *r;
	int rc;
};

static void on_unit(void *ud, int32_t index, const int32_t *ids, int32_t n)
{
	struct unit_ctx *u = ud;
	if (u->rc < 0 || n <= 0)
		return;
	if (u->r->n_input + n > u->c->max_input || n > (int32_t)COORD_MAX_UNIT) {
		u->rc = CM_ERANGE;
		return;
	}
	if ((u->rc = append_unit(u->r, ids, n)) < 0)
		return;
	if (index > 0) /* unit 0 is the template's instruction */
		u->r->n_client_tokens += n;
	if (u->r->worker >= 0)
		coord__send_unit(u->c, u->r, u->r->n_units - 1);
}

static void fail_unit(struct coord *c, struct coord_req *r, int rc, struct cm_err *err)
{
	if (rc == CM_ERANGE) {
		char msg[128];
		snprintf(msg, sizeof(msg), "input longer than %d tokens", c->max_input);
		req_fail(c, r, COORD_RESOURCE_EXHAUSTED, msg);
	} else if (rc == CM_ENOMEM) {
		req_fail(c, r, COORD_RESOURCE_EXHAUSTED, "server out of memory");
	} else {
		req_fail(c, r, COORD_INVALID_ARGUMENT, err->msg);
	}
}

/* ---- Think ----------------------------------------------------------------- */

static void sampling_from(struct coord *c, struct coord_req *r, bool has,
			  const tandem_v1_SamplingParams *s)
{
	r->sampling = (tandem_internal_v1_Sampling){.top_p = 1, .repetition_penalty = 1};
	r->n_stop = 0;
	for (int32_t i = 0; i < c->stops.n && r->n_stop < 16; i++)
		r->stop_ids[r->n_stop++] = c->stops.ids[i];
	if (!has)
		return;
	r->sampling.temperature = s->temperature;
	r->sampling.top_p = s->top_p > 0 ? s->top_p : 1;
	r->sampling.top_k = s->top_k;
	r->sampling.min_p = s->min_p;
	r->sampling.repetition_penalty = s->repetition_penalty > 0 ? s->repetition_penalty : 1;
	r->sampling.seed = s->seed;
	for (pb_size_t i = 0; i < s->stop_token_ids_count && r->n_stop < 32; i++)
		r->stop_ids[r->n_stop++] = s->stop_token_ids[i];
}

static int set_client_id(struct coord *c, struct coord_req *r, const char *id)
{
	if (!id[0])
		return CM_OK;
	if (coord__req_find_client(c, id))
		return CM_EINVAL;
	coord__strcpy(r->client_id, sizeof(r->client_id), id);
	return CM_OK;
}

static void think_open(struct coord *c, struct coord_req *r, const tandem_v1_Open *o)
{
	struct cm_err err = {0};
	if (coord_api_check_open(o, c->model_name, c->cfg.vocab, &err) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, err.msg);
	if (set_client_id(c, r, o->request_id) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "request_id already in use");
	r->mode = o->mode == tandem_v1_Mode_MODE_BATCH ? tandem_internal_v1_Mode_MODE_BATCH
						       : tandem_internal_v1_Mode_MODE_STREAMING;
	r->max_tokens = o->max_tokens ? o->max_tokens : c->p->default_max_tokens;
	r->unit_budget = o->unit_budget ? o->unit_budget : c->p->unit_budget;
	r->final_budget = o->final_budget ? o->final_budget : c->p->final_budget;
	sampling_from(c, r, o->has_sampling, &o->sampling);
	struct md_seg_template t = md_seg_default_template();
	if (o->depth)
		t.depth = o->depth;
	r->depth = t.depth;
	if (o->system[0]) {
		/* the system instruction joins unit 0, before <SEP> */
		if (asprintf(&r->instruct, "%s%s\n", t.instruct, o->system) < 0) {
			r->instruct = NULL;
			return req_fail(c, r, COORD_RESOURCE_EXHAUSTED, "server out of memory");
		}
		t.instruct = r->instruct;
	}
	r->seg = md_seg_new(c->tok, &t, &err);
	if (!r->seg)
		return req_fail(c, r, COORD_FAILED_PRECONDITION, err.msg);
	r->state = COORD_REQ_RUNNING;
	if (coord__req_place(c, r) < 0)
		return req_fail(c, r, COORD_UNAVAILABLE, "no worker is ready");
}

static void think_input(struct coord *c, struct coord_req *r, const tandem_v1_Input *in)
{
	struct cm_err err = {0};
	if (r->closed)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "Input after Close");
	if (coord_api_check_input(in, c->cfg.vocab, &err) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, err.msg);
	struct unit_ctx u = {c, r, 0};
	if (in->token_ids_count) {
		/* ids are one unit as given; the template's unit 0 goes first */
		if (r->n_units == 0 && md_seg_push(r->seg, "", 0, on_unit, &u, &err) < 0 &&
		    u.rc == 0)
			u.rc = err.code ? err.code : CM_EINVAL;
		on_unit(&u, CM_MAX(r->n_units, 1), in->token_ids, (int32_t)in->token_ids_count);
	} else if (in->text[0]) {
		if (md_seg_push(r->seg, in->text, strlen(in->text), on_unit, &u, &err) < 0 &&
		    u.rc == 0)
			u.rc = err.code ? err.code : CM_EINVAL;
	}
	if (u.rc < 0)
		fail_unit(c, r, u.rc, &err);
}

static void think_close(struct coord *c, struct coord_req *r)
{
	struct cm_err err = {0};
	if (r->closed)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "Close sent twice");
	struct unit_ctx u = {c, r, 0};
	if (md_seg_close(r->seg, on_unit, &u, &err) < 0 && u.rc == 0)
		u.rc = err.code ? err.code : CM_EINVAL;
	if (u.rc < 0)
		return fail_unit(c, r, u.rc, &err);
	r->closed = true;
	r->t_close = cm_time_us();
	if (r->worker >= 0)
		coord__send_close(c, r);
}

static void think_msg(struct coord *c, struct coord_req *r, const uint8_t *data, size_t len)
{
	struct cm_err err = {0};
	tandem_v1_ThinkRequest *m = c->think_msg;
	memset(m, 0, sizeof(*m));
	if (coord_api_decode(tandem_v1_ThinkRequest_fields, data, len, m, &err) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, err.msg);
	bool open = r->state == COORD_REQ_WAIT_OPEN;
	switch (m->which_msg) {
	case tandem_v1_ThinkRequest_open_tag:
		if (!open)
			return req_fail(c, r, COORD_INVALID_ARGUMENT, "Open sent twice");
		return think_open(c, r, &m->msg.open);
	case tandem_v1_ThinkRequest_input_tag:
		if (open)
			return req_fail(c, r, COORD_INVALID_ARGUMENT, "Input before Open");
		return think_input(c, r, &m->msg.input);
	case tandem_v1_ThinkRequest_close_tag:
		if (open)
			return req_fail(c, r, COORD_INVALID_ARGUMENT, "Close before Open");
		return think_close(c, r);
	default:
		return req_fail(c, r, COORD_INVALID_ARGUMENT,
				"ThinkRequest carries none of Open, Input, Close");
	}
}

/* ---- Generate -------------------------------------------------------------- */

static int generate_prompt(struct coord *c, struct coord_req *r, const tandem_v1_GenerateRequest *g,
			   struct cm_err *err)
{
	int rc;
	if (g->token_ids_count) {
		if ((rc = coord_api_check_ids(g->token_ids, g->token_ids_count, c->cfg.vocab,
					      err)) < 0)
			return rc;
		r->input = malloc(g->token_ids_count * sizeof(int32_t));
		if (!r->input)
			return cm_err_set(err, CM_ENOMEM, "server out of memory");
		memcpy(r->input, g->token_ids, g->token_ids_count * sizeof(int32_t));
		r->n_input = g->token_ids_count;
		return CM_OK;
	}
	size_t n = strlen(g->prompt);
	if (md_utf8_valid_prefix(g->prompt, n) != n)
		return cm_err_set(err, CM_EINVAL, "prompt: invalid UTF-8 at byte %zu",
				  md_utf8_valid_prefix(g->prompt, n));
	char *wrapped = NULL;
	const char *text = g->prompt;
	if (g->chat) {
		if ((rc = md_chat_user_prompt(c->tok, g->prompt, &wrapped, err)) < 0)
			return rc;
		text = wrapped;
	}
	size_t n_ids = 0;
	rc = md_tok_encode(c->tok, text, strlen(text), &r->input, &n_ids, err);
	free(wrapped);
	r->n_input = (int64_t)n_ids;
	return rc;
}

static void generate_msg(struct coord *c, struct coord_req *r, const uint8_t *data, size_t len)
{
	struct cm_err err = {0};
	tandem_v1_GenerateRequest *g = c->gen_msg;
	memset(g, 0, sizeof(*g));
	if (r->state != COORD_REQ_WAIT_OPEN)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "Generate takes one request message");
	if (coord_api_decode(tandem_v1_GenerateRequest_fields, data, len, g, &err) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, err.msg);
	if (g->model[0] && strcmp(g->model, c->model_name))
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "model is not served here");
	if (!g->prompt[0] == !g->token_ids_count)
		return req_fail(c, r, COORD_INVALID_ARGUMENT,
				"give exactly one of prompt and token_ids");
	if (g->max_tokens < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "max_tokens is negative");
	if (g->has_sampling && coord_api_check_sampling(&g->sampling, c->cfg.vocab, &err) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, err.msg);
	if (md_utf8_valid_prefix(g->request_id, strlen(g->request_id)) != strlen(g->request_id))
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "request_id: invalid UTF-8");
	if (set_client_id(c, r, g->request_id) < 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "request_id already in use");
	int rc = generate_prompt(c, r, g, &err);
	if (rc < 0)
		return req_fail(c, r,
				rc == CM_ENOMEM ? COORD_RESOURCE_EXHAUSTED : COORD_INVALID_ARGUMENT,
				err.msg);
	if (r->n_input == 0)
		return req_fail(c, r, COORD_INVALID_ARGUMENT, "the prompt is empty");
	if (r->n_input > c->max_input || r->n_input > (int64_t)COORD_MAX_PROMPT) {
		char msg[128];
		snprintf(msg, sizeof(msg), "prompt of %lld tokens is longer than %d",
			 (long long)r->n_input, CM_MIN(c->max_input, (int)COORD_MAX_PROMPT));
		return req_fail(c, r, COORD_RESOURCE_EXHAUSTED, msg);
	}
	r->n_client_tokens = r->n_input;
	r->mode = tandem_internal_v1_Mode_MODE_GENERATE;
	r->max_tokens = g->max_tokens ? g->max_tokens : c->p->default_max_tokens;
	sampling_from(c, r, g->has_sampling, &g->sampling);
	r->state = COORD_REQ_RUNNING;
	r->closed = true;
	r->t_close = r->t_open;
	if (coord__req_place(c, r) < 0)
		return req_fail(c, r, COORD_UNAVAILABLE, "no worker is ready");
}

/* ---- gRPC events ----------------------------------------------------------- */

static void rpc_new(struct coord *c, struct coord_rpc *rpc, enum coord_method m)
{
	if (m == COORD_M_UNKNOWN)
		return coord_rpc_finish(rpc, COORD_UNIMPLEMENTED, "unknown method");
	if (m != COORD_M_THINK && m != COORD_M_GENERATE)
		return; /* unary: answered on its message */
	if (c->n_reqs >= c->p->max_requests)
		return coord_rpc_finish(rpc, COORD_RESOURCE_EXHAUSTED, "too many open requests");
	if (!req_new(c, rpc, m))
		coord_rpc_finish(rpc, COORD_RESOURCE_EXHAUSTED, "server out of memory");
}

void coord__rpc_event(struct coord *c, const struct coord_rpc_ev *ev)
{
	struct coord_req *r = coord_rpc_ud(ev->rpc);
	switch (ev->type) {
	case COORD_RPC_NEW:
		return rpc_new(c, ev->rpc, ev->method);
	case COORD_RPC_MSG:
		if (!r)
			return coord__unary(c, ev->rpc, ev->data, ev->len);
		if (r->kind == COORD_M_THINK)
			return think_msg(c, r, ev->data, ev->len);
		return generate_msg(c, r, ev->data, ev->len);
	case COORD_RPC_HALF_CLOSE:
		if (!r)
			return coord_rpc_finish(ev->rpc, COORD_INVALID_ARGUMENT,
						"no request message");
		if (r->state == COORD_REQ_WAIT_OPEN)
			return req_fail(c, r, COORD_INVALID_ARGUMENT,
					r->kind == COORD_M_THINK ? "stream closed before Open"
								 : "no request message");
		if (r->kind == COORD_M_THINK && !r->closed)
			think_close(c, r);
		return;
	case COORD_RPC_GONE:
		if (r) {
			CM_LOG_INFO("request %s: client gone (%s)", r->client_id,
				    ev->deadline ? "deadline" : "cancelled");
			r->rpc = NULL;
			coord__send_abort(c, r);
			c->m.cancelled++;
			req_free(c, r);
		}
		coord_rpc_release(ev->rpc);
		return;
	}
}

/* ---- worker events --------------------------------------------------------- */

static tandem_v1_FinishReason finish_reason(tandem_internal_v1_Finish f)
{
	switch (f) {
	case tandem_internal_v1_Finish_FINISH_STOP:
		return tandem_v1_FinishReason_FINISH_STOP;
	case tandem_internal_v1_Finish_FINISH_LENGTH:
		return tandem_v1_FinishReason_FINISH_LENGTH;
	case tandem_internal_v1_Finish_FINISH_CONTEXT:
		return tandem_v1_FinishReason_FINISH_CONTEXT;
	case tandem_internal_v1_Finish_FINISH_ABORT:
		return tandem_v1_FinishReason_FINISH_ABORT;
	default:
		return tandem_v1_FinishReason_FINISH_UNSPECIFIED;
	}
}

static double secs(int64_t from, int64_t to)
{
	return from && to && to >= from ? (double)(to - from) / 1e6 : 0;
}

static void req_done(struct coord *c, struct coord_req *r, const tandem_internal_v1_TokenEvent *e)
{
	int64_t now = cm_time_us();
	tandem_v1_ThinkEvent *ev = event(c, tandem_v1_ThinkEvent_done_tag);
	tandem_v1_Done *d = &ev->event.done;
	d->finish_reason = finish_reason(e->finish);
	d->has_usage = d->has_timings = true;
	d->usage.input_tokens = (int32_t)r->n_client_tokens;
	d->usage.prompt_tokens = e->n_prompt ? e->n_prompt : (int32_t)r->n_input;
	d->usage.thought_tokens = r->n_thought;
	d->usage.answer_tokens = r->n_answer;
	d->usage.completion_tokens = r->n_thought + r->n_answer;
	tandem_v1_Timings *t = &d->timings;
	t->input_tokens_waited = (int32_t)(r->waited >= 0 ? r->waited : r->n_client_tokens);
	t->close_to_first_answer_seconds = secs(r->t_close, r->t_first_answer);
	t->close_to_last_answer_seconds = secs(r->t_close, r->t_last_answer);
	t->time_to_first_token_seconds = secs(r->t_open, r->t_first);
	t->queue_seconds = secs(r->t_open, r->t_placed);
	t->e2e_seconds = secs(r->t_open, now);
	emit(c, r);

	struct coord_metrics *m = &c->m;
	if (r->t_first)
		coord_hist_add(&m->ttft, t->time_to_first_token_seconds);
	if (r->t_first_answer) {
		coord_hist_add(&m->first_answer, t->close_to_first_answer_seconds);
		coord_hist_add(&m->final_answer, t->close_to_last_answer_seconds);
	}
	coord_hist_add(&m->e2e, t->e2e_seconds);
	coord_hist_add(&m->queue, t->queue_seconds);
	if (r->kind == COORD_M_THINK)
		coord_hist_add(&m->waited, t->input_tokens_waited);
	m->finished[d->finish_reason < 8 ? d->finish_reason : 0]++;
	m->input_tokens += (uint64_t)r->n_client_tokens;
	m->prompt_tokens += (uint64_t)d->usage.prompt_tokens;
	if (r->rpc)
		coord_rpc_finish(r->rpc, COORD_OK, "");
	coord__release_encode(c, r);
	req_free(c, r);
}

static void req_token(struct coord *c, struct coord_req *r, const tandem_internal_v1_TokenEvent *e)
{
	bool thought =
		r->kind == COORD_M_THINK && e->phase == tandem_internal_v1_Phase_PHASE_THOUGHT;
	if (r->kind == COORD_M_THINK && e->phase == tandem_internal_v1_Phase_PHASE_PROMPT)
		return;
	int64_t now = cm_time_us();
	if (!r->t_first)
		r->t_first = now;
	tandem_v1_ThinkEvent *ev = event(c, thought ? tandem_v1_ThinkEvent_thought_tag
						    : tandem_v1_ThinkEvent_answer_tag);
	/* Thought and Answer have the same layout */
	tandem_v1_Thought *t =
		thought ? &ev->event.thought : (tandem_v1_Thought *)&ev->event.answer;
	t->token_ids_count = 1;
	t->token_ids[0] = e->token;
	t->unit = e->unit;
	if (e->finish != tandem_internal_v1_Finish_FINISH_STOP) {
		int w = md_tok_stream_put(&r->ts, e->token, c->text, c->text_cap);
		if (w > 0 && (size_t)w < sizeof(t->text)) {
			memcpy(t->text, c->text, (size_t)w);
			t->text[w] = 0;
		}
	}
	if (thought) {
		r->n_thought++;
		c->m.thought_tokens++;
		if (r->waited < 0)
			r->waited = r->n_client_tokens;
	} else {
		r->n_answer++;
		c->m.answer_tokens++;
		if (!r->t_first_answer)
			r->t_first_answer = now;
		r->t_last_answer = now;
	}
	emit(c, r);
}

void coord__worker_events(struct coord *c, int w, const tandem_internal_v1_Events *evs)
{
	for (pb_size_t i = 0; i < evs->ev_count; i++) {
		const tandem_internal_v1_TokenEvent *e = &evs->ev[i];
		struct coord_req *r = req_find(c, e->req);
		if (r && r->enc == w && e->finish != tandem_internal_v1_Finish_FINISH_NONE &&
		    e->finish != tandem_internal_v1_Finish_FINISH_ABORT) {
			/* the encode side ended on its own: its KV cache is full */
			req_fail(c, r, COORD_RESOURCE_EXHAUSTED,
				 "the encode worker's KV cache is full");
			continue;
		}
		if (!r || r->worker != w)
			continue; /* ended here already, or moved, or the encode side */
		if (e->token >= 0 && e->token < c->cfg.vocab)
			req_token(c, r, e);
		if (e->finish != tandem_internal_v1_Finish_FINISH_NONE)
			req_done(c, r, e);
	}
}

static int status_of(int32_t code)
{
	switch (code) {
	case CM_ERANGE:
	case CM_EFULL:
	case CM_ENOMEM:
		return COORD_RESOURCE_EXHAUSTED;
	case CM_EINVAL:
	case CM_EUTF8:
		return COORD_INVALID_ARGUMENT;
	default:
		return COORD_INTERNAL;
	}
}

void coord__worker_failed(struct coord *c, int w, const tandem_internal_v1_Failed *f)
{
	struct coord_req *r = req_find(c, f->req);
	if (!r || (r->worker != w && r->enc != w) || f->code == CM_ENOENT)
		return;
	char msg[300];
	snprintf(msg, sizeof(msg), "worker: %s", f->msg);
	req_fail(c, r, status_of(f->code), msg);
}

void coord__worker_lost(struct coord *c, int w)
{
	struct coord_req *r = c->reqs, *next;
	for (; r; r = next) {
		next = r->next;
		if (r->worker != w && r->enc != w)
			continue;
		bool encode = r->enc == w, retargeted;
		r->attempt++;
		c->m.replaced++;
		r->n_thought = r->n_answer = 0;
		r->t_first_answer = r->t_last_answer = 0;
		md_tok_stream_init(&r->ts, c->tok);
		if (coord__req_replace(c, r, w, &retargeted) < 0) {
			req_fail(c, r, COORD_UNAVAILABLE,
				 "its worker was lost and no worker is left");
			continue;
		}
		if (retargeted)
			c->m.retargeted++;
		tandem_v1_ThinkEvent *ev = event(c, tandem_v1_ThinkEvent_restart_tag);
		snprintf(ev->event.restart.reason, sizeof(ev->event.restart.reason),
			 retargeted ? "decode worker %.32s was lost; reasoning restarts on %.32s "
				      "from the kept KV"
			 : encode   ? "encode worker %.40s was lost; restarted on %.40s"
				    : "worker %.40s was lost; restarted on %.40s",
			 c->workers[w].id,
			 c->workers[encode && r->enc >= 0 ? r->enc : r->worker].id);
		ev->event.restart.attempt = r->attempt;
		emit(c, r);
	}
}
