/* config.json of Qwen3ForCausalLM / LlamaForCausalLM, parsed with jansson.
 *
 * Every field the forward pass needs is read and checked here, so later code can
 * trust struct md_config: sizes positive and within sane bounds, heads divisible,
 * head_dim even. Defaults follow Hugging Face transformers where the field is
 * optional. Unknown keys are ignored.
 */
#include "model/md.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CFG_MAX_SIZE ((int64_t)1 << 20) /* bound on hidden, heads, layers, vocab... */
#define CFG_MAX_POS  ((int64_t)1 << 24) /* bound on position counts */

/* Where messages point: the file name and the object being read ("" or "rope_scaling."). */
struct cfg_ctx {
	const char *name;
	struct cm_err *err;
};

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a real number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "something else";
}

static int cfg_missing(const struct cfg_ctx *c, const char *pre, const char *key)
{
	return cm_err_set(c->err, CM_EFORMAT, "%s: missing field '%s%s'", c->name, pre, key);
}

static int cfg_mistyped(const struct cfg_ctx *c, const char *pre, const char *key, const char *want,
			const json_t *v)
{
	return cm_err_set(c->err, CM_EFORMAT, "%s: field '%s%s' must be %s, not %s", c->name, pre,
			  key, want, json_kind(v));
}

/* The value of key in obj, or NULL when absent or null (null means "use the default"). */
static json_t *cfg_get(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_null(v) ? NULL : v;
}

/* Reads an integer in [lo, hi]; when absent, *out = def, or an error if required. */
static int cfg_int(const struct cfg_ctx *c, const json_t *obj, const char *pre, const char *key,
		   bool required, int64_t lo, int64_t hi, int32_t def, int32_t *out)
{
	json_t *v = cfg_get(obj, key);
	if (!v) {
		if (required)
			return cfg_missing(c, pre, key);
		*out = def;
		return CM_OK;
	}
	if (!json_is_integer(v))
		return cfg_mistyped(c, pre, key, "an integer", v);
	json_int_t x = json_integer_value(v);
	if (x < lo || x > hi)
		return cm_err_set(c->err, CM_ERANGE,
				  "%s: field '%s%s' = %lld is outside [%lld, %lld]", c->name, pre,
				  key, (long long)x, (long long)lo, (long long)hi);
	*out = (int32_t)x;
	return CM_OK;
}

/* Reads a finite number (integer or real) > 0, and <= hi; default def when absent. */
static int cfg_num(const struct cfg_ctx *c, const json_t *obj, const char *pre, const char *key,
		   bool required, double hi, double def, double *out)
{
	json_t *v = cfg_get(obj, key);
	if (!v) {
		if (required)
			return cfg_missing(c, pre, key);
		*out = def;
		return CM_OK;
	}
	if (!json_is_number(v))
		return cfg_mistyped(c, pre, key, "a number", v);
	double x = json_number_value(v);
	if (!isfinite(x) || x <= 0 || x > hi)
		return cm_err_set(c->err, CM_ERANGE, "%s: field '%s%s' = %g is outside (0, %g]",
				  c->name, pre, key, x, hi);
	*out = x;
	return CM_OK;
}

static int cfg_bool(const struct cfg_ctx *c, const json_t *obj, const char *key, bool def,
		    bool *out)
{
	json_t *v = cfg_get(obj, key);
	if (!v) {
		*out = def;
		return CM_OK;
	}
	if (!json_is_boolean(v))
		return cfg_mistyped(c, "", key, "a boolean", v);
	*out = json_is_true(v);
	return CM_OK;
}

/* An optional string field; *out = NULL when absent. */
static int cfg_str(const struct cfg_ctx *c, const json_t *obj, const char *pre, const char *key,
		   const char **out)
{
	json_t *v = cfg_get(obj, key);
	*out = NULL;
	if (!v)
		return CM_OK;
	if (!json_is_string(v))
		return cfg_mistyped(c, pre, key, "a string", v);
	*out = json_string_value(v);
	return CM_OK;
}

