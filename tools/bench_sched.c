/* tandem bench scheduler: the plan simulator (scheduler/sim.c, the library the
 * coordinator places with) runs one synthetic workload per cluster through the
 * scheduler's cost policy and the two baselines, round robin and least
 * requests, and reports load imbalance and finish times (docs/scheduler.md).
 *
 * Clusters (--sched-cluster): "1,1,0.5,2/e1,e0.5,d1,d1,d0.5,d2" is two runs, a
 * `both` layout of four workers and a split layout of two encode and four
 * decode workers; SPEED multiplies a 1x worker (BS_FLOPS, BS_BW, BS_KV). The
 * cost model is that of --model DIR's config.json, else Qwen3-1.7B's shape. */
#include "model/md.h"
#include "scheduler/sched.h"
#include "tools.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define BS_FLOPS 100e12 /* a 1x worker: FLOP/s, memory bytes/s, KV bytes */
#define BS_BW	 600e9
#define BS_KV	 16e9

struct bs_cluster {
	char spec[256];
	struct sched_sim_worker w[SCHED_SIM_MAX_WORKERS];
	double speed[SCHED_SIM_MAX_WORKERS];
	int n;
	bool split;
};

/* Parses one cluster "[b|e|d]SPEED,..." of length len. */
static int parse_cluster(const char *s, size_t len, struct bs_cluster *c, struct cm_err *err)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->spec, sizeof(c->spec), "%.*s", (int)CM_MIN(len, sizeof(c->spec) - 1), s);
	const char *p = c->spec;
	while (*p) {
		enum sched_role role = SCHED_ROLE_BOTH;
		if (*p == 'b' || *p == 'e' || *p == 'd')
			role = *p == 'e' ? SCHED_ROLE_ENCODE
			       : *p == 'd' ? SCHED_ROLE_DECODE
					   : SCHED_ROLE_BOTH;
		p += *p == 'b' || *p == 'e' || *p == 'd';
		char *end;
		double v = strtod(p, &end);
		if (end == p || (*end && *end != ',') || !(v > 0 && v <= 1000))
			return cm_err_set(err, CM_EINVAL,
					  "--sched-cluster: bad worker in '%s' (want [b|e|d]SPEED, "
					  "SPEED in (0, 1000])", c->spec);
		if (c->n == SCHED_SIM_MAX_WORKERS)
			return cm_err_set(err, CM_EINVAL, "--sched-cluster: more than %d workers",
					  SCHED_SIM_MAX_WORKERS);
		c->speed[c->n] = v;
		c->w[c->n++] = (struct sched_sim_worker){
			.role = role, .cap = {BS_FLOPS * v, BS_BW * v, BS_KV * v}};
		c->split |= role != SCHED_ROLE_BOTH;
		p = *end ? end + 1 : end;
	}
	bool enc = false, dec = false;
	for (int i = 0; i < c->n; i++) {
		enc |= c->w[i].role != SCHED_ROLE_DECODE;
		dec |= c->w[i].role != SCHED_ROLE_ENCODE;
	}
	if (!enc || !dec)
		return cm_err_set(err, CM_EINVAL, "--sched-cluster: '%s' has no %s worker", c->spec,
				  enc ? "decode (or both)" : "encode (or both)");
	return CM_OK;
}

static const char *role_name(enum sched_role r)
{
	return r == SCHED_ROLE_ENCODE ? "encode" : r == SCHED_ROLE_DECODE ? "decode" : "both";
}

static json_t *result_json(const struct bs_cluster *c, enum sched_policy_kind k,
			   const struct sched_sim_result *r)
{
	json_t *ws = json_array();
	for (int i = 0; i < c->n; i++)
		json_array_append_new(ws, json_pack("{s:s, s:f, s:f, s:f, s:i}", "role",
						    role_name(c->w[i].role), "speed", c->speed[i],
						    "load_mean_s", r->load_mean[i], "busy",
						    r->busy[i], "sides", r->sides[i]));
	return json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:o}", "policy",
			 sched_policy_name(k), "imbalance", r->imbalance, "imbalance_both",
			 r->imbalance_role[SCHED_ROLE_BOTH], "imbalance_encode",
			 r->imbalance_role[SCHED_ROLE_ENCODE], "imbalance_decode",
			 r->imbalance_role[SCHED_ROLE_DECODE], "finish_mean_s", r->finish_mean,
			 "finish_p50_s", r->finish_p50, "finish_p99_s", r->finish_p99,
			 "wait_mean_s", r->wait_mean, "makespan_s", r->makespan, "workers", ws);
}

static void print_rows(const struct bs_cluster *c, const struct sched_sim_result *r)
{
	for (int k = 0; k < 3; k++)
		printf("%-6s %-28s %-15s %9.3f %10.3f %8.3f %8.3f\n", k ? "" : c->split ? "split" : "both",
		       k ? "" : c->spec, sched_policy_name((enum sched_policy_kind)k),
		       r[k].imbalance, r[k].finish_mean, r[k].finish_p50, r[k].finish_p99);
	double bi = CM_MIN(r[1].imbalance, r[2].imbalance);
	double bp = CM_MIN(r[1].finish_p99, r[2].finish_p99);
	printf("%-6s %-28s cost vs the better baseline: imbalance %+.1f%%, p99 finish %+.1f%%; "
	       "%.2f requests/s\n\n",
	       "", "", 100 * (r[0].imbalance / bi - 1), 100 * (r[0].finish_p99 / bp - 1), r[0].rate);
}

