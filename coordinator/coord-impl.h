/* coordinator internals: the adapters (gRPC server, ZeroMQ link, libevent HTTP)
 * as our own types, and the server state shared by server.c, request.c,
 * registry.c and metrics.c. Everything here runs on the coordinator's one
 * event-loop thread. */
#ifndef TANDEM_COORD_IMPL_H
#define TANDEM_COORD_IMPL_H

#include "coord.h"
#include "model/md.h"
#include "proto/internal.pb.h"
#include "proto/tandem.pb.h"
#include "scheduler/sched.h"

#include <stdio.h>
#include <string.h>

#define COORD_RPC_MAX_QUEUED 4096 /* messages queued to one slow client at most */
#define COORD_MAX_WORKERS    64
#define COORD_PEER_MAX	     256       /* ZeroMQ routing id bytes */
#define COORD_MAX_MSG	     (2 << 20) /* gRPC receive limit, bytes */
#define COORD_MAX_PROMPT                                                                           \
	(sizeof(((tandem_internal_v1_Start *)0)->prompt) / sizeof(int32_t)) /* Generate tokens */
#define COORD_MAX_UNIT	      (sizeof(((tandem_internal_v1_Unit *)0)->ids) / sizeof(int32_t))
#define COORD_LOAD_TIMEOUT_MS 300000 /* a worker loading its model may stay silent this long */

/* Copies src into dst[cap], cut to fit (nanopb strings are fixed arrays). */
static inline void coord__strcpy(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = 0;
}

/* ---- gRPC server adapter (grpc_server.c) --------------------------------- */

enum coord_method {
	COORD_M_UNKNOWN = 0,
	COORD_M_THINK,
	COORD_M_GENERATE,
	COORD_M_MODEL_INFO,
	COORD_M_LOAD,
	COORD_M_ABORT,
};

enum coord_rpc_ev_type {
	COORD_RPC_NEW,	      /* a call arrived (method known) */
	COORD_RPC_MSG,	      /* a message: data/len valid until the next poll */
	COORD_RPC_HALF_CLOSE, /* the client sends nothing more */
	COORD_RPC_GONE,	      /* cancelled, deadline passed or broken: drop the rpc */
};

struct coord_rpc;
struct coord_grpc;

struct coord_rpc_ev {
	enum coord_rpc_ev_type type;
	struct coord_rpc *rpc;
	enum coord_method method;
	const uint8_t *data;
	size_t len;
	bool deadline; /* GONE: the deadline had passed */
};

/* Listens on host:port (0: any; the bound port in *bound). */
struct coord_grpc *coord_grpc_new(const char *host, int port, int max_msg, int *bound,
				  struct cm_err *err);
/* Stops listening, cancels every call and frees; finish or release every rpc first. */
void coord_grpc_free(struct coord_grpc *g);
/* Waits at most timeout_us for one event: 1 with *ev filled, 0 on timeout. */
int coord_grpc_poll(struct coord_grpc *g, int64_t timeout_us, struct coord_rpc_ev *ev);
/* Queues one message (copied). CM_EPEER once finished or gone; CM_EFULL finishes the
 * call with RESOURCE_EXHAUSTED when the client does not read. */
int coord_rpc_send(struct coord_rpc *r, const void *data, size_t len);
/* Queues the final status after the queued messages; the rpc is the adapter's after. */
void coord_rpc_finish(struct coord_rpc *r, int status, const char *msg);
/* After a GONE event: the app drops the rpc. */
void coord_rpc_release(struct coord_rpc *r);
enum coord_method coord_rpc_method(const struct coord_rpc *r);
int64_t coord_rpc_deadline(const struct coord_rpc *r); /* monotonic µs, 0: none */
void coord_rpc_set_ud(struct coord_rpc *r, void *ud);
void *coord_rpc_ud(const struct coord_rpc *r);

/* ---- ZeroMQ link to the workers (link.c) --------------------------------- */

struct coord_link;

struct coord_peer {
	char id[COORD_PEER_MAX];
	size_t len;
};

/* Binds a ROUTER on tcp://host:port (0: any; the bound port in *bound). */
struct coord_link *coord_link_new(const char *host, int port, int *bound, struct cm_err *err);
void coord_link_free(struct coord_link *l);
/* Waits at most timeout_ms for one message: 1 with *peer and *msg filled, 0 on
 * timeout, CM_EPROTO for a message that does not decode (dropped, logged). */
int coord_link_recv(struct coord_link *l, int timeout_ms, struct coord_peer *peer,
		    tandem_internal_v1_WorkerMsg *msg);
