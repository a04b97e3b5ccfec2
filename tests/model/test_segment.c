/* The StreamingThinker segmenter: sentence ends on tricky text (decimals,
 * abbreviations, URLs, quotes, CJK, newlines, list numbers), any split of the
 * input, the close (mid-sentence and after a complete one), the template ids and
 * a template file, and bad input. On the Qwen3 tokenizer with the seven added
 * tokens appended as `tandem gen-model` writes them. */
#include "../helpers.h"
#include "model/md.h"

#include <string.h>

#define MAX_UNITS 64

/* Units reported, decoded to text. */
struct units {
	const struct md_tok *tok;
	char *text[MAX_UNITS];
	int32_t index[MAX_UNITS];
	int n;
};

static void on_unit(void *ud, int32_t index, const int32_t *ids, int32_t n)
{
	struct units *u = ud;
	cr_assert_lt(u->n, MAX_UNITS);
	char *t;
	size_t len;
	struct cm_err err = {0};
	cr_assert_eq(md_tok_decode(u->tok, ids, (size_t)n, &t, &len, &err), CM_OK, "%s", err.msg);
	u->index[u->n] = index;
	u->text[u->n++] = t;
}

static void units_free(struct units *u)
{
	for (int i = 0; i < u->n; i++)
		free(u->text[i]);
	u->n = 0;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = malloc(*len + 1);
	cr_assert_eq(fread(s, 1, *len, f), *len);
	s[*len] = 0;
	fclose(f);
	return s;
}

/* The Qwen3 tokenizer.json with <SEP> <EOQ> <EOS> <EOT> <EOR> <EOA> <ignore>
 * appended as ids 151669..151675 (what gen-model writes), loaded. */
static struct md_tok *stream_tokenizer(void)
{
	char path[1200], dir[1024];
	snprintf(path, sizeof(path), "%s/../../third_party/qwen3-tokenizer/tokenizer.json",
		 getenv("TANDEM_TEST_DATA"));
	size_t len;
	char *s = read_file(path, &len);
	const char *anchor = "\n    }\n  ],\n  \"normalizer\"";
	char *at = strstr(s, anchor);
	cr_assert_not_null(at);
	at += 6; /* after the last element's '}' */
	static const char *const added[] = {"<SEP>", "<EOQ>", "<EOS>",	 "<EOT>",
					    "<EOR>", "<EOA>", "<ignore>"};
	th_tmpdir(dir, sizeof(dir), "segtok");
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f);
	fwrite(s, 1, (size_t)(at - s), f);
	for (int i = 0; i < 7; i++)
		fprintf(f,
			",{\"id\":%d,\"content\":\"%s\",\"single_word\":false,\"lstrip\":false,"
			"\"rstrip\":false,\"normalized\":false,\"special\":true}",
			151669 + i, added[i]);
	fwrite(at, 1, len - (size_t)(at - s), f);
	fclose(f);
	free(s);
	struct cm_err err = {0};
	struct md_tok *tok = md_tok_load_file(path, &err);
	cr_assert_not_null(tok, "%s", err.msg);
	th_rmdir(dir);
	return tok;
}

static struct md_seg *seg_new(const struct md_tok *tok)
{
	struct cm_err err = {0};
	struct md_seg_template t = md_seg_default_template();
	struct md_seg *s = md_seg_new(tok, &t, &err);
	cr_assert_not_null(s, "%s", err.msg);
	return s;
}

/* Segments text pushed in pieces of `step` bytes (0: at once), then closes. */
static void segment(const struct md_tok *tok, const char *text, size_t step, struct units *u)
{
	struct md_seg *s = seg_new(tok);
	struct cm_err err = {0};
	u->tok = tok;
	size_t len = strlen(text);
	if (!step)
		step = len ? len : 1;
	for (size_t at = 0; at < len; at += step)
		cr_assert_eq(md_seg_push(s, text + at, CM_MIN(step, len - at), on_unit, u, &err),
			     CM_OK, "%s", err.msg);
	cr_assert_eq(md_seg_close(s, on_unit, u, &err), CM_OK, "%s", err.msg);
	md_seg_free(s);
}

/* Expects the units after the instruction to be want[] (NULL-terminated). */
static void expect_units(const struct units *u, const char *const *want, const char *what)
{
	int n = 0;
	while (want[n])
		n++;
	cr_assert_eq(u->n, n + 1, "%s: %d units, want %d", what, u->n - 1, n);
	const char *instr_end = "<SEP>";
	size_t il = strlen(u->text[0]);
	cr_expect(il > 5 && !strcmp(u->text[0] + il - 5, instr_end), "%s: unit 0 '%s'", what,
		  u->text[0]);
	cr_expect(!strncmp(u->text[0], "<|im_start|>user\n", 17));
	for (int i = 0; i < n; i++) {
		cr_expect_eq(u->index[i + 1], i + 1);
		cr_expect_str_eq(u->text[i + 1], want[i], "%s: unit %d", what, i + 1);
	}
}

