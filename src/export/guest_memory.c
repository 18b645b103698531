// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "guest_memory.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* ---- the SIGBUS registry ----
 *
 * One slot per mapped region, shared by every thread. The handler may run
 * in any thread at any moment, so it takes no lock and calls nothing but
 * sigaction, raise and mmap (system calls on Linux). A slot moves
 *
 *   FREE -> CLAIMED (being filled) -> ACTIVE -> POISONING -> POISONED or FAILED
 *   ACTIVE, POISONED or FAILED -> CLAIMED -> FREE             (being unmapped)
 *
 * POISONING is the handler replacing the mapping; it already counts as
 * poisoned (another thread may read the zeros before the handler ends)
 * and unmapping waits for it to end, so the handler never maps over an
 * address that was given back. FAILED: the replacement failed; poisoned,
 * but a fault there is not ours to retry. */
enum { SLOT_FREE, SLOT_CLAIMED, SLOT_ACTIVE, SLOT_POISONING, SLOT_POISONED, SLOT_FAILED };

_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LONG_LOCK_FREE == 2,
	       "the SIGBUS handler needs lock-free atomics");

struct mapped_region {
	atomic_int state;
	atomic_ulong start;
	atomic_ulong len;
};

static struct mapped_region registry[GUEST_MEMORY_MAX_MAPPED];
static struct sigaction sigbus_before;      /* what SIGBUS did before us */
static atomic_int handler_lock;             /* held while (re)installing on_sigbus */

/* [start, start + len) holds addr; written so that nothing overflows. */
static bool holds(unsigned long start, unsigned long len, unsigned long addr)
{
	return addr >= start && addr - start < len;
}

/* Replace slot r's mapping with zero pages; false if that failed. */
static bool replace_with_zeros(struct mapped_region *r)
{
	void *p = mmap((void *)atomic_load(&r->start), atomic_load(&r->len), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);

	atomic_store(&r->state, p == MAP_FAILED ? SLOT_FAILED : SLOT_POISONED);
	return p != MAP_FAILED;
}

/* The fault at addr is in a registered region: poison it (or wait for the
 * thread that is doing so). False if addr is in no region we can mend. */
static bool mend_fault(unsigned long addr)
{
	for (unsigned i = 0; i < GUEST_MEMORY_MAX_MAPPED; i++) {
		struct mapped_region *r = &registry[i];
		int st = atomic_load(&r->state);
		unsigned long start = atomic_load(&r->start), len = atomic_load(&r->len);

		if (st < SLOT_ACTIVE || st == SLOT_FAILED || !holds(start, len, addr))
			continue;
		if (st == SLOT_ACTIVE && atomic_compare_exchange_strong(&r->state, &st, SLOT_POISONING)) {
			/* The slot may have been given back and taken again
			 * between the loads and the exchange. */
			if (atomic_load(&r->start) != start || atomic_load(&r->len) != len) {
				atomic_store(&r->state, SLOT_ACTIVE);
				continue;
			}
			return replace_with_zeros(r);
		}
		while ((st = atomic_load(&r->state)) == SLOT_POISONING)
			; /* another thread's handler is replacing it */
		return st == SLOT_POISONED;
	}
	return false;
}

static void on_sigbus(int sig, siginfo_t *si, void *ucontext)
{
	int saved_errno = errno;

	(void)ucontext;
	/* si_code > 0: the kernel's, for a fault at si_addr. The faulting
	 * access is retried on return, on zero pages now. */
	if (si->si_code > 0 && mend_fault((unsigned long)si->si_addr)) {
		errno = saved_errno;
		return;
	}
	/* Not guest memory: restore what was there, so that the access faults
	 * again into it (or a sent signal is delivered to it) as without us. */
	sigaction(sig, &sigbus_before, NULL);
	if (si->si_code <= 0)
		raise(sig);
	errno = saved_errno;
}

/* Install on_sigbus unless it is what SIGBUS does now. Checked at every
 * mapping, not once: whoever set SIGBUS after us (a test harness, a
 * library) is then chained to, not lost. */
static int ensure_handler(void)
{
	struct sigaction now, sa;
	int rc = 0, unlocked = 0;

	while (!atomic_compare_exchange_weak(&handler_lock, &unlocked, 1))
		unlocked = 0;
	if (sigaction(SIGBUS, NULL, &now) != 0) {
		rc = -1;
	} else if (!(now.sa_flags & SA_SIGINFO) || now.sa_sigaction != on_sigbus) {
		memset(&sa, 0, sizeof sa);
		sa.sa_sigaction = on_sigbus;
		sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
		sigemptyset(&sa.sa_mask);
		rc = sigaction(SIGBUS, &sa, &sigbus_before);
	}
	atomic_store(&handler_lock, 0);
	return rc;
}

/* A slot for [start, start + len), or -1 if all are taken. */
static int register_mapping(void *start, size_t len)
{
	for (int i = 0; i < GUEST_MEMORY_MAX_MAPPED; i++) {
		int expected = SLOT_FREE;

		if (!atomic_compare_exchange_strong(&registry[i].state, &expected, SLOT_CLAIMED))
			continue;
		atomic_store(&registry[i].start, (unsigned long)start);
		atomic_store(&registry[i].len, (unsigned long)len);
		atomic_store(&registry[i].state, SLOT_ACTIVE);
		return i;
	}
	return -1;
}

/* Before the munmap: after this no handler touches the address range. */
static void unregister_mapping(int i)
{
	struct mapped_region *r;
	int st;

	if (i < 0)
		return;
	r = &registry[i];
	st = atomic_load(&r->state);
	for (;;) {
		if (st == SLOT_POISONING)
			st = atomic_load(&r->state); /* a handler is at work */
		else if (atomic_compare_exchange_weak(&r->state, &st, SLOT_CLAIMED))
			break;
	}
	atomic_store(&r->start, 0);
	atomic_store(&r->len, 0);
	atomic_store(&r->state, SLOT_FREE);
}

static bool slot_poisoned(int i)
{
	int st = i >= 0 ? atomic_load(&registry[i].state) : SLOT_FREE;
	return st == SLOT_POISONING || st == SLOT_POISONED || st == SLOT_FAILED;
}

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
	if (ensure_handler() != 0) {
		snprintf(err, errlen, "cannot install the SIGBUS handler: %s", strerror(errno));
		return NULL;
	}
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
		if ((g->registry_slot = register_mapping(p, len)) < 0) {
			snprintf(err, errlen, "region %u: %d guest memory regions are mapped already, the most "
				 "this process tracks", i, GUEST_MEMORY_MAX_MAPPED);
			munmap(p, len);
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
	for (unsigned i = 0; i < m->nregions; i++) {
		unregister_mapping(m->regions[i].registry_slot);
		munmap(m->regions[i].map, m->regions[i].map_len);
	}
	free(m);
}

bool guest_memory_poisoned(const struct guest_memory *m)
{
	for (unsigned i = 0; m && i < m->nregions; i++)
		if (slot_poisoned(m->regions[i].registry_slot))
			return true;
	return false;
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
