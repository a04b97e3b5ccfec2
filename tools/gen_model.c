/* tandem gen-model: tandem-rand-v1 random Qwen3 models (design/random-model.md).
 *
 * The values are a pure function of (seed, tensor, element), so the data section of
 * model.safetensors is produced in chunks of GEN_CHUNK elements: the pool's threads fill
 * chunk k + 1 block by block and pwrite each block at its own offset, while thread 0 first
 * feeds chunk k (kept in the other of two buffers) to the one sha256 of the report. */
#include "gen_model.h"
#include "tools.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GEN_GOLDEN 0x9E3779B97F4A7C15ull
#define GEN_MATRIX_SCALE 0.034641016  /* sqrt(3) * 0.02: uniform with std 0.02 */
#define GEN_NORM_SCALE 0.2
#define GEN_ROUTER_HIDDEN_GAIN 32.0
#define GEN_ROUTER_PREDICTOR_GAIN 1.0
#define GEN_MAX_ELEM (1ull << 40)       /* j must fit in 40 bits */
#define GEN_MAX_TENSORS (1ull << 24)    /* i must fit in 24 bits */
#define GEN_BLOCK (1u << 16)            /* elements a thread takes at a time */
#define GEN_CHUNK (1u << 22)            /* elements per write chunk (8 MiB) */

/* ---- rules and shapes ---------------------------------------------------- */

const char *gen_rule_name(enum gen_rule rule)
{
	switch (rule) {
	case GEN_RULE_MATRIX:
		return "matrix";
	case GEN_RULE_NORM:
		return "norm";
	case GEN_RULE_ROUTER_HIDDEN:
		return "router_hidden";
	case GEN_RULE_ROUTER_PREDICTOR:
		return "router_predictor";
	case GEN_RULE_ZERO:
		return "zero";
	case GEN_RULE_ROUTER_BIAS:
		return "router_bias";
	}
	return "?";
}

int gen_shape_variant(const char *variant, struct gen_shape *s, struct cm_err *err)
{
	static const struct {
		const char *name;
		struct gen_shape shape;
	} variants[] = {
		{ "tiny", { GEN_VOCAB, 256, 4, 4, 2, 64, 768 } },
		{ "0.6b", { GEN_VOCAB, 1024, 28, 16, 8, 128, 3072 } },
	};
	for (size_t k = 0; variant && k < CM_ARRAY_LEN(variants); k++) {
		if (!strcmp(variant, variants[k].name)) {
			*s = variants[k].shape;
			return CM_OK;
		}
	}
	return cm_err_set(err, CM_EINVAL, "unknown variant '%s' (expected tiny or 0.6b)",
			  variant ? variant : "(null)");
}

/* Symbolic dimensions of the tensor tables below. */
enum gen_dim { DIM_NONE, DIM_V, DIM_D, DIM_Q, DIM_KV, DIM_HD, DIM_FF, DIM_R, DIM_TWO };

struct gen_entry {
	const char *suffix;
	enum gen_rule rule;
	enum gen_dim dims[2];
};

static const struct gen_entry gen_layer_entries[] = {
	{ "input_layernorm.weight", GEN_RULE_NORM, { DIM_D, DIM_NONE } },
	{ "self_attn.q_proj.weight", GEN_RULE_MATRIX, { DIM_Q, DIM_D } },
	{ "self_attn.k_proj.weight", GEN_RULE_MATRIX, { DIM_KV, DIM_D } },
	{ "self_attn.v_proj.weight", GEN_RULE_MATRIX, { DIM_KV, DIM_D } },
	{ "self_attn.o_proj.weight", GEN_RULE_MATRIX, { DIM_D, DIM_Q } },
	{ "self_attn.q_norm.weight", GEN_RULE_NORM, { DIM_HD, DIM_NONE } },
	{ "self_attn.k_norm.weight", GEN_RULE_NORM, { DIM_HD, DIM_NONE } },
	{ "post_attention_layernorm.weight", GEN_RULE_NORM, { DIM_D, DIM_NONE } },
	{ "mlp.gate_proj.weight", GEN_RULE_MATRIX, { DIM_FF, DIM_D } },
	{ "mlp.up_proj.weight", GEN_RULE_MATRIX, { DIM_FF, DIM_D } },
	{ "mlp.down_proj.weight", GEN_RULE_MATRIX, { DIM_D, DIM_FF } },
};

static const char *const gen_router_modules[] = { "router_attention", "router_mlp" };

