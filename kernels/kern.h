/* kernels: the compute backends behind one interface.
 *
 * A kern_backend is a table of functions plus a context (ggml-backend style);
 * callers use the kern_* wrappers below, never the table. The CPU backend is
 * always built: its scalar ops are the oracle; AVX2+FMA and AVX-512 (BF16 dot)
 * paths are picked at run time from the CPU's features. A CUDA backend plugs in
 * behind the same table later.
 *
 * Memory: activations, scratch and the KV pool are backend buffers
 * (kern_alloc); weights are kern_mat views, used in place on the CPU (the mmap)
 * or copied once into a backend buffer in the order the backend's matmul wants
 * (kern_weight_dtype, kern_convert), and uploaded once on a GPU.
 *
 * Determinism: every op computes each output row from its own input row with a
 * fixed order of operations, whatever the number of rows, threads or the other
 * rows in the batch ("batch invariance"). So a sequence gets bit-identical
 * results alone or inside a batch, and a decode step equals recomputation.
 *
 * Threads: one thread (the engine's) drives a backend; ops parallelise inside on
 * the backend's pool.
 *
 *     struct kern_cpu_params p = kern_cpu_default_params();
 *     struct kern_backend *be = kern_cpu_new(&p, &err);
 *     kern_matmul(be, &w_q, x, n_tok, q);
 */
#ifndef TANDEM_KERN_H
#define TANDEM_KERN_H

#include "common/cm.h"

enum kern_dtype {
	KERN_F32 = 0,
	KERN_F16 = 1,
	KERN_BF16 = 2,
	KERN_Q8_0 = 3, /* weights only: blocks of 32 int8 with one f16 scale (see below) */
	KERN_BF16_R16 = 4, /* weights only: bf16 in panels of 16 rows (see below) */
};

/* Bytes per element; 0 for KERN_Q8_0 and KERN_BF16_R16, whose rows are not plain. */
size_t kern_dtype_size(enum kern_dtype dt);

/* A weight matrix [rows][cols] (PyTorch's [out_features, in_features]), rows
 * contiguous. data may be any 2-byte aligned address (an mmap'd safetensors span);
 * KERN_Q8_0 data is 64-byte aligned and made by kern_quantize. */
struct kern_mat {
	enum kern_dtype dtype;
	int32_t rows;   /* output features */
	int32_t cols;   /* input features */
	const void *data;
};

/* KERN_Q8_0: each run of 32 weights of a row (a block) is q[i] * d, q in
 * [-127, 127], d = max|w| / 127 stored as f16. A row holds its cols / 32 scales
 * (padded to 64 bytes), then its blocks in groups of 16 (the last group may be
 * shorter): a group's bytes interleaved so that one 64-byte load gives 4
 * consecutive weights of each of its 16 blocks (the layout of an int8 dot-product
 * instruction), stored as q + 128; rows padded to 64 bytes, so a row is read in
 * address order. cols must be a multiple of 32. */
#define KERN_Q8_BLOCK 32

/* KERN_BF16_R16: the bf16 weights of KERN_BF16 reordered for a dot-product
 * instruction that multiplies pairs (vdpbf16ps): rows in panels of 16 (the last
 * padded with zero rows), a panel's 64-byte groups each holding columns 2k and
 * 2k + 1 of its 16 rows (row by row; an odd last column paired with a zero). One
 * load then feeds 16 rows' dot products in 16 lanes with no reduction across
 * lanes, and a panel is read in address order. Made by kern_convert from
 * KERN_BF16 on a backend whose kern_weight_dtype asks for it. */
#define KERN_R16_ROWS 16

/* Bytes of one row of m, padding included (KERN_BF16_R16: a row's share of its
 * panel). */
size_t kern_mat_row_bytes(const struct kern_mat *m);
/* Bytes of all of m's data (rows, padded to a whole panel for KERN_BF16_R16, x
 * row bytes). */
size_t kern_mat_bytes(const struct kern_mat *m);

/* Instruction-set levels of the CPU backend, lowest first. */
enum kern_isa {
	KERN_ISA_SCALAR = 0,
	KERN_ISA_AVX2 = 1,     /* AVX2 + FMA + F16C */
	KERN_ISA_AVX512 = 2,   /* AVX-512 F/BW/DQ/VL */
	KERN_ISA_AVX512BF16 = 3, /* plus AVX512_BF16 (vdpbf16ps) */
};

