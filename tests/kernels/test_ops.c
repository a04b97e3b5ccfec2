/* kernels: every CPU op against its scalar oracle at every ISA level this machine
 * supports (forced through max_isa), the scalar ops against double-precision or
 * hand-computed references, and batch invariance (kern.h "Determinism").
 *
 * Errors are normalised (ggml test-backend-ops style): sum((a-b)^2) / sum(b^2).
 * Thresholds: 1e-10 wherever both sides keep f32 activations (only the order of f32
 * sums, FMA contraction and a ~1 ulp polynomial exp differ); 1e-4 for the
 * bf16-activation matmul against f32 activations (rounding x to bf16 costs about
 * 2^-9 relative per element, ~1e-6 in this measure), while the same path against a
 * reference on bf16-rounded activations is held to 1e-10.
 */
#include "kernels/kern.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_f(uint64_t *s)
{
	return (float)((double)(rng_next(s) >> 11) * 0x1p-52 - 1.0);
}

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
	for (size_t i = 0; i < n; i++)
		x[i] = rng_f(&seed) * scale;
}

static uint32_t fbits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float ffrom(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Reference conversions, written independently of the backend's. */
static double ref_f16(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double s = (h & 0x8000) ? -1.0 : 1.0;
	if (e == 0)
		return s * ldexp(m, -24);
	if (e == 31)
		return m ? NAN : s * INFINITY;
	return s * ldexp(1024 + m, e - 25);
}

/* Nearest half by exhaustive search over the 16-bit patterns of its sign. */
static uint16_t ref_to_f16(float f)
{
	if (isnan(f))
		return 0x7e00;
	uint16_t sign = signbit(f) ? 0x8000 : 0;
	double a = fabs((double)f);
	if (a >= 65520.0)
		return sign | 0x7c00;
	uint16_t best = 0;
	double bd = INFINITY;
	for (uint32_t h = 0; h < 0x7c00; h++) {
		double d = fabs(ref_f16((uint16_t)h) - a);
		if (d < bd || (d == bd && (h & 1) == 0)) {
			bd = d;
			best = (uint16_t)h;
		}
	}
	return sign | best;
}

static uint16_t to_bf16(float f)
{
	uint32_t b = fbits(f);
	return (uint16_t)((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

static float bf16_round(float f)
{
	return ffrom((uint32_t)to_bf16(f) << 16);
}

static double nerr(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - (double)b[i];
		num += d * d;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? num / den : num;
}

static double nerr_d(const float *a, const double *b, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		num += d * d;
		den += b[i] * b[i];
	}
	return den > 0 ? num / den : num;
}

static struct kern_backend *mk(int isa, int threads, bool bf16)
{
	struct kern_cpu_params p = kern_cpu_default_params();
	p.n_threads = threads;
	p.max_isa = isa;
	p.bf16_activations = bf16;
	struct cm_err err = {0};
	struct kern_backend *be = kern_cpu_new(&p, &err);
	cr_assert_not_null(be, "kern_cpu_new: %s", err.msg);
	return be;
}

static int top_isa(void)
{
	return (int)kern_cpu_detect_isa();
}

/* A two-thread backend with bf16 activations; skips the test where the CPU or the
 * build has no AVX512_BF16. */
static struct kern_backend *mk_bf16_or_skip(void)
{
	if (top_isa() < KERN_ISA_AVX512BF16)
		cr_skip_test("no AVX512_BF16 on this CPU");
	struct kern_backend *be = mk(-1, 2, true);
	if (!strstr(kern_backend_name(be), "bf16act")) {
		kern_backend_free(be);
		cr_skip_test("AVX512_BF16 kernels not compiled in");
	}
	return be;
}

/* A weight matrix of dtype dt with random values of about unit scale. */
struct wmat {
	struct kern_mat m;
	void *buf;
	double *ref; /* [rows][cols] the exact values */
};

static void wmat_init(struct wmat *w, enum kern_dtype dt, int32_t rows, int32_t cols, uint64_t seed)
{
	size_t n = (size_t)rows * cols;
	w->buf = malloc(n * kern_dtype_size(dt) + 2);
	w->ref = malloc(n * sizeof(double));
	cr_assert(w->buf && w->ref);
	/* odd 2-byte offset for 16-bit types, as an mmap'd tensor may have */
	void *data = dt == KERN_F32 ? w->buf : (char *)w->buf + 2;
	for (size_t i = 0; i < n; i++) {
		float f = rng_f(&seed);
		if (dt == KERN_F32) {
			((float *)data)[i] = f;
			w->ref[i] = f;
		} else if (dt == KERN_BF16) {
			((uint16_t *)data)[i] = to_bf16(f);
			w->ref[i] = bf16_round(f);
		} else {
			uint16_t h = (uint16_t)(0x3000 + (rng_next(&seed) & 0x0fff));
			h |= (rng_next(&seed) & 1) ? 0x8000 : 0;
			((uint16_t *)data)[i] = h;
			w->ref[i] = ref_f16(h);
		}
	}
	w->m = (struct kern_mat){.dtype = dt, .rows = rows, .cols = cols, .data = data};
}

static void wmat_fini(struct wmat *w)
{
	free(w->buf);
	free(w->ref);
}

static void ref_matmul(const struct wmat *w, const float *x, int32_t n, bool bf16x, double *y)
{
	for (int32_t t = 0; t < n; t++)
		for (int32_t r = 0; r < w->m.rows; r++) {
			double s = 0;
			for (int32_t k = 0; k < w->m.cols; k++) {
				float xv = x[(size_t)t * w->m.cols + k];
				s += w->ref[(size_t)r * w->m.cols + k] *
				     (bf16x ? bf16_round(xv) : xv);
			}
			y[(size_t)t * w->m.rows + r] = s;
		}
}

static const enum kern_dtype dtypes[] = {KERN_F32, KERN_F16, KERN_BF16};

/* src converted to dt by kern_convert in a backend buffer (freed with kern_free). */
static struct kern_mat conv_of(struct kern_backend *be, const struct kern_mat *src,
			       enum kern_dtype dt)
{
	struct kern_mat q = {.dtype = dt, .rows = src->rows, .cols = src->cols};
	q.data = kern_alloc(be, kern_mat_bytes(&q));
	cr_assert_not_null(q.data);
	struct cm_err err = {0};
	cr_assert_eq(kern_convert(be, src, &q, &err), CM_OK, "%s", err.msg);
	return q;
}

/* Element e of KV head h of the token at slot in a pool array, as kern.h lays it
 * out: [block][head][token in block][head_dim]. */
static size_t kv_pool_at(const struct kern_kv_layer *kv, int32_t slot, int32_t h, int32_t e)
{
	size_t bs = (size_t)kv->block_size, blk = (size_t)slot / bs, tok = (size_t)slot % bs;
	return ((blk * (size_t)kv->n_kv_head + (size_t)h) * bs + tok) * (size_t)kv->head_dim +
	       (size_t)e;
}

/* ---- backend ------------------------------------------------------------ */

Test(backend, name_threads_alloc_and_bad_params)
{
	struct kern_backend *be = mk(0, 2, false);
	cr_assert_str_eq(kern_backend_name(be), "cpu scalar x2");
	cr_assert_eq(kern_backend_threads(be), 2);
	unsigned char *p = kern_alloc(be, 1000);
	cr_assert_not_null(p);
	cr_assert_eq((uintptr_t)p % 64, 0);
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(p[i], 0);
	kern_free(be, p);
	kern_backend_free(be);

	be = mk(-1, 0, false);
	char want[64];
	snprintf(want, sizeof(want), "cpu %s x%d", kern_isa_name(kern_cpu_detect_isa()),
		 cm_cpu_count());
	cr_assert_str_eq(kern_backend_name(be), want);
	kern_backend_free(be);

	struct kern_cpu_params bad = kern_cpu_default_params();
	bad.n_threads = -3;
	struct cm_err err = {0};
	cr_assert_null(kern_cpu_new(&bad, &err));
	cr_assert_eq(err.code, CM_EINVAL);
	bad = kern_cpu_default_params();
	bad.max_isa = 9;
	cr_assert_null(kern_cpu_new(&bad, &err));
	cr_assert_eq(err.code, CM_EINVAL);
	cr_assert_eq(kern_dtype_size(KERN_BF16), 2);
	cr_assert_eq(kern_dtype_size(KERN_F32), 4);
}

/* ---- matmul ------------------------------------------------------------- */

static const int32_t mm_shapes[][3] = {
	/* rows, cols, n */
	{1, 1, 1}, {5, 7, 3}, {17, 33, 7}, {9, 255, 13}, {37, 1027, 5}, {64, 64, 1}, {3, 100, 9},
};

Test(matmul, scalar_matches_double_reference)
{
	struct kern_backend *be = mk(KERN_ISA_SCALAR, 2, false);
	for (size_t d = 0; d < CM_ARRAY_LEN(dtypes); d++)
		for (size_t s = 0; s < CM_ARRAY_LEN(mm_shapes); s++) {
			int32_t rows = mm_shapes[s][0], cols = mm_shapes[s][1], n = mm_shapes[s][2];
			struct wmat w;
			wmat_init(&w, dtypes[d], rows, cols, 100 + s);
			float *x = malloc(sizeof(float) * n * cols),
			      *y = malloc(sizeof(float) * n * rows);
			double *yr = malloc(sizeof(double) * n * rows);
			fill(x, (size_t)n * cols, 7 + s, 1.0f);
			kern_matmul(be, &w.m, x, n, y);
			ref_matmul(&w, x, n, false, yr);
			double e = nerr_d(y, yr, (size_t)n * rows);
			cr_assert(e < 1e-10, "dtype %d shape %zu: err %g", dtypes[d], s, e);
			free(x);
			free(y);
			free(yr);
			wmat_fini(&w);
		}
	kern_backend_free(be);
}

Test(matmul, every_isa_matches_scalar)
{
	struct kern_backend *ref = mk(KERN_ISA_SCALAR, 1, false);
	for (int isa = 1; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		for (size_t d = 0; d < CM_ARRAY_LEN(dtypes); d++)
			for (size_t s = 0; s < CM_ARRAY_LEN(mm_shapes); s++) {
				int32_t rows = mm_shapes[s][0], cols = mm_shapes[s][1];
				int32_t n = mm_shapes[s][2];
				struct wmat w;
				wmat_init(&w, dtypes[d], rows, cols, 200 + s);
				float *x = malloc(sizeof(float) * n * cols);
				float *y = malloc(sizeof(float) * n * rows);
				float *yr = malloc(sizeof(float) * n * rows);
				fill(x, (size_t)n * cols, 9 + s, 2.0f);
				kern_matmul(be, &w.m, x, n, y);
				kern_matmul(ref, &w.m, x, n, yr);
				double e = nerr(y, yr, (size_t)n * rows);
				cr_assert(e < 1e-10, "%s dtype %d shape %zu: err %g",
					  kern_backend_name(be), dtypes[d], s, e);
				free(x);
				free(y);
				free(yr);
				wmat_fini(&w);
			}
		kern_backend_free(be);
	}
	kern_backend_free(ref);
}

Test(matmul, bf16_activations_round_x_once)
{
	struct kern_backend *be = mk_bf16_or_skip();
	for (size_t s = 0; s < CM_ARRAY_LEN(mm_shapes); s++) {
		int32_t rows = mm_shapes[s][0], cols = mm_shapes[s][1], n = mm_shapes[s][2];
		struct wmat w;
		wmat_init(&w, KERN_BF16, rows, cols, 300 + s);
		float *x = malloc(sizeof(float) * n * cols), *y = malloc(sizeof(float) * n * rows);
		double *yb = malloc(sizeof(double) * n * rows),
		       *yf = malloc(sizeof(double) * n * rows);
		fill(x, (size_t)n * cols, 11 + s, 1.0f);
		kern_matmul(be, &w.m, x, n, y);
		ref_matmul(&w, x, n, true, yb);
		ref_matmul(&w, x, n, false, yf);
		double eb = nerr_d(y, yb, (size_t)n * rows), ef = nerr_d(y, yf, (size_t)n * rows);
		cr_assert(eb < 1e-10, "shape %zu vs bf16-rounded reference: err %g", s, eb);
		cr_assert(ef < 1e-4, "shape %zu vs f32 reference: err %g", s, ef);
		free(x);
		free(y);
		free(yb);
		free(yf);
		wmat_fini(&w);
	}
	kern_backend_free(be);
}

/* KERN_BF16_R16 (panels of 16 rows, pairs of columns; made only by a backend with
 * bf16 activations): the products of the bf16-rounded activations summed exactly
 * enough, for rows that fill no panel, odd columns, GEMV, small batches and GEMMs
 * over several token groups and column blocks. */
Test(matmul, bf16_r16_weights_match_the_bf16_reference)
{
	struct kern_backend *plain = mk(-1, 2, false);
	cr_assert_eq(kern_weight_dtype(plain, KERN_BF16), KERN_BF16);
	cr_assert_eq(kern_weight_dtype(plain, KERN_F16), KERN_F16);
	struct wmat w;
	wmat_init(&w, KERN_BF16, 17, 33, 1);
	struct kern_mat r = {.dtype = KERN_BF16_R16, .rows = 17, .cols = 33};
	cr_assert_eq(kern_mat_bytes(&r), (size_t)32 * 17 * 2 * 2); /* two panels of 17 pairs */
	r.data = kern_alloc(plain, kern_mat_bytes(&r));
	struct cm_err err = {0};
	cr_assert_eq(kern_convert(plain, &w.m, &r, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "bf16 activations"), "%s", err.msg);
	kern_free(plain, (void *)r.data);
	wmat_fini(&w);
	kern_backend_free(plain);

	struct kern_backend *be = mk_bf16_or_skip();
	cr_assert_eq(kern_weight_dtype(be, KERN_BF16), KERN_BF16_R16);
	cr_assert_eq(kern_weight_dtype(be, KERN_F32), KERN_F32);
	{ /* panels are made from bf16 only, and become nothing else */
		wmat_init(&w, KERN_F32, 32, 64, 2);
		struct kern_mat p = {.dtype = KERN_BF16_R16, .rows = 32, .cols = 64};
		p.data = kern_alloc(be, kern_mat_bytes(&p));
		cr_assert_eq(kern_convert(be, &w.m, &p, &err), CM_EINVAL);
		struct kern_mat q = {.dtype = KERN_Q8_0, .rows = 32, .cols = 64};
		q.data = kern_alloc(be, kern_mat_bytes(&q));
		cr_assert_eq(kern_convert(be, &p, &q, &err), CM_EINVAL);
		kern_free(be, (void *)q.data);
		kern_free(be, (void *)p.data);
		wmat_fini(&w);
	}
	static const int32_t shapes[][3] = {
		/* rows, cols, n: the kernel tests', then column blocks of 1024 over token groups */
		{1, 1, 1}, {5, 7, 3}, {17, 33, 7}, {9, 255, 13}, {37, 1027, 5}, {64, 64, 1},
		{3, 100, 9}, {70, 2051, 30}, {48, 64, 8},
	};
	for (size_t s = 0; s < CM_ARRAY_LEN(shapes); s++) {
		int32_t rows = shapes[s][0], cols = shapes[s][1], n = shapes[s][2];
		wmat_init(&w, KERN_BF16, rows, cols, 700 + s);
		struct kern_mat p = conv_of(be, &w.m, KERN_BF16_R16);
		float *x = malloc(sizeof(float) * n * cols), *y = malloc(sizeof(float) * n * rows);
		double *yb = malloc(sizeof(double) * n * rows);
		fill(x, (size_t)n * cols, 19 + s, 1.0f);
		kern_matmul(be, &p, x, n, y);
		ref_matmul(&w, x, n, true, yb);
		double e = nerr_d(y, yb, (size_t)n * rows);
		cr_assert(e < 1e-10, "shape %zu vs bf16-rounded reference: err %g", s, e);
		free(x);
		free(y);
		free(yb);
		kern_free(be, (void *)p.data);
		wmat_fini(&w);
	}
	kern_backend_free(be);
}

/* Row x0 alone (n = 1, one thread), at row 3 of 7 and at row 37 of 64 (two threads,
 * then one), among random rows: bit-identical every time. dt KERN_BF16_R16: bf16
 * weights converted to it. */
static void check_mm_invariance(int isa, bool bf16, enum kern_dtype dt, int32_t rows, int32_t cols)
{
	struct kern_backend *b1 = mk(isa, 1, bf16), *b2 = mk(isa, 2, bf16);
	struct wmat w;
	wmat_init(&w, dt == KERN_BF16_R16 ? KERN_BF16 : dt, rows, cols, 400 + cols);
	const struct kern_mat wm = dt == KERN_BF16_R16 ? conv_of(b1, &w.m, dt) : w.m;
	float *x = malloc(sizeof(float) * 64 * cols), *y = malloc(sizeof(float) * 64 * rows);
	float *y0 = malloc(sizeof(float) * rows);
	fill(x, (size_t)64 * cols, 13, 1.0f);
	const float *x0 = x + (size_t)37 * cols;
	kern_matmul(b1, &wm, x0, 1, y0);
	const struct {
		struct kern_backend *be;
		int32_t n, at;
	} runs[] = {{b2, 1, 0}, {b2, 7, 3}, {b2, 64, 37}, {b1, 64, 37}, {b1, 7, 3}};
	float *xs = malloc(sizeof(float) * 64 * cols);
	for (size_t r = 0; r < CM_ARRAY_LEN(runs); r++) {
		fill(xs, (size_t)64 * cols, 50 + r, 1.0f);
		memcpy(xs + (size_t)runs[r].at * cols, x0, sizeof(float) * cols);
		kern_matmul(runs[r].be, &wm, xs, runs[r].n, y);
		cr_assert(memcmp(y + (size_t)runs[r].at * rows, y0, sizeof(float) * rows) == 0,
			  "%s dtype %d rows %d cols %d: run %zu differs", kern_backend_name(b1), dt,
			  rows, cols, r);
	}
	free(xs);
	free(x);
	free(y);
	free(y0);
	if (wm.data != w.m.data)
		kern_free(b1, (void *)wm.data);
	wmat_fini(&w);
	kern_backend_free(b1);
	kern_backend_free(b2);
}

Test(matmul, batch_invariance)
{
	for (int isa = 0; isa <= top_isa(); isa++)
		for (size_t d = 0; d < CM_ARRAY_LEN(dtypes); d++) {
			check_mm_invariance(isa, false, dtypes[d], 37, 1027);
			check_mm_invariance(isa, false, dtypes[d], 130, 64);
		}
	if (top_isa() >= KERN_ISA_AVX512BF16) {
		check_mm_invariance(KERN_ISA_AVX512BF16, true, KERN_BF16, 37, 1027);
		check_mm_invariance(KERN_ISA_AVX512BF16, true, KERN_BF16, 130, 64);
		/* rows in column blocks: 3 of 1024 and a masked rest; 37 rows = 2 rounds */
		check_mm_invariance(KERN_ISA_AVX512BF16, true, KERN_BF16, 37, 3083);
		/* panels: a partial one, odd columns, column blocks of 512 pairs */
		check_mm_invariance(KERN_ISA_AVX512BF16, true, KERN_BF16_R16, 37, 1027);
		check_mm_invariance(KERN_ISA_AVX512BF16, true, KERN_BF16_R16, 130, 64);
		check_mm_invariance(KERN_ISA_AVX512BF16, true, KERN_BF16_R16, 37, 3083);
	}
}

/* Long rows: the packed activations of 70 tokens overflow the backend's scratch, so
 * the vector paths run the tokens in chunks; results stay equal to scalar, and a
 * row alone equals the same row in the batch. */
Test(matmul, long_rows_in_token_chunks)
{
	const int32_t rows = 3, cols = 70001, n = 70;
	struct kern_backend *ref = mk(KERN_ISA_SCALAR, 2, false);
	struct wmat w;
	wmat_init(&w, KERN_BF16, rows, cols, 600);
	float *x = malloc(sizeof(float) * n * cols), *y = malloc(sizeof(float) * n * rows);
	float *yr = malloc(sizeof(float) * n * rows), *y1 = malloc(sizeof(float) * rows);
	fill(x, (size_t)n * cols, 17, 1.0f);
	kern_matmul(ref, &w.m, x, n, yr);
	for (int isa = 1; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		kern_matmul(be, &w.m, x, n, y);
		double e = nerr(y, yr, (size_t)n * rows);
		cr_assert(e < 1e-10, "%s: err %g", kern_backend_name(be), e);
		kern_matmul(be, &w.m, x + (size_t)60 * cols, 1, y1);
		cr_assert(memcmp(y1, y + 60 * rows, sizeof(float) * rows) == 0, "%s",
			  kern_backend_name(be));
		kern_backend_free(be);
	}
	free(x);
	free(y);
	free(yr);
	free(y1);
	wmat_fini(&w);
	kern_backend_free(ref);
}

/* ---- KERN_Q8_0 ---------------------------------------------------------- */

/* cols: one block, part of a group, a group and a part, whole groups, many. */
static const int32_t q8_shapes[][3] = {
	/* rows, cols, n */
	{1, 32, 1}, {5, 96, 3}, {17, 544, 7}, {9, 1024, 13}, {37, 1056, 5}, {64, 512, 1}, {3, 160, 9},
};

/* src quantised to KERN_Q8_0 in a backend buffer (freed with kern_free). */
static struct kern_mat q8_of(struct kern_backend *be, const struct kern_mat *src)
{
	return conv_of(be, src, KERN_Q8_0);
}

/* The documented quantisation, written independently: weights q = round(w / d)
 * with d = max|w| / 127 rounded to f16; activations q = round(x * (127 / max|x|))
 * with d = max|x| / 127 in f32. y = sum over blocks of (sum qw qx) dw dx. */
static void ref_q8_matmul(const struct wmat *w, const float *x, int32_t n, double *y)
{
	const int32_t rows = w->m.rows, cols = w->m.cols, nb = cols / 32;
	int8_t *qw = malloc((size_t)rows * cols), *qx = malloc((size_t)n * cols);
	double *dw = malloc(sizeof(double) * rows * nb), *dx = malloc(sizeof(double) * n * nb);
	for (int32_t r = 0; r < rows; r++)
		for (int32_t b = 0; b < nb; b++) {
			const double *v = w->ref + (size_t)r * cols + b * 32;
			double amax = 0;
			for (int e = 0; e < 32; e++)
				amax = fmax(amax, fabs(v[e]));
			double d = ref_f16(ref_to_f16((float)(amax / 127.0)));
			dw[(size_t)r * nb + b] = d;
			for (int e = 0; e < 32; e++)
				qw[(size_t)r * cols + b * 32 + e] =
					(int8_t)(d > 0 ? fmax(-127, fmin(127, rint(v[e] / d))) : 0);
		}
	for (int32_t t = 0; t < n; t++)
		for (int32_t b = 0; b < nb; b++) {
			const float *v = x + (size_t)t * cols + b * 32;
			float amax = 0;
			for (int e = 0; e < 32; e++)
				amax = fmaxf(amax, fabsf(v[e]));
			float id = amax > 0 ? 127.0f / amax : 0.0f;
			dx[(size_t)t * nb + b] = amax / 127.0f;
			for (int e = 0; e < 32; e++)
				qx[(size_t)t * cols + b * 32 + e] = (int8_t)rintf(v[e] * id);
		}
	for (int32_t t = 0; t < n; t++)
		for (int32_t r = 0; r < rows; r++) {
			double s = 0;
			for (int32_t b = 0; b < nb; b++) {
				int64_t dot = 0;
				for (int e = 0; e < 32; e++)
					dot += qw[(size_t)r * cols + b * 32 + e] *
					       qx[(size_t)t * cols + b * 32 + e];
				s += (double)dot * dw[(size_t)r * nb + b] * dx[(size_t)t * nb + b];
			}
			y[(size_t)t * rows + r] = s;
		}
	free(qw);
	free(qx);
	free(dw);
	free(dx);
}

/* Every ISA (the VNNI kernel where the CPU has it, the scalar one elsewhere) against
 * the reference on the same integers: only the order of f32 sums differs. And the
 * quantisation error against the unquantised product stays near its expected size
 * (uniform values: ~3e-5 in this measure). */
Test(q8, every_isa_matches_reference_and_error_is_small)
{
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		for (size_t d = 0; d < CM_ARRAY_LEN(dtypes); d++)
			for (size_t s = 0; s < CM_ARRAY_LEN(q8_shapes); s++) {
				int32_t rows = q8_shapes[s][0], cols = q8_shapes[s][1];
				int32_t n = q8_shapes[s][2];
				struct wmat w;
				wmat_init(&w, dtypes[d], rows, cols, 700 + s);
				struct kern_mat q = q8_of(be, &w.m);
				float *x = malloc(sizeof(float) * n * cols);
				float *y = malloc(sizeof(float) * n * rows);
				double *yq = malloc(sizeof(double) * n * rows);
				double *yf = malloc(sizeof(double) * n * rows);
				fill(x, (size_t)n * cols, 19 + s, 3.0f);
				kern_matmul(be, &q, x, n, y);
				ref_q8_matmul(&w, x, n, yq);
				ref_matmul(&w, x, n, false, yf);
				double eq = nerr_d(y, yq, (size_t)n * rows);
				double ef = nerr_d(y, yf, (size_t)n * rows);
				cr_assert(eq < 1e-10, "%s dtype %d shape %zu: err %g vs q8 reference",
					  kern_backend_name(be), dtypes[d], s, eq);
				cr_assert(ef < 2e-4, "%s dtype %d shape %zu: err %g vs f32",
					  kern_backend_name(be), dtypes[d], s, ef);
				free(x);
				free(y);
				free(yq);
				free(yf);
				kern_free(be, (void *)q.data);
				wmat_fini(&w);
			}
		kern_backend_free(be);
	}
}

/* A token's row alone or among others, on one thread or two: the same bits. */
static void check_q8_invariance(int isa, int32_t rows, int32_t cols)
{
	struct kern_backend *b1 = mk(isa, 1, false), *b2 = mk(isa, 2, false);
	struct wmat w;
	wmat_init(&w, KERN_BF16, rows, cols, 800 + cols);
	struct kern_mat q = q8_of(b2, &w.m);
	float *x0 = malloc(sizeof(float) * cols), *y0 = malloc(sizeof(float) * rows);
	float *xs = malloc(sizeof(float) * 64 * cols), *y = malloc(sizeof(float) * 64 * rows);
	fill(x0, (size_t)cols, 23, 1.0f);
	kern_matmul(b1, &q, x0, 1, y0);
	const struct {
		struct kern_backend *be;
		int32_t n, at;
	} runs[] = {{b2, 1, 0}, {b2, 2, 1}, {b2, 7, 3}, {b2, 64, 37}, {b1, 64, 37}, {b1, 5, 4}};
	for (size_t r = 0; r < CM_ARRAY_LEN(runs); r++) {
		fill(xs, (size_t)64 * cols, 60 + r, 1.0f);
		memcpy(xs + (size_t)runs[r].at * cols, x0, sizeof(float) * cols);
		kern_matmul(runs[r].be, &q, xs, runs[r].n, y);
		cr_assert(memcmp(y + (size_t)runs[r].at * rows, y0, sizeof(float) * rows) == 0,
			  "%s rows %d cols %d: run %zu differs", kern_backend_name(b1), rows, cols, r);
	}
	kern_free(b2, (void *)q.data);
	free(x0);
	free(y0);
	free(xs);
	free(y);
	wmat_fini(&w);
	kern_backend_free(b1);
	kern_backend_free(b2);
}

Test(q8, batch_invariance)
{
	for (int isa = 0; isa <= top_isa(); isa++) {
		check_q8_invariance(isa, 37, 1056);
		check_q8_invariance(isa, 130, 64);
	}
}

/* Bad shapes are errors; a block of weights that is not finite is zeroed (the rest
 * of its row is kept); an activation that is not finite makes its outputs NaN;
 * converting to the same type copies. */
Test(q8, convert_errors_and_special_values)
{
	struct kern_backend *be = mk(-1, 2, false);
	struct wmat w;
	wmat_init(&w, KERN_F32, 4, 96, 900);
	struct cm_err err = {0};
	struct kern_mat bad = {.dtype = KERN_Q8_0, .rows = 4, .cols = 95, .data = w.buf};
	struct kern_mat odd = w.m;
	odd.cols = 95;
	cr_assert_eq(kern_convert(be, &odd, &bad, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "multiple of 32"), "%s", err.msg);
	struct kern_mat to_f16 = {.dtype = KERN_F16, .rows = 4, .cols = 96, .data = w.buf};
	cr_assert_eq(kern_convert(be, &w.m, &to_f16, &err), CM_EINVAL);

	float *wf = (float *)w.buf;
	wf[1 * 96 + 40] = NAN; /* row 1, block 1 */
	wf[2 * 96 + 70] = INFINITY; /* row 2, block 2 */
	struct kern_mat q = q8_of(be, &w.m);
	float x[96], y[4], yclean[4];
	fill(x, 96, 29, 1.0f);
	memset(x + 32, 0, 64 * sizeof(float)); /* only block 0 of x counts */
	kern_matmul(be, &q, x, 1, y);
	wf[1 * 96 + 40] = 0.5f;
	wf[2 * 96 + 70] = 0.5f;
	struct kern_mat qc = q8_of(be, &w.m);
	kern_matmul(be, &qc, x, 1, yclean);
	for (int r = 0; r < 4; r++)
		cr_assert(y[r] == yclean[r], "row %d: %g vs %g", r, y[r], yclean[r]);
	x[5] = INFINITY;
	kern_matmul(be, &qc, x, 1, y);
	for (int r = 0; r < 4; r++)
		cr_assert(isnan(y[r]), "row %d: %g", r, y[r]);

	struct kern_mat copy = {.dtype = KERN_F32, .rows = 4, .cols = 96};
	copy.data = kern_alloc(be, kern_mat_bytes(&copy));
	cr_assert_eq(kern_convert(be, &w.m, &copy, &err), CM_OK, "%s", err.msg);
	cr_assert(memcmp(copy.data, w.m.data, kern_mat_bytes(&copy)) == 0);
	cr_assert_eq(kern_mat_row_bytes(&q), 192); /* 3 scales x 2 to 64, then 96, to 64 */
	kern_free(be, (void *)copy.data);
	kern_free(be, (void *)q.data);
	kern_free(be, (void *)qc.data);
	wmat_fini(&w);
	kern_backend_free(be);
}

/* Several matrices in one call (q/k/v, gate/up) give each one's kern_matmul bits,
 * on every ISA, for f32 and bf16 activations, q8_0 and bf16_r16 weights, rows split
 * at any place between the matrices (bf16_r16: each matrix from a whole panel). */
Test(matmul, multi_matrix_call_equals_single_calls)
{
	const int32_t cols = 96, rows[3] = {37, 16, 5}, ns[3] = {1, 7, 64};
	for (int isa = 0; isa <= top_isa(); isa++)
		for (int mode = 0; mode < 4; mode++) { /* f32 act, bf16 act, q8_0, bf16_r16 */
			bool bf16 = (mode == 1 || mode == 3) && isa >= KERN_ISA_AVX512BF16;
			struct kern_backend *be = mk(isa, 2, bf16);
			if (mode == 3 && kern_weight_dtype(be, KERN_BF16) != KERN_BF16_R16) {
				kern_backend_free(be);
				continue;
			}
			struct wmat w[3];
			struct kern_mat q[3];
			const struct kern_mat *mats[3];
			for (int i = 0; i < 3; i++) {
				wmat_init(&w[i], KERN_BF16, rows[i], cols, 1000 + i);
				q[i] = mode == 2   ? q8_of(be, &w[i].m)
				       : mode == 3 ? conv_of(be, &w[i].m, KERN_BF16_R16)
						   : w[i].m;
				mats[i] = &q[i];
			}
			float *x = malloc(sizeof(float) * 64 * cols);
			fill(x, (size_t)64 * cols, 31, 1.0f);
			for (int k = 0; k < 3; k++) {
				float *y[3], *y1[3];
				for (int i = 0; i < 3; i++) {
					y[i] = malloc(sizeof(float) * ns[k] * rows[i]);
					y1[i] = malloc(sizeof(float) * ns[k] * rows[i]);
					kern_matmul(be, mats[i], x, ns[k], y1[i]);
				}
				kern_matmul_n(be, 3, mats, x, ns[k], y);
				for (int i = 0; i < 3; i++) {
					cr_assert(memcmp(y[i], y1[i], sizeof(float) * ns[k] * rows[i]) ==
							  0,
						  "%s mode %d n %d matrix %d differs",
						  kern_backend_name(be), mode, ns[k], i);
					free(y[i]);
					free(y1[i]);
				}
			}
			for (int i = 0; i < 3; i++) {
				if (mode >= 2)
					kern_free(be, (void *)q[i].data);
				wmat_fini(&w[i]);
			}
			free(x);
			kern_backend_free(be);
		}
}

/* ---- machine limits ----------------------------------------------------- */

/* The micro-benchmarks of tandem bench give positive figures, and 0 for what the
 * backend's ISA lacks. Their speed is the benchmark's business, not this test's. */
Test(bench, micro_benchmarks_report_what_the_isa_has)
{
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		size_t bytes = 4u << 20; /* >= 2 MiB: the huge-page path of kern_alloc */
		unsigned char *buf = kern_alloc(be, bytes);
		cr_assert_not_null(buf);
		cr_assert_eq((uintptr_t)buf % 64, 0);
		for (size_t i = 0; i < bytes; i += 4093)
			cr_assert_eq(buf[i], 0);
		memset(buf, 1, bytes);
		cr_assert_gt(kern_bench_read(be, buf, bytes), 0.0);
		kern_free(be, buf);
		cr_assert_gt(kern_bench_peak(be, KERN_PEAK_F32, 0.01), 0.0);
		double bf = kern_bench_peak(be, KERN_PEAK_BF16, 0.01);
		double i8 = kern_bench_peak(be, KERN_PEAK_INT8, 0.01);
		cr_assert(isa >= KERN_ISA_AVX512BF16 ? bf > 0 : bf == 0, "isa %d bf16 %g", isa, bf);
		cr_assert(isa >= KERN_ISA_AVX512 && kern_cpu_has_vnni() ? i8 > 0 : i8 == 0,
			  "isa %d int8 %g", isa, i8);
		kern_backend_free(be);
	}
}

/* ---- row ops ------------------------------------------------------------ */

static const int32_t row_dims[] = {1, 7, 16, 33, 255, 1027};

/* Runs one row op on backend be over [n][d] random data; out gets the result. */
enum row_op { OP_RMSNORM, OP_SWIGLU, OP_ADD, OP_SOFTMAX };

static void run_row_op(struct kern_backend *be, enum row_op op, int32_t n, int32_t d, uint64_t seed,
		       float *out)
{
	size_t sz = (size_t)n * d;
	float *a = malloc(sizeof(float) * sz), *b = malloc(sizeof(float) * sz);
	fill(a, sz, seed, 3.0f);
	fill(b, sz, seed + 1, 1.5f);
	switch (op) {
	case OP_RMSNORM:
		for (size_t i = 0; i < (size_t)d; i++)
			b[i] = 1.0f + 0.2f * b[i];
		kern_rmsnorm(be, a, b, 1e-6f, n, d, out);
		break;
	case OP_SWIGLU:
		kern_swiglu(be, a, b, n, d, out);
		break;
	case OP_ADD:
		memcpy(out, a, sizeof(float) * sz);
		kern_add(be, out, b, n, d);
		break;
	case OP_SOFTMAX:
		memcpy(out, a, sizeof(float) * sz);
		kern_softmax(be, out, n, d);
		break;
	}
	free(a);
	free(b);
}

static void ref_row_op(enum row_op op, int32_t n, int32_t d, uint64_t seed, double *out)
{
	size_t sz = (size_t)n * d;
	float *a = malloc(sizeof(float) * sz), *b = malloc(sizeof(float) * sz);
	fill(a, sz, seed, 3.0f);
	fill(b, sz, seed + 1, 1.5f);
	for (int32_t t = 0; t < n; t++) {
		const float *x = a + (size_t)t * d, *u = b + (size_t)t * d;
		double *o = out + (size_t)t * d, acc = 0, mx = -INFINITY;
		for (int32_t i = 0; i < d; i++) {
			acc += (double)x[i] * x[i];
			mx = x[i] > mx ? x[i] : mx;
		}
		double sum = 0;
		for (int32_t i = 0; i < d; i++)
			sum += exp(x[i] - mx);
		for (int32_t i = 0; i < d; i++) {
			switch (op) {
			case OP_RMSNORM:
				o[i] = x[i] / sqrt(acc / d + 1e-6) * (1.0f + 0.2f * b[i]);
				break;
			case OP_SWIGLU:
				o[i] = x[i] / (1.0 + exp(-(double)x[i])) * u[i];
				break;
			case OP_ADD:
				o[i] = (double)x[i] + u[i];
				break;
			case OP_SOFTMAX:
				o[i] = exp(x[i] - mx) / sum;
				break;
			}
		}
	}
	free(a);
	free(b);
}

Test(rowops, scalar_matches_double_and_every_isa_matches_scalar)
{
	struct kern_backend *ref = mk(KERN_ISA_SCALAR, 1, false);
	const int32_t n = 3;
	for (int op = OP_RMSNORM; op <= OP_SOFTMAX; op++)
		for (size_t di = 0; di < CM_ARRAY_LEN(row_dims); di++) {
			int32_t d = row_dims[di];
			float *yr = malloc(sizeof(float) * n * d),
			      *y = malloc(sizeof(float) * n * d);
			double *yd = malloc(sizeof(double) * n * d);
			run_row_op(ref, op, n, d, 500 + di, yr);
			ref_row_op(op, n, d, 500 + di, yd);
			double e = nerr_d(yr, yd, (size_t)n * d);
			cr_assert(e < 1e-10, "op %d d %d: scalar vs double err %g", op, d, e);
			for (int isa = 1; isa <= top_isa(); isa++) {
				struct kern_backend *be = mk(isa, 2, false);
				run_row_op(be, op, n, d, 500 + di, y);
				e = nerr(y, yr, (size_t)n * d);
				cr_assert(e < 1e-10, "%s op %d d %d: err %g", kern_backend_name(be),
					  op, d, e);
				if (op == OP_ADD)
					cr_assert(memcmp(y, yr, sizeof(float) * n * d) == 0);
				kern_backend_free(be);
			}
			free(yr);
			free(y);
			free(yd);
		}
	kern_backend_free(ref);
}

Test(rowops, rmsnorm_in_place_and_batch_invariant)
{
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *b1 = mk(isa, 1, false), *b2 = mk(isa, 2, false);
		const int32_t n = 40, d = 1027;
		float *x = malloc(sizeof(float) * n * d), *y = malloc(sizeof(float) * n * d);
		float *w = malloc(sizeof(float) * d), *y1 = malloc(sizeof(float) * d);
		fill(x, (size_t)n * d, 1, 2.0f);
		fill(w, d, 2, 1.0f);
		kern_rmsnorm(b1, x + (size_t)17 * d, w, 1e-6f, 1, d, y1);
		kern_rmsnorm(b2, x, w, 1e-6f, n, d, y);
		cr_assert(memcmp(y + (size_t)17 * d, y1, sizeof(float) * d) == 0);
		kern_rmsnorm(b2, x, w, 1e-6f, n, d, x);
		cr_assert(memcmp(x, y, sizeof(float) * n * d) == 0);
		free(x);
		free(y);
		free(w);
		free(y1);
		kern_backend_free(b1);
		kern_backend_free(b2);
	}
}

