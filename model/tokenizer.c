/* Byte-level BPE tokenizer of Hugging Face tokenizer.json (Qwen2/Qwen3, Llama 3).
 *
 * Load: vocabulary entries are GPT-2 byte-level strings and become raw bytes;
 * merges ("a b" strings or ["a", "b"] pairs) become an open-addressing table
 * (id_a, id_b) -> (rank, merged id); added tokens are kept longest first; the
 * pre-tokenizer's split pattern is read from the JSON and compiled with PCRE2
 * (UTF, UCP, JIT).
 *
 * Encode: added tokens are cut out of the raw text first (leftmost, then
 * longest); every stretch between them is NFC-normalised (utf8proc), split by the
 * pattern with 'Isolated' behaviour (matches and the gaps between them are
 * pieces), and each piece is merged lowest rank first, leftmost on ties, which is
 * the order of HF tokenizers' heap. Short pieces use an array of pair ranks, long
 * ones a linked list and a min-heap, so a 100 KB piece is not quadratic. All that
 * an encode call writes lives in its own struct tok_enc, so a loaded md_tok is
 * read-only and shared by threads.
 *
 * Decode: token bytes are concatenated and ill-formed UTF-8 becomes U+FFFD, one
 * per maximal subpart (Rust's from_utf8_lossy, WHATWG), as HF's errors="replace".
 *
 * Limits of the port: added tokens are matched on the raw text whatever their
 * "normalized" flag says, and their lstrip/rstrip/single_word flags are ignored
 * (all false in Qwen3). The split pattern is written for Oniguruma (what HF
 * uses); PCRE2 reads it alike once \s is pinned to White_Space (onig_to_pcre2).
 */
#include "model/md.h"
#include "model/tokenizer-impl.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define TOK_MAX_ID      ((int64_t)1 << 24)         /* bound on token ids */
#define TOK_MAX_TEXT    ((size_t)INT32_MAX)        /* bytes per encode call */
#define TOK_SHORT_PIECE 64                         /* longer pieces take the heap path */
#define TOK_CACHE_PIECE 48                         /* longest piece memoised, bytes */
#define TOK_CACHE_MIN   ((size_t)1 << 8)           /* first cache size, slots */
#define TOK_CACHE_MAX   ((size_t)1 << 18)          /* cache stops growing here */
#define TOK_NO_RANK     INT32_MAX
#define TOK_ABSENT      UINT32_MAX
#define TOK_BL_CPS      324                        /* code points of the GPT-2 byte map */

/* The GPT-2 split pattern: what ByteLevel with use_regex = true splits by. */
static const char tok_gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct tok_added {
	char *content;  /* NUL-terminated copy */
	size_t len;     /* bytes */
	int32_t id;
};

struct tok_span {
	uint32_t off;  /* into md_tok.blob; TOK_ABSENT for an unused id */
	uint32_t len;  /* bytes */
};

struct tok_merge {
	uint64_t key;  /* (uint64_t)id_a << 32 | id_b */
	int32_t rank;  /* -1: empty slot */
	int32_t id;    /* the merged token */
};

struct md_tok {
	int32_t n_ids;             /* highest id + 1 */
	struct tok_span *span;     /* [n_ids] bytes of each id (added: content) */
	char *blob;
	size_t max_len;
	int32_t byte_id[256];      /* the token of each single byte */
	struct tok_merge *merge;   /* [merge_mask + 1] */
	size_t merge_mask;
	unsigned merge_shift;      /* 64 - log2(slots): Fibonacci hashing */
	int32_t *vocab;            /* [vocab_mask + 1] bytes -> id, -1 empty; ignore_merges only */
	size_t vocab_mask;
	bool ignore_merges;
	bool nfc;
	struct tok_added *added;   /* [n_added], longest first */
	size_t n_added;
	bool added_first[256];     /* first bytes of added tokens */
	pcre2_code *re;            /* NULL: no split, a stretch is one piece */
};

/* ---- small buffers ------------------------------------------------------ */

struct tok_bytes {
	char *p;
	size_t n, cap;
};

struct tok_ids {
	int32_t *v;
	size_t n, cap;
};

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t c = *cap ? *cap : 64;
	while (c < need)
		c *= 2;
	void *q = realloc(*p, c * elem);
	if (!q)
		return false;
	*p = q;
	*cap = c;
	return true;
}

static bool bytes_put(struct tok_bytes *b, const void *src, size_t n)
{
	if (!grow((void **)&b->p, &b->cap, b->n + n, 1))
		return false;
	memcpy(b->p + b->n, src, n);
	b->n += n;
	return true;
}

static bool ids_put(struct tok_ids *x, const int32_t *v, size_t n)
{
	if (!grow((void **)&x->v, &x->cap, x->n + n, sizeof(int32_t)))
		return false;
	memcpy(x->v + x->n, v, n * sizeof(int32_t));
	x->n += n;
	return true;
}

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
		p += 8;
		n -= 8;
	}
	uint64_t w = 0;
	memcpy(&w, p, n);
	h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 29;
	return h ? h : 1;
}

/* ---- UTF-8 -------------------------------------------------------------- */

/* Classifies the bytes at s[0..n): > 0 a valid character of that many bytes,
 * 0 a valid but incomplete prefix (all n bytes), < 0 an ill-formed maximal
 * subpart of -ret bytes, which becomes one U+FFFD. */
static int utf8_next(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xbf;
	int need;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		lo = c == 0xe0 ? 0xa0 : 0x80;
		hi = c == 0xed ? 0x9f : 0xbf;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		lo = c == 0xf0 ? 0x90 : 0x80;
		hi = c == 0xf4 ? 0x8f : 0xbf;
	} else {
		return -1;
	}
	for (int k = 1; k < need; k++) {
		if ((size_t)k >= n)
			return 0;
		if (s[k] < lo || s[k] > hi)
			return -k;
		lo = 0x80;
		hi = 0xbf;
	}
	return need;
}

static const char tok_fffd[3] = {'\xef', '\xbf', '\xbd'};

/* Writes s[0..n) to out with each ill-formed subpart (and a truncated tail) as
 * U+FFFD; out has room for 3 * n bytes. Returns the bytes written. */
static size_t utf8_lossy(const unsigned char *s, size_t n, char *out)
{
	size_t w = 0, i = 0;
	while (i < n) {
		int r = utf8_next(s + i, n - i);
		if (r > 0) {
			memcpy(out + w, s + i, (size_t)r);
			w += (size_t)r;
			i += (size_t)r;
			continue;
		}
		memcpy(out + w, tok_fffd, 3);
		w += 3;
		i += r < 0 ? (size_t)-r : n - i;
	}
	return w;
}

