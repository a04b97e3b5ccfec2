/* The continuous-batching engine: requests join and leave between steps; each
 * step feeds decode tokens first, then prefill chunks, up to max_batch_tokens,
 * through one forward pass, and samples every sequence whose last token was fed.
 *
 * KV admission: a request is admitted when the pool can hold its prompt plus
 * max_tokens (its blocks are reserved, allocated as it grows), so a running
 * request never fails for lack of KV. Nothing is allocated in the step loop:
 * slots, batch arrays, activations and logits are sized at creation. */
#include "wk-impl.h"

#include <stdlib.h>
#include <string.h>

struct wk_seq {
	uint64_t id;
	int32_t *prompt;             /* queued only: [n_prompt], malloc'd */
	int32_t n_prompt;
	int32_t max_tokens;
	int32_t *stop;               /* [n_stop], malloc'd */
	int32_t n_stop;
	bool prompt_logits;
	wk_logits_fn on_logits;
	void *ud;
	struct wk_sampler sampler;
	struct wk_seq *next;         /* queue link */
};

/* A running sequence. */
struct wk_slot {
	bool used;
	bool aborted;
	struct wk_seq seq;
	int32_t *tokens;             /* [cap] prompt then generated */
	int32_t n_tokens;
	int32_t n_fed;               /* tokens in the KV cache */
	int32_t reserved;            /* KV blocks reserved */
	struct wk_seg segs[WK_MAX_SEGS];
	int32_t batch_index;         /* this step's sequence index, or -1 */
	int32_t sample_row;          /* this step's row to sample from, or -1 */
};

struct wk_engine {
	struct wk_model *m;
	struct kern_backend *be;
	struct wk_engine_params p;
	int32_t cap;                 /* tokens per sequence: min(context, pool) */
	struct wk_kv kv;
	int32_t reserved;            /* blocks reserved by running sequences */
	struct wk_scratch s;
	struct wk_slot *slots;       /* [max_seqs] */
	struct wk_seq *queue, *queue_tail;
	int32_t n_queued;
	uint64_t *aborted_queued;    /* [max_seqs] ids aborted while queued, to report */
	int32_t n_aborted_queued;
	/* per step, [max_batch_tokens] unless noted */
	int32_t *ids, *pos, *slots_kv, *logit_rows;
	int32_t *row_slot, *row_idx;   /* slot and sequence index of each row */
	struct kern_attn_query *queries;
	struct kern_kv_seg *segs;    /* [max_seqs][WK_MAX_SEGS] */
	float *logits;               /* [max_logit_rows][vocab] */
	struct wk_sample_scratch sample;
	int64_t steps, tokens_prefilled, tokens_decoded;
};

