/* scheduler: where a request runs. Pure logic, no I/O, deterministic: the same
 * inputs give the same placement, so the plan simulator (sched_sim_run, `tandem
 * bench scheduler`) and a live cluster agree.
 *
 * - cost model (algorithms.md §0.2, §6.3): a request's work per phase in FLOPs
 *   and bytes from the model shape and token counts, with SkipGPT execute
 *   rates and VisiPruner vision keep ratios (default 1);
 * - workers: role, capacities measured at start-up, outstanding work and KV;
 * - placement: the encode and the decode side of a request (or both on one
 *   `both` worker) that minimise its projected finish time subject to KV memory;
 *   round robin and least requests as baselines; re-placement when a worker dies;
 * - accounting: a ticket per request records what is charged to its workers;
 *   progress and exact figures reported by workers replace the estimates;
 * - metrics: per-worker figures for the coordinator's /metrics.
 *
 * Ownership: the caller owns every array and struct; nothing is kept between
 * calls (round robin's cursor lives in the caller's struct sched_policy).
 * Threads: reentrant; calls on the same workers array need the caller's lock.
 *
 *     struct sched_params p = sched_default_params();
 *     struct sched_req r = {.source = n_src,
 *                           .gen = sched_gen_tokens(n_units, ub, fb, max_tokens)};
 *     struct sched_estimate est;
 *     sched_req_estimate(&cfg, &p, &r, &est, &err);
 *     struct sched_policy pol = {.kind = SCHED_POLICY_COST};
 *     struct sched_ticket t;
 *     if (sched_place(w, n, &est, &pol, &t, &err) < 0)  // CM_EAGAIN, CM_EFULL
 *             ... wait and retry ...
 *     // t.worker[SCHED_ENCODE] encodes, t.worker[SCHED_DECODE] reasons (equal: one
 *     // `both` worker). A worker reports progress:
 *     r.gen_done = tokens_so_far;
 *     sched_req_estimate(&cfg, &p, &r, &est, &err);  // the remaining work
 *     sched_ticket_update(w, n, &t, SCHED_DECODE, &exact_done, &est.phase[SCHED_DECODE]);
 *     // a worker died: its side moves (est = the request's work from now on)
 *     sched_replace(w, n, &est, &pol, &t, &err);
 *     sched_ticket_finish(w, n, &t);              // the request ended
 */
#ifndef TANDEM_SCHED_H
#define TANDEM_SCHED_H

#include "common/cm.h"
#include "model/md.h"

/* ---- cost model ----------------------------------------------------------- */

/* Phases: encode = source prefill on the encode side; decode = reasoning and
 * answer tokens on the decode side (attention over the source read so far and
 * the tokens generated); both = the two on one worker (no KV link). */
enum sched_phase { SCHED_ENCODE = 0, SCHED_DECODE = 1, SCHED_BOTH = 2 };

/* How the cost model turns tokens into bytes. */
struct sched_params {
	double weight_bytes; /* bytes per stored weight: 2 bf16, 4 f32, 1.0625 q8_0 */
	double kv_bytes;     /* bytes per KV element (b of §0.2) */
	int32_t batch;	     /* sequences sharing one step's weight read (>= 1) */
	int32_t chunk;	     /* source tokens per prefill step (>= 1) */
};

/* weight_bytes 2, kv_bytes 2, batch 8, chunk 32. */
struct sched_params sched_default_params(void);

/* One request as the cost model sees it. Counts are tokens; the cost counts
 * the tokens not done yet: source [source_done, source), generated
 * [gen_done, gen). The *_done fields are 0 for a new request's estimate. */
struct sched_req {
	int64_t source;	     /* S: source (input or prompt) tokens, vision included */
	int64_t vision;	     /* image tokens among them (VisiPruner prunes these) */
	int64_t gen;	     /* T: generated tokens (reasoning and answer), expected */
	int64_t gen_stream;  /* of which written while the source streams in: token t <
			      * gen_stream sees source * (t + 1) / gen_stream tokens;
			      * 0 (batch, generate): every token sees all the source */
	int64_t source_done; /* source tokens already encoded */
	int64_t gen_done;    /* tokens already generated */
	const double *rho_attn; /* [n_layer] SkipGPT attention execute rate; NULL: all 1 */
	const double *rho_mlp;	/* [n_layer] SkipGPT MLP execute rate; NULL: all 1 */
	const double *keep;	/* [n_layer] share of the vision tokens still in the
				 * sequence at layer l (VisiPruner n_l); NULL: all 1 */
};

/* The work of one phase. Memory traffic (the roofline's bytes) is
 * weight_bytes + kv_read_bytes + kv_write_bytes. */
struct sched_cost {
	double flops;
	double weight_bytes;   /* this request's share of the weights read per step */
	double kv_read_bytes;  /* KV read by attention */
	double kv_write_bytes; /* KV written */
	double kv_hold_bytes;  /* KV memory the phase's worker holds for the request
				* (whole request, not only what is left) */
	double link_bytes;     /* encode: source KV still to ship to the decode side
				* (|u| * 2 * L * n_kv * d_h * b summed over units) */
};

