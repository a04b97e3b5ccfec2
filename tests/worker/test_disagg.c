/* Disaggregation in the engine (issue 7; algorithms.md §6.1): an encode engine
 * (WK_MODE_ENCODE) prefills the source, its KV is exported unit by unit and
 * imported by a decode engine (remote_source), whose reasoning must equal a
 * single streaming engine's: the same token events and the same logits, bit
 * for bit, in streaming and batch modes, f32 and f16 KV. Also the flat KV
 * layout, the failover path (a fresh decode engine fed again from the encode
 * engine's shard), back-pressure on a small pool, and bad calls. On a
 * generated tiny model whose tokenizer has StreamingThinker's seven tokens. */
#include "helpers.h"
#include "kernels/kern.h"
#include "model/md.h"
#include "worker/wk.h"

#include <string.h>

#define MAX_ROWS 256
#define REQ	 7

struct env {
	char dir[1024];
	struct kern_backend *be;
	struct wk_model *m;
	struct md_tok *tok;
	struct md_seg *seg; /* for the template's ids */
	int32_t u[3][8];    /* three source units as the segmenter cuts them */
	int n[3];
};

static void env_open(struct env *v)
{
	struct cm_err err = {0};
	th_gen_model(v->dir, sizeof(v->dir), "tiny", 1, false);
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.bf16_activations = false;
	v->be = kern_cpu_new(&kp, &err);
	cr_assert_not_null(v->be, "%s", err.msg);
	v->m = wk_model_load(v->dir, v->be, &err);
	cr_assert_not_null(v->m, "%s", err.msg);
	v->tok = md_tok_load(v->dir, &err);
	cr_assert_not_null(v->tok, "%s", err.msg);
	struct md_seg_template t = md_seg_default_template();
	v->seg = md_seg_new(v->tok, &t, &err);
	cr_assert_not_null(v->seg, "%s", err.msg);
	const struct md_seg_ids *ids = md_seg_ids(v->seg);
	int32_t u0[] = {151644, 872, 198, 3838, 374, ids->sep}; /* instruction */
	int32_t u1[] = {3838, 374, 220, 16, 22, 30, ids->eoq};	/* question */
	int32_t u2[] = {785, 3974, 13876, 38835, 13, ids->eos}; /* a sentence */
	memcpy(v->u[0], u0, sizeof(u0));
	memcpy(v->u[1], u1, sizeof(u1));
	memcpy(v->u[2], u2, sizeof(u2));
	v->n[0] = 6;
	v->n[1] = 7;
	v->n[2] = 6;
}

static void env_close(struct env *v)
{
	md_seg_free(v->seg);
	md_tok_free(v->tok);
	wk_model_free(v->m);
	kern_backend_free(v->be);
	th_rmdir(v->dir);
}

static struct wk_engine *eng_new(const struct env *v, int32_t kv_tokens, enum kern_dtype dt,
				 int32_t max_seqs)
{
	struct cm_err err = {0};
	struct wk_engine_params p = wk_engine_default_params();
	p.kv_tokens = kv_tokens;
	p.kv_dtype = dt;
	p.max_seqs = max_seqs;
	struct wk_engine *e = wk_engine_new(v->m, &p, &err);
	cr_assert_not_null(e, "%s", err.msg);
	return e;
}

/* Logits rows by reasoning index, and the events of one request. */
struct rec {
	int vocab;
	float *logits[MAX_ROWS];
	struct wk_event ev[MAX_ROWS];
	int n_ev;
};

static void on_logits(void *ud, uint64_t id, int32_t index, const float *lg, int32_t vocab)
{
	struct rec *r = ud;
	(void)id;
	cr_assert(index >= 0 && index < MAX_ROWS, "logits index %d", index);
	r->vocab = vocab;
	if (!r->logits[index])
		r->logits[index] = malloc((size_t)vocab * sizeof(float));
	memcpy(r->logits[index], lg, (size_t)vocab * sizeof(float));
}

static void rec_free(struct rec *r)
{
	for (int i = 0; i < MAX_ROWS; i++)
		free(r->logits[i]);
	memset(r, 0, sizeof(*r));
}

