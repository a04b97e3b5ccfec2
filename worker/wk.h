/* worker: the engine. A model's weights on a backend, the forward pass per
 * architecture, the paged KV cache with segments and per-token positions, the
 * continuous-batching step loop, and the sampler.
 *
 * Ownership: wk_model borrows the backend and owns the weights mapping;
 * wk_engine borrows the model and owns the KV pool, the scratch buffers (sized
 * once at creation: nothing is allocated in the decode loop) and its sequences.
 * Threads: one thread drives an engine; the backend parallelises each op.
 *
 *     struct wk_model *m = wk_model_load(dir, be, &err);
 *     struct wk_engine *e = wk_engine_new(m, &params, &err);
 *     wk_engine_add(e, &req, &err);                        // any time between steps
 *     while (wk_engine_busy(e)) {
 *             wk_engine_step(e, ev, CM_ARRAY_LEN(ev), &n, &err);
 *             for (i = 0; i < n; i++) ... ev[i].token, ev[i].finish ...
 *     }
 *
 * Sequences and segments: a sequence's KV lives in up to WK_MAX_SEGS segments
 * (WK_SEG_MAIN for plain generation; source / reasoning for streaming thinking;
 * image for vision). Each token stored records its own position, so positions
 * never derive from an index in the cache, and each query attends to a prefix of
 * every segment (kern_attn_query), which expresses causal and streaming masks.
 */
#ifndef TANDEM_WK_H
#define TANDEM_WK_H

#include "common/cm.h"
#include "kernels/kern.h"
#include "model/md.h"

/* ---- model -------------------------------------------------------------- */

struct wk_layer {
	struct kern_mat wq, wk, wv, wo;       /* [nh*hd][d], [nkv*hd][d] x2, [d][nh*hd] */
	struct kern_mat w_gate, w_up, w_down; /* [ff][d] x2, [d][ff] */
	float *attn_norm;                     /* [d] */
	float *mlp_norm;                      /* [d] */
	float *q_norm, *k_norm;               /* [hd], Qwen3 only (NULL for llama) */
	float *bq, *bk, *bv;                  /* attention biases or NULL */
};

struct wk_model {
	struct md_config cfg;
	struct md_weights *weights;  /* owned: the mapping the kern_mats point into */
	struct kern_backend *be;     /* borrowed */
	struct kern_mat embed;       /* [vocab][d] */
	struct kern_mat lm_head;     /* [vocab][d]: the embedding when tied */
	float *final_norm;           /* [d] */
	float *inv_freq;             /* [hd/2], rope scaling applied */
	struct wk_layer *layers;     /* [n_layer] */
	void *wbuf;                  /* owned: backend copy of the matrices (wk_model_convert) */
};

/* Maps the weights of dir and checks every tensor's presence, shape and dtype
 * against config.json. Norm vectors and biases are converted to f32; matrices
 * are used in place. Errors name the tensor: CM_ENOENT, CM_ESHAPE, CM_EFORMAT,
 * CM_EUNSUPPORTED, plus md_config_load's and md_weights_open's. */
struct wk_model *wk_model_load(const char *dir, struct kern_backend *be, struct cm_err *err);
void wk_model_free(struct wk_model *m);

/* Where the weight matrices live after wk_model_convert. */
enum wk_weights {
	WK_WEIGHTS_MAPPED = 0, /* in the file mapping, as stored (what wk_model_load gives) */
	WK_WEIGHTS_COPY,       /* copied into one backend buffer (huge pages on the CPU), in
				* the backend's order (kern_weight_dtype) */
	WK_WEIGHTS_Q8,         /* the same, quantised to KERN_Q8_0 where the columns allow */
};

/* Moves every weight matrix (layers and LM head; a separate embedding, or a tied
 * one whose LM head is reordered, stays mapped: a lookup reads a few rows) into one
 * backend buffer, owned by m, as how says;
 * once per model. Errors: CM_ENOMEM, CM_EINVAL (converted already); m is then
 * unchanged. */
int wk_model_convert(struct wk_model *m, enum wk_weights how, struct cm_err *err);
/* "mapped", "copied" or "q8_0" (logs and benchmark reports); "?" for other values. */
const char *wk_weights_name(enum wk_weights how);

/* ---- sampling ----------------------------------------------------------- */

struct wk_sample_params {
	float temperature;         /* 0: greedy */
	float top_p;               /* 1: off */
	int32_t top_k;             /* 0: off */
	float min_p;               /* 0: off */
	float repetition_penalty;  /* 1: off; applied to prompt and generated tokens */
	uint64_t seed;
};

