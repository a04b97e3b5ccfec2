/* Loading a model's weights onto a backend and checking them against config.json. */
#include "wk-impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float half_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
	uint32_t bits;
	if (exp == 0) {
		if (man == 0) {
			bits = sign;
		} else { /* subnormal: renormalise */
			exp = 127 - 15 + 1;
			while (!(man & 0x400)) {
				man <<= 1;
				exp--;
			}
			bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
		}
	} else if (exp == 31) {
		bits = sign | 0x7f800000 | (man << 13);
	} else {
		bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
	}
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

float wk__elem_f32(const void *data, enum md_dtype dt, size_t i)
{
	uint16_t h;
	uint32_t bits;
	float f;
	switch (dt) {
	case MD_DTYPE_F32:
		memcpy(&f, (const char *)data + 4 * i, 4);
		return f;
	case MD_DTYPE_F16:
		memcpy(&h, (const char *)data + 2 * i, 2);
		return half_to_f32(h);
	case MD_DTYPE_BF16:
		memcpy(&h, (const char *)data + 2 * i, 2);
		bits = (uint32_t)h << 16;
		memcpy(&f, &bits, 4);
		return f;
	}
	return 0;
}

static enum kern_dtype kern_dtype_of(enum md_dtype dt)
{
	switch (dt) {
	case MD_DTYPE_F16:
		return KERN_F16;
	case MD_DTYPE_BF16:
		return KERN_BF16;
	default:
		return KERN_F32;
	}
}

/* Looks up name with shape [rows][cols] and wraps it as a matrix view. */
static int load_mat(struct wk_model *m, const char *name, int64_t rows, int64_t cols,
		    struct kern_mat *out, struct cm_err *err)
{
	const struct md_tensor *t;
	int64_t dims[2] = { rows, cols };
	int rc = md_weights_expect(m->weights, name, 2, dims, &t, err);
	if (rc < 0)
		return rc;
	out->dtype = kern_dtype_of(t->dtype);
	out->rows = (int32_t)rows;
	out->cols = (int32_t)cols;
	out->data = t->data;
	return CM_OK;
}

/* Looks up a vector of n elements and converts it to f32 (backend memory). */
static int load_vec(struct wk_model *m, const char *name, int64_t n, float **out,
		    struct cm_err *err)
{
	const struct md_tensor *t;
	int rc = md_weights_expect(m->weights, name, 1, &n, &t, err);
	if (rc < 0)
		return rc;
	float *v = kern_alloc(m->be, (size_t)n * sizeof(float));
	if (!v)
		return cm_err_set(err, CM_ENOMEM, "out of memory for %s", name);
	for (int64_t i = 0; i < n; i++)
		v[i] = wk__elem_f32(t->data, t->dtype, (size_t)i);
	*out = v;
	return CM_OK;
}