const char *wk_finish_str(enum wk_finish f)
{
	static const char *const names[] = { "none", "stop", "length", "context", "abort" };
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
	e->logit_rows = malloc(nt * sizeof(int32_t));
	e->queries = calloc(nt, sizeof(*e->queries));
	e->segs = calloc((size_t)p->max_seqs * WK_MAX_SEGS, sizeof(*e->segs));
	e->logits = kern_alloc(e->be, (size_t)p->max_logit_rows * v * sizeof(float));
	e->sample.idx = malloc(v * sizeof(int32_t));
	e->sample.val = malloc(v * sizeof(float));
	e->sample.mark = calloc(v, 1);
	e->sample.n = c->vocab;
	if (!e->slots || !e->aborted_queued || !e->ids || !e->pos || !e->slots_kv ||
	    !e->row_slot || !e->row_idx || !e->logit_rows || !e->queries || !e->segs || !e->logits ||
	    !e->sample.idx || !e->sample.val || !e->sample.mark)
		goto oom;
	int32_t max_blocks = blocks_for(e, e->cap);
	for (int32_t i = 0; i < p->max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		sl->tokens = malloc((size_t)e->cap * sizeof(int32_t));
		if (!sl->tokens)
			goto oom;
		/* one segment (WK_SEG_MAIN) until streaming thinking adds more */
		struct wk_seg *seg = &sl->segs[WK_SEG_MAIN];
		seg->blocks = malloc((size_t)max_blocks * sizeof(int32_t));
		seg->pos = malloc((size_t)e->cap * sizeof(int32_t));
		seg->cap = e->cap;
		if (!seg->blocks || !seg->pos)
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
	q->prompt = q->stop = NULL;
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

int wk_engine_add(struct wk_engine *e, const struct wk_request *r, struct cm_err *err)
{
	int rc;
	if (r->n_prompt < 1)
		return cm_err_set(err, CM_EINVAL, "request %llu: empty prompt",
				  (unsigned long long)r->id);
	if (r->max_tokens < 0 || r->n_stop < 0 || (r->n_stop && !r->stop_ids))
		return cm_err_set(err, CM_EINVAL, "request %llu: bad limits",
				  (unsigned long long)r->id);
	for (int32_t i = 0; i < r->n_prompt; i++)
		if (r->prompt[i] < 0 || r->prompt[i] >= e->m->cfg.vocab)
			return cm_err_set(err, CM_EINVAL,
					  "request %llu: token id %d at %d outside the vocabulary "
					  "(%d)",
					  (unsigned long long)r->id, r->prompt[i], i,
					  e->m->cfg.vocab);
	if (r->n_prompt > e->cap || blocks_for(e, r->n_prompt) > e->kv.n_blocks)
		return cm_err_set(err, CM_ERANGE,
				  "request %llu: prompt of %d tokens exceeds the context (%d)",
				  (unsigned long long)r->id, r->n_prompt, e->cap);
	if ((rc = wk__sample_params_check(&r->sample, err)) < 0)
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
	q->n_stop = r->n_stop;
	q->prompt_logits = r->prompt_logits;
	q->on_logits = r->on_logits;
	q->ud = r->ud;
	q->prompt = malloc((size_t)r->n_prompt * sizeof(int32_t));
	q->stop = malloc((size_t)(r->n_stop + 1) * sizeof(int32_t));
	if (!q->prompt || !q->stop) {
		seq_free(q);
		free(q);
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	}
	memcpy(q->prompt, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
	if (r->n_stop)
		memcpy(q->stop, r->stop_ids, (size_t)r->n_stop * sizeof(int32_t));
	wk__sampler_init(&q->sampler, &r->sample);
	if (e->queue_tail)
		e->queue_tail->next = q;
	else
		e->queue = q;
	e->queue_tail = q;
	e->n_queued++;
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

/* Blocks a request needs for its whole life. */
static int32_t blocks_needed(const struct wk_engine *e, const struct wk_seq *q)
{
	int64_t tokens = (int64_t)q->n_prompt + q->max_tokens;
	return blocks_for(e, (int32_t)CM_MIN(tokens, (int64_t)e->cap));
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
		sl->reserved = CM_MIN(need, e->kv.n_blocks);
		e->reserved += sl->reserved;
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
	sl->used = false;
}

static void push_event(struct wk_event *ev, int max_ev, int *n_ev, const struct wk_slot *sl,
		       int32_t token, enum wk_finish finish)
{
	CM_ASSERT(*n_ev < max_ev);
	ev[(*n_ev)++] = (struct wk_event){
		.req_id = sl->seq.id,
		.token = token,
		.finish = finish,
		.n_prompt = sl->seq.n_prompt,
		.n_generated = sl->n_tokens - sl->seq.n_prompt,
	};
}

/* Adds up to budget tokens of sl (from n_fed on) to the batch; returns the count. */
static int32_t batch_add(struct wk_engine *e, struct wk_slot *sl, int32_t *n_seq, int32_t *T,
			 int32_t budget)
{
	int32_t take = CM_MIN(sl->n_tokens - sl->n_fed, budget);
	if (take <= 0)
		return 0;
	struct wk_seg *seg = &sl->segs[WK_SEG_MAIN];
	int32_t t0 = *T, bi = *n_seq;
	for (int32_t j = 0; j < take; j++)
		e->pos[t0 + j] = sl->n_fed + j; /* plain generation: position = index */
	if (wk__seg_append(&e->kv, seg, take, e->pos + t0, e->slots_kv + t0) < 0)
		return 0; /* cannot happen within the reservation; retried next step */
	for (int32_t j = 0; j < take; j++) {
		int32_t idx = sl->n_fed + j;
		e->ids[t0 + j] = sl->tokens[idx];
		e->row_slot[t0 + j] = (int32_t)(sl - e->slots);
		e->row_idx[t0 + j] = idx;
		struct kern_attn_query *qy = &e->queries[t0 + j];
		memset(qy, 0, sizeof(*qy));
		qy->seq = bi;
		qy->n_vis[WK_SEG_MAIN] = idx + 1; /* causal */
	}
	struct kern_kv_seg *ks = &e->segs[(size_t)bi * WK_MAX_SEGS];
	for (int s = 0; s < WK_MAX_SEGS; s++)
		ks[s] = (struct kern_kv_seg){ .blocks = sl->segs[s].blocks,
					      .n_tok = sl->segs[s].n_tok };
	sl->batch_index = bi;
	sl->n_fed += take;
	*T += take;
	(*n_seq)++;
	return take;
}

/* Does the row of sl's token seq_index (fed this step) need logits? */
static bool row_wants_logits(const struct wk_slot *sl, int32_t seq_index)
{
	bool sample = seq_index == sl->n_tokens - 1 && sl->seq.max_tokens > 0;
	return sample || (sl->seq.prompt_logits && seq_index < sl->seq.n_prompt);
}

/* Samples the next token of sl from logits and reports it. */
static void sample_one(struct wk_engine *e, struct wk_slot *sl, float *logits,
		       struct wk_event *ev, int max_ev, int *n_ev)
{
	int32_t tok = wk__sample(&sl->seq.sampler, e->be, logits, e->m->cfg.vocab, sl->tokens,
				 sl->n_tokens, &e->sample);
	sl->tokens[sl->n_tokens++] = tok;
	enum wk_finish f = WK_FINISH_NONE;
	for (int32_t i = 0; i < sl->seq.n_stop; i++)
		if (sl->seq.stop[i] == tok)
			f = WK_FINISH_STOP;
	if (!f && sl->n_tokens - sl->seq.n_prompt >= sl->seq.max_tokens)
		f = WK_FINISH_LENGTH;
	if (!f && sl->n_tokens >= e->cap)
		f = WK_FINISH_CONTEXT;
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
		if (row_wants_logits(&e->slots[e->row_slot[t]], e->row_idx[t]))
			e->logit_rows[n_rows++] = t;
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
			if (idx == sl->n_tokens - 1 && sl->seq.max_tokens > 0)
				sample_one(e, sl, lg, ev, max_ev, n_ev);
		}
	}
}

int wk_engine_step(struct wk_engine *e, struct wk_event *ev, int max_ev, int *n_ev,
		   struct cm_err *err)
{
	(void)err;
	*n_ev = 0;
	CM_ASSERT(max_ev >= WK_EV_MIN(&e->p));
	/* finishes of aborted requests */
	for (int32_t i = 0; i < e->n_aborted_queued && *n_ev < max_ev; i++)
		ev[(*n_ev)++] = (struct wk_event){ .req_id = e->aborted_queued[i],
						   .token = -1,
						   .finish = WK_FINISH_ABORT };
	e->n_aborted_queued = 0;
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->used && sl->aborted) {
			push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_ABORT);
			slot_release(e, sl);
		}
	}
	admit(e);

	/* decode tokens first (one each), then prefill chunks, in slot order */
	int32_t T = 0, n_seq = 0, budget = e->p.max_batch_tokens;
	int64_t decoded = 0;
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		sl->batch_index = -1;
		if (sl->used && sl->n_fed >= sl->seq.n_prompt && sl->n_fed < sl->n_tokens)
			decoded += batch_add(e, sl, &n_seq, &T, CM_MIN(1, budget - T));
	}
	for (int32_t i = 0; i < e->p.max_seqs && T < budget; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->used && sl->batch_index < 0 && sl->n_fed < sl->seq.n_prompt)
			batch_add(e, sl, &n_seq, &T, budget - T);
	}
	if (T == 0)
		return CM_OK;

	/* segment lengths as seen by this step's attention: after all appends */
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
	logits_and_sample(e, T, ev, max_ev, n_ev);

	/* prompt-only requests finish once their prompt is in the cache */
	for (int32_t i = 0; i < e->p.max_seqs; i++) {
		struct wk_slot *sl = &e->slots[i];
		if (sl->used && sl->seq.max_tokens == 0 && sl->n_fed == sl->n_tokens) {
			push_event(ev, max_ev, n_ev, sl, -1, WK_FINISH_LENGTH);
			slot_release(e, sl);
		}
	}
	return CM_OK;
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
}
