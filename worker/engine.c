/* The continuous-batching engine: requests join and leave between steps; each
 * step feeds decode tokens first, then prefill chunks, up to max_batch_tokens,
 * through one forward pass, and samples every sequence whose last token was fed.
 *
 * Streaming thinking (modes STREAMING and BATCH, algorithms.md §1.2.3-1.2.5):
 * a sequence has a source segment and a reasoning segment, each with its own
 * positions. Its state: reading (source to prefill), thinking on unit k,
 * waiting (the token that ends unit k waits for source unit k + 1; the
 * sequence then adds nothing to the batch), final phase, answering, done.
 * The source of a sequence and its reasoning may go through the same step:
 * every query carries its own visible prefix of both segments.
 *
 * Disaggregation (docs/engine.md): mode ENCODE is the source half alone (the
 * source segment is prefilled, nothing else runs; the request waits for its
 * abort); a remote_source request's units arrive with their KV
 * (wk_engine_input_kv), which is copied into its source segment, and the state
 * machine above runs on them as if they had been prefilled here.
 *
 * KV admission: a request is admitted when the pool can hold its prompt plus
 * max_tokens (its blocks are reserved, allocated as it grows), so a running
 * request never fails for lack of KV; streaming source reserves its blocks as
 * it arrives. Nothing is allocated in the step loop: slots, batch arrays,
 * activations and logits are sized at creation. */
#include "wk-impl.h"

#include <stdlib.h>
#include <string.h>

/* The unit of final-phase reasoning tokens (they see every source token). */
#define UNIT_FINAL INT32_MAX

enum st_stage {
	ST_UNITS = 0, /* thinking on source units (or waiting for the next one) */
	ST_FINAL,     /* the input is closed: deep reasoning */
	ST_ANSWER,    /* after "</think>" */
};

/* Streaming state of a sequence (modes STREAMING and BATCH). The reasoning
 * tokens are the slot's tokens[]; tok_unit[] gives each one's unit. */
struct wk_stream {
	enum wk_mode mode;
	int32_t phi, unit_budget, final_budget, answer_budget;
	bool remote; /* remote_source: units arrive with their KV */
	bool has_ids;
	struct md_seg_ids ids; /* connect_2 / connect_3 point into conn */
	int32_t *conn;	       /* [n_connect_2 + n_connect_3] malloc'd */
	int32_t *units;	       /* [n_prompt_units] forced unit lengths, or NULL */
	int32_t n_prompt_units;
	/* source, as it arrives */
	int32_t *src; /* [src_cap] malloc'd */
	int32_t src_n, src_cap, src_fed;
	int32_t *unit_end; /* [units_cap] source tokens in units 0..k */
	int32_t n_units, units_cap;
	bool closed;
	/* reasoning */
	enum st_stage stage;
	int32_t unit;	   /* unit of the next token to generate */
	int32_t unit_gen;  /* tokens generated on that unit */
	int32_t final_gen; /* tokens generated in the final phase */
};

struct wk_seq {
	uint64_t id;
	int32_t *prompt; /* queued only: [n_prompt], malloc'd */
	int32_t n_prompt;
	int32_t max_tokens;
	int32_t *stop; /* [n_stop], malloc'd */
	int32_t n_stop;
	bool prompt_logits;
	wk_logits_fn on_logits;
	void *ud;
	struct wk_sampler sampler;
	struct wk_stream st; /* mode GENERATE: unused */
	struct wk_seq *next; /* queue link */
};

/* A running sequence. */
struct wk_slot {
	bool used;
	bool aborted;
	struct wk_seq seq;
	int32_t *tokens;   /* [cap] prompt then generated; streaming: reasoning */
	int32_t *tok_unit; /* [cap] streaming: unit of each reasoning token */
	int32_t n_tokens;
	int32_t n_fed;	  /* tokens in the KV cache */
	int32_t n_gen;	  /* tokens reported */
	int32_t tok_cap;  /* tokens[] may hold: the context, or what the reservation allows */
	int32_t reserved; /* KV blocks reserved */
	struct wk_seg segs[WK_MAX_SEGS];
	int32_t batch_index; /* this step's sequence index, or -1 */
	bool forced_next;    /* streaming: its last token went through this step and
			      * the next one is forced (no logits) */
};

/* Row flags of a step. */
enum {
	ROW_LOGITS = 1, /* compute the LM head */
	ROW_SAMPLE = 2, /* sample the sequence's next token from it */
};

struct wk_engine {
	struct wk_model *m;
	struct kern_backend *be;
	struct wk_engine_params p;
	int32_t cap; /* tokens per sequence: min(context, pool) */
	struct wk_kv kv;
	int32_t reserved; /* blocks reserved by running sequences */
	struct wk_scratch s;
	struct wk_slot *slots; /* [max_seqs] */
	struct wk_seq *queue, *queue_tail;
	int32_t n_queued;
	uint64_t *aborted_queued; /* [max_seqs] ids aborted while queued, to report */
	int32_t n_aborted_queued;
	/* per step, [max_batch_tokens] unless noted */
	int32_t *ids, *pos, *slots_kv, *logit_rows;
	int32_t *row_slot, *row_idx; /* slot and token index (reasoning / prompt) of each row */
	uint8_t *row_flags;
	struct kern_attn_query *queries;
	struct kern_kv_seg *segs; /* [max_seqs][WK_MAX_SEGS] */
	float *logits;		  /* [max_logit_rows][vocab] */
	struct wk_sample_scratch sample;
	int32_t *row_seg; /* segment each row is written to */
	int64_t steps, tokens_prefilled, tokens_decoded, tokens_source, logit_rows_total;
	int64_t tokens_imported;
	double flops;
	wk_trace_fn trace;
	void *trace_ud;
};

const char *wk_finish_str(enum wk_finish f)
{
	static const char *const names[] = {"none", "stop", "length", "context", "abort"};
	return (unsigned)f < CM_ARRAY_LEN(names) ? names[f] : "?";
}

struct wk_engine_params wk_engine_default_params(void)
{
	return (struct wk_engine_params){
		.max_batch_tokens = 256,
		.max_seqs = 16,
		.kv_tokens = 8192,
		.block_size = 16,
		.kv_dtype = KERN_F32,
		.max_logit_rows = 16,
	};
}

static int32_t blocks_for(const struct wk_engine *e, int32_t tokens)
{
	return (tokens + e->p.block_size - 1) / e->p.block_size;
}

/* Has a source segment: streaming, batch and encode modes. */
static bool is_stream(const struct wk_seq *q)
{
	return q->st.mode != WK_MODE_GENERATE;
}

static bool is_encode(const struct wk_seq *q)
{
	return q->st.mode == WK_MODE_ENCODE;
}

static int seg_alloc(struct wk_seg *seg, int32_t cap, int32_t max_blocks)
{
	seg->blocks = malloc((size_t)max_blocks * sizeof(int32_t));
	seg->pos = malloc((size_t)cap * sizeof(int32_t));
	seg->cap = cap;
	return seg->blocks && seg->pos ? CM_OK : CM_ENOMEM;
}

