/* The KERN_Q8_0 matmul with AVX512_VNNI: this file alone is built with
 * -mavx512vnni and runs only when the CPU has it (kern_cpu_has_vnni).
 *
 * Layouts: q8.c and kern.h. One 64-byte load of a group holds 4 consecutive
 * weights of each of its 16 blocks, so vpdpbusd leaves block j's partial dot
 * product in lane j; eight of them (the 32 weights of every block) give the group's
 * 16 exact int32 dots, which are converted and scaled (weight d x activation d)
 * into an f32 accumulator, one lane per block position. A micro-tile keeps R rows
 * x T tokens of them; every accumulator sees the same sequence whatever the tile,
 * and is reduced by vf_hsum_pairs, so GEMV and GEMM agree bit for bit.
 */
#define KERN_SIMD_AVX512 1
#include "kernels/cpu/cpu-impl.h"
#include "kernels/cpu/simd-impl.h"

#define Q8_RMAX	 4  /* most rows per micro-tile */
#define Q8_T	 8  /* most tokens per micro-tile */
#define Q8_TG	 3  /* tokens per micro-tile of a call with more than Q8_T tokens */
_Static_assert(Q8_RMAX * Q8_T <= KS_TILE_MAX, "a micro-tile's accumulators fit ks_tile_store");
#define Q8_RB	 64 /* rows per cache block */
#define Q8_SMALL_PF 4 /* tiles of 3+ tokens of a small call prefetch this many tiles ahead
		       * (as BF_SMALL_PF in ops_avx512bf16.c) */
#define Q8_SLICE (KERN_Q8_BLOCK / 4)
/* A one-row GEMV tile prefetches the weights this many bytes ahead into L2: the
 * hardware prefetcher alone streams q8_0 rows of 1024 columns (1088 bytes) at
 * 0.67-0.74 of the read bandwidth on Zen 5, and at 0.87-0.99 with it (bf16 rows,
 * twice as long, gain nothing from it; docs/performance.md). */
#define Q8_GEMV_AHEAD 4096

/* Where things are for one matmul. */
struct q8_geo {
	int32_t cols;
	int32_t nblk;
	size_t ws; /* weight row stride, bytes */
	size_t wq; /* offset of the int8 values in a weight row (the scales come first) */
	size_t xs; /* packed activation stride, bytes */
	size_t xd; /* offset of the activation scales in a packed row */
	size_t xc; /* offset of the corrections */
};

static struct q8_geo q8_geo_of(const struct kern_mm *m)
{
	const struct kern_mat w = {.dtype = KERN_Q8_0, .rows = m->rows, .cols = m->cols};
	return (struct q8_geo){.cols = m->cols,
			       .nblk = m->cols / KERN_Q8_BLOCK,
			       .ws = kern_mat_row_bytes(&w),
			       .wq = KERN_Q8_WQ(m->cols),
			       .xs = m->xp_stride,
			       .xd = KERN_Q8_XD(m->cols),
			       .xc = KERN_Q8_XC(m->cols)};
}

/* Group g (nb blocks; FULL when nb is 16) of R rows x T tokens: the int32 dots,
 * then facc += float(dots) * (dw * dx). Two-token tiles prefetch the next tile's
 * rows into L2. */
KS_INLINE void q8_group(__m512 (*facc)[Q8_T], const uint8_t *w, const uint8_t *x,
			const struct q8_geo *q, int32_t g, int nb, const bool FULL, const int R,
			const int T, const int PF)
{
	const __mmask64 mb = FULL ? ~0ull : (1ull << (nb * 4)) - 1;
	const __mmask16 md = ks_mask(nb);
	const size_t q0 = (size_t)g * KERN_Q8_GROUP * KERN_Q8_BLOCK;
	__m512i acc[Q8_RMAX][Q8_T];
	KS_UNROLL
	for (int j = 0; j < T; j++) {
		const uint8_t *c = x + j * q->xs + q->xc + (size_t)g * KERN_Q8_GROUP * 4;
		__m512i cv = FULL ? _mm512_loadu_si512(c) : _mm512_maskz_loadu_epi32(md, c);
		KS_UNROLL
		for (int i = 0; i < R; i++)
			acc[i][j] = cv;
	}
	KS_UNROLL
	for (int s = 0; s < Q8_SLICE; s++) {
		const size_t o = q0 + (size_t)s * (size_t)nb * 4;
		__m512i xv[Q8_T];
		KS_UNROLL
		for (int j = 0; j < T; j++)
			xv[j] = FULL ? _mm512_loadu_si512(x + j * q->xs + o)
				     : _mm512_maskz_loadu_epi8(mb, x + j * q->xs + o);
		KS_UNROLL
		for (int i = 0; i < R; i++) {
			const uint8_t *p = w + i * q->ws + q->wq + o;
			if (T == 1 && R == 1)
				_mm_prefetch((const char *)p + Q8_GEMV_AHEAD, _MM_HINT_T2);
			else if (T == 2 && FULL)
				_mm_prefetch((const char *)p + R * q->ws, _MM_HINT_T2);
			else if (PF && FULL)
				_mm_prefetch((const char *)p + PF * R * q->ws, _MM_HINT_T2);
			__m512i wv = FULL ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(mb, p);
			KS_UNROLL
			for (int j = 0; j < T; j++)
				acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], wv, xv[j]);
		}
	}
	KS_UNROLL
	for (int i = 0; i < R; i++) {
		const uint8_t *sp = w + i * q->ws + (size_t)g * KERN_Q8_GROUP * 2;
		if (T == 2)
			_mm_prefetch((const char *)sp + R * q->ws, _MM_HINT_T2);
		__m512 sw = _mm512_cvtph_ps(FULL ? _mm256_loadu_si256((const __m256i *)sp)
						 : _mm256_maskz_loadu_epi16(md, sp));
		KS_UNROLL
		for (int j = 0; j < T; j++) {
			const float *d = (const float *)(x + j * q->xs + q->xd) + g * KERN_Q8_GROUP;
			__m512 dx = FULL ? _mm512_loadu_ps(d) : _mm512_maskz_loadu_ps(md, d);
			facc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]),
						     _mm512_mul_ps(sw, dx), facc[i][j]);
		}
	}
}

