/* The cost model: FLOPs and bytes of a request per phase (algorithms.md §0.2,
 * §6.3; docs/scheduler.md). */
#include "sched-impl.h"

#include <math.h>

struct sched_params sched_default_params(void)
{
	return (struct sched_params){.weight_bytes = 2, .kv_bytes = 2, .batch = 8, .chunk = 32};
}

/* Per-token, per-layer figures of §0.2. */
struct shape {
	double f_q, f_kv, f_o, f_mlp, f_router; /* FLOPs */
	double att;				/* F_att(c) = att * c */
	double f_head;
	double w_layer, w_head; /* weights */
	double kv_layer;	/* KV bytes of one token in one layer */
	int32_t n_layer;
};

static int shape_of(const struct md_config *cfg, const struct sched_params *p, struct shape *s,
		    struct cm_err *err)
{
	if (cfg->hidden <= 0 || cfg->n_layer <= 0 || cfg->n_head <= 0 || cfg->n_kv_head <= 0 ||
	    cfg->head_dim <= 0 || cfg->intermediate <= 0 || cfg->vocab <= 0)
		return cm_err_set(err, CM_EINVAL, "scheduler: model shape has a non-positive size");
	if (!(p->weight_bytes > 0) || !(p->kv_bytes > 0) || p->batch < 1 || p->chunk < 1)
		return cm_err_set(err, CM_EINVAL,
				  "scheduler: cost params need positive byte sizes, batch and chunk");
	double d = cfg->hidden, q = (double)cfg->n_head * cfg->head_dim;
	double kv = (double)cfg->n_kv_head * cfg->head_dim, rh = cfg->router_hidden;
	double w_router = cfg->has_routers ? 2.0 * (d * rh + rh * 2.0) : 0;
	s->f_q = 2.0 * d * q;
	s->f_kv = 4.0 * d * kv;
	s->f_o = 2.0 * q * d;
	s->f_mlp = 6.0 * d * cfg->intermediate;
	s->f_router = 2.0 * w_router;
	s->att = 4.0 * q;
	s->f_head = 2.0 * d * cfg->vocab;
	s->w_layer = 2.0 * d * q + 2.0 * d * kv + 3.0 * d * cfg->intermediate + w_router;
	s->w_head = (double)cfg->vocab * d;
	s->kv_layer = 2.0 * kv * p->kv_bytes;
	s->n_layer = cfg->n_layer;
	return CM_OK;
}

static bool rate_ok(const double *v, int32_t n)
{
	for (int32_t i = 0; v && i < n; i++)
		if (!(v[i] >= 0 && v[i] <= 1))
			return false;
	return true;
}

static int req_check(const struct sched_req *r, int32_t n_layer, struct cm_err *err)
{
	if (r->source < 0 || r->vision < 0 || r->gen < 0 || r->gen_stream < 0 ||
	    r->source_done < 0 || r->gen_done < 0)
		return cm_err_set(err, CM_EINVAL, "scheduler: negative token count");
	if (r->vision > r->source)
		return cm_err_set(err, CM_EINVAL, "scheduler: %lld vision tokens in a %lld-token source",
				  (long long)r->vision, (long long)r->source);
	if (r->source_done > r->source || r->gen_done > r->gen)
		return cm_err_set(err, CM_EINVAL, "scheduler: more tokens done than the request has");
	if (!rate_ok(r->rho_attn, n_layer) || !rate_ok(r->rho_mlp, n_layer) ||
	    !rate_ok(r->keep, n_layer))
		return cm_err_set(err, CM_EINVAL,
				  "scheduler: execute rates and keep ratios must lie in [0, 1]");
	return CM_OK;
}

/* sum of (i + 1) for i in [a, b): the keys seen by tokens a..b-1 of a causal run. */
static double tri(double a, double b)
{
	return b > a ? (b * (b + 1) - a * (a + 1)) / 2 : 0;
}

static double at(const double *v, int32_t l)
{
	return v ? v[l] : 1.0;
}

/* Source tokens in the sequence at layer l (VisiPruner n_l). */
static double n_at(const struct sched_req *r, int32_t l)
{
	return (double)(r->source - r->vision) + (double)r->vision * at(r->keep, l);
}

