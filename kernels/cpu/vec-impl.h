/* kernels/cpu: the generic vector ops, written once against simd-impl.h.
 *
 * Included by each SIMD ops file after simd-impl.h, with KS_FN(name) defined to
 * give the functions that file's prefix, KS_MM_T (most tokens per matmul tile) and
 * KS_MM_R1, KS_MM_R2, KS_MM_RN (rows per tile of 1, 2 and more tokens; <= 8).
 * The file then lists the functions in its kern_cpu_ops table.
 *
 * Matmul: y[t][r] = sum_k w[r][k] x[t][k] as a dot product per output on row-major
 * weights used in place. The activations are packed once per call (zero-padded to
 * a multiple of 2 VL; for bf16 weights each 2 VL block split into even and odd
 * elements so a weight vector converts with one shift or one mask). A micro-tile
 * keeps R rows x T tokens of VL-lane accumulators; every accumulator sees the
 * same sequence of FMAs (steps of 2 VL in k order, the last one partial) and the
 * same lane-wise reduction tree (vf_hsum_pairs), so an output does not depend on
 * the tile it was computed in: GEMV and GEMM agree bit for bit. A one-token tile
 * takes one row (KS_MM_R1 = 1: each thread then reads its rows in address order,
 * the stream the hardware prefetcher follows best; docs/performance.md); two-token
 * tiles take several rows and prefetch the next tile's.
 *
 * Attention: one partition (cpu-impl.h) of a few queries and heads at a time,
 * online softmax over chunks of VL keys.
 */
#ifndef KS_FN
#error "define KS_FN before including vec-impl.h"
#endif

#define MM_RMAX 8	 /* most rows per micro-tile */
#define MM_STEP (2 * VL) /* k per step */
#define MM_RB	64	 /* rows per cache block (weights stay in L2 across tokens) */
_Static_assert(MM_RMAX * KS_MM_T <= KS_TILE_MAX, "a micro-tile's accumulators fit ks_tile_store");

/* ---- row ops ------------------------------------------------------------ */

static void KS_FN(rmsnorm)(const float *x, const float *w, float eps, int32_t d, float *y)
{
	vf acc = vf_zero();
	int32_t i = 0;
	for (; i + VL <= d; i += VL) {
		vf v = vf_load(x + i);
		acc = vf_fma(v, v, acc);
	}
	if (i < d) {
		vf v = vf_load_part(x + i, d - i);
		acc = vf_fma(v, v, acc);
	}
	float r = 1.0f / sqrtf(vf_hsum(acc) / (float)d + eps);
	vf vr = vf_set1(r);
	for (i = 0; i + VL <= d; i += VL)
		vf_store(y + i, vf_mul(vf_mul(vf_load(x + i), vr), vf_load(w + i)));
	if (i < d)
		vf_store_part(
			y + i,
			vf_mul(vf_mul(vf_load_part(x + i, d - i), vr), vf_load_part(w + i, d - i)),
			d - i);
}

KS_INLINE vf ks_silu_mul(vf g, vf u)
{
	vf e = vf_exp(vf_sub(vf_zero(), g));
	return vf_mul(vf_div(g, vf_add(vf_set1(1.0f), e)), u);
}

static void KS_FN(swiglu)(const float *g, const float *u, int32_t d, float *out)
{
	int32_t i = 0;
	for (; i + VL <= d; i += VL)
		vf_store(out + i, ks_silu_mul(vf_load(g + i), vf_load(u + i)));
	if (i < d)
		vf_store_part(out + i,
			      ks_silu_mul(vf_load_part(g + i, d - i), vf_load_part(u + i, d - i)),
			      d - i);
}

static void KS_FN(add)(float *y, const float *x, int32_t d)
{
	int32_t i = 0;
	for (; i + VL <= d; i += VL)
		vf_store(y + i, vf_add(vf_load(y + i), vf_load(x + i)));
	if (i < d)
		vf_store_part(y + i, vf_add(vf_load_part(y + i, d - i), vf_load_part(x + i, d - i)),
			      d - i);
}

/* The largest non-NaN value of x[0..n) (-inf if none). */
KS_INLINE float ks_max(const float *x, int32_t n)
{
	vf mv = vf_set1(-INFINITY);
	int32_t i = 0;
	for (; i + VL <= n; i += VL)
		mv = vf_max(vf_load(x + i), mv);
	float m = vf_hmax(mv);
	for (; i < n; i++)
		m = x[i] > m ? x[i] : m;
	return m;
}

