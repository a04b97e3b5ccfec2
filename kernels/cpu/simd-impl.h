/* kernels/cpu: a thin vector layer (ggml's "simd mappings" idea) so that one generic
 * source of vector ops (vec-impl.h) builds for AVX2+FMA+F16C and for AVX-512.
 *
 * The including file defines KERN_SIMD_AVX512 or KERN_SIMD_AVX2 and is compiled
 * with the matching -m flags; nothing here may be included by a file built
 * without them. Every helper is static inline, so each ISA file has its own copy.
 *
 * Conventions: "part" loads take n in [0, VL] lanes and zero the rest; vf_max and
 * vf_min return their second argument when either is NaN; vf_hsum adds in the
 * halving order (lane j with j + VL/2, then j + VL/4, ...) and vf_hsum_vl does the
 * same for VL vectors at once, bit for bit.
 */
#ifndef TANDEM_KERN_SIMD_IMPL_H
#define TANDEM_KERN_SIMD_IMPL_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define KS_INLINE static inline __attribute__((always_inline))
/* Fully unrolls a loop over a tile dimension early enough that its arrays of
 * accumulators become registers (GCC scalarizes only constant indices). */
#define KS_UNROLL _Pragma("GCC unroll 16")

/* expf: Cephes' range reduction and polynomial (about 1 ulp); 0 below KS_EXP_LO. */
#define KS_EXP_HI 88.3762626647949f
#define KS_EXP_LO -87.3365447504f
#define KS_LOG2E  1.44269504088896341f
#define KS_LN2_HI 0.693359375f
#define KS_LN2_LO -2.12194440e-4f
#define KS_EXP_P0 1.9875691500e-4f
#define KS_EXP_P1 1.3981999507e-3f
#define KS_EXP_P2 8.3334519073e-3f
#define KS_EXP_P3 4.1665795894e-2f
#define KS_EXP_P4 1.6666665459e-1f
#define KS_EXP_P5 5.0000001201e-1f

#if defined(KERN_SIMD_AVX512)

#define VL 16
typedef __m512 vf;

KS_INLINE __mmask16 ks_mask(int n)
{
	return (__mmask16)((1u << n) - 1u);
}

/* One-line wrappers read best as a table. */
/* clang-format off */
KS_INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
KS_INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
KS_INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
KS_INLINE void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
KS_INLINE vf vf_load_part(const float *p, int n) { return _mm512_maskz_loadu_ps(ks_mask(n), p); }
KS_INLINE void vf_store_part(float *p, vf v, int n) { _mm512_mask_storeu_ps(p, ks_mask(n), v); }
KS_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
KS_INLINE vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
KS_INLINE vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
KS_INLINE vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
KS_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
KS_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
KS_INLINE vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
KS_INLINE float vf_first(vf v) { return _mm512_cvtss_f32(v); }
KS_INLINE float vf_hmax(vf v) { return _mm512_reduce_max_ps(v); }
/* clang-format on */

/* Lanes [n, VL) replaced by fill. */
KS_INLINE vf vf_keep_first(vf v, int n, vf fill)
{
	return _mm512_mask_blend_ps(ks_mask(n), fill, v);
}

/* Bit j set when lane j of v equals s. */
KS_INLINE uint32_t vf_eq_bits(vf v, vf s)
{
	return (uint32_t)_mm512_cmp_ps_mask(v, s, _CMP_EQ_OQ);
}

KS_INLINE vf vf_load_f16(const uint16_t *p)
{
	return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

KS_INLINE vf vf_load_f16_part(const uint16_t *p, int n)
{
	return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(ks_mask(n), p));
}

