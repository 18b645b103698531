// SPDX-License-Identifier: MIT
/* Unit tests: self-describing blocks for verified workloads (src/tools/pattern.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pattern.h"

#define SEED UINT64_C(0x0123456789abcdef)

static const size_t lengths[] = {
	PATTERN_MIN_BLOCK, 65, 100, 512, 520, 4096, 4096 + 32, 4096 + 33, 4096 + 39, 4096 + 40,
	8192 + 32, 8192 + 37, 65536, 65536 + 13, 1u << 20,
};

static void test_roundtrip(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
		size_t len = lengths[i];
		unsigned char *b = malloc(len);
		assert_non_null(b);
		static const uint64_t blocks[] = { 0, 1, 12345, UINT64_MAX };
		for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) {
			pattern_fill(b, len, SEED, blocks[k], 7);
			assert_int_equal(pattern_check(b, len, SEED, blocks[k], 7), PATTERN_OK);
		}
		free(b);
	}
}

static void test_deterministic_and_distinct(void **state)
{
	(void)state;
	enum { LEN = 520 };
	unsigned char a[LEN], b[LEN];

	pattern_fill(a, LEN, SEED, 3, 9);
	pattern_fill(b, LEN, SEED, 3, 9);
	assert_memory_equal(a, b, LEN);
	/* Any change of seed, block or sequence changes the body too (not only
	 * the header), so a body copied from elsewhere does not pass. */
	pattern_fill(b, LEN, SEED, 4, 9);
	assert_memory_not_equal(a + 32, b + 32, LEN - 32);
	pattern_fill(b, LEN, SEED, 3, 10);
	assert_memory_not_equal(a + 32, b + 32, LEN - 32);
	pattern_fill(b, LEN, SEED + 1, 3, 9);
	assert_memory_not_equal(a + 32, b + 32, LEN - 32);
	/* The tail past the last full 8 bytes is filled too. */
	memset(b, 0, LEN);
	pattern_fill(b, LEN - 3, SEED, 3, 9);
	assert_memory_equal(a, b, LEN - 3);
	assert_int_equal(b[LEN - 3] | b[LEN - 2] | b[LEN - 1], 0); /* no overrun */
}

static void test_misdirected(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
		size_t len = lengths[i];
		unsigned char *b = malloc(len);
		assert_non_null(b);
		pattern_fill(b, len, SEED, 100, 5);
		assert_int_equal(pattern_check(b, len, SEED, 101, 5), PATTERN_MISDIRECTED);
		assert_int_equal(pattern_check(b, len, SEED, 99, 5), PATTERN_MISDIRECTED);
		assert_int_equal(pattern_check(b, len, SEED, 0, 5), PATTERN_MISDIRECTED);
		/* Wrong block takes precedence over wrong sequence. */
		assert_int_equal(pattern_check(b, len, SEED, 101, 6), PATTERN_MISDIRECTED);
		free(b);
	}
}

static void test_stale(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
		size_t len = lengths[i];
		unsigned char *b = malloc(len);
		assert_non_null(b);
		pattern_fill(b, len, SEED, 42, 3);
		assert_int_equal(pattern_check(b, len, SEED, 42, 4), PATTERN_STALE);
		assert_int_equal(pattern_check(b, len, SEED, 42, 1000000), PATTERN_STALE);
		assert_int_equal(pattern_check(b, len, SEED, 42, 3), PATTERN_OK);
		free(b);
	}
}

/* Flip one byte at every position: always corrupt, never ok. */
static void flip_every_byte(size_t len)
{
	unsigned char *b = malloc(len);
	assert_non_null(b);
	pattern_fill(b, len, SEED, 77, 12);
	for (size_t pos = 0; pos < len; pos++) {
		for (unsigned bit = 0; bit < 8; bit += 7) {
			b[pos] ^= (unsigned char)(1u << bit);
			enum pattern_verdict v = pattern_check(b, len, SEED, 77, 12);
			b[pos] ^= (unsigned char)(1u << bit);
			if (v != PATTERN_CORRUPT)
				fail_msg("len %zu: bit %u of byte %zu flipped: verdict %s", len, bit, pos,
					 pattern_verdict_name(v));
		}
	}
	assert_int_equal(pattern_check(b, len, SEED, 77, 12), PATTERN_OK);
	free(b);
}

