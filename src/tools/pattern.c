// SPDX-License-Identifier: MIT
#include "pattern.h"

#include <string.h>

#define PATTERN_MAGIC UINT64_C(0x425645444c4f5349) /* "ISOLDEVB" */

struct pattern_header {
	uint64_t magic;
	uint64_t block;
	uint64_t seq;
	uint64_t seed;
};

uint64_t pattern_rand(uint64_t *state)
{
	uint64_t x = *state ? *state : UINT64_C(0x9e3779b97f4a7c15);

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * UINT64_C(0x2545f4914f6cdd1d);
}

static uint64_t mix(uint64_t seed, uint64_t block, uint64_t seq)
{
	uint64_t h = seed ^ (block * UINT64_C(0x9e3779b97f4a7c15)) ^ (seq * UINT64_C(0xc2b2ae3d27d4eb4f));
	h ^= h >> 33;
	h *= UINT64_C(0xff51afd7ed558ccd);
	h ^= h >> 33;
	return h | 1;
}

static void fill_body(unsigned char *p, size_t len, uint64_t state)
{
	while (len >= 8) {
		uint64_t v = pattern_rand(&state);
		memcpy(p, &v, 8);
		p += 8;
		len -= 8;
	}
	if (len) {
		uint64_t v = pattern_rand(&state);
		memcpy(p, &v, len);
	}
}

void pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t block, uint64_t seq)
{
	struct pattern_header h = { PATTERN_MAGIC, block, seq, seed };

	memcpy(buf, &h, sizeof h);
	fill_body((unsigned char *)buf + sizeof h, len - sizeof h, mix(seed, block, seq));
}

enum pattern_verdict pattern_check(const void *buf, size_t len, uint64_t seed, uint64_t block,
				   uint64_t seq)
{
	struct pattern_header h;
	unsigned char expect[4096];
	const unsigned char *p = (const unsigned char *)buf + sizeof h;
	size_t left = len - sizeof h;
	uint64_t state;

	memcpy(&h, buf, sizeof h);
	if (h.magic != PATTERN_MAGIC || h.seed != seed)
		return PATTERN_CORRUPT;
	/* The body must match what its own header describes; only then does
	 * the header say which write this really was. */
	state = mix(seed, h.block, h.seq);
	while (left > 0) {
		size_t chunk = left < sizeof expect ? left : sizeof expect;
		fill_body(expect, chunk, state);
		if (memcmp(p, expect, chunk) != 0)
			return PATTERN_CORRUPT;
		/* fill_body consumed one state step per 8 bytes. */
		for (size_t i = 0; i < (chunk + 7) / 8; i++)
			pattern_rand(&state);
		p += chunk;
		left -= chunk;
	}
	if (h.block != block)
		return PATTERN_MISDIRECTED;
	if (h.seq != seq)
		return PATTERN_STALE;
	return PATTERN_OK;
}

const char *pattern_verdict_name(enum pattern_verdict v)
{
	switch (v) {
	case PATTERN_OK: return "ok";
	case PATTERN_MISDIRECTED: return "misdirected (holds another block)";
	case PATTERN_STALE: return "stale (holds an older write: a write was lost)";
	default: return "corrupt";
	}
}
