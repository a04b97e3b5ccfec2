/* model/safetensors.c: a tiny writer builds files in TANDEM_TEST_TMP, then valid files
 * must read back exactly and every kind of corruption must give the right code and a
 * one-line message naming the file and the tensor. */
#include "model/md.h"
#include "model/safetensors-impl.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- writer ------------------------------------------------------------ */

/* A safetensors image in memory: length, header padded with spaces to 8, data. */
struct image {
	unsigned char *buf;
	size_t len;
	size_t data_start;
};

static struct image image_make(const char *header, const void *data, size_t dlen)
{
	size_t n = strlen(header);
	size_t padded = (n + 7) & ~(size_t)7;
	struct image im = {.len = 8 + padded + dlen, .data_start = 8 + padded};
	im.buf = malloc(im.len + 1);
	cr_assert(im.buf);
	for (int i = 0; i < 8; i++)
		im.buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
	memcpy(im.buf + 8, header, n);
	memset(im.buf + 8 + n, ' ', padded - n);
	if (dlen)
		memcpy(im.buf + im.data_start, data, dlen);
	return im;
}

static char *tmp_dir(void)
{
	const char *tmp = getenv("TANDEM_TEST_TMP");
	cr_assert(tmp, "TANDEM_TEST_TMP not set");
	mkdir(tmp, 0755);
	return (char *)tmp;
}

/* Writes bytes to TANDEM_TEST_TMP/st_<pid>_<tag>.safetensors; path receives the name. */
static void write_bytes(const char *tag, const void *bytes, size_t len, char *path, size_t cap)
{
	snprintf(path, cap, "%s/st_%d_%s.safetensors", tmp_dir(), (int)getpid(), tag);
	struct cm_err err = {0};
	cr_assert_eq(cm_file_write(path, bytes, len, &err), CM_OK, "%s", err.msg);
}

static void make_dir(char *dir, size_t cap, const char *tag)
{
	snprintf(dir, cap, "%s/st_%d_%s", tmp_dir(), (int)getpid(), tag);
	cr_assert(mkdir(dir, 0755) == 0, "mkdir %s", dir);
}

