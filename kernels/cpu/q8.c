/* KERN_Q8_0 in plain C: quantising weights (once, at load) and activations (per
 * matmul), and the scalar matmul that is the oracle of the vector one.
 *
 * Both operands use the layout of kern.h: blocks of 32 values, each the int8
 * q[i] = round(x[i] / d) with d = max|x| / 127, grouped by 16 blocks whose bytes
 * interleave 4 at a time (kern__q8_at). The weights store an f16 d per block, then
 * q + 128 (unsigned, as vpdpbusd wants its first operand); the activations store
 * q, an f32 d and -128 x sum(q) per block, so that sum((qw + 128) qx) - 128 sum(qx)
 * is the exact integer dot product of a block.
 */
#include "kernels/cpu/cpu-impl.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Activation blocks below this max|x| are zeroed (127 / max|x| would overflow). */
#define Q8_X_TINY 1e-30f

/* Elements [c0, c0 + n) of row r of src as f32. */
static void q8_src_chunk(const struct kern_mat *src, int32_t r, int32_t c0, int32_t n, float *out)
{
	const size_t esz = kern_dtype_size(src->dtype);
	const char *p = (const char *)src->data + (size_t)r * kern_mat_row_bytes(src) + c0 * esz;
	const uint16_t *h = (const uint16_t *)p;
	for (int32_t i = 0; i < n; i++) {
		if (src->dtype == KERN_F16)
			out[i] = kern__f16_to_f32(h[i]);
		else if (src->dtype == KERN_BF16)
			out[i] = kern__bf16_to_f32(h[i]);
		else
			memcpy(&out[i], p + 4 * (size_t)i, 4);
	}
}

/* One block of weights: its f16 scale, and q + 128 at the block's layout slots. */
static void q8_weight_block(const float *w, int32_t cols, int32_t j, uint8_t *row,
			    uint16_t *scale)
{
	float amax = 0.0f;
	for (int e = 0; e < KERN_Q8_BLOCK; e++)
		amax = fabsf(w[e]) > amax ? fabsf(w[e]) : amax; /* NaN: skipped here... */
	uint16_t h = kern__f32_to_f16(amax / 127.0f);
	float d = kern__f16_to_f32(h);
	bool ok = d > 0.0f && d <= FLT_MAX;
	for (int e = 0; e < KERN_Q8_BLOCK && ok; e++)
		ok = fabsf(w[e]) <= FLT_MAX; /* ...and caught here */
	*scale = ok ? h : 0;
	for (int e = 0; e < KERN_Q8_BLOCK; e++) {
		float q = ok ? nearbyintf(w[e] / d) : 0.0f;
		q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
		row[kern__q8_at(cols, j, e)] = (uint8_t)((int)q + 128);
	}
}

#define Q8_CHUNK 1024 /* weights converted at a time; a multiple of the block */

void kern__q8_quantize_rows(const struct kern_mat *src, const struct kern_mat *dst, int32_t r0,
			    int32_t r1)
{
	const int32_t cols = src->cols;
	const size_t rs = kern_mat_row_bytes(dst);
	float buf[Q8_CHUNK];
	for (int32_t r = r0; r < r1; r++) {
		uint8_t *row = (uint8_t *)dst->data + (size_t)r * rs;
		uint16_t *scales = (uint16_t *)row;
		memset(row, 0, rs);
		for (int32_t c0 = 0; c0 < cols; c0 += Q8_CHUNK) {
			int32_t cn = CM_MIN(Q8_CHUNK, cols - c0);
			q8_src_chunk(src, r, c0, cn, buf);
			for (int32_t b = 0; b < cn / KERN_Q8_BLOCK; b++) {
				int32_t j = c0 / KERN_Q8_BLOCK + b;
				q8_weight_block(buf + b * KERN_Q8_BLOCK, cols, j,
						row + KERN_Q8_WQ(cols), &scales[j]);
			}
		}
	}
}

size_t kern__q8_pack_stride(const struct kern_mm *m)
{
	return KERN_Q8_XC(m->cols) + KERN_Q8_R64((size_t)m->cols / KERN_Q8_BLOCK * 4);
}