struct wk_sample_params wk_sample_default_params(void);

/* ---- engine ------------------------------------------------------------- */

#define WK_MAX_SEGS KERN_MAX_SEGS
#define WK_SEG_MAIN 0
/* streaming thinking: the source (input) segment and the reasoning segment */
#define WK_SEG_SOURCE 0
#define WK_SEG_REASON 1

enum wk_finish {
	WK_FINISH_NONE = 0,   /* still running */
	WK_FINISH_STOP,       /* a stop token was generated */
	WK_FINISH_LENGTH,     /* max_tokens reached */
	WK_FINISH_CONTEXT,    /* the model's context or the KV pool is full */
	WK_FINISH_ABORT,      /* removed by the caller */
};

const char *wk_finish_str(enum wk_finish f);

struct wk_engine_params {
	int32_t max_batch_tokens;  /* tokens per step, prefill chunks and decodes together */
	int32_t max_seqs;          /* sequences running at once */
	int32_t kv_tokens;         /* KV pool capacity in tokens (all sequences) */
	int32_t block_size;        /* tokens per KV block */
	enum kern_dtype kv_dtype;  /* KERN_F32 or KERN_F16 */
	int32_t max_logit_rows;    /* LM-head rows computed at once (memory: rows x vocab x 4) */
};

struct wk_engine_params wk_engine_default_params(void);

/* Called with the logits of prompt positions (when a request asks for them) and
 * of each sampled position: row index in the prompt (or -1 for a generated
 * position), logits [vocab]. The buffer is the engine's: copy what you keep. */
typedef void (*wk_logits_fn)(void *ud, uint64_t req_id, int32_t index, const float *logits,
			     int32_t vocab);

/* How a request runs (issue 5; see algorithms.md §1). */
enum wk_mode {
	WK_MODE_GENERATE = 0,  /* a whole prompt, then generation (one segment) */
	WK_MODE_STREAMING,     /* source units arrive over time; reasoning runs on each unit
				* as it lands (source and reasoning segments, group positions,
				* the streaming mask), then the final phase after close */
	WK_MODE_BATCH,         /* the baseline: wait for close, prefill all source, reason,
				* answer; same segments and positions as streaming */
	WK_MODE_ENCODE,        /* disaggregation, the encode worker's half: source units are
				* prefilled into the source segment (no reasoning, no LM
				* head, no events but the finish on abort) and kept until the
				* request is aborted; wk_engine_export_source reads them.
				* Only the request's id is read (no prompt, no sampling) */
};

/* Which kind of output a token is. */
enum wk_phase {
	WK_PHASE_PROMPT = 0,   /* not generated (teacher-forced or prompt) */
	WK_PHASE_THOUGHT,      /* reasoning (before "</think>") */
	WK_PHASE_ANSWER,       /* the answer */
};

/* Streaming and batch modes (docs/streaming.md). The source arrives unit by
 * unit through wk_engine_input(): source token i has position i, attends
 * causally to source only and gets no LM head. The reasoning is a second
 * segment: reasoning token j has position phi + j and sees the earlier
 * reasoning plus the source units 0..k when it belongs to reasoning unit k; a
 * token that ends unit k (sampled boundary or forced) is fed only once source
 * unit k + 1 is read, and sees it (the one-token shift of algorithms.md §1.2.3).
 * Reasoning unit 0 is teacher-forced: prompt, or when prompt is empty the
 * template's think_prefix ("<|im_start|>assistant\n<think>\n<SEP>"); its last
 * token is a boundary. Then per unit at most unit_budget tokens are generated,
 * its boundary included: one of the template's seven added tokens when sampled,
 * else forced (<EOQ> for a unit whose source ends in <EOQ> or <SEP>, that
 * token; otherwise <EOT>). After the input closes and the last unit's boundary:
 * the final phase feeds connect_2 (the depth connector), lets the model reason
 * and answer for final_budget tokens; "</think>" sampled starts the answer, or
 * connect_3 ("</think>\n\n") is forced once final_budget - answer_budget
 * tokens were spent thinking. Batch mode waits for the close, prefills all
 * source, and runs the same loop with every source token visible. */
