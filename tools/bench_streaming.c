/* tandem bench streaming: streaming thinking against batch thinking on the same
 * engine, model and token budgets (algorithms.md §1.2.7, docs/streaming.md).
 *
 * For each workload (--input FILE, or every bench/streaming/ *.txt) the input
 * text is tokenized and "arrives" at --read-rate tokens per second:
 *   streaming: the text is pushed to the segmenter as it arrives, its units go to
 *     the engine at once; the engine steps whenever it has work and sleeps until
 *     the next token otherwise; the input closes when the last token arrives.
 *   batch: nothing can happen before the input is complete, so its clock starts
 *     at the end of input: all units at once, closed, then prefill, reasoning on
 *     every unit and the final phase.
 * Both run the same unit loop and budgets, so both write the same tokens when the
 * model never emits a boundary itself (a random model: budgets drive every
 * phase; the output says how many boundaries were sampled).
 *
 * Reported per mode: input tokens that had arrived when the first reasoning
 * token came out; seconds from the end of input to the first and the last answer
 * token; generated tokens; FLOPs; the reasoning backlog (units not yet reasoned
 * on) when the input ended. Then the reductions of streaming against batch.
 */
#include "kernels/kern.h"
#include "model/md.h"
#include "tools.h"
#include "worker/wk.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BS_UNIT_BUDGET	16 /* defaults of this bench (the flags' 0) */
#define BS_FINAL_BUDGET 64
#define BS_MAX_UNITS	4096

struct bs_result {
	int64_t waited;	       /* input tokens arrived at the first reasoning token */
	double first_answer_s; /* from the end of input */
	double last_answer_s;
	double total_s; /* from the first arrival (streaming) / end of input (batch) */
	int64_t tokens, thought, answer;
	int64_t sampled_boundaries; /* boundary tokens the model chose itself */
	bool sampled_think_end;
	int32_t backlog_units; /* units not yet reasoned on when the input ended */
	double flops;
	int64_t prefilled, decoded, steps;
	const char *finish;
};

struct bs_work {
	const char *name;
	char *text;
	int32_t *toks; /* [n_toks] the input tokenized at once */
	size_t n_toks;
	size_t *cut;	    /* [n_toks + 1] byte offset where token i starts */
	int32_t n_units;    /* units the segmenter made (instruction included) */
	int32_t src_tokens; /* source tokens they hold */
};

struct bs_ctx {
	const struct tandem_opts *o;
	struct md_tok *tok;
	struct wk_model *m;
	struct md_seg_template tmpl;
	int32_t unit_budget, final_budget, answer_budget;
	struct md_stop_ids stops;
};

/* ---- one run ---------------------------------------------------------------- */

struct bs_run {
	struct bs_ctx *c;
	struct wk_engine *e;
	struct md_seg *seg;
	int64_t t0;	       /* µs, first arrival clock origin */
	double t_end;	       /* s after t0: the last input token's arrival */
	size_t arrived;	       /* tokens whose text has been pushed */
	int32_t units_in;      /* units given to the engine */
	int32_t reasoned_unit; /* highest unit a reasoning token was on */
	int32_t unit_tokens;   /* tokens on it so far */
	struct bs_result r;
	int rc;
	struct cm_err *err;
};

static double now_s(const struct bs_run *x)
{
	return (double)(cm_time_us() - x->t0) * 1e-6;
}

static void on_unit(void *ud, int32_t index, const int32_t *ids, int32_t n)
{
	struct bs_run *x = ud;
	(void)index;
	if (x->rc == CM_OK)
		x->rc = wk_engine_input(x->e, 1, ids, n, x->err);
	x->units_in++;
}

static bool bs_is_boundary(const struct md_seg_ids *t, int32_t tok)
{
	return tok == t->sep || tok == t->eoq || tok == t->eos || tok == t->eot || tok == t->eor ||
	       tok == t->eoa || tok == t->ignore;
}

/* Steps once; records the events at the time the step ends (n_toks arrive at
 * rate per second in streaming mode; all are there in batch mode). */
