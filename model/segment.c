/* The StreamingThinker segmenter (algorithms.md §1.2.1, docs/streaming.md): cuts
 * arriving text into sentence units, tokenizes each and appends the template's
 * boundary token; also holds the template as token ids for the engine.
 *
 * A sentence ends at a terminator cluster (. ! ? 。！？ … or a newline, plus any
 * closing quotes or brackets) that is followed by whitespace (CJK full stops and
 * newlines need none), except after an abbreviation, an initial or a list number.
 * It becomes a unit only once the next sentence's first character arrives, so
 * the close can still append end_instruct to the last one. */
#include "md.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* A unit never grows past this many bytes: it is cut at its last whitespace
 * (text without punctuation, e.g. a raw transcript, still streams). */
#define SEG_MAX_UNIT 2048

struct md_seg {
	const struct md_tok *tok;
	struct md_seg_template t;
	struct md_seg_ids ids;
	int32_t *think_prefix, *connect_2, *connect_3; /* storage behind ids */
	int32_t *end_ids;			       /* [n_end] end_instruct */
	int32_t n_end;
	char *buf; /* [cap] text not yet in a unit, valid UTF-8 */
	size_t len, cap;
	unsigned char part[4]; /* an incomplete UTF-8 character at the end of a push */
	size_t n_part;
	int32_t n_units; /* units reported so far */
	bool closed;
	int32_t *unit; /* [unit_cap] scratch for one unit's ids */
	size_t unit_cap;
};

/* ---- the template ---------------------------------------------------------- */

static const char default_instruct[] =
	"<|im_start|>user\n"
	"You will read a problem one sentence at a time. After each sentence, reason "
	"briefly about what it adds and how it relates to what came before, in order, "
	"and end that reasoning with the end-of-thought marker; skip a sentence that is "
	"irrelevant. When the input is complete, combine everything, reason globally "
	"about the question, and give the final answer in \\boxed{}.\n";

struct md_seg_template md_seg_default_template(void)
{
	return (struct md_seg_template){
		.instruct = default_instruct,
		.end_instruct = "<|im_end|>\n",
		.sep = "<SEP>",
		.eoq = "<EOQ>",
		.eos = "<EOS>",
		.reasoning_start = "<|im_start|>assistant\n<think>\n",
		.connect_2 =
			{"",
			 "Now, the streaming reasoning is completed. Let's combine all "
			 "information and begin deeper & global reasoning to infer the answer.",
			 "Now, the streaming reasoning is completed. Let's combine all "
			 "information and begin deeper & global reasoning to infer the answer."},
		.connect_3 = "</think>\n\n",
		.depth = 2,
	};
}

static int tmpl_str(json_t *v, const char *key, const char *path, const char **out,
		    struct cm_err *err)
{
	if (!json_is_string(v))
		return cm_err_set(err, CM_EFORMAT, "%s: \"%s\" must be a string", path, key);
	*out = json_string_value(v);
	return CM_OK;
}

/* One key of a template file into t. */
static int tmpl_key(struct md_seg_template *t, const char *key, json_t *v, const char *path,
		    struct cm_err *err)
{
	static const struct {
		const char *name;
		size_t off;
	} keys[] = {
		{"instruct", offsetof(struct md_seg_template, instruct)},
		{"end_instruct", offsetof(struct md_seg_template, end_instruct)},
		{"sep", offsetof(struct md_seg_template, sep)},
		{"eoq", offsetof(struct md_seg_template, eoq)},
		{"eos", offsetof(struct md_seg_template, eos)},
		{"reasoning_start", offsetof(struct md_seg_template, reasoning_start)},
		{"connect_3", offsetof(struct md_seg_template, connect_3)},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(keys); i++)
		if (!strcmp(key, keys[i].name))
			return tmpl_str(v, key, path, (const char **)((char *)t + keys[i].off),
					err);
	if (!strcmp(key, "connect_2")) {
		if (!json_is_array(v) || json_array_size(v) != 3)
			return cm_err_set(err, CM_EFORMAT,
					  "%s: \"connect_2\" must be a list of 3 strings (D1-D3)",
					  path);
		for (size_t i = 0; i < 3; i++)
			if (tmpl_str(json_array_get(v, i), key, path, &t->connect_2[i], err) < 0)
				return err->code;
		return CM_OK;
	}
	if (!strcmp(key, "depth")) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 3)
			return cm_err_set(err, CM_EFORMAT, "%s: \"depth\" must be 1, 2 or 3", path);
		t->depth = (int32_t)json_integer_value(v);
		return CM_OK;
	}
	return cm_err_set(err, CM_EFORMAT, "%s: unknown key \"%s\"", path, key);
}

