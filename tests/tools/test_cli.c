/* The `tandem` command line as a user runs it: help, errors, tokenize, generate
 * (greedy ids and dumped logits against the fixtures), corrupt model files. */
#include "../worker/fixture_check.h"
#include "common/cm.h"

#include <string.h>

static const char *bin(void)
{
	return getenv("TANDEM_BIN");
}

Test(cli, help_and_unknown_commands)
{
	char cmd[1200], *out;
	snprintf(cmd, sizeof(cmd), "'%s' --help", bin());
	cr_assert_eq(th_capture(cmd, &out), 0);
	cr_assert(strstr(out, "gen-model") && strstr(out, "generate") && strstr(out, "tokenize"),
		  "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' generate --help", bin());
	cr_assert_eq(th_capture(cmd, &out), 0);
	cr_assert(strstr(out, "--max-tokens N") && strstr(out, "--top-p P") &&
			  strstr(out, "TANDEM_THREADS"),
		  "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' frobnicate 2>&1", bin());
	cr_assert_eq(th_capture(cmd, &out), 1);
	cr_assert(strstr(out, "unknown command 'frobnicate'"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' generate --model x --prompt hi --top-p 2 2>&1", bin());
	cr_assert_eq(th_capture(cmd, &out), 1);
	cr_assert(strstr(out, "--top-p") && strstr(out, "outside"), "%s", out);
	free(out);
}

Test(cli, config_doc_is_current)
{
	char cmd[2400], *out, *doc;
	size_t len;
	snprintf(cmd, sizeof(cmd), "'%s' config", bin());
	cr_assert_eq(th_capture(cmd, &out), 0);
	snprintf(cmd, sizeof(cmd), "%s/../../docs/config.md", getenv("TANDEM_TEST_DATA"));
	struct cm_err err = { 0 };
	cr_assert_eq(cm_file_read(cmd, &doc, &len, &err), CM_OK, "%s", err.msg);
	cr_assert_str_eq(out, doc, "docs/config.md is stale: regenerate with `tandem config`");
	free(out);
	free(doc);
}

Test(cli, tokenize_and_generate_match_fixtures, .timeout = 300)
{
	char dir[1024], cmd[4000], *out;
	th_gen_model(dir, sizeof(dir), "tiny", 1, false);
	json_t *fx = th_fixture("plain_tiny_s1.json");
	json_t *run = json_object_get(json_object_get(fx, "runs"), "A");

	snprintf(cmd, sizeof(cmd),
		 "'%s' tokenize --model '%s' 'The quick brown fox jumps over the lazy dog.'", bin(),
		 dir);
	cr_assert_eq(th_capture(cmd, &out), 0);
	cr_assert_str_eq(out, "785,3974,13876,38835,34208,916,279,15678,5562,13\n");
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' tokenize --model '%s' --decode 785,3974,13876", bin(), dir);
	cr_assert_eq(th_capture(cmd, &out), 0);
	cr_assert_str_eq(out, "The quick brown\n");
	free(out);

	char dump[1100];
	snprintf(dump, sizeof(dump), "%s/logits.f32", dir);
	snprintf(cmd, sizeof(cmd),
		 "'%s' generate --model '%s' --tokens 785,3974,13876,38835,34208,916,279,15678,"
		 "5562,13 --max-tokens 16 --ids --dump-logits '%s'",
		 bin(), dir, dump);
	cr_assert_eq(th_capture(cmd, &out), 0);
	json_t *g = json_object_get(json_object_get(run, "greedy"), "ids");
	char want[512] = "";
	for (size_t i = 0; i < json_array_size(g); i++)
		snprintf(want + strlen(want), sizeof(want) - strlen(want), i ? ",%lld" : "%lld",
			 (long long)json_integer_value(json_array_get(g, i)));
	strcat(want, "\n");
	cr_assert_str_eq(out, want);
	free(out);

	char *raw;
	size_t len;
	struct cm_err err = { 0 };
	cr_assert_eq(cm_file_read(dump, &raw, &len, &err), CM_OK);
	cr_assert_eq(len, (size_t)10 * 151936 * 4);
	fx_check_logits(run, (const float *)raw, 151936, 1e-3, "cli dump A");
	free(raw);

	/* text in, text out, with the chat template and sampling */
	snprintf(cmd, sizeof(cmd),
		 "'%s' generate --model '%s' --chat --prompt 'Hello' --max-tokens 5 "
		 "--temperature 0.9 --seed 3",
		 bin(), dir);
	cr_assert_eq(th_capture(cmd, &out), 0);
	cr_assert_gt(strlen(out), 1);
	free(out);
	json_decref(fx);
	th_rmdir(dir);
}

/* A truncated or corrupted model file gives one line naming the file, exit 1. */
Test(cli, corrupt_model_files_are_one_line_errors, .timeout = 300)
{
	char dir[1024], cmd[4000], *out;
	th_gen_model(dir, sizeof(dir), "tiny", 1, false);
	const char *cases[] = {
		"truncate -s 1000000 '%s/model.safetensors'",
		"printf '\\377\\377\\377\\377' | dd of='%s/model.safetensors' bs=1 seek=0 "
		"conv=notrunc 2>/dev/null",
		"printf 'garbage' | dd of='%s/model.safetensors' bs=1 seek=12 conv=notrunc "
		"2>/dev/null",
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(cases); i++) {
		snprintf(cmd, sizeof(cmd), "cp -f '%s/model.safetensors' '%s/orig.bin'", dir, dir);
		if (i == 0)
			cr_assert_eq(th_sh(cmd), 0);
		snprintf(cmd, sizeof(cmd), "cp -f '%s/orig.bin' '%s/model.safetensors'", dir, dir);
		cr_assert_eq(th_sh(cmd), 0);
		char c[1500];
		snprintf(c, sizeof(c), cases[i], dir);
		cr_assert_eq(th_sh(c), 0, "%s", c);
		snprintf(cmd, sizeof(cmd),
			 "'%s' generate --model '%s' --tokens 1,2,3 --max-tokens 2 2>&1 >/dev/null",
			 bin(), dir);
		int rc = th_capture(cmd, &out);
		cr_assert_eq(rc, 1, "case %zu: exit %d: %s", i, rc, out);
		cr_assert(strstr(out, "model.safetensors"), "case %zu: %s", i, out);
		char *nl = strchr(out, '\n');
		cr_assert(nl && nl[1] == 0, "case %zu: not one line: %s", i, out);
		free(out);
	}
	/* missing config field */
	snprintf(cmd, sizeof(cmd), "cp -f '%s/orig.bin' '%s/model.safetensors' && "
		 "sed -i '/\"head_dim\"/d' '%s/config.json'", dir, dir, dir);
	cr_assert_eq(th_sh(cmd), 0);
	snprintf(cmd, sizeof(cmd),
		 "'%s' generate --model '%s' --tokens 1,2,3 2>&1 >/dev/null", bin(), dir);
	cr_assert_eq(th_capture(cmd, &out), 1);
	cr_assert(strstr(out, "head_dim"), "%s", out);
	free(out);
	th_rmdir(dir);
}

#if !defined(__SANITIZE_ADDRESS__)
/* The check on the 0.6b model (release build only: 1.2 GB of weights). */
Test(cli, generate_0p6b_greedy_ids, .timeout = 600)
{
	char dir[1024], cmd[4000], *out;
	th_gen_model(dir, sizeof(dir), "0.6b", 1, false);
	json_t *fx = th_fixture("plain_0.6b_s1.json");
	const char *names[] = { "A", "B" };
	for (int r = 0; r < 2; r++) {
		json_t *run = json_object_get(json_object_get(fx, "runs"), names[r]);
		json_t *in = json_object_get(run, "input_ids");
		char ids[512] = "";
		for (size_t i = 0; i < json_array_size(in); i++)
			snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), i ? ",%lld" : "%lld",
				 (long long)json_integer_value(json_array_get(in, i)));
		char dump[1100];
		snprintf(dump, sizeof(dump), "%s/logits-%s.f32", dir, names[r]);
		snprintf(cmd, sizeof(cmd),
			 "'%s' generate --model '%s' --tokens %s --max-tokens 16 --ids "
			 "--dump-logits '%s'",
			 bin(), dir, ids, dump);
		cr_assert_eq(th_capture(cmd, &out), 0);
		int32_t got[32];
		int n = 0;
		for (char *p = out; *p && n < 32;) {
			got[n++] = (int32_t)strtol(p, &p, 10);
			if (*p == ',')
				p++;
			else
				break;
		}
		fx_check_greedy(run, got, n, names[r]);
		free(out);
		char *raw;
		size_t len;
		struct cm_err err = { 0 };
		cr_assert_eq(cm_file_read(dump, &raw, &len, &err), CM_OK);
		double worst = fx_check_logits(run, (const float *)raw, 151936, 1e-3, names[r]);
		cr_log_info("0.6b %s: max |d| %.2e", names[r], worst);
		free(raw);
	}
	json_decref(fx);
	th_rmdir(dir);
}
#endif