/* ---- loading: pipeline checks ------------------------------------------ */

struct tok_load {
	const char *path;
	struct cm_err *err;
	json_t *vocab;             /* model.vocab */
	json_t *merges;            /* model.merges */
	json_t *added;             /* added_tokens (NULL when absent) */
	const char *pattern;       /* split pattern, NULL for none */
	bool literal;              /* pattern is a plain string */
	int16_t u2b[TOK_BL_CPS];   /* GPT-2 code point -> byte, -1 for none */
	struct tok_bytes blob;
	struct tok_bytes scratch;
};

static const char *json_type_str(const json_t *obj, const char *key)
{
	return json_string_value(json_object_get(obj, key));
}

static bool json_is_false_or_absent(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);
	return !v || json_is_null(v) || json_is_false(v);
}

static int unsupported(struct tok_load *ld, const char *what, const char *type)
{
	return cm_err_set(ld->err, CM_EUNSUPPORTED, "%s: %s '%s' is not supported", ld->path, what,
			  type ? type : "(no type)");
}

static int check_normalizer(struct md_tok *tok, struct tok_load *ld, const json_t *n)
{
	if (!n || json_is_null(n))
		return CM_OK;
	const char *type = json_type_str(n, "type");
	if (type && strcmp(type, "NFC") == 0) {
		tok->nfc = true;
		return CM_OK;
	}
	if (!type || strcmp(type, "Sequence") != 0)
		return unsupported(ld, "normalizer", type);
	const json_t *list = json_object_get(n, "normalizers");
	if (!json_is_array(list))
		return cm_err_set(ld->err, CM_EFORMAT, "%s: normalizer Sequence lacks 'normalizers'",
				  ld->path);
	size_t i;
	const json_t *v;
	json_array_foreach(list, i, v) {
		int rc = check_normalizer(tok, ld, v);
		if (rc < 0)
			return rc;
	}
	return CM_OK;
}

/* A ByteLevel step; last says whether it ends the pre-tokenizer (it must). */
static int check_byte_level(struct tok_load *ld, const json_t *p, bool last, bool after_split)
{
	const json_t *aps = json_object_get(p, "add_prefix_space");
	const json_t *ure = json_object_get(p, "use_regex");
	bool use_regex = !ure || json_is_null(ure) || json_is_true(ure);
	if (!last || !json_is_false(aps))
		return cm_err_set(ld->err, CM_EUNSUPPORTED,
				  "%s: ByteLevel pre-tokenizer must come last with "
				  "add_prefix_space false", ld->path);
	if (use_regex && after_split)
		return cm_err_set(ld->err, CM_EUNSUPPORTED,
				  "%s: ByteLevel use_regex after a Split is not supported", ld->path);
	if (use_regex) {
		ld->pattern = tok_gpt2_pattern;
		ld->literal = false;
	}
	return CM_OK;
}

static int check_split(struct tok_load *ld, const json_t *p, bool after_split)
{
	const json_t *pat = json_object_get(p, "pattern");
	const char *behavior = json_type_str(p, "behavior");
	const char *re = json_type_str(pat, "Regex"), *str = json_type_str(pat, "String");
	if (after_split)
		return cm_err_set(ld->err, CM_EUNSUPPORTED, "%s: only one Split pre-tokenizer is "
				  "supported", ld->path);
	if (!re && !str)
		return cm_err_set(ld->err, CM_EFORMAT, "%s: Split pre-tokenizer lacks "
				  "pattern.Regex or pattern.String", ld->path);
	if (!behavior || strcmp(behavior, "Isolated") != 0 || !json_is_false_or_absent(p, "invert"))
		return cm_err_set(ld->err, CM_EUNSUPPORTED, "%s: Split behaviour '%s' (invert %s) is "
				  "not supported, only Isolated", ld->path,
				  behavior ? behavior : "?",
				  json_is_false_or_absent(p, "invert") ? "false" : "true");
	ld->pattern = re ? re : str;
	ld->literal = !re;
	return CM_OK;
}

static int check_pre_tokenizer(struct tok_load *ld, const json_t *p)
{
	const char *type = json_type_str(p, "type");
	if (type && strcmp(type, "ByteLevel") == 0)
		return check_byte_level(ld, p, true, false);
	if (!type || strcmp(type, "Sequence") != 0)
		return unsupported(ld, "pre-tokenizer", type);
	const json_t *list = json_object_get(p, "pretokenizers");
	size_t n = json_array_size(list), i;
	const json_t *v;
	bool split = false;
	if (n == 0)
		return cm_err_set(ld->err, CM_EUNSUPPORTED, "%s: pre-tokenizer Sequence must end with "
				  "ByteLevel", ld->path);
	json_array_foreach(list, i, v) {
		const char *t = json_type_str(v, "type");
		int rc;
		if (t && strcmp(t, "Split") == 0)
			rc = check_split(ld, v, split);
		else if (t && strcmp(t, "ByteLevel") == 0)
			rc = check_byte_level(ld, v, i + 1 == n, split);
		else
			rc = unsupported(ld, "pre-tokenizer", t);
		if (rc < 0)
			return rc;
		split = split || (t && strcmp(t, "Split") == 0);
	}
	return CM_OK;
}

static int check_model(struct md_tok *tok, struct tok_load *ld, const json_t *m)
{
	const char *type = json_type_str(m, "type");
	if (!json_is_object(m))
		return cm_err_set(ld->err, CM_EFORMAT, "%s: no 'model' object", ld->path);
	if (type && strcmp(type, "BPE") != 0)
		return unsupported(ld, "model", type);
	const json_t *drop = json_object_get(m, "dropout");
	const char *cont = json_type_str(m, "continuing_subword_prefix");
	const char *eow = json_type_str(m, "end_of_word_suffix");
	if ((drop && !json_is_null(drop) && json_number_value(drop) != 0.0) || (cont && *cont) ||
	    (eow && *eow))
		return cm_err_set(ld->err, CM_EUNSUPPORTED, "%s: BPE dropout, subword prefix or "
				  "suffix is not supported", ld->path);
	ld->vocab = json_object_get(m, "vocab");
	ld->merges = json_object_get(m, "merges");
	if (!json_is_object(ld->vocab) || !json_is_array(ld->merges))
		return cm_err_set(ld->err, CM_EFORMAT, "%s: model needs a 'vocab' object and a "
				  "'merges' array", ld->path);
	tok->ignore_merges = json_is_true(json_object_get(m, "ignore_merges"));
	return CM_OK;
}

