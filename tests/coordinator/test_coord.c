/* coordinator internals without processes: message checks, histograms. */
#include "coordinator/coord-impl.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pb_encode.h>

Test(coord, sampling_values_are_checked)
{
	struct cm_err err = {0};
	tandem_v1_SamplingParams s = tandem_v1_SamplingParams_init_zero;
	cr_assert_eq(coord_api_check_sampling(&s, 100, &err), CM_OK);
	s.top_p = 1.5f;
	cr_assert_eq(coord_api_check_sampling(&s, 100, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "top_p"), "%s", err.msg);
	s.top_p = 0.9f;
	s.temperature = NAN;
	cr_assert_eq(coord_api_check_sampling(&s, 100, &err), CM_EINVAL);
	s.temperature = 0.7f;
	s.top_k = -1;
	cr_assert_eq(coord_api_check_sampling(&s, 100, &err), CM_EINVAL);
	s.top_k = 0;
	s.stop_token_ids[0] = 100;
	s.stop_token_ids_count = 1;
	cr_assert_eq(coord_api_check_sampling(&s, 100, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "stop token"), "%s", err.msg);
}

Test(coord, open_and_input_are_checked)
{
	struct cm_err err = {0};
	tandem_v1_Open *o = calloc(1, sizeof(*o));
	cr_assert_eq(coord_api_check_open(o, "tiny", 100, &err), CM_OK);
	snprintf(o->model, sizeof(o->model), "other");
	cr_assert_eq(coord_api_check_open(o, "tiny", 100, &err), CM_EINVAL);
	snprintf(o->model, sizeof(o->model), "tiny");
	o->depth = 4;
	cr_assert_eq(coord_api_check_open(o, "tiny", 100, &err), CM_EINVAL);
	o->depth = 3;
	memcpy(o->system, "\xed\xa0\x80", 4); /* a surrogate */
	cr_assert_eq(coord_api_check_open(o, "tiny", 100, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "UTF-8"), "%s", err.msg);
	free(o);

	tandem_v1_Input *in = calloc(1, sizeof(*in));
	snprintf(in->text, sizeof(in->text), "fine. ");
	cr_assert_eq(coord_api_check_input(in, 100, &err), CM_OK);
	in->token_ids_count = 1;
	cr_assert_eq(coord_api_check_input(in, 100, &err), CM_EINVAL, "text and ids together");
	in->text[0] = 0;
	in->token_ids[0] = -1;
	cr_assert_eq(coord_api_check_input(in, 100, &err), CM_EINVAL);
	in->token_ids[0] = 99;
	cr_assert_eq(coord_api_check_input(in, 100, &err), CM_OK);
	free(in);
}

Test(coord, decode_rejects_truncated_and_oversize_messages)
{
	struct cm_err err = {0};
	tandem_v1_ThinkRequest *m = calloc(1, sizeof(*m));
	m->which_msg = tandem_v1_ThinkRequest_input_tag;
	snprintf(m->msg.input.text, sizeof(m->msg.input.text), "hello world. ");
	uint8_t buf[256];
	int n = coord_api_encode(tandem_v1_ThinkRequest_fields, m, buf, sizeof(buf));
	cr_assert_gt(n, 0);
	memset(m, 0, sizeof(*m));
	cr_assert_eq(coord_api_decode(tandem_v1_ThinkRequest_fields, buf, (size_t)n, m, &err),
		     CM_OK);
	cr_assert_str_eq(m->msg.input.text, "hello world. ");
	cr_assert_eq(coord_api_decode(tandem_v1_ThinkRequest_fields, buf, (size_t)n - 3, m, &err),
		     CM_EINVAL);
	/* a 40,000-token id list is over the 4,096 bound */
	uint8_t *big = malloc(200000);
	size_t k = 0;
	big[k++] = 0x12;
	big[k++] = 0xc0; /* length 40,003 as a varint: 0xc3 0xb8 0x02 */
	big[k - 1] = 0xc3;
	big[k++] = 0xb8;
	big[k++] = 0x02;
	big[k++] = 0x12; /* Input.token_ids, packed, 40,000 one-byte ids */
	big[k++] = 0xc0;
	big[k++] = 0xb8;
	big[k++] = 0x02;
	memset(big + k, 1, 40000);
	k += 40000;
	cr_assert_eq(coord_api_decode(tandem_v1_ThinkRequest_fields, big, k, m, &err), CM_EINVAL);
	free(big);
	free(m);
}

Test(coord, histograms_count_into_buckets)
{
	static const double b[] = {1, 2, 4};
	struct coord_hist h;
	coord_hist_init(&h, b, 3);
	coord_hist_add(&h, 0.5);
	coord_hist_add(&h, 2);
	coord_hist_add(&h, 3);
	coord_hist_add(&h, 100);
	coord_hist_add(&h, NAN);
	cr_assert_eq(h.count, 4);
	cr_assert_eq(h.counts[0], 1);
	cr_assert_eq(h.counts[1], 1);
	cr_assert_eq(h.counts[2], 1);
	cr_assert_float_eq(h.sum, 105.5, 1e-9);
}