int md_seg_template_load(const char *path, struct md_seg_template *out, struct cm_err *err)
{
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je);
	if (!root) {
		if (strstr(je.text, "unable to open"))
			return cm_err_set(err, CM_ENOENT, "%s: cannot open", path);
		return cm_err_set(err, CM_EFORMAT, "%s: %s (line %d)", path, je.text, je.line);
	}
	if (!json_is_object(root)) {
		json_decref(root);
		return cm_err_set(err, CM_EFORMAT, "%s: a template file is a JSON object", path);
	}
	struct md_seg_template t = md_seg_default_template();
	const char *key;
	json_t *v;
	json_object_foreach (root, key, v) {
		if (tmpl_key(&t, key, v, path, err) < 0) {
			json_decref(root);
			return err->code;
		}
	}
	t.owned = root;
	*out = t;
	return CM_OK;
}

void md_seg_template_fini(struct md_seg_template *t)
{
	json_decref(t->owned);
	t->owned = NULL;
}

/* ---- construction ---------------------------------------------------------- */

static int encode(const struct md_tok *tok, const char *text, int32_t extra, int32_t **ids,
		  int32_t *n, struct cm_err *err)
{
	size_t k = 0;
	int32_t *v = NULL;
	int rc = md_tok_encode(tok, text, strlen(text), &v, &k, err);
	if (rc < 0)
		return rc;
	int32_t *w = realloc(v, (k + (size_t)extra + 1) * sizeof(int32_t));
	if (!w) {
		free(v);
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	}
	*ids = w;
	*n = (int32_t)k;
	return CM_OK;
}

/* The id of one added token named by the template; CM_EUNSUPPORTED when absent. */
static int added_id(const struct md_tok *tok, const char *content, int32_t *id, struct cm_err *err)
{
	*id = md_tok_special_id(tok, content);
	if (*id < 0)
		return cm_err_set(err, CM_EUNSUPPORTED,
				  "the tokenizer has no added token \"%s\" (StreamingThinker needs "
				  "<SEP> <EOQ> <EOS> <EOT> <EOR> <EOA> <ignore>; tandem gen-model "
				  "writes them)",
				  content);
	return CM_OK;
}

