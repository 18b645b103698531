// SPDX-License-Identifier: MIT
/*
 * Unit tests: the block front end in-process against the real blk-file
 * driver on a temporary 16 MiB image, in every notify mode. Every test keeps
 * a private model of the image and checks reads through isolde and reads of
 * the file itself against it.
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

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "isolde/blk.h"
#include "isolde/notify.h"

#include "device.h" /* white box: the shared data area, to play a scribbling driver */

#define IMG_SIZE (16u << 20)
#define MAX_IO (128u * 1024)
#define POOL_SIZE (8u << 20)

static const enum isolde_notify_mode modes[] = {
	ISOLDE_NOTIFY_EVENT, ISOLDE_NOTIFY_SPIN, ISOLDE_NOTIFY_HYBRID,
};

struct fx {
	char path[64];
	char policy[64];        /* a policy file of ours, "" for the shipped one */
	int fd;                 /* our own fd on the image, for checking */
	struct isolde_blk *dev; /* closed by teardown if a test fails */
	unsigned char *model;   /* what the image must contain */
	unsigned char *scratch; /* IMG_SIZE bytes for whole-image reads */
	uint64_t rng;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	snprintf(f->path, sizeof f->path, "/tmp/isolde-unit-XXXXXX");
	f->fd = mkstemp(f->path);
	if (f->fd < 0) {
		free(f);
		return -1;
	}
	f->model = calloc(1, IMG_SIZE);
	f->scratch = malloc(IMG_SIZE);
	f->rng = 0x853c49e6748fea9bull ^ (uint64_t)getpid();
	*state = f;
	if (!f->model || !f->scratch || ftruncate(f->fd, IMG_SIZE) != 0)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	if (!f)
		return 0;
	isolde_blk_close(f->dev);
	if (f->fd >= 0)
		close(f->fd);
	unlink(f->path);
	if (f->policy[0])
		unlink(f->policy);
	free(f->model);
	free(f->scratch);
	free(f);
	return 0;
}

static uint64_t rnd(struct fx *f)
{
	f->rng ^= f->rng << 13;
	f->rng ^= f->rng >> 7;
	f->rng ^= f->rng << 17;
	return f->rng;
}

static void fill_random(struct fx *f, void *buf, size_t len)
{
	unsigned char *p = buf;
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = rnd(f);
		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
}

static struct isolde_blk *open_dev(struct fx *f, enum isolde_notify_mode mode, unsigned qd, bool ro)
{
	struct isolde_blk_config c;
	char err[512] = "";

	assert_null(f->dev);
	isolde_blk_config_default(&c);
	c.image = f->path;
	c.notify = mode;
	c.queue_depth = qd;
	c.max_io = MAX_IO;
	c.data_size = POOL_SIZE;
	c.readonly = ro;
	c.timeout_ms = 20000; /* no hang verdicts on a slow (sanitized) machine */
	c.policy = f->policy[0] ? f->policy : NULL;
	f->dev = isolde_blk_open(&c, err, sizeof err);
	if (!f->dev)
		fail_msg("isolde_blk_open(%s, qd %u): %s", isolde_notify_mode_name(mode), qd, err);
	assert_int_equal(isolde_blk_size(f->dev), IMG_SIZE);
	assert_int_equal(isolde_blk_queue_depth(f->dev), qd);
	assert_int_equal(isolde_blk_max_io(f->dev), MAX_IO);
	assert_true(isolde_blk_driver_pid(f->dev) > 0);
	assert_false(isolde_blk_failed(f->dev));
	assert_string_equal(isolde_blk_error(f->dev), "");
	assert_int_equal(isolde_blk_inflight(f->dev), 0);
	return f->dev;
}

static void close_dev(struct fx *f)
{
	isolde_blk_close(f->dev);
	f->dev = NULL;
}

static void expect_same(const unsigned char *got, const unsigned char *want, size_t len,
			uint64_t base, const char *what)
{
	if (memcmp(got, want, len) == 0)
		return;
	size_t i = 0;
	while (got[i] == want[i])
		i++;
	fail_msg("%s: first difference at byte %llu: got %02x, want %02x", what,
		 (unsigned long long)(base + i), got[i], want[i]);
}

/* The image file itself, read with our own fd, matches the model. */
static void check_file(struct fx *f)
{
	size_t done = 0;
	while (done < IMG_SIZE) {
		ssize_t n = pread(f->fd, f->scratch + done, IMG_SIZE - done, (off_t)done);
		assert_true(n > 0);
		done += (size_t)n;
	}
	expect_same(f->scratch, f->model, IMG_SIZE, 0, "image file");
}

/* The whole device, read through isolde (128 pieces of max_io), matches. */
static void check_device(struct fx *f)
{
	memset(f->scratch, 0xCC, IMG_SIZE);
	assert_int_equal(isolde_blk_read(f->dev, f->scratch, IMG_SIZE, 0), 0);
	expect_same(f->scratch, f->model, IMG_SIZE, 0, "device read");
}

