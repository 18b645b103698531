// SPDX-License-Identifier: MIT
/* Unit tests: the driver's only way to reach data, isolde_grant_access. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "isolde/grant.h"

#define NGRANTS 16
#define DATA_SIZE (64u * 1024)

#define R ISOLDE_GRANT_DRIVER_READS
#define W ISOLDE_GRANT_DRIVER_WRITES

struct fx {
	struct isolde_grant table[NGRANTS];
	unsigned char *data;
	struct isolde_grant_view v;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	f->data = malloc(DATA_SIZE);
	if (!f->data) {
		free(f);
		return -1;
	}
	/* Junk in every entry: access must come from isolde_grant_set only. */
	memset(f->table, 0, sizeof f->table);
	f->v.table = f->table;
	f->v.count = NGRANTS;
	f->v.data = f->data;
	f->v.data_size = DATA_SIZE;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	free(f->data);
	free(f);
	return 0;
}

static void test_grant_valid(void **state)
{
	struct fx *f = *state;

	isolde_grant_set(f->table, 3, 8192, 4096, R);
	isolde_grant_set(f->table, 4, 0, 1, W);
	isolde_grant_set(f->table, NGRANTS - 1, DATA_SIZE - 4096, 4096, W);
	isolde_grant_set(f->table, 5, 100, 900, R | W);

	assert_ptr_equal(isolde_grant_access(&f->v, 3, 0, 4096, R), f->data + 8192);
	assert_ptr_equal(isolde_grant_access(&f->v, 3, 0, 1, R), f->data + 8192);
	assert_ptr_equal(isolde_grant_access(&f->v, 3, 4095, 1, R), f->data + 8192 + 4095);
	assert_ptr_equal(isolde_grant_access(&f->v, 3, 1000, 3096, R), f->data + 9192);
	assert_ptr_equal(isolde_grant_access(&f->v, 4, 0, 1, W), f->data);
	/* The last grant reaches exactly to the end of the data area. */
	assert_ptr_equal(isolde_grant_access(&f->v, NGRANTS - 1, 0, 4096, W),
			 f->data + DATA_SIZE - 4096);
	/* A grant in both directions serves either, one at a time. */
	assert_ptr_equal(isolde_grant_access(&f->v, 5, 0, 900, R), f->data + 100);
	assert_ptr_equal(isolde_grant_access(&f->v, 5, 899, 1, W), f->data + 999);
	/* The whole data area as one grant. */
	isolde_grant_set(f->table, 0, 0, DATA_SIZE, W);
	assert_ptr_equal(isolde_grant_access(&f->v, 0, 0, DATA_SIZE, W), f->data);
}

static void test_grant_gref_range(void **state)
{
	struct fx *f = *state;

	for (uint32_t g = 0; g < NGRANTS; g++)
		isolde_grant_set(f->table, g, 0, 4096, R);
	assert_non_null(isolde_grant_access(&f->v, NGRANTS - 1, 0, 4096, R));
	assert_null(isolde_grant_access(&f->v, NGRANTS, 0, 4096, R));
	assert_null(isolde_grant_access(&f->v, NGRANTS + 1, 0, 1, R));
	assert_null(isolde_grant_access(&f->v, UINT32_MAX, 0, 1, R));
	assert_null(isolde_grant_access(&f->v, 0x80000000u, 0, 1, R));
	/* A smaller view cuts off entries that exist in the table. */
	struct isolde_grant_view small = f->v;
	small.count = 2;
	assert_non_null(isolde_grant_access(&small, 1, 0, 1, R));
	assert_null(isolde_grant_access(&small, 2, 0, 1, R));
	small.count = 0;
	assert_null(isolde_grant_access(&small, 0, 0, 1, R));
}

