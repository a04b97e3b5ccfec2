/* Streaming thinking in the engine (algorithms.md §1.2.3-1.2.5): the masks and
 * group positions on toy sequences, the teacher-forced fixture
 * (stream_tiny_s1.json), generation against its own teacher-forced replay, the
 * per-sequence state machine (input gaps, a close in the middle of a unit, the
 * budgets, the final phase), batch mode, and bad calls. On a generated tiny
 * model whose tokenizer has StreamingThinker's seven tokens. */
#include "fixture_check.h"
#include "kernels/kern.h"
#include "model/md.h"
#include "worker/wk.h"

#include <string.h>

#define MAX_ROWS  256
#define MAX_TRACE 2048

struct env {
	char dir[1024];
	struct kern_backend *be;
	struct wk_model *m;
	struct wk_engine *e;
	struct wk_engine_params ep;
	struct md_tok *tok;
	struct md_seg *seg; /* for the template's ids */
};

static void env_open(struct env *v, int max_seqs)
{
	struct cm_err err = {0};
	th_gen_model(v->dir, sizeof(v->dir), "tiny", 1, false);
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.bf16_activations = false;
	v->be = kern_cpu_new(&kp, &err);
	cr_assert_not_null(v->be, "%s", err.msg);
	v->m = wk_model_load(v->dir, v->be, &err);
	cr_assert_not_null(v->m, "%s", err.msg);
	v->ep = wk_engine_default_params();
	v->ep.max_seqs = max_seqs;
	v->ep.kv_tokens = 4096;
	v->e = wk_engine_new(v->m, &v->ep, &err);
	cr_assert_not_null(v->e, "%s", err.msg);
	v->tok = md_tok_load(v->dir, &err);
	cr_assert_not_null(v->tok, "%s", err.msg);
	struct md_seg_template t = md_seg_default_template();
	v->seg = md_seg_new(v->tok, &t, &err);
	cr_assert_not_null(v->seg, "%s", err.msg);
}

static void env_close(struct env *v)
{
	md_seg_free(v->seg);
	md_tok_free(v->tok);
	wk_engine_free(v->e);
	wk_model_free(v->m);
	kern_backend_free(v->be);
	th_rmdir(v->dir);
}