static int check_pipeline(struct md_tok *tok, struct tok_load *ld, const json_t *root)
{
	if (!json_is_object(root))
		return cm_err_set(ld->err, CM_EFORMAT, "%s: not a JSON object", ld->path);
	int rc = check_model(tok, ld, json_object_get(root, "model"));
	if (rc < 0)
		return rc;
	rc = check_normalizer(tok, ld, json_object_get(root, "normalizer"));
	if (rc < 0)
		return rc;
	rc = check_pre_tokenizer(ld, json_object_get(root, "pre_tokenizer"));
	if (rc < 0)
		return rc;
	const char *dec = json_type_str(json_object_get(root, "decoder"), "type");
	if (!dec || strcmp(dec, "ByteLevel") != 0)
		return unsupported(ld, "decoder", dec);
	ld->added = json_object_get(root, "added_tokens");
	if (ld->added && !json_is_null(ld->added) && !json_is_array(ld->added))
		return cm_err_set(ld->err, CM_EFORMAT, "%s: 'added_tokens' is not an array",
				  ld->path);
	return CM_OK;
}

/* ---- loading: vocabulary ------------------------------------------------ */

/* GPT-2's bytes_to_unicode, inverted: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes for U+0100 onwards in byte order. */
static void byte_level_map(int16_t u2b[TOK_BL_CPS])
{
	int next = 256;
	for (int c = 0; c < TOK_BL_CPS; c++)
		u2b[c] = -1;
	for (int b = 0; b < 256; b++) {
		bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
		u2b[printable ? b : next++] = (int16_t)b;
	}
}

/* Appends the bytes a GPT-2 string stands for to ld->blob; a string with a code
 * point outside the map stands for its own UTF-8 (HF's ByteLevel decoder does the
 * same). Returns true when the string was byte-level. */
static bool byte_level_decode(struct tok_load *ld, const char *s, size_t n, bool *ok)
{
	size_t start = ld->blob.n, i = 0;
	while (i < n) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
						      (utf8proc_ssize_t)(n - i), &cp);
		if (k <= 0 || cp >= TOK_BL_CPS || ld->u2b[cp] < 0)
			break;
		unsigned char b = (unsigned char)ld->u2b[cp];
		if (!bytes_put(&ld->blob, &b, 1)) {
			*ok = false;
			return false;
		}
		i += (size_t)k;
	}
	if (i == n)
		return true;
	ld->blob.n = start;
	*ok = bytes_put(&ld->blob, s, n);
	return false;
}

static int load_id(struct tok_load *ld, const json_t *v, const char *what, const char *name,
		   int32_t *id)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    json_integer_value(v) >= TOK_MAX_ID)
		return cm_err_set(ld->err, CM_EFORMAT, "%s: %s '%.64s' has no valid id (an integer "
				  "in [0, %lld))", ld->path, what, name, (long long)TOK_MAX_ID);
	*id = (int32_t)json_integer_value(v);
	return CM_OK;
}

/* Sizes tok->span from the highest id in the vocabulary and the added tokens. */
static int alloc_spans(struct md_tok *tok, struct tok_load *ld)
{
	int32_t max = -1, id = 0;
	const char *key;
	const json_t *v;
	size_t i;
	json_object_foreach(ld->vocab, key, v) {
		if (load_id(ld, v, "vocab entry", key, &id) < 0)
			return CM_EFORMAT;
		max = CM_MAX(max, id);
	}
	json_array_foreach(ld->added, i, v) {
		const char *c = json_type_str(v, "content");
		if (load_id(ld, json_object_get(v, "id"), "added token", c ? c : "?", &id) < 0)
			return CM_EFORMAT;
		max = CM_MAX(max, id);
	}
	if (max < 0)
		return cm_err_set(ld->err, CM_EFORMAT, "%s: empty vocabulary", ld->path);
	tok->n_ids = max + 1;
	tok->span = malloc((size_t)tok->n_ids * sizeof(*tok->span));
	if (!tok->span)
		return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
	for (int32_t k = 0; k < tok->n_ids; k++)
		tok->span[k] = (struct tok_span){TOK_ABSENT, 0};
	return CM_OK;
}

static int load_vocab(struct md_tok *tok, struct tok_load *ld)
{
	const char *key;
	const json_t *v;
	for (int b = 0; b < 256; b++)
		tok->byte_id[b] = -1;
	json_object_foreach(ld->vocab, key, v) {
		int32_t id = (int32_t)json_integer_value(v);
		size_t off = ld->blob.n;
		bool ok = true, bl;
		if (tok->span[id].off != TOK_ABSENT)
			return cm_err_set(ld->err, CM_EFORMAT, "%s: id %d appears twice in the "
					  "vocabulary", ld->path, id);
		bl = byte_level_decode(ld, key, strlen(key), &ok);
		if (!ok || ld->blob.n > UINT32_MAX - 1)
			return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
		tok->span[id] = (struct tok_span){(uint32_t)off, (uint32_t)(ld->blob.n - off)};
		if (bl && ld->blob.n - off == 1) {
			unsigned char b = (unsigned char)ld->blob.p[off];
			if (tok->byte_id[b] < 0 || id < tok->byte_id[b])
				tok->byte_id[b] = id;
		}
	}
	for (int b = 0; b < 256; b++)
		if (tok->byte_id[b] < 0)
			return cm_err_set(ld->err, CM_EUNSUPPORTED, "%s: not a byte-level vocabulary "
					  "(no token for byte 0x%02x)", ld->path, b);
	return CM_OK;
}

static int cmp_added(const void *a, const void *b)
{
	const struct tok_added *x = a, *y = b;
	if (x->len != y->len)
		return x->len > y->len ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int load_added(struct md_tok *tok, struct tok_load *ld)
{
	size_t n = json_array_size(ld->added), i;
	const json_t *v;
	tok->added = calloc(n ? n : 1, sizeof(*tok->added));
	if (!tok->added)
		return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
	json_array_foreach(ld->added, i, v) {
		const json_t *c = json_object_get(v, "content");
		size_t len = json_string_length(c);
		int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
		if (!json_is_string(c) || len == 0 || memchr(json_string_value(c), 0, len))
			return cm_err_set(ld->err, CM_EFORMAT, "%s: added token %d has no content",
					  ld->path, id);
		struct tok_added *a = &tok->added[tok->n_added++];
		a->content = strdup(json_string_value(c));
		a->len = len;
		a->id = id;
		size_t off = ld->blob.n;
		if (!a->content || !bytes_put(&ld->blob, a->content, len) ||
		    ld->blob.n > UINT32_MAX - 1)
			return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
		tok->span[id] = (struct tok_span){(uint32_t)off, (uint32_t)len};
		tok->added_first[(unsigned char)a->content[0]] = true;
	}
	qsort(tok->added, tok->n_added, sizeof(*tok->added), cmp_added);
	return CM_OK;
}

/* ---- loading: merges ---------------------------------------------------- */

static size_t merge_slot(const struct md_tok *tok, uint64_t key)
{
	return (size_t)((key * 0x9e3779b97f4a7c15ull) >> tok->merge_shift);
}

static inline bool merge_find(const struct md_tok *tok, int32_t a, int32_t b, int32_t *rank,
			      int32_t *id)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	for (size_t i = merge_slot(tok, key);; i = (i + 1) & tok->merge_mask) {
		const struct tok_merge *m = &tok->merge[i];
		if (m->rank < 0)
			return false;
		if (m->key == key) {
			*rank = m->rank;
			*id = m->id;
			return true;
		}
	}
}