static int bs_step(struct bs_run *x, const struct md_seg_ids *ids, size_t n_toks, double rate)
{
	struct wk_event ev[16];
	int n;
	int rc = wk_engine_step(x->e, ev, CM_ARRAY_LEN(ev), &n, x->err);
	if (rc < 0)
		return rc;
	double t = now_s(x);
	size_t n_arrived = rate > 0 ? (size_t)CM_MIN(floor(t * rate), (double)n_toks) : n_toks;
	for (int i = 0; i < n; i++) {
		if (ev[i].finish)
			x->r.finish = wk_finish_str(ev[i].finish);
		if (ev[i].token < 0)
			continue;
		x->r.tokens++;
		bool answer = ev[i].phase == WK_PHASE_ANSWER;
		if (x->r.thought + x->r.answer == 0)
			x->r.waited = (int64_t)n_arrived;
		if (answer) {
			if (x->r.answer == 0)
				x->r.first_answer_s = t - x->t_end;
			x->r.last_answer_s = t - x->t_end;
			x->r.answer++;
		} else {
			x->r.thought++;
			if (ev[i].token == ids->think_end)
				x->r.sampled_think_end = true;
		}
		if (ev[i].unit != x->reasoned_unit)
			x->unit_tokens = 0;
		x->reasoned_unit = CM_MAX(x->reasoned_unit, ev[i].unit);
		x->unit_tokens++;
		/* a boundary before the budget ran out was the model's choice */
		if (ev[i].unit < x->units_in && bs_is_boundary(ids, ev[i].token) &&
		    x->unit_tokens < x->c->unit_budget)
			x->r.sampled_boundaries++;
	}
	return CM_OK;
}

/* Pushes the text of tokens [x->arrived, upto) to the segmenter. */
static int bs_arrive(struct bs_run *x, const struct bs_work *w, size_t upto)
{
	if (upto <= x->arrived)
		return CM_OK;
	int rc = md_seg_push(x->seg, w->text + w->cut[x->arrived],
			     w->cut[upto] - w->cut[x->arrived], on_unit, x, x->err);
	x->arrived = upto;
	return rc < 0 ? rc : x->rc;
}

static void sleep_until(const struct bs_run *x, double t)
{
	double d = t - now_s(x);
	if (d <= 0)
		return;
	struct timespec ts = {(time_t)d, (long)((d - floor(d)) * 1e9)};
	nanosleep(&ts, NULL);
}

/* One mode on one workload; fills x->r. */
static int bs_run_mode(struct bs_ctx *c, const struct bs_work *w, enum wk_mode mode,
		       struct bs_result *out, struct cm_err *err)
{
	struct bs_run x = {.c = c, .err = err, .rc = CM_OK};
	struct wk_engine_params ep = wk_engine_default_params();
	ep.max_seqs = 1;
	ep.max_batch_tokens = 256;
	int64_t budget = (int64_t)w->n_units * c->unit_budget + c->final_budget;
	ep.kv_tokens = (int32_t)(2 * w->n_toks + budget + 2048);
	x.e = wk_engine_new(c->m, &ep, err);
	x.seg = x.e ? md_seg_new(c->tok, &c->tmpl, err) : NULL;
	if (!x.e || !x.seg) {
		wk_engine_free(x.e);
		return err->code;
	}
	const struct md_seg_ids *ids = md_seg_ids(x.seg);
	struct wk_request req = {
		.id = 1,
		.mode = mode,
		.phi = (int32_t)c->o->phi,
		.unit_budget = c->unit_budget,
		.final_budget = c->final_budget,
		.answer_budget = c->answer_budget,
		.think = ids,
		.max_tokens = (int32_t)CM_MIN(budget + 16, 1 << 20),
		.stop_ids = c->stops.ids,
		.n_stop = c->stops.n,
		.sample = wk_sample_default_params(), /* greedy */
	};
	int rc = wk_engine_add(x.e, &req, err);
	double rate = c->o->read_rate;
	bool stream = mode == WK_MODE_STREAMING;
	x.t0 = cm_time_us();
	x.t_end = stream ? (double)w->n_toks / rate : 0;
	x.reasoned_unit = -1;
	if (rc == CM_OK)
		rc = md_seg_push(x.seg, "", 0, on_unit, &x, err); /* the instruction unit */
	bool closed = false;
	while (rc == CM_OK && (wk_engine_busy(x.e) || !closed)) {
		double t = now_s(&x);
		size_t due =
			stream ? (size_t)CM_MIN(floor(t * rate), (double)w->n_toks) : w->n_toks;
		if ((rc = bs_arrive(&x, w, due)) < 0)
			break;
		if (!closed && x.arrived == w->n_toks) {
			if ((rc = md_seg_close(x.seg, on_unit, &x, err)) < 0 || (rc = x.rc) < 0 ||
			    (rc = wk_engine_close_input(x.e, 1, err)) < 0)
				break;
			closed = true;
			/* units given minus the instruction minus those reasoned on */
			x.r.backlog_units = x.units_in - 1 - CM_MAX(x.reasoned_unit, 0);
		}
		if (wk_engine_ready(x.e))
			rc = bs_step(&x, ids, w->n_toks, stream ? rate : 0);
		else if (!closed)
			sleep_until(&x, (double)(x.arrived + 1) / rate);
		else if (wk_engine_busy(x.e))
			rc = cm_err_set(err, CM_EINTERNAL, "the engine waits after the close");
	}
	x.r.total_s = now_s(&x);
	struct wk_engine_stats st;
	wk_engine_stats(x.e, &st);
	x.r.flops = st.flops;
	x.r.prefilled = st.tokens_prefilled;
	x.r.decoded = st.tokens_decoded;
	x.r.steps = st.steps;
	*out = x.r;
	md_seg_free(x.seg);
	wk_engine_free(x.e);
	return rc;
}

