// SPDX-License-Identifier: MIT
#include "histogram.h"

#include <string.h>

void hist_init(struct histogram *h)
{
	memset(h, 0, sizeof *h);
	h->min = UINT64_MAX;
}

static unsigned bucket_of(uint64_t v)
{
	if (v < 2 * HIST_SUB)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);          /* >= HIST_SUB_BITS + 1 */
	unsigned shift = msb - HIST_SUB_BITS;
	unsigned sub = (unsigned)(v >> shift) & (HIST_SUB - 1);
	return (shift + 1) * HIST_SUB + sub;
}

/* Largest value that falls in bucket b. */
static uint64_t bucket_top(unsigned b)
{
	if (b < 2 * HIST_SUB)
		return b;
	unsigned shift = b / HIST_SUB - 1;
	uint64_t base = (uint64_t)(HIST_SUB + b % HIST_SUB) << shift;
	return base + ((UINT64_C(1) << shift) - 1);
}

void hist_add(struct histogram *h, uint64_t v)
{
	h->count[bucket_of(v)]++;
	h->total++;
	if (v > h->max)
		h->max = v;
	if (v < h->min)
		h->min = v;
}

uint64_t hist_quantile(const struct histogram *h, double q)
{
	if (h->total == 0)
		return 0;
	if (q <= 0)
		return h->min;
	uint64_t rank = (uint64_t)(q * (double)h->total + 0.5);
	if (rank == 0)
		rank = 1;
	if (rank > h->total)
		rank = h->total;
	uint64_t seen = 0;
	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		seen += h->count[b];
		if (seen >= rank) {
			uint64_t top = bucket_top(b);
			return top < h->max ? top : h->max;
		}
	}
	return h->max;
}

void hist_merge(struct histogram *into, const struct histogram *from)
{
	for (unsigned b = 0; b < HIST_BUCKETS; b++)
		into->count[b] += from->count[b];
	into->total += from->total;
	if (from->max > into->max)
		into->max = from->max;
	if (from->min < into->min)
		into->min = from->min;
}