struct tcase {
	const char *name;
	const char *text;
	const char *const want[8];
};

static const struct tcase cases[] = {
	{"abbreviation ending a sentence",
	 "We met at 5 p.m. Then we left, etc. The answer is no. Done.",
	 {"We met at 5 p.m.<EOS>", "Then we left, etc.<EOS>", "The answer is no.<EOS>",
	  "Done.<EOS><|im_end|>\n"}},
	{"decimal",
	 "Pi is 3.14 exactly. It is irrational.",
	 {"Pi is 3.14 exactly.<EOS>", "It is irrational.<EOS><|im_end|>\n"}},
	{"abbreviations",
	 "Dr. Smith met Mr. Jones at 5 p.m. today. They talked, e.g. about tea.",
	 {"Dr. Smith met Mr. Jones at 5 p.m. today.<EOS>",
	  "They talked, e.g. about tea.<EOS><|im_end|>\n"}},
	{"url",
	 "See https://example.com/a.b?x=1&y=2.5 for details. Then stop.",
	 {"See https://example.com/a.b?x=1&y=2.5 for details.<EOS>",
	  "Then stop.<EOS><|im_end|>\n"}},
	{"email",
	 "Mail bob.smith@mail.example.org now! Thanks.",
	 {"Mail bob.smith@mail.example.org now!<EOS>", "Thanks.<EOS><|im_end|>\n"}},
	{"question",
	 "A train leaves at 9. How far does it go? It goes fast.",
	 {"A train leaves at 9.<EOS>", "How far does it go?<EOQ>",
	  "It goes fast.<EOS><|im_end|>\n"}},
	{"question last",
	 "Tom has 3 apples. How many does he have?",
	 {"Tom has 3 apples.<EOS>", "How many does he have?<EOQ><|im_end|>\n"}},
	{"quotes",
	 "He said \"Stop.\" Then he left. (It was late.) Fine.",
	 {"He said \"Stop.\"<EOS>", "Then he left.<EOS>", "(It was late.)<EOS>",
	  "Fine.<EOS><|im_end|>\n"}},
	{"newlines",
	 "Title\n\nFirst line\nSecond line.",
	 {"Title<EOS>", "First line<EOS>", "Second line.<EOS><|im_end|>\n"}},
	{"cjk",
	 "今天很好。明天下雨！你来吗？好",
	 {"今天很好。<EOS>", "明天下雨！<EOS>", "你来吗？<EOQ>", "好<EOS><|im_end|>\n"}},
	{"list",
	 "Steps:\n1. Mix the flour. 2. Bake it.",
	 {"Steps:<EOS>", "1. Mix the flour.<EOS>", "2. Bake it.<EOS><|im_end|>\n"}},
	{"ellipsis and clusters",
	 "Wait... what?! Really.",
	 {"Wait...<EOS>", "what?!<EOQ>", "Really.<EOS><|im_end|>\n"}},
	{"initials",
	 "J. R. R. Tolkien wrote it. Yes.",
	 {"J. R. R. Tolkien wrote it.<EOS>", "Yes.<EOS><|im_end|>\n"}},
	{"close mid sentence",
	 "One. Two is not fin",
	 {"One.<EOS>", "Two is not fin<EOS><|im_end|>\n"}},
	{"trailing space after the last", "One. Two.  \n ", {"One.<EOS>", "Two.<EOS><|im_end|>\n"}},
	{"empty", "", {"<|im_end|>\n"}},
};

/* Every case, pushed at once, byte by byte and in 3-byte pieces (splitting UTF-8
 * characters): the same units. */
Test(segment, tricky_text_any_split, .timeout = 120)
{
	struct md_tok *tok = stream_tokenizer();
	size_t steps[] = {0, 1, 3};
	for (size_t c = 0; c < CM_ARRAY_LEN(cases); c++) {
		for (size_t k = 0; k < CM_ARRAY_LEN(steps); k++) {
			struct units u = {0};
			char what[96];
			snprintf(what, sizeof(what), "%s (pieces of %zu)", cases[c].name, steps[k]);
			segment(tok, cases[c].text, steps[k], &u);
			expect_units(&u, cases[c].want, what);
			units_free(&u);
		}
	}
	md_tok_free(tok);
}

/* A sentence becomes a unit once the next one starts, not before (so the close
 * can still end the last with <|im_end|>), and unit 0 comes with the first push. */