struct wk_engine *wk_engine_new(struct wk_model *m, const struct wk_engine_params *p,
				struct cm_err *err)
{
	const struct md_config *c = &m->cfg;
	if (p->max_batch_tokens < 1 || p->max_seqs < 1 || p->block_size < 1 ||
	    p->kv_tokens < p->block_size || p->max_logit_rows < 1 ||
	    p->max_logit_rows > p->max_batch_tokens) {
		cm_err_set(err, CM_EINVAL, "bad engine parameters");
		return NULL;
	}
	struct wk_engine *e = calloc(1, sizeof(*e));
	if (!e) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	e->m = m;
	e->be = m->be;
	e->p = *p;
	int32_t n_blocks = p->kv_tokens / p->block_size;
	e->cap = CM_MIN(c->max_pos, n_blocks * p->block_size);
	if (wk__kv_init(&e->kv, e->be, c, n_blocks, p->block_size, p->kv_dtype, err) < 0 ||
	    wk__scratch_init(&e->s, e->be, c, p->max_batch_tokens, err) < 0)
		goto fail;

	size_t nt = (size_t)p->max_batch_tokens, v = (size_t)c->vocab;
	e->slots = calloc((size_t)p->max_seqs, sizeof(*e->slots));
	e->aborted_queued = calloc((size_t)p->max_seqs, sizeof(uint64_t));
	e->ids = malloc(nt * sizeof(int32_t));
	e->pos = malloc(nt * sizeof(int32_t));
	e->slots_kv = malloc(nt * sizeof(int32_t));
	e->row_slot = malloc(nt * sizeof(int32_t));
	e->row_idx = malloc(nt * sizeof(int32_t));
	e->row_flags = malloc(nt);
	e->row_seg = malloc(nt * sizeof(int32_t));
	e->logit_rows = malloc(nt * sizeof(int32_t));
	e->queries = calloc(nt, sizeof(*e->queries));
	e->segs = calloc((size_t)p->max_seqs * WK_MAX_SEGS, sizeof(*e->segs));
	e->logits = kern_alloc(e->be, (size_t)p->max_logit_rows * v * sizeof(float));
	e->sample.idx = malloc(v * sizeof(int32_t));
	e->sample.val = malloc(v * sizeof(float));
	e->sample.mark = calloc(v, 1);
	e->sample.n = c->vocab;
	if (!e->slots || !e->aborted_queued || !e->ids || !e->pos || !e->slots_kv || !e->row_slot ||
	    !e->row_idx || !e->row_flags || !e->row_seg || !e->logit_rows || !e->queries ||
	    !e->segs || !e->logits || !e->sample.idx || !e->sample.val || !e->sample.mark)
		goto oom;
	int32_t max_blocks = blocks_for(e, e->cap);
	for (int32_t i = 0; i < p->max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		sl->tokens = malloc((size_t)e->cap * sizeof(int32_t));
		sl->tok_unit = malloc((size_t)e->cap * sizeof(int32_t));
		if (!sl->tokens || !sl->tok_unit)
			goto oom;
		/* WK_SEG_MAIN (= WK_SEG_SOURCE) and WK_SEG_REASON */
		if (seg_alloc(&sl->segs[WK_SEG_MAIN], e->cap, max_blocks) < 0 ||
		    seg_alloc(&sl->segs[WK_SEG_REASON], e->cap, max_blocks) < 0)
			goto oom;
	}
	return e;
oom:
	cm_err_set(err, CM_ENOMEM, "out of memory for the engine's buffers");
fail:
	wk_engine_free(e);
	return NULL;
}

static void seq_free(struct wk_seq *q)
{
	free(q->prompt);
	free(q->stop);
	free(q->st.conn);
	free(q->st.units);
	free(q->st.src);
	free(q->st.unit_end);
	q->prompt = q->stop = q->st.conn = q->st.units = q->st.src = q->st.unit_end = NULL;
}

void wk_engine_free(struct wk_engine *e)
{
	if (!e)
		return;
	while (e->queue) {
		struct wk_seq *q = e->queue;
		e->queue = q->next;
		seq_free(q);
		free(q);
	}
	if (e->slots) {
		for (int32_t i = 0; i < e->p.max_seqs; i++) {
			struct wk_slot *sl = &e->slots[i];
			seq_free(&sl->seq);
			free(sl->tokens);
			free(sl->tok_unit);
			for (int s = 0; s < WK_MAX_SEGS; s++) {
				free(sl->segs[s].blocks);
				free(sl->segs[s].pos);
			}
		}
		free(e->slots);
	}
	free(e->aborted_queued);
	free(e->ids);
	free(e->pos);
	free(e->slots_kv);
	free(e->row_slot);
	free(e->row_idx);
	free(e->row_flags);
	free(e->row_seg);
	free(e->logit_rows);
	free(e->queries);
	free(e->segs);
	kern_free(e->be, e->logits);
	free(e->sample.idx);
	free(e->sample.val);
	free(e->sample.mark);
	wk__scratch_fini(&e->s, e->be);
	wk__kv_fini(&e->kv, e->be);
	free(e);
}

/* ---- adding requests ------------------------------------------------------ */

static int check_ids(const struct wk_engine *e, uint64_t id, const int32_t *ids, int32_t n,
		     const char *what, struct cm_err *err)
{
	for (int32_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= e->m->cfg.vocab)
			return cm_err_set(err, CM_EINVAL,
					  "request %llu: %s token id %d at %d outside the "
					  "vocabulary (%d)",
					  (unsigned long long)id, what, ids[i], i, e->m->cfg.vocab);
	return CM_OK;
}

/* The forced start of a streaming request's reasoning: prompt, else think_prefix. */
static void stream_forced(const struct wk_request *r, const int32_t **ids, int32_t *n)
{
	*ids = r->prompt;
	*n = r->n_prompt;
	if (r->n_prompt == 0 && r->think) {
		*ids = r->think->think_prefix;
		*n = r->think->n_think_prefix;
	}
}

/* Checks the streaming fields of r (defaults applied by stream_init). */
static int stream_check(const struct wk_engine *e, const struct wk_request *r, struct cm_err *err)
{
	unsigned long long id = (unsigned long long)r->id;
	const int32_t *forced;
	int32_t n_forced, rc;
	if (r->mode != WK_MODE_STREAMING && r->mode != WK_MODE_BATCH)
		return cm_err_set(err, CM_EINVAL, "request %llu: unknown mode %d", id, r->mode);
	if (r->phi < 0 || r->phi >= e->m->cfg.max_pos)
		return cm_err_set(err, CM_EINVAL, "request %llu: phi %d outside [0, %d)", id,
				  r->phi, e->m->cfg.max_pos);
	if (r->unit_budget < 0 || r->final_budget < 0 || r->answer_budget < 0 ||
	    (r->final_budget && r->answer_budget > r->final_budget))
		return cm_err_set(err, CM_EINVAL,
				  "request %llu: budgets must be >= 0 and answer <= final", id);
	if (!r->think && r->max_tokens > 0)
		return cm_err_set(err, CM_EINVAL,
				  "request %llu: streaming generation needs the template's ids "
				  "(think); without them only teacher forcing (max_tokens 0)",
				  id);
	stream_forced(r, &forced, &n_forced);
	if (n_forced < 1)
		return cm_err_set(err, CM_EINVAL, "request %llu: no forced reasoning start", id);
	if ((rc = check_ids(e, r->id, forced, n_forced, "reasoning", err)) < 0)
		return rc;
	if (r->n_prompt_units < 0 || (r->n_prompt_units && (!r->prompt_units || !r->n_prompt)))
		return cm_err_set(err, CM_EINVAL, "request %llu: bad prompt_units", id);
	int64_t sum = 0;
	for (int32_t i = 0; i < r->n_prompt_units; i++) {
		if (r->prompt_units[i] < 1)
			return cm_err_set(err, CM_EINVAL, "request %llu: empty forced unit %d", id,
					  i);
		sum += r->prompt_units[i];
	}
	if (r->n_prompt_units && sum != r->n_prompt)
		return cm_err_set(err, CM_EINVAL,
				  "request %llu: prompt_units add up to %lld, not %d tokens", id,
				  (long long)sum, r->n_prompt);
	if (r->think) {
		const struct md_seg_ids *t = r->think;
		int32_t b[] = {t->sep, t->eoq, t->eos, t->eot, t->eor, t->eoa, t->ignore};
		if ((rc = check_ids(e, r->id, b, 7, "boundary", err)) < 0 ||
		    (rc = check_ids(e, r->id, t->connect_2, t->n_connect_2, "connector", err)) <
			    0 ||
		    (rc = check_ids(e, r->id, t->connect_3, t->n_connect_3, "connector", err)) < 0)
			return rc;
		if ((int64_t)n_forced + t->n_connect_2 + t->n_connect_3 >= e->cap)
			return cm_err_set(err, CM_ERANGE,
					  "request %llu: template longer than the context (%d)", id,
					  e->cap);
	} else if (n_forced > e->cap) {
		return cm_err_set(err, CM_ERANGE,
				  "request %llu: forced reasoning of %d tokens exceeds the context "
				  "(%d)",
				  id, n_forced, e->cap);
	}
	return CM_OK;
}