static void write_read_check(struct fx *f, uint64_t off, size_t len, bool fua)
{
	unsigned char *w = malloc(len), *r = malloc(len);
	assert_non_null(w);
	assert_non_null(r);
	fill_random(f, w, len);
	int rc = fua ? isolde_blk_write_fua(f->dev, w, len, off) : isolde_blk_write(f->dev, w, len, off);
	if (rc != 0)
		fail_msg("write %zu bytes at %llu: %d", len, (unsigned long long)off, rc);
	memcpy(f->model + off, w, len);
	memset(r, 0xCC, len);
	assert_int_equal(isolde_blk_read(f->dev, r, len, off), 0);
	expect_same(r, w, len, off, "read back");
	/* And it is in the file. */
	memset(r, 0xCC, len);
	assert_int_equal(pread(f->fd, r, len, (off_t)off), (ssize_t)len);
	expect_same(r, w, len, off, "file after write");
	free(w);
	free(r);
}

/* ---- synchronous API ---- */

static void sync_suite(struct fx *f, enum isolde_notify_mode mode, unsigned qd)
{
	static const struct { uint64_t off; size_t len; } w[] = {
		{ 0, 4096 },
		{ 3 * 4096, 512 },
		{ 12345, 777 },                                /* unaligned */
		{ (1u << 20) + 3, 3 * MAX_IO + 1234 },         /* split into 4 pieces */
		{ 5 * MAX_IO - 100, MAX_IO + 200 },            /* straddles piece boundaries */
		{ 2u << 20, 1u << 20 },                        /* exactly 8 pieces */
		{ 9u << 20, MAX_IO },                          /* exactly max_io */
		{ IMG_SIZE - 4096, 4096 },                     /* the end of the device */
		{ IMG_SIZE - 1, 1 },                           /* the last byte */
		{ 8191, 2 },                                   /* across a page boundary */
		{ 12000, 1000 },                               /* overlaps an earlier write */
	};

	open_dev(f, mode, qd, false);
	/* Whatever an earlier open wrote is still there. */
	check_device(f);
	for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
		/* Shift by a few bytes per queue depth so runs do not just
		 * rewrite the same ranges. */
		uint64_t off = w[i].off + qd % 7;
		if (off + w[i].len > IMG_SIZE)
			off = w[i].off;
		write_read_check(f, off, w[i].len, i % 4 == 3);
	}
	assert_int_equal(isolde_blk_flush(f->dev), 0);

	/* Zero copy: buffers in the shared data area, no bytes copied. */
	struct isolde_blk_stats before, after;
	size_t zlen = 2 * MAX_IO + 300000 % MAX_IO; /* > max_io: split */
	unsigned char *zw = isolde_blk_buf_alloc(f->dev, zlen);
	unsigned char *zr = isolde_blk_buf_alloc(f->dev, zlen);
	assert_non_null(zw);
	assert_non_null(zr);
	assert_true(zr >= zw + zlen || zw >= zr + zlen);
	assert_int_equal((uintptr_t)zw % 4096, 0);
	fill_random(f, zw, zlen);
	memset(zr, 0xCC, zlen);
	uint64_t zoff = (7u << 20) + 5 + qd;
	isolde_blk_get_stats(f->dev, &before);
	assert_int_equal(isolde_blk_write(f->dev, zw, zlen, zoff), 0);
	assert_int_equal(isolde_blk_read(f->dev, zr, zlen, zoff), 0);
	isolde_blk_get_stats(f->dev, &after);
	assert_int_equal(after.bytes_copied, before.bytes_copied);
	assert_int_equal(after.requests - before.requests, 2 * 3);
	assert_int_equal(after.errors, 0);
	memcpy(f->model + zoff, zw, zlen);
	expect_same(zr, zw, zlen, zoff, "zero-copy read back");
	isolde_blk_buf_free(f->dev, zw);
	isolde_blk_buf_free(f->dev, zr);
	/* Copy mode does count its bytes. */
	isolde_blk_get_stats(f->dev, &before);
	write_read_check(f, 11u << 20, 10000, false);
	isolde_blk_get_stats(f->dev, &after);
	assert_int_equal(after.bytes_copied - before.bytes_copied, 2 * 10000);

	/* Bad zero-copy allocations. */
	assert_null(isolde_blk_buf_alloc(f->dev, 0));
	assert_null(isolde_blk_buf_alloc(f->dev, POOL_SIZE + 1));
	assert_null(isolde_blk_buf_alloc(f->dev, SIZE_MAX));
	void *all = isolde_blk_buf_alloc(f->dev, POOL_SIZE);
	assert_non_null(all);
	assert_null(isolde_blk_buf_alloc(f->dev, 1));
	isolde_blk_buf_free(f->dev, all);

	check_device(f);
	check_file(f);
	assert_int_equal(isolde_blk_inflight(f->dev), 0);
	assert_false(isolde_blk_failed(f->dev));
	close_dev(f);
}

