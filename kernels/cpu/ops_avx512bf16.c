/* The bf16-activation matmul of the AVX-512 table: activations rounded to bf16
 * once per call (round to nearest even), products summed with vdpbf16ps. This file
 * alone is built with -mavx512bf16 and runs only when the CPU has AVX512_BF16 and
 * the backend was created with bf16_activations.
 *
 * Same scheme as the f32 matmul (vec-impl.h): R rows x T tokens of accumulators
 * per micro-tile, each accumulator fed the same vdpbf16ps sequence (steps of 32 k,
 * the last one masked) and reduced by vf_hsum_pairs, so GEMV and GEMM agree bit for
 * bit. The bf16 dot rounds like the hardware does (denormals flushed): this path is
 * compared with the others by normalised error only.
 */
#define KERN_SIMD_AVX512 1
#include "kernels/cpu/cpu-impl.h"
#include "kernels/cpu/simd-impl.h"

#define BF_RMAX 8  /* most rows per micro-tile */
#define BF_T	8  /* most tokens per micro-tile */
#define BF_TG	6  /* tokens per micro-tile of a call with more than BF_T tokens */
_Static_assert(BF_RMAX * BF_T <= KS_TILE_MAX, "a micro-tile's accumulators fit ks_tile_store");
#define BF_STEP 32 /* k per vdpbf16ps */
#define BF_RB	64 /* rows per cache block */

size_t kern__avx512bf16_mm_pack_stride(const struct kern_mm *m)
{
	return (size_t)((m->cols + BF_STEP - 1) / BF_STEP * BF_STEP) * sizeof(uint16_t);
}

void kern__avx512bf16_mm_pack(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	const int32_t kfull = m->cols / BF_STEP * BF_STEP, rem = m->cols - kfull;
	for (int32_t t = t0; t < t1; t++) {
		const float *x = m->x + (size_t)t * (size_t)m->cols;
		uint16_t *xp = (uint16_t *)((char *)m->xp + (size_t)t * m->xp_stride);
		for (int32_t k = 0; k < kfull; k += BF_STEP) {
			__m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16),
							 _mm512_loadu_ps(x + k));
			_mm512_storeu_si512(xp + k, (__m512i)v);
		}
		if (rem) {
			__m512 lo = _mm512_maskz_loadu_ps(ks_mask(rem < 16 ? rem : 16), x + kfull);
			__m512 hi = _mm512_maskz_loadu_ps(ks_mask(rem > 16 ? rem - 16 : 0),
							  x + kfull + 16);
			_mm512_storeu_si512(xp + kfull, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
		}
	}
}

/* One k step; mk masks the weights of the last, partial step. Several-row tiles of
 * one or two tokens (memory-bound) also prefetch the next tile's rows into L2, and
 * tiles of a small call PF tiles ahead (BF_SMALL_PF). */
/* Tiles of 3 or more tokens of a small call (at most BF_T tokens) prefetch the rows
 * BF_SMALL_PF tiles ahead into L2: without it the loads of such a compute-heavy
 * tile and its arithmetic take turns instead of overlapping (8 tokens: 0.50 of
 * max(memory, compute) time without, 0.83 with; docs/performance.md). */
#define BF_SMALL_PF   4
#define BF_SMALL_HINT _MM_HINT_T2

KS_INLINE void bf_step(__m512 (*acc)[BF_T], const char *w, size_t wstride, const uint16_t *x,
		       size_t xs, int32_t k, __mmask32 mk, const int R, const int T, const int PF)
{
	__m512i wv[BF_RMAX];
	KS_UNROLL
	for (int i = 0; i < R; i++) {
		const uint16_t *p = (const uint16_t *)(w + i * wstride) + k;
		if (T <= 2 && R > 1)
			_mm_prefetch((const char *)p + R * wstride, _MM_HINT_T2);
		else if (PF)
			_mm_prefetch((const char *)p + PF * R * wstride, BF_SMALL_HINT);
		wv[i] = mk == (__mmask32)~0u ? _mm512_loadu_si512(p)
					     : _mm512_maskz_loadu_epi16(mk, p);
	}
	KS_UNROLL
	for (int j = 0; j < T; j++) {
		__m512i xv = _mm512_loadu_si512(x + j * xs + k);
		KS_UNROLL
		for (int i = 0; i < R; i++)
			acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv[i], (__m512bh)xv);
	}
}

