/* libFuzzer target: config.json parsing (md_config_parse).
 *
 * Not built by meson. Build and run by hand from the repository root:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_config.c model/config.c common/err.c common/util.c \
 *       -ljansson -lm -o /tmp/fuzz_config
 *   mkdir -p /tmp/corpus_cfg
 *   python3 -c 'import json;
 * print(json.dumps(json.load(open("tests/data/generator_tiny_s1.json"))["config_json"]))' \ >
 * /tmp/corpus_cfg/tiny.json /tmp/fuzz_config -max_total_time=60 /tmp/corpus_cfg
 *
 * An accepted config must keep the promises of struct md_config: sizes positive,
 * heads divisible, head_dim even, token ids inside the vocabulary; a rejected one
 * must give a negative code and a one-line message naming the file.
 */
#include "model/md.h"

#include <stdlib.h>
#include <string.h>

static bool config_ok(const struct md_config *c)
{
	if (c->hidden <= 0 || c->intermediate <= 0 || c->n_layer <= 0 || c->n_head <= 0 ||
	    c->n_kv_head <= 0 || c->head_dim <= 0 || c->vocab <= 0 || c->max_pos <= 0)
		return false;
	if (c->n_head % c->n_kv_head || c->head_dim % 2 || !(c->rms_eps > 0) ||
	    !(c->rope_theta > 0))
		return false;
	if (c->bos_id < -1 || c->bos_id >= c->vocab || c->n_eos < 0 || c->n_eos > MD_MAX_EOS)
		return false;
	for (int i = 0; i < c->n_eos; i++)
		if (c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab)
			return false;
	if (c->has_routers != (c->router_hidden > 0))
		return false;
	if (c->rope_scaling == MD_ROPE_LLAMA3 &&
	    (c->rope_orig_max_pos <= 0 || !(c->rope_high_freq_factor > c->rope_low_freq_factor)))
		return false;
	return memchr(c->model_type, 0, sizeof(c->model_type)) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* a private copy without a terminating NUL: reads past the end are caught */
	char *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	struct md_config cfg;
	struct cm_err err = {0};
	int rc = md_config_parse(buf, size, "fuzz/config.json", &cfg, &err);
	if (rc == CM_OK && !config_ok(&cfg))
		__builtin_trap();
	if (rc < 0 && (rc != err.code || strchr(err.msg, '\n') || !strstr(err.msg, "fuzz/")))
		__builtin_trap();
	free(buf);
	return 0;
}