static void test_sync(void **state, enum isolde_notify_mode mode)
{
	struct fx *f = *state;
	sync_suite(f, mode, 1);
	sync_suite(f, mode, 32);
}

static void test_sync_event(void **state) { test_sync(state, ISOLDE_NOTIFY_EVENT); }
static void test_sync_spin(void **state) { test_sync(state, ISOLDE_NOTIFY_SPIN); }
static void test_sync_hybrid(void **state) { test_sync(state, ISOLDE_NOTIFY_HYBRID); }

/* ---- asynchronous API ---- */

#define REGION (64u * 1024)
#define ASYNC_BASE (8u << 20)

/*
 * Run ios through submit / one push / reap, as many rounds as the queue
 * needs; each io must come back exactly once with result 0.
 */
static void run_async(struct fx *f, struct isolde_blk_io *ios, unsigned nio)
{
	struct isolde_blk *dev = f->dev;
	unsigned qd = isolde_blk_queue_depth(dev);
	struct isolde_blk_io **done = calloc(nio, sizeof *done);
	bool *seen = calloc(nio, sizeof *seen);
	unsigned next = 0, completed = 0;
	bool first = true;

	assert_non_null(done);
	assert_non_null(seen);
	for (unsigned i = 0; i < nio; i++) {
		ios[i].user_data = &seen[i];
		ios[i].result = 12345;
	}
	while (completed < nio) {
		unsigned batch = 0;
		while (next < nio) {
			int r = isolde_blk_submit(dev, &ios[next]);
			if (r == -EAGAIN)
				break;
			if (r != 0)
				fail_msg("submit io %u (op %u, %u bytes at %llu): %d", next, ios[next].op,
					 ios[next].len, (unsigned long long)ios[next].offset, r);
			next++;
			batch++;
		}
		if (first && nio >= qd) {
			/* The queue takes exactly queue_depth requests. */
			assert_int_equal(batch, qd);
			struct isolde_blk_io extra = { .op = ISOLDE_BLK_OP_FLUSH };
			assert_int_equal(isolde_blk_submit(dev, &extra), -EAGAIN);
		}
		first = false;
		unsigned inflight = isolde_blk_inflight(dev);
		assert_int_equal(inflight, batch);
		struct isolde_blk_stats before, after;
		isolde_blk_get_stats(dev, &before);
		isolde_blk_push(dev);
		isolde_blk_get_stats(dev, &after);
		assert_true(after.kicks - before.kicks <= 1);
		int n = isolde_blk_reap(dev, done, nio, inflight, 10000);
		if (n != (int)inflight)
			fail_msg("reap returned %d of %u (error: %s)", n, inflight, isolde_blk_error(dev));
		for (int i = 0; i < n; i++) {
			bool *s = done[i]->user_data;
			assert_true(s >= seen && s < seen + nio);
			assert_false(*s);
			*s = true;
			if (done[i]->result != 0)
				fail_msg("io %td (op %u) failed: %d", s - seen, done[i]->op, done[i]->result);
		}
		completed += (unsigned)n;
		assert_int_equal(isolde_blk_inflight(dev), 0);
	}
	/* Nothing left: reap returns at once with nothing. */
	assert_int_equal(isolde_blk_reap(dev, done, nio, 1, 1000), 0);
	free(done);
	free(seen);
}

