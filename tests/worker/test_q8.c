/* Weights in backend memory (wk_model_convert): a copy gives the mapped model's
 * logits bit for bit; q8_0 stays within its documented tolerance of bf16
 * (docs/performance.md, "The q8_0 path"), on the generated tiny model. */
#include "fixture_check.h"
#include "kernels/kern.h"
#include "worker/wk.h"

#include <string.h>

/* The q8_0 tolerance against the bf16 weights, over every logit of every prompt
 * position: normalised error sum((a - b)^2) / sum(b^2), and the largest |a - b|
 * relative to the position's logit standard deviation. */
#define Q8_NERR_MAX 1e-3
#define Q8_MAXDIFF_SD 0.2

struct rows {
	int n, vocab;
	float *logits; /* [n][vocab] */
};

static void on_logits(void *ud, uint64_t id, int32_t index, const float *lg, int32_t vocab)
{
	struct rows *r = ud;
	(void)id;
	cr_assert_lt(index, r->n);
	r->vocab = vocab;
	if (!r->logits)
		r->logits = calloc((size_t)r->n * vocab, sizeof(float));
	memcpy(r->logits + (size_t)index * vocab, lg, (size_t)vocab * sizeof(float));
}

/* Prompt logits of ids[n] on the model in dir with its weights held as how. */
static float *prompt_logits(const char *dir, enum wk_weights how, const int32_t *ids, int n,
			    int *vocab)
{
	struct cm_err err = { 0 };
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = 2;
	struct kern_backend *be = kern_cpu_new(&kp, &err);
	cr_assert_not_null(be, "%s", err.msg);
	struct wk_model *m = wk_model_load(dir, be, &err);
	cr_assert_not_null(m, "%s", err.msg);
	cr_assert_eq(wk_model_convert(m, how, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(wk_model_convert(m, how, &err), how == WK_WEIGHTS_MAPPED ? CM_OK : CM_EINVAL,
		     "a second conversion must be refused");
	if (how == WK_WEIGHTS_Q8)
		cr_assert_eq(m->layers[0].wq.dtype, KERN_Q8_0);
	struct wk_engine_params ep = wk_engine_default_params();
	struct wk_engine *e = wk_engine_new(m, &ep, &err);
	cr_assert_not_null(e, "%s", err.msg);
	struct rows r = { .n = n };
	struct wk_request rq = {
		.id = 1,
		.prompt = ids,
		.n_prompt = n,
		.max_tokens = 1,
		.sample = wk_sample_default_params(),
		.prompt_logits = true,
		.on_logits = on_logits,
		.ud = &r,
	};
	cr_assert_eq(wk_engine_add(e, &rq, &err), CM_OK, "%s", err.msg);
	struct wk_event ev[64];
	while (wk_engine_busy(e)) {
		int n_ev;
		cr_assert_eq(wk_engine_step(e, ev, 64, &n_ev, &err), CM_OK, "%s", err.msg);
	}
	wk_engine_free(e);
	wk_model_free(m);
	kern_backend_free(be);
	cr_assert_not_null(r.logits);
	*vocab = r.vocab;
	return r.logits;
}

Test(q8, copy_is_exact_and_q8_within_tolerance_of_bf16, .timeout = 300)
{
	char dir[1024];
	th_gen_model(dir, sizeof(dir), "tiny", 1, false);
	json_t *fx = th_fixture("plain_tiny_s1.json");
	json_t *run = json_object_get(json_object_get(fx, "runs"), "B");
	int n, vocab;
	int32_t *ids = fx_input_ids(run, &n);
	float *mapped = prompt_logits(dir, WK_WEIGHTS_MAPPED, ids, n, &vocab);
	float *copied = prompt_logits(dir, WK_WEIGHTS_COPY, ids, n, &vocab);
	float *q8 = prompt_logits(dir, WK_WEIGHTS_Q8, ids, n, &vocab);
	size_t all = (size_t)n * vocab;
	cr_assert(memcmp(mapped, copied, all * sizeof(float)) == 0,
		  "copied weights must give the mapped model's logits bit for bit");

	double worst_nerr = 0, worst_sd = 0;
	for (int p = 0; p < n; p++) {
		const float *a = q8 + (size_t)p * vocab, *b = mapped + (size_t)p * vocab;
		double num = 0, den = 0, mean = 0, var = 0, maxd = 0;
		for (int v = 0; v < vocab; v++)
			mean += b[v];
		mean /= vocab;
		for (int v = 0; v < vocab; v++) {
			double d = (double)a[v] - b[v];
			num += d * d;
			den += (double)b[v] * b[v];
			var += (b[v] - mean) * (b[v] - mean);
			maxd = fmax(maxd, fabs(d));
		}
		double ne = num / den, sd = maxd / sqrt(var / vocab);
		worst_nerr = fmax(worst_nerr, ne);
		worst_sd = fmax(worst_sd, sd);
		cr_assert(ne < Q8_NERR_MAX, "position %d: normalised error %g", p, ne);
		cr_assert(sd < Q8_MAXDIFF_SD, "position %d: max |diff| %g sd", p, sd);
	}
	cr_log_info("q8_0 vs bf16: normalised error <= %.2e, max |diff| <= %.3f sd", worst_nerr,
		    worst_sd);
	free(mapped);
	free(copied);
	free(q8);
	free(ids);
	json_decref(fx);
	th_rmdir(dir);
}