static int seg_ids_init(struct md_seg *s, struct cm_err *err)
{
	const struct md_seg_template *t = &s->t;
	struct md_seg_ids *d = &s->ids;
	int rc;
	if ((rc = added_id(s->tok, t->sep, &d->sep, err)) < 0 ||
	    (rc = added_id(s->tok, t->eoq, &d->eoq, err)) < 0 ||
	    (rc = added_id(s->tok, t->eos, &d->eos, err)) < 0 ||
	    (rc = added_id(s->tok, "<EOT>", &d->eot, err)) < 0 ||
	    (rc = added_id(s->tok, "<EOR>", &d->eor, err)) < 0 ||
	    (rc = added_id(s->tok, "<EOA>", &d->eoa, err)) < 0 ||
	    (rc = added_id(s->tok, "<ignore>", &d->ignore, err)) < 0)
		return rc;
	d->think_end = md_tok_special_id(s->tok, "</think>");
	int32_t n = 0;
	if ((rc = encode(s->tok, t->reasoning_start, 1, &s->think_prefix, &n, err)) < 0)
		return rc;
	s->think_prefix[n++] = d->sep;
	d->think_prefix = s->think_prefix;
	d->n_think_prefix = n;
	if ((rc = encode(s->tok, t->connect_2[t->depth - 1], 0, &s->connect_2, &d->n_connect_2,
			 err)) < 0 ||
	    (rc = encode(s->tok, t->connect_3, 0, &s->connect_3, &d->n_connect_3, err)) < 0 ||
	    (rc = encode(s->tok, t->end_instruct, 0, &s->end_ids, &s->n_end, err)) < 0)
		return rc;
	d->connect_2 = s->connect_2;
	d->connect_3 = s->connect_3;
	return CM_OK;
}

struct md_seg *md_seg_new(const struct md_tok *tok, const struct md_seg_template *t,
			  struct cm_err *err)
{
	if (t->depth < 1 || t->depth > 3) {
		cm_err_set(err, CM_EINVAL, "template depth %d: must be 1, 2 or 3", t->depth);
		return NULL;
	}
	const char *strs[] = {t->instruct,     t->end_instruct,	   t->sep,	 t->eoq,
			      t->eos,	       t->reasoning_start, t->connect_3, t->connect_2[0],
			      t->connect_2[1], t->connect_2[2]};
	for (size_t i = 0; i < CM_ARRAY_LEN(strs); i++)
		if (!strs[i]) {
			cm_err_set(err, CM_EINVAL, "template string %zu is NULL", i);
			return NULL;
		}
	struct md_seg *s = calloc(1, sizeof(*s));
	if (!s) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	s->tok = tok;
	s->t = *t;
	s->t.owned = NULL;
	if (seg_ids_init(s, err) < 0) {
		md_seg_free(s);
		return NULL;
	}
	return s;
}

void md_seg_free(struct md_seg *s)
{
	if (!s)
		return;
	free(s->think_prefix);
	free(s->connect_2);
	free(s->connect_3);
	free(s->end_ids);
	free(s->buf);
	free(s->unit);
	free(s);
}

const struct md_seg_ids *md_seg_ids(const struct md_seg *s)
{
	return &s->ids;
}

/* ---- reporting units ------------------------------------------------------- */

/* Tokenizes text[len] (may be empty), appends boundary (if >= 0) and, when last,
 * end_instruct, and reports the unit. */
static int emit(struct md_seg *s, const char *text, size_t len, int32_t boundary, bool last,
		md_seg_unit_fn fn, void *ud, struct cm_err *err)
{
	int32_t *ids = NULL;
	size_t n = 0;
	int rc;
	if (len && (rc = md_tok_encode(s->tok, text, len, &ids, &n, err)) < 0)
		return rc;
	size_t need = n + 1 + (size_t)s->n_end;
	if (need > s->unit_cap) {
		int32_t *u = realloc(s->unit, need * sizeof(int32_t));
		if (!u) {
			free(ids);
			return cm_err_set(err, CM_ENOMEM, "out of memory");
		}
		s->unit = u;
		s->unit_cap = need;
	}
	if (n)
		memcpy(s->unit, ids, n * sizeof(int32_t));
	free(ids);
	if (boundary >= 0)
		s->unit[n++] = boundary;
	if (last) {
		memcpy(s->unit + n, s->end_ids, (size_t)s->n_end * sizeof(int32_t));
		n += (size_t)s->n_end;
	}
	if (n)
		fn(ud, s->n_units++, s->unit, (int32_t)n);
	return CM_OK;
}

/* Unit 0, the instruction, before anything else. */
static int emit_instruction(struct md_seg *s, md_seg_unit_fn fn, void *ud, struct cm_err *err)
{
	if (s->n_units)
		return CM_OK;
	return emit(s, s->t.instruct, strlen(s->t.instruct), s->ids.sep, false, fn, ud, err);
}