/* One step; its events go to r (NULL: asserted to be none). */
static void step(struct wk_engine *e, struct rec *r)
{
	struct wk_event ev[64];
	int n;
	struct cm_err err = {0};
	cr_assert_eq(wk_engine_step(e, ev, 64, &n, &err), CM_OK, "%s", err.msg);
	cr_assert(r || n == 0, "%d unexpected events", n);
	for (int i = 0; i < n; i++) {
		cr_assert_lt(r->n_ev, MAX_ROWS);
		r->ev[r->n_ev++] = ev[i];
	}
}

/* Steps while the engine has work. */
static void run_ready(struct wk_engine *e, struct rec *r)
{
	for (int steps = 0; wk_engine_ready(e); steps++) {
		cr_assert_lt(steps, 10000, "the engine does not settle");
		step(e, r);
	}
}

static void ok(int rc, const struct cm_err *err)
{
	cr_assert_eq(rc, CM_OK, "%s (%d)", err->msg, rc);
}

/* A streaming or batch request with the template's ids, greedy. */
static struct wk_request gen_req(uint64_t id, enum wk_mode mode, const struct env *v, bool remote,
				 struct rec *r)
{
	return (struct wk_request){
		.id = id,
		.mode = mode,
		.unit_budget = 4,
		.final_budget = 6,
		.answer_budget = 2,
		.think = md_seg_ids(v->seg),
		.max_tokens = 1000,
		.sample = wk_sample_default_params(),
		.remote_source = remote,
		.prompt_logits = true,
		.on_logits = r ? on_logits : NULL,
		.ud = r,
	};
}

static int unit_start(const struct env *v, int k)
{
	int at = 0;
	for (int i = 0; i < k; i++)
		at += v->n[i];
	return at;
}

/* The reference: one engine reads the units itself, stepping after each. */
static void run_single(const struct env *v, struct wk_engine *e, enum wk_mode mode, struct rec *r)
{
	struct cm_err err = {0};
	struct wk_request rq = gen_req(REQ, mode, v, false, r);
	ok(wk_engine_add(e, &rq, &err), &err);
	for (int k = 0; k < 3; k++) {
		ok(wk_engine_input(e, REQ, v->u[k], v->n[k], &err), &err);
		run_ready(e, r);
	}
	ok(wk_engine_close_input(e, REQ, &err), &err);
	run_ready(e, r);
	cr_assert(!wk_engine_busy(e));
	cr_assert_gt(r->n_ev, 10);
}

/* Exports unit k of the encode engine's request and imports it into dec. */
static int ship(const struct env *v, struct wk_engine *enc, struct wk_engine *dec, int k,
		struct cm_err *err)
{
	int32_t from = unit_start(v, k), n = v->n[k], pos[8];
	void *kv = malloc(wk_engine_kv_bytes(enc, n));
	cr_assert_eq(wk_engine_export_source(enc, REQ, from, n, kv, pos, err), CM_OK, "%s",
		     err->msg);
	for (int i = 0; i < n; i++)
		cr_assert_eq(pos[i], from + i, "source token i has position i");
	int rc = wk_engine_input_kv(dec, REQ, v->u[k], n, pos, kv, err);
	free(kv);
	return rc;
}

/* The same events, and the same logits at the same reasoning indices, bit for bit. */
static void expect_same(const struct rec *a, const struct rec *b)
{
	cr_assert_eq(a->n_ev, b->n_ev, "%d events vs %d", a->n_ev, b->n_ev);
	for (int i = 0; i < a->n_ev; i++) {
		const struct wk_event *x = &a->ev[i], *y = &b->ev[i];
		cr_assert(x->req_id == y->req_id && x->token == y->token && x->phase == y->phase &&
				  x->unit == y->unit && x->finish == y->finish &&
				  x->n_prompt == y->n_prompt && x->n_generated == y->n_generated,
			  "event %d: token %d phase %d unit %d finish %d vs token %d phase %d unit "
			  "%d finish %d",
			  i, x->token, x->phase, x->unit, x->finish, y->token, y->phase, y->unit,
			  y->finish);
	}
	int compared = 0;
	for (int i = 0; i < MAX_ROWS; i++) {
		cr_assert_eq(!a->logits[i], !b->logits[i], "logits of reasoning token %d", i);
		if (!a->logits[i])
			continue;
		cr_assert(!memcmp(a->logits[i], b->logits[i], (size_t)a->vocab * sizeof(float)),
			  "logits of reasoning token %d differ", i);
		compared++;
	}
	cr_assert_gt(compared, 10);
}

