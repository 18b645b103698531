// SPDX-License-Identifier: MIT
/*
 * Unit tests: src/export/guest_memory.c, a vhost-user front end's memory
 * table. Regions come from memfds, the way QEMU's memory-backend-memfd
 * hands them over. The checks of guest_memory_map (count, empty, wrapping,
 * overlap, past the file's end) and the translations' bounds (whole range in
 * one region, or NULL) are what keep the guest and the front end inside the
 * memory they shared. A front end that shrinks a file after the mapping
 * must not be able to kill the process with SIGBUS: the region turns to
 * zeros and says it is poisoned, and every other SIGBUS still kills.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "guest_memory.h"

#define KIB 1024ull
#define FILE_SIZE (256 * KIB)

static int make_memfd(uint64_t size)
{
	int fd = memfd_create("test-guest-memory", MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	return fd;
}

static struct guest_region_desc region(uint64_t gpa, uint64_t size, uint64_t uva, uint64_t offset)
{
	struct guest_region_desc d = {
		.guest_phys_addr = gpa, .memory_size = size, .userspace_addr = uva, .mmap_offset = offset,
	};
	return d;
}

/* guest_memory_map must fail, and its message must hold want. */
static void expect_refused(const struct guest_region_desc *r, unsigned n, const int *fds, const char *want)
{
	char err[256] = "";
	struct guest_memory *m = guest_memory_map(r, n, fds, err, sizeof err);

	if (m)
		guest_memory_unref(m);
	assert_null(m);
	if (!strstr(err, want))
		fail_msg("error \"%s\" does not say \"%s\"", err, want);
}

static struct guest_memory *expect_mapped(const struct guest_region_desc *r, unsigned n, const int *fds)
{
	char err[256] = "";
	struct guest_memory *m = guest_memory_map(r, n, fds, err, sizeof err);

	if (!m)
		fail_msg("guest_memory_map refused a valid table: %s", err);
	return m;
}

/* ---- guest_memory_map ---- */

static void test_map_valid_table(void **state)
{
	(void)state;
	int fd0 = make_memfd(FILE_SIZE), fd1 = make_memfd(FILE_SIZE);
	int fds[3] = { fd0, fd1, fd0 };
	/* Two regions of one file (at different offsets) and one of another;
	 * guest-physical and front-end addresses unrelated to each other. */
	struct guest_region_desc r[3] = {
		region(0, 64 * KIB, 0x7f0000000000, 0),
		region(0x100000, 128 * KIB, 0x7f0000200000, 64 * KIB),
		region(0x40000, 32 * KIB, 0x7e0000000000, 0),
	};
	struct guest_memory *m = expect_mapped(r, 3, fds);
	unsigned char *p, *q;
	unsigned char buf[8];

	assert_int_equal(m->refs, 1);
	assert_int_equal(m->nregions, 3);
	for (unsigned i = 0; i < 3; i++) {
		assert_memory_equal(&m->regions[i].d, &r[i], sizeof r[i]);
		assert_non_null(m->regions[i].host);
	}

	/* The same byte by its guest-physical and its front-end address. */
	p = guest_memory_gpa(m, 0x100000 + 100, 8);
	q = guest_memory_uva(m, 0x7f0000200000 + 100, 8);
	assert_non_null(p);
	assert_ptr_equal(p, q);
	/* It is the file's byte at mmap_offset + 100, both ways. */
	memcpy(p, "ABCDEFGH", 8);
	assert_int_equal(pread(fd1, buf, 8, 64 * KIB + 100), 8);
	assert_memory_equal(buf, "ABCDEFGH", 8);
	assert_int_equal(pwrite(fd0, "12345678", 8, 4096), 8);
	assert_memory_equal(guest_memory_gpa(m, 4096, 8), "12345678", 8);
	assert_memory_equal(guest_memory_gpa(m, 0x40000 + 4096, 8), "12345678", 8);
	assert_memory_equal(guest_memory_uva(m, 0x7e0000000000 + 4096, 8), "12345678", 8);

	/* The fds still belong to the caller. */
	assert_int_equal(fcntl(fd0, F_GETFD) >= 0, 1);
	guest_memory_unref(m);
	assert_int_equal(fcntl(fd1, F_GETFD) >= 0, 1);
	close(fd0);
	close(fd1);
}