/* Adds or replaces (a later duplicate wins, as in HF's HashMap) a merge. */
static void merge_insert(struct md_tok *tok, int32_t a, int32_t b, int32_t rank, int32_t id)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	size_t i = merge_slot(tok, key);
	while (tok->merge[i].rank >= 0 && tok->merge[i].key != key)
		i = (i + 1) & tok->merge_mask;
	tok->merge[i] = (struct tok_merge){key, rank, id};
}

/* The id of a GPT-2 string of n bytes in the vocabulary, or -1. */
static int32_t vocab_get(struct tok_load *ld, const char *s, size_t n)
{
	const json_t *v = json_object_getn(ld->vocab, s, n);
	return v ? (int32_t)json_integer_value(v) : -1;
}

/* Splits merge number i into its two GPT-2 strings (pointers into the JSON). */
static int merge_parts(struct tok_load *ld, const json_t *m, size_t i, const char **a,
		       size_t *na, const char **b, size_t *nb)
{
	if (json_is_string(m)) {
		const char *s = json_string_value(m), *sp = strchr(s, ' ');
		if (!sp || strchr(sp + 1, ' '))
			goto bad;
		*a = s;
		*na = (size_t)(sp - s);
		*b = sp + 1;
		*nb = strlen(sp + 1);
		return CM_OK;
	}
	if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
	    json_is_string(json_array_get(m, 1))) {
		*a = json_string_value(json_array_get(m, 0));
		*na = json_string_length(json_array_get(m, 0));
		*b = json_string_value(json_array_get(m, 1));
		*nb = json_string_length(json_array_get(m, 1));
		return CM_OK;
	}
bad:
	return cm_err_set(ld->err, CM_EFORMAT, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]",
			  ld->path, i);
}

static int load_merges(struct md_tok *tok, struct tok_load *ld)
{
	size_t n = json_array_size(ld->merges), slots = 16, i;
	unsigned bits = 4;
	const json_t *m;
	if (n > INT32_MAX / 4)
		return cm_err_set(ld->err, CM_ERANGE, "%s: %zu merges is too many", ld->path, n);
	while (slots < 2 * n) {
		slots *= 2;
		bits++;
	}
	tok->merge = malloc(slots * sizeof(*tok->merge));
	if (!tok->merge)
		return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
	tok->merge_mask = slots - 1;
	tok->merge_shift = 64 - bits;
	for (size_t k = 0; k < slots; k++)
		tok->merge[k].rank = -1;
	json_array_foreach(ld->merges, i, m) {
		const char *a = NULL, *b = NULL;
		size_t na = 0, nb = 0;
		if (merge_parts(ld, m, i, &a, &na, &b, &nb) < 0)
			return CM_EFORMAT;
		ld->scratch.n = 0;
		if (!bytes_put(&ld->scratch, a, na) || !bytes_put(&ld->scratch, b, nb))
			return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
		int32_t ia = vocab_get(ld, a, na), ib = vocab_get(ld, b, nb);
		int32_t iab = vocab_get(ld, ld->scratch.p, na + nb);
		if (ia < 0 || ib < 0 || iab < 0)
			return cm_err_set(ld->err, CM_EFORMAT, "%s: merge %zu ('%.*s' + '%.*s') uses a "
					  "token that is not in the vocabulary", ld->path, i,
					  (int)CM_MIN(na, 64), a, (int)CM_MIN(nb, 64), b);
		merge_insert(tok, ia, ib, (int32_t)i, iab);
	}
	return CM_OK;
}

/* ---- loading: lookup of whole pieces (ignore_merges) -------------------- */

static int32_t vocab_find(const struct md_tok *tok, const unsigned char *p, size_t n)
{
	for (size_t i = hash_bytes(p, n) & tok->vocab_mask;; i = (i + 1) & tok->vocab_mask) {
		int32_t id = tok->vocab[i];
		if (id < 0)
			return -1;
		if (tok->span[id].len == n && memcmp(tok->blob + tok->span[id].off, p, n) == 0)
			return id;
	}
}

static int build_vocab_index(struct md_tok *tok, struct tok_load *ld)
{
	size_t slots = 16;
	while (slots < 2 * (size_t)tok->n_ids)
		slots *= 2;
	tok->vocab = malloc(slots * sizeof(int32_t));
	if (!tok->vocab)
		return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
	tok->vocab_mask = slots - 1;
	memset(tok->vocab, 0xff, slots * sizeof(int32_t));
	for (int32_t id = 0; id < tok->n_ids; id++) {
		const unsigned char *p = (const unsigned char *)tok->blob + tok->span[id].off;
		size_t n = tok->span[id].len;
		if (tok->span[id].off == TOK_ABSENT || vocab_find(tok, p, n) >= 0)
			continue;
		size_t i = hash_bytes(p, n) & tok->vocab_mask;
		while (tok->vocab[i] >= 0)
			i = (i + 1) & tok->vocab_mask;
		tok->vocab[i] = id;
	}
	return CM_OK;
}

/* Oniguruma's \s, which HF tokenizers compiles split patterns with, is the Unicode
 * White_Space property; PCRE2's UCP \s also takes U+180E (MONGOLIAN VOWEL
 * SEPARATOR, Cf since Unicode 6.3). So \s becomes this set, and \S outside a
 * class its complement (\S inside a class is left to PCRE2). */
#define TOK_WS "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}" \
	       "\\x{202f}\\x{205f}\\x{3000}"

static bool put_str(struct tok_bytes *b, const char *s)
{
	return bytes_put(b, s, strlen(s));
}

