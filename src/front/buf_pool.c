// SPDX-License-Identifier: MIT
#include "buf_pool.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static bool page_used(const struct isolde_buf_pool *p, uint32_t i)
{
	return p->used[i / 64] >> (i % 64) & 1;
}

static void mark(struct isolde_buf_pool *p, uint32_t first, uint32_t n, bool used)
{
	for (uint32_t i = first; i < first + n; i++) {
		if (used)
			p->used[i / 64] |= UINT64_C(1) << (i % 64);
		else
			p->used[i / 64] &= ~(UINT64_C(1) << (i % 64));
	}
}

int isolde_buf_pool_init(struct isolde_buf_pool *p, uint32_t pages)
{
	memset(p, 0, sizeof *p);
	p->used = calloc((pages + 63) / 64 + 1, sizeof *p->used);
	p->run = calloc(pages + 1, sizeof *p->run);
	if (!p->used || !p->run) {
		isolde_buf_pool_fini(p);
		return -1;
	}
	p->pages = pages;
	return 0;
}

void isolde_buf_pool_fini(struct isolde_buf_pool *p)
{
	free(p->used);
	free(p->run);
	memset(p, 0, sizeof *p);
}

/* Look for n free pages in [from, to). */
static int64_t search(const struct isolde_buf_pool *p, uint32_t n, uint32_t from, uint32_t to)
{
	uint32_t run = 0;

	for (uint32_t i = from; i < to; i++) {
		if (page_used(p, i)) {
			run = 0;
			continue;
		}
		if (++run == n)
			return (int64_t)(i + 1 - n);
	}
	return -1;
}

int64_t isolde_buf_pool_alloc(struct isolde_buf_pool *p, uint32_t n)
{
	int64_t first;

	if (n == 0 || n > p->pages)
		return -1;
	first = search(p, n, p->hint, p->pages);
	if (first < 0)
		first = search(p, n, 0, p->pages);
	if (first < 0)
		return -1;
	mark(p, (uint32_t)first, n, true);
	p->run[first] = n;
	p->hint = (uint32_t)first + n < p->pages ? (uint32_t)first + n : 0;
	return first;
}

int isolde_buf_pool_free(struct isolde_buf_pool *p, uint32_t first)
{
	if (first >= p->pages || p->run[first] == 0)
		return -1;
	mark(p, first, p->run[first], false);
	p->run[first] = 0;
	return 0;
}