static void test_map_max_regions(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[GUEST_MEMORY_MAX_REGIONS];
	struct guest_region_desc r[GUEST_MEMORY_MAX_REGIONS];
	struct guest_memory *m;

	for (unsigned i = 0; i < GUEST_MEMORY_MAX_REGIONS; i++) {
		fds[i] = fd;
		r[i] = region(i * 0x10000, 0x8000, 0x7f0000000000 + i * 0x10000, i * 0x8000);
	}
	m = expect_mapped(r, GUEST_MEMORY_MAX_REGIONS, fds);
	assert_int_equal(m->nregions, GUEST_MEMORY_MAX_REGIONS);
	assert_non_null(guest_memory_gpa(m, 7 * 0x10000 + 0x7fff, 1));
	assert_null(guest_memory_gpa(m, 7 * 0x10000 + 0x8000, 1));
	guest_memory_unref(m);
	close(fd);
}

static void test_map_region_count(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[GUEST_MEMORY_MAX_REGIONS + 1];
	struct guest_region_desc r[GUEST_MEMORY_MAX_REGIONS + 1];

	for (unsigned i = 0; i <= GUEST_MEMORY_MAX_REGIONS; i++) {
		fds[i] = fd;
		r[i] = region(i * 0x10000, 0x1000, 0x7f0000000000 + i * 0x10000, 0);
	}
	expect_refused(r, 0, fds, "0 regions");
	expect_refused(r, GUEST_MEMORY_MAX_REGIONS + 1, fds, "9 regions");
	expect_refused(r, GUEST_MEMORY_MAX_REGIONS + 1, fds, "1 to 8 allowed");
	close(fd);
}

static void test_map_empty_region(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[2] = { fd, fd };
	struct guest_region_desc r[2] = {
		region(0, 0x1000, 0x10000, 0),
		region(0x10000, 0, 0x20000, 0),
	};

	expect_refused(r, 2, fds, "region 1 is empty");
	close(fd);
}

static void test_map_wrapping(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[2] = { fd, fd };
	struct guest_region_desc r[2] = { region(0, 0x1000, 0x100000, 0) };

	/* Guest-physical end past 2^64. */
	r[1] = region(UINT64_MAX - 0xfff, 0x2000, 0x200000, 0);
	expect_refused(r, 2, fds, "region 1 wraps");
	/* Ending exactly at 2^64 is a wrap too: the end is not representable. */
	r[1] = region(UINT64_MAX - 0xfff, 0x1000, 0x200000, 0);
	expect_refused(r, 2, fds, "region 1 wraps");
	/* Front-end address. */
	r[1] = region(0x10000, 0x2000, UINT64_MAX - 0x1000, 0);
	expect_refused(r, 2, fds, "region 1 wraps");
	/* Offset into the file. */
	r[1] = region(0x10000, 0x2000, 0x200000, UINT64_MAX - 0x1000);
	expect_refused(r, 2, fds, "region 1 wraps");
	/* Size alone (2^64 - 1 bytes from 1). */
	r[1] = region(1, UINT64_MAX, 0x200000, 0);
	expect_refused(r, 2, fds, "wraps around the address space");
	close(fd);
}

static void test_map_overlap_gpa(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[3] = { fd, fd, fd };
	struct guest_region_desc r[3] = {
		region(0x10000, 0x10000, 0x100000, 0),
		region(0x40000, 0x1000, 0x200000, 0),
	};

	/* Last byte of region 0 shared. */
	r[2] = region(0x1ffff, 0x1000, 0x300000, 0);
	expect_refused(r, 3, fds, "regions 0 and 2 overlap");
	/* Region 2 holds region 1 entirely. */
	r[2] = region(0x30000, 0x20000, 0x300000, 0);
	expect_refused(r, 3, fds, "regions 1 and 2 overlap");
	/* Region 2 inside region 0. */
	r[2] = region(0x18000, 0x10, 0x300000, 0);
	expect_refused(r, 3, fds, "regions 0 and 2 overlap");
	/* Same start. */
	r[2] = region(0x40000, 0x10, 0x300000, 0);
	expect_refused(r, 3, fds, "overlap");
	close(fd);
}