static void write_in(const char *dir, const char *name, const void *bytes, size_t len)
{
	char path[1200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	struct cm_err err = {0};
	cr_assert_eq(cm_file_write(path, bytes, len, &err), CM_OK, "%s", err.msg);
}

/* ---- the reference file -------------------------------------------------- */

/* Five tensors, listed out of offset order; an empty one and a scalar included. */
static const char good_header[] =
	"{\"__metadata__\": {\"format\": \"pt\"},"
	" \"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [12, 28]},"
	" \"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [2, 3],"
	" \"data_offsets\": [0, 12]},"
	" \"lm_head.bias\": {\"dtype\": \"F16\", \"shape\": [1, 2, 2], \"data_offsets\": [28, 36]},"
	" \"empty\": {\"dtype\": \"F32\", \"shape\": [0, 5], \"data_offsets\": [36, 36]},"
	" \"scale\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [36, 40]}}";

#define GOOD_DATA_LEN 40

static void good_data(unsigned char *d)
{
	for (int i = 0; i < GOOD_DATA_LEN; i++)
		d[i] = (unsigned char)(i * 7 + 3);
}

static struct image good_image(void)
{
	unsigned char d[GOOD_DATA_LEN];
	good_data(d);
	return image_make(good_header, d, sizeof(d));
}

/* ---- checks ------------------------------------------------------------ */

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

/* err is one line with code, naming the file and, if tensor, the tensor in quotes. */
static void assert_err(const struct cm_err *err, int code, const char *file, const char *tensor,
		       const char *also)
{
	cr_assert_eq(err->code, code, "code %d (%s), want %d (%s): %s", err->code,
		     cm_err_str(err->code), code, cm_err_str(code), err->msg);
	cr_assert_null(strchr(err->msg, '\n'), "%s", err->msg);
	cr_assert(strstr(err->msg, base_name(file)), "no file '%s' in: %s", file, err->msg);
	if (tensor) {
		char q[300];
		snprintf(q, sizeof(q), "'%s'", tensor);
		cr_assert(strstr(err->msg, q), "no tensor %s in: %s", q, err->msg);
	}
	if (also)
		cr_assert(strstr(err->msg, also), "no '%s' in: %s", also, err->msg);
}

/* The image must fail the same way from a file and from memory. */
static void expect_fail_image(const char *tag, const struct image *im, int code, const char *tensor,
			      const char *also)
{
	char path[1024];
	struct cm_err err = {0};
	write_bytes(tag, im->buf, im->len, path, sizeof(path));
	struct md_weights *w = md_weights_open_file(path, &err);
	cr_assert_null(w, "%s: opened but should fail", tag);
	assert_err(&err, code, path, tensor, also);
	unlink(path);

	struct cm_err err2 = {0};
	cr_assert_null(md__weights_parse_mem(im->buf, im->len, "mem.safetensors", &err2));
	assert_err(&err2, code, "mem.safetensors", tensor, also);
}

static void expect_fail(const char *tag, const char *header, size_t dlen, int code,
			const char *tensor, const char *also)
{
	unsigned char *d = calloc(1, dlen + 1);
	struct image im = image_make(header, d, dlen);
	expect_fail_image(tag, &im, code, tensor, also);
	free(im.buf);
	free(d);
}

/* ---- valid files ------------------------------------------------------- */

Test(safetensors, valid_file_reads_back_exactly)
{
	struct image im = good_image();
	unsigned char d[GOOD_DATA_LEN];
	good_data(d);
	char path[1024];
	struct cm_err err = {0};
	write_bytes("good", im.buf, im.len, path, sizeof(path));
	struct md_weights *w = md_weights_open_file(path, &err);
	cr_assert(w, "%s", err.msg);
	cr_assert_eq(md_weights_count(w), 5);

	const struct md_tensor *t = md_weights_get(w, "model.embed_tokens.weight");
	cr_assert(t);
	cr_assert_str_eq(t->name, "model.embed_tokens.weight");
	cr_assert_eq(t->dtype, MD_DTYPE_BF16);
	cr_assert_eq(t->n_dims, 2);
	cr_assert_eq(t->shape[0], 2);
	cr_assert_eq(t->shape[1], 3);
	cr_assert_eq(t->nbytes, 12);
	cr_assert_eq(memcmp(t->data, d, 12), 0);
	cr_assert_str_eq(t->file, path);
	cr_assert_eq((uintptr_t)t->data % 2, 0);

	t = md_weights_get(w, "model.norm.weight");
	cr_assert(t);
	cr_assert_eq(t->dtype, MD_DTYPE_F32);
	cr_assert_eq(t->n_dims, 1);
	cr_assert_eq(t->shape[0], 4);
	cr_assert_eq(t->nbytes, 16);
	cr_assert_eq(memcmp(t->data, d + 12, 16), 0);

	t = md_weights_get(w, "lm_head.bias");
	cr_assert(t);
	cr_assert_eq(t->dtype, MD_DTYPE_F16);
	cr_assert_eq(t->n_dims, 3);
	cr_assert_eq(memcmp(t->data, d + 28, 8), 0);

	t = md_weights_get(w, "empty");
	cr_assert(t);
	cr_assert_eq(t->nbytes, 0);
	cr_assert_eq(t->shape[0], 0);
	cr_assert_eq(t->shape[1], 5);

	t = md_weights_get(w, "scale");
	cr_assert(t);
	cr_assert_eq(t->n_dims, 0);
	cr_assert_eq(t->nbytes, 4);
	cr_assert_eq(memcmp(t->data, d + 36, 4), 0);

	cr_assert_null(md_weights_get(w, "model.norm"));
	cr_assert_null(md_weights_get(w, "__metadata__"));
	cr_assert_null(md_weights_get(w, ""));

	/* md_weights_at: every tensor once, in data order */
	size_t seen = 0;
	for (size_t i = 0; i < md_weights_count(w); i++) {
		const struct md_tensor *a = md_weights_at(w, i);
		cr_assert(a);
		cr_assert_eq(md_weights_get(w, a->name), a);
		if (i)
			cr_assert_geq((const char *)a->data,
				      (const char *)md_weights_at(w, i - 1)->data);
		seen++;
	}
	cr_assert_eq(seen, 5);
	cr_assert_null(md_weights_at(w, 5));
	md_weights_free(w);
	free(im.buf);
	unlink(path);
}

Test(safetensors, expect_checks_presence_and_shape)
{
	struct image im = good_image();
	struct cm_err err = {0};
	struct md_weights *w = md__weights_parse_mem(im.buf, im.len, "m.safetensors", &err);
	cr_assert(w, "%s", err.msg);
	const struct md_tensor *t = NULL;
	int64_t ok[] = {2, 3}, wrong[] = {3, 2};
	cr_assert_eq(md_weights_expect(w, "model.embed_tokens.weight", 2, ok, &t, &err), CM_OK);
	cr_assert_eq(t, md_weights_get(w, "model.embed_tokens.weight"));
	cr_assert_eq(md_weights_expect(w, "model.embed_tokens.weight", 2, wrong, &t, &err),
		     CM_ESHAPE);
	assert_err(&err, CM_ESHAPE, "m.safetensors", "model.embed_tokens.weight", "[2, 3]");
	cr_assert(strstr(err.msg, "[3, 2]"), "%s", err.msg);
	cr_assert_eq(md_weights_expect(w, "model.embed_tokens.weight", 1, ok, &t, &err), CM_ESHAPE);
	cr_assert_eq(md_weights_expect(w, "model.layers.0.mlp.up_proj.weight", 2, ok, &t, &err),
		     CM_ENOENT);
	assert_err(&err, CM_ENOENT, "m.safetensors", "model.layers.0.mlp.up_proj.weight", NULL);
	md_weights_free(w);
	free(im.buf);
}

Test(safetensors, header_only_file_with_no_tensors)
{
	struct image im = image_make("{\"__metadata__\": {}}", NULL, 0);
	struct cm_err err = {0};
	struct md_weights *w = md__weights_parse_mem(im.buf, im.len, "e.safetensors", &err);
	cr_assert(w, "%s", err.msg);
	cr_assert_eq(md_weights_count(w), 0);
	cr_assert_null(md_weights_get(w, "x"));
	md_weights_free(w);
	free(im.buf);
}

Test(safetensors, many_tensors_found_by_name)
{
	enum { N = 3000 };
	size_t cap = (size_t)N * 100 + 16;
	char *h = malloc(cap);
	size_t off = (size_t)snprintf(h, cap, "{");
	for (int i = 0; i < N; i++)
		off += (size_t)snprintf(h + off, cap - off,
					"%s\"layer.%d.w\": {\"dtype\": \"BF16\", \"shape\": [2],"
					" \"data_offsets\": [%d, %d]}",
					i ? ", " : "", (N - 1 - i), 4 * i, 4 * i + 4);
	snprintf(h + off, cap - off, "}");
	unsigned char *d = malloc(4 * N);
	for (int i = 0; i < 4 * N; i++)
		d[i] = (unsigned char)(i / 4);
	struct image im = image_make(h, d, 4 * N);
	struct cm_err err = {0};
	struct md_weights *w = md__weights_parse_mem(im.buf, im.len, "big.safetensors", &err);
	cr_assert(w, "%s", err.msg);
	cr_assert_eq(md_weights_count(w), N);
	for (int i = 0; i < N; i++) {
		char name[32];
		snprintf(name, sizeof(name), "layer.%d.w", i);
		const struct md_tensor *t = md_weights_get(w, name);
		cr_assert(t, "%s", name);
		int k = N - 1 - i; /* its position in the data */
		cr_assert_eq((const unsigned char *)t->data - (im.buf + im.data_start), 4 * k);
		cr_assert_eq(((const unsigned char *)t->data)[0], (unsigned char)k);
	}
	md_weights_free(w);
	free(im.buf);
	free(d);
	free(h);
}

/* ---- corruption: the envelope ----------------------------------------- */

Test(safetensors, truncated_at_every_kind_of_point)
{
	struct image im = good_image();
	size_t hdr_end = im.data_start;
	const size_t cuts[] = {0, 1, 4, 7, 8, 9, 20, hdr_end / 2, hdr_end - 1};
	for (size_t i = 0; i < CM_ARRAY_LEN(cuts); i++) {
		struct image cut = {.buf = im.buf, .len = cuts[i]};
		char tag[32];
		snprintf(tag, sizeof(tag), "cut%zu", cuts[i]);
		expect_fail_image(tag, &cut, CM_ECORRUPT, NULL,
				  cuts[i] < 8 ? "too short" : "header length");
	}
	/* inside the data: the first tensor (in header order) whose span is cut is named */
	const struct {
		size_t keep; /* data bytes kept */
		const char *tensor;
	} data_cuts[] = {
		{0, "model.norm.weight"}, {11, "model.norm.weight"}, {27, "model.norm.weight"},
		{30, "lm_head.bias"},	  {35, "lm_head.bias"},	     {39, "scale"},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(data_cuts); i++) {
		struct image cut = {.buf = im.buf, .len = hdr_end + data_cuts[i].keep};
		char tag[32];
		snprintf(tag, sizeof(tag), "dcut%zu", data_cuts[i].keep);
		expect_fail_image(tag, &cut, CM_ECORRUPT, data_cuts[i].tensor,
				  "end beyond file data");
	}
	free(im.buf);
}

Test(safetensors, header_length_too_big)
{
	struct image im = good_image();
	im.buf[5] = 1; /* N += 2^40 */
	expect_fail_image("hlen40", &im, CM_ECORRUPT, NULL, "100 MB");
	im.buf[5] = 0;
	im.buf[0] = (unsigned char)(im.buf[0] + GOOD_DATA_LEN + 8); /* past the end */
	expect_fail_image("hlenpast", &im, CM_ECORRUPT, NULL, "header length");
	free(im.buf);

	/* 200 MB claimed by a file that is really that big would still be refused: the
	 * limit is checked before the file size */
	unsigned char small[16] = {0};
	uint64_t n = 200000000;
	for (int i = 0; i < 8; i++)
		small[i] = (unsigned char)(n >> (8 * i));
	struct image s = {.buf = small, .len = sizeof(small)};
	expect_fail_image("hlen200m", &s, CM_ECORRUPT, NULL, "100 MB");
}

Test(safetensors, header_not_json_or_not_object)
{
	expect_fail("notjson", "{\"a\": {\"dtype\": \"F32\",", 0, CM_EFORMAT, NULL, "JSON");
	expect_fail("garbage", "\x01\x02\x03hello", 0, CM_EFORMAT, NULL, "JSON");
	expect_fail("array", "[1, 2, 3]", 0, CM_EFORMAT, NULL, "not an object");
	expect_fail("string", "\"tensor\"", 0, CM_EFORMAT, NULL, NULL);
	expect_fail("trailing", "{} {}", 0, CM_EFORMAT, NULL, "JSON");

	/* a NUL inside the header */
	struct image im = image_make("{\"a\": 1}", NULL, 0);
	im.buf[10] = 0;
	expect_fail_image("nul", &im, CM_EFORMAT, NULL, "JSON");
	free(im.buf);
}

Test(safetensors, metadata_must_be_strings)
{
	expect_fail("meta1", "{\"__metadata__\": {\"format\": 1}}", 0, CM_EFORMAT, NULL,
		    "__metadata__");
	expect_fail("meta2", "{\"__metadata__\": [\"pt\"]}", 0, CM_EFORMAT, NULL, "__metadata__");
}

/* ---- corruption: one tensor's entry ------------------------------------- */

Test(safetensors, bad_dtype)
{
	expect_fail("f64",
		    "{\"w.f64\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]}}",
		    16, CM_EUNSUPPORTED, "w.f64", "F64");
	expect_fail("i8",
		    "{\"w.i8\": {\"dtype\": \"I8\", \"shape\": [2], \"data_offsets\": [0, 2]}}", 2,
		    CM_EUNSUPPORTED, "w.i8", "I8");
	expect_fail("q4",
		    "{\"w.q\": {\"dtype\": \"Q4_K\", \"shape\": [2], \"data_offsets\": [0, 2]}}", 2,
		    CM_EFORMAT, "w.q", "Q4_K");
	expect_fail("dnum", "{\"w.n\": {\"dtype\": 2, \"shape\": [2], \"data_offsets\": [0, 4]}}",
		    4, CM_EFORMAT, "w.n", "dtype");
	expect_fail("dmiss", "{\"w.m\": {\"shape\": [2], \"data_offsets\": [0, 4]}}", 4, CM_EFORMAT,
		    "w.m", "dtype");
	expect_fail("entry", "{\"w.e\": [1, 2]}", 0, CM_EFORMAT, "w.e", NULL);
}

Test(safetensors, shape_times_size_differs_from_span)
{
	expect_fail("span1",
		    "{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 12]}}",
		    24, CM_ECORRUPT, "a", "24 bytes");
	/* BF16 counted as 4 bytes by the writer */
	expect_fail("span2",
		    "{\"ok\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [0, 2]},"
		    " \"b\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [2, 18]}}",
		    18, CM_ECORRUPT, "b", NULL);
	expect_fail("span0",
		    "{\"z\": {\"dtype\": \"F16\", \"shape\": [0], \"data_offsets\": [0, 2]}}", 2,
		    CM_ECORRUPT, "z", NULL);
}

Test(safetensors, span_outside_file)
{
	expect_fail("out1",
		    "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [4],"
		    " \"data_offsets\": [8, 24]}}",
		    16, CM_ECORRUPT, "model.norm.weight", "end beyond file data (16 bytes)");
	expect_fail("out2",
		    "{\"far\": {\"dtype\": \"F32\", \"shape\": [1],"
		    " \"data_offsets\": [9223372036854775800, 9223372036854775804]}}",
		    16, CM_ECORRUPT, "far", "end beyond");
	expect_fail("backw",
		    "{\"bw\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", 16,
		    CM_ECORRUPT, "bw", NULL);
}

Test(safetensors, bad_data_offsets)
{
	static const char *const offs[] = {
		"[0]", "[0, 4, 8]", "[-4, 0]", "[0, 4.0]", "\"0,4\"", "null", "[0, \"4\"]",
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(offs); i++) {
		char h[256], tag[16];
		snprintf(h, sizeof(h),
			 "{\"t.offs\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": %s}}",
			 offs[i]);
		snprintf(tag, sizeof(tag), "offs%zu", i);
		expect_fail(tag, h, 8, CM_EFORMAT, "t.offs", "data_offsets");
	}
	expect_fail("nooffs", "{\"t.offs\": {\"dtype\": \"F32\", \"shape\": [1]}}", 8, CM_EFORMAT,
		    "t.offs", "data_offsets");
}

