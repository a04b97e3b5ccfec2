/* tandem bench: speed measured against this machine's own limits.
 *
 * `tandem bench [MODE] FLAGS`: MODE names a row of bench_modes below (default
 * "engine"); adding a mode is one row and one function taking the parsed options
 * and the arguments after MODE.
 *
 * The engine mode loads a model as `tandem generate` does (--quantize, --mmap),
 * measures the machine with the backend's micro-benchmarks (read bandwidth over a
 * buffer 16x the L3 of this class of machine; bf16, f32 and int8 multiply-add
 * peaks on every thread), then times the engine itself:
 *   prefill: one request of --prompt-tokens random ids, in chunks of up to
 *     BENCH_CHUNK tokens, up to its first sampled token (so one LM-head row), with
 *     bf16 activations (when the CPU has AVX512_BF16) and with f32 activations;
 *   decode: one sequence, --gen-tokens greedy steps after a one-token prompt (the
 *     context stays short, as in llama-bench's "tg" test);
 *   batched decode: --batch such sequences in every step.
 * Each is one warm-up then --runs timed runs; medians are reported. The read
 * bandwidth is measured again right before every timed run (on a shared machine it
 * drifts), and its roofline uses the median of all those passes. See
 * docs/performance.md for the rooflines and what the fractions mean.
 */
#include "kernels/kern.h"
#include "model/md.h"
#include "tools.h"
#include "worker/wk.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_READ_BYTES   (512u << 20) /* read-bandwidth buffer: 16x a 32 MiB L3 */
#define BENCH_READ_PASSES  3	       /* passes per bandwidth measurement */
#define BENCH_PEAK_SECONDS 0.1	       /* per peak measurement; the best of 3 is kept */
#define BENCH_CHUNK	   512	       /* prefill tokens per engine step */
/* The figures for this class of machine (2 Zen 5 cores), printed beside
 * ours so that both rooflines can be read. */
#define QUOTED_READ_GBPS   85.0
#define QUOTED_BF16_GFLOPS 1020.0
#define QUOTED_F32_GFLOPS  560.0

struct bench_mode {
	const char *name;
	int (*run)(const struct tandem_opts *o, int argc, char **argv);
	const char *summary;
};

static int bench_engine(const struct tandem_opts *o, int argc, char **argv);

static const struct bench_mode bench_modes[] = {
	{ "engine", bench_engine,
	  "prefill, decode and batched decode of one model against the measured rooflines" },
	{ "streaming", tool_bench_streaming,
	  "streaming vs batch thinking: tokens waited and time to the answer (bench_streaming.c)" },
	{ "serving", tool_bench_serving,
	  "a running cluster under load: time to first thought, inter-token latency, time to the "
	  "final answer (bench_serving.c)" },
	{ "scheduler", tool_bench_sched,
	  "the scheduler against round robin and least requests in the plan simulator "
	  "(bench_sched.c)" },
};

int tool_bench(const struct tandem_opts *o, int argc, char **argv)
{
	const char *name = argc > 0 ? argv[0] : "engine";
	for (size_t i = 0; i < CM_ARRAY_LEN(bench_modes); i++)
		if (!strcmp(name, bench_modes[i].name))
			return bench_modes[i].run(o, argc > 0 ? argc - 1 : 0, argv + (argc > 0));
	fprintf(stderr, "tandem bench: unknown mode '%s'; modes:\n", name);
	for (size_t i = 0; i < CM_ARRAY_LEN(bench_modes); i++)
		fprintf(stderr, "  %-10s %s\n", bench_modes[i].name, bench_modes[i].summary);
	return 1;
}

enum wk_weights tool_weights(const struct tandem_opts *o)
{
	return !strcmp(o->quantize, "q8") ? WK_WEIGHTS_Q8
	       : o->mmap_weights	  ? WK_WEIGHTS_MAPPED
					  : WK_WEIGHTS_COPY;
}

int tool_model_weights(const struct tandem_opts *o, struct wk_model *m, struct cm_err *err)
{
	return wk_model_convert(m, tool_weights(o), err);
}

int tool_activations(const struct tandem_opts *o, bool auto_bf16, bool *bf16, struct cm_err *err)
{
	const bool has = kern_cpu_detect_isa() >= KERN_ISA_AVX512BF16;
	*bf16 = !strcmp(o->activations, "bf16") || (auto_bf16 && !strcmp(o->activations, "auto"));
	if (*bf16 && !has && strcmp(o->activations, "auto"))
		return cm_err_set(err, CM_EUNSUPPORTED, "--activations bf16 needs AVX512_BF16");
	*bf16 = *bf16 && has;
	return CM_OK;
}

