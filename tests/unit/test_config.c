// SPDX-License-Identifier: MIT
/* Unit tests: device spec parsing (isolde_blk_config_parse) and the size
 * parsers it uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "isolde/blk.h"
#include "isolde/units.h"

static void test_default(void **state)
{
	(void)state;
	struct isolde_blk_config c;

	memset(&c, 0x5A, sizeof c);
	isolde_blk_config_default(&c);
	assert_null(c.image);
	assert_string_equal(c.driver, "blk-file");
	assert_int_equal(c.notify, ISOLDE_NOTIFY_HYBRID);
	assert_int_equal(c.queue_depth, ISOLDE_BLK_DEFAULT_QUEUE_DEPTH);
	assert_int_equal(c.max_io, ISOLDE_BLK_DEFAULT_MAX_IO);
	assert_int_equal(c.timeout_ms, 0); /* 0: the policy's heartbeat */
	assert_false(c.readonly);
	assert_false(c.direct);
	assert_null(c.policy);
	assert_null(c.driver_args);
	assert_null(c.owned);
	assert_int_equal(c.data_size, 0);
}

static void test_bare_image(void **state)
{
	(void)state;
	struct isolde_blk_config c;
	char err[256] = "";

	isolde_blk_config_default(&c);
	assert_int_equal(isolde_blk_config_parse(&c, "disk.img", err, sizeof err), 0);
	assert_string_equal(c.image, "disk.img");
	/* Nothing else changed. */
	assert_string_equal(c.driver, "blk-file");
	assert_int_equal(c.notify, ISOLDE_NOTIFY_HYBRID);
	assert_int_equal(c.queue_depth, ISOLDE_BLK_DEFAULT_QUEUE_DEPTH);
	assert_int_equal(c.max_io, ISOLDE_BLK_DEFAULT_MAX_IO);
	assert_false(c.readonly);
	assert_false(c.direct);
	isolde_blk_config_free(&c);
	assert_null(c.owned);

	/* A bare image followed by flags; the spec string is not referenced. */
	char spec[] = "/dev/loop0,readonly,notify=spin";
	isolde_blk_config_default(&c);
	assert_int_equal(isolde_blk_config_parse(&c, spec, err, sizeof err), 0);
	memset(spec, 'Z', sizeof spec - 1);
	assert_string_equal(c.image, "/dev/loop0");
	assert_true(c.readonly);
	assert_int_equal(c.notify, ISOLDE_NOTIFY_SPIN);
	isolde_blk_config_free(&c);
}

static void test_all_fields(void **state)
{
	(void)state;
	struct isolde_blk_config c;
	char err[256] = "";

	isolde_blk_config_default(&c);
	assert_int_equal(isolde_blk_config_parse(&c,
		"image=/tmp/a b.img,driver=fault-driver,notify=event,qd=7,max_io=64k,"
		"timeout_ms=1500,policy=/etc/p.policy,readonly,direct", err, sizeof err), 0);
	assert_string_equal(c.image, "/tmp/a b.img");
	assert_string_equal(c.policy, "/etc/p.policy");
	assert_string_equal(c.driver, "fault-driver");
	assert_int_equal(c.notify, ISOLDE_NOTIFY_EVENT);
	assert_int_equal(c.queue_depth, 7);
	assert_int_equal(c.max_io, 65536);
	assert_int_equal(c.timeout_ms, 1500);
	assert_true(c.readonly);
	assert_true(c.direct);
	isolde_blk_config_free(&c);

	/* Each notify mode, and the limits of each numeric field. */
	static const struct {
		const char *spec;
		enum isolde_notify_mode notify;
		unsigned qd;
		size_t max_io;
		unsigned timeout;
	} ok[] = {
		{ "x,notify=spin,qd=1,max_io=4k,timeout_ms=1", ISOLDE_NOTIFY_SPIN, 1, 4096, 1 },
		{ "x,notify=hybrid,qd=1024,max_io=64M,timeout_ms=3600000", ISOLDE_NOTIFY_HYBRID, 1024,
		  64u << 20, 3600000 },
		{ "x,notify=event,qd=32,max_io=1048576", ISOLDE_NOTIFY_EVENT, 32, 1u << 20, 0 },
		{ "x,max_io=8K,max_io=12k", ISOLDE_NOTIFY_HYBRID, ISOLDE_BLK_DEFAULT_QUEUE_DEPTH, 12288, 0 },
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		isolde_blk_config_default(&c);
		if (isolde_blk_config_parse(&c, ok[i].spec, err, sizeof err) != 0)
			fail_msg("'%s' refused: %s", ok[i].spec, err);
		assert_string_equal(c.image, "x");
		assert_int_equal(c.notify, ok[i].notify);
		assert_int_equal(c.queue_depth, ok[i].qd);
		assert_int_equal(c.max_io, ok[i].max_io);
		assert_int_equal(c.timeout_ms, ok[i].timeout);
		isolde_blk_config_free(&c);
	}
}

