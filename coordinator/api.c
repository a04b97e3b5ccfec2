/* The public messages: decoding with nanopb (bounded by proto/tandem.options)
 * and the checks every client message passes before it touches a request.
 * Pure functions: the fuzz target (tests/fuzz/fuzz_think_request.c) drives them. */
#include "coord-impl.h"

#include <math.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <string.h>

int coord_api_decode(const pb_msgdesc_t *desc, const uint8_t *data, size_t len, void *out,
		     struct cm_err *err)
{
	pb_istream_t is = pb_istream_from_buffer(data, len);
	if (!pb_decode(&is, desc, out))
		return cm_err_set(err, CM_EINVAL, "malformed message (%s)", PB_GET_ERROR(&is));
	return CM_OK;
}

int coord_api_encode(const pb_msgdesc_t *desc, const void *msg, uint8_t *buf, size_t cap)
{
	pb_ostream_t os = pb_ostream_from_buffer(buf, cap);
	if (!pb_encode(&os, desc, msg)) {
		CM_LOG_ERROR("cannot encode a reply (%s)", PB_GET_ERROR(&os));
		return CM_EINTERNAL;
	}
	return (int)os.bytes_written;
}

static bool bad_float(float v, float lo, float hi)
{
	return !isfinite(v) || v < lo || v > hi;
}

int coord_api_check_sampling(const tandem_v1_SamplingParams *s, int32_t vocab, struct cm_err *err)
{
	if (bad_float(s->temperature, 0, 100))
		return cm_err_set(err, CM_EINVAL, "temperature %g outside [0, 100]",
				  (double)s->temperature);
	if (bad_float(s->top_p, 0, 1))
		return cm_err_set(err, CM_EINVAL, "top_p %g outside [0, 1]", (double)s->top_p);
	if (s->top_k < 0)
		return cm_err_set(err, CM_EINVAL, "top_k %d is negative", s->top_k);
	if (bad_float(s->min_p, 0, 1))
		return cm_err_set(err, CM_EINVAL, "min_p %g outside [0, 1]", (double)s->min_p);
	if (bad_float(s->repetition_penalty, 0, 100))
		return cm_err_set(err, CM_EINVAL, "repetition_penalty %g outside (0, 100]",
				  (double)s->repetition_penalty);
	for (pb_size_t i = 0; i < s->stop_token_ids_count; i++)
		if (s->stop_token_ids[i] < 0 || s->stop_token_ids[i] >= vocab)
			return cm_err_set(err, CM_EINVAL, "stop token id %d outside [0, %d)",
					  s->stop_token_ids[i], vocab);
	return CM_OK;
}

static int check_text(const char *what, const char *s, struct cm_err *err)
{
	size_t n = strlen(s);
	size_t ok = md_utf8_valid_prefix(s, n);
	if (ok != n)
		return cm_err_set(err, CM_EINVAL, "%s: invalid UTF-8 at byte %zu", what, ok);
	return CM_OK;
}

int coord_api_check_open(const tandem_v1_Open *o, const char *model_name, int32_t vocab,
			 struct cm_err *err)
{
	int rc;
	if (o->model[0] && strcmp(o->model, model_name))
		return cm_err_set(err, CM_EINVAL, "model '%.64s' is not served (this server: %s)",
				  o->model, model_name);
	if (o->mode != tandem_v1_Mode_MODE_STREAMING && o->mode != tandem_v1_Mode_MODE_BATCH)
		return cm_err_set(err, CM_EINVAL, "unknown mode %d", (int)o->mode);
	if ((rc = check_text("system", o->system, err)) < 0 ||
	    (rc = check_text("request_id", o->request_id, err)) < 0 ||
	    (rc = check_text("model", o->model, err)) < 0)
		return rc;
	if (o->unit_budget < 0 || o->final_budget < 0 || o->max_tokens < 0)
		return cm_err_set(err, CM_EINVAL, "budgets and max_tokens must not be negative");
	if (o->depth < 0 || o->depth > 3)
		return cm_err_set(err, CM_EINVAL, "depth %d outside [0, 3]", o->depth);
	if (o->has_sampling)
		return coord_api_check_sampling(&o->sampling, vocab, err);
	return CM_OK;
}

int coord_api_check_ids(const int32_t *ids, size_t n, int32_t vocab, struct cm_err *err)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= vocab)
			return cm_err_set(err, CM_EINVAL, "token id %d outside [0, %d)", ids[i],
					  vocab);
	return CM_OK;
}

int coord_api_check_input(const tandem_v1_Input *in, int32_t vocab, struct cm_err *err)
{
	if (in->text[0] && in->token_ids_count)
		return cm_err_set(err, CM_EINVAL, "input carries both text and token ids");
	int rc = check_text("input text", in->text, err);
	if (rc < 0)
		return rc;
	return coord_api_check_ids(in->token_ids, in->token_ids_count, vocab, err);
}