/* Full steps, then one masked step for the last cols % 32 weights. */
KS_INLINE void bf_tile(const struct kern_mm *m, int32_t r, int32_t t, const int R, const int T,
		       const int PF)
{
	const size_t wstride = (size_t)m->cols * 2;
	const char *w = (const char *)m->w + (size_t)r * wstride;
	const size_t xs = m->xp_stride / sizeof(uint16_t);
	const uint16_t *x = (const uint16_t *)((const char *)m->xp + (size_t)t * m->xp_stride);
	const int rem = m->cols % BF_STEP;
	const __mmask32 last = rem ? (__mmask32)((1u << rem) - 1) : (__mmask32)~0u;
	__m512 acc[BF_RMAX][BF_T];
	KS_UNROLL
	for (int i = 0; i < R; i++)
		KS_UNROLL
	for (int j = 0; j < T; j++)
		acc[i][j] = _mm512_setzero_ps();
	const int32_t kfull = m->cols - rem;
	for (int32_t k = 0; k < kfull; k += BF_STEP)
		bf_step(acc, w, wstride, x, xs, k, (__mmask32)~0u, R, T, PF);
	if (rem)
		bf_step(acc, w, wstride, x, xs, kfull, last, R, T, PF);

	ks_tile_store(m->y, m->rows, r, t, R, T, &acc[0][0], BF_T);
}

/* Rows per tile of T tokens within a call of more than BF_T tokens: 8 for two
 * (memory-bound), 4 beyond (GEMM: 24 accumulators, ten loads per 24 vdpbf16ps). A
 * call of at most BF_T tokens (decode, a small batch) takes all of its tokens per
 * tile and few rows (BF_SROWS): each thread then reads its rows once, in address
 * order, the stream the hardware prefetcher follows best (docs/performance.md);
 * two rows from five tokens on keep vdpbf16ps rather than loads the bound. */
#define BF_ROWS(T)  ((T) == 1 ? 1 : (T) == 2 ? BF_RMAX : 4)
#define BF_SROWS(T) ((T) <= 4 ? 1 : 2)

#define BF_TILE(T)                                                                                 \
	static __attribute__((noinline)) void bf_m##T(const struct kern_mm *m, int32_t r,          \
						      int32_t t)                                   \
	{                                                                                          \
		bf_tile(m, r, t, BF_ROWS(T), T, 0);                                                \
	}                                                                                          \
	static __attribute__((noinline)) void bf_s##T(const struct kern_mm *m, int32_t r,          \
						      int32_t t)                                   \
	{                                                                                          \
		bf_tile(m, r, t, 1, T, (T) > 2 ? BF_SMALL_PF : 0);                                 \
	}

BF_TILE(1)
BF_TILE(2)
BF_TILE(3)
BF_TILE(4)
BF_TILE(5)
BF_TILE(6)

#define BF_TILE_SMALL(T)                                                                           \
	static __attribute__((noinline)) void bf_n##T(const struct kern_mm *m, int32_t r,          \
						      int32_t t)                                   \
	{                                                                                          \
		bf_tile(m, r, t, BF_SROWS(T), T, BF_SMALL_PF);                                     \
	}

BF_TILE_SMALL(5)
BF_TILE_SMALL(6)
BF_TILE_SMALL(7)
BF_TILE_SMALL(8)

static __attribute__((noinline)) void bf_s7(const struct kern_mm *m, int32_t r, int32_t t)
{
	bf_tile(m, r, t, 1, 7, BF_SMALL_PF);
}

static __attribute__((noinline)) void bf_s8(const struct kern_mm *m, int32_t r, int32_t t)
{
	bf_tile(m, r, t, 1, 8, BF_SMALL_PF);
}

typedef void (*bf_tile_fn)(const struct kern_mm *m, int32_t r, int32_t t);