static const struct gen_entry gen_router_entries[] = {
	{ "hidden_layer.weight", GEN_RULE_ROUTER_HIDDEN, { DIM_R, DIM_D } },
	{ "hidden_layer.bias", GEN_RULE_ZERO, { DIM_R, DIM_NONE } },
	{ "weight_predictor.weight", GEN_RULE_ROUTER_PREDICTOR, { DIM_TWO, DIM_R } },
	{ "weight_predictor.bias", GEN_RULE_ROUTER_BIAS, { DIM_TWO, DIM_NONE } },
};

static uint64_t gen_dim_size(const struct gen_shape *s, enum gen_dim dim)
{
	switch (dim) {
	case DIM_NONE:
		return 0;
	case DIM_V:
		return s->vocab;
	case DIM_D:
		return s->hidden;
	case DIM_Q:
		return (uint64_t)s->n_head * s->head_dim;
	case DIM_KV:
		return (uint64_t)s->n_kv_head * s->head_dim;
	case DIM_HD:
		return s->head_dim;
	case DIM_FF:
		return s->intermediate;
	case DIM_R:
		return s->hidden / 4;
	case DIM_TWO:
		return 2;
	}
	return 0;
}

/* Appends one tensor; the name is prefix followed by suffix. */
static int gen_push(struct gen_tensor *v, size_t *k, uint64_t *begin, const struct gen_shape *s,
		    const char *prefix, const struct gen_entry *e, struct cm_err *err)
{
	struct gen_tensor *t = &v[*k];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s%s", prefix, e->suffix);
	t->index = (uint32_t)*k;
	t->rule = e->rule;
	t->n_dims = e->dims[1] == DIM_NONE ? 1 : 2;
	t->n_elem = 1;
	for (int32_t a = 0; a < t->n_dims; a++) {
		t->shape[a] = gen_dim_size(s, e->dims[a]);
		t->n_elem *= t->shape[a];
	}
	if (t->n_elem >= GEN_MAX_ELEM)
		return cm_err_set(err, CM_ERANGE, "%s has %llu elements (limit 2^40)", t->name,
				  (unsigned long long)t->n_elem);
	t->begin = *begin;
	*begin += t->n_elem;
	(*k)++;
	return CM_OK;
}

static int gen_shape_check(const struct gen_shape *s, bool routers, struct cm_err *err)
{
	if (!s->vocab || !s->hidden || !s->n_layer || !s->n_head || !s->n_kv_head ||
	    !s->head_dim || !s->intermediate)
		return cm_err_set(err, CM_ERANGE, "model shape has a zero size");
	if (routers && s->hidden % 4)
		return cm_err_set(err, CM_ERANGE,
				  "routers need a hidden size divisible by 4, not %u", s->hidden);
	if ((uint64_t)s->n_layer * 19 + 2 >= GEN_MAX_TENSORS)
		return cm_err_set(err, CM_ERANGE, "%u layers is too many (tensor index limit 2^24)",
				  s->n_layer);
	return CM_OK;
}

int gen_tensors_build(const struct gen_shape *s, bool routers, struct gen_tensor **out,
		      size_t *n, struct cm_err *err)
{
	int rc = gen_shape_check(s, routers, err);
	if (rc < 0)
		return rc;
	size_t cap = 2 + (size_t)s->n_layer * (11 + (routers ? 8 : 0));
	struct gen_tensor *v = malloc(cap * sizeof(*v));
	if (!v)
		return cm_err_set(err, CM_ENOMEM, "out of memory for %zu tensors", cap);
	static const struct gen_entry embed = { "embed_tokens.weight", GEN_RULE_MATRIX,
						{ DIM_V, DIM_D } };
	static const struct gen_entry norm = { "norm.weight", GEN_RULE_NORM, { DIM_D, DIM_NONE } };
	size_t k = 0;
	uint64_t begin = 0;
	char prefix[64];
	rc = gen_push(v, &k, &begin, s, "model.", &embed, err);
	for (uint32_t l = 0; rc == CM_OK && l < s->n_layer; l++) {
		snprintf(prefix, sizeof(prefix), "model.layers.%u.", l);
		for (size_t e = 0; rc == CM_OK && e < CM_ARRAY_LEN(gen_layer_entries); e++)
			rc = gen_push(v, &k, &begin, s, prefix, &gen_layer_entries[e], err);
	}
	if (rc == CM_OK)
		rc = gen_push(v, &k, &begin, s, "model.", &norm, err);
	for (uint32_t l = 0; routers && rc == CM_OK && l < s->n_layer; l++) {
		for (size_t m = 0; m < CM_ARRAY_LEN(gen_router_modules); m++) {
			snprintf(prefix, sizeof(prefix), "model.layers.%u.%s.", l,
				 gen_router_modules[m]);
			for (size_t e = 0; rc == CM_OK && e < CM_ARRAY_LEN(gen_router_entries); e++)
				rc = gen_push(v, &k, &begin, s, prefix, &gen_router_entries[e],
					      err);
		}
	}
	if (rc < 0) {
		free(v);
		return rc;
	}
	CM_ASSERT(k == cap);
	*out = v;
	*n = k;
	return CM_OK;
}

