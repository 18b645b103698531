// SPDX-License-Identifier: MIT
/* Unit tests: shared memory layout (isolde_shm_layout_compute) and the
 * driver's header check (isolde_shm_header_check). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "isolde/blkif.h"
#include "isolde/grant.h"
#include "isolde/notify.h"
#include "isolde/ring.h"
#include "isolde/shm.h"

#define PAGE ((uint64_t)ISOLDE_PAGE_SIZE)

static void check_layout(const struct isolde_shm_layout *l, uint32_t slots, uint64_t data_size)
{
	assert_int_equal(l->ring_slots, slots);
	assert_int_equal(l->grant_count, slots * ISOLDE_BLK_MAX_SEGS);
	/* Every region page aligned. */
	assert_int_equal(l->ring_offset % PAGE, 0);
	assert_int_equal(l->grant_offset % PAGE, 0);
	assert_int_equal(l->data_offset % PAGE, 0);
	assert_int_equal(l->data_size % PAGE, 0);
	assert_int_equal(l->total_size % PAGE, 0);
	/* In order, no overlap: header page, ring, grants, data. */
	assert_true(l->ring_offset >= PAGE);
	assert_true(l->grant_offset >= l->ring_offset + isolde_sring_size(slots, ISOLDE_BLK_SLOT_SIZE));
	assert_true(l->data_offset >=
		    l->grant_offset + (uint64_t)l->grant_count * sizeof(struct isolde_grant));
	/* The data area holds at least what was asked, by less than a page more. */
	assert_true(l->data_size >= data_size);
	assert_true(l->data_size - data_size < PAGE);
	assert_int_equal(l->total_size, l->data_offset + l->data_size);
	/* No gratuitous waste: each region's padding is below a page. */
	assert_true(l->grant_offset - l->ring_offset <
		    isolde_sring_size(slots, ISOLDE_BLK_SLOT_SIZE) + PAGE);
	assert_true(l->data_offset - l->grant_offset <
		    (uint64_t)l->grant_count * sizeof(struct isolde_grant) + PAGE);
}

static void test_layout_valid(void **state)
{
	(void)state;
	static const uint64_t sizes[] = { 1, 4095, 4096, 4097, 1u << 20, (1u << 20) + 1,
					  UINT64_C(1) << 32 };
	for (uint32_t slots = 2; slots <= 1024; slots <<= 1) {
		for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
			struct isolde_shm_layout l;
			memset(&l, 0xEE, sizeof l);
			assert_int_equal(isolde_shm_layout_compute(&l, slots, sizes[i]), 0);
			check_layout(&l, slots, sizes[i]);
		}
	}
}

static void test_layout_rejects(void **state)
{
	(void)state;
	struct isolde_shm_layout l;
	static const uint32_t bad_slots[] = { 0, 1, 3, 5, 6, 7, 12, 100, 1000, 1023, 1025,
					      2048, 4096, 0x80000000u, UINT32_MAX };

	for (size_t i = 0; i < sizeof bad_slots / sizeof bad_slots[0]; i++)
		assert_int_equal(isolde_shm_layout_compute(&l, bad_slots[i], 4096), -1);
	/* Zero and oversized data areas. */
	assert_int_equal(isolde_shm_layout_compute(&l, 8, 0), -1);
	assert_int_equal(isolde_shm_layout_compute(&l, 8, (UINT64_C(1) << 32) + 1), -1);
	assert_int_equal(isolde_shm_layout_compute(&l, 8, UINT64_MAX), -1);
	assert_int_equal(isolde_shm_layout_compute(&l, 8, UINT64_MAX - PAGE + 2), -1);
}

/* A header as the launcher builds it. */
static void make_header(struct isolde_shm_header *h, uint32_t slots, uint64_t data_size)
{
	struct isolde_shm_layout l;

	assert_int_equal(isolde_shm_layout_compute(&l, slots, data_size), 0);
	memset(h, 0, sizeof *h);
	h->magic = ISOLDE_SHM_MAGIC;
	h->version = ISOLDE_SHM_VERSION;
	h->header_size = sizeof *h;
	h->total_size = l.total_size;
	h->ring_offset = l.ring_offset;
	h->ring_slots = l.ring_slots;
	h->slot_size = ISOLDE_BLK_SLOT_SIZE;
	h->grant_offset = l.grant_offset;
	h->grant_count = l.grant_count;
	h->max_segs = ISOLDE_BLK_MAX_SEGS;
	h->data_offset = l.data_offset;
	h->data_size = l.data_size;
	h->device_size = 1u << 30;
	h->device_flags = ISOLDE_DEV_READONLY;
	h->notify_mode = ISOLDE_NOTIFY_HYBRID;
	h->spin_min_ns = ISOLDE_HYBRID_SPIN_MIN_NS;
	h->spin_max_ns = ISOLDE_HYBRID_SPIN_MAX_NS;
}

