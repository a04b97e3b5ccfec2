/* bench_matmul: the matmuls of one Qwen3-0.6B layer (bf16 weights) as a
 * fraction of the machine's peak, measured in the same run (docs/performance.md,
 * "Where the time goes"). For each shape and token count it reports GFLOP/s,
 * the fraction of the bf16 (or f32) dot-product peak, and the weights' read
 * rate. Each measurement cycles over copies of its matrices (256 MiB in all),
 * so the weights come from memory as in a forward pass, never from a cache;
 * --hot uses one copy, which stays in the caches it fits (the compute bound).
 * --q8 quantises the weights to q8_0 (peak: int8 dot products). The weights are
 * in the order the engine keeps them (kern_weight_dtype: 16-row panels with bf16
 * activations), or as stored with --plain; --vs-plain times both, in alternating
 * slices, and prints the speed-up of the engine's order. The read bandwidth is
 * measured first, and each weight read rate is also printed as a fraction of it.
 *
 *     bench_matmul [--threads N] [--tokens N[,N...]] [--shape NAME] [--f32act] [--q8]
 *                  [--plain | --vs-plain] [--hot] [--seconds S]
 */
#include "kernels/kern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COPIES_MAX 64
#define SLICES	   15 /* timed slices per layout */

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

/* The copies of one shape's matrices in one layout, cycled through so that each
 * call streams its weights from memory (unless --hot). */
struct weights {
	int copies, next;
	struct kern_mat m[COPIES_MAX][3];
	const struct kern_mat *mp[COPIES_MAX][3];
};

static void weights_make(struct kern_backend *be, const struct shape *sh, enum kern_dtype dt,
			 int copies, struct weights *w)
{
	struct cm_err err = {0};
	w->copies = copies;
	w->next = 0;
	for (int c = 0; c < copies; c++)
		for (int i = 0; i < sh->n_w; i++) {
			struct kern_mat b = {.dtype = KERN_BF16, .rows = sh->rows[i], .cols = sh->cols};
			uint16_t *v = alloc(be, kern_mat_bytes(&b));
			for (size_t k = 0; k < (size_t)b.rows * (size_t)b.cols; k++)
				v[k] = (uint16_t)(0x3c00 + (k * 2654435761u >> 24) % 512);
			b.data = v;
			w->m[c][i] = b;
			if (dt != KERN_BF16) {
				struct kern_mat d = b;
				d.dtype = dt;
				d.data = alloc(be, kern_mat_bytes(&d));
				if (kern_convert(be, &b, &d, &err)) {
					fprintf(stderr, "bench_matmul: %s\n", err.msg);
					exit(1);
				}
				kern_free(be, v);
				w->m[c][i] = d;
			}
			w->mp[c][i] = &w->m[c][i];
		}
}

static void weights_free(struct kern_backend *be, const struct shape *sh, struct weights *w)
{
	for (int c = 0; c < w->copies; c++)
		for (int i = 0; i < sh->n_w; i++)
			kern_free(be, (void *)w->m[c][i].data);
}

/* Seconds per call over about secs of calls (0: one call per copy, untimed). */
static double timed(struct kern_backend *be, const struct shape *sh, struct weights *w,
		    const float *x, int32_t n, float *const *y, double secs)
{
	int calls = 0;
	int64_t t0 = cm_time_us(), t1 = t0;
	do {
		kern_matmul_n(be, sh->n_w, w->mp[w->next], x, n, y);
		w->next = (w->next + 1) % w->copies;
		calls++;
		t1 = cm_time_us();
	} while (secs > 0 ? (double)(t1 - t0) < secs * 1e6 : calls < w->copies);
	return (double)(t1 - t0) * 1e-6 / calls;
}