void kern__q8_pack(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	const int32_t cols = m->cols, nblk = cols / KERN_Q8_BLOCK;
	for (int32_t t = t0; t < t1; t++) {
		const float *x = m->x + (size_t)t * (size_t)cols;
		uint8_t *xp = (uint8_t *)m->xp + (size_t)t * m->xp_stride;
		float *dx = (float *)(xp + KERN_Q8_XD(cols));
		int32_t *corr = (int32_t *)(xp + KERN_Q8_XC(cols));
		for (int32_t j = 0; j < nblk; j++) {
			const float *xb = x + (size_t)j * KERN_Q8_BLOCK;
			float amax = 0.0f, probe = 0.0f;
			for (int e = 0; e < KERN_Q8_BLOCK; e++) {
				amax = fabsf(xb[e]) > amax ? fabsf(xb[e]) : amax;
				probe += xb[e] * 0.0f; /* NaN when any value is not finite */
			}
			bool finite = probe == 0.0f;
			float id = finite && amax >= Q8_X_TINY ? 127.0f / amax : 0.0f;
			int32_t sum = 0;
			for (int e = 0; e < KERN_Q8_BLOCK; e++) {
				int q = id > 0.0f ? (int)nearbyintf(xb[e] * id) : 0;
				q = q > 127 ? 127 : q < -127 ? -127 : q;
				xp[kern__q8_at(cols, j, e)] = (uint8_t)(int8_t)q;
				sum += q;
			}
			dx[j] = !finite ? NAN : id > 0.0f ? amax / 127.0f : 0.0f;
			corr[j] = -128 * sum;
		}
	}
}

/* Integer dot products of the blocks of group g (block j of the group in s[j]). */
static void q8_group_dots(const uint8_t *w, const uint8_t *x, int32_t g, int32_t nb, int32_t *s)
{
	const size_t base = (size_t)g * KERN_Q8_GROUP * KERN_Q8_BLOCK;
	for (int32_t sl = 0; sl < KERN_Q8_BLOCK / 4; sl++)
		for (int32_t j = 0; j < nb; j++)
			for (int32_t c = 0; c < 4; c++) {
				size_t o = base + (size_t)sl * (size_t)nb * 4 + (size_t)j * 4 + c;
				s[j] += (int32_t)w[o] * (int32_t)(int8_t)x[o];
			}
}

/* y = sum over blocks, in order, of (integer dot) x (weight d x activation d). */
void kern__q8_rows(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	const int32_t cols = m->cols, nblk = cols / KERN_Q8_BLOCK;
	const size_t rs = kern_mat_row_bytes(&(struct kern_mat){.dtype = KERN_Q8_0, .cols = cols});
	for (int32_t r = r0; r < r1; r++) {
		const uint8_t *row = (const uint8_t *)m->w + (size_t)r * rs;
		const uint16_t *dw = (const uint16_t *)row;
		const uint8_t *w = row + KERN_Q8_WQ(cols);
		for (int32_t t = 0; t < m->n; t++) {
			const uint8_t *x = (const uint8_t *)m->xp + (size_t)t * m->xp_stride;
			const float *dx = (const float *)(x + KERN_Q8_XD(cols));
			const int32_t *corr = (const int32_t *)(x + KERN_Q8_XC(cols));
			float acc = 0.0f;
			for (int32_t g = 0; g * KERN_Q8_GROUP < nblk; g++) {
				int32_t j0 = g * KERN_Q8_GROUP, nb = CM_MIN(KERN_Q8_GROUP, nblk - j0);
				int32_t s[KERN_Q8_GROUP];
				memcpy(s, corr + j0, (size_t)nb * sizeof(int32_t));
				q8_group_dots(w, x, g, nb, s);
				for (int32_t j = 0; j < nb; j++)
					acc += (float)s[j] * (kern__f16_to_f32(dw[j0 + j]) * dx[j0 + j]);
			}
			m->y[(size_t)t * (size_t)m->rows + (size_t)r] = acc;
		}
	}
}
