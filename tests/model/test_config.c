/* model/config.c: config.json of Qwen3 and Llama models, defaults and every error path. */
#include "model/md.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The "config_json" object of a fixture in TANDEM_TEST_DATA (new reference). */
static json_t *fixture_config(const char *file)
{
	const char *dir = getenv("TANDEM_TEST_DATA");
	cr_assert(dir, "TANDEM_TEST_DATA not set");
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	json_error_t jerr;
	json_t *root = json_load_file(path, 0, &jerr);
	cr_assert(root, "%s: %s", path, jerr.text);
	json_t *cfg = json_object_get(root, "config_json");
	cr_assert(json_is_object(cfg));
	json_incref(cfg);
	json_decref(root);
	return cfg;
}

/* Parses a JSON value; consumes the reference. */
static int parse_json(json_t *j, struct md_config *cfg, struct cm_err *err)
{
	char *text = json_dumps(j, JSON_COMPACT);
	cr_assert(text);
	json_decref(j);
	int rc = md_config_parse(text, strlen(text), "cfg.json", cfg, err);
	free(text);
	return rc;
}

static int parse_str(const char *text, struct md_config *cfg, struct cm_err *err)
{
	return md_config_parse(text, strlen(text), "cfg.json", cfg, err);
}

/* The error has code, is one line, names the file and contains want. */
static void assert_err(int rc, const struct cm_err *err, int code, const char *want)
{
	cr_assert_eq(rc, code, "rc %d (%s), want %d: %s", rc, cm_err_str(rc), code, err->msg);
	cr_assert_eq(err->code, code);
	cr_assert_null(strchr(err->msg, '\n'));
	cr_assert(strstr(err->msg, "cfg.json"), "message does not name the file: %s", err->msg);
	cr_assert(strstr(err->msg, want), "message lacks '%s': %s", want, err->msg);
}

static const char llama32_1b[] =
	"{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
	" \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009],"
	" \"head_dim\": 64, \"hidden_act\": \"silu\", \"hidden_size\": 2048,"
	" \"intermediate_size\": 8192, \"max_position_embeddings\": 131072,"
	" \"mlp_bias\": false, \"model_type\": \"llama\", \"num_attention_heads\": 32,"
	" \"num_hidden_layers\": 16, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05,"
	" \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0,"
	" \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192,"
	" \"rope_type\": \"llama3\"}, \"rope_theta\": 500000.0, \"tie_word_embeddings\": true,"
	" \"torch_dtype\": \"bfloat16\", \"vocab_size\": 128256}";

Test(config, tiny_fixture_fields)
{
	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(parse_json(fixture_config("generator_tiny_s1.json"), &c, &err), CM_OK, "%s",
		     err.msg);
	cr_assert_eq(c.arch, MD_ARCH_QWEN3);
	cr_assert_str_eq(c.model_type, "qwen3");
	cr_assert_eq(c.hidden, 256);
	cr_assert_eq(c.intermediate, 768);
	cr_assert_eq(c.n_layer, 4);
	cr_assert_eq(c.n_head, 4);
	cr_assert_eq(c.n_kv_head, 2);
	cr_assert_eq(c.head_dim, 64);
	cr_assert_eq(c.vocab, 151936);
	cr_assert_eq(c.max_pos, 40960);
	cr_assert_eq(c.rope_theta, 1000000.0);
	cr_assert_eq(c.rms_eps, 1e-6);
	cr_assert(c.tie_embeddings);
	cr_assert_not(c.attention_bias);
	cr_assert_eq(c.rope_scaling, MD_ROPE_NONE);
	cr_assert_eq(c.bos_id, 151643);
	cr_assert_eq(c.n_eos, 1);
	cr_assert_eq(c.eos_ids[0], 151645);
	cr_assert_not(c.has_routers);
}