/* ---- workloads ---------------------------------------------------------------- */

static void work_free(struct bs_work *w)
{
	free(w->text);
	free(w->toks);
	free(w->cut);
	memset(w, 0, sizeof(*w));
}

static void count_unit(void *ud, int32_t index, const int32_t *ids, int32_t n)
{
	struct bs_work *w = ud;
	(void)index;
	(void)ids;
	w->n_units++;
	w->src_tokens += n;
}

/* Reads path, tokenizes it, and finds each token's text (for arrival). */
static int work_load(struct bs_ctx *c, const char *path, struct bs_work *w, struct cm_err *err)
{
	memset(w, 0, sizeof(*w));
	const char *slash = strrchr(path, '/');
	w->name = slash ? slash + 1 : path;
	FILE *f = fopen(path, "rb");
	if (!f)
		return cm_err_set(err, CM_ENOENT, "%s: cannot open", path);
	size_t cap = 1 << 16, len = 0, got;
	w->text = malloc(cap + 1);
	while (w->text && (got = fread(w->text + len, 1, cap - len, f)) > 0) {
		len += got;
		if (len == cap) {
			char *t = realloc(w->text, 2 * cap + 1);
			if (!t) {
				free(w->text);
				w->text = NULL;
			}
			w->text = t;
			cap *= 2;
		}
	}
	fclose(f);
	if (!w->text)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	w->text[len] = 0;
	int rc = md_tok_encode(c->tok, w->text, len, &w->toks, &w->n_toks, err);
	if (rc < 0)
		return rc;
	if (w->n_toks == 0)
		return cm_err_set(err, CM_EINVAL, "%s: empty input", path);
	/* token i's bytes start at cut[i]; NFC may change a few, so the cuts are
	 * proportional where the concatenation differs from the text */
	w->cut = malloc((w->n_toks + 1) * sizeof(size_t));
	if (!w->cut)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	size_t at = 0;
	bool exact = true;
	for (size_t i = 0; i < w->n_toks; i++) {
		size_t n = 0;
		const char *b = md_tok_bytes(c->tok, w->toks[i], &n);
		w->cut[i] = at;
		exact = exact && b && at + n <= len && !memcmp(w->text + at, b, n);
		at += n;
	}
	for (size_t i = 0; !exact && i < w->n_toks; i++) {
		size_t p = len * i / w->n_toks;
		while (p > 0 && p < len && ((unsigned char)w->text[p] & 0xc0) == 0x80)
			p--;
		w->cut[i] = p;
	}
	w->cut[w->n_toks] = len;
	struct md_seg *seg = md_seg_new(c->tok, &c->tmpl, err);
	if (!seg)
		return err->code;
	if ((rc = md_seg_push(seg, w->text, len, count_unit, w, err)) == CM_OK)
		rc = md_seg_close(seg, count_unit, w, err);
	md_seg_free(seg);
	return rc;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The bundled workloads: bench/streaming/ *.txt, sorted (malloc'd paths). */
static int work_list(char ***paths, int *n, struct cm_err *err)
{
	const char *dir = TANDEM_BENCH_STREAMING_DIR;
	DIR *d = opendir(dir);
	*paths = NULL;
	*n = 0;
	if (!d)
		return cm_err_set(err, CM_ENOENT, "%s: no bundled workloads (give --input FILE)",
				  dir);
	struct dirent *de;
	int cap = 0;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l < 5 || strcmp(de->d_name + l - 4, ".txt"))
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 8;
			char **p = realloc(*paths, (size_t)cap * sizeof(char *));
			if (!p)
				break;
			*paths = p;
		}
		if (asprintf(&(*paths)[*n], "%s/%s", dir, de->d_name) < 0)
			break;
		(*n)++;
	}
	closedir(d);
	if (*n)
		qsort(*paths, (size_t)*n, sizeof(char *), cmp_str);
	return *n ? CM_OK : cm_err_set(err, CM_ENOENT, "%s: no .txt workloads", dir);
}

