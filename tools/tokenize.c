/* tandem tokenize: text to ids, or ids to text. */
#include "model/md.h"
#include "tools.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Parses "1,2,3" into a malloc'd array; CM_EINVAL with a message on bad input. */
int tool_parse_ids(const char *s, int32_t **ids, size_t *n, struct cm_err *err)
{
	size_t cap = 1;
	for (const char *p = s; *p; p++)
		cap += *p == ',';
	int32_t *v = malloc(cap * sizeof(*v));
	if (!v)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	size_t k = 0;
	const char *p = s;
	for (;;) {
		char *end;
		errno = 0;
		long x = strtol(p, &end, 10);
		if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
			free(v);
			return cm_err_set(err, CM_EINVAL, "bad token id list at '%.20s'", p);
		}
		v[k++] = (int32_t)x;
		if (!*end)
			break;
		p = end + 1;
	}
	*ids = v;
	*n = k;
	return CM_OK;
}

int tool_tokenize(const struct tandem_opts *o, int argc, char **argv)
{
	struct cm_err err = { 0 };
	if (!o->model) {
		fprintf(stderr, "tandem tokenize: --model DIR is required\n");
		return 1;
	}
	if (o->decode ? argc != 0 : argc != 1) {
		fprintf(stderr, "tandem tokenize: give one TEXT argument, or --decode ID,...\n");
		return 1;
	}
	struct md_tok *tok = md_tok_load(o->model, &err);
	if (!tok) {
		fprintf(stderr, "tandem tokenize: %s\n", err.msg);
		return 1;
	}
	int rc = 1;
	int32_t *ids = NULL;
	size_t n = 0;
	char *text = NULL;
	size_t len = 0;
	if (o->decode) {
		if (tool_parse_ids(o->decode, &ids, &n, &err) < 0 ||
		    md_tok_decode(tok, ids, n, &text, &len, &err) < 0)
			goto out;
		fwrite(text, 1, len, stdout);
		putchar('\n');
	} else {
		if (md_tok_encode(tok, argv[0], strlen(argv[0]), &ids, &n, &err) < 0)
			goto out;
		for (size_t i = 0; i < n; i++)
			printf(i ? ",%d" : "%d", ids[i]);
		putchar('\n');
	}
	rc = 0;
out:
	if (rc)
		fprintf(stderr, "tandem tokenize: %s\n", err.msg);
	free(ids);
	free(text);
	md_tok_free(tok);
	return rc;
}