static void async_round(struct fx *f, bool zero_copy)
{
	unsigned qd = isolde_blk_queue_depth(f->dev);
	unsigned nio = 2 * qd + 3;
	struct isolde_blk_io *ios = calloc(nio + 1, sizeof *ios);
	unsigned char **bufs = calloc(nio, sizeof *bufs);
	uint64_t total = 0;
	struct isolde_blk_stats before, after;

	assert_non_null(ios);
	assert_non_null(bufs);
	assert_true(ASYNC_BASE + (uint64_t)nio * REGION <= IMG_SIZE);
	for (unsigned i = 0; i < nio; i++) {
		uint32_t len = 1 + (uint32_t)(rnd(f) % (REGION - 16));
		bufs[i] = zero_copy ? isolde_blk_buf_alloc(f->dev, len) : malloc(len);
		assert_non_null(bufs[i]);
		fill_random(f, bufs[i], len);
		ios[i].op = ISOLDE_BLK_OP_WRITE;
		ios[i].flags = i % 5 == 0 ? ISOLDE_BLK_F_FUA : 0;
		ios[i].buf = bufs[i];
		ios[i].len = len;
		ios[i].offset = ASYNC_BASE + (uint64_t)i * REGION + rnd(f) % 8;
		memcpy(f->model + ios[i].offset, bufs[i], len);
		total += len;
	}
	/* A flush rides along with the writes. */
	ios[nio].op = ISOLDE_BLK_OP_FLUSH;
	isolde_blk_get_stats(f->dev, &before);
	run_async(f, ios, nio + 1);
	isolde_blk_get_stats(f->dev, &after);
	assert_int_equal(after.bytes_copied - before.bytes_copied, zero_copy ? 0 : total);
	assert_int_equal(after.requests - before.requests, nio + 1);
	check_file(f);

	/* Read everything back into cleared buffers. */
	for (unsigned i = 0; i < nio; i++) {
		memset(bufs[i], 0xCC, ios[i].len);
		ios[i].op = ISOLDE_BLK_OP_READ;
		ios[i].flags = 0;
	}
	isolde_blk_get_stats(f->dev, &before);
	run_async(f, ios, nio);
	isolde_blk_get_stats(f->dev, &after);
	assert_int_equal(after.bytes_copied - before.bytes_copied, zero_copy ? 0 : total);
	for (unsigned i = 0; i < nio; i++)
		expect_same(bufs[i], f->model + ios[i].offset, ios[i].len, ios[i].offset, "async read");

	for (unsigned i = 0; i < nio; i++) {
		if (zero_copy)
			isolde_blk_buf_free(f->dev, bufs[i]);
		else
			free(bufs[i]);
	}
	free(bufs);
	free(ios);
}

static void test_async(void **state, enum isolde_notify_mode mode)
{
	struct fx *f = *state;
	static const unsigned qds[] = { 1, 32 };

	for (size_t i = 0; i < 2; i++) {
		open_dev(f, mode, qds[i], false);
		async_round(f, false);
		async_round(f, true);
		check_device(f);
		check_file(f);
		struct isolde_blk_stats st;
		isolde_blk_get_stats(f->dev, &st);
		assert_int_equal(st.errors, 0);
		assert_int_equal(st.protocol_violations, 0);
		close_dev(f);
	}
}

static void test_async_event(void **state) { test_async(state, ISOLDE_NOTIFY_EVENT); }
static void test_async_spin(void **state) { test_async(state, ISOLDE_NOTIFY_SPIN); }
static void test_async_hybrid(void **state) { test_async(state, ISOLDE_NOTIFY_HYBRID); }

/* ---- flush, discard, write zeroes ---- */

static void expect_zero(struct fx *f, uint64_t off, size_t len)
{
	unsigned char *b = malloc(len);
	assert_non_null(b);
	memset(b, 0xCC, len);
	assert_int_equal(isolde_blk_read(f->dev, b, len, off), 0);
	for (size_t i = 0; i < len; i++)
		if (b[i])
			fail_msg("byte %llu reads %02x after write_zeroes", (unsigned long long)(off + i), b[i]);
	free(b);
}

static void test_discard_zeroes(void **state)
{
	struct fx *f = *state;

	for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
		open_dev(f, modes[m], 8, false);
		/* Random data over the region first, so zeroes are visible. */
		write_read_check(f, 4u << 20, 4u << 20, false);

		assert_int_equal(isolde_blk_write_zeroes(f->dev, (4u << 20) + 1000, 100000, false), 0);
		memset(f->model + (4u << 20) + 1000, 0, 100000);
		expect_zero(f, (4u << 20) + 1000, 100000);

		assert_int_equal(isolde_blk_write_zeroes(f->dev, (4u << 20) + (512u << 10), 64u << 10, true), 0);
		memset(f->model + (4u << 20) + (512u << 10), 0, 64u << 10);
		expect_zero(f, (4u << 20) + (512u << 10), 64u << 10);

		/* Larger than max_io: range ops are not limited by it. */
		uint64_t zo = (5u << 20) + 3;
		assert_int_equal(isolde_blk_write_zeroes(f->dev, zo, (2u << 20) + 7, m % 2 == 0), 0);
		memset(f->model + zo, 0, (2u << 20) + 7);
		expect_zero(f, zo, (2u << 20) + 7);

		/* Discard: succeeds; its range is undefined, everything else kept. */
		assert_int_equal(isolde_blk_discard(f->dev, (7u << 20) + 4096, 256u << 10), 0);
		assert_int_equal(isolde_blk_discard(f->dev, (7u << 20) + 300000 + 1, 5000), 0);
		assert_int_equal(isolde_blk_read(f->dev, f->model + (7u << 20), 1u << 20, 7u << 20), 0);

		/* Out of range. */
		assert_int_equal(isolde_blk_write_zeroes(f->dev, IMG_SIZE - 10, 11, false), -EINVAL);
		assert_int_equal(isolde_blk_write_zeroes(f->dev, IMG_SIZE, 1, true), -EINVAL);
		assert_int_equal(isolde_blk_discard(f->dev, IMG_SIZE - 4096, 8192), -EINVAL);
		assert_int_equal(isolde_blk_discard(f->dev, UINT64_MAX - 10, 100), -EINVAL);
		/* Right up to the end is fine. */
		assert_int_equal(isolde_blk_write_zeroes(f->dev, IMG_SIZE - 10, 10, false), 0);
		memset(f->model + IMG_SIZE - 10, 0, 10);

		assert_int_equal(isolde_blk_flush(f->dev), 0);
		check_device(f);
		check_file(f);
		assert_false(isolde_blk_failed(f->dev));
		close_dev(f);
	}
}