KS_INLINE void q8_tile(const struct kern_mm *m, int32_t r, int32_t t, const int R, const int T,
		       const int PF)
{
	const struct q8_geo q = q8_geo_of(m);
	const uint8_t *w = (const uint8_t *)m->w + (size_t)r * q.ws;
	const uint8_t *x = (const uint8_t *)m->xp + (size_t)t * q.xs;
	__m512 facc[Q8_RMAX][Q8_T];
	KS_UNROLL
	for (int i = 0; i < R; i++)
		KS_UNROLL
	for (int j = 0; j < T; j++)
		facc[i][j] = _mm512_setzero_ps();
	const int32_t gfull = q.nblk / KERN_Q8_GROUP;
	for (int32_t g = 0; g < gfull; g++)
		q8_group(facc, w, x, &q, g, KERN_Q8_GROUP, true, R, T, PF);
	if (q.nblk % KERN_Q8_GROUP)
		q8_group(facc, w, x, &q, gfull, q.nblk % KERN_Q8_GROUP, false, R, T, PF);

	ks_tile_store(m->y, m->rows, r, t, R, T, &facc[0][0], Q8_T);
}

/* Rows per tile of T tokens in a call of more than Q8_T tokens; a call of at most
 * Q8_T tokens takes one row and all its tokens per tile (a sequential stream, as in
 * ops_avx512bf16.c). */
#define Q8_ROWS(T) ((T) == 1 ? 1 : 4)

#define Q8_TILE(T)                                                                                 \
	static __attribute__((noinline)) void q8_m##T(const struct kern_mm *m, int32_t r,          \
						      int32_t t)                                   \
	{                                                                                          \
		q8_tile(m, r, t, Q8_ROWS(T), T, 0);                                                \
	}                                                                                          \
	static __attribute__((noinline)) void q8_s##T(const struct kern_mm *m, int32_t r,          \
						      int32_t t)                                   \
	{                                                                                          \
		q8_tile(m, r, t, 1, T, (T) > 2 ? Q8_SMALL_PF : 0);                                 \
	}

Q8_TILE(1)
Q8_TILE(2)
Q8_TILE(3)

#define Q8_TILE1(T)                                                                                \
	static __attribute__((noinline)) void q8_s##T(const struct kern_mm *m, int32_t r,          \
						      int32_t t)                                   \
	{                                                                                          \
		q8_tile(m, r, t, 1, T, Q8_SMALL_PF);                                               \
	}

Q8_TILE1(4)
Q8_TILE1(5)
Q8_TILE1(6)
Q8_TILE1(7)
Q8_TILE1(8)

typedef void (*q8_tile_fn)(const struct kern_mm *m, int32_t r, int32_t t);

static const q8_tile_fn q8_tiles[2][Q8_T] = {
	{q8_s1, q8_s2, q8_s3, q8_s4, q8_s5, q8_s6, q8_s7, q8_s8},
	{q8_m1, q8_m2, q8_m3, NULL, NULL, NULL, NULL, NULL},
};

/* One token (GEMV): rows one after another, each accumulated as a one-row tile,
 * reduced VL rows at a time (the same bits, as in vec-impl.h's mm_gemv). */