/* Fills q's streaming state from r (checked); the forced reasoning goes to q->prompt. */
static int stream_init(struct wk_seq *q, const struct wk_request *r)
{
	struct wk_stream *st = &q->st;
	const int32_t *forced;
	int32_t n_forced;
	stream_forced(r, &forced, &n_forced);
	st->mode = r->mode;
	st->remote = r->remote_source;
	st->phi = r->phi;
	st->unit_budget = r->unit_budget ? r->unit_budget : 64;
	st->final_budget = r->final_budget ? r->final_budget : 256;
	st->answer_budget = r->answer_budget ? r->answer_budget : st->final_budget / 4;
	st->answer_budget = CM_MIN(st->answer_budget, st->final_budget);
	q->n_prompt = n_forced;
	q->prompt = malloc((size_t)n_forced * sizeof(int32_t));
	if (!q->prompt)
		return CM_ENOMEM;
	memcpy(q->prompt, forced, (size_t)n_forced * sizeof(int32_t));
	if (r->n_prompt_units && r->n_prompt) {
		st->units = malloc((size_t)r->n_prompt_units * sizeof(int32_t));
		if (!st->units)
			return CM_ENOMEM;
		memcpy(st->units, r->prompt_units, (size_t)r->n_prompt_units * sizeof(int32_t));
		st->n_prompt_units = r->n_prompt_units;
	}
	if (r->think) {
		const struct md_seg_ids *t = r->think;
		int32_t n2 = t->n_connect_2, n3 = t->n_connect_3;
		st->has_ids = true;
		st->ids = *t;
		st->ids.think_prefix = NULL;
		st->ids.n_think_prefix = 0;
		st->conn = malloc((size_t)(n2 + n3 + 1) * sizeof(int32_t));
		if (!st->conn)
			return CM_ENOMEM;
		if (n2)
			memcpy(st->conn, t->connect_2, (size_t)n2 * sizeof(int32_t));
		if (n3)
			memcpy(st->conn + n2, t->connect_3, (size_t)n3 * sizeof(int32_t));
		st->ids.connect_2 = st->conn;
		st->ids.connect_3 = st->conn + n2;
	}
	return CM_OK;
}

/* Checks what wk_engine_add reads of r in each mode (encode mode reads only
 * its id: no prompt, no reasoning, no sampling). */
static int request_check(const struct wk_engine *e, const struct wk_request *r, struct cm_err *err)
{
	unsigned long long id = (unsigned long long)r->id;
	int rc;
	if (r->remote_source && r->mode != WK_MODE_STREAMING && r->mode != WK_MODE_BATCH)
		return cm_err_set(err, CM_EINVAL,
				  "request %llu: remote_source needs streaming or batch mode", id);
	if (r->mode == WK_MODE_ENCODE)
		return CM_OK;
	bool stream = r->mode != WK_MODE_GENERATE;
	if (!stream && r->n_prompt < 1)
		return cm_err_set(err, CM_EINVAL, "request %llu: empty prompt", id);
	if (r->max_tokens < 0 || r->n_stop < 0 || (r->n_stop && !r->stop_ids) || r->n_prompt < 0 ||
	    (r->n_prompt && !r->prompt))
		return cm_err_set(err, CM_EINVAL, "request %llu: bad limits", id);
	if (stream && (rc = stream_check(e, r, err)) < 0)
		return rc;
	if (!stream && (rc = check_ids(e, r->id, r->prompt, r->n_prompt, "prompt", err)) < 0)
		return rc;
	if (r->n_prompt > e->cap || blocks_for(e, r->n_prompt) > e->kv.n_blocks)
		return cm_err_set(err, CM_ERANGE,
				  "request %llu: prompt of %d tokens exceeds the context (%d)", id,
				  r->n_prompt, e->cap);
	return wk__sample_params_check(&r->sample, err);
}

int wk_engine_add(struct wk_engine *e, const struct wk_request *r, struct cm_err *err)
{
	int rc;
	bool stream = r->mode != WK_MODE_GENERATE, encode = r->mode == WK_MODE_ENCODE;
	if ((rc = request_check(e, r, err)) < 0)
		return rc;
	if (e->n_queued >= 64 * e->p.max_seqs)
		return cm_err_set(err, CM_EFULL, "request %llu: queue full (%d waiting)",
				  (unsigned long long)r->id, e->n_queued);

	struct wk_seq *q = calloc(1, sizeof(*q));
	if (!q)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	q->id = r->id;
	q->n_prompt = r->n_prompt;
	q->max_tokens = r->max_tokens;
	q->n_stop = encode ? 0 : r->n_stop;
	q->prompt_logits = r->prompt_logits;
	q->on_logits = r->on_logits;
	q->ud = r->ud;
	q->stop = malloc((size_t)(q->n_stop + 1) * sizeof(int32_t));
	if (encode) {
		/* the source segment only: no reasoning, no sampling, no finish of its own */
		q->st.mode = WK_MODE_ENCODE;
		q->n_prompt = q->max_tokens = 0;
		q->prompt_logits = false;
		q->on_logits = NULL;
		rc = CM_OK;
	} else if (stream) {
		rc = stream_init(q, r);
	} else {
		q->prompt = malloc((size_t)r->n_prompt * sizeof(int32_t));
		rc = q->prompt ? CM_OK : CM_ENOMEM;
		if (q->prompt)
			memcpy(q->prompt, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
	}
	if (rc < 0 || !q->stop) {
		seq_free(q);
		free(q);
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	}
	if (q->n_stop)
		memcpy(q->stop, r->stop_ids, (size_t)q->n_stop * sizeof(int32_t));
	wk__sampler_init(&q->sampler, &r->sample);
	if (e->queue_tail)
		e->queue_tail->next = q;
	else
		e->queue = q;
	e->queue_tail = q;
	e->n_queued++;
	return CM_OK;
}

/* The queued or running request id: its seq, and its slot when running. */
static struct wk_seq *seq_find(struct wk_engine *e, uint64_t id, struct wk_slot **slot)
{
	*slot = NULL;
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->used && !sl->aborted && sl->seq.id == id) {
			*slot = sl;
			return &sl->seq;
		}
	}
	for (struct wk_seq *q = e->queue; q; q = q->next)
		if (q->id == id)
			return q;
	return NULL;
}

