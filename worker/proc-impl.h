/* The worker process's state (worker.c: registration, requests, the loop;
 * disagg.c: the encode and decode roles over the KV link). Everything here
 * runs on the worker's one thread. */
#ifndef TANDEM_WK_PROC_IMPL_H
#define TANDEM_WK_PROC_IMPL_H

#include "kvlink.h"
#include "link-impl.h"
#include "model/md.h"
#include "wk.h"
#include "worker.h"

#define WK_PEER_MAX 256	       /* bytes of a KV endpoint, NUL included */
#define WK_ENDED_RING 256      /* recently ended requests a decode worker remembers */
#define WK_HOLD_UNKNOWN_US 10000000 /* a unit for a request not started yet waits this long */
#define WK_HOLD_STUCK_US 3000000    /* held for KV while the engine idles: the request fails */
#define WK_PEER_GRACE_US 10000000   /* a dead decode peer not replaced by then: the request fails */

enum wk_role { WK_ROLE_BOTH = 0, WK_ROLE_ENCODE, WK_ROLE_DECODE };

/* Encode role: one request's kept source (its shard is in the engine) and how
 * far it was shipped to its decode worker. */
struct wk_enc_req {
	uint64_t id;
	char peer[WK_PEER_MAX]; /* the decode worker's KV endpoint; "" stops shipping */
	int32_t *ids;		/* [n_ids] every unit's ids back to back */
	int32_t n_ids, cap_ids;
	int32_t *unit_end; /* [n_units] end offset of each unit in ids */
	int32_t n_units, cap_units;
	int32_t shipped;   /* units sent to peer */
	bool closed;	   /* the coordinator closed the input */
	bool close_sent;   /* the CLOSE unit went out */
	bool resend;	   /* the next unit 0 carries KVL_RESEND */
	int64_t dead_since; /* µs: the peer has not answered since then; 0: alive */
};

/* Decode role: a remote_source request and the next unit index it expects. */
struct wk_dec_req {
	uint64_t id;
	uint32_t next;
};

/* Decode role: a received unit the engine could not take yet (its KV blocks
 * are short, or its Start has not arrived); its ack waits with it. The unit's
 * arrays stay the KV link's until the ack. */
struct wk_held {
	struct wk_held *next;
	struct kvl_unit u;
	int64_t since; /* µs */
};

struct worker {
	const struct wk_worker_params *p;
	char id[96];
	enum wk_role role;
	struct wk_link *link;
	int st; /* enum state of worker.c */
	char model_dir[1024];
	struct kern_backend *be;
	struct wk_model *model;
	struct md_tok *tok;
	struct md_seg *seg[3]; /* the template at depth 1..3, for its ids */
	struct md_stop_ids stops;
	struct wk_engine *eng;
	struct wk_engine_params ep;
	struct wk_event *ev;
	int max_ev;
	uint64_t *live; /* [n_live] requests in the engine */
	int n_live, cap_live;
	int64_t last_hb, last_hello, last_heard;
	double peak_flops, read_bps; /* capacities, measured or given */
	tandem_internal_v1_WorkerMsg *out;
	tandem_internal_v1_CoordMsg *in;
	/* the KV link (encode and decode roles) */
	struct kvl *kvl;
	struct wk_enc_req *enc; /* [n_enc] */
	int n_enc, cap_enc;
	struct wk_dec_req *dec; /* [n_dec] */
	int n_dec, cap_dec;
	struct wk_held *held, **held_tail; /* FIFO */
	uint64_t ended[WK_ENDED_RING];	   /* ring of ended decode requests */
	int n_ended;
	int64_t stuck_since; /* µs: held units and an idle engine since then; 0: not */
	void *kvbuf;	     /* export buffer, kvbuf_cap bytes */
	int32_t *posbuf;     /* [posbuf_cap] */
	size_t kvbuf_cap;
	int32_t posbuf_cap;
	int64_t kv_tokens_sent, kv_tokens_received;
};

/* worker.c */
void wk__send(struct worker *w);
tandem_internal_v1_WorkerMsg *wk__msg(struct worker *w, pb_size_t which);
void wk__send_failed(struct worker *w, uint64_t req, const struct cm_err *err);
void wk__copy_str(char *dst, size_t cap, const char *src);

/* disagg.c: the encode and decode halves. */
/* Binds the KV link once the model is loaded (encode and decode roles). */
int wk__split_init(struct worker *w, struct cm_err *err);
void wk__split_fini(struct worker *w);
/* Drops every request's split state, acknowledging held units (registration). */
void wk__split_reset(struct worker *w);
/* Encode role: a MODE_ENCODE request was added; its units, close, retarget, end. */
int wk__enc_start(struct worker *w, uint64_t req, const char *peer);
void wk__enc_unit(struct worker *w, uint64_t req, const int32_t *ids, int32_t n);
void wk__enc_close(struct worker *w, uint64_t req);
void wk__enc_retarget(struct worker *w, uint64_t req, const char *peer);
/* Ships every complete unit not shipped yet (after each step and each ack). */
void wk__enc_ship(struct worker *w);
/* Decode role: a remote_source request was added. */
int wk__dec_start(struct worker *w, uint64_t req);
/* Either role: req ended (finished, aborted). */
void wk__split_end(struct worker *w, uint64_t req);
/* Takes what the KV link has: acks, and units for the engine (or held). */
void wk__split_poll(struct worker *w);
/* Gives held units to the engine again (after a step or a Start). */
void wk__dec_retry(struct worker *w);
/* NCCL rendezvous from the coordinator. */
void wk__nccl(struct worker *w, const tandem_internal_v1_NcclRendezvous *m);
/* Heartbeat fields of the KV link. */
void wk__split_heartbeat(struct worker *w, tandem_internal_v1_Heartbeat *h);

#endif