Test(rowops, softmax_of_large_values_and_known_case)
{
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 1, false);
		float x[3] = {1000.0f, 1000.0f, 1000.0f - logf(2.0f)};
		kern_softmax(be, x, 1, 3);
		cr_assert_float_eq(x[0], 0.4f, 1e-5);
		cr_assert_float_eq(x[1], 0.4f, 1e-5);
		cr_assert_float_eq(x[2], 0.2f, 1e-5);
		float g[2] = {-200.0f, 0.0f}, u[2] = {1.0f, 1.0f}, o[2];
		kern_swiglu(be, g, u, 1, 2, o);
		cr_assert(fabsf(o[0]) < 1e-30f && o[1] == 0.0f);
		kern_backend_free(be);
	}
}

/* ---- embed, KV conversions ---------------------------------------------- */

Test(embed, every_dtype_exact_on_every_isa)
{
	/* the f16 table holds every 16-bit pattern once */
	const int32_t rows = 2048, cols = 32;
	uint16_t *h = malloc(sizeof(uint16_t) * rows * cols);
	float *f = malloc(sizeof(float) * rows * cols);
	for (int32_t i = 0; i < rows * cols; i++) {
		h[i] = (uint16_t)i;
		f[i] = (float)i * 0.5f - 1000.0f;
	}
	int32_t ids[5] = {0, 2047, 1023, 992, 1};
	float *out = malloc(sizeof(float) * 5 * cols);
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		for (int dti = 0; dti < 3; dti++) {
			enum kern_dtype dt = dtypes[dti];
			struct kern_mat e = {.dtype = dt,
					     .rows = rows,
					     .cols = cols,
					     .data = dt == KERN_F32 ? (void *)f : (void *)h};
			kern_embed(be, &e, ids, 5, out);
			for (int32_t t = 0; t < 5; t++)
				for (int32_t c = 0; c < cols; c++) {
					int32_t k = ids[t] * cols + c;
					float got = out[t * cols + c];
					double want = dt == KERN_F32 ? f[k]
						      : dt == KERN_BF16
							      ? ffrom((uint32_t)h[k] << 16)
							      : ref_f16(h[k]);
					if (isnan(want))
						cr_assert(isnan(got), "%s dt %d elem %d",
							  kern_backend_name(be), dt, k);
					else
						cr_assert(got == want, "%s dt %d elem %d: %a != %a",
							  kern_backend_name(be), dt, k, got, want);
				}
		}
		kern_backend_free(be);
	}
	free(h);
	free(f);
	free(out);
}