/* Rewrites an Oniguruma split pattern for PCRE2 into ld->scratch (NUL-terminated). */
static bool onig_to_pcre2(struct tok_load *ld, const char *p)
{
	struct tok_bytes *b = &ld->scratch;
	bool in_class = false, ok = true;
	b->n = 0;
	for (; *p && ok; p++) {
		if (p[0] == '\\' && p[1] == 's') {
			ok = put_str(b, in_class ? TOK_WS : "[" TOK_WS "]");
			p++;
		} else if (p[0] == '\\' && p[1] == 'S' && !in_class) {
			ok = put_str(b, "[^" TOK_WS "]");
			p++;
		} else if (p[0] == '\\' && p[1]) {
			ok = bytes_put(b, p, 2);
			p++;
		} else if (!in_class && p[0] == '[') {
			/* a ']' right after '[' or '[^' is a literal */
			size_t k = 1 + (p[1] == '^');
			k += p[k] == ']';
			ok = bytes_put(b, p, k);
			p += k - 1;
			in_class = true;
		} else if (in_class && p[0] == '[' && p[1] == ':' && strstr(p + 2, ":]")) {
			size_t k = (size_t)(strstr(p + 2, ":]") - p) + 2;  /* [:alpha:] */
			ok = bytes_put(b, p, k);
			p += k - 1;
		} else {
			in_class = in_class && p[0] != ']';
			ok = bytes_put(b, p, 1);
		}
	}
	return ok && bytes_put(b, "", 1);
}

static int compile_pattern(struct md_tok *tok, struct tok_load *ld)
{
	int code;
	PCRE2_SIZE at;
	uint32_t opts = PCRE2_UTF | (ld->literal ? PCRE2_LITERAL : PCRE2_UCP);
	const char *pat = ld->pattern;
	if (!pat)
		return CM_OK;
	if (!ld->literal) {
		if (!onig_to_pcre2(ld, pat))
			return cm_err_set(ld->err, CM_ENOMEM, "%s: out of memory", ld->path);
		pat = ld->scratch.p;
	}
	tok->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &code, &at, NULL);
	if (!tok->re) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(code, msg, sizeof(msg));
		return cm_err_set(ld->err, CM_EFORMAT, "%s: split pattern does not compile (%s): "
				  "%.200s", ld->path, (const char *)msg, ld->pattern);
	}
	pcre2_jit_compile(tok->re, PCRE2_JIT_COMPLETE);  /* without JIT: the interpreter */
	return CM_OK;
}

static int tok_build(struct md_tok *tok, struct tok_load *ld, const json_t *root)
{
	int rc = check_pipeline(tok, ld, root);
	if (rc == CM_OK)
		rc = alloc_spans(tok, ld);
	if (rc == CM_OK)
		rc = load_vocab(tok, ld);
	if (rc == CM_OK)
		rc = load_added(tok, ld);
	if (rc == CM_OK)
		rc = load_merges(tok, ld);
	if (rc < 0)
		return rc;
	tok->blob = ld->blob.p;
	ld->blob.p = NULL;
	for (int32_t id = 0; id < tok->n_ids; id++)
		if (tok->span[id].off != TOK_ABSENT)
			tok->max_len = CM_MAX(tok->max_len, tok->span[id].len);
	if (tok->ignore_merges && (rc = build_vocab_index(tok, ld)) < 0)
		return rc;
	return compile_pattern(tok, ld);
}

struct md_tok *md_tok_load_file(const char *path, struct cm_err *err)
{
	char *text;
	size_t len;
	json_error_t jerr;
	struct tok_load ld = {.path = path, .err = err};
	if (cm_file_read(path, &text, &len, err) < 0)
		return NULL;
	json_t *root = json_loadb(text, len, 0, &jerr);
	free(text);
	if (!root) {
		cm_err_set(err, CM_EFORMAT, "%s: bad JSON at line %d column %d: %s", path, jerr.line,
			   jerr.column, jerr.text);
		return NULL;
	}
	struct md_tok *tok = calloc(1, sizeof(*tok));
	if (!tok) {
		cm_err_set(err, CM_ENOMEM, "%s: out of memory", path);
		goto out;
	}
	byte_level_map(ld.u2b);
	if (tok_build(tok, &ld, root) < 0) {
		md_tok_free(tok);
		tok = NULL;
	}
out:
	free(ld.blob.p);
	free(ld.scratch.p);
	json_decref(root);
	return tok;
}

struct md_tok *md_tok_load(const char *dir, struct cm_err *err)
{
	size_t n = strlen(dir) + sizeof("/tokenizer.json");
	char *path = malloc(n);
	if (!path) {
		cm_err_set(err, CM_ENOMEM, "out of memory");
		return NULL;
	}
	snprintf(path, n, "%s/tokenizer.json", dir);
	struct md_tok *tok = md_tok_load_file(path, err);
	free(path);
	return tok;
}

void md_tok_free(struct md_tok *tok)
{
	if (!tok)
		return;
	for (size_t i = 0; i < tok->n_added; i++)
		free(tok->added[i].content);
	free(tok->added);
	free(tok->span);
	free(tok->blob);
	free(tok->merge);
	free(tok->vocab);
	pcre2_code_free(tok->re);
	free(tok);
}

/* ---- encoding: per-call state ------------------------------------------ */

/* Pieces already merged in this call, keyed by their bytes. */
struct tok_cache_slot {
	uint64_t hash;      /* 0: empty */
	uint32_t key_off;   /* into keys */
	uint32_t key_len;
	uint32_t ids_off;   /* into ids */
	uint32_t n_ids;
};

struct tok_cache {
	struct tok_cache_slot *slot;  /* [mask + 1] or NULL */
	size_t mask, used;
	struct tok_bytes keys;
	struct tok_ids ids;
};

struct tok_enc {
	const struct md_tok *tok;
	unsigned flags;              /* enum md__tok_flags */
	enum md__tok_bpe_mode mode;
	struct tok_ids out;
	pcre2_match_data *md;
	struct tok_cache cache;
	int32_t *sym;                /* [cap] symbols of the piece being merged */
	int32_t *aux1, *aux2;        /* [cap] pair ranks and ids, or prev and next links */
	uint64_t *heap;              /* [3 * cap] (rank << 32 | position) */
	size_t cap;
};

static void enc_fini(struct tok_enc *e)
{
	free(e->out.v);
	pcre2_match_data_free(e->md);
	free(e->cache.slot);
	free(e->cache.keys.p);
	free(e->cache.ids.v);
	free(e->sym);
	free(e->aux1);
	free(e->aux2);
	free(e->heap);
}

