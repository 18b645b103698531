// SPDX-License-Identifier: MIT
/*
 * Unit tests: src/export/virtqueue.c, the device side of a split virtqueue
 * over an untrusted guest's memory.
 *
 * The guest memory is one memfd region, as a vhost-user front end would
 * share it. The test plays the guest through a mapping of its own (the
 * "guest view"), separate from the one guest_memory_map made: it writes
 * descriptors, the available ring and the event indexes there and reads the
 * used ring back, and the queue only ever sees them through guest memory.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "guest_memory.h"
#include "virtqueue.h"

/* The guest's RAM: one region of 256 KiB. */
#define GPA 0x40000000ull
#define UVA 0x7f1200000000ull
#define MEM_SIZE 0x40000ull
/* Where the guest puts things, as offsets into its RAM. The rings' slots
 * fit a queue of 2048 entries. */
#define DESC_OFF 0x0ull
#define AVAIL_OFF 0x10000ull
#define USED_OFF 0x14000ull
#define DATA_OFF 0x20000ull     /* buffers and indirect tables from here */

struct fx {
	int fd;
	struct guest_memory *m;
	unsigned char *g;           /* the guest's view of its RAM */
	struct virtqueue vq;
	uint16_t avail_idx;         /* the guest's copy of avail->idx */
};

static struct vring_desc *gdesc(struct fx *f, unsigned i)
{
	return (struct vring_desc *)(f->g + DESC_OFF) + i;
}

static struct vring_avail *gavail(struct fx *f)
{
	return (struct vring_avail *)(f->g + AVAIL_OFF);
}

static struct vring_used *gused(struct fx *f)
{
	return (struct vring_used *)(f->g + USED_OFF);
}

static uint16_t *gused_event(struct fx *f)
{
	return &gavail(f)->ring[f->vq.num];
}

static uint16_t *gavail_event(struct fx *f)
{
	return (uint16_t *)&gused(f)->ring[f->vq.num];
}

static void set_desc(struct vring_desc *d, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

/* Descriptor i of the queue's table. */
static void desc(struct fx *f, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	set_desc(gdesc(f, i), addr, len, flags, next);
}

/* Make head available, the way a driver does: slot, then index. */
static void make_available(struct fx *f, uint16_t head)
{
	gavail(f)->ring[f->avail_idx & (f->vq.num - 1)] = head;
	f->avail_idx++;
	__atomic_store_n(&gavail(f)->idx, f->avail_idx, __ATOMIC_RELEASE);
}

static void set_avail_idx(struct fx *f, uint16_t idx)
{
	f->avail_idx = idx;
	__atomic_store_n(&gavail(f)->idx, idx, __ATOMIC_RELEASE);
}

/* Host pointer for guest-physical off (what a good iovec must point at). */
static void *host(struct fx *f, uint64_t off)
{
	return guest_memory_gpa(f->m, GPA + off, 1);
}

static void start_queue(struct fx *f, unsigned num, bool event_idx, bool indirect)
{
	memset(&f->vq, 0, sizeof f->vq);
	f->vq.index = 3;
	f->vq.num = num;
	f->vq.desc_uva = UVA + DESC_OFF;
	f->vq.avail_uva = UVA + AVAIL_OFF;
	f->vq.used_uva = UVA + USED_OFF;
	f->vq.addr_set = true;
	f->vq.event_idx = event_idx;
	f->vq.indirect = indirect;
	f->avail_idx = 0;
	if (!vq_map_rings(&f->vq, f->m))
		fail_msg("vq_map_rings: %s", f->vq.broken_reason);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	struct guest_region_desc r = {
		.guest_phys_addr = GPA, .memory_size = MEM_SIZE, .userspace_addr = UVA, .mmap_offset = 0,
	};
	char err[256];

	if (!f)
		return -1;
	f->fd = memfd_create("test-virtqueue", MFD_CLOEXEC);
	if (f->fd < 0 || ftruncate(f->fd, (off_t)MEM_SIZE) != 0)
		return -1;
	f->m = guest_memory_map(&r, 1, &f->fd, err, sizeof err);
	if (!f->m) {
		fprintf(stderr, "setup: %s\n", err);
		return -1;
	}
	f->g = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, 0);
	if (f->g == MAP_FAILED)
		return -1;
	start_queue(f, 16, false, false);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	munmap(f->g, MEM_SIZE);
	guest_memory_unref(f->m);
	close(f->fd);
	free(f);
	return 0;
}

static void assert_contains(const char *s, const char *want)
{
	if (!strstr(s, want))
		fail_msg("\"%s\" does not say \"%s\"", s, want);
}

/* vq_pop must return NULL and break the queue for a reason holding want. */
static void expect_broken(struct fx *f, const char *want)
{
	struct vq_elem *e = vq_pop(&f->vq, f->m);

	if (e) {
		free(e);
		fail_msg("vq_pop took a request that should break the queue (%s)", want);
	}
	assert_true(f->vq.broken);
	assert_contains(f->vq.broken_reason, want);
	/* A broken queue looks at nothing more. */
	assert_int_equal(vq_available(&f->vq), 0);
	assert_null(vq_pop(&f->vq, f->m));
}

static struct vq_elem *expect_elem(struct fx *f)
{
	struct vq_elem *e = vq_pop(&f->vq, f->m);

	if (!e)
		fail_msg("vq_pop: nothing (%s)", f->vq.broken ? f->vq.broken_reason : "not broken");
	return e;
}

static void assert_iov(const struct vq_elem *e, unsigned i, void *base, size_t len)
{
	assert_true(i < e->nout + e->nin);
	assert_ptr_equal(e->iov[i].iov_base, base);
	assert_int_equal(e->iov[i].iov_len, len);
}

/* ---- vq_map_rings ---- */