Test(config, qwen3_0_6b_fixture_fields)
{
	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(parse_json(fixture_config("generator_0.6b_s1.json"), &c, &err), CM_OK, "%s",
		     err.msg);
	cr_assert_eq(c.hidden, 1024);
	cr_assert_eq(c.intermediate, 3072);
	cr_assert_eq(c.n_layer, 28);
	cr_assert_eq(c.n_head, 16);
	cr_assert_eq(c.n_kv_head, 8);
	cr_assert_eq(c.head_dim, 128); /* not hidden / heads = 64: Qwen3 sets it explicitly */
}

Test(config, llama3_rope_scaling)
{
	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(parse_str(llama32_1b, &c, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(c.arch, MD_ARCH_LLAMA);
	cr_assert_str_eq(c.model_type, "llama");
	cr_assert_eq(c.hidden, 2048);
	cr_assert_eq(c.n_head, 32);
	cr_assert_eq(c.n_kv_head, 8);
	cr_assert_eq(c.head_dim, 64);
	cr_assert_eq(c.vocab, 128256);
	cr_assert_eq(c.max_pos, 131072);
	cr_assert_eq(c.rope_theta, 500000.0);
	cr_assert_eq(c.rms_eps, 1e-5);
	cr_assert_eq(c.rope_scaling, MD_ROPE_LLAMA3);
	cr_assert_eq(c.rope_factor, 32.0);
	cr_assert_eq(c.rope_low_freq_factor, 1.0);
	cr_assert_eq(c.rope_high_freq_factor, 4.0);
	cr_assert_eq(c.rope_orig_max_pos, 8192);
	cr_assert_eq(c.bos_id, 128000);
	cr_assert_eq(c.n_eos, 3);
	cr_assert_eq(c.eos_ids[0], 128001);
	cr_assert_eq(c.eos_ids[1], 128008);
	cr_assert_eq(c.eos_ids[2], 128009);
	cr_assert(c.tie_embeddings);
}

Test(config, llama_defaults_follow_hf)
{
	json_t *j = json_loads(llama32_1b, 0, NULL);
	json_object_del(j, "num_key_value_heads");
	json_object_del(j, "head_dim");
	json_object_del(j, "rope_theta");
	json_object_del(j, "rope_scaling");
	json_object_del(j, "tie_word_embeddings");
	json_object_del(j, "attention_bias");
	json_object_del(j, "bos_token_id");
	json_object_del(j, "eos_token_id");
	json_object_del(j, "model_type");
	json_object_set_new(j, "some_future_key", json_string("ignored"));
	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(parse_json(j, &c, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(c.n_kv_head, 32);
	cr_assert_eq(c.head_dim, 2048 / 32);
	cr_assert_eq(c.rope_theta, 10000.0);
	cr_assert_eq(c.rope_scaling, MD_ROPE_NONE);
	cr_assert_not(c.tie_embeddings);
	cr_assert_not(c.attention_bias);
	cr_assert_eq(c.bos_id, -1);
	cr_assert_eq(c.n_eos, 0);
	cr_assert_str_eq(c.model_type, "llama");
}

Test(config, linear_rope_and_routers)
{
	json_t *j = fixture_config("generator_tiny_s1.json");
	json_object_set_new(j, "rope_scaling",
			    json_pack("{s:s, s:f}", "type", "linear", "factor", 4.0));
	json_object_set_new(
		j, "tandem_skipgpt",
		json_pack("{s:i, s:s}", "router_hidden", 64, "note", "extra keys ignored"));
	json_object_set_new(j, "attention_bias", json_true());
	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(parse_json(j, &c, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(c.rope_scaling, MD_ROPE_LINEAR);
	cr_assert_eq(c.rope_factor, 4.0);
	cr_assert(c.has_routers);
	cr_assert_eq(c.router_hidden, 64);
	cr_assert(c.attention_bias);
}

Test(config, unknown_architecture)
{
	json_t *j = fixture_config("generator_tiny_s1.json");
	json_object_set_new(j, "architectures", json_pack("[s]", "MistralForCausalLM"));
	struct md_config c;
	struct cm_err err = {0};
	assert_err(parse_json(j, &c, &err), &err, CM_EUNSUPPORTED, "MistralForCausalLM");
}

Test(config, every_required_field_missing)
{
	static const char *const qwen[] = {
		"hidden_size",
		"intermediate_size",
		"num_hidden_layers",
		"num_attention_heads",
		"vocab_size",
		"rms_norm_eps",
		"max_position_embeddings",
		"head_dim",
		"num_key_value_heads",
		"architectures",
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(qwen); i++) {
		json_t *j = fixture_config("generator_tiny_s1.json");
		json_object_del(j, qwen[i]);
		if (!strcmp(qwen[i], "architectures"))
			json_object_del(j, "model_type");
		struct md_config c;
		struct cm_err err = {0};
		assert_err(parse_json(j, &c, &err), &err, CM_EFORMAT, qwen[i]);
		cr_assert(strstr(err.msg, "missing"), "%s", err.msg);
	}
}

Test(config, wrong_types_name_the_field)
{
	static const struct {
		const char *key;
		const char *value;
	} cases[] = {
		{"hidden_size", "\"256\""},
		{"num_hidden_layers", "4.0"},
		{"vocab_size", "[151936]"},
		{"rms_norm_eps", "\"1e-6\""},
		{"rope_theta", "true"},
		{"tie_word_embeddings", "1"},
		{"eos_token_id", "\"</s>\""},
		{"hidden_act", "7"},
		{"rope_scaling", "\"llama3\""},
		{"tandem_skipgpt", "[]"},
		{"architectures", "\"Qwen3ForCausalLM\""},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
		json_t *j = fixture_config("generator_tiny_s1.json");
		json_object_set_new(j, cases[i].key,
				    json_loads(cases[i].value, JSON_DECODE_ANY, NULL));
		struct md_config c;
		struct cm_err err = {0};
		assert_err(parse_json(j, &c, &err), &err, CM_EFORMAT, cases[i].key);
	}
}

Test(config, inconsistent_sizes_are_range_errors)
{
	static const struct {
		const char *key;
		json_int_t value;
		const char *want;
	} cases[] = {
		{"num_key_value_heads", 3, "num_key_value_heads"},
		{"head_dim", 63, "head_dim"},
		{"hidden_size", 0, "hidden_size"},
		{"num_hidden_layers", -1, "num_hidden_layers"},
		{"vocab_size", (json_int_t)1 << 40, "vocab_size"},
		{"intermediate_size", (json_int_t)1 << 21, "intermediate_size"},
		{"eos_token_id", 151936, "eos_token_id"},
		{"bos_token_id", -2, "bos_token_id"},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
		json_t *j = fixture_config("generator_tiny_s1.json");
		json_object_set_new(j, cases[i].key, json_integer(cases[i].value));
		struct md_config c;
		struct cm_err err = {0};
		assert_err(parse_json(j, &c, &err), &err, CM_ERANGE, cases[i].want);
	}
}

Test(config, unsupported_features)
{
	static const struct {
		const char *key;
		const char *value;
		const char *want;
	} cases[] = {
		{"hidden_act", "\"gelu\"", "gelu"},
		{"rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}", "yarn"},
		{"use_sliding_window", "true", "use_sliding_window"},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
		json_t *j = fixture_config("generator_tiny_s1.json");
		json_object_set_new(j, cases[i].key,
				    json_loads(cases[i].value, JSON_DECODE_ANY, NULL));
		struct md_config c;
		struct cm_err err = {0};
		assert_err(parse_json(j, &c, &err), &err, CM_EUNSUPPORTED, cases[i].want);
	}
}

Test(config, rope_scaling_llama3_needs_every_factor)
{
	json_t *j = json_loads(llama32_1b, 0, NULL);
	json_object_del(json_object_get(j, "rope_scaling"), "low_freq_factor");
	struct md_config c;
	struct cm_err err = {0};
	assert_err(parse_json(j, &c, &err), &err, CM_EFORMAT, "rope_scaling.low_freq_factor");
}

Test(config, skipgpt_block_as_the_generator_writes_it)
{
	json_t *j = fixture_config("generator_tiny_s1.json");
	json_object_set_new(j, "tandem_skipgpt",
			    json_pack("{s:s, s:i, s:s, s:s}", "router", "mlp", "router_hidden", 64,
				      "input", "layer_input_residual", "decision",
				      "execute_iff_z0_ge_z1"));
	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(parse_json(j, &c, &err), CM_OK, "%s", err.msg);
	cr_assert(c.has_routers);
	cr_assert_eq(c.router_hidden, 64);

	j = fixture_config("generator_tiny_s1.json");
	json_object_set_new(j, "tandem_skipgpt",
			    json_pack("{s:s, s:i}", "decision", "sample", "router_hidden", 64));
	assert_err(parse_json(j, &c, &err), &err, CM_EUNSUPPORTED, "tandem_skipgpt.decision");
}

Test(config, skipgpt_block_needs_router_hidden)
{
	json_t *j = fixture_config("generator_tiny_s1.json");
	json_object_set_new(j, "tandem_skipgpt", json_object());
	struct md_config c;
	struct cm_err err = {0};
	assert_err(parse_json(j, &c, &err), &err, CM_EFORMAT, "tandem_skipgpt.router_hidden");
}

Test(config, too_many_eos_ids)
{
	json_t *j = fixture_config("generator_tiny_s1.json");
	json_t *eos = json_array();
	for (int i = 0; i < MD_MAX_EOS + 1; i++)
		json_array_append_new(eos, json_integer(i));
	json_object_set_new(j, "eos_token_id", eos);
	struct md_config c;
	struct cm_err err = {0};
	assert_err(parse_json(j, &c, &err), &err, CM_ERANGE, "eos_token_id");
}

Test(config, bad_json_and_non_object)
{
	struct md_config c;
	struct cm_err err = {0};
	assert_err(parse_str("{\"hidden_size\": 256,", &c, &err), &err, CM_EFORMAT, "JSON");
	assert_err(parse_str("", &c, &err), &err, CM_EFORMAT, "JSON");
	assert_err(parse_str("[1, 2]", &c, &err), &err, CM_EFORMAT, "object");
}

Test(config, failure_leaves_cfg_untouched)
{
	struct md_config c;
	memset(&c, 0x5a, sizeof(c));
	struct md_config before = c;
	struct cm_err err = {0};
	json_t *j = fixture_config("generator_tiny_s1.json");
	json_object_set_new(j, "num_key_value_heads", json_integer(3));
	cr_assert_lt(parse_json(j, &c, &err), 0);
	cr_assert_eq(memcmp(&c, &before, sizeof(c)), 0);
}

Test(config, load_from_folder)
{
	const char *tmp = getenv("TANDEM_TEST_TMP");
	cr_assert(tmp);
	char dir[1024], path[1100];
	snprintf(dir, sizeof(dir), "%s/config_%d", tmp, (int)getpid());
	mkdir(tmp, 0755);
	cr_assert(mkdir(dir, 0755) == 0 || access(dir, F_OK) == 0);

	struct md_config c;
	struct cm_err err = {0};
	cr_assert_eq(md_config_load(dir, &c, &err), CM_ENOENT);
	cr_assert(strstr(err.msg, "config.json"), "%s", err.msg);

	snprintf(path, sizeof(path), "%s/config.json", dir);
	cr_assert_eq(cm_file_write(path, llama32_1b, strlen(llama32_1b), &err), CM_OK);
	cr_assert_eq(md_config_load(dir, &c, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(c.arch, MD_ARCH_LLAMA);
	cr_assert_eq(c.n_layer, 16);

	const char bad[] = "{\"architectures\": [\"LlamaForCausalLM\"]}";
	cr_assert_eq(cm_file_write(path, bad, strlen(bad), &err), CM_OK);
	cr_assert_eq(md_config_load(dir, &c, &err), CM_EFORMAT);
	cr_assert(strstr(err.msg, path), "%s", err.msg);
	unlink(path);
	rmdir(dir);
}