KS_INLINE void vf_store_f16(uint16_t *p, vf v)
{
	_mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

KS_INLINE void vf_store_f16_part(uint16_t *p, vf v, int n)
{
	_mm256_mask_storeu_epi16(p, ks_mask(n), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

KS_INLINE vf vf_load_bf16(const uint16_t *p)
{
	__m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
	return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

KS_INLINE vf vf_load_bf16_part(const uint16_t *p, int n)
{
	__m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(ks_mask(n), p));
	return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

KS_INLINE float vf_hsum(vf v)
{
	__m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
	__m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
	return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* The transposing tree behind vf_hsum_n: level 1 adds lane j + 8 to lane j of two
 * vectors at once, level 2 lane j + 4, level 3 j + 2, level 4 j + 1 (as vf_hsum
 * does for one vector). After level L, vector i holds outputs [i 2^L, (i+1) 2^L). */
#define KS_LEVELS 4

KS_INLINE vf ks_pair(const int level, vf a, vf b)
{
	__m512d e = _mm512_castps_pd(a), f = _mm512_castps_pd(b);
	switch (level) {
	case 1:
		return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
				     _mm512_shuffle_f32x4(a, b, 0xee));
	case 2:
		return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88),
				     _mm512_shuffle_f32x4(a, b, 0xdd));
	case 3:
		return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(e, f)),
				     _mm512_castpd_ps(_mm512_unpackhi_pd(e, f)));
	default:
		return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xdd));
	}
}

/* After the last level lane 4b + c holds output 4c + b. */
KS_INLINE vf ks_tree_order(vf v)
{
	const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
	return _mm512_permutexvar_ps(idx, v);
}

KS_INLINE vf vf_exp(vf x)
{
	x = _mm512_min_ps(_mm512_set1_ps(KS_EXP_HI), x);
	vf fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(KS_LOG2E)),
				     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	vf r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(KS_LN2_HI), x);
	r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(KS_LN2_LO), r);
	vf y = _mm512_set1_ps(KS_EXP_P0);
	y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(KS_EXP_P1));
	y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(KS_EXP_P2));
	y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(KS_EXP_P3));
	y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(KS_EXP_P4));
	y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(KS_EXP_P5));
	y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
	y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
	y = _mm512_scalef_ps(y, fx);
	return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(KS_EXP_LO), _CMP_NLT_UQ),
				   y);
}

KS_INLINE vf ks_unpd(vf a, vf b, const bool HI)
{
	__m512d x = _mm512_castps_pd(a), y = _mm512_castps_pd(b);
	return _mm512_castpd_ps(HI ? _mm512_unpackhi_pd(x, y) : _mm512_unpacklo_pd(x, y));
}

/* r[i][j] becomes r[j][i] for the VL x VL matrix of rows r. */
KS_INLINE void vf_transpose(vf *r)
{
	vf t[16];
	KS_UNROLL
	for (int i = 0; i < 16; i += 2) {
		t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
		t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
	}
	KS_UNROLL
	for (int i = 0; i < 16; i += 4) {
		r[i] = ks_unpd(t[i], t[i + 2], false);
		r[i + 1] = ks_unpd(t[i], t[i + 2], true);
		r[i + 2] = ks_unpd(t[i + 1], t[i + 3], false);
		r[i + 3] = ks_unpd(t[i + 1], t[i + 3], true);
	}
	KS_UNROLL
	for (int h = 0; h < 16; h += 8)
		KS_UNROLL
	for (int i = 0; i < 4; i++) {
		t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
		t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
	}
	KS_UNROLL
	for (int i = 0; i < 8; i++) {
		r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
		r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
	}
}

/* Matmul weights, one step of 2 * VL elements: bf16 split into even and odd
 * elements (no shuffles), f16 and f32 as two halves. */
KS_INLINE void mm_w_bf16(const uint16_t *p, vf *even, vf *odd)
{
	__m512i v = _mm512_loadu_si512(p);
	*even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
	*odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
}

KS_INLINE void mm_w_bf16_part(const uint16_t *p, int n, vf *even, vf *odd)
{
	__m512i v = _mm512_maskz_loadu_epi16((__mmask32)((1ull << n) - 1), p);
	*even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
	*odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
}