/* Logits rows by reasoning index, and the rows of every step. */
struct rec {
	int vocab;
	float *logits[MAX_ROWS];
	struct wk_row_trace trace[MAX_TRACE];
	int n_trace;
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

static void on_trace(void *ud, const struct wk_row_trace *row)
{
	struct rec *r = ud;
	cr_assert_lt(r->n_trace, MAX_TRACE);
	r->trace[r->n_trace++] = *row;
}

static void rec_free(struct rec *r)
{
	for (int i = 0; i < MAX_ROWS; i++)
		free(r->logits[i]);
	memset(r, 0, sizeof(*r));
}

/* Steps while the engine has work; records events. Returns the steps run. */
static int run_ready(struct wk_engine *e, struct rec *r)
{
	struct wk_event ev[64];
	int steps = 0;
	while (wk_engine_ready(e)) {
		int n;
		struct cm_err err = {0};
		cr_assert_eq(wk_engine_step(e, ev, 64, &n, &err), CM_OK, "%s", err.msg);
		for (int i = 0; i < n; i++) {
			cr_assert_lt(r->n_ev, MAX_ROWS);
			r->ev[r->n_ev++] = ev[i];
		}
		cr_assert_lt(++steps, 10000, "the engine does not settle");
	}
	return steps;
}

static void input(struct wk_engine *e, uint64_t id, const int32_t *ids, int n)
{
	struct cm_err err = {0};
	cr_assert_eq(wk_engine_input(e, id, ids, n, &err), CM_OK, "%s", err.msg);
}

static void close_input(struct wk_engine *e, uint64_t id)
{
	struct cm_err err = {0};
	cr_assert_eq(wk_engine_close_input(e, id, &err), CM_OK, "%s", err.msg);
}

/* ---- a teacher-forced request ------------------------------------------------ */

struct forced {
	int32_t src[64], n_src_units, src_len[16];
	int32_t tgt[64], n_tgt, n_tgt_units, tgt_len[16];
};

static void forced_of_run(json_t *run, struct forced *f)
{
	memset(f, 0, sizeof(*f));
	json_t *su = json_object_get(run, "source_units"),
	       *tu = json_object_get(run, "target_units");
	size_t i, j;
	json_t *u, *x;
	int n = 0;
	json_array_foreach (su, i, u) {
		f->src_len[f->n_src_units++] = (int32_t)json_array_size(u);
		json_array_foreach (u, j, x)
			f->src[n++] = (int32_t)json_integer_value(x);
	}
	json_array_foreach (tu, i, u) {
		f->tgt_len[f->n_tgt_units++] = (int32_t)json_array_size(u);
		json_array_foreach (u, j, x)
			f->tgt[f->n_tgt++] = (int32_t)json_integer_value(x);
	}
}

static struct wk_request forced_req(uint64_t id, enum wk_mode mode, const struct forced *f,
				    int32_t phi, struct rec *r)
{
	return (struct wk_request){
		.id = id,
		.mode = mode,
		.phi = phi,
		.prompt = f->tgt,
		.n_prompt = f->n_tgt,
		.prompt_units = f->tgt_len,
		.n_prompt_units = f->n_tgt_units,
		.max_tokens = 0,
		.sample = wk_sample_default_params(),
		.prompt_logits = true,
		.on_logits = on_logits,
		.ud = r,
	};
}

/* Runs f teacher-forced; the source arrives unit by unit between steps when
 * stepwise, else all before the first step. */
static void run_forced(struct env *v, enum wk_mode mode, const struct forced *f, int32_t phi,
		       bool stepwise, struct rec *r)
{
	struct cm_err err = {0};
	struct wk_request rq = forced_req(9, mode, f, phi, r);
	cr_assert_eq(wk_engine_add(v->e, &rq, &err), CM_OK, "%s", err.msg);
	wk_engine_set_trace(v->e, on_trace, r);
	int at = 0;
	for (int u = 0; u < f->n_src_units; u++) {
		input(v->e, 9, f->src + at, f->src_len[u]);
		at += f->src_len[u];
		if (stepwise)
			run_ready(v->e, r);
	}
	/* teacher forcing ends once the forced tokens are in: the request may be gone */
	struct cm_err e2 = {0};
	int rc = wk_engine_close_input(v->e, 9, &e2);
	cr_assert(rc == CM_OK || rc == CM_ENOENT, "%s", e2.msg);
	run_ready(v->e, r);
	cr_assert(!wk_engine_busy(v->e));
	cr_assert_eq(r->n_ev, 1);
	cr_assert_eq(r->ev[0].finish, WK_FINISH_LENGTH);
	wk_engine_set_trace(v->e, NULL, NULL);
}

static float *rows_concat(const struct rec *r, int n)
{
	float *all = malloc((size_t)n * r->vocab * sizeof(float));
	for (int i = 0; i < n; i++) {
		cr_assert_not_null(r->logits[i], "no logits for target %d", i);
		memcpy(all + (size_t)i * r->vocab, r->logits[i], (size_t)r->vocab * sizeof(float));
	}
	return all;
}

/* ---- masks and positions --------------------------------------------------- */

/* The toy matrix of algorithms.md §1.2.3: source units U1={s0,s1}, U2={s2,s3},
 * reasoning R1={r0,r1}, R2={r2,r3}. Source rows see the source causally and no
 * reasoning; r0 sees U1, the boundary r1 sees U1,U2 (the shift), r2 and r3 see
 * all; reasoning is causal; positions 0..3 in both groups (phi + j). */
Test(stream, toy_mask_matrix_and_group_positions, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 2);
	int32_t phis[] = {0, 7};
	for (int p = 0; p < 2; p++) {
		for (int stepwise = 0; stepwise < 2; stepwise++) {
			struct forced f = {.src = {11, 12, 13, 14},
					   .n_src_units = 2,
					   .src_len = {2, 2},
					   .tgt = {21, 22, 23, 24},
					   .n_tgt = 4,
					   .n_tgt_units = 2,
					   .tgt_len = {2, 2}};
			struct rec r = {0};
			run_forced(&v, WK_MODE_STREAMING, &f, phis[p], stepwise, &r);
			int want_src_vis[] = {2, 4, 4, 4};
			int seen_src = 0, seen_tgt = 0;
			for (int i = 0; i < r.n_trace; i++) {
				const struct wk_row_trace *t = &r.trace[i];
				if (t->seg == WK_SEG_SOURCE) {
					cr_expect_eq(t->token, f.src[t->index]);
					cr_expect_eq(t->pos, t->index);
					cr_expect_eq(t->n_vis[WK_SEG_SOURCE], t->index + 1);
					cr_expect_eq(t->n_vis[WK_SEG_REASON], 0,
						     "source never sees reasoning");
					seen_src++;
				} else {
					cr_assert_eq(t->seg, WK_SEG_REASON);
					cr_expect_eq(t->token, f.tgt[t->index]);
					cr_expect_eq(t->pos, phis[p] + t->index);
					cr_expect_eq(t->n_vis[WK_SEG_SOURCE],
						     want_src_vis[t->index], "r%d sees %d source",
						     t->index, t->n_vis[WK_SEG_SOURCE]);
					cr_expect_eq(t->n_vis[WK_SEG_REASON], t->index + 1);
					seen_tgt++;
				}
			}
			cr_expect_eq(seen_src, 4);
			cr_expect_eq(seen_tgt, 4);
			if (stepwise) {
				/* r0 goes with U1; r1, the boundary, only once U2 arrived */
				int first_r1 = -1, first_s2 = -1;
				for (int i = 0; i < r.n_trace; i++) {
					if (r.trace[i].seg == WK_SEG_REASON &&
					    r.trace[i].index == 1 && first_r1 < 0)
						first_r1 = i;
					if (r.trace[i].seg == WK_SEG_SOURCE &&
					    r.trace[i].index == 2 && first_s2 < 0)
						first_s2 = i;
				}
				cr_expect_gt(first_r1, first_s2);
			}
			rec_free(&r);
		}
	}
	/* batch mode: the same layout, every source token visible */
	struct forced f = {.src = {11, 12, 13, 14},
			   .n_src_units = 2,
			   .src_len = {2, 2},
			   .tgt = {21, 22, 23, 24},
			   .n_tgt = 4,
			   .n_tgt_units = 2,
			   .tgt_len = {2, 2}};
	struct rec r = {0};
	run_forced(&v, WK_MODE_BATCH, &f, 0, true, &r);
	for (int i = 0; i < r.n_trace; i++)
		if (r.trace[i].seg == WK_SEG_REASON)
			cr_expect_eq(r.trace[i].n_vis[WK_SEG_SOURCE], 4);
	rec_free(&r);
	env_close(&v);
}

