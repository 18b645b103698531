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
 *
 * The front end keeps its memory files, and may shrink one after we mapped
 * it (a memfd without F_SEAL_SHRINK, a file of memory-backend-file): an
 * access past the new end raises SIGBUS here. Every mapped region is in a
 * process-wide registry that a SIGBUS handler consults: a fault inside a
 * region replaces that region's whole mapping with anonymous zero pages
 * and marks it poisoned, and the faulting access then completes on them.
 * The export asks guest_memory_poisoned at the points where it would act on
 * what it read (before submitting, before answering) and drops the front
 * end. A SIGBUS anywhere else gets the disposition that was there before.
 * The registry is lock-free (fixed slots, atomics) and safe with any
 * number of threads; see docs/ARCHITECTURE.md §14.1.
 */
#ifndef ISOLDE_EXPORT_GUEST_MEMORY_H
#define ISOLDE_EXPORT_GUEST_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_MEMORY_MAX_REGIONS 8
/* Regions mapped at once in the whole process, every table of every
 * export: the size of the SIGBUS registry. 16 exports (the server's
 * limit) with 8 tables of 8 regions each. */
#define GUEST_MEMORY_MAX_MAPPED 1024

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
	int registry_slot;      /* this mapping's entry in the SIGBUS registry */
};

struct guest_memory {
	unsigned refs;
	unsigned nregions;
	struct guest_region regions[GUEST_MEMORY_MAX_REGIONS];
};

/*
 * Check the regions (none empty, none wrapping, none overlapping another in
 * guest-physical or front-end address space, each inside its file) and map
 * them, each registered for SIGBUS (the handler is installed if it is not
 * what SIGBUS does now).
 * Returns a table with one reference, or NULL with err saying which region
 * is wrong and why (or that the registry is full). Takes no ownership of fds.
 */
struct guest_memory *guest_memory_map(const struct guest_region_desc *regions, unsigned n,
				      const int *fds, char *err, size_t errlen);
void guest_memory_ref(struct guest_memory *m);
void guest_memory_unref(struct guest_memory *m);

/* A file under one of m's regions shrank and the region now reads as
 * zeros: nothing read from m since the shrink is the guest's data, and
 * nothing written to it reaches the guest. Async-signal-safe, any thread. */
bool guest_memory_poisoned(const struct guest_memory *m);

/* Host pointer for [addr, addr + len), or NULL if any byte is outside every
 * region or the range spans two regions. len 0 is checked as len 1. */
void *guest_memory_gpa(const struct guest_memory *m, uint64_t addr, uint64_t len);
void *guest_memory_uva(const struct guest_memory *m, uint64_t addr, uint64_t len);

#endif