/* ---- requests refused at submission ---- */

static void expect_submit(struct isolde_blk *dev, struct isolde_blk_io io, int want, const char *what)
{
	int r = isolde_blk_submit(dev, &io);
	if (r != want)
		fail_msg("%s: submit returned %d, want %d", what, r, want);
}

static void test_invalid_submit(void **state)
{
	struct fx *f = *state;
	static unsigned char buf[2 * MAX_IO];
	const uint64_t end = IMG_SIZE;

	open_dev(f, ISOLDE_NOTIFY_EVENT, 4, false);
	struct isolde_blk *dev = f->dev;
#define IO(op_, fl_, b_, len_, off_) ((struct isolde_blk_io){ .op = (op_), .flags = (fl_), .buf = (b_), .len = (len_), .offset = (off_) })
	const uint8_t RD = ISOLDE_BLK_OP_READ, WR = ISOLDE_BLK_OP_WRITE, FL = ISOLDE_BLK_OP_FLUSH,
		      DI = ISOLDE_BLK_OP_DISCARD, WZ = ISOLDE_BLK_OP_WRITE_ZEROES;

	/* Ranges beyond the device. */
	expect_submit(dev, IO(RD, 0, buf, 1, end), -EINVAL, "read at end");
	expect_submit(dev, IO(RD, 0, buf, 2, end - 1), -EINVAL, "read across end");
	expect_submit(dev, IO(WR, 0, buf, 4096, end - 4095), -EINVAL, "write across end");
	expect_submit(dev, IO(RD, 0, buf, 1, UINT64_MAX), -EINVAL, "read at 2^64-1");
	expect_submit(dev, IO(RD, 0, buf, 4096, UINT64_MAX - 10), -EINVAL, "read wrapping");
	expect_submit(dev, IO(DI, 0, NULL, 8192, end - 4096), -EINVAL, "discard across end");
	expect_submit(dev, IO(WZ, 0, NULL, 1, end), -EINVAL, "write_zeroes at end");
	expect_submit(dev, IO(WZ, 0, NULL, UINT32_MAX, 0), -EINVAL, "write_zeroes 4G");
	/* Lengths. */
	expect_submit(dev, IO(RD, 0, buf, 0, 0), -EINVAL, "read len 0");
	expect_submit(dev, IO(WR, 0, buf, 0, 0), -EINVAL, "write len 0");
	expect_submit(dev, IO(DI, 0, NULL, 0, 0), -EINVAL, "discard len 0");
	expect_submit(dev, IO(WZ, 0, NULL, 0, 0), -EINVAL, "write_zeroes len 0");
	expect_submit(dev, IO(RD, 0, buf, MAX_IO + 1, 0), -EINVAL, "read > max_io");
	expect_submit(dev, IO(WR, 0, buf, MAX_IO + 1, 0), -EINVAL, "write > max_io");
	expect_submit(dev, IO(WR, 0, buf, 2 * MAX_IO, 0), -EINVAL, "write 2 * max_io");
	expect_submit(dev, IO(RD, 0, buf, UINT32_MAX, 0), -EINVAL, "read 4G");
	expect_submit(dev, IO(FL, 0, NULL, 1, 0), -EINVAL, "flush with a length");
	/* No buffer. */
	expect_submit(dev, IO(RD, 0, NULL, 4096, 0), -EINVAL, "read without buffer");
	expect_submit(dev, IO(WR, 0, NULL, 4096, 0), -EINVAL, "write without buffer");
	/* Unknown ops. */
	expect_submit(dev, IO(0, 0, buf, 4096, 0), -EINVAL, "op 0");
	expect_submit(dev, IO(6, 0, buf, 4096, 0), -EINVAL, "op 6");
	expect_submit(dev, IO(255, 0, buf, 4096, 0), -EINVAL, "op 255");
	/* Flags that do not belong to the op. */
	expect_submit(dev, IO(RD, ISOLDE_BLK_F_FUA, buf, 4096, 0), -EINVAL, "read with FUA");
	expect_submit(dev, IO(WR, ISOLDE_BLK_F_MAY_UNMAP, buf, 4096, 0), -EINVAL, "write with MAY_UNMAP");
	expect_submit(dev, IO(WR, 0x8, buf, 4096, 0), -EINVAL, "write with unknown flag");
	expect_submit(dev, IO(WR, 0x8000, buf, 4096, 0), -EINVAL, "write with flag 0x8000");
	expect_submit(dev, IO(FL, ISOLDE_BLK_F_FUA, NULL, 0, 0), -EINVAL, "flush with FUA");
	expect_submit(dev, IO(DI, ISOLDE_BLK_F_MAY_UNMAP, NULL, 4096, 0), -EINVAL, "discard with flag");
	expect_submit(dev, IO(WZ, ISOLDE_BLK_F_FUA, NULL, 4096, 0), -EINVAL, "write_zeroes with FUA");

	/* Nothing was queued, the device is fine. */
	assert_int_equal(isolde_blk_inflight(dev), 0);
	assert_false(isolde_blk_failed(dev));
	struct isolde_blk_stats st;
	isolde_blk_get_stats(dev, &st);
	assert_int_equal(st.requests, 0);

	/* The limits themselves are accepted and work. */
	struct isolde_blk_io ok[4] = {
		IO(RD, 0, buf, MAX_IO, end - MAX_IO),
		IO(WR, ISOLDE_BLK_F_FUA, buf, 1, end - 1),
		IO(DI, 0, NULL, 4u << 20, 0),
		IO(FL, 0, NULL, 0, 0),
	};
	for (int i = 0; i < 4; i++)
		assert_int_equal(isolde_blk_submit(dev, &ok[i]), 0);
	struct isolde_blk_io *done[4];
	assert_int_equal(isolde_blk_reap(dev, done, 4, 4, 10000), 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(done[i]->result, 0);

	/* Sync calls refuse the same. */
	assert_int_equal(isolde_blk_read(dev, buf, 10, end - 5), -EINVAL);
	assert_int_equal(isolde_blk_write(dev, buf, 1, end), -EINVAL);
	assert_int_equal(isolde_blk_read(dev, NULL, 10, 0), -EINVAL);
	assert_int_equal(isolde_blk_write(dev, NULL, 10, 0), -EINVAL);
	assert_int_equal(isolde_blk_inflight(dev), 0);
	assert_false(isolde_blk_failed(dev));
#undef IO
}

/* ---- read-only device ---- */

static void test_readonly(void **state)
{
	struct fx *f = *state;
	static unsigned char buf[8192];

	fill_random(f, f->model, IMG_SIZE);
	assert_int_equal(pwrite(f->fd, f->model, IMG_SIZE, 0), (ssize_t)IMG_SIZE);

	for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
		open_dev(f, modes[m], 4, true);
		struct isolde_blk *dev = f->dev;
		fill_random(f, buf, sizeof buf);

		assert_int_equal(isolde_blk_write(dev, buf, sizeof buf, 0), -EROFS);
		assert_int_equal(isolde_blk_write(dev, buf, 1, 12345), -EROFS);
		assert_int_equal(isolde_blk_write_fua(dev, buf, sizeof buf, 4096), -EROFS);
		assert_int_equal(isolde_blk_write_zeroes(dev, 0, 4096, false), -EROFS);
		assert_int_equal(isolde_blk_write_zeroes(dev, 0, 4096, true), -EROFS);
		assert_int_equal(isolde_blk_discard(dev, 0, 4096), -EROFS);
		struct isolde_blk_io w = { .op = ISOLDE_BLK_OP_WRITE, .buf = buf, .len = 4096 };
		assert_int_equal(isolde_blk_submit(dev, &w), -EROFS);
		struct isolde_blk_io z = { .op = ISOLDE_BLK_OP_WRITE_ZEROES, .len = 4096 };
		assert_int_equal(isolde_blk_submit(dev, &z), -EROFS);
		struct isolde_blk_io d = { .op = ISOLDE_BLK_OP_DISCARD, .len = 4096 };
		assert_int_equal(isolde_blk_submit(dev, &d), -EROFS);
		assert_int_equal(isolde_blk_inflight(dev), 0);

		/* Reads and flushes work. */
		check_device(f);
		assert_int_equal(isolde_blk_flush(dev), 0);
		assert_false(isolde_blk_failed(dev));
		close_dev(f);
	}
	check_file(f);
}