Test(safetensors, overlapping_spans)
{
	expect_fail(
		"ovl1",
		"{\"first\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
		" \"second\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}}",
		20, CM_ECORRUPT, "second", "overlaps");
	/* contained inside a bigger span listed later */
	expect_fail("ovl2",
		    "{\"inner\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [4, 8]},"
		    " \"outer\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}",
		    16, CM_ECORRUPT, "inner", "overlaps");
	/* same span twice */
	expect_fail("ovl3",
		    "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
		    " \"y\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
		    4, CM_ECORRUPT, "x", "overlaps");
	/* a gap, touching spans and empty tensors are fine */
	struct image im = image_make(
		"{\"p\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
		" \"e\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [2, 2]},"
		" \"q\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]},"
		" \"r\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [12, 16]}}",
		"0123456789abcdef", 16);
	struct cm_err err = {0};
	struct md_weights *w = md__weights_parse_mem(im.buf, im.len, "ok.safetensors", &err);
	cr_assert(w, "%s", err.msg);
	cr_assert_eq(memcmp(md_weights_get(w, "r")->data, "cdef", 4), 0);
	md_weights_free(w);
	free(im.buf);
}

Test(safetensors, duplicate_names)
{
	expect_fail("dup",
		    "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [1], "
		    "\"data_offsets\": [0, 4]},"
		    " \"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [1], "
		    "\"data_offsets\": [4, 8]}}",
		    8, CM_EFORMAT, "model.norm.weight", "twice");
	/* not next to each other */
	expect_fail("dup2",
		    "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
		    " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]},"
		    " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
		    12, CM_EFORMAT, "a", "twice");
}