/* ---- engine mode --------------------------------------------------------- */

/* One measurement: the median speed of its runs, and the median of the limit
 * that bounds it (read GB/s for decode, peak GFLOP/s for prefill) measured right
 * before and after each run. */
struct bench_meas {
	double tok_s;
	double limit;
};

struct bench {
	const struct tandem_opts *o;
	struct kern_backend *be;      /* the activations asked for */
	struct kern_backend *be_alt;  /* the other activation type, for prefill; or NULL */
	struct wk_model *m;
	struct wk_model *m_alt;       /* the weights as be_alt keeps them; with be_alt */
	void *rbuf;                   /* [BENCH_READ_BYTES] */
	uint64_t rng;
	int32_t *ids;                 /* [max(prompt, batch)] */
	double read_min, read_max;    /* over every pass */
	/* results */
	double bf16_gflops, f32_gflops, int8_gops;
	double bytes_tok;             /* weight bytes read per decoded token */
	double flops_tok;             /* prefill FLOPs per prompt token */
	struct bench_meas prefill, prefill_alt, decode, batch_decode;
	bool bf16;                    /* b->be has bf16 activations */
};

static uint64_t bench_rand(struct bench *b)
{
	uint64_t x = b->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return b->rng = x;
}

/* The limit of a measurement, measured now into lim (advancing *n):
 * BENCH_READ_PASSES read passes (peak < 0), or one short run of a peak loop. */
static void bench_limit_point(struct bench *b, int peak, double *lim, int *n)
{
	if (peak >= 0) {
		lim[(*n)++] = kern_bench_peak(b->be, (enum kern_peak)peak, BENCH_PEAK_SECONDS / 2);
		return;
	}
	for (int i = 0; i < BENCH_READ_PASSES; i++) {
		double g = kern_bench_read(b->be, b->rbuf, BENCH_READ_BYTES);
		b->read_min = b->read_min > 0 ? CM_MIN(b->read_min, g) : g;
		b->read_max = CM_MAX(b->read_max, g);
		lim[(*n)++] = g;
	}
}

static double best_peak(struct kern_backend *be, enum kern_peak which)
{
	double best = 0;
	for (int i = 0; i < 3; i++)
		best = CM_MAX(best, kern_bench_peak(be, which, BENCH_PEAK_SECONDS));
	return best;
}

/* An engine for the runs of one measurement: room for max_seqs sequences of
 * tokens_each tokens, steps of up to chunk tokens. */
static struct wk_engine *bench_engine_new(struct wk_model *m, int32_t max_seqs,
					  int32_t tokens_each, int32_t chunk, struct cm_err *err)
{
	struct wk_engine_params ep = wk_engine_default_params();
	ep.max_seqs = max_seqs;
	ep.max_batch_tokens = CM_MAX(chunk, max_seqs);
	ep.max_logit_rows = CM_MIN(ep.max_logit_rows, ep.max_batch_tokens);
	ep.kv_tokens = max_seqs * (tokens_each + ep.block_size);
	return wk_engine_new(m, &ep, err);
}

/* Adds n requests (prompt_len ids each from b->ids, greedy, max_tokens each) and
 * steps until they finish. *secs: from the start, or (skip_first) from the end of
 * the first step that samples; *tokens: tokens sampled in that time. */
static int bench_requests(struct bench *b, struct wk_engine *e, int32_t n, int32_t prompt_len,
			  int32_t max_tokens, bool skip_first, double *secs, int64_t *tokens,
			  struct cm_err *err)
{
	struct wk_event ev[3 * 256];
	int rc;
	for (int32_t i = 0; i < n; i++) {
		struct wk_request r = {
			.id = (uint64_t)i + 1,
			.prompt = b->ids + (size_t)i * (size_t)prompt_len,
			.n_prompt = prompt_len,
			.max_tokens = max_tokens,
			.sample = wk_sample_default_params(),
		};
		if ((rc = wk_engine_add(e, &r, err)) < 0)
			return rc;
	}
	int64_t t0 = cm_time_us(), toks = 0;
	bool started = !skip_first;
	while (wk_engine_busy(e)) {
		int n_ev;
		if ((rc = wk_engine_step(e, ev, (int)CM_ARRAY_LEN(ev), &n_ev, err)) < 0)
			return rc;
		int got = 0;
		for (int i = 0; i < n_ev; i++)
			got += ev[i].token >= 0;
		if (!started && got) {
			started = true;
			t0 = cm_time_us();
			continue;
		}
		toks += got;
	}
	*secs = (double)(cm_time_us() - t0) * 1e-6;
	*tokens = toks;
	return CM_OK;
}

