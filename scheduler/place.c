/* Placement, re-placement and accounting of requests on workers; the metrics. */
#include "sched-impl.h"

#include <math.h>

const char *sched_policy_name(enum sched_policy_kind kind)
{
	switch (kind) {
	case SCHED_POLICY_COST:
		return "cost";
	case SCHED_POLICY_ROUND_ROBIN:
		return "round-robin";
	case SCHED_POLICY_LEAST_REQUESTS:
		return "least-requests";
	}
	return "?";
}

/* ---- candidates ------------------------------------------------------------ */

/* What one choice needs: the estimate, the policy, a worker to avoid. */
struct want {
	const struct sched_estimate *est;
	enum sched_policy_kind kind;
	uint64_t rr;
	int32_t avoid; /* -1: none */
};

static bool role_fits(const struct sched_worker *w, int side)
{
	return side == SCHED_ENCODE ? w->role != SCHED_ROLE_DECODE : w->role != SCHED_ROLE_ENCODE;
}

static bool kv_fits(const struct sched_worker *w, double need)
{
	return !(w->cap.kv_bytes > 0) || w->kv_used + need <= w->cap.kv_bytes;
}

/* Live, of a fitting role, not avoided (room is checked apart). */
static bool usable(const struct sched_worker *w, int n, int32_t i, int side, int32_t avoid)
{
	return i >= 0 && i < n && i != avoid && w[i].live && role_fits(&w[i], side);
}

/* Whether w[i] can take the whole request (both phases, no link). */
static bool whole_fits(const struct sched_worker *w, int32_t i, const struct sched_estimate *est)
{
	return w[i].role == SCHED_ROLE_BOTH && kv_fits(&w[i], est->phase[SCHED_DECODE].kv_hold_bytes);
}

static bool side_fits(const struct sched_worker *w, int32_t i, int side,
		      const struct sched_estimate *est)
{
	return kv_fits(&w[i], est->phase[side].kv_hold_bytes);
}

/* Projected finish of work of t seconds on w: a batched engine runs the new
 * sequence beside the ones it has, sharing each step (processor sharing), so
 * each of the n placed requests delays it by at most its own remaining work or
 * t: t + sum_j min(r_j, t) <= t + min(load_s, n t). */
static double finish_after(const struct sched_worker *w, double t)
{
	return t + CM_MIN(w->load_s, CM_MAX(w->requests, 0) * t);
}

static double finish_s(const struct sched_worker *w, const struct sched_cost *c)
{
	return finish_after(w, sched_cost_seconds(c, &w->cap));
}

/* A candidate placement and its order keys (smaller is better). */
struct cand {
	int32_t e, d;
	double k1, k2;
	int32_t reqs;
};

static bool cand_better(const struct cand *a, const struct cand *b)
{
	if (b->e < 0)
		return true;
	if (a->k1 != b->k1)
		return a->k1 < b->k1;
	if (a->k2 != b->k2)
		return a->k2 < b->k2;
	return a->reqs < b->reqs; /* equal: the earlier (lower indices) stays */
}

static struct cand cand_of(const struct sched_worker *w, int32_t e, int32_t d,
			   const struct want *q)
{
	struct cand c = {.e = e, .d = d};
	const struct sched_cost *en = &q->est->phase[SCHED_ENCODE];
	const struct sched_cost *de = &q->est->phase[SCHED_DECODE];
	if (e == d) {
		c.k1 = c.k2 = finish_after(&w[e], sched_cost_seconds(en, &w[e].cap) +
						      sched_cost_seconds(de, &w[e].cap));
		c.reqs = w[e].requests;
	} else {
		double fe = finish_s(&w[e], en), fd = finish_s(&w[d], de);
		c.k1 = CM_MAX(fe, fd);
		c.k2 = fe + fd;
		c.reqs = w[e].requests + w[d].requests;
	}
	if (q->kind == SCHED_POLICY_LEAST_REQUESTS)
		c.k1 = c.k2 = c.reqs;
	return c;
}