static int usage(void)
{
	fprintf(stderr, "usage: bench_matmul [--threads N] [--tokens N[,N...]] [--shape NAME] "
			"[--f32act] [--q8] [--plain | --vs-plain] [--hot] [--seconds S]\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct kern_cpu_params kp = kern_cpu_default_params();
	kp.n_threads = 2;
	kp.bf16_activations = true;
	const char *tokens = "1,8,64,512";
	double seconds = 0.5;
	bool hot = false, q8 = false, plain = false, vs_plain = false;
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
		else if (!strcmp(argv[i], "--plain"))
			plain = true;
		else if (!strcmp(argv[i], "--vs-plain"))
			vs_plain = true;
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
	/* the weights as the engine keeps them (wk_model_convert), or as stored */
	enum kern_dtype wdt = q8 ? KERN_Q8_0 : plain ? KERN_BF16 : kern_weight_dtype(be, KERN_BF16);
	enum kern_peak pk = q8 ? KERN_PEAK_INT8 : bf16 ? KERN_PEAK_BF16 : KERN_PEAK_F32;
	double peak = kern_bench_peak(be, pk, 0.3);
	const size_t rbytes = 512u << 20;
	char *rbuf = alloc(be, rbytes);
	memset(rbuf, 1, rbytes);
	double read = 0;
	for (int i = 0; i < 3; i++)
		read = CM_MAX(read, kern_bench_read(be, rbuf, rbytes));
	kern_free(be, rbuf);
	printf("%s, %s, %s weights: peak %.0f GFLOP/s, read %.1f GB/s\n", kern_backend_name(be),
	       bf16 ? "bf16 activations" : "f32 activations",
	       wdt == KERN_Q8_0 ? "q8_0" : wdt == KERN_BF16_R16 ? "bf16_r16" : "bf16", peak, read);
	vs_plain = vs_plain && wdt != KERN_BF16;
	printf("%-8s %6s %10s %8s %8s %8s%s\n", "matmul", "tokens", "GFLOP/s", "of peak", "w GB/s",
	       "of read", vs_plain ? " speed-up" : "");

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
			const struct kern_mat whole = {.dtype = wdt, .rows = rows, .cols = sh->cols};
			int copies = hot ? 1
					 : (int)CM_MIN((256u << 20) / kern_mat_bytes(&whole) + 1,
						       (size_t)COPIES_MAX);
			/* [0]: the weights as the engine keeps them; [1]: as stored (--vs-plain) */
			const int sets = vs_plain ? 2 : 1;
			struct weights w[2];
			for (int k = 0; k < sets; k++)
				weights_make(be, sh, k ? KERN_BF16 : wdt, copies, &w[k]);
			float *y[3];
			float *x = alloc(be, (size_t)n * (size_t)sh->cols * sizeof(float));
			for (int i = 0; i < sh->n_w; i++)
				y[i] = alloc(be, (size_t)n * (size_t)part[i] * sizeof(float));
			for (size_t k = 0; k < (size_t)n * (size_t)sh->cols; k++)
				x[k] = (float)((k * 40503u) % 997) / 997.0f - 0.5f;
			/* slices of the sets in turn, so that both see the same machine; the
			 * median slice of each */
			double per[2][SLICES];
			for (int k = 0; k < sets; k++)
				timed(be, sh, &w[k], x, n, y, 0); /* warm-up: every copy once */
			for (int sl = 0; sl < SLICES; sl++)
				for (int k = 0; k < sets; k++)
					per[k][sl] = timed(be, sh, &w[k], x, n, y, seconds / SLICES);
			double flops = 2.0 * rows * sh->cols * n, rate[2];
			for (int k = 0; k < sets; k++) {
				rate[k] = 1.0 / cm_median(per[k], (size_t)SLICES);
				double gbps = (double)kern_mat_bytes(&(struct kern_mat){
						      .dtype = k ? KERN_BF16 : wdt, .rows = rows,
						      .cols = sh->cols}) *
					      rate[k] * 1e-9;
				printf("%-8s %6d %10.1f %8.3f %8.1f %8.3f", k ? "  plain" : sh->name, n,
				       flops * rate[k] * 1e-9, flops * rate[k] * 1e-9 / peak, gbps,
				       gbps / read);
				if (k)
					printf(" %8.3f", rate[0] / rate[k]);
				printf("\n");
			}
			for (int k = 0; k < sets; k++)
				weights_free(be, sh, &w[k]);
			for (int i = 0; i < sh->n_w; i++)
				kern_free(be, y[i]);
			kern_free(be, x);
		}
	}
	kern_backend_free(be);
	return 0;
}
