/* safetensors files mapped read-only, every header validated before use.
 *
 * Format: u64 little-endian header length N, N bytes of JSON, then the data. The
 * JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} with
 * offsets relative to the data start, plus an optional "__metadata__" object of
 * strings. A sharded model lists its tensors in model.safetensors.index.json
 * ({"weight_map": {tensor: file}}); every shard is mapped and all of their tensors
 * are reachable by name through one sorted index (bsearch).
 */
#include "model/safetensors-impl.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor names are printed at most this long, so the file name and reason stay visible. */
#define ST_NAME "'%.200s'"

struct st_file {
	char *path;		   /* as opened: in messages and md_tensor.file */
	const unsigned char *base; /* the whole file */
	size_t size;		   /* bytes */
	bool mapped;		   /* base is our mapping, not a caller's buffer */
};

struct md_weights {
	char *origin;	       /* model folder or file, for messages */
	struct st_file *files; /* [n_files] */
	size_t n_files;
	struct md_tensor *tensors; /* [n_tensors] by file, then data offset */
	size_t n_tensors, cap_tensors;
	const struct md_tensor **by_name; /* [n_tensors] sorted by name */
	struct cm_arena names;		  /* tensor names */
};

/* What checking one file's header needs. */
struct st_parse {
	struct md_weights *w;
	const struct st_file *f;
	size_t data_start; /* file offset of the data: 8 + N */
	size_t data_size;  /* bytes after the header */
	struct cm_err *err;
};

size_t md_dtype_size(enum md_dtype dt)
{
	switch (dt) {
	case MD_DTYPE_F32:
		return 4;
	case MD_DTYPE_F16:
	case MD_DTYPE_BF16:
		return 2;
	}
	return 0;
}

const char *md_dtype_name(enum md_dtype dt)
{
	switch (dt) {
	case MD_DTYPE_F32:
		return "F32";
	case MD_DTYPE_F16:
		return "F16";
	case MD_DTYPE_BF16:
		return "BF16";
	}
	return "?";
}

/* 1: supported (*dt set); 0: a known safetensors dtype we do not serve; -1: unknown. */
static int st_dtype_parse(const char *s, enum md_dtype *dt)
{
	/* the other dtypes of the safetensors format, space-separated */
	static const char known[] =
		" F64 I64 I32 I16 I8 U64 U32 U16 U8 BOOL C64 F8_E4M3 F8_E5M2 F8_E8M0 E8M0"
		" F6_E2M3 F6_E3M2 F4 ";
	for (int i = MD_DTYPE_F32; i <= MD_DTYPE_BF16; i++) {
		if (!strcmp(s, md_dtype_name(i))) {
			*dt = i;
			return 1;
		}
	}
	char word[16];
	if (strlen(s) + 3 > sizeof(word) || strchr(s, ' '))
		return -1;
	snprintf(word, sizeof(word), " %s ", s);
	return strstr(known, word) ? 0 : -1;
}

/* Writes "[2, 3]" into buf. */
static const char *st_shape_str(const int64_t *shape, int32_t n, char *buf, size_t cap)
{
	size_t off = (size_t)snprintf(buf, cap, "[");
	for (int32_t i = 0; i < n && off < cap; i++)
		off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "",
					(long long)shape[i]);
	if (off < cap)
		snprintf(buf + off, cap - off, "]");
	return buf;
}

static char *st_path_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);
	if (!p)
		return NULL;
	memcpy(p, dir, a);
	p[a] = '/';
	memcpy(p + a + 1, name, b + 1);
	return p;
}

static struct md_weights *st_new(const char *origin, struct cm_err *err)
{
	struct md_weights *w = calloc(1, sizeof(*w));
	if (w)
		w->origin = strdup(origin);
	if (!w || !w->origin) {
		free(w);
		cm_err_set(err, CM_ENOMEM, "%s: out of memory", origin);
		return NULL;
	}
	cm_arena_init(&w->names, 16 * 1024);
	return w;
}

void md_weights_free(struct md_weights *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n_files; i++) {
		if (w->files[i].mapped)
			munmap((void *)w->files[i].base, w->files[i].size);
		free(w->files[i].path);
	}
	free(w->files);
	free(w->tensors);
	free(w->by_name);
	cm_arena_fini(&w->names);
	free(w->origin);
	free(w);
}

