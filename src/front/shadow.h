/* SPDX-License-Identifier: MIT */
/*
 * The front end's private shadow of every in-flight request. It is the only
 * record the front end trusts: responses are checked against it, and after a
 * driver dies it is all that is needed to know what was pending.
 *
 * A request id is (sequence << 16) | index. The sequence grows with every
 * request, so a stale or duplicated response for a reused index is caught.
 */
#ifndef ISOLDE_FRONT_SHADOW_H
#define ISOLDE_FRONT_SHADOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isolde/blk.h"
#include "isolde/blkif.h"

#define ISOLDE_SHADOW_INDEX_BITS 16

struct isolde_shadow_entry {
	uint64_t id;            /* 0 when free */
	struct isolde_blk_io *io;
	uint64_t offset;
	uint32_t length;
	uint8_t op;
	uint16_t flags;
	bool copy;              /* data goes through the entry's bounce buffer */
	uint64_t data_offset;   /* granted buffer, within the data area */
	uint64_t submitted_ns;
	uint64_t shield_epoch;  /* READ: when it was submitted, for the shield */
	uint8_t shield_retries; /* READ: restarts caused by this read's data */
	uint8_t error_retries;  /* restarts caused by this request's error status */
	bool posted;            /* on a driver's ring (a request submitted while none runs is not) */
	bool replayed;          /* re-posted to a driver after the one it was sent to failed */
};

struct isolde_shadow {
	struct isolde_shadow_entry *entries;
	uint32_t *free_stack;
	uint32_t depth;
	uint32_t nfree;
	uint64_t next_seq;
};

int isolde_shadow_init(struct isolde_shadow *s, uint32_t depth);
void isolde_shadow_fini(struct isolde_shadow *s);

/* Take a free entry and give it a fresh id; returns its index or -1. */
int isolde_shadow_alloc(struct isolde_shadow *s);
void isolde_shadow_release(struct isolde_shadow *s, uint32_t idx);

static inline uint32_t isolde_shadow_in_flight(const struct isolde_shadow *s)
{
	return s->depth - s->nfree;
}

/*
 * Check a private copy of a response. Returns 0 and the entry's index in
 * *idx, or -1 with the violated rule in why: the id is not outstanding (an
 * unknown, stale or duplicate id), the op differs from the request's, the
 * status is unknown, or the length is not the request's.
 */
int isolde_shadow_check(const struct isolde_shadow *s, const struct isolde_blk_response *rsp,
			uint32_t *idx, char *why, size_t whylen);

#endif