static void test_map_rings(void **state)
{
	struct fx *f = *state;

	assert_ptr_equal(f->vq.desc, guest_memory_uva(f->m, UVA + DESC_OFF, 1));
	assert_ptr_equal(f->vq.avail, guest_memory_uva(f->m, UVA + AVAIL_OFF, 1));
	assert_ptr_equal(f->vq.used, guest_memory_uva(f->m, UVA + USED_OFF, 1));
	/* Each is the guest's byte: what the guest writes, the queue sees. */
	gdesc(f, 5)->len = 0x1234;
	assert_int_equal(f->vq.desc[5].len, 0x1234);
}

/* A region whose mmap_offset is odd puts aligned front-end addresses at
 * odd host addresses, where the rings' atomic accesses must not go. */
static void test_map_rings_odd_mmap_offset(void **state)
{
	int fd = memfd_create("odd-offset", MFD_CLOEXEC);
	struct guest_region_desc r = { .guest_phys_addr = 0, .memory_size = 0x10000,
				       .userspace_addr = 0x7f0000000000ull, .mmap_offset = 1 };
	struct virtqueue vq = { .num = 16, .addr_set = true, .desc_uva = 0x7f0000000000ull,
				.avail_uva = 0x7f0000001000ull, .used_uva = 0x7f0000002000ull };
	struct guest_memory *m;
	char err[256];

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 0x11000), 0);
	m = guest_memory_map(&r, 1, &fd, err, sizeof err);
	assert_non_null(m);
	assert_false(vq_map_rings(&vq, m));
	assert_non_null(strstr(vq.broken_reason, "misaligned"));
	assert_null(vq.desc);
	assert_null(vq.avail);
	assert_null(vq.used);
	vq_set_notification(&vq, false); /* must not touch anything */
	guest_memory_unref(m);
	close(fd);
}

static void test_map_rings_not_ready(void **state)
{
	struct fx *f = *state;

	f->vq.addr_set = false;
	assert_false(vq_map_rings(&f->vq, f->m));
	assert_null(f->vq.desc);
	assert_null(f->vq.avail);
	assert_null(f->vq.used);
	f->vq.addr_set = true;
	f->vq.num = 0;
	assert_false(vq_map_rings(&f->vq, f->m));
	assert_null(f->vq.desc);
	/* No memory table. */
	f->vq.num = 16;
	assert_false(vq_map_rings(&f->vq, NULL));
	assert_null(f->vq.desc);
}

static void expect_map_fails(struct fx *f, uint64_t desc_off, uint64_t avail_off, uint64_t used_off,
			     const char *want)
{
	f->vq.desc_uva = UVA + desc_off;
	f->vq.avail_uva = UVA + avail_off;
	f->vq.used_uva = UVA + used_off;
	assert_false(vq_map_rings(&f->vq, f->m));
	assert_null(f->vq.desc);
	assert_null(f->vq.avail);
	assert_null(f->vq.used);
	assert_contains(f->vq.broken_reason, want);
	/* Not mapped is not broken: the front end may place the rings again. */
	assert_false(f->vq.broken);
	assert_int_equal(vq_available(&f->vq), 0);
	assert_null(vq_pop(&f->vq, f->m));
}

static void test_map_rings_misaligned(void **state)
{
	struct fx *f = *state;

	expect_map_fails(f, DESC_OFF + 8, AVAIL_OFF, USED_OFF, "misaligned");
	expect_map_fails(f, DESC_OFF + 1, AVAIL_OFF, USED_OFF, "are misaligned");
	expect_map_fails(f, DESC_OFF, AVAIL_OFF + 1, USED_OFF, "misaligned");
	expect_map_fails(f, DESC_OFF, AVAIL_OFF, USED_OFF + 2, "misaligned");
	assert_contains(f->vq.broken_reason, "queue 3");
	/* The smallest alignments the split ring asks for are enough. */
	f->vq.desc_uva = UVA + DESC_OFF + 16;
	f->vq.avail_uva = UVA + AVAIL_OFF + 2;
	f->vq.used_uva = UVA + USED_OFF + 4;
	assert_true(vq_map_rings(&f->vq, f->m));
}

static void test_map_rings_outside(void **state)
{
	struct fx *f = *state;
	const uint64_t n = f->vq.num;

	/* Each ring one slot (or its event index) past the region's end. */
	expect_map_fails(f, MEM_SIZE - 16 * n + 16, AVAIL_OFF, USED_OFF, "ring desc at 0x");
	expect_map_fails(f, DESC_OFF, MEM_SIZE - (6 + 2 * n) + 2, USED_OFF, "ring avail at 0x");
	expect_map_fails(f, DESC_OFF, AVAIL_OFF, MEM_SIZE - (6 + 8 * n) + 2, "ring used at 0x");
	assert_contains(f->vq.broken_reason, "is not in guest memory");
	/* Wholly outside, or at the guest-physical address instead. */
	expect_map_fails(f, MEM_SIZE, AVAIL_OFF, USED_OFF, "desc");
	f->vq.desc_uva = GPA + DESC_OFF;
	f->vq.avail_uva = UVA + AVAIL_OFF;
	f->vq.used_uva = UVA + USED_OFF;
	assert_false(vq_map_rings(&f->vq, f->m));
	/* Exactly at the end (the avail ring with used_event, the desc table). */
	f->vq.desc_uva = UVA + MEM_SIZE - 16 * n;
	f->vq.avail_uva = UVA + MEM_SIZE - (6 + 2 * n);
	f->vq.used_uva = UVA + USED_OFF;
	assert_true(vq_map_rings(&f->vq, f->m));
}

/* ---- vq_available ---- */

static void test_available(void **state)
{
	struct fx *f = *state;

	assert_int_equal(vq_available(&f->vq), 0);
	make_available(f, 0);
	make_available(f, 1);
	make_available(f, 2);
	assert_int_equal(vq_available(&f->vq), 3);
	/* A whole queue's worth is fine. */
	set_avail_idx(f, 16);
	assert_int_equal(vq_available(&f->vq), 16);
	assert_false(f->vq.broken);
}

