/* The CPU backend: ISA detection, the thread pool, and the drivers that split each
 * op into whole rows (matmul rows, tokens) or attention work items for the per-ISA
 * op tables.
 *
 * Splits never cut a row's reduction (a matmul's K dimension, a norm's row), and
 * attention splits only at fixed partition boundaries whose states merge in a fixed
 * order, so results do not depend on the thread count or the batch (kern.h,
 * "Determinism").
 */
#include "kernels/cpu/cpu-impl.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#define CPU_PAR_MIN_WORK    32768	/* elements below which an op stays on the caller */
#define CPU_SCRATCH_BYTES   (16u << 20) /* packed matmul activations; attention states */
#define CPU_MM_GRAIN	    16		/* rows per matmul split unit */
#define CPU_MM_GEMM_TOKENS  8		/* a matmul of more tokens: a GEMM, */
#define CPU_MM_GEMM_GRAIN   64		/* split in units of its row blocks (BF_RB) */
#define CPU_MM_PIECE_WORK   (1 << 25)	/* most multiply-adds a thread takes at a time */
#define CPU_STEAL_MAX	    64		/* most threads of a work-stealing split */
#define CPU_STEAL_PIECES    8		/* pieces a thread walks its own share in */
#define CPU_ATTN_BATCH	    1		/* attention items a thread takes at a time */
#define CPU_ATTN_QB	    32		/* most queries per attention item */
#define CPU_ATTN_HEADS	    2		/* query heads per attention item, many queries */
#define CPU_ATTN_SPLIT_MAXQ 4		/* at most this many queries: split partitions */

/* The KERN_Q8_0 matmul functions in use (VNNI or the scalar oracle). */
struct cpu_q8_fns {
	void (*pack)(const struct kern_mm *m, int32_t t0, int32_t t1);
	void (*rows)(const struct kern_mm *m, int32_t r0, int32_t r1);
};

struct kern_cpu {
	struct kern_backend base;
	const struct kern_cpu_ops *ops;
	struct cpu_q8_fns q8;
	enum kern_isa isa;
	bool bf16_act;
	struct cm_pool *pool;
	void *scratch; /* [CPU_SCRATCH_BYTES] */
};

static struct kern_cpu *cpu_of(struct kern_backend *be)
{
	return (struct kern_cpu *)be;
}

/* ---- ISA detection ------------------------------------------------------- */

#if defined(__x86_64__) || defined(__i386__)
static uint64_t cpu_xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

enum kern_isa kern_cpu_detect_isa(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d))
		return KERN_ISA_SCALAR;
	bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
	bool f16c = c & (1u << 29);
	if (!osxsave || !avx || !fma || !f16c)
		return KERN_ISA_SCALAR;
	uint64_t xcr0 = cpu_xgetbv0();
	if ((xcr0 & 0x6) != 0x6) /* SSE and AVX state saved by the OS */
		return KERN_ISA_SCALAR;
	if (__get_cpuid_max(0, NULL) < 7)
		return KERN_ISA_SCALAR;
	__cpuid_count(7, 0, a, b, c, d);
	if (!(b & (1u << 5))) /* AVX2 */
		return KERN_ISA_SCALAR;
	const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31); /* F DQ BW VL */
	if ((b & avx512) != avx512 || (xcr0 & 0xe0) != 0xe0) /* opmask and zmm state */
		return KERN_ISA_AVX2;
	__cpuid_count(7, 1, a, b, c, d);
	return (a & (1u << 5)) ? KERN_ISA_AVX512BF16 : KERN_ISA_AVX512;
}

bool kern_cpu_has_vnni(void)
{
	unsigned a, b, c, d;
	if (kern_cpu_detect_isa() < KERN_ISA_AVX512)
		return false;
	__cpuid_count(7, 0, a, b, c, d);
	return c & (1u << 11); /* AVX512_VNNI */
}
#else
enum kern_isa kern_cpu_detect_isa(void)
{
	return KERN_ISA_SCALAR;
}

bool kern_cpu_has_vnni(void)
{
	return false;
}
#endif

/* The best compiled table at or below isa; *isa is lowered to match. */
static const struct kern_cpu_ops *cpu_pick_ops(enum kern_isa *isa)
{
#if KERN_HAVE_AVX512
	if (*isa >= KERN_ISA_AVX512) {
#if !KERN_HAVE_AVX512BF16
		*isa = KERN_ISA_AVX512;
#endif
		return &kern__cpu_ops_avx512;
	}
#endif
#if KERN_HAVE_AVX2
	if (*isa >= KERN_ISA_AVX2) {
		*isa = KERN_ISA_AVX2;
		return &kern__cpu_ops_avx2;
	}
#endif
	*isa = KERN_ISA_SCALAR;
	return &kern__cpu_ops_scalar;
}

/* ---- splitting work ------------------------------------------------------ */

typedef void (*cpu_range_fn)(void *ctx, int32_t i0, int32_t i1);

struct cpu_split {
	cpu_range_fn fn;
	void *ctx;
	int32_t n;
	int32_t grain;
};

static void cpu_split_job(void *arg, int ith, int nth)
{
	const struct cpu_split *s = arg;
	int64_t units = (s->n + s->grain - 1) / s->grain;
	int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
	int64_t i0 = u0 * s->grain, i1 = CM_MIN(u1 * s->grain, (int64_t)s->n);
	if (i0 < i1)
		s->fn(s->ctx, (int32_t)i0, (int32_t)i1);
}

/* Runs fn over [0, n) split into contiguous multiples of grain, one range per
 * thread, or on the caller alone when the work (in elements) is small. */
static void cpu_parallel(struct kern_cpu *c, int32_t n, int32_t grain, int64_t work,
			 cpu_range_fn fn, void *ctx)
{
	if (c->base.n_threads == 1 || n <= grain || work < CPU_PAR_MIN_WORK) {
		fn(ctx, 0, n);
		return;
	}
	struct cpu_split s = {.fn = fn, .ctx = ctx, .n = n, .grain = grain};
	cm_pool_run(c->pool, cpu_split_job, &s);
}

/* A work-stealing split: thread i owns the i-th contiguous share of [0, n) (as
 * cpu_parallel gives it) and walks it front to back in pieces of about an eighth
 * (or of fewer units, down to one, when an eighth is more than piece_work: a
 * piece in progress cannot be stolen, and a prefill GEMM's eighth took a
 * millisecond), so that without disturbance each thread streams its rows in one run, in address
 * order; a thread that finishes early takes half of what is left of another
 * thread's share, from its back end. So a thread slowed by anything (another
 * process on its core, a busier memory channel) does less of the work instead of
 * holding the others back. Each share is one word, front and back in units of
 * grain, changed by compare-and-swap only. */
