/* kernels: private declarations shared by the wrappers (backend.c) and the backends.
 *
 * A backend is a struct kern_backend at the start of its own context struct plus a
 * table of functions (ggml-backend style). The wrappers in backend.c check what can
 * be checked cheaply and call the table; a backend may assume n > 0 and valid
 * pointers.
 */
#ifndef TANDEM_KERN_IMPL_H
#define TANDEM_KERN_IMPL_H

#include "kernels/kern.h"

struct kern_backend_iface {
	void (*free)(struct kern_backend *be);
	void *(*alloc)(struct kern_backend *be, size_t bytes);
	void (*dealloc)(struct kern_backend *be, void *p);

	void (*matmul)(struct kern_backend *be, int n_w, const struct kern_mat *const *w,
		       const float *x, int32_t n, float *const *y);
	void (*rmsnorm)(struct kern_backend *be, const float *x, const float *weight, float eps,
			int32_t n, int32_t d, float *y);
	void (*rope)(struct kern_backend *be, float *x, int32_t n, int32_t n_head, int32_t head_dim,
		     const int32_t *pos, const float *inv_freq);
	void (*swiglu)(struct kern_backend *be, const float *gate, const float *up, int32_t n,
		       int32_t d, float *out);
	void (*add)(struct kern_backend *be, float *y, const float *x, int32_t n, int32_t d);
	void (*softmax)(struct kern_backend *be, float *x, int32_t n, int32_t d);
	void (*embed)(struct kern_backend *be, const struct kern_mat *e, const int32_t *ids,
		      int32_t n, float *out);
	int32_t (*argmax)(struct kern_backend *be, const float *x, int32_t n);
	int32_t (*topk)(struct kern_backend *be, const float *x, int32_t n, int32_t k, int32_t *idx,
			float *val);
	void (*kv_store)(struct kern_backend *be, const struct kern_kv_layer *kv, const float *k,
			 const float *v, int32_t n, const int32_t *slots);
	void (*attention)(struct kern_backend *be, const struct kern_attn_params *p, const float *q,
			  int32_t n, float *out);
	int (*convert)(struct kern_backend *be, const struct kern_mat *src, struct kern_mat *dst,
		       struct cm_err *err);
	enum kern_dtype (*weight_dtype)(struct kern_backend *be, enum kern_dtype dt);
	double (*bench_read)(struct kern_backend *be, const void *buf, size_t bytes);
	double (*bench_peak)(struct kern_backend *be, enum kern_peak which, double seconds);
};

struct kern_backend {
	const struct kern_backend_iface *iface;
	char name[64]; /* e.g. "cpu avx512bf16 x2" */
	int n_threads;
};

#endif