/* An encode engine holding the request's whole source. */
static struct wk_engine *encode_all(const struct env *v, enum kern_dtype dt)
{
	struct cm_err err = {0};
	struct wk_engine *enc = eng_new(v, 4096, dt, 2);
	struct wk_request rq = {.id = REQ, .mode = WK_MODE_ENCODE};
	ok(wk_engine_add(enc, &rq, &err), &err);
	for (int k = 0; k < 3; k++)
		ok(wk_engine_input(enc, REQ, v->u[k], v->n[k], &err), &err);
	ok(wk_engine_close_input(enc, REQ, &err), &err);
	run_ready(enc, NULL);
	cr_assert_eq(wk_engine_source_encoded(enc, REQ), unit_start(v, 3));
	return enc;
}

/* ---- encode + decode = one engine -------------------------------------------- */

/* Units go to the encode engine one at a time; each is shipped after the step
 * that encoded it, and the decode engine takes one step per unit (it lags). */
static void split_equals_single(enum kern_dtype dt)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct rec rs = {0}, rd = {0}, re = {0};
	struct wk_engine *single = eng_new(&v, 4096, dt, 2);
	run_single(&v, single, WK_MODE_STREAMING, &rs);

	struct wk_engine *enc = eng_new(&v, 4096, dt, 2), *dec = eng_new(&v, 4096, dt, 2);
	struct wk_request er = gen_req(REQ, WK_MODE_ENCODE, &v, false, &re);
	ok(wk_engine_add(enc, &er, &err), &err);
	cr_assert(wk_engine_ready(enc), "admission is work");
	step(enc, NULL);
	cr_assert(!wk_engine_ready(enc), "an encode request with nothing to prefill idles");
	cr_assert_eq(wk_engine_source_encoded(enc, REQ), 0);
	struct wk_request dr = gen_req(REQ, WK_MODE_STREAMING, &v, true, &rd);
	ok(wk_engine_add(dec, &dr, &err), &err);
	for (int k = 0; k < 3; k++) {
		ok(wk_engine_input(enc, REQ, v.u[k], v.n[k], &err), &err);
		cr_assert(wk_engine_ready(enc));
		step(enc, NULL);
		cr_assert(!wk_engine_ready(enc));
		cr_assert_eq(wk_engine_source_encoded(enc, REQ), unit_start(&v, k + 1));
		if (k == 0)
			step(dec, &rd); /* admission: the queued request refuses KV until then */
		ok(ship(&v, enc, dec, k, &err), &err);
		cr_assert_eq(wk_engine_source_encoded(dec, REQ), unit_start(&v, k + 1));
		step(dec, &rd);
	}
	ok(wk_engine_close_input(dec, REQ, &err), &err);
	run_ready(dec, &rd);
	cr_assert(!wk_engine_busy(dec));
	expect_same(&rs, &rd);

	/* the work split: no FLOP counted twice, none lost */
	struct wk_engine_stats ss, se, sd;
	wk_engine_stats(single, &ss);
	wk_engine_stats(enc, &se);
	wk_engine_stats(dec, &sd);
	int total = unit_start(&v, 3);
	cr_expect_eq(se.tokens_source, total);
	cr_expect_eq(se.logit_rows, 0, "the encode side computes no LM head");
	cr_expect_eq(se.tokens_decoded, 0);
	cr_expect_eq(sd.tokens_source, 0);
	cr_expect_eq(sd.tokens_imported, total);
	cr_expect_eq(ss.tokens_imported, 0);
	/* (which rows count as decoded depends on when the source landed) */
	cr_expect_eq(se.tokens_prefilled + sd.tokens_prefilled + sd.tokens_decoded,
		     ss.tokens_prefilled + ss.tokens_decoded);
	cr_expect_eq(se.flops + sd.flops, ss.flops, "%.0f + %.0f vs %.0f", se.flops, sd.flops,
		     ss.flops);
	cr_expect_eq(sd.kv_blocks_used, 0);

	/* the encode side keeps its shard until the abort, then reports it */
	cr_assert(wk_engine_busy(enc));
	cr_expect_eq(se.kv_blocks_used, (total + 15) / 16);
	cr_assert_eq(wk_engine_abort(enc, REQ), CM_OK);
	step(enc, &re);
	cr_assert_eq(re.n_ev, 1);
	cr_expect_eq(re.ev[0].finish, WK_FINISH_ABORT);
	cr_expect_eq(re.ev[0].token, -1);
	cr_expect_eq(re.ev[0].unit, 3);
	cr_expect(!wk_engine_busy(enc));
	cr_expect_eq(wk_engine_source_encoded(enc, REQ), CM_ENOENT);
	wk_engine_stats(enc, &se);
	cr_expect_eq(se.kv_blocks_used, 0);

	/* the flat layout's size */
	const struct md_config *c = &v.m->cfg;
	size_t want = (size_t)c->n_layer * 2 * 5 * (size_t)c->n_kv_head * (size_t)c->head_dim *
		      (dt == KERN_F16 ? 2 : 4);
	cr_expect_eq(wk_engine_kv_bytes(enc, 5), want);
	wk_engine_free(single);
	wk_engine_free(enc);
	wk_engine_free(dec);
	rec_free(&rs);
	rec_free(&rd);
	rec_free(&re);
	env_close(&v);
}

