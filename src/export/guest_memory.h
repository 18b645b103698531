/* SPDX-License-Identifier: MIT */
/*
 * A vhost-user front end's memory (the guest's RAM), as SET_MEM_TABLE
 * describes it: up to eight regions, each a file descriptor mapped here.
 *
 * Every address the guest or the front end hands over is translated by
 * guest_memory_gpa (guest-physical, descriptor buffers) or guest_memory_uva
 * (the front end's own virtual addresses, which SET_VRING_ADDR uses), and a
 * translation succeeds only when the whole [addr, addr + len) range lies in
 * one region. There is no other way to reach guest memory from the export.
 *
 * A table is reference counted: the connection holds one reference and
 * every request in flight holds one, so a new SET_MEM_TABLE or a
 * disconnect never unmaps memory a request will still write into.
 */
#ifndef ISOLDE_EXPORT_GUEST_MEMORY_H
#define ISOLDE_EXPORT_GUEST_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#define GUEST_MEMORY_MAX_REGIONS 8

/* One region as the message carries it (struct vhost_user_memory_region). */
struct guest_region_desc {
	uint64_t guest_phys_addr;
	uint64_t memory_size;
	uint64_t userspace_addr;
	uint64_t mmap_offset;
};

struct guest_region {
	struct guest_region_desc d;
	void *map;              /* what mmap returned */
	size_t map_len;
	unsigned char *host;    /* guest_phys_addr maps to here */
};

struct guest_memory {
	unsigned refs;
	unsigned nregions;
	struct guest_region regions[GUEST_MEMORY_MAX_REGIONS];
};

/*
 * Check the regions (none empty, none wrapping, none overlapping another in
 * guest-physical or front-end address space, each inside its file) and map
 * them. Returns a table with one reference, or NULL with err saying which
 * region is wrong and why. Takes no ownership of fds.
 */
struct guest_memory *guest_memory_map(const struct guest_region_desc *regions, unsigned n,
				      const int *fds, char *err, size_t errlen);
void guest_memory_ref(struct guest_memory *m);
void guest_memory_unref(struct guest_memory *m);

/* Host pointer for [addr, addr + len), or NULL if any byte is outside every
 * region or the range spans two regions. len 0 is checked as len 1. */
void *guest_memory_gpa(const struct guest_memory *m, uint64_t addr, uint64_t len);
void *guest_memory_uva(const struct guest_memory *m, uint64_t addr, uint64_t len);

#endif