struct cpu_steal {
	cpu_range_fn fn;
	void *ctx;
	int32_t n;
	int32_t grain;
	uint32_t piece; /* units a thread takes off its own share at a time */
	_Atomic uint64_t share[CPU_STEAL_MAX]; /* back << 32 | front */
};

/* Takes units [*u0, *u1) off share w: up to want from the front, or (steal) half of
 * what is left from the back. False when the share is empty. */
static bool cpu_steal_take(_Atomic uint64_t *w, bool steal, uint32_t want, uint32_t *u0,
			   uint32_t *u1)
{
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	for (;;) {
		uint32_t f = (uint32_t)v, b = (uint32_t)(v >> 32);
		if (f >= b)
			return false;
		uint32_t left = b - f, take = steal ? (left + 1) / 2 : CM_MIN(left, want);
		uint64_t nv = steal ? ((uint64_t)(b - take) << 32 | f) : ((uint64_t)b << 32 | (f + take));
		if (atomic_compare_exchange_weak_explicit(w, &v, nv, memory_order_relaxed,
							  memory_order_relaxed)) {
			*u0 = steal ? b - take : f;
			*u1 = *u0 + take;
			return true;
		}
	}
}

static void cpu_steal_job(void *arg, int ith, int nth)
{
	struct cpu_steal *s = arg;
	uint32_t u0, u1;
	for (int k = 0; k < nth; k++) {
		int v = (ith + k) % nth; /* our own share first, then the others' */
		while (cpu_steal_take(&s->share[v], k > 0, s->piece, &u0, &u1))
			s->fn(s->ctx, (int32_t)(u0 * (uint32_t)s->grain),
			      CM_MIN((int32_t)(u1 * (uint32_t)s->grain), s->n));
	}
}

/* Like cpu_parallel (the same shares when no thread is disturbed), with stealing
 * (struct cpu_steal); piece_work 0: pieces of an eighth whatever the work. */
static void cpu_parallel_steal(struct kern_cpu *c, int32_t n, int32_t grain, int64_t work,
			       int64_t piece_work, cpu_range_fn fn, void *ctx)
{
	const int nth = c->base.n_threads;
	if (nth > CPU_STEAL_MAX) {
		cpu_parallel(c, n, grain, work, fn, ctx);
		return;
	}
	if (nth == 1 || n <= grain || work < CPU_PAR_MIN_WORK) {
		fn(ctx, 0, n);
		return;
	}
	const uint64_t units = (uint64_t)((n + grain - 1) / grain);
	const uint64_t eighth = units / (uint64_t)nth / CPU_STEAL_PIECES;
	const uint64_t by_work =
		piece_work ? (uint64_t)piece_work * units / (uint64_t)work : eighth;
	struct cpu_steal s = {
		.fn = fn,
		.ctx = ctx,
		.n = n,
		.grain = grain,
		.piece = (uint32_t)CM_MAX(1u, CM_MIN(eighth, by_work))};
	for (int i = 0; i < nth; i++) {
		uint64_t f = units * (uint64_t)i / (uint64_t)nth;
		uint64_t b = units * (uint64_t)(i + 1) / (uint64_t)nth;
		atomic_init(&s.share[i], b << 32 | f);
	}
	cm_pool_run(c->pool, cpu_steal_job, &s);
}

/* ---- matmul -------------------------------------------------------------- */

/* One matrix of a (multi-)matmul: its rows are [r0, r0 + rows) of the job's. */
struct cpu_mm_part {
	const void *w;
	int32_t rows;
	int32_t r0;
	float *y;  /* the whole output */
	float *yc; /* the current token chunk's */
};

struct cpu_mm_job {
	const struct kern_cpu_ops *ops;
	const struct cpu_q8_fns *q8; /* KERN_Q8_0 weights, else NULL */
	struct kern_mm m;	     /* what the matrices share: dtype, cols, tokens, x */
	int n_w;
	struct cpu_mm_part part[KERN_MATMUL_MAX];
};

static void cpu_mm_pack_range(void *arg, int32_t t0, int32_t t1)
{
	struct cpu_mm_job *j = arg;
	if (j->q8)
		j->q8->pack(&j->m, t0, t1);
	else
		j->ops->mm_pack(&j->m, t0, t1);
}

/* Rows [r0, r1) of the job, cut at the matrices' boundaries. */
static void cpu_mm_rows_range(void *arg, int32_t r0, int32_t r1)
{
	struct cpu_mm_job *j = arg;
	for (int i = 0; i < j->n_w; i++) {
		const struct cpu_mm_part *p = &j->part[i];
		int32_t a = CM_MAX(r0, p->r0), b = CM_MIN(r1, p->r0 + p->rows);
		if (a >= b)
			continue;
		struct kern_mm m = j->m;
		m.w = p->w;
		m.rows = p->rows;
		m.y = p->yc;
		if (j->q8)
			j->q8->rows(&m, a - p->r0, b - p->r0);
		else
			j->ops->mm_rows(&m, a - p->r0, b - p->r0);
	}
}

/* Packs the activations into the scratch (in token chunks when they do not fit),
 * then splits the weight rows (of all the matrices) across the threads; every
 * thread sees every token. */
