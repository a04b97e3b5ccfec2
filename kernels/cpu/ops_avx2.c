/* The AVX2 + FMA + F16C op table; this file alone is built with -mavx2 -mfma -mf16c
 * and runs only after kern_cpu_detect_isa() has seen those features. */
#define KERN_SIMD_AVX2 1
#include "kernels/cpu/cpu-impl.h"
#include "kernels/cpu/simd-impl.h"

#define KS_FN(name) avx2_##name
#define KS_MM_T	    2
#define KS_MM_R1    1
#define KS_MM_R2    4
#define KS_MM_RN    4
#include "kernels/cpu/vec-impl.h"

static uint64_t avx2_bench_read(const void *p, size_t bytes)
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

const struct kern_cpu_ops kern__cpu_ops_avx2 = {
	.isa = KERN_ISA_AVX2,
	.mm_pack_stride = avx2_mm_pack_stride,
	.mm_pack = avx2_mm_pack,
	.mm_rows = avx2_mm_rows,
	.rmsnorm = avx2_rmsnorm,
	.swiglu = avx2_swiglu,
	.add = avx2_add,
	.softmax = avx2_softmax,
	.to_f32 = avx2_to_f32,
	.to_f16 = avx2_to_f16,
	.argmax = avx2_argmax,
	.attn_part = avx2_attn_part,
	.bench_read = avx2_bench_read,
	.bench_fma = avx2_bench_fma,
};