Test(kv, store_f16_rounds_to_nearest_even_on_every_isa)
{
	/* one token of 3 heads x 37: specials, subnormals, halfway cases, random */
	const int32_t nkv = 3, hd = 37, w = nkv * hd, bs = 4, nblk = 3;
	float k[2 * 111], v[2 * 111];
	uint64_t s = 77;
	const float special[] = {0.0f,	     -0.0f,    1.0f,	    65504.0f,	 65519.0f,
				 65520.0f,   1e9f,     -INFINITY,   0x1p-24f,	 0x1p-25f,
				 0x1.8p-25f, 0x1p-26f, 0x1.0020p0f, 0x1.0030p0f, 0x1.0010p0f,
				 6.1e-5f,    -3.3e-6f};
	for (int32_t i = 0; i < 2 * w; i++) {
		k[i] = i < (int32_t)CM_ARRAY_LEN(special) ? special[i] : rng_f(&s) * 10.0f;
		v[i] = rng_f(&s) * 1e-4f;
	}
	int32_t slots[2] = {2 * bs + 1, -1};
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		size_t pool = (size_t)nblk * bs * w;
		uint16_t *kp = kern_alloc(be, pool * 2), *vp = kern_alloc(be, pool * 2);
		struct kern_kv_layer kv = {.k = kp,
					   .v = vp,
					   .dtype = KERN_F16,
					   .block_size = bs,
					   .n_kv_head = nkv,
					   .head_dim = hd};
		kern_kv_store(be, &kv, k, v, 2, slots);
		for (int32_t i = 0; i < w; i++) {
			size_t at = kv_pool_at(&kv, slots[0], i / hd, i % hd);
			cr_assert_eq(kp[at], ref_to_f16(k[i]), "%s k[%d] = %a", kern_backend_name(be),
				     i, k[i]);
			cr_assert_eq(vp[at], ref_to_f16(v[i]));
		}
		size_t nonzero = 0;
		for (size_t i = 0; i < pool; i++)
			nonzero += kp[i] != 0 || vp[i] != 0;
		cr_assert(nonzero <= (size_t)2 * w, "the padding token (slot -1) was stored");
		kern_free(be, kp);
		kern_free(be, vp);
		kern_backend_free(be);
	}
}