static bool enc_scratch(struct tok_enc *e, size_t n)
{
	if (n <= e->cap)
		return true;
	size_t c = CM_MAX(n, 2 * e->cap);
	int32_t *s = realloc(e->sym, c * sizeof(int32_t));
	if (s)
		e->sym = s;
	int32_t *a = realloc(e->aux1, c * sizeof(int32_t));
	if (a)
		e->aux1 = a;
	int32_t *b = realloc(e->aux2, c * sizeof(int32_t));
	if (b)
		e->aux2 = b;
	uint64_t *h = realloc(e->heap, 3 * c * sizeof(uint64_t));
	if (h)
		e->heap = h;
	if (!s || !a || !b || !h)
		return false;
	e->cap = c;
	return true;
}

static bool cache_get(struct tok_enc *e, const unsigned char *p, size_t n, uint64_t h)
{
	const struct tok_cache *c = &e->cache;
	if (!c->slot)
		return false;
	for (size_t i = h & c->mask; c->slot[i].hash; i = (i + 1) & c->mask) {
		const struct tok_cache_slot *s = &c->slot[i];
		if (s->hash == h && s->key_len == n && memcmp(c->keys.p + s->key_off, p, n) == 0)
			return ids_put(&e->out, c->ids.v + s->ids_off, s->n_ids);
	}
	return false;
}

static void cache_place(struct tok_cache *c, const struct tok_cache_slot *s)
{
	size_t i = s->hash & c->mask;
	while (c->slot[i].hash)
		i = (i + 1) & c->mask;
	c->slot[i] = *s;
}

/* Makes room for one more entry; false when the cache is full or memory is short. */
static bool cache_room(struct tok_cache *c)
{
	size_t slots = c->slot ? c->mask + 1 : 0;
	if (2 * (c->used + 1) <= slots)
		return true;
	if (slots >= TOK_CACHE_MAX)
		return false;
	size_t ns = slots ? 2 * slots : TOK_CACHE_MIN;
	struct tok_cache_slot *old = c->slot;
	c->slot = calloc(ns, sizeof(*c->slot));
	if (!c->slot) {
		c->slot = old;
		return false;
	}
	c->mask = ns - 1;
	for (size_t i = 0; i < slots; i++)
		if (old[i].hash)
			cache_place(c, &old[i]);
	free(old);
	return true;
}

/* Remembers a merged piece; a cache that cannot grow simply stops remembering. */
static void cache_put(struct tok_enc *e, const unsigned char *p, size_t n, uint64_t h,
		      const int32_t *ids, size_t n_ids)
{
	struct tok_cache *c = &e->cache;
	if (!cache_room(c) || c->keys.n + n > UINT32_MAX || c->ids.n + n_ids > UINT32_MAX)
		return;
	struct tok_cache_slot s = {h, (uint32_t)c->keys.n, (uint32_t)n, (uint32_t)c->ids.n,
				   (uint32_t)n_ids};
	if (!bytes_put(&c->keys, p, n))
		return;
	if (!ids_put(&c->ids, ids, n_ids)) {
		c->keys.n -= n;
		return;
	}
	cache_place(c, &s);
	c->used++;
}

/* ---- encoding: BPE ------------------------------------------------------ */

static void pair_rank(const struct md_tok *tok, const int32_t *sym, size_t i, int32_t *rank,
		      int32_t *id)
{
	if (!merge_find(tok, sym[i], sym[i + 1], rank, id))
		*rank = TOK_NO_RANK;
}

/* Merges sym[0..n) in place with a quadratic scan; returns the symbols left. */
static size_t bpe_array(const struct md_tok *tok, int32_t *sym, int32_t *rank, int32_t *id,
			size_t n)
{
	for (size_t i = 0; i + 1 < n; i++)
		pair_rank(tok, sym, i, &rank[i], &id[i]);
	while (n > 1) {
		size_t best = 0;
		for (size_t i = 1; i + 1 < n; i++)
			if (rank[i] < rank[best])
				best = i;
		if (rank[best] == TOK_NO_RANK)
			break;
		sym[best] = id[best];
		memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof(int32_t));
		memmove(rank + best, rank + best + 1, (n - best - 2) * sizeof(int32_t));
		memmove(id + best, id + best + 1, (n - best - 2) * sizeof(int32_t));
		n--;
		if (best > 0)
			pair_rank(tok, sym, best - 1, &rank[best - 1], &id[best - 1]);
		if (best + 1 < n)
			pair_rank(tok, sym, best, &rank[best], &id[best]);
	}
	return n;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
	size_t i = (*n)++;
	while (i > 0 && h[(i - 1) / 2] > v) {
		h[i] = h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
	uint64_t top = h[0], v = h[--*n];
	size_t i = 0, m = *n;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= m)
			break;
		if (c + 1 < m && h[c + 1] < h[c])
			c++;
		if (v <= h[c])
			break;
		h[i] = h[c];
		i = c;
	}
	if (m)
		h[i] = v;
	return top;
}

/* Pushes the pair that starts at symbol i (if it merges). */
static void heap_pair(const struct md_tok *tok, const int32_t *sym, const int32_t *next,
		      int32_t i, uint64_t *h, size_t *nh)
{
	int32_t rank, id;
	if (i >= 0 && next[i] >= 0 && merge_find(tok, sym[i], sym[next[i]], &rank, &id))
		heap_push(h, nh, (uint64_t)rank << 32 | (uint32_t)i);
}

/* Merges sym[0..n) with a linked list and a heap of (rank, position): the
 * smallest key is the leftmost pair of the lowest rank. Stale entries (a side
 * already merged away or changed) are skipped when popped. Returns the symbols
 * left, compacted to the front of sym. */
static size_t bpe_heap(const struct md_tok *tok, struct tok_enc *e, size_t n)
{
	int32_t *sym = e->sym, *prev = e->aux1, *next = e->aux2;
	size_t nh = 0, k = 0;
	for (size_t i = 0; i < n; i++) {
		prev[i] = (int32_t)i - 1;
		next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
	}
	for (size_t i = 0; i + 1 < n; i++)
		heap_pair(tok, sym, next, (int32_t)i, e->heap, &nh);
	while (nh > 0) {
		uint64_t top = heap_pop(e->heap, &nh);
		int32_t p = (int32_t)(uint32_t)top, q = next[p], rank, id;
		if (sym[p] < 0 || q < 0 || !merge_find(tok, sym[p], sym[q], &rank, &id) ||
		    (uint64_t)rank != top >> 32)
			continue;
		sym[p] = id;
		sym[q] = -1;
		next[p] = next[q];
		if (next[q] >= 0)
			prev[next[q]] = p;
		heap_pair(tok, sym, next, prev[p], e->heap, &nh);
		heap_pair(tok, sym, next, p, e->heap, &nh);
	}
	for (int32_t i = 0; i >= 0; i = next[i])
		sym[k++] = sym[i];
	return k;
}