static void test_map_overlap_uva(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[2] = { fd, fd };
	struct guest_region_desc r[2] = { region(0x10000, 0x10000, 0x100000, 0) };

	r[1] = region(0x80000, 0x1000, 0x10ffff, 0);
	expect_refused(r, 2, fds, "regions 0 and 1 overlap");
	r[1] = region(0x80000, 0x1000, 0xff800, 0);
	expect_refused(r, 2, fds, "regions 0 and 1 overlap");
	/* Region 1 holds region 0 entirely. */
	r[1] = region(0x80000, 0x30000, 0xf0000, 0);
	expect_refused(r, 2, fds, "regions 0 and 1 overlap");
	/* Adjacent below is fine: this one maps. */
	r[1] = region(0x80000, 0x1000, 0xff000, 0);
	guest_memory_unref(expect_mapped(r, 2, fds));
	close(fd);
}

static void test_map_adjacent_is_not_overlap(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[2] = { fd, fd };
	/* Adjacent in both address spaces, sharing the same bytes of the file. */
	struct guest_region_desc r[2] = {
		region(0x10000, 0x10000, 0x100000, 0),
		region(0x20000, 0x10000, 0x110000, 0),
	};
	struct guest_memory *m = expect_mapped(r, 2, fds);

	guest_memory_unref(m);
	close(fd);
}

static void test_map_beyond_file(void **state)
{
	(void)state;
	int fd = make_memfd(64 * KIB);
	int fds[2] = { fd, fd };
	struct guest_region_desc r[2] = { region(0, 0x1000, 0x100000, 0) };
	struct guest_memory *m;

	/* Size alone. */
	r[1] = region(0x10000, 64 * KIB + 1, 0x200000, 0);
	expect_refused(r, 2, fds, "region 1 (offset 0x0, size 0x10001) reaches beyond the end of its file (0x10000 bytes)");
	/* Offset plus size. */
	r[1] = region(0x10000, 60 * KIB, 0x200000, 8 * KIB);
	expect_refused(r, 2, fds, "beyond the end of its file");
	/* Offset alone. */
	r[1] = region(0x10000, 1, 0x200000, 64 * KIB);
	expect_refused(r, 2, fds, "beyond the end of its file");
	/* An empty file. */
	{
		int empty = make_memfd(0);
		int efds[1] = { empty };
		struct guest_region_desc e = region(0, 0x1000, 0x100000, 0);
		expect_refused(&e, 1, efds, "region 0 (offset 0x0, size 0x1000) reaches beyond the end of its file (0x0 bytes)");
		close(empty);
	}
	/* Up to the last byte is fine. */
	r[1] = region(0x10000, 56 * KIB, 0x200000, 8 * KIB);
	m = expect_mapped(r, 2, fds);
	assert_non_null(guest_memory_gpa(m, 0x10000 + 56 * KIB - 1, 1));
	guest_memory_unref(m);
	close(fd);
}

static void test_map_bad_fd(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	int fds[2] = { fd, -1 };
	struct guest_region_desc r[2] = {
		region(0, 0x1000, 0x100000, 0),
		region(0x10000, 0x1000, 0x200000, 0),
	};

	expect_refused(r, 2, fds, "region 1: fd: ");
	close(fd);
}

/* A file that cannot be mapped (a pipe): fstat is fine, mmap fails, and the
 * region mapped before it is unmapped again (ASan's leak check sees the
 * table itself). */
static void test_map_unmappable(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE), p[2];
	int fds[2];
	struct guest_region_desc r[2] = {
		region(0, 0x1000, 0x100000, 0),
		region(0x10000, 0x1000, 0x200000, 0),
	};

	assert_int_equal(pipe(p), 0);
	fds[0] = fd;
	fds[1] = p[0];
	expect_refused(r, 2, fds, "region 1: mmap of 0x1000 bytes");
	close(p[0]);
	close(p[1]);
	close(fd);
}

/* The check comes before the mapping: nothing checked later is mapped. */
static void test_map_err_untouched_on_success(void **state)
{
	(void)state;
	int fd = make_memfd(FILE_SIZE);
	struct guest_region_desc r = region(0, 0x1000, 0x100000, 0);
	char err[64] = "untouched";
	struct guest_memory *m = guest_memory_map(&r, 1, &fd, err, sizeof err);

	assert_non_null(m);
	assert_string_equal(err, "untouched");
	guest_memory_unref(m);
	close(fd);
}

