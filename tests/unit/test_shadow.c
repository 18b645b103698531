// SPDX-License-Identifier: MIT
/* Unit tests: the front end's private shadow of in-flight requests and the
 * response check built on it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shadow.h"

#define INDEX_MASK ((UINT64_C(1) << ISOLDE_SHADOW_INDEX_BITS) - 1)

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void test_shadow_init_bounds(void **state)
{
	(void)state;
	struct isolde_shadow s;

	assert_int_equal(isolde_shadow_init(&s, 0), -1);
	assert_int_equal(isolde_shadow_init(&s, (1u << ISOLDE_SHADOW_INDEX_BITS) + 1), -1);
	assert_int_equal(isolde_shadow_init(&s, UINT32_MAX), -1);
	assert_int_equal(isolde_shadow_init(&s, 1), 0);
	assert_int_equal(isolde_shadow_in_flight(&s), 0);
	isolde_shadow_fini(&s);
}

static void alloc_until_full(uint32_t depth)
{
	struct isolde_shadow s;
	uint64_t *ids = calloc(depth, sizeof *ids);
	bool *seen = calloc(depth, sizeof *seen);

	assert_non_null(ids);
	assert_non_null(seen);
	assert_int_equal(isolde_shadow_init(&s, depth), 0);
	for (uint32_t i = 0; i < depth; i++) {
		int idx = isolde_shadow_alloc(&s);
		assert_true(idx >= 0 && (uint32_t)idx < depth);
		assert_false(seen[idx]);
		seen[idx] = true;
		ids[i] = s.entries[idx].id;
		assert_true(ids[i] != 0);
		/* The id names its own index. */
		assert_int_equal(ids[i] & INDEX_MASK, (uint64_t)idx);
		assert_int_equal(isolde_shadow_in_flight(&s), i + 1);
	}
	assert_int_equal(isolde_shadow_alloc(&s), -1);
	assert_int_equal(isolde_shadow_alloc(&s), -1);
	assert_int_equal(isolde_shadow_in_flight(&s), depth);
	qsort(ids, depth, sizeof *ids, cmp_u64);
	for (uint32_t i = 1; i < depth; i++)
		assert_true(ids[i] != ids[i - 1]);
	/* Release one: exactly one more alloc succeeds, with that index. */
	isolde_shadow_release(&s, depth / 2);
	assert_int_equal(isolde_shadow_alloc(&s), (int)(depth / 2));
	assert_int_equal(isolde_shadow_alloc(&s), -1);
	isolde_shadow_fini(&s);
	free(ids);
	free(seen);
}

static void test_shadow_alloc_full(void **state)
{
	(void)state;
	alloc_until_full(1);
	alloc_until_full(2);
	alloc_until_full(32);
	alloc_until_full(1000);
	alloc_until_full(1u << ISOLDE_SHADOW_INDEX_BITS);
}

/* Ids stay unique over many reuses of the same slots. */
static void test_shadow_ids_unique_over_time(void **state)
{
	(void)state;
	struct isolde_shadow s;
	enum { DEPTH = 4, ROUNDS = 20000 };
	uint64_t *ids = malloc(ROUNDS * sizeof *ids);
	uint64_t x = 88172645463325252u;

	assert_non_null(ids);
	assert_int_equal(isolde_shadow_init(&s, DEPTH), 0);
	int live[DEPTH];
	int nlive = 0;
	for (int i = 0; i < ROUNDS; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (nlive == DEPTH || (nlive > 0 && (x & 1))) {
			int k = (int)((x >> 8) % (uint64_t)nlive);
			isolde_shadow_release(&s, (uint32_t)live[k]);
			live[k] = live[--nlive];
		}
		int idx = isolde_shadow_alloc(&s);
		assert_true(idx >= 0);
		for (int k = 0; k < nlive; k++)
			assert_int_not_equal(live[k], idx);
		live[nlive++] = idx;
		ids[i] = s.entries[idx].id;
		assert_true(ids[i] != 0);
	}
	qsort(ids, ROUNDS, sizeof *ids, cmp_u64);
	for (int i = 1; i < ROUNDS; i++)
		assert_true(ids[i] != ids[i - 1]);
	isolde_shadow_fini(&s);
	free(ids);
}

