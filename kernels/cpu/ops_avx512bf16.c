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
#define BF_KB	1024 /* columns per block of a long row (bf_rows_kblocked) */
#define BF_KR	32 /* rows per column block */
#define BF_KMIN 2048 /* rows longer than this go in column blocks (o, 2048, is faster whole) */

size_t kern__avx512bf16_mm_pack_stride(const struct kern_mm *m)
{
	return (size_t)((m->cols + BF_STEP - 1) / BF_STEP * BF_STEP) * sizeof(uint16_t);
}

/* Columns [k, k + 32) of a row of x as 16 bf16 pairs (zeros past cols). */
KS_INLINE __m512i bf_pairs(const float *x, int32_t k, int32_t cols)
{
	if (cols - k >= BF_STEP)
		return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16),
						    _mm512_loadu_ps(x + k));
	const int32_t rem = cols - k;
	__m512 lo = _mm512_maskz_loadu_ps(ks_mask(rem < 16 ? rem : 16), x + k);
	__m512 hi = _mm512_maskz_loadu_ps(ks_mask(rem > 16 ? rem - 16 : 0), x + k + 16);
	return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

static void rp_pack(const struct kern_mm *m, int32_t t0, int32_t t1);

void kern__avx512bf16_mm_pack(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	if (m->dtype == KERN_BF16_R16 && m->n > BF_T) {
		rp_pack(m, t0, t1);
		return;
	}
	for (int32_t t = t0; t < t1; t++) {
		const float *x = m->x + (size_t)t * (size_t)m->cols;
		uint16_t *xp = (uint16_t *)((char *)m->xp + (size_t)t * m->xp_stride);
		for (int32_t k = 0; k < m->cols; k += BF_STEP)
			_mm512_storeu_si512(xp + k, bf_pairs(x, k, m->cols));
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

/* Steps [k0, k1) of a tile (k1 = cols: the last, masked for the cols % 32 left);
 * PART (a row cut in column blocks): from the accumulators in sv unless k0 = 0,
 * back into sv unless the row ends here; at the row's end reduced and stored. The
 * lanes see the same steps in the same order however the row is cut, so the bits
 * do not depend on it. */
KS_INLINE void bf_tile_k(const struct kern_mm *m, int32_t r, int32_t t, int32_t k0, int32_t k1,
			 __m512 *sv, const int R, const int T, const int PF, const bool PART)
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
		acc[i][j] = PART && k0 ? sv[i * T + j] : _mm512_setzero_ps();
	const int32_t kfull = k1 < m->cols ? k1 : m->cols - rem;
	for (int32_t k = k0; k < kfull; k += BF_STEP)
		bf_step(acc, w, wstride, x, xs, k, (__mmask32)~0u, R, T, PF);
	if (PART && k1 < m->cols) {
		KS_UNROLL
		for (int i = 0; i < R; i++)
			KS_UNROLL
		for (int j = 0; j < T; j++)
			sv[i * T + j] = acc[i][j];
		return;
	}
	if (rem)
		bf_step(acc, w, wstride, x, xs, kfull, last, R, T, PF);
	ks_tile_store(m->y, m->rows, r, t, R, T, &acc[0][0], BF_T);
}

KS_INLINE void bf_tile(const struct kern_mm *m, int32_t r, int32_t t, const int R, const int T,
		       const int PF)
{
	bf_tile_k(m, r, t, 0, m->cols, NULL, R, T, PF, false);
}

/* Rows per tile of T tokens within a call of more than BF_T tokens: 8 for two
 * (memory-bound), 4 beyond (GEMM: 24 accumulators, ten loads per 24 vdpbf16ps). A
 * call of at most BF_T tokens (decode, a small batch) takes all of its tokens per
 * tile and few rows (BF_SROWS): each thread then reads its rows once, in address
 * order, the stream the hardware prefetcher follows best (docs/performance.md);
 * three rows from five tokens on share each activation load among three
 * vdpbf16ps (8 tokens on Zen 5: 1024-column rows stream at 0.70-0.80 of the read
 * bandwidth with three, 0.56-0.67 with two). */
#define BF_ROWS(T)  ((T) == 1 ? 1 : (T) == 2 ? BF_RMAX : 4)
#define BF_SROWS(T) ((T) <= 4 ? 1 : 3)

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

/* The GEMM's full tile over cols [k0, k1), for rows too long for a tile's
 * activations to stay in L1 (bf_rows_kblocked). */
static __attribute__((noinline)) void bf_mk(const struct kern_mm *m, int32_t r, int32_t t,
					    int32_t k0, int32_t k1, __m512 *sv)
{
	bf_tile_k(m, r, t, k0, k1, sv, BF_ROWS(BF_TG), BF_TG, 0, true);
}

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

/* Full tiles of rows [rb, re) and tokens [t, t + BF_TG) of a matrix with more
 * than BF_KMIN columns: in column blocks of BF_KB, each block over BF_KR rows of
 * tiles before the next, the accumulators parked in between, so that the tokens'
 * block of activations stays in L1 (a whole row of them would not: 6 tokens x
 * 3072 columns are 36 KiB beside the weights' 24 KiB). Returns the first row
 * left. */
static int32_t bf_rows_kblocked(const struct kern_mm *m, int32_t rb, int32_t re, int32_t t)
{
	enum { RN = BF_ROWS(BF_TG), NT = BF_KR / RN };
	__m512 sv[NT][RN * BF_TG];
	int32_t r = rb;
	while (r + RN <= re) {
		const int nt = (re - r) / RN < NT ? (re - r) / RN : NT;
		for (int32_t k0 = 0; k0 < m->cols; k0 += BF_KB) {
			const int32_t k1 = m->cols - k0 > BF_KB ? k0 + BF_KB : m->cols;
			for (int i = 0; i < nt; i++)
				bf_mk(m, r + i * RN, t, k0, k1, sv[i]);
		}
		r += nt * RN;
	}
	return r;
}

/* ---- KERN_BF16_R16 weights ------------------------------------------------
 * A tile is G panels (16 rows each, kern.h) x T tokens with one accumulator per
 * (panel, token), the panel's 16 rows in its lanes. A step takes one pair of
 * columns: one load per panel, one broadcast of each token's pair, G x T
 * vdpbf16ps. Every lane sums its row's pairs in order from zero whatever the tile,
 * the column blocks or the split, and nothing is summed across lanes, so a token
 * gets the same bits alone (GEMV) and in a batch (GEMM) by construction. */
#define RP_G  2	  /* panels per tile */
#define RP_GV 4	  /* panels per tile of a GEMV (four chains of vdpbf16ps in flight) */
#define RP_TOUCH 4096 /* a small batch's tile touches the next tile once per this many bytes */
#define RP_T	 KERN_CPU_R16_TOKENS /* most tokens per tile (2 x 12 accumulators) */
#define RP_KB 512 /* column pairs per block of a GEMM row (accumulators parked between) */
#define RP_RB 4	  /* panels per cache block of a GEMM (CPU_MM_GEMM_GRAIN rows) */

/* The activations of a GEMM (more than BF_T tokens) with KERN_BF16_R16 weights, in
 * the order its tiles read them: tokens in groups of RP_T (the last one shorter)
 * from the group's first token's row on, a group of g tokens holding for each
 * column pair k the g tokens' bf16 pairs side by side (at k g + token), so that a
 * tile reads its tokens' pairs from one pointer (with a pointer per token, 2 x 12
 * tiles ran out of registers). Tokens [t0, t1): whole groups (cpu.c), so that no
 * two threads write one cache line. Fewer tokens keep a row each (in a tile of 8
 * tokens over rows streamed from memory, 5-12 % faster than a group). */
static void rp_pack(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	const int32_t kp_n = (m->cols + 1) / 2;
	CM_ASSERT(t0 % RP_T == 0 && (t1 % RP_T == 0 || t1 == m->n));
	for (int32_t ga = t0; ga < t1; ga += RP_T) {
		const int gn = m->n - ga < RP_T ? m->n - ga : RP_T;
		uint32_t *xg = (uint32_t *)((char *)m->xp + (size_t)ga * m->xp_stride);
		for (int32_t kb = 0; kb < kp_n; kb += VL) {
			vf r[VL];
			KS_UNROLL
			for (int j = 0; j < VL; j++) {
				const float *xr = m->x + (size_t)(ga + j) * (size_t)m->cols;
				r[j] = j < gn ? (vf)bf_pairs(xr, 2 * kb, m->cols) : vf_zero();
			}
			vf_transpose(r);
			const int kn = kp_n - kb < VL ? kp_n - kb : VL;
			for (int k = 0; k < kn; k++)
				_mm512_mask_storeu_epi32(xg + (size_t)(kb + k) * (size_t)gn,
							 ks_mask(gn), (__m512i)r[k]);
		}
	}
}

/* Column pairs [kp0, kp1) of the tile at panel g, token t: from the accumulators
 * in sv unless kp0 = 0, back into sv unless the row ends at kp1, else stored.
 * SMALL: a call of 2 to BF_T tokens, whose activations keep a row per token (else
 * grouped, rp_pack; for one token the two are the same), and whose tile also
 * touches the next tile (one line per RP_TOUCH bytes, at the pace this tile is
 * read), so that the hardware prefetcher has taken up its streams when it starts. */
KS_INLINE void rp_tile(const struct kern_mm *m, int32_t g, int32_t t, int32_t kp0, int32_t kp1,
		       __m512 *sv, const int G, const int T, const bool SMALL)
{
	const int32_t kp_n = (m->cols + 1) / 2;
	const size_t ps = (size_t)kp_n * 2 * KERN_R16_ROWS; /* bf16 per panel */
	const uint16_t *w = (const uint16_t *)m->w + (size_t)g * ps;
	const bool touch = SMALL && (g + 2 * G) * KERN_R16_ROWS <= m->rows;
	const uint32_t *x = (const uint32_t *)((const char *)m->xp + (size_t)t * m->xp_stride);
	const size_t xs = m->xp_stride / sizeof(uint32_t); /* a token's row (SMALL) */
	__m512 acc[RP_GV][RP_T];
	KS_UNROLL
	for (int i = 0; i < G; i++)
		KS_UNROLL
	for (int j = 0; j < T; j++)
		acc[i][j] = kp0 ? sv[i * T + j] : _mm512_setzero_ps();
	for (int32_t kp = kp0; kp < kp1; kp++) {
		__m512i wv[RP_GV];
		KS_UNROLL
		for (int i = 0; i < G; i++)
			wv[i] = _mm512_load_si512(w + i * ps + (size_t)kp * 2 * KERN_R16_ROWS);
		if (touch && kp % (RP_TOUCH / (64 * G)) == 0)
			_mm_prefetch(
				(const char *)(w + G * ps + (size_t)kp * 2 * KERN_R16_ROWS * G),
				_MM_HINT_T0);
		KS_UNROLL
		for (int j = 0; j < T; j++) {
			const uint32_t pair = SMALL ? x[j * xs + (size_t)kp] : x[(size_t)kp * T + j];
			const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)pair);
			KS_UNROLL
			for (int i = 0; i < G; i++)
				acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv[i], xb);
		}
	}
	if (kp1 < kp_n) {
		KS_UNROLL
		for (int i = 0; i < G; i++)
			KS_UNROLL
		for (int j = 0; j < T; j++)
			sv[i * T + j] = acc[i][j];
		return;
	}
	KS_UNROLL
	for (int i = 0; i < G; i++) {
		const int32_t r = (g + i) * KERN_R16_ROWS, left = m->rows - r;
		const __mmask16 k = left >= KERN_R16_ROWS ? (__mmask16)0xffff : ks_mask(left);
		KS_UNROLL
		for (int j = 0; j < T; j++)
			_mm512_mask_storeu_ps(m->y + (size_t)(t + j) * (size_t)m->rows + r, k, acc[i][j]);
	}
}