static int enc_nomem(struct cm_err *err)
{
	return cm_err_set(err, CM_ENOMEM, "tokenizer: out of memory while encoding");
}

/* Appends the tokens of one piece (raw bytes) to e->out. */
static int bpe_piece(struct tok_enc *e, const unsigned char *p, size_t n, struct cm_err *err)
{
	const struct md_tok *tok = e->tok;
	bool cached = !(e->flags & MD__TOK_NO_CACHE) && n <= TOK_CACHE_PIECE;
	uint64_t h = 0;
	int32_t id;
	if (n == 0)
		return CM_OK;
	if (n == 1)
		return ids_put(&e->out, &tok->byte_id[p[0]], 1) ? CM_OK : enc_nomem(err);
	if (tok->ignore_merges && (id = vocab_find(tok, p, n)) >= 0)
		return ids_put(&e->out, &id, 1) ? CM_OK : enc_nomem(err);
	if (cached && cache_get(e, p, n, h = hash_bytes(p, n)))
		return CM_OK;
	if (!enc_scratch(e, n))
		return enc_nomem(err);
	for (size_t i = 0; i < n; i++)
		e->sym[i] = tok->byte_id[p[i]];
	size_t m;
	if (e->mode == MD__TOK_BPE_ARRAY || (e->mode == MD__TOK_BPE_AUTO && n <= TOK_SHORT_PIECE))
		m = bpe_array(tok, e->sym, e->aux1, e->aux2, n);
	else
		m = bpe_heap(tok, e, n);
	if (!ids_put(&e->out, e->sym, m))
		return enc_nomem(err);
	if (cached)
		cache_put(e, p, n, h, e->sym, m);
	return CM_OK;
}

/* ---- encoding: text ----------------------------------------------------- */

/* Splits s[0..n) by the pattern; matches and the gaps between them are pieces. */
static int enc_split(struct tok_enc *e, const char *s, size_t n, struct cm_err *err)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t off = 0;
	int rc;
	if (!e->tok->re)
		return bpe_piece(e, u, n, err);
	while (off < n) {
		uint32_t opts = PCRE2_NO_UTF_CHECK | PCRE2_NOTEMPTY;
		int m = pcre2_match(e->tok->re, (PCRE2_SPTR)s, n, off, opts, e->md, NULL);
		if (m == PCRE2_ERROR_JIT_STACKLIMIT)  /* the interpreter keeps its frames on the heap */
			m = pcre2_match(e->tok->re, (PCRE2_SPTR)s, n, off, opts | PCRE2_NO_JIT,
					e->md, NULL);
		if (m == PCRE2_ERROR_NOMATCH)
			break;
		const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
		if (m < 0 || ov[0] < off || ov[1] <= ov[0] || ov[1] > n) {
			PCRE2_UCHAR msg[160] = "match outside the subject";
			if (m < 0)
				pcre2_get_error_message(m, msg, sizeof(msg));
			return cm_err_set(err, CM_EINTERNAL, "tokenizer: split pattern failed at "
					  "byte %zu: %s", off, (const char *)msg);
		}
		if ((rc = bpe_piece(e, u + off, ov[0] - off, err)) < 0 ||
		    (rc = bpe_piece(e, u + ov[0], ov[1] - ov[0], err)) < 0)
			return rc;
		off = ov[1];
	}
	return bpe_piece(e, u + off, n - off, err);
}

/* Code points below U+0300 are NFC whatever follows them, and their UTF-8 bytes
 * are all below 0xcc, so such text needs no normalisation. */
static bool needs_nfc(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0xcc)
			return true;
	return false;
}

/* One stretch of text between added tokens: NFC, split, BPE. */
static int enc_stretch(struct tok_enc *e, const char *s, size_t n, struct cm_err *err)
{
	utf8proc_uint8_t *nfc = NULL;
	if (n == 0)
		return CM_OK;
	if (e->tok->nfc && needs_nfc(s, n)) {
		utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
						  &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
		if (m < 0)
			return cm_err_set(err, m == UTF8PROC_ERROR_NOMEM ? CM_ENOMEM : CM_EINTERNAL,
					  "tokenizer: NFC failed: %s", utf8proc_errmsg(m));
		s = (const char *)nfc;
		n = (size_t)m;
	}
	int rc = enc_split(e, s, n, err);
	free(nfc);
	return rc;
}

/* The leftmost start at or after from of an added token (the longest there), or n. */
static size_t added_find(const struct md_tok *tok, const char *s, size_t n, size_t from,
			 const struct tok_added **hit)
{
	for (size_t i = from; i < n; i++) {
		if (!tok->added_first[(unsigned char)s[i]])
			continue;
		for (size_t k = 0; k < tok->n_added; k++) {
			const struct tok_added *a = &tok->added[k];
			if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) {
				*hit = a;
				return i;
			}
		}
	}
	*hit = NULL;
	return n;
}

static int enc_text(struct tok_enc *e, const char *text, size_t len, struct cm_err *err)
{
	size_t pos = 0;
	for (;;) {
		const struct tok_added *hit;
		size_t at = added_find(e->tok, text, len, pos, &hit);
		int rc = enc_stretch(e, text + pos, at - pos, err);
		if (rc < 0)
			return rc;
		if (!hit)
			return CM_OK;
		if (!ids_put(&e->out, &hit->id, 1))
			return enc_nomem(err);
		pos = at + hit->len;
	}
}

static int enc_begin(struct tok_enc *e, const struct md_tok *tok, unsigned flags,
		     enum md__tok_bpe_mode mode, struct cm_err *err)
{
	*e = (struct tok_enc){.tok = tok, .flags = flags, .mode = mode};
	if (tok->re && !(e->md = pcre2_match_data_create_from_pattern(tok->re, NULL)))
		return enc_nomem(err);
	if (!grow((void **)&e->out.v, &e->out.cap, 1, sizeof(int32_t)))
		return enc_nomem(err);
	return CM_OK;
}

