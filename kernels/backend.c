/* The kern_* wrappers: argument checks, then the backend's table. */
#include "kernels/kern-impl.h"

size_t kern_dtype_size(enum kern_dtype dt)
{
	switch (dt) {
	case KERN_F32:
		return 4;
	case KERN_F16:
	case KERN_BF16:
		return 2;
	case KERN_Q8_0:
	case KERN_BF16_R16:
		return 0;
	}
	return 0;
}

size_t kern_mat_row_bytes(const struct kern_mat *m)
{
	if (m->dtype == KERN_BF16_R16)
		return ((size_t)m->cols + 1) / 2 * 2 * sizeof(uint16_t);
	if (m->dtype != KERN_Q8_0)
		return (size_t)m->cols * kern_dtype_size(m->dtype);
	size_t scales = ((size_t)m->cols / KERN_Q8_BLOCK * sizeof(uint16_t) + 63) / 64 * 64;
	return (scales + (size_t)m->cols + 63) / 64 * 64;
}

size_t kern_mat_bytes(const struct kern_mat *m)
{
	size_t rows = (size_t)m->rows;
	if (m->dtype == KERN_BF16_R16)
		rows = (rows + KERN_R16_ROWS - 1) / KERN_R16_ROWS * KERN_R16_ROWS;
	return rows * kern_mat_row_bytes(m);
}

const char *kern_isa_name(enum kern_isa isa)
{
	switch (isa) {
	case KERN_ISA_SCALAR:
		return "scalar";
	case KERN_ISA_AVX2:
		return "avx2";
	case KERN_ISA_AVX512:
		return "avx512";
	case KERN_ISA_AVX512BF16:
		return "avx512bf16";
	}
	return "unknown";
}

void kern_backend_free(struct kern_backend *be)
{
	if (be)
		be->iface->free(be);
}

const char *kern_backend_name(const struct kern_backend *be)
{
	return be->name;
}

int kern_backend_threads(const struct kern_backend *be)
{
	return be->n_threads;
}

void *kern_alloc(struct kern_backend *be, size_t bytes)
{
	return be->iface->alloc(be, bytes);
}

void kern_free(struct kern_backend *be, void *p)
{
	if (p)
		be->iface->dealloc(be, p);
}

static void kern_check_mat(const struct kern_mat *m)
{
	CM_ASSERT(m && m->data && m->rows > 0 && m->cols > 0);
	CM_ASSERT(kern_dtype_size(m->dtype) != 0 || m->dtype == KERN_BF16_R16 ||
		  (m->dtype == KERN_Q8_0 && m->cols % KERN_Q8_BLOCK == 0));
}

void kern_matmul(struct kern_backend *be, const struct kern_mat *w, const float *x, int32_t n,
		 float *y)
{
	kern_check_mat(w);
	if (n <= 0)
		return;
	be->iface->matmul(be, 1, &w, x, n, &y);
}

void kern_matmul_n(struct kern_backend *be, int n_w, const struct kern_mat *const *w,
		   const float *x, int32_t n, float *const *y)
{
	CM_ASSERT(n_w >= 1 && n_w <= KERN_MATMUL_MAX);
	bool alike = true;
	for (int i = 0; i < n_w; i++) {
		kern_check_mat(w[i]);
		alike = alike && w[i]->cols == w[0]->cols && w[i]->dtype == w[0]->dtype;
	}
	if (n <= 0)
		return;
	if (!alike) { /* a model may mix weight types: one call each */
		for (int i = 0; i < n_w; i++)
			be->iface->matmul(be, 1, &w[i], x, n, &y[i]);
		return;
	}
	be->iface->matmul(be, n_w, w, x, n, y);
}

void kern_rmsnorm(struct kern_backend *be, const float *x, const float *weight, float eps,
		  int32_t n, int32_t d, float *y)
{
	if (n <= 0 || d <= 0)
		return;
	be->iface->rmsnorm(be, x, weight, eps, n, d, y);
}

void kern_rope(struct kern_backend *be, float *x, int32_t n, int32_t n_head, int32_t head_dim,
	       const int32_t *pos, const float *inv_freq)
{
	CM_ASSERT(head_dim % 2 == 0);
	if (n <= 0 || n_head <= 0 || head_dim <= 0)
		return;
	be->iface->rope(be, x, n, n_head, head_dim, pos, inv_freq);
}