Test(safetensors, bad_shape_entries)
{
	static const char *const shapes[] = {
		"[-1]", "[2, -3]", "[1.5]", "[2.0, 2]", "[\"2\"]", "[null]", "[[2]]", "{}", "2",
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(shapes); i++) {
		char h[256], tag[16];
		snprintf(h, sizeof(h),
			 "{\"t.shape\": {\"dtype\": \"F32\", \"shape\": %s, \"data_offsets\": [0, "
			 "8]}}",
			 shapes[i]);
		snprintf(tag, sizeof(tag), "shape%zu", i);
		expect_fail(tag, h, 8, CM_EFORMAT, "t.shape", "shape");
	}
	expect_fail("dims5",
		    "{\"t.5d\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1],"
		    " \"data_offsets\": [0, 4]}}",
		    4, CM_EUNSUPPORTED, "t.5d", "dimensions");
	/* an integer beyond int64 is not JSON jansson accepts */
	expect_fail("bigint",
		    "{\"t\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999],"
		    " \"data_offsets\": [0, 4]}}",
		    4, CM_EFORMAT, NULL, NULL);
}

Test(safetensors, huge_shapes_that_overflow)
{
	/* 2^32 * 2^32 elements: the product wraps to 0 in 64 bits */
	expect_fail("ovf1",
		    "{\"huge\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296],"
		    " \"data_offsets\": [0, 0]}}",
		    0, CM_ECORRUPT, "huge", "overflows");
	/* 2^62 elements x 4 bytes wraps to 0 too */
	expect_fail("ovf2",
		    "{\"huge2\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904],"
		    " \"data_offsets\": [0, 0]}}",
		    0, CM_ECORRUPT, "huge2", "overflows");
	/* big but no overflow: a plain size mismatch */
	expect_fail("big",
		    "{\"big\": {\"dtype\": \"BF16\", \"shape\": [1000000, 1000000, 1000],"
		    " \"data_offsets\": [0, 8]}}",
		    8, CM_ECORRUPT, "big", NULL);
	/* a zero dimension makes the rest harmless */
	struct image im =
		image_make("{\"zero\": {\"dtype\": \"F32\", \"shape\": [0, 4611686018427387904, 8],"
			   " \"data_offsets\": [0, 0]}}",
			   NULL, 0);
	struct cm_err err = {0};
	struct md_weights *w = md__weights_parse_mem(im.buf, im.len, "z.safetensors", &err);
	/* 0 x 2^62 x 8 x 4 = 0 but the running product never overflows */
	cr_assert(w, "%s", err.msg);
	md_weights_free(w);
	free(im.buf);
}