Test(segment, units_arrive_when_the_next_sentence_starts, .timeout = 120)
{
	struct md_tok *tok = stream_tokenizer();
	struct md_seg *s = seg_new(tok);
	struct units u = {.tok = tok};
	struct cm_err err = {0};
	cr_assert_eq(md_seg_push(s, "", 0, on_unit, &u, &err), CM_OK);
	cr_expect_eq(u.n, 1, "the instruction unit on the first push");
	const char *pieces[] = {"The cost is 3", ".", "5 dollars", ".", " ", "\n", "Next"};
	int want_n[] = {1, 1, 1, 1, 1, 1, 2};
	for (size_t i = 0; i < CM_ARRAY_LEN(pieces); i++) {
		cr_assert_eq(md_seg_push(s, pieces[i], strlen(pieces[i]), on_unit, &u, &err),
			     CM_OK);
		cr_expect_eq(u.n, want_n[i], "after '%s': %d units", pieces[i], u.n);
	}
	cr_expect_str_eq(u.text[1], "The cost is 3.5 dollars.<EOS>");
	cr_assert_eq(md_seg_close(s, on_unit, &u, &err), CM_OK);
	cr_expect_str_eq(u.text[2], "Next<EOS><|im_end|>\n");
	cr_expect_eq(md_seg_close(s, on_unit, &u, &err), CM_OK, "closing twice is harmless");
	cr_expect_eq(u.n, 3);
	cr_expect_eq(md_seg_push(s, "x", 1, on_unit, &u, &err), CM_EINVAL);
	units_free(&u);
	md_seg_free(s);
	md_tok_free(tok);
}

/* Text without punctuation still streams: units are cut at a space under 2 KiB. */
Test(segment, long_text_without_punctuation_is_cut, .timeout = 120)
{
	struct md_tok *tok = stream_tokenizer();
	char *text = malloc(10001);
	for (int i = 0; i < 10000; i++)
		text[i] = i % 6 == 5 ? ' ' : 'a' + i % 5;
	text[10000] = 0;
	struct units u = {0};
	segment(tok, text, 100, &u);
	cr_expect_geq(u.n, 1 + 5);
	size_t total = 0;
	for (int i = 1; i < u.n; i++) {
		size_t l = strlen(u.text[i]);
		cr_expect_leq(l, 2048 + 20, "unit %d: %zu bytes", i, l);
		total += l;
	}
	cr_expect_gt(total, 9000u);
	units_free(&u);
	free(text);
	md_tok_free(tok);
}

/* The template as ids: the seven tokens from the tokenizer, the reasoning prefix,
 * the connectors of each depth. */