static void KS_FN(softmax)(float *x, int32_t d)
{
	vf m = vf_set1(ks_max(x, d)), s = vf_zero();
	int32_t i = 0;
	for (; i + VL <= d; i += VL) {
		vf e = vf_exp(vf_sub(vf_load(x + i), m));
		vf_store(x + i, e);
		s = vf_add(s, e);
	}
	if (i < d) {
		vf e = vf_exp(vf_sub(vf_load_part(x + i, d - i), m));
		e = vf_keep_first(e, d - i, vf_zero());
		vf_store_part(x + i, e, d - i);
		s = vf_add(s, e);
	}
	vf sum = vf_set1(vf_hsum(s));
	for (i = 0; i + VL <= d; i += VL)
		vf_store(x + i, vf_div(vf_load(x + i), sum));
	if (i < d)
		vf_store_part(x + i, vf_div(vf_load_part(x + i, d - i), sum), d - i);
}

static int32_t KS_FN(argmax)(const float *x, int32_t n)
{
	float m = ks_max(x, n);
	vf mv = vf_set1(m);
	int32_t i = 0;
	for (; i + VL <= n; i += VL) {
		uint32_t b = vf_eq_bits(vf_load(x + i), mv);
		if (b)
			return i + __builtin_ctz(b);
	}
	for (; i < n; i++)
		if (x[i] == m)
			return i;
	return 0;
}

static void KS_FN(to_f32)(enum kern_dtype dt, const void *src, int32_t d, float *dst)
{
	const uint16_t *h = src;
	int32_t i = 0;
	switch (dt) {
	case KERN_F32:
		memcpy(dst, src, (size_t)d * sizeof(float));
		break;
	case KERN_F16:
		for (; i + VL <= d; i += VL)
			vf_store(dst + i, vf_load_f16(h + i));
		if (i < d)
			vf_store_part(dst + i, vf_load_f16_part(h + i, d - i), d - i);
		break;
	case KERN_BF16:
		for (; i + VL <= d; i += VL)
			vf_store(dst + i, vf_load_bf16(h + i));
		if (i < d)
			vf_store_part(dst + i, vf_load_bf16_part(h + i, d - i), d - i);
		break;
	case KERN_Q8_0: /* never reach here (kern_embed refuses them) */
	case KERN_BF16_R16:
		break;
	}
}

static void KS_FN(to_f16)(const float *src, int32_t d, uint16_t *dst)
{
	int32_t i = 0;
	for (; i + VL <= d; i += VL)
		vf_store_f16(dst + i, vf_load(src + i));
	if (i < d)
		vf_store_f16_part(dst + i, vf_load_part(src + i, d - i), d - i);
}

/* ---- machine limits (kern_bench_peak) ---------------------------------- */

#ifndef KS_BENCH_ACC
#define KS_BENCH_ACC 12 /* independent FMA chains: latency x throughput, within the registers */
#endif

static double KS_FN(bench_fma)(int64_t iters)
{
	vf acc[KS_BENCH_ACC], a = vf_set1(1.0f), b = vf_set1(0.5f);
	KS_UNROLL
	for (int k = 0; k < KS_BENCH_ACC; k++)
		acc[k] = vf_set1((float)k); /* distinct chains: no common subexpression */
	for (int64_t it = 0; it < iters; it++) {
		KS_UNROLL
		for (int k = 0; k < KS_BENCH_ACC; k++)
			acc[k] = vf_fma(a, b, acc[k]);
		__asm__ volatile("" : "+x"(a), "+x"(b));
	}
	vf s = acc[0];
	for (int k = 1; k < KS_BENCH_ACC; k++)
		s = vf_add(s, acc[k]);
	volatile float sink = vf_hsum(s);
	(void)sink;
	return (double)iters * KS_BENCH_ACC * VL;
}

/* ---- attention ---------------------------------------------------------- */

/* n elements of K or V at element d of a row. */
KS_INLINE vf ks_kv_load(const void *p, int32_t d, int n, bool f16)
{
	if (f16)
		return n == VL ? vf_load_f16((const uint16_t *)p + d)
			       : vf_load_f16_part((const uint16_t *)p + d, n);
	return n == VL ? vf_load((const float *)p + d) : vf_load_part((const float *)p + d, n);
}

/* a[j] = VL-lane partial sums of q . k_j over head_dim (not yet reduced), zero for
 * j >= cn. Four keys at a time so that four FMA chains run side by side; each key
 * still sums its head_dim blocks in order. */
