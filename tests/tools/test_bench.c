/* `tandem bench` runs briefly on the tiny model and reports what it promises: the
 * JSON keys with positive, finite figures, for bf16 and q8_0 weights; bad modes and
 * flags are errors. Speed itself is the benchmark's business, never asserted here. */
#include "../helpers.h"
#include "common/cm.h"

#include <math.h>
#include <string.h>

static void check_positive(json_t *j, const char *key)
{
	json_t *v = json_object_get(j, key);
	cr_assert(json_is_number(v), "key %s missing or not a number", key);
	double x = json_number_value(v);
	cr_assert(isfinite(x) && x > 0, "%s = %g", key, x);
}

/* The bench of the tiny model in dir with extra flags; returns its JSON. */
static json_t *bench_json(const char *dir, const char *flags)
{
	char cmd[2048], *out;
	snprintf(cmd, sizeof(cmd),
		 "'%s' bench --model '%s' --prompt-tokens 32 --gen-tokens 8 --batch 4 --runs 1 "
		 "--threads 2 --json %s",
		 getenv("TANDEM_BIN"), dir, flags);
	cr_assert_eq(th_capture(cmd, &out), 0, "%s", cmd);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	cr_assert_not_null(j, "not JSON (%s): %s", je.text, out);
	free(out);
	const char *keys[] = { "prefill_tok_s",	       "decode_tok_s",
			       "read_gbps",	       "bf16_gflops",
			       "f32_gflops",	       "decode_roofline_frac",
			       "prefill_roofline_frac", "decode_roofline_frac_quoted",
			       "batch_decode_tok_s",   "batch_decode_ratio",
			       "weight_bytes_per_token", "prefill_flops_per_token" };
	bool has_bf16 = json_number_value(json_object_get(j, "bf16_gflops")) > 0;
	for (size_t i = 0; i < CM_ARRAY_LEN(keys); i++)
		if (has_bf16 || strcmp(keys[i], "bf16_gflops"))
			check_positive(j, keys[i]);
	cr_assert_str_eq(json_string_value(json_object_get(j, "mode")), "engine");
	cr_assert_eq(json_integer_value(json_object_get(j, "prompt_tokens")), 32);
	return j;
}

Test(bench_smoke, tiny_model_json, .timeout = 280)
{
	char dir[1024];
	th_gen_model(dir, sizeof(dir), "tiny", 1, false);
	json_t *j = bench_json(dir, "");
	/* bf16 weights: 2 bytes per matrix element, the LM head included */
	double bytes = json_number_value(json_object_get(j, "weight_bytes_per_token"));
	cr_assert(bytes > 8e7 && bytes < 8.5e7, "bytes per token %g", bytes);
	json_decref(j);

	/* q8_0: 34 bytes per 32 weights, rows padded to 64 bytes (320 for 256 columns) */
	j = bench_json(dir, "--quantize q8");
	cr_assert_str_eq(json_string_value(json_object_get(j, "weights")), "q8_0");
	double q8 = json_number_value(json_object_get(j, "weight_bytes_per_token"));
	cr_assert(q8 > 0.5 * bytes && q8 < 0.65 * bytes, "q8_0 bytes per token %g", q8);
	json_decref(j);
	th_rmdir(dir);
}

Test(bench_smoke, bad_mode_and_missing_model_are_errors)
{
	char cmd[1200], *out;
	snprintf(cmd, sizeof(cmd), "'%s' bench frobnicate --model x 2>&1", getenv("TANDEM_BIN"));
	cr_assert_eq(th_capture(cmd, &out), 1);
	cr_assert(strstr(out, "unknown mode 'frobnicate'") && strstr(out, "engine"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' bench 2>&1", getenv("TANDEM_BIN"));
	cr_assert_eq(th_capture(cmd, &out), 1);
	cr_assert(strstr(out, "--model"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' bench --model x --runs 0 2>&1", getenv("TANDEM_BIN"));
	cr_assert_eq(th_capture(cmd, &out), 1);
	free(out);
}
