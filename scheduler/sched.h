/* scheduler: where a request runs. Pure logic, no I/O, deterministic: the same
 * inputs give the same placement, so the `plan` simulator and a live cluster
 * agree.
 *
 * This first version places a request on the live worker with the least
 * outstanding work (estimated FLOPs of the requests placed on it and not
 * finished), ties broken by fewer requests, then by the lower index. The cost of
 * a request comes from the model shape (sched_flops_per_token).
 *
 * Ownership: the caller owns every array; nothing is kept between calls.
 * Threads: reentrant.
 *
 *     struct sched_worker w[n] = ...;   // the registry's view
 *     double cost = sched_req_cost(&cfg, n_input, max_tokens);
 *     int i = sched_req_place(w, n, cost);   // -1: no live worker
 *     w[i].outstanding_flops += cost; ...
 */
#ifndef TANDEM_SCHED_H
#define TANDEM_SCHED_H

#include "common/cm.h"
#include "model/md.h"

/* One worker as the scheduler sees it. */
struct sched_worker {
	bool live;		  /* registered, model loaded, heart-beating */
	int32_t requests;	  /* requests placed and not finished */
	int32_t max_seqs;	  /* sequences it runs at once (0: unknown) */
	double outstanding_flops; /* FLOPs of placed work not yet done */
};

/* FLOPs of one token through the dense model (2 per weight of every matmul,
 * embedding lookup excluded, LM head included); attention scores excluded. */
double sched_flops_per_token(const struct md_config *cfg);

/* Predicted cost of a request: n_tokens prompt/input tokens plus max_tokens
 * generated, each at sched_flops_per_token. */
double sched_req_cost(const struct md_config *cfg, int64_t n_tokens, int64_t max_tokens);

/* The index of the live worker to place a request on, or -1 when none is live. */
int sched_req_place(const struct sched_worker *w, int n);

#endif
