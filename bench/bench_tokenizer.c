/* bench_tokenizer: encode throughput of the Qwen3 tokenizer on one thread.
 *
 *     bench_tokenizer [TOKENIZER_DIR] [MIB]
 *
 * There is no corpus in the tree, so the English text is built deterministically:
 * paragraphs of 3-7 sentences drawn (xorshift, fixed seed) from the templates
 * below, whose '@' slots take words from a 251-word list and '#' slots numbers in
 * varied shapes (years, prices, decimals, percentages, times). The piece cache
 * therefore sees a realistic mix of repeated and new pieces rather than one word.
 *
 * Prints MB/s (10^6 bytes of UTF-8 input per second, median of the runs) for: one
 * encode call over the whole text, the same without the per-call piece cache, and
 * 4 KiB calls (a fresh cache per call, like prompts); each with its ratio to the
 * issue's 5 MB/s target. Also the load time and two long-piece inputs, which must
 * stay linear.
 */
#include "model/md.h"
#include "model/tokenizer-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef BENCH_TOKENIZER_DIR
#define BENCH_TOKENIZER_DIR "third_party/qwen3-tokenizer"
#endif

#define TARGET_MBS 5.0
#define RUNS       5

static const char *const sentences[] = {
	"The @ committee met on Tuesday to review # proposals about the @ budget.",
	"After # years of careful work, she finally published her study of @ and @.",
	"\"Are you sure?\" he asked, glancing at the @ clock; it read #.",
	"Prices rose by # in the third quarter, while @ exports fell to #.",
	"Nobody expected the @ to collapse, yet by noon the bridge was closed.",
	"In 1969, engineers wrote software that fit in # kilobytes of memory.",
	"Please send the @ report (including appendix B) before Friday, #.",
	"The museum's new wing houses # paintings, several of them by @ artists.",
	"It's not that we didn't try -- we simply ran out of @ and patience.",
	"Her grandmother kept bees, grew tomatoes, and wrote letters every @.",
	"According to the survey, # of respondents preferred @ over @.",
	"The recipe calls for # cups of flour, two eggs, and a pinch of salt.",
	"Researchers at the @ institute measured a rise of # degrees since #.",
	"If the train leaves at # and travels # miles, when does it arrive?",
	"They've argued about it for weeks, but the @ question remains open.",
	"Despite the rain, thousands gathered in the square to hear the @ speech.",
	"The library closes at #; borrowed books are due within # days.",
	"Quantum computers may someday factor numbers with # digits or more.",
	"I'd rather walk along the river than sit in traffic on the @ highway.",
	"Version # of the compiler fixed a bug in the @ optimisation pass.",
	"Wolves returned to the valley in #, and the elk changed their habits.",
	"\"We'll see,\" said the captain, folding the map of the @ coast.",
	"A typical adult heart beats about # times per minute at rest.",
	"The invoice totals #, payable to Smith & Sons, Ltd. within # days.",
	"Children learn languages quickly, absorbing @ rules without lessons.",
	"On page #, the author compares @ cities with medieval @ towns.",
	"The experiment failed twice; the third attempt, however, worked.",
	"Whoever designed this @ interface clearly never had to use it!",
	"Solar panels on the roof now supply # of the building's electricity.",
	"Mount Everest is roughly # metres tall, though estimates differ.",
};