static void test_grant_revoked(void **state)
{
	struct fx *f = *state;

	/* A never-filled (zeroed) entry is revoked. */
	assert_null(isolde_grant_access(&f->v, 7, 0, 1, R));
	assert_null(isolde_grant_access(&f->v, 7, 0, 1, W));

	isolde_grant_set(f->table, 7, 4096, 4096, R | W);
	assert_non_null(isolde_grant_access(&f->v, 7, 0, 4096, R));
	isolde_grant_revoke(f->table, 7);
	assert_null(isolde_grant_access(&f->v, 7, 0, 4096, R));
	assert_null(isolde_grant_access(&f->v, 7, 0, 4096, W));
	assert_null(isolde_grant_access(&f->v, 7, 0, 1, R));
	/* Revoking one entry leaves its neighbours alone. */
	isolde_grant_set(f->table, 6, 0, 100, R);
	isolde_grant_set(f->table, 8, 200, 100, W);
	isolde_grant_revoke(f->table, 7);
	assert_ptr_equal(isolde_grant_access(&f->v, 6, 0, 100, R), f->data);
	assert_ptr_equal(isolde_grant_access(&f->v, 8, 0, 100, W), f->data + 200);
	/* Explicit access 0 via set is also revoked. */
	isolde_grant_set(f->table, 9, 0, 100, 0);
	assert_null(isolde_grant_access(&f->v, 9, 0, 100, R));
	/* Re-granting after a revoke works again. */
	isolde_grant_set(f->table, 7, 0, 10, W);
	assert_ptr_equal(isolde_grant_access(&f->v, 7, 0, 10, W), f->data);
}

static void test_grant_direction(void **state)
{
	struct fx *f = *state;

	isolde_grant_set(f->table, 1, 0, 4096, R);
	isolde_grant_set(f->table, 2, 4096, 4096, W);
	isolde_grant_set(f->table, 3, 8192, 4096, R | W);

	assert_null(isolde_grant_access(&f->v, 1, 0, 1, W));
	assert_null(isolde_grant_access(&f->v, 2, 0, 1, R));
	/* The requested access must be exactly one direction. */
	assert_null(isolde_grant_access(&f->v, 3, 0, 1, 0));
	assert_null(isolde_grant_access(&f->v, 3, 0, 1, R | W));
	assert_null(isolde_grant_access(&f->v, 3, 0, 1, 0x4));
	assert_null(isolde_grant_access(&f->v, 3, 0, 1, R | 0x4));
	assert_null(isolde_grant_access(&f->v, 3, 0, 1, ~0u));
	/* Unknown access bits in the entry grant nothing extra. */
	isolde_grant_set(f->table, 4, 0, 4096, 0xFFFCu);
	assert_null(isolde_grant_access(&f->v, 4, 0, 1, R));
	assert_null(isolde_grant_access(&f->v, 4, 0, 1, W));
}

static void test_grant_bounds_within_grant(void **state)
{
	struct fx *f = *state;

	isolde_grant_set(f->table, 2, 4096, 4096, R);
	/* Zero length. */
	assert_null(isolde_grant_access(&f->v, 2, 0, 0, R));
	assert_null(isolde_grant_access(&f->v, 2, 100, 0, R));
	assert_null(isolde_grant_access(&f->v, 2, 4096, 0, R));
	/* One byte too long, at every position that matters. */
	assert_null(isolde_grant_access(&f->v, 2, 0, 4097, R));
	assert_null(isolde_grant_access(&f->v, 2, 1, 4096, R));
	assert_null(isolde_grant_access(&f->v, 2, 4095, 2, R));
	assert_null(isolde_grant_access(&f->v, 2, 4096, 1, R));
	assert_null(isolde_grant_access(&f->v, 2, 4097, 1, R));
	/* uint32 overflow of offset + length. */
	assert_null(isolde_grant_access(&f->v, 2, 0xFFFFFFFFu, 1, R));
	assert_null(isolde_grant_access(&f->v, 2, 0xFFFFFFFFu, 2, R));
	assert_null(isolde_grant_access(&f->v, 2, 1, 0xFFFFFFFFu, R));
	assert_null(isolde_grant_access(&f->v, 2, 0x80000000u, 0x80000000u, R));
	assert_null(isolde_grant_access(&f->v, 2, 0xFFFFF001u, 0x1000u, R)); /* sum wraps to 1 */
	assert_null(isolde_grant_access(&f->v, 2, 0, 0xFFFFFFFFu, R));
	assert_null(isolde_grant_access(&f->v, 2, 0xFFFFFFFFu, 0xFFFFFFFFu, R));
	/* A grant of the maximal length: offset + length overflow still caught. */
	isolde_grant_set(f->table, 3, 0, 0xFFFFFFFFu, R);
	struct isolde_grant_view huge = f->v;
	huge.data_size = UINT64_MAX; /* isolate the within-grant check */
	void *p = isolde_grant_access(&huge, 3, 0xFFFFFFFEu, 1, R);
	assert_non_null(p);
	assert_int_equal((uintptr_t)p - (uintptr_t)f->data, 0xFFFFFFFEu); /* never dereferenced */
	assert_null(isolde_grant_access(&huge, 3, 0xFFFFFFFEu, 2, R));
	assert_null(isolde_grant_access(&huge, 3, 0xFFFFFFFFu, 1, R));
	assert_null(isolde_grant_access(&huge, 3, 2, 0xFFFFFFFEu, R));
	assert_null(isolde_grant_access(&huge, 3, 0xFFFFFFFFu, 0xFFFFFFFFu, R));
}