static void cpu_matmul(struct kern_backend *be, int n_w, const struct kern_mat *const *w,
		       const float *x, int32_t n, float *const *y)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_mm_job j = {.ops = c->ops, .n_w = n_w};
	const bool r16 = w[0]->dtype == KERN_BF16_R16;
	CM_ASSERT(!r16 || c->bf16_act); /* kern_convert makes it only then */
	int32_t rows = 0;
	for (int i = 0; i < n_w; i++) {
		j.part[i] = (struct cpu_mm_part){
			.w = w[i]->data, .rows = w[i]->rows, .r0 = rows, .y = y[i]};
		/* a KERN_BF16_R16 matrix starts on a whole panel of the split */
		rows += r16 ? (w[i]->rows + KERN_R16_ROWS - 1) / KERN_R16_ROWS * KERN_R16_ROWS
			    : w[i]->rows;
	}
	const int32_t cols = w[0]->cols;
	j.m.dtype = w[0]->dtype;
	j.m.rows = w[0]->rows;
	j.m.cols = cols;
	j.m.bf16_act = c->bf16_act && (j.m.dtype == KERN_BF16 || r16);
	j.q8 = j.m.dtype == KERN_Q8_0 ? &c->q8 : NULL;
	size_t stride = j.q8 ? kern__q8_pack_stride(&j.m) : c->ops->mm_pack_stride(&j.m);
	int32_t chunk = n;
	if (stride) {
		CM_ASSERT(stride <= CPU_SCRATCH_BYTES);
		size_t fit = CPU_SCRATCH_BYTES / stride;
		if ((size_t)chunk > fit)
			chunk = fit >= 16 ? (int32_t)(fit / 16 * 16) : (int32_t)fit;
		j.m.xp = c->scratch;
		j.m.xp_stride = stride;
	}
	for (int32_t t0 = 0; t0 < n; t0 += chunk) {
		int32_t tn = CM_MIN(chunk, n - t0);
		j.m.n = tn;
		j.m.x = x + (size_t)t0 * (size_t)cols;
		for (int i = 0; i < n_w; i++)
			j.part[i].yc = j.part[i].y + (size_t)t0 * (size_t)j.part[i].rows;
		if (stride)
			cpu_parallel(c, tn, r16 ? KERN_CPU_R16_TOKENS : 1, (int64_t)tn * cols,
				     cpu_mm_pack_range, &j);
		cpu_parallel_steal(c, rows, tn > CPU_MM_GEMM_TOKENS ? CPU_MM_GEMM_GRAIN : CPU_MM_GRAIN,
				   (int64_t)rows * cols * tn, CPU_MM_PIECE_WORK, cpu_mm_rows_range, &j);
	}
}

/* ---- row-wise ops -------------------------------------------------------- */

struct cpu_rows_job {
	const struct kern_cpu_ops *ops;
	const float *a;
	const float *b;
	float *y;
	float eps;
	int32_t d;
};

static void cpu_rmsnorm_range(void *arg, int32_t i0, int32_t i1)
{
	const struct cpu_rows_job *j = arg;
	for (int32_t i = i0; i < i1; i++)
		j->ops->rmsnorm(j->a + (size_t)i * j->d, j->b, j->eps, j->d,
				j->y + (size_t)i * j->d);
}

static void cpu_rmsnorm(struct kern_backend *be, const float *x, const float *weight, float eps,
			int32_t n, int32_t d, float *y)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_rows_job j = {.ops = c->ops, .a = x, .b = weight, .y = y, .eps = eps, .d = d};
	cpu_parallel(c, n, 1, (int64_t)n * d, cpu_rmsnorm_range, &j);
}

static void cpu_swiglu_range(void *arg, int32_t i0, int32_t i1)
{
	const struct cpu_rows_job *j = arg;
	for (int32_t i = i0; i < i1; i++) {
		size_t o = (size_t)i * j->d;
		j->ops->swiglu(j->a + o, j->b + o, j->d, j->y + o);
	}
}

static void cpu_swiglu(struct kern_backend *be, const float *gate, const float *up, int32_t n,
		       int32_t d, float *out)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_rows_job j = {.ops = c->ops, .a = gate, .b = up, .y = out, .d = d};
	cpu_parallel(c, n, 1, (int64_t)n * d * 8, cpu_swiglu_range, &j);
}

static void cpu_add_range(void *arg, int32_t i0, int32_t i1)
{
	const struct cpu_rows_job *j = arg;
	for (int32_t i = i0; i < i1; i++)
		j->ops->add(j->y + (size_t)i * j->d, j->a + (size_t)i * j->d, j->d);
}

static void cpu_add(struct kern_backend *be, float *y, const float *x, int32_t n, int32_t d)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_rows_job j = {.ops = c->ops, .a = x, .y = y, .d = d};
	cpu_parallel(c, n, 1, (int64_t)n * d, cpu_add_range, &j);
}

static void cpu_softmax_range(void *arg, int32_t i0, int32_t i1)
{
	const struct cpu_rows_job *j = arg;
	for (int32_t i = i0; i < i1; i++)
		j->ops->softmax(j->y + (size_t)i * j->d, j->d);
}

static void cpu_softmax(struct kern_backend *be, float *x, int32_t n, int32_t d)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_rows_job j = {.ops = c->ops, .y = x, .d = d};
	cpu_parallel(c, n, 1, (int64_t)n * d * 8, cpu_softmax_range, &j);
}

struct cpu_embed_job {
	const struct kern_cpu_ops *ops;
	const struct kern_mat *e;
	const int32_t *ids;
	float *out;
};

static void cpu_embed_range(void *arg, int32_t i0, int32_t i1)
{
	const struct cpu_embed_job *j = arg;
	const size_t row = (size_t)j->e->cols * kern_dtype_size(j->e->dtype);
	for (int32_t i = i0; i < i1; i++)
		j->ops->to_f32(j->e->dtype, (const char *)j->e->data + (size_t)j->ids[i] * row,
			       j->e->cols, j->out + (size_t)i * (size_t)j->e->cols);
}

static void cpu_embed(struct kern_backend *be, const struct kern_mat *e, const int32_t *ids,
		      int32_t n, float *out)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_embed_job j = {.ops = c->ops, .e = e, .ids = ids, .out = out};
	cpu_parallel(c, n, 1, (int64_t)n * e->cols, cpu_embed_range, &j);
}

/* ---- rope ---------------------------------------------------------------- */

struct cpu_rope_job {
	float *x;
	int32_t n_head;
	int32_t head_dim;
	const int32_t *pos;
	const float *inv_freq;
};

#define CPU_ROPE_HALF 256 /* cos/sin pairs computed per pass */

/* cos/sin come from libm on the f32 angle pos * inv_freq (as HF computes them); the
 * rotation is plain f32 arithmetic, so every ISA shares this code. */
static void cpu_rope_range(void *arg, int32_t t0, int32_t t1)
{
	const struct cpu_rope_job *j = arg;
	const int32_t half = j->head_dim / 2;
	float cs[CPU_ROPE_HALF], sn[CPU_ROPE_HALF];
	for (int32_t t = t0; t < t1; t++) {
		float *xt = j->x + (size_t)t * (size_t)j->n_head * (size_t)j->head_dim;
		for (int32_t i0 = 0; i0 < half; i0 += CPU_ROPE_HALF) {
			int32_t in = CM_MIN(CPU_ROPE_HALF, half - i0);
			for (int32_t i = 0; i < in; i++) {
				float a = (float)j->pos[t] * j->inv_freq[i0 + i];
				sincosf(a, &sn[i], &cs[i]);
			}
			for (int32_t h = 0; h < j->n_head; h++) {
				float *x1 = xt + (size_t)h * (size_t)j->head_dim + i0;
				float *x2 = x1 + half;
				for (int32_t i = 0; i < in; i++) {
					float a = x1[i], b = x2[i];
					x1[i] = a * cs[i] - b * sn[i];
					x2[i] = b * cs[i] + a * sn[i];
				}
			}
		}
	}
}