struct fx {
	struct isolde_shadow s;
	int idx;           /* an in-flight WRITE of 8192 bytes */
	uint64_t id;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	if (!f || isolde_shadow_init(&f->s, 8) != 0) {
		free(f);
		return -1;
	}
	/* Some churn first, so ids are not the trivial first ones. */
	for (int i = 0; i < 5; i++)
		isolde_shadow_release(&f->s, (uint32_t)isolde_shadow_alloc(&f->s));
	(void)isolde_shadow_alloc(&f->s);
	f->idx = isolde_shadow_alloc(&f->s);
	struct isolde_shadow_entry *e = &f->s.entries[f->idx];
	e->op = ISOLDE_BLK_OP_WRITE;
	e->length = 8192;
	e->offset = 4096;
	f->id = e->id;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	isolde_shadow_fini(&f->s);
	free(f);
	return 0;
}

static struct isolde_blk_response good_rsp(const struct fx *f)
{
	struct isolde_blk_response r;
	memset(&r, 0, sizeof r);
	r.id = f->id;
	r.op = ISOLDE_BLK_OP_WRITE;
	r.status = ISOLDE_BLK_S_OK;
	r.length = 8192;
	return r;
}

/* Expect rejection with a non-empty, terminated reason. */
static void expect_reject(const struct isolde_shadow *s, const struct isolde_blk_response *r)
{
	char why[256];
	uint32_t idx = 0xDEADBEEF;

	memset(why, 0, sizeof why);
	assert_int_equal(isolde_shadow_check(s, r, &idx, why, sizeof why), -1);
	assert_true(strlen(why) > 0);
	assert_int_equal(idx, 0xDEADBEEF); /* untouched on rejection */
	/* A tiny buffer is truncated, not overrun. */
	char tiny[8];
	memset(tiny, 'X', sizeof tiny);
	assert_int_equal(isolde_shadow_check(s, r, &idx, tiny, sizeof tiny), -1);
	assert_true(memchr(tiny, '\0', sizeof tiny) != NULL);
}

static void test_check_accepts(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);
	uint32_t idx = 0;
	char why[128] = "";

	assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
	assert_int_equal(idx, (uint32_t)f->idx);
	/* Errors may report fewer bytes, including none. */
	for (uint8_t st = ISOLDE_BLK_S_IOERR; st <= ISOLDE_BLK_S_MAX; st++) {
		r.status = st;
		r.length = 0;
		assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
		r.length = 4096;
		assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
		r.length = 8192;
		assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
	}
	/* The check does not consume the entry. */
	assert_int_equal(f->s.entries[f->idx].id, f->id);
}

static void test_check_unknown_id(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);

	r.id = 0;
	expect_reject(&f->s, &r);
	/* Index beyond the depth, with any sequence. */
	r.id = (f->id & ~INDEX_MASK) | f->s.depth;
	expect_reject(&f->s, &r);
	r.id = (f->id & ~INDEX_MASK) | INDEX_MASK;
	expect_reject(&f->s, &r);
	r.id = UINT64_MAX;
	expect_reject(&f->s, &r);
	/* Right index, wrong sequence (older, newer, zero). */
	r.id = f->id - (UINT64_C(1) << ISOLDE_SHADOW_INDEX_BITS);
	expect_reject(&f->s, &r);
	r.id = f->id + (UINT64_C(1) << ISOLDE_SHADOW_INDEX_BITS);
	expect_reject(&f->s, &r);
	r.id = (uint64_t)f->idx;
	if (r.id != 0)
		expect_reject(&f->s, &r);
	/* A free slot's index with a plausible sequence. */
	for (uint32_t i = 0; i < f->s.depth; i++) {
		if (f->s.entries[i].id != 0)
			continue;
		r.id = (f->id & ~INDEX_MASK) | i;
		expect_reject(&f->s, &r);
	}
}