/* ---- the driver dies with requests in flight ---- */

/* A policy like the shipped one, but with no restarts: the first failure
 * fails the device. */
static const char no_restart_policy[] =
	"driver     blk-file\n"
	"device     read-write\n"
	"syscalls   base io sync\n"
	"memory     64M\n"
	"files      16\n"
	"heartbeat  2000ms\n"
	"restart    0 per 60s\n"
	"crash-loop 1\n";

static void use_no_restart_policy(struct fx *f)
{
	if (f->policy[0])
		return;
	snprintf(f->policy, sizeof f->policy, "/tmp/isolde-unit-XXXXXX.policy");
	int fd = mkstemps(f->policy, 7);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, no_restart_policy, sizeof no_restart_policy - 1),
			 (ssize_t)(sizeof no_restart_policy - 1));
	close(fd);
}

static void wait_stopped(pid_t pid)
{
	siginfo_t si;
	memset(&si, 0, sizeof si);
	assert_int_equal(waitid(P_PID, (id_t)pid, &si, WSTOPPED | WNOWAIT), 0);
	assert_int_equal(si.si_pid, pid);
}

/* Wait until pid has exited; WNOWAIT leaves the zombie for the launcher. */
static void wait_dead(pid_t pid)
{
	siginfo_t si;
	memset(&si, 0, sizeof si);
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) != 0)
		assert_int_equal(errno, ECHILD); /* already reaped by the launcher */
}

