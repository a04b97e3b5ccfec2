/* tandem generate: one process, no network: load a model, run one prompt through
 * the engine and stream the continuation. For debugging and numerical checks. */
#include "kernels/kern.h"
#include "model/md.h"
#include "tools.h"
#include "worker/wk.h"

#include <stdlib.h>
#include <string.h>

struct dump {
	FILE *f;
	int32_t n_prompt;
	int failed;
};

static void dump_logits(void *ud, uint64_t id, int32_t index, const float *logits, int32_t vocab)
{
	struct dump *d = ud;
	(void)id;
	if (!d->f || index >= d->n_prompt)
		return;
	/* rows arrive in prompt order; raw little-endian float32 (x86 and arm are LE) */
	if (fwrite(logits, sizeof(float), (size_t)vocab, d->f) != (size_t)vocab)
		d->failed = 1;
}

/* The prompt as ids: --tokens, or --prompt through the tokenizer (and --chat). */
static int prompt_ids(const struct tandem_opts *o, const struct md_tok *tok, int32_t **ids,
		      size_t *n, struct cm_err *err)
{
	if (o->tokens)
		return tool_parse_ids(o->tokens, ids, n, err);
	char *wrapped = NULL;
	const char *text = o->prompt;
	int rc;
	if (o->chat) {
		if ((rc = md_chat_user_prompt(tok, o->prompt, &wrapped, err)) < 0)
			return rc;
		text = wrapped;
	}
	rc = md_tok_encode(tok, text, strlen(text), ids, n, err);
	free(wrapped);
	return rc;
}

static int run(const struct tandem_opts *o, struct md_tok *tok, struct kern_backend *be,
	       struct cm_err *err)
{
	int rc;
	int32_t *ids = NULL;
	size_t n_ids = 0;
	struct wk_model *m = NULL;
	struct wk_engine *e = NULL;
	struct dump d = { 0 };
	struct wk_event *ev = NULL;

	if ((rc = prompt_ids(o, tok, &ids, &n_ids, err)) < 0)
		goto out;
	m = wk_model_load(o->model, be, err);
	if (!m || (rc = tool_model_weights(o, m, err)) < 0) {
		rc = err->code;
		goto out;
	}
	struct md_stop_ids stops;
	if ((rc = md_stop_ids_load(o->model, &m->cfg, &stops, err)) < 0)
		goto out;

	struct wk_engine_params ep = wk_engine_default_params();
	ep.max_seqs = 1;
	ep.kv_tokens = (int32_t)CM_MIN((int64_t)n_ids + o->max_tokens + ep.block_size,
				       (int64_t)m->cfg.max_pos + ep.block_size);
	e = wk_engine_new(m, &ep, err);
	if (!e) {
		rc = err->code;
		goto out;
	}
	if (o->dump_logits) {
		d.f = fopen(o->dump_logits, "wb");
		if (!d.f) {
			rc = cm_err_set(err, CM_EIO, "%s: cannot open for writing", o->dump_logits);
			goto out;
		}
	}
	d.n_prompt = (int32_t)n_ids;
	struct wk_request req = {
		.id = 1,
		.prompt = ids,
		.n_prompt = (int32_t)n_ids,
		.max_tokens = (int32_t)o->max_tokens,
		.stop_ids = stops.ids,
		.n_stop = stops.n,
		.sample = {
			.temperature = (float)o->temperature,
			.top_p = (float)o->top_p,
			.top_k = (int32_t)o->top_k,
			.min_p = (float)o->min_p,
			.repetition_penalty = (float)o->repetition_penalty,
			.seed = (uint64_t)o->seed,
		},
		.prompt_logits = o->dump_logits != NULL,
		.on_logits = o->dump_logits ? dump_logits : NULL,
		.ud = &d,
	};
	if ((rc = wk_engine_add(e, &req, err)) < 0)
		goto out;