static void test_available_wraps(void **state)
{
	struct fx *f = *state;

	/* SET_VRING_BASE near the 16-bit end. */
	f->vq.last_avail = 0xfffe;
	f->vq.used_idx = 0xfffe;
	set_avail_idx(f, 0xfffe);
	assert_int_equal(vq_available(&f->vq), 0);
	set_avail_idx(f, 0x0001);
	assert_int_equal(vq_available(&f->vq), 3);
	set_avail_idx(f, 0x000e);
	assert_int_equal(vq_available(&f->vq), 16);
	assert_false(f->vq.broken);
}

static void test_available_jump(void **state)
{
	struct fx *f = *state;

	set_avail_idx(f, 17);
	assert_int_equal(vq_available(&f->vq), 0);
	assert_true(f->vq.broken);
	assert_contains(f->vq.broken_reason, "available index moved from 0 to 17");
	assert_contains(f->vq.broken_reason, "queue 3");
	/* Going back to a sane index does not mend it. */
	set_avail_idx(f, 1);
	assert_int_equal(vq_available(&f->vq), 0);
	assert_null(vq_pop(&f->vq, f->m));
}

static void test_available_backwards(void **state)
{
	struct fx *f = *state;

	/* An index behind last_avail is a jump of almost 2^16 forward. */
	f->vq.last_avail = 10;
	set_avail_idx(f, 9);
	assert_int_equal(vq_available(&f->vq), 0);
	assert_true(f->vq.broken);
}

/* ---- vq_pop ---- */

static void test_pop_empty(void **state)
{
	struct fx *f = *state;

	assert_null(vq_pop(&f->vq, f->m));
	assert_false(f->vq.broken);
}

/* A virtio-blk read: header, data, status. */
static void test_pop_simple_chain(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	desc(f, 4, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 9);
	desc(f, 9, GPA + DATA_OFF + 0x1000, 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	desc(f, 2, GPA + DATA_OFF + 0x100, 1, VRING_DESC_F_WRITE, 0);
	make_available(f, 4);

	e = expect_elem(f);
	assert_int_equal(e->head, 4);
	assert_int_equal(e->nout, 1);
	assert_int_equal(e->nin, 2);
	assert_false(e->bad);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	assert_iov(e, 1, host(f, DATA_OFF + 0x1000), 4096);
	assert_iov(e, 2, host(f, DATA_OFF + 0x100), 1);
	assert_int_equal(f->vq.last_avail, 1);
	assert_int_equal(vq_available(&f->vq), 0);
	assert_null(vq_pop(&f->vq, f->m));
	free(e);
}

/* A write: header and data device-readable, status device-writable; then a
 * lone descriptor; taken in the order they were made available. */
static void test_pop_in_order(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + DATA_OFF + 0x1000, 512, VRING_DESC_F_NEXT, 2);
	desc(f, 2, GPA + DATA_OFF + 0x100, 1, VRING_DESC_F_WRITE, 0);
	desc(f, 15, GPA + DATA_OFF + 0x2000, 100, 0, 0);
	make_available(f, 15);
	make_available(f, 0);

	e = expect_elem(f);
	assert_int_equal(e->head, 15);
	assert_int_equal(e->nout, 1);
	assert_int_equal(e->nin, 0);
	assert_iov(e, 0, host(f, DATA_OFF + 0x2000), 100);
	free(e);

	e = expect_elem(f);
	assert_int_equal(e->head, 0);
	assert_int_equal(e->nout, 2);
	assert_int_equal(e->nin, 1);
	assert_iov(e, 1, host(f, DATA_OFF + 0x1000), 512);
	free(e);
	assert_null(vq_pop(&f->vq, f->m));
	assert_false(f->vq.broken);
}

/* What the device was given is a copy: the guest rewriting its descriptors
 * afterwards changes nothing in the element. */
static void test_pop_copies(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + DATA_OFF + 16, 32, VRING_DESC_F_WRITE, 0);
	make_available(f, 0);
	e = expect_elem(f);
	desc(f, 0, GPA + MEM_SIZE, 0xffffffff, VRING_DESC_F_NEXT, 1);
	desc(f, 1, 0, 0xffffffff, VRING_DESC_F_WRITE, 0);
	gavail(f)->ring[0] = 0xffff;
	assert_int_equal(e->head, 0);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	assert_iov(e, 1, host(f, DATA_OFF + 16), 32);
	free(e);
}

/* A chain of exactly the queue's size is allowed. */
static void test_pop_chain_whole_queue(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	for (unsigned i = 0; i < 16; i++)
		desc(f, i, GPA + DATA_OFF + i * 64, 64, i < 8 ? 0 : VRING_DESC_F_WRITE,
		     (uint16_t)((i + 1) % 16));
	for (unsigned i = 0; i < 15; i++)
		gdesc(f, i)->flags |= VRING_DESC_F_NEXT;
	make_available(f, 0);
	e = expect_elem(f);
	assert_int_equal(e->nout, 8);
	assert_int_equal(e->nin, 8);
	for (unsigned i = 0; i < 16; i++)
		assert_iov(e, i, host(f, DATA_OFF + i * 64), 64);
	free(e);
}

static void test_pop_head_out_of_range(void **state)
{
	struct fx *f = *state;

	make_available(f, 16);
	expect_broken(f, "available entry 0 names descriptor 16, past the queue's 16");
}

static void test_pop_next_out_of_range(void **state)
{
	struct fx *f = *state;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 16);
	make_available(f, 0);
	expect_broken(f, "chain from 0 names descriptor 16, past the queue's 16 entries");
	/* The request was not taken. */
	assert_int_equal(f->vq.last_avail, 0);
}

static void test_pop_next_far_out_of_range(void **state)
{
	struct fx *f = *state;

	desc(f, 3, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 0xffff);
	make_available(f, 3);
	expect_broken(f, "names descriptor 65535");
}

