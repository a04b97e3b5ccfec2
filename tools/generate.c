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
	if (!m) {
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

int tool_generate(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	struct cm_err err = { 0 };
	if (argc || !o->model || !o->prompt == !o->tokens) {
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
	struct kern_backend *be = kern_cpu_new(&kp, &err);
	int rc = be ? run(o, tok, be, &err) : err.code;
	kern_backend_free(be);
	md_tok_free(tok);
	if (rc < 0) {
		fprintf(stderr, "tandem generate: %s\n", err.msg);
		return rc == CM_EINTERNAL || rc == CM_ENOMEM ? 2 : 1;
	}
	return 0;
}
