/* tandem-rand-v1 (design/random-model.md): the test vectors of section 4, every tensor hash
 * of the fixtures, and the files `tandem gen-model` writes. */
#include "model/md.h"
#include "tools/gen_model.h"
#include "tools/tools.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOKENIZER_JSON_SHA256 "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
#define TOKENIZER_CONFIG_SHA256 "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63"

/* ---- helpers ------------------------------------------------------------- */

static json_t *load_fixture(const char *name)
{
	const char *dir = getenv("TANDEM_TEST_DATA");
	cr_assert(dir, "TANDEM_TEST_DATA is not set");
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	json_error_t jerr;
	json_t *j = json_load_file(path, 0, &jerr);
	cr_assert(j, "%s: %s", path, jerr.text);
	return j;
}

static void hex_of(const uint8_t *md, char hex[65])
{
	for (int b = 0; b < 32; b++)
		snprintf(hex + 2 * b, 3, "%02x", md[b]);
}

static void sha256_hex(const void *data, size_t len, char hex[65])
{
	uint8_t md[32];
	unsigned int n = 0;
	cr_assert_eq(EVP_Digest(data, len, md, &n, EVP_sha256(), NULL), 1);
	hex_of(md, hex);
}

/* A fresh scratch folder for one test. */
static void scratch_dir(const char *tag, char *out, size_t cap)
{
	const char *tmp = getenv("TANDEM_TEST_TMP");
	cr_assert(tmp, "TANDEM_TEST_TMP is not set");
	char cmd[4200];
	snprintf(out, cap, "%s/gen_model_%s_%d", tmp, tag, (int)getpid());
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", out, tmp);
	cr_assert_eq(system(cmd), 0);
}