static const char *const words[] = {
	"ancient", "brilliant", "copper", "delicate", "eastern", "federal", "golden",
	"hidden", "icy", "jagged", "keen", "local", "modern", "northern", "obscure",
	"painted", "quiet", "rural", "silver", "tangled", "urban", "vivid", "western",
	"yellow", "zealous", "apple", "harbour", "engine", "forest", "garden", "island",
	"journal", "kettle", "ladder", "marble", "needle", "orchard", "pepper", "quarry",
	"ribbon", "saddle", "thunder", "umbrella", "valley", "window", "yard", "zipper",
	"economy", "history", "science", "language", "music", "medicine", "physics",
	"chemistry", "biology", "geology", "astronomy", "philosophy", "literature",
	"architecture", "agriculture", "transport", "railway", "airport", "market",
	"festival", "parliament", "university", "hospital", "factory", "warehouse",
	"cathedral", "lighthouse", "telescope", "microscope", "satellite", "volcano",
	"glacier", "desert", "canyon", "meadow", "prairie", "tundra", "savanna", "reef",
	"monsoon", "hurricane", "drought", "harvest", "vineyard", "brewery", "bakery",
	"carpenter", "plumber", "surgeon", "teacher", "lawyer", "farmer", "sailor",
	"pilot", "painter", "poet", "novelist", "journalist", "engineer", "chemist",
	"merchant", "banker", "soldier", "senator", "mayor", "governor", "minister",
	"Atlantic", "Pacific", "Arctic", "Mediterranean", "Baltic", "Caribbean",
	"European", "African", "Asian", "American", "Australian", "Canadian",
	"Victorian", "Renaissance", "Byzantine", "Ottoman", "Roman", "Greek", "Norse",
	"digital", "analog", "electric", "magnetic", "nuclear", "thermal", "optical",
	"acoustic", "mechanical", "hydraulic", "statistical", "financial", "political",
	"cultural", "industrial", "environmental", "educational", "experimental",
	"unexpected", "remarkable", "controversial", "fragile", "resilient", "massive",
	"tiny", "enormous", "ordinary", "peculiar", "familiar", "foreign", "domestic",
	"annual", "weekly", "nightly", "seasonal", "temporary", "permanent", "public",
	"private", "secret", "official", "informal", "strict", "generous", "careful",
	"reckless", "patient", "anxious", "curious", "stubborn", "gentle", "fierce",
	"bitter", "sweet", "salty", "sour", "smoky", "spicy", "fresh", "stale", "ripe",
	"broken", "polished", "rusty", "wooden", "plastic", "ceramic", "woollen",
	"cotton", "leather", "granite", "limestone", "concrete", "steel", "aluminium",
	"titanium", "carbon", "oxygen", "hydrogen", "nitrogen", "helium", "sodium",
	"calcium", "protein", "enzyme", "molecule", "crystal", "algorithm", "database",
	"network", "protocol", "compiler", "processor", "keyboard", "monitor", "printer",
	"battery", "antenna", "circuit", "sensor", "robot", "drone", "rocket", "comet",
	"asteroid", "nebula", "galaxy", "planet", "orbit", "eclipse", "horizon",
	"midnight", "morning", "evening", "winter", "summer", "autumn", "spring",
};

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int number_text(uint64_t *rng, char *out, size_t cap)
{
	uint64_t r = rng_next(rng);
	switch (r % 7) {
	case 0:
		return snprintf(out, cap, "%u", (unsigned)(1900 + r / 7 % 130));
	case 1:
		return snprintf(out, cap, "$%u.%02u", (unsigned)(r / 7 % 100000),
				(unsigned)(r / 11 % 100));
	case 2:
		return snprintf(out, cap, "%u.%u%%", (unsigned)(r / 7 % 100), (unsigned)(r / 13 % 10));
	case 3:
		return snprintf(out, cap, "%u:%02u", (unsigned)(r / 7 % 24), (unsigned)(r / 13 % 60));
	case 4:
		return snprintf(out, cap, "%u,%03u", (unsigned)(r / 7 % 1000),
				(unsigned)(r / 13 % 1000));
	case 5:
		return snprintf(out, cap, "%.3f", (double)(r / 7 % 1000000) / 1000.0);
	default:
		return snprintf(out, cap, "%u", (unsigned)(r / 7 % 500));
	}
}

/* Appends one sentence with its slots filled; returns the new length. */
static size_t add_sentence(uint64_t *rng, char *buf, size_t n, size_t cap)
{
	const char *t = sentences[rng_next(rng) % (sizeof(sentences) / sizeof(sentences[0]))];
	for (; *t && n + 32 < cap; t++) {
		if (*t == '@') {
			const char *w = words[rng_next(rng) % (sizeof(words) / sizeof(words[0]))];
			size_t k = strlen(w);
			if (n + k + 1 >= cap)
				break;
			memcpy(buf + n, w, k);
			n += k;
		} else if (*t == '#') {
			n += (size_t)number_text(rng, buf + n, cap - n);
		} else {
			buf[n++] = *t;
		}
	}
	return n;
}