static void test_pop_loop(void **state)
{
	struct fx *f = *state;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 2);
	desc(f, 2, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 0);
	make_available(f, 0);
	expect_broken(f, "chain from 0 is longer than 16 descriptors");
}

static void test_pop_self_loop(void **state)
{
	struct fx *f = *state;

	desc(f, 7, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 7);
	make_available(f, 7);
	expect_broken(f, "longer than");
}

/* Every descriptor used once, then one more: longer than the queue. */
static void test_pop_chain_longer_than_queue(void **state)
{
	struct fx *f = *state;

	for (unsigned i = 0; i < 16; i++)
		desc(f, i, GPA + DATA_OFF, 8, VRING_DESC_F_NEXT, (uint16_t)(i + 1));
	gdesc(f, 15)->next = 3; /* back into the chain */
	make_available(f, 0);
	expect_broken(f, "is longer than 16 descriptors (a loop?)");
}

static void test_pop_readable_after_writable(void **state)
{
	struct fx *f = *state;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + DATA_OFF + 16, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	desc(f, 2, GPA + DATA_OFF + 32, 16, 0, 0);
	make_available(f, 0);
	expect_broken(f, "device-readable descriptor after a device-writable one");
}

/* Even a zero-length readable descriptor may not follow a writable one. */
static void test_pop_readable_after_writable_empty(void **state)
{
	struct fx *f = *state;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	desc(f, 1, 0, 0, 0, 0);
	make_available(f, 0);
	expect_broken(f, "device-readable descriptor after");
}

static void test_pop_bad_buffer(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	/* Data beyond the end of guest memory. */
	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + MEM_SIZE, 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	desc(f, 2, GPA + DATA_OFF + 16, 1, VRING_DESC_F_WRITE, 0);
	make_available(f, 0);
	/* Then a good request. */
	desc(f, 5, GPA + DATA_OFF + 32, 16, VRING_DESC_F_NEXT, 6);
	desc(f, 6, GPA + DATA_OFF + 48, 1, VRING_DESC_F_WRITE, 0);
	make_available(f, 5);

	e = expect_elem(f);
	assert_int_equal(e->head, 0);
	assert_true(e->bad);
	assert_contains(e->bad_reason, "buffer 0x40040000 (4096 bytes) is not in guest memory");
	assert_int_equal(e->nout, 1);
	assert_int_equal(e->nin, 2);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	assert_iov(e, 1, NULL, 4096);
	assert_iov(e, 2, host(f, DATA_OFF + 16), 1);
	assert_false(f->vq.broken);
	free(e);

	e = expect_elem(f);
	assert_int_equal(e->head, 5);
	assert_false(e->bad);
	free(e);
	assert_false(f->vq.broken);
}

static void test_pop_bad_buffers_kinds(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;
	const uint64_t bad[] = {
		GPA + MEM_SIZE - 100,   /* straddles the end (200 bytes) */
		GPA - 100,              /* straddles the start */
		0,                      /* below */
		UVA + DATA_OFF,         /* the front end's address, not the guest's */
		UINT64_MAX - 50,        /* would wrap */
	};

	for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		desc(f, i, bad[i], 200, 0, 0);
		make_available(f, (uint16_t)i);
	}
	for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		e = expect_elem(f);
		assert_int_equal(e->head, i);
		assert_true(e->bad);
		assert_iov(e, 0, NULL, 200);
		free(e);
	}
	assert_false(f->vq.broken);
}

/* The first bad segment is the one reported; every bad one is NULL. */
static void test_pop_bad_reason_first(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	desc(f, 0, 0x1000, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, 0x2000, 16, VRING_DESC_F_WRITE, 0);
	make_available(f, 0);
	e = expect_elem(f);
	assert_true(e->bad);
	assert_contains(e->bad_reason, "buffer 0x1000 (16 bytes)");
	assert_null(e->iov[0].iov_base);
	assert_null(e->iov[1].iov_base);
	free(e);
}

static void test_pop_zero_length_skipped(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, 0xdead0000, 0, VRING_DESC_F_NEXT, 2); /* outside, but empty */
	desc(f, 2, GPA + DATA_OFF + 0x1000, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 3);
	desc(f, 3, GPA + MEM_SIZE, 0, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 4);
	desc(f, 4, GPA + DATA_OFF + 16, 1, VRING_DESC_F_WRITE, 0);
	make_available(f, 0);
	e = expect_elem(f);
	assert_false(e->bad);
	assert_int_equal(e->nout, 1);
	assert_int_equal(e->nin, 2);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	assert_iov(e, 1, host(f, DATA_OFF + 0x1000), 512);
	assert_iov(e, 2, host(f, DATA_OFF + 16), 1);
	free(e);

	/* A chain of nothing but empty descriptors: an element with no segment. */
	desc(f, 8, 0, 0, 0, 0);
	make_available(f, 8);
	e = expect_elem(f);
	assert_int_equal(e->head, 8);
	assert_int_equal(e->nout + e->nin, 0);
	assert_false(e->bad);
	free(e);
}

/* ---- indirect descriptors ---- */

#define TABLE_OFF (DATA_OFF + 0x8000)

static struct vring_desc *gtable(struct fx *f)
{
	return (struct vring_desc *)(f->g + TABLE_OFF);
}

