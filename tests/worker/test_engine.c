/* The engine against the float64 reference fixtures, batching, KV reuse,
 * sampling and bad requests, on a generated tiny model. */
#include "fixture_check.h"
#include "kernels/kern.h"
#include "worker/wk.h"

#include <malloc.h>
#include <string.h>

#define MAX_ROWS 64

/* Collects the logits rows a request reports, by sequence index. */
struct rows {
	int vocab;
	float *logits[MAX_ROWS];  /* [index] */
};

static void on_logits(void *ud, uint64_t id, int32_t index, const float *lg, int32_t vocab)
{
	struct rows *r = ud;
	(void)id;
	cr_assert_lt(index, MAX_ROWS);
	r->vocab = vocab;
	if (!r->logits[index])
		r->logits[index] = malloc((size_t)vocab * sizeof(float));
	memcpy(r->logits[index], lg, (size_t)vocab * sizeof(float));
}

/* The first n rows as one [n][vocab] array (caller frees). */
static float *rows_concat(const struct rows *r, int n)
{
	float *all = malloc((size_t)n * r->vocab * sizeof(float));
	for (int i = 0; i < n; i++) {
		cr_assert_not_null(r->logits[i], "no logits for position %d", i);
		memcpy(all + (size_t)i * r->vocab, r->logits[i], (size_t)r->vocab * sizeof(float));
	}
	return all;
}

static void rows_free(struct rows *r)
{
	for (int i = 0; i < MAX_ROWS; i++)
		free(r->logits[i]);
	memset(r, 0, sizeof(*r));
}

struct env {
	char dir[1024];
	struct kern_backend *be;
	struct wk_model *m;
	struct wk_engine *e;
	struct wk_engine_params ep;
};

static void env_open(struct env *v, int max_isa, struct wk_engine_params *ep)
{
	struct cm_err err = { 0 };
	if (!v->dir[0])
		th_gen_model(v->dir, sizeof(v->dir), "tiny", 1, false);
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.max_isa = max_isa;
	kp.bf16_activations = false;
	v->be = kern_cpu_new(&kp, &err);
	cr_assert_not_null(v->be, "%s", err.msg);
	v->m = wk_model_load(v->dir, v->be, &err);
	cr_assert_not_null(v->m, "%s", err.msg);
	v->ep = ep ? *ep : wk_engine_default_params();
	v->e = wk_engine_new(v->m, &v->ep, &err);
	cr_assert_not_null(v->e, "%s", err.msg);
}

static void env_close(struct env *v)
{
	wk_engine_free(v->e);
	wk_model_free(v->m);
	kern_backend_free(v->be);
	v->e = NULL;
	v->m = NULL;
	v->be = NULL;
}

/* Runs the engine until idle; appends request id's tokens to out. */
static int drain(struct wk_engine *e, const struct wk_engine_params *ep, uint64_t id,
		 int32_t *out, int cap, enum wk_finish *finish)
{
	struct wk_event ev[256];
	cr_assert_leq(WK_EV_MIN(ep), 256);
	int n = 0;
	while (wk_engine_busy(e)) {
		int n_ev;
		struct cm_err err = { 0 };
		cr_assert_eq(wk_engine_step(e, ev, 256, &n_ev, &err), CM_OK, "%s", err.msg);
		for (int i = 0; i < n_ev; i++) {
			if (ev[i].req_id != id)
				continue;
			if (ev[i].token >= 0 && n < cap)
				out[n++] = ev[i].token;
			if (ev[i].finish && finish)
				*finish = ev[i].finish;
		}
	}
	return n;
}

static struct wk_request req_of(uint64_t id, const int32_t *ids, int n, int max_tokens,
				struct rows *r)
{
	return (struct wk_request){
		.id = id,
		.prompt = ids,
		.n_prompt = n,
		.max_tokens = max_tokens,
		.sample = wk_sample_default_params(),
		.prompt_logits = r != NULL,
		.on_logits = r ? on_logits : NULL,
		.ud = r,
	};
}

/* Prompt logits and greedy continuation of both runs of plain_tiny_s1, on
 * every ISA level this CPU has, with f32 activations: tolerance 1e-3 (the
 * fixtures' README expects ~1e-6 from an f32 engine). */
