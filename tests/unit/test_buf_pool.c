// SPDX-License-Identifier: MIT
/* Unit tests: the zero-copy page allocator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf_pool.h"

static void test_pool_basic(void **state)
{
	(void)state;
	struct isolde_buf_pool p;

	assert_int_equal(isolde_buf_pool_init(&p, 16), 0);
	assert_int_equal(isolde_buf_pool_alloc(&p, 0), -1);
	assert_int_equal(isolde_buf_pool_alloc(&p, 17), -1);
	assert_int_equal(isolde_buf_pool_alloc(&p, UINT32_MAX), -1);

	int64_t a = isolde_buf_pool_alloc(&p, 4);
	int64_t b = isolde_buf_pool_alloc(&p, 4);
	int64_t c = isolde_buf_pool_alloc(&p, 8);
	assert_true(a >= 0 && b >= 0 && c >= 0);
	/* Disjoint and within the pool: together they fill it exactly. */
	assert_true(a + 4 <= 16 && b + 4 <= 16 && c + 8 <= 16);
	assert_true(a + 4 <= b || b + 4 <= a);
	assert_true(a + 4 <= c || c + 8 <= a);
	assert_true(b + 4 <= c || c + 8 <= b);
	assert_int_equal(isolde_buf_pool_alloc(&p, 1), -1);

	/* Freeing b makes exactly 4 pages available, at b. */
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)b), 0);
	assert_int_equal(isolde_buf_pool_alloc(&p, 5), -1);
	assert_int_equal(isolde_buf_pool_alloc(&p, 4), b);
	assert_int_equal(isolde_buf_pool_alloc(&p, 1), -1);

	/* Free everything: the whole pool is one run again. */
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)a), 0);
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)b), 0);
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)c), 0);
	assert_int_equal(isolde_buf_pool_alloc(&p, 16), 0);
	assert_int_equal(isolde_buf_pool_alloc(&p, 1), -1);
	assert_int_equal(isolde_buf_pool_free(&p, 0), 0);
	isolde_buf_pool_fini(&p);
}

static void test_pool_exhaustion(void **state)
{
	(void)state;
	static const uint32_t sizes[] = { 1, 63, 64, 65, 100, 128, 130 };

	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		struct isolde_buf_pool p;
		uint32_t n = sizes[k];
		bool *seen = calloc(n, 1);

		assert_non_null(seen);
		assert_int_equal(isolde_buf_pool_init(&p, n), 0);
		for (uint32_t i = 0; i < n; i++) {
			int64_t pg = isolde_buf_pool_alloc(&p, 1);
			assert_true(pg >= 0 && pg < n);
			assert_false(seen[pg]);
			seen[pg] = true;
		}
		assert_int_equal(isolde_buf_pool_alloc(&p, 1), -1);
		/* Fragment: free every other page; no 2-page run exists. */
		for (uint32_t i = 0; i < n; i += 2)
			assert_int_equal(isolde_buf_pool_free(&p, i), 0);
		if (n > 1)
			assert_int_equal(isolde_buf_pool_alloc(&p, 2), -1);
		for (uint32_t i = 0; i < n; i += 2)
			assert_int_equal(isolde_buf_pool_alloc(&p, 1) % 2, 0);
		assert_int_equal(isolde_buf_pool_alloc(&p, 1), -1);
		isolde_buf_pool_fini(&p);
		free(seen);
	}
}

static void test_pool_bad_free(void **state)
{
	(void)state;
	struct isolde_buf_pool p;

	assert_int_equal(isolde_buf_pool_init(&p, 32), 0);
	/* Nothing allocated yet. */
	assert_int_equal(isolde_buf_pool_free(&p, 0), -1);
	assert_int_equal(isolde_buf_pool_free(&p, 31), -1);
	/* Out of range. */
	assert_int_equal(isolde_buf_pool_free(&p, 32), -1);
	assert_int_equal(isolde_buf_pool_free(&p, UINT32_MAX), -1);

	int64_t a = isolde_buf_pool_alloc(&p, 5);
	assert_true(a >= 0);
	/* Pages inside the allocation, and the page just after it. */
	for (uint32_t i = 1; i < 5; i++)
		assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)a + i), -1);
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)a + 5), -1);
	/* The refused frees changed nothing: the run is still taken. */
	assert_int_equal(isolde_buf_pool_alloc(&p, 28), -1);
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)a), 0);
	/* Double free. */
	assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)a), -1);
	/* Double free after the pages were reused by a different-shaped run
	 * that does not start there. */
	int64_t b = isolde_buf_pool_alloc(&p, 32);
	assert_int_equal(b, 0);
	if (a != 0)
		assert_int_equal(isolde_buf_pool_free(&p, (uint32_t)a), -1);
	assert_int_equal(isolde_buf_pool_free(&p, 0), 0);
	assert_int_equal(isolde_buf_pool_free(&p, 0), -1);
	isolde_buf_pool_fini(&p);
}