/* Sends msg to peer; a peer that is gone is not an error (logged). */
int coord_link_send(struct coord_link *l, const struct coord_peer *peer,
		    const tandem_internal_v1_CoordMsg *msg);

/* ---- HTTP plane (http.c) ------------------------------------------------- */

struct coord_http;
typedef bool (*coord_ready_fn)(void *ud);
typedef void (*coord_metrics_fn)(void *ud, FILE *f);

struct coord_http *coord_http_new(const char *host, int port, int *bound, coord_ready_fn ready,
				  coord_metrics_fn metrics, void *ud, struct cm_err *err);
void coord_http_free(struct coord_http *h);
/* Serves what is ready without blocking. */
void coord_http_poll(struct coord_http *h);

/* ---- public messages (api.c) --------------------------------------------- */

/* Decode and check one message; CM_EINVAL with a one-line message on bad input. */
int coord_api_decode(const pb_msgdesc_t *desc, const uint8_t *data, size_t len, void *out,
		     struct cm_err *err);
int coord_api_check_sampling(const tandem_v1_SamplingParams *s, int32_t vocab, struct cm_err *err);
int coord_api_check_open(const tandem_v1_Open *o, const char *model_name, int32_t vocab,
			 struct cm_err *err);
int coord_api_check_input(const tandem_v1_Input *in, int32_t vocab, struct cm_err *err);
int coord_api_check_ids(const int32_t *ids, size_t n, int32_t vocab, struct cm_err *err);
/* Encodes msg into buf (cap bytes); returns the length or CM_EINTERNAL. */
int coord_api_encode(const pb_msgdesc_t *desc, const void *msg, uint8_t *buf, size_t cap);

/* ---- metrics (metrics.c) ------------------------------------------------- */

#define COORD_HIST_MAX 24

struct coord_hist {
	const double *bounds; /* [n] upper bounds, increasing */
	int n;
	uint64_t counts[COORD_HIST_MAX]; /* per bucket, not cumulative */
	uint64_t count;
	double sum;
};

void coord_hist_init(struct coord_hist *h, const double *bounds, int n);
void coord_hist_add(struct coord_hist *h, double v);

struct coord_metrics {
	struct coord_hist ttft, first_answer, final_answer, e2e, queue, waited;
	uint64_t finished[8]; /* per FinishReason */
	uint64_t failed;      /* ended with an error status */
	uint64_t cancelled;   /* client went away or deadline passed */
	uint64_t replaced;    /* re-placed after a worker loss */
	uint64_t retargeted;  /* of which only the decode side moved (no re-encoding) */
	uint64_t thought_tokens, answer_tokens, input_tokens, prompt_tokens;
	uint64_t workers_lost;
};

void coord_metrics_init(struct coord_metrics *m);

/* ---- server state (server.c, request.c, registry.c) ---------------------- */

/* One registered worker; its scheduler view is c->sw at the same index. */
struct coord_worker {
	bool used, ready;
	struct coord_peer peer;
	char id[65];
	int32_t role; /* tandem_internal_v1_Role */
	char device[33];
	int64_t last_seen_us;
	int32_t kv_tokens, max_seqs;
	int64_t kv_bytes;	 /* its KV pool as it reports it */
	char kv_endpoint[257];	 /* its KV link ("": none, whole requests only) */
	bool nccl;		 /* it has the NCCL KV transport */
	uint64_t nccl_pairs;	 /* bit d: an NCCL communicator with worker d (as sender) */
	tandem_internal_v1_Heartbeat hb;
};

enum coord_req_state { COORD_REQ_WAIT_OPEN = 0, COORD_REQ_RUNNING, COORD_REQ_DONE };

struct coord_req {
	struct coord_req *prev, *next;
	uint64_t id; /* the coordinator's: on the wire to workers; a restart that starts a
		      * fresh sequence takes a new one (late events of the old are ignored) */
	char client_id[65];
	enum coord_method kind;
	struct coord_rpc *rpc; /* NULL once the client is gone */
	enum coord_req_state state;
	int32_t mode; /* wk_mode */
	tandem_internal_v1_Sampling sampling;
	int32_t stop_ids[32], n_stop;
	int32_t max_tokens, unit_budget, final_budget, depth;
	/* kept input: the units (or the generate prompt) as sent to the worker */
	int32_t *input; /* [n_input] every unit's ids back to back */
	int64_t n_input, cap_input;
	int64_t *unit_end; /* [n_units] end offset of each unit in input */
	int32_t n_units, cap_units;
	bool closed;		 /* Close received */
	int64_t n_client_tokens; /* tokens the client sent (before template) */
	struct md_seg *seg;
	char *instruct; /* the template's instruct + the system instruction */
	int worker;	/* index in workers of the decode side (or the whole request), -1
			 * when not placed */
	int enc;	/* index of the encode side of a split request; -1: whole */
	struct sched_ticket t; /* what the scheduler charged its workers */
	int32_t attempt;
	struct md_tok_stream ts;
	int32_t n_thought, n_answer, n_prompt;
	int64_t waited; /* client tokens received at the first thought; -1 before */
	int64_t t_open, t_placed, t_first, t_close, t_first_answer, t_last_answer; /* µs */
};