static void test_check_duplicate(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);
	uint32_t idx;
	char why[128];

	assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
	isolde_shadow_release(&f->s, idx);
	/* The same response again, after the request completed. */
	expect_reject(&f->s, &r);
}

static void test_check_stale(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);
	uint32_t idx;
	char why[128];

	assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
	isolde_shadow_release(&f->s, idx);
	/* The slot is reused by a newer request with the same op and length. */
	int again = isolde_shadow_alloc(&f->s);
	assert_int_equal(again, f->idx);
	struct isolde_shadow_entry *e = &f->s.entries[again];
	assert_true(e->id != f->id);
	assert_int_equal(e->id & INDEX_MASK, f->id & INDEX_MASK);
	e->op = ISOLDE_BLK_OP_WRITE;
	e->length = 8192;
	/* The old response must not complete the new request. */
	expect_reject(&f->s, &r);
	/* The new one's response is fine. */
	r.id = e->id;
	assert_int_equal(isolde_shadow_check(&f->s, &r, &idx, why, sizeof why), 0);
	assert_int_equal(idx, (uint32_t)f->idx);
}

static void test_check_op_mismatch(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);
	static const uint8_t ops[] = { 0, ISOLDE_BLK_OP_READ, ISOLDE_BLK_OP_FLUSH, ISOLDE_BLK_OP_DISCARD,
				       ISOLDE_BLK_OP_WRITE_ZEROES, 6, 255 };

	for (size_t i = 0; i < sizeof ops; i++) {
		r.op = ops[i];
		expect_reject(&f->s, &r);
	}
}

static void test_check_status(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);

	for (unsigned st = ISOLDE_BLK_S_MAX + 1; st <= 255; st++) {
		r.status = (uint8_t)st;
		r.length = 0;
		expect_reject(&f->s, &r);
		r.length = 8192;
		expect_reject(&f->s, &r);
	}
}

static void test_check_length(void **state)
{
	struct fx *f = *state;
	struct isolde_blk_response r = good_rsp(f);

	/* More than asked, whatever the status. */
	static const uint32_t over[] = { 8193, 12288, 0x80000000u, UINT32_MAX };
	for (size_t i = 0; i < sizeof over / sizeof over[0]; i++) {
		for (uint8_t st = 0; st <= ISOLDE_BLK_S_MAX; st++) {
			r.status = st;
			r.length = over[i];
			expect_reject(&f->s, &r);
		}
	}
	/* Success for less than asked. */
	r.status = ISOLDE_BLK_S_OK;
	static const uint32_t shorter[] = { 0, 1, 4096, 8191 };
	for (size_t i = 0; i < sizeof shorter / sizeof shorter[0]; i++) {
		r.length = shorter[i];
		expect_reject(&f->s, &r);
	}
}

/* A FLUSH has length 0: only a 0-length success matches it. */
static void test_check_flush(void **state)
{
	struct fx *f = *state;
	int idx = isolde_shadow_alloc(&f->s);
	assert_true(idx >= 0);
	struct isolde_shadow_entry *e = &f->s.entries[idx];
	e->op = ISOLDE_BLK_OP_FLUSH;
	e->length = 0;

	struct isolde_blk_response r = { .id = e->id, .op = ISOLDE_BLK_OP_FLUSH, .length = 0 };
	uint32_t got;
	char why[128];
	assert_int_equal(isolde_shadow_check(&f->s, &r, &got, why, sizeof why), 0);
	assert_int_equal(got, (uint32_t)idx);
	r.length = 1;
	expect_reject(&f->s, &r);
	/* The two in-flight entries do not answer for each other. */
	r.length = 0;
	r.id = f->id;
	expect_reject(&f->s, &r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shadow_init_bounds),
		cmocka_unit_test(test_shadow_alloc_full),
		cmocka_unit_test(test_shadow_ids_unique_over_time),
		cmocka_unit_test_setup_teardown(test_check_accepts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_unknown_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_duplicate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_stale, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_op_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_status, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_length, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_flush, setup, teardown),
	};
	return cmocka_run_group_tests_name("shadow", tests, NULL, NULL);
}