/* ---- the fixture ------------------------------------------------------------ */

/* Both runs of stream_tiny_s1, the source given at once and unit by unit, within
 * 1e-3 (f32 engine: ~1e-6); the streaming run in batch mode is the one_unit run. */
Test(stream, fixture_logits_match_reference, .timeout = 300)
{
	json_t *fx = th_fixture("stream_tiny_s1.json");
	json_t *runs = json_object_get(fx, "runs");
	struct env v = {0};
	env_open(&v, 2);
	const char *names[] = {"streaming", "one_unit"};
	double worst_all = 0;
	for (int k = 0; k < 2; k++) {
		json_t *run = json_object_get(runs, names[k]);
		struct forced f;
		forced_of_run(run, &f);
		cr_assert_eq(json_integer_value(json_object_get(run, "phi")), 0);
		for (int stepwise = 0; stepwise < 2; stepwise++) {
			struct rec r = {0};
			run_forced(&v, WK_MODE_STREAMING, &f, 0, stepwise, &r);
			/* the visibility the fixture states */
			json_t *vis = json_object_get(run, "visible_source");
			for (int i = 0; i < r.n_trace; i++)
				if (r.trace[i].seg == WK_SEG_REASON)
					cr_expect_eq(r.trace[i].n_vis[WK_SEG_SOURCE],
						     json_integer_value(json_array_get(
							     vis, (size_t)r.trace[i].index)));
			float *all = rows_concat(&r, f.n_tgt);
			char what[64];
			snprintf(what, sizeof(what), "%s%s", names[k], stepwise ? " stepwise" : "");
			double worst = fx_check_logits(run, all, r.vocab, 1e-3, what);
			cr_log_info("stream fixture %s: max |d| %.2e", what, worst);
			worst_all = fmax(worst_all, worst);
			free(all);
			rec_free(&r);
		}
	}
	struct forced f;
	forced_of_run(json_object_get(runs, "streaming"), &f);
	struct rec r = {0};
	run_forced(&v, WK_MODE_BATCH, &f, 0, true, &r);
	float *all = rows_concat(&r, f.n_tgt);
	worst_all = fmax(worst_all, fx_check_logits(json_object_get(runs, "one_unit"), all, r.vocab,
						    1e-3, "streaming units in batch mode"));
	free(all);
	rec_free(&r);
	cr_log_info("stream fixture: max |d| over all runs %.2e", worst_all);
	env_close(&v);
	json_decref(fx);
}

/* `tandem generate --source-units --target-units --dump-logits` writes the same
 * logits. */