/* ---- values (section 3) -------------------------------------------------- */

static inline uint64_t gen_mix(uint64_t z)
{
	z ^= z >> 30;
	z *= 0xBF58476D1CE4E5B9ull;
	z ^= z >> 27;
	z *= 0x94D049BB133111EBull;
	z ^= z >> 31;
	return z;
}

/* t = 2u - 1 in [-1, 1); both steps are exact. z >> 11 < 2^53 converts exactly, and the
 * signed conversion is one instruction. */
static inline double gen_t(uint64_t z)
{
	double u = (double)(int64_t)(z >> 11) * 0x1p-53;
	return 2.0 * u - 1.0;
}

/* 1 + (t * 0.2) with two roundings: the volatile keeps any compiler from fusing the
 * product and the sum into an FMA, whatever -ffp-contract says. */
static inline double gen_norm(double t)
{
	volatile double p = t * GEN_NORM_SCALE;
	return 1.0 + p;
}

/* w to float32 (nearest even), then the float32 bits to bf16 (nearest even). */
static inline uint16_t gen_bf16(double w)
{
	float f = (float)w;
	uint32_t b;
	memcpy(&b, &f, sizeof(b));
	return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

static inline uint16_t gen_le16(uint16_t x)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	return __builtin_bswap16(x);
#else
	return x;
#endif
}

uint64_t gen_hash(uint64_t seed, uint32_t i, uint64_t j)
{
	return gen_mix(seed + GEN_GOLDEN * (((uint64_t)i << 40) | j));
}

uint16_t gen_bf16_from_double(double w)
{
	return gen_bf16(w);
}

double gen_value(uint64_t seed, uint32_t i, enum gen_rule rule, uint32_t hidden, uint64_t j)
{
	switch (rule) {
	case GEN_RULE_MATRIX:
		return gen_t(gen_hash(seed, i, j)) * GEN_MATRIX_SCALE;
	case GEN_RULE_NORM:
		return gen_norm(gen_t(gen_hash(seed, i, j)));
	case GEN_RULE_ROUTER_HIDDEN:
		return (gen_t(gen_hash(seed, i, j)) * GEN_ROUTER_HIDDEN_GAIN) /
		       sqrt((double)hidden);
	case GEN_RULE_ROUTER_PREDICTOR:
		return (gen_t(gen_hash(seed, i, j)) * GEN_ROUTER_PREDICTOR_GAIN) /
		       sqrt((double)(hidden / 4));
	case GEN_RULE_ZERO:
		return 0.0;
	case GEN_RULE_ROUTER_BIAS:
		return j == 0 ? GEN_ROUTER_BIAS0_OFFSET : 0.0;
	}
	return 0.0;
}

void gen_tensor_bf16(uint64_t seed, uint32_t i, enum gen_rule rule, uint32_t hidden, uint64_t j0,
		     uint64_t n, uint16_t *out)
{
	CM_ASSERT(j0 <= GEN_MAX_ELEM && n <= GEN_MAX_ELEM - j0);
	/* (i << 40 | j) = (i << 40) + j for j < 2^40, so s steps by GEN_GOLDEN per element. */
	uint64_t s = seed + GEN_GOLDEN * (((uint64_t)i << 40) | j0);
	bool hid = rule == GEN_RULE_ROUTER_HIDDEN;  /* the router rules' gain and fan-in */
	double g = hid ? GEN_ROUTER_HIDDEN_GAIN : GEN_ROUTER_PREDICTOR_GAIN;
	double r = sqrt((double)(hid ? hidden : hidden / 4));
	switch (rule) {
	case GEN_RULE_MATRIX:
		for (uint64_t k = 0; k < n; k++, s += GEN_GOLDEN)
			out[k] = gen_le16(gen_bf16(gen_t(gen_mix(s)) * GEN_MATRIX_SCALE));
		break;
	case GEN_RULE_NORM:
		for (uint64_t k = 0; k < n; k++, s += GEN_GOLDEN)
			out[k] = gen_le16(gen_bf16(gen_norm(gen_t(gen_mix(s)))));
		break;
	case GEN_RULE_ROUTER_HIDDEN:
	case GEN_RULE_ROUTER_PREDICTOR:
		for (uint64_t k = 0; k < n; k++, s += GEN_GOLDEN)
			out[k] = gen_le16(gen_bf16((gen_t(gen_mix(s)) * g) / r));
		break;
	case GEN_RULE_ZERO:
	case GEN_RULE_ROUTER_BIAS:
		for (uint64_t k = 0; k < n; k++)
			out[k] = gen_le16(gen_bf16(gen_value(seed, i, rule, hidden, j0 + k)));
		break;
	}
}