/* ---- rope --------------------------------------------------------------- */

Test(rope, rotate_half_matches_double_formula)
{
	struct kern_backend *be = mk(-1, 2, false);
	/* hand case: head_dim 4, pairs (0,2) and (1,3) */
	float x[4] = {1.0f, 0.0f, 0.0f, 1.0f}, inv[2] = {1.0f, 0.5f};
	int32_t pos1 = 1;
	kern_rope(be, x, 1, 1, 4, &pos1, inv);
	cr_assert_float_eq(x[0], cosf(1.0f), 1e-7);
	cr_assert_float_eq(x[2], sinf(1.0f), 1e-7);
	cr_assert_float_eq(x[1], -sinf(0.5f), 1e-7);
	cr_assert_float_eq(x[3], cosf(0.5f), 1e-7);

	const int32_t n = 9, nh = 3, hd = 64, half = hd / 2;
	float inv_freq[32];
	for (int32_t i = 0; i < half; i++)
		inv_freq[i] = (float)pow(1e6, -2.0 * i / hd);
	int32_t pos[9] = {0, 1, 2, 7, 100, 4095, 40000, 3, 3};
	float *q = malloc(sizeof(float) * n * nh * hd);
	double *want = malloc(sizeof(double) * n * nh * hd);
	fill(q, (size_t)n * nh * hd, 3, 1.0f);
	for (int32_t t = 0; t < n; t++)
		for (int32_t h = 0; h < nh; h++)
			for (int32_t i = 0; i < half; i++) {
				size_t o = ((size_t)t * nh + h) * hd + i;
				double a = (double)((float)pos[t] * inv_freq[i]);
				double c = cos(a), s = sin(a);
				want[o] = q[o] * c - q[o + half] * s;
				want[o + half] = q[o + half] * c + q[o] * s;
			}
	kern_rope(be, q, n, nh, hd, pos, inv_freq);
	double e = nerr_d(q, want, (size_t)n * nh * hd);
	cr_assert(e < 1e-12, "err %g", e);
	free(q);
	free(want);
	kern_backend_free(be);
}