struct wk_request {
	uint64_t id;                 /* caller's id, echoed in events */
	enum wk_mode mode;
	/* streaming / batch modes (ignored in generate mode) */
	int32_t phi;                 /* first reasoning position (group positions) */
	int32_t unit_budget;         /* reasoning tokens per unit, boundary included, then a
				      * boundary is forced; 0: 64 */
	int32_t final_budget;        /* tokens after the input closes (deep reasoning + answer);
				      * 0: 256 */
	int32_t answer_budget;       /* the part of final_budget kept for the answer; 0:
				      * final_budget / 4 */
	const struct md_seg_ids *think; /* the template's token ids (md_seg_ids()), copied;
				      * NULL only for teacher forcing (no boundaries, no
				      * connectors: needs max_tokens 0) */
	const int32_t *prompt_units; /* [n_prompt_units] lengths that split prompt into forced
				      * reasoning units (teacher forcing); NULL: one unit */
	int32_t n_prompt_units;
	/* generate mode: the prompt; streaming / batch: the forced start of the
	 * reasoning (may be empty: then think->think_prefix) */
	const int32_t *prompt;       /* [n_prompt], copied */
	int32_t n_prompt;
	int32_t max_tokens;          /* generated tokens at most (streaming: 0 runs the forced
				      * reasoning only; the last forced token then sees its
				      * own unit, as in training) */
	const int32_t *stop_ids;     /* [n_stop], copied; finish STOP when sampled */
	int32_t n_stop;
	struct wk_sample_params sample;
	bool prompt_logits;          /* report the logits of every prompt position
				      * (streaming: of every forced reasoning token) */
	bool remote_source;          /* streaming / batch: the source KV is computed by an
				      * encode worker and arrives with wk_engine_input_kv;
				      * wk_engine_input is refused (CM_EINVAL in other modes) */
	wk_logits_fn on_logits;      /* optional */
	void *ud;
};

/* One generated token or a finish, in the order they happened. */
struct wk_event {
	uint64_t req_id;
	int32_t token;               /* -1 when the event only finishes */
	enum wk_phase phase;         /* generate mode: ANSWER; streaming and batch: THOUGHT
				      * until "</think>" (sampled or forced), then ANSWER */
	int32_t unit;                /* streaming: the unit the reasoning is on; the number
				      * of units in the final phase; generate mode: -1 */
	enum wk_finish finish;       /* WK_FINISH_NONE while running */
	int32_t n_prompt, n_generated;
};

struct wk_engine;

struct wk_engine *wk_engine_new(struct wk_model *m, const struct wk_engine_params *p,
				struct cm_err *err);
void wk_engine_free(struct wk_engine *e);

/* Queues a request; it joins the running batch at the next step with room.
 * Errors: CM_EINVAL (empty prompt, token id out of range, bad sampling values),
 * CM_ERANGE (prompt longer than the context or the KV pool), CM_EFULL (queue full). */
int wk_engine_add(struct wk_engine *e, const struct wk_request *req, struct cm_err *err);

/* Streaming and batch modes: appends one source unit (token ids, boundary
 * tokens included, as the segmenter cut it) to request req_id's input. The
 * request holds no compute while it waits for input. Errors: CM_ENOENT (unknown
 * or finished request), CM_EINVAL (closed input, bad ids, generate mode),
 * CM_ERANGE (context or KV full). */
int wk_engine_input(struct wk_engine *e, uint64_t req_id, const int32_t *unit, int32_t n,
		    struct cm_err *err);
/* Marks request req_id's input as complete: the final phase starts after its last
 * unit's reasoning (a close in the middle of a unit lets that unit finish). Closing
 * twice is harmless. CM_ENOENT when unknown, CM_EINVAL in generate mode. */
int wk_engine_close_input(struct wk_engine *e, uint64_t req_id, struct cm_err *err);

/* ---- disaggregation (docs/engine.md; algorithms.md §6.1) ----------------
 * An encode worker runs a request in WK_MODE_ENCODE: its units are prefilled
 * into the source segment. After each step, wk_engine_source_encoded tells how
 * many source tokens have their KV written, and wk_engine_export_source copies
 * the KV of a range of them into a flat buffer (wk_engine_kv_bytes). The decode
 * worker runs the same request in WK_MODE_STREAMING (or BATCH) with
 * remote_source set and appends each unit with wk_engine_input_kv: ids,
 * positions and KV bytes as exported. The reasoning is then exactly the one a
 * single engine computes (the kernels are batch-invariant).
 *
 * Flat KV layout of n tokens: [n_layer][2: K then V][n][n_kv_head][head_dim]
 * in the engine's kv_dtype; both engines must have the same model shape and
 * kv_dtype (the KV link checks). */

/* Bytes of the flat KV of n tokens. */
size_t wk_engine_kv_bytes(const struct wk_engine *e, int32_t n);