KS_INLINE void ks_attn_dots(const float *q, const char *const *kp, int cn, int32_t hd, bool f16,
			    vf *a)
{
	for (int j0 = 0; j0 < VL; j0 += 4) {
		if (j0 >= cn) {
			KS_UNROLL
			for (int u = 0; u < 4; u++)
				a[j0 + u] = vf_zero();
			continue;
		}
		const char *k[4];
		vf s[4];
		KS_UNROLL
		for (int u = 0; u < 4; u++) {
			k[u] = kp[j0 + u < cn ? j0 + u : j0]; /* a stand-in key, result dropped */
			s[u] = vf_zero();
		}
		int32_t d = 0;
		for (; d + VL <= hd; d += VL) {
			vf qv = vf_load(q + d);
			KS_UNROLL
			for (int u = 0; u < 4; u++)
				s[u] = vf_fma(qv, ks_kv_load(k[u], d, VL, f16), s[u]);
		}
		if (d < hd) {
			vf qv = vf_load_part(q + d, hd - d);
			KS_UNROLL
			for (int u = 0; u < 4; u++)
				s[u] = vf_fma(qv, ks_kv_load(k[u], d, hd - d, f16), s[u]);
		}
		KS_UNROLL
		for (int u = 0; u < 4; u++)
			a[j0 + u] = j0 + u < cn ? s[u] : vf_zero();
	}
}

/* acc[0..hd) += sum_j p[j] * v_j, keys in order for every element; four vectors
 * of acc at a time so that four FMA chains run side by side. */
KS_INLINE void ks_attn_pv(float *acc, const float *pb, const char *const *vp, int cn, int32_t hd,
			  bool f16)
{
	int32_t d = 0;
	for (; d + 4 * VL <= hd; d += 4 * VL) {
		vf a[4];
		KS_UNROLL
		for (int u = 0; u < 4; u++)
			a[u] = vf_load(acc + d + u * VL);
		for (int j = 0; j < cn; j++) {
			vf pj = vf_set1(pb[j]);
			KS_UNROLL
			for (int u = 0; u < 4; u++)
				a[u] = vf_fma(pj, ks_kv_load(vp[j], d + u * VL, VL, f16), a[u]);
		}
		KS_UNROLL
		for (int u = 0; u < 4; u++)
			vf_store(acc + d + u * VL, a[u]);
	}
	for (; d < hd; d += VL) {
		int n = hd - d < VL ? hd - d : VL;
		vf a = n == VL ? vf_load(acc + d) : vf_load_part(acc + d, n);
		for (int j = 0; j < cn; j++)
			a = vf_fma(vf_set1(pb[j]), ks_kv_load(vp[j], d, n, f16), a);
		if (n == VL)
			vf_store(acc + d, a);
		else
			vf_store_part(acc + d, a, n);
	}
}

struct ks_attn_state {
	float m;    /* running max score */
	float l;    /* running sum of exp(score - m) */
	float *acc; /* [head_dim] running sum of exp(score - m) * v */
};

#define KS_ATTN_NP 4 /* (query, head) pairs that share each load of a chunk's keys and values */

/* The dots of KS_ATTN_NP queries q[u] with the keys of a chunk transposed into
 * kt[hd rounded up to VL][VL] (lane j: key j; zeros past head_dim), into sc[u].
 *
 * Row-wise (ks_attn_dots), lane l of key j's partial sums runs the FMAs of
 * elements l, l + VL, ... in order, and vf_hsum_vl then adds the lanes by halving
 * (l with l + VL/2, then l + VL/4, ...). Here lane l of every key is the vector
 * p[l], built by the same FMAs in the same order, and added by the same tree: the
 * same bits, without the shuffles of a horizontal reduction. The tree's first
 * levels only join lanes equal modulo 4, so the work goes in four passes of VL/4
 * lanes (those equal to a modulo 4), each leaving one vector t[a]; then
 * (t0 + t2) + (t1 + t3) is the last two levels. Each load of kt serves every
 * query of the call. */
KS_INLINE void ks_attn_dots_t(const float *const *q, const float *kt, int32_t hd, const bool WHOLE,
			       vf *sc)
{
	enum { K = VL / 4 };
	vf t[4][KS_ATTN_NP];
	KS_UNROLL
	for (int a = 0; a < 4; a++) {
		vf p[K][KS_ATTN_NP];
		KS_UNROLL
		for (int k = 0; k < K; k++)
			KS_UNROLL
		for (int u = 0; u < KS_ATTN_NP; u++)
			p[k][u] = vf_zero();
		for (int32_t d = 0; d < hd; d += VL) {
			KS_UNROLL
			for (int k = 0; k < K; k++) {
				const int l = a + 4 * k;
				vf kv = vf_load(kt + (size_t)(d + l) * VL);
				KS_UNROLL
				for (int u = 0; u < KS_ATTN_NP; u++)
					p[k][u] = vf_fma(vf_set1(WHOLE || d + l < hd ? q[u][d + l]
										      : 0.0f),
							 kv, p[k][u]);
			}
		}
		KS_UNROLL
		for (int h = K / 2; h >= 1; h /= 2)
			KS_UNROLL
		for (int k = 0; k < h; k++)
			KS_UNROLL
		for (int u = 0; u < KS_ATTN_NP; u++)
			p[k][u] = vf_add(p[k][u], p[k + h][u]);
		KS_UNROLL
		for (int u = 0; u < KS_ATTN_NP; u++)
			t[a][u] = p[0][u];
	}
	KS_UNROLL
	for (int u = 0; u < KS_ATTN_NP; u++)
		sc[u] = vf_add(vf_add(t[0][u], t[2][u]), vf_add(t[1][u], t[3][u]));
}