	int max_ev = WK_EV_MIN(&ep);
	ev = malloc((size_t)max_ev * sizeof(*ev));
	char *text = malloc(MD_TOK_STREAM_CAP(tok));
	if (!ev || !text) {
		free(text);
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
		goto out;
	}
	struct md_tok_stream ts;
	md_tok_stream_init(&ts, tok);
	int n_out = 0;
	while (wk_engine_busy(e)) {
		int n_ev;
		if ((rc = wk_engine_step(e, ev, max_ev, &n_ev, err)) < 0)
			break;
		for (int i = 0; i < n_ev; i++) {
			int32_t t = ev[i].token;
			if (t < 0)
				continue;
			if (o->ids) {
				printf(n_out++ ? ",%d" : "%d", t);
			} else if (ev[i].finish != WK_FINISH_STOP) {
				int w = md_tok_stream_put(&ts, t, text, MD_TOK_STREAM_CAP(tok));
				if (w > 0)
					fwrite(text, 1, (size_t)w, stdout);
			}
			fflush(stdout);
		}
	}
	if (!o->ids) {
		int w = md_tok_stream_flush(&ts, text, MD_TOK_STREAM_CAP(tok));
		if (w > 0)
			fwrite(text, 1, (size_t)w, stdout);
	}
	putchar('\n');
	free(text);
	if (d.f && (fclose(d.f) != 0 || d.failed))
		rc = cm_err_set(err, CM_EIO, "%s: write failed", o->dump_logits);
	d.f = NULL;
out:
	if (d.f)
		fclose(d.f);
	free(ev);
	wk_engine_free(e);
	wk_model_free(m);
	free(ids);
	return rc;
}

/* ---- streaming thinking ------------------------------------------------------ */

int tool_think_template(const struct tandem_opts *o, struct md_seg_template *t,
			struct cm_err *err)
{
	*t = md_seg_default_template();
	if (o->template_file) {
		int rc = md_seg_template_load(o->template_file, t, err);
		if (rc < 0)
			return rc;
	}
	if (o->depth > 0)
		t->depth = (int32_t)o->depth;
	return CM_OK;
}

/* "1,2|3" into ids [3] and unit lengths [2] (malloc'd). */
static int parse_units(const char *flag, const char *s, int32_t **ids, int32_t *n_ids,
		       int32_t **lens, int32_t *n_units, struct cm_err *err)
{
	char *copy = strdup(s);
	int rc = CM_OK;
	size_t cap = strlen(s) + 1;
	*ids = malloc(cap * sizeof(int32_t));
	*lens = malloc(cap * sizeof(int32_t));
	*n_ids = *n_units = 0;
	if (!copy || !*ids || !*lens) {
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
		goto out;
	}
	char *part = copy;
	for (char *p = copy;; p++) {
		if (*p != '|' && *p)
			continue;
		bool end = !*p;
		*p = 0;
		int32_t *u = NULL;
		size_t n = 0;
		if ((rc = tool_parse_ids(part, &u, &n, err)) < 0 || n == 0) {
			free(u);
			rc = cm_err_set(err, CM_EINVAL, "--%s: unit %d: expected ids like 1,2,3 "
					"(units split by '|')", flag, *n_units + 1);
			goto out;
		}
		memcpy(*ids + *n_ids, u, n * sizeof(int32_t));
		free(u);
		*n_ids += (int32_t)n;
		(*lens)[(*n_units)++] = (int32_t)n;
		if (end)
			break;
		part = p + 1;
	}
out:
	free(copy);
	if (rc < 0) {
		free(*ids);
		free(*lens);
		*ids = *lens = NULL;
	}
	return rc;
}

static enum wk_mode think_mode(const struct tandem_opts *o)
{
	return o->mode && !strcmp(o->mode, "batch") ? WK_MODE_BATCH : WK_MODE_STREAMING;
}

/* Runs req on a one-sequence engine with the source units src; prints the tokens
 * (--ids: ids; else text) and a summary of the phases on stderr. */