Test(safetensors, odd_data_offset_is_refused)
{
	/* header padded to 8 and one F16 at offset 1 */
	expect_fail("odd",
		    "{\"o\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [1, 3]}}", 4,
		    CM_EUNSUPPORTED, "o", "odd");
}

Test(safetensors, missing_file_and_not_a_file)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/st_%d_none.safetensors", tmp_dir(), (int)getpid());
	struct cm_err err = {0};
	cr_assert_null(md_weights_open_file(path, &err));
	assert_err(&err, CM_ENOENT, path, NULL, NULL);
	cr_assert_null(md_weights_open_file(tmp_dir(), &err));
	cr_assert_eq(err.code, CM_EIO, "%s", err.msg);
}

/* ---- folders and shards ------------------------------------------------- */

static const char shard1_header[] =
	"{\"model.embed_tokens.weight\": {\"dtype\": \"BF16\", \"shape\": [2, 2],"
	" \"data_offsets\": [0, 8]},"
	" \"model.layers.0.mlp.up_proj.weight\": {\"dtype\": \"F32\", \"shape\": [2],"
	" \"data_offsets\": [8, 16]}}";
static const char shard2_header[] =
	"{\"model.norm.weight\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]},"
	" \"lm_head.weight\": {\"dtype\": \"BF16\", \"shape\": [2, 2], \"data_offsets\": [4, 12]}}";

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static const char good_index[] = "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {"
				 "\"lm_head.weight\": \"" SHARD2 "\","
				 " \"model.embed_tokens.weight\": \"" SHARD1 "\","
				 " \"model.layers.0.mlp.up_proj.weight\": \"" SHARD1 "\","
				 " \"model.norm.weight\": \"" SHARD2 "\"}}";

