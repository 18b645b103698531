// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "guest_memory.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* [a, a + alen) and [b, b + blen) share a byte; neither wraps. */
static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static int check_regions(const struct guest_region_desc *r, unsigned n, const int *fds,
			 char *err, size_t errlen)
{
	if (n == 0 || n > GUEST_MEMORY_MAX_REGIONS) {
		snprintf(err, errlen, "%u regions (1 to %d allowed)", n, GUEST_MEMORY_MAX_REGIONS);
		return -1;
	}
	for (unsigned i = 0; i < n; i++) {
		struct stat st;
		uint64_t end;

		if (r[i].memory_size == 0) {
			snprintf(err, errlen, "region %u is empty", i);
			return -1;
		}
		if (__builtin_add_overflow(r[i].guest_phys_addr, r[i].memory_size, &end) ||
		    __builtin_add_overflow(r[i].userspace_addr, r[i].memory_size, &end) ||
		    __builtin_add_overflow(r[i].mmap_offset, r[i].memory_size, &end) ||
		    r[i].memory_size > SIZE_MAX) {
			snprintf(err, errlen, "region %u wraps around the address space "
				 "(guest 0x%llx, front end 0x%llx, offset 0x%llx, size 0x%llx)", i,
				 (unsigned long long)r[i].guest_phys_addr,
				 (unsigned long long)r[i].userspace_addr,
				 (unsigned long long)r[i].mmap_offset, (unsigned long long)r[i].memory_size);
			return -1;
		}
		/* Mapping past a file's end would turn the guest's accesses into
		 * SIGBUS in this process. */
		if (fstat(fds[i], &st) != 0) {
			snprintf(err, errlen, "region %u: fd: %s", i, strerror(errno));
			return -1;
		}
		if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < end) {
			snprintf(err, errlen, "region %u (offset 0x%llx, size 0x%llx) reaches beyond the end "
				 "of its file (0x%llx bytes)", i, (unsigned long long)r[i].mmap_offset,
				 (unsigned long long)r[i].memory_size, (unsigned long long)st.st_size);
			return -1;
		}
		for (unsigned j = 0; j < i; j++) {
			if (ranges_overlap(r[i].guest_phys_addr, r[i].memory_size,
					   r[j].guest_phys_addr, r[j].memory_size) ||
			    ranges_overlap(r[i].userspace_addr, r[i].memory_size,
					   r[j].userspace_addr, r[j].memory_size)) {
				snprintf(err, errlen, "regions %u and %u overlap", j, i);
				return -1;
			}
		}
	}
	return 0;
}

struct guest_memory *guest_memory_map(const struct guest_region_desc *regions, unsigned n,
				      const int *fds, char *err, size_t errlen)
{
	struct guest_memory *m;

	if (check_regions(regions, n, fds, err, errlen))
		return NULL;
	if (!(m = calloc(1, sizeof *m))) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	m->refs = 1;
	for (unsigned i = 0; i < n; i++) {
		struct guest_region *g = &m->regions[i];
		size_t len = (size_t)(regions[i].mmap_offset + regions[i].memory_size);
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fds[i], 0);

		if (p == MAP_FAILED) {
			snprintf(err, errlen, "region %u: mmap of 0x%zx bytes: %s", i, len, strerror(errno));
			guest_memory_unref(m);
			return NULL;
		}
		g->d = regions[i];
		g->map = p;
		g->map_len = len;
		g->host = (unsigned char *)p + regions[i].mmap_offset;
		m->nregions++;
	}
	return m;
}

void guest_memory_ref(struct guest_memory *m)
{
	m->refs++;
}

void guest_memory_unref(struct guest_memory *m)
{
	if (!m || --m->refs > 0)
		return;
	for (unsigned i = 0; i < m->nregions; i++)
		munmap(m->regions[i].map, m->regions[i].map_len);
	free(m);
}

static void *translate(const struct guest_memory *m, uint64_t addr, uint64_t len, bool guest_physical)
{
	if (!m)
		return NULL;
	if (len == 0)
		len = 1;
	for (unsigned i = 0; i < m->nregions; i++) {
		const struct guest_region *g = &m->regions[i];
		uint64_t start = guest_physical ? g->d.guest_phys_addr : g->d.userspace_addr;

		/* Written so that nothing can overflow: addr - start is only
		 * computed once addr >= start. */
		if (addr >= start && addr - start < g->d.memory_size &&
		    len <= g->d.memory_size - (addr - start))
			return g->host + (addr - start);
	}
	return NULL;
}

void *guest_memory_gpa(const struct guest_memory *m, uint64_t addr, uint64_t len)
{
	return translate(m, addr, len, true);
}

void *guest_memory_uva(const struct guest_memory *m, uint64_t addr, uint64_t len)
{
	return translate(m, addr, len, false);
}