/* Why nothing fitted: no live worker for a side, or no room. */
static int none_err(const struct sched_worker *w, int n, const struct want *q, int side,
		    struct cm_err *err)
{
	for (int s = 0; s < 2; s++) {
		if (side >= 0 && s != side)
			continue;
		bool any = false;
		for (int32_t i = 0; i < n; i++)
			any |= usable(w, n, i, s, q->avoid);
		if (!any)
			return cm_err_set(err, CM_EAGAIN, "scheduler: no live %s worker",
					  s == SCHED_ENCODE ? "encode" : "decode");
	}
	double most = 0;
	for (int32_t i = 0; i < n; i++)
		if (w[i].live && w[i].cap.kv_bytes > 0)
			most = CM_MAX(most, w[i].cap.kv_bytes - w[i].kv_used);
	return cm_err_set(err, CM_EFULL,
			  "scheduler: no worker has room for the request's KV (%.1f MiB on the "
			  "decode side, %.1f MiB on the encode side; most free %.1f MiB)",
			  q->est->phase[SCHED_DECODE].kv_hold_bytes / 1048576.0,
			  q->est->phase[SCHED_ENCODE].kv_hold_bytes / 1048576.0, most / 1048576.0);
}

/* Whether w[i] can take side of the request; with whole (or i == other, the
 * encode side already chosen) it takes both sides. */
static bool fits(const struct sched_worker *w, int n, int32_t i, int side, const struct want *q,
		 int32_t other, bool whole)
{
	if (!usable(w, n, i, side, q->avoid))
		return false;
	return whole || i == other ? whole_fits(w, i, q->est) : side_fits(w, i, side, q->est);
}

/* Round robin: the rr-th of the fitting candidates of a side, in index order. */
static int32_t rr_side(const struct sched_worker *w, int n, int side, const struct want *q,
		       int32_t other, bool whole)
{
	int32_t cnt = 0, k;
	for (int32_t i = 0; i < n; i++)
		cnt += fits(w, n, i, side, q, other, whole);
	if (!cnt)
		return -1;
	k = (int32_t)(q->rr % (uint64_t)cnt);
	for (int32_t i = 0; i < n; i++)
		if (fits(w, n, i, side, q, other, whole) && k-- == 0)
			return i;
	return -1;
}

static bool split_layout(const struct sched_worker *w, int n)
{
	for (int32_t i = 0; i < n; i++)
		if (w[i].live && w[i].role != SCHED_ROLE_BOTH)
			return true;
	return false;
}

/* Both sides: the best pair, e == d meaning whole. */
static int pick_pair(const struct sched_worker *w, int n, const struct want *q, int32_t *e,
		     int32_t *d, struct cm_err *err)
{
	bool split = split_layout(w, n);
	struct cand best = {.e = -1, .d = -1};
	if (q->kind == SCHED_POLICY_ROUND_ROBIN) {
		int32_t a = rr_side(w, n, SCHED_ENCODE, q, -1, !split);
		int32_t b = !split ? a : a >= 0 ? rr_side(w, n, SCHED_DECODE, q, a, false) : -1;
		if (a >= 0 && b >= 0)
			best = (struct cand){.e = a, .d = b};
	} else {
		for (int32_t i = 0; i < n; i++) {
			if (!usable(w, n, i, SCHED_ENCODE, q->avoid))
				continue;
			for (int32_t j = split ? 0 : i; j < (split ? n : i + 1); j++) {
				bool ok = i == j ? fits(w, n, j, SCHED_DECODE, q, i, true)
						 : side_fits(w, i, SCHED_ENCODE, q->est) &&
							   fits(w, n, j, SCHED_DECODE, q, -1, false);
				if (!ok)
					continue;
				struct cand c = cand_of(w, i, j, q);
				if (cand_better(&c, &best))
					best = c;
			}
		}
	}
	if (best.e < 0)
		return none_err(w, n, q, -1, err);
	*e = best.e;
	*d = best.d;
	return CM_OK;
}

/* One side of a request whose other side stays on q->avoid. */
static int pick_side(const struct sched_worker *w, int n, int side, const struct want *q,
		     int32_t *out, struct cm_err *err)
{
	int32_t best = -1;
	double bk = 0;
	if (q->kind == SCHED_POLICY_ROUND_ROBIN) {
		best = rr_side(w, n, side, q, -1, false);
	} else {
		for (int32_t i = 0; i < n; i++) {
			if (!usable(w, n, i, side, q->avoid) || !side_fits(w, i, side, q->est))
				continue;
			double k = q->kind == SCHED_POLICY_LEAST_REQUESTS
					   ? w[i].requests
					   : finish_s(&w[i], &q->est->phase[side]);
			if (best < 0 || k < bk || (k == bk && w[i].requests < w[best].requests)) {
				best = i;
				bk = k;
			}
		}
	}
	if (best < 0)
		return none_err(w, n, q, side, err);
	*out = best;
	return CM_OK;
}

