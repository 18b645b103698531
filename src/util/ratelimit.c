// SPDX-License-Identifier: MIT
#include "ratelimit.h"

void isolde_ratelimit_init(struct isolde_ratelimit *r, uint32_t lines, uint32_t window_s)
{
	r->lines = lines;
	r->window_s = window_s ? window_s : 1;
	r->tokens = lines;
	r->last_ns = 0;
	r->suppressed = 0;
	r->suppressed_total = 0;
}

bool isolde_ratelimit_allow(struct isolde_ratelimit *r, uint64_t now_ns, uint64_t *suppressed)
{
	if (r->last_ns && now_ns > r->last_ns) {
		double refill = (double)(now_ns - r->last_ns) * r->lines / ((double)r->window_s * 1e9);
		r->tokens = r->tokens + refill > r->lines ? r->lines : r->tokens + refill;
	}
	r->last_ns = now_ns;
	*suppressed = 0;
	if (r->tokens < 1.0) {
		r->suppressed++;
		r->suppressed_total++;
		return false;
	}
	r->tokens -= 1.0;
	*suppressed = r->suppressed;
	r->suppressed = 0;
	return true;
}