static __attribute__((noinline)) void q8_gemv(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	const struct q8_geo q = q8_geo_of(m);
	const int32_t gfull = q.nblk / KERN_Q8_GROUP;
	const uint8_t *x = (const uint8_t *)m->xp;
	for (int32_t r = r0; r < r1; r += VL) {
		const int nr = r1 - r < VL ? r1 - r : VL;
		__m512 acc[VL], s[VL / 2];
		float out[VL];
		for (int i = 0; i < VL; i++) {
			__m512 facc[Q8_RMAX][Q8_T];
			facc[0][0] = _mm512_setzero_ps();
			const uint8_t *w = (const uint8_t *)m->w + (size_t)(r + i) * q.ws;
			for (int32_t g = 0; g < gfull && i < nr; g++)
				q8_group(facc, w, x, &q, g, KERN_Q8_GROUP, true, 1, 1, 0);
			if (q.nblk % KERN_Q8_GROUP && i < nr)
				q8_group(facc, w, x, &q, gfull, q.nblk % KERN_Q8_GROUP, false, 1, 1,
					 0);
			acc[i] = facc[0][0];
		}
		KS_UNROLL
		for (int c = 0; c < VL / 2; c++)
			s[c] = ks_pair(1, acc[2 * c], acc[2 * c + 1]);
		vf_hsum_pairs(s, VL / 2, out);
		memcpy(m->y + r, out, (size_t)nr * sizeof(float));
	}
}

void kern__vnni_q8_rows(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	if (m->n == 1) {
		q8_gemv(m, r0, r1);
		return;
	}
	if (m->n <= Q8_T) { /* one row of every token at a time */
		for (int32_t r = r0; r < r1; r++)
			q8_tiles[0][m->n - 1](m, r, 0);
		return;
	}
	for (int32_t rb = r0; rb < r1; rb += Q8_RB) {
		const int32_t re = rb + Q8_RB < r1 ? rb + Q8_RB : r1;
		for (int32_t t = 0; t < m->n; t += Q8_TG) {
			const int tn = m->n - t < Q8_TG ? m->n - t : Q8_TG;
			const int rn = Q8_ROWS(tn);
			int32_t r = rb;
			for (; r + rn <= re; r += rn)
				q8_tiles[1][tn - 1](m, r, t);
			for (; r < re; r++)
				q8_tiles[0][tn - 1](m, r, t);
		}
	}
}

/* kern__q8_pack with vectors; the same arithmetic, so the same bits. */
void kern__vnni_q8_pack(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	const int32_t cols = m->cols, nblk = cols / KERN_Q8_BLOCK;
	const __m512 zero = _mm512_setzero_ps();
	for (int32_t t = t0; t < t1; t++) {
		const float *x = m->x + (size_t)t * (size_t)cols;
		uint8_t *xp = (uint8_t *)m->xp + (size_t)t * m->xp_stride;
		float *dx = (float *)(xp + KERN_Q8_XD(cols));
		int32_t *corr = (int32_t *)(xp + KERN_Q8_XC(cols));
		for (int32_t j = 0; j < nblk; j++) {
			const float *xb = x + (size_t)j * KERN_Q8_BLOCK;
			__m512 a = _mm512_loadu_ps(xb), b = _mm512_loadu_ps(xb + VL);
			float probe = _mm512_reduce_add_ps(
				_mm512_add_ps(_mm512_mul_ps(a, zero), _mm512_mul_ps(b, zero)));
			float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a),
									_mm512_abs_ps(b)));
			bool finite = probe == 0.0f;
			float id = finite && amax >= 1e-30f ? 127.0f / amax : 0.0f;
			__m512i qa = _mm512_setzero_si512(), qb = qa;
			if (id > 0.0f) {
				qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(id)));
				qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, _mm512_set1_ps(id)));
			}
			uint8_t q[KERN_Q8_BLOCK];
			_mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(qa));
			_mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(qb));
			uint8_t *dst = xp + kern__q8_at(cols, j, 0);
			const size_t step = kern__q8_at(cols, j, 4) - kern__q8_at(cols, j, 0);
			for (int e = 0; e < KERN_Q8_BLOCK; e += 4, dst += step)
				memcpy(dst, q + e, 4);
			dx[j] = !finite ? NAN : id > 0.0f ? amax / 127.0f : 0.0f;
			corr[j] = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
		}
	}
}

double kern__vnni_bench(int64_t iters)
{
	__m512i acc[16], a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
	KS_UNROLL
	for (int k = 0; k < 16; k++)
		acc[k] = _mm512_set1_epi32(k); /* distinct chains: no common subexpression */
	for (int64_t it = 0; it < iters; it++) {
		KS_UNROLL
		for (int k = 0; k < 16; k++)
			acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
		__asm__ volatile("" : "+v"(a), "+v"(b));
	}
	__m512i s = acc[0];
	for (int k = 1; k < 16; k++)
		s = _mm512_add_epi32(s, acc[k]);
	int32_t sink[16]; /* kept, not summed: the lanes may overflow int */
	_mm512_storeu_si512(sink, s);
	__asm__ volatile("" : : "r"(sink) : "memory");
	return (double)iters * 16 * 64;
}