/* kt[d][j] = element d of key row j (f32 or f16), for j < n and d < head_dim;
 * zeros elsewhere in the [hd rounded up to VL][VL] block. */
KS_INLINE void ks_attn_gather_t(const char *const *rows, int n, int32_t hd, bool f16, float *kt)
{
	for (int32_t d = 0; d < hd; d += VL) {
		const int nd = hd - d < VL ? hd - d : VL;
		vf r[VL];
		for (int j = 0; j < VL; j++)
			r[j] = j < n ? ks_kv_load(rows[j], d, nd, f16) : vf_zero();
		vf_transpose(r);
		KS_UNROLL
		for (int l = 0; l < VL; l++)
			vf_store(kt + (size_t)(d + l) * VL, r[l]);
	}
}

/* One chunk of up to VL keys for one head: scores (from the key rows kp, or from
 * their transpose kt when not NULL), then the online-softmax update. */
/* The online-softmax update of one head by the raw scores s of a chunk's first cn
 * keys: rescales acc when the max grows; pb[VL] gets the weights (zeros past cn). */
KS_INLINE void ks_attn_softmax(struct ks_attn_state *st, vf s, int cn, int32_t hd, float scale,
			       float *pb)
{
	s = vf_mul(s, vf_set1(scale));
	s = vf_keep_first(s, cn, vf_set1(-INFINITY));
	float cmax = vf_hmax(s);
	if (cmax > st->m) {
		vf alpha = vf_exp(vf_set1(st->m - cmax));
		for (int32_t d = 0; d < hd; d += VL) {
			int n = hd - d < VL ? hd - d : VL;
			if (n == VL)
				vf_store(st->acc + d, vf_mul(vf_load(st->acc + d), alpha));
			else
				vf_store_part(st->acc + d,
					      vf_mul(vf_load_part(st->acc + d, n), alpha), n);
		}
		st->l *= vf_first(alpha);
		st->m = cmax;
	}
	vf pv = vf_exp(vf_sub(s, vf_set1(st->m)));
	st->l += vf_hsum(pv);
	vf_store(pb, pv);
}

/* One chunk of up to VL keys (rows kp, vp) for one head. */
KS_INLINE void ks_attn_chunk(struct ks_attn_state *st, const float *qh, const char *const *kp,
			     const char *const *vp, int cn, int32_t hd, bool f16, float scale)
{
	vf a[VL];
	float pb[VL];
	ks_attn_dots(qh, kp, cn, hd, f16, a);
	ks_attn_softmax(st, vf_hsum_vl(a), cn, hd, scale, pb);
	ks_attn_pv(st->acc, pb, vp, cn, hd, f16);
}

/* acc[0..n) of heads u < np += sum over keys j < cn[u], in order, of pb[u][j] v[j]
 * (v: dense rows head_dim apart), D vectors of each at a time: each load of a value
 * serves every head. ALL: every head has cn[u] = cn[0] (the usual case). */
KS_INLINE void ks_attn_pv_n(struct ks_attn_state *const *st, float (*pb)[VL], const int *cn,
			    int np, const float *v, int32_t hd, int32_t d, int n, const int D,
			    const bool ALL)
{
	vf a[KS_ATTN_NP][2];
	int cmax = 0;
	KS_UNROLL
	for (int u = 0; u < KS_ATTN_NP; u++) {
		a[u][0] = a[u][1] = vf_zero();
		if (u >= np)
			continue;
		cmax = cn[u] > cmax ? cn[u] : cmax;
		KS_UNROLL
		for (int e = 0; e < D; e++)
			a[u][e] = n == VL ? vf_load(st[u]->acc + d + e * VL)
					  : vf_load_part(st[u]->acc + d + e * VL, n);
	}
	for (int j = 0; j < cmax; j++) {
		const float *vr = v + (size_t)j * hd + d;
		vf vj[2];
		KS_UNROLL
		for (int e = 0; e < D; e++)
			vj[e] = n == VL ? vf_load(vr + e * VL) : vf_load_part(vr + e * VL, n);
		KS_UNROLL
		for (int u = 0; u < KS_ATTN_NP; u++) {
			if (!(ALL ? u < np : u < np && j < cn[u]))
				continue;
			vf w = vf_set1(pb[u][j]);
			KS_UNROLL
			for (int e = 0; e < D; e++)
				a[u][e] = vf_fma(w, vj[e], a[u][e]);
		}
	}
	KS_UNROLL
	for (int u = 0; u < KS_ATTN_NP; u++)
		KS_UNROLL
	for (int e = 0; e < D; e++) {
		if (u >= np)
			continue;
		if (n == VL)
			vf_store(st[u]->acc + d + e * VL, a[u][e]);
		else
			vf_store_part(st[u]->acc + d + e * VL, a[u][e], n);
	}
}

