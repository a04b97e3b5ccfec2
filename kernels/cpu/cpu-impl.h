/* kernels/cpu: private interface between the CPU backend (cpu.c) and its per-ISA op
 * tables (ops_scalar.c, ops_avx2.c, ops_avx512.c, ops_avx512bf16.c).
 *
 * cpu.c owns threads and splitting: it hands each op table whole rows (or whole
 * (query, head-group) pairs), so every output row is computed by the same code with
 * the same order of operations whatever the batch or the thread count ("batch
 * invariance", kern.h). An op table must keep that promise inside a row too: no
 * arithmetic may depend on n, on other rows or on the thread.
 *
 * The scalar table is the oracle; a vector table may differ from it only by the
 * order of f32 sums, FMA contraction and a polynomial exp (see tests/kernels).
 */
#ifndef TANDEM_KERN_CPU_IMPL_H
#define TANDEM_KERN_CPU_IMPL_H

#include "kernels/kern-impl.h"

/* One matmul (or one token chunk of it) as the op tables see it. */
struct kern_mm {
	enum kern_dtype dtype;
	int32_t rows;	  /* output features */
	int32_t cols;	  /* input features */
	const void *w;	  /* [rows][cols] */
	int32_t n;	  /* tokens */
	const float *x;	  /* [n][cols] */
	float *y;	  /* [n][rows] */
	void *xp;	  /* packed activations: n rows of xp_stride bytes; NULL if unused */
	size_t xp_stride; /* bytes */
	bool bf16_act;	  /* round activations to bf16 and use the bf16 dot (bf16 weights) */
};

/* Attention works in partitions: tokens [k P, (k+1) P) of a segment, P =
 * KERN_CPU_ATTN_PART. Each partition's softmax state is computed on its own (fresh
 * max), then the states are merged in order (segments, then partitions) by cpu.c.
 * The boundaries depend on nothing but the segment, so a query gets the same bits
 * whether its partitions run on one thread (prefill) or spread over all (decode). */
#define KERN_CPU_ATTN_PART 256
/* Most floats of state an attention call holds: queries x heads x (head_dim + 2). */
#define KERN_CPU_ATTN_BUF 9216
/* Most (query, head) pairs per attention call. */
#define KERN_CPU_ATTN_MAXH 256

/* The unnormalised softmax state of a few heads over some keys. */
struct kern_attn_state {
	float *m;   /* [heads] largest score */
	float *l;   /* [heads] sum of exp(score - m) */
	float *acc; /* [heads][head_dim] sum of exp(score - m) * v */
};

struct kern_cpu_ops {
	enum kern_isa isa;
	/* Bytes per packed activation row, 0 when mm_rows reads x in place. */
	size_t (*mm_pack_stride)(const struct kern_mm *m);
	/* Packs tokens [t0, t1) of x into xp. */
	void (*mm_pack)(const struct kern_mm *m, int32_t t0, int32_t t1);
	/* y[t][r] for every token t and every r in [r0, r1). */
	void (*mm_rows)(const struct kern_mm *m, int32_t r0, int32_t r1);
	/* One row each. */
	void (*rmsnorm)(const float *x, const float *w, float eps, int32_t d, float *y);
	void (*swiglu)(const float *g, const float *u, int32_t d, float *out);
	void (*add)(float *y, const float *x, int32_t d);
	void (*softmax)(float *x, int32_t d);
	void (*to_f32)(enum kern_dtype dt, const void *src, int32_t d, float *dst);
	void (*to_f16)(const float *src, int32_t d, uint16_t *dst);
	int32_t (*argmax)(const float *x, int32_t n);
	/* The states of heads [h0, h1) of queries qi[0..nq) (one sequence) over tokens
	 * [t0, t1[u]) of segment s (one partition each, t1[u] > t0) into st[u]; the
	 * queries share each read of K and V. nq * (h1 - h0) <= KERN_CPU_ATTN_MAXH. */
	void (*attn_part)(const struct kern_attn_params *p, const float *q, const int32_t *qi,
			  int32_t nq, int32_t h0, int32_t h1, int32_t s, int32_t t0,
			  const int32_t *t1, const struct kern_attn_state *st);
	/* Machine limits (kern_bench_*): reads [p, p + bytes) (p 64-byte aligned, bytes
	 * a multiple of 256) with vector loads and returns a value depending on it all;
	 * iters rounds of independent f32 FMAs, returning the multiply-adds done. */
	uint64_t (*bench_read)(const void *p, size_t bytes);
	double (*bench_fma)(int64_t iters);
};