Test(disagg, split_equals_single_engine_f32, .timeout = 300)
{
	split_equals_single(KERN_F32);
}

Test(disagg, split_equals_single_engine_f16, .timeout = 300)
{
	split_equals_single(KERN_F16);
}

/* Batch mode: the units arrive as KV before the close, the decode engine waits
 * for the close and then reasons exactly as a local batch-mode engine. */
Test(disagg, batch_mode_remote_equals_local, .timeout = 300)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct rec rs = {0}, rd = {0};
	struct wk_engine *single = eng_new(&v, 4096, KERN_F32, 2);
	run_single(&v, single, WK_MODE_BATCH, &rs);

	struct wk_engine *enc = encode_all(&v, KERN_F32), *dec = eng_new(&v, 4096, KERN_F32, 2);
	struct wk_request dr = gen_req(REQ, WK_MODE_BATCH, &v, true, &rd);
	ok(wk_engine_add(dec, &dr, &err), &err);
	run_ready(dec, &rd);
	for (int k = 0; k < 3; k++) {
		ok(ship(&v, enc, dec, k, &err), &err);
		run_ready(dec, &rd);
	}
	cr_expect_eq(rd.n_ev, 0, "batch mode waits for the close");
	cr_expect(!wk_engine_ready(dec));
	ok(wk_engine_close_input(dec, REQ, &err), &err);
	run_ready(dec, &rd);
	expect_same(&rs, &rd);
	struct wk_engine_stats sd;
	wk_engine_stats(dec, &sd);
	cr_expect_eq(sd.tokens_source, 0);
	cr_expect_eq(sd.tokens_imported, unit_start(&v, 3));
	wk_engine_free(single);
	wk_engine_free(enc);
	wk_engine_free(dec);
	rec_free(&rs);
	rec_free(&rd);
	env_close(&v);
}

/* ---- the flat layout and failover -------------------------------------------- */

/* Exports are stable and sliceable: a range equals a second export of it and
 * the same tokens inside a wider export; layer 0's V of each token is
 * W_v . rmsnorm(embed(id)) at [0][V][i][kv head][head_dim]. */