static int think_run(const struct tandem_opts *o, struct md_tok *tok, struct wk_model *m,
		     struct wk_request *req, const int32_t *src, const int32_t *lens,
		     int32_t n_units, struct cm_err *err)
{
	int32_t n_src = 0;
	for (int32_t i = 0; i < n_units; i++)
		n_src += lens[i];
	struct wk_engine_params ep = wk_engine_default_params();
	ep.max_seqs = 1;
	int64_t need = (int64_t)n_src + req->n_prompt + req->max_tokens + 1024 + 2 * ep.block_size;
	ep.kv_tokens = (int32_t)CM_MIN(need, 2 * (int64_t)m->cfg.max_pos + 2 * ep.block_size);
	struct wk_engine *e = wk_engine_new(m, &ep, err);
	if (!e)
		return err->code;
	int rc = wk_engine_add(e, req, err);
	for (int32_t i = 0, at = 0; rc == CM_OK && i < n_units; at += lens[i++])
		rc = wk_engine_input(e, req->id, src + at, lens[i], err);
	if (rc == CM_OK)
		rc = wk_engine_close_input(e, req->id, err);
	struct wk_event ev[8];
	struct md_tok_stream ts;
	char *text = malloc(MD_TOK_STREAM_CAP(tok));
	int64_t n_thought = 0, n_answer = 0, n_out = 0;
	enum wk_finish fin = WK_FINISH_NONE;
	if (!text && rc == CM_OK)
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
	md_tok_stream_init(&ts, tok);
	while (rc == CM_OK && wk_engine_busy(e)) {
		int n_ev;
		if ((rc = wk_engine_step(e, ev, CM_ARRAY_LEN(ev), &n_ev, err)) < 0)
			break;
		for (int i = 0; i < n_ev; i++) {
			if (ev[i].finish)
				fin = ev[i].finish;
			if (ev[i].token < 0)
				continue;
			*(ev[i].phase == WK_PHASE_ANSWER ? &n_answer : &n_thought) += 1;
			if (o->ids) {
				printf(n_out++ ? ",%d" : "%d", ev[i].token);
			} else {
				int w = md_tok_stream_put(&ts, ev[i].token, text,
							  MD_TOK_STREAM_CAP(tok));
				if (w > 0)
					fwrite(text, 1, (size_t)w, stdout);
			}
		}
		fflush(stdout);
	}
	if (rc == CM_OK && o->max_tokens > 0) {
		putchar('\n');
		fprintf(stderr, "tandem generate: %s mode, %d source units (%d tokens), %lld thought "
				"tokens, %lld answer tokens, finish %s\n",
			req->mode == WK_MODE_BATCH ? "batch" : "streaming", n_units, n_src,
			(long long)n_thought, (long long)n_answer, wk_finish_str(fin));
	}
	free(text);
	wk_engine_free(e);
	return rc;
}

/* --source-units / --target-units: the teacher-forced streaming forward; the
 * logits of every target position go to --dump-logits. */
static int think_forced(const struct tandem_opts *o, struct md_tok *tok, struct wk_model *m,
			struct dump *d, struct cm_err *err)
{
	int32_t *src = NULL, *slen = NULL, *tgt = NULL, *tlen = NULL, n_src, n_su, n_tgt, n_tu;
	int rc;
	if ((rc = parse_units("source-units", o->source_units, &src, &n_src, &slen, &n_su,
			      err)) < 0 ||
	    (rc = parse_units("target-units", o->target_units, &tgt, &n_tgt, &tlen, &n_tu, err)) <
		    0)
		goto out;
	d->n_prompt = n_tgt;
	struct wk_request req = {
		.id = 1,
		.mode = think_mode(o),
		.phi = (int32_t)o->phi,
		.prompt = tgt,
		.n_prompt = n_tgt,
		.prompt_units = tlen,
		.n_prompt_units = n_tu,
		.max_tokens = 0,
		.sample = wk_sample_default_params(),
		.prompt_logits = d->f != NULL,
		.on_logits = d->f ? dump_logits : NULL,
		.ud = d,
	};
	struct tandem_opts quiet = *o;
	quiet.max_tokens = 0;
	rc = think_run(&quiet, tok, m, &req, src, slen, n_su, err);
out:
	free(src);
	free(slen);
	free(tgt);
	free(tlen);
	return rc;
}

/* The units of a segmented text, back to back. */
struct think_units {
	int32_t *ids, *lens;  /* [cap] */
	int32_t n_ids, n_units, cap;
	bool overflow;
};

static void think_collect(void *ud, int32_t index, const int32_t *ids, int32_t n)
{
	struct think_units *u = ud;
	(void)index;
	if (u->n_ids + n > u->cap) {
		u->overflow = true;
		return;
	}
	memcpy(u->ids + u->n_ids, ids, (size_t)n * sizeof(int32_t));
	u->lens[u->n_units++] = n;
	u->n_ids += n;
}

/* --think: the prompt text cut into units by the segmenter, then streaming (or
 * batch) thinking with the budgets. */
