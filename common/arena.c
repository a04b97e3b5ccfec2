/* Bump-pointer arenas. */
#include "cm.h"

#include <stdlib.h>
#include <string.h>

struct cm_arena_block {
	struct cm_arena_block *next;
	size_t size;  /* usable bytes after the header */
	size_t off;   /* bytes used */
	unsigned char data[];  /* malloc alignment only: align addresses, not offsets */
};

void cm_arena_init(struct cm_arena *a, size_t block_size)
{
	a->head = NULL;
	a->block_size = block_size ? block_size : 64 * 1024;
	a->used = 0;
}

void cm_arena_fini(struct cm_arena *a)
{
	struct cm_arena_block *b = a->head;
	while (b) {
		struct cm_arena_block *next = b->next;
		free(b);
		b = next;
	}
	a->head = NULL;
	a->used = 0;
}

void cm_arena_reset(struct cm_arena *a)
{
	struct cm_arena_block *b = a->head;
	if (!b)
		return;
	/* keep the oldest (first allocated) block: it is last in the chain */
	while (b->next) {
		struct cm_arena_block *next = b->next;
		free(b);
		b = next;
	}
	b->off = 0;
	a->head = b;
	a->used = 0;
}

void *cm_arena_alloc(struct cm_arena *a, size_t size, size_t align)
{
	CM_ASSERT(align && (align & (align - 1)) == 0 && align <= 4096);
	struct cm_arena_block *b = a->head;
	if (b) {
		uintptr_t base = (uintptr_t)b->data;
		size_t off = ((base + b->off + align - 1) & ~(uintptr_t)(align - 1)) - base;
		if (off <= b->size && size <= b->size - off) {
			b->off = off + size;
			a->used += size;
			memset(b->data + off, 0, size);
			return b->data + off;
		}
	}
	if (size > SIZE_MAX / 2)
		return NULL;
	size_t need = size + align;
	size_t bsize = need > a->block_size ? need : a->block_size;
	b = malloc(sizeof(*b) + bsize);
	if (!b)
		return NULL;
	b->size = bsize;
	uintptr_t base = (uintptr_t)b->data;
	size_t off = ((base + align - 1) & ~(uintptr_t)(align - 1)) - base;
	b->off = off + size;
	b->next = a->head;  /* newest first; the oldest is kept by reset */
	a->head = b;
	a->used += size;
	memset(b->data + off, 0, size);
	return b->data + off;
}

char *cm_arena_strndup(struct cm_arena *a, const char *s, size_t n)
{
	char *p = cm_arena_alloc(a, n + 1, 1);
	if (p)
		memcpy(p, s, n);
	return p;
}
