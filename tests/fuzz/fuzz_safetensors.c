/* libFuzzer target: the safetensors header parser and the shard index parser.
 *
 * Not built by meson. Build and run by hand from the repository root:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_safetensors.c model/safetensors.c \
 *       common/err.c common/arena.c common/util.c -ljansson -o /tmp/fuzz_safetensors
 *   mkdir -p /tmp/corpus_st && /tmp/fuzz_safetensors -max_total_time=60 /tmp/corpus_st
 *
 * The first input byte picks the mode (value % 3):
 *   0: the rest is a whole safetensors image (length prefix included);
 *   1: the rest is model.safetensors.index.json text;
 *   2: the rest is "header JSON" NUL "data": the length prefix is made up, so the
 *      fuzzer spends its time on the JSON rather than on guessing 8 bytes.
 * A loaded file must keep its promises: every span inside the buffer, lookups by
 * name return the same tensor, shape x dtype size = bytes.
 */
#include "model/safetensors-impl.h"

#include <stdlib.h>
#include <string.h>

static void check_weights(const struct md_weights *w, const uint8_t *buf, size_t len)
{
	for (size_t i = 0; i < md_weights_count(w); i++) {
		const struct md_tensor *t = md_weights_at(w, i);
		const uint8_t *d = t->data;
		uint64_t n = md_dtype_size(t->dtype);
		for (int32_t k = 0; k < t->n_dims; k++)
			n *= (uint64_t)t->shape[k];
		if (md_weights_get(w, t->name) != t || n != t->nbytes || d < buf ||
		    t->nbytes > len || d - buf > (ptrdiff_t)(len - t->nbytes))
			__builtin_trap();
		if (t->nbytes) {
			volatile uint8_t sink = d[0];
			sink = d[t->nbytes - 1];
			(void)sink;
		}
	}
	if (md_weights_at(w, md_weights_count(w)))
		__builtin_trap();
}

static void parse_image(const uint8_t *buf, size_t len)
{
	struct cm_err err = {0};
	struct md_weights *w = md__weights_parse_mem(buf, len, "fuzz.safetensors", &err);
	if (!w) {
		if (err.code >= 0 || strchr(err.msg, '\n') || !strstr(err.msg, "fuzz.safetensors"))
			__builtin_trap();
		return;
	}
	check_weights(w, buf, len);
	md_weights_free(w);
}

static void parse_index(const uint8_t *buf, size_t len)
{
	struct cm_err err = {0};
	struct md__st_index idx;
	if (md__st_index_parse((const char *)buf, len, "fuzz.index.json", &idx, &err) < 0) {
		if (err.code >= 0 || strchr(err.msg, '\n'))
			__builtin_trap();
		return;
	}
	for (size_t i = 0; i < idx.n_shards; i++)
		if (!idx.shards[i][0] || strchr(idx.shards[i], '/') ||
		    (i && strcmp(idx.shards[i - 1], idx.shards[i]) >= 0))
			__builtin_trap();
	md__st_index_fini(&idx);
}

static void parse_split(const uint8_t *buf, size_t len)
{
	const uint8_t *nul = memchr(buf, 0, len);
	size_t hlen = nul ? (size_t)(nul - buf) : len;
	size_t dlen = nul ? len - hlen - 1 : 0;
	uint8_t *img = malloc(8 + hlen + dlen + 1);
	if (!img)
		return;
	for (int i = 0; i < 8; i++)
		img[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
	memcpy(img + 8, buf, hlen);
	if (dlen)
		memcpy(img + 8 + hlen, nul + 1, dlen);
	parse_image(img, 8 + hlen + dlen);
	free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* a private copy, so reads past the input are caught at its exact end */
	uint8_t *buf = malloc(size - 1 ? size - 1 : 1);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, size - 1);
	switch (data[0] % 3) {
	case 0:
		parse_image(buf, size - 1);
		break;
	case 1:
		parse_index(buf, size - 1);
		break;
	default:
		parse_split(buf, size - 1);
		break;
	}
	free(buf);
	return 0;
}