/*
 * 32 requests in flight (half writes of new data, half reads), then SIGKILL.
 * stopped: the driver is stopped (SIGSTOP) before the requests are pushed,
 * so all 32 are on the ring and certainly unanswered when it dies;
 * otherwise it is killed while running and may answer some first.
 * restart: with the shipped policy the front end restarts the driver and
 * replays; with a no-restart policy the device fails and everything is -EIO.
 */
static void kill_in_flight(struct fx *f, enum isolde_notify_mode mode, bool stopped, bool restart)
{
	enum { N = 32, BLK = 4096 };
	struct isolde_blk_io ios[N], *done[N + 1];
	static unsigned char bufs[N][BLK];
	bool seen[N];
	const char *mname = isolde_notify_mode_name(mode);

	if (!restart)
		use_no_restart_policy(f);
	open_dev(f, mode, N, false);
	struct isolde_blk *dev = f->dev;
	pid_t pid = isolde_blk_driver_pid(dev);
	assert_int_equal(isolde_blk_generation(dev), 1);
	/* Known contents for the blocks the reads will read. */
	for (int i = 0; i < N; i++)
		write_read_check(f, (uint64_t)i * 65536, BLK, false);

	/* Reads completed in ring order leave the free list reversed: the
	 * batch below gets shadow indices in the opposite order to its
	 * submission, so a replay by index rather than by age shows. */
	memset(ios, 0, sizeof ios);
	for (int i = 0; i < N; i++) {
		ios[i] = (struct isolde_blk_io){ .op = ISOLDE_BLK_OP_READ, .buf = bufs[i], .len = BLK,
						 .offset = (uint64_t)i * 65536 };
		assert_int_equal(isolde_blk_submit(dev, &ios[i]), 0);
	}
	assert_int_equal(isolde_blk_reap(dev, done, N, N, 10000), N);

	memset(ios, 0, sizeof ios);
	memset(seen, 0, sizeof seen);
	for (int i = 0; i < N; i++) {
		ios[i].op = i % 2 ? ISOLDE_BLK_OP_READ : ISOLDE_BLK_OP_WRITE;
		ios[i].buf = bufs[i];
		ios[i].len = BLK;
		/* The last write goes over the first: the later one must win. */
		ios[i].offset = i == N - 2 ? 0 : (uint64_t)i * 65536;
		ios[i].user_data = &seen[i];
		ios[i].result = 12345;
		if (i % 2) {
			memset(bufs[i], 0xCC, BLK);
		} else {
			fill_random(f, bufs[i], BLK);
			if (restart)
				memcpy(f->model + ios[i].offset, bufs[i], BLK);
		}
		assert_int_equal(isolde_blk_submit(dev, &ios[i]), 0);
	}
	assert_int_equal(isolde_blk_inflight(dev), N);
	if (stopped) {
		assert_int_equal(kill(pid, SIGSTOP), 0);
		wait_stopped(pid);
		/* Play the dying driver: scribble over the whole data area,
		 * bounce buffers included. A replayed write must be copied
		 * again from the caller's buffer. */
		memset(dev->domain.data, 0x5A, dev->domain.layout.data_size);
	}
	isolde_blk_push(dev);

	uint64_t t0 = isolde_now_ns();
	assert_int_equal(kill(pid, SIGKILL), 0);
	int n = isolde_blk_reap(dev, done, N + 1, N, 10000);
	uint64_t dt = isolde_now_ns() - t0;
	if (n != N)
		fail_msg("%s: reap returned %d of %d (failed %d: %s)", mname, n, N, isolde_blk_failed(dev),
			 isolde_blk_error(dev));
	/* Failing is quick; a restart includes starting a new driver. */
	uint64_t limit = restart ? 5000000000u : 1000000000u;
	if (dt >= limit)
		fail_msg("%s: reaping after the kill took %llu ms", mname, (unsigned long long)(dt / 1000000));
	int eio = 0;
	for (int i = 0; i < n; i++) {
		bool *sp = done[i]->user_data;
		assert_true(sp >= seen && sp < seen + N);
		assert_false(*sp);
		*sp = true;
		if (restart && done[i]->result != 0)
			fail_msg("%s: io %td failed with %d across a restart (%s)", mname, sp - seen,
				 done[i]->result, isolde_blk_error(dev));
		if (!restart && stopped)
			assert_int_equal(done[i]->result, -EIO);
		assert_true(done[i]->result == 0 || done[i]->result == -EIO);
		eio += done[i]->result == -EIO;
	}
	assert_int_equal(isolde_blk_inflight(dev), 0);
	wait_dead(pid);

	if (restart) {
		/* Replayed: reads saw the data, writes landed, nothing failed. */
		for (int i = 1; i < N; i += 2)
			expect_same(bufs[i], f->model + ios[i].offset, BLK, ios[i].offset, "read across restart");
		if (!stopped) {
			/* If the driver answered all before dying, the next
			 * request finds it dead and restarts it. */
			write_read_check(f, 10u << 20, 5000, false);
		}
		assert_false(isolde_blk_failed(dev));
		assert_string_equal(isolde_blk_error(dev), "");
		assert_int_equal(isolde_blk_generation(dev), 2);
		assert_true(isolde_blk_driver_pid(dev) > 0);
		assert_int_not_equal(isolde_blk_driver_pid(dev), pid);
		const struct isolde_supervisor_stats *ss = isolde_blk_supervisor_stats(dev);
		assert_int_equal(ss->restarts, 1);
		assert_int_equal(ss->by_failure[ISOLDE_FAIL_KILLED], 1);
		if (stopped)
			assert_int_equal(ss->replayed, N);
		else
			assert_true(ss->replayed <= N);
		/* The new driver works. */
		write_read_check(f, 12u << 20, 3 * MAX_IO + 17, false);
		check_device(f);
		check_file(f);
		close_dev(f);
		return;
	}

	if (!stopped && eio == 0) {
		/* It answered everything before it died: the next request
		 * finds it dead. */
		assert_int_equal(isolde_blk_read(dev, bufs[0], BLK, 0), -EIO);
	}
	assert_true(isolde_blk_failed(dev));
	if (!strstr(isolde_blk_error(dev), "SIGKILL"))
		fail_msg("%s: error does not mention SIGKILL: '%s'", mname, isolde_blk_error(dev));
	assert_int_equal(isolde_blk_generation(dev), 1);
	assert_int_equal(isolde_blk_supervisor_stats(dev)->restarts, 0);

	/* Everything after fails at once. */
	struct isolde_blk_io again = { .op = ISOLDE_BLK_OP_READ, .buf = bufs[0], .len = BLK };
	assert_int_equal(isolde_blk_submit(dev, &again), -EIO);
	struct isolde_blk_io fl = { .op = ISOLDE_BLK_OP_FLUSH };
	assert_int_equal(isolde_blk_submit(dev, &fl), -EIO);
	assert_int_equal(isolde_blk_read(dev, bufs[0], BLK, 0), -EIO);
	assert_int_equal(isolde_blk_write(dev, bufs[0], BLK, 0), -EIO);
	assert_int_equal(isolde_blk_flush(dev), -EIO);
	assert_int_equal(isolde_blk_write_zeroes(dev, 0, BLK, false), -EIO);
	assert_int_equal(isolde_blk_inflight(dev), 0);
	assert_int_equal(isolde_blk_reap(dev, done, N, 0, 100), 0);
	close_dev(f);
}