Test(stream, cli_generate_dumps_fixture_logits, .timeout = 300)
{
	json_t *fx = th_fixture("stream_tiny_s1.json");
	json_t *runs = json_object_get(fx, "runs");
	char dir[1024];
	th_gen_model(dir, sizeof(dir), "tiny", 1, false);
	const char *names[] = {"streaming", "one_unit"};
	for (int k = 0; k < 2; k++) {
		json_t *run = json_object_get(runs, names[k]);
		char units[2][512];
		const char *keys[] = {"source_units", "target_units"};
		for (int s = 0; s < 2; s++) {
			char *p = units[s];
			size_t i, j;
			json_t *u, *x;
			json_array_foreach (json_object_get(run, keys[s]), i, u) {
				if (i)
					*p++ = '|';
				json_array_foreach (u, j, x)
					p += sprintf(p, j ? ",%lld" : "%lld",
						     (long long)json_integer_value(x));
			}
			*p = 0;
		}
		char out[1200], cmd[4096];
		snprintf(out, sizeof(out), "%s/logits-%d.f32", dir, k);
		snprintf(cmd, sizeof(cmd),
			 "'%s' generate --model '%s' --source-units '%s' --target-units '%s' "
			 "--dump-logits '%s' >/dev/null",
			 getenv("TANDEM_BIN"), dir, units[0], units[1], out);
		cr_assert_eq(th_sh(cmd), 0, "%s", cmd);
		FILE *fp = fopen(out, "rb");
		cr_assert_not_null(fp);
		int n = (int)json_integer_value(json_object_get(run, "n_positions"));
		size_t vocab = 151936;
		float *all = malloc((size_t)n * vocab * sizeof(float));
		cr_assert_eq(fread(all, sizeof(float), (size_t)n * vocab + 1, fp),
			     (size_t)n * vocab, "the dump holds [n_target][vocab] floats");
		fclose(fp);
		double worst = fx_check_logits(run, all, (int)vocab, 1e-3, names[k]);
		cr_log_info("cli stream fixture %s: max |d| %.2e", names[k], worst);
		free(all);
	}
	/* bad unit lists are one-line errors */
	char cmd[4096];
	snprintf(cmd, sizeof(cmd),
		 "'%s' generate --model '%s' --source-units '1,2|' --target-units '3' "
		 "--dump-logits /dev/null 2>/dev/null",
		 getenv("TANDEM_BIN"), dir);
	cr_expect_eq(th_sh(cmd), 1);
	th_rmdir(dir);
	json_decref(fx);
}

/* ---- generation ------------------------------------------------------------- */

/* A streaming request with the template's ids. */
static struct wk_request gen_req(uint64_t id, enum wk_mode mode, const struct env *v,
				 int unit_budget, int final_budget, int answer_budget,
				 struct rec *r)
{
	return (struct wk_request){
		.id = id,
		.mode = mode,
		.unit_budget = unit_budget,
		.final_budget = final_budget,
		.answer_budget = answer_budget,
		.think = md_seg_ids(v->seg),
		.max_tokens = 1000,
		.sample = wk_sample_default_params(),
		.on_logits = r ? on_logits : NULL,
		.ud = r,
	};
}

/* Three source units as the segmenter would cut them. */
static void units_of(const struct env *v, int32_t u[3][8], int n[3])
{
	const struct md_seg_ids *t = md_seg_ids(v->seg);
	int32_t u0[] = {151644, 872, 198, 3838, 374, t->sep}; /* instruction */
	int32_t u1[] = {3838, 374, 220, 16, 22, 30, t->eoq};  /* question */
	int32_t u2[] = {785, 3974, 13876, 38835, 13, t->eos}; /* a sentence */
	memcpy(u[0], u0, sizeof(u0));
	memcpy(u[1], u1, sizeof(u1));
	memcpy(u[2], u2, sizeof(u2));
	n[0] = 6;
	n[1] = 7;
	n[2] = 6;
}

static bool is_boundary(const struct md_seg_ids *t, int32_t tok)
{
	return tok == t->sep || tok == t->eoq || tok == t->eos || tok == t->eot || tok == t->eor ||
	       tok == t->eoa || tok == t->ignore;
}

/* The state machine: the sequence waits (no compute) while input lags, a unit's
 * reasoning ends at a boundary within its budget (forced <EOQ> after the
 * question, <EOT> after a sentence), a close in the middle of a unit lets that
 * unit finish, then the final phase: the depth connector, deep reasoning up to
 * final - answer tokens, "</think>\n\n" forced, the answer, finish LENGTH. */