extern const struct kern_cpu_ops kern__cpu_ops_scalar;
#if KERN_HAVE_AVX2
extern const struct kern_cpu_ops kern__cpu_ops_avx2;
#endif
#if KERN_HAVE_AVX512
extern const struct kern_cpu_ops kern__cpu_ops_avx512;
#endif
#if KERN_HAVE_AVX512BF16
/* The bf16-activation matmul of the AVX-512 table (ops_avx512bf16.c). */
size_t kern__avx512bf16_mm_pack_stride(const struct kern_mm *m);
void kern__avx512bf16_mm_pack(const struct kern_mm *m, int32_t t0, int32_t t1);
void kern__avx512bf16_mm_rows(const struct kern_mm *m, int32_t r0, int32_t r1);
/* attn_part with bf16 dot products, for backends with bf16 activations and
 * head_dim <= KERN_CPU_ATTN_BF16_HD (a ~1e-5 normalised error against f32). */
void kern__avx512bf16_attn_part(const struct kern_attn_params *p, const float *q,
				const int32_t *qi, int32_t nq, int32_t h0, int32_t h1, int32_t s,
				int32_t t0, const int32_t *t1, const struct kern_attn_state *st);
#endif
#define KERN_CPU_ATTN_BF16_HD 256
/* The activations of a call with KERN_BF16_R16 weights are packed in groups of
 * this many tokens (ops_avx512bf16.c), so its mm_pack takes whole groups: [t0, t1)
 * starts on a group and ends on one or at the call's last token. */
#define KERN_CPU_R16_TOKENS 12

#if KERN_HAVE_AVX512BF16
/* iters rounds of independent vdpbf16ps; returns the multiply-adds done. */
double kern__avx512bf16_bench(int64_t iters);
#endif

/* ---- KERN_Q8_0 (q8.c; ops_avx512vnni.c) ------------------------------------
 * A matmul on q8_0 weights quantises each token's activations the same way
 * (kern.h), packed like a weight row so that one 64-byte load pairs with one of
 * the weights: a packed row holds the int8 values (interleaved by groups of 16
 * blocks), then each block's f32 scale d at KERN_Q8_XD(cols), then each block's
 * -128 x (sum of its int8 values) at KERN_Q8_XC(cols), which cancels the +128
 * that makes the weights unsigned. */
#define KERN_Q8_GROUP	  16 /* blocks per group */
#define KERN_Q8_R64(n)	  (((size_t)(n) + 63) / 64 * 64)
#define KERN_Q8_XD(cols)  KERN_Q8_R64(cols)
#define KERN_Q8_XC(cols)  (KERN_Q8_XD(cols) + KERN_Q8_R64((size_t)(cols) / KERN_Q8_BLOCK * 4))
/* Offset of the int8 values in a weight row (after its f16 scales). */
#define KERN_Q8_WQ(cols)  KERN_Q8_R64((size_t)(cols) / KERN_Q8_BLOCK * 2)

/* Byte offset of weight e of block j of a row (either operand's layout). */
static inline size_t kern__q8_at(int32_t cols, int32_t j, int32_t e)
{
	const int32_t nblk = cols / KERN_Q8_BLOCK, g = j / KERN_Q8_GROUP;
	const int32_t nb = CM_MIN(KERN_Q8_GROUP, nblk - g * KERN_Q8_GROUP);
	return (size_t)g * KERN_Q8_GROUP * KERN_Q8_BLOCK + (size_t)(e / 4) * (size_t)nb * 4 +
	       (size_t)(j % KERN_Q8_GROUP) * 4 + (size_t)(e % 4);
}

/* Weights: rows [r0, r1) of src quantised into dst (KERN_Q8_0). */
void kern__q8_quantize_rows(const struct kern_mat *src, const struct kern_mat *dst, int32_t r0,
			    int32_t r1);
