/* The scalar op table: plain C, the oracle every vector table is tested against.
 *
 * Matmul and attention sums run in f32, left to right, without FMA (the project
 * builds with -ffp-contract=off); the row sums of rmsnorm and softmax run in double;
 * exp is libm's expf.
 */
#include "kernels/cpu/cpu-impl.h"

#include <math.h>
#include <string.h>

union kern_fbits {
	uint32_t u;
	float f;
};

float kern__f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;
	union kern_fbits v;
	if (exp == 0) {
		v.f = (float)man * 0x1p-24f; /* zero or subnormal: exact */
		v.u |= sign;
	} else if (exp == 31) {
		v.u = sign | 0x7f800000 | (man << 13) | (man ? 0x400000 : 0); /* inf, quiet NaN */
	} else {
		v.u = sign | ((exp + 112) << 23) | (man << 13);
	}
	return v.f;
}

uint16_t kern__f32_to_f16(float f)
{
	union kern_fbits v = {.f = f};
	uint16_t sign = (uint16_t)((v.u >> 16) & 0x8000);
	uint32_t ax = v.u & 0x7fffffff;
	if (ax >= 0x7f800000) /* inf, NaN (quietened, payload truncated) */
		return sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 | ((ax >> 13) & 0x3ff) : 0);
	if (ax >= 0x477ff000) /* rounds to >= 65520: inf */
		return sign | 0x7c00;
	if (ax < 0x38800000) { /* below 2^-14: a subnormal half, in units of 2^-24 */
		union kern_fbits a = {.u = ax};
		return sign | (uint16_t)lrintf(a.f * 0x1p24f);
	}
	ax -= 112u << 23; /* rebias the exponent, then round the mantissa to 10 bits */
	return sign | (uint16_t)((ax + 0xfff + ((ax >> 13) & 1)) >> 13);
}

/* dst[0..d) = src[0..d) as f32. */
static void scalar_to_f32(enum kern_dtype dt, const void *src, int32_t d, float *dst)
{
	const uint16_t *h = src;
	switch (dt) {
	case KERN_F32:
		memcpy(dst, src, (size_t)d * sizeof(float));
		break;
	case KERN_F16:
		for (int32_t i = 0; i < d; i++)
			dst[i] = kern__f16_to_f32(h[i]);
		break;
	case KERN_BF16:
		for (int32_t i = 0; i < d; i++)
			dst[i] = kern__bf16_to_f32(h[i]);
		break;
	case KERN_Q8_0: /* never reach here (kern_embed refuses them) */
	case KERN_BF16_R16:
		break;
	}
}

static void scalar_to_f16(const float *src, int32_t d, uint16_t *dst)
{
	for (int32_t i = 0; i < d; i++)
		dst[i] = kern__f32_to_f16(src[i]);
}

static size_t scalar_mm_pack_stride(const struct kern_mm *m)
{
	(void)m;
	return 0;
}

static void scalar_mm_pack(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	(void)m;
	(void)t0;
	(void)t1;
}

#define SCALAR_MM_CHUNK 512

/* Each output is sum_k w[r][k] * x[t][k], k ascending. The weight row is converted
 * a chunk at a time and the running sums parked in y between chunks, which
 * changes nothing in the arithmetic. */
static void scalar_mm_rows(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	float buf[SCALAR_MM_CHUNK];
	const size_t esz = kern_dtype_size(m->dtype);
	for (int32_t r = r0; r < r1; r++) {
		const char *wr = (const char *)m->w + (size_t)r * (size_t)m->cols * esz;
		for (int32_t k0 = 0; k0 < m->cols; k0 += SCALAR_MM_CHUNK) {
			int32_t kn = CM_MIN(SCALAR_MM_CHUNK, m->cols - k0);
			scalar_to_f32(m->dtype, wr + (size_t)k0 * esz, kn, buf);
			for (int32_t t = 0; t < m->n; t++) {
				const float *x = m->x + (size_t)t * (size_t)m->cols + k0;
				float *y = &m->y[(size_t)t * (size_t)m->rows + (size_t)r];
				float s = k0 ? *y : 0.0f;
				for (int32_t k = 0; k < kn; k++)
					s += buf[k] * x[k];
				*y = s;
			}
		}
	}
}

static void scalar_rmsnorm(const float *x, const float *w, float eps, int32_t d, float *y)
{
	double ss = 0.0;
	for (int32_t i = 0; i < d; i++)
		ss += (double)x[i] * x[i];
	float r = 1.0f / sqrtf((float)(ss / d) + eps);
	for (int32_t i = 0; i < d; i++)
		y[i] = x[i] * r * w[i];
}