/* One measurement: prefill (one request of the prompt length, timed whole, prompt
 * tokens counted; bounded by peak) or decode (n requests of one token each; the
 * steps after the first timed, sampled tokens counted; bounded by reading). One
 * warm-up, then the timed runs. */
static int bench_measure(struct bench *b, struct wk_model *m, bool prefill, int32_t n,
			 enum kern_peak peak, struct bench_meas *out, struct cm_err *err)
{
	const int32_t P = (int32_t)b->o->prompt_tokens, G = (int32_t)b->o->gen_tokens;
	const int runs = (int)b->o->runs, kind = prefill ? (int)peak : -1;
	int rc = CM_OK, n_reads = 0;
	double *v = calloc((size_t)runs, sizeof(double));
	double *reads = calloc((size_t)runs * 2 * BENCH_READ_PASSES, sizeof(double));
	struct wk_engine *e = prefill ? bench_engine_new(m, 1, P + 2, CM_MIN(P, BENCH_CHUNK), err)
				      : bench_engine_new(m, n, G + 2, 1, err);
	if (!v || !reads || !e) {
		rc = e ? cm_err_set(err, CM_ENOMEM, "out of memory") : err->code;
		goto out;
	}
	for (int r = -1; r < runs; r++) { /* r = -1: the warm-up */
		int32_t n_ids = prefill ? P : n;
		for (int32_t i = 0; i < n_ids; i++)
			b->ids[i] = (int32_t)(bench_rand(b) % (uint64_t)CM_MIN(m->cfg.vocab, 151643));
		if (r >= 0)
			bench_limit_point(b, kind, reads, &n_reads);
		double secs;
		int64_t toks;
		rc = bench_requests(b, e, prefill ? 1 : n, prefill ? P : 1, prefill ? 1 : G + 1,
				    !prefill, &secs, &toks, err);
		if (rc < 0)
			goto out;
		if (r < 0)
			continue;
		bench_limit_point(b, kind, reads, &n_reads);
		v[r] = (prefill ? (double)P : (double)toks) / CM_MAX(secs, 1e-9);
		int per = prefill ? 1 : BENCH_READ_PASSES;
		CM_LOG_INFO("bench %s x%d run %d: %.2f tok/s; limit before %.1f, after %.1f (%s)",
			    prefill ? "prefill" : "decode", n, r, v[r], reads[n_reads - 2 * per],
			    reads[n_reads - 1], prefill ? "GFLOP/s" : "GB/s");
	}
	out->tok_s = cm_median(v, (size_t)runs);
	out->limit = cm_median(reads, (size_t)n_reads);
out:
	wk_engine_free(e);
	free(reads);
	free(v);
	return rc;
}

/* Bytes of every matrix read once per decoded token (the LM head included). */
static double model_bytes(const struct wk_model *m)
{
	double s = (double)kern_mat_bytes(&m->lm_head);
	if (m->embed.data != m->lm_head.data)
		s += (double)m->cfg.hidden * (double)kern_dtype_size(m->embed.dtype);
	for (int l = 0; l < m->cfg.n_layer; l++) {
		const struct wk_layer *ly = &m->layers[l];
		const struct kern_mat *mats[] = { &ly->wq,     &ly->wk,	  &ly->wv,    &ly->wo,
						  &ly->w_gate, &ly->w_up, &ly->w_down };
		for (size_t i = 0; i < CM_ARRAY_LEN(mats); i++)
			s += (double)kern_mat_bytes(mats[i]);
	}
	return s;
}

/* FLOPs per prompt token of a prefill of P tokens: 2 per multiply-add of the layer
 * matrices, attention scores and values over each token's causal prefix, and the
 * LM head at the last position only. */
static double prefill_flops(const struct md_config *c, int32_t P)
{
	double d = c->hidden, ff = c->intermediate, hd = c->head_dim;
	double q = c->n_head * hd, kv = c->n_kv_head * hd;
	double layer = d * q * 2 + d * kv * 2 + d * ff * 3;
	double attn = 4.0 * q * ((double)P * (P + 1) / 2) * c->n_layer;
	double total = 2.0 * layer * c->n_layer * P + attn + 2.0 * c->vocab * d;
	return total / P;
}

