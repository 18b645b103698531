// SPDX-License-Identifier: MIT
#include "isolde/grant.h"
#include "isolde/ring.h"

#include <stddef.h>

void *isolde_grant_access(const struct isolde_grant_view *v, uint32_t gref,
			  uint32_t offset, uint32_t length, unsigned access)
{
	struct isolde_grant g;

	if (gref >= v->count || length == 0)
		return NULL;
	if (access != ISOLDE_GRANT_DRIVER_READS && access != ISOLDE_GRANT_DRIVER_WRITES)
		return NULL;
	isolde_copy_from_shared(&g, &v->table[gref], sizeof g);
	if ((g.access & access) != access)
		return NULL;
	/* Within the grant... */
	if (offset > g.length || length > g.length - offset)
		return NULL;
	/* ...and the grant within the data area (64-bit sums cannot wrap here). */
	if (g.offset > v->data_size || (uint64_t)g.length > v->data_size - g.offset)
		return NULL;
	return v->data + g.offset + offset;
}

void isolde_grant_set(struct isolde_grant *table, uint32_t gref, uint64_t offset,
		      uint32_t length, unsigned access)
{
	table[gref].offset = offset;
	table[gref].length = length;
	table[gref].reserved = 0;
	table[gref].access = (uint16_t)access;
}

void isolde_grant_revoke(struct isolde_grant *table, uint32_t gref)
{
	__atomic_store_n(&table[gref].access, 0, __ATOMIC_RELEASE);
}