static int grow(int32_t **a, int32_t *cap, int32_t need)
{
	if (need <= *cap)
		return CM_OK;
	int32_t c = CM_MAX(need, CM_MAX(2 * *cap, 64));
	int32_t *p = realloc(*a, (size_t)c * sizeof(int32_t));
	if (!p)
		return CM_ENOMEM;
	*a = p;
	*cap = c;
	return CM_OK;
}

/* The checks wk_engine_input and wk_engine_input_kv share: q (req_id) takes
 * the source unit[n]. */
static int input_check(const struct wk_engine *e, const struct wk_seq *q, uint64_t req_id,
		       const int32_t *unit, int32_t n, bool as_kv, struct cm_err *err)
{
	unsigned long long id = (unsigned long long)req_id;
	if (!q)
		return cm_err_set(err, CM_ENOENT, "request %llu: unknown or finished", id);
	const struct wk_stream *st = &q->st;
	if (!is_stream(q))
		return cm_err_set(err, CM_EINVAL, "request %llu: input to a generate request", id);
	if (st->closed)
		return cm_err_set(err, CM_EINVAL, "request %llu: input after the close", id);
	if (n < 1 || !unit)
		return cm_err_set(err, CM_EINVAL, "request %llu: empty unit", id);
	int rc = check_ids(e, req_id, unit, n, "source", err);
	if (rc < 0)
		return rc;
	if ((int64_t)st->src_n + n > e->cap)
		return cm_err_set(err, CM_ERANGE,
				  "request %llu: source of %lld tokens exceeds the context (%d)",
				  id, (long long)st->src_n + n, e->cap);
	if (st->remote && !as_kv)
		return cm_err_set(err, CM_EINVAL,
				  "request %llu: its source arrives as KV (remote_source): "
				  "wk_engine_input_kv",
				  id);
	if (!st->remote && as_kv)
		return cm_err_set(err, CM_EINVAL,
				  "request %llu: KV input to a request without remote_source", id);
	return CM_OK;
}

/* Where the KV blocks of n more source tokens of a running sl come from: the
 * free pool (extra blocks reserved), else sl's own reasoning reservation (its
 * reasoning may then end sooner, CONTEXT: tok_cap shrinks). */
struct src_plan {
	int32_t extra;
	int32_t tok_cap;
	bool from_pool;
};

/* Plans n more source tokens of sl; false when neither way has room. */
static bool src_plan(const struct wk_engine *e, const struct wk_slot *sl, int32_t n,
		     struct src_plan *p)
{
	int32_t src_n = sl->seq.st.src_n;
	p->extra = blocks_for(e, src_n + n) - blocks_for(e, src_n);
	p->from_pool = e->reserved + p->extra <= e->kv.n_blocks;
	p->tok_cap = sl->tok_cap;
	if (p->from_pool)
		return true;
	p->tok_cap = (sl->reserved - blocks_for(e, src_n + n)) * e->p.block_size;
	return p->tok_cap > sl->n_tokens;
}

static void src_plan_apply(struct wk_engine *e, struct wk_slot *sl, const struct src_plan *p)
{
	if (p->from_pool) {
		sl->reserved += p->extra;
		e->reserved += p->extra;
	} else {
		sl->tok_cap = CM_MIN(sl->tok_cap, p->tok_cap);
	}
}

/* Makes room for a unit of n tokens in st's source ids and unit ends. */
static int src_grow(struct wk_stream *st, int32_t n)
{
	if (grow(&st->src, &st->src_cap, st->src_n + n) < 0 ||
	    grow(&st->unit_end, &st->units_cap, st->n_units + 1) < 0)
		return CM_ENOMEM;
	return CM_OK;
}

/* Appends a checked unit to st's source (room made by src_grow). */
static void src_push(struct wk_stream *st, const int32_t *unit, int32_t n)
{
	memcpy(st->src + st->src_n, unit, (size_t)n * sizeof(int32_t));
	st->src_n += n;
	st->unit_end[st->n_units++] = st->src_n;
}

int wk_engine_input(struct wk_engine *e, uint64_t req_id, const int32_t *unit, int32_t n,
		    struct cm_err *err)
{
	struct wk_slot *sl;
	struct wk_seq *q = seq_find(e, req_id, &sl);
	unsigned long long id = (unsigned long long)req_id;
	struct src_plan plan;
	int rc = input_check(e, q, req_id, unit, n, false, err);
	if (rc < 0)
		return rc;
	/* a queued request reserves its source's blocks when admitted */
	if (sl && !src_plan(e, sl, n, &plan))
		return cm_err_set(err, CM_ERANGE, "request %llu: the KV pool is full", id);
	if (src_grow(&q->st, n) < 0)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	src_push(&q->st, unit, n);
	if (sl)
		src_plan_apply(e, sl, &plan);
	return CM_OK;
}

int wk_engine_close_input(struct wk_engine *e, uint64_t req_id, struct cm_err *err)
{
	struct wk_slot *sl;
	struct wk_seq *q = seq_find(e, req_id, &sl);
	if (!q)
		return cm_err_set(err, CM_ENOENT, "request %llu: unknown or finished",
				  (unsigned long long)req_id);
	if (!is_stream(q))
		return cm_err_set(err, CM_EINVAL, "request %llu: close of a generate request",
				  (unsigned long long)req_id);
	q->st.closed = true;
	return CM_OK;
}

int wk_engine_abort(struct wk_engine *e, uint64_t id)
{
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->used && sl->seq.id == id && !sl->aborted) {
			sl->aborted = true;
			return CM_OK;
		}
	}
	for (struct wk_seq **pp = &e->queue; *pp; pp = &(*pp)->next) {
		struct wk_seq *q = *pp;
		if (q->id != id)
			continue;
		if (e->n_aborted_queued == e->p.max_seqs)
			return CM_EAGAIN;
		*pp = q->next;
		if (e->queue_tail == q) {
			e->queue_tail = NULL;
			for (struct wk_seq *t = e->queue; t; t = t->next)
				e->queue_tail = t;
		}
		e->n_queued--;
		e->aborted_queued[e->n_aborted_queued++] = id;
		seq_free(q);
		free(q);
		return CM_OK;
	}
	return CM_ENOENT;
}

bool wk_engine_busy(const struct wk_engine *e)
{
	if (e->queue || e->n_aborted_queued)
		return true;
	for (int32_t i = 0; i < e->p.max_seqs; i++)
		if (e->slots[i].used)
			return true;
	return false;
}

/* ---- admission ------------------------------------------------------------ */

/* Blocks a request needs for its whole life (streaming: its reasoning, and the
 * source that has arrived so far). */
static int32_t blocks_needed(const struct wk_engine *e, const struct wk_seq *q)
{
	int64_t tokens = (int64_t)q->n_prompt + q->max_tokens;
	if (!is_stream(q))
		return blocks_for(e, (int32_t)CM_MIN(tokens, (int64_t)e->cap));
	tokens += q->st.ids.n_connect_2 + q->st.ids.n_connect_3;
	return blocks_for(e, (int32_t)CM_MIN(tokens, (int64_t)e->cap)) + blocks_for(e, q->st.src_n);
}

/* A streaming sequence starts on its forced units; then on the unit after them. */
static void stream_start(struct wk_slot *sl)
{
	struct wk_stream *st = &sl->seq.st;
	int32_t u = 0, left = st->units ? st->units[0] : sl->n_tokens;
	for (int32_t i = 0; i < sl->n_tokens; i++) {
		if (left == 0)
			left = st->units[++u];
		sl->tok_unit[i] = u;
		left--;
	}
	st->stage = ST_UNITS;
	st->unit = u + 1;
	st->unit_gen = 0;
	st->final_gen = 0;
}