/* dst[0, VL) = x[0], x[2], ...; dst[VL, 2 VL) = x[1], x[3], ... */
KS_INLINE void mm_deinterleave(const float *x, float *dst)
{
	vf a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
	const __m512i ie =
		_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
	const __m512i io =
		_mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
	_mm512_storeu_ps(dst, _mm512_permutex2var_ps(a, ie, b));
	_mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(a, io, b));
}

#elif defined(KERN_SIMD_AVX2)

#define VL 8
typedef __m256 vf;

KS_INLINE __m256i ks_mask(int n)
{
	return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* One-line wrappers read best as a table. */
/* clang-format off */
KS_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
KS_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
KS_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
KS_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
KS_INLINE vf vf_load_part(const float *p, int n) { return _mm256_maskload_ps(p, ks_mask(n)); }
KS_INLINE void vf_store_part(float *p, vf v, int n) { _mm256_maskstore_ps(p, ks_mask(n), v); }
KS_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
KS_INLINE vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
KS_INLINE vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
KS_INLINE vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
KS_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
KS_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
KS_INLINE vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
KS_INLINE float vf_first(vf v) { return _mm256_cvtss_f32(v); }
/* clang-format on */

KS_INLINE float vf_hmax(vf v)
{
	__m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

KS_INLINE vf vf_keep_first(vf v, int n, vf fill)
{
	return _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(ks_mask(n)));
}

KS_INLINE uint32_t vf_eq_bits(vf v, vf s)
{
	return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, s, _CMP_EQ_OQ));
}

KS_INLINE vf vf_load_f16(const uint16_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

KS_INLINE vf vf_load_f16_part(const uint16_t *p, int n)
{
	uint16_t t[8] = {0};
	memcpy(t, p, (size_t)n * 2);
	return vf_load_f16(t);
}

KS_INLINE void vf_store_f16(uint16_t *p, vf v)
{
	_mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

KS_INLINE void vf_store_f16_part(uint16_t *p, vf v, int n)
{
	uint16_t t[8];
	vf_store_f16(t, v);
	memcpy(p, t, (size_t)n * 2);
}

KS_INLINE vf vf_load_bf16(const uint16_t *p)
{
	__m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

KS_INLINE vf vf_load_bf16_part(const uint16_t *p, int n)
{
	uint16_t t[8] = {0};
	memcpy(t, p, (size_t)n * 2);
	return vf_load_bf16(t);
}

KS_INLINE float vf_hsum(vf v)
{
	__m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	__m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
	return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

#define KS_LEVELS 3

KS_INLINE vf ks_pair(const int level, vf a, vf b)
{
	__m256d e = _mm256_castps_pd(a), f = _mm256_castps_pd(b);
	switch (level) {
	case 1:
		return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
				     _mm256_permute2f128_ps(a, b, 0x31));
	case 2:
		return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(e, f)),
				     _mm256_castpd_ps(_mm256_unpackhi_pd(e, f)));
	default:
		return _mm256_add_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xdd));
	}
}

/* After the last level lane 4L + c holds output 2c + L. */
KS_INLINE vf ks_tree_order(vf v)
{
	return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

KS_INLINE vf vf_exp(vf x)
{
	x = _mm256_min_ps(_mm256_set1_ps(KS_EXP_HI), x);
	vf fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(KS_LOG2E)),
				_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	vf r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(KS_LN2_HI), x);
	r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(KS_LN2_LO), r);
	vf y = _mm256_set1_ps(KS_EXP_P0);
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(KS_EXP_P1));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(KS_EXP_P2));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(KS_EXP_P3));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(KS_EXP_P4));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(KS_EXP_P5));
	y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
	y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
	__m256i e = _mm256_slli_epi32(
		_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
	y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
	return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(KS_EXP_LO), _CMP_NLT_UQ));
}

