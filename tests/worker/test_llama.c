/* The Llama path (no q/k norms, Llama 3 rope scaling) and the Qwen3 path against
 * a naive float64 forward written here from the Hugging Face definitions, on
 * the generated tiny model's weights. */
#include "../helpers.h"
#include "kernels/kern.h"
#include "model/md.h"
#include "worker/wk.h"

#include <math.h>
#include <string.h>

#define NTOK 24

static double w_at(const struct md_tensor *t, size_t i)
{
	uint16_t h;
	memcpy(&h, (const char *)t->data + 2 * i, 2);
	uint32_t bits = (uint32_t)h << 16;
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

static const struct md_tensor *W(const struct md_weights *w, const char *fmt, int l)
{
	char name[128];
	snprintf(name, sizeof(name), fmt, l);
	const struct md_tensor *t = md_weights_get(w, name);
	cr_assert_not_null(t, "%s", name);
	cr_assert_eq(t->dtype, MD_DTYPE_BF16);
	return t;
}

/* y[rows] = W[rows][cols] . x[cols] */
static void mv(const struct md_tensor *t, const double *x, double *y)
{
	int64_t rows = t->shape[0], cols = t->shape[1];
	for (int64_t r = 0; r < rows; r++) {
		double s = 0;
		for (int64_t c = 0; c < cols; c++)
			s += w_at(t, (size_t)(r * cols + c)) * x[c];
		y[r] = s;
	}
}

static void rms(double *x, int n, const struct md_tensor *w, double eps)
{
	double ss = 0;
	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	double k = 1 / sqrt(ss / n + eps);
	for (int i = 0; i < n; i++)
		x[i] = x[i] * k * w_at(w, (size_t)i);
}

/* HF _compute_llama3_parameters, or plain rope when factor is 0. */
static void inv_freqs(const struct md_config *c, double *f)
{
	int hd = c->head_dim;
	for (int j = 0; j < hd / 2; j++) {
		double inv = pow(c->rope_theta, -(2.0 * j) / hd);
		if (c->rope_scaling == MD_ROPE_LLAMA3) {
			double lo = c->rope_orig_max_pos / c->rope_low_freq_factor;
			double hi = c->rope_orig_max_pos / c->rope_high_freq_factor;
			double wl = 2 * M_PI / inv;
			double scaled = wl > lo ? inv / c->rope_factor : inv;
			double sm = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
				    (c->rope_high_freq_factor - c->rope_low_freq_factor);
			if (!(wl < hi) && !(wl > lo))
				scaled = (1 - sm) * scaled / c->rope_factor + sm * scaled;
			inv = scaled;
		}
		f[j] = inv;
	}
}

static void rope(double *v, int hd, int pos, const double *f)
{
	for (int j = 0; j < hd / 2; j++) {
		double a = pos * f[j], c = cos(a), s = sin(a);
		double x0 = v[j], x1 = v[j + hd / 2];
		v[j] = x0 * c - x1 * s;
		v[j + hd / 2] = x1 * c + x0 * s;
	}
}

/* logits[vocab] of the last of n tokens. */
static void reference(const struct md_config *c, const struct md_weights *w, const int32_t *ids,
		      int n, double *logits)
{
	int d = c->hidden, hd = c->head_dim, nh = c->n_head, nkv = c->n_kv_head;
	int ff = c->intermediate;
	double(*x)[256] = calloc((size_t)n, sizeof(*x));
	double(*K)[128 * 8] = calloc((size_t)n, sizeof(*K));
	double(*V)[128 * 8] = calloc((size_t)n, sizeof(*V));
	double *h = calloc(4096, sizeof(double)), *q = calloc(4096, sizeof(double));
	double *att = calloc(4096, sizeof(double)), *g = calloc(4096, sizeof(double));
	double *u = calloc(4096, sizeof(double)), *o = calloc(4096, sizeof(double));
	double f[64], sc[NTOK];
	cr_assert_leq(d, 256);
	inv_freqs(c, f);
	const struct md_tensor *emb = md_weights_get(w, "model.embed_tokens.weight");
	for (int t = 0; t < n; t++)
		for (int i = 0; i < d; i++)
			x[t][i] = w_at(emb, (size_t)ids[t] * d + i);
	for (int l = 0; l < c->n_layer; l++) {
		for (int t = 0; t < n; t++) { /* K, V of every token */
			memcpy(h, x[t], sizeof(double) * d);
			rms(h, d, W(w, "model.layers.%d.input_layernorm.weight", l), c->rms_eps);
			mv(W(w, "model.layers.%d.self_attn.k_proj.weight", l), h, K[t]);
			mv(W(w, "model.layers.%d.self_attn.v_proj.weight", l), h, V[t]);
			for (int k = 0; k < nkv; k++) {
				if (c->arch == MD_ARCH_QWEN3)
					rms(K[t] + k * hd, hd,
					    W(w, "model.layers.%d.self_attn.k_norm.weight", l),
					    c->rms_eps);
				rope(K[t] + k * hd, hd, t, f);
			}
		}
		/* each token's attention over K, V of the layer input, then its MLP;
		 * updating x[t] touches no other token's inputs */
		for (int t = 0; t < n; t++) {
			memcpy(h, x[t], sizeof(double) * d);
			rms(h, d, W(w, "model.layers.%d.input_layernorm.weight", l), c->rms_eps);
			mv(W(w, "model.layers.%d.self_attn.q_proj.weight", l), h, q);
			for (int hh = 0; hh < nh; hh++) {
				double *qh = q + hh * hd;
				int kvh = hh / (nh / nkv);
				if (c->arch == MD_ARCH_QWEN3)
					rms(qh, hd, W(w, "model.layers.%d.self_attn.q_norm.weight", l),
					    c->rms_eps);
				rope(qh, hd, t, f);
				double mx = -1e300, z = 0;
				for (int s = 0; s <= t; s++) {
					double dot = 0;
					for (int i = 0; i < hd; i++)
						dot += qh[i] * K[s][kvh * hd + i];
					sc[s] = dot / sqrt(hd);
					mx = fmax(mx, sc[s]);
				}
				for (int s = 0; s <= t; s++)
					z += sc[s] = exp(sc[s] - mx);
				for (int i = 0; i < hd; i++) {
					double a = 0;
					for (int s = 0; s <= t; s++)
						a += sc[s] / z * V[s][kvh * hd + i];
					att[hh * hd + i] = a;
				}
			}
			mv(W(w, "model.layers.%d.self_attn.o_proj.weight", l), att, o);
			for (int i = 0; i < d; i++)
				x[t][i] += o[i];
			memcpy(h, x[t], sizeof(double) * d);
			rms(h, d, W(w, "model.layers.%d.post_attention_layernorm.weight", l),
			    c->rms_eps);
			mv(W(w, "model.layers.%d.mlp.gate_proj.weight", l), h, g);
			mv(W(w, "model.layers.%d.mlp.up_proj.weight", l), h, u);
			for (int i = 0; i < ff; i++)
				g[i] = g[i] / (1 + exp(-g[i])) * u[i];
			mv(W(w, "model.layers.%d.mlp.down_proj.weight", l), g, o);
			for (int i = 0; i < d; i++)
				x[t][i] += o[i];
		}
	}
	memcpy(h, x[n - 1], sizeof(double) * d);
	rms(h, d, md_weights_get(w, "model.norm.weight"), c->rms_eps);
	mv(emb, h, logits);
	free(x);
	free(K);
	free(V);
	free(h);
	free(q);
	free(att);
	free(g);
	free(u);
	free(o);
}

static void on_logits(void *ud, uint64_t id, int32_t index, const float *lg, int32_t vocab)
{
	(void)id;
	if (index == NTOK - 1)
		memcpy(ud, lg, (size_t)vocab * sizeof(float));
}

/* Engine logits of the last prompt token. */
static void engine_last(const char *dir, const int32_t *ids, float *out)
{
	struct cm_err err = { 0 };
	struct kern_cpu_params kp = kern_cpu_default_params();
	struct kern_backend *be = kern_cpu_new(&kp, &err);
	struct wk_model *m = wk_model_load(dir, be, &err);
	cr_assert_not_null(m, "%s", err.msg);
	struct wk_engine_params ep = wk_engine_default_params();
	struct wk_engine *e = wk_engine_new(m, &ep, &err);
	cr_assert_not_null(e, "%s", err.msg);
	struct wk_request r = { .id = 1, .prompt = ids, .n_prompt = NTOK, .max_tokens = 0,
				.sample = wk_sample_default_params(), .prompt_logits = true,
				.on_logits = on_logits, .ud = out };
	cr_assert_eq(wk_engine_add(e, &r, &err), CM_OK, "%s", err.msg);
	struct wk_event ev[64];
	int n_ev;
	while (wk_engine_busy(e))
		cr_assert_eq(wk_engine_step(e, ev, 64, &n_ev, &err), CM_OK);
	wk_engine_free(e);
	wk_model_free(m);
	kern_backend_free(be);
}

static double max_diff(const float *a, const double *b, int n)
{
	double m = 0;
	for (int i = 0; i < n; i++)
		m = fmax(m, fabs(a[i] - b[i]));
	return m;
}

static void check(const char *dir, bool scaled_sensitive)
{
	struct cm_err err = { 0 };
	struct md_config c;
	cr_assert_eq(md_config_load(dir, &c, &err), CM_OK, "%s", err.msg);
	struct md_weights *w = md_weights_open(dir, &err);
	cr_assert_not_null(w, "%s", err.msg);
	int32_t ids[NTOK];
	for (int i = 0; i < NTOK; i++)
		ids[i] = (int32_t)((i * 7919 + 13) % 151000);
	double *ref = malloc(sizeof(double) * (size_t)c.vocab);
	float *got = malloc(sizeof(float) * (size_t)c.vocab);
	reference(&c, w, ids, NTOK, ref);
	engine_last(dir, ids, got);
	double d = max_diff(got, ref, c.vocab);
	cr_assert_leq(d, 1e-3, "%s: engine vs float64 reference: max |d| %g", dir, d);
	if (scaled_sensitive) {
		/* the check can fail: the same model without rope scaling differs */
		c.rope_scaling = MD_ROPE_NONE;
		reference(&c, w, ids, NTOK, ref);
		cr_assert_gt(max_diff(got, ref, c.vocab), 1e-2, "rope scaling has no effect here");
	}
	free(ref);
	free(got);
	md_weights_free(w);
}

Test(llama, qwen3_engine_matches_float64_reference, .timeout = 300)
{
	char dir[1024];
	th_gen_model(dir, sizeof(dir), "tiny", 2, false);
	check(dir, false);
	th_rmdir(dir);
}

/* The tiny model's weights read as a Llama 3.1-style model: no q/k norms and
 * llama3 rope scaling with a short original context, so that low-, medium- and
 * high-frequency bands all occur at these positions. */
Test(llama, llama_engine_matches_float64_reference, .timeout = 300)
{
	char dir[1024];
	th_gen_model(dir, sizeof(dir), "tiny", 3, false);
	char path[1100];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	json_error_t je;
	json_t *cfg = json_load_file(path, 0, &je);
	cr_assert_not_null(cfg);
	json_object_set_new(cfg, "architectures", json_pack("[s]", "LlamaForCausalLM"));
	json_object_set_new(cfg, "model_type", json_string("llama"));
	json_object_set_new(cfg, "rope_theta", json_real(500000.0));
	json_object_set_new(cfg, "rope_scaling",
			    json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor",
				      8.0, "low_freq_factor", 1.0, "high_freq_factor", 4.0,
				      "original_max_position_embeddings", 64));
	cr_assert_eq(json_dump_file(cfg, path, JSON_INDENT(2)), 0);
	json_decref(cfg);
	check(dir, true);
	th_rmdir(dir);
}
