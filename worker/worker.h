/* worker process: `tandem worker`. One engine on one device behind the ZeroMQ
 * link to the coordinator: it registers (Hello with the protocol version and its
 * capabilities), loads the model the coordinator names (or its own --model),
 * runs the engine's batching loop, streams each step's tokens back and sends a
 * heartbeat with its load. When the coordinator restarts or goes silent it drops
 * its requests (the coordinator re-places them) and registers again.
 *
 * Roles: "both" runs whole requests. "encode" prefills the source units of
 * split requests and ships their KV to the request's decode worker over the KV
 * link (worker/kvlink.h), keeping it until the request ends; "decode" runs
 * split requests' reasoning on the KV it receives (and whole Generate
 * requests). Capacities (FLOP/s of the dot product its matmuls use, read
 * bandwidth) are measured at start-up in about 0.2 s unless given.
 *
 * Threads: wk_worker_run runs on the calling thread; the backend's pool does the
 * math.
 *
 *     struct wk_worker_params p = wk_worker_default_params();
 *     p.coordinator = "tcp://127.0.0.1:5557"; p.stop = &stop_flag;
 *     if (wk_worker_run(&p, &err) < 0) fprintf(stderr, "%s\n", err.msg);
 */
#ifndef TANDEM_WK_WORKER_H
#define TANDEM_WK_WORKER_H

#include "common/cm.h"
#include "worker/wk.h"

#include <signal.h>

struct wk_worker_params {
	const char *coordinator;	/* "tcp://host:port" or "host:port" */
	const char *model;		/* NULL: the folder the coordinator names */
	const char *role;		/* "both", "encode" or "decode" (docs/disaggregation.md) */
	const char *kv_listen;		/* encode / decode: where the KV link binds,
					 * "tcp://HOST:PORT" (port 0: any free one) */
	double peak_gflops;		/* capacity reported to the scheduler; 0: measured */
	double read_gbps;		/* memory read bandwidth, GB/s; 0: measured */
	const char *device;		/* "cpu" */
	const char *id;			/* NULL: "<host>-<pid>" */
	int threads;			/* 0: every online CPU */
	bool bf16_activations;		/* bf16 dot products in the matmuls and attention
					 * (a CPU with AVX512_BF16; docs/performance.md) */
	enum wk_weights weights;	/* where the weight matrices live (wk_model_convert) */
	int max_seqs;			/* sequences at once; 0: the engine's default */
	int kv_tokens;			/* KV pool in tokens; 0: the engine's default */
	int64_t heartbeat_ms;		/* between heartbeats */
	int64_t coordinator_timeout_ms; /* silence after which it registers again */
	volatile sig_atomic_t *stop;	/* set by a signal handler to stop */
};

struct wk_worker_params wk_worker_default_params(void);

/* Runs until *p->stop is set. Errors before serving (bad role or device, a model
 * that fails to load, the coordinator rejecting the protocol version) come back
 * as CM_EINVAL, CM_EUNSUPPORTED, CM_EPROTO or the loader's codes. */
int wk_worker_run(const struct wk_worker_params *p, struct cm_err *err);

#endif
