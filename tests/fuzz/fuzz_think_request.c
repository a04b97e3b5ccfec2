/* libFuzzer target: the coordinator's parsing of client messages (coordinator/api.c):
 * ThinkRequest, GenerateRequest and AbortRequest bytes through nanopb, then the
 * checks every message passes before it reaches a request.
 *
 * Not built by meson. Build and run by hand from the repository root, after a
 * meson build in build/ (which generates proto/tandem.pb.c):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. -Ibuild -Ibuild/proto \
 *       tests/fuzz/fuzz_think_request.c coordinator/api.c model/utf8.c common/err.c \
 *       common/log.c common/util.c build/proto/tandem.pb.c -lprotobuf-nanopb -lm -lpthread \
 *       -o /tmp/fuzz_think
 *   mkdir -p /tmp/corpus_think && /tmp/fuzz_think -max_total_time=60 /tmp/corpus_think
 *
 * Any input must give CM_OK or CM_EINVAL with a one-line message, never a crash;
 * an accepted message must keep the promises the request code relies on.
 */
#include "coordinator/coord-impl.h"

#include <stdlib.h>
#include <string.h>

static void check_err(int rc, const struct cm_err *err)
{
	if (rc == CM_OK)
		return;
	if (rc != CM_EINVAL || !err->msg[0] || strchr(err->msg, '\n'))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static tandem_v1_ThinkRequest think;
	static tandem_v1_GenerateRequest gen;
	struct cm_err err = {0};
	const int32_t vocab = 151936;

	memset(&think, 0, sizeof(think));
	int rc = coord_api_decode(tandem_v1_ThinkRequest_fields, data, size, &think, &err);
	check_err(rc, &err);
	if (rc == CM_OK) {
		if (think.which_msg == tandem_v1_ThinkRequest_open_tag) {
			rc = coord_api_check_open(&think.msg.open, "tiny", vocab, &err);
			check_err(rc, &err);
			if (rc == CM_OK && think.msg.open.depth > 3)
				abort();
		} else if (think.which_msg == tandem_v1_ThinkRequest_input_tag) {
			const tandem_v1_Input *in = &think.msg.input;
			rc = coord_api_check_input(in, vocab, &err);
			check_err(rc, &err);
			if (rc == CM_OK) {
				size_t n = strlen(in->text);
				if (md_utf8_valid_prefix(in->text, n) != n)
					abort();
				for (pb_size_t i = 0; i < in->token_ids_count; i++)
					if (in->token_ids[i] < 0 || in->token_ids[i] >= vocab)
						abort();
			}
		}
	}
	memset(&gen, 0, sizeof(gen));
	rc = coord_api_decode(tandem_v1_GenerateRequest_fields, data, size, &gen, &err);
	check_err(rc, &err);
	if (rc == CM_OK && gen.has_sampling)
		check_err(coord_api_check_sampling(&gen.sampling, vocab, &err), &err);
	tandem_v1_AbortRequest ab;
	memset(&ab, 0, sizeof(ab));
	check_err(coord_api_decode(tandem_v1_AbortRequest_fields, data, size, &ab, &err), &err);
	return 0;
}