/* Appends a file record; its contents are set by the caller. */
static struct st_file *st_file_add(struct md_weights *w, const char *path, struct cm_err *err)
{
	struct st_file *files = realloc(w->files, (w->n_files + 1) * sizeof(*files));
	char *p = strdup(path);
	if (files)
		w->files = files;
	if (!files || !p) {
		free(p);
		cm_err_set(err, CM_ENOMEM, "%s: out of memory", path);
		return NULL;
	}
	struct st_file *f = &w->files[w->n_files++];
	memset(f, 0, sizeof(*f));
	f->path = p;
	return f;
}

/* Maps path read-only into a new file record. via names the index that listed it. */
static int st_file_map(struct md_weights *w, const char *path, const char *via, struct cm_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		return cm_err_set(err, e == ENOENT ? CM_ENOENT : CM_EIO, "%s: %s%s%s%s", path,
				  strerror(e), via ? " (named by " : "", via ? via : "",
				  via ? ")" : "");
	}
	int rc = CM_OK;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		rc = cm_err_set(err, CM_EIO, "%s: not a regular file", path);
		goto out_close;
	}
	if (st.st_size < 8) {
		rc = cm_err_set(err, CM_ECORRUPT,
				"%s: file is %lld bytes, too short for the 8-byte header length",
				path, (long long)st.st_size);
		goto out_close;
	}
	void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (base == MAP_FAILED) {
		rc = cm_err_set(err, CM_EIO, "%s: mmap failed: %s", path, strerror(errno));
		goto out_close;
	}
	struct st_file *f = st_file_add(w, path, err);
	if (!f) {
		munmap(base, (size_t)st.st_size);
		rc = CM_ENOMEM;
		goto out_close;
	}
	f->base = base;
	f->size = (size_t)st.st_size;
	f->mapped = true;
out_close:
	close(fd);
	return rc;
}

/* Reads a non-negative JSON integer; false if v is anything else. */
static bool st_json_uint(const json_t *v, uint64_t *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (uint64_t)json_integer_value(v);
	return true;
}

static int st_entry_shape(const struct st_parse *p, const char *name, const json_t *v,
			  struct md_tensor *t)
{
	const char *path = p->f->path;
	json_t *shape = json_object_get(v, "shape");
	if (!json_is_array(shape))
		return cm_err_set(p->err, CM_EFORMAT,
				  "%s: tensor " ST_NAME ": missing 'shape' array", path, name);
	if (json_array_size(shape) > MD_MAX_DIMS)
		return cm_err_set(p->err, CM_EUNSUPPORTED,
				  "%s: tensor " ST_NAME ": %zu dimensions, at most %d supported",
				  path, name, json_array_size(shape), MD_MAX_DIMS);
	t->n_dims = (int32_t)json_array_size(shape);
	for (int32_t i = 0; i < t->n_dims; i++) {
		uint64_t d;
		if (!st_json_uint(json_array_get(shape, (size_t)i), &d))
			return cm_err_set(p->err, CM_EFORMAT,
					  "%s: tensor " ST_NAME
					  ": shape[%d] is not a non-negative integer",
					  path, name, i);
		t->shape[i] = (int64_t)d;
	}
	return CM_OK;
}