/* ---- parallel filling ---------------------------------------------------- */

/* Fills out with the elements [e0, e0 + n) of the data section of tensors t[0 .. n_t). */
static void gen_fill_range(const struct gen_tensor *t, size_t n_t, uint64_t seed, uint32_t hidden,
			   uint64_t e0, uint64_t n, uint16_t *out)
{
	size_t lo = 0, hi = n_t;  /* the last tensor with begin <= e0 */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (t[mid].begin <= e0)
			lo = mid;
		else
			hi = mid;
	}
	for (size_t k = lo; n && k < n_t; k++) {
		uint64_t j0 = e0 - t[k].begin;
		uint64_t m = CM_MIN(n, t[k].n_elem - j0);
		gen_tensor_bf16(seed, t[k].index, t[k].rule, hidden, j0, m, out);
		out += m;
		e0 += m;
		n -= m;
	}
	CM_ASSERT(n == 0);
}

/* Where the data section goes: the file, written by every thread at its own offsets, and the
 * running sha256, fed in order by one thread at a time. */
struct gen_sink {
	EVP_MD_CTX *md;
	int fd;
	uint64_t data_pos;      /* file offset of the data section */
	atomic_int rc;          /* CM_OK until a hash or a write fails */
	atomic_int sys_errno;   /* errno of the first failed write */
};

static void gen_sink_fail(struct gen_sink *sink, int rc, int sys_errno)
{
	int ok = CM_OK;
	if (atomic_compare_exchange_strong(&sink->rc, &ok, rc))
		atomic_store(&sink->sys_errno, sys_errno);
}

/* Writes data at file offset pos; any thread. */
static void gen_sink_pwrite(struct gen_sink *sink, const void *data, size_t len, uint64_t pos)
{
	const char *p = data;
	while (len && atomic_load(&sink->rc) == CM_OK) {
		ssize_t w = pwrite(sink->fd, p, len, (off_t)pos);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			gen_sink_fail(sink, CM_EIO, w < 0 ? errno : EIO);
			return;
		}
		p += w;
		pos += (uint64_t)w;
		len -= (size_t)w;
	}
}

/* Feeds the next bytes of the data section to the hash; one thread at a time, in order. */
static void gen_sink_hash(struct gen_sink *sink, const void *data, size_t len)
{
	if (atomic_load(&sink->rc) == CM_OK && EVP_DigestUpdate(sink->md, data, len) != 1)
		gen_sink_fail(sink, CM_EINTERNAL, 0);
}

/* One pool job: every thread takes GEN_BLOCK elements at a time of [e0, e0 + n), fills them
 * and, with a sink, writes them to the file. With a sink, thread 0 first hashes the
 * previous chunk (flush), which stays untouched in the other buffer. */
struct gen_work {
	const struct gen_tensor *t;
	size_t n_t;
	uint64_t seed;
	uint32_t hidden;
	uint64_t e0, n;
	uint16_t *out;              /* [n] */
	atomic_uint_fast64_t next;  /* next block to take */
	const void *flush;          /* [flush_bytes], or nothing */
	size_t flush_bytes;
	struct gen_sink *sink;      /* NULL: fill only */
};

static void gen_work_run(void *ctx, int ith, int nth)
{
	struct gen_work *w = ctx;
	(void)nth;
	if (ith == 0 && w->flush_bytes)
		gen_sink_hash(w->sink, w->flush, w->flush_bytes);
	for (;;) {
		uint64_t off = atomic_fetch_add(&w->next, 1) * GEN_BLOCK;
		if (off >= w->n)
			break;
		uint64_t m = CM_MIN((uint64_t)GEN_BLOCK, w->n - off);
		gen_fill_range(w->t, w->n_t, w->seed, w->hidden, w->e0 + off, m, w->out + off);
		if (w->sink)
			gen_sink_pwrite(w->sink, w->out + off, (size_t)m * 2,
					w->sink->data_pos + (w->e0 + off) * 2);
	}
}

void gen_tensor_fill(struct cm_pool *pool, uint64_t seed, const struct gen_tensor *t,
		     uint32_t hidden, uint16_t *out)
{
	struct gen_work w = { .t = t, .n_t = 1, .seed = seed, .hidden = hidden,
			      .e0 = t->begin, .n = t->n_elem, .out = out };
	atomic_init(&w.next, 0);
	cm_pool_run(pool, gen_work_run, &w);
}

/* ---- JSON files ---------------------------------------------------------- */

/* Serialises and frees obj; NULL when out of memory (obj may be NULL already). */
static char *gen_json_text(json_t *obj, size_t flags)
{
	char *text = obj ? json_dumps(obj, flags) : NULL;
	json_decref(obj);
	return text;
}