static void test_header_valid(void **state)
{
	(void)state;
	struct isolde_shm_header h;

	for (uint32_t slots = 2; slots <= 1024; slots <<= 1) {
		make_header(&h, slots, 3 * PAGE + 17);
		assert_null(isolde_shm_header_check(&h, h.total_size));
	}
	/* Every legal device flag and notify mode is accepted. */
	make_header(&h, 32, 1u << 20);
	for (uint32_t m = 0; m <= ISOLDE_NOTIFY_HYBRID; m++) {
		h.notify_mode = m;
		for (uint32_t f = 0; f <= (ISOLDE_DEV_READONLY | ISOLDE_DEV_BLOCKDEV); f++) {
			h.device_flags = f;
			assert_null(isolde_shm_header_check(&h, h.total_size));
		}
	}
	/* Fewer grants than the maximum is fine, and so is equal spin bounds. */
	h.grant_count = 1;
	h.spin_min_ns = h.spin_max_ns;
	assert_null(isolde_shm_header_check(&h, h.total_size));
}

/* Apply mutate to a valid header and expect the check to name `field`. */
#define EXPECT_FIELD(field, object_size, mutation)                                      \
	do {                                                                            \
		struct isolde_shm_header h_;                                            \
		make_header(&h_, 16, 1u << 20);                                         \
		uint64_t size_ = h_.total_size;                                         \
		{                                                                       \
			struct isolde_shm_header *h = &h_;                              \
			(void)h;                                                        \
			mutation;                                                       \
		}                                                                       \
		const char *got_ = isolde_shm_header_check(&h_, (object_size) ? (object_size) : size_); \
		if (!got_ || strcmp(got_, field) != 0)                                  \
			fail_msg("mutation '%s': expected field %s, got %s", #mutation, \
				 field, got_ ? got_ : "(accepted)");                    \
	} while (0)