static void cpu_rope(struct kern_backend *be, float *x, int32_t n, int32_t n_head, int32_t head_dim,
		     const int32_t *pos, const float *inv_freq)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_rope_job j = {
		.x = x,
		.n_head = n_head,
		.head_dim = head_dim,
		.pos = pos,
		.inv_freq = inv_freq,
	};
	cpu_parallel(c, n, 1, (int64_t)n * n_head * head_dim * 2, cpu_rope_range, &j);
}

/* ---- argmax, top-k ------------------------------------------------------- */

static int32_t cpu_argmax(struct kern_backend *be, const float *x, int32_t n)
{
	return cpu_of(be)->ops->argmax(x, n);
}

/* The top-k order: larger value first, then lower index; NaN after everything. */
static bool cpu_topk_before(float va, int32_t ia, float vb, int32_t ib)
{
	bool na = isnan(va), nb = isnan(vb);
	if (na || nb)
		return na == nb ? ia < ib : nb;
	if (va != vb)
		return va > vb;
	return ia < ib;
}

/* Restores the heap property below node i of a heap whose root is the entry
 * that comes last in top-k order. */
static void cpu_topk_sift(int32_t *idx, float *val, int32_t k, int32_t i)
{
	for (;;) {
		int32_t l = 2 * i + 1, r = l + 1, w = i;
		if (l < k && cpu_topk_before(val[w], idx[w], val[l], idx[l]))
			w = l;
		if (r < k && cpu_topk_before(val[w], idx[w], val[r], idx[r]))
			w = r;
		if (w == i)
			return;
		float tv = val[i];
		int32_t ti = idx[i];
		val[i] = val[w];
		idx[i] = idx[w];
		val[w] = tv;
		idx[w] = ti;
		i = w;
	}
}

/* A size-k heap of the best seen so far: one comparison rejects most of x when
 * k << n. Then heap-sorts the k survivors into top-k order in place. */
static int32_t cpu_topk(struct kern_backend *be, const float *x, int32_t n, int32_t k, int32_t *idx,
			float *val)
{
	(void)be;
	for (int32_t i = 0; i < k; i++) {
		idx[i] = i;
		val[i] = x[i];
	}
	for (int32_t i = k / 2 - 1; i >= 0; i--)
		cpu_topk_sift(idx, val, k, i);
	for (int32_t i = k; i < n; i++) {
		if (!cpu_topk_before(x[i], i, val[0], idx[0]))
			continue;
		val[0] = x[i];
		idx[0] = i;
		cpu_topk_sift(idx, val, k, 0);
	}
	for (int32_t m = k - 1; m > 0; m--) {
		float tv = val[0];
		int32_t ti = idx[0];
		val[0] = val[m];
		idx[0] = idx[m];
		val[m] = tv;
		idx[m] = ti;
		cpu_topk_sift(idx, val, m, 0);
	}
	return k;
}

/* ---- paged KV ------------------------------------------------------------ */

struct cpu_kv_job {
	const struct kern_cpu_ops *ops;
	const struct kern_kv_layer *kv;
	const float *k;
	const float *v;
	const int32_t *slots;
};

static void cpu_kv_store_range(void *arg, int32_t i0, int32_t i1)
{
	const struct cpu_kv_job *j = arg;
	const int32_t hd = j->kv->head_dim, w = j->kv->n_kv_head * hd;
	for (int32_t i = i0; i < i1; i++) {
		if (j->slots[i] < 0)
			continue;
		for (int32_t h = 0; h < j->kv->n_kv_head; h++) {
			size_t off = kern__kv_off(j->kv, (size_t)j->slots[i], h);
			const float *src[2] = {j->k + (size_t)i * w + (size_t)h * hd,
					       j->v + (size_t)i * w + (size_t)h * hd};
			void *dst[2] = {(char *)j->kv->k + off, (char *)j->kv->v + off};
			for (int s = 0; s < 2; s++) {
				if (j->kv->dtype == KERN_F16)
					j->ops->to_f16(src[s], hd, dst[s]);
				else
					memcpy(dst[s], src[s], (size_t)hd * sizeof(float));
			}
		}
	}
}

/* A negative slot skips its token (padding). */
static void cpu_kv_store(struct kern_backend *be, const struct kern_kv_layer *kv, const float *k,
			 const float *v, int32_t n, const int32_t *slots)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_kv_job j = {.ops = c->ops, .kv = kv, .k = k, .v = v, .slots = slots};
	cpu_parallel(c, n, 1, (int64_t)n * kv->n_kv_head * kv->head_dim * 2, cpu_kv_store_range,
		     &j);
}

/* Partitions of query i (merge order: segments, then tokens). */
static int32_t cpu_attn_nparts(const struct kern_attn_params *p, int32_t i)
{
	int32_t np = 0;
	for (int32_t s = 0; s < p->n_seg; s++)
		np += (kern__attn_nvis(p, i, s) + KERN_CPU_ATTN_PART - 1) / KERN_CPU_ATTN_PART;
	return np;
}

/* Partition k of query i: segment *s, tokens [*t0, *t1). */
static void cpu_attn_part_at(const struct kern_attn_params *p, int32_t i, int32_t k, int32_t *s,
			     int32_t *t0, int32_t *t1)
{
	for (*s = 0; *s < p->n_seg; (*s)++) {
		int32_t nv = kern__attn_nvis(p, i, *s);
		int32_t np = (nv + KERN_CPU_ATTN_PART - 1) / KERN_CPU_ATTN_PART;
		if (k < np) {
			*t0 = k * KERN_CPU_ATTN_PART;
			*t1 = CM_MIN(nv, *t0 + KERN_CPU_ATTN_PART);
			return;
		}
		k -= np;
	}
	CM_ASSERT(!"attention partition out of range");
}

/* a = merge(a, b) for nh heads: both rescaled to the larger max. Scalar and the
 * same for every ISA. */
