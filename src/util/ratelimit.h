/* SPDX-License-Identifier: MIT */
/*
 * A token bucket for log lines: at most `lines` per `window_s` seconds,
 * in bursts of up to `lines`. What is refused is counted, so the next line
 * that passes can say how many were suppressed. Anything a hostile peer can
 * make isolde print goes through one of these.
 */
#ifndef ISOLDE_UTIL_RATELIMIT_H
#define ISOLDE_UTIL_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

struct isolde_ratelimit {
	uint32_t lines;         /* burst, and lines per window */
	uint32_t window_s;
	double tokens;
	uint64_t last_ns;
	uint64_t suppressed;    /* refused since the last line that passed */
	uint64_t suppressed_total;
};

void isolde_ratelimit_init(struct isolde_ratelimit *r, uint32_t lines, uint32_t window_s);

/* May a line be printed now? If so and lines were suppressed before it,
 * *suppressed is set to their number (and the count starts again). */
bool isolde_ratelimit_allow(struct isolde_ratelimit *r, uint64_t now_ns, uint64_t *suppressed);

#endif