/* architectures[0] (or model_type when architectures is absent) and model_type. */
static int cfg_arch(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	const char *mt = NULL;
	int rc = cfg_str(c, root, "", "model_type", &mt);
	if (rc < 0)
		return rc;
	json_t *archs = cfg_get(root, "architectures");
	const char *a = NULL;
	if (archs) {
		if (!json_is_array(archs) || json_array_size(archs) == 0)
			return cfg_mistyped(c, "", "architectures", "a non-empty array", archs);
		json_t *a0 = json_array_get(archs, 0);
		if (!json_is_string(a0))
			return cfg_mistyped(c, "", "architectures[0]", "a string", a0);
		a = json_string_value(a0);
	} else if (!mt) {
		return cfg_missing(c, "", "architectures");
	}
	if (a ? !strcmp(a, "Qwen3ForCausalLM") : !strcmp(mt, "qwen3"))
		cfg->arch = MD_ARCH_QWEN3;
	else if (a ? !strcmp(a, "LlamaForCausalLM") : !strcmp(mt, "llama"))
		cfg->arch = MD_ARCH_LLAMA;
	else
		return cm_err_set(c->err, CM_EUNSUPPORTED,
				  "%s: architecture '%.100s' is not supported "
				  "(Qwen3ForCausalLM, LlamaForCausalLM are)",
				  c->name, a ? a : mt);
	if (!mt)
		mt = cfg->arch == MD_ARCH_QWEN3 ? "qwen3" : "llama";
	snprintf(cfg->model_type, sizeof(cfg->model_type), "%s", mt);
	return CM_OK;
}

/* The sizes of the transformer: hidden, heads, layers, vocabulary, positions. */
static int cfg_sizes(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	int rc;
	bool qwen = cfg->arch == MD_ARCH_QWEN3;
	if ((rc = cfg_int(c, root, "", "hidden_size", true, 1, CFG_MAX_SIZE, 0, &cfg->hidden)) ||
	    (rc = cfg_int(c, root, "", "intermediate_size", true, 1, CFG_MAX_SIZE, 0,
			  &cfg->intermediate)) ||
	    (rc = cfg_int(c, root, "", "num_hidden_layers", true, 1, CFG_MAX_SIZE, 0,
			  &cfg->n_layer)) ||
	    (rc = cfg_int(c, root, "", "num_attention_heads", true, 1, CFG_MAX_SIZE, 0,
			  &cfg->n_head)) ||
	    (rc = cfg_int(c, root, "", "vocab_size", true, 1, CFG_MAX_SIZE, 0, &cfg->vocab)) ||
	    (rc = cfg_int(c, root, "", "max_position_embeddings", true, 1, CFG_MAX_POS, 0,
			  &cfg->max_pos)) ||
	    (rc = cfg_int(c, root, "", "num_key_value_heads", qwen, 1, CFG_MAX_SIZE, cfg->n_head,
			  &cfg->n_kv_head)))
		return rc;
	/* HF LlamaConfig: head_dim defaults to hidden_size / num_attention_heads */
	if (!qwen && !cfg_get(root, "head_dim") && cfg->hidden % cfg->n_head)
		return cm_err_set(c->err, CM_ERANGE,
				  "%s: hidden_size (%d) is not a multiple of num_attention_heads "
				  "(%d) and head_dim is absent",
				  c->name, cfg->hidden, cfg->n_head);
	rc = cfg_int(c, root, "", "head_dim", qwen, 1, CFG_MAX_SIZE, cfg->hidden / cfg->n_head,
		     &cfg->head_dim);
	if (rc < 0)
		return rc;
	if (cfg->n_head % cfg->n_kv_head)
		return cm_err_set(c->err, CM_ERANGE,
				  "%s: num_attention_heads (%d) is not a multiple of "
				  "num_key_value_heads (%d)",
				  c->name, cfg->n_head, cfg->n_kv_head);
	if (cfg->head_dim % 2)
		return cm_err_set(c->err, CM_ERANGE, "%s: head_dim (%d) must be even for rotary",
				  c->name, cfg->head_dim);
	if ((int64_t)cfg->n_head * cfg->head_dim > CFG_MAX_SIZE)
		return cm_err_set(c->err, CM_ERANGE,
				  "%s: num_attention_heads x head_dim (%d x %d) is too large",
				  c->name, cfg->n_head, cfg->head_dim);
	return CM_OK;
}