/* One chunk for np <= KS_ATTN_NP heads (queries q[u], first cn[u] keys; the keys
 * transposed in kt, the values dense f32 rows v[j] head_dim apart), each load of a
 * key or value serving all of them; every head gets the bits ks_attn_chunk would
 * give it alone (values: its own keys, in order, on its own accumulators). */
KS_INLINE void ks_attn_chunk_n(struct ks_attn_state *const *st, const float *const *q,
			       const int *cn, int np, const float *kt, const float *v, int32_t hd,
			       float scale)
{
	const float *qs[KS_ATTN_NP];
	vf sc[KS_ATTN_NP];
	float pb[KS_ATTN_NP][VL];
	bool all = np == KS_ATTN_NP;
	for (int u = 0; u < KS_ATTN_NP; u++) {
		qs[u] = q[u < np ? u : 0]; /* a stand-in for missing heads, result dropped */
		all = all && cn[u < np ? u : 0] == cn[0];
	}
	if (hd % VL == 0)
		ks_attn_dots_t(qs, kt, hd, true, sc);
	else
		ks_attn_dots_t(qs, kt, hd, false, sc);
	for (int u = 0; u < np; u++)
		ks_attn_softmax(st[u], sc[u], cn[u], hd, scale, pb[u]);
	int32_t d = 0;
	for (; d + 2 * VL <= hd; d += 2 * VL) {
		if (all)
			ks_attn_pv_n(st, pb, cn, np, v, hd, d, VL, 2, true);
		else
			ks_attn_pv_n(st, pb, cn, np, v, hd, d, VL, 2, false);
	}
	for (; d < hd; d += VL)
		ks_attn_pv_n(st, pb, cn, np, v, hd, d, hd - d < VL ? hd - d : VL, 1, false);
}

/* Most head_dim for which a chunk's K and V rows are copied to a dense buffer. */
#define KS_ATTN_COPY_HD 256

/* Copies n rows of one KV head (f32 or f16) to dst[n][hd] as f32. */
KS_INLINE void ks_attn_gather(const char *const *rows, int n, int32_t hd, bool f16, float *dst)
{
	for (int j = 0; j < n; j++) {
		float *o = dst + (size_t)j * hd;
		if (f16)
			KS_FN(to_f32)(KERN_F16, rows[j], hd, o);
		else
			memcpy(o, rows[j], (size_t)hd * sizeof(float));
	}
}

/* Keys go in chunks of VL consecutive tokens from the start of the partition (so
 * chunk boundaries depend only on the segment). A chunk's rows of one KV head serve
 * every query and head of the call that uses that KV head; when several do, the
 * keys are transposed (ks_attn_dots_t) and the values copied to dense f32 buffers
 * (pool rows sit a KV-row apart, often 4 KiB, and would fight over the same L1
 * sets). Either way every (query, head) gets the bits it would get alone. */