/* Randomised alloc/free against a reference bitmap: allocations never
 * overlap, stay in range, and a request fails only if no free run exists. */
static void random_run(uint32_t pages, unsigned steps, uint64_t seed)
{
	struct isolde_buf_pool p;
	bool *used = calloc(pages, 1);
	uint32_t *len_at = calloc(pages, sizeof *len_at); /* reference: run length at start */
	uint32_t *starts = calloc(pages, sizeof *starts);
	uint32_t nstarts = 0;
	uint64_t x = seed;

	assert_non_null(used);
	assert_non_null(len_at);
	assert_non_null(starts);
	assert_int_equal(isolde_buf_pool_init(&p, pages), 0);
	for (unsigned step = 0; step < steps; step++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		unsigned what = (unsigned)(x % 10);
		if (what < 5 || nstarts == 0) {
			/* Mostly small, sometimes big. */
			uint32_t n = (x >> 8) & 7 ? 1 + (uint32_t)((x >> 16) % 8)
						 : 1 + (uint32_t)((x >> 16) % pages);
			/* Reference: is there a free run of n pages? */
			bool exists = false;
			for (uint32_t i = 0, run = 0; i < pages && !exists; i++) {
				run = used[i] ? 0 : run + 1;
				exists = run >= n;
			}
			int64_t got = isolde_buf_pool_alloc(&p, n);
			if (!exists) {
				assert_int_equal(got, -1);
				continue;
			}
			if (got < 0)
				fail_msg("alloc(%u) failed with a free run available (step %u)", n, step);
			assert_true((uint64_t)got + n <= pages);
			for (uint32_t i = 0; i < n; i++) {
				if (used[got + i])
					fail_msg("alloc(%u) = %lld overlaps page %lld (step %u)", n,
						 (long long)got, (long long)got + i, step);
				used[got + i] = true;
			}
			len_at[got] = n;
			starts[nstarts++] = (uint32_t)got;
		} else if (what < 9) {
			uint32_t k = (uint32_t)((x >> 8) % nstarts);
			uint32_t first = starts[k];
			assert_int_equal(isolde_buf_pool_free(&p, first), 0);
			for (uint32_t i = 0; i < len_at[first]; i++)
				used[first + i] = false;
			len_at[first] = 0;
			starts[k] = starts[--nstarts];
			/* Freed twice: refused. */
			assert_int_equal(isolde_buf_pool_free(&p, first), -1);
		} else {
			/* Free of a page that starts no live allocation: refused. */
			uint32_t pg = (uint32_t)((x >> 8) % pages);
			if (len_at[pg] == 0)
				assert_int_equal(isolde_buf_pool_free(&p, pg), -1);
		}
	}
	/* Free what is left; then the whole pool is one run. */
	while (nstarts)
		assert_int_equal(isolde_buf_pool_free(&p, starts[--nstarts]), 0);
	assert_int_equal(isolde_buf_pool_alloc(&p, pages), 0);
	isolde_buf_pool_fini(&p);
	free(used);
	free(len_at);
	free(starts);
}

static void test_pool_random(void **state)
{
	(void)state;
	random_run(64, 20000, 1);
	random_run(100, 20000, 0x9e3779b97f4a7c15u);
	random_run(257, 20000, 12345);
	random_run(1024, 20000, 777);
	random_run(3, 5000, 42);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_basic),
		cmocka_unit_test(test_pool_exhaustion),
		cmocka_unit_test(test_pool_bad_free),
		cmocka_unit_test(test_pool_random),
	};
	return cmocka_run_group_tests_name("buf_pool", tests, NULL, NULL);
}