/* Adds every (key, value) pair of the NULL-terminated list and takes ownership of every
 * value, even when it fails; false when obj or a value is NULL (out of memory). */
static bool gen_json_set(json_t *obj, ...)
{
	va_list ap;
	bool ok = obj != NULL;
	va_start(ap, obj);
	for (const char *key; (key = va_arg(ap, const char *));) {
		json_t *val = va_arg(ap, json_t *);
		if (!ok || !val) {
			json_decref(val);
			ok = false;
		} else if (json_object_set_new(obj, key, val) < 0) {
			ok = false;  /* jansson has released val */
		}
	}
	va_end(ap);
	return ok;
}

/* A JSON array of the integers in v[0 .. n); NULL when out of memory. */
static json_t *gen_json_ints(size_t n, const uint64_t *v)
{
	json_t *arr = json_array();
	for (size_t k = 0; arr && k < n; k++) {
		if (json_array_append_new(arr, json_integer((json_int_t)v[k])) < 0) {
			json_decref(arr);
			arr = NULL;
		}
	}
	return arr;
}

/* Pretty JSON: Python-like floats (1e-06, 1000000.0), a newline at the end. */
static char *gen_json_pretty(json_t *obj)
{
	char *text = gen_json_text(obj, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
	if (!text)
		return NULL;
	size_t len = strlen(text);
	char *full = realloc(text, len + 2);
	if (!full) {
		free(text);
		return NULL;
	}
	memcpy(full + len, "\n", 2);
	return full;
}

char *gen_config_text(const struct gen_shape *s, const char *variant, uint64_t seed,
		      bool routers)
{
	json_t *arch = json_array();
	if (arch && json_array_append_new(arch, json_string("Qwen3ForCausalLM")) < 0) {
		json_decref(arch);
		arch = NULL;
	}
	json_t *rand = json_object();
	bool ok = gen_json_set(rand, "generator", json_string(GEN_GENERATOR), "variant",
			       json_string(variant), "seed", json_integer((json_int_t)seed), NULL);
	json_t *cfg = json_object();
	ok = gen_json_set(cfg, "architectures", arch, "attention_bias", json_false(),
			  "attention_dropout", json_real(0.0), "bos_token_id", json_integer(151643),
			  "eos_token_id", json_integer(151645), "head_dim",
			  json_integer(s->head_dim), "hidden_act", json_string("silu"),
			  "hidden_size", json_integer(s->hidden), "initializer_range",
			  json_real(0.02), "intermediate_size", json_integer(s->intermediate),
			  "max_position_embeddings", json_integer(40960), "max_window_layers",
			  json_integer(s->n_layer), "model_type", json_string("qwen3"),
			  "num_attention_heads", json_integer(s->n_head), "num_hidden_layers",
			  json_integer(s->n_layer), "num_key_value_heads",
			  json_integer(s->n_kv_head), "rms_norm_eps", json_real(1e-6),
			  "rope_scaling", json_null(), "rope_theta", json_real(1e6),
			  "sliding_window", json_null(), "tie_word_embeddings", json_true(),
			  "torch_dtype", json_string("bfloat16"), "use_cache", json_true(),
			  "use_sliding_window", json_false(), "vocab_size", json_integer(s->vocab),
			  "tandem_rand", rand, NULL) && ok;
	if (routers) {
		json_t *skip = json_object();
		ok = gen_json_set(skip, "router", json_string("mlp"), "router_hidden",
				  json_integer(s->hidden / 4), "input",
				  json_string("layer_input_residual"), "decision",
				  json_string("execute_iff_z0_ge_z1"), NULL) && ok;
		ok = gen_json_set(cfg, "tandem_skipgpt", skip, NULL) && ok;
	}
	if (!ok) {
		json_decref(cfg);
		return NULL;
	}
	return gen_json_pretty(cfg);
}

/* Qwen3's generation_config.json. */
static char *gen_generation_config_text(void)
{
	static const uint64_t eos[] = { 151645, 151643 };
	json_t *obj = json_object();
	if (!gen_json_set(obj, "bos_token_id", json_integer(151643), "eos_token_id",
			  gen_json_ints(CM_ARRAY_LEN(eos), eos), "pad_token_id",
			  json_integer(151643), "do_sample", json_true(), "temperature",
			  json_real(0.6), "top_p", json_real(0.95), "top_k", json_integer(20),
			  "transformers_version", json_string("4.51.0"), NULL)) {
		json_decref(obj);
		return NULL;
	}
	return gen_json_pretty(obj);
}

/* The safetensors header JSON (tensors in canonical order), padded with spaces to a multiple
 * of 8 bytes so that the data starts 8-aligned. */
static char *gen_header_text(const struct gen_tensor *t, size_t n, uint64_t seed, size_t *len)
{
	char seed_text[24];
	snprintf(seed_text, sizeof(seed_text), "%llu", (unsigned long long)seed);
	json_t *meta = json_object();
	bool ok = gen_json_set(meta, "format", json_string("pt"), "generator",
			       json_string(GEN_GENERATOR), "seed", json_string(seed_text), NULL);
	json_t *hdr = json_object();
	ok = gen_json_set(hdr, "__metadata__", meta, NULL) && ok;
	for (size_t k = 0; ok && k < n; k++) {
		uint64_t offs[2] = { t[k].begin * 2, (t[k].begin + t[k].n_elem) * 2 };
		json_t *ent = json_object();
		ok = gen_json_set(ent, "dtype", json_string("BF16"), "shape",
				  gen_json_ints((size_t)t[k].n_dims, t[k].shape), "data_offsets",
				  gen_json_ints(2, offs), NULL);
		ok = gen_json_set(hdr, t[k].name, ent, NULL) && ok;
	}
	if (!ok) {
		json_decref(hdr);
		return NULL;
	}
	char *text = gen_json_text(hdr, JSON_COMPACT);
	if (!text)
		return NULL;
	size_t raw = strlen(text), padded = (raw + 7) / 8 * 8;
	char *full = realloc(text, padded + 1);
	if (!full) {
		free(text);
		return NULL;
	}
	memset(full + raw, ' ', padded - raw);
	full[padded] = '\0';
	*len = padded;
	return full;
}

/* ---- the model folder ---------------------------------------------------- */

/* mkdir -p dir: creates dir and its missing parents. */
static int gen_mkdir_p(const char *dir, struct cm_err *err)
{
	char *p = strdup(dir);
	if (!p)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	int rc = CM_OK;
	for (char *c = p + 1;; c++) {
		if (*c != '/' && *c != '\0')
			continue;
		char saved = *c;
		*c = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST) {
			rc = cm_err_set(err, CM_EIO, "cannot create folder %s: %s", p,
					strerror(errno));
			break;
		}
		*c = saved;
		if (!saved)
			break;
	}
	free(p);
	struct stat st;
	if (rc == CM_OK && (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)))
		rc = cm_err_set(err, CM_EIO, "%s is not a folder", dir);
	return rc;
}