Test(engine, plain_tiny_matches_reference_on_every_isa, .timeout = 300)
{
	json_t *fx = th_fixture("plain_tiny_s1.json");
	struct env v = { 0 };
	for (int isa = 0; isa <= (int)kern_cpu_detect_isa(); isa++) {
		env_open(&v, isa, NULL);
		const char *names[] = { "A", "B" };
		for (int r = 0; r < 2; r++) {
			json_t *run = json_object_get(json_object_get(fx, "runs"), names[r]);
			int n;
			int32_t *ids = fx_input_ids(run, &n);
			struct rows rows = { 0 };
			struct wk_request rq = req_of(7, ids, n, 16, &rows);
			struct cm_err err = { 0 };
			cr_assert_eq(wk_engine_add(v.e, &rq, &err), CM_OK, "%s", err.msg);
			int32_t out[32];
			enum wk_finish fin = 0;
			int got = drain(v.e, &v.ep, 7, out, 32, &fin);
			cr_assert_eq(got, 16);
			cr_assert_eq(fin, WK_FINISH_LENGTH);
			float *all = rows_concat(&rows, n);
			char what[64];
			snprintf(what, sizeof(what), "tiny %s isa %s", names[r],
				 kern_isa_name((enum kern_isa)isa));
			double worst = fx_check_logits(run, all, rows.vocab, 1e-3, what);
			cr_log_info("%s: max |d| %.2e", what, worst);
			fx_check_greedy(run, out, got, what);
			free(all);
			free(ids);
			rows_free(&rows);
		}
		env_close(&v);
	}
	th_rmdir(v.dir);
	json_decref(fx);
}

/* The bf16-activation path (vdpbf16ps) stays within the fixtures' 0.03, with the
 * weights mapped (KERN_BF16) and copied (wk_model_convert: KERN_BF16_R16 panels,
 * which change only the order of f32 sums: within 1e-4 of the mapped logits). */
Test(engine, plain_tiny_bf16_activations_within_tolerance, .timeout = 120)
{
	if (kern_cpu_detect_isa() < KERN_ISA_AVX512BF16)
		cr_skip_test("no AVX512_BF16 on this CPU");
	json_t *fx = th_fixture("plain_tiny_s1.json");
	struct env v = { 0 };
	th_gen_model(v.dir, sizeof(v.dir), "tiny", 1, false);
	json_t *run = json_object_get(json_object_get(fx, "runs"), "B");
	int n;
	int32_t *ids = fx_input_ids(run, &n);
	float *logits[2];
	int vocab = 0;
	for (int copy = 0; copy < 2; copy++) {
		struct cm_err err = { 0 };
		struct kern_cpu_params kp = kern_cpu_default_params();
		kp.bf16_activations = true;
		v.be = kern_cpu_new(&kp, &err);
		v.m = wk_model_load(v.dir, v.be, &err);
		cr_assert_not_null(v.m, "%s", err.msg);
		cr_assert_eq(wk_model_convert(v.m, copy ? WK_WEIGHTS_COPY : WK_WEIGHTS_MAPPED,
					      &err), CM_OK, "%s", err.msg);
		bool bf16act = strstr(kern_backend_name(v.be), "bf16act") != NULL;
		cr_assert_eq(v.m->layers[0].wq.dtype,
			     copy && bf16act ? KERN_BF16_R16 : KERN_BF16);
		v.ep = wk_engine_default_params();
		v.e = wk_engine_new(v.m, &v.ep, &err);
		struct rows rows = { 0 };
		struct wk_request rq = req_of(1, ids, n, 16, &rows);
		cr_assert_eq(wk_engine_add(v.e, &rq, &err), CM_OK);
		int32_t out[16];
		drain(v.e, &v.ep, 1, out, 16, NULL);
		logits[copy] = rows_concat(&rows, n);
		vocab = rows.vocab;
		double worst = fx_check_logits(run, logits[copy], rows.vocab, 0.03,
					       copy ? "tiny B bf16, copied" : "tiny B bf16");
		cr_log_info("bf16 activations, %s weights: max |d| %.2e",
			    copy ? "copied" : "mapped", worst);
		rows_free(&rows);
		env_close(&v);
	}
	double num = 0, den = 0;
	for (size_t i = 0; i < (size_t)n * vocab; i++) {
		double d = (double)logits[1][i] - logits[0][i];
		num += d * d;
		den += (double)logits[0][i] * logits[0][i];
	}
	cr_assert(num / den < 1e-4, "copied vs mapped: normalised error %g", num / den);
	cr_log_info("bf16 activations, copied vs mapped: normalised error %.2e", num / den);
	free(logits[0]);
	free(logits[1]);
	free(ids);
	th_rmdir(v.dir);
	json_decref(fx);
}

/* A sequence gets the same logits alone and inside a batch whose steps mix its
 * prefill chunks with other sequences' decodes; and decoding with the KV cache
 * gives the logits of recomputing the whole sequence from scratch. */
