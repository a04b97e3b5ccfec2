/* model: what a model folder says, read safely.
 *
 * - md_config: config.json of Qwen3ForCausalLM / LlamaForCausalLM (every field the
 *   forward pass needs; unknown architectures and missing fields are errors);
 * - md_weights: safetensors files mapped read-only (single file or sharded through
 *   model.safetensors.index.json), every header validated before any tensor is used;
 * - md_tok: the byte-level BPE tokenizer of tokenizer.json (Qwen2/Qwen3), with a
 *   streaming decoder that holds back incomplete UTF-8.
 *
 * Ownership: each object owns its memory and mappings; pointers it hands out
 * (tensor data, names, token bytes) live until the object is freed.
 * Threads: loading is single-threaded; a loaded md_weights or md_tok is read-only
 * and may be used from any number of threads (each md_tok_stream by one thread).
 *
 *     struct md_config cfg;
 *     struct md_weights *w = md_weights_open(dir, &err);
 *     const struct md_tensor *t = md_weights_get(w, "model.norm.weight");
 *     struct md_tok *tok = md_tok_load(dir, &err);
 *     md_tok_encode(tok, text, len, &ids, &n_ids, &err);
 */
#ifndef TANDEM_MD_H
#define TANDEM_MD_H

#include "common/cm.h"

/* ---- config.json -------------------------------------------------------- */

enum md_arch {
	MD_ARCH_QWEN3 = 0,  /* Qwen3ForCausalLM: per-head q_norm/k_norm before rotary */
	MD_ARCH_LLAMA = 1,  /* LlamaForCausalLM */
};

enum md_rope_scaling {
	MD_ROPE_NONE = 0,
	MD_ROPE_LLAMA3 = 1,  /* "rope_type": "llama3" (Llama 3.1+) */
	MD_ROPE_LINEAR = 2,  /* "rope_type": "linear" */
};

#define MD_MAX_EOS 8

struct md_config {
	enum md_arch arch;
	char model_type[32];
	int32_t hidden;            /* d */
	int32_t intermediate;      /* ff */
	int32_t n_layer;
	int32_t n_head;
	int32_t n_kv_head;
	int32_t head_dim;
	int32_t vocab;
	int32_t max_pos;           /* max_position_embeddings */
	double rope_theta;
	double rms_eps;
	bool tie_embeddings;
	bool attention_bias;       /* q/k/v biases present (Qwen2-style) */
	enum md_rope_scaling rope_scaling;
	double rope_factor;        /* llama3 / linear */
	double rope_low_freq_factor, rope_high_freq_factor;  /* llama3 */
	int32_t rope_orig_max_pos; /* llama3: original_max_position_embeddings */
	int32_t bos_id;            /* -1 when absent */
	int32_t eos_ids[MD_MAX_EOS];
	int32_t n_eos;
	/* SkipGPT routers ("tandem_skipgpt" block); absent: has_routers = false */
	bool has_routers;
	int32_t router_hidden;
};

/* Reads dir/config.json. Errors: CM_ENOENT (no file), CM_EFORMAT (bad JSON, missing
 * or mistyped field), CM_EUNSUPPORTED (architecture, activation, rope scaling),
 * CM_ERANGE (non-positive or inconsistent sizes). cfg is written only on success. */
int md_config_load(const char *dir, struct md_config *cfg, struct cm_err *err);
/* Same, from JSON text (for tests and fuzzing); name appears in messages. */
int md_config_parse(const char *json, size_t len, const char *name, struct md_config *cfg,
		    struct cm_err *err);

/* ---- safetensors -------------------------------------------------------- */

enum md_dtype {
	MD_DTYPE_F32 = 0,
	MD_DTYPE_F16 = 1,
	MD_DTYPE_BF16 = 2,
};

#define MD_MAX_DIMS 4

struct md_tensor {
	const char *name;
	enum md_dtype dtype;
	int32_t n_dims;
	int64_t shape[MD_MAX_DIMS];  /* HF/PyTorch order, outermost first */
	const void *data;            /* inside the read-only mapping; not aligned beyond 2 */
	size_t nbytes;
	const char *file;            /* the file it lives in (for messages) */
};

struct md_weights;

/* Maps dir/model.safetensors, or every shard named by
 * dir/model.safetensors.index.json, and validates every header: the header
 * length, the JSON, dtypes, shape x dtype size = byte span, every span inside
 * the file, no overlapping spans, no duplicate names. Errors name the file and
 * the tensor in err->msg (one line): CM_ENOENT, CM_EIO, CM_ECORRUPT,
 * CM_EFORMAT, CM_EUNSUPPORTED (dtype). */
