/* bench_attention: one layer of Qwen3-0.6B's prefill attention (16 query heads,
 * 8 KV heads, head_dim 128, causal over --tokens) with f32 and with bf16 dot
 * products (a backend with bf16 activations), as GFLOP/s and a fraction of the
 * matching peak measured in the same run (docs/performance.md, "Prefill
 * attention"). FLOPs count 4 x head_dim per (query, head, visible key).
 *
 *     bench_attention [--threads N] [--tokens N] [--kv f32|f16] [--seconds S]
 */
#include "kernels/kern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_HEAD = 16, N_KV = 8, HD = 128, BLOCK = 16 };

static int usage(void)
{
	fprintf(stderr, "usage: bench_attention [--threads N] [--tokens N] [--kv f32|f16] "
			"[--seconds S]\n");
	return 2;
}

static void *xalloc(size_t bytes)
{
	void *p = calloc(1, bytes);
	if (!p) {
		fprintf(stderr, "bench_attention: out of memory\n");
		exit(1);
	}
	return p;
}

/* Times kern_attention of every query over the cache; returns GFLOP/s. */
static double run(struct kern_backend *be, const struct kern_attn_params *p, const float *q,
		  int32_t n, double flops, double seconds)
{
	float *out = xalloc((size_t)n * N_HEAD * HD * sizeof(float));
	kern_attention(be, p, q, n, out); /* warm-up */
	int iters = 0;
	int64_t t0 = cm_time_us(), t1 = t0;
	while ((double)(t1 - t0) < seconds * 1e6) {
		kern_attention(be, p, q, n, out);
		iters++;
		t1 = cm_time_us();
	}
	free(out);
	return flops * iters / ((double)(t1 - t0) * 1e-6) * 1e-9;
}

int main(int argc, char **argv)
{
	int threads = 2;
	int32_t n = 512;
	double seconds = 1.0;
	enum kern_dtype dt = KERN_F32;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
			n = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--kv") && i + 1 < argc)
			dt = !strcmp(argv[++i], "f16") ? KERN_F16 : KERN_F32;
		else
			return usage();
	}
	if (n <= 0 || threads <= 0)
		return usage();
	struct kern_backend *be[2];
	for (int b = 0; b < 2; b++) {
		struct kern_cpu_params kp = kern_cpu_default_params();
		kp.n_threads = threads;
		kp.bf16_activations = b == 1;
		struct cm_err err = {0};
		be[b] = kern_cpu_new(&kp, &err);
		if (!be[b]) {
			fprintf(stderr, "bench_attention: %s\n", err.msg);
			return 1;
		}
	}
	const int32_t nblk = (n + BLOCK - 1) / BLOCK;
	struct kern_kv_layer kv = {
		.dtype = dt, .block_size = BLOCK, .n_kv_head = N_KV, .head_dim = HD};
	const size_t kv_bytes = (size_t)nblk * BLOCK * N_KV * HD * kern_dtype_size(dt);
	kv.k = kern_alloc(be[0], kv_bytes);
	kv.v = kern_alloc(be[0], kv_bytes);
	const size_t qn = (size_t)n * N_HEAD * HD, kn = (size_t)n * N_KV * HD;
	float *q = xalloc(qn * sizeof(float)), *k = xalloc(kn * sizeof(float)),
	      *v = xalloc(kn * sizeof(float));
	int32_t *slots = xalloc((size_t)n * sizeof(int32_t)), *blocks = xalloc((size_t)nblk * 4);
	struct kern_attn_query *qs = xalloc((size_t)n * sizeof(*qs));
	if (!kv.k || !kv.v) {
		fprintf(stderr, "bench_attention: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < qn; i++)
		q[i] = (float)((i * 40503u) % 997) / 997.0f - 0.5f;
	for (size_t i = 0; i < kn; i++) {
		k[i] = (float)((i * 2654435761u >> 8) % 1009) / 1009.0f - 0.5f;
		v[i] = (float)((i * 97u) % 101) / 101.0f - 0.5f;
	}
	for (int32_t b = 0; b < nblk; b++)
		blocks[b] = b;
	double flops = 0;
	for (int32_t t = 0; t < n; t++) {
		slots[t] = t;
		qs[t] = (struct kern_attn_query){.seq = 0, .n_vis = {t + 1}};
		flops += 4.0 * HD * N_HEAD * (t + 1);
	}
	kern_kv_store(be[0], &kv, k, v, n, slots);
	const struct kern_kv_seg seg = {.blocks = blocks, .n_tok = n};
	const struct kern_attn_params p = {.kv = &kv,
					   .n_head = N_HEAD,
					   .scale = 0.08838834764f,
					   .n_seg = 1,
					   .segs = &seg,
					   .queries = qs};
	printf("%s, %d causal queries, KV %s\n", kern_backend_name(be[1]), n,
	       dt == KERN_F16 ? "f16" : "f32");
	printf("%-6s %10s %10s %8s\n", "dots", "GFLOP/s", "peak", "of peak");
	for (int b = 0; b < 2; b++) {
		const enum kern_peak pk = b ? KERN_PEAK_BF16 : KERN_PEAK_F32;
		double peak = kern_bench_peak(be[b], pk, 0.3);
		if (b && peak <= 0)
			break; /* no bf16 dot product on this CPU */
		double g = run(be[b], &p, q, n, flops, seconds);
		printf("%-6s %10.1f %10.0f %8.3f\n", b ? "bf16" : "f32", g, peak, g / peak);
	}
	kern_free(be[0], kv.k);
	kern_free(be[0], kv.v);
	free(q);
	free(k);
	free(v);
	free(slots);
	free(blocks);
	free(qs);
	for (int b = 0; b < 2; b++)
		kern_backend_free(be[b]);
	return 0;
}