/* dir/name in a malloc'd string; NULL when out of memory. */
static char *gen_path(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);
	if (p) {
		memcpy(p, dir, a);
		p[a] = '/';
		memcpy(p + a + 1, name, b + 1);
	}
	return p;
}

static int gen_write_file(const char *dir, const char *name, const void *data, size_t len,
			  struct cm_err *err)
{
	char *path = gen_path(dir, name);
	if (!path)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	int rc = cm_file_write(path, data, len, err);
	free(path);
	return rc;
}

/* Writes malloc'd JSON text (NULL: out of memory) to dir/name and frees it. */
static int gen_write_json(const char *dir, const char *name, char *text, struct cm_err *err)
{
	if (!text)
		return cm_err_set(err, CM_ENOMEM, "out of memory building %s", name);
	int rc = gen_write_file(dir, name, text, strlen(text), err);
	free(text);
	return rc;
}

/* StreamingThinker's seven added tokens (design/algorithms.md §1.2.1), in order from
 * GEN_FIRST_STREAM_ID: the Qwen3 tokenizer's length. */
#define GEN_FIRST_STREAM_ID 151669
static const char *const gen_stream_tokens[] = { "<SEP>", "<EOQ>", "<EOS>",   "<EOT>",
						 "<EOR>", "<EOA>", "<ignore>" };

/* Where the added_tokens array of tokenizer.json text ends: the offset just past
 * its last element ('}'); 0 when not found. Strings are skipped whole. */
static size_t gen_added_tokens_end(const char *s, size_t n)
{
	const char *key = memmem(s, n, "\"added_tokens\"", 14);
	if (!key)
		return 0;
	size_t i = (size_t)(key - s) + 14, last = 0;
	int depth = 0;
	for (; i < n; i++) {
		char c = s[i];
		if (c == '"' && depth > 0) {
			for (i++; i < n && s[i] != '"'; i++)
				if (s[i] == '\\')
					i++;
		} else if (c == '[' || c == '{') {
			depth++;
		} else if (c == '}') {
			depth--;
			last = i + 1;
		} else if (c == ']' && --depth == 0) {
			return last;
		}
	}
	return 0;
}

/* Writes the embedded Qwen3 tokenizer.json with StreamingThinker's seven tokens
 * appended to added_tokens (ids 151669..151675); the embedded asset itself stays
 * the unmodified upstream file. */