/* Source tokens of req_id whose KV is written (any mode with a source
 * segment), or CM_ENOENT when req_id is unknown, finished or in generate mode. */
int32_t wk_engine_source_encoded(const struct wk_engine *e, uint64_t req_id);

/* Copies the KV of source tokens [from, from + n) of req_id into kv
 * (wk_engine_kv_bytes(e, n) bytes) and their positions into pos[n] (pos may be
 * NULL). Errors: CM_ENOENT (unknown request or no source), CM_EINVAL (negative
 * range, no buffer), CM_ERANGE (tokens not encoded yet). */
int wk_engine_export_source(const struct wk_engine *e, uint64_t req_id, int32_t from, int32_t n,
			    void *kv, int32_t *pos, struct cm_err *err);

/* Appends one source unit computed elsewhere to a remote_source request: its
 * ids (as the segmenter cut them), positions (source token i has position i,
 * so they continue the source: wk_engine_source_encoded, 1, ...) and flat KV,
 * copied. Like wk_engine_input followed by its prefill; the request's events
 * and logits are then those of a local prefill, bit for bit. Errors:
 * CM_ENOENT, CM_EINVAL (not remote_source, closed input, bad ids or positions,
 * no buffers), CM_ERANGE (context full, or the pool when nothing else runs),
 * CM_EFULL (the request is still queued, or no free KV blocks now while other
 * requests run: nothing changed; step, then retry, which is how a decode
 * worker pushes back on its encode worker). CM_EFULL comes only while
 * wk_engine_ready(e) is true, so stepping and retrying never stalls; when
 * nothing else can run, the unit takes blocks from the request's own
 * reasoning reservation as wk_engine_input does. */
int wk_engine_input_kv(struct wk_engine *e, uint64_t req_id, const int32_t *unit, int32_t n,
		       const int32_t *pos, const void *kv, struct cm_err *err);

/* Aborts a queued or running request; its KV blocks are freed and a finish event
 * (ABORT) is reported by the next step. CM_ENOENT when unknown. */
int wk_engine_abort(struct wk_engine *e, uint64_t req_id);

/* True while any request is queued or running. */
bool wk_engine_busy(const struct wk_engine *e);
/* True when the next step has work (tokens to compute or events to report);
 * false while every running request waits for streaming input (or none runs):
 * then wait for input instead of stepping. */
bool wk_engine_ready(const struct wk_engine *e);

/* Runs one batched forward step: admits queued requests while there is room,
 * gives each running sequence either a prefill chunk or one decode token (at most
 * max_batch_tokens in all), samples, and reports up to max_ev events (max_ev >=
 * WK_EV_MIN: per sequence slot, an abort of a running request, a token or
 * finish, and an abort of a queued one). Returns CM_OK. */
#define WK_EV_MIN(p) (3 * (p)->max_seqs)
int wk_engine_step(struct wk_engine *e, struct wk_event *ev, int max_ev, int *n_ev,
		   struct cm_err *err);

/* One row of a step as the forward pass sees it (tests and debugging): the
 * token, the segment it is written to, its index there, its rotary position and
 * how many tokens of each segment of its sequence it attends to. */
struct wk_row_trace {
	uint64_t req_id;
	int32_t token;
	int32_t seg;                 /* WK_SEG_MAIN / WK_SEG_SOURCE or WK_SEG_REASON */
	int32_t index;               /* in that segment */
	int32_t pos;
	int32_t n_vis[WK_MAX_SEGS];
};

typedef void (*wk_trace_fn)(void *ud, const struct wk_row_trace *row);

/* Calls fn for every row of every later step, before its forward pass (NULL:
 * off). For tests: costs a call per row. */
void wk_engine_set_trace(struct wk_engine *e, wk_trace_fn fn, void *ud);

struct wk_engine_stats {
	int32_t running, queued;
	int32_t kv_blocks_used, kv_blocks_total;
	int64_t steps, tokens_prefilled, tokens_decoded;
	int64_t tokens_source;       /* streaming: source tokens prefilled (in tokens_prefilled) */
	int64_t tokens_imported;     /* disaggregation: source tokens whose KV arrived with
				      * wk_engine_input_kv (no compute here: not in
				      * tokens_prefilled, tokens_source or flops) */
	int64_t logit_rows;          /* LM-head rows computed */
	double flops;                /* forward FLOPs so far (algorithms.md §0.2 accounting:
				      * projections, MLP, attention over the visible keys,
				      * LM head for logit rows) */
};

void wk_engine_stats(const struct wk_engine *e, struct wk_engine_stats *s);

#endif