/* Moves queued requests into free slots, in arrival order, while KV allows. */
static void admit(struct wk_engine *e)
{
	while (e->queue) {
		struct wk_seq *q = e->queue;
		int32_t need = blocks_needed(e, q);
		if (e->reserved + need > e->kv.n_blocks && e->reserved > 0)
			return; /* wait for running requests to finish */
		struct wk_slot *sl = NULL;
		for (int32_t i = 0; i < e->p.max_seqs && !sl; i++)
			if (!e->slots[i].used)
				sl = &e->slots[i];
		if (!sl)
			return;
		e->queue = q->next;
		if (!e->queue)
			e->queue_tail = NULL;
		e->n_queued--;
		if (q->n_prompt)
			memcpy(sl->tokens, q->prompt, (size_t)q->n_prompt * sizeof(int32_t));
		free(q->prompt);
		q->prompt = NULL;
		q->next = NULL;
		sl->seq = *q;
		free(q);
		sl->used = true;
		sl->aborted = false;
		sl->n_tokens = sl->seq.n_prompt;
		sl->n_fed = 0;
		sl->n_gen = 0;
		sl->reserved = CM_MIN(need, e->kv.n_blocks);
		e->reserved += sl->reserved;
		sl->tok_cap = e->cap;
		if (is_stream(&sl->seq)) {
			/* the reasoning gets what the reservation leaves the source */
			int32_t left = sl->reserved - blocks_for(e, sl->seq.st.src_n);
			sl->tok_cap = CM_MIN(e->cap, CM_MAX(left, 0) * e->p.block_size);
			stream_start(sl);
		}
	}
}

static void slot_release(struct wk_engine *e, struct wk_slot *sl)
{
	for (int s = 0; s < WK_MAX_SEGS; s++)
		if (sl->segs[s].blocks)
			wk__seg_release(&e->kv, &sl->segs[s]);
	e->reserved -= sl->reserved;
	sl->reserved = 0;
	seq_free(&sl->seq);
	memset(&sl->seq.st, 0, sizeof(sl->seq.st));
	sl->used = false;
}

static void push_event(struct wk_event *ev, int max_ev, int *n_ev, const struct wk_slot *sl,
		       int32_t token, enum wk_finish finish)
{
	CM_ASSERT(*n_ev < max_ev);
	const struct wk_stream *st = &sl->seq.st;
	struct wk_event x = {
		.req_id = sl->seq.id,
		.token = token,
		.phase = WK_PHASE_ANSWER,
		.unit = -1,
		.finish = finish,
		.n_prompt = sl->seq.n_prompt,
		.n_generated = sl->n_gen,
	};
	if (is_encode(&sl->seq)) {
		x.phase = WK_PHASE_PROMPT;
		x.unit = st->n_units;
	} else if (is_stream(&sl->seq)) {
		x.phase = st->stage == ST_ANSWER ? WK_PHASE_ANSWER : WK_PHASE_THOUGHT;
		x.unit = st->stage == ST_UNITS ? CM_MIN(st->unit, st->n_units) : st->n_units;
	}
	ev[(*n_ev)++] = x;
}

/* ---- building a step ------------------------------------------------------ */

/* The sequence index of sl in this step (assigned on its first token). */
static int32_t seq_index(struct wk_slot *sl, int32_t *n_seq)
{
	if (sl->batch_index < 0)
		sl->batch_index = (*n_seq)++;
	return sl->batch_index;
}

/* Appends one row of the step. */
static void row_set(struct wk_engine *e, int32_t t, const struct wk_slot *sl, int32_t id,
		    int32_t idx, int32_t bi, uint8_t flags, int32_t seg)
{
	e->ids[t] = id;
	e->row_seg[t] = seg;
	e->row_slot[t] = (int32_t)(sl - e->slots);
	e->row_idx[t] = idx;
	e->row_flags[t] = flags;
	struct kern_attn_query *qy = &e->queries[t];
	memset(qy, 0, sizeof(*qy));
	qy->seq = bi;
}

/* Adds up to budget tokens of a generate-mode sl (from n_fed on) to the batch;
 * returns the count. */
static int32_t batch_add(struct wk_engine *e, struct wk_slot *sl, int32_t *n_seq, int32_t *T,
			 int32_t budget)
{
	int32_t take = CM_MIN(sl->n_tokens - sl->n_fed, budget);
	if (take <= 0)
		return 0;
	struct wk_seg *seg = &sl->segs[WK_SEG_MAIN];
	int32_t t0 = *T;
	for (int32_t j = 0; j < take; j++)
		e->pos[t0 + j] = sl->n_fed + j; /* plain generation: position = index */
	if (wk__seg_append(&e->kv, seg, take, e->pos + t0, e->slots_kv + t0) < 0)
		return 0; /* cannot happen within the reservation; retried next step */
	int32_t bi = seq_index(sl, n_seq);
	for (int32_t j = 0; j < take; j++) {
		int32_t idx = sl->n_fed + j;
		bool sample = idx == sl->n_tokens - 1 && sl->seq.max_tokens > 0;
		bool logits = sample || (sl->seq.prompt_logits && idx < sl->seq.n_prompt);
		row_set(e, t0 + j, sl, sl->tokens[idx], idx, bi,
			(uint8_t)((logits ? ROW_LOGITS : 0) | (sample ? ROW_SAMPLE : 0)),
			WK_SEG_MAIN);
		e->queries[t0 + j].n_vis[WK_SEG_MAIN] = idx + 1; /* causal */
	}
	sl->n_fed += take;
	*T += take;
	return take;
}

/* Is the source of sl readable now (batch mode reads it only after the close)? */
static bool stream_may_read(const struct wk_stream *st)
{
	return st->mode != WK_MODE_BATCH || st->closed;
}

/* The number of source tokens reasoning token i of sl sees, or -1 while the
 * source it needs has not been read (src_ready tokens are). Token i belongs to
 * unit tok_unit[i] but is fed with the visibility of the next token's unit: the
 * one-token shift. The last forced token of a teacher-forced request (nothing
 * follows) keeps its own unit. */
static int32_t reason_vis(const struct wk_slot *sl, int32_t i, int32_t src_ready)
{
	const struct wk_stream *st = &sl->seq.st;
	int32_t u = i + 1 < sl->n_tokens ? sl->tok_unit[i + 1] : st->unit;
	if (i + 1 == sl->n_tokens && sl->seq.max_tokens == 0)
		u = sl->tok_unit[i];
	if (st->mode == WK_MODE_BATCH || u >= st->n_units) {
		if (!st->closed || src_ready < st->src_n)
			return -1;
		return st->src_n;
	}
	return src_ready >= st->unit_end[u] ? st->unit_end[u] : -1;
}

/* Will the token after sl's last be forced (no logits needed)? */
static bool next_forced(const struct wk_slot *sl)
{
	const struct wk_stream *st = &sl->seq.st;
	if (st->stage == ST_UNITS)
		return st->unit_gen + 1 >= st->unit_budget;
	if (st->stage == ST_FINAL) /* "</think>\n\n" is due */
		return st->final_gen >= st->final_budget - st->answer_budget &&
		       st->ids.n_connect_3 > 0;
	return false;
}