/* spec must be refused with an error mentioning `word`. */
static void expect_error(const char *spec, const char *word)
{
	struct isolde_blk_config c;
	char err[256];

	memset(err, 0, sizeof err);
	isolde_blk_config_default(&c);
	int r = isolde_blk_config_parse(&c, spec, err, sizeof err);
	isolde_blk_config_free(&c);
	if (r != -1)
		fail_msg("spec '%s' was accepted", spec);
	if (!strstr(err, word))
		fail_msg("spec '%s': error '%s' does not mention '%s'", spec, err, word);
}

static void test_bad_values(void **state)
{
	(void)state;
	expect_error("x,notify=poll", "notify");
	expect_error("x,notify=", "notify");
	expect_error("x,notify", "notify");
	expect_error("x,notify=EVENT", "notify");
	expect_error("x,qd=0", "qd");
	expect_error("x,qd=1025", "qd");
	expect_error("x,qd=-1", "qd");
	expect_error("x,qd=abc", "qd");
	expect_error("x,qd=", "qd");
	expect_error("x,qd", "qd");
	expect_error("x,qd=4k", "qd");
	expect_error("x,qd= 4", "qd");
	expect_error("x,qd=99999999999999999999999", "qd");
	expect_error("x,qd=4294967297", "qd"); /* 2^32 + 1: must not wrap to 1 */
	expect_error("x,max_io=0", "max_io");
	expect_error("x,max_io=2048", "max_io");
	expect_error("x,max_io=4097", "max_io");
	expect_error("x,max_io=6000", "max_io");
	expect_error("x,max_io=128M", "max_io");
	expect_error("x,max_io=65M", "max_io");
	expect_error("x,max_io=1G", "max_io");
	expect_error("x,max_io=16E", "max_io");
	expect_error("x,max_io=", "max_io");
	expect_error("x,max_io", "max_io");
	expect_error("x,max_io=17179869184G", "max_io");
	expect_error("x,timeout_ms=0", "timeout_ms");
	expect_error("x,timeout_ms=3600001", "timeout_ms");
	expect_error("x,timeout_ms=1s", "timeout_ms");
	expect_error("x,timeout_ms", "timeout_ms");
	expect_error("x,readonly=1", "readonly");
	expect_error("x,readonly=", "readonly");
	expect_error("x,direct=yes", "direct");
	expect_error("image=", "image");
	expect_error("x,image", "image");
	expect_error("x,driver=", "driver");
	expect_error("x,driver", "driver");
	expect_error("x,policy=", "policy");
	expect_error("x,policy", "policy");
}

static void test_unknown_field(void **state)
{
	(void)state;
	expect_error("x,colour=blue", "colour");
	expect_error("x,QD=4", "QD");
	expect_error("x,qdepth=4", "qdepth");
	expect_error("image=x,y.img", "y.img"); /* a bare image only comes first */
	expect_error("x,=4", "unknown");
}

static void test_missing_image(void **state)
{
	(void)state;
	expect_error("", "image");
	expect_error("qd=4", "image");
	expect_error("readonly", "image");
	expect_error("notify=spin,direct", "image");
	expect_error(",,,", "image");
}

/* driver_arg: each one element of the driver's argv, in order, values
 * with '=' kept whole; at most 16; none means NULL. */
static void test_driver_args(void **state)
{
	(void)state;
	struct isolde_blk_config c;
	char err[256], spec[1024];

	isolde_blk_config_default(&c);
	assert_int_equal(isolde_blk_config_parse(&c, "x.img", err, sizeof err), 0);
	assert_null(c.driver_args);
	assert_int_equal(isolde_blk_config_parse(&c, "x.img,driver_arg=--fault=hang,qd=4,driver_arg=--after=2",
						 err, sizeof err), 0);
	assert_non_null(c.driver_args);
	assert_string_equal(c.driver_args[0], "--fault=hang");
	assert_string_equal(c.driver_args[1], "--after=2");
	assert_null(c.driver_args[2]);
	assert_int_equal(c.queue_depth, 4);
	/* A reparse forgets them. */
	assert_int_equal(isolde_blk_config_parse(&c, "y.img", err, sizeof err), 0);
	assert_null(c.driver_args);
	int n = snprintf(spec, sizeof spec, "x.img");
	for (int i = 0; i < 16; i++)
		n += snprintf(spec + n, sizeof spec - (size_t)n, ",driver_arg=a%d", i);
	assert_int_equal(isolde_blk_config_parse(&c, spec, err, sizeof err), 0);
	assert_string_equal(c.driver_args[15], "a15");
	assert_null(c.driver_args[16]);
	snprintf(spec + n, sizeof spec - (size_t)n, ",driver_arg=one-more");
	assert_int_equal(isolde_blk_config_parse(&c, spec, err, sizeof err), -1);
	assert_non_null(strstr(err, "driver_arg"));
	isolde_blk_config_free(&c);
	expect_error("x,driver_arg=", "driver_arg");
	expect_error("x,driver_arg", "driver_arg");
}