static void cpu_attn_merge(const struct kern_attn_state *a, const struct kern_attn_state *b,
			   int32_t nh, int32_t hd)
{
	for (int32_t h = 0; h < nh; h++) {
		float m = a->m[h] > b->m[h] ? a->m[h] : b->m[h];
		float fa = expf(a->m[h] - m), fb = expf(b->m[h] - m);
		float *x = a->acc + (size_t)h * hd;
		const float *y = b->acc + (size_t)h * hd;
		a->l[h] = a->l[h] * fa + b->l[h] * fb;
		for (int32_t j = 0; j < hd; j++)
			x[j] = x[j] * fa + y[j] * fb;
		a->m[h] = m;
	}
}

/* out = acc / l for heads [h0, h0 + nh) of query i; zeros where nothing was seen. */
static void cpu_attn_finish(const struct kern_attn_params *p, const struct kern_attn_state *st,
			    int32_t i, int32_t h0, int32_t nh, int32_t n_parts, float *out)
{
	const int32_t hd = p->kv->head_dim;
	float *o = out + ((size_t)i * (size_t)p->n_head + (size_t)h0) * (size_t)hd;
	if (!n_parts) {
		memset(o, 0, (size_t)nh * (size_t)hd * sizeof(float));
		return;
	}
	for (int32_t h = 0; h < nh; h++) {
		float *oh = o + (size_t)h * hd;
		const float *a = st->acc + (size_t)h * hd, l = st->l[h];
		if (!(l > 0.0f)) {
			memset(oh, 0, (size_t)hd * sizeof(float));
			continue;
		}
		const float r = 1.0f / l; /* one division: head_dim of them were 2 % of prefill */
		for (int32_t j = 0; j < hd; j++) /* a loop the compiler vectorises */
			oh[j] = a[j] * r;
	}
}

typedef void (*cpu_attn_part_fn)(const struct kern_attn_params *p, const float *q,
				 const int32_t *qi, int32_t nq, int32_t h0, int32_t h1, int32_t s,
				 int32_t t0, const int32_t *t1, const struct kern_attn_state *st);

struct cpu_attn_job {
	cpu_attn_part_fn part;
	const struct kern_attn_params *p;
	const float *q;
	float *out;
	int32_t n;
	int32_t qb;	   /* queries per item */
	int32_t per;	   /* query heads per item */
	int32_t n_blk;	   /* head blocks */
	int32_t max_parts; /* split mode: partition slots per (query, head block) */
	float *states;	   /* split mode: [n][n_blk][max_parts] states of per heads */
	int32_t n_items;
	atomic_int next;
};

/* Takes items off the shared counter until none are left. */
static void cpu_attn_drain(struct cpu_attn_job *j, void (*item)(struct cpu_attn_job *, int32_t))
{
	for (;;) {
		int32_t it0 =
			atomic_fetch_add_explicit(&j->next, CPU_ATTN_BATCH, memory_order_relaxed);
		if (it0 >= j->n_items)
			return;
		int32_t it1 = CM_MIN(it0 + CPU_ATTN_BATCH, j->n_items);
		for (int32_t it = it0; it < it1; it++)
			item(j, it);
	}
}

/* Queries [r0, r0 + nq) of one sequence, heads [h0, h0 + nh): every partition of
 * every query in merge order, the queries that have a partition computing it
 * together. */
static void cpu_attn_queries(const struct cpu_attn_job *j, int32_t r0, int32_t nq, int32_t h0,
			     int32_t nh)
{
	const struct kern_attn_params *p = j->p;
	const int32_t hd = p->kv->head_dim;
	const size_t sz = (size_t)nh * (size_t)(hd + 2);
	float buf[2][KERN_CPU_ATTN_BUF];
	struct kern_attn_state a[CPU_ATTN_QB], b[CPU_ATTN_QB], st[CPU_ATTN_QB];
	int32_t done[CPU_ATTN_QB] = {0}, nv[CPU_ATTN_QB], qi[CPU_ATTN_QB], t1[CPU_ATTN_QB];
	int32_t who[CPU_ATTN_QB];
	for (int32_t u = 0; u < nq; u++) {
		float *x = buf[0] + u * sz, *y = buf[1] + u * sz;
		a[u] = (struct kern_attn_state){.m = x, .l = x + nh, .acc = x + 2 * nh};
		b[u] = (struct kern_attn_state){.m = y, .l = y + nh, .acc = y + 2 * nh};
	}
	for (int32_t s = 0; s < p->n_seg; s++) {
		int32_t maxk = 0;
		for (int32_t u = 0; u < nq; u++) {
			nv[u] = kern__attn_nvis(p, r0 + u, s);
			maxk = CM_MAX(maxk, (nv[u] + KERN_CPU_ATTN_PART - 1) / KERN_CPU_ATTN_PART);
		}
		for (int32_t k = 0; k < maxk; k++) {
			const int32_t t0 = k * KERN_CPU_ATTN_PART;
			int32_t m = 0;
			for (int32_t u = 0; u < nq; u++) {
				if (nv[u] <= t0)
					continue;
				qi[m] = r0 + u;
				t1[m] = CM_MIN(nv[u], t0 + KERN_CPU_ATTN_PART);
				st[m] = done[u] ? b[u] : a[u];
				who[m++] = u;
			}
			j->part(p, j->q, qi, m, h0, h0 + nh, s, t0, t1, st);
			for (int32_t x = 0; x < m; x++) {
				int32_t u = who[x];
				if (done[u]++)
					cpu_attn_merge(&a[u], &b[u], nh, hd);
			}
		}
	}
	for (int32_t u = 0; u < nq; u++)
		cpu_attn_finish(p, &a[u], r0 + u, h0, nh, done[u], j->out);
}

/* Whole mode: one item is (block of queries, block of heads), split further into
 * runs of one sequence. */
static void cpu_attn_whole_item(struct cpu_attn_job *j, int32_t it)
{
	const struct kern_attn_params *p = j->p;
	const int32_t i0 = it / j->n_blk * j->qb, i1 = CM_MIN(i0 + j->qb, j->n);
	const int32_t h0 = it % j->n_blk * j->per, nh = CM_MIN(j->per, p->n_head - h0);
	for (int32_t r0 = i0, r1; r0 < i1; r0 = r1) {
		for (r1 = r0 + 1; r1 < i1 && p->queries[r1].seq == p->queries[r0].seq; r1++)
			;
		cpu_attn_queries(j, r0, r1 - r0, h0, nh);
	}
}