/* Adds sl's source tokens (up to budget) to the batch; returns the count. */
static int32_t stream_add_source(struct wk_engine *e, struct wk_slot *sl, int32_t *n_seq,
				 int32_t *T, int32_t budget)
{
	struct wk_stream *st = &sl->seq.st;
	int32_t take = CM_MIN(st->src_n - st->src_fed, budget);
	if (take <= 0 || !stream_may_read(st))
		return 0;
	int32_t t0 = *T;
	for (int32_t j = 0; j < take; j++)
		e->pos[t0 + j] = st->src_fed + j; /* source positions 0..S-1 */
	if (wk__seg_append(&e->kv, &sl->segs[WK_SEG_SOURCE], take, e->pos + t0, e->slots_kv + t0) <
	    0)
		return 0;
	int32_t bi = seq_index(sl, n_seq);
	for (int32_t j = 0; j < take; j++) {
		int32_t idx = st->src_fed + j;
		row_set(e, t0 + j, sl, st->src[idx], idx, bi, 0, WK_SEG_SOURCE); /* no LM head */
		e->queries[t0 + j].n_vis[WK_SEG_SOURCE] = idx + 1; /* causal, source only */
	}
	st->src_fed += take;
	*T += take;
	return take;
}

/* Adds up to budget of sl's known reasoning tokens whose source is read; returns
 * the count. */
static int32_t stream_add_reason(struct wk_engine *e, struct wk_slot *sl, int32_t *n_seq,
				 int32_t *T, int32_t budget)
{
	struct wk_stream *st = &sl->seq.st;
	int32_t take = 0;
	while (take < budget && sl->n_fed + take < sl->n_tokens &&
	       reason_vis(sl, sl->n_fed + take, st->src_fed) >= 0)
		take++;
	if (take == 0)
		return 0;
	int32_t t0 = *T;
	for (int32_t j = 0; j < take; j++)
		e->pos[t0 + j] = st->phi + sl->n_fed + j; /* group positions: phi + j */
	if (wk__seg_append(&e->kv, &sl->segs[WK_SEG_REASON], take, e->pos + t0, e->slots_kv + t0) <
	    0)
		return 0;
	int32_t bi = seq_index(sl, n_seq);
	for (int32_t j = 0; j < take; j++) {
		int32_t idx = sl->n_fed + j;
		bool last = idx == sl->n_tokens - 1 && sl->seq.max_tokens > 0;
		bool sample = last && !next_forced(sl);
		bool logits = sample || (sl->seq.prompt_logits && idx < sl->seq.n_prompt);
		row_set(e, t0 + j, sl, sl->tokens[idx], idx, bi,
			(uint8_t)((logits ? ROW_LOGITS : 0) | (sample ? ROW_SAMPLE : 0)),
			WK_SEG_REASON);
		e->queries[t0 + j].n_vis[WK_SEG_SOURCE] = reason_vis(sl, idx, st->src_fed);
		e->queries[t0 + j].n_vis[WK_SEG_REASON] = idx + 1;
		sl->forced_next = last && !sample;
	}
	sl->n_fed += take;
	*T += take;
	return take;
}

/* Appends forced tokens of unit u to sl's reasoning; false when the context is full. */
static bool reason_append(struct wk_slot *sl, const int32_t *ids, int32_t n, int32_t u)
{
	if (sl->n_tokens + n > sl->tok_cap)
		return false;
	for (int32_t i = 0; i < n; i++) {
		sl->tokens[sl->n_tokens] = ids[i];
		sl->tok_unit[sl->n_tokens++] = u;
	}
	return true;
}

/* The input closed and every unit's reasoning ended: the final phase begins with
 * the depth connector. Reports a CONTEXT finish when the reasoning does not fit. */
static void stream_advance(struct wk_engine *e, struct wk_slot *sl, struct wk_event *ev, int max_ev,
			   int *n_ev)
{
	struct wk_stream *st = &sl->seq.st;
	if (sl->n_tokens > sl->tok_cap) { /* admitted into a pool too small for it */
		push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_CONTEXT);
		slot_release(e, sl);
		return;
	}
	if (st->stage != ST_UNITS || !st->closed || st->unit < st->n_units ||
	    sl->seq.max_tokens == 0)
		return;
	st->stage = ST_FINAL;
	st->unit = UNIT_FINAL;
	if (!reason_append(sl, st->ids.connect_2, st->ids.n_connect_2, UNIT_FINAL)) {
		push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_CONTEXT);
		slot_release(e, sl);
	}
}

/* ---- after the forward ---------------------------------------------------- */

static bool is_boundary(const struct md_seg_ids *t, int32_t tok)
{
	return tok == t->sep || tok == t->eoq || tok == t->eos || tok == t->eot || tok == t->eor ||
	       tok == t->eoa || tok == t->ignore;
}

/* The boundary forced on unit u: <SEP> or <EOQ> when its source unit ends so,
 * else <EOT>. */
static int32_t forced_boundary(const struct wk_stream *st, int32_t u)
{
	if (u < st->n_units) {
		int32_t last = st->src[st->unit_end[u] - 1];
		if (last == st->ids.sep || last == st->ids.eoq)
			return last;
	}
	return st->ids.eot;
}

static enum wk_finish stop_check(const struct wk_slot *sl, int32_t tok)
{
	for (int32_t i = 0; i < sl->seq.n_stop; i++)
		if (sl->seq.stop[i] == tok)
			return WK_FINISH_STOP;
	if (sl->n_gen >= sl->seq.max_tokens)
		return WK_FINISH_LENGTH;
	if (sl->n_tokens >= sl->tok_cap)
		return WK_FINISH_CONTEXT;
	return WK_FINISH_NONE;
}

/* Picks the next reasoning token of a streaming sl (from logits, or forced when
 * logits is NULL), advances its state machine and reports it. */
static void stream_next(struct wk_engine *e, struct wk_slot *sl, float *logits, struct wk_event *ev,
			int max_ev, int *n_ev)
{
	struct wk_stream *st = &sl->seq.st;
	if (!logits && st->stage == ST_FINAL) {
		/* deep-reasoning budget spent: close the thinking, the answer follows */
		st->stage = ST_ANSWER;
		if (!reason_append(sl, st->ids.connect_3, st->ids.n_connect_3, UNIT_FINAL)) {
			push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_CONTEXT);
			slot_release(e, sl);
		}
		return;
	}
	int32_t tok = logits ? wk__sample(&sl->seq.sampler, e->be, logits, e->m->cfg.vocab,
					  sl->tokens, sl->n_tokens, &e->sample)
			     : forced_boundary(st, st->unit);
	sl->tokens[sl->n_tokens] = tok;
	sl->tok_unit[sl->n_tokens++] = st->unit;
	sl->n_gen++;
	int at = *n_ev;
	push_event(ev, max_ev, n_ev, sl, tok, WK_FINISH_NONE); /* this token's phase and unit */
	if (st->stage == ST_UNITS) {
		st->unit_gen++;
		if (!logits || is_boundary(&st->ids, tok)) {
			st->unit++;
			st->unit_gen = 0;
		}
	} else {
		st->final_gen++;
		if (st->stage == ST_FINAL &&
		    (tok == st->ids.think_end ||
		     (st->ids.n_connect_3 == 0 &&
		      st->final_gen >= st->final_budget - st->answer_budget)))
			st->stage = ST_ANSWER;
	}
	enum wk_finish f = stop_check(sl, tok);
	if (!f && st->stage != ST_UNITS && st->final_gen >= st->final_budget)
		f = WK_FINISH_LENGTH;
	ev[at].finish = f;
	if (f)
		slot_release(e, sl);
}