const char *kern_isa_name(enum kern_isa isa);
/* The best level this CPU supports. */
enum kern_isa kern_cpu_detect_isa(void);

struct kern_cpu_params {
	int n_threads;          /* 0: all online CPUs */
	int max_isa;            /* cap on the ISA level (-1: no cap); tests force lower paths */
	bool bf16_activations;  /* bf16-weight matmuls round activations to bf16 and use
				 * vdpbf16ps (AVX512_BF16 only; ignored elsewhere): faster
				 * prefill, ~1e-2 logit error; false keeps f32 activations */
};

struct kern_cpu_params kern_cpu_default_params(void);

/* True when this CPU has AVX512_VNNI (int8 dot products for KERN_Q8_0). */
bool kern_cpu_has_vnni(void);

struct kern_backend;

/* The CPU backend; NULL with err set when its threads cannot start. */
struct kern_backend *kern_cpu_new(const struct kern_cpu_params *p, struct cm_err *err);
void kern_backend_free(struct kern_backend *be);
/* e.g. "cpu avx512bf16 x2", with " bf16act" when bf16 activations are on */
const char *kern_backend_name(const struct kern_backend *be);
int kern_backend_threads(const struct kern_backend *be);

/* Backend buffers: zeroed, 64-byte aligned; NULL when out of memory. On the CPU
 * a buffer of 2 MiB or more asks the kernel for huge pages (fewer TLB misses when
 * weights and KV stream through). */
void *kern_alloc(struct kern_backend *be, size_t bytes);
void kern_free(struct kern_backend *be, void *p);

/* dst = src converted to dst->dtype (same shape): a copy when the types match,
 * KERN_Q8_0 quantisation of an F32, F16 or BF16 src (cols a multiple of
 * KERN_Q8_BLOCK; a block whose scale is not finite as f16 is zeroed), or the
 * KERN_BF16_R16 order of a BF16 src (where kern_weight_dtype gives it). dst->data
 * is kern_mat_bytes(dst) bytes of the caller's (a kern_alloc buffer). Runs on the
 * backend's threads. CM_EINVAL for an unsupported pair or shape. */
int kern_convert(struct kern_backend *be, const struct kern_mat *src, struct kern_mat *dst,
		 struct cm_err *err);

/* The dtype this backend's matmul runs fastest for weights stored as dt: dt
 * itself, or KERN_BF16_R16 for KERN_BF16 on a CPU backend with bf16 activations.
 * What kern_convert can make from dt. */
enum kern_dtype kern_weight_dtype(struct kern_backend *be, enum kern_dtype dt);

/* ---- machine limits (tandem bench) --------------------------------------- */

enum kern_peak {
	KERN_PEAK_F32 = 0, /* f32 FMA */
	KERN_PEAK_BF16,    /* bf16 dot products (vdpbf16ps) */
	KERN_PEAK_INT8,    /* int8 dot products (vpdpbusd) */
};

/* Reads buf[0..bytes) once with vector loads, the backend's threads taking 2 MiB
 * chunks in turn; returns 10^9 bytes per second. buf: a kern_alloc buffer. */
double kern_bench_read(struct kern_backend *be, const void *buf, size_t bytes);
/* Runs independent multiply-adds of one kind on every backend thread for about
 * seconds; returns 10^9 operations per second done by them all (a multiply-add
 * counts 2), or 0 when the backend's ISA lacks the instruction. */
double kern_bench_peak(struct kern_backend *be, enum kern_peak which, double seconds);

/* ---- ops ---------------------------------------------------------------
 * Shapes are in elements; row-major; "n" counts rows (tokens). Outputs never
 * alias inputs unless the op says so. */

/* y[n][W.rows] = x[n][W.cols] . W^T. For KERN_Q8_0 weights each token's x is
 * quantised the same way (blocks of 32, int8, an f32 scale per block) and the
 * block dot products are exact int32 sums, scaled and added in f32. */
void kern_matmul(struct kern_backend *be, const struct kern_mat *w, const float *x, int32_t n,
		 float *y);

#define KERN_MATMUL_MAX 4

/* y[i] = x . W[i]^T for the n_w <= KERN_MATMUL_MAX matrices w[i] (the same cols),
 * as one operation when they also share a dtype: x is prepared once and the rows
 * of all the matrices are split over the threads together (q/k/v, gate/up). The
 * results are those of n_w kern_matmul calls, bit for bit. */