static char *build_text(size_t want, size_t *len)
{
	char *buf = malloc(want + 256);
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	size_t n = 0;
	while (buf && n < want) {
		int k = 3 + (int)(rng_next(&rng) % 5);
		for (int i = 0; i < k && n < want; i++) {
			n = add_sentence(&rng, buf, n, want + 200);
			buf[n++] = i + 1 < k ? ' ' : '\n';
		}
		buf[n++] = '\n';
	}
	*len = n;
	return buf;
}

/* Encodes text in calls of chunk bytes (0: one call); returns seconds. */
static double encode_time(const struct md_tok *tok, const char *text, size_t len, size_t chunk,
			  unsigned flags, size_t *n_tok)
{
	struct cm_err err = {0};
	int64_t t0 = cm_time_us();
	size_t off = 0;
	*n_tok = 0;
	while (off < len) {
		size_t n = chunk ? CM_MIN(chunk, len - off) : len - off;
		/* cut at a character boundary */
		while (off + n < len && ((unsigned char)text[off + n] & 0xc0) == 0x80)
			n++;
		int32_t *ids;
		size_t k;
		if (md__tok_encode(tok, text + off, n, flags, &ids, &k, &err) < 0) {
			fprintf(stderr, "encode: %s\n", err.msg);
			exit(1);
		}
		free(ids);
		*n_tok += k;
		off += n;
	}
	return (double)(cm_time_us() - t0) / 1e6;
}

static void report(const char *what, const struct md_tok *tok, const char *text, size_t len,
		   size_t chunk, unsigned flags)
{
	double t[RUNS];
	size_t n_tok = 0;
	for (int r = 0; r < RUNS; r++)
		t[r] = encode_time(tok, text, len, chunk, flags, &n_tok);
	double mbs = (double)len / 1e6 / cm_median(t, RUNS);
	printf("%-34s %8.2f MB/s  (%.2fx the %.0f MB/s target; %zu tokens, %.2f bytes/token)\n",
	       what, mbs, mbs / TARGET_MBS, TARGET_MBS, n_tok, (double)len / (double)n_tok);
}

static void long_piece(const struct md_tok *tok, const char *what, char fill, size_t n)
{
	char *s = malloc(n);
	size_t k;
	memset(s, fill, n);
	double t = encode_time(tok, s, n, 0, 0, &k);
	printf("%-34s %8.3f s  (%zu tokens)\n", what, t, k);
	free(s);
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : BENCH_TOKENIZER_DIR;
	size_t mib = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 4;
	struct cm_err err = {0};
	int64_t t0 = cm_time_us();
	struct md_tok *tok = md_tok_load(dir, &err);
	if (!tok) {
		fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
		return 1;
	}
	printf("load %s: %.3f s (vocab %d)\n", dir, (double)(cm_time_us() - t0) / 1e6,
	       md_tok_vocab_size(tok));

	size_t len;
	char *text = build_text((mib ? mib : 1) << 20, &len);
	int32_t *ids;
	size_t n_ids, back_len;
	char *back;
	if (md_tok_encode(tok, text, len, &ids, &n_ids, &err) < 0 ||
	    md_tok_decode(tok, ids, n_ids, &back, &back_len, &err) < 0) {
		fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
		return 1;
	}
	if (back_len != len || memcmp(back, text, len) != 0) {
		fprintf(stderr, "bench_tokenizer: decode(encode(text)) != text\n");
		return 1;
	}
	free(back);
	free(ids);
	printf("text: %zu bytes of generated English, median of %d runs, one thread\n", len, RUNS);
	report("encode, one call", tok, text, len, 0, 0);
	report("encode, one call, no piece cache", tok, text, len, 0, MD__TOK_NO_CACHE);
	report("encode, 4 KiB calls", tok, text, len, 4096, 0);
	long_piece(tok, "1 MiB of spaces (one piece)", ' ', 1 << 20);
	long_piece(tok, "1 MiB word 'aaa...' (one piece)", 'a', 1 << 20);
	free(text);
	md_tok_free(tok);
	return 0;
}