/* ---- accounting ------------------------------------------------------------ */

static double sub0(double a, double b)
{
	double r = a - b;
	return r > 0 ? r : 0;
}

/* Adds (sign 1) or removes (sign -1) a charge on w. */
static void charge(struct sched_worker *w, const struct sched_cost *c, double kv, int sign)
{
	double bytes = c->weight_bytes + c->kv_read_bytes + c->kv_write_bytes;
	double s = sched_cost_seconds(c, &w->cap);
	if (sign > 0) {
		w->outstanding_flops += c->flops;
		w->outstanding_bytes += bytes;
		w->load_s += s;
		w->kv_used += kv;
	} else {
		w->outstanding_flops = sub0(w->outstanding_flops, c->flops);
		w->outstanding_bytes = sub0(w->outstanding_bytes, bytes);
		w->load_s = sub0(w->load_s, s);
		w->kv_used = sub0(w->kv_used, kv);
	}
}

static void ticket_charge(struct sched_worker *w, const struct sched_ticket *t)
{
	for (int p = 0; p < 2; p++)
		charge(&w[t->worker[p]], &t->left[p], t->kv[p], 1);
	w[t->worker[0]].requests++;
	if (t->worker[1] != t->worker[0])
		w[t->worker[1]].requests++;
}

static void ticket_make(struct sched_ticket *t, int32_t e, int32_t d,
			const struct sched_estimate *est)
{
	t->worker[SCHED_ENCODE] = e;
	t->worker[SCHED_DECODE] = d;
	for (int p = 0; p < 2; p++) {
		t->left[p] = est->phase[p];
		t->kv[p] = est->phase[p].kv_hold_bytes;
	}
	if (e == d)
		t->kv[SCHED_ENCODE] = 0; /* the decode hold counts the source once */
}

static int args_ok(const struct sched_worker *w, int n, const struct sched_estimate *est,
		   const struct sched_policy *pol, const struct sched_ticket *t, struct cm_err *err)
{
	if ((n > 0 && !w) || n < 0 || !est || !pol || !t)
		return cm_err_set(err, CM_EINVAL, "scheduler: missing argument");
	if (pol->kind != SCHED_POLICY_COST && pol->kind != SCHED_POLICY_ROUND_ROBIN &&
	    pol->kind != SCHED_POLICY_LEAST_REQUESTS)
		return cm_err_set(err, CM_EINVAL, "scheduler: unknown policy %d", (int)pol->kind);
	return CM_OK;
}

int sched_place(struct sched_worker *w, int n, const struct sched_estimate *est,
		struct sched_policy *pol, struct sched_ticket *t, struct cm_err *err)
{
	int rc = args_ok(w, n, est, pol, t, err);
	if (rc < 0)
		return rc;
	struct want q = {.est = est, .kind = pol->kind, .rr = pol->rr, .avoid = -1};
	int32_t e, d;
	if ((rc = pick_pair(w, n, &q, &e, &d, err)) < 0)
		return rc;
	ticket_make(t, e, d, est);
	ticket_charge(w, t);
	pol->rr++;
	return CM_OK;
}

static bool side_dead(const struct sched_worker *w, int n, int32_t i)
{
	return i < 0 || i >= n || !w[i].live;
}

int sched_replace(struct sched_worker *w, int n, const struct sched_estimate *est,
		  struct sched_policy *pol, struct sched_ticket *t, struct cm_err *err)
{
	int rc = args_ok(w, n, est, pol, t, err);
	if (rc < 0)
		return rc;
	bool de = side_dead(w, n, t->worker[SCHED_ENCODE]);
	bool dd = side_dead(w, n, t->worker[SCHED_DECODE]);
	if (!de && !dd)
		return CM_OK;
	struct want q = {.est = est, .kind = pol->kind, .rr = pol->rr, .avoid = -1};
	int32_t e = t->worker[SCHED_ENCODE], d = t->worker[SCHED_DECODE];
	if (de && dd) {
		rc = pick_pair(w, n, &q, &e, &d, err);
	} else {
		q.avoid = de ? d : e;
		rc = pick_side(w, n, de ? SCHED_ENCODE : SCHED_DECODE, &q, de ? &e : &d, err);
	}
	if (rc < 0)
		return rc;
	sched_ticket_finish(w, n, t);
	ticket_make(t, e, d, est);
	ticket_charge(w, t);
	pol->rr++;
	return CM_OK;
}