/* ---- translation ---- */

struct fx {
	int fd;
	struct guest_memory *m;
};

#define G0 0x100000ull     /* region 0: 64 KiB */
#define G1 0x110000ull     /* region 1: 64 KiB, right after region 0 in gpa */
#define U0 0x7f0000000000ull
#define U1 0x7f0000010000ull /* and right after it in uva too */
#define GHIGH (UINT64_MAX - 0x10000) /* region 2: 64 KiB ending at UINT64_MAX (exclusive) */
#define UHIGH (UINT64_MAX - 0x20000)
#define RSIZE 0x10000ull

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	char err[256];

	if (!f)
		return -1;
	f->fd = memfd_create("test-guest-memory", MFD_CLOEXEC);
	if (f->fd < 0 || ftruncate(f->fd, (off_t)(3 * RSIZE)) != 0)
		return -1;
	struct guest_region_desc r[3] = {
		region(G0, RSIZE, U0, 0),
		region(G1, RSIZE, U1, RSIZE),
		region(GHIGH, RSIZE, UHIGH, 2 * RSIZE),
	};
	int fds[3] = { f->fd, f->fd, f->fd };
	f->m = guest_memory_map(r, 3, fds, err, sizeof err);
	if (!f->m) {
		fprintf(stderr, "setup: %s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	guest_memory_unref(f->m);
	close(f->fd);
	free(f);
	return 0;
}

static void test_translate_inside(void **state)
{
	struct fx *f = *state;
	unsigned char *h0 = f->m->regions[0].host, *h1 = f->m->regions[1].host;

	assert_ptr_equal(guest_memory_gpa(f->m, G0, 1), h0);
	assert_ptr_equal(guest_memory_gpa(f->m, G0 + 0x1234, 512), h0 + 0x1234);
	assert_ptr_equal(guest_memory_gpa(f->m, G0, RSIZE), h0);
	assert_ptr_equal(guest_memory_gpa(f->m, G1 + 7, 100), h1 + 7);
	assert_ptr_equal(guest_memory_uva(f->m, U0 + 0x1234, 512), h0 + 0x1234);
	assert_ptr_equal(guest_memory_uva(f->m, U1, RSIZE), h1);
	/* The two address spaces are not mixed up. */
	assert_null(guest_memory_gpa(f->m, U0, 1));
	assert_null(guest_memory_uva(f->m, G0, 1));
	/* Nothing below, between or above. */
	assert_null(guest_memory_gpa(f->m, 0, 1));
	assert_null(guest_memory_gpa(f->m, G0 - 1, 1));
	assert_null(guest_memory_gpa(f->m, G0 - 1, 2));
	assert_null(guest_memory_gpa(f->m, G1 + RSIZE, 1));
	assert_null(guest_memory_uva(f->m, U0 - 1, 1));
	/* No table. */
	assert_null(guest_memory_gpa(NULL, G0, 1));
	assert_null(guest_memory_uva(NULL, U0, 1));
}

static void test_translate_end(void **state)
{
	struct fx *f = *state;
	unsigned char *h1 = f->m->regions[1].host;

	/* Exactly up to the end. */
	assert_ptr_equal(guest_memory_gpa(f->m, G1 + RSIZE - 1, 1), h1 + RSIZE - 1);
	assert_ptr_equal(guest_memory_gpa(f->m, G1 + RSIZE - 512, 512), h1 + RSIZE - 512);
	assert_ptr_equal(guest_memory_uva(f->m, U1 + RSIZE - 16, 16), h1 + RSIZE - 16);
	/* One byte past. */
	assert_null(guest_memory_gpa(f->m, G1 + RSIZE - 512, 513));
	assert_null(guest_memory_gpa(f->m, G1 + RSIZE, 1));
	assert_null(guest_memory_gpa(f->m, G1, RSIZE + 1));
	assert_null(guest_memory_uva(f->m, U1 + RSIZE - 16, 17));
	assert_null(guest_memory_uva(f->m, U1 + RSIZE, 1));
}

/* Regions 0 and 1 are adjacent in both address spaces (and in the file): a
 * range over their border is still refused, since nothing promises the
 * host mappings are adjacent. */
static void test_translate_straddle(void **state)
{
	struct fx *f = *state;

	assert_non_null(guest_memory_gpa(f->m, G1 - 8, 8));
	assert_non_null(guest_memory_gpa(f->m, G1, 8));
	assert_null(guest_memory_gpa(f->m, G1 - 8, 16));
	assert_null(guest_memory_gpa(f->m, G1 - 1, 2));
	assert_null(guest_memory_gpa(f->m, G0, 2 * RSIZE));
	assert_null(guest_memory_uva(f->m, U1 - 8, 16));
	assert_null(guest_memory_uva(f->m, U0, 2 * RSIZE));
}

static void test_translate_len0(void **state)
{
	struct fx *f = *state;
	unsigned char *h0 = f->m->regions[0].host;

	/* len 0 is checked as len 1: the address itself must be inside. */
	assert_ptr_equal(guest_memory_gpa(f->m, G0, 0), h0);
	assert_ptr_equal(guest_memory_gpa(f->m, G0 + RSIZE - 1, 0), h0 + RSIZE - 1);
	assert_null(guest_memory_gpa(f->m, G1 + RSIZE, 0));
	assert_null(guest_memory_gpa(f->m, G0 - 1, 0));
	assert_null(guest_memory_uva(f->m, U1 + RSIZE, 0));
	assert_null(guest_memory_gpa(f->m, UINT64_MAX, 0));
}

static void test_translate_overflow(void **state)
{
	struct fx *f = *state;
	unsigned char *h2 = f->m->regions[2].host;

	/* Lengths that would wrap addr + len. */
	assert_null(guest_memory_gpa(f->m, G0 + 16, UINT64_MAX));
	assert_null(guest_memory_gpa(f->m, G0 + 16, UINT64_MAX - 15));
	assert_null(guest_memory_gpa(f->m, G0 + 16, 0ull - G0 - 16));
	assert_null(guest_memory_gpa(f->m, G0 + 16, 0ull - G0 - 15));
	assert_null(guest_memory_uva(f->m, U0 + 16, UINT64_MAX));
	assert_null(guest_memory_uva(f->m, U0 + 16, 0ull - U0 - 16));

	/* The region at the top of the address space: its last byte is at
	 * UINT64_MAX - 1. */
	assert_ptr_equal(guest_memory_gpa(f->m, UINT64_MAX - 1, 1), h2 + RSIZE - 1);
	assert_ptr_equal(guest_memory_gpa(f->m, GHIGH, RSIZE), h2);
	assert_null(guest_memory_gpa(f->m, UINT64_MAX - 1, 2));
	assert_null(guest_memory_gpa(f->m, UINT64_MAX, 1));
	assert_null(guest_memory_gpa(f->m, UINT64_MAX, UINT64_MAX));
	assert_null(guest_memory_gpa(f->m, GHIGH, UINT64_MAX));
	assert_null(guest_memory_gpa(f->m, GHIGH + 1, RSIZE));
	assert_null(guest_memory_gpa(f->m, UINT64_MAX - 1, UINT64_MAX));
	assert_ptr_equal(guest_memory_uva(f->m, UHIGH + RSIZE - 1, 1), h2 + RSIZE - 1);
	assert_null(guest_memory_uva(f->m, UHIGH + RSIZE - 1, UINT64_MAX));
}

/* ---- reference counting ---- */

static void test_refcount(void **state)
{
	struct fx *f = *state;
	struct guest_memory *m = f->m;
	unsigned char *p;

	assert_int_equal(m->refs, 1);
	guest_memory_ref(m);
	guest_memory_ref(m);
	assert_int_equal(m->refs, 3);
	guest_memory_unref(m);
	assert_int_equal(m->refs, 2);
	guest_memory_unref(m);
	assert_int_equal(m->refs, 1);
	/* Still mapped and usable. */
	p = guest_memory_gpa(m, G0 + 10, 4);
	assert_non_null(p);
	memcpy(p, "live", 4);
	assert_memory_equal(guest_memory_uva(m, U0 + 10, 4), "live", 4);
	/* unref(NULL) does nothing. */
	guest_memory_unref(NULL);
	/* The fixture's teardown drops the last reference (a leak or a double
	 * free would show under ASan). */
}

/* ---- a front end that shrinks its memory file ---- */

/* One region of size bytes over fd at gpa (and a made-up uva). */
static struct guest_memory *map_one(int fd, uint64_t gpa, uint64_t size)
{
	struct guest_region_desc r = region(gpa, size, 0x7f0000000000ull + gpa, 0);
	return expect_mapped(&r, 1, &fd);
}

/* Read through a volatile pointer, so that the access really happens. */
static unsigned char peek(const unsigned char *p)
{
	return *(const volatile unsigned char *)p;
}

static void test_shrunk_file_reads_zeros(void **state)
{
	(void)state;
	int fd = make_memfd(64 * KIB);
	struct guest_memory *m = map_one(fd, 0x100000, 64 * KIB);
	unsigned char *p = guest_memory_gpa(m, 0x100000, 64 * KIB);

	memset(p, 0x5a, 64 * KIB);
	assert_false(guest_memory_poisoned(m));
	assert_int_equal(ftruncate(fd, 4 * KIB), 0);
	/* Inside the file still: the data is there, nothing is poisoned. */
	assert_int_equal(peek(p), 0x5a);
	assert_false(guest_memory_poisoned(m));
	/* Past its new end: the access that would be SIGBUS finds zeros, and
	 * the whole region is zeros from now on. */
	assert_int_equal(peek(p + 32 * KIB), 0);
	assert_true(guest_memory_poisoned(m));
	assert_int_equal(peek(p), 0);
	p[40 * KIB] = 1;  /* writes land harmlessly too */
	assert_int_equal(peek(p + 40 * KIB), 1);
	/* The file is untouched by all that. */
	unsigned char b = 0;
	assert_int_equal(pread(fd, &b, 1, 0), 1);
	assert_int_equal(b, 0x5a);
	guest_memory_unref(m);
	close(fd);
}

/* Only the table whose file shrank is poisoned; its other regions go with
 * it only if they are the same mapping. */
static void test_shrink_poisons_only_its_region(void **state)
{
	(void)state;
	int fa = make_memfd(64 * KIB), fb = make_memfd(64 * KIB);
	struct guest_region_desc r[2] = { region(0, 64 * KIB, 0x7f0000000000, 0),
					  region(64 * KIB, 64 * KIB, 0x7f0000010000, 0) };
	int fds[2] = { fa, fb };
	struct guest_memory *m = expect_mapped(r, 2, fds);
	struct guest_memory *other = map_one(fb, 0x200000, 64 * KIB);
	unsigned char *a = guest_memory_gpa(m, 0, 1), *bm = guest_memory_gpa(m, 64 * KIB, 1);

	memset(bm, 0x77, 64 * KIB);
	assert_int_equal(ftruncate(fa, 0), 0);
	assert_int_equal(peek(a + 100), 0);
	assert_true(guest_memory_poisoned(m));
	assert_false(guest_memory_poisoned(other));
	/* Region 1 of the same table is another file: still the guest's. */
	assert_int_equal(peek(bm + 100), 0x77);
	assert_int_equal(peek(guest_memory_gpa(other, 0x200000 + 100, 1)), 0x77);
	guest_memory_unref(m);
	guest_memory_unref(other);
	close(fa);
	close(fb);
}

/* A sealed memfd (QEMU's memory-backend-memfd seals by default) cannot
 * shrink at all, and is mapped as any other. */
static void test_sealed_memfd_cannot_shrink(void **state)
{
	(void)state;
	int fd = memfd_create("test-guest-memory-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	struct guest_memory *m;
	unsigned char *p;

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 64 * KIB), 0);
	assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
	m = map_one(fd, 0x100000, 64 * KIB);
	p = guest_memory_gpa(m, 0x100000, 64 * KIB);
	memset(p, 0x33, 64 * KIB);
	assert_int_equal(ftruncate(fd, 0), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(peek(p + 60 * KIB), 0x33);
	assert_false(guest_memory_poisoned(m));
	guest_memory_unref(m);
	close(fd);
}

/* Run body in a child with SIGBUS at its default; return how it ended. */
static int in_child(void (*body)(void))
{
	int status = 0;
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		signal(SIGBUS, SIG_DFL);
		body();
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

static void fault_outside_guest_memory(void)
{
	int gfd = memfd_create("guest", MFD_CLOEXEC), ofd = memfd_create("other", MFD_CLOEXEC);
	struct guest_region_desc r = region(0, 64 * KIB, 0x7f0000000000, 0);
	char err[256];
	unsigned char *p;

	if (gfd < 0 || ofd < 0 || ftruncate(gfd, 64 * KIB) || ftruncate(ofd, 64 * KIB))
		_exit(2);
	if (!guest_memory_map(&r, 1, &gfd, err, sizeof err))
		_exit(3);
	p = mmap(NULL, 64 * KIB, PROT_READ, MAP_SHARED, ofd, 0);
	if (p == MAP_FAILED || ftruncate(ofd, 0))
		_exit(4);
	(void)peek(p + 8 * KIB);  /* not guest memory: SIGBUS as ever */
}

static void sigbus_sent(void)
{
	int gfd = memfd_create("guest", MFD_CLOEXEC);
	struct guest_region_desc r = region(0, 64 * KIB, 0x7f0000000000, 0);
	char err[256];

	if (gfd < 0 || ftruncate(gfd, 64 * KIB) || !guest_memory_map(&r, 1, &gfd, err, sizeof err))
		_exit(3);
	kill(getpid(), SIGBUS);   /* a sent signal is not a fault: delivered as ever */
}

static void test_sigbus_elsewhere_still_kills(void **state)
{
	(void)state;
	int status = in_child(fault_outside_guest_memory);

	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGBUS)
		fail_msg("a SIGBUS outside guest memory did not kill the child (status 0x%x)", status);
	status = in_child(sigbus_sent);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGBUS)
		fail_msg("a SIGBUS sent by kill did not kill the child (status 0x%x)", status);
}