static void test_kill(void **state, enum isolde_notify_mode mode, bool restart)
{
	struct fx *f = *state;
	kill_in_flight(f, mode, true, restart);
	kill_in_flight(f, mode, false, restart);
}

static void test_kill_fail_event(void **state) { test_kill(state, ISOLDE_NOTIFY_EVENT, false); }
static void test_kill_fail_spin(void **state) { test_kill(state, ISOLDE_NOTIFY_SPIN, false); }
static void test_kill_fail_hybrid(void **state) { test_kill(state, ISOLDE_NOTIFY_HYBRID, false); }
static void test_kill_restart_event(void **state) { test_kill(state, ISOLDE_NOTIFY_EVENT, true); }
static void test_kill_restart_spin(void **state) { test_kill(state, ISOLDE_NOTIFY_SPIN, true); }
static void test_kill_restart_hybrid(void **state) { test_kill(state, ISOLDE_NOTIFY_HYBRID, true); }

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	/* A driver killed under us must not kill us through a broken pipe. */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		T(test_sync_event),
		T(test_sync_spin),
		T(test_sync_hybrid),
		T(test_async_event),
		T(test_async_spin),
		T(test_async_hybrid),
		T(test_discard_zeroes),
		T(test_invalid_submit),
		T(test_readonly),
		T(test_kill_fail_event),
		T(test_kill_fail_spin),
		T(test_kill_fail_hybrid),
		T(test_kill_restart_event),
		T(test_kill_restart_spin),
		T(test_kill_restart_hybrid),
	};
	return cmocka_run_group_tests_name("front", tests, NULL, NULL);
}