/* The state slot of partition k of (query i, head block b). */
static struct kern_attn_state cpu_attn_slot(const struct cpu_attn_job *j, int32_t i, int32_t b,
					    int32_t k)
{
	const size_t per = (size_t)j->per, hd = (size_t)j->p->kv->head_dim;
	float *base = j->states + (((size_t)i * j->n_blk + b) * j->max_parts + k) * per * (hd + 2);
	return (struct kern_attn_state){.m = base, .l = base + per, .acc = base + 2 * per};
}

/* Split mode, pass 1: one item is (query, head block, partition). */
static void cpu_attn_part_item(struct cpu_attn_job *j, int32_t it)
{
	const struct kern_attn_params *p = j->p;
	const int32_t k = it % j->max_parts, ib = it / j->max_parts;
	const int32_t i = ib / j->n_blk, b = ib % j->n_blk, h0 = b * j->per;
	if (k >= cpu_attn_nparts(p, i))
		return;
	int32_t s, t0, t1;
	cpu_attn_part_at(p, i, k, &s, &t0, &t1);
	struct kern_attn_state st = cpu_attn_slot(j, i, b, k);
	j->part(p, j->q, &i, 1, h0, CM_MIN(h0 + j->per, p->n_head), s, t0, &t1, &st);
}

/* Split mode, pass 2: one item is (query, head block), merged in order. */
static void cpu_attn_merge_item(struct cpu_attn_job *j, int32_t it)
{
	const struct kern_attn_params *p = j->p;
	const int32_t i = it / j->n_blk, b = it % j->n_blk, h0 = b * j->per;
	const int32_t nh = CM_MIN(j->per, p->n_head - h0), np = cpu_attn_nparts(p, i);
	struct kern_attn_state a = cpu_attn_slot(j, i, b, 0);
	for (int32_t k = 1; k < np; k++) {
		struct kern_attn_state bk = cpu_attn_slot(j, i, b, k);
		cpu_attn_merge(&a, &bk, nh, p->kv->head_dim);
	}
	cpu_attn_finish(p, &a, i, h0, nh, np, j->out);
}

static void cpu_attn_whole_job(void *arg, int ith, int nth)
{
	(void)ith;
	(void)nth;
	cpu_attn_drain(arg, cpu_attn_whole_item);
}

static void cpu_attn_part_job(void *arg, int ith, int nth)
{
	(void)ith;
	(void)nth;
	cpu_attn_drain(arg, cpu_attn_part_item);
}

static void cpu_attn_merge_job(void *arg, int ith, int nth)
{
	(void)ith;
	(void)nth;
	cpu_attn_drain(arg, cpu_attn_merge_item);
}

static void cpu_attn_run(struct kern_cpu *c, struct cpu_attn_job *j, int32_t n_items, cm_pool_fn fn)
{
	j->n_items = n_items;
	atomic_store(&j->next, 0);
	if (c->base.n_threads == 1 || n_items == 1)
		fn(j, 0, 1);
	else
		cm_pool_run(c->pool, fn, j);
}

/* Heads per item: as many as the state buffer takes, whole GQA groups if possible. */
static int32_t cpu_attn_heads(const struct kern_attn_params *p, int32_t want)
{
	const int32_t g = p->n_head / p->kv->n_kv_head;
	int32_t per = CM_MIN(CM_MIN(want, p->n_head),
			     CM_MIN(KERN_CPU_ATTN_BUF / (p->kv->head_dim + 2), KERN_CPU_ATTN_MAXH));
	return per > g ? per / g * g : per;
}

/* Few queries (decode): split mode. The partitions of a query are items too, their
 * states parked in the scratch and merged in a second pass; an item is one KV
 * head's group of query heads (its keys lie together in each block, kern.h), so
 * the items are many and even. Many queries (prefill): whole mode, items of up to
 * CPU_ATTN_QB queries x CPU_ATTN_HEADS heads sharing each read of K and V, handed
 * out dynamically since causal rows differ in length. Either way a query's
 * partitions are computed and merged alike, so the results are identical. */
static void cpu_attention(struct kern_backend *be, const struct kern_attn_params *p, const float *q,
			  int32_t n, float *out)
{
	struct kern_cpu *c = cpu_of(be);
	const int32_t hd = p->kv->head_dim, nth = c->base.n_threads;
	CM_ASSERT(hd + 2 <= KERN_CPU_ATTN_BUF);
	struct cpu_attn_job j = {
		.part = c->ops->attn_part, .p = p, .q = q, .out = out, .n = n, .qb = 1};
#if KERN_HAVE_AVX512BF16
	if (c->bf16_act && hd <= KERN_CPU_ATTN_BF16_HD)
		j.part = kern__avx512bf16_attn_part;
#endif
	if (nth > 1 && n <= CPU_ATTN_SPLIT_MAXQ) {
		j.per = cpu_attn_heads(p, CPU_ATTN_HEADS);
		j.n_blk = (p->n_head + j.per - 1) / j.per;
		for (int32_t i = 0; i < n; i++)
			j.max_parts = CM_MAX(j.max_parts, cpu_attn_nparts(p, i));
		size_t bytes = (size_t)n * j.n_blk * j.max_parts * j.per * (hd + 2) * sizeof(float);
		if (j.max_parts > 1 && bytes <= CPU_SCRATCH_BYTES) {
			j.states = c->scratch;
			cpu_attn_run(c, &j, n * j.n_blk * j.max_parts, cpu_attn_part_job);
			cpu_attn_run(c, &j, n * j.n_blk, cpu_attn_merge_job);
			return;
		}
	}
	j.per = cpu_attn_heads(p, CPU_ATTN_HEADS);
	j.qb = CM_MIN(CPU_ATTN_QB,
		      CM_MIN(KERN_CPU_ATTN_BUF / (j.per * (hd + 2)), KERN_CPU_ATTN_MAXH / j.per));
	j.qb = CM_MAX(j.qb, 1);
	j.n_blk = (p->n_head + j.per - 1) / j.per;
	if ((int64_t)(n + j.qb - 1) / j.qb * j.n_blk < 2 * (int64_t)nth)
		j.qb = 1;
	while (j.per > 1 && (int64_t)n * j.n_blk < nth) {
		j.per = (j.per + 1) / 2;
		j.n_blk = (p->n_head + j.per - 1) / j.per;
	}
	cpu_attn_run(c, &j, (n + j.qb - 1) / j.qb * j.n_blk, cpu_attn_whole_job);
}

/* ---- the backend --------------------------------------------------------- */

/* Every buffer starts with this header; its data follows at CPU_BUF_HDR. */
#define CPU_BUF_HDR	   64
#define CPU_BUF_HUGE	   (2u << 20) /* from here on: mmap, huge pages */
#define CPU_BUF_MAGIC_HEAP 0x68656170u
#define CPU_BUF_MAGIC_MMAP 0x6d6d6170u