/* Activations: the packed row stride, and tokens [t0, t1) of m->x packed. */
size_t kern__q8_pack_stride(const struct kern_mm *m);
void kern__q8_pack(const struct kern_mm *m, int32_t t0, int32_t t1);
/* The oracle: y for rows [r0, r1), every token. */
void kern__q8_rows(const struct kern_mm *m, int32_t r0, int32_t r1);
#if KERN_HAVE_AVX512VNNI
/* The same with AVX-512 (pack, bit for bit) and vpdpbusd (rows, by normalised error). */
void kern__vnni_q8_pack(const struct kern_mm *m, int32_t t0, int32_t t1);
void kern__vnni_q8_rows(const struct kern_mm *m, int32_t r0, int32_t r1);
/* iters rounds of independent vpdpbusd; returns the multiply-adds done. */
double kern__vnni_bench(int64_t iters);
#endif

/* IEEE half <-> float, round to nearest even (the F16C results, bit for bit). */
float kern__f16_to_f32(uint16_t h);
uint16_t kern__f32_to_f16(float f);

static inline float kern__bf16_to_f32(uint16_t b)
{
	union {
		uint32_t u;
		float f;
	} v = {.u = (uint32_t)b << 16};
	return v.f;
}

/* Pool slot (block * block_size + offset) of token tok of a segment. */
static inline size_t kern__kv_slot(const struct kern_kv_seg *seg, int32_t block_size, int32_t tok)
{
	return (size_t)seg->blocks[tok / block_size] * (size_t)block_size +
	       (size_t)(tok % block_size);
}

/* Tokens of segment s that query i sees: n_vis clamped to [0, n_tok]. */
static inline int32_t kern__attn_nvis(const struct kern_attn_params *p, int32_t i, int32_t s)
{
	const struct kern_attn_query *qq = &p->queries[i];
	int32_t nv = qq->n_vis[s];
	int32_t nt = p->segs[(size_t)qq->seq * (size_t)p->n_seg + (size_t)s].n_tok;
	return nv < 0 ? 0 : nv > nt ? nt : nv;
}

/* Byte offset of (slot, kv head) in a KV pool array (kern.h: [block][head][token]). */
static inline size_t kern__kv_off(const struct kern_kv_layer *kv, size_t slot, int32_t kvh)
{
	const size_t bs = (size_t)kv->block_size;
	const size_t row = (slot / bs * (size_t)kv->n_kv_head + (size_t)kvh) * bs + slot % bs;
	return row * (size_t)kv->head_dim * kern_dtype_size(kv->dtype);
}

/* An attn_part's walk over a chunk: heads [ha, end) of h0 + [0, nh) share ha's KV
 * head (g query heads per KV head); returns end. */
static inline int32_t kern__attn_group_end(int32_t h0, int32_t ha, int32_t nh, int32_t g)
{
	int32_t hb = ha + 1;
	while (hb < nh && (h0 + hb) / g == (h0 + ha) / g)
		hb++;
	return hb;
}

/* The K and V rows of KV head kvh of tokens [c0, c0 + n) of segment seg. */
static inline void kern__attn_rows(const struct kern_kv_layer *kv, const struct kern_kv_seg *seg,
				   int32_t c0, int n, int32_t kvh, const char **kh, const char **vh)
{
	for (int j = 0; j < n; j++) {
		const size_t off = kern__kv_off(kv, kern__kv_slot(seg, kv->block_size, c0 + j), kvh);
		kh[j] = (const char *)kv->k + off;
		vh[j] = (const char *)kv->v + off;
	}
}

/* Prefetches the keys and values of the tokens [c0, c0 + n) of KV head kvh. A
 * chunk that few heads share (decode) is read once, from memory: fetching the
 * next one while this one is computed hides that (docs/performance.md, item 18). */
static inline void kern__attn_prefetch(const struct kern_kv_layer *kv,
				       const struct kern_kv_seg *seg, int32_t c0, int n, int32_t kvh)
{
	const size_t rb = (size_t)kv->head_dim * (kv->dtype == KERN_F16 ? 2 : 4);
	for (int j = 0; j < n; j++) {
		const size_t off = kern__kv_off(kv, kern__kv_slot(seg, kv->block_size, c0 + j), kvh);
		for (size_t b = 0; b < rb; b += 64) {
			__builtin_prefetch((const char *)kv->k + off + b);
			__builtin_prefetch((const char *)kv->v + off + b);
		}
	}
}

#endif