static int gen_write_tokenizer(const char *dir, struct cm_err *err)
{
	const char *src = tandem_asset_tokenizer_json;
	size_t n = (size_t)(tandem_asset_tokenizer_json_end - tandem_asset_tokenizer_json);
	size_t at = gen_added_tokens_end(src, n);
	if (!at)
		return cm_err_set(err, CM_EINTERNAL, "embedded tokenizer.json has no added_tokens");
	if (memmem(src, at, "\"<SEP>\"", 7)) /* an asset that has them already */
		return gen_write_file(dir, "tokenizer.json", src, n, err);
	char *add = NULL;
	size_t add_len = 0;
	FILE *f = open_memstream(&add, &add_len);
	if (!f)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	for (size_t i = 0; i < CM_ARRAY_LEN(gen_stream_tokens); i++)
		fprintf(f,
			",\n    {\n      \"id\": %d,\n      \"content\": \"%s\",\n"
			"      \"single_word\": false,\n      \"lstrip\": false,\n"
			"      \"rstrip\": false,\n      \"normalized\": false,\n"
			"      \"special\": true\n    }",
			GEN_FIRST_STREAM_ID + (int)i, gen_stream_tokens[i]);
	if (fclose(f) != 0 || !add)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	char *out = malloc(n + add_len);
	int rc;
	if (!out) {
		rc = cm_err_set(err, CM_ENOMEM, "out of memory");
	} else {
		memcpy(out, src, at);
		memcpy(out + at, add, add_len);
		memcpy(out + at + add_len, src + at, n - at);
		rc = gen_write_file(dir, "tokenizer.json", out, n + add_len, err);
	}
	free(out);
	free(add);
	return rc;
}

/* Streams the data section: every thread fills and writes chunk k + 1 while thread 0 first
 * hashes chunk k. */
static void gen_stream_data(const struct gen_tensor *t, size_t n, uint64_t seed, uint32_t hidden,
			    struct cm_pool *pool, uint16_t *buf[2], struct gen_sink *sink)
{
	uint64_t total = t[n - 1].begin + t[n - 1].n_elem;
	struct gen_work w = { .t = t, .n_t = n, .seed = seed, .hidden = hidden, .sink = sink };
	int slot = 0;
	for (uint64_t e = 0; e < total && atomic_load(&sink->rc) == CM_OK; e += GEN_CHUNK) {
		w.e0 = e;
		w.n = CM_MIN((uint64_t)GEN_CHUNK, total - e);
		w.out = buf[slot];
		atomic_init(&w.next, 0);
		cm_pool_run(pool, gen_work_run, &w);
		w.flush = buf[slot];
		w.flush_bytes = (size_t)w.n * 2;
		slot ^= 1;
	}
	if (w.flush_bytes)
		gen_sink_hash(sink, w.flush, w.flush_bytes);
}

/* Writes model.safetensors through model.safetensors.tmp; fills rep's hash and size. */
static int gen_write_safetensors(const char *dir, const struct gen_tensor *t, size_t n,
				 uint64_t seed, uint32_t hidden, struct cm_pool *pool,
				 struct gen_report *rep, struct cm_err *err)
{
	int rc = CM_ENOMEM;
	char *path = gen_path(dir, "model.safetensors");
	char *tmp = gen_path(dir, "model.safetensors.tmp");
	size_t hlen = 0;
	char *header = gen_header_text(t, n, seed, &hlen);
	uint16_t *buf[2] = { malloc((size_t)GEN_CHUNK * 2), malloc((size_t)GEN_CHUNK * 2) };
	struct gen_sink sink = { .md = EVP_MD_CTX_new(), .fd = -1, .data_pos = 8 + hlen };
	atomic_init(&sink.rc, CM_OK);
	atomic_init(&sink.sys_errno, 0);
	if (!path || !tmp || !header || !buf[0] || !buf[1] || !sink.md) {
		cm_err_set(err, rc, "out of memory writing model.safetensors");
		goto out_free;
	}
	if (EVP_DigestInit_ex(sink.md, EVP_sha256(), NULL) != 1) {
		rc = cm_err_set(err, CM_EINTERNAL, "sha256 unavailable in libcrypto");
		goto out_free;
	}
	sink.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (sink.fd < 0) {
		rc = cm_err_set(err, CM_EIO, "%s: %s", tmp, strerror(errno));
		goto out_free;
	}
	uint8_t prefix[8];
	for (int b = 0; b < 8; b++)
		prefix[b] = (uint8_t)((uint64_t)hlen >> (8 * b));
	gen_sink_pwrite(&sink, prefix, sizeof(prefix), 0);
	gen_sink_pwrite(&sink, header, hlen, sizeof(prefix));
	gen_stream_data(t, n, seed, hidden, pool, buf, &sink);
	if (atomic_load(&sink.rc) == CM_OK &&
	    EVP_DigestFinal_ex(sink.md, rep->sha256_all, NULL) != 1)
		gen_sink_fail(&sink, CM_EINTERNAL, 0);
	if (close(sink.fd) < 0)
		gen_sink_fail(&sink, CM_EIO, errno);
	sink.fd = -1;
	if (atomic_load(&sink.rc) == CM_OK && rename(tmp, path) < 0)
		gen_sink_fail(&sink, CM_EIO, errno);
	rc = atomic_load(&sink.rc);
	if (rc == CM_EIO)
		cm_err_set(err, rc, "%s: %s", tmp, strerror(atomic_load(&sink.sys_errno)));
	else if (rc < 0)
		cm_err_set(err, rc, "sha256 failed in libcrypto");
	if (rc < 0)
		unlink(tmp);
	rep->file_bytes = sink.data_pos + (t[n - 1].begin + t[n - 1].n_elem) * 2;
out_free:
	if (sink.fd >= 0) {
		close(sink.fd);
		unlink(tmp);
	}
	EVP_MD_CTX_free(sink.md);
	free(buf[0]);
	free(buf[1]);
	free(header);
	free(tmp);
	free(path);
	return rc;
}