static void encode_cost(const struct shape *s, const struct sched_params *p,
			const struct sched_req *r, struct sched_cost *c)
{
	double S = (double)r->source, s0 = (double)r->source_done;
	double steps = ceil((S - s0) / p->chunk);
	/* chunk ends of the prefill steps over [s0, S): keys each step reads */
	double ends = steps > 0 ? (steps - 1) * s0 + p->chunk * (steps - 1) * steps / 2 + S : 0;
	for (int32_t l = 0; l < s->n_layer; l++) {
		double n = n_at(r, l), ra = at(r->rho_attn, l), rm = at(r->rho_mlp, l);
		double f = S > 0 ? n / S : 0; /* the layer's share of the sequence */
		double a = s0 * f, m = n - a;
		c->flops += m * (s->f_router + s->f_kv + ra * (s->f_q + s->f_o) + rm * s->f_mlp) +
			    ra * s->att * tri(a, n);
		c->kv_write_bytes += m * s->kv_layer;
		c->kv_read_bytes += ra * ends * f * s->kv_layer;
		c->kv_hold_bytes += n * s->kv_layer;
	}
	c->weight_bytes = steps * s->w_layer * s->n_layer * p->weight_bytes / p->batch;
	c->link_bytes = c->kv_write_bytes; /* what is encoded from now on is shipped */
}

/* Source keys seen by the generated tokens [a, b) per source token at the layer:
 * a streaming token t < Ts sees (t + 1) / Ts of it, a later one all of it. */
static double frontier_sum(double a, double b, double Ts)
{
	if (Ts <= 0)
		return b - a;
	double e = CM_MIN(b, Ts), sum = e > a ? tri(a, e) / Ts : 0;
	return sum + CM_MAX(0, b - CM_MAX(a, Ts));
}

static void decode_cost(const struct shape *s, const struct sched_params *p,
			const struct sched_req *r, struct sched_cost *c)
{
	double a = (double)r->gen_done, b = (double)r->gen, m = b - a;
	double Ts = (double)CM_MIN(r->gen_stream, r->gen), fr = frontier_sum(a, b, Ts);
	double src_hold = 0;
	for (int32_t l = 0; l < s->n_layer; l++) {
		double n = n_at(r, l), ra = at(r->rho_attn, l), rm = at(r->rho_mlp, l);
		double keys = n * fr + tri(a, b); /* keys seen by [a, b) at this layer */
		c->flops += m * (s->f_router + s->f_kv + ra * (s->f_q + s->f_o) + rm * s->f_mlp) +
			    ra * s->att * keys;
		c->kv_read_bytes += ra * keys * s->kv_layer;
		src_hold += n * s->kv_layer;
	}
	c->flops += m * s->f_head;
	c->kv_write_bytes = m * s->n_layer * s->kv_layer;
	c->kv_hold_bytes = src_hold + b * s->n_layer * s->kv_layer;
	c->weight_bytes = m * (s->w_layer * s->n_layer + s->w_head) * p->weight_bytes / p->batch;
}

int sched_req_estimate(const struct md_config *cfg, const struct sched_params *p,
		       const struct sched_req *r, struct sched_estimate *est, struct cm_err *err)
{
	struct shape s = {0};
	int rc = shape_of(cfg, p, &s, err);
	if (rc < 0 || (rc = req_check(r, s.n_layer, err)) < 0)
		return rc;
	struct sched_estimate e = {0};
	encode_cost(&s, p, r, &e.phase[SCHED_ENCODE]);
	decode_cost(&s, p, r, &e.phase[SCHED_DECODE]);
	const struct sched_cost *en = &e.phase[SCHED_ENCODE], *de = &e.phase[SCHED_DECODE];
	e.phase[SCHED_BOTH] = (struct sched_cost){
		.flops = en->flops + de->flops,
		.weight_bytes = en->weight_bytes + de->weight_bytes,
		.kv_read_bytes = en->kv_read_bytes + de->kv_read_bytes,
		.kv_write_bytes = en->kv_write_bytes + de->kv_write_bytes,
		.kv_hold_bytes = de->kv_hold_bytes, /* the decode side's hold includes the source */
	};
	*est = e;
	return CM_OK;
}

int64_t sched_gen_tokens(int64_t n_units, int32_t unit_budget, int32_t final_budget,
			 int32_t max_tokens)
{
	int64_t ub = unit_budget > 0 ? unit_budget : SCHED_UNIT_BUDGET_DEFAULT;
	int64_t fb = final_budget > 0 ? final_budget : SCHED_FINAL_BUDGET_DEFAULT;
	int64_t t = CM_MAX(n_units, 0) * ub + fb;
	return max_tokens > 0 ? CM_MIN(t, (int64_t)max_tokens) : t;
}

double sched_kv_token_bytes(const struct md_config *cfg, const struct sched_params *p)
{
	return 2.0 * cfg->n_layer * cfg->n_kv_head * cfg->head_dim * p->kv_bytes;
}

double sched_cost_seconds(const struct sched_cost *c, const struct sched_capacity *cap)
{
	double bytes = c->weight_bytes + c->kv_read_bytes + c->kv_write_bytes;
	double tf = cap->flop_rate > 0 ? c->flops / cap->flop_rate : 0;
	double tb = cap->bandwidth > 0 ? bytes / cap->bandwidth : 0;
	if (!(cap->flop_rate > 0) && !(cap->bandwidth > 0))
		return c->flops;
	return CM_MAX(tf, tb);
}