/* ---- output ------------------------------------------------------------------- */

static double reduction(double streaming, double batch)
{
	return batch > 0 ? 1.0 - streaming / batch : 0.0;
}

static json_t *result_json(const struct bs_result *r)
{
	return json_pack("{s:I, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:b, s:i, s:f, s:I, s:I, s:I, "
			 "s:s}",
			 "tokens_waited", (json_int_t)r->waited, "first_answer_s",
			 r->first_answer_s, "final_answer_s", r->last_answer_s, "total_s",
			 r->total_s, "tokens", (json_int_t)r->tokens, "thought_tokens",
			 (json_int_t)r->thought, "answer_tokens", (json_int_t)r->answer,
			 "sampled_boundaries", (json_int_t)r->sampled_boundaries,
			 "sampled_think_end", r->sampled_think_end, "backlog_units_at_close",
			 r->backlog_units, "flops", r->flops, "prefilled", (json_int_t)r->prefilled,
			 "decoded", (json_int_t)r->decoded, "steps", (json_int_t)r->steps, "finish",
			 r->finish ? r->finish : "none");
}

static json_t *work_json(const struct bs_ctx *c, const struct bs_work *w, const struct bs_result *s,
			 const struct bs_result *b)
{
	/* the decode rate the reading rate asks of the engine */
	double demand =
		c->o->read_rate * (double)(w->n_units - 1) * c->unit_budget / (double)w->n_toks;
	json_t *red =
		json_pack("{s:f, s:f, s:f, s:f}", "tokens_waited",
			  reduction((double)s->waited, (double)b->waited), "first_answer_time",
			  reduction(s->first_answer_s, b->first_answer_s), "final_answer_time",
			  reduction(s->last_answer_s, b->last_answer_s), "flops",
			  reduction(s->flops, b->flops));
	double batch_decode = b->total_s > 0 ? (double)b->decoded / b->total_s : 0;
	return json_pack("{s:s, s:I, s:i, s:i, s:f, s:f, s:o, s:o, s:o}", "workload", w->name,
			 "input_tokens", (json_int_t)w->n_toks, "units", w->n_units - 1,
			 "source_tokens", w->src_tokens, "reasoning_demand_tok_s", demand,
			 "batch_tok_s", batch_decode, "streaming", result_json(s), "batch",
			 result_json(b), "reductions", red);
}

static void print_mode(const char *name, const struct bs_result *r)
{
	printf("  %-9s  waited %6lld tok  first answer %7.2f s  final answer %7.2f s  "
	       "%5lld tok (%lld thought, %lld answer)  %.3g FLOP  backlog %d units\n",
	       name, (long long)r->waited, r->first_answer_s, r->last_answer_s,
	       (long long)r->tokens, (long long)r->thought, (long long)r->answer, r->flops,
	       r->backlog_units);
}