Test(engine, batched_equals_single_and_cache_equals_recompute, .timeout = 120)
{
	json_t *fx = th_fixture("plain_tiny_s1.json");
	json_t *runs = json_object_get(fx, "runs");
	int na, nb;
	int32_t *a = fx_input_ids(json_object_get(runs, "A"), &na);
	int32_t *b = fx_input_ids(json_object_get(runs, "B"), &nb);
	struct env v = { 0 };
	struct cm_err err = { 0 };

	/* A alone, 12 tokens greedy */
	env_open(&v, -1, NULL);
	struct rows alone = { 0 };
	struct wk_request ra = req_of(1, a, na, 12, &alone);
	cr_assert_eq(wk_engine_add(v.e, &ra, &err), CM_OK);
	int32_t gen[16];
	cr_assert_eq(drain(v.e, &v.ep, 1, gen, 16, NULL), 12);
	env_close(&v);

	/* A among others, 3-token steps: B arrives first, a sampled request beside */
	struct wk_engine_params ep = wk_engine_default_params();
	ep.max_batch_tokens = 3;
	ep.max_logit_rows = 2;
	ep.block_size = 4;
	env_open(&v, -1, &ep);
	struct rows batched = { 0 };
	struct wk_request rb = req_of(2, b, nb, 5, NULL);
	struct wk_request rs = req_of(3, b, 4, 9, NULL);
	rs.sample.temperature = 0.8f;
	rs.sample.seed = 42;
	ra.ud = &batched;
	cr_assert_eq(wk_engine_add(v.e, &rb, &err), CM_OK);
	cr_assert_eq(wk_engine_add(v.e, &rs, &err), CM_OK);
	cr_assert_eq(wk_engine_add(v.e, &ra, &err), CM_OK);
	int32_t gen2[16];
	cr_assert_eq(drain(v.e, &v.ep, 1, gen2, 16, NULL), 12);
	cr_assert_arr_eq(gen, gen2, sizeof(int32_t) * 12);
	for (int i = 0; i < na + 11; i++) {
		cr_assert_not_null(batched.logits[i]);
		for (int k = 0; k < alone.vocab; k++) {
			float x = alone.logits[i][k], y = batched.logits[i][k];
			cr_assert_leq(fabsf(x - y), 1e-5f * fmaxf(1.0f, fabsf(x)),
				      "position %d id %d: %g alone, %g batched", i, k, x, y);
		}
	}
	env_close(&v);

	/* recompute: the prompt plus the generated tokens as one prompt */
	env_open(&v, -1, NULL);
	int32_t full[64];
	memcpy(full, a, (size_t)na * sizeof(int32_t));
	memcpy(full + na, gen, 11 * sizeof(int32_t));
	struct rows re = { 0 };
	struct wk_request rr = req_of(4, full, na + 11, 0, &re);
	cr_assert_eq(wk_engine_add(v.e, &rr, &err), CM_OK);
	drain(v.e, &v.ep, 4, gen2, 16, NULL);
	for (int i = na; i < na + 11; i++)
		for (int k = 0; k < alone.vocab; k++) {
			float x = alone.logits[i][k], y = re.logits[i][k];
			cr_assert_leq(fabsf(x - y), 1e-5f * fmaxf(1.0f, fabsf(x)),
				      "position %d id %d: %g cached, %g recomputed", i, k, x, y);
		}
	env_close(&v);
	rows_free(&alone);
	rows_free(&batched);
	rows_free(&re);
	free(a);
	free(b);
	th_rmdir(v.dir);
	json_decref(fx);
}