/* The registry has GUEST_MEMORY_MAX_MAPPED slots: a table past that is
 * refused with a reason, and slots come back when tables are unmapped. */
static void test_registry_full_and_reused(void **state)
{
	(void)state;
	static struct guest_memory *tables[GUEST_MEMORY_MAX_MAPPED];
	struct guest_region_desc r = region(0, 4 * KIB, 0x7f0000000000, 0);
	int fd = make_memfd(4 * KIB);

	for (unsigned round = 0; round < 2; round++) {
		for (unsigned i = 0; i < GUEST_MEMORY_MAX_MAPPED; i++)
			tables[i] = expect_mapped(&r, 1, &fd);
		expect_refused(&r, 1, &fd, "regions are mapped already");
		guest_memory_unref(tables[7]);
		tables[7] = expect_mapped(&r, 1, &fd);
		for (unsigned i = 0; i < GUEST_MEMORY_MAX_MAPPED; i++)
			guest_memory_unref(tables[i]);
	}
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map_valid_table),
		cmocka_unit_test(test_map_max_regions),
		cmocka_unit_test(test_map_region_count),
		cmocka_unit_test(test_map_empty_region),
		cmocka_unit_test(test_map_wrapping),
		cmocka_unit_test(test_map_overlap_gpa),
		cmocka_unit_test(test_map_overlap_uva),
		cmocka_unit_test(test_map_adjacent_is_not_overlap),
		cmocka_unit_test(test_map_beyond_file),
		cmocka_unit_test(test_map_bad_fd),
		cmocka_unit_test(test_map_unmappable),
		cmocka_unit_test(test_map_err_untouched_on_success),
		cmocka_unit_test_setup_teardown(test_translate_inside, setup, teardown),
		cmocka_unit_test_setup_teardown(test_translate_end, setup, teardown),
		cmocka_unit_test_setup_teardown(test_translate_straddle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_translate_len0, setup, teardown),
		cmocka_unit_test_setup_teardown(test_translate_overflow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refcount, setup, teardown),
		cmocka_unit_test(test_shrunk_file_reads_zeros),
		cmocka_unit_test(test_shrink_poisons_only_its_region),
		cmocka_unit_test(test_sealed_memfd_cannot_shrink),
		cmocka_unit_test(test_sigbus_elsewhere_still_kills),
		cmocka_unit_test(test_registry_full_and_reused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