static void test_pop_indirect(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;
	struct vring_desc *t = gtable(f);

	start_queue(f, 16, false, true);
	/* The table's order differs from the chain's: 0 -> 2 -> 1. */
	set_desc(&t[0], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 2);
	set_desc(&t[2], GPA + DATA_OFF + 0x1000, 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	set_desc(&t[1], GPA + DATA_OFF + 16, 1, VRING_DESC_F_WRITE, 0);
	/* The head's WRITE flag means nothing on an indirect descriptor. */
	desc(f, 6, GPA + TABLE_OFF, 3 * 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE, 0);
	make_available(f, 6);

	e = expect_elem(f);
	assert_int_equal(e->head, 6);
	assert_false(e->bad);
	assert_int_equal(e->nout, 1);
	assert_int_equal(e->nin, 2);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	assert_iov(e, 1, host(f, DATA_OFF + 0x1000), 4096);
	assert_iov(e, 2, host(f, DATA_OFF + 16), 1);
	free(e);
	assert_false(f->vq.broken);
}

/* The table is copied once: rewriting it after the pop changes nothing. */
static void test_pop_indirect_private_copy(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;
	struct vring_desc *t = gtable(f);

	start_queue(f, 16, false, true);
	set_desc(&t[0], GPA + DATA_OFF, 16, 0, 0);
	desc(f, 0, GPA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	e = expect_elem(f);
	set_desc(&t[0], 0, 99, VRING_DESC_F_WRITE, 0);
	assert_int_equal(e->nout, 1);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	free(e);
}

/* An indirect table may be longer than the queue, up to VQ_MAX_SEGMENTS. */
static void test_pop_indirect_max(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;
	struct vring_desc *t = gtable(f);

	start_queue(f, 4, false, true);
	for (unsigned i = 0; i < VQ_MAX_SEGMENTS; i++)
		set_desc(&t[i], GPA + DATA_OFF + i, 1,
			 i + 1 < VQ_MAX_SEGMENTS ? VRING_DESC_F_NEXT : VRING_DESC_F_WRITE, (uint16_t)(i + 1));
	desc(f, 0, GPA + TABLE_OFF, VQ_MAX_SEGMENTS * 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	e = expect_elem(f);
	assert_int_equal(e->nout, VQ_MAX_SEGMENTS - 1);
	assert_int_equal(e->nin, 1);
	assert_iov(e, VQ_MAX_SEGMENTS - 1, host(f, DATA_OFF + VQ_MAX_SEGMENTS - 1), 1);
	free(e);

	/* One entry more is refused. */
	desc(f, 1, GPA + TABLE_OFF, (VQ_MAX_SEGMENTS + 1) * 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 1);
	expect_broken(f, "indirect table of 16400 bytes");
}

static void test_pop_indirect_not_negotiated(void **state)
{
	struct fx *f = *state;

	set_desc(&gtable(f)[0], GPA + DATA_OFF, 16, 0, 0);
	desc(f, 2, GPA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 2);
	expect_broken(f, "descriptor 2 is indirect, which was not negotiated");
}

static void test_pop_indirect_bad_length(void **state)
{
	struct fx *f = *state;
	const uint32_t lens[] = { 0, 8, 17, 47, 0xfffffff0 };

	for (unsigned i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		start_queue(f, 16, false, true);
		memset(f->g + TABLE_OFF, 0, 64);
		desc(f, 0, GPA + TABLE_OFF, lens[i], VRING_DESC_F_INDIRECT, 0);
		make_available(f, 0);
		expect_broken(f, "indirect table of");
	}
}

static void test_pop_indirect_nested(void **state)
{
	struct fx *f = *state;
	struct vring_desc *t = gtable(f);

	start_queue(f, 16, false, true);
	set_desc(&t[0], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	set_desc(&t[1], GPA + TABLE_OFF, 32, VRING_DESC_F_INDIRECT, 0);
	desc(f, 0, GPA + TABLE_OFF, 32, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "holds an indirect descriptor inside an indirect table");
}

static void test_pop_indirect_nested_first(void **state)
{
	struct fx *f = *state;

	start_queue(f, 16, false, true);
	set_desc(&gtable(f)[0], GPA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT, 0);
	desc(f, 0, GPA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "inside an indirect table");
}

static void test_pop_indirect_with_next(void **state)
{
	struct fx *f = *state;

	start_queue(f, 16, false, true);
	set_desc(&gtable(f)[0], GPA + DATA_OFF, 16, 0, 0);
	desc(f, 0, GPA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + DATA_OFF, 1, VRING_DESC_F_WRITE, 0);
	make_available(f, 0);
	expect_broken(f, "indirect descriptor 0 also has NEXT");
}

/* An indirect descriptor anywhere but at the head of a direct chain. */
static void test_pop_indirect_after_head(void **state)
{
	struct fx *f = *state;

	start_queue(f, 16, false, true);
	set_desc(&gtable(f)[0], GPA + DATA_OFF, 16, 0, 0);
	desc(f, 0, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	desc(f, 1, GPA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "holds an indirect descriptor after its head");
}

static void test_pop_indirect_table_outside(void **state)
{
	struct fx *f = *state;

	start_queue(f, 16, false, true);
	desc(f, 0, GPA + MEM_SIZE - 32, 48, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "indirect table at 0x4003ffe0 (48 bytes) is not in guest memory");

	start_queue(f, 16, false, true);
	desc(f, 0, UVA + TABLE_OFF, 16, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "is not in guest memory");
}

static void test_pop_indirect_next_out_of_range(void **state)
{
	struct fx *f = *state;
	struct vring_desc *t = gtable(f);

	start_queue(f, 16, false, true);
	set_desc(&t[0], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	set_desc(&t[1], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 2);
	set_desc(&t[2], GPA + DATA_OFF, 16, 0, 0); /* in memory, but not in the table */
	desc(f, 0, GPA + TABLE_OFF, 32, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "names descriptor 2, past the indirect table's 2 entries");
}

static void test_pop_indirect_loop(void **state)
{
	struct fx *f = *state;
	struct vring_desc *t = gtable(f);

	start_queue(f, 16, false, true);
	set_desc(&t[0], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	set_desc(&t[1], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 0);
	desc(f, 0, GPA + TABLE_OFF, 32, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "is longer than 2 descriptors");
}

static void test_pop_indirect_readable_after_writable(void **state)
{
	struct fx *f = *state;
	struct vring_desc *t = gtable(f);

	start_queue(f, 16, false, true);
	set_desc(&t[0], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	set_desc(&t[1], GPA + DATA_OFF, 16, 0, 0);
	desc(f, 0, GPA + TABLE_OFF, 32, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	expect_broken(f, "device-readable descriptor after a device-writable one");
}

/* A bad buffer inside an indirect table spoils only its request. */
static void test_pop_indirect_bad_buffer(void **state)
{
	struct fx *f = *state;
	struct vring_desc *t = gtable(f);
	struct vq_elem *e;

	start_queue(f, 16, false, true);
	set_desc(&t[0], GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1);
	set_desc(&t[1], GPA + MEM_SIZE - 1, 2, VRING_DESC_F_WRITE, 0);
	desc(f, 0, GPA + TABLE_OFF, 32, VRING_DESC_F_INDIRECT, 0);
	make_available(f, 0);
	e = expect_elem(f);
	assert_true(e->bad);
	assert_iov(e, 0, host(f, DATA_OFF), 16);
	assert_iov(e, 1, NULL, 2);
	assert_false(f->vq.broken);
	free(e);
}

/*
 * A queue larger than VQ_MAX_SEGMENTS (vhost_user.c accepts up to 32768
 * entries): a two-descriptor chain whose second descriptor has an index of
 * 1024 or more is a valid request (the segment limit bounds a chain's
 * length, not its indices).
 */
static void test_pop_big_queue_high_next(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	start_queue(f, 2048, false, false);
	desc(f, 2000, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1500);
	desc(f, 1500, GPA + DATA_OFF + 16, 1, VRING_DESC_F_WRITE, 0);
	make_available(f, 2000);
	e = vq_pop(&f->vq, f->m);
	assert_non_null(e);
	assert_int_equal(e->head, 2000);
	assert_int_equal(e->nout, 1);
	assert_int_equal(e->nin, 1);
	assert_iov(e, 1, host(f, DATA_OFF + 16), 1);
	free(e);
}

/* Heads of 1024 and more in a big queue are fine on their own. */
static void test_pop_big_queue_high_head(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	start_queue(f, 2048, false, false);
	desc(f, 2047, GPA + DATA_OFF, 16, 0, 0);
	make_available(f, 2047);
	e = expect_elem(f);
	assert_int_equal(e->head, 2047);
	free(e);
	make_available(f, 2048);
	expect_broken(f, "names descriptor 2048, past the queue's 2048");
}

/* ---- vq_push ---- */

static void test_push(void **state)
{
	struct fx *f = *state;
	struct vring_used *u = gused(f);

	vq_push(&f->vq, 7, 513);
	assert_int_equal(u->idx, 1);
	assert_int_equal(u->ring[0].id, 7);
	assert_int_equal(u->ring[0].len, 513);
	vq_push(&f->vq, 3, 0);
	assert_int_equal(u->idx, 2);
	assert_int_equal(u->ring[1].id, 3);
	assert_int_equal(u->ring[1].len, 0);
	assert_int_equal(f->vq.used_idx, 2);
	/* The first slot is untouched. */
	assert_int_equal(u->ring[0].id, 7);
}

static void test_push_wraps(void **state)
{
	struct fx *f = *state;
	struct vring_used *u = gused(f);

	/* The ring slot wraps at num, the index at 2^16. */
	f->vq.used_idx = 0xfffe;
	*gavail_event(f) = 0x5555;
	vq_push(&f->vq, 1, 10);
	vq_push(&f->vq, 2, 20);
	vq_push(&f->vq, 3, 30);
	assert_int_equal(u->idx, 1);
	assert_int_equal(u->ring[14].id, 1);
	assert_int_equal(u->ring[15].id, 2);
	assert_int_equal(u->ring[15].len, 20);
	assert_int_equal(u->ring[0].id, 3);
	assert_int_equal(u->ring[0].len, 30);
	/* Nothing past the ring (avail_event) was written. */
	assert_int_equal(*gavail_event(f), 0x5555);
}

/* A whole round trip: pop, push, and the guest sees its head come back. */
static void test_pop_push(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	for (uint16_t i = 0; i < 16; i++) {
		desc(f, i, GPA + DATA_OFF + i * 16u, 16, VRING_DESC_F_WRITE, 0);
		make_available(f, (uint16_t)(15 - i));
	}
	for (unsigned i = 0; i < 16; i++) {
		e = expect_elem(f);
		memset(e->iov[0].iov_base, 0xa0 + (int)i, 16);
		vq_push(&f->vq, e->head, 16);
		free(e);
	}
	assert_null(vq_pop(&f->vq, f->m));
	assert_int_equal(gused(f)->idx, 16);
	for (unsigned i = 0; i < 16; i++) {
		assert_int_equal(gused(f)->ring[i].id, 15 - i);
		assert_int_equal(f->g[DATA_OFF + (15 - i) * 16], 0xa0 + i);
	}
}

/* ---- heads in flight ---- */

/* A one-descriptor request at head i (its own 16 bytes of data). */
static void lone_desc(struct fx *f, uint16_t i)
{
	desc(f, i, GPA + DATA_OFF + i * 16u, 16, VRING_DESC_F_WRITE, 0);
}

/* The guest makes a head available again while the device still holds
 * it: one request answered twice, and the way to have any number in
 * flight on a small queue. */
static void test_pop_head_in_flight_twice(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	lone_desc(f, 5);
	make_available(f, 5);
	make_available(f, 5);
	e = expect_elem(f);
	assert_int_equal(e->head, 5);
	assert_true(vq_head_in_flight(&f->vq, 5));
	assert_int_equal(f->vq.inflight, 1);
	expect_broken(f, "names descriptor 5, which is already in flight");
	assert_int_equal(f->vq.last_avail, 1);
	free(e);
}

/* Once pushed, or dropped, a head may come again. */
static void test_pop_head_again_after_push_or_drop(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	lone_desc(f, 3);
	for (unsigned round = 0; round < 6; round++) {
		make_available(f, 3);
		e = expect_elem(f);
		assert_int_equal(e->head, 3);
		assert_int_equal(f->vq.inflight, 1);
		if (round % 2)
			vq_drop(&f->vq, e->head);
		else
			vq_push(&f->vq, e->head, 16);
		assert_false(vq_head_in_flight(&f->vq, 3));
		assert_int_equal(f->vq.inflight, 0);
		free(e);
	}
	assert_false(f->vq.broken);
	assert_int_equal(gused(f)->idx, 3);  /* drops left the used ring alone */
}

/* Every head of the queue in flight: whatever the guest makes available
 * next names one of them. Heads that were answered cycle freely, and in
 * flight never exceeds the queue's size. */
static void test_inflight_at_most_queue_size(void **state)
{
	struct fx *f = *state;
	struct vq_elem *held[16];

	for (uint16_t i = 0; i < 16; i++) {
		lone_desc(f, i);
		make_available(f, i);
	}
	for (unsigned i = 0; i < 16; i++)
		held[i] = expect_elem(f);
	assert_int_equal(f->vq.inflight, 16);
	/* Answer four, and they come back, many times over. */
	for (unsigned round = 0; round < 40; round++) {
		for (unsigned k = 0; k < 4; k++) {
			vq_push(&f->vq, held[k]->head, 0);
			make_available(f, held[k]->head);
			free(held[k]);
		}
		for (unsigned k = 0; k < 4; k++)
			held[k] = expect_elem(f);
		assert_int_equal(f->vq.inflight, 16);
	}
	/* The one more: head 9 is still in flight. */
	make_available(f, 9);
	expect_broken(f, "which is already in flight (16 of the queue's 16 requests in flight)");
	assert_int_equal(f->vq.inflight, 16);
	for (unsigned i = 0; i < 16; i++)
		free(held[i]);
}

/* The device answering a head it does not hold is its own bug: the count
 * does not go below zero and no other head is released. */
static void test_push_head_not_in_flight(void **state)
{
	struct fx *f = *state;
	struct vq_elem *e;

	lone_desc(f, 2);
	make_available(f, 2);
	e = expect_elem(f);
	vq_push(&f->vq, 7, 0);
	vq_drop(&f->vq, 8);
	assert_int_equal(f->vq.inflight, 1);
	assert_true(vq_head_in_flight(&f->vq, 2));
	vq_push(&f->vq, 2, 0);
	vq_push(&f->vq, 2, 0);
	assert_int_equal(f->vq.inflight, 0);
	free(e);
}

/* A broken chain takes no head: nothing stays in flight for it. */
static void test_broken_chain_holds_no_head(void **state)
{
	struct fx *f = *state;

	desc(f, 1, GPA + DATA_OFF, 16, VRING_DESC_F_NEXT, 1); /* a loop */
	make_available(f, 1);
	expect_broken(f, "loop");
	assert_false(vq_head_in_flight(&f->vq, 1));
	assert_int_equal(f->vq.inflight, 0);
}

/* In flight is tracked per head up to the largest queue. */
static void test_inflight_big_queue(void **state)
{
	struct fx *f = *state;
	struct vq_elem *a, *b;

	start_queue(f, 2048, false, false);
	lone_desc(f, 2047);
	lone_desc(f, 64);
	make_available(f, 2047);
	make_available(f, 64);
	a = expect_elem(f);
	b = expect_elem(f);
	assert_true(vq_head_in_flight(&f->vq, 2047));
	assert_true(vq_head_in_flight(&f->vq, 64));
	assert_false(vq_head_in_flight(&f->vq, 63));
	assert_false(vq_head_in_flight(&f->vq, 65));
	make_available(f, 2047);
	expect_broken(f, "names descriptor 2047, which is already in flight");
	free(a);
	free(b);
}

/* ---- vq_should_notify ---- */

static void test_notify_flags(void **state)
{
	struct fx *f = *state;

	vq_push(&f->vq, 0, 0);
	gavail(f)->flags = 0;
	assert_true(vq_should_notify(&f->vq));
	gavail(f)->flags = VRING_AVAIL_F_NO_INTERRUPT;
	vq_push(&f->vq, 1, 0);
	assert_false(vq_should_notify(&f->vq));
	gavail(f)->flags = 0;
	assert_true(vq_should_notify(&f->vq));
	/* used_event means nothing without EVENT_IDX. */
	*gused_event(f) = 100;
	assert_true(vq_should_notify(&f->vq));
}

/* The reference: virtio 1.x 2.7.7.2 / Linux's vring_need_event. */
static bool need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

static void test_notify_event_idx(void **state)
{
	struct fx *f = *state;

	start_queue(f, 16, true, false);
	/* The first notification after (re)start always goes out: there is
	 * no record of what the guest last heard. */
	*gused_event(f) = 1000;
	vq_push(&f->vq, 0, 0);
	assert_true(vq_should_notify(&f->vq));
	assert_true(f->vq.signalled_used_valid);
	assert_int_equal(f->vq.signalled_used, 1);

	/* Guest wants to hear when entry 1 is used (used_event = 1). */
	*gused_event(f) = 1;
	vq_push(&f->vq, 1, 0);  /* used_idx 2: entry 1 used */
	assert_true(vq_should_notify(&f->vq));
	vq_push(&f->vq, 2, 0);  /* used_idx 3: already told */
	assert_false(vq_should_notify(&f->vq));
	/* Nothing new: no notification, whatever used_event says. */
	*gused_event(f) = 2;
	assert_false(vq_should_notify(&f->vq));
	/* used_event ahead: not yet; then passed in a batch. */
	*gused_event(f) = 5;
	vq_push(&f->vq, 3, 0);  /* 4 */
	assert_false(vq_should_notify(&f->vq));
	vq_push(&f->vq, 4, 0);  /* 5 */
	vq_push(&f->vq, 5, 0);  /* 6: entry 5 used */
	vq_push(&f->vq, 6, 0);  /* 7 */
	assert_true(vq_should_notify(&f->vq));
	assert_int_equal(f->vq.signalled_used, 7);
	/* The NO_INTERRUPT flag is not looked at with EVENT_IDX. */
	gavail(f)->flags = VRING_AVAIL_F_NO_INTERRUPT;
	*gused_event(f) = 7;
	vq_push(&f->vq, 7, 0);
	assert_true(vq_should_notify(&f->vq));
}

static void test_notify_event_idx_table(void **state)
{
	struct fx *f = *state;
	const uint16_t olds[] = { 0, 1, 100, 0x7fff, 0xfff0, 0xfffe, 0xffff };
	const uint16_t steps[] = { 1, 2, 3, 16, 40 };
	const int16_t deltas[] = { -3, -1, 0, 1, 2, 15, 16, 39, 40, 41, 0x4000 };

	start_queue(f, 16, true, false);
	for (unsigned a = 0; a < sizeof olds / sizeof olds[0]; a++)
		for (unsigned b = 0; b < sizeof steps / sizeof steps[0]; b++)
			for (unsigned c = 0; c < sizeof deltas / sizeof deltas[0]; c++) {
				uint16_t old = olds[a], now = (uint16_t)(old + steps[b]);
				uint16_t event = (uint16_t)(old + deltas[c]);

				f->vq.used_idx = now;
				f->vq.signalled_used = old;
				f->vq.signalled_used_valid = true;
				*gused_event(f) = event;
				if (vq_should_notify(&f->vq) != need_event(event, now, old))
					fail_msg("old %u now %u used_event %u: expected %d", old, now, event,
						 need_event(event, now, old));
				assert_int_equal(f->vq.signalled_used, now);
			}
}

/* ---- vq_set_notification ---- */

static void test_set_notification_event_idx(void **state)
{
	struct fx *f = *state;

	start_queue(f, 16, true, false);
	gused(f)->flags = 0;
	*gavail_event(f) = 0x4444;
	f->vq.last_avail = 7;
	vq_set_notification(&f->vq, true);
	assert_int_equal(*gavail_event(f), 7);
	assert_int_equal(gused(f)->flags, 0);
	/* Disabling leaves avail_event and the flags alone. */
	f->vq.last_avail = 9;
	vq_set_notification(&f->vq, false);
	assert_int_equal(*gavail_event(f), 7);
	assert_int_equal(gused(f)->flags, 0);
	/* It follows last_avail, across the wrap. */
	f->vq.last_avail = 0xffff;
	vq_set_notification(&f->vq, true);
	assert_int_equal(*gavail_event(f), 0xffff);
	/* The last used slot is not touched. */
	assert_int_equal(gused(f)->ring[15].id, 0);
}

static void test_set_notification_flags(void **state)
{
	struct fx *f = *state;

	*gavail_event(f) = 0x4444;
	f->vq.last_avail = 5;
	vq_set_notification(&f->vq, false);
	assert_int_equal(gused(f)->flags, VRING_USED_F_NO_NOTIFY);
	vq_set_notification(&f->vq, true);
	assert_int_equal(gused(f)->flags, 0);
	vq_set_notification(&f->vq, false);
	assert_int_equal(gused(f)->flags, VRING_USED_F_NO_NOTIFY);
	assert_int_equal(*gavail_event(f), 0x4444);
}

static void test_set_notification_unmapped(void **state)
{
	struct fx *f = *state;

	f->vq.addr_set = false;
	assert_false(vq_map_rings(&f->vq, f->m));
	vq_set_notification(&f->vq, true);
	vq_set_notification(&f->vq, false);
	assert_int_equal(gused(f)->flags, 0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_map_rings),
		T(test_map_rings_not_ready),
		T(test_map_rings_misaligned),
		T(test_map_rings_odd_mmap_offset),
		T(test_map_rings_outside),
		T(test_available),
		T(test_available_wraps),
		T(test_available_jump),
		T(test_available_backwards),
		T(test_pop_empty),
		T(test_pop_simple_chain),
		T(test_pop_in_order),
		T(test_pop_copies),
		T(test_pop_chain_whole_queue),
		T(test_pop_head_out_of_range),
		T(test_pop_next_out_of_range),
		T(test_pop_next_far_out_of_range),
		T(test_pop_loop),
		T(test_pop_self_loop),
		T(test_pop_chain_longer_than_queue),
		T(test_pop_readable_after_writable),
		T(test_pop_readable_after_writable_empty),
		T(test_pop_bad_buffer),
		T(test_pop_bad_buffers_kinds),
		T(test_pop_bad_reason_first),
		T(test_pop_zero_length_skipped),
		T(test_pop_indirect),
		T(test_pop_indirect_private_copy),
		T(test_pop_indirect_max),
		T(test_pop_indirect_not_negotiated),
		T(test_pop_indirect_bad_length),
		T(test_pop_indirect_nested),
		T(test_pop_indirect_nested_first),
		T(test_pop_indirect_with_next),
		T(test_pop_indirect_after_head),
		T(test_pop_indirect_table_outside),
		T(test_pop_indirect_next_out_of_range),
		T(test_pop_indirect_loop),
		T(test_pop_indirect_readable_after_writable),
		T(test_pop_indirect_bad_buffer),
		T(test_pop_big_queue_high_next),
		T(test_pop_big_queue_high_head),
		T(test_push),
		T(test_push_wraps),
		T(test_pop_push),
		T(test_pop_head_in_flight_twice),
		T(test_pop_head_again_after_push_or_drop),
		T(test_inflight_at_most_queue_size),
		T(test_push_head_not_in_flight),
		T(test_broken_chain_holds_no_head),
		T(test_inflight_big_queue),
		T(test_notify_flags),
		T(test_notify_event_idx),
		T(test_notify_event_idx_table),
		T(test_set_notification_event_idx),
		T(test_set_notification_flags),
		T(test_set_notification_unmapped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