/* The peak loop that bounds a prefill with these activations on these weights. */
static enum kern_peak prefill_peak_kind(const struct bench *b, bool bf16_act)
{
	if (b->m->lm_head.dtype == KERN_Q8_0)
		return KERN_PEAK_INT8;
	return bf16_act ? KERN_PEAK_BF16 : KERN_PEAK_F32;
}

/* Replaces the up-front figure of that peak by the one measured around the runs. */
static void bench_set_peak(struct bench *b, bool bf16_act, double v)
{
	switch (prefill_peak_kind(b, bf16_act)) {
	case KERN_PEAK_INT8:
		b->int8_gops = v;
		break;
	case KERN_PEAK_BF16:
		b->bf16_gflops = v;
		break;
	case KERN_PEAK_F32:
		b->f32_gflops = v;
		break;
	}
}

static int bench_run(struct bench *b, struct cm_err *err)
{
	const struct tandem_opts *o = b->o;
	int rc;
	b->bf16_gflops = best_peak(b->be, KERN_PEAK_BF16);
	b->f32_gflops = best_peak(b->be, KERN_PEAK_F32);
	b->int8_gops = best_peak(b->be, KERN_PEAK_INT8);
	/* distinct pages (untouched ones would all map the one zero page, and stay
	 * in cache), then one pass to warm the TLB */
	memset(b->rbuf, 0x5a, BENCH_READ_BYTES);
	kern_bench_read(b->be, b->rbuf, BENCH_READ_BYTES);
	b->bytes_tok = model_bytes(b->m);
	b->flops_tok = prefill_flops(&b->m->cfg, (int32_t)o->prompt_tokens);

	if ((rc = bench_measure(b, b->m, true, 1, prefill_peak_kind(b, b->bf16), &b->prefill,
				err)) < 0)
		return rc;
	bench_set_peak(b, b->bf16, b->prefill.limit);
	if (b->m_alt) {
		rc = bench_measure(b, b->m_alt, true, 1, prefill_peak_kind(b, !b->bf16),
				   &b->prefill_alt, err);
		if (rc < 0)
			return rc;
		bench_set_peak(b, !b->bf16, b->prefill_alt.limit);
	}
	if ((rc = bench_measure(b, b->m, false, 1, 0, &b->decode, err)) < 0 ||
	    (rc = bench_measure(b, b->m, false, (int32_t)o->batch, 0, &b->batch_decode, err)) < 0)
		return rc;
	return CM_OK;
}

/* The peak that bounds the prefill of this run's weights and activations. */
static double prefill_peak(const struct bench *b, bool bf16_act, double *quoted)
{
	if (b->m->lm_head.dtype == KERN_Q8_0) {
		*quoted = 0;
		return b->int8_gops;
	}
	*quoted = bf16_act ? QUOTED_BF16_GFLOPS : QUOTED_F32_GFLOPS;
	return bf16_act ? b->bf16_gflops : b->f32_gflops;
}

static double frac(double v, double ceiling)
{
	return ceiling > 0 ? v / ceiling : 0.0;
}

/* The numbers both outputs print. */
struct bench_view {
	double pre_roof, pre_roof_q;     /* tok/s: measured and quoted peaks */
	double alt_roof, alt_roof_q;
	double dec_roof, dec_roof_q;
};

static struct bench_view bench_view_of(const struct bench *b, bool bf16)
{
	struct bench_view w;
	double qa, qb, pa = prefill_peak(b, bf16, &qa), pb = prefill_peak(b, !bf16, &qb);
	w.pre_roof = pa * 1e9 / b->flops_tok;
	w.pre_roof_q = qa * 1e9 / b->flops_tok;
	w.alt_roof = pb * 1e9 / b->flops_tok;
	w.alt_roof_q = qb * 1e9 / b->flops_tok;
	w.dec_roof = b->decode.limit * 1e9 / b->bytes_tok;
	w.dec_roof_q = QUOTED_READ_GBPS * 1e9 / b->bytes_tok;
	return w;
}

