/* worker internals shared by the engine's files. */
#ifndef TANDEM_WK_IMPL_H
#define TANDEM_WK_IMPL_H

#include "wk.h"

/* Element i of a tensor as f32. */
float wk__elem_f32(const void *data, enum md_dtype dt, size_t i);

/* ---- paged KV pool (kv.c) ----------------------------------------------- */

/* Blocks of block_size tokens, one id for all layers; a free list of ids. */
struct wk_kv {
	struct kern_kv_layer *layers;  /* [n_layer] */
	int32_t n_layer;
	int32_t n_blocks;
	int32_t block_size;
	int32_t *free_ids;             /* [n_blocks], stack */
	int32_t n_free;
};

int wk__kv_init(struct wk_kv *kv, struct kern_backend *be, const struct md_config *c,
		int32_t n_blocks, int32_t block_size, enum kern_dtype dtype, struct cm_err *err);
void wk__kv_fini(struct wk_kv *kv, struct kern_backend *be);

/* A KV segment of one sequence: its block table and each token's position. */
struct wk_seg {
	int32_t *blocks;   /* [cap / block_size] */
	int32_t *pos;      /* [cap] position of each token */
	int32_t n_tok;
	int32_t cap;       /* tokens */
};

/* Makes room for n more tokens in seg (allocating blocks as needed) and writes
 * their slots (block * block_size + offset; slots may be NULL) and positions.
 * CM_EFULL when the pool or the segment is full; then nothing changes. */
int wk__seg_append(struct wk_kv *kv, struct wk_seg *seg, int32_t n, const int32_t *pos,
		   int32_t *slots);
/* Returns every block of seg to the pool and empties it. */
void wk__seg_release(struct wk_kv *kv, struct wk_seg *seg);

/* Disaggregation: the KV of n tokens as one flat buffer,
 * [n_layer][2: K then V][n][n_kv_head][head_dim] in the pool's dtype, which is
 * what travels between engines; the pool itself is head-major within a block
 * (kern_kv_layer). Bytes of n tokens: */
size_t wk__kv_flat_bytes(const struct wk_kv *kv, int32_t n);
/* Copies the KV of tokens [from, from + n) of seg (all written) into dst, or
 * from src into them (their blocks allocated by wk__seg_append). The pool is
 * read and written with memcpy: host memory, which is what the CPU backend
 * allocates; a device backend needs a kern copy op here. */
void wk__seg_copy_out(const struct wk_kv *kv, const struct wk_seg *seg, int32_t from, int32_t n,
		      void *dst);
void wk__seg_copy_in(struct wk_kv *kv, const struct wk_seg *seg, int32_t from, int32_t n,
		     const void *src);

/* ---- sampler (sampler.c) ------------------------------------------------ */

struct wk_sampler {
	struct wk_sample_params p;
	uint64_t rng[4];  /* xoshiro256** state */
};

void wk__sampler_init(struct wk_sampler *s, const struct wk_sample_params *p);
/* Validates the parameters; CM_EINVAL with a message. */
int wk__sample_params_check(const struct wk_sample_params *p, struct cm_err *err);

/* Scratch for sampling over a vocabulary of n (sized once). */
struct wk_sample_scratch {
	int32_t *idx;   /* [n] candidate ids */
	float *val;     /* [n] their logits, then weights */
	uint8_t *mark;  /* [n] zero between calls */
	int32_t n;
};

/* Picks the next token from logits[n] (modified in place: penalties, temperature).
 * seen[n_seen] are the tokens the repetition penalty applies to. */
int32_t wk__sample(struct wk_sampler *s, struct kern_backend *be, float *logits, int32_t n,
		   const int32_t *seen, int32_t n_seen, struct wk_sample_scratch *scr);

/* ---- forward pass (forward.c) ------------------------------------------- */

/* Activation scratch for up to n_max tokens, allocated once per engine. */
struct wk_scratch {
	int32_t n_max;
	float *x, *xn;          /* [n_max][d] */
	float *q, *att;         /* [n_max][nh*hd] */
	float *k, *v;           /* [n_max][nkv*hd] */
	float *gate, *up;       /* [n_max][ff] */
	float *tmp;             /* [n_max][max(d, ff)] */
};

int wk__scratch_init(struct wk_scratch *s, struct kern_backend *be, const struct md_config *c,
		     int32_t n_max, struct cm_err *err);
void wk__scratch_fini(struct wk_scratch *s, struct kern_backend *be);

/* One batched forward over n tokens of any number of sequences. */
struct wk_batch {
	int32_t n;
	const int32_t *ids;                    /* [n] */
	const int32_t *pos;                    /* [n] rotary positions */
	const int32_t *slots;                  /* [n] KV slots to write */
	const struct kern_attn_query *queries; /* [n] visibility of each token */
	int32_t n_seq;
	int32_t n_seg;
	const struct kern_kv_seg *segs;        /* [n_seq][n_seg], after this step's tokens */
};

/* Runs the layers; leaves the final hidden states (before the final norm) in s->x. */
void wk__forward(const struct wk_model *m, struct wk_kv *kv, struct wk_scratch *s,
		 const struct wk_batch *b);

/* logits[n][vocab] = lm_head(final_norm(x[rows[i]])) for n <= s->n_max rows. */
void wk__logits(const struct wk_model *m, struct wk_scratch *s, const int32_t *rows, int32_t n,
		float *logits);

#endif