int sched_ticket_update(struct sched_worker *w, int n, struct sched_ticket *t, enum sched_phase ph,
			const struct sched_cost *done, const struct sched_cost *left)
{
	if ((ph != SCHED_ENCODE && ph != SCHED_DECODE) || t->worker[ph] < 0 || t->worker[ph] >= n)
		return CM_EINVAL;
	struct sched_worker *x = &w[t->worker[ph]];
	struct sched_cost nl = t->left[ph];
	if (left) {
		nl = *left;
	} else if (done) {
		nl.flops = sub0(nl.flops, done->flops);
		nl.weight_bytes = sub0(nl.weight_bytes, done->weight_bytes);
		nl.kv_read_bytes = sub0(nl.kv_read_bytes, done->kv_read_bytes);
		nl.kv_write_bytes = sub0(nl.kv_write_bytes, done->kv_write_bytes);
	}
	double kv = t->kv[ph];
	if (left && !(ph == SCHED_ENCODE && t->worker[0] == t->worker[1]))
		kv = left->kv_hold_bytes;
	charge(x, &t->left[ph], t->kv[ph], -1);
	charge(x, &nl, kv, 1);
	t->left[ph] = nl;
	t->kv[ph] = kv;
	if (done)
		x->done_flops += done->flops;
	return CM_OK;
}

static void release(struct sched_worker *x)
{
	if (--x->requests > 0)
		return;
	/* idle: clear what rounding left behind */
	x->requests = 0;
	x->outstanding_flops = x->outstanding_bytes = x->load_s = x->kv_used = 0;
}

void sched_ticket_finish(struct sched_worker *w, int n, struct sched_ticket *t)
{
	int32_t e = t->worker[SCHED_ENCODE], d = t->worker[SCHED_DECODE];
	for (int p = 0; p < 2; p++)
		if (t->worker[p] >= 0 && t->worker[p] < n)
			charge(&w[t->worker[p]], &t->left[p], t->kv[p], -1);
	if (e >= 0 && e < n)
		release(&w[e]);
	if (d >= 0 && d < n && d != e)
		release(&w[d]);
	*t = (struct sched_ticket){.worker = {-1, -1}};
}

/* ---- metrics --------------------------------------------------------------- */

static const struct sched_metric metrics[SCHED_N_METRICS] = {
	{"tandem_scheduler_projected_load_seconds", "gauge",
	 "Seconds of placed, unfinished work on a worker at its measured speed (projection)."},
	{"tandem_scheduler_outstanding_flops", "gauge",
	 "FLOPs of placed work a worker has not done yet (estimates refined by reports)."},
	{"tandem_scheduler_outstanding_bytes", "gauge",
	 "Memory traffic (weights and KV) of placed work a worker has not done yet."},
	{"tandem_scheduler_executed_flops_total", "counter", "FLOPs a worker reported done."},
	{"tandem_scheduler_requests", "gauge",
	 "Requests with a side (encode, decode or both) placed on a worker."},
	{"tandem_scheduler_kv_reserved_bytes", "gauge",
	 "KV memory the scheduler has reserved on a worker for placed requests."},
	{"tandem_scheduler_kv_capacity_bytes", "gauge",
	 "KV memory a worker reported at start-up (0: unknown, no limit)."},
	{"tandem_scheduler_capacity_flops_per_second", "gauge",
	 "FLOP/s a worker measured at start-up."},
	{"tandem_scheduler_capacity_bytes_per_second", "gauge",
	 "Memory bandwidth a worker measured at start-up."},
};

const struct sched_metric *sched_metric(int i)
{
	return i >= 0 && i < SCHED_N_METRICS ? &metrics[i] : NULL;
}

double sched_metric_value(const struct sched_worker *w, int i)
{
	switch (i) {
	case 0:
		return w->load_s;
	case 1:
		return w->outstanding_flops;
	case 2:
		return w->outstanding_bytes;
	case 3:
		return w->done_flops;
	case 4:
		return w->requests;
	case 5:
		return w->kv_used;
	case 6:
		return w->cap.kv_bytes;
	case 7:
		return w->cap.flop_rate;
	case 8:
		return w->cap.bandwidth;
	}
	return 0;
}