Test(disagg, export_layout, .timeout = 300)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct wk_engine *enc = encode_all(&v, KERN_F32);
	const struct md_config *c = &v.m->cfg;
	int32_t total = unit_start(&v, 3), w = c->n_kv_head * c->head_dim, pos[32];
	size_t bytes = wk_engine_kv_bytes(enc, total);
	float *a = malloc(bytes), *b = malloc(bytes);
	ok(wk_engine_export_source(enc, REQ, 0, total, a, pos, &err), &err);
	ok(wk_engine_export_source(enc, REQ, 0, total, b, NULL, &err), &err);
	cr_expect(!memcmp(a, b, bytes), "two exports of a range agree");
	for (int i = 0; i < total; i++)
		cr_expect_eq(pos[i], i);
	int32_t from = 5, n = 9; /* across a unit boundary */
	ok(wk_engine_export_source(enc, REQ, from, n, b, pos, &err), &err);
	cr_expect_eq(pos[0], from);
	for (int l = 0; l < c->n_layer; l++)
		for (int s = 0; s < 2; s++)
			cr_expect(!memcmp(b + ((size_t)(2 * l + s) * n) * w,
					  a + ((size_t)(2 * l + s) * total + from) * w,
					  (size_t)n * w * sizeof(float)),
				  "layer %d %s of tokens [%d, %d)", l, s ? "V" : "K", from,
				  from + n);

	/* layer 0's V from the weights, with the engine's own ops */
	const struct wk_layer *ly = &v.m->layers[0];
	int32_t ids[32];
	for (int k = 0, at = 0; k < 3; at += v.n[k++])
		memcpy(ids + at, v.u[k], (size_t)v.n[k] * sizeof(int32_t));
	float *x = kern_alloc(v.be, (size_t)total * c->hidden * sizeof(float));
	float *vv = kern_alloc(v.be, (size_t)total * w * sizeof(float));
	kern_embed(v.be, &v.m->embed, ids, total, x);
	kern_rmsnorm(v.be, x, ly->attn_norm, (float)c->rms_eps, total, c->hidden, x);
	kern_matmul(v.be, &ly->wv, x, total, vv);
	if (ly->bv)
		for (int i = 0; i < total; i++)
			kern_add(v.be, vv + (size_t)i * w, ly->bv, 1, w);
	cr_expect(!memcmp(vv, a + (size_t)total * w, (size_t)total * w * sizeof(float)),
		  "layer 0 V is [token][kv head][head_dim] after K");
	kern_free(v.be, x);
	kern_free(v.be, vv);
	free(a);
	free(b);
	wk_engine_free(enc);
	env_close(&v);
}

/* A decode engine dies mid-request (here: the request is aborted there); a
 * fresh one is fed again from the encode engine's shard, which computes
 * nothing more, and gives the tokens of a single engine. */
Test(disagg, failover_resend_from_encode_shard, .timeout = 300)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct rec rs = {0}, r1 = {0}, r2 = {0};
	struct wk_engine *single = eng_new(&v, 4096, KERN_F32, 2);
	run_single(&v, single, WK_MODE_STREAMING, &rs);
	struct wk_engine *enc = encode_all(&v, KERN_F32);
	struct wk_engine_stats before, after;
	wk_engine_stats(enc, &before);

	struct wk_engine *d1 = eng_new(&v, 4096, KERN_F32, 2);
	struct wk_request dr = gen_req(REQ, WK_MODE_STREAMING, &v, true, &r1);
	ok(wk_engine_add(d1, &dr, &err), &err);
	run_ready(d1, &r1);
	for (int k = 0; k < 2; k++) {
		ok(ship(&v, enc, d1, k, &err), &err);
		run_ready(d1, &r1);
	}
	cr_assert_gt(r1.n_ev, 0);
	cr_assert_eq(wk_engine_abort(d1, REQ), CM_OK);
	run_ready(d1, &r1);
	cr_expect_eq(r1.ev[r1.n_ev - 1].finish, WK_FINISH_ABORT);
	cr_expect(!wk_engine_busy(d1));
	wk_engine_free(d1);

	struct wk_engine *d2 = eng_new(&v, 4096, KERN_F32, 2);
	dr.ud = &r2;
	ok(wk_engine_add(d2, &dr, &err), &err);
	step(d2, &r2);
	for (int k = 0; k < 3; k++)
		ok(ship(&v, enc, d2, k, &err), &err);
	ok(wk_engine_close_input(d2, REQ, &err), &err);
	run_ready(d2, &r2);
	expect_same(&rs, &r2);
	wk_engine_stats(enc, &after);
	cr_expect_eq(after.steps, before.steps, "no re-encoding");
	cr_expect_eq(after.tokens_source, before.tokens_source);
	cr_expect(wk_engine_busy(enc), "the shard stays until the encode request is aborted");
	wk_engine_free(single);
	wk_engine_free(enc);
	wk_engine_free(d2);
	rec_free(&rs);
	rec_free(&r1);
	rec_free(&r2);
	env_close(&v);
}

