/* bench_matmul: the matmuls of one Qwen3-0.6B layer (bf16 weights) as a
 * fraction of the machine's peak, measured in the same run (docs/performance.md,
 * "Where the time goes"). For each shape and token count it reports GFLOP/s,
 * the fraction of the bf16 (or f32) dot-product peak, and the weights' read
 * rate. Each measurement cycles over copies of its matrices (256 MiB in all),
 * so the weights come from memory as in a forward pass, never from a cache;
 * --hot uses one copy, which stays in the caches it fits (the compute bound).
 * --q8 quantises the weights to q8_0 (peak: int8 dot products). The read
 * bandwidth is measured first, and each weight read rate is also printed as a
 * fraction of it.
 *
 *     bench_matmul [--threads N] [--tokens N[,N...]] [--shape NAME] [--f32act] [--q8] [--hot]
 *                  [--seconds S]
 */
#include "kernels/kern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COPIES_MAX 64

struct shape {
	const char *name;
	int n_w;
	int32_t rows[3], cols;
};

/* One layer of Qwen3-0.6B as the engine calls it (fused q/k/v and gate/up). */
static const struct shape shapes[] = {
	{"qkv", 3, {2048, 1024, 1024}, 1024},
	{"o", 1, {1024}, 2048},
	{"gate+up", 2, {3072, 3072}, 1024},
	{"down", 1, {1024}, 3072},
};

static void *alloc(struct kern_backend *be, size_t bytes)
{
	void *p = kern_alloc(be, bytes);
	if (!p) {
		fprintf(stderr, "bench_matmul: out of memory\n");
		exit(1);
	}
	return p;
}

static int usage(void)
{
	fprintf(stderr, "usage: bench_matmul [--threads N] [--tokens N[,N...]] [--shape NAME] "
			"[--f32act] [--q8] [--hot] [--seconds S]\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = 2;
	kp.bf16_activations = true;
	const char *tokens = "1,8,64,512";
	double seconds = 0.5;
	bool hot = false, q8 = false;
	const char *only = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			kp.n_threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
			tokens = argv[++i];
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--hot"))
			hot = true;
		else if (!strcmp(argv[i], "--shape") && i + 1 < argc)
			only = argv[++i];
		else if (!strcmp(argv[i], "--q8"))
			q8 = true;
		else if (!strcmp(argv[i], "--f32act"))
			kp.bf16_activations = false;
		else
			return usage();
	}
	struct cm_err err = {0};
	struct kern_backend *be = kern_cpu_new(&kp, &err);
	if (!be) {
		fprintf(stderr, "bench_matmul: %s\n", err.msg);
		return 1;
	}
	bool bf16 = kp.bf16_activations && kern_cpu_detect_isa() >= KERN_ISA_AVX512BF16;
	enum kern_peak pk = q8 ? KERN_PEAK_INT8 : bf16 ? KERN_PEAK_BF16 : KERN_PEAK_F32;
	double peak = kern_bench_peak(be, pk, 0.3);
	const size_t rbytes = 512u << 20;
	char *rbuf = alloc(be, rbytes);
	memset(rbuf, 1, rbytes);
	double read = 0;
	for (int i = 0; i < 3; i++)
		read = CM_MAX(read, kern_bench_read(be, rbuf, rbytes));
	kern_free(be, rbuf);
	printf("%s, %s: peak %.0f GFLOP/s, read %.1f GB/s\n", kern_backend_name(be),
	       q8 ? "q8_0 weights" : bf16 ? "bf16 activations" : "f32 activations", peak, read);
	printf("%-8s %6s %10s %8s %8s %8s\n", "matmul", "tokens", "GFLOP/s", "of peak", "w GB/s",
	       "of read");

	for (const char *t = tokens; t && *t; t = strchr(t, ',') ? strchr(t, ',') + 1 : NULL) {
		int32_t n = atoi(t);
		if (n <= 0)
			return usage();
		for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
			const struct shape *sh = &shapes[s];
			if (only && strcmp(only, sh->name))
				continue;
			const int32_t *part = sh->rows;
			int32_t rows = part[0] + part[1] + part[2];
			const struct kern_mat whole = {
				.dtype = q8 ? KERN_Q8_0 : KERN_BF16, .rows = rows, .cols = sh->cols};
			size_t bytes = kern_mat_bytes(&whole);
			int copies = hot ? 1 : (int)CM_MIN((256u << 20) / bytes + 1, (size_t)COPIES_MAX);
			struct kern_mat m[COPIES_MAX][3];
			const struct kern_mat *mp[COPIES_MAX][3];
			float *y[3];
			float *x = alloc(be, (size_t)n * (size_t)sh->cols * sizeof(float));
			for (int c = 0; c < copies; c++)
				for (int i = 0; i < sh->n_w; i++) {
					m[c][i] = (struct kern_mat){
						.dtype = KERN_BF16, .rows = part[i], .cols = sh->cols};
					uint16_t *w = alloc(be, kern_mat_bytes(&m[c][i]));
					for (size_t k = 0; k < (size_t)part[i] * (size_t)sh->cols; k++)
						w[k] = (uint16_t)(0x3c00 +
								  (k * 2654435761u >> 24) % 512);
					m[c][i].data = w;
					if (q8) {
						struct kern_mat d = m[c][i];
						d.dtype = KERN_Q8_0;
						d.data = alloc(be, kern_mat_bytes(&d));
						if (kern_convert(be, &m[c][i], &d, &err)) {
							fprintf(stderr, "bench_matmul: %s\n", err.msg);
							return 1;
						}
						kern_free(be, w);
						m[c][i] = d;
					}
					mp[c][i] = &m[c][i];
				}
			for (int i = 0; i < sh->n_w; i++)
				y[i] = alloc(be, (size_t)n * (size_t)part[i] * sizeof(float));
			for (size_t k = 0; k < (size_t)n * (size_t)sh->cols; k++)
				x[k] = (float)((k * 40503u) % 997) / 997.0f - 0.5f;
			for (int c = 0; c < copies; c++) /* warm-up */
				kern_matmul_n(be, sh->n_w, mp[c], x, n, y);
			int iters = 0;
			int64_t t0 = cm_time_us(), t1 = t0;
			while ((double)(t1 - t0) < seconds * 1e6) {
				kern_matmul_n(be, sh->n_w, mp[iters % copies], x, n, y);
				iters++;
				t1 = cm_time_us();
			}
			double per = (double)(t1 - t0) * 1e-6 / iters;
			double flops = 2.0 * rows * sh->cols * n;
			double gbps = (double)bytes / per * 1e-9;
			printf("%-8s %6d %10.1f %8.3f %8.1f %8.3f\n", sh->name, n, flops / per * 1e-9,
			       flops / per * 1e-9 / peak, gbps, gbps / read);
			for (int c = 0; c < copies; c++)
				for (int i = 0; i < sh->n_w; i++)
					kern_free(be, (void *)m[c][i].data);
			for (int i = 0; i < sh->n_w; i++)
				kern_free(be, y[i]);
			kern_free(be, x);
		}
	}
	kern_backend_free(be);
	return 0;
}