static void test_header_fields(void **state)
{
	(void)state;
	struct isolde_shm_header ref;
	make_header(&ref, 16, 1u << 20);

	EXPECT_FIELD("magic", 0, h->magic ^= 1);
	EXPECT_FIELD("magic", 0, h->magic = 0);
	EXPECT_FIELD("version", 0, h->version = 0);
	EXPECT_FIELD("version", 0, h->version = ISOLDE_SHM_VERSION + 1);
	EXPECT_FIELD("header_size", 0, h->header_size = 4096);
	EXPECT_FIELD("header_size", 0, h->header_size -= 8);

	/* total_size must equal the real object size, either way. */
	EXPECT_FIELD("total_size", 0, h->total_size += PAGE);
	EXPECT_FIELD("total_size", 0, h->total_size -= PAGE);
	EXPECT_FIELD("total_size", ref.total_size + PAGE, (void)0);
	EXPECT_FIELD("total_size", ref.total_size - 1, (void)0);

	static const uint32_t bad_slots[] = { 0, 1, 3, 24, 2048, UINT32_MAX };
	for (size_t i = 0; i < sizeof bad_slots / sizeof bad_slots[0]; i++)
		EXPECT_FIELD("ring_slots", 0, h->ring_slots = bad_slots[i]);

	EXPECT_FIELD("slot_size", 0, h->slot_size = 64);
	EXPECT_FIELD("slot_size", 0, h->slot_size = 256);
	EXPECT_FIELD("slot_size", 0, h->slot_size = 0);
	EXPECT_FIELD("max_segs", 0, h->max_segs = ISOLDE_BLK_MAX_SEGS + 1);
	EXPECT_FIELD("max_segs", 0, h->max_segs = 0);

	/* Ring: over the header page, misaligned, out of range. */
	EXPECT_FIELD("ring_offset", 0, h->ring_offset = 0);
	EXPECT_FIELD("ring_offset", 0, h->ring_offset = 64);
	EXPECT_FIELD("ring_offset", 0, h->ring_offset += 8);
	EXPECT_FIELD("ring_offset", 0, h->ring_offset = h->total_size);
	/* In range, but a 1024-slot ring does not fit in the last page. */
	EXPECT_FIELD("ring_offset", 0, h->ring_slots = 1024; h->ring_offset = h->total_size - PAGE);
	EXPECT_FIELD("ring_offset", 0, h->ring_offset = UINT64_MAX - PAGE + 1);
	EXPECT_FIELD("ring_offset", 0, h->ring_offset = UINT64_C(1) << 63);

	/* Grant table: overlapping the ring, out of range, too many, none. */
	EXPECT_FIELD("grant_offset", 0, h->grant_offset = h->ring_offset);
	EXPECT_FIELD("grant_offset", 0, h->grant_offset = 0);
	EXPECT_FIELD("grant_offset", 0, h->grant_offset += 16);
	EXPECT_FIELD("grant_offset", 0, h->grant_offset = h->total_size);
	EXPECT_FIELD("grant_offset", 0, h->grant_offset = UINT64_MAX - PAGE + 1);
	EXPECT_FIELD("grant_offset", 0, h->grant_count = 0);
	EXPECT_FIELD("grant_offset", 0, h->grant_count = h->ring_slots * ISOLDE_BLK_MAX_SEGS + 1);
	EXPECT_FIELD("grant_offset", 0, h->grant_count = UINT32_MAX);
	/* Ring grown so it runs into the grant table. */
	EXPECT_FIELD("grant_offset", 0, h->ring_slots = 1024; h->grant_count = 8);

	/* Data area: overlapping the grants, out of range, empty, too big. */
	EXPECT_FIELD("data_offset", 0, h->data_offset = h->grant_offset);
	EXPECT_FIELD("data_offset", 0, h->data_offset = h->ring_offset);
	EXPECT_FIELD("data_offset", 0, h->data_offset -= PAGE);
	EXPECT_FIELD("data_offset", 0, h->data_offset += PAGE);
	EXPECT_FIELD("data_offset", 0, h->data_offset += 1);
	EXPECT_FIELD("data_offset", 0, h->data_offset = UINT64_MAX - PAGE + 1);
	EXPECT_FIELD("data_offset", 0, h->data_size += 1);
	EXPECT_FIELD("data_offset", 0, h->data_size = 0);
	EXPECT_FIELD("data_offset", 0, h->data_size = UINT64_MAX);
	EXPECT_FIELD("data_offset", 0, h->data_size = (UINT64_C(1) << 32) + PAGE);

	EXPECT_FIELD("notify_mode", 0, h->notify_mode = ISOLDE_NOTIFY_HYBRID + 1);
	EXPECT_FIELD("notify_mode", 0, h->notify_mode = UINT32_MAX);
	EXPECT_FIELD("device_flags", 0, h->device_flags = 0x8);
	EXPECT_FIELD("device_flags", 0, h->device_flags = 0x80000000u | ISOLDE_DEV_READONLY);
	EXPECT_FIELD("spin_min_ns", 0, h->spin_min_ns = h->spin_max_ns + 1);
}

/* The header check and the layout agree for a range of real layouts: the
 * object size is the layout's total, and any other size is refused. */
static void test_header_object_size(void **state)
{
	(void)state;
	struct isolde_shm_header h;

	make_header(&h, 1024, UINT64_C(1) << 32);
	assert_null(isolde_shm_header_check(&h, h.total_size));
	assert_string_equal(isolde_shm_header_check(&h, 0), "total_size");
	assert_string_equal(isolde_shm_header_check(&h, UINT64_MAX), "total_size");
	/* A 1024-slot grant table spans 32 pages: a data area starting in its
	 * last page overlaps it. */
	h.data_offset -= PAGE;
	assert_string_equal(isolde_shm_header_check(&h, h.total_size), "data_offset");
	h.data_offset += PAGE;
	h.grant_offset += PAGE;
	assert_string_equal(isolde_shm_header_check(&h, h.total_size), "data_offset");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layout_valid),
		cmocka_unit_test(test_layout_rejects),
		cmocka_unit_test(test_header_valid),
		cmocka_unit_test(test_header_fields),
		cmocka_unit_test(test_header_object_size),
	};
	return cmocka_run_group_tests_name("layout", tests, NULL, NULL);
}