/* Samples the next token of a generate-mode sl from logits and reports it. */
static void sample_one(struct wk_engine *e, struct wk_slot *sl, float *logits, struct wk_event *ev,
		       int max_ev, int *n_ev)
{
	int32_t tok = wk__sample(&sl->seq.sampler, e->be, logits, e->m->cfg.vocab, sl->tokens,
				 sl->n_tokens, &e->sample);
	sl->tokens[sl->n_tokens++] = tok;
	sl->n_gen++;
	enum wk_finish f = stop_check(sl, tok);
	push_event(ev, max_ev, n_ev, sl, tok, f);
	if (f)
		slot_release(e, sl);
}

/* Computes logits for the rows that want them, in chunks, and acts on them. */
static void logits_and_sample(struct wk_engine *e, int32_t T, struct wk_event *ev, int max_ev,
			      int *n_ev)
{
	int32_t n_rows = 0;
	for (int32_t t = 0; t < T; t++)
		if (e->row_flags[t] & ROW_LOGITS)
			e->logit_rows[n_rows++] = t;
	e->logit_rows_total += n_rows;
	int32_t vocab = e->m->cfg.vocab;
	for (int32_t c0 = 0; c0 < n_rows; c0 += e->p.max_logit_rows) {
		int32_t n = CM_MIN(e->p.max_logit_rows, n_rows - c0);
		wk__logits(e->m, &e->s, e->logit_rows + c0, n, e->logits);
		for (int32_t i = 0; i < n; i++) {
			int32_t r = e->logit_rows[c0 + i], idx = e->row_idx[r];
			struct wk_slot *sl = &e->slots[e->row_slot[r]];
			float *lg = e->logits + (size_t)i * vocab;
			if (sl->seq.on_logits)
				sl->seq.on_logits(sl->seq.ud, sl->seq.id, idx, lg, vocab);
			if (!(e->row_flags[r] & ROW_SAMPLE))
				continue;
			if (is_stream(&sl->seq))
				stream_next(e, sl, lg, ev, max_ev, n_ev);
			else
				sample_one(e, sl, lg, ev, max_ev, n_ev);
		}
	}
}

/* FLOPs of this step's forward (algorithms.md §0.2), without the LM head. */
static double step_flops(const struct wk_engine *e, int32_t T)
{
	const struct md_config *c = &e->m->cfg;
	double d = c->hidden, hd = c->head_dim, nh = c->n_head, nkv = c->n_kv_head;
	double per_tok = 2 * d * (nh + 2 * nkv) * hd + 2 * nh * hd * d + 6 * d * c->intermediate;
	double ctx = 0;
	for (int32_t t = 0; t < T; t++) {
		const struct kern_attn_query *q = &e->queries[t];
		for (int s = 0; s < WK_MAX_SEGS; s++)
			ctx += CM_MIN(q->n_vis[s], e->segs[(size_t)q->seq * WK_MAX_SEGS + s].n_tok);
	}
	return c->n_layer * (per_tok * T + 4 * nh * hd * ctx);
}

/* Builds the step's batch: decode tokens first (one per sequence), then prefill
 * chunks (prompts, streaming source and the reasoning it unblocks, forced
 * reasoning). Returns the number of tokens; *decoded counts the first kind. */
static int32_t build_batch(struct wk_engine *e, int32_t *n_seq, int64_t *decoded)
{
	int32_t T = 0, budget = e->p.max_batch_tokens;
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		sl->batch_index = -1;
		sl->forced_next = false;
		if (!sl->used || sl->n_fed < sl->seq.n_prompt || T >= budget)
			continue;
		if (is_stream(&sl->seq))
			*decoded += stream_add_reason(e, sl, n_seq, &T, 1);
		else if (sl->n_fed < sl->n_tokens)
			*decoded += batch_add(e, sl, n_seq, &T, 1);
	}
	for (int32_t i = 0; i < e->p.max_seqs && T < budget; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (!sl->used)
			continue;
		if (!is_stream(&sl->seq)) {
			if (sl->batch_index < 0 && sl->n_fed < sl->seq.n_prompt)
				batch_add(e, sl, n_seq, &T, budget - T);
			continue;
		}
		e->tokens_source += stream_add_source(e, sl, n_seq, &T, budget - T);
		/* what the source just read unblocks, and forced tokens in chunks */
		stream_add_reason(e, sl, n_seq, &T, budget - T);
	}
	/* segment lengths as seen by this step's attention: after all appends */
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->batch_index < 0)
			continue;
		struct kern_kv_seg *ks = &e->segs[(size_t)sl->batch_index * WK_MAX_SEGS];
		for (int s = 0; s < WK_MAX_SEGS; s++)
			ks[s] = (struct kern_kv_seg){.blocks = sl->segs[s].blocks,
						     .n_tok = sl->segs[s].n_tok};
	}
	return T;
}

int wk_engine_step(struct wk_engine *e, struct wk_event *ev, int max_ev, int *n_ev,
		   struct cm_err *err)
{
	(void)err;
	*n_ev = 0;
	CM_ASSERT(max_ev >= WK_EV_MIN(&e->p));
	/* finishes of aborted requests */
	for (int32_t i = 0; i < e->n_aborted_queued && *n_ev < max_ev; i++)
		ev[(*n_ev)++] = (struct wk_event){.req_id = e->aborted_queued[i],
						  .token = -1,
						  .unit = -1,
						  .finish = WK_FINISH_ABORT};
	e->n_aborted_queued = 0;
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->used && sl->aborted) {
			push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_ABORT);
			slot_release(e, sl);
		}
	}
	admit(e);
	for (int32_t i = 0; i < e->p.max_seqs; i++)
		if (e->slots[i].used && is_stream(&e->slots[i].seq))
			stream_advance(e, &e->slots[i], ev, max_ev, n_ev);

	int32_t n_seq = 0;
	int64_t decoded = 0;
	int32_t T = build_batch(e, &n_seq, &decoded);
	if (T == 0)
		return CM_OK;

	for (int32_t t = 0; e->trace && t < T; t++) {
		struct wk_row_trace r = {.req_id = e->slots[e->row_slot[t]].seq.id,
					 .token = e->ids[t],
					 .seg = e->row_seg[t],
					 .index = e->row_idx[t],
					 .pos = e->pos[t]};
		memcpy(r.n_vis, e->queries[t].n_vis, sizeof(r.n_vis));
		e->trace(e->trace_ud, &r);
	}
	struct wk_batch b = {
		.n = T,
		.ids = e->ids,
		.pos = e->pos,
		.slots = e->slots_kv,
		.queries = e->queries,
		.n_seq = n_seq,
		.n_seg = WK_MAX_SEGS,
		.segs = e->segs,
	};
	wk__forward(e->m, &e->kv, &e->s, &b);
	e->steps++;
	e->tokens_decoded += decoded;
	e->tokens_prefilled += T - decoded;
	e->flops += step_flops(e, T);
	logits_and_sample(e, T, ev, max_ev, n_ev);

	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (!sl->used)
			continue;
		/* streaming: a forced next token needs no logits */
		if (sl->forced_next)
			stream_next(e, sl, NULL, ev, max_ev, n_ev);
		/* prompt-only requests finish once their prompt is in the cache (an
		 * encode request stays until its abort) */
		else if (sl->seq.max_tokens == 0 && sl->n_fed == sl->n_tokens &&
			 !is_encode(&sl->seq)) {
			push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_LENGTH);
			slot_release(e, sl);
		}
	}
	return CM_OK;
}