/* Parsing again into the same config frees the first parse's strings and
 * does not keep its image. */
static void test_reparse(void **state)
{
	(void)state;
	struct isolde_blk_config c;
	char err[256];

	isolde_blk_config_default(&c);
	assert_int_equal(isolde_blk_config_parse(&c, "first.img,driver=fault-driver,policy=p", err,
						 sizeof err), 0);
	assert_string_equal(c.driver, "fault-driver");
	assert_string_equal(c.policy, "p");
	assert_int_equal(isolde_blk_config_parse(&c, "second.img", err, sizeof err), 0);
	assert_string_equal(c.image, "second.img");
	assert_string_equal(c.driver, "blk-file");
	assert_null(c.policy);
	assert_int_equal(isolde_blk_config_parse(&c, "qd=3", err, sizeof err), -1);
	assert_non_null(strstr(err, "image"));
	isolde_blk_config_free(&c);
}

static void test_parse_size(void **state)
{
	(void)state;
	static const struct { const char *s; uint64_t v; } ok[] = {
		{ "0", 0 },
		{ "1", 1 },
		{ "4096", 4096 },
		{ "4k", 4096 },
		{ "4K", 4096 },
		{ "64K", 65536 },
		{ "1M", 1u << 20 },
		{ "1m", 1u << 20 },
		{ "1G", 1u << 30 },
		{ "2g", UINT64_C(2) << 30 },
		{ "0k", 0 },
		{ "007", 7 },
		{ "18446744073709551615", UINT64_MAX },
		{ "17179869183G", UINT64_C(17179869183) << 30 },
		{ "17592186044415M", UINT64_C(17592186044415) << 20 },
		{ "18014398509481983k", UINT64_C(18014398509481983) << 10 },
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		uint64_t v = 0xDEAD;
		if (isolde_parse_size(ok[i].s, &v) != 0)
			fail_msg("'%s' refused", ok[i].s);
		if (v != ok[i].v)
			fail_msg("'%s' -> %llu, want %llu", ok[i].s, (unsigned long long)v,
				 (unsigned long long)ok[i].v);
	}
	static const char *const bad[] = {
		"", "k", "K", "M", "12x", "1.5M", "-1", "+1", " 1", "1 ", "1kk", "1MG", "1T", "1e3",
		"0x10", "4k4", "4i", "4B", "4iB", "4 k", "k4",
		"18446744073709551616",    /* 2^64 */
		"99999999999999999999999", /* way past */
		"17179869184G",            /* 2^34 G = 2^64 */
		"17592186044416M",         /* 2^44 M = 2^64 */
		"18014398509481984k",      /* 2^54 k = 2^64 */
		"18446744073709551615k",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint64_t v = 0;
		if (isolde_parse_size(bad[i], &v) == 0)
			fail_msg("'%s' accepted as %llu", bad[i], (unsigned long long)v);
	}
	uint64_t v;
	assert_int_equal(isolde_parse_size(NULL, &v), -1);
}

static void test_parse_u64(void **state)
{
	(void)state;
	static const struct { const char *s; uint64_t v; } ok[] = {
		{ "0", 0 }, { "1", 1 }, { "123", 123 }, { "0042", 42 },
		{ "4294967296", UINT64_C(4294967296) },
		{ "18446744073709551615", UINT64_MAX },
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		uint64_t v = 0xDEAD;
		if (isolde_parse_u64(ok[i].s, &v) != 0)
			fail_msg("'%s' refused", ok[i].s);
		assert_int_equal(v, ok[i].v);
	}
	static const char *const bad[] = {
		"", "k", "1k", "4K", "12x", "-1", "+1", " 1", "1 ", "0x10", "1.0",
		"18446744073709551616", "99999999999999999999999",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint64_t v = 0;
		if (isolde_parse_u64(bad[i], &v) == 0)
			fail_msg("'%s' accepted as %llu", bad[i], (unsigned long long)v);
	}
	uint64_t v;
	assert_int_equal(isolde_parse_u64(NULL, &v), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_default),
		cmocka_unit_test(test_bare_image),
		cmocka_unit_test(test_all_fields),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_unknown_field),
		cmocka_unit_test(test_missing_image),
		cmocka_unit_test(test_reparse),
		cmocka_unit_test(test_driver_args),
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_u64),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