struct sched_estimate {
	struct sched_cost phase[3]; /* [enum sched_phase]; both = sum, no link */
};

/* Fills est with the cost of r's remaining work per phase (formulas in
 * docs/scheduler.md). Per token and layer l with c visible keys:
 *   F = F_router + F_kv + rho_a,l * (F_q + F_o + F_att(c)) + rho_m,l * F_mlp
 * plus F_head per generated token; the encode side has no LM head. Errors:
 * CM_EINVAL (negative counts, done beyond the total, rates outside [0, 1], bad
 * params or model shape); est is written only on success. */
int sched_req_estimate(const struct md_config *cfg, const struct sched_params *p,
		       const struct sched_req *r, struct sched_estimate *est, struct cm_err *err);

/* Expected generated tokens of a streaming request: n_units * unit_budget +
 * final_budget (0 budgets: the engine's 64 and 256), at most max_tokens when
 * max_tokens > 0. */
int64_t sched_gen_tokens(int64_t n_units, int32_t unit_budget, int32_t final_budget,
			 int32_t max_tokens);

/* KV bytes of one token over all layers: 2 * L * n_kv * d_h * kv_bytes. */
double sched_kv_token_bytes(const struct md_config *cfg, const struct sched_params *p);

/* ---- workers -------------------------------------------------------------- */

/* Values as in proto/internal.proto's Role. */
enum sched_role { SCHED_ROLE_BOTH = 0, SCHED_ROLE_ENCODE = 1, SCHED_ROLE_DECODE = 2 };

/* What a worker measures at start-up and reports in its hello. A zero is
 * unknown: a term without its rate is left out of the roofline (with neither,
 * time is FLOPs at 1 FLOP/s: least outstanding FLOPs); no KV size, no limit. */
struct sched_capacity {
	double flop_rate; /* FLOP/s */
	double bandwidth; /* memory bytes/s */
	double kv_bytes;  /* KV memory; from tokens: kv_tokens * sched_kv_token_bytes() */
};

/* One worker as the scheduler sees it; the library keeps the accounting
 * fields (outstanding_*, load_s, kv_used, done_flops, requests). */
struct sched_worker {
	bool live;		  /* registered, model loaded, heart-beating */
	int32_t requests;	  /* requests with a side placed here and not finished */
	int32_t max_seqs;	  /* sequences it runs at once (0: unknown) */
	double outstanding_flops; /* FLOPs of placed work not yet done */
	enum sched_role role;
	struct sched_capacity cap;
	double outstanding_bytes; /* memory traffic of placed work not yet done */
	double load_s;		  /* projected seconds of placed work not yet done */
	double kv_used;		  /* KV bytes reserved by placed requests */
	double done_flops;	  /* FLOPs reported done (a counter) */
};

/* Seconds c takes on a worker of capacity cap: the roofline
 * max(flops / flop_rate, bytes / bandwidth). */
double sched_cost_seconds(const struct sched_cost *c, const struct sched_capacity *cap);

/* ---- placement and accounting -------------------------------------------- */

enum sched_policy_kind {
	SCHED_POLICY_COST = 0,	     /* least projected finish time (FLOP/byte aware) */
	SCHED_POLICY_ROUND_ROBIN,    /* baseline: each side in turn */
	SCHED_POLICY_LEAST_REQUESTS, /* baseline: fewest requests */
};

struct sched_policy {
	enum sched_policy_kind kind;
	uint64_t rr; /* round robin's cursor, advanced by each placement */
};

/* "cost", "round-robin", "least-requests". */
const char *sched_policy_name(enum sched_policy_kind kind);

/* What a placed request is charged: [SCHED_ENCODE] and [SCHED_DECODE]. */
struct sched_ticket {
	int32_t worker[2];	    /* worker indices; equal: the whole request on one
				     * `both` worker; -1: not placed */
	struct sched_cost left[2];  /* work charged and not done */
	double kv[2];		    /* KV bytes reserved on each side */
};

/* Chooses the workers of a request of cost est and charges them (requests,
 * outstanding work, load_s, KV), writing t. Candidates are live workers whose
 * role fits the side and whose free KV holds the side's kv_hold_bytes. Layouts:
 * with only `both` workers live the request is placed whole; once an encode or
 * decode worker is live it is split (encode | both) x (decode | both), a
 * `both` worker may still take both sides. SCHED_POLICY_COST minimises
 * max(finish_e, finish_d), then finish_e + finish_d, where the projected finish
 * of a side of t = sched_cost_seconds on a worker is t + min(load_s,
 * requests * t): the new sequence shares each batched step with those placed,
 * each delaying it by at most its own remaining work or t; then fewer
 * requests, then lower indices. Errors:
 * CM_EINVAL (bad arguments), CM_EAGAIN (no live worker for a side), CM_EFULL
 * (no worker with room for the KV); w and t are unchanged on error. */
int sched_place(struct sched_worker *w, int n, const struct sched_estimate *est,
		struct sched_policy *pol, struct sched_ticket *t, struct cm_err *err);