Test(stream, state_machine_gaps_and_close_mid_unit, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 2);
	const struct md_seg_ids *t = md_seg_ids(v.seg);
	int32_t u[3][8];
	int n[3];
	units_of(&v, u, n);
	struct rec r = {0};
	struct cm_err err = {0};
	struct wk_request rq = gen_req(5, WK_MODE_STREAMING, &v, 3, 6, 2, NULL);
	cr_assert_eq(wk_engine_add(v.e, &rq, &err), CM_OK, "%s", err.msg);
	wk_engine_set_trace(v.e, on_trace, &r);

	/* nothing to read yet: admitted, then waiting */
	run_ready(v.e, &r);
	cr_expect(wk_engine_busy(v.e));
	cr_expect_eq(r.n_trace, 0, "no input, no compute");

	/* the instruction: read it and the reasoning prefix but its boundary */
	input(v.e, 5, u[0], n[0]);
	run_ready(v.e, &r);
	cr_expect_eq(r.n_ev, 0);
	int n_reason = 0;
	for (int i = 0; i < r.n_trace; i++)
		n_reason += r.trace[i].seg == WK_SEG_REASON;
	cr_expect_eq(n_reason, t->n_think_prefix - 1, "the <SEP> boundary waits for unit 1");

	/* a gap in the input: steps compute nothing */
	struct wk_engine_stats s0, s1;
	wk_engine_stats(v.e, &s0);
	struct wk_event ev[16];
	for (int k = 0; k < 3; k++) {
		int ne;
		cr_assert_eq(wk_engine_step(v.e, ev, 16, &ne, &err), CM_OK);
		cr_expect_eq(ne, 0);
	}
	wk_engine_stats(v.e, &s1);
	cr_expect_eq(s1.steps, s0.steps);
	cr_expect_eq(s1.tokens_decoded + s1.tokens_prefilled,
		     s0.tokens_decoded + s0.tokens_prefilled);

	/* the question: its reasoning, ending in a boundary within 3 tokens */
	input(v.e, 5, u[1], n[1]);
	run_ready(v.e, &r);
	cr_assert_geq(r.n_ev, 1);
	cr_assert_leq(r.n_ev, 3);
	for (int i = 0; i < r.n_ev; i++) {
		cr_expect_eq(r.ev[i].unit, 1);
		cr_expect_eq(r.ev[i].phase, WK_PHASE_THOUGHT);
		cr_expect_eq(r.ev[i].finish, WK_FINISH_NONE);
	}
	int32_t last = r.ev[r.n_ev - 1].token;
	cr_expect(is_boundary(t, last), "unit 1 ends with %d", last);
	if (r.n_ev == 3 && !is_boundary(t, r.ev[1].token))
		cr_expect_eq(last, t->eoq, "the boundary forced on the question unit is <EOQ>");
	int after_u1 = r.n_ev;

	/* unit 2 arrives; the input closes while its reasoning runs */
	input(v.e, 5, u[2], n[2]);
	int ne;
	cr_assert_eq(wk_engine_step(v.e, ev, 16, &ne, &err), CM_OK);
	for (int i = 0; i < ne; i++)
		r.ev[r.n_ev++] = ev[i];
	close_input(v.e, 5);
	close_input(v.e, 5); /* twice is harmless */
	run_ready(v.e, &r);
	cr_expect(!wk_engine_busy(v.e));

	int k = after_u1, unit2 = 0;
	while (k < r.n_ev && r.ev[k].unit == 2) {
		cr_expect_eq(r.ev[k].phase, WK_PHASE_THOUGHT);
		unit2++;
		k++;
	}
	cr_expect(unit2 >= 1 && unit2 <= 3, "unit 2: %d tokens", unit2);
	last = r.ev[k - 1].token;
	cr_expect(is_boundary(t, last));
	if (unit2 == 3 && !is_boundary(t, r.ev[k - 2].token))
		cr_expect_eq(last, t->eot, "the boundary forced on a sentence unit is <EOT>");
	/* the final phase: 6 tokens, the last 2 the answer (unless </think> came sooner) */
	cr_expect_eq(r.n_ev - k, 6, "final phase: %d events", r.n_ev - k);
	int thought = 0;
	for (int i = k; i < r.n_ev; i++) {
		cr_expect_eq(r.ev[i].unit, 3);
		thought += r.ev[i].phase == WK_PHASE_THOUGHT;
	}
	cr_expect_leq(thought, 4);
	cr_expect_eq(r.ev[r.n_ev - 1].phase, WK_PHASE_ANSWER);
	cr_expect_eq(r.ev[r.n_ev - 1].finish, WK_FINISH_LENGTH);

	/* the connectors went through the reasoning segment; final rows see all source */
	int total_src = n[0] + n[1] + n[2], c2 = 0, c3 = 0;
	for (int i = 0; i < r.n_trace; i++) {
		const struct wk_row_trace *x = &r.trace[i];
		if (x->seg != WK_SEG_REASON)
			continue;
		if (c2 < t->n_connect_2 && x->token == t->connect_2[c2])
			c2++;
		else if (c2 == t->n_connect_2 && c3 < t->n_connect_3 &&
			 x->token == t->connect_3[c3])
			c3++;
		if (c2)
			cr_expect_eq(x->n_vis[WK_SEG_SOURCE], total_src);
	}
	cr_expect_eq(c2, t->n_connect_2, "connect_2 fed");
	cr_expect_eq(c3, t->n_connect_3, "connect_3 fed");
	wk_engine_set_trace(v.e, NULL, NULL);
	rec_free(&r);
	env_close(&v);
}

/* Greedy streaming generation equals its own teacher-forced replay: the logits
 * of every sampled position, bit for bit (the engine is batch-invariant). This
 * ties the generation path's masks to the training mask of the fixture. */