struct coord {
	const struct coord_params *p;
	struct md_tok *tok;
	struct md_config cfg;
	struct md_stop_ids stops;
	char model_name[128];
	char model_path[1024];
	int32_t max_input; /* input tokens per request at most */
	struct coord_grpc *grpc;
	struct coord_link *link;
	struct coord_http *http;
	struct coord_worker workers[COORD_MAX_WORKERS];
	struct sched_worker sw[COORD_MAX_WORKERS]; /* the scheduler's view of workers[] */
	struct sched_params sp;
	struct sched_policy pol;
	struct coord_req *reqs;
	int n_reqs;
	uint64_t next_id;
	struct coord_metrics m;
	/* scratch, sized once */
	tandem_v1_ThinkRequest *think_msg;
	tandem_v1_GenerateRequest *gen_msg;
	tandem_v1_ThinkEvent *ev;
	tandem_internal_v1_CoordMsg *cmsg;
	tandem_internal_v1_WorkerMsg *wmsg;
	uint8_t *buf; /* encode buffer */
	size_t buf_cap;
	char *text; /* token text, MD_TOK_STREAM_CAP */
	size_t text_cap;
};

/* request.c */
void coord__rpc_event(struct coord *c, const struct coord_rpc_ev *ev);
void coord__worker_events(struct coord *c, int w, const tandem_internal_v1_Events *evs);
void coord__worker_failed(struct coord *c, int w, const tandem_internal_v1_Failed *f);
/* The worker w is gone: re-place its requests or end them with UNAVAILABLE. */
void coord__worker_lost(struct coord *c, int w);
void coord__req_end_all(struct coord *c, int status, const char *msg);
struct coord_req *coord__req_find_client(struct coord *c, const char *client_id);
void coord__req_abort(struct coord *c, struct coord_req *r);

/* place.c: placement through scheduler/ and the messages that start, feed and
 * end a request on its workers (the encode side gets the units when split). */
void coord__sched_init(struct coord *c);
/* Places r and replays its kept input; CM_EAGAIN when no worker can take it. */
int coord__req_place(struct coord *c, struct coord_req *r);
/* Worker lost is gone (no longer live): moves r. *retargeted: only the decode
 * side moved and the encode worker ships its kept shard again; else r starts
 * afresh under a new id. CM_EAGAIN when no worker can take it (r is then
 * unplaced). */
int coord__req_replace(struct coord *c, struct coord_req *r, int lost, bool *retargeted);
void coord__unplace(struct coord *c, struct coord_req *r);
void coord__send_unit(struct coord *c, struct coord_req *r, int32_t k);
void coord__send_close(struct coord *c, struct coord_req *r);
void coord__send_abort(struct coord *c, struct coord_req *r);
/* r ended on its decode side: the encode worker of a split r frees the shard it
 * kept (an Abort, which it answers with a finish the coordinator ignores). */
void coord__release_encode(struct coord *c, struct coord_req *r);
/* A heartbeat of worker w: its requests' charges are re-estimated. */
void coord__progress(struct coord *c, int w);
/* Worker w left: no NCCL pair with it stays. */
void coord__nccl_forget(struct coord *c, int w);

/* registry.c */
void coord__link_message(struct coord *c, const struct coord_peer *peer,
			 const tandem_internal_v1_WorkerMsg *msg);
void coord__check_workers(struct coord *c);
int coord__ready_workers(const struct coord *c);
/* Workers that can take requests: ready, and not only encoding. */
int coord__serving_workers(const struct coord *c);
/* A zeroed CoordMsg of type which_msg to fill and send with coord__send. */
tandem_internal_v1_CoordMsg *coord__cmsg(struct coord *c, pb_size_t which);
void coord__send(struct coord *c, int w);

/* server.c: unary calls */
void coord__unary(struct coord *c, struct coord_rpc *rpc, const uint8_t *data, size_t len);

/* metrics.c */
void coord__metrics_write(struct coord *c, FILE *f);

#endif