static void scalar_swiglu(const float *g, const float *u, int32_t d, float *out)
{
	for (int32_t i = 0; i < d; i++)
		out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void scalar_add(float *y, const float *x, int32_t d)
{
	for (int32_t i = 0; i < d; i++)
		y[i] += x[i];
}

static void scalar_softmax(float *x, int32_t d)
{
	float m = -INFINITY;
	for (int32_t i = 0; i < d; i++)
		m = x[i] > m ? x[i] : m;
	double s = 0.0;
	for (int32_t i = 0; i < d; i++) {
		x[i] = expf(x[i] - m);
		s += x[i];
	}
	float sf = (float)s;
	for (int32_t i = 0; i < d; i++)
		x[i] = x[i] / sf;
}

/* The first index of the largest non-NaN value; 0 when every value is NaN. */
static int32_t scalar_argmax(const float *x, int32_t n)
{
	float m = -INFINITY;
	for (int32_t i = 0; i < n; i++)
		m = x[i] > m ? x[i] : m;
	for (int32_t i = 0; i < n; i++)
		if (x[i] == m)
			return i;
	return 0;
}

static float scalar_kv_at(const struct kern_kv_layer *kv, const void *base, size_t off, int32_t j)
{
	const char *p = (const char *)base + off;
	if (kv->dtype == KERN_F16)
		return kern__f16_to_f32(((const uint16_t *)p)[j]);
	return ((const float *)p)[j];
}

/* One partition of one head: online softmax, one key at a time. */
static void scalar_attn_head(const struct kern_attn_params *p, const float *qh,
			     const struct kern_kv_seg *seg, int32_t kvh, int32_t t0, int32_t t1,
			     float *m_out, float *l_out, float *acc)
{
	const struct kern_kv_layer *kv = p->kv;
	const int32_t hd = kv->head_dim;
	float m = -INFINITY, l = 0.0f;
	memset(acc, 0, (size_t)hd * sizeof(float));
	for (int32_t tok = t0; tok < t1; tok++) {
		size_t off = kern__kv_off(kv, kern__kv_slot(seg, kv->block_size, tok), kvh);
		float dot = 0.0f;
		for (int32_t j = 0; j < hd; j++)
			dot += qh[j] * scalar_kv_at(kv, kv->k, off, j);
		float sc = dot * p->scale;
		if (sc > m) {
			float alpha = expf(m - sc);
			for (int32_t j = 0; j < hd; j++)
				acc[j] *= alpha;
			l *= alpha;
			m = sc;
		}
		float e = expf(sc - m);
		l += e;
		for (int32_t j = 0; j < hd; j++)
			acc[j] += e * scalar_kv_at(kv, kv->v, off, j);
	}
	*m_out = m;
	*l_out = l;
}

static void scalar_attn_part(const struct kern_attn_params *p, const float *q, const int32_t *qi,
			     int32_t nq, int32_t h0, int32_t h1, int32_t s, int32_t t0,
			     const int32_t *t1, const struct kern_attn_state *st)
{
	const int32_t hd = p->kv->head_dim, g = p->n_head / p->kv->n_kv_head;
	for (int32_t u = 0; u < nq; u++) {
		const int32_t i = qi[u];
		const struct kern_kv_seg *seg =
			&p->segs[(size_t)p->queries[i].seq * (size_t)p->n_seg + (size_t)s];
		for (int32_t h = h0; h < h1; h++) {
			const float *qh =
				q + ((size_t)i * (size_t)p->n_head + (size_t)h) * (size_t)hd;
			scalar_attn_head(p, qh, seg, h / g, t0, t1[u], &st[u].m[h - h0],
					 &st[u].l[h - h0], st[u].acc + (size_t)(h - h0) * hd);
		}
	}
}

static uint64_t scalar_bench_read(const void *p, size_t bytes)
{
	const uint64_t *w = p;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i < bytes / 8; i += 4) {
		s0 ^= w[i];
		s1 ^= w[i + 1];
		s2 ^= w[i + 2];
		s3 ^= w[i + 3];
	}
	return s0 ^ s1 ^ s2 ^ s3;
}

/* Scalar multiply-adds without contraction (the project's -ffp-contract=off). */
static double scalar_bench_fma(int64_t iters)
{
	float acc[8] = {0, 1, 2, 3, 4, 5, 6, 7}; /* distinct chains */
	float a = 1.0f, b = 0.5f;
	for (int64_t it = 0; it < iters; it++) {
		for (int k = 0; k < 8; k++)
			acc[k] += a * b;
		__asm__ volatile("" : "+m"(a), "+m"(b));
	}
	volatile float sink = acc[0] + acc[7];
	(void)sink;
	return (double)iters * 8;
}

const struct kern_cpu_ops kern__cpu_ops_scalar = {
	.isa = KERN_ISA_SCALAR,
	.mm_pack_stride = scalar_mm_pack_stride,
	.mm_pack = scalar_mm_pack,
	.mm_rows = scalar_mm_rows,
	.rmsnorm = scalar_rmsnorm,
	.swiglu = scalar_swiglu,
	.add = scalar_add,
	.softmax = scalar_softmax,
	.to_f32 = scalar_to_f32,
	.to_f16 = scalar_to_f16,
	.argmax = scalar_argmax,
	.attn_part = scalar_attn_part,
	.bench_read = scalar_bench_read,
	.bench_fma = scalar_bench_fma,
};
