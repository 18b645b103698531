/* SPDX-License-Identifier: MIT */
/*
 * Self-describing blocks for verified workloads: each block carries which
 * block it is, which write put it there and the run's seed, followed by bytes
 * derived from all three. A mismatch says what went wrong: a misdirected
 * write (wrong block), a lost write (older sequence) or corruption.
 */
#ifndef ISOLDE_TOOLS_PATTERN_H
#define ISOLDE_TOOLS_PATTERN_H

#include <stddef.h>
#include <stdint.h>

#define PATTERN_MIN_BLOCK 64

enum pattern_verdict {
	PATTERN_OK = 0,
	PATTERN_MISDIRECTED, /* a valid block, but for another block number */
	PATTERN_STALE,       /* this block, but an older write */
	PATTERN_CORRUPT,     /* not a block this run wrote */
};

void pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t block, uint64_t seq);
enum pattern_verdict pattern_check(const void *buf, size_t len, uint64_t seed, uint64_t block,
				   uint64_t seq);
const char *pattern_verdict_name(enum pattern_verdict v);

/* xorshift64*: the workload's random numbers, reproducible from the seed. */
uint64_t pattern_rand(uint64_t *state);

#endif