static void write_shards(const char *dir)
{
	struct image a = image_make(shard1_header, "AAAAaaaaBBBBbbbb", 16);
	struct image b = image_make(shard2_header, "ccccDDDDdddd", 12);
	write_in(dir, SHARD1, a.buf, a.len);
	write_in(dir, SHARD2, b.buf, b.len);
	free(a.buf);
	free(b.buf);
}

static void expect_dir_fail(const char *dir, int code, const char *file, const char *tensor,
			    const char *also)
{
	struct cm_err err = {0};
	struct md_weights *w = md_weights_open(dir, &err);
	cr_assert_null(w, "%s opened but should fail", dir);
	assert_err(&err, code, file, tensor, also);
}

Test(safetensors, sharded_model_with_index)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "shards");
	write_shards(dir);
	write_in(dir, "model.safetensors.index.json", good_index, strlen(good_index));
	struct cm_err err = {0};
	struct md_weights *w = md_weights_open(dir, &err);
	cr_assert(w, "%s", err.msg);
	cr_assert_eq(md_weights_count(w), 4);
	const struct md_tensor *t = md_weights_get(w, "model.layers.0.mlp.up_proj.weight");
	cr_assert(t);
	cr_assert_eq(memcmp(t->data, "BBBBbbbb", 8), 0);
	cr_assert(strstr(t->file, SHARD1), "%s", t->file);
	t = md_weights_get(w, "lm_head.weight");
	cr_assert(t);
	cr_assert_eq(t->dtype, MD_DTYPE_BF16);
	cr_assert_eq(memcmp(t->data, "DDDDdddd", 8), 0);
	cr_assert(strstr(t->file, SHARD2), "%s", t->file);
	t = md_weights_get(w, "model.norm.weight");
	cr_assert(t);
	cr_assert_eq(memcmp(t->data, "cccc", 4), 0);
	md_weights_free(w);
}

