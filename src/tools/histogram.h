/* SPDX-License-Identifier: MIT */
/*
 * A log-bucket latency histogram: constant memory, constant time per sample,
 * percentiles within 1/32 (about 3%) of the true value. Values below 64 ns
 * are exact; above, each power of two is split into 32 buckets.
 */
#ifndef ISOLDE_TOOLS_HISTOGRAM_H
#define ISOLDE_TOOLS_HISTOGRAM_H

#include <stdint.h>

#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS) * HIST_SUB + HIST_SUB)

struct histogram {
	uint64_t count[HIST_BUCKETS];
	uint64_t total;
	uint64_t max;
	uint64_t min;
};

void hist_init(struct histogram *h);
void hist_add(struct histogram *h, uint64_t v);
/* The value at quantile q (0..1): the upper bound of its bucket, capped at
 * the largest value seen. 0 if empty. */
uint64_t hist_quantile(const struct histogram *h, double q);
void hist_merge(struct histogram *into, const struct histogram *from);

#endif