int gen_model_write(const char *dir, const struct gen_shape *s, const char *variant,
		    uint64_t seed, bool routers, struct cm_pool *pool, struct gen_report *rep,
		    struct cm_err *err)
{
	int64_t t0 = cm_time_us();
	struct gen_tensor *t = NULL;
	size_t n = 0;
	int rc = gen_tensors_build(s, routers, &t, &n, err);
	if (rc < 0)
		return rc;
	memset(rep, 0, sizeof(*rep));
	rep->n_tensors = n;
	rep->n_params = t[n - 1].begin + t[n - 1].n_elem;
	if ((rc = gen_mkdir_p(dir, err)) < 0 ||
	    (rc = gen_write_json(dir, "config.json", gen_config_text(s, variant, seed, routers),
				 err)) < 0 ||
	    (rc = gen_write_json(dir, "generation_config.json", gen_generation_config_text(),
				 err)) < 0 ||
	    (rc = gen_write_tokenizer(dir, err)) < 0 ||
	    (rc = gen_write_file(dir, "tokenizer_config.json", tandem_asset_tokenizer_config_json,
				 (size_t)(tandem_asset_tokenizer_config_json_end -
					  tandem_asset_tokenizer_config_json),
				 err)) < 0 ||
	    (rc = gen_write_safetensors(dir, t, n, seed, s->hidden, pool, rep, err)) < 0)
		goto out_free;
	rep->seconds = (double)(cm_time_us() - t0) * 1e-6;
out_free:
	free(t);
	return rc;
}

/* ---- the subcommand ------------------------------------------------------ */

int tool_gen_model(const struct tandem_opts *o, int argc, char **argv)
{
	struct cm_err err = { 0 };
	if (argc) {
		fprintf(stderr, "tandem gen-model: unexpected argument '%s'\n", argv[0]);
		return 1;
	}
	if (!o->out || !*o->out) {
		fprintf(stderr, "tandem gen-model: --out DIR is required\n");
		return 1;
	}
	struct gen_shape s;
	if (gen_shape_variant(o->variant, &s, &err) < 0) {
		fprintf(stderr, "tandem gen-model: %s\n", err.msg);
		return 1;
	}
	struct cm_pool *pool = cm_pool_new(cm_cpu_count());
	if (!pool) {
		fprintf(stderr, "tandem gen-model: cannot start threads\n");
		return 2;
	}
	struct gen_report rep;
	int rc = gen_model_write(o->out, &s, o->variant, (uint64_t)o->seed, o->routers, pool, &rep,
				 &err);
	cm_pool_free(pool);
	if (rc < 0) {
		fprintf(stderr, "tandem gen-model: %s\n", err.msg);
		return rc == CM_ENOMEM || rc == CM_EINTERNAL ? 2 : 1;
	}
	char hex[65];
	for (int b = 0; b < 32; b++)
		snprintf(hex + 2 * b, 3, "%02x", rep.sha256_all[b]);
	fprintf(stderr,
		"tandem gen-model: wrote %s: %s seed %lld%s, %zu tensors, %llu parameters, "
		"%llu bytes in %.2f s, sha256 of all tensors %s\n",
		o->out, o->variant, (long long)o->seed, o->routers ? " with routers" : "",
		rep.n_tensors, (unsigned long long)rep.n_params,
		(unsigned long long)rep.file_bytes, rep.seconds, hex);
	return 0;
}