struct md_weights *md_weights_open(const char *dir, struct cm_err *err);
/* Opens one .safetensors file (no index). */
struct md_weights *md_weights_open_file(const char *path, struct cm_err *err);
void md_weights_free(struct md_weights *w);
/* NULL when absent. */
const struct md_tensor *md_weights_get(const struct md_weights *w, const char *name);
size_t md_weights_count(const struct md_weights *w);
const struct md_tensor *md_weights_at(const struct md_weights *w, size_t i);
/* Looks up name and checks its dtype-independent shape; CM_ENOENT / CM_ESHAPE with a
 * message naming the tensor. dims has n_dims entries. */
int md_weights_expect(const struct md_weights *w, const char *name, int32_t n_dims,
		      const int64_t *dims, const struct md_tensor **out, struct cm_err *err);

size_t md_dtype_size(enum md_dtype dt);
const char *md_dtype_name(enum md_dtype dt);

/* ---- tokenizer ---------------------------------------------------------- */

struct md_tok;

/* Loads dir/tokenizer.json. Errors: CM_ENOENT, CM_EFORMAT,
 * CM_EUNSUPPORTED (a model other than byte-level BPE). */
struct md_tok *md_tok_load(const char *dir, struct cm_err *err);
/* Same from a tokenizer.json file path. */
struct md_tok *md_tok_load_file(const char *path, struct cm_err *err);
void md_tok_free(struct md_tok *tok);

int32_t md_tok_vocab_size(const struct md_tok *tok);  /* highest id + 1 */
/* The id of an added/special token by content (e.g. "<|im_end|>"), or -1. */
int32_t md_tok_special_id(const struct md_tok *tok, const char *content);
/* The raw bytes of a token (special tokens: their content); NULL for a bad id. */
const char *md_tok_bytes(const struct md_tok *tok, int32_t id, size_t *len);

/* Encodes UTF-8 text: added/special tokens matched first, then NFC, the Qwen2
 * split pattern and byte-level BPE. *ids is malloc'd (caller frees). Invalid UTF-8
 * gives CM_EUTF8 with the byte offset in the message. Reentrant. */
int md_tok_encode(const struct md_tok *tok, const char *text, size_t len, int32_t **ids,
		  size_t *n_ids, struct cm_err *err);

/* Decodes ids to text in one go (malloc'd, NUL-terminated); invalid byte sequences
 * become U+FFFD as in HF's errors="replace". CM_ERANGE for an id out of range. */
int md_tok_decode(const struct md_tok *tok, const int32_t *ids, size_t n, char **text,
		  size_t *len, struct cm_err *err);

/* Streaming decoder: feed ids one at a time, get the text that is complete. */
struct md_tok_stream {
	const struct md_tok *tok;
	unsigned char pending[8];  /* bytes of an incomplete UTF-8 sequence */
	size_t n_pending;
};

void md_tok_stream_init(struct md_tok_stream *s, const struct md_tok *tok);
/* Appends the text that id completes to out (at most cap bytes;
 * MD_TOK_STREAM_CAP(tok) always suffices) and returns the number of bytes
 * written; CM_ERANGE for a bad id, CM_EFULL when cap is too small (the stream is
 * then unchanged), CM_EINVAL for NULL arguments. An incomplete UTF-8 sequence is
 * held back until it completes; one that can no longer complete is written as
 * U+FFFD (3 bytes for each byte in the worst case). */
int md_tok_stream_put(struct md_tok_stream *s, int32_t id, char *out, size_t cap);
/* Flushes held-back bytes (as U+FFFD) at the end of a stream; returns bytes written. */
int md_tok_stream_flush(struct md_tok_stream *s, char *out, size_t cap);

/* Longest token in bytes (to size stream buffers). */
size_t md_tok_max_token_len(const struct md_tok *tok);
#define MD_TOK_STREAM_CAP(tok) (3 * (md_tok_max_token_len(tok) + 8))

/* ---- generation_config.json and the chat template ------------------------ */

/* Token ids that end a generation: config.json's eos ids plus those of
 * generation_config.json (when present), without repeats. */
struct md_stop_ids {
	int32_t ids[2 * MD_MAX_EOS];
	int32_t n;
};

/* Reads dir/generation_config.json's eos_token_id (int or list), adding to cfg's.
 * A missing file is not an error; a malformed one is CM_EFORMAT. */
int md_stop_ids_load(const char *dir, const struct md_config *cfg, struct md_stop_ids *out,
		     struct cm_err *err);

/* Wraps one user message in the chat format the tokenizer's special tokens
 * reveal: ChatML (<|im_start|>, Qwen) or Llama 3 headers; the result ends where
 * the assistant's reply begins. *out is malloc'd. CM_EUNSUPPORTED when the
 * tokenizer has neither. */
