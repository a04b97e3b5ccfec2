/* gen_model: tandem-rand-v1, random Qwen3 models that any C compiler reproduces bit for
 * bit (design/random-model.md is normative; section numbers below refer to it).
 *
 * - struct gen_shape: the sizes of a Qwen3 model; gen_shape_variant() knows "tiny" and
 *   "0.6b", and every other shape follows the same rules;
 * - gen_tensors_build(): the canonical tensor list of a shape (section 2): names, HF shapes,
 *   value rules, and where each tensor starts in the safetensors data section;
 * - gen_tensor_bf16(): the values of any element range of a tensor, a pure function of
 *   (seed, tensor index, rule, hidden size, element index) (section 3);
 * - gen_model_write(): a complete Hugging Face model folder (config.json,
 *   generation_config.json, model.safetensors, tokenizer files).
 *
 * Threads: everything is reentrant. Functions that take a struct cm_pool run their work on
 * it and must be the pool's only caller while they run.
 *
 *     struct gen_shape s;
 *     struct gen_report rep;
 *     if (gen_shape_variant("tiny", &s, &err) < 0 ||
 *         gen_model_write("/tmp/m", &s, "tiny", 1, true, pool, &rep, &err) < 0)
 *             fprintf(stderr, "%s\n", err.msg);
 */
#ifndef TANDEM_GEN_MODEL_H
#define TANDEM_GEN_MODEL_H

#include "common/cm.h"

#define GEN_GENERATOR "tandem-rand-v1"
#define GEN_VOCAB 151936
/* Element 0 of every weight_predictor.bias: tilts router decisions toward "execute". */
#define GEN_ROUTER_BIAS0_OFFSET 0.25390625
#define GEN_NAME_MAX 80

/* How a tensor's values are made (section 3). */
enum gen_rule {
	GEN_RULE_MATRIX = 0,        /* t * 0.034641016 (uniform, std 0.02) */
	GEN_RULE_NORM,              /* 1 + (t * 0.2), in [0.8, 1.2) */
	GEN_RULE_ROUTER_HIDDEN,     /* (R1) (t * 32) / sqrt(d) */
	GEN_RULE_ROUTER_PREDICTOR,  /* (R2) (t * 1) / sqrt(d / 4) */
	GEN_RULE_ZERO,              /* (Z) 0, no hash drawn */
	GEN_RULE_ROUTER_BIAS,       /* (B) [GEN_ROUTER_BIAS0_OFFSET, 0], no hash drawn */
};

/* The rule's name as the fixtures spell it ("matrix", "norm", "router_hidden", ...). */
const char *gen_rule_name(enum gen_rule rule);

/* A Qwen3ForCausalLM shape. */
struct gen_shape {
	uint32_t vocab;         /* V */
	uint32_t hidden;        /* d */
	uint32_t n_layer;       /* L */
	uint32_t n_head;        /* nh */
	uint32_t n_kv_head;     /* nkv */
	uint32_t head_dim;      /* hd */
	uint32_t intermediate;  /* ff */
};

/* One tensor of the canonical list. */
struct gen_tensor {
	char name[GEN_NAME_MAX];
	uint32_t index;       /* position in the canonical list: the i of the hash */
	enum gen_rule rule;
	int32_t n_dims;       /* 1 or 2 */
	uint64_t shape[2];    /* HF/PyTorch order, outermost first */
	uint64_t n_elem;
	uint64_t begin;       /* elements before this tensor in the data section */
};

/* Fills s with the shape of a named variant ("tiny" or "0.6b"); CM_EINVAL otherwise. */
int gen_shape_variant(const char *variant, struct gen_shape *s, struct cm_err *err);

/* Builds the canonical tensor list of s: the base list, then the SkipGPT routers when
 * routers is set. *out is malloc'd (the caller frees it) with *n entries. Errors:
 * CM_ERANGE (a zero size, d not a multiple of 4 with routers, a tensor of 2^40 elements or
 * more), CM_ENOMEM. */
int gen_tensors_build(const struct gen_shape *s, bool routers, struct gen_tensor **out,
		      size_t *n, struct cm_err *err);

/* The splitmix64 hash z of element j of tensor i (section 3). */
uint64_t gen_hash(uint64_t seed, uint32_t i, uint64_t j);
/* The double w of element j of tensor i under rule; hidden is d (the router rules use it). */
double gen_value(uint64_t seed, uint32_t i, enum gen_rule rule, uint32_t hidden, uint64_t j);
/* w rounded to float32, then the float32 bits rounded to bf16 (nearest even, both times). */
uint16_t gen_bf16_from_double(double w);

/* Writes the bf16 values of elements j0 .. j0 + n - 1 of tensor i to out[0 .. n-1], as
 * little-endian 16-bit words (the safetensors byte order on any host). */
void gen_tensor_bf16(uint64_t seed, uint32_t i, enum gen_rule rule, uint32_t hidden, uint64_t j0,
		     uint64_t n, uint16_t *out);

/* Same for the whole of tensor t, split across the threads of pool. out holds t->n_elem
 * words. */
void gen_tensor_fill(struct cm_pool *pool, uint64_t seed, const struct gen_tensor *t,
		     uint32_t hidden, uint16_t *out);

/* config.json of the model as malloc'd, pretty-printed JSON text ending in a newline;
 * NULL when out of memory. With routers it carries the tandem_skipgpt block. */
char *gen_config_text(const struct gen_shape *s, const char *variant, uint64_t seed,
		      bool routers);

/* What gen_model_write did. */
struct gen_report {
	size_t n_tensors;
	uint64_t n_params;
	uint64_t file_bytes;     /* size of model.safetensors */
	double seconds;          /* wall time of the whole write */
	uint8_t sha256_all[32];  /* sha256 over every tensor's bytes in canonical order */
};

/* Writes the model folder dir (created with its parents when missing; files already there
 * are replaced). variant is the name recorded in config.json. model.safetensors is written
 * to model.safetensors.tmp and renamed at the end. Errors: CM_EIO (naming the path and the
 * system's reason), CM_ERANGE (bad shape), CM_ENOMEM; a failure leaves no .tmp behind. */
int gen_model_write(const char *dir, const struct gen_shape *s, const char *variant,
		    uint64_t seed, bool routers, struct cm_pool *pool, struct gen_report *rep,
		    struct cm_err *err);

#endif
