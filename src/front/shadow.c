// SPDX-License-Identifier: MIT
#include "shadow.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int isolde_shadow_init(struct isolde_shadow *s, uint32_t depth)
{
	memset(s, 0, sizeof *s);
	if (depth == 0 || depth > (1u << ISOLDE_SHADOW_INDEX_BITS))
		return -1;
	s->entries = calloc(depth, sizeof *s->entries);
	s->free_stack = calloc(depth, sizeof *s->free_stack);
	if (!s->entries || !s->free_stack) {
		isolde_shadow_fini(s);
		return -1;
	}
	s->depth = depth;
	s->nfree = depth;
	for (uint32_t i = 0; i < depth; i++)
		s->free_stack[i] = depth - 1 - i;
	s->next_seq = 1;
	return 0;
}

void isolde_shadow_fini(struct isolde_shadow *s)
{
	free(s->entries);
	free(s->free_stack);
	memset(s, 0, sizeof *s);
}

int isolde_shadow_alloc(struct isolde_shadow *s)
{
	if (s->nfree == 0)
		return -1;
	uint32_t idx = s->free_stack[--s->nfree];
	struct isolde_shadow_entry *e = &s->entries[idx];

	memset(e, 0, sizeof *e);
	e->id = (s->next_seq++ << ISOLDE_SHADOW_INDEX_BITS) | idx;
	return (int)idx;
}

void isolde_shadow_release(struct isolde_shadow *s, uint32_t idx)
{
	s->entries[idx].id = 0;
	s->entries[idx].io = NULL;
	s->free_stack[s->nfree++] = idx;
}

int isolde_shadow_check(const struct isolde_shadow *s, const struct isolde_blk_response *rsp,
			uint32_t *idx, char *why, size_t whylen)
{
	uint32_t i = (uint32_t)(rsp->id & ((1u << ISOLDE_SHADOW_INDEX_BITS) - 1));
	const struct isolde_shadow_entry *e;

	if (i >= s->depth || rsp->id == 0) {
		snprintf(why, whylen, "response has unknown id 0x%" PRIx64, rsp->id);
		return -1;
	}
	e = &s->entries[i];
	if (e->id != rsp->id) {
		snprintf(why, whylen, "response id 0x%" PRIx64 " is not outstanding (%s)", rsp->id,
			 e->id == 0 ? "no request in that slot: duplicate or invented"
				    : "slot holds a newer request: stale or duplicate");
		return -1;
	}
	if (rsp->op != e->op) {
		snprintf(why, whylen, "response to %s request 0x%" PRIx64 " claims op %u",
			 isolde_blk_op_name(e->op), rsp->id, rsp->op);
		return -1;
	}
	if (rsp->status > ISOLDE_BLK_S_MAX) {
		snprintf(why, whylen, "response 0x%" PRIx64 " has unknown status %u", rsp->id, rsp->status);
		return -1;
	}
	if (rsp->length > e->length) {
		snprintf(why, whylen, "response 0x%" PRIx64 " claims %u bytes for a %u-byte request",
			 rsp->id, rsp->length, e->length);
		return -1;
	}
	if (rsp->status == ISOLDE_BLK_S_OK && rsp->length != e->length) {
		snprintf(why, whylen, "response 0x%" PRIx64 " reports success for %u of %u bytes",
			 rsp->id, rsp->length, e->length);
		return -1;
	}
	*idx = i;
	return 0;
}