struct cpu_buf_hdr {
	size_t total; /* bytes mapped or allocated, header included */
	uint32_t magic;
};

static void *cpu_alloc(struct kern_backend *be, size_t bytes)
{
	(void)be;
	if (bytes > SIZE_MAX / 2)
		return NULL;
	size_t total = CPU_BUF_HDR + (bytes + 63) / 64 * 64;
	struct cpu_buf_hdr *h;
	if (total >= CPU_BUF_HUGE) {
		void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			       0);
		if (p == MAP_FAILED)
			return NULL;
#ifdef MADV_HUGEPAGE
		madvise(p, total, MADV_HUGEPAGE); /* a hint: fine if refused */
#endif
		h = p; /* fresh anonymous pages are zero */
		h->magic = CPU_BUF_MAGIC_MMAP;
	} else {
		h = aligned_alloc(64, total);
		if (!h)
			return NULL;
		memset(h, 0, total);
		h->magic = CPU_BUF_MAGIC_HEAP;
	}
	h->total = total;
	return (char *)h + CPU_BUF_HDR;
}

static void cpu_dealloc(struct kern_backend *be, void *p)
{
	(void)be;
	struct cpu_buf_hdr *h = (struct cpu_buf_hdr *)((char *)p - CPU_BUF_HDR);
	CM_ASSERT(h->magic == CPU_BUF_MAGIC_HEAP || h->magic == CPU_BUF_MAGIC_MMAP);
	if (h->magic == CPU_BUF_MAGIC_MMAP) {
		munmap(h, h->total);
	} else {
		h->magic = 0;
		free(h);
	}
}

/* ---- weight conversion --------------------------------------------------- */

struct cpu_convert_job {
	const struct kern_mat *src;
	const struct kern_mat *dst;
};

/* Panels [g0, g1) of a KERN_BF16_R16 dst from its KERN_BF16 src (kern.h): each
 * row read in order, its pairs written 64 bytes apart. */
static void cpu_r16_panels(const struct kern_mat *src, const struct kern_mat *dst, int32_t g0,
			   int32_t g1)
{
	const int32_t cols = src->cols, kp_n = (cols + 1) / 2, full = cols / 2;
	for (int32_t g = g0; g < g1; g++)
		for (int32_t i = 0; i < KERN_R16_ROWS; i++) {
			const int32_t r = g * KERN_R16_ROWS + i;
			uint16_t *d = (uint16_t *)dst->data +
				      ((size_t)g * (size_t)kp_n * KERN_R16_ROWS + (size_t)i) * 2;
			if (r >= src->rows) {
				for (int32_t kp = 0; kp < kp_n; kp++)
					memset(d + (size_t)kp * 2 * KERN_R16_ROWS, 0, 4);
				continue;
			}
			const uint16_t *row = (const uint16_t *)src->data + (size_t)r * (size_t)cols;
			for (int32_t kp = 0; kp < full; kp++)
				memcpy(d + (size_t)kp * 2 * KERN_R16_ROWS, row + 2 * kp, 4);
			if (full < kp_n) { /* an odd last column, paired with zero */
				d[(size_t)full * 2 * KERN_R16_ROWS] = row[cols - 1];
				d[(size_t)full * 2 * KERN_R16_ROWS + 1] = 0;
			}
		}
}

static void cpu_convert_range(void *arg, int32_t r0, int32_t r1)
{
	const struct cpu_convert_job *j = arg;
	if (j->dst->dtype == KERN_Q8_0) {
		kern__q8_quantize_rows(j->src, j->dst, r0, r1);
		return;
	}
	if (j->dst->dtype == KERN_BF16_R16) {
		cpu_r16_panels(j->src, j->dst, r0, r1); /* r0, r1: panels */
		return;
	}
	size_t rb = kern_mat_row_bytes(j->src);
	memcpy((char *)j->dst->data + (size_t)r0 * rb, (const char *)j->src->data + (size_t)r0 * rb,
	       (size_t)(r1 - r0) * rb);
}

static int cpu_convert(struct kern_backend *be, const struct kern_mat *src, struct kern_mat *dst,
		       struct cm_err *err)
{
	struct kern_cpu *c = cpu_of(be);
	bool q8 = dst->dtype == KERN_Q8_0 && kern_dtype_size(src->dtype) != 0;
	bool r16 = dst->dtype == KERN_BF16_R16 && src->dtype == KERN_BF16;
	if (!q8 && !r16 && dst->dtype != src->dtype)
		return cm_err_set(err, CM_EINVAL, "convert: dtype %d to %d is not supported",
				  src->dtype, dst->dtype);
	if (src->dtype == KERN_BF16_R16) { /* a copy; its rows are not plain */
		memcpy((void *)dst->data, src->data, kern_mat_bytes(src));
		return CM_OK;
	}
	struct cpu_convert_job j = {.src = src, .dst = dst};
	int32_t n = r16 ? (src->rows + KERN_R16_ROWS - 1) / KERN_R16_ROWS : src->rows;
	cpu_parallel(c, n, 1, (int64_t)src->rows * src->cols, cpu_convert_range, &j);
	return CM_OK;
}

static enum kern_dtype cpu_weight_dtype(struct kern_backend *be, enum kern_dtype dt)
{
	return dt == KERN_BF16 && cpu_of(be)->bf16_act ? KERN_BF16_R16 : dt;
}

/* ---- machine limits ------------------------------------------------------ */

#define CPU_READ_UNIT 256 /* bytes per unit of the read pass's split */

struct cpu_bench_job {
	const struct kern_cpu *c;
	const char *buf;
	enum kern_peak which;
	int64_t iters;       /* peak: rounds per slice */
	int64_t deadline_us; /* peak: when to stop (cm_time_us) */
	_Atomic uint64_t sink;
};

static void cpu_bench_read_range(void *arg, int32_t u0, int32_t u1)
{
	struct cpu_bench_job *j = arg;
	uint64_t v = j->c->ops->bench_read(j->buf + (size_t)u0 * CPU_READ_UNIT,
					   (size_t)(u1 - u0) * CPU_READ_UNIT);
	atomic_fetch_xor_explicit(&j->sink, v, memory_order_relaxed);
}

/* Split like the matmuls' rows (cpu_parallel_steal): each thread streams its share,
 * and one slowed by another process reads less instead of holding the pass. */