/* Checks data_offsets against the shape, the file and the alignment; sets data, nbytes. */
static int st_entry_span(const struct st_parse *p, const char *name, const json_t *v,
			 struct md_tensor *t)
{
	const char *path = p->f->path;
	json_t *offs = json_object_get(v, "data_offsets");
	uint64_t b, e, n = md_dtype_size(t->dtype);
	if (!json_is_array(offs) || json_array_size(offs) != 2 ||
	    !st_json_uint(json_array_get(offs, 0), &b) ||
	    !st_json_uint(json_array_get(offs, 1), &e))
		return cm_err_set(p->err, CM_EFORMAT,
				  "%s: tensor " ST_NAME
				  ": 'data_offsets' must be [begin, end] of non-negative integers",
				  path, name);
	if (b > e)
		return cm_err_set(p->err, CM_ECORRUPT,
				  "%s: tensor " ST_NAME
				  ": data_offsets [%llu, %llu) end before begin",
				  path, name, (unsigned long long)b, (unsigned long long)e);
	char sh[160];
	for (int32_t i = 0; i < t->n_dims; i++) {
		if (__builtin_mul_overflow(n, (uint64_t)t->shape[i], &n))
			return cm_err_set(p->err, CM_ECORRUPT,
					  "%s: tensor " ST_NAME ": shape %s overflows 64 bits",
					  path, name,
					  st_shape_str(t->shape, t->n_dims, sh, sizeof(sh)));
	}
	if (n != e - b)
		return cm_err_set(p->err, CM_ECORRUPT,
				  "%s: tensor " ST_NAME ": shape %s x %s is %llu bytes but "
				  "data_offsets [%llu, %llu) span %llu",
				  path, name, st_shape_str(t->shape, t->n_dims, sh, sizeof(sh)),
				  md_dtype_name(t->dtype), (unsigned long long)n,
				  (unsigned long long)b, (unsigned long long)e,
				  (unsigned long long)(e - b));
	if (e > p->data_size)
		return cm_err_set(p->err, CM_ECORRUPT,
				  "%s: tensor " ST_NAME
				  ": data_offsets [%llu, %llu) end beyond file data (%zu bytes)",
				  path, name, (unsigned long long)b, (unsigned long long)e,
				  p->data_size);
	if (n && (p->data_start + b) % 2)
		return cm_err_set(p->err, CM_EUNSUPPORTED,
				  "%s: tensor " ST_NAME ": data at odd file offset %llu", path,
				  name, (unsigned long long)(p->data_start + b));
	t->data = p->f->base + p->data_start + b;
	t->nbytes = (size_t)n;
	return CM_OK;
}

/* Validates one header entry into t. */
static int st_entry_parse(const struct st_parse *p, const char *name, const json_t *v,
			  struct md_tensor *t)
{
	const char *path = p->f->path;
	memset(t, 0, sizeof(*t));
	if (!json_is_object(v))
		return cm_err_set(p->err, CM_EFORMAT,
				  "%s: tensor " ST_NAME ": entry is not an object", path, name);
	json_t *dt = json_object_get(v, "dtype");
	if (!json_is_string(dt))
		return cm_err_set(p->err, CM_EFORMAT,
				  "%s: tensor " ST_NAME ": missing 'dtype' string", path, name);
	int known = st_dtype_parse(json_string_value(dt), &t->dtype);
	if (known <= 0)
		return cm_err_set(p->err, known ? CM_EFORMAT : CM_EUNSUPPORTED,
				  "%s: tensor " ST_NAME ": %s dtype '%.32s' (BF16, F16, F32 are "
				  "supported)",
				  path, name, known ? "unknown" : "unsupported",
				  json_string_value(dt));
	int rc = st_entry_shape(p, name, v, t);
	if (rc == CM_OK)
		rc = st_entry_span(p, name, v, t);
	if (rc < 0)
		return rc;
	t->name = cm_arena_strndup(&p->w->names, name, strlen(name));
	t->file = path;
	if (!t->name)
		return cm_err_set(p->err, CM_ENOMEM, "%s: out of memory", path);
	return CM_OK;
}

static int st_metadata_check(const struct st_parse *p, const json_t *meta)
{
	const char *key;
	json_t *v;
	if (!json_is_object(meta))
		return cm_err_set(p->err, CM_EFORMAT, "%s: '__metadata__' is not an object",
				  p->f->path);
	json_object_foreach ((json_t *)meta, key, v) {
		if (!json_is_string(v))
			return cm_err_set(p->err, CM_EFORMAT,
					  "%s: '__metadata__' value of " ST_NAME " is not a string",
					  p->f->path, key);
	}
	return CM_OK;
}