Test(safetensors, single_file_in_folder)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "single");
	struct image im = good_image();
	write_in(dir, "model.safetensors", im.buf, im.len);
	free(im.buf);
	struct cm_err err = {0};
	struct md_weights *w = md_weights_open(dir, &err);
	cr_assert(w, "%s", err.msg);
	cr_assert_eq(md_weights_count(w), 5);
	cr_assert(strstr(md_weights_get(w, "scale")->file, "model.safetensors"));
	md_weights_free(w);
}

Test(safetensors, folder_without_weights)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "nothing");
	expect_dir_fail(dir, CM_ENOENT, dir, NULL, "model.safetensors");
}

Test(safetensors, index_naming_a_missing_file)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "missing_shard");
	write_shards(dir);
	char shard2[1200];
	snprintf(shard2, sizeof(shard2), "%s/" SHARD2, dir);
	unlink(shard2);
	write_in(dir, "model.safetensors.index.json", good_index, strlen(good_index));
	expect_dir_fail(dir, CM_ENOENT, SHARD2, NULL, "index.json");
}

Test(safetensors, index_naming_a_tensor_not_in_its_shard)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "absent_tensor");
	write_shards(dir);
	const char idx[] = "{\"weight_map\": {\"lm_head.weight\": \"" SHARD2 "\","
			   " \"model.layers.9.mlp.up_proj.weight\": \"" SHARD1 "\"}}";
	write_in(dir, "model.safetensors.index.json", idx, strlen(idx));
	expect_dir_fail(dir, CM_ECORRUPT, SHARD1, "model.layers.9.mlp.up_proj.weight",
			"index.json");
}

