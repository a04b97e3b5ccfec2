/* The plan simulator: a discrete-event model of a cluster running a synthetic
 * workload through the library's own placement and accounting (sched_place,
 * sched_ticket_update, sched_ticket_finish), so what it predicts is what the
 * coordinator does. Each worker runs batched steps over the phases placed on it
 * (share_rates); a request's encode phase runs on its encode worker, then its
 * decode phase on its decode worker; the input is all there at arrival and the
 * KV link costs no time. Workers report progress every report_s: the exact
 * work done and the remaining estimate from the tokens done (docs/scheduler.md). */
#include "sched-impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sched_sim_params sched_sim_default_params(void)
{
	return (struct sched_sim_params){
		.cost = sched_default_params(),
		.seed = 1,
		.n_requests = 2000,
		.load = 0.8,
		.source_median = 400,
		.source_sigma = 1.0,
		.source_max = 8192,
		.unit_tokens = 25,
		.unit_budget = 32,
		.final_budget = {64, 256, 1024},
		.think_median = 0.5,
		.think_sigma = 0.5,
		.report_s = 0.2,
	};
}

enum { R_FUTURE = 0, R_WAIT, R_ENC, R_DEC, R_DONE };

struct sim_req {
	double arrival, placed, done; /* s */
	struct sched_req bel;	      /* what the scheduler believes (budgets) */
	struct sched_req tru;	      /* what the request really does */
	struct sched_estimate truth;
	struct sched_ticket t;
	double total[2], left[2]; /* true seconds of each phase on its worker */
	double n_steps[2];	  /* steps of each phase: source chunks, tokens */
	double step_flops[2], step_bytes[2]; /* per step, weights apart */
	int64_t reported[2];	  /* tokens reported per phase */
	int state;
};

struct sim {
	const struct sched_sim_params *p;
	struct sched_policy pol;
	struct sched_worker w[SCHED_SIM_MAX_WORKERS];
	int n;
	struct sim_req *r;
	int32_t *live, n_live; /* requests placed and not done */
	int32_t *wait, wait_head, wait_tail;
	double now, next_report;
	double load_int[SCHED_SIM_MAX_WORKERS], busy[SCHED_SIM_MAX_WORKERS];
	double imb_sum, pool_sum[3];
	int64_t imb_n, pool_n[3];
	struct sched_sim_result *res;
	double w_full, w_layers; /* weight bytes one step reads (with / without the head) */
};