int md__tok_encode(const struct md_tok *tok, const char *text, size_t len, unsigned flags,
		   int32_t **ids, size_t *n_ids, struct cm_err *err)
{
	struct tok_enc e;
	if (!tok || !ids || !n_ids || (!text && len))
		return cm_err_set(err, CM_EINVAL, "tokenizer: NULL argument to encode");
	if (len > TOK_MAX_TEXT)
		return cm_err_set(err, CM_ERANGE, "tokenizer: %zu bytes of text is more than the "
				  "%zu an encode call takes", len, TOK_MAX_TEXT);
	size_t ok = md_utf8_valid_prefix(text, len);
	if (ok < len)
		return cm_err_set(err, CM_EUTF8, "tokenizer: invalid UTF-8 at byte offset %zu "
				  "(byte 0x%02x)", ok, (unsigned char)text[ok]);
	int rc = enc_begin(&e, tok, flags, MD__TOK_BPE_AUTO, err);
	if (rc == CM_OK)
		rc = enc_text(&e, text, len, err);
	if (rc == CM_OK) {
		*ids = e.out.v;
		*n_ids = e.out.n;
		e.out.v = NULL;
	}
	enc_fini(&e);
	return rc;
}

int md_tok_encode(const struct md_tok *tok, const char *text, size_t len, int32_t **ids,
		  size_t *n_ids, struct cm_err *err)
{
	return md__tok_encode(tok, text, len, 0, ids, n_ids, err);
}

int md__tok_bpe(const struct md_tok *tok, const char *piece, size_t len,
		enum md__tok_bpe_mode mode, int32_t **ids, size_t *n_ids, struct cm_err *err)
{
	struct tok_enc e;
	if (!tok || !ids || !n_ids || (!piece && len) || len > TOK_MAX_TEXT)
		return cm_err_set(err, CM_EINVAL, "tokenizer: bad argument to md__tok_bpe");
	int rc = enc_begin(&e, tok, MD__TOK_NO_CACHE, mode, err);
	if (rc == CM_OK)
		rc = bpe_piece(&e, (const unsigned char *)piece, len, err);
	if (rc == CM_OK) {
		*ids = e.out.v;
		*n_ids = e.out.n;
		e.out.v = NULL;
	}
	enc_fini(&e);
	return rc;
}

/* ---- decoding ----------------------------------------------------------- */

static bool tok_span_of(const struct md_tok *tok, int32_t id, const char **p, size_t *n)
{
	if (!tok || id < 0 || id >= tok->n_ids || tok->span[id].off == TOK_ABSENT)
		return false;
	*p = tok->blob + tok->span[id].off;
	*n = tok->span[id].len;
	return true;
}

static int bad_id(const struct md_tok *tok, int32_t id, struct cm_err *err)
{
	return cm_err_set(err, CM_ERANGE, "tokenizer: token id %d is not in the vocabulary "
			  "(ids 0..%d)", id, tok ? tok->n_ids - 1 : -1);
}

int md_tok_decode(const struct md_tok *tok, const int32_t *ids, size_t n, char **text,
		  size_t *len, struct cm_err *err)
{
	size_t total = 0, k;
	const char *p;
	if (!tok || !text || (!ids && n))
		return cm_err_set(err, CM_EINVAL, "tokenizer: NULL argument to decode");
	for (size_t i = 0; i < n; i++) {
		if (!tok_span_of(tok, ids[i], &p, &k))
			return bad_id(tok, ids[i], err);
		total += k;
	}
	char *raw = malloc(total + 1), *out = malloc(3 * total + 1);
	if (!raw || !out) {
		free(raw);
		free(out);
		return cm_err_set(err, CM_ENOMEM, "tokenizer: out of memory decoding %zu bytes",
				  total);
	}
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		tok_span_of(tok, ids[i], &p, &k);
		memcpy(raw + w, p, k);
		w += k;
	}
	w = utf8_lossy((const unsigned char *)raw, total, out);
	free(raw);
	out[w] = '\0';
	char *shrunk = realloc(out, w + 1);
	*text = shrunk ? shrunk : out;
	if (len)
		*len = w;
	return CM_OK;
}

void md_tok_stream_init(struct md_tok_stream *s, const struct md_tok *tok)
{
	memset(s, 0, sizeof(*s));
	s->tok = tok;
}

static bool stream_emit(char *out, size_t cap, size_t *w, const void *p, size_t n)
{
	if (n > cap - *w)
		return false;
	memcpy(out + *w, p, n);
	*w += n;
	return true;
}

/* Feeds one byte through the pending sequence; false when out is full. */
static bool stream_byte(struct md_tok_stream *s, unsigned char b, char *out, size_t cap,
			size_t *w)
{
	for (;;) {
		s->pending[s->n_pending] = b;
		int r = utf8_next(s->pending, s->n_pending + 1);
		if (r > 0) {
			s->n_pending = 0;
			return stream_emit(out, cap, w, s->pending, (size_t)r);
		}
		if (r == 0) {
			s->n_pending++;
			return true;
		}
		if (!stream_emit(out, cap, w, tok_fffd, 3))
			return false;
		if (s->n_pending == 0)
			return true;  /* b itself was ill-formed */
		s->n_pending = 0;     /* the held-back prefix was; b starts afresh */
	}
}

int md_tok_stream_put(struct md_tok_stream *s, int32_t id, char *out, size_t cap)
{
	const char *p;
	size_t n, w = 0;
	if (!s || (!out && cap))
		return CM_EINVAL;
	if (!tok_span_of(s->tok, id, &p, &n))
		return CM_ERANGE;
	struct md_tok_stream next = *s;
	cap = CM_MIN(cap, (size_t)INT_MAX);
	for (size_t i = 0; i < n; i++)
		if (!stream_byte(&next, (unsigned char)p[i], out, cap, &w))
			return CM_EFULL;
	*s = next;
	return (int)w;
}

int md_tok_stream_flush(struct md_tok_stream *s, char *out, size_t cap)
{
	if (!s || (!out && cap))
		return CM_EINVAL;
	if (s->n_pending == 0)
		return 0;
	if (cap < 3)
		return CM_EFULL;
	memcpy(out, tok_fffd, 3);
	s->n_pending = 0;
	return 3;
}

/* ---- accessors ---------------------------------------------------------- */

int32_t md_tok_vocab_size(const struct md_tok *tok)
{
	return tok->n_ids;
}

int32_t md_tok_special_id(const struct md_tok *tok, const char *content)
{
	for (size_t i = 0; content && i < tok->n_added; i++)
		if (strcmp(tok->added[i].content, content) == 0)
			return tok->added[i].id;
	return -1;
}

const char *md_tok_bytes(const struct md_tok *tok, int32_t id, size_t *len)
{
	const char *p;
	size_t n;
	if (!tok_span_of(tok, id, &p, &n))
		return NULL;
	if (len)
		*len = n;
	return p;
}

size_t md_tok_max_token_len(const struct md_tok *tok)
{
	return tok->max_len;
}