static int load_layer(struct wk_model *m, int l, struct cm_err *err)
{
	const struct md_config *c = &m->cfg;
	struct wk_layer *ly = &m->layers[l];
	int64_t d = c->hidden, hd = c->head_dim, q = (int64_t)c->n_head * hd;
	int64_t kv = (int64_t)c->n_kv_head * hd, ff = c->intermediate;
	char n[128];
	int rc;
#define NAME(suffix) (snprintf(n, sizeof(n), "model.layers.%d.%s", l, suffix), n)
	if ((rc = load_vec(m, NAME("input_layernorm.weight"), d, &ly->attn_norm, err)) < 0 ||
	    (rc = load_mat(m, NAME("self_attn.q_proj.weight"), q, d, &ly->wq, err)) < 0 ||
	    (rc = load_mat(m, NAME("self_attn.k_proj.weight"), kv, d, &ly->wk, err)) < 0 ||
	    (rc = load_mat(m, NAME("self_attn.v_proj.weight"), kv, d, &ly->wv, err)) < 0 ||
	    (rc = load_mat(m, NAME("self_attn.o_proj.weight"), d, q, &ly->wo, err)) < 0 ||
	    (rc = load_vec(m, NAME("post_attention_layernorm.weight"), d, &ly->mlp_norm, err)) < 0 ||
	    (rc = load_mat(m, NAME("mlp.gate_proj.weight"), ff, d, &ly->w_gate, err)) < 0 ||
	    (rc = load_mat(m, NAME("mlp.up_proj.weight"), ff, d, &ly->w_up, err)) < 0 ||
	    (rc = load_mat(m, NAME("mlp.down_proj.weight"), d, ff, &ly->w_down, err)) < 0)
		return rc;
	if (c->arch == MD_ARCH_QWEN3 &&
	    ((rc = load_vec(m, NAME("self_attn.q_norm.weight"), hd, &ly->q_norm, err)) < 0 ||
	     (rc = load_vec(m, NAME("self_attn.k_norm.weight"), hd, &ly->k_norm, err)) < 0))
		return rc;
	if (c->attention_bias &&
	    ((rc = load_vec(m, NAME("self_attn.q_proj.bias"), q, &ly->bq, err)) < 0 ||
	     (rc = load_vec(m, NAME("self_attn.k_proj.bias"), kv, &ly->bk, err)) < 0 ||
	     (rc = load_vec(m, NAME("self_attn.v_proj.bias"), kv, &ly->bv, err)) < 0))
		return rc;
#undef NAME
	return CM_OK;
}

/* Rotary inverse frequencies, with Llama 3 / linear scaling applied. */
static void rope_init(const struct md_config *c, float *inv_freq)
{
	int half = c->head_dim / 2;
	for (int j = 0; j < half; j++) {
		double f = pow(c->rope_theta, -2.0 * j / c->head_dim);
		if (c->rope_scaling == MD_ROPE_LINEAR) {
			f /= c->rope_factor;
		} else if (c->rope_scaling == MD_ROPE_LLAMA3) {
			double low_wl = c->rope_orig_max_pos / c->rope_low_freq_factor;
			double high_wl = c->rope_orig_max_pos / c->rope_high_freq_factor;
			double wl = 2 * M_PI / f;
			if (wl > low_wl) {
				f /= c->rope_factor;
			} else if (wl >= high_wl) {
				double s = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
					   (c->rope_high_freq_factor - c->rope_low_freq_factor);
				f = (1 - s) * f / c->rope_factor + s * f;
			}
		}
		inv_freq[j] = (float)f;
	}
}

struct wk_model *wk_model_load(const char *dir, struct kern_backend *be, struct cm_err *err)
{
	struct wk_model *m = calloc(1, sizeof(*m));
	if (!m) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	m->be = be;
	if (md_config_load(dir, &m->cfg, err) < 0)
		goto fail;
	m->weights = md_weights_open(dir, err);
	if (!m->weights)
		goto fail;
	const struct md_config *c = &m->cfg;
	m->layers = calloc((size_t)c->n_layer, sizeof(*m->layers));
	m->inv_freq = kern_alloc(be, (size_t)c->head_dim / 2 * sizeof(float));
	if (!m->layers || !m->inv_freq) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		goto fail;
	}
	if (load_mat(m, "model.embed_tokens.weight", c->vocab, c->hidden, &m->embed, err) < 0 ||
	    load_vec(m, "model.norm.weight", c->hidden, &m->final_norm, err) < 0)
		goto fail;
	if (c->tie_embeddings && !md_weights_get(m->weights, "lm_head.weight")) {
		m->lm_head = m->embed;
	} else if (load_mat(m, "lm_head.weight", c->vocab, c->hidden, &m->lm_head, err) < 0) {
		goto fail;
	}
	for (int l = 0; l < c->n_layer; l++)
		if (load_layer(m, l, err) < 0)
			goto fail;
	rope_init(c, m->inv_freq);
	CM_LOG_INFO("model %s: %s, %d layers, d=%d, %zu tensors", dir, c->model_type, c->n_layer,
		    c->hidden, md_weights_count(m->weights));
	return m;
fail:
	wk_model_free(m);
	return NULL;
}