Test(stream, generation_matches_teacher_forced_replay, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 2);
	int32_t u[3][8];
	int n[3];
	units_of(&v, u, n);
	struct rec g = {0};
	struct cm_err err = {0};
	struct wk_request rq = gen_req(3, WK_MODE_STREAMING, &v, 4, 6, 2, &g);
	cr_assert_eq(wk_engine_add(v.e, &rq, &err), CM_OK, "%s", err.msg);
	wk_engine_set_trace(v.e, on_trace, &g);
	for (int k = 0; k < 3; k++) {
		input(v.e, 3, u[k], n[k]);
		run_ready(v.e, &g);
	}
	close_input(v.e, 3);
	run_ready(v.e, &g);
	wk_engine_set_trace(v.e, NULL, NULL);

	/* the reasoning as fed, split into units by the events (final phase: one unit) */
	static struct forced f;
	memset(&f, 0, sizeof(f));
	int vis_of[MAX_ROWS];
	for (int i = 0; i < g.n_trace; i++) {
		const struct wk_row_trace *x = &g.trace[i];
		if (x->seg != WK_SEG_REASON)
			continue;
		cr_assert_eq(x->index, f.n_tgt);
		vis_of[f.n_tgt] = x->n_vis[WK_SEG_SOURCE];
		f.tgt[f.n_tgt++] = x->token;
	}
	const struct md_seg_ids *t = md_seg_ids(v.seg);
	int unit_len[8] = {t->n_think_prefix};
	for (int i = 0; i < g.n_ev; i++)
		if (g.ev[i].token >= 0 && g.ev[i].unit < 3)
			unit_len[g.ev[i].unit]++;
	f.n_tgt_units = 4;
	f.tgt_len[0] = unit_len[0];
	f.tgt_len[1] = unit_len[1];
	f.tgt_len[2] = unit_len[2];
	f.tgt_len[3] = f.n_tgt - unit_len[0] - unit_len[1] - unit_len[2];
	int at = 0;
	for (int k = 0; k < 3; k++) {
		memcpy(f.src + at, u[k], (size_t)n[k] * sizeof(int32_t));
		at += n[k];
		f.src_len[k] = n[k];
	}
	f.n_src_units = 3;
	struct rec r = {0};
	run_forced(&v, WK_MODE_STREAMING, &f, 0, false, &r);
	int compared = 0;
	for (int i = 0; i < f.n_tgt; i++) {
		if (!g.logits[i])
			continue;
		cr_assert_not_null(r.logits[i]);
		for (int x = 0; x < g.vocab; x++)
			cr_assert_eq(g.logits[i][x], r.logits[i][x], "target %d id %d", i, x);
		compared++;
	}
	for (int i = 0; i < r.n_trace; i++)
		if (r.trace[i].seg == WK_SEG_REASON && r.trace[i].index < f.n_tgt - 1)
			cr_expect_eq(r.trace[i].n_vis[WK_SEG_SOURCE], vis_of[r.trace[i].index],
				     "target %d", r.trace[i].index);
	cr_expect_gt(compared, 8);
	rec_free(&g);
	rec_free(&r);
	env_close(&v);
}

/* Streaming and batch modes with the same budgets write the same number of
 * tokens (when the model never samples a boundary: the random model). */
Test(stream, batch_mode_writes_the_same_tokens, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 2);
	int32_t u[3][8];
	int n[3];
	units_of(&v, u, n);
	int total[2] = {0}, first_thought_step[2] = {-1, -1};
	for (int mode = 0; mode < 2; mode++) {
		struct rec r = {0};
		struct cm_err err = {0};
		struct wk_request rq =
			gen_req(4, mode ? WK_MODE_BATCH : WK_MODE_STREAMING, &v, 5, 8, 3, NULL);
		cr_assert_eq(wk_engine_add(v.e, &rq, &err), CM_OK, "%s", err.msg);
		for (int k = 0; k < 3; k++) {
			input(v.e, 4, u[k], n[k]);
			run_ready(v.e, &r);
			if (first_thought_step[mode] < 0 && r.n_ev)
				first_thought_step[mode] = k;
		}
		close_input(v.e, 4);
		run_ready(v.e, &r);
		cr_expect(!wk_engine_busy(v.e));
		total[mode] = r.n_ev;
		cr_expect_eq(r.ev[r.n_ev - 1].finish, WK_FINISH_LENGTH);
		rec_free(&r);
	}
	cr_expect_eq(total[0], total[1]);
	cr_expect_eq(total[0], 2 * 5 + 8, "units 1 and 2 at 5 tokens each, then 8 final");
	cr_expect_eq(first_thought_step[0], 1, "streaming thinks once unit 1 is read");
	cr_expect_eq(first_thought_step[1], -1, "batch mode waits for the close");
	env_close(&v);
}