typedef void (*rp_tile_fn)(const struct kern_mm *m, int32_t g, int32_t t, int32_t kp0,
			   int32_t kp1, __m512 *sv);

#define RP_TILE(NAME, G, T, SMALL)                                                                 \
	static __attribute__((noinline)) void NAME(const struct kern_mm *m, int32_t g, int32_t t,  \
						   int32_t kp0, int32_t kp1, __m512 *sv)           \
	{                                                                                          \
		rp_tile(m, g, t, kp0, kp1, sv, G, T, SMALL);                                       \
	}
/* a GEMM's (and GEMV's) tiles, and those of a call of 2 to BF_T tokens */
#define RP_TILES(T)                                                                                \
	RP_TILE(rp_1_##T, 1, T, false)                                                             \
	RP_TILE(rp_2_##T, 2, T, false)
#define RS_TILES(T)                                                                                \
	RP_TILE(rs_1_##T, 1, T, true)                                                              \
	RP_TILE(rs_2_##T, 2, T, true)

RP_TILES(1)
RP_TILES(2)
RP_TILES(3)
RP_TILES(4)
RP_TILES(5)
RP_TILES(6)
RP_TILES(7)
RP_TILES(8)
RP_TILES(9)
RP_TILES(10)
RP_TILES(11)
RP_TILES(12)
RS_TILES(2)
RS_TILES(3)
RS_TILES(4)
RS_TILES(5)
RS_TILES(6)
RS_TILES(7)
RS_TILES(8)
RP_TILE(rp_3_1, 3, 1, false) /* a GEMV's tiles of three and four panels */
RP_TILE(rp_4_1, 4, 1, false)

/* [G - 1][T - 1] */
static const rp_tile_fn rp_tiles[RP_G][RP_T] = {
	{rp_1_1, rp_1_2, rp_1_3, rp_1_4, rp_1_5, rp_1_6, rp_1_7, rp_1_8, rp_1_9, rp_1_10, rp_1_11,
	 rp_1_12},
	{rp_2_1, rp_2_2, rp_2_3, rp_2_4, rp_2_5, rp_2_6, rp_2_7, rp_2_8, rp_2_9, rp_2_10, rp_2_11,
	 rp_2_12},
};
/* [G - 1][T - 2] */
static const rp_tile_fn rs_tiles[RP_G][BF_T - 1] = {
	{rs_1_2, rs_1_3, rs_1_4, rs_1_5, rs_1_6, rs_1_7, rs_1_8},
	{rs_2_2, rs_2_3, rs_2_4, rs_2_5, rs_2_6, rs_2_7, rs_2_8},
};

/* Rows [r0, r1) (r0 on a panel; r1 too, or the matrix's end). A call of at most
 * BF_T tokens (decode, small batches) takes them all in each tile and walks its
 * panels once, in address order; a GEMM takes RP_RB panels at a time (in L2) through
 * every token group, in column blocks (the group's activations stay in L1). */
static void rp_rows(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	const int32_t g0 = r0 / KERN_R16_ROWS, g1 = (r1 + KERN_R16_ROWS - 1) / KERN_R16_ROWS;
	const int32_t kp_n = (m->cols + 1) / 2;
	if (m->n == 1) { /* one chain per panel: a GEMV wants several in flight */
		static const rp_tile_fn gv[RP_GV] = {rp_1_1, rp_2_1, rp_3_1, rp_4_1};
		for (int32_t g = g0; g < g1; g += RP_GV)
			gv[(g1 - g < RP_GV ? g1 - g : RP_GV) - 1](m, g, 0, 0, kp_n, NULL);
		return;
	}
	if (m->n <= BF_T) {
		/* the hardware prefetcher is slow to take up each tile's new streams: touching
		 * the next tile ahead made 2-8 tokens 5-22 % faster (alternating slices);
		 * touching it densely (a line per 512 bytes) gained nothing */
		for (int32_t g = g0; g < g1; g += RP_G)
			rs_tiles[(g1 - g < RP_G ? g1 - g : RP_G) - 1][m->n - 2](m, g, 0, 0, kp_n,
										NULL);
		return;
	}
	__m512 sv[RP_RB / RP_G][RP_G * RP_T];
	for (int32_t gb = g0; gb < g1; gb += RP_RB) {
		const int32_t ge = g1 - gb < RP_RB ? g1 : gb + RP_RB;
		for (int32_t t = 0; t < m->n; t += RP_T) {
			const int tn = m->n - t < RP_T ? m->n - t : RP_T;
			for (int32_t kp = 0; kp < kp_n; kp += RP_KB) {
				const int32_t kp1 = kp_n - kp < RP_KB ? kp_n : kp + RP_KB;
				for (int32_t g = gb; g < ge; g += RP_G)
					rp_tiles[(ge - g < RP_G ? ge - g : RP_G) - 1][tn - 1](
						m, g, t, kp, kp1, sv[(g - gb) / RP_G]);
			}
		}
	}
}

void kern__avx512bf16_mm_rows(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	if (m->dtype == KERN_BF16_R16) {
		rp_rows(m, r0, r1);
		return;
	}
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
			if (tn == BF_TG && m->cols > BF_KMIN)
				r = bf_rows_kblocked(m, rb, re, t);
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

/* ---- attention with bf16 dot products -------------------------------------
 * For a backend with bf16 activations: q, K and V rounded to bf16 (nearest even),
 * multiplied by vdpbf16ps; scores, softmax and sums stay f32. A query gets the
 * same bits alone (decode) and in a prefill batch. A chunk of up to BA_CW keys of
 * one KV head is converted once per call, in two halves of VL keys, into
 *   kt[h][s][l]: lane j = the pair of dims (32 s + 2 l, 32 s + 2 l + 1) of key
 *             VL h + j (or, when fewer than BA_NP heads share the chunk, the keys'
 *             rows of pairs, ba_dots_rows, which give the same scores);
 *   vt[b][i]: dword d = dim 16 b + d of keys 2 i and 2 i + 1;
 * zero past head_dim and past the chunk's last key. The softmax state is updated
 * once per chunk (both halves' scores). A (query, head)'s score lanes
 * p[l] take pair l of each 32-dim step, in order, and are added by the halving
 * tree (l + 8, + 4, + 2, + 1), four l at a time (those equal modulo 4) for
 * BA_NP heads at once, each load of kt serving all of them; its values take the
 * chunk's key pairs in order, each load of vt serving all of them. A head's key
 * pair that straddles its last visible key has the other key's values masked, as
 * alone (where that key is past the chunk) they are zero. The weights are rounded
 * to bf16 before they are summed into l, so acc / l is normalised exactly; l
 * is kept by lanes and added up once, at the end. */
#define BA_HD 256 /* most head_dim (cpu.c: KERN_CPU_ATTN_BF16_HD) */
_Static_assert(BA_HD == KERN_CPU_ATTN_BF16_HD, "one limit");
#define BA_NP 4	  /* (query, head) pairs per pass over a chunk */
#define BA_PVD 4  /* 16-dim blocks of the values per pass (BA_NP x BA_PVD accumulators) */
/* keys per chunk: per softmax update, and between the value accumulators' loads
 * and stores (16: 3-15 % slower) */
#define BA_CW (2 * VL)

/* A head's max is raised only when a score exceeds it by more than this, so that
 * most chunks skip the horizontal max and the rescaling (weights then reach
 * e^BA_LAZY at most, far inside f32 and bf16). */
#define BA_LAZY 8.0f

struct ba_state {
	float m;
	__m512 l;	   /* lanes of the sum of the weights, added up at the end */
	float *acc;
	const uint32_t *q; /* bf16 pairs, 16 per 32-dim step */
};

/* Row of f32 or f16: n <= VL elements at d, zeros past them. */
KS_INLINE __m512 ba_row(const char *row, int32_t d, int n, bool f16)
{
	if (n <= 0)
		return _mm512_setzero_ps();
	n = n < VL ? n : VL;
	return f16 ? vf_load_f16_part((const uint16_t *)row + d, n)
		   : vf_load_part((const float *)row + d, n);
}

/* 32 elements at d of a row (n valid) as 16 bf16 pairs. */
KS_INLINE __m512i ba_pairs(const char *row, int32_t d, int n, bool f16)
{
	return (__m512i)_mm512_cvtne2ps_pbh(ba_row(row, d + VL, n - VL, f16),
					    ba_row(row, d, n, f16));
}

/* kt (or, ROWS, the keys' rows kr[j][s] = their pairs of step s) and vt of a
 * half chunk's first cn keys (rows kp, vp): vt[b * BA_CW / 2 + i] for its VL / 2
 * pairs i. FULL: cn == VL and head_dim a multiple of 32 (no masks). */
KS_INLINE void ba_convert_t(const char *const *kp, const char *const *vp, int cn, int32_t hd,
			    bool f16, __m512i *kt, __m512i *vt, const bool FULL, const bool ROWS)
{
	const int nst = (hd + 31) / 32, nb = (hd + VL - 1) / VL;
	for (int j = 0; ROWS && j < cn; j++)
		for (int s = 0; s < nst; s++)
			kt[j * nst + s] = ba_pairs(kp[j], 32 * s, FULL ? 32 : hd - 32 * s, f16);
	for (int s = 0; !ROWS && s < nst; s++) {
		vf r[VL];
		KS_UNROLL
		for (int j = 0; j < VL; j++)
			r[j] = FULL || j < cn ? (vf)ba_pairs(kp[j], 32 * s, FULL ? 32 : hd - 32 * s,
							    f16)
					      : vf_zero();
		vf_transpose(r);
		KS_UNROLL
		for (int l = 0; l < VL; l++)
			kt[s * VL + l] = (__m512i)r[l];
	}
	/* words 2 d and 2 d + 1 <- d and 16 + d of the cvtne2ps result */
	const __m512i mix = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
					     24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
					     1, 16, 0);
	for (int b = 0; b < nb; b++) {
		const int n = FULL ? VL : hd - VL * b;
		KS_UNROLL
		for (int i = 0; i < VL / 2; i++) {
			__m512 a = FULL || 2 * i < cn ? ba_row(vp[2 * i], VL * b, n, f16) : vf_zero();
			__m512 c = FULL || 2 * i + 1 < cn ? ba_row(vp[2 * i + 1], VL * b, n, f16)
							  : vf_zero();
			vt[b * (BA_CW / 2) + i] =
				_mm512_permutexvar_epi16(mix, (__m512i)_mm512_cvtne2ps_pbh(c, a));
		}
	}
}

static void ba_convert(const char *const *kp, const char *const *vp, int cn, int32_t hd, bool f16,
		       bool rows, __m512i *kt, __m512i *vt)
{
	if (cn == VL && hd % 32 == 0) {
		if (rows)
			ba_convert_t(kp, vp, cn, hd, f16, kt, vt, true, true);
		else if (f16)
			ba_convert_t(kp, vp, cn, hd, true, kt, vt, true, false);
		else
			ba_convert_t(kp, vp, cn, hd, false, kt, vt, true, false);
	} else if (rows) {
		ba_convert_t(kp, vp, cn, hd, f16, kt, vt, false, true);
	} else {
		ba_convert_t(kp, vp, cn, hd, f16, kt, vt, false, false);
	}
}

/* The same scores from the keys' rows kr (cn of them): key j's lanes l run the
 * same vdpbf16ps as lane j of p[l] in ba_dots, and vf_hsum_vl adds them by the
 * same halving tree, so the bits are those of ba_dots; without the transpose,
 * for chunks that few heads share (decode). */
KS_INLINE void ba_dots_rows(struct ba_state *const *st, int np, const __m512i *kr, int cn, int nst,
			    __m512 *sc)
{
	for (int u = 0; u < np; u++) {
		__m512 r[VL];
		KS_UNROLL
		for (int j = 0; j < VL; j++) {
			r[j] = _mm512_setzero_ps();
			if (j >= cn)
				continue;
			for (int s = 0; s < nst; s++)
				r[j] = _mm512_dpbf16_ps(
					r[j], (__m512bh)kr[j * nst + s],
					(__m512bh)_mm512_loadu_si512(st[u]->q + s * VL));
		}
		sc[u] = vf_hsum_vl(r);
	}
}

/* sc[u] = the scores of head u (lanes: keys) before scaling. */
KS_INLINE void ba_dots(struct ba_state *const *st, const __m512i *kt, int nst, __m512 *sc)
{
	__m512 t[4][BA_NP];
	KS_UNROLL
	for (int a = 0; a < 4; a++) {
		__m512 p[4][BA_NP];
		KS_UNROLL
		for (int k = 0; k < 4; k++)
			KS_UNROLL
		for (int u = 0; u < BA_NP; u++)
			p[k][u] = _mm512_setzero_ps();
		for (int s = 0; s < nst; s++)
			KS_UNROLL
		for (int k = 0; k < 4; k++) {
			const int l = a + 4 * k;
			__m512bh kv = (__m512bh)kt[s * VL + l];
			KS_UNROLL
			for (int u = 0; u < BA_NP; u++)
				p[k][u] = _mm512_dpbf16_ps(
					p[k][u], kv,
					(__m512bh)_mm512_set1_epi32((int)st[u]->q[s * VL + l]));
		}
		KS_UNROLL
		for (int u = 0; u < BA_NP; u++)
			t[a][u] = _mm512_add_ps(_mm512_add_ps(p[0][u], p[2][u]),
						_mm512_add_ps(p[1][u], p[3][u]));
	}
	KS_UNROLL
	for (int u = 0; u < BA_NP; u++)
		sc[u] = _mm512_add_ps(_mm512_add_ps(t[0][u], t[2][u]),
				      _mm512_add_ps(t[1][u], t[3][u]));
}

/* The online-softmax update of one head by the scores s[2] of its first cn keys
 * (s[h]: keys VL h + lane); pb gets the weights as bf16 pairs. */
KS_INLINE void ba_softmax(struct ba_state *st, const __m512 *s, int cn, int32_t hd, float scale,
			  uint32_t *pb)
{
	__m512 x[2];
	__mmask16 over = 0;
	KS_UNROLL
	for (int h = 0; h < 2; h++) {
		const int n = cn - VL * h < 0 ? 0 : cn - VL * h < VL ? cn - VL * h : VL;
		x[h] = vf_keep_first(_mm512_mul_ps(s[h], _mm512_set1_ps(scale)), n,
				     vf_set1(-INFINITY));
		over |= _mm512_cmp_ps_mask(x[h], vf_set1(st->m + BA_LAZY), _CMP_GT_OQ);
	}
	if (over) {
		const float cmax = vf_hmax(_mm512_max_ps(x[0], x[1]));
		const __m512 alpha = vf_exp(vf_set1(st->m - cmax));
		for (int32_t d = 0; d < hd; d += VL) {
			const int n = hd - d < VL ? hd - d : VL;
			vf_store_part(st->acc + d, _mm512_mul_ps(vf_load_part(st->acc + d, n), alpha),
				      n);
		}
		st->l = _mm512_mul_ps(st->l, alpha);
		st->m = cmax;
	}
	KS_UNROLL
	for (int h = 0; h < 2; h++) {
		const __m256i w = (__m256i)_mm512_cvtneps_pbh(vf_exp(vf_sub(x[h], vf_set1(st->m))));
		st->l = _mm512_add_ps(st->l, _mm512_castsi512_ps(_mm512_slli_epi32(
						     _mm512_cvtepu16_epi32(w), 16)));
		_mm256_storeu_si256((__m256i *)(pb + VL / 2 * h), w);
	}
}

/* acc of heads u < np += their weights pb[u] x the chunk's values, D 16-dim
 * blocks at a time from block b: first the key pairs every head sees whole
 * (ALL: every head has cn[u] = cn[0]), then the straddling pairs. */
KS_INLINE void ba_pv(struct ba_state *const *st, uint32_t (*pb)[BA_CW / 2], const int *cn, int np,
		     const __m512i *vt, int32_t hd, int b, const int D, const bool ALL)
{
	int n[BA_PVD], cmax = 0;
	__m512 a[BA_NP][BA_PVD];
	KS_UNROLL
	for (int e = 0; e < D; e++)
		n[e] = hd - VL * (b + e) < VL ? hd - VL * (b + e) : VL;
	KS_UNROLL
	for (int u = 0; u < BA_NP; u++)
		KS_UNROLL
	for (int e = 0; e < D; e++) {
		a[u][e] = _mm512_setzero_ps();
		if (u < np) {
			cmax = cn[u] > cmax ? cn[u] : cmax;
			a[u][e] = vf_load_part(st[u]->acc + VL * (b + e), n[e]);
		}
	}
	for (int i = 0; 2 * i + 1 < cmax; i++) {
		__m512i v[BA_PVD];
		KS_UNROLL
		for (int e = 0; e < D; e++)
			v[e] = vt[(b + e) * (BA_CW / 2) + i];
		KS_UNROLL
		for (int u = 0; u < BA_NP; u++) {
			if (!(ALL ? u < np : u < np && 2 * i + 1 < cn[u]))
				continue;
			const __m512bh w = (__m512bh)_mm512_set1_epi32((int)pb[u][i]);
			KS_UNROLL
			for (int e = 0; e < D; e++)
				a[u][e] = _mm512_dpbf16_ps(a[u][e], (__m512bh)v[e], w);
		}
	}
	const __m512i lo = _mm512_set1_epi32(0xffff);
	KS_UNROLL
	for (int u = 0; u < BA_NP; u++) {
		if (u >= np || !(cn[u] & 1))
			continue;
		const int i = cn[u] / 2;
		const __m512bh w = (__m512bh)_mm512_set1_epi32((int)pb[u][i]);
		KS_UNROLL
		for (int e = 0; e < D; e++)
			a[u][e] = _mm512_dpbf16_ps(
				a[u][e],
				(__m512bh)_mm512_and_si512(vt[(b + e) * (BA_CW / 2) + i], lo), w);
	}
	KS_UNROLL
	for (int u = 0; u < BA_NP; u++)
		KS_UNROLL
	for (int e = 0; e < D; e++)
		if (u < np)
			vf_store_part(st[u]->acc + VL * (b + e), a[u][e], n[e]);
}

/* A pass of np <= BA_NP (query, head) pairs over a chunk: their states (padded with
 * stand-ins for missing pairs, whose results are dropped) and the keys each sees. */
struct ba_group {
	struct ba_state *st[BA_NP];
	int cn[BA_NP];
	int np;
};

/* The scores of a group over the chunk (cmax keys at most): sc[h][u] for half h,
 * from kt[h] (converted, or, rows, the keys' rows). */
static void ba_scores(const struct ba_group *gr, int cmax, bool rows, const __m512i *const *kt,
		      int32_t hd, __m512 (*sc)[BA_NP])
{
	for (int h = 0; h < 2; h++) {
		const int n = cmax - VL * h < VL ? cmax - VL * h : VL;
		if (n <= 0) /* no keys: every lane masked by the softmax */
			for (int u = 0; u < BA_NP; u++)
				sc[h][u] = _mm512_setzero_ps();
		else if (rows)
			ba_dots_rows(gr->st, gr->np, kt[h], n, (hd + 31) / 32, sc[h]);
		else
			ba_dots(gr->st, kt[h], (hd + 31) / 32, sc[h]);
	}
}

/* The groups of one chunk, in order: each group's softmax update, then (while its
 * exponentials are under way) the next group's scores, then its values. */
static void ba_chunk(struct ba_group *grs, int ng, int cmax, bool rows, const __m512i *const *kt,
		     const __m512i *vt, int32_t hd, float scale)
{
	__m512 sc[2][2][BA_NP]; /* [group parity][half][pair] */
	uint32_t pb[BA_NP][BA_CW / 2];
	const int nb = (hd + VL - 1) / VL;
	ba_scores(&grs[0], cmax, rows, kt, hd, sc[0]);
	for (int gi = 0; gi < ng; gi++) {
		const struct ba_group *gr = &grs[gi];
		struct ba_state *const *st = gr->st;
		const int np = gr->np;
		for (int u = 0; u < np; u++) {
			const __m512 su[2] = {sc[gi & 1][0][u], sc[gi & 1][1][u]};
			ba_softmax(st[u], su, gr->cn[u], hd, scale, pb[u]);
		}
		if (gi + 1 < ng)
			ba_scores(&grs[gi + 1], cmax, rows, kt, hd, sc[(gi + 1) & 1]);
		bool all = np == BA_NP;
		for (int u = 1; u < np; u++)
			all = all && gr->cn[u] == gr->cn[0];
		int b = 0;
		for (; b + BA_PVD <= nb; b += BA_PVD) {
			if (all)
				ba_pv(st, pb, gr->cn, np, vt, hd, b, BA_PVD, true);
			else
				ba_pv(st, pb, gr->cn, np, vt, hd, b, BA_PVD, false);
		}
		for (; b + 2 <= nb; b += 2)
			ba_pv(st, pb, gr->cn, np, vt, hd, b, 2, false);
		if (b < nb)
			ba_pv(st, pb, gr->cn, np, vt, hd, b, 1, false);
	}
}

void kern__avx512bf16_attn_part(const struct kern_attn_params *p, const float *q,
				const int32_t *qi, int32_t nq, int32_t h0, int32_t h1, int32_t s,
				int32_t t0, const int32_t *t1, const struct kern_attn_state *out)
{
	const struct kern_kv_layer *kv = p->kv;
	const int32_t hd = kv->head_dim, nh = h1 - h0, g = p->n_head / kv->n_kv_head;
	const int nst = (hd + 31) / 32;
	const bool f16 = kv->dtype == KERN_F16;
	const struct kern_kv_seg *seg =
		&p->segs[(size_t)p->queries[qi[0]].seq * (size_t)p->n_seg + (size_t)s];
	struct ba_state st[KERN_CPU_ATTN_MAXH];
	uint32_t qb[KERN_CPU_ATTN_BUF] __attribute__((aligned(64)));
	__m512i kt[2][BA_HD / 32 * VL], vt[BA_HD / VL * (BA_CW / 2)];
	const __m512i *const kth[2] = {kt[0], kt[1]};
	struct ba_group grs[KERN_CPU_ATTN_MAXH / BA_NP];
	CM_ASSERT(hd <= BA_HD && nq * nh <= KERN_CPU_ATTN_MAXH);
	CM_ASSERT((size_t)nq * (size_t)nh * (size_t)nst * VL <= KERN_CPU_ATTN_BUF);
	int32_t tend = t0;
	for (int32_t u = 0; u < nq; u++) {
		tend = t1[u] > tend ? t1[u] : tend;
		memset(out[u].acc, 0, (size_t)nh * (size_t)hd * sizeof(float));
		for (int32_t h = 0; h < nh; h++) {
			const float *qh = q + ((size_t)qi[u] * (size_t)p->n_head + (size_t)(h0 + h)) *
						      (size_t)hd;
			uint32_t *qp = qb + (size_t)(u * nh + h) * (size_t)nst * VL;
			for (int k = 0; k < nst; k++)
				_mm512_storeu_si512(
					qp + k * VL,
					hd % 32 ? ba_pairs((const char *)qh, 32 * k, hd - 32 * k, false)
						: (__m512i)_mm512_cvtne2ps_pbh(
							  _mm512_loadu_ps(qh + 32 * k + VL),
							  _mm512_loadu_ps(qh + 32 * k)));
			st[u * nh + h] = (struct ba_state){.m = -INFINITY,
							   .l = _mm512_setzero_ps(),
							   .acc = out[u].acc + (size_t)h * hd,
							   .q = qp};
		}
	}
	for (int32_t c0 = t0; c0 < tend; c0 += BA_CW) {
		const int cmax = tend - c0 < BA_CW ? tend - c0 : BA_CW;
		for (int32_t ha = 0, hb; ha < nh; ha = hb) {
			hb = kern__attn_group_end(h0, ha, nh, g);
			const char *kh[BA_CW], *vh[BA_CW];
			kern__attn_rows(kv, seg, c0, cmax, (h0 + ha) / g, kh, vh);
			/* few heads on this chunk (decode): no transpose */
			const bool rows = nq * (hb - ha) < BA_NP;
			if (rows && c0 + BA_CW < tend)
				kern__attn_prefetch(kv, seg, c0 + BA_CW,
						    tend - c0 - BA_CW < BA_CW ? tend - c0 - BA_CW
									      : BA_CW,
						    (h0 + ha) / g);
			for (int h = 0; h * VL < cmax; h++)
				ba_convert(kh + VL * h, vh + VL * h,
					   cmax - VL * h < VL ? cmax - VL * h : VL, hd, f16, rows,
					   kt[h], vt + VL / 2 * h);
			int ng = 0;
			for (int32_t h = ha; h < hb; h++)
				for (int32_t u = 0; u < nq; u++) {
					if (t1[u] <= c0)
						continue;
					if (!ng || grs[ng - 1].np == BA_NP)
						grs[ng++].np = 0;
					struct ba_group *gr = &grs[ng - 1];
					gr->cn[gr->np] = t1[u] - c0 < BA_CW ? t1[u] - c0 : BA_CW;
					gr->st[gr->np++] = &st[u * nh + h];
				}
			if (!ng)
				continue;
			for (int u = grs[ng - 1].np; u < BA_NP; u++)
				grs[ng - 1].st[u] = grs[ng - 1].st[0]; /* stand-ins */
			ba_chunk(grs, ng, cmax, rows, kth, vt, hd, p->scale);
		}
	}
	for (int32_t u = 0; u < nq; u++)
		for (int32_t h = 0; h < nh; h++) {
			out[u].m[h] = st[u * nh + h].m;
			out[u].l[h] = vf_hsum(st[u * nh + h].l);
		}
}
