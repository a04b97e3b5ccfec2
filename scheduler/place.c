/* Least-outstanding-work placement and the dense cost model. */
#include "sched.h"

double sched_flops_per_token(const struct md_config *cfg)
{
	double d = cfg->hidden, hd = cfg->head_dim;
	double q = cfg->n_head * hd, kv = cfg->n_kv_head * hd;
	double per_layer = d * q + 2.0 * d * kv + q * d + 3.0 * d * cfg->intermediate;
	return 2.0 * (cfg->n_layer * per_layer + (double)cfg->vocab * d);
}

double sched_req_cost(const struct md_config *cfg, int64_t n_tokens, int64_t max_tokens)
{
	int64_t n = CM_MAX(n_tokens, 0) + CM_MAX(max_tokens, 0);
	return (double)n * sched_flops_per_token(cfg);
}

/* True when a is a better place than b. */
static bool better(const struct sched_worker *a, const struct sched_worker *b)
{
	if (a->outstanding_flops != b->outstanding_flops)
		return a->outstanding_flops < b->outstanding_flops;
	return a->requests < b->requests;
}

int sched_req_place(const struct sched_worker *w, int n)
{
	int best = -1;
	for (int i = 0; i < n; i++) {
		if (!w[i].live)
			continue;
		if (best < 0 || better(&w[i], &w[best]))
			best = i;
	}
	return best;
}
