/* model: private entry points of the safetensors reader, for tests and fuzzing. */
#ifndef TANDEM_SAFETENSORS_IMPL_H
#define TANDEM_SAFETENSORS_IMPL_H

#include "model/md.h"

/* Largest accepted header, bytes (the limit of the reference Rust implementation). */
#define MD__ST_MAX_HEADER 100000000ull

/* Parses and validates a whole safetensors image held in memory, as
 * md_weights_open_file does for a mapped file. buf stays owned by the caller and
 * must outlive the result (tensor data points into it); name appears in messages. */
struct md_weights *md__weights_parse_mem(const void *buf, size_t len, const char *name,
					 struct cm_err *err);

/* A parsed model.safetensors.index.json: the weight map and its distinct shards. */
struct md__st_index {
	void *root;	     /* the JSON document (json_t *), owned */
	const char **shards; /* [n_shards] distinct shard file names, sorted; point into root */
	size_t n_shards;
};

/* Parses index JSON text: an object whose "weight_map" maps tensor names to shard
 * file names (plain names, no '/'). CM_EFORMAT with a one-line message naming name.
 * On success the caller frees idx with md__st_index_fini. */
int md__st_index_parse(const char *json, size_t len, const char *name, struct md__st_index *idx,
		       struct cm_err *err);
void md__st_index_fini(struct md__st_index *idx);

#endif