/* ---- workload ---------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1). */
static double rng_unit(uint64_t *s)
{
	return ((double)(rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double rng_lognormal(uint64_t *s, double median, double sigma)
{
	double u1 = rng_unit(s), u2 = rng_unit(s);
	double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
	return median * exp(sigma * z);
}

static int gen_request(struct sim *m, uint64_t *s, struct sim_req *q, struct cm_err *err)
{
	const struct sched_sim_params *p = m->p;
	double src = rng_lognormal(s, p->source_median, p->source_sigma);
	int64_t S = CM_MIN(CM_MAX((int64_t)llround(src), 1), (int64_t)p->source_max);
	int64_t units = (S + p->unit_tokens - 1) / p->unit_tokens;
	int32_t fb = p->final_budget[rng_next(s) % 3];
	double share = CM_MIN(rng_lognormal(s, p->think_median, p->think_sigma), 1.0);
	int64_t stream = units * p->unit_budget, budget = stream + fb;
	q->bel = (struct sched_req){.source = S, .gen = budget, .gen_stream = stream};
	q->tru = q->bel;
	q->tru.gen = CM_MAX((int64_t)llround(share * (double)budget), 1);
	q->tru.gen_stream = (int64_t)llround(share * (double)stream);
	q->t = (struct sched_ticket){.worker = {-1, -1}};
	int rc = sched_req_estimate(p->cfg, &p->cost, &q->tru, &q->truth, err);
	if (rc < 0)
		return rc;
	q->n_steps[SCHED_ENCODE] = ceil((double)S / p->cost.chunk);
	q->n_steps[SCHED_DECODE] = (double)q->tru.gen;
	for (int ph = 0; ph < 2; ph++) {
		const struct sched_cost *c = &q->truth.phase[ph];
		q->step_flops[ph] = c->flops / q->n_steps[ph];
		q->step_bytes[ph] = (c->kv_read_bytes + c->kv_write_bytes) / q->n_steps[ph];
	}
	return CM_OK;
}

/* Weight bytes of one step: with the LM head (decoding) and without. */
static int step_weights(struct sim *m, struct cm_err *err)
{
	const struct sched_sim_params *p = m->p;
	struct sched_req one = {.gen = 1}, chunk = {.source = p->cost.chunk};
	struct sched_estimate a, b;
	int rc = sched_req_estimate(p->cfg, &p->cost, &one, &a, err);
	if (rc < 0 || (rc = sched_req_estimate(p->cfg, &p->cost, &chunk, &b, err)) < 0)
		return rc;
	m->w_full = a.phase[SCHED_DECODE].weight_bytes * p->cost.batch;
	m->w_layers = b.phase[SCHED_ENCODE].weight_bytes * p->cost.batch;
	return CM_OK;
}

/* Arrivals per second at the offered load: load times the cluster's rate,
 * roughly min(encode pool, decode pool) + `both` workers, from mean true times. */
static double cluster_rate(const struct sim *m)
{
	double re = 0, rd = 0, rb = 0;
	bool split = false;
	for (int i = 0; i < m->n; i++) {
		double te = 0, td = 0;
		for (int32_t k = 0; k < m->p->n_requests; k++) {
			te += sched_cost_seconds(&m->r[k].truth.phase[SCHED_ENCODE], &m->w[i].cap);
			td += sched_cost_seconds(&m->r[k].truth.phase[SCHED_DECODE], &m->w[i].cap);
		}
		te /= m->p->n_requests;
		td /= m->p->n_requests;
		split |= m->w[i].role != SCHED_ROLE_BOTH;
		if (m->w[i].role == SCHED_ROLE_ENCODE)
			re += 1 / te;
		else if (m->w[i].role == SCHED_ROLE_DECODE)
			rd += 1 / td;
		else
			rb += 1 / (te + td);
	}
	return m->p->load * ((split ? CM_MIN(re, rd) : 0) + rb);
}

static int params_check(const struct sched_sim_params *p, struct cm_err *err)
{
	if (!p->cfg || !p->workers || p->n_workers < 1 || p->n_workers > SCHED_SIM_MAX_WORKERS)
		return cm_err_set(err, CM_EINVAL, "simulator: give a model and 1 to %d workers",
				  SCHED_SIM_MAX_WORKERS);
	if (p->n_requests < 1 || p->n_requests > 10000000 || !(p->load > 0 && p->load <= 2))
		return cm_err_set(err, CM_EINVAL,
				  "simulator: requests must be in [1, 1e7] and load in (0, 2]");
	if (!(p->source_median >= 1) || !(p->source_sigma >= 0) || p->source_max < 1 ||
	    p->unit_tokens < 1 || p->unit_budget < 0 || !(p->think_median > 0) ||
	    !(p->think_sigma >= 0) || !(p->report_s > 0))
		return cm_err_set(err, CM_EINVAL, "simulator: bad workload parameters");
	for (int k = 0; k < 3; k++)
		if (p->final_budget[k] < 0)
			return cm_err_set(err, CM_EINVAL, "simulator: negative final budget");
	bool enc = false, dec = false;
	for (int i = 0; i < p->n_workers; i++) {
		const struct sched_sim_worker *x = &p->workers[i];
		if (!(x->cap.flop_rate > 0) || !(x->cap.bandwidth > 0) || !(x->cap.kv_bytes >= 0))
			return cm_err_set(err, CM_EINVAL,
					  "simulator: worker %d needs positive FLOP/s and bandwidth",
					  i);
		enc |= x->role != SCHED_ROLE_DECODE;
		dec |= x->role != SCHED_ROLE_ENCODE;
	}
	if (!enc || !dec)
		return cm_err_set(err, CM_EINVAL, "simulator: the cluster has no %s worker",
				  enc ? "decode" : "encode");
	return CM_OK;
}

/* ---- events -------------------------------------------------------------------- */

/* Each worker runs one batched step after another: every decoding request
 * gives it one token, every encoding one a chunk of source; the step takes
 * max(FLOPs / flop_rate, bytes / bandwidth), the weights read once whatever the
 * batch. A running phase's work (its roofline seconds in the cost model, which
 * shares the weights among `batch` sequences) thus drains at
 * total / (steps * step_time). */
struct rates {
	double step[SCHED_SIM_MAX_WORKERS]; /* s per step; 0: idle */
	double used[SCHED_SIM_MAX_WORKERS]; /* work seconds done per second */
};

static int phase_of(const struct sim_req *q)
{
	return q->state == R_ENC ? SCHED_ENCODE : SCHED_DECODE;
}

/* Work seconds per second of q's running phase. */
static double rate_of(const struct sim *m, const struct rates *rt, const struct sim_req *q)
{
	int ph = phase_of(q);
	(void)m;
	return q->total[ph] / (q->n_steps[ph] * rt->step[q->t.worker[ph]]);
}

static void share_rates(const struct sim *m, struct rates *rt)
{
	double f[SCHED_SIM_MAX_WORKERS] = {0}, b[SCHED_SIM_MAX_WORKERS] = {0};
	int nd[SCHED_SIM_MAX_WORKERS] = {0}, ne[SCHED_SIM_MAX_WORKERS] = {0};
	for (int32_t k = 0; k < m->n_live; k++) {
		const struct sim_req *q = &m->r[m->live[k]];
		int ph = phase_of(q), i = q->t.worker[ph];
		f[i] += q->step_flops[ph];
		b[i] += q->step_bytes[ph];
		(ph == SCHED_ENCODE ? ne : nd)[i]++;
	}
	for (int i = 0; i < m->n; i++) {
		const struct sched_capacity *c = &m->w[i].cap;
		double w = nd[i] ? m->w_full : ne[i] ? m->w_layers : 0;
		rt->step[i] = nd[i] + ne[i] ? CM_MAX(f[i] / c->flop_rate, (b[i] + w) / c->bandwidth)
					    : 0;
		rt->used[i] = 0;
	}
	for (int32_t k = 0; k < m->n_live; k++) {
		const struct sim_req *q = &m->r[m->live[k]];
		rt->used[q->t.worker[phase_of(q)]] += rate_of(m, rt, q);
	}
}

/* True seconds of placed, unfinished work per worker. */
static void true_load(const struct sim *m, double *load)
{
	memset(load, 0, sizeof(double) * (size_t)m->n);
	for (int32_t k = 0; k < m->n_live; k++) {
		const struct sim_req *q = &m->r[m->live[k]];
		for (int ph = 0; ph < 2; ph++)
			load[q->t.worker[ph]] += q->left[ph];
	}
}

/* Moves the clock to t: every running phase progresses by its share. */
static void advance(struct sim *m, double t, const struct rates *rt)
{
	double dt = t - m->now, load[SCHED_SIM_MAX_WORKERS];
	true_load(m, load);
	for (int i = 0; i < m->n; i++) {
		double l1 = CM_MAX(load[i] - dt * rt->used[i], 0);
		m->load_int[i] += dt * (load[i] + l1) / 2;
		m->busy[i] += rt->step[i] > 0 ? dt : 0;
	}
	for (int32_t k = 0; k < m->n_live; k++) {
		struct sim_req *q = &m->r[m->live[k]];
		int ph = q->state == R_ENC ? SCHED_ENCODE : SCHED_DECODE;
		q->left[ph] = CM_MAX(q->left[ph] - dt * rate_of(m, rt, q), 0);
	}
	m->now = t;
}

/* Max/mean load within each role pool of two or more workers, the pools
 * weighted by their load: a pool with no work has nothing to balance. */
static void sample_imbalance(struct sim *m)
{
	double load[SCHED_SIM_MAX_WORKERS], num = 0, den = 0;
	true_load(m, load);
	for (int role = 0; role < 3; role++) {
		double sum = 0, mx = 0;
		int k = 0;
		for (int i = 0; i < m->n; i++) {
			if ((int)m->w[i].role != role)
				continue;
			sum += load[i];
			mx = CM_MAX(mx, load[i]);
			k++;
		}
		if (k < 2 || !(sum > 0))
			continue;
		m->pool_sum[role] += mx * k / sum;
		m->pool_n[role]++;
		num += mx * k;
		den += sum;
	}
	if (den > 0) {
		m->imb_sum += num / den;
		m->imb_n++;
	}
}

/* The cost of the tokens between two progress points of a phase. */
static int cost_between(const struct sched_sim_params *p, const struct sched_req *base, int ph,
			int64_t from, int64_t to, struct sched_cost *out, struct cm_err *err)
{
	struct sched_req a = *base, b = *base;
	struct sched_estimate ea, eb;
	if (ph == SCHED_ENCODE)
		a.source_done = from, b.source_done = to;
	else
		a.gen_done = from, b.gen_done = to;
	int rc = sched_req_estimate(p->cfg, &p->cost, &a, &ea, err);
	if (rc < 0 || (rc = sched_req_estimate(p->cfg, &p->cost, &b, &eb, err)) < 0)
		return rc;
	*out = (struct sched_cost){
		.flops = ea.phase[ph].flops - eb.phase[ph].flops,
		.weight_bytes = ea.phase[ph].weight_bytes - eb.phase[ph].weight_bytes,
		.kv_read_bytes = ea.phase[ph].kv_read_bytes - eb.phase[ph].kv_read_bytes,
		.kv_write_bytes = ea.phase[ph].kv_write_bytes - eb.phase[ph].kv_write_bytes,
	};
	return CM_OK;
}

/* A worker's progress report on q's running phase: exact work done since the
 * last one, and the scheduler's remaining estimate from the tokens done. */
static int report(struct sim *m, struct sim_req *q, struct cm_err *err)
{
	int ph = q->state == R_ENC ? SCHED_ENCODE : SCHED_DECODE;
	int64_t total = ph == SCHED_ENCODE ? q->tru.source : q->tru.gen;
	double frac = q->total[ph] > 0 ? 1 - q->left[ph] / q->total[ph] : 1;
	int64_t k = CM_MIN((int64_t)floor(frac * (double)total), total);
	if (q->left[ph] <= 0)
		k = total;
	if (k <= q->reported[ph])
		return CM_OK;
	struct sched_cost done;
	struct sched_req b = q->bel;
	struct sched_estimate left;
	int rc = cost_between(m->p, &q->tru, ph, q->reported[ph], k, &done, err);
	if (ph == SCHED_ENCODE)
		b.source_done = k;
	else
		b.gen_done = CM_MIN(k, b.gen);
	if (rc < 0 || (rc = sched_req_estimate(m->p->cfg, &m->p->cost, &b, &left, err)) < 0)
		return rc;
	q->reported[ph] = k;
	return sched_ticket_update(m->w, m->n, &q->t, ph, &done, &left.phase[ph]);
}

static int try_place(struct sim *m, int32_t i, struct cm_err *err)
{
	struct sim_req *q = &m->r[i];
	struct sched_estimate est;
	int rc = sched_req_estimate(m->p->cfg, &m->p->cost, &q->bel, &est, err);
	if (rc < 0 || (rc = sched_place(m->w, m->n, &est, &m->pol, &q->t, err)) < 0)
		return rc;
	for (int ph = 0; ph < 2; ph++) {
		const struct sched_capacity *cap = &m->w[q->t.worker[ph]].cap;
		q->total[ph] = q->left[ph] = sched_cost_seconds(&q->truth.phase[ph], cap);
	}
	m->res->sides[q->t.worker[0]]++;
	if (q->t.worker[1] != q->t.worker[0])
		m->res->sides[q->t.worker[1]]++;
	q->placed = m->now;
	q->state = R_ENC;
	m->live[m->n_live++] = i;
	return CM_OK;
}

/* Places queued requests in arrival order while there is room. */
static int drain(struct sim *m, struct cm_err *err)
{
	while (m->wait_head < m->wait_tail) {
		int rc = try_place(m, m->wait[m->wait_head], err);
		if (rc == CM_EFULL && m->n_live > 0)
			return CM_OK;
		if (rc == CM_EFULL)
			return cm_err_set(err, CM_EINVAL,
					  "simulator: a request needs more KV than any worker has");
		if (rc < 0)
			return rc;
		m->wait_head++;
	}
	return CM_OK;
}

/* Ends the phases that have no work left; returns how many requests finished. */
static int complete(struct sim *m, struct cm_err *err)
{
	int rc;
	for (int32_t k = 0; k < m->n_live; k++) {
		struct sim_req *q = &m->r[m->live[k]];
		int ph = q->state == R_ENC ? SCHED_ENCODE : SCHED_DECODE;
		if (q->left[ph] > 1e-9 * CM_MAX(q->total[ph], 1e-3))
			continue;
		q->left[ph] = 0;
		if ((rc = report(m, q, err)) < 0)
			return rc;
		if (ph == SCHED_ENCODE) {
			q->state = R_DEC;
			k--; /* its decode may be empty too */
			continue;
		}
		sched_ticket_finish(m->w, m->n, &q->t);
		q->state = R_DONE;
		q->done = m->now;
		m->live[k--] = m->live[--m->n_live];
	}
	return drain(m, err);
}

static double next_completion(const struct sim *m, const struct rates *rt)
{
	double t = INFINITY;
	for (int32_t k = 0; k < m->n_live; k++) {
		const struct sim_req *q = &m->r[m->live[k]];
		int ph = q->state == R_ENC ? SCHED_ENCODE : SCHED_DECODE;
		t = CM_MIN(t, m->now + q->left[ph] / rate_of(m, rt, q));
	}
	return t;
}

static int run_events(struct sim *m, struct cm_err *err)
{
	int32_t next = 0, n = m->p->n_requests;
	struct rates rt;
	int rc;
	while (next < n || m->n_live > 0 || m->wait_head < m->wait_tail) {
		share_rates(m, &rt);
		double tc = next_completion(m, &rt);
		double ta = next < n ? m->r[next].arrival : INFINITY;
		double tr = m->n_live > 0 ? CM_MAX(m->next_report, m->now) : INFINITY;
		double t = CM_MIN(tc, CM_MIN(ta, tr));
		if (!isfinite(t))
			return cm_err_set(err, CM_EINTERNAL, "simulator: stalled");
		advance(m, t, &rt);
		if (t == tc && (rc = complete(m, err)) < 0)
			return rc;
		if (t == tr && t < tc) {
			for (int32_t k = 0; k < m->n_live; k++)
				if ((rc = report(m, &m->r[m->live[k]], err)) < 0)
					return rc;
			m->next_report = m->now + m->p->report_s;
		}
		if (t == ta && t < tc && t < tr) {
			sample_imbalance(m);
			m->r[next].state = R_WAIT;
			m->wait[m->wait_tail++] = next++;
			if ((rc = drain(m, err)) < 0)
				return rc;
		}
	}
	return CM_OK;
}

/* ---- results ------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void results(struct sim *m, double *fin)
{
	struct sched_sim_result *res = m->res;
	int32_t n = m->p->n_requests;
	double sum = 0, wsum = 0;
	for (int32_t k = 0; k < n; k++) {
		fin[k] = m->r[k].done - m->r[k].arrival;
		sum += fin[k];
		wsum += m->r[k].placed - m->r[k].arrival;
		res->makespan = CM_MAX(res->makespan, m->r[k].done);
	}
	qsort(fin, (size_t)n, sizeof(*fin), cmp_double);
	res->n_requests = n;
	res->finish_mean = sum / n;
	res->wait_mean = wsum / n;
	res->finish_p50 = fin[(int32_t)ceil(0.50 * n) - 1];
	res->finish_p99 = fin[(int32_t)ceil(0.99 * n) - 1];
	res->imbalance = m->imb_n ? m->imb_sum / (double)m->imb_n : 1;
	for (int k = 0; k < 3; k++)
		res->imbalance_role[k] = m->pool_n[k] ? m->pool_sum[k] / (double)m->pool_n[k] : 0;
	res->n_workers = m->n;
	for (int i = 0; i < m->n && res->makespan > 0; i++) {
		res->load_mean[i] = m->load_int[i] / res->makespan;
		res->busy[i] = m->busy[i] / res->makespan;
	}
}

static int sim_setup(struct sim *m, struct cm_err *err)
{
	const struct sched_sim_params *p = m->p;
	uint64_t s_work = p->seed, s_arr = p->seed ^ 0x5deece66dull;
	int rc;
	for (int i = 0; i < m->n; i++)
		m->w[i] = (struct sched_worker){
			.live = true, .role = p->workers[i].role, .cap = p->workers[i].cap};
	if ((rc = step_weights(m, err)) < 0)
		return rc;
	for (int32_t k = 0; k < p->n_requests; k++)
		if ((rc = gen_request(m, &s_work, &m->r[k], err)) < 0)
			return rc;
	m->res->rate = cluster_rate(m);
	double t = 0;
	for (int32_t k = 0; k < p->n_requests; k++) {
		t += -log(rng_unit(&s_arr)) / m->res->rate;
		m->r[k].arrival = t;
	}
	return CM_OK;
}

int sched_sim_run(const struct sched_sim_params *p, enum sched_policy_kind kind,
		  struct sched_sim_result *res, struct cm_err *err)
{
	int rc = params_check(p, err);
	if (rc < 0)
		return rc;
	struct sim *m = calloc(1, sizeof(*m));
	size_t n = (size_t)p->n_requests;
	double *fin = NULL;
	if (!m)
		return cm_err_set(err, CM_ENOMEM, "simulator: out of memory");
	*m = (struct sim){.p = p, .pol = {.kind = kind}, .n = p->n_workers, .res = res};
	memset(res, 0, sizeof(*res));
	m->r = calloc(n, sizeof(*m->r));
	m->live = calloc(n, sizeof(*m->live));
	m->wait = calloc(n, sizeof(*m->wait));
	fin = calloc(n, sizeof(*fin));
	if (!m->r || !m->live || !m->wait || !fin) {
		rc = cm_err_set(err, CM_ENOMEM, "simulator: out of memory for %zu requests", n);
		goto out;
	}
	if ((rc = sim_setup(m, err)) < 0 || (rc = run_events(m, err)) < 0)
		goto out;
	results(m, fin);
out:
	free(fin);
	free(m->wait);
	free(m->live);
	free(m->r);
	free(m);
	return rc;
}