/* ---- back-pressure ------------------------------------------------------------ */

/* Blocks a remote streaming request of gen_req reserves at admission (its
 * forced start, max_tokens and connectors) with max_tokens m. */
static int reasoning_blocks(const struct env *v, int m)
{
	const struct md_seg_ids *t = md_seg_ids(v->seg);
	return (t->n_think_prefix + m + t->n_connect_2 + t->n_connect_3 + 15) / 16;
}

/* A pool of 8 blocks whose free part another request reserved: the unit is
 * refused with CM_EFULL (nothing changes) while that request runs, and taken
 * once it finished; the result equals a run on a large pool. */
Test(disagg, back_pressure_on_a_small_pool, .timeout = 300)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct rec rs = {0}, rd = {0}, ra = {0};
	struct wk_engine *enc = encode_all(&v, KERN_F32);

	struct wk_engine *big = eng_new(&v, 4096, KERN_F32, 2),
			 *dec = eng_new(&v, 128, KERN_F32, 2);
	struct wk_request dr = gen_req(REQ, WK_MODE_STREAMING, &v, true, &rs);
	dr.max_tokens = 20;
	ok(wk_engine_add(big, &dr, &err), &err);
	step(big, &rs);
	for (int k = 0; k < 3; k++)
		ok(ship(&v, enc, big, k, &err), &err);
	ok(wk_engine_close_input(big, REQ, &err), &err);
	run_ready(big, &rs);

	dr.ud = &rd;
	ok(wk_engine_add(dec, &dr, &err), &err);
	cr_expect_eq(ship(&v, enc, dec, 0, &err), CM_EFULL, "queued: %s", err.msg);
	cr_expect(strstr(err.msg, "retry"), "%s", err.msg);
	cr_expect(wk_engine_ready(dec));
	step(dec, &rd); /* admitted: reserves its reasoning */
	int32_t prompt[] = {785, 3974, 13876};
	int rb = reasoning_blocks(&v, dr.max_tokens);
	cr_assert_lt(rb, 8);
	struct wk_request a = {.id = 1,
			       .prompt = prompt,
			       .n_prompt = 3,
			       .max_tokens = (8 - rb) * 16 - 3, /* the rest of the pool */
			       .sample = wk_sample_default_params()};
	ok(wk_engine_add(dec, &a, &err), &err);
	step(dec, &ra);
	struct wk_engine_stats st0, st1;
	wk_engine_stats(dec, &st0);
	cr_assert_eq(st0.running, 2);
	int refused = 0;
	while (ra.n_ev == 0 || ra.ev[ra.n_ev - 1].finish == WK_FINISH_NONE) {
		wk_engine_stats(dec, &st0);
		int rc = ship(&v, enc, dec, 0, &err);
		cr_assert_eq(rc, CM_EFULL, "%s", err.msg);
		cr_assert(wk_engine_ready(dec), "CM_EFULL only while a step can progress");
		wk_engine_stats(dec, &st1);
		cr_assert_eq(st1.kv_blocks_used, st0.kv_blocks_used, "nothing changed");
		cr_assert_eq(wk_engine_source_encoded(dec, REQ), 0);
		cr_assert_eq(st1.tokens_imported, 0);
		refused++;
		step(dec, &ra);
		cr_assert_lt(refused, 1000);
	}
	cr_expect_gt(refused, 10);
	cr_expect_eq(ra.ev[ra.n_ev - 1].finish, WK_FINISH_LENGTH);
	for (int k = 0; k < 3; k++)
		ok(ship(&v, enc, dec, k, &err), &err);
	ok(wk_engine_close_input(dec, REQ, &err), &err);
	run_ready(dec, &rd);
	expect_same(&rs, &rd);
	wk_engine_free(enc);
	wk_engine_free(big);
	wk_engine_free(dec);
	rec_free(&rs);
	rec_free(&rd);
	rec_free(&ra);
	env_close(&v);
}