void kern_swiglu(struct kern_backend *be, const float *gate, const float *up, int32_t n, int32_t d,
		 float *out)
{
	if (n <= 0 || d <= 0)
		return;
	be->iface->swiglu(be, gate, up, n, d, out);
}

void kern_add(struct kern_backend *be, float *y, const float *x, int32_t n, int32_t d)
{
	if (n <= 0 || d <= 0)
		return;
	be->iface->add(be, y, x, n, d);
}

void kern_softmax(struct kern_backend *be, float *x, int32_t n, int32_t d)
{
	if (n <= 0 || d <= 0)
		return;
	be->iface->softmax(be, x, n, d);
}

void kern_embed(struct kern_backend *be, const struct kern_mat *e, const int32_t *ids, int32_t n,
		float *out)
{
	kern_check_mat(e);
	CM_ASSERT(kern_dtype_size(e->dtype) != 0);
	if (n <= 0)
		return;
	for (int32_t i = 0; i < n; i++)
		CM_ASSERT(ids[i] >= 0 && ids[i] < e->rows);
	be->iface->embed(be, e, ids, n, out);
}

int32_t kern_argmax(struct kern_backend *be, const float *x, int32_t n)
{
	if (n <= 0)
		return -1;
	return be->iface->argmax(be, x, n);
}

int32_t kern_topk(struct kern_backend *be, const float *x, int32_t n, int32_t k, int32_t *idx,
		  float *val)
{
	if (k > n)
		k = n;
	if (k <= 0)
		return 0;
	return be->iface->topk(be, x, n, k, idx, val);
}

void kern_kv_store(struct kern_backend *be, const struct kern_kv_layer *kv, const float *k,
		   const float *v, int32_t n, const int32_t *slots)
{
	CM_ASSERT(kv->dtype == KERN_F32 || kv->dtype == KERN_F16);
	CM_ASSERT(kv->block_size > 0 && kv->n_kv_head > 0 && kv->head_dim > 0);
	if (n <= 0)
		return;
	be->iface->kv_store(be, kv, k, v, n, slots);
}

void kern_attention(struct kern_backend *be, const struct kern_attn_params *p, const float *q,
		    int32_t n, float *out)
{
	const struct kern_kv_layer *kv = p->kv;
	CM_ASSERT(kv->dtype == KERN_F32 || kv->dtype == KERN_F16);
	CM_ASSERT(kv->block_size > 0 && kv->n_kv_head > 0 && kv->head_dim > 0);
	CM_ASSERT(p->n_head > 0 && p->n_head % kv->n_kv_head == 0);
	CM_ASSERT(p->n_seg >= 1 && p->n_seg <= KERN_MAX_SEGS);
	if (n <= 0)
		return;
	be->iface->attention(be, p, q, n, out);
}

int kern_convert(struct kern_backend *be, const struct kern_mat *src, struct kern_mat *dst,
		 struct cm_err *err)
{
	kern_check_mat(src);
	if (dst->rows != src->rows || dst->cols != src->cols || !dst->data)
		return cm_err_set(err, CM_EINVAL, "convert: %dx%d to %dx%d", src->rows, src->cols,
				  dst->rows, dst->cols);
	if (dst->dtype == KERN_Q8_0 && src->cols % KERN_Q8_BLOCK)
		return cm_err_set(err, CM_EINVAL, "convert: q8_0 needs a multiple of %d columns, "
				  "not %d", KERN_Q8_BLOCK, src->cols);
	if (dst->dtype == KERN_BF16_R16 && src->dtype != KERN_BF16_R16 &&
	    (src->dtype != KERN_BF16 || kern_weight_dtype(be, KERN_BF16) != KERN_BF16_R16))
		return cm_err_set(err, CM_EINVAL, "convert: this backend makes bf16_r16 from bf16 "
				  "only%s", src->dtype == KERN_BF16 ? " with bf16 activations" : "");
	return be->iface->convert(be, src, dst, err);
}

enum kern_dtype kern_weight_dtype(struct kern_backend *be, enum kern_dtype dt)
{
	return be->iface->weight_dtype(be, dt);
}

double kern_bench_read(struct kern_backend *be, const void *buf, size_t bytes)
{
	return be->iface->bench_read(be, buf, bytes);
}

double kern_bench_peak(struct kern_backend *be, enum kern_peak which, double seconds)
{
	return be->iface->bench_peak(be, which, seconds);
}