/* ---- finding sentence ends ------------------------------------------------- */

static bool is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* Length of the UTF-8 character at p (p < end, valid text). */
static size_t ch_len(const char *p)
{
	unsigned char c = (unsigned char)*p;
	return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

static bool ch_is(const char *p, size_t n, const char *const *set, size_t n_set)
{
	for (size_t i = 0; i < n_set; i++)
		if (strlen(set[i]) == n && !memcmp(p, set[i], n))
			return true;
	return false;
}

static const char *const cjk_stops[] = {"\xe3\x80\x82", "\xef\xbc\x81", "\xef\xbc\x9f"};
static const char *const other_stops[] = {".", "!", "?", "\xe2\x80\xa6" /* … */};
static const char *const closers[] = {
	"\"",
	"'",
	")",
	"]",
	"}",
	"\xe2\x80\x9d" /* ” */,
	"\xe2\x80\x99" /* ’ */,
	"\xe3\x80\x8d" /* 」 */,
	"\xe3\x80\x8f" /* 』 */,
	"\xef\xbc\x89" /* ） */,
};
static const char *const questions[] = {"?", "\xef\xbc\x9f"};

/* Words that end in '.' without ending a sentence (lower case, without the dot):
 * titles, always followed by a name; and abbreviations that end the sentence
 * only when the next word is capitalised ("at 5 p.m. Then" but "5 p.m. today"). */
static const char *const titles[] = {
	"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "lt", "sgt", "capt", "gen", "rev", "vs",
};
static const char *const abbrevs[] = {
	"e.g", "i.e", "eg",  "ie",  "etc", "cf",   "al",   "approx", "fig",  "figs",
	"no",  "nos", "vol", "pp",  "inc", "ltd",  "corp", "co",     "dept", "jan",
	"feb", "mar", "apr", "jun", "jul", "aug",  "sep",  "sept",   "oct",  "nov",
	"dec", "a.m", "p.m", "u.s", "u.k", "ph.d", "ca",   "min",    "max",
};

static bool in_list(const char *w, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(w, list[i]))
			return true;
	return false;
}

/* Is the '.' at text[dot] the end of a title, an abbreviation (next: the first
 * byte of the next word), an initial or a list number ("3." opening the sentence
 * at text[start])? */
static bool dot_is_not_end(const char *text, size_t start, size_t dot, unsigned char next)
{
	size_t w = dot;
	while (w > start && !is_space((unsigned char)text[w - 1]) && text[w - 1] != '(' &&
	       text[w - 1] != '"')
		w--;
	size_t n = dot - w;
	if (n == 0)
		return false;
	if (n == 1 && text[w] >= 'A' && text[w] <= 'Z')
		return true; /* an initial: "J. R. R. Tolkien" */
	bool digits = true;
	for (size_t i = w; i < dot; i++)
		digits = digits && is_digit((unsigned char)text[i]);
	if (digits && w == start && n <= 3)
		return true; /* a list number opening the sentence: "2. Add the flour" */
	char low[16];
	if (n >= sizeof(low))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)text[w + i];
		low[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
	}
	low[n] = 0;
	if (in_list(low, titles, CM_ARRAY_LEN(titles)))
		return true;
	return in_list(low, abbrevs, CM_ARRAY_LEN(abbrevs)) && !(next >= 'A' && next <= 'Z');
}

/* Scans text[start..len) for the first sentence end. Returns true with *end (one
 * past the sentence, closers included) and *next (the first non-space byte after
 * it) when both are known; false when more text is needed. *question tells
 * whether the sentence ends in a question mark. */