void wk_engine_set_trace(struct wk_engine *e, wk_trace_fn fn, void *ud)
{
	e->trace = fn;
	e->trace_ud = ud;
}

/* Does the next step have work for the running sl? */
static bool slot_ready(const struct wk_slot *sl)
{
	if (sl->aborted || !is_stream(&sl->seq))
		return true;
	const struct wk_stream *st = &sl->seq.st;
	if (stream_may_read(st) && st->src_fed < st->src_n)
		return true;
	if (st->stage == ST_UNITS && st->closed && st->unit >= st->n_units &&
	    sl->seq.max_tokens > 0)
		return true; /* the final phase starts */
	return sl->n_fed < sl->n_tokens && reason_vis(sl, sl->n_fed, st->src_fed) >= 0;
}

bool wk_engine_ready(const struct wk_engine *e)
{
	if (e->queue || e->n_aborted_queued)
		return true;
	for (int32_t i = 0; i < e->p.max_seqs; i++)
		if (e->slots[i].used && slot_ready(&e->slots[i]))
			return true;
	return false;
}

void wk_engine_stats(const struct wk_engine *e, struct wk_engine_stats *s)
{
	memset(s, 0, sizeof(*s));
	for (int32_t i = 0; i < e->p.max_seqs; i++)
		s->running += e->slots[i].used;
	s->queued = e->n_queued;
	s->kv_blocks_total = e->kv.n_blocks;
	s->kv_blocks_used = e->kv.n_blocks - e->kv.n_free;
	s->steps = e->steps;
	s->tokens_prefilled = e->tokens_prefilled;
	s->tokens_decoded = e->tokens_decoded;
	s->tokens_source = e->tokens_source;
	s->tokens_imported = e->tokens_imported;
	s->logit_rows = e->logit_rows_total;
	s->flops =
		e->flops + 2.0 * e->m->cfg.hidden * e->m->cfg.vocab * (double)e->logit_rows_total;
}

/* ---- disaggregation --------------------------------------------------------- */

size_t wk_engine_kv_bytes(const struct wk_engine *e, int32_t n)
{
	return wk__kv_flat_bytes(&e->kv, n);
}

/* The request id with a source segment, running or queued; *sl its slot when
 * running. NULL when unknown, finished, aborted or in generate mode. */
static const struct wk_seq *source_find(const struct wk_engine *e, uint64_t id,
					const struct wk_slot **sl)
{
	*sl = NULL;
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		const struct wk_slot *s = &e->slots[i];
		if (s->used && !s->aborted && s->seq.id == id) {
			*sl = s;
			return is_stream(&s->seq) ? &s->seq : NULL;
		}
	}
	for (const struct wk_seq *q = e->queue; q; q = q->next)
		if (q->id == id)
			return is_stream(q) ? q : NULL;
	return NULL;
}

int32_t wk_engine_source_encoded(const struct wk_engine *e, uint64_t req_id)
{
	const struct wk_slot *sl;
	if (!source_find(e, req_id, &sl))
		return CM_ENOENT;
	return sl ? sl->segs[WK_SEG_SOURCE].n_tok : 0;
}

int wk_engine_export_source(const struct wk_engine *e, uint64_t req_id, int32_t from, int32_t n,
			    void *kv, int32_t *pos, struct cm_err *err)
{
	const struct wk_slot *sl;
	unsigned long long id = (unsigned long long)req_id;
	if (!source_find(e, req_id, &sl))
		return cm_err_set(err, CM_ENOENT, "request %llu: unknown or without a source", id);
	int32_t have = sl ? sl->segs[WK_SEG_SOURCE].n_tok : 0;
	if (from < 0 || n < 0 || (n > 0 && !kv))
		return cm_err_set(err, CM_EINVAL, "request %llu: bad export range or buffer", id);
	if (n > have - from)
		return cm_err_set(err, CM_ERANGE,
				  "request %llu: source tokens [%d, %lld) asked, %d encoded", id,
				  from, (long long)from + n, have);
	if (n == 0)
		return CM_OK;
	wk__seg_copy_out(&e->kv, &sl->segs[WK_SEG_SOURCE], from, n, kv);
	if (pos)
		memcpy(pos, sl->segs[WK_SEG_SOURCE].pos + from, (size_t)n * sizeof(int32_t));
	return CM_OK;
}

/* Will a step make progress on a running request other than sl (and so may
 * free KV blocks)? */
static bool others_ready(const struct wk_engine *e, const struct wk_slot *sl)
{
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		const struct wk_slot *o = &e->slots[i];
		if (o != sl && o->used && slot_ready(o))
			return true;
	}
	return false;
}

/* Source token i has position i (stream_add_source): an imported unit must
 * continue the source's positions. */
static int pos_check(const struct wk_stream *st, uint64_t req_id, const int32_t *pos, int32_t n,
		     struct cm_err *err)
{
	if (!pos)
		return cm_err_set(err, CM_EINVAL, "request %llu: no positions",
				  (unsigned long long)req_id);
	for (int32_t i = 0; i < n; i++)
		if (pos[i] != st->src_n + i)
			return cm_err_set(err, CM_EINVAL,
					  "request %llu: source token %d has position %d, not %d "
					  "(units arrive in order, positions 0, 1, ...)",
					  (unsigned long long)req_id, st->src_n + i, pos[i],
					  st->src_n + i);
	return CM_OK;
}

int wk_engine_input_kv(struct wk_engine *e, uint64_t req_id, const int32_t *unit, int32_t n,
		       const int32_t *pos, const void *kv, struct cm_err *err)
{
	struct wk_slot *sl;
	struct wk_seq *q = seq_find(e, req_id, &sl);
	unsigned long long id = (unsigned long long)req_id;
	struct src_plan plan;
	int rc = input_check(e, q, req_id, unit, n, true, err);
	if (rc < 0)
		return rc;
	struct wk_stream *st = &q->st;
	if ((rc = pos_check(st, req_id, pos, n, err)) < 0)
		return rc;
	if (!kv)
		return cm_err_set(err, CM_EINVAL, "request %llu: no KV", id);
	/* blocks are written now: only a running request has them. CM_EFULL only
	 * while a step can make progress (wk_engine_ready), so step and retry */
	if (!sl)
		return cm_err_set(err, CM_EFULL, "request %llu: not admitted yet; step, then retry",
				  id);
	/* free blocks first; when there are none, wait for the others while they
	 * run, else take them from this request's reasoning, as wk_engine_input */
	bool room = src_plan(e, sl, n, &plan);
	if (!plan.from_pool && others_ready(e, sl))
		return cm_err_set(err, CM_EFULL,
				  "request %llu: no free KV blocks for %d source tokens now; step, "
				  "then retry",
				  id, n);
	if (!room)
		return cm_err_set(err, CM_ERANGE, "request %llu: the KV pool is full", id);
	struct wk_seg *seg = &sl->segs[WK_SEG_SOURCE];
	if (src_grow(st, n) < 0)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	if (wk__seg_append(&e->kv, seg, n, pos, NULL) < 0) /* within the plan: cannot fail */
		return cm_err_set(err, CM_EFULL, "request %llu: no free KV blocks now", id);
	wk__seg_copy_in(&e->kv, seg, st->src_n, n, kv);
	src_plan_apply(e, sl, &plan);
	src_push(st, unit, n);
	st->src_fed = st->src_n; /* written: nothing to prefill */
	e->tokens_imported += n;
	return CM_OK;
}