/* r[i][j] becomes r[j][i] for the VL x VL matrix of rows r. */
KS_INLINE void vf_transpose(vf *r)
{
	vf t[8], u[8];
	KS_UNROLL
	for (int i = 0; i < 8; i += 2) {
		t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
		t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
	}
	KS_UNROLL
	for (int i = 0; i < 8; i += 4) {
		u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
		u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
		u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
		u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
	}
	KS_UNROLL
	for (int i = 0; i < 4; i++) {
		r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
		r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
	}
}

KS_INLINE void mm_w_bf16(const uint16_t *p, vf *even, vf *odd)
{
	__m256i v = _mm256_loadu_si256((const __m256i *)p);
	*even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
	*odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
}

KS_INLINE void mm_w_bf16_part(const uint16_t *p, int n, vf *even, vf *odd)
{
	uint16_t t[16] = {0};
	memcpy(t, p, (size_t)n * 2);
	mm_w_bf16(t, even, odd);
}

KS_INLINE void mm_deinterleave(const float *x, float *dst)
{
	vf a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
	vf e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xdd);
	_mm256_storeu_ps(dst, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xd8)));
	_mm256_storeu_ps(dst + 8,
			 _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xd8)));
}

#else
#error "define KERN_SIMD_AVX512 or KERN_SIMD_AVX2 before including simd-impl.h"
#endif

/* ---- shared by both ISAs ------------------------------------------------- */

/* Levels 2.. of the tree on s[0..n), the level-1 pairs of 2n vectors; writes
 * out[o] = vf_hsum(vector o) for every o < 2n, rounded up to whole vectors (the
 * padding outputs are 0). s is clobbered. Each output is added in the vf_hsum
 * order, whatever n: the bit-exact batch invariance of the matmul rests on it. */
KS_INLINE void vf_hsum_pairs(vf *s, int n, float *out)
{
	KS_UNROLL
	for (int level = 2; level <= KS_LEVELS; level++) {
		int m = (n + 1) / 2;
		KS_UNROLL
		for (int i = 0; i < m; i++)
			s[i] = ks_pair(level, s[2 * i], 2 * i + 1 < n ? s[2 * i + 1] : vf_zero());
		n = m;
	}
	KS_UNROLL
	for (int g = 0; g < n; g++)
		vf_store(out + g * VL, ks_tree_order(s[g]));
}

#define KS_TILE_MAX 64 /* most accumulators of a matmul micro-tile */

/* The end of every matmul micro-tile: reduces the R x T accumulators acc[i * ld + j]
 * (each in the vf_hsum order) and stores them at y[(t + j) * rows + r + i]. The
 * tree takes them token by token, so each token's R outputs leave as one store. */
KS_INLINE void ks_tile_store(float *y, int32_t rows, int32_t r, int32_t t, const int R,
			     const int T, const vf *acc, const int ld)
{
	const int cnt = R * T;
	vf v[KS_TILE_MAX + 1], s[(KS_TILE_MAX + 1) / 2];
	float out[KS_TILE_MAX + VL];
	KS_UNROLL
	for (int j = 0; j < T; j++)
		KS_UNROLL
	for (int i = 0; i < R; i++)
		v[j * R + i] = acc[i * ld + j];
	v[cnt] = vf_zero();
	KS_UNROLL
	for (int c = 0; c < cnt; c += 2)
		s[c / 2] = ks_pair(1, v[c], v[c + 1]);
	vf_hsum_pairs(s, (cnt + 1) / 2, out);
	KS_UNROLL
	for (int j = 0; j < T; j++)
		memcpy(y + (size_t)(t + j) * (size_t)rows + (size_t)r, out + j * R,
		       (size_t)R * sizeof(float));
}

/* Lane j of the result = vf_hsum(a[j]), for j < VL. */
KS_INLINE vf vf_hsum_vl(const vf *a)
{
	vf s[VL / 2];
	float out[VL];
	KS_UNROLL
	for (int i = 0; i < VL / 2; i++)
		s[i] = ks_pair(1, a[2 * i], a[2 * i + 1]);
	vf_hsum_pairs(s, VL / 2, out);
	return vf_load(out);
}

#endif
