/* The forward pass: one step function per architecture, read top to bottom. */
#include "wk-impl.h"

#include <math.h>
#include <string.h>

int wk__scratch_init(struct wk_scratch *s, struct kern_backend *be, const struct md_config *c,
		     int32_t n_max, struct cm_err *err)
{
	memset(s, 0, sizeof(*s));
	size_t n = (size_t)n_max, d = (size_t)c->hidden, ff = (size_t)c->intermediate;
	size_t q = (size_t)c->n_head * (size_t)c->head_dim;
	size_t kv = (size_t)c->n_kv_head * (size_t)c->head_dim;
	s->n_max = n_max;
	s->x = kern_alloc(be, n * d * sizeof(float));
	s->xn = kern_alloc(be, n * d * sizeof(float));
	s->q = kern_alloc(be, n * q * sizeof(float));
	s->att = kern_alloc(be, n * q * sizeof(float));
	s->k = kern_alloc(be, n * kv * sizeof(float));
	s->v = kern_alloc(be, n * kv * sizeof(float));
	s->gate = kern_alloc(be, n * ff * sizeof(float));
	s->up = kern_alloc(be, n * ff * sizeof(float));
	s->tmp = kern_alloc(be, n * CM_MAX(d, ff) * sizeof(float));
	if (!s->x || !s->xn || !s->q || !s->att || !s->k || !s->v || !s->gate || !s->up ||
	    !s->tmp) {
		wk__scratch_fini(s, be);
		return cm_err_set(err, CM_ENOMEM, "out of memory for activations of %d tokens",
				  n_max);
	}
	return CM_OK;
}

void wk__scratch_fini(struct wk_scratch *s, struct kern_backend *be)
{
	float *bufs[] = { s->x, s->xn, s->q, s->att, s->k, s->v, s->gate, s->up, s->tmp };
	for (size_t i = 0; i < CM_ARRAY_LEN(bufs); i++)
		kern_free(be, bufs[i]);
	memset(s, 0, sizeof(*s));
}

/* y[n][dim] += bias[dim] */
static void add_bias(struct kern_backend *be, float *y, const float *bias, int32_t n, int32_t dim)
{
	for (int32_t t = 0; t < n; t++)
		kern_add(be, y + (size_t)t * dim, bias, 1, dim);
}

/* Self-attention of one layer: x += O(attn(rope(norm(Q)), rope(norm(K)), V)). */
static void attention_block(const struct wk_model *m, int l, struct wk_kv *kv,
			    struct wk_scratch *s, const struct wk_batch *b)
{
	const struct md_config *c = &m->cfg;
	const struct wk_layer *ly = &m->layers[l];
	struct kern_backend *be = m->be;
	int32_t n = b->n, hd = c->head_dim;

	const struct kern_mat *qkv[] = { &ly->wq, &ly->wk, &ly->wv };
	float *qkv_out[] = { s->q, s->k, s->v };

	kern_rmsnorm(be, s->x, ly->attn_norm, (float)c->rms_eps, n, c->hidden, s->xn);
	kern_matmul_n(be, 3, qkv, s->xn, n, qkv_out); /* one pass: docs/performance.md */
	if (ly->bq) {
		add_bias(be, s->q, ly->bq, n, c->n_head * hd);
		add_bias(be, s->k, ly->bk, n, c->n_kv_head * hd);
		add_bias(be, s->v, ly->bv, n, c->n_kv_head * hd);
	}
	if (ly->q_norm) { /* Qwen3: per-head RMSNorm before rotary */
		kern_rmsnorm(be, s->q, ly->q_norm, (float)c->rms_eps, n * c->n_head, hd, s->q);
		kern_rmsnorm(be, s->k, ly->k_norm, (float)c->rms_eps, n * c->n_kv_head, hd, s->k);
	}
	kern_rope(be, s->q, n, c->n_head, hd, b->pos, m->inv_freq);
	kern_rope(be, s->k, n, c->n_kv_head, hd, b->pos, m->inv_freq);
	kern_kv_store(be, &kv->layers[l], s->k, s->v, n, b->slots);

	struct kern_attn_params ap = {
		.kv = &kv->layers[l],
		.n_head = c->n_head,
		.scale = 1.0f / sqrtf((float)hd),
		.n_seg = b->n_seg,
		.segs = b->segs,
		.queries = b->queries,
	};
	kern_attention(be, &ap, s->q, n, s->att);
	kern_matmul(be, &ly->wo, s->att, n, s->tmp);
	kern_add(be, s->x, s->tmp, n, c->hidden);
}

/* SwiGLU MLP of one layer: x += down(silu(gate(norm(x))) * up(norm(x))). */
static void mlp_block(const struct wk_model *m, int l, struct wk_scratch *s, int32_t n)
{
	const struct md_config *c = &m->cfg;
	const struct wk_layer *ly = &m->layers[l];
	struct kern_backend *be = m->be;

	const struct kern_mat *gate_up[] = { &ly->w_gate, &ly->w_up };
	float *gate_up_out[] = { s->gate, s->up };

	kern_rmsnorm(be, s->x, ly->mlp_norm, (float)c->rms_eps, n, c->hidden, s->xn);
	kern_matmul_n(be, 2, gate_up, s->xn, n, gate_up_out);
	kern_swiglu(be, s->gate, s->up, n, c->intermediate, s->gate);
	kern_matmul(be, &ly->w_down, s->gate, n, s->tmp);
	kern_add(be, s->x, s->tmp, n, c->hidden);
}

/* The decoder of Qwen3ForCausalLM and LlamaForCausalLM: pre-norm blocks, GQA,
 * SwiGLU. The two differ only in what the loader found (Qwen3's per-head q/k
 * norms, Llama's optional biases and rope scaling), so they share this step
 * function; an architecture that differs in structure gets its own. */
static void forward_decoder(const struct wk_model *m, struct wk_kv *kv, struct wk_scratch *s,
			    const struct wk_batch *b)
{
	kern_embed(m->be, &m->embed, b->ids, b->n, s->x);
	for (int l = 0; l < m->cfg.n_layer; l++) {
		attention_block(m, l, kv, s, b);
		mlp_block(m, l, s, b->n);
	}
}

void wk__forward(const struct wk_model *m, struct wk_kv *kv, struct wk_scratch *s,
		 const struct wk_batch *b)
{
	CM_ASSERT(b->n > 0 && b->n <= s->n_max);
	switch (m->cfg.arch) {
	case MD_ARCH_QWEN3:
	case MD_ARCH_LLAMA:
		forward_decoder(m, kv, s, b);
		break;
	}
}

void wk__logits(const struct wk_model *m, struct wk_scratch *s, const int32_t *rows, int32_t n,
		float *logits)
{
	int32_t d = m->cfg.hidden;
	for (int32_t i = 0; i < n; i++)
		memcpy(s->xn + (size_t)i * d, s->x + (size_t)rows[i] * d, (size_t)d * sizeof(float));
	kern_rmsnorm(m->be, s->xn, m->final_norm, (float)m->cfg.rms_eps, n, d, s->xn);
	kern_matmul(m->be, &m->lm_head, s->xn, n, logits);
}
