/* generation_config.json stop ids and the chat formats of the supported families. */
#include "md.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static void stop_add(struct md_stop_ids *s, int32_t id)
{
	for (int32_t i = 0; i < s->n; i++)
		if (s->ids[i] == id)
			return;
	if (s->n < (int32_t)CM_ARRAY_LEN(s->ids))
		s->ids[s->n++] = id;
}

int md_stop_ids_load(const char *dir, const struct md_config *cfg, struct md_stop_ids *out,
		     struct cm_err *err)
{
	out->n = 0;
	for (int32_t i = 0; i < cfg->n_eos; i++)
		stop_add(out, cfg->eos_ids[i]);
	char path[4096];
	snprintf(path, sizeof(path), "%s/generation_config.json", dir);
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je);
	if (!root) {
		if (je.position == 0 && je.line <= 0 && strstr(je.text, "unable to open"))
			return CM_OK; /* absent: config.json's ids only */
		return cm_err_set(err, CM_EFORMAT, "%s: %s (line %d)", path, je.text, je.line);
	}
	int rc = CM_OK;
	json_t *eos = json_object_get(root, "eos_token_id");
	if (json_is_integer(eos)) {
		stop_add(out, (int32_t)json_integer_value(eos));
	} else if (json_is_array(eos)) {
		size_t i;
		json_t *v;
		json_array_foreach(eos, i, v) {
			if (!json_is_integer(v) || json_integer_value(v) < 0 ||
			    json_integer_value(v) >= cfg->vocab) {
				rc = cm_err_set(err, CM_EFORMAT,
						"%s: eos_token_id[%zu] is not a token id", path, i);
				break;
			}
			stop_add(out, (int32_t)json_integer_value(v));
		}
	} else if (eos && !json_is_null(eos)) {
		rc = cm_err_set(err, CM_EFORMAT, "%s: eos_token_id must be an id or a list", path);
	}
	json_decref(root);
	return rc;
}

int md_chat_user_prompt(const struct md_tok *tok, const char *user, char **out,
			struct cm_err *err)
{
	const char *fmt;
	if (md_tok_special_id(tok, "<|im_start|>") >= 0)
		fmt = "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
	else if (md_tok_special_id(tok, "<|start_header_id|>") >= 0)
		fmt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n%s<|eot_id|>"
		      "<|start_header_id|>assistant<|end_header_id|>\n\n";
	else
		return cm_err_set(err, CM_EUNSUPPORTED,
				  "the tokenizer has no chat tokens (<|im_start|> or "
				  "<|start_header_id|>): no known chat format");
	size_t n = strlen(fmt) + strlen(user);
	char *s = malloc(n);
	if (!s)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	snprintf(s, n, fmt, user);
	*out = s;
	return CM_OK;
}