void kern_matmul_n(struct kern_backend *be, int n_w, const struct kern_mat *const *w,
		   const float *x, int32_t n, float *const *y);

/* y[n][d] = x / sqrt(mean(x^2) + eps) * weight; y may equal x. */
void kern_rmsnorm(struct kern_backend *be, const float *x, const float *weight, float eps,
		  int32_t n, int32_t d, float *y);

/* In place rotary embedding, rotate-half (NEOX/HF) convention, on x[n][n_head][head_dim]:
 * element j < head_dim/2 pairs with j + head_dim/2; angle = pos[t] * inv_freq[j].
 * head_dim is even. */
void kern_rope(struct kern_backend *be, float *x, int32_t n, int32_t n_head, int32_t head_dim,
	       const int32_t *pos, const float *inv_freq);

/* out[n][d] = silu(gate) * up */
void kern_swiglu(struct kern_backend *be, const float *gate, const float *up, int32_t n,
		 int32_t d, float *out);

/* y[n][d] += x[n][d] */
void kern_add(struct kern_backend *be, float *y, const float *x, int32_t n, int32_t d);

/* In place softmax over each row of x[n][d]. */
void kern_softmax(struct kern_backend *be, float *x, int32_t n, int32_t d);

/* out[n][E.cols] = E[ids[i]] as f32. */
void kern_embed(struct kern_backend *be, const struct kern_mat *e, const int32_t *ids,
		int32_t n, float *out);

/* Index of the largest element of x[n] (lowest index on ties; NaN ignored; all
 * NaN gives 0); -1 when n <= 0. */
int32_t kern_argmax(struct kern_backend *be, const float *x, int32_t n);

/* The k largest elements of x[n], sorted descending (ties: lower index first;
 * NaN last); k is clamped to n. Returns the number written. */
int32_t kern_topk(struct kern_backend *be, const float *x, int32_t n, int32_t k, int32_t *idx,
		  float *val);

/* ---- paged KV and attention --------------------------------------------- */

/* The KV pool of one layer: [n_blocks][n_kv_head][block_size][head_dim] for K and
 * for V, in kv_dtype (F32 or F16): within a block, each KV head's rows are
 * consecutive, so attention reads a head's keys as one stream. Block ids index
 * it. */
struct kern_kv_layer {
	void *k;
	void *v;
	enum kern_dtype dtype;
	int32_t block_size;   /* tokens per block */
	int32_t n_kv_head;
	int32_t head_dim;
};

/* Writes k[n][n_kv_head*head_dim] and v likewise into the pool at
 * slots[i] = block * block_size + offset; a negative slot (padding) is skipped. */
void kern_kv_store(struct kern_backend *be, const struct kern_kv_layer *kv, const float *k,
		   const float *v, int32_t n, const int32_t *slots);

#define KERN_MAX_SEGS 4

/* One KV segment of a sequence (source, reasoning, image, ...): the tokens at
 * logical indices 0..n_tok-1 live in blocks[i / block_size] at i % block_size. */
struct kern_kv_seg {
	const int32_t *blocks;
	int32_t n_tok;
};

/* The visibility rule, resolved per query row: query q attends to the first
 * n_vis[s] tokens of segment s of its sequence, for each segment s. Causal
 * attention over one segment is n_vis[0] = index of the token + 1; streaming
 * thinking gives a reasoning token a prefix of the source segment and of the
 * reasoning segment. */
struct kern_attn_query {
	int32_t seq;                     /* index into kern_attn_params.segs */
	int32_t n_vis[KERN_MAX_SEGS];
};

struct kern_attn_params {
	const struct kern_kv_layer *kv;
	int32_t n_head;                  /* query heads; GQA: head h reads KV head
					  * h / (n_head / n_kv_head) */
	float scale;                     /* usually 1/sqrt(head_dim) */
	int32_t n_seg;                   /* segments per sequence (<= KERN_MAX_SEGS) */
	const struct kern_kv_seg *segs;  /* [n_seq][n_seg] */
	const struct kern_attn_query *queries;  /* [n] */
};

/* out[n][n_head][head_dim] = softmax(q . K^T * scale) . V over each query's visible
 * tokens (a query with nothing visible gets zeros; n_vis is clamped to [0, n_tok]).
 * q is [n][n_head][head_dim]. */
void kern_attention(struct kern_backend *be, const struct kern_attn_params *p, const float *q,
		    int32_t n, float *out);

#endif