static void print_work(const struct bs_ctx *c, const struct bs_work *w, json_t *j)
{
	printf("%s: %zu input tokens in %d units (+ the instruction), read at %.3g tok/s; "
	       "reasoning demand %.1f tok/s\n",
	       w->name, w->n_toks, w->n_units - 1, c->o->read_rate,
	       json_real_value(json_object_get(j, "reasoning_demand_tok_s")));
}

/* Sums over the workloads: tokens waited and answer times, per mode. */
static json_t *totals_json(json_t *list)
{
	const char *keys[] = {"tokens_waited", "first_answer_s", "final_answer_s", "flops"};
	double sum[2][4] = {{0}};
	size_t i;
	json_t *w;
	json_array_foreach (list, i, w) {
		for (int m = 0; m < 2; m++)
			for (int k = 0; k < 4; k++)
				sum[m][k] += json_number_value(json_object_get(
					json_object_get(w, m ? "batch" : "streaming"), keys[k]));
	}
	return json_pack("{s:f, s:f, s:f, s:f}", "tokens_waited", reduction(sum[0][0], sum[1][0]),
			 "first_answer_time", reduction(sum[0][1], sum[1][1]), "final_answer_time",
			 reduction(sum[0][2], sum[1][2]), "flops", reduction(sum[0][3], sum[1][3]));
}

/* ---- the subcommand ----------------------------------------------------------- */

static struct kern_backend *bs_backend(const struct tandem_opts *o, struct cm_err *err, bool *bf16)
{
	if (tool_activations(o, true, bf16, err) < 0)
		return NULL;
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = (int)o->threads;
	kp.bf16_activations = *bf16;
	return kern_cpu_new(&kp, err);
}

static int bs_ctx_init(struct bs_ctx *c, const struct tandem_opts *o, struct kern_backend *be,
		       struct cm_err *err)
{
	int rc;
	c->o = o;
	c->unit_budget = o->unit_budget ? (int32_t)o->unit_budget : BS_UNIT_BUDGET;
	c->final_budget = o->final_budget ? (int32_t)o->final_budget : BS_FINAL_BUDGET;
	c->answer_budget = o->answer_budget ? (int32_t)o->answer_budget : c->final_budget / 4;
	if (c->answer_budget > c->final_budget)
		return cm_err_set(err, CM_EINVAL, "--answer-budget exceeds --final-budget");
	if ((rc = tool_think_template(o, &c->tmpl, err)) < 0)
		return rc;
	if (!(c->tok = md_tok_load(o->model, err)))
		return err->code;
	if (!(c->m = wk_model_load(o->model, be, err)))
		return err->code;
	bool q8 = !strcmp(o->quantize, "q8");
	enum wk_weights how = q8		? WK_WEIGHTS_Q8
			      : o->mmap_weights ? WK_WEIGHTS_MAPPED
						: WK_WEIGHTS_COPY;
	if ((rc = wk_model_convert(c->m, how, err)) < 0)
		return rc;
	return md_stop_ids_load(o->model, &c->m->cfg, &c->stops, err);
}

static void bs_ctx_fini(struct bs_ctx *c)
{
	wk_model_free(c->m);
	md_tok_free(c->tok);
	md_seg_template_fini(&c->tmpl);
}

/* Runs both modes on one workload and reports. */
static int bs_workload(struct bs_ctx *c, const char *path, json_t *list, struct cm_err *err)
{
	struct bs_work w;
	struct bs_result s, b;
	int rc = work_load(c, path, &w, err);
	if (rc == CM_OK && !c->o->json)
		fprintf(stderr,
			"tandem bench streaming: %s: streaming at %.3g tok/s (%.0f s of "
			"input), then batch...\n",
			w.name, c->o->read_rate, (double)w.n_toks / c->o->read_rate);
	if (rc == CM_OK)
		rc = bs_run_mode(c, &w, WK_MODE_STREAMING, &s, err);
	if (rc == CM_OK)
		rc = bs_run_mode(c, &w, WK_MODE_BATCH, &b, err);
	if (rc == CM_OK) {
		json_t *j = work_json(c, &w, &s, &b);
		if (!c->o->json) {
			print_work(c, &w, j);
			print_mode("streaming", &s);
			print_mode("batch", &b);
			json_t *red = json_object_get(j, "reductions");
			printf("  reductions: tokens waited %.1f%%, time to first answer token "
			       "%.1f%%, time to final answer %.1f%%, FLOPs %.1f%%\n\n",
			       100 * json_real_value(json_object_get(red, "tokens_waited")),
			       100 * json_real_value(json_object_get(red, "first_answer_time")),
			       100 * json_real_value(json_object_get(red, "final_answer_time")),
			       100 * json_real_value(json_object_get(red, "flops")));
		}
		json_array_append_new(list, j);
	}
	work_free(&w);
	return rc;
}