/* Moves the sides of t whose worker is no longer live (or was removed) to new
 * workers, as sched_place would choose but never onto t's surviving worker;
 * est is the request's work from now on (e.g. the whole decode again after a
 * decode worker died, the whole encode after an encode worker died). The
 * surviving side is kept and recharged with est; the dead side's charge is
 * dropped. Nothing to move: CM_OK, no change. Errors as sched_place. */
int sched_replace(struct sched_worker *w, int n, const struct sched_estimate *est,
		  struct sched_policy *pol, struct sched_ticket *t, struct cm_err *err);

/* A worker reported progress on phase ph (SCHED_ENCODE or SCHED_DECODE) of t:
 * done (may be NULL) is the exact work done since its last report (counted in
 * done_flops); left (may be NULL) replaces the charge with the remaining
 * estimate, e.g. sched_req_estimate with the *_done counts, else the charge
 * shrinks by done. Errors: CM_EINVAL (bad phase, t not placed there). */
int sched_ticket_update(struct sched_worker *w, int n, struct sched_ticket *t, enum sched_phase ph,
			const struct sched_cost *done, const struct sched_cost *left);

/* The request ended: its charges and KV leave its workers; t is unplaced. */
void sched_ticket_finish(struct sched_worker *w, int n, struct sched_ticket *t);

/* ---- metrics -------------------------------------------------------------- */

/* Per-worker series for /metrics, labelled by the caller with worker and role:
 *     for (int i = 0; i < SCHED_N_METRICS; i++) {
 *             const struct sched_metric *m = sched_metric(i);  // # HELP, # TYPE
 *             for each worker: name{...,worker="id"} sched_metric_value(&w, i)
 *     } */
struct sched_metric {
	const char *name; /* tandem_scheduler_<noun>_<unit> */
	const char *type; /* "gauge" | "counter" */
	const char *help;
};

#define SCHED_N_METRICS 9

/* The i-th metric (0 <= i < SCHED_N_METRICS), else NULL. */
const struct sched_metric *sched_metric(int i);
/* Its value for w (0 for a bad i). */
double sched_metric_value(const struct sched_worker *w, int i);

/* ---- plan simulator (sim.c) ------------------------------------------------ */

#define SCHED_SIM_MAX_WORKERS 64

struct sched_sim_worker {
	enum sched_role role;
	struct sched_capacity cap;
};

/* A synthetic workload on a cluster. Requests arrive as a Poisson process at
 * load times the cluster's rate; source tokens are lognormal; reasoning is
 * StreamingThinker's: unit_budget per unit of unit_tokens source tokens, then a
 * final budget drawn from final_budget[] (depths), of which a request uses a
 * lognormal share (think_median) that the scheduler does not know. */
struct sched_sim_params {
	const struct md_config *cfg;
	struct sched_params cost;
	const struct sched_sim_worker *workers; /* [n_workers] */
	int32_t n_workers;
	uint64_t seed;
	int32_t n_requests;
	double load;			       /* offered load in (0, 2] */
	double source_median, source_sigma;    /* lognormal source tokens */
	int32_t source_max;		       /* source tokens at most */
	int32_t unit_tokens, unit_budget;
	int32_t final_budget[3];
	double think_median, think_sigma; /* share of the budget really generated */
	double report_s;		  /* seconds between workers' progress reports */
};

/* 2000 requests, load 0.8, source median 400 (sigma 1, at most 8192), units of
 * 25 tokens, unit budget 32, final budgets 64/256/1024, think share median 0.5
 * (sigma 0.5), reports every 0.2 s, seed 1; cfg and workers unset. */
struct sched_sim_params sched_sim_default_params(void);

struct sched_sim_result {
	int32_t n_requests;
	double rate;	    /* arrivals per second */
	double imbalance;   /* mean over arrivals of max/mean load (true seconds of placed
			     * work not done) within each role pool, pools weighted by load */
	double imbalance_role[3]; /* [enum sched_role] the same per pool (0: under 2
				   * workers or never loaded) */
	double finish_mean; /* s from arrival to the last token */
	double finish_p50, finish_p99;
	double wait_mean; /* s queued for KV room */
	double makespan;  /* s to the last finish */
	int32_t n_workers;
	double load_mean[SCHED_SIM_MAX_WORKERS]; /* time-averaged load, s */
	double busy[SCHED_SIM_MAX_WORKERS];	 /* share of the makespan with work */
	int32_t sides[SCHED_SIM_MAX_WORKERS];	 /* request sides placed on each worker */
};

/* Runs the workload of p through placement policy kind with the library's own
 * placement and accounting. The true costs (the drawn token counts) drive a
 * model of batched engines: each step gives every decoding request one token
 * and every encoding one a chunk, reads the weights once and takes
 * max(FLOPs / flop_rate, bytes / bandwidth). The offered load is relative to
 * the cost model's nominal capacity (weights shared by cost.batch sequences).
 * Deterministic for a seed; the same seed gives every policy the same
 * requests. Errors: CM_EINVAL (bad params, a side without any worker, a
 * request larger than every worker's KV), CM_ENOMEM. */
int sched_sim_run(const struct sched_sim_params *p, enum sched_policy_kind kind,
		  struct sched_sim_result *res, struct cm_err *err);

#endif