static int think_prompt(const struct tandem_opts *o, struct md_tok *tok, struct wk_model *m,
			struct cm_err *err)
{
	struct md_seg_template t;
	int rc = tool_think_template(o, &t, err);
	if (rc < 0)
		return rc;
	struct md_seg *seg = md_seg_new(tok, &t, err);
	size_t len = strlen(o->prompt);
	/* a token has at least one byte; units add a boundary; the template its own */
	struct think_units u = { .cap = (int32_t)(2 * len + 4096) };
	u.ids = malloc((size_t)u.cap * sizeof(int32_t));
	u.lens = malloc((size_t)u.cap * sizeof(int32_t));
	if (!seg) {
		rc = err->code;
	} else if (!u.ids || !u.lens) {
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
	} else if ((rc = md_seg_push(seg, o->prompt, len, think_collect, &u, err)) == CM_OK &&
		   (rc = md_seg_close(seg, think_collect, &u, err)) == CM_OK) {
		if (u.overflow)
			rc = cm_err_set(err, CM_EINTERNAL, "segmenter output larger than sized");
		struct md_stop_ids stops;
		if (rc == CM_OK && (rc = md_stop_ids_load(o->model, &m->cfg, &stops, err)) == CM_OK) {
			struct wk_request req = {
				.id = 1,
				.mode = think_mode(o),
				.phi = (int32_t)o->phi,
				.unit_budget = (int32_t)o->unit_budget,
				.final_budget = (int32_t)o->final_budget,
				.answer_budget = (int32_t)o->answer_budget,
				.think = md_seg_ids(seg),
				.max_tokens = (int32_t)o->max_tokens,
				.stop_ids = stops.ids,
				.n_stop = stops.n,
				.sample = {
					.temperature = (float)o->temperature,
					.top_p = (float)o->top_p,
					.top_k = (int32_t)o->top_k,
					.min_p = (float)o->min_p,
					.repetition_penalty = (float)o->repetition_penalty,
					.seed = (uint64_t)o->seed,
				},
			};
			rc = think_run(o, tok, m, &req, u.ids, u.lens, u.n_units, err);
		}
	}
	free(u.ids);
	free(u.lens);
	md_seg_free(seg);
	md_seg_template_fini(&t);
	return rc;
}

/* The streaming-thinking paths of tool_generate. */
static int think(const struct tandem_opts *o, struct md_tok *tok, struct kern_backend *be,
		 struct cm_err *err)
{
	struct dump d = { 0 };
	struct wk_model *m = wk_model_load(o->model, be, err);
	if (!m)
		return err->code;
	int rc = tool_model_weights(o, m, err);
	if (rc == CM_OK && o->dump_logits && !(d.f = fopen(o->dump_logits, "wb")))
		rc = cm_err_set(err, CM_EIO, "%s: cannot open for writing", o->dump_logits);
	if (rc == CM_OK)
		rc = o->source_units ? think_forced(o, tok, m, &d, err) : think_prompt(o, tok, m, err);
	if (d.f && (fclose(d.f) != 0 || d.failed) && rc == CM_OK)
		rc = cm_err_set(err, CM_EIO, "%s: write failed", o->dump_logits);
	wk_model_free(m);
	return rc;
}

int tool_generate(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	struct cm_err err = { 0 };
	bool forced = o->source_units || o->target_units;
	if (forced && (argc || !o->model || !o->source_units || !o->target_units)) {
		fprintf(stderr, "tandem generate: give --model DIR, --source-units and "
				"--target-units (ids, units split by '|')\n");
		return 1;
	}
	if (o->think && (argc || !o->model || !o->prompt || forced)) {
		fprintf(stderr, "tandem generate: --think needs --model DIR and --prompt TEXT\n");
		return 1;
	}
	if (!forced && !o->think && (argc || !o->model || !o->prompt == !o->tokens)) {
		fprintf(stderr, "tandem generate: give --model DIR and one of --prompt TEXT or "
				"--tokens ID,...\n");
		return 1;
	}
	struct md_tok *tok = md_tok_load(o->model, &err);
	if (!tok) {
		fprintf(stderr, "tandem generate: %s\n", err.msg);
		return 1;
	}
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = (int)o->threads;
	struct kern_backend *be = NULL; /* auto: f32 here (reference numerics) */
	if (tool_activations(o, false, &kp.bf16_activations, &err) == CM_OK)
		be = kern_cpu_new(&kp, &err);
	int rc = !be			? err.code
		 : forced || o->think	? think(o, tok, be, &err)
					: run(o, tok, be, &err);
	kern_backend_free(be);
	md_tok_free(tok);
	if (rc < 0) {
		fprintf(stderr, "tandem generate: %s\n", err.msg);
		return rc == CM_EINTERNAL || rc == CM_ENOMEM ? 2 : 1;
	}
	return 0;
}