/* [0]: one row; [1]: BF_ROWS(T) rows; [2]: BF_SROWS(T) rows. */
static const bf_tile_fn bf_tiles[3][BF_T] = {
	{bf_s1, bf_s2, bf_s3, bf_s4, bf_s5, bf_s6, bf_s7, bf_s8},
	{bf_m1, bf_m2, bf_m3, bf_m4, bf_m5, bf_m6, NULL, NULL},
	{bf_s1, bf_s2, bf_s3, bf_s4, bf_n5, bf_n6, bf_n7, bf_n8},
};

/* One token (GEMV): rows one after another, each accumulated as a one-row tile,
 * reduced VL rows at a time (the same bits, as in vec-impl.h's mm_gemv). */
static __attribute__((noinline)) void bf_gemv(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	const size_t wstride = (size_t)m->cols * 2;
	const uint16_t *x = (const uint16_t *)m->xp;
	const int rem = m->cols % BF_STEP;
	const __mmask32 last = rem ? (__mmask32)((1u << rem) - 1) : (__mmask32)~0u;
	const int32_t kfull = m->cols - rem;
	for (int32_t r = r0; r < r1; r += VL) {
		const int nr = r1 - r < VL ? r1 - r : VL;
		__m512 acc[VL], s[VL / 2];
		float out[VL];
		for (int i = 0; i < VL; i++) {
			__m512 a[BF_RMAX][BF_T];
			a[0][0] = _mm512_setzero_ps();
			const char *w = (const char *)m->w + (size_t)(r + i) * wstride;
			for (int32_t k = 0; k < kfull && i < nr; k += BF_STEP)
				bf_step(a, w, wstride, x, 0, k, (__mmask32)~0u, 1, 1, 0);
			if (rem && i < nr)
				bf_step(a, w, wstride, x, 0, kfull, last, 1, 1, 0);
			acc[i] = a[0][0];
		}
		KS_UNROLL
		for (int c = 0; c < VL / 2; c++)
			s[c] = ks_pair(1, acc[2 * c], acc[2 * c + 1]);
		vf_hsum_pairs(s, VL / 2, out);
		memcpy(m->y + r, out, (size_t)nr * sizeof(float));
	}
}

void kern__avx512bf16_mm_rows(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	if (m->n == 1) {
		bf_gemv(m, r0, r1);
		return;
	}
	if (m->n <= BF_T) { /* every token in each tile */
		const int rn = BF_SROWS(m->n);
		int32_t r = r0;
		for (; r + rn <= r1; r += rn)
			bf_tiles[2][m->n - 1](m, r, 0);
		for (; r < r1; r++)
			bf_tiles[0][m->n - 1](m, r, 0);
		return;
	}
	for (int32_t rb = r0; rb < r1; rb += BF_RB) {
		const int32_t re = rb + BF_RB < r1 ? rb + BF_RB : r1;
		for (int32_t t = 0; t < m->n; t += BF_TG) {
			const int tn = m->n - t < BF_TG ? m->n - t : BF_TG;
			const int rn = BF_ROWS(tn);
			int32_t r = rb;
			for (; r + rn <= re; r += rn)
				bf_tiles[1][tn - 1](m, r, t);
			for (; r < re; r++)
				bf_tiles[0][tn - 1](m, r, t);
		}
	}
}

double kern__avx512bf16_bench(int64_t iters)
{
	__m512 acc[16];
	__m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f00);
	KS_UNROLL
	for (int k = 0; k < 16; k++)
		acc[k] = _mm512_set1_ps((float)k); /* distinct chains: no common subexpression */
	for (int64_t it = 0; it < iters; it++) {
		KS_UNROLL
		for (int k = 0; k < 16; k++)
			acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
		__asm__ volatile("" : "+v"(a), "+v"(b));
	}
	__m512 s = acc[0];
	for (int k = 1; k < 16; k++)
		s = _mm512_add_ps(s, acc[k]);
	volatile float sink = _mm512_reduce_add_ps(s);
	(void)sink;
	return (double)iters * 16 * 32;
}