/* rope_scaling: null, {"rope_type"|"type": "llama3"|"linear"|"default", ...}. */
static int cfg_rope_scaling(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	static const char pre[] = "rope_scaling.";
	json_t *rs = cfg_get(root, "rope_scaling");
	cfg->rope_scaling = MD_ROPE_NONE;
	cfg->rope_factor = 1.0;
	cfg->rope_low_freq_factor = 1.0;
	cfg->rope_high_freq_factor = 1.0;
	cfg->rope_orig_max_pos = 0;
	if (!rs)
		return CM_OK;
	if (!json_is_object(rs))
		return cfg_mistyped(c, "", "rope_scaling", "an object or null", rs);
	const char *type = NULL;
	int rc = cfg_str(c, rs, pre, "rope_type", &type);
	if (rc == CM_OK && !type)
		rc = cfg_str(c, rs, pre, "type", &type);
	if (rc < 0)
		return rc;
	if (!type)
		return cfg_missing(c, pre, "rope_type");
	if (!strcmp(type, "default"))
		return CM_OK;
	if (!strcmp(type, "linear")) {
		cfg->rope_scaling = MD_ROPE_LINEAR;
		return cfg_num(c, rs, pre, "factor", true, 1e6, 0, &cfg->rope_factor);
	}
	if (strcmp(type, "llama3"))
		return cm_err_set(c->err, CM_EUNSUPPORTED,
				  "%s: rope_scaling type '%.64s' is not supported "
				  "(llama3, linear are)",
				  c->name, type);
	cfg->rope_scaling = MD_ROPE_LLAMA3;
	if ((rc = cfg_num(c, rs, pre, "factor", true, 1e6, 0, &cfg->rope_factor)) ||
	    (rc = cfg_num(c, rs, pre, "low_freq_factor", true, 1e6, 0,
			  &cfg->rope_low_freq_factor)) ||
	    (rc = cfg_num(c, rs, pre, "high_freq_factor", true, 1e6, 0,
			  &cfg->rope_high_freq_factor)) ||
	    (rc = cfg_int(c, rs, pre, "original_max_position_embeddings", true, 1, CFG_MAX_POS, 0,
			  &cfg->rope_orig_max_pos)))
		return rc;
	if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
		return cm_err_set(c->err, CM_ERANGE,
				  "%s: rope_scaling.high_freq_factor (%g) must exceed "
				  "low_freq_factor (%g)",
				  c->name, cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
	return CM_OK;
}

/* A token id in [0, vocab). */
static int cfg_tok_id(const struct cfg_ctx *c, const char *key, const json_t *v, int32_t vocab,
		      int32_t *out)
{
	if (!json_is_integer(v))
		return cfg_mistyped(c, "", key, "an integer or a list of integers", v);
	json_int_t x = json_integer_value(v);
	if (x < 0 || x >= vocab)
		return cm_err_set(c->err, CM_ERANGE,
				  "%s: %s %lld is outside the vocabulary [0, %d)", c->name, key,
				  (long long)x, vocab);
	*out = (int32_t)x;
	return CM_OK;
}

/* bos_token_id (optional, -1) and eos_token_id (int or list, optional). */
static int cfg_special_ids(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	json_t *bos = cfg_get(root, "bos_token_id");
	json_t *eos = cfg_get(root, "eos_token_id");
	int rc;
	cfg->bos_id = -1;
	cfg->n_eos = 0;
	if (bos && (rc = cfg_tok_id(c, "bos_token_id", bos, cfg->vocab, &cfg->bos_id)) < 0)
		return rc;
	if (!eos)
		return CM_OK;
	if (!json_is_array(eos)) {
		cfg->n_eos = 1;
		return cfg_tok_id(c, "eos_token_id", eos, cfg->vocab, &cfg->eos_ids[0]);
	}
	if (json_array_size(eos) > MD_MAX_EOS)
		return cm_err_set(c->err, CM_ERANGE, "%s: eos_token_id lists %zu ids, at most %d",
				  c->name, json_array_size(eos), MD_MAX_EOS);
	size_t i;
	json_t *v;
	json_array_foreach (eos, i, v) {
		if ((rc = cfg_tok_id(c, "eos_token_id", v, cfg->vocab, &cfg->eos_ids[i])) < 0)
			return rc;
	}
	cfg->n_eos = (int32_t)json_array_size(eos);
	return CM_OK;
}

/* hidden_act, attention_bias, tie_word_embeddings, and features we refuse. */
static int cfg_flags(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	const char *act = NULL;
	bool flag = false;
	int rc;
	if ((rc = cfg_str(c, root, "", "hidden_act", &act)) < 0)
		return rc;
	if (act && strcmp(act, "silu"))
		return cm_err_set(c->err, CM_EUNSUPPORTED,
				  "%s: hidden_act '%.64s' is not supported (silu is)", c->name,
				  act);
	if ((rc = cfg_bool(c, root, "tie_word_embeddings", false, &cfg->tie_embeddings)) ||
	    (rc = cfg_bool(c, root, "attention_bias", false, &cfg->attention_bias)))
		return rc;
	if ((rc = cfg_bool(c, root, "mlp_bias", false, &flag)) < 0)
		return rc;
	if (flag)
		return cm_err_set(c->err, CM_EUNSUPPORTED, "%s: mlp_bias = true is not supported",
				  c->name);
	if ((rc = cfg_bool(c, root, "use_sliding_window", false, &flag)) < 0)
		return rc;
	if (flag)
		return cm_err_set(c->err, CM_EUNSUPPORTED,
				  "%s: use_sliding_window = true is not supported", c->name);
	return CM_OK;
}

/* The optional "tandem_skipgpt" block: {"router_hidden": n, ...}. */
static int cfg_skipgpt(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	json_t *sg = cfg_get(root, "tandem_skipgpt");
	cfg->has_routers = false;
	cfg->router_hidden = 0;
	if (!sg)
		return CM_OK;
	if (!json_is_object(sg))
		return cfg_mistyped(c, "", "tandem_skipgpt", "an object", sg);
	/* the one router the engine implements; other kinds would run silently wrong */
	static const char *const fixed[][2] = {
		{"router", "mlp"},
		{"input", "layer_input_residual"},
		{"decision", "execute_iff_z0_ge_z1"},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(fixed); i++) {
		const char *v = NULL;
		int rc = cfg_str(c, sg, "tandem_skipgpt.", fixed[i][0], &v);
		if (rc < 0)
			return rc;
		if (v && strcmp(v, fixed[i][1]))
			return cm_err_set(c->err, CM_EUNSUPPORTED,
					  "%s: tandem_skipgpt.%s '%.64s' is not supported (%s is)",
					  c->name, fixed[i][0], v, fixed[i][1]);
	}
	cfg->has_routers = true;
	return cfg_int(c, sg, "tandem_skipgpt.", "router_hidden", true, 1, CFG_MAX_SIZE, 0,
		       &cfg->router_hidden);
}

static int cfg_from_root(const struct cfg_ctx *c, const json_t *root, struct md_config *cfg)
{
	int rc;
	if (!json_is_object(root))
		return cm_err_set(c->err, CM_EFORMAT, "%s: top level must be an object, not %s",
				  c->name, json_kind(root));
	if ((rc = cfg_arch(c, root, cfg)) || (rc = cfg_sizes(c, root, cfg)) ||
	    (rc = cfg_num(c, root, "", "rms_norm_eps", true, 1.0, 0, &cfg->rms_eps)) ||
	    (rc = cfg_num(c, root, "", "rope_theta", false, 1e12, 10000.0, &cfg->rope_theta)) ||
	    (rc = cfg_rope_scaling(c, root, cfg)) || (rc = cfg_special_ids(c, root, cfg)) ||
	    (rc = cfg_flags(c, root, cfg)) || (rc = cfg_skipgpt(c, root, cfg)))
		return rc;
	return CM_OK;
}

int md_config_parse(const char *json, size_t len, const char *name, struct md_config *cfg,
		    struct cm_err *err)
{
	struct cfg_ctx c = {.name = name ? name : "config.json", .err = err};
	json_error_t jerr;
	json_t *root = json_loadb(json, len, 0, &jerr);
	if (!root)
		return cm_err_set(err, CM_EFORMAT, "%s: invalid JSON at line %d column %d: %s",
				  c.name, jerr.line, jerr.column, jerr.text);
	struct md_config tmp;
	memset(&tmp, 0, sizeof(tmp));
	int rc = cfg_from_root(&c, root, &tmp);
	json_decref(root);
	if (rc < 0)
		return rc;
	*cfg = tmp;
	return CM_OK;
}

int md_config_load(const char *dir, struct md_config *cfg, struct cm_err *err)
{
	size_t dlen = strlen(dir);
	char *path = malloc(dlen + sizeof("/config.json"));
	if (!path)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	memcpy(path, dir, dlen);
	memcpy(path + dlen, "/config.json", sizeof("/config.json"));
	char *text = NULL;
	size_t len = 0;
	int rc = cm_file_read(path, &text, &len, err);
	if (rc == CM_ENOENT)
		cm_err_set(err, rc, "%s: no such file (is '%s' a model folder?)", path, dir);
	if (rc == CM_OK) {
		rc = md_config_parse(text, len, path, cfg, err);
		free(text);
	}
	free(path);
	return rc;
}