/* Alone on a pool too small for its budgets, a remote request does what a
 * local one does (no CM_EFULL: nothing would free blocks): its source takes
 * blocks from its own reasoning reservation, a unit that cannot fit is
 * CM_ERANGE, the reasoning ends with CONTEXT; the same events either way. */
Test(disagg, small_pool_alone_matches_local, .timeout = 300)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct rec rl = {0}, rr = {0};
	struct wk_engine *enc = encode_all(&v, KERN_F32);
	int32_t big[40] = {0};
	for (int remote = 0; remote < 2; remote++) {
		struct rec *r = remote ? &rr : &rl;
		struct wk_engine *e = eng_new(&v, 64, KERN_F32, 1);
		struct wk_request q = gen_req(REQ, WK_MODE_STREAMING, &v, remote, r);
		q.unit_budget = 8;
		q.final_budget = 8;
		ok(wk_engine_add(e, &q, &err), &err);
		run_ready(e, r);
		for (int k = 0; k < 3; k++) {
			if (remote)
				ok(ship(&v, enc, e, k, &err), &err);
			else
				ok(wk_engine_input(e, REQ, v.u[k], v.n[k], &err), &err);
			run_ready(e, r);
		}
		int32_t pos[40];
		for (int i = 0; i < 40; i++)
			pos[i] = unit_start(&v, 3) + i;
		float *kv = calloc(1, wk_engine_kv_bytes(e, 40));
		int rc = remote ? wk_engine_input_kv(e, REQ, big, 40, pos, kv, &err)
				: wk_engine_input(e, REQ, big, 40, &err);
		cr_expect_eq(rc, CM_ERANGE, "%s", err.msg);
		free(kv);
		ok(wk_engine_close_input(e, REQ, &err), &err);
		run_ready(e, r);
		cr_expect(!wk_engine_busy(e));
		cr_expect_eq(r->ev[r->n_ev - 1].finish, WK_FINISH_CONTEXT);
		wk_engine_free(e);
	}
	expect_same(&rl, &rr);
	wk_engine_free(enc);
	rec_free(&rl);
	rec_free(&rr);
	env_close(&v);
}

/* ---- bad calls ---------------------------------------------------------------- */