static void KS_FN(attn_part)(const struct kern_attn_params *p, const float *q, const int32_t *qi,
			     int32_t nq, int32_t h0, int32_t h1, int32_t s, int32_t t0,
			     const int32_t *t1, const struct kern_attn_state *out)
{
	const struct kern_kv_layer *kv = p->kv;
	const int32_t hd = kv->head_dim, nh = h1 - h0, g = p->n_head / kv->n_kv_head;
	const bool f16 = kv->dtype == KERN_F16;
	const struct kern_kv_seg *seg =
		&p->segs[(size_t)p->queries[qi[0]].seq * (size_t)p->n_seg + (size_t)s];
	struct ks_attn_state st[KERN_CPU_ATTN_MAXH];
	float ktbuf[VL * KS_ATTN_COPY_HD], vbuf[VL * KS_ATTN_COPY_HD];
	int32_t tend = t0;
	CM_ASSERT(nq * nh <= KERN_CPU_ATTN_MAXH);
	for (int32_t u = 0; u < nq; u++) {
		tend = t1[u] > tend ? t1[u] : tend;
		memset(out[u].acc, 0, (size_t)nh * (size_t)hd * sizeof(float));
		for (int32_t h = 0; h < nh; h++)
			st[u * nh + h] = (struct ks_attn_state){
				.m = -INFINITY, .l = 0.0f, .acc = out[u].acc + (size_t)h * hd};
	}
	for (int32_t c0 = t0; c0 < tend; c0 += VL) {
		int cmax = tend - c0 < VL ? tend - c0 : VL;
		for (int32_t ha = 0, hb; ha < nh; ha = hb) {
			hb = kern__attn_group_end(h0, ha, nh, g);
			const char *kh[VL], *vh[VL];
			bool dense = nq * (hb - ha) >= 4 && hd <= KS_ATTN_COPY_HD;
			kern__attn_rows(kv, seg, c0, cmax, (h0 + ha) / g, kh, vh);
			if (!dense && c0 + VL < tend)
				kern__attn_prefetch(kv, seg, c0 + VL,
						    tend - c0 - VL < VL ? tend - c0 - VL : VL,
						    (h0 + ha) / g);
			if (dense) {
				ks_attn_gather_t(kh, cmax, hd, f16, ktbuf);
				ks_attn_gather(vh, cmax, hd, f16, vbuf);
			}
			/* the heads of this KV head that see the chunk, KS_ATTN_NP at a
			 * time when dense; else one at a time, with a constant KV type */
			struct ks_attn_state *sg[KS_ATTN_NP];
			const float *qg[KS_ATTN_NP];
			int cg[KS_ATTN_NP], ng = 0;
			for (int32_t h = ha; h < hb; h++)
				for (int32_t u = 0; u < nq; u++) {
					if (t1[u] <= c0)
						continue;
					int cn = t1[u] - c0 < VL ? t1[u] - c0 : VL;
					size_t qo = (size_t)qi[u] * (size_t)p->n_head +
						    (size_t)(h0 + h);
					const float *qh = q + qo * (size_t)hd;
					struct ks_attn_state *sh = &st[u * nh + h];
					if (!dense) {
						if (f16)
							ks_attn_chunk(sh, qh, kh, vh, cn, hd, true,
								      p->scale);
						else
							ks_attn_chunk(sh, qh, kh, vh, cn, hd, false,
								      p->scale);
						continue;
					}
					sg[ng] = sh;
					qg[ng] = qh;
					cg[ng++] = cn;
					if (ng == KS_ATTN_NP) {
						ks_attn_chunk_n(sg, qg, cg, ng, ktbuf, vbuf, hd,
								p->scale);
						ng = 0;
					}
				}
			if (ng)
				ks_attn_chunk_n(sg, qg, cg, ng, ktbuf, vbuf, hd, p->scale);
		}
	}
	for (int32_t u = 0; u < nq; u++)
		for (int32_t h = 0; h < nh; h++) {
			out[u].m[h] = st[u * nh + h].m;
			out[u].l[h] = st[u * nh + h].l;
		}
}

/* ---- matmul with f32 activations ----------------------------------------- */

static size_t KS_FN(mm_pack_stride)(const struct kern_mm *m)
{
	return (size_t)((m->cols + MM_STEP - 1) / MM_STEP * MM_STEP) * sizeof(float);
}

static void KS_FN(mm_pack)(const struct kern_mm *m, int32_t t0, int32_t t1)
{
	const int32_t kfull = m->cols / MM_STEP * MM_STEP, rem = m->cols - kfull;
	for (int32_t t = t0; t < t1; t++) {
		const float *x = m->x + (size_t)t * (size_t)m->cols;
		float *xp = (float *)((char *)m->xp + (size_t)t * m->xp_stride);
		if (m->dtype != KERN_BF16) {
			memcpy(xp, x, (size_t)m->cols * sizeof(float));
			if (rem)
				memset(xp + m->cols, 0, (size_t)(MM_STEP - rem) * sizeof(float));
			continue;
		}
		for (int32_t k = 0; k < kfull; k += MM_STEP)
			mm_deinterleave(x + k, xp + k);
		if (rem) {
			float tmp[MM_STEP] = {0};
			memcpy(tmp, x + kfull, (size_t)rem * sizeof(float));
			mm_deinterleave(tmp, xp + kfull);
		}
	}
}

/* Weights of one row for the step at k: two vectors that pair with the packed
 * activations at xp + k and xp + k + VL. n < MM_STEP: only n elements exist (a part
 * load of 0 lanes reads nothing and gives zeros). */
KS_INLINE void mm_load_w(enum kern_dtype dt, const char *row, int32_t k, int n, vf *w0, vf *w1)
{
	const int n0 = n < VL ? n : VL, n1 = n - n0;
	if (dt == KERN_BF16) {
		if (n == MM_STEP)
			mm_w_bf16((const uint16_t *)row + k, w0, w1);
		else
			mm_w_bf16_part((const uint16_t *)row + k, n, w0, w1);
	} else if (dt == KERN_F16) {
		const uint16_t *p = (const uint16_t *)row + k;
		*w0 = n == MM_STEP ? vf_load_f16(p) : vf_load_f16_part(p, n0);
		*w1 = n == MM_STEP ? vf_load_f16(p + VL) : vf_load_f16_part(p + VL, n1);
	} else {
		const float *p = (const float *)row + k;
		*w0 = n == MM_STEP ? vf_load(p) : vf_load_part(p, n0);
		*w1 = n == MM_STEP ? vf_load(p + VL) : vf_load_part(p + VL, n1);
	}
}

