/* The AVX2 + FMA + F16C op table; this file alone is built with -mavx2 -mfma -mf16c
 * and runs only after kern_cpu_detect_isa() has seen those features. */
#define KERN_SIMD_AVX2 1
#include "kernels/cpu/cpu-impl.h"
#include "kernels/cpu/simd-impl.h"

#define KS_FN(name) avx2_##name
#define KS_MM_T	    2
#define KS_MM_R1    8
#define KS_MM_R2    4
#define KS_MM_RN    4
#include "kernels/cpu/vec-impl.h"

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
};