static void bench_print(const struct bench *b, const char *weights, bool bf16)
{
	const struct tandem_opts *o = b->o;
	const struct bench_view w = bench_view_of(b, bf16);
	const bool q8 = b->m->lm_head.dtype == KERN_Q8_0;
	const char *act = q8 ? "int8" : bf16 ? "bf16" : "f32", *alt = bf16 ? "f32" : "bf16";
	char quoted[32] = "-";
	if (w.pre_roof_q > 0)
		snprintf(quoted, sizeof(quoted), "%.3f", frac(b->prefill.tok_s, w.pre_roof_q));
	printf("tandem bench engine: %s, %s, weights %s (%.3f GB read per token)\n", o->model,
	       kern_backend_name(b->be), weights, b->bytes_tok * 1e-9);
	printf("machine: read %.1f GB/s (median around the decode runs; all passes %.1f..%.1f), "
	       "bf16 %.0f GFLOP/s, f32 %.0f GFLOP/s, int8 %.0f GOP/s\n",
	       b->decode.limit, b->read_min, b->read_max, b->bf16_gflops, b->f32_gflops,
	       b->int8_gops);
	printf("%-32s %9s %10s %7s %14s\n", "", "tok/s", "roofline", "frac", "frac(quoted)");
	printf("prefill %-5lld (%-4s activations)  %9.1f %10.1f %7.3f %14s\n",
	       (long long)o->prompt_tokens, act, b->prefill.tok_s, w.pre_roof,
	       frac(b->prefill.tok_s, w.pre_roof), quoted);
	if (b->be_alt)
		printf("prefill %-5lld (%-4s activations)  %9.1f %10.1f %7.3f %14.3f\n",
		       (long long)o->prompt_tokens, alt, b->prefill_alt.tok_s, w.alt_roof,
		       frac(b->prefill_alt.tok_s, w.alt_roof),
		       frac(b->prefill_alt.tok_s, w.alt_roof_q));
	printf("decode, 1 sequence               %9.1f %10.1f %7.3f %14.3f\n", b->decode.tok_s,
	       w.dec_roof, frac(b->decode.tok_s, w.dec_roof), frac(b->decode.tok_s, w.dec_roof_q));
	printf("decode, %-3lld sequences            %9.1f %29s x%.2f of 1 sequence\n",
	       (long long)o->batch, b->batch_decode.tok_s, "",
	       frac(b->batch_decode.tok_s, b->decode.tok_s));
}

static void set_real(json_t *j, const char *key, double v)
{
	json_object_set_new(j, key, json_real(v));
}

/* A fraction of a quoted ceiling, or null where the issue quotes none (int8). */
static void set_quoted(json_t *j, const char *key, double v, double ceiling)
{
	json_object_set_new(j, key, ceiling > 0 ? json_real(v / ceiling) : json_null());
}

static json_t *bench_json(const struct bench *b, const char *weights, bool bf16)
{
	const struct tandem_opts *o = b->o;
	const struct bench_view w = bench_view_of(b, bf16);
	json_t *j = json_object();
	json_object_set_new(j, "mode", json_string("engine"));
	json_object_set_new(j, "model", json_string(o->model));
	json_object_set_new(j, "backend", json_string(kern_backend_name(b->be)));
	json_object_set_new(j, "threads", json_integer(kern_backend_threads(b->be)));
	json_object_set_new(j, "weights", json_string(weights));
	json_object_set_new(j, "activations",
			    json_string(b->m->lm_head.dtype == KERN_Q8_0 ? "int8"
					: bf16				  ? "bf16"
									  : "f32"));
	json_object_set_new(j, "prompt_tokens", json_integer(o->prompt_tokens));
	json_object_set_new(j, "gen_tokens", json_integer(o->gen_tokens));
	json_object_set_new(j, "batch", json_integer(o->batch));
	json_object_set_new(j, "runs", json_integer(o->runs));
	set_real(j, "read_gbps", b->decode.limit);
	set_real(j, "read_gbps_min", b->read_min);
	set_real(j, "read_gbps_max", b->read_max);
	set_real(j, "bf16_gflops", b->bf16_gflops);
	set_real(j, "f32_gflops", b->f32_gflops);
	set_real(j, "int8_gops", b->int8_gops);
	set_real(j, "weight_bytes_per_token", b->bytes_tok);
	set_real(j, "prefill_flops_per_token", b->flops_tok);
	set_real(j, "prefill_tok_s", b->prefill.tok_s);
	set_real(j, "prefill_roofline_tok_s", w.pre_roof);
	set_real(j, "prefill_roofline_frac", frac(b->prefill.tok_s, w.pre_roof));
	set_quoted(j, "prefill_roofline_frac_quoted", b->prefill.tok_s, w.pre_roof_q);
	if (b->be_alt) {
		const char *k = bf16 ? "prefill_f32act" : "prefill_bf16act";
		char key[64];
		snprintf(key, sizeof(key), "%s_tok_s", k);
		set_real(j, key, b->prefill_alt.tok_s);
		snprintf(key, sizeof(key), "%s_roofline_frac", k);
		set_real(j, key, frac(b->prefill_alt.tok_s, w.alt_roof));
		snprintf(key, sizeof(key), "%s_roofline_frac_quoted", k);
		set_quoted(j, key, b->prefill_alt.tok_s, w.alt_roof_q);
	}
	set_real(j, "decode_tok_s", b->decode.tok_s);
	set_real(j, "decode_roofline_tok_s", w.dec_roof);
	set_real(j, "decode_roofline_frac", frac(b->decode.tok_s, w.dec_roof));
	set_real(j, "decode_roofline_frac_quoted", frac(b->decode.tok_s, w.dec_roof_q));
	set_real(j, "batch_decode_tok_s", b->batch_decode.tok_s);
	set_real(j, "batch_decode_ratio", frac(b->batch_decode.tok_s, b->decode.tok_s));
	json_t *qt = json_object();
	set_real(qt, "read_gbps", QUOTED_READ_GBPS);
	set_real(qt, "bf16_gflops", QUOTED_BF16_GFLOPS);
	set_real(qt, "f32_gflops", QUOTED_F32_GFLOPS);
	json_object_set_new(j, "quoted", qt);
	return j;
}