Test(safetensors, index_naming_the_wrong_shard)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "wrong_shard");
	write_shards(dir);
	const char idx[] = "{\"weight_map\": {\"lm_head.weight\": \"" SHARD1 "\","
			   " \"model.norm.weight\": \"" SHARD2 "\"}}";
	write_in(dir, "model.safetensors.index.json", idx, strlen(idx));
	expect_dir_fail(dir, CM_ECORRUPT, SHARD2, "lm_head.weight", SHARD1);
}

Test(safetensors, tensor_in_two_shards)
{
	char dir[1024];
	make_dir(dir, sizeof(dir), "twice");
	write_shards(dir);
	struct image dup = image_make(shard2_header, "ccccDDDDdddd", 12);
	write_in(dir, "extra.safetensors", dup.buf, dup.len);
	free(dup.buf);
	const char idx[] = "{\"weight_map\": {\"lm_head.weight\": \"" SHARD2 "\","
			   " \"model.norm.weight\": \"extra.safetensors\"}}";
	write_in(dir, "model.safetensors.index.json", idx, strlen(idx));
	expect_dir_fail(dir, CM_ECORRUPT, "extra.safetensors", "lm_head.weight", "both");
}

Test(safetensors, bad_index_files)
{
	static const char *const bad[] = {
		"{\"weight_map\": {\"a\": \"../model.safetensors\"}}",
		"{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
		"{\"weight_map\": {\"a\": 3}}",
		"{\"weight_map\": {\"a\": \"\"}}",
		"{\"weight_map\": {}}",
		"{\"weight_map\": [\"x\"]}",
		"{\"metadata\": {}}",
		"[]",
		"{\"weight_map\": {\"a\": \"x\"",
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(bad); i++) {
		char dir[1024], tag[32];
		snprintf(tag, sizeof(tag), "badidx%zu", i);
		make_dir(dir, sizeof(dir), tag);
		write_in(dir, "model.safetensors.index.json", bad[i], strlen(bad[i]));
		expect_dir_fail(dir, CM_EFORMAT, "model.safetensors.index.json", NULL, NULL);
	}
}

Test(safetensors, dtype_helpers)
{
	cr_assert_eq(md_dtype_size(MD_DTYPE_F32), 4);
	cr_assert_eq(md_dtype_size(MD_DTYPE_F16), 2);
	cr_assert_eq(md_dtype_size(MD_DTYPE_BF16), 2);
	cr_assert_str_eq(md_dtype_name(MD_DTYPE_F32), "F32");
	cr_assert_str_eq(md_dtype_name(MD_DTYPE_F16), "F16");
	cr_assert_str_eq(md_dtype_name(MD_DTYPE_BF16), "BF16");
	cr_assert_eq(md_dtype_size((enum md_dtype)7), 0);
}