void wk_model_free(struct wk_model *m)
{
	if (!m)
		return;
	if (m->layers) {
		for (int l = 0; l < m->cfg.n_layer; l++) {
			struct wk_layer *ly = &m->layers[l];
			float *vecs[] = { ly->attn_norm, ly->mlp_norm, ly->q_norm, ly->k_norm,
					  ly->bq,        ly->bk,       ly->bv };
			for (size_t i = 0; i < CM_ARRAY_LEN(vecs); i++)
				kern_free(m->be, vecs[i]);
		}
		free(m->layers);
	}
	kern_free(m->be, m->final_norm);
	kern_free(m->be, m->inv_freq);
	kern_free(m->be, m->wbuf);
	md_weights_free(m->weights);
	free(m);
}

/* Every weight matrix of m that wk_model_convert moves: the LM head, then each
 * layer's seven. Returns the count (at most 1 + 7 n_layer). */
static int model_mats(struct wk_model *m, struct kern_mat **out)
{
	int n = 0;
	out[n++] = &m->lm_head;
	for (int l = 0; l < m->cfg.n_layer; l++) {
		struct wk_layer *ly = &m->layers[l];
		struct kern_mat *mats[] = { &ly->wq,	 &ly->wk,   &ly->wv,	&ly->wo,
					    &ly->w_gate, &ly->w_up, &ly->w_down };
		for (size_t i = 0; i < CM_ARRAY_LEN(mats); i++)
			out[n++] = mats[i];
	}
	return n;
}

const char *wk_weights_name(enum wk_weights how)
{
	static const char *const names[] = {[WK_WEIGHTS_MAPPED] = "mapped",
					    [WK_WEIGHTS_COPY] = "copied",
					    [WK_WEIGHTS_Q8] = "q8_0"};
	return (unsigned)how < CM_ARRAY_LEN(names) ? names[how] : "?";
}

int wk_model_convert(struct wk_model *m, enum wk_weights how, struct cm_err *err)
{
	if (m->wbuf)
		return cm_err_set(err, CM_EINVAL, "model weights converted already");
	if (how == WK_WEIGHTS_MAPPED)
		return CM_OK;
	int rc = CM_OK;
	struct kern_mat **src = malloc((size_t)(1 + 7 * m->cfg.n_layer) * sizeof(*src));
	struct kern_mat *dst = malloc((size_t)(1 + 7 * m->cfg.n_layer) * sizeof(*dst));
	if (!src || !dst) {
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
		goto out;
	}
	int n = model_mats(m, src);
	size_t total = 0;
	for (int i = 0; i < n; i++) {
		dst[i] = *src[i];
		dst[i].dtype = how == WK_WEIGHTS_Q8 && src[i]->cols % KERN_Q8_BLOCK == 0
				       ? KERN_Q8_0
				       : kern_weight_dtype(m->be, src[i]->dtype);
		total += (kern_mat_bytes(&dst[i]) + 63) / 64 * 64;
	}
	char *buf = kern_alloc(m->be, total);
	if (!buf) {
		rc = cm_err_set(err, CM_ENOMEM, "out of memory for %zu bytes of weights", total);
		goto out;
	}
	size_t off = 0;
	for (int i = 0; i < n && rc == CM_OK; i++) {
		dst[i].data = buf + off;
		off += (kern_mat_bytes(&dst[i]) + 63) / 64 * 64;
		rc = kern_convert(m->be, src[i], &dst[i], err);
	}
	if (rc < 0) {
		kern_free(m->be, buf);
		goto out;
	}
	bool tied = m->embed.data == m->lm_head.data;
	for (int i = 0; i < n; i++)
		*src[i] = dst[i];
	if (tied && m->lm_head.dtype == m->embed.dtype)
		m->embed = m->lm_head; /* the copy serves the lookups too */
	m->wbuf = buf;
	CM_LOG_INFO("weights: %zu bytes in backend memory%s", total,
		    how == WK_WEIGHTS_Q8			   ? ", q8_0"
		    : m->lm_head.dtype == KERN_BF16_R16 ? ", bf16 in 16-row panels"
							   : "");
out:
	free(src);
	free(dst);
	return rc;
}