/* A sequence waiting for input holds no compute while a generate request runs. */
Test(stream, waiting_sequence_holds_no_compute, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 2);
	int32_t u[3][8];
	int n[3];
	units_of(&v, u, n);
	struct cm_err err = {0};
	struct wk_request s = gen_req(1, WK_MODE_STREAMING, &v, 4, 4, 1, NULL);
	cr_assert_eq(wk_engine_add(v.e, &s, &err), CM_OK, "%s", err.msg);
	input(v.e, 1, u[0], n[0]);
	input(v.e, 1, u[1], n[1]);
	struct rec r = {0};
	run_ready(v.e, &r);
	cr_assert_geq(r.n_ev, 1, "unit 1 reasoned on");
	int32_t prompt[] = {785, 3974, 13876};
	struct wk_request g = {.id = 2,
			       .prompt = prompt,
			       .n_prompt = 3,
			       .max_tokens = 5,
			       .sample = wk_sample_default_params()};
	cr_assert_eq(wk_engine_add(v.e, &g, &err), CM_OK, "%s", err.msg);
	struct rec r2 = {0};
	wk_engine_set_trace(v.e, on_trace, &r2);
	run_ready(v.e, &r2);
	cr_expect(wk_engine_busy(v.e), "the streaming request still waits");
	int gen_tokens = 0;
	for (int i = 0; i < r2.n_trace; i++)
		cr_expect_eq(r2.trace[i].req_id, 2u, "only the generate request computes");
	for (int i = 0; i < r2.n_ev; i++) {
		cr_expect_eq(r2.ev[i].req_id, 2u);
		gen_tokens += r2.ev[i].token >= 0;
		cr_expect_eq(r2.ev[i].phase, WK_PHASE_ANSWER);
		cr_expect_eq(r2.ev[i].unit, -1);
	}
	cr_expect_eq(gen_tokens, 5);
	/* abort while waiting */
	cr_assert_eq(wk_engine_abort(v.e, 1), CM_OK);
	struct wk_event ev[16];
	int ne;
	cr_assert_eq(wk_engine_step(v.e, ev, 16, &ne, &err), CM_OK);
	cr_assert_eq(ne, 1);
	cr_expect_eq(ev[0].finish, WK_FINISH_ABORT);
	cr_expect(!wk_engine_busy(v.e));
	cr_expect_eq(wk_engine_input(v.e, 1, u[2], n[2], &err), CM_ENOENT);
	wk_engine_set_trace(v.e, NULL, NULL);
	rec_free(&r);
	rec_free(&r2);
	env_close(&v);
}

/* Bad calls are error returns with a message, and change nothing. */
Test(stream, bad_calls, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 2);
	struct cm_err err = {0};
	int32_t unit[] = {1, 2, 3}, big[] = {1, 151936};
	cr_expect_eq(wk_engine_input(v.e, 77, unit, 3, &err), CM_ENOENT);
	cr_expect_eq(wk_engine_close_input(v.e, 77, &err), CM_ENOENT);

	struct wk_request q = gen_req(1, WK_MODE_STREAMING, &v, 4, 4, 1, NULL);
	q.think = NULL; /* generation needs the template's ids */
	cr_expect_eq(wk_engine_add(v.e, &q, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "think"), "%s", err.msg);
	q = gen_req(1, WK_MODE_STREAMING, &v, 4, 2, 3, NULL); /* answer > final */
	cr_expect_eq(wk_engine_add(v.e, &q, &err), CM_EINVAL);
	q = gen_req(1, WK_MODE_STREAMING, &v, 4, 4, 1, NULL);
	q.phi = -1;
	cr_expect_eq(wk_engine_add(v.e, &q, &err), CM_EINVAL);
	int32_t tgt[] = {5, 6, 7}, lens[] = {1, 1};
	q = gen_req(1, WK_MODE_STREAMING, &v, 4, 4, 1, NULL);
	q.prompt = tgt;
	q.n_prompt = 3;
	q.prompt_units = lens;
	q.n_prompt_units = 2; /* adds up to 2, not 3 */
	cr_expect_eq(wk_engine_add(v.e, &q, &err), CM_EINVAL);
	q.mode = (enum wk_mode)9;
	q.n_prompt_units = 0;
	cr_expect_eq(wk_engine_add(v.e, &q, &err), CM_EINVAL);
	cr_expect(!wk_engine_busy(v.e));

	q = gen_req(1, WK_MODE_STREAMING, &v, 4, 4, 1, NULL);
	cr_assert_eq(wk_engine_add(v.e, &q, &err), CM_OK, "%s", err.msg);
	cr_expect_eq(wk_engine_input(v.e, 1, big, 2, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_input(v.e, 1, unit, 0, &err), CM_EINVAL);
	cr_assert_eq(wk_engine_close_input(v.e, 1, &err), CM_OK);
	cr_expect_eq(wk_engine_input(v.e, 1, unit, 3, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "close"), "%s", err.msg);

	int32_t prompt[] = {1, 2};
	struct wk_request g = {.id = 2,
			       .prompt = prompt,
			       .n_prompt = 2,
			       .max_tokens = 1,
			       .sample = wk_sample_default_params()};
	cr_assert_eq(wk_engine_add(v.e, &g, &err), CM_OK);
	cr_expect_eq(wk_engine_input(v.e, 2, unit, 3, &err), CM_EINVAL);
	cr_expect_eq(wk_engine_close_input(v.e, 2, &err), CM_EINVAL);
	/* a request closed with no input at all still finishes */
	struct rec r = {0};
	run_ready(v.e, &r);
	cr_expect(!wk_engine_busy(v.e));
	env_close(&v);
}