Test(engine, sampling_is_reproducible_and_limits_finish, .timeout = 120)
{
	struct env v = { 0 };
	env_open(&v, -1, NULL);
	int32_t p[] = { 785, 3974, 13876 };
	struct cm_err err = { 0 };
	int32_t x[3][24];
	uint64_t seeds[3] = { 5, 5, 6 };
	for (int i = 0; i < 3; i++) {
		struct wk_request r = req_of(10 + i, p, 3, 24, NULL);
		r.sample = (struct wk_sample_params){ .temperature = 1.5f, .top_p = 0.95f,
						      .top_k = 0, .min_p = 0.0f,
						      .repetition_penalty = 1.1f, .seed = seeds[i] };
		cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK, "%s", err.msg);
		cr_assert_eq(drain(v.e, &v.ep, 10 + i, x[i], 24, NULL), 24);
	}
	cr_assert_arr_eq(x[0], x[1], sizeof(x[0]), "same seed, different tokens");
	cr_assert(memcmp(x[0], x[2], sizeof(x[0])) != 0, "different seeds, same tokens");

	/* top_k = 1 is greedy */
	int32_t g[8], k1[8];
	struct wk_request r = req_of(20, p, 3, 8, NULL);
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK);
	drain(v.e, &v.ep, 20, g, 8, NULL);
	r.id = 21;
	r.sample.temperature = 1.0f;
	r.sample.top_k = 1;
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK);
	drain(v.e, &v.ep, 21, k1, 8, NULL);
	cr_assert_arr_eq(g, k1, sizeof(g));

	/* a stop id ends the request with STOP, the stop token reported */
	r = req_of(22, p, 3, 8, NULL);
	r.stop_ids = &g[2];
	r.n_stop = 1;
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK);
	enum wk_finish fin = 0;
	int32_t s[8];
	int n = drain(v.e, &v.ep, 22, s, 8, &fin);
	cr_assert_eq(fin, WK_FINISH_STOP);
	cr_assert_eq(s[n - 1], g[2]);
	cr_assert_leq(n, 3);

	/* abort while queued and while running */
	r = req_of(23, p, 3, 100, NULL);
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK);
	cr_assert_eq(wk_engine_abort(v.e, 23), CM_OK);
	drain(v.e, &v.ep, 23, s, 8, &fin);
	cr_assert_eq(fin, WK_FINISH_ABORT);
	r.id = 24;
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK);
	struct wk_event ev[64];
	int n_ev;
	wk_engine_step(v.e, ev, 64, &n_ev, &err);
	cr_assert_eq(wk_engine_abort(v.e, 24), CM_OK);
	drain(v.e, &v.ep, 24, s, 8, &fin);
	cr_assert_eq(fin, WK_FINISH_ABORT);
	cr_assert_eq(wk_engine_abort(v.e, 24), CM_ENOENT);
	struct wk_engine_stats st;
	wk_engine_stats(v.e, &st);
	cr_assert_eq(st.kv_blocks_used, 0, "KV blocks leaked: %d", st.kv_blocks_used);
	env_close(&v);
	th_rmdir(v.dir);
}

Test(engine, bad_requests_are_errors)
{
	struct env v = { 0 };
	env_open(&v, -1, NULL);
	struct cm_err err = { 0 };
	int32_t bad[] = { 1, 151936 };
	struct wk_request r = req_of(1, bad, 2, 4, NULL);
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "151936"), "%s", err.msg);
	r = req_of(1, bad, 0, 4, NULL);
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_EINVAL);
	int32_t *big = calloc(100000, sizeof(int32_t));
	r = req_of(1, big, 100000, 4, NULL);
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_ERANGE, "%s", err.msg);
	free(big);
	r = req_of(1, bad, 1, 4, NULL);
	r.sample.top_p = 0;
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_EINVAL);
	cr_assert_not(wk_engine_busy(v.e));
	env_close(&v);

	/* a model folder whose weights lack a tensor */
	char cmd[2200];
	snprintf(cmd, sizeof(cmd),
		 "sed -i 's/\"num_hidden_layers\": 4/\"num_hidden_layers\": 5/' '%s/config.json'",
		 v.dir);
	cr_assert_eq(th_sh(cmd), 0);
	struct kern_cpu_params kp = kern_cpu_default_params();
	v.be = kern_cpu_new(&kp, &err);
	cr_assert_null(wk_model_load(v.dir, v.be, &err));
	cr_assert(strstr(err.msg, "model.layers.4"), "%s", err.msg);
	kern_backend_free(v.be);
	th_rmdir(v.dir);
}

#if !defined(__SANITIZE_ADDRESS__)
/* Steady-state decoding allocates nothing (malloc statistics unchanged). */
Test(engine, decode_loop_does_not_allocate, .timeout = 120)
{
	struct env v = { 0 };
	env_open(&v, -1, NULL);
	int32_t p[] = { 785, 3974, 13876 };
	struct cm_err err = { 0 };
	struct wk_request r = req_of(1, p, 3, 40, NULL);
	r.sample.temperature = 0.7f;
	r.sample.top_k = 40;
	cr_assert_eq(wk_engine_add(v.e, &r, &err), CM_OK);
	struct wk_event ev[64];
	int n_ev;
	for (int i = 0; i < 5; i++)
		wk_engine_step(v.e, ev, 64, &n_ev, &err);
	struct mallinfo2 before = mallinfo2();
	for (int i = 0; i < 20; i++)
		wk_engine_step(v.e, ev, 64, &n_ev, &err);
	struct mallinfo2 after = mallinfo2();
	cr_assert_eq(after.uordblks, before.uordblks, "heap grew by %zd bytes",
		     (ssize_t)(after.uordblks - before.uordblks));
	cr_assert_eq(after.hblkhd, before.hblkhd);
	env_close(&v);
	th_rmdir(v.dir);
}
#endif
