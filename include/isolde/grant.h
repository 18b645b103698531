/* SPDX-License-Identifier: MIT */
/*
 * isolde/grant.h - grants: how a request names its data.
 *
 * The grant table lives in the shared memory and is owned by the front end:
 * only the front end writes it, the driver maps it read-only. An entry grants
 * the driver access to one byte range of the data area in one direction. The
 * front end fills an entry before publishing the request that names it and
 * revokes it (access = 0) when the response arrives.
 *
 * The driver reaches data only through isolde_grant_access(), which refuses a
 * reference out of range, a revoked entry, the wrong direction, an offset or
 * length beyond the grant, or a grant outside the data area.
 *
 * The front end never reads the table back: its own record of what it granted
 * is private, so a driver that scribbles on the table can only hurt itself.
 */
#ifndef ISOLDE_GRANT_H
#define ISOLDE_GRANT_H

#include <stddef.h>
#include <stdint.h>

#define ISOLDE_GRANT_DRIVER_READS  0x1u /* data flows to the device (WRITE) */
#define ISOLDE_GRANT_DRIVER_WRITES 0x2u /* data flows from the device (READ) */

struct isolde_grant {
	uint64_t offset; /* into the data area */
	uint32_t length;
	uint16_t access; /* ISOLDE_GRANT_DRIVER_*; 0 = revoked */
	uint16_t reserved;
};

_Static_assert(sizeof(struct isolde_grant) == 16, "grant entry size");

/* What the driver knows of its grants and data area. */
struct isolde_grant_view {
	const struct isolde_grant *table; /* mapped read-only in the driver */
	uint32_t count;
	unsigned char *data;
	uint64_t data_size;
};

/*
 * Returns a pointer to [offset, offset + length) of grant `gref` if the grant
 * allows `access`, or NULL. The entry is read once into private memory.
 */
void *isolde_grant_access(const struct isolde_grant_view *v, uint32_t gref,
			  uint32_t offset, uint32_t length, unsigned access);

/* Front end side: fill and revoke entries (plain stores; the release store of
 * req_prod publishes them). */
void isolde_grant_set(struct isolde_grant *table, uint32_t gref, uint64_t offset,
		      uint32_t length, unsigned access);
void isolde_grant_revoke(struct isolde_grant *table, uint32_t gref);

#endif