/* A pool too small for the budgets: the source takes blocks from the request's
 * own reasoning reservation, the reasoning then ends with CONTEXT, and input that
 * cannot fit at all is CM_ERANGE; nothing stalls. */
Test(stream, small_pool_ends_with_context, .timeout = 300)
{
	struct env v = {0};
	env_open(&v, 1);
	wk_engine_free(v.e);
	struct cm_err err = {0};
	v.ep.kv_tokens = 64; /* 4 blocks of 16 */
	v.e = wk_engine_new(v.m, &v.ep, &err);
	cr_assert_not_null(v.e, "%s", err.msg);
	int32_t u[3][8];
	int n[3];
	units_of(&v, u, n);
	struct wk_request q = gen_req(1, WK_MODE_STREAMING, &v, 8, 8, 2, NULL);
	cr_assert_eq(wk_engine_add(v.e, &q, &err), CM_OK, "%s", err.msg);
	struct rec r = {0};
	run_ready(v.e, &r); /* admitted: reserves the whole pool for its reasoning */
	input(v.e, 1, u[0], n[0]);
	input(v.e, 1, u[1], n[1]);
	input(v.e, 1, u[2], n[2]);
	int32_t big[40] = {0};
	cr_expect_eq(wk_engine_input(v.e, 1, big, 40, &err), CM_ERANGE);
	close_input(v.e, 1);
	run_ready(v.e, &r);
	cr_expect(!wk_engine_busy(v.e));
	cr_assert_geq(r.n_ev, 1);
	cr_expect_eq(r.ev[r.n_ev - 1].finish, WK_FINISH_CONTEXT);
	struct wk_engine_stats st;
	wk_engine_stats(v.e, &st);
	cr_expect_eq(st.kv_blocks_used, 0);
	env_close(&v);
}

/* `tandem bench streaming --json` runs both modes on a bundled workload: the
 * same tokens written, batch mode waits for all input, every phase driven by the
 * budgets on the random model. (Times and arrival counts are not asserted.) */
Test(stream, cli_bench_streaming_json, .timeout = 300)
{
	char dir[1024], out[1200], cmd[4096];
	th_gen_model(dir, sizeof(dir), "tiny", 1, false);
	snprintf(out, sizeof(out), "%s/bench.json", dir);
	snprintf(cmd, sizeof(cmd),
		 "'%s' bench streaming --model '%s' --input '%s/../../bench/streaming/"
		 "word_problem.txt' --read-rate 2000 --unit-budget 4 --final-budget 8 --threads 1 "
		 "--json > '%s'",
		 getenv("TANDEM_BIN"), dir, getenv("TANDEM_TEST_DATA"), out);
	cr_assert_eq(th_sh(cmd), 0, "%s", cmd);
	json_error_t je;
	json_t *j = json_load_file(out, 0, &je);
	cr_assert_not_null(j, "%s", je.text);
	cr_expect_eq(json_integer_value(json_object_get(j, "unit_budget")), 4);
	json_t *w = json_array_get(json_object_get(j, "workloads"), 0);
	cr_assert_not_null(w);
	json_t *s = json_object_get(w, "streaming"), *b = json_object_get(w, "batch");
	int64_t units = json_integer_value(json_object_get(w, "units"));
	int64_t input = json_integer_value(json_object_get(w, "input_tokens"));
	cr_expect_gt(units, 3);
	cr_expect_eq(json_integer_value(json_object_get(s, "tokens")), units * 4 + 8);
	cr_expect_eq(json_integer_value(json_object_get(b, "tokens")), units * 4 + 8);
	cr_expect_eq(json_integer_value(json_object_get(b, "tokens_waited")), input);
	/* how many arrived before the first thought depends on the machine's speed */
	cr_expect_leq(json_integer_value(json_object_get(s, "tokens_waited")), input);
	cr_expect_eq(json_integer_value(json_object_get(s, "answer_tokens")), 2);
	cr_expect_eq(json_integer_value(json_object_get(s, "sampled_boundaries")), 0);
	cr_expect(json_is_real(
		json_object_get(json_object_get(w, "reductions"), "final_answer_time")));
	cr_expect(strstr(json_string_value(json_object_get(j, "phases")), "budgets drove"));
	json_decref(j);
	th_rmdir(dir);
}
