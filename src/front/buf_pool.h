/* SPDX-License-Identifier: MIT */
/*
 * Page allocator for zero-copy buffers in the shared data area. Its state is
 * private to the front end; the driver never sees which pages are in use.
 */
#ifndef ISOLDE_FRONT_BUF_POOL_H
#define ISOLDE_FRONT_BUF_POOL_H

#include <stddef.h>
#include <stdint.h>

struct isolde_buf_pool {
	uint64_t *used;      /* bitmap, one bit per page */
	uint32_t *run;       /* at an allocation's first page: its page count */
	uint32_t pages;
	uint32_t hint;       /* where the next search starts */
};

int isolde_buf_pool_init(struct isolde_buf_pool *p, uint32_t pages);
void isolde_buf_pool_fini(struct isolde_buf_pool *p);
/* First page of a free run of n pages, or -1. */
int64_t isolde_buf_pool_alloc(struct isolde_buf_pool *p, uint32_t n);
/* Free the allocation starting at page first; -1 if none starts there. */
int isolde_buf_pool_free(struct isolde_buf_pool *p, uint32_t first);

#endif