Test(segment, template_ids, .timeout = 120)
{
	struct md_tok *tok = stream_tokenizer();
	struct cm_err err = {0};
	struct md_seg_template t = md_seg_default_template();
	for (int depth = 1; depth <= 3; depth++) {
		t.depth = depth;
		struct md_seg *s = md_seg_new(tok, &t, &err);
		cr_assert_not_null(s, "%s", err.msg);
		const struct md_seg_ids *d = md_seg_ids(s);
		int32_t want[] = {151669, 151670, 151671, 151672, 151673, 151674, 151675};
		int32_t got[] = {d->sep, d->eoq, d->eos, d->eot, d->eor, d->eoa, d->ignore};
		for (int i = 0; i < 7; i++)
			cr_expect_eq(got[i], want[i]);
		cr_expect_eq(d->think_end, 151668);
		char *txt;
		size_t len;
		cr_assert_eq(md_tok_decode(tok, d->think_prefix, (size_t)d->n_think_prefix, &txt,
					   &len, &err),
			     CM_OK);
		cr_expect_str_eq(txt, "<|im_start|>assistant\n<think>\n<SEP>");
		free(txt);
		cr_assert_eq(
			md_tok_decode(tok, d->connect_3, (size_t)d->n_connect_3, &txt, &len, &err),
			CM_OK);
		cr_expect_str_eq(txt, "</think>\n\n");
		free(txt);
		if (depth == 1) {
			cr_expect_eq(d->n_connect_2, 0);
		} else {
			cr_assert_eq(md_tok_decode(tok, d->connect_2, (size_t)d->n_connect_2, &txt,
						   &len, &err),
				     CM_OK);
			cr_expect(!strncmp(txt, "Now, the streaming reasoning is completed.", 42),
				  "%s", txt);
			free(txt);
		}
		md_seg_free(s);
	}
	t.depth = 4;
	cr_expect_null(md_seg_new(tok, &t, &err));
	cr_expect_eq(err.code, CM_EINVAL);
	md_tok_free(tok);

	/* the plain Qwen3 tokenizer lacks the seven tokens */
	char dir[1024];
	snprintf(dir, sizeof(dir), "%s/../../third_party/qwen3-tokenizer",
		 getenv("TANDEM_TEST_DATA"));
	struct md_tok *plain = md_tok_load(dir, &err);
	cr_assert_not_null(plain, "%s", err.msg);
	t = md_seg_default_template();
	cr_expect_null(md_seg_new(plain, &t, &err));
	cr_expect_eq(err.code, CM_EUNSUPPORTED);
	cr_expect(strstr(err.msg, "<SEP>"), "%s", err.msg);
	md_tok_free(plain);
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

/* A template file overrides the defaults; bad files are one-line errors. */
Test(segment, template_file, .timeout = 120)
{
	struct md_tok *tok = stream_tokenizer();
	char dir[1024], path[1100];
	th_tmpdir(dir, sizeof(dir), "segtmpl");
	snprintf(path, sizeof(path), "%s/t.json", dir);
	write_text(path, "{\"instruct\": \"<|im_start|>user\\nThink.\\n\", \"depth\": 3,"
			 " \"connect_2\": [\"\", \"Go on.\", \"Check it.\"]}");
	struct cm_err err = {0};
	struct md_seg_template t;
	cr_assert_eq(md_seg_template_load(path, &t, &err), CM_OK, "%s", err.msg);
	cr_expect_eq(t.depth, 3);
	cr_expect_str_eq(t.eos, "<EOS>", "unset keys keep their defaults");
	struct md_seg *s = md_seg_new(tok, &t, &err);
	cr_assert_not_null(s, "%s", err.msg);
	struct units u = {.tok = tok};
	cr_assert_eq(md_seg_push(s, "Hi. There", 9, on_unit, &u, &err), CM_OK);
	cr_expect_str_eq(u.text[0], "<|im_start|>user\nThink.\n<SEP>");
	const struct md_seg_ids *d = md_seg_ids(s);
	char *txt;
	size_t len;
	cr_assert_eq(md_tok_decode(tok, d->connect_2, (size_t)d->n_connect_2, &txt, &len, &err),
		     CM_OK);
	cr_expect_str_eq(txt, "Check it.");
	free(txt);
	units_free(&u);
	md_seg_free(s);
	md_seg_template_fini(&t);

	const char *bad[] = {"{\"colour\": \"red\"}",	 "{\"eos\": 3}", "{\"depth\": 7}",
			     "{\"connect_2\": [\"a\"]}", "[1, 2]",	 "{not json"};
	for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
		write_text(path, bad[i]);
		cr_expect_eq(md_seg_template_load(path, &t, &err), CM_EFORMAT, "%s", bad[i]);
		cr_expect_null(strchr(err.msg, '\n'));
	}
	snprintf(path, sizeof(path), "%s/missing.json", dir);
	cr_expect_eq(md_seg_template_load(path, &t, &err), CM_ENOENT);
	/* a template naming a token the tokenizer lacks */
	t = md_seg_default_template();
	t.eos = "<END>";
	cr_expect_null(md_seg_new(tok, &t, &err));
	cr_expect_eq(err.code, CM_EUNSUPPORTED);
	th_rmdir(dir);
	md_tok_free(tok);
}

/* Invalid UTF-8 is an error and consumes nothing; a character split across pushes
 * is fine; a close inside a character is an error. */
Test(segment, bad_utf8, .timeout = 120)
{
	struct md_tok *tok = stream_tokenizer();
	struct md_seg *s = seg_new(tok);
	struct units u = {.tok = tok};
	struct cm_err err = {0};
	cr_expect_eq(md_seg_push(s, "ab\xff cd. ", 8, on_unit, &u, &err), CM_EUTF8);
	cr_expect(strstr(err.msg, "byte 2"), "%s", err.msg);
	cr_expect_eq(md_seg_push(s, "\xed\xa0\x80", 3, on_unit, &u, &err), CM_EUTF8, "a surrogate");
	cr_assert_eq(md_seg_push(s, "caf\xc3", 4, on_unit, &u, &err), CM_OK);
	cr_assert_eq(md_seg_push(s, "\xa9. Ok", 5, on_unit, &u, &err), CM_OK);
	cr_expect_eq(u.n, 2);
	cr_expect_str_eq(u.text[1], "caf\xc3\xa9.<EOS>");
	cr_assert_eq(md_seg_push(s, " \xe4\xbd", 3, on_unit, &u, &err), CM_OK);
	cr_expect_eq(md_seg_close(s, on_unit, &u, &err), CM_EUTF8);
	units_free(&u);
	md_seg_free(s);
	md_tok_free(tok);
}