int md_chat_user_prompt(const struct md_tok *tok, const char *user, char **out,
			struct cm_err *err);

/* ---- streaming units (the segmenter) ------------------------------------ */

/* The StreamingThinker template (algorithms.md §1.2.1): strings, each tokenized
 * with special tokens matched. Defaults: md_seg_default_template(); a JSON file
 * with any of these keys ("connect_2" a list of three) overrides them. */
struct md_seg_template {
	const char *instruct;        /* source unit 0, before "<SEP>": the instruction */
	const char *end_instruct;    /* closes the last source unit: "<|im_end|>\n" */
	const char *sep;             /* "<SEP>": ends the instruction unit */
	const char *eoq;             /* "<EOQ>": ends the question unit (a sentence ending
				      * in '?') */
	const char *eos;             /* "<EOS>": ends a source sentence */
	const char *reasoning_start; /* first reasoning unit, "<|im_start|>assistant\n<think>\n" */
	const char *connect_2[3];    /* fed after the input closes, depth D1, D2, D3 */
	const char *connect_3;       /* "</think>\n\n": ends thinking, the answer follows */
	int32_t depth;               /* 1..3: which connect_2 (default 2) */
	void *owned;                 /* strings loaded from a file (md_seg_template_fini) */
};

struct md_seg_template md_seg_default_template(void);
/* Starts from the defaults and overrides them with path's keys. Errors: CM_ENOENT,
 * CM_EFORMAT (bad JSON, unknown key, a value not a string). Free with
 * md_seg_template_fini(). */
int md_seg_template_load(const char *path, struct md_seg_template *t, struct cm_err *err);
void md_seg_template_fini(struct md_seg_template *t);

/* The template as token ids: what the engine needs (struct wk_request.think).
 * The seven added tokens come from the tokenizer's added tokens (tandem gen-model
 * writes them with ids 151669..151675). Valid while the segmenter lives. */
struct md_seg_ids {
	const int32_t *think_prefix; /* [n_think_prefix] reasoning_start + sep: reasoning
				      * unit 0, teacher-forced */
	int32_t n_think_prefix;
	const int32_t *connect_2;    /* [n_connect_2] of the template's depth; may be empty */
	int32_t n_connect_2;
	const int32_t *connect_3;    /* [n_connect_3] */
	int32_t n_connect_3;
	/* the seven added tokens; any of them sampled ends a reasoning unit */
	int32_t sep, eoq, eos, eot, eor, eoa, ignore;
	int32_t think_end;           /* "</think>", -1 when the tokenizer lacks it */
};

struct md_seg;

/* Called for each complete unit: token ids including its boundary token; index
 * counts units from 0 (unit 0: instruct + sep, reported by the first push or
 * close). The ids are the segmenter's: copy what you keep. */
typedef void (*md_seg_unit_fn)(void *ud, int32_t index, const int32_t *ids, int32_t n);

/* A segmenter for one request; t is copied (its strings must outlive s).
 * Errors: CM_EUNSUPPORTED when the tokenizer lacks one of the seven added tokens,
 * CM_EINVAL for a depth outside 1..3. */
struct md_seg *md_seg_new(const struct md_tok *tok, const struct md_seg_template *t,
			  struct cm_err *err);
void md_seg_free(struct md_seg *s);
const struct md_seg_ids *md_seg_ids(const struct md_seg *s);
/* Feeds arriving UTF-8 text (any split, even inside a character). A sentence ends
 * at . ! ? or a newline (also 。！？), not inside a number (3.14), after a
 * common abbreviation (e.g. "Dr.", "e.g."), inside a URL or an e-mail address;
 * closing quotes and brackets stay with their sentence. A sentence becomes a
 * unit (text + eos, or + eoq when it ends in '?') once the next sentence starts,
 * so the last one is held until more text or the close arrives. CM_EUTF8 on
 * invalid text (nothing is consumed then). */
int md_seg_push(struct md_seg *s, const char *text, size_t len, md_seg_unit_fn fn, void *ud,
		struct cm_err *err);
/* The input is complete: the rest becomes the last unit, + end_instruct
 * (end_instruct alone when no text is left). Later pushes are CM_EINVAL. */
int md_seg_close(struct md_seg *s, md_seg_unit_fn fn, void *ud, struct cm_err *err);

/* ---- UTF-8 -------------------------------------------------------------- */

/* Returns the length of the longest valid UTF-8 prefix of s (== len when all of s
 * is valid). Overlong forms, surrogates and code points above U+10FFFF are invalid. */
size_t md_utf8_valid_prefix(const char *s, size_t len);

#endif