static bool find_end(const char *text, size_t start, size_t len, size_t *end, size_t *next,
		     bool *question)
{
	size_t i = start;
	while (i < len) {
		size_t n = ch_len(text + i);
		bool cjk = ch_is(text + i, n, cjk_stops, CM_ARRAY_LEN(cjk_stops));
		bool nl = text[i] == '\n';
		if (!cjk && !nl && !ch_is(text + i, n, other_stops, CM_ARRAY_LEN(other_stops))) {
			i += n;
			continue;
		}
		/* a terminator cluster: more terminators, then closing quotes/brackets */
		size_t j = i;
		bool q = false;
		while (j < len) {
			size_t m = ch_len(text + j);
			if (ch_is(text + j, m, cjk_stops, CM_ARRAY_LEN(cjk_stops)) ||
			    ch_is(text + j, m, other_stops, CM_ARRAY_LEN(other_stops))) {
				cjk = cjk || ch_is(text + j, m, cjk_stops, CM_ARRAY_LEN(cjk_stops));
				q = q || ch_is(text + j, m, questions, CM_ARRAY_LEN(questions));
			} else if (!ch_is(text + j, m, closers, CM_ARRAY_LEN(closers))) {
				break;
			}
			j += m;
		}
		if (j == len)
			return false; /* the cluster may go on */
		bool ends = nl || cjk || is_space((unsigned char)text[j]);
		size_t k = j;
		while (ends && k < len && is_space((unsigned char)text[k]))
			k++;
		if (ends && k == len)
			return false; /* the next sentence has not started */
		if (ends && text[i] == '.' && j == i + 1 &&
		    dot_is_not_end(text, start, i, (unsigned char)text[k]))
			ends = false;
		if (!ends) {
			i = j;
			continue;
		}
		*end = j;
		*next = k;
		*question = q;
		return true;
	}
	return false;
}

/* Does text[a..b) end in a terminator cluster holding a question mark (closing
 * quotes and brackets after it allowed)? */
static bool ends_in_question(const char *text, size_t a, size_t b)
{
	while (b > a) {
		size_t st = b - 1;
		while (st > a && ((unsigned char)text[st] & 0xc0) == 0x80)
			st--;
		size_t m = ch_len(text + st);
		if (ch_is(text + st, m, questions, CM_ARRAY_LEN(questions)))
			return true;
		if (!ch_is(text + st, m, closers, CM_ARRAY_LEN(closers)) &&
		    !ch_is(text + st, m, other_stops, CM_ARRAY_LEN(other_stops)) &&
		    !ch_is(text + st, m, cjk_stops, CM_ARRAY_LEN(cjk_stops)))
			return false;
		b = st;
	}
	return false;
}

/* Trims spaces off both ends of text[*a..*b). */
static void trim(const char *text, size_t *a, size_t *b)
{
	while (*a < *b && is_space((unsigned char)text[*a]))
		(*a)++;
	while (*b > *a && is_space((unsigned char)text[*b - 1]))
		(*b)--;
}

/* Where to cut an over-long pending sentence: after its last space before the
 * limit (or at a character boundary at the limit). */
static size_t long_cut(const char *text, size_t len)
{
	size_t c = SEG_MAX_UNIT;
	while (c > SEG_MAX_UNIT / 2 && !is_space((unsigned char)text[c - 1]))
		c--;
	if (c == SEG_MAX_UNIT / 2) {
		c = SEG_MAX_UNIT;
		while (c < len && ((unsigned char)text[c] & 0xc0) == 0x80)
			c++;
	}
	return c;
}