/* Reduces R x T accumulators and stores them at y[t + j][r + i]. */
KS_INLINE void mm_store(const struct kern_mm *m, int32_t r, int32_t t, const int R, const int T,
			vf (*acc)[KS_MM_T])
{
	ks_tile_store(m->y, m->rows, r, t, R, T, &acc[0][0], KS_MM_T);
}

/* One k step of a tile: n elements (MM_STEP but in the last step). Every
 * accumulator gets w0 * x0, then w1 * x1, whatever the loop order: weights in
 * registers for token-heavy tiles, activations in registers for row-heavy
 * (memory-bound) ones, which also prefetch the next tile's rows into L2 when they
 * hold several rows. */
KS_INLINE void mm_step(vf (*acc)[KS_MM_T], const char *w, size_t wstride, const float *x, size_t xs,
		       int32_t k, int n, const int R, const int T, const enum kern_dtype DT)
{
	const size_t esz = DT == KERN_F32 ? 4 : 2;
	if (T <= 2) {
		vf x0[2], x1[2];
		KS_UNROLL
		for (int j = 0; j < T; j++) {
			x0[j] = vf_load(x + j * xs + k);
			x1[j] = vf_load(x + j * xs + k + VL);
		}
		KS_UNROLL
		for (int i = 0; i < R; i++) {
			const char *row = w + i * wstride;
			if (R > 1 && n == MM_STEP) {
				KS_UNROLL
				for (size_t b = 0; b < MM_STEP * esz; b += 64)
					_mm_prefetch(row + k * esz + b + R * wstride, _MM_HINT_T2);
			}
			vf w0, w1;
			mm_load_w(DT, row, k, n, &w0, &w1);
			KS_UNROLL
			for (int j = 0; j < T; j++) {
				acc[i][j] = vf_fma(w0, x0[j], acc[i][j]);
				acc[i][j] = vf_fma(w1, x1[j], acc[i][j]);
			}
		}
		return;
	}
	vf w0[MM_RMAX], w1[MM_RMAX];
	KS_UNROLL
	for (int i = 0; i < R; i++)
		mm_load_w(DT, w + i * wstride, k, n, &w0[i], &w1[i]);
	KS_UNROLL
	for (int j = 0; j < T; j++) {
		vf x0 = vf_load(x + j * xs + k), x1 = vf_load(x + j * xs + k + VL);
		KS_UNROLL
		for (int i = 0; i < R; i++) {
			acc[i][j] = vf_fma(w0[i], x0, acc[i][j]);
			acc[i][j] = vf_fma(w1[i], x1, acc[i][j]);
		}
	}
}

/* y[t..t+T)[r..r+R) for one weight type; R, T and DT are constants after inlining. */
KS_INLINE void mm_tile(const struct kern_mm *m, int32_t r, int32_t t, const int R, const int T,
		       const enum kern_dtype DT)
{
	const size_t wstride = (size_t)m->cols * (DT == KERN_F32 ? 4 : 2);
	const char *w = (const char *)m->w + (size_t)r * wstride;
	const size_t xs = m->xp_stride / sizeof(float);
	const float *x = (const float *)((const char *)m->xp + (size_t)t * m->xp_stride);
	const int32_t kfull = m->cols / MM_STEP * MM_STEP;
	vf acc[MM_RMAX][KS_MM_T];
	KS_UNROLL
	for (int i = 0; i < R; i++)
		KS_UNROLL
	for (int j = 0; j < T; j++)
		acc[i][j] = vf_zero();
	for (int32_t k = 0; k < kfull; k += MM_STEP)
		mm_step(acc, w, wstride, x, xs, k, MM_STEP, R, T, DT);
	if (kfull < m->cols)
		mm_step(acc, w, wstride, x, xs, kfull, m->cols - kfull, R, T, DT);
	mm_store(m, r, t, R, T, acc);
}

/* Per weight type and token count T: a tile of MM_ROWS(T) rows and a one-row tile
 * for the rows left over. */
#define MM_ROWS(T) ((T) == 1 ? KS_MM_R1 : (T) == 2 ? KS_MM_R2 : KS_MM_RN)

#define KS_MM_TILE(name, DT, T)                                                                    \
	static __attribute__((noinline)) void name##_m##T(const struct kern_mm *m, int32_t r,      \
							  int32_t t)                               \
	{                                                                                          \
		mm_tile(m, r, t, MM_ROWS(T), T, DT);                                               \
	}                                                                                          \
	static __attribute__((noinline)) void name##_s##T(const struct kern_mm *m, int32_t r,      \
							  int32_t t)                               \
	{                                                                                          \
		mm_tile(m, r, t, 1, T, DT);                                                        \
	}

typedef void (*mm_tile_fn)(const struct kern_mm *m, int32_t r, int32_t t);