int tool_bench_streaming(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	struct cm_err err = {0};
	if (argc || !o->model) {
		fprintf(stderr, "tandem bench streaming: give --model DIR (and no other "
				"arguments)\n");
		return 1;
	}
	bool bf16;
	struct kern_backend *be = bs_backend(o, &err, &bf16);
	struct bs_ctx c = {0};
	char **paths = NULL;
	int n_paths = 0, rc = be ? CM_OK : err.code;
	json_t *list = json_array();
	if (rc == CM_OK)
		rc = bs_ctx_init(&c, o, be, &err);
	if (rc == CM_OK && !o->input)
		rc = work_list(&paths, &n_paths, &err);
	if (rc == CM_OK && !o->json)
		printf("streaming vs batch thinking: %s, %s, %d threads, %s activations; budgets: "
		       "%d per unit, %d final (%d answer); greedy\n\n",
		       o->model, c.m->cfg.model_type, kern_backend_threads(be),
		       bf16 ? "bf16" : "f32", c.unit_budget, c.final_budget, c.answer_budget);
	for (int i = 0; rc == CM_OK && i < (o->input ? 1 : n_paths); i++)
		rc = bs_workload(&c, o->input ? o->input : paths[i], list, &err);
	if (rc == CM_OK) {
		int64_t boundaries = 0;
		bool think_end = false;
		size_t i;
		json_t *w;
		json_array_foreach (list, i, w) {
			for (int k = 0; k < 2; k++) {
				json_t *r = json_object_get(w, k ? "batch" : "streaming");
				boundaries += json_integer_value(
					json_object_get(r, "sampled_boundaries"));
				think_end |= json_is_true(json_object_get(r, "sampled_think_end"));
			}
		}
		char note[256];
		snprintf(note, sizeof(note),
			 "the model sampled %lld unit boundaries and %s \"</think>\": %s",
			 (long long)boundaries, think_end ? "a" : "no",
			 boundaries || think_end ? "the model ended some phases itself"
						 : "the budgets drove every phase");
		json_t *tot = totals_json(list);
		if (o->json) {
			json_t *j = json_pack(
				"{s:s, s:s, s:i, s:s, s:f, s:i, s:i, s:i, s:i, s:s, s:o, s:o}",
				"model", o->model, "model_type", c.m->cfg.model_type, "threads",
				kern_backend_threads(be), "activations", bf16 ? "bf16" : "f32",
				"read_rate_tok_s", o->read_rate, "unit_budget", c.unit_budget,
				"final_budget", c.final_budget, "answer_budget", c.answer_budget,
				"phi", (int)o->phi, "phases", note, "workloads", json_incref(list),
				"reductions_all_workloads", tot);
			char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
			if (s)
				puts(s);
			free(s);
			json_decref(j);
		} else {
			printf("all workloads (sums): tokens waited %.1f%% fewer, first answer "
			       "token "
			       "%.1f%% sooner, final answer %.1f%% sooner\nnote: %s\n",
			       100 * json_real_value(json_object_get(tot, "tokens_waited")),
			       100 * json_real_value(json_object_get(tot, "first_answer_time")),
			       100 * json_real_value(json_object_get(tot, "final_answer_time")),
			       note);
			json_decref(tot);
		}
	}
	json_decref(list);
	for (int i = 0; i < n_paths; i++)
		free(paths[i]);
	free(paths);
	bs_ctx_fini(&c);
	kern_backend_free(be);
	if (rc < 0) {
		fprintf(stderr, "tandem bench streaming: %s\n", err.msg);
		return rc == CM_ENOMEM || rc == CM_EINTERNAL ? 2 : 1;
	}
	return 0;
}