/* Reports every sentence of s->buf that is complete; keeps the rest. */
static int drain(struct md_seg *s, md_seg_unit_fn fn, void *ud, struct cm_err *err)
{
	size_t pos = 0, end, next;
	bool q;
	int rc = CM_OK;
	for (;;) {
		size_t a = pos, b;
		if (find_end(s->buf, pos, s->len, &end, &next, &q)) {
			b = end;
			pos = next;
		} else if (s->len - pos > SEG_MAX_UNIT) {
			b = pos + long_cut(s->buf + pos, s->len - pos);
			q = false;
			pos = b;
		} else {
			break;
		}
		trim(s->buf, &a, &b);
		if (a < b && (rc = emit(s, s->buf + a, b - a, q ? s->ids.eoq : s->ids.eos, false,
					fn, ud, err)) < 0)
			break;
	}
	memmove(s->buf, s->buf + pos, s->len - pos);
	s->len -= pos;
	return rc;
}

/* Bytes of text that end an incomplete (but so far valid) UTF-8 character. */
static size_t incomplete_tail(const unsigned char *p, size_t n)
{
	for (size_t back = 1; back <= 3 && back <= n; back++) {
		unsigned char c = p[n - back];
		if ((c & 0xc0) == 0x80)
			continue;
		size_t want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
		return want > back ? back : 0;
	}
	return 0;
}

static int buf_reserve(struct md_seg *s, size_t more, struct cm_err *err)
{
	if (s->buf && s->len + more <= s->cap)
		return CM_OK;
	size_t cap = CM_MAX(s->cap * 2, s->len + more + 64);
	char *b = realloc(s->buf, cap);
	if (!b)
		return cm_err_set(err, CM_ENOMEM, "out of memory");
	s->buf = b;
	s->cap = cap;
	return CM_OK;
}

int md_seg_push(struct md_seg *s, const char *text, size_t len, md_seg_unit_fn fn, void *ud,
		struct cm_err *err)
{
	int rc;
	if (s->closed)
		return cm_err_set(err, CM_EINVAL, "the segmenter's input is closed");
	if ((rc = buf_reserve(s, s->n_part + len, err)) < 0)
		return rc;
	/* the held partial character, then the new text, validated together */
	size_t old = s->len;
	memcpy(s->buf + s->len, s->part, s->n_part);
	memcpy(s->buf + s->len + s->n_part, text, len);
	size_t n = s->n_part + len;
	size_t tail = incomplete_tail((const unsigned char *)s->buf + old, n);
	size_t ok = md_utf8_valid_prefix(s->buf + old, n - tail);
	if (ok != n - tail) {
		/* nothing consumed: offsets count from the start of this push */
		return cm_err_set(err, CM_EUTF8, "invalid UTF-8 at byte %zu of the pushed text",
				  ok >= s->n_part ? ok - s->n_part : 0);
	}
	memcpy(s->part, s->buf + old + n - tail, tail);
	s->n_part = tail;
	s->len = old + n - tail;
	if ((rc = emit_instruction(s, fn, ud, err)) < 0)
		return rc;
	return drain(s, fn, ud, err);
}

int md_seg_close(struct md_seg *s, md_seg_unit_fn fn, void *ud, struct cm_err *err)
{
	int rc;
	if (s->closed)
		return CM_OK;
	if (s->n_part)
		return cm_err_set(err, CM_EUTF8, "the text ends inside a UTF-8 character");
	if ((rc = emit_instruction(s, fn, ud, err)) < 0)
		return rc;
	/* the rest: complete sentences but the last, then the last with end_instruct */
	size_t pos = 0, end, next;
	bool q = false;
	while (find_end(s->buf, pos, s->len, &end, &next, &q)) {
		size_t a = pos, b = end;
		trim(s->buf, &a, &b);
		if ((rc = emit(s, s->buf + a, b - a, q ? s->ids.eoq : s->ids.eos, false, fn, ud,
			       err)) < 0)
			return rc;
		pos = next;
	}
	size_t a = pos, b = s->len;
	trim(s->buf, &a, &b);
	q = ends_in_question(s->buf, a, b);
	rc = emit(s, s->buf + a, b - a, a < b ? (q ? s->ids.eoq : s->ids.eos) : -1, true, fn, ud,
		  err);
	s->len = 0;
	s->closed = true;
	return rc;
}