#if KS_MM_T == 4
#define KS_MM_TILES(name, DT)                                                                      \
	KS_MM_TILE(name, DT, 1)                                                                    \
	KS_MM_TILE(name, DT, 2)                                                                    \
	KS_MM_TILE(name, DT, 3)                                                                    \
	KS_MM_TILE(name, DT, 4)                                                                    \
	static const mm_tile_fn name##_tiles[2][KS_MM_T] = {                                       \
		{name##_s1, name##_s2, name##_s3, name##_s4},                                      \
		{name##_m1, name##_m2, name##_m3, name##_m4},                                      \
	};
#elif KS_MM_T == 2
#define KS_MM_TILES(name, DT)                                                                      \
	KS_MM_TILE(name, DT, 1)                                                                    \
	KS_MM_TILE(name, DT, 2)                                                                    \
	static const mm_tile_fn name##_tiles[2][KS_MM_T] = {                                       \
		{name##_s1, name##_s2},                                                            \
		{name##_m1, name##_m2},                                                            \
	};
#else
#error "KS_MM_T must be 2 or 4"
#endif

KS_MM_TILES(mm_f32, KERN_F32)
KS_MM_TILES(mm_f16, KERN_F16)
KS_MM_TILES(mm_bf16, KERN_BF16)

/* One token (GEMV): rows one after another (one stream in address order), each with
 * the accumulator a one-row tile would have, and their reductions done VL rows at a
 * time: vf_hsum_pairs adds each output in the vf_hsum order whatever the batch, so
 * the bits are a tile's, at a fraction of the cost per row. */
KS_INLINE void mm_gemv(const struct kern_mm *m, int32_t r0, int32_t r1, const enum kern_dtype DT)
{
	const size_t wstride = (size_t)m->cols * (DT == KERN_F32 ? 4 : 2);
	const float *x = (const float *)m->xp;
	const int32_t kfull = m->cols / MM_STEP * MM_STEP;
	for (int32_t r = r0; r < r1; r += VL) {
		const int nr = r1 - r < VL ? r1 - r : VL;
		vf acc[VL], s[VL / 2];
		float out[VL];
		for (int i = 0; i < VL; i++) {
			vf a[MM_RMAX][KS_MM_T];
			a[0][0] = vf_zero();
			const char *w = (const char *)m->w + (size_t)(r + i) * wstride;
			for (int32_t k = 0; k < kfull && i < nr; k += MM_STEP)
				mm_step(a, w, wstride, x, 0, k, MM_STEP, 1, 1, DT);
			if (kfull < m->cols && i < nr)
				mm_step(a, w, wstride, x, 0, kfull, m->cols - kfull, 1, 1, DT);
			acc[i] = a[0][0];
		}
		KS_UNROLL
		for (int c = 0; c < VL / 2; c++)
			s[c] = ks_pair(1, acc[2 * c], acc[2 * c + 1]);
		vf_hsum_pairs(s, VL / 2, out);
		memcpy(m->y + r, out, (size_t)nr * sizeof(float));
	}
}

static __attribute__((noinline)) void mm_gemv_f32(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	mm_gemv(m, r0, r1, KERN_F32);
}

static __attribute__((noinline)) void mm_gemv_f16(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	mm_gemv(m, r0, r1, KERN_F16);
}

static __attribute__((noinline)) void mm_gemv_bf16(const struct kern_mm *m, int32_t r0,
						    int32_t r1)
{
	mm_gemv(m, r0, r1, KERN_BF16);
}

/* Row blocks of MM_RB stay in L2 while every token tile passes over them. */
static void KS_FN(mm_rows)(const struct kern_mm *m, int32_t r0, int32_t r1)
{
	if (m->n == 1) {
		if (m->dtype == KERN_BF16)
			mm_gemv_bf16(m, r0, r1);
		else if (m->dtype == KERN_F16)
			mm_gemv_f16(m, r0, r1);
		else
			mm_gemv_f32(m, r0, r1);
		return;
	}
	const mm_tile_fn(*tiles)[KS_MM_T] = m->dtype == KERN_BF16  ? mm_bf16_tiles
					    : m->dtype == KERN_F16 ? mm_f16_tiles
								   : mm_f32_tiles;
	for (int32_t rb = r0; rb < r1; rb += MM_RB) {
		const int32_t re = rb + MM_RB < r1 ? rb + MM_RB : r1;
		for (int32_t t = 0; t < m->n; t += KS_MM_T) {
			const int tn = m->n - t < KS_MM_T ? m->n - t : KS_MM_T;
			const int rn = MM_ROWS(tn);
			int32_t r = rb;
			for (; r + rn <= re; r += rn)
				tiles[1][tn - 1](m, r, t);
			for (; r < re; r++)
				tiles[0][tn - 1](m, r, t);
		}
	}
}
