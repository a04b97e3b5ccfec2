/* Token sampling: repetition penalty, temperature, top-k, top-p, min-p, then a
 * draw from a per-request xoshiro256** stream (reproducible for a seed, whatever
 * else runs in the batch). Greedy when temperature is 0. */
#include "wk-impl.h"

#include <math.h>

struct wk_sample_params wk_sample_default_params(void)
{
	return (struct wk_sample_params){
		.temperature = 0.0f,
		.top_p = 1.0f,
		.top_k = 0,
		.min_p = 0.0f,
		.repetition_penalty = 1.0f,
		.seed = 0,
	};
}

int wk__sample_params_check(const struct wk_sample_params *p, struct cm_err *err)
{
	if (!(p->temperature >= 0 && p->temperature <= 100))
		return cm_err_set(err, CM_EINVAL, "temperature %g outside [0, 100]", p->temperature);
	if (!(p->top_p > 0 && p->top_p <= 1))
		return cm_err_set(err, CM_EINVAL, "top_p %g outside (0, 1]", p->top_p);
	if (p->top_k < 0)
		return cm_err_set(err, CM_EINVAL, "top_k %d is negative", p->top_k);
	if (!(p->min_p >= 0 && p->min_p <= 1))
		return cm_err_set(err, CM_EINVAL, "min_p %g outside [0, 1]", p->min_p);
	if (!(p->repetition_penalty > 0 && p->repetition_penalty <= 100))
		return cm_err_set(err, CM_EINVAL, "repetition_penalty %g outside (0, 100]",
				  p->repetition_penalty);
	return CM_OK;
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t *s)
{
	uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

void wk__sampler_init(struct wk_sampler *s, const struct wk_sample_params *p)
{
	s->p = *p;
	uint64_t x = p->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&x);
}

/* A uniform double in [0, 1). */
static double uniform(struct wk_sampler *s)
{
	return (double)(xoshiro_next(s->rng) >> 11) * 0x1p-53;
}

int32_t wk__sample(struct wk_sampler *s, struct kern_backend *be, float *logits, int32_t n,
		   const int32_t *seen, int32_t n_seen, struct wk_sample_scratch *scr)
{
	const struct wk_sample_params *p = &s->p;
	if (p->repetition_penalty != 1.0f) {
		/* each distinct seen token once, as HF and vLLM do */
		for (int32_t i = 0; i < n_seen; i++) {
			int32_t t = seen[i];
			if (t < 0 || t >= n || scr->mark[t])
				continue;
			logits[t] = logits[t] > 0 ? logits[t] / p->repetition_penalty
						  : logits[t] * p->repetition_penalty;
			scr->mark[t] = 1;
		}
		for (int32_t i = 0; i < n_seen; i++)
			if (seen[i] >= 0 && seen[i] < n)
				scr->mark[seen[i]] = 0;
	}
	if (p->temperature == 0.0f)
		return kern_argmax(be, logits, n);

	/* Weights e_i = exp((l_i - max) / T) of the candidates, best first. With top-k
	 * the candidates are the k best; otherwise a growing prefix of the sorted
	 * vocabulary, until it holds top_p of the total weight. */
	float inv_t = 1.0f / p->temperature;
	float max = logits[kern_argmax(be, logits, n)];
	int32_t m;
	double base; /* the weight that top_p is a fraction of */
	if (p->top_k > 0 && p->top_k < n) {
		m = kern_topk(be, logits, n, p->top_k, scr->idx, scr->val);
		base = 0;
		for (int32_t i = 0; i < m; i++)
			base += exp((double)(scr->val[i] - max) * inv_t);
	} else {
		base = 0;
		for (int32_t i = 0; i < n; i++)
			base += exp((double)(logits[i] - max) * inv_t);
		for (m = CM_MIN(64, n);; m = CM_MIN(n, m * 8)) {
			kern_topk(be, logits, n, m, scr->idx, scr->val);
			double mass = 0;
			for (int32_t i = 0; i < m; i++)
				mass += exp((double)(scr->val[i] - max) * inv_t);
			if (m == n || mass >= p->top_p * base)
				break;
		}
	}
	/* keep the smallest prefix reaching top_p, without tokens below min_p x best */
	double kept = 0;
	int32_t n_keep = 0;
	for (int32_t i = 0; i < m; i++) {
		double e = exp((double)(scr->val[i] - max) * inv_t);
		if (i > 0 && (kept >= p->top_p * base || e < p->min_p))
			break; /* e of the best is 1, so min_p x best = min_p */
		scr->val[i] = (float)e;
		kept += e;
		n_keep++;
	}
	double r = uniform(s) * kept;
	double acc = 0;
	for (int32_t i = 0; i < n_keep - 1; i++) {
		acc += scr->val[i];
		if (r < acc)
			return scr->idx[i];
	}
	return scr->idx[n_keep - 1];
}