/* The backend for one activation type; prints why when it cannot start. */
static struct kern_backend *bench_backend(const struct tandem_opts *o, bool bf16,
					  struct cm_err *err)
{
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = (int)o->threads;
	kp.bf16_activations = bf16;
	return kern_cpu_new(&kp, err);
}

static int bench_engine(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	struct cm_err err = { 0 };
	struct bench b = { .o = o, .rng = 0x9e3779b97f4a7c15ull };
	int rc = CM_OK;
	if (argc || !o->model) {
		fprintf(stderr, "tandem bench engine: give --model DIR (and no other arguments)\n");
		return 1;
	}
	bool has_bf16 = kern_cpu_detect_isa() >= KERN_ISA_AVX512BF16;
	bool q8 = !strcmp(o->quantize, "q8"), bf16;
	if (tool_activations(o, true, &bf16, &err) < 0) {
		fprintf(stderr, "tandem bench: %s\n", err.msg);
		return 1;
	}
	b.bf16 = bf16;
	const char *weights = wk_weights_name(tool_weights(o));
	b.be = bench_backend(o, bf16, &err);
	if (b.be && has_bf16 && !q8)
		b.be_alt = bench_backend(o, !bf16, &err);
	if (!b.be || (has_bf16 && !q8 && !b.be_alt)) {
		rc = err.code;
		goto out;
	}
	b.m = wk_model_load(o->model, b.be, &err);
	if (!b.m || (rc = tool_model_weights(o, b.m, &err)) < 0) {
		rc = err.code;
		goto out;
	}
	/* its own copy: each backend keeps bf16 weights in its own order */
	if (b.be_alt && (!(b.m_alt = wk_model_load(o->model, b.be_alt, &err)) ||
			 tool_model_weights(o, b.m_alt, &err) < 0)) {
		rc = err.code;
		goto out;
	}
	b.rbuf = kern_alloc(b.be, BENCH_READ_BYTES);
	b.ids = malloc((size_t)CM_MAX(o->prompt_tokens, o->batch) * sizeof(int32_t));
	if (!b.rbuf || !b.ids) {
		rc = cm_err_set(&err, CM_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = bench_run(&b, &err)) < 0)
		goto out;
	if (o->json) {
		json_t *j = bench_json(&b, weights, bf16);
		char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
		if (s)
			printf("%s\n", s);
		free(s);
		json_decref(j);
	} else {
		bench_print(&b, weights, bf16);
	}
out:
	if (b.rbuf)
		kern_free(b.be, b.rbuf);
	free(b.ids);
	wk_model_free(b.m);
	wk_model_free(b.m_alt);
	kern_backend_free(b.be_alt);
	kern_backend_free(b.be);
	if (rc < 0) {
		fprintf(stderr, "tandem bench: %s\n", err.msg);
		return rc == CM_ENOMEM || rc == CM_EINTERNAL ? 2 : 1;
	}
	return 0;
}