static void remove_dir(const char *dir)
{
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

/* Runs `tandem ARGS` with stderr to errfile; returns the exit status (-1: did not exit). */
static int run_tandem(const char *args, const char *errfile)
{
	const char *bin = getenv("TANDEM_BIN");
	cr_assert(bin, "TANDEM_BIN is not set");
	char cmd[8192];
	snprintf(cmd, sizeof(cmd), "'%s' %s 2>'%s'", bin, args, errfile);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_all(const char *path, size_t *len)
{
	char *data = NULL;
	struct cm_err err = { 0 };
	cr_assert_eq(cm_file_read(path, &data, len, &err), CM_OK, "%s", err.msg);
	return data;
}

/* ---- section 4: test vectors ----------------------------------------------- */

struct vector {
	uint32_t i;
	uint64_t j;
	enum gen_rule rule;
	uint32_t hidden;
	bool drawn;
	uint64_t z;
	const char *w;  /* as the spec prints it */
	uint32_t f32;
	uint16_t bf16;
};

static const struct vector vectors[] = {
	{ 0, 0, GEN_RULE_MATRIX, 256, true, 0x5692161d100b05e5ull, "-0.011212146709342766",
	  0xbc37b327, 0xbc38 },
	{ 0, 1, GEN_RULE_MATRIX, 256, true, 0x910a2dec89025cc1ull, "0.00461152118105637",
	  0x3b971c3e, 0x3b97 },
	{ 0, 222568, GEN_RULE_MATRIX, 256, true, 0x2f0920108d0d1ea8ull, "-0.021911621086318455",
	  0xbcb38000, 0xbcb4 },
	{ 1, 0, GEN_RULE_NORM, 256, true, 0x58566716b4756099ull, "0.9380273601696748", 0x3f702290,
	  0x3f70 },
	{ 2, 12345, GEN_RULE_MATRIX, 256, true, 0x3193be1e5a4c60c1ull, "-0.0212238144549284",
	  0xbcaddd91, 0xbcae },
	{ 46, 0, GEN_RULE_ROUTER_HIDDEN, 256, true, 0xe14d5ee7144929a6ull, "1.5203473335869995",
	  0x3fc29abe, 0x3fc3 },
	{ 48, 0, GEN_RULE_ROUTER_PREDICTOR, 256, true, 0x4965a1e3981098abull,
	  "-0.0533232407415051", 0xbd5a6978, 0xbd5a },
	{ 49, 0, GEN_RULE_ROUTER_BIAS, 256, false, 0, "0.25390625", 0x3e820000, 0x3e82 },
	{ 13, 0, GEN_RULE_ROUTER_HIDDEN, 96, true, 0xdedf9ed6f4032d92ull, "2.420746956850937",
	  0x401aed85, 0x401b },
};

static uint16_t host16(uint16_t le)
{
	const uint8_t *b = (const uint8_t *)&le;
	return (uint16_t)(b[0] | b[1] << 8);
}

Test(gen_model, test_vectors)
{
	for (size_t k = 0; k < CM_ARRAY_LEN(vectors); k++) {
		const struct vector *v = &vectors[k];
		if (v->drawn)
			cr_expect_eq(gen_hash(1, v->i, v->j), v->z, "row %zu: z = %016llx", k,
				     (unsigned long long)gen_hash(1, v->i, v->j));
		double w = gen_value(1, v->i, v->rule, v->hidden, v->j);
		cr_expect_eq(w, strtod(v->w, NULL), "row %zu: w = %.17g, spec %s", k, w, v->w);
		float f = (float)w;
		uint32_t bits;
		memcpy(&bits, &f, sizeof(bits));
		cr_expect_eq(bits, v->f32, "row %zu: float32 %08x", k, bits);
		cr_expect_eq(gen_bf16_from_double(w), v->bf16, "row %zu: bf16 %04x", k,
			     gen_bf16_from_double(w));
		uint16_t out[3];
		uint64_t j0 = v->j ? v->j - 1 : 0;
		gen_tensor_bf16(1, v->i, v->rule, v->hidden, j0, 3, out);
		cr_expect_eq(host16(out[v->j - j0]), v->bf16, "row %zu: gen_tensor_bf16 %04x", k,
			     host16(out[v->j - j0]));
	}
}

/* Rounding the double straight to bf16 gives bcb3 on row 3: the float32 step matters. */
Test(gen_model, double_rounding_matters)
{
	double w = gen_value(1, 0, GEN_RULE_MATRIX, 256, 222568);
	uint64_t b;
	memcpy(&b, &w, sizeof(b));
	uint64_t r = (b + (1ull << 44) - 1 + ((b >> 45) & 1)) >> 45;  /* 7 mantissa bits */
	uint64_t sign = r >> 18, exp = (r >> 7) & 0x7ff, mant = r & 0x7f;
	uint16_t direct = (uint16_t)(sign << 15 | (exp - 1023 + 127) << 7 | mant);
	cr_expect_eq(direct, 0xbcb3, "direct %04x", direct);
	cr_expect_eq(gen_bf16_from_double(w), 0xbcb4);
}

Test(gen_model, tensor_list_indices)
{
	struct gen_shape s = { GEN_VOCAB, 96, 1, 4, 2, 24, 288 };
	struct gen_tensor *t;
	size_t n;
	struct cm_err err = { 0 };
	cr_assert_eq(gen_tensors_build(&s, true, &t, &n, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(n, 21u);
	cr_expect_str_eq(t[13].name, "model.layers.0.router_attention.hidden_layer.weight");
	cr_expect_eq(t[13].rule, GEN_RULE_ROUTER_HIDDEN);
	cr_expect_eq(t[13].shape[0], 24u);
	cr_expect_eq(t[13].shape[1], 96u);
	cr_expect_str_eq(t[20].name, "model.layers.0.router_mlp.weight_predictor.bias");
	for (size_t k = 1; k < n; k++)
		cr_expect_eq(t[k].begin, t[k - 1].begin + t[k - 1].n_elem);
	free(t);

	s.hidden = 98;
	cr_expect_eq(gen_tensors_build(&s, true, &t, &n, &err), CM_ERANGE);
	s.n_layer = 0;
	cr_expect_eq(gen_tensors_build(&s, false, &t, &n, &err), CM_ERANGE);
	cr_expect_eq(gen_shape_variant("7b", &s, &err), CM_EINVAL);
	cr_expect(strstr(err.msg, "7b"), "%s", err.msg);
}

/* ---- fixtures: every tensor's sha256 --------------------------------------- */

static void expect_first_values(const uint16_t *v, uint64_t n, json_t *want, const char *name)
{
	size_t k;
	json_t *h;
	cr_expect_eq(json_array_size(want), CM_MIN(n, (uint64_t)4), "%s", name);
	json_array_foreach(want, k, h) {
		char got[8];
		snprintf(got, sizeof(got), "%04x", host16(v[k]));
		cr_expect_str_eq(got, json_string_value(h), "%s[%zu]", name, k);
	}
}

static void expect_tensor_meta(const struct gen_tensor *t, json_t *fx)
{
	cr_expect_eq(json_integer_value(json_object_get(fx, "index")), t->index);
	cr_expect_str_eq(t->name, json_string_value(json_object_get(fx, "name")));
	cr_expect_str_eq(gen_rule_name(t->rule), json_string_value(json_object_get(fx, "rule")),
			 "%s", t->name);
	json_t *shape = json_object_get(fx, "shape");
	cr_assert_eq(json_array_size(shape), (size_t)t->n_dims, "%s", t->name);
	for (int32_t a = 0; a < t->n_dims; a++)
		cr_expect_eq((uint64_t)json_integer_value(json_array_get(shape, (size_t)a)),
			     t->shape[a], "%s dim %d", t->name, a);
}

/* Generates the tensors of a fixture in memory, tensor by tensor on every CPU, and compares
 * the hashes. With subset, only the tensors that want() selects (no model hash then). */
static void check_fixture(const char *file, bool subset, bool (*want)(const struct gen_tensor *,
								      const struct gen_shape *))
{
	json_t *fx = load_fixture(file);
	const char *variant = json_string_value(json_object_get(fx, "variant"));
	uint64_t seed = (uint64_t)json_integer_value(json_object_get(fx, "seed"));
	json_t *tensors = json_object_get(fx, "tensors");
	struct gen_shape s;
	struct gen_tensor *t;
	size_t n;
	struct cm_err err = { 0 };
	cr_assert_eq(gen_shape_variant(variant, &s, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(gen_tensors_build(&s, true, &t, &n, &err), CM_OK, "%s", err.msg);
	size_t n_base = (size_t)json_integer_value(json_object_get(fx, "n_tensors"));
	cr_assert_eq(n, json_array_size(tensors));
	cr_assert_eq(n, (size_t)json_integer_value(json_object_get(fx, "n_tensors_with_routers")));
	cr_expect_eq(t[n_base - 1].begin + t[n_base - 1].n_elem,
		     (uint64_t)json_integer_value(json_object_get(fx, "n_params")));
	cr_expect_eq(t[n - 1].begin + t[n - 1].n_elem,
		     (uint64_t)json_integer_value(json_object_get(fx, "n_params_with_routers")));

	uint64_t max_elem = 0;
	for (size_t k = 0; k < n; k++)
		max_elem = CM_MAX(max_elem, t[k].n_elem);
	uint16_t *buf = malloc(max_elem * sizeof(*buf));
	cr_assert(buf);
	struct cm_pool *pool = cm_pool_new(cm_cpu_count());
	cr_assert(pool);
	EVP_MD_CTX *all = EVP_MD_CTX_new();
	cr_assert(all && EVP_DigestInit_ex(all, EVP_sha256(), NULL) == 1);
	size_t checked = 0;
	for (size_t k = 0; k < n; k++) {
		json_t *f = json_array_get(tensors, k);
		expect_tensor_meta(&t[k], f);
		if (k == n_base && !subset) {
			EVP_MD_CTX *base = EVP_MD_CTX_new();
			uint8_t md[32];
			char hex[65];
			cr_assert(base && EVP_MD_CTX_copy_ex(base, all) == 1);
			cr_assert_eq(EVP_DigestFinal_ex(base, md, NULL), 1);
			hex_of(md, hex);
			cr_expect_str_eq(hex, json_string_value(json_object_get(fx, "sha256_all")));
			EVP_MD_CTX_free(base);
		}
		if (subset && !want(&t[k], &s))
			continue;
		gen_tensor_fill(pool, seed, &t[k], s.hidden, buf);
		char hex[65];
		sha256_hex(buf, t[k].n_elem * 2, hex);
		cr_expect_str_eq(hex, json_string_value(json_object_get(f, "sha256")), "%s",
				 t[k].name);
		expect_first_values(buf, t[k].n_elem, json_object_get(f, "first_bf16_hex"),
				    t[k].name);
		cr_assert_eq(EVP_DigestUpdate(all, buf, t[k].n_elem * 2), 1);
		checked++;
	}
	if (!subset) {
		uint8_t md[32];
		char hex[65];
		cr_assert_eq(EVP_DigestFinal_ex(all, md, NULL), 1);
		hex_of(md, hex);
		cr_expect_str_eq(hex,
				 json_string_value(json_object_get(fx, "sha256_all_with_routers")));
	}
	cr_log_info("%s: %zu of %zu tensors hashed", file, checked, n);
	EVP_MD_CTX_free(all);
	cm_pool_free(pool);
	free(buf);
	free(t);
	json_decref(fx);
}

static bool want_all(const struct gen_tensor *t, const struct gen_shape *s)
{
	(void)t;
	(void)s;
	return true;
}

/* Under the sanitizers: every 1-D tensor, the router tensors, and layers 0 and L-1 whole;
 * not the embedding (155M elements) or the middle layers. */
static bool want_subset(const struct gen_tensor *t, const struct gen_shape *s)
{
	uint32_t base_end = 2 + 11 * s->n_layer;  /* first router tensor */
	if (t->n_dims == 1 || t->index >= base_end)
		return true;
	if (t->index == 0)
		return false;
	uint32_t layer = (t->index - 1) / 11;
	return layer == 0 || layer == s->n_layer - 1;
}

Test(gen_model, fixture_tiny_s1)
{
	check_fixture("generator_tiny_s1.json", false, want_all);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

/* 1.46 GB of values: all of them in a release build (a few seconds), a subset under the
 * sanitizers. */
Test(gen_model, fixture_0_6b_s1, .timeout = 300)
{
	check_fixture("generator_0.6b_s1.json", SANITIZED, want_subset);
}

Test(gen_model, config_text_matches_fixture)
{
	json_t *fx = load_fixture("generator_tiny_s1.json");
	struct gen_shape s;
	cr_assert_eq(gen_shape_variant("tiny", &s, NULL), CM_OK);
	char *text = gen_config_text(&s, "tiny", 1, false);
	cr_assert(text);
	cr_expect_eq(text[strlen(text) - 1], '\n');
	json_t *got = json_loads(text, 0, NULL);
	cr_assert(got, "%s", text);
	cr_expect(json_equal(got, json_object_get(fx, "config_json")), "%s", text);
	json_decref(got);
	free(text);
	json_decref(fx);
}

/* ---- the CLI ----------------------------------------------------------------- */

/* Parses model.safetensors of dir and compares every tensor with the fixture's first n
 * tensors; returns the sha256 of the whole data section. */
static void check_safetensors(const char *dir, json_t *fx, size_t n, char all_hex[65])
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	size_t len;
	uint8_t *data = (uint8_t *)read_all(path, &len);
	cr_assert_geq(len, 8u);
	uint64_t hlen = 0;
	for (int b = 0; b < 8; b++)
		hlen |= (uint64_t)data[b] << (8 * b);
	cr_assert_eq(hlen % 8, 0u, "header length %llu", (unsigned long long)hlen);
	cr_assert_leq(hlen, len - 8);
	json_error_t jerr;
	json_t *hdr = json_loadb((const char *)data + 8, hlen, 0, &jerr);
	cr_assert(hdr, "header: %s", jerr.text);
	cr_expect_eq(json_object_size(hdr), n + 1);
	json_t *meta = json_object_get(hdr, "__metadata__");
	cr_expect_str_eq(json_string_value(json_object_get(meta, "format")), "pt");
	cr_expect_str_eq(json_string_value(json_object_get(meta, "generator")), "tandem-rand-v1");
	cr_expect_str_eq(json_string_value(json_object_get(meta, "seed")), "1");
	const uint8_t *base = data + 8 + hlen;
	uint64_t expect_begin = 0;
	json_t *tensors = json_object_get(fx, "tensors");
	for (size_t k = 0; k < n; k++) {
		json_t *f = json_array_get(tensors, k);
		const char *name = json_string_value(json_object_get(f, "name"));
		json_t *e = json_object_get(hdr, name);
		cr_assert(e, "%s missing from the header", name);
		cr_expect_str_eq(json_string_value(json_object_get(e, "dtype")), "BF16");
		cr_expect(json_equal(json_object_get(e, "shape"), json_object_get(f, "shape")),
			  "%s shape", name);
		json_t *offs = json_object_get(e, "data_offsets");
		uint64_t b0 = (uint64_t)json_integer_value(json_array_get(offs, 0));
		uint64_t b1 = (uint64_t)json_integer_value(json_array_get(offs, 1));
		cr_assert_eq(b0, expect_begin, "%s begins at %llu", name, (unsigned long long)b0);
		cr_assert(b1 >= b0 && b1 <= len - 8 - hlen, "%s ends at %llu", name,
			  (unsigned long long)b1);
		char hex[65];
		sha256_hex(base + b0, b1 - b0, hex);
		cr_expect_str_eq(hex, json_string_value(json_object_get(f, "sha256")), "%s", name);
		expect_begin = b1;
	}
	cr_expect_eq(8 + hlen + expect_begin, len, "file size");
	sha256_hex(base, expect_begin, all_hex);
	json_decref(hdr);
	free(data);
}

/* The project's own readers (md_weights_open, md_config_load) accept the folder and see the
 * same tensors. */
static void check_with_readers(const char *dir, json_t *fx, size_t n)
{
	struct cm_err err = { 0 };
	struct md_weights *w = md_weights_open(dir, &err);
	cr_assert(w, "md_weights_open: %s", err.msg);
	cr_expect_eq(md_weights_count(w), n);
	json_t *tensors = json_object_get(fx, "tensors");
	for (size_t k = 0; k < n; k++) {
		json_t *f = json_array_get(tensors, k);
		const char *name = json_string_value(json_object_get(f, "name"));
		const struct md_tensor *t = md_weights_get(w, name);
		cr_assert(t, "%s missing", name);
		cr_expect_eq(t->dtype, MD_DTYPE_BF16, "%s", name);
		json_t *shape = json_object_get(f, "shape");
		cr_assert_eq((size_t)t->n_dims, json_array_size(shape), "%s", name);
		for (int32_t a = 0; a < t->n_dims; a++)
			cr_expect_eq(t->shape[a], json_integer_value(json_array_get(shape, (size_t)a)));
		char hex[65];
		sha256_hex(t->data, t->nbytes, hex);
		cr_expect_str_eq(hex, json_string_value(json_object_get(f, "sha256")), "%s", name);
	}
	md_weights_free(w);
	struct md_config cfg;
	cr_assert_eq(md_config_load(dir, &cfg, &err), CM_OK, "md_config_load: %s", err.msg);
	cr_expect_eq(cfg.arch, MD_ARCH_QWEN3);
	cr_expect_eq(cfg.hidden, 256);
	cr_expect_eq(cfg.n_layer, 4);
	cr_expect_eq(cfg.vocab, GEN_VOCAB);
	cr_expect(cfg.tie_embeddings);
	cr_expect_eq(cfg.has_routers, n > 46);
	if (cfg.has_routers)
		cr_expect_eq(cfg.router_hidden, 64);
}

static void check_file_sha(const char *dir, const char *name, const char *want)
{
	char path[4200], hex[65];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	size_t len;
	char *data = read_all(path, &len);
	sha256_hex(data, len, hex);
	cr_expect_str_eq(hex, want, "%s", name);
	free(data);
}

static json_t *load_json(const char *dir, const char *name)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	json_error_t jerr;
	json_t *j = json_load_file(path, 0, &jerr);
	cr_assert(j, "%s: %s", path, jerr.text);
	return j;
}

/* tokenizer.json is the embedded Qwen3 file (sha256 TOKENIZER_JSON_SHA256) plus
 * StreamingThinker's seven added tokens with ids 151669..151675: with them taken
 * out of added_tokens it must equal the original. */
static void check_tokenizer(const char *dir)
{
	static const char *const added[] = { "<SEP>", "<EOQ>", "<EOS>",   "<EOT>",
					     "<EOR>", "<EOA>", "<ignore>" };
	char hex[65];
	size_t n = (size_t)(tandem_asset_tokenizer_json_end - tandem_asset_tokenizer_json);
	sha256_hex(tandem_asset_tokenizer_json, n, hex);
	cr_expect_str_eq(hex, TOKENIZER_JSON_SHA256, "embedded tokenizer.json");
	json_t *tok = load_json(dir, "tokenizer.json");
	json_t *orig = json_loadb(tandem_asset_tokenizer_json, n, 0, NULL);
	cr_assert(orig);
	json_t *list = json_object_get(tok, "added_tokens");
	size_t k = json_array_size(list);
	cr_assert_geq(k, 7u);
	for (size_t i = 0; i < 7; i++) {
		json_t *a = json_array_get(list, k - 7 + i);
		cr_expect_eq(json_integer_value(json_object_get(a, "id")), 151669 + (int)i);
		cr_expect_str_eq(json_string_value(json_object_get(a, "content")), added[i]);
		cr_expect(json_is_true(json_object_get(a, "special")));
		cr_expect(json_is_false(json_object_get(a, "normalized")));
	}
	for (size_t i = 0; i < 7; i++)
		json_array_remove(list, k - 7);
	cr_expect(json_equal(tok, orig), "tokenizer.json differs from the embedded file");
	json_decref(orig);
	json_decref(tok);
	struct cm_err err = { 0 };
	char path[4200];
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	struct md_tok *t = md_tok_load_file(path, &err);
	cr_assert(t, "%s", err.msg);
	for (size_t i = 0; i < 7; i++)
		cr_expect_eq(md_tok_special_id(t, added[i]), 151669 + (int)i, "%s", added[i]);
	md_tok_free(t);
}

static void check_side_files(const char *dir)
{
	check_tokenizer(dir);
	check_file_sha(dir, "tokenizer_config.json", TOKENIZER_CONFIG_SHA256);
	json_t *gen = load_json(dir, "generation_config.json");
	json_t *want = json_pack("{s:i, s:[i,i], s:i, s:b, s:f, s:f, s:i, s:s}", "bos_token_id",
				 151643, "eos_token_id", 151645, 151643, "pad_token_id", 151643,
				 "do_sample", 1, "temperature", 0.6, "top_p", 0.95, "top_k", 20,
				 "transformers_version", "4.51.0");
	cr_expect(json_equal(gen, want));
	json_decref(want);
	json_decref(gen);
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s/model.safetensors.tmp", dir);
	cr_expect_neq(access(tmp, F_OK), 0, "model.safetensors.tmp left behind");
}

Test(gen_model, cli_tiny_routers, .timeout = 300)
{
	char dir[4096], errf[4200], args[8400];
	scratch_dir("routers", dir, sizeof(dir));
	snprintf(errf, sizeof(errf), "%s.err", dir);
	snprintf(args, sizeof(args), "gen-model --variant tiny --seed 1 --routers --out '%s/a/b'",
		 dir);
	cr_assert_eq(run_tandem(args, errf), 0);
	json_t *fx = load_fixture("generator_tiny_s1.json");
	size_t elen;
	char *msg = read_all(errf, &elen);
	cr_expect(strstr(msg, json_string_value(json_object_get(fx, "sha256_all_with_routers"))),
		  "summary: %s", msg);
	cr_expect(strstr(msg, "78 tensors"), "summary: %s", msg);
	free(msg);

	char model[4200], all[65];
	snprintf(model, sizeof(model), "%s/a/b", dir);
	check_safetensors(model, fx, 78, all);
	cr_expect_str_eq(all, json_string_value(json_object_get(fx, "sha256_all_with_routers")));
	json_t *cfg = load_json(model, "config.json");
	json_t *want = json_deep_copy(json_object_get(fx, "config_json"));
	json_object_set_new(want, "tandem_skipgpt",
			    json_pack("{s:s, s:i, s:s, s:s}", "router", "mlp", "router_hidden", 64,
				      "input", "layer_input_residual", "decision",
				      "execute_iff_z0_ge_z1"));
	cr_expect(json_equal(cfg, want), "config.json differs from the fixture");
	json_decref(want);
	json_decref(cfg);
	check_side_files(model);
	check_with_readers(model, fx, 78);
	json_decref(fx);
	remove_dir(dir);
	unlink(errf);
}

/* Defaults (tiny, seed 1, no routers), written twice into the same folder. */
Test(gen_model, cli_tiny_defaults_overwrite, .timeout = 300)
{
	char dir[4096], errf[4200], args[8400];
	scratch_dir("plain", dir, sizeof(dir));
	snprintf(errf, sizeof(errf), "%s.err", dir);
	snprintf(args, sizeof(args), "gen-model --out '%s'", dir);
	cr_assert_eq(run_tandem(args, errf), 0);
	cr_assert_eq(run_tandem(args, errf), 0);
	json_t *fx = load_fixture("generator_tiny_s1.json");
	char all[65];
	check_safetensors(dir, fx, 46, all);
	cr_expect_str_eq(all, json_string_value(json_object_get(fx, "sha256_all")));
	json_t *cfg = load_json(dir, "config.json");
	cr_expect(json_equal(cfg, json_object_get(fx, "config_json")),
		  "config.json differs from the fixture");
	json_decref(cfg);
	check_side_files(dir);
	json_decref(fx);
	remove_dir(dir);
	unlink(errf);
}

/* Runs a failing command line and expects exit 1 with a message containing want. */
static void expect_cli_error(const char *args, const char *want)
{
	char errf[4200];
	const char *tmp = getenv("TANDEM_TEST_TMP");
	snprintf(errf, sizeof(errf), "%s/gen_model_err_%d.txt", tmp, (int)getpid());
	cr_expect_eq(run_tandem(args, errf), 1, "%s", args);
	size_t len;
	char *msg = read_all(errf, &len);
	cr_expect(strstr(msg, want), "'%s' printed '%s'", args, msg);
	cr_expect(strchr(msg, '\n') == msg + len - 1 || strstr(msg, "usage"), "one line: '%s'",
		  msg);
	free(msg);
	unlink(errf);
}

Test(gen_model, cli_bad_flags)
{
	char dir[4096], args[8400];
	scratch_dir("bad", dir, sizeof(dir));
	expect_cli_error("gen-model --variant tiny", "--out");
	snprintf(args, sizeof(args), "gen-model --variant 7b --out '%s'", dir);
	expect_cli_error(args, "7b");
	snprintf(args, sizeof(args), "gen-model --out '%s' extra", dir);
	expect_cli_error(args, "extra");
	/* a path below a regular file cannot be created */
	char file[4200];
	snprintf(file, sizeof(file), "%s.file", dir);
	FILE *f = fopen(file, "w");
	cr_assert(f);
	fclose(f);
	snprintf(args, sizeof(args), "gen-model --out '%s/model'", file);
	expect_cli_error(args, file);
	unlink(file);
	struct stat st;
	cr_expect_neq(stat(dir, &st), 0, "a failed run created %s", dir);
}