static double cpu_bench_read(struct kern_backend *be, const void *buf, size_t bytes)
{
	struct kern_cpu *c = cpu_of(be);
	struct cpu_bench_job j = {.c = c, .buf = buf};
	int32_t units = (int32_t)CM_MIN(bytes / CPU_READ_UNIT, (size_t)INT32_MAX);
	int64_t t0 = cm_time_us();
	cpu_parallel_steal(c, units, (2 << 20) / CPU_READ_UNIT, INT64_MAX, 0, cpu_bench_read_range,
			   &j);
	int64_t us = cm_time_us() - t0;
	return us > 0 ? (double)units * CPU_READ_UNIT / (double)us * 1e-3 : 0.0;
}

/* Multiply-adds done by one thread in iters rounds of the peak loop. */
static double cpu_peak_loop(const struct kern_cpu *c, enum kern_peak which, int64_t iters)
{
	switch (which) {
	case KERN_PEAK_F32:
		return c->ops->bench_fma(iters);
	case KERN_PEAK_BF16:
#if KERN_HAVE_AVX512BF16
		if (c->isa >= KERN_ISA_AVX512BF16)
			return kern__avx512bf16_bench(iters);
#endif
		return 0.0;
	case KERN_PEAK_INT8:
#if KERN_HAVE_AVX512VNNI
		if (c->q8.rows == kern__vnni_q8_rows)
			return kern__vnni_bench(iters);
#endif
		return 0.0;
	}
	return 0.0;
}

/* Every thread runs slices of j->iters rounds until the deadline, adding up the
 * multiply-adds done: a thread slowed by another process counts for what it did. */
static void cpu_bench_peak_job(void *arg, int ith, int nth)
{
	struct cpu_bench_job *j = arg;
	(void)ith;
	(void)nth;
	uint64_t done = 0;
	do
		done += (uint64_t)cpu_peak_loop(j->c, j->which, j->iters);
	while (cm_time_us() < j->deadline_us);
	atomic_fetch_add_explicit(&j->sink, done, memory_order_relaxed);
}

static double cpu_bench_peak(struct kern_backend *be, enum kern_peak which, double seconds)
{
	struct kern_cpu *c = cpu_of(be);
	const int64_t slice = 1 << 12; /* rounds between looks at the clock: ~50 µs */
	if (cpu_peak_loop(c, which, slice) <= 0.0) /* also warms the units up */
		return 0.0;
	int64_t t0 = cm_time_us();
	struct cpu_bench_job j = {.c = c, .which = which, .iters = slice};
	j.deadline_us = t0 + (int64_t)(seconds * 1e6);
	cm_pool_run(c->pool, cpu_bench_peak_job, &j);
	int64_t us = cm_time_us() - t0;
	return 2.0 * (double)atomic_load(&j.sink) / (double)CM_MAX(us, 1) * 1e-3;
}

static void cpu_free(struct kern_backend *be)
{
	struct kern_cpu *c = cpu_of(be);
	cm_pool_free(c->pool);
	free(c->scratch);
	free(c);
}

static const struct kern_backend_iface cpu_iface = {
	.free = cpu_free,
	.alloc = cpu_alloc,
	.dealloc = cpu_dealloc,
	.matmul = cpu_matmul,
	.rmsnorm = cpu_rmsnorm,
	.rope = cpu_rope,
	.swiglu = cpu_swiglu,
	.add = cpu_add,
	.softmax = cpu_softmax,
	.embed = cpu_embed,
	.argmax = cpu_argmax,
	.topk = cpu_topk,
	.kv_store = cpu_kv_store,
	.attention = cpu_attention,
	.convert = cpu_convert,
	.weight_dtype = cpu_weight_dtype,
	.bench_read = cpu_bench_read,
	.bench_peak = cpu_bench_peak,
};

struct kern_cpu_params kern_cpu_default_params(void)
{
	return (struct kern_cpu_params){.n_threads = 0, .max_isa = -1, .bf16_activations = false};
}

struct kern_backend *kern_cpu_new(const struct kern_cpu_params *p, struct cm_err *err)
{
	if (p->n_threads < 0 || p->n_threads > 1024) {
		cm_err_set(err, CM_EINVAL, "cpu backend: n_threads %d out of range 0..1024",
			   p->n_threads);
		return NULL;
	}
	if (p->max_isa < -1 || p->max_isa > KERN_ISA_AVX512BF16) {
		cm_err_set(err, CM_EINVAL, "cpu backend: max_isa %d out of range -1..%d",
			   p->max_isa, KERN_ISA_AVX512BF16);
		return NULL;
	}
	struct kern_cpu *c = calloc(1, sizeof(*c));
	if (!c) {
		cm_err_set(err, CM_ENOMEM, "cpu backend: out of memory");
		return NULL;
	}
	enum kern_isa isa = kern_cpu_detect_isa();
	if (p->max_isa >= 0 && (enum kern_isa)p->max_isa < isa)
		isa = (enum kern_isa)p->max_isa;
	c->ops = cpu_pick_ops(&isa);
	c->isa = isa;
	c->bf16_act = p->bf16_activations && isa >= KERN_ISA_AVX512BF16;
	c->q8 = (struct cpu_q8_fns){.pack = kern__q8_pack, .rows = kern__q8_rows};
#if KERN_HAVE_AVX512VNNI
	if (isa >= KERN_ISA_AVX512 && kern_cpu_has_vnni())
		c->q8 = (struct cpu_q8_fns){.pack = kern__vnni_q8_pack, .rows = kern__vnni_q8_rows};
#endif
	c->base.iface = &cpu_iface;
	c->base.n_threads = p->n_threads ? p->n_threads : cm_cpu_count();
	snprintf(c->base.name, sizeof(c->base.name), "cpu %s x%d%s", kern_isa_name(isa),
		 c->base.n_threads, c->bf16_act ? " bf16act" : "");
	c->scratch = aligned_alloc(64, CPU_SCRATCH_BYTES);
	if (!c->scratch) {
		cm_err_set(err, CM_ENOMEM, "cpu backend: out of memory for %u bytes of scratch",
			   CPU_SCRATCH_BYTES);
		goto out_free;
	}
	c->pool = cm_pool_new(c->base.n_threads);
	if (!c->pool) {
		cm_err_set(err, CM_EAGAIN, "cpu backend: cannot start %d threads",
			   c->base.n_threads);
		goto out_free_scratch;
	}
	return &c->base;

out_free_scratch:
	free(c->scratch);
out_free:
	free(c);
	return NULL;
}