/* ---- argmax, top-k ------------------------------------------------------ */

Test(sample, argmax_lowest_index_on_ties)
{
	for (int isa = 0; isa <= top_isa(); isa++) {
		struct kern_backend *be = mk(isa, 2, false);
		float a[4] = {1, 5, 3, 5};
		cr_assert_eq(kern_argmax(be, a, 4), 1);
		float z[40] = {0};
		cr_assert_eq(kern_argmax(be, z, 40), 0);
		z[39] = NAN;
		z[3] = -1;
		cr_assert_eq(kern_argmax(be, z, 40), 0);
		float nn[3] = {NAN, -2.0f, -1.0f};
		cr_assert_eq(kern_argmax(be, nn, 3), 2);
		const int32_t n = 151936;
		float *x = malloc(sizeof(float) * n);
		fill(x, n, 5, 10.0f);
		x[100000] = 11.0f;
		x[151935] = 11.0f;
		x[70001] = 11.0f;
		cr_assert_eq(kern_argmax(be, x, n), 70001);
		int32_t best = 0;
		for (int32_t i = 1; i < 70001; i++)
			best = x[i] > x[best] ? i : best;
		cr_assert_eq(kern_argmax(be, x, 70001), best);
		free(x);
		kern_backend_free(be);
	}
}

