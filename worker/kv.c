/* The paged KV pool: fixed-size blocks shared by all sequences, a free list, and
 * per-sequence segments with explicit per-token positions. */
#include "wk-impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int wk__kv_init(struct wk_kv *kv, struct kern_backend *be, const struct md_config *c,
		int32_t n_blocks, int32_t block_size, enum kern_dtype dtype, struct cm_err *err)
{
	memset(kv, 0, sizeof(*kv));
	if (dtype != KERN_F32 && dtype != KERN_F16)
		return cm_err_set(err, CM_EINVAL, "KV cache dtype must be f32 or f16");
	size_t per_block = (size_t)block_size * (size_t)c->n_kv_head * (size_t)c->head_dim *
			   kern_dtype_size(dtype);
	kv->n_layer = c->n_layer;
	kv->n_blocks = n_blocks;
	kv->block_size = block_size;
	kv->layers = calloc((size_t)c->n_layer, sizeof(*kv->layers));
	kv->free_ids = malloc((size_t)n_blocks * sizeof(int32_t));
	if (!kv->layers || !kv->free_ids)
		goto oom;
	for (int l = 0; l < c->n_layer; l++) {
		struct kern_kv_layer *ly = &kv->layers[l];
		ly->dtype = dtype;
		ly->block_size = block_size;
		ly->n_kv_head = c->n_kv_head;
		ly->head_dim = c->head_dim;
		ly->k = kern_alloc(be, per_block * (size_t)n_blocks);
		ly->v = kern_alloc(be, per_block * (size_t)n_blocks);
		if (!ly->k || !ly->v)
			goto oom;
	}
	/* lowest ids on top of the stack */
	for (int32_t i = 0; i < n_blocks; i++)
		kv->free_ids[i] = n_blocks - 1 - i;
	kv->n_free = n_blocks;
	return CM_OK;
oom:
	wk__kv_fini(kv, be);
	return cm_err_set(err, CM_ENOMEM, "out of memory for a KV pool of %d blocks x %d tokens",
			  n_blocks, block_size);
}

void wk__kv_fini(struct wk_kv *kv, struct kern_backend *be)
{
	if (kv->layers) {
		for (int l = 0; l < kv->n_layer; l++) {
			kern_free(be, kv->layers[l].k);
			kern_free(be, kv->layers[l].v);
		}
	}
	free(kv->layers);
	free(kv->free_ids);
	memset(kv, 0, sizeof(*kv));
}

int wk__seg_append(struct wk_kv *kv, struct wk_seg *seg, int32_t n, const int32_t *pos,
		   int32_t *slots)
{
	int32_t bs = kv->block_size;
	if (n > seg->cap - seg->n_tok)
		return CM_EFULL;
	int32_t have = (seg->n_tok + bs - 1) / bs;
	int32_t need = (seg->n_tok + n + bs - 1) / bs;
	if (need - have > kv->n_free)
		return CM_EFULL;
	for (int32_t b = have; b < need; b++)
		seg->blocks[b] = kv->free_ids[--kv->n_free];
	for (int32_t i = 0; i < n; i++) {
		int32_t t = seg->n_tok + i;
		if (slots)
			slots[i] = seg->blocks[t / bs] * bs + t % bs;
		seg->pos[t] = pos[i];
	}
	seg->n_tok += n;
	return CM_OK;
}

void wk__seg_release(struct wk_kv *kv, struct wk_seg *seg)
{
	int32_t nb = (seg->n_tok + kv->block_size - 1) / kv->block_size;
	for (int32_t b = nb - 1; b >= 0; b--)
		kv->free_ids[kv->n_free++] = seg->blocks[b];
	seg->n_tok = 0;
}

size_t wk__kv_flat_bytes(const struct wk_kv *kv, int32_t n)
{
	const struct kern_kv_layer *l0 = &kv->layers[0];
	return (size_t)kv->n_layer * 2 * (size_t)CM_MAX(n, 0) * (size_t)l0->n_kv_head *
	       (size_t)l0->head_dim * kern_dtype_size(l0->dtype);
}

/* Copies K or V (pool) of one layer for tokens [from, from + n) of seg between
 * the pool's head-major blocks and flat[n][n_kv_head][head_dim]. */
static void seg_copy_layer(const struct wk_kv *kv, const struct wk_seg *seg, int32_t from,
			   int32_t n, char *pool, char *flat, bool out)
{
	const struct kern_kv_layer *l0 = &kv->layers[0];
	size_t row = (size_t)l0->head_dim * kern_dtype_size(l0->dtype);
	size_t bs = (size_t)kv->block_size, nkv = (size_t)l0->n_kv_head;
	for (int32_t i = 0; i < n; i++) {
		size_t t = (size_t)(from + i);
		size_t blk = (size_t)seg->blocks[t / bs];
		for (size_t h = 0; h < nkv; h++) {
			char *p = pool + ((blk * nkv + h) * bs + t % bs) * row;
			char *f = flat + ((size_t)i * nkv + h) * row;
			if (out)
				memcpy(f, p, row);
			else
				memcpy(p, f, row);
		}
	}
}

/* Both directions of the flat copy: [n_layer][K, V][n][n_kv_head][head_dim]. */
static void seg_copy(const struct wk_kv *kv, const struct wk_seg *seg, int32_t from, int32_t n,
		     char *flat, bool out)
{
	size_t part = wk__kv_flat_bytes(kv, n) / (2 * (size_t)kv->n_layer);
	for (int l = 0; l < kv->n_layer; l++) {
		char *pool[2] = {kv->layers[l].k, kv->layers[l].v};
		for (int s = 0; s < 2; s++)
			seg_copy_layer(kv, seg, from, n, pool[s], flat + (size_t)(2 * l + s) * part,
				       out);
	}
}

void wk__seg_copy_out(const struct wk_kv *kv, const struct wk_seg *seg, int32_t from, int32_t n,
		      void *dst)
{
	if (n > 0)
		seg_copy(kv, seg, from, n, dst, true);
}

void wk__seg_copy_in(struct wk_kv *kv, const struct wk_seg *seg, int32_t from, int32_t n,
		     const void *src)
{
	if (n > 0)
		seg_copy(kv, seg, from, n, (char *)(uintptr_t)src, false);
}