static void test_corrupt_every_byte(void **state)
{
	(void)state;
	flip_every_byte(PATTERN_MIN_BLOCK);
	flip_every_byte(65);
	flip_every_byte(520);
	flip_every_byte(4096 + 33);
	flip_every_byte(8192 + 37);
}

static void test_corrupt_other(void **state)
{
	(void)state;
	enum { LEN = 65536 + 13 };
	unsigned char *b = malloc(LEN);
	assert_non_null(b);

	pattern_fill(b, LEN, SEED, 5, 5);
	/* The last byte, and bytes around the checker's 4096-byte chunks. */
	static const size_t pos[] = { LEN - 1, LEN - 2, LEN - 13, 32 + 4095, 32 + 4096, 32 + 8191,
				      32 + 61439, 32 + 61440 /* the last, partial chunk */ };
	for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++) {
		assert_true(pos[i] < LEN);
		b[pos[i]] ^= 0x80;
		assert_int_equal(pattern_check(b, LEN, SEED, 5, 5), PATTERN_CORRUPT);
		b[pos[i]] ^= 0x80;
	}
	assert_int_equal(pattern_check(b, LEN, SEED, 5, 5), PATTERN_OK);
	/* Another run's seed; zeroes; all ones. */
	assert_int_equal(pattern_check(b, LEN, SEED + 1, 5, 5), PATTERN_CORRUPT);
	memset(b, 0, LEN);
	assert_int_equal(pattern_check(b, LEN, SEED, 5, 5), PATTERN_CORRUPT);
	memset(b, 0xFF, LEN);
	assert_int_equal(pattern_check(b, LEN, SEED, 5, 5), PATTERN_CORRUPT);
	/* A header from another block spliced onto this block's body. */
	unsigned char *o = malloc(LEN);
	assert_non_null(o);
	pattern_fill(b, LEN, SEED, 5, 5);
	pattern_fill(o, LEN, SEED, 6, 5);
	memcpy(b, o, 32);
	assert_int_equal(pattern_check(b, LEN, SEED, 5, 5), PATTERN_CORRUPT);
	assert_int_equal(pattern_check(b, LEN, SEED, 6, 5), PATTERN_CORRUPT);
	free(o);
	free(b);
}

static void test_rand(void **state)
{
	(void)state;
	uint64_t s1 = 99, s2 = 99, z = 0;
	for (int i = 0; i < 1000; i++)
		assert_int_equal(pattern_rand(&s1), pattern_rand(&s2));
	/* A zero state is not stuck at zero. */
	uint64_t a = pattern_rand(&z), b = pattern_rand(&z);
	assert_true(a != 0 && b != 0 && a != b);
	assert_true(z != 0);
	/* Roughly uniform bits. */
	uint64_t st = 1;
	unsigned ones = 0;
	for (int i = 0; i < 4096; i++)
		ones += (unsigned)__builtin_popcountll(pattern_rand(&st));
	assert_true(ones > 4096 * 32 - 4096 && ones < 4096 * 32 + 4096);
}

static void test_verdict_names(void **state)
{
	(void)state;
	assert_string_equal(pattern_verdict_name(PATTERN_OK), "ok");
	assert_non_null(strstr(pattern_verdict_name(PATTERN_MISDIRECTED), "misdirected"));
	assert_non_null(strstr(pattern_verdict_name(PATTERN_STALE), "stale"));
	assert_non_null(strstr(pattern_verdict_name(PATTERN_CORRUPT), "corrupt"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_deterministic_and_distinct),
		cmocka_unit_test(test_misdirected),
		cmocka_unit_test(test_stale),
		cmocka_unit_test(test_corrupt_every_byte),
		cmocka_unit_test(test_corrupt_other),
		cmocka_unit_test(test_rand),
		cmocka_unit_test(test_verdict_names),
	};
	return cmocka_run_group_tests_name("pattern", tests, NULL, NULL);
}