struct iv {
	float v;
	int32_t i;
};

static int iv_cmp(const void *pa, const void *pb)
{
	const struct iv *a = pa, *b = pb;
	if (a->v != b->v)
		return a->v > b->v ? -1 : 1;
	return a->i < b->i ? -1 : a->i > b->i;
}

Test(sample, topk_sorted_desc_ties_lower_index_first)
{
	struct kern_backend *be = mk(-1, 2, false);
	float a[6] = {2, 7, 7, 1, 7, 2};
	int32_t idx[6];
	float val[6];
	cr_assert_eq(kern_topk(be, a, 6, 4, idx, val), 4);
	int32_t want_i[4] = {1, 2, 4, 0};
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(idx[i], want_i[i]);
		cr_assert_eq(val[i], a[want_i[i]]);
	}
	const int32_t n = 151936;
	float *x = malloc(sizeof(float) * n);
	struct iv *all = malloc(sizeof(*all) * n);
	uint64_t s = 9;
	for (int32_t i = 0; i < n; i++) {
		x[i] = (float)(int)(rng_f(&s) * 500.0f); /* many duplicates */
		all[i] = (struct iv){x[i], i};
	}
	qsort(all, n, sizeof(*all), iv_cmp);
	const int32_t ks[] = {1, 5, 50, 1000};
	int32_t *ti = malloc(sizeof(int32_t) * 1000);
	float *tv = malloc(sizeof(float) * 1000);
	for (size_t c = 0; c < CM_ARRAY_LEN(ks); c++) {
		cr_assert_eq(kern_topk(be, x, n, ks[c], ti, tv), ks[c]);
		for (int32_t i = 0; i < ks[c]; i++) {
			cr_assert_eq(ti[i], all[i].i, "k %d rank %d", ks[c], i);
			cr_assert_eq(tv[i], all[i].v);
		}
	}
	/* k = n sorts everything */
	float small[5] = {3, -1, 3, 8, -1};
	int32_t si[5];
	float sv[5];
	cr_assert_eq(kern_topk(be, small, 5, 5, si, sv), 5);
	int32_t want_s[5] = {3, 0, 2, 1, 4};
	for (int i = 0; i < 5; i++)
		cr_assert_eq(si[i], want_s[i]);
	free(x);
	free(all);
	free(ti);
	free(tv);
	kern_backend_free(be);
}

