/* The AVX-512 (F, BW, DQ, VL) op table; this file alone is built with those -m
 * flags and runs only after kern_cpu_detect_isa() has seen the features. The
 * bf16-activation matmul lives in ops_avx512bf16.c (built with -mavx512bf16 too). */
#define KERN_SIMD_AVX512 1
#include "kernels/cpu/cpu-impl.h"
#include "kernels/cpu/simd-impl.h"

#define KS_FN(name) avx512_##name
#define KS_MM_T	    4
#define KS_MM_R1    1
#define KS_MM_R2    8
#define KS_MM_RN    4
#define KS_BENCH_ACC 16
#include "kernels/cpu/vec-impl.h"

/* 256-bit loads: on the Zen 4 this was measured on they stream 2-9 % faster than
 * 512-bit ones (docs/performance.md), and the read benchmark should be the best
 * reader we have. */
static uint64_t avx512_bench_read(const void *p, size_t bytes)
{
	const char *c = p;
	__m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
	for (size_t i = 0; i < bytes; i += 128) {
		s0 = _mm256_xor_si256(s0, _mm256_load_si256((const __m256i *)(c + i)));
		s1 = _mm256_xor_si256(s1, _mm256_load_si256((const __m256i *)(c + i + 32)));
		s2 = _mm256_xor_si256(s2, _mm256_load_si256((const __m256i *)(c + i + 64)));
		s3 = _mm256_xor_si256(s3, _mm256_load_si256((const __m256i *)(c + i + 96)));
	}
	s0 = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
	return (uint64_t)_mm256_extract_epi64(s0, 0) ^ (uint64_t)_mm256_extract_epi64(s0, 3);
}

#if KERN_HAVE_AVX512BF16
static size_t avx512_mm_pack_stride_any(const struct kern_mm *m)
{
	return m->bf16_act ? kern__avx512bf16_mm_pack_stride(m) : avx512_mm_pack_stride(m);
}

static void avx512_mm_pack_any(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	if (m->bf16_act)
		kern__avx512bf16_mm_pack(m, t0, t1);
	else
		avx512_mm_pack(m, t0, t1);
}

static void avx512_mm_rows_any(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	if (m->bf16_act)
		kern__avx512bf16_mm_rows(m, r0, r1);
	else
		avx512_mm_rows(m, r0, r1);
}
#else
#define avx512_mm_pack_stride_any avx512_mm_pack_stride
#define avx512_mm_pack_any	  avx512_mm_pack
#define avx512_mm_rows_any	  avx512_mm_rows
#endif

const struct kern_cpu_ops kern__cpu_ops_avx512 = {
	.isa = KERN_ISA_AVX512,
	.mm_pack_stride = avx512_mm_pack_stride_any,
	.mm_pack = avx512_mm_pack_any,
	.mm_rows = avx512_mm_rows_any,
	.rmsnorm = avx512_rmsnorm,
	.swiglu = avx512_swiglu,
	.add = avx512_add,
	.softmax = avx512_softmax,
	.to_f32 = avx512_to_f32,
	.to_f16 = avx512_to_f16,
	.argmax = avx512_argmax,
	.attn_part = avx512_attn_part,
	.bench_read = avx512_bench_read,
	.bench_fma = avx512_bench_fma,
};