/* Bad calls are one-line errors and change nothing. */
Test(disagg, bad_calls, .timeout = 300)
{
	struct env v = {0};
	env_open(&v);
	struct cm_err err = {0};
	struct wk_engine *enc = encode_all(&v, KERN_F32), *dec = eng_new(&v, 4096, KERN_F32, 4);
	int32_t n = v.n[0], pos[8], bad_pos[8], bad_ids[8];
	void *kv = malloc(wk_engine_kv_bytes(enc, n));
	ok(wk_engine_export_source(enc, REQ, 0, n, kv, pos, &err), &err);

	/* requests that cannot be */
	struct wk_request q = gen_req(REQ, WK_MODE_ENCODE, &v, true, NULL);
	cr_expect_eq(wk_engine_add(dec, &q, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "remote_source"), "%s", err.msg);
	int32_t prompt[] = {1, 2};
	struct wk_request g = {.id = 2,
			       .prompt = prompt,
			       .n_prompt = 2,
			       .max_tokens = 1,
			       .remote_source = true,
			       .sample = wk_sample_default_params()};
	cr_expect_eq(wk_engine_add(dec, &g, &err), CM_EINVAL);
	g.remote_source = false;
	ok(wk_engine_add(dec, &g, &err), &err);

	/* unknown, generate mode, not remote */
	cr_expect_eq(wk_engine_input_kv(dec, 99, v.u[0], n, pos, kv, &err), CM_ENOENT);
	cr_expect(strstr(err.msg, "99"), "%s", err.msg);
	cr_expect_eq(wk_engine_source_encoded(dec, 99), CM_ENOENT);
	cr_expect_eq(wk_engine_export_source(dec, 99, 0, 1, kv, pos, &err), CM_ENOENT);
	cr_expect_eq(wk_engine_input_kv(dec, 2, v.u[0], n, pos, kv, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_source_encoded(dec, 2), CM_ENOENT, "generate mode has no source");
	q = gen_req(3, WK_MODE_STREAMING, &v, false, NULL);
	ok(wk_engine_add(dec, &q, &err), &err);
	cr_expect_eq(wk_engine_input_kv(dec, 3, v.u[0], n, pos, kv, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "remote_source"), "%s", err.msg);

	/* the remote request: local input refused, bad ids and positions */
	q = gen_req(REQ, WK_MODE_STREAMING, &v, true, NULL);
	ok(wk_engine_add(dec, &q, &err), &err);
	struct rec r = {0};
	step(dec, &r); /* admits them all; the generate request answers */
	cr_expect_eq(wk_engine_input(dec, REQ, v.u[0], n, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "input_kv"), "%s", err.msg);
	memcpy(bad_ids, v.u[0], sizeof(bad_ids));
	bad_ids[3] = v.m->cfg.vocab;
	cr_expect_eq(wk_engine_input_kv(dec, REQ, bad_ids, n, pos, kv, &err), CM_EINVAL);
	bad_ids[3] = -1;
	cr_expect_eq(wk_engine_input_kv(dec, REQ, bad_ids, n, pos, kv, &err), CM_EINVAL);
	memcpy(bad_pos, pos, sizeof(bad_pos));
	bad_pos[2] = 7;
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[0], n, bad_pos, kv, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "position"), "%s", err.msg);
	for (int i = 0; i < n; i++)
		bad_pos[i] = pos[i] + 1; /* unit 0 must start at 0 */
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[0], n, bad_pos, kv, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[0], n, NULL, kv, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[0], n, pos, NULL, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[0], 0, pos, kv, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_input_kv(dec, REQ, NULL, n, pos, kv, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_source_encoded(dec, REQ), 0, "nothing changed");
	struct wk_engine_stats st;
	wk_engine_stats(dec, &st);
	cr_expect_eq(st.tokens_imported, 0);

	/* a good unit, then the same positions again (a repeat) */
	ok(wk_engine_input_kv(dec, REQ, v.u[0], n, pos, kv, &err), &err);
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[0], n, pos, kv, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_source_encoded(dec, REQ), n);

	/* exports out of range */
	cr_expect_eq(wk_engine_export_source(enc, REQ, 15, 10, kv, pos, &err), CM_ERANGE);
	cr_expect(strstr(err.msg, "encoded"), "%s", err.msg);
	cr_expect_eq(wk_engine_export_source(enc, REQ, -1, 2, kv, pos, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_export_source(enc, REQ, 0, -2, kv, pos, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_export_source(enc, REQ, 0, 2, NULL, pos, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_export_source(enc, REQ, 19, 0, kv, pos, &err), CM_OK);
	cr_expect_eq(wk_engine_export_source(enc, REQ, INT32_MAX, 1, kv, pos, &err), CM_ERANGE);

	/* after the close */
	ok(wk_engine_close_input(dec, REQ, &err), &err);
	for (int i = 0; i < v.n[1]; i++)
		bad_pos[i] = n + i;
	cr_expect_eq(wk_engine_input_kv(dec, REQ, v.u[1], v.n[1], bad_pos, kv, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "close"), "%s", err.msg);
	cr_expect_eq(wk_engine_abort(dec, REQ), CM_OK);
	cr_expect_eq(wk_engine_abort(dec, 3), CM_OK);
	run_ready(dec, &r);
	cr_expect(!wk_engine_busy(dec));
	wk_engine_stats(dec, &st);
	cr_expect_eq(st.kv_blocks_used, 0);
	free(kv);
	wk_engine_free(enc);
	wk_engine_free(dec);
	env_close(&v);
}