/* ---- attention ---------------------------------------------------------- */

struct attn_case {
	struct kern_kv_layer kv;
	int32_t n_head, n_seq, n_seg, n;
	struct kern_kv_seg segs[4 * KERN_MAX_SEGS];
	int32_t blocks[4 * KERN_MAX_SEGS][128];
	struct kern_attn_query *qs;
	float *q;
	float *kf, *vf; /* the values as stored (after f16 rounding) per slot */
};

/* When set, q, K and V values span 2^-6 .. 2^6 times their usual scale, so that
 * sums of their products round (bf16 products of unit-scale values often add up
 * exactly, and a changed order of operations would go unseen). */
static bool attn_wide;

static void fill_attn(float *x, size_t n, uint64_t seed, float scale)
{
	fill(x, n, seed, scale);
	for (size_t i = 0; attn_wide && i < n; i++)
		x[i] = ldexpf(x[i], (int)((i * 7 + seed) % 13) - 6);
}

/* A paged pool with shuffled block ids: n_seq sequences of n_seg segments with the
 * given lengths, K/V random; queries with random per-segment visibility (some 0). */
static void attn_case_init(struct attn_case *c, struct kern_backend *be, enum kern_dtype dt,
			   int32_t n_head, int32_t nkv, int32_t hd, int32_t bs, int32_t n_seq,
			   int32_t n_seg, const int32_t *seg_len, int32_t n, uint64_t seed)
{
	memset(c, 0, sizeof(*c));
	c->n_head = n_head;
	c->n_seq = n_seq;
	c->n_seg = n_seg;
	c->n = n;
	int32_t nblk = 0;
	for (int32_t s = 0; s < n_seq * n_seg; s++)
		nblk += (seg_len[s] + bs - 1) / bs;
	int32_t *perm = malloc(sizeof(int32_t) * (nblk + 1));
	for (int32_t i = 0; i < nblk; i++)
		perm[i] = i;
	uint64_t r = seed;
	for (int32_t i = nblk - 1; i > 0; i--) {
		int32_t j = (int32_t)(rng_next(&r) % (uint64_t)(i + 1));
		int32_t t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	int32_t used = 0;
	for (int32_t s = 0; s < n_seq * n_seg; s++) {
		int32_t nb = (seg_len[s] + bs - 1) / bs;
		cr_assert(nb <= 128);
		for (int32_t b = 0; b < nb; b++)
			c->blocks[s][b] = perm[used++];
		c->segs[s] = (struct kern_kv_seg){.blocks = c->blocks[s], .n_tok = seg_len[s]};
	}
	free(perm);
	c->kv = (struct kern_kv_layer){
		.dtype = dt, .block_size = bs, .n_kv_head = nkv, .head_dim = hd};
	size_t w = (size_t)nkv * hd, slots = (size_t)(nblk ? nblk : 1) * bs;
	c->kv.k = kern_alloc(be, slots * w * kern_dtype_size(dt));
	c->kv.v = kern_alloc(be, slots * w * kern_dtype_size(dt));
	c->kf = calloc(slots * w, sizeof(float));
	c->vf = calloc(slots * w, sizeof(float));
	float *kk = malloc(sizeof(float) * w), *vv = malloc(sizeof(float) * w);
	for (int32_t s = 0; s < n_seq * n_seg; s++)
		for (int32_t t = 0; t < seg_len[s]; t++) {
			fill_attn(kk, w, seed + 1000 * s + t, 1.0f);
			fill_attn(vv, w, seed + 7777 + 1000 * s + t, 1.0f);
			int32_t slot = c->blocks[s][t / bs] * bs + t % bs;
			kern_kv_store(be, &c->kv, kk, vv, 1, &slot);
			for (size_t j = 0; j < w; j++) {
				size_t o = (size_t)slot * w + j;
				size_t at = kv_pool_at(&c->kv, slot, (int32_t)(j / (size_t)hd),
						       (int32_t)(j % (size_t)hd));
				if (dt == KERN_F16) {
					c->kf[o] = (float)ref_f16(((uint16_t *)c->kv.k)[at]);
					c->vf[o] = (float)ref_f16(((uint16_t *)c->kv.v)[at]);
				} else {
					c->kf[o] = ((float *)c->kv.k)[at];
					c->vf[o] = ((float *)c->kv.v)[at];
				}
			}
		}
	free(kk);
	free(vv);
	c->qs = calloc((size_t)n, sizeof(*c->qs));
	c->q = malloc(sizeof(float) * n * n_head * hd);
	fill_attn(c->q, (size_t)n * n_head * hd, seed + 5, 2.0f);
	for (int32_t i = 0; i < n; i++) {
		c->qs[i].seq = (int32_t)(rng_next(&r) % (uint64_t)n_seq);
		for (int32_t s = 0; s < n_seg; s++) {
			int32_t len = seg_len[c->qs[i].seq * n_seg + s];
			c->qs[i].n_vis[s] = (int32_t)(rng_next(&r) % (uint64_t)(len + 1));
		}
	}
	/* query 0 sees nothing; the last sees everything */
	for (int32_t s = 0; s < n_seg; s++) {
		c->qs[0].n_vis[s] = 0;
		c->qs[n - 1].n_vis[s] = seg_len[c->qs[n - 1].seq * n_seg + s];
	}
}

static void attn_case_fini(struct attn_case *c, struct kern_backend *be)
{
	kern_free(be, c->kv.k);
	kern_free(be, c->kv.v);
	free(c->kf);
	free(c->vf);
	free(c->qs);
	free(c->q);
}

static struct kern_attn_params attn_params(struct attn_case *c)
{
	return (struct kern_attn_params){
		.kv = &c->kv,
		.n_head = c->n_head,
		.scale = 1.0f / sqrtf((float)c->kv.head_dim),
		.n_seg = c->n_seg,
		.segs = c->segs,
		.queries = c->qs,
	};
}

/* Naive double-precision softmax(q K^T * scale) V over the visible keys. */
static void ref_attention(const struct attn_case *c, double *out)
{
	const int32_t hd = c->kv.head_dim, nkv = c->kv.n_kv_head, g = c->n_head / nkv;
	const double scale = 1.0f / sqrtf((float)hd);
	double *sc = malloc(sizeof(double) * 4096);
	size_t *slot = malloc(sizeof(size_t) * 4096);
	for (int32_t i = 0; i < c->n; i++)
		for (int32_t h = 0; h < c->n_head; h++) {
			const float *qh = c->q + ((size_t)i * c->n_head + h) * hd;
			double *o = out + ((size_t)i * c->n_head + h) * hd;
			int32_t nk = 0, seq = c->qs[i].seq;
			for (int32_t s = 0; s < c->n_seg; s++)
				for (int32_t t = 0; t < c->qs[i].n_vis[s]; t++) {
					const struct kern_kv_seg *sg = &c->segs[seq * c->n_seg + s];
					slot[nk++] = (size_t)sg->blocks[t / c->kv.block_size] *
							     c->kv.block_size +
						     t % c->kv.block_size;
				}
			double mx = -INFINITY, sum = 0;
			for (int32_t j = 0; j < nk; j++) {
				const float *kr = c->kf + (slot[j] * nkv + h / g) * hd;
				double d = 0;
				for (int32_t e = 0; e < hd; e++)
					d += (double)qh[e] * kr[e];
				sc[j] = d * scale;
				mx = sc[j] > mx ? sc[j] : mx;
			}
			for (int32_t j = 0; j < nk; j++)
				sum += sc[j] = exp(sc[j] - mx);
			for (int32_t e = 0; e < hd; e++) {
				double a = 0;
				for (int32_t j = 0; j < nk; j++)
					a += sc[j] * c->vf[(slot[j] * nkv + h / g) * hd + e];
				o[e] = nk ? a / sum : 0.0;
			}
		}
	free(sc);
	free(slot);
}

static void check_attention(enum kern_dtype dt, int32_t n_head, int32_t nkv, int32_t hd, int32_t bs,
			    int32_t n_seq, int32_t n_seg, const int32_t *seg_len, int32_t n,
			    uint64_t seed)
{
	struct kern_backend *ref = mk(KERN_ISA_SCALAR, 2, false);
	struct attn_case c;
	attn_case_init(&c, ref, dt, n_head, nkv, hd, bs, n_seq, n_seg, seg_len, n, seed);
	struct kern_attn_params p = attn_params(&c);
	size_t sz = (size_t)n * n_head * hd;
	float *o_s = malloc(sizeof(float) * sz), *o = malloc(sizeof(float) * sz);
	float *o1 = malloc(sizeof(float) * n_head * hd);
	double *o_d = malloc(sizeof(double) * sz);
	ref_attention(&c, o_d);
	kern_attention(ref, &p, c.q, n, o_s);
	double e = nerr_d(o_s, o_d, sz);
	cr_assert(e < 1e-10, "scalar vs double: err %g", e);
	for (size_t j = 0; j < (size_t)n_head * hd; j++)
		cr_assert(o_s[j] == 0.0f, "a query that sees nothing must get zeros");
	/* every ISA in f32; with bf16 activations (bf16 dot products, where the CPU
	 * has them) within bf16's rounding of q, K, V and the weights */
	for (int v = 0; v <= top_isa() + 1; v++) {
		const bool bf16 = v > top_isa();
		const int isa = bf16 ? top_isa() : v;
		if (bf16 && isa < KERN_ISA_AVX512BF16)
			break;
		struct kern_backend *b2 = mk(isa, 2, bf16), *b1 = mk(isa, 1, bf16);
		kern_attention(b2, &p, c.q, n, o);
		/* bf16: 4-7e-6 measured on unit-scale values; on the wide ones scores
		 * reach ~10^3 and bf16's 2^-9 moves them by units: no bound there */
		e = bf16 ? nerr_d(o, o_d, sz) : nerr(o, o_s, sz);
		cr_assert(e < (bf16 ? (attn_wide ? INFINITY : 5e-5) : 1e-10), "%s vs %s: err %g",
			  kern_backend_name(b2), bf16 ? "double" : "scalar", e);
		if (bf16)
			cr_log_info("%s: attention err %.2e", kern_backend_name(b2), e);
		/* batch invariance: every query alone (two threads: decode's split
		 * partitions), the last also on one thread, equal the batch bit for bit */
		for (int32_t i = 0; i < n; i++) {
			struct kern_attn_params p1 = p;
			p1.queries = &c.qs[i];
			size_t at = (size_t)i * n_head * hd;
			kern_attention(i == n - 1 ? b1 : b2, &p1, c.q + at, 1, o1);
			cr_assert(memcmp(o1, o + at, sizeof(float) * n_head * hd) == 0,
				  "%s: query %d alone differs from the batch",
				  kern_backend_name(b2), i);
		}
		kern_backend_free(b1);
		kern_backend_free(b2);
	}
	attn_case_fini(&c, ref);
	free(o_s);
	free(o);
	free(o1);
	free(o_d);
	kern_backend_free(ref);
}

Test(attention, paged_gqa_segments_f32)
{
	const int32_t len[4] = {23, 9, 40, 1}; /* [seq][seg] */
	check_attention(KERN_F32, 4, 2, 40, 5, 2, 2, len, 13, 1);
	const int32_t one[1] = {50};
	check_attention(KERN_F32, 6, 1, 33, 16, 1, 1, one, 9, 2);
}

Test(attention, paged_gqa_segments_f16)
{
	const int32_t len[6] = {17, 3, 30, 12, 0, 21}; /* 3 seqs x 2 segs */
	check_attention(KERN_F16, 8, 2, 64, 4, 3, 2, len, 11, 3);
	const int32_t four[4] = {5, 7, 9, 11};
	check_attention(KERN_F16, 2, 2, 7, 3, 1, 4, four, 5, 4);
}

Test(attention, partitions_merge_alike_in_batch_and_alone)
{
	/* 600 and 530 tokens: three partitions; 7 queries take the batched path */
	const int32_t len[4] = {600, 40, 530, 3};
	check_attention(KERN_F32, 4, 2, 24, 8, 2, 2, len, 7, 7);
	check_attention(KERN_F16, 4, 1, 16, 32, 2, 2, len, 7, 8);
}

/* One sequence, so that the batch shares each chunk among many heads (the
 * bf16 path's transposed keys) while a query alone does not (its keys' rows);
 * values of a wide range, so that a different order of operations would show. */
Test(attention, shared_and_alone_chunks_agree_on_wide_values)
{
	const int32_t len[1] = {300};
	attn_wide = true;
	check_attention(KERN_F32, 8, 2, 128, 16, 1, 1, len, 9, 9);
	check_attention(KERN_F16, 8, 2, 72, 16, 1, 1, len, 9, 10);
	attn_wide = false;
}

Test(attention, decode_long_context)
{
	const int32_t len[1] = {700};
	check_attention(KERN_F32, 16, 8, 128, 16, 1, 1, len, 2, 5);
	check_attention(KERN_F16, 16, 8, 128, 16, 1, 1, len, 2, 6);
}