/* Runs the three policies on one cluster. */
static int run_cluster(const struct tandem_opts *o, const struct md_config *cfg,
		       const struct bs_cluster *c, json_t *list, struct cm_err *err)
{
	struct sched_sim_params p = sched_sim_default_params();
	struct sched_sim_result r[3];
	p.cfg = cfg;
	p.workers = c->w;
	p.n_workers = c->n;
	p.seed = (uint64_t)o->seed;
	p.n_requests = (int32_t)o->sched_requests;
	p.load = o->sched_load;
	for (int k = 0; k < 3; k++) {
		int rc = sched_sim_run(&p, (enum sched_policy_kind)k, &r[k], err);
		if (rc < 0)
			return rc;
	}
	if (!o->json) {
		print_rows(c, r);
		return CM_OK;
	}
	json_t *pol = json_array();
	for (int k = 0; k < 3; k++)
		json_array_append_new(pol, result_json(c, (enum sched_policy_kind)k, &r[k]));
	json_array_append_new(list, json_pack("{s:s, s:s, s:f, s:o}", "layout",
					      c->split ? "split" : "both", "cluster", c->spec,
					      "rate_per_s", r[0].rate, "policies", pol));
	return CM_OK;
}

/* Qwen3-1.7B (algorithms.md §0.2). */
static void default_shape(struct md_config *cfg)
{
	*cfg = (struct md_config){.hidden = 2048,
				  .intermediate = 6144,
				  .n_layer = 28,
				  .n_head = 16,
				  .n_kv_head = 8,
				  .head_dim = 128,
				  .vocab = 151936};
	snprintf(cfg->model_type, sizeof(cfg->model_type), "qwen3-1.7b shape");
}

static void print_header(const struct tandem_opts *o, const struct md_config *cfg)
{
	struct sched_sim_params d = sched_sim_default_params();
	printf("tandem bench scheduler: plan simulator, %lld requests per run, offered load %.2f, "
	       "seed %lld\n",
	       (long long)o->sched_requests, o->sched_load, (long long)o->seed);
	printf("model: %s (%d layers, d %d, d_ff %d, %d/%d heads); bf16 weights and KV, "
	       "weight reads shared by %d sequences\n",
	       cfg->model_type, cfg->n_layer, cfg->hidden, cfg->intermediate, cfg->n_head,
	       cfg->n_kv_head, d.cost.batch);
	printf("1x worker: %.0f TFLOP/s, %.0f GB/s, %.0f GB KV; source lognormal median %.0f "
	       "(sigma %.1f), %d-token units, unit budget %d, final budget %d/%d/%d, a median "
	       "%.0f%% of the budget used\n",
	       BS_FLOPS / 1e12, BS_BW / 1e9, BS_KV / 1e9, d.source_median, d.source_sigma,
	       d.unit_tokens, d.unit_budget, d.final_budget[0], d.final_budget[1],
	       d.final_budget[2], 100 * d.think_median);
	printf("imbalance: mean over arrivals of max/mean seconds of placed work per role pool; "
	       "finish: s from arrival to the last token\n\n");
	printf("%-6s %-28s %-15s %9s %10s %8s %8s\n", "layout", "cluster", "policy", "imbalance",
	       "finish mean", "p50", "p99");
}

#define BS_MAX_CLUSTERS 8

/* Parses --sched-cluster into c[*n]. */
static int parse_clusters(const char *s, struct bs_cluster *c, int *n, struct cm_err *err)
{
	*n = 0;
	while (s && *s) {
		size_t len = strcspn(s, "/");
		if (*n == BS_MAX_CLUSTERS)
			return cm_err_set(err, CM_EINVAL, "--sched-cluster: more than %d clusters",
					  BS_MAX_CLUSTERS);
		int rc = parse_cluster(s, len, &c[(*n)++], err);
		if (rc < 0)
			return rc;
		s += len + (s[len] == '/');
	}
	if (!*n)
		return cm_err_set(err, CM_EINVAL, "--sched-cluster: no cluster given");
	return CM_OK;
}

int tool_bench_sched(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	struct cm_err err = {0};
	struct md_config cfg;
	struct bs_cluster *cl = calloc(BS_MAX_CLUSTERS, sizeof(*cl));
	int n_cl = 0, rc = cl ? CM_OK : cm_err_set(&err, CM_ENOMEM, "out of memory");
	if (argc) {
		free(cl);
		fprintf(stderr, "tandem bench scheduler: no positional arguments\n");
		return 1;
	}
	if (rc == CM_OK)
		rc = parse_clusters(o->sched_cluster, cl, &n_cl, &err);
	if (rc == CM_OK && o->model)
		rc = md_config_load(o->model, &cfg, &err);
	else if (rc == CM_OK)
		default_shape(&cfg);
	json_t *list = json_array();
	if (rc == CM_OK && !o->json)
		print_header(o, &cfg);
	for (int i = 0; rc == CM_OK && i < n_cl; i++)
		rc = run_cluster(o, &cfg, &cl[i], list, &err);
	if (rc == CM_OK && o->json) {
		json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:f, s:o}", "mode", "scheduler", "model",
				      cfg.model_type, "seed", (json_int_t)o->seed, "requests",
				      (json_int_t)o->sched_requests, "load", o->sched_load,
				      "clusters", json_incref(list));
		char *txt = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
		if (txt)
			puts(txt);
		free(txt);
		json_decref(j);
	}
	json_decref(list);
	free(cl);
	if (rc < 0) {
		fprintf(stderr, "tandem bench scheduler: %s\n", err.msg);
		return rc == CM_ENOMEM || rc == CM_EINTERNAL ? 2 : 1;
	}
	return 0;
}
