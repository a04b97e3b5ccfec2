/* Private entry points of the tokenizer (model/tokenizer.c) for tests and benchmarks.
 *
 * md_tok_encode() is md__tok_encode() with every fast path on; these let a test
 * compare the short and the heap BPE paths, and a benchmark measure the encoder
 * without its per-call piece cache. Same ownership and errors as md_tok_encode().
 */
#ifndef TANDEM_MD_TOKENIZER_IMPL_H
#define TANDEM_MD_TOKENIZER_IMPL_H

#include "model/md.h"

enum md__tok_flags {
	MD__TOK_NO_CACHE = 1 << 0,  /* do not memoise pieces within the call */
};

/* md_tok_encode() with flags (enum md__tok_flags). */
int md__tok_encode(const struct md_tok *tok, const char *text, size_t len, unsigned flags,
		   int32_t **ids, size_t *n_ids, struct cm_err *err);

enum md__tok_bpe_mode {
	MD__TOK_BPE_AUTO = 0,   /* the array path for short pieces, the heap path for long */
	MD__TOK_BPE_ARRAY = 1,  /* quadratic scan of an array of pair ranks */
	MD__TOK_BPE_HEAP = 2,   /* linked list plus a min-heap of (rank, position) */
};

/* Byte-level BPE of one pre-tokenized piece (raw bytes, no splitting, no NFC).
 * *ids is malloc'd (caller frees). */
int md__tok_bpe(const struct md_tok *tok, const char *piece, size_t len,
		enum md__tok_bpe_mode mode, int32_t **ids, size_t *n_ids, struct cm_err *err);

#endif