static void test_grant_outside_data_area(void **state)
{
	struct fx *f = *state;

	/* Starts inside, ends one byte past the end. */
	isolde_grant_set(f->table, 1, DATA_SIZE - 4095, 4096, R);
	assert_null(isolde_grant_access(&f->v, 1, 0, 1, R));
	/* Even the in-area prefix is refused: the grant itself is bad. */
	assert_null(isolde_grant_access(&f->v, 1, 0, 4095, R));
	/* Starts exactly at the end. */
	isolde_grant_set(f->table, 2, DATA_SIZE, 1, R);
	assert_null(isolde_grant_access(&f->v, 2, 0, 1, R));
	/* Starts past the end. */
	isolde_grant_set(f->table, 3, DATA_SIZE + 4096, 4096, R);
	assert_null(isolde_grant_access(&f->v, 3, 0, 1, R));
	/* 64-bit wrap-around: offset + length would wrap to a small value. */
	isolde_grant_set(f->table, 4, UINT64_MAX, 1, R);
	assert_null(isolde_grant_access(&f->v, 4, 0, 1, R));
	isolde_grant_set(f->table, 5, UINT64_MAX - 10, 100, W);
	assert_null(isolde_grant_access(&f->v, 5, 0, 1, W));
	isolde_grant_set(f->table, 6, UINT64_MAX - 4095, 4096, R);
	assert_null(isolde_grant_access(&f->v, 6, 0, 4096, R));
	isolde_grant_set(f->table, 7, UINT64_C(1) << 63, 4096, R);
	assert_null(isolde_grant_access(&f->v, 7, 0, 1, R));
	/* A grant longer than the whole data area. */
	isolde_grant_set(f->table, 8, 0, DATA_SIZE + 1, R);
	assert_null(isolde_grant_access(&f->v, 8, 0, 1, R));
	isolde_grant_set(f->table, 9, 0, 0xFFFFFFFFu, R);
	assert_null(isolde_grant_access(&f->v, 9, 0, 1, R));
	/* An empty data area admits nothing. */
	struct isolde_grant_view none = f->v;
	none.data_size = 0;
	isolde_grant_set(f->table, 10, 0, 1, R);
	assert_null(isolde_grant_access(&none, 10, 0, 1, R));
}

/* Randomised: accept exactly when the request lies within a grant that lies
 * within the data area, and then point at the right byte. */
static void test_grant_random(void **state)
{
	struct fx *f = *state;
	uint64_t x = 0x1234567887654321u;

	for (int i = 0; i < 200000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint32_t gref = (uint32_t)(x % (NGRANTS + 2));
		uint64_t goff = (x >> 8) % (DATA_SIZE + 8192);
		uint32_t glen = (uint32_t)((x >> 24) % (DATA_SIZE + 8192));
		uint32_t off = (uint32_t)((x >> 32) % (glen + 4096 + 1));
		uint32_t len = (uint32_t)((x >> 44) % (glen + 2));
		unsigned gacc = (unsigned)(x >> 60) & 3;
		unsigned acc = (x >> 62) & 1 ? R : W;

		if (gref < NGRANTS)
			isolde_grant_set(f->table, gref, goff, glen, gacc);
		bool ok = gref < NGRANTS && len > 0 && (gacc & acc) && (uint64_t)off + len <= glen &&
			  goff + glen <= DATA_SIZE;
		void *p = isolde_grant_access(&f->v, gref, off, len, acc);
		if (ok)
			assert_ptr_equal(p, f->data + goff + off);
		else if (p)
			fail_msg("accepted gref %u grant [%llu,+%u) acc %u: access [%u,+%u) acc %u", gref,
				 (unsigned long long)goff, glen, gacc, off, len, acc);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_grant_valid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_gref_range, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_revoked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_direction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_bounds_within_grant, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_outside_data_area, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_random, setup, teardown),
	};
	return cmocka_run_group_tests_name("grant", tests, NULL, NULL);
}