static int st_cmp_offset(const void *a, const void *b)
{
	const struct md_tensor *x = a, *y = b;
	uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
	if (px != py)
		return px < py ? -1 : 1;
	return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Sorts ts by data offset and rejects overlapping (non-empty) spans. */
static int st_overlap_check(const struct st_parse *p, struct md_tensor *ts, size_t n)
{
	qsort(ts, n, sizeof(*ts), st_cmp_offset);
	const unsigned char *data = p->f->base + p->data_start;
	const struct md_tensor *prev = NULL; /* the non-empty tensor reaching furthest so far */
	for (size_t i = 0; i < n; i++) {
		const struct md_tensor *t = &ts[i];
		const unsigned char *b = t->data;
		if (!t->nbytes)
			continue;
		const unsigned char *pb = prev ? prev->data : NULL;
		if (prev && b < pb + prev->nbytes)
			return cm_err_set(p->err, CM_ECORRUPT,
					  "%s: tensor " ST_NAME
					  " [%zu, %zu) overlaps tensor " ST_NAME " [%zu, %zu)",
					  p->f->path, t->name, (size_t)(b - data),
					  (size_t)(b - data) + t->nbytes, prev->name,
					  (size_t)(pb - data), (size_t)(pb - data) + prev->nbytes);
		if (!prev || b + t->nbytes > pb + prev->nbytes)
			prev = t;
	}
	return CM_OK;
}

/* The key in jansson's "duplicate object key near '"name"'" (JSON-escaped). */
static bool st_dup_name(const char *text, char *out, size_t cap)
{
	const char *b = strstr(text, "near '\"");
	size_t n = strlen(text);
	if (!b || n < 2 || strcmp(text + n - 2, "\"'"))
		return false;
	b += strlen("near '\"");
	const char *e = text + n - 2;
	if (e < b || (size_t)(e - b) >= cap)
		return false;
	memcpy(out, b, (size_t)(e - b));
	out[e - b] = '\0';
	return true;
}

/* Reads the header length and the header JSON of file f. */
static int st_header_load(struct st_parse *p, json_t **root)
{
	const struct st_file *f = p->f;
	if (f->size < 8)
		return cm_err_set(p->err, CM_ECORRUPT,
				  "%s: file is %zu bytes, too short for the 8-byte header length",
				  f->path, f->size);
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | f->base[i];
	if (n > MD__ST_MAX_HEADER || n > f->size - 8)
		return cm_err_set(p->err, CM_ECORRUPT,
				  "%s: header length %llu exceeds %s (%zu bytes after the length)",
				  f->path, (unsigned long long)n,
				  n > MD__ST_MAX_HEADER ? "the 100 MB limit" : "the file",
				  f->size - 8);
	p->data_start = 8 + (size_t)n;
	p->data_size = f->size - p->data_start;
	json_error_t jerr;
	*root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
	if (!*root) {
		char dup[JSON_ERROR_TEXT_LENGTH];
		if (json_error_code(&jerr) == json_error_duplicate_key &&
		    st_dup_name(jerr.text, dup, sizeof(dup)))
			return cm_err_set(p->err, CM_EFORMAT,
					  "%s: tensor " ST_NAME " appears twice (duplicate key)",
					  f->path, dup);
		if (json_error_code(&jerr) == json_error_duplicate_key)
			return cm_err_set(p->err, CM_EFORMAT, "%s: header: %.200s", f->path,
					  jerr.text);
		return cm_err_set(p->err, CM_EFORMAT,
				  "%s: header is not valid JSON (byte %d of %llu): %.200s", f->path,
				  jerr.position, (unsigned long long)n, jerr.text);
	}
	if (!json_is_object(*root)) {
		json_decref(*root);
		*root = NULL;
		return cm_err_set(p->err, CM_EFORMAT, "%s: header JSON is not an object", f->path);
	}
	return CM_OK;
}

/* Validates the header of file k and appends its tensors to w->tensors. */
static int st_file_parse(struct md_weights *w, size_t k, struct cm_err *err)
{
	struct st_parse p = {.w = w, .f = &w->files[k], .err = err};
	json_t *root = NULL;
	int rc = st_header_load(&p, &root);
	if (rc < 0)
		return rc;
	size_t n = json_object_size(root), first = w->n_tensors;
	if (n > w->cap_tensors - w->n_tensors) {
		struct md_tensor *ts = realloc(w->tensors, (w->n_tensors + n) * sizeof(*ts));
		if (!ts) {
			rc = cm_err_set(err, CM_ENOMEM, "%s: out of memory", p.f->path);
			goto out_decref;
		}
		w->tensors = ts;
		w->cap_tensors = w->n_tensors + n;
	}
	const char *key;
	json_t *v;
	json_object_foreach (root, key, v) {
		if (!strcmp(key, "__metadata__"))
			rc = st_metadata_check(&p, v);
		else if ((rc = st_entry_parse(&p, key, v, &w->tensors[w->n_tensors])) == CM_OK)
			w->n_tensors++;
		if (rc < 0)
			goto out_decref;
	}
	rc = st_overlap_check(&p, w->tensors + first, w->n_tensors - first);
out_decref:
	json_decref(root);
	return rc;
}

static int st_cmp_name(const void *a, const void *b)
{
	const struct md_tensor *const *x = a, *const *y = b;
	return strcmp((*x)->name, (*y)->name);
}

/* Builds the name index and rejects a name held twice (within or across files). */
static int st_finalize(struct md_weights *w, struct cm_err *err)
{
	if (!w->n_tensors)
		return CM_OK;
	w->by_name = malloc(w->n_tensors * sizeof(*w->by_name));
	if (!w->by_name)
		return cm_err_set(err, CM_ENOMEM, "%s: out of memory", w->origin);
	for (size_t i = 0; i < w->n_tensors; i++)
		w->by_name[i] = &w->tensors[i];
	qsort(w->by_name, w->n_tensors, sizeof(*w->by_name), st_cmp_name);
	for (size_t i = 1; i < w->n_tensors; i++) {
		const struct md_tensor *a = w->by_name[i - 1], *b = w->by_name[i];
		if (strcmp(a->name, b->name))
			continue;
		if (a->file == b->file)
			return cm_err_set(err, CM_EFORMAT, "%s: tensor " ST_NAME " appears twice",
					  a->file, a->name);
		return cm_err_set(err, CM_ECORRUPT,
				  "%s: tensor " ST_NAME " appears in both %s and %s", w->origin,
				  a->name, a->file, b->file);
	}
	return CM_OK;
}

struct md_weights *md__weights_parse_mem(const void *buf, size_t len, const char *name,
					 struct cm_err *err)
{
	struct md_weights *w = st_new(name, err);
	if (!w)
		return NULL;
	struct st_file *f = st_file_add(w, name, err);
	if (!f)
		goto out_free;
	f->base = buf;
	f->size = len;
	if (st_file_parse(w, 0, err) < 0 || st_finalize(w, err) < 0)
		goto out_free;
	return w;
out_free:
	md_weights_free(w);
	return NULL;
}

struct md_weights *md_weights_open_file(const char *path, struct cm_err *err)
{
	struct md_weights *w = st_new(path, err);
	if (!w)
		return NULL;
	if (st_file_map(w, path, NULL, err) < 0 || st_file_parse(w, 0, err) < 0 ||
	    st_finalize(w, err) < 0) {
		md_weights_free(w);
		return NULL;
	}
	return w;
}

static int st_cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard must be a plain file name in the model folder. */
static bool st_shard_name_ok(const char *s)
{
	return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

int md__st_index_parse(const char *json, size_t len, const char *name, struct md__st_index *idx,
		       struct cm_err *err)
{
	memset(idx, 0, sizeof(*idx));
	json_error_t jerr;
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return cm_err_set(err, CM_EFORMAT, "%s: invalid JSON at line %d column %d: %.200s",
				  name, jerr.line, jerr.column, jerr.text);
	idx->root = root;
	json_t *map = json_object_get(root, "weight_map");
	if (!json_is_object(map) || !json_object_size(map)) {
		md__st_index_fini(idx);
		return cm_err_set(err, CM_EFORMAT, "%s: missing or empty 'weight_map' object",
				  name);
	}
	idx->shards = malloc(json_object_size(map) * sizeof(*idx->shards));
	if (!idx->shards) {
		md__st_index_fini(idx);
		return cm_err_set(err, CM_ENOMEM, "%s: out of memory", name);
	}
	const char *key;
	json_t *v;
	json_object_foreach (map, key, v) {
		if (!json_is_string(v) || !st_shard_name_ok(json_string_value(v))) {
			int rc = cm_err_set(err, CM_EFORMAT,
					    "%s: weight_map: tensor " ST_NAME
					    " must name a file in the model folder",
					    name, key);
			md__st_index_fini(idx); /* key lives in the document */
			return rc;
		}
		idx->shards[idx->n_shards++] = json_string_value(v);
	}
	qsort(idx->shards, idx->n_shards, sizeof(*idx->shards), st_cmp_str);
	size_t n = 1;
	for (size_t i = 1; i < idx->n_shards; i++)
		if (strcmp(idx->shards[i], idx->shards[n - 1]))
			idx->shards[n++] = idx->shards[i];
	idx->n_shards = n;
	return CM_OK;
}

void md__st_index_fini(struct md__st_index *idx)
{
	free(idx->shards);
	json_decref(idx->root);
	memset(idx, 0, sizeof(*idx));
}

/* Every tensor of the weight map must live in the shard it names. */
static int st_index_check(const struct md_weights *w, const struct md__st_index *idx,
			  const char *name, struct cm_err *err)
{
	json_t *map = json_object_get(idx->root, "weight_map");
	const char *key;
	json_t *v;
	json_object_foreach (map, key, v) {
		const char *shard = json_string_value(v);
		const char **k = bsearch(&shard, idx->shards, idx->n_shards, sizeof(*idx->shards),
					 st_cmp_str);
		const struct md_tensor *t = md_weights_get(w, key);
		if (!t)
			return cm_err_set(err, CM_ECORRUPT,
					  "%s: tensor " ST_NAME " is mapped to %s, which does not "
					  "hold it",
					  name, key, shard);
		if (!k || t->file != w->files[k - idx->shards].path)
			return cm_err_set(err, CM_ECORRUPT,
					  "%s: tensor " ST_NAME " is mapped to %s but lives in %s",
					  name, key, shard, t->file);
	}
	return CM_OK;
}

/* Opens every shard named by the index at path (in folder dir). */
static struct md_weights *st_open_index(const char *dir, const char *path, struct cm_err *err)
{
	char *text = NULL;
	size_t len = 0;
	struct md__st_index idx;
	if (cm_file_read(path, &text, &len, err) < 0)
		return NULL;
	int rc = md__st_index_parse(text, len, path, &idx, err);
	free(text);
	if (rc < 0)
		return NULL;
	struct md_weights *w = st_new(path, err);
	if (!w)
		goto out_fini;
	for (size_t i = 0; i < idx.n_shards; i++) {
		char *shard = st_path_join(dir, idx.shards[i]);
		rc = shard ? st_file_map(w, shard, path, err)
			   : cm_err_set(err, CM_ENOMEM, "%s: out of memory", path);
		free(shard);
		if (rc == CM_OK)
			rc = st_file_parse(w, i, err);
		if (rc < 0)
			goto out_free;
	}
	if (st_finalize(w, err) < 0 || st_index_check(w, &idx, path, err) < 0)
		goto out_free;
	md__st_index_fini(&idx);
	return w;
out_free:
	md_weights_free(w);
	w = NULL;
out_fini:
	md__st_index_fini(&idx);
	return w;
}

struct md_weights *md_weights_open(const char *dir, struct cm_err *err)
{
	char *single = st_path_join(dir, "model.safetensors");
	char *index = st_path_join(dir, "model.safetensors.index.json");
	struct md_weights *w = NULL;
	struct stat st;
	if (!single || !index)
		cm_err_set(err, CM_ENOMEM, "%s: out of memory", dir);
	else if (stat(single, &st) == 0 || errno != ENOENT)
		w = md_weights_open_file(single, err);
	else if (stat(index, &st) == 0 || errno != ENOENT)
		w = st_open_index(dir, index, err);
	else
		cm_err_set(err, CM_ENOENT,
			   "%s: no model.safetensors or model.safetensors.index.json in the folder",
			   dir);
	free(single);
	free(index);
	return w;
}

static int st_cmp_key(const void *key, const void *elem)
{
	return strcmp(key, (*(const struct md_tensor *const *)elem)->name);
}

const struct md_tensor *md_weights_get(const struct md_weights *w, const char *name)
{
	if (!w->n_tensors)
		return NULL;
	const struct md_tensor *const *t =
		bsearch(name, w->by_name, w->n_tensors, sizeof(*w->by_name), st_cmp_key);
	return t ? *t : NULL;
}

size_t md_weights_count(const struct md_weights *w)
{
	return w->n_tensors;
}

const struct md_tensor *md_weights_at(const struct md_weights *w, size_t i)
{
	return i < w->n_tensors ? &w->tensors[i] : NULL;
}

int md_weights_expect(const struct md_weights *w, const char *name, int32_t n_dims,
		      const int64_t *dims, const struct md_tensor **out, struct cm_err *err)
{
	const struct md_tensor *t = md_weights_get(w, name);
	char got[160], want[160];
	if (!t)
		return cm_err_set(err, CM_ENOENT, "%s: tensor " ST_NAME " not found", w->origin,
				  name);
	bool same = t->n_dims == n_dims;
	for (int32_t i = 0; same && i < n_dims; i++)
		same = t->shape[i] == dims[i];
	if (!same)
		return cm_err_set(err, CM_ESHAPE, "%s: tensor " ST_NAME ": shape %s, expected %s",
				  t->file, name,
				  st_shape_str(t->shape, t->n_dims, got, sizeof(got)),
				  st_shape_str(dims, CM_MIN(n_dims, 8), want, sizeof(want)));
	if (out)
		*out = t;
	return CM_OK;
}
