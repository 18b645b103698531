// SPDX-License-Identifier: MIT
/*
 * The block front end: open a device through a driver domain, put requests on
 * the ring, check every response against the private shadow.
 */
#define _GNU_SOURCE
#include "device.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZERO_COPY_POOL_DEFAULT (16u << 20)
#define WAIT_SLICE_NS (100 * 1000000LL) /* how often a blocked front end checks for a hang */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static uint32_t next_pow2(uint32_t v)
{
	uint32_t p = 1u << ISOLDE_RING_MIN_ORDER;
	while (p < v)
		p <<= 1;
	return p;
}

static int open_image(struct isolde_blk *dev, const struct isolde_blk_config *cfg, uint32_t *flags,
		      char *err, size_t errlen)
{
	struct stat st;
	int oflags = (cfg->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (cfg->direct ? O_DIRECT : 0);

	dev->device_fd = open(cfg->image, oflags);
	if (dev->device_fd < 0) {
		set_err(err, errlen, "cannot open image %s: %s%s", cfg->image, strerror(errno),
			(cfg->direct && errno == EINVAL) ? " (this file system does not support O_DIRECT)" : "");
		return -1;
	}
	if (fstat(dev->device_fd, &st) != 0) {
		set_err(err, errlen, "cannot stat image %s: %s", cfg->image, strerror(errno));
		return -1;
	}
	*flags = cfg->readonly ? ISOLDE_DEV_READONLY : 0;
	dev->align = 1;
	if (S_ISREG(st.st_mode)) {
		dev->size = (uint64_t)st.st_size;
		if (cfg->direct)
			dev->align = 4096;
	} else if (S_ISBLK(st.st_mode)) {
		int lbs = 512;
		if (ioctl(dev->device_fd, BLKGETSIZE64, &dev->size) != 0) {
			set_err(err, errlen, "cannot get the size of %s: %s", cfg->image, strerror(errno));
			return -1;
		}
		if (cfg->direct && ioctl(dev->device_fd, BLKSSZGET, &lbs) == 0 && lbs > 0)
			dev->align = (unsigned)lbs;
		*flags |= ISOLDE_DEV_BLOCKDEV;
	} else {
		set_err(err, errlen, "image %s is neither a regular file nor a block device", cfg->image);
		return -1;
	}
	if (dev->size == 0) {
		set_err(err, errlen, "image %s is empty (size 0)", cfg->image);
		return -1;
	}
	return 0;
}

static int check_config(const struct isolde_blk_config *cfg, char *err, size_t errlen)
{
	if (!cfg->image || !*cfg->image) {
		set_err(err, errlen, "no image given");
		return -1;
	}
	if (!cfg->driver || !*cfg->driver) {
		set_err(err, errlen, "no driver given");
		return -1;
	}
	if (cfg->queue_depth == 0 || cfg->queue_depth > ISOLDE_BLK_MAX_QUEUE_DEPTH) {
		set_err(err, errlen, "queue depth %u is not in 1..%u", cfg->queue_depth,
			ISOLDE_BLK_MAX_QUEUE_DEPTH);
		return -1;
	}
	if (cfg->max_io < 4096 || cfg->max_io > (64u << 20) || cfg->max_io % 4096) {
		set_err(err, errlen, "max_io %zu is not a multiple of 4096 in 4k..64M", cfg->max_io);
		return -1;
	}
	if ((unsigned)cfg->notify > ISOLDE_NOTIFY_HYBRID) {
		set_err(err, errlen, "unknown notify mode %d", (int)cfg->notify);
		return -1;
	}
	if (cfg->timeout_ms == 0) {
		set_err(err, errlen, "timeout_ms must be positive");
		return -1;
	}
	return 0;
}

struct isolde_blk *isolde_blk_open(const struct isolde_blk_config *cfg, char *err, size_t errlen)
{
	struct isolde_blk *dev;
	uint32_t dev_flags = 0;

	if (check_config(cfg, err, errlen))
		return NULL;
	dev = calloc(1, sizeof *dev);
	if (!dev) {
		set_err(err, errlen, "out of memory");
		return NULL;
	}
	dev->device_fd = -1;
	dev->domain.shm_fd = dev->domain.kick_fd = dev->domain.call_fd = dev->domain.pidfd = -1;
	snprintf(dev->image, sizeof dev->image, "%s", cfg->image);
	dev->readonly = cfg->readonly;
	dev->queue_depth = cfg->queue_depth;
	dev->max_io = cfg->max_io;
	dev->timeout_ms = cfg->timeout_ms;

	if (open_image(dev, cfg, &dev_flags, err, errlen))
		goto fail;

	/* Data area: one bounce buffer of max_io per shadow entry for copy
	 * mode, then the zero-copy pool. */
	uint64_t bounce = (uint64_t)cfg->queue_depth * cfg->max_io;
	uint64_t pool = cfg->data_size ? cfg->data_size : ZERO_COPY_POOL_DEFAULT;
	pool = (pool + ISOLDE_PAGE_SIZE - 1) / ISOLDE_PAGE_SIZE * ISOLDE_PAGE_SIZE;
	dev->pool_offset = bounce;

	struct isolde_domain_params params = {
		.driver = cfg->driver,
		.driver_args = cfg->driver_args,
		.device_fd = dev->device_fd,
		.device_size = dev->size,
		.device_flags = dev_flags,
		.ring_slots = next_pow2(cfg->queue_depth),
		.data_size = bounce + pool,
		.notify = cfg->notify,
	};
	if (isolde_shadow_init(&dev->shadow, cfg->queue_depth) ||
	    isolde_buf_pool_init(&dev->pool, (uint32_t)(pool / ISOLDE_PAGE_SIZE)) ||
	    !(dev->sync_ios = calloc(cfg->queue_depth, sizeof *dev->sync_ios))) {
		set_err(err, errlen, "out of memory");
		goto fail;
	}
	if (isolde_domain_create(&dev->domain, &params, err, errlen))
		goto fail;
	if (isolde_domain_start(&dev->domain, err, errlen))
		goto fail;
	isolde_front_ring_attach(&dev->ring, dev->domain.sring, params.ring_slots, ISOLDE_BLK_SLOT_SIZE);
	isolde_waiter_init(&dev->waiter, cfg->notify, dev->domain.call_fd, dev->domain.kick_fd,
			   dev->domain.pidfd, ISOLDE_HYBRID_SPIN_MIN_NS, ISOLDE_HYBRID_SPIN_MAX_NS);
	return dev;
fail:
	isolde_blk_close(dev);
	return NULL;
}

void isolde_blk_close(struct isolde_blk *dev)
{
	if (!dev)
		return;
	isolde_domain_destroy(&dev->domain);
	if (dev->device_fd >= 0)
		close(dev->device_fd);
	isolde_shadow_fini(&dev->shadow);
	isolde_buf_pool_fini(&dev->pool);
	free(dev->sync_ios);
	free(dev);
}

uint64_t isolde_blk_size(const struct isolde_blk *dev) { return dev->size; }
unsigned isolde_blk_queue_depth(const struct isolde_blk *dev) { return dev->queue_depth; }
size_t isolde_blk_max_io(const struct isolde_blk *dev) { return dev->max_io; }
pid_t isolde_blk_driver_pid(const struct isolde_blk *dev) { return dev->domain.pid; }
bool isolde_blk_failed(const struct isolde_blk *dev) { return dev->failed; }
const char *isolde_blk_error(const struct isolde_blk *dev) { return dev->error; }
unsigned isolde_blk_inflight(const struct isolde_blk *dev) { return isolde_shadow_in_flight(&dev->shadow); }

void isolde_blk_get_stats(const struct isolde_blk *dev, struct isolde_blk_stats *st)
{
	*st = dev->stats;
	st->kicks = dev->waiter.signals_sent;
	st->calls = dev->waiter.signals_received;
	st->front_sleeps = dev->waiter.sleeps;
}

/* ---- failure ---- */

/* The driver is unusable: stop it, and fail everything pending and later. */
static void fail_device(struct isolde_blk *dev, const char *fmt, ...)
{
	va_list ap;

	if (dev->failed)
		return;
	va_start(ap, fmt);
	vsnprintf(dev->error, sizeof dev->error, fmt, ap);
	va_end(ap);
	dev->failed = true;
	isolde_domain_kill(&dev->domain);
}

static void driver_exited(struct isolde_blk *dev)
{
	char why[160];

	if (isolde_domain_reap(&dev->domain, why, sizeof why))
		fail_device(dev, "driver %s %s; pending and new I/O fails", dev->domain.driver_name, why);
}

/* ---- submission ---- */

static bool in_data_area(const struct isolde_blk *dev, const void *buf, size_t len, uint64_t *off)
{
	const unsigned char *p = buf, *base = dev->domain.data + dev->pool_offset;
	uint64_t pool_size = dev->domain.layout.data_size - dev->pool_offset;

	if (p < base || p >= base + pool_size || len > (size_t)(base + pool_size - p))
		return false;
	*off = (uint64_t)(p - dev->domain.data);
	return true;
}

static int check_io(const struct isolde_blk *dev, const struct isolde_blk_io *io)
{
	bool data_op = io->op == ISOLDE_BLK_OP_READ || io->op == ISOLDE_BLK_OP_WRITE;

	switch (io->op) {
	case ISOLDE_BLK_OP_READ:
	case ISOLDE_BLK_OP_FLUSH:
		if (io->flags)
			return -EINVAL;
		break;
	case ISOLDE_BLK_OP_WRITE:
		if (io->flags & ~ISOLDE_BLK_F_FUA)
			return -EINVAL;
		break;
	case ISOLDE_BLK_OP_DISCARD:
		if (io->flags)
			return -EINVAL;
		break;
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		if (io->flags & ~ISOLDE_BLK_F_MAY_UNMAP)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (io->op == ISOLDE_BLK_OP_FLUSH)
		return io->len == 0 ? 0 : -EINVAL;
	if (dev->readonly && io->op != ISOLDE_BLK_OP_READ)
		return -EROFS;
	if (io->len == 0 || io->offset > dev->size || io->len > dev->size - io->offset)
		return -EINVAL;
	if (data_op) {
		if (!io->buf || io->len > dev->max_io)
			return -EINVAL;
		if (io->offset % dev->align || io->len % dev->align)
			return -EINVAL;
	}
	return 0;
}

int isolde_blk_submit(struct isolde_blk *dev, struct isolde_blk_io *io)
{
	struct isolde_blk_request req;
	struct isolde_shadow_entry *e;
	int r, idx;

	if (dev->failed)
		return -EIO;
	r = check_io(dev, io);
	if (r)
		return r;
	if (isolde_front_free_slots(&dev->ring) == 0)
		return -EAGAIN;
	idx = isolde_shadow_alloc(&dev->shadow);
	if (idx < 0)
		return -EAGAIN;

	e = &dev->shadow.entries[idx];
	e->io = io;
	e->op = io->op;
	e->flags = io->flags;
	e->offset = io->offset;
	e->length = io->len;
	e->submitted_ns = isolde_now_ns();

	memset(&req, 0, sizeof req);
	req.id = e->id;
	req.op = io->op;
	req.flags = io->flags;
	req.offset = io->offset;
	req.length = io->len;
	if (io->op == ISOLDE_BLK_OP_READ || io->op == ISOLDE_BLK_OP_WRITE) {
		uint32_t gref = (uint32_t)idx * ISOLDE_BLK_MAX_SEGS;

		if (!in_data_area(dev, io->buf, io->len, &e->data_offset)) {
			e->copy = true;
			e->data_offset = (uint64_t)idx * dev->max_io;
			if (io->op == ISOLDE_BLK_OP_WRITE) {
				memcpy(dev->domain.data + e->data_offset, io->buf, io->len);
				dev->stats.bytes_copied += io->len;
			}
		}
		isolde_grant_set(dev->domain.grants, gref, e->data_offset, io->len,
				 io->op == ISOLDE_BLK_OP_READ ? ISOLDE_GRANT_DRIVER_WRITES
							      : ISOLDE_GRANT_DRIVER_READS);
		req.nr_segs = 1;
		req.seg[0].gref = gref;
		req.seg[0].offset = 0;
		req.seg[0].length = io->len;
	}
	memcpy(isolde_front_next_request(&dev->ring), &req, sizeof req);
	dev->ring.req_prod_pvt++;
	return 0;
}

void isolde_blk_push(struct isolde_blk *dev)
{
	if (dev->failed)
		return;
	isolde_waiter_signal(&dev->waiter, isolde_front_push_requests(&dev->ring));
}

/* ---- completion ---- */

static int status_errno(uint8_t status)
{
	switch (status) {
	case ISOLDE_BLK_S_OK: return 0;
	case ISOLDE_BLK_S_UNSUPPORTED: return -EOPNOTSUPP;
	case ISOLDE_BLK_S_INVALID: return -EINVAL;
	case ISOLDE_BLK_S_NOSPC: return -ENOSPC;
	default: return -EIO;
	}
}

static struct isolde_blk_io *complete(struct isolde_blk *dev, uint32_t idx, int result)
{
	struct isolde_shadow_entry *e = &dev->shadow.entries[idx];
	struct isolde_blk_io *io = e->io;

	if (e->op == ISOLDE_BLK_OP_READ || e->op == ISOLDE_BLK_OP_WRITE)
		isolde_grant_revoke(dev->domain.grants, idx * ISOLDE_BLK_MAX_SEGS);
	if (result == 0 && e->op == ISOLDE_BLK_OP_READ && e->copy) {
		memcpy(io->buf, dev->domain.data + e->data_offset, e->length);
		dev->stats.bytes_copied += e->length;
	}
	io->result = result;
	dev->stats.requests++;
	if (result)
		dev->stats.errors++;
	isolde_shadow_release(&dev->shadow, idx);
	return io;
}

/* Collect valid responses from the ring; a bad one fails the device. */
static unsigned consume_responses(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max)
{
	unsigned n = 0;
	uint32_t prod;
	int64_t avail = isolde_front_unconsumed_responses(&dev->ring, &prod);

	if (avail < 0) {
		dev->stats.protocol_violations++;
		fail_device(dev, "driver %s (pid %d) violated the protocol: it published responses up to "
			    "index %u but only %u requests were outstanding; the driver was stopped",
			    dev->domain.driver_name, (int)dev->domain.pid, prod,
			    dev->ring.req_prod_pvt - dev->ring.rsp_cons);
		return 0;
	}
	while (avail-- > 0 && n < max) {
		struct isolde_blk_response rsp;
		char why[200];
		uint32_t idx;

		isolde_copy_from_shared(&rsp, isolde_ring_slot(dev->ring.sring, dev->ring.nslots,
							      dev->ring.slot_size, dev->ring.rsp_cons),
					sizeof rsp);
		dev->ring.rsp_cons++;
		if (isolde_shadow_check(&dev->shadow, &rsp, &idx, why, sizeof why)) {
			dev->stats.protocol_violations++;
			fail_device(dev, "driver %s (pid %d) violated the protocol: %s; the driver was stopped",
				    dev->domain.driver_name, (int)dev->domain.pid, why);
			return n;
		}
		done[n++] = complete(dev, idx, status_errno(rsp.status));
	}
	return n;
}

/* After a failure, every request still in the shadow completes with -EIO. */
static unsigned drain_failed(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < dev->shadow.depth && n < max; i++) {
		if (dev->shadow.entries[i].id != 0)
			done[n++] = complete(dev, i, -EIO);
	}
	return n;
}

static bool responses_pending(void *ctx)
{
	struct isolde_blk *dev = ctx;
	uint32_t prod;
	return isolde_front_unconsumed_responses(&dev->ring, &prod) != 0;
}

static bool responses_arm_check(void *ctx)
{
	struct isolde_blk *dev = ctx;
	return isolde_front_final_check_responses(&dev->ring);
}

static const struct isolde_wait_ops response_wait = {
	.pending = responses_pending,
	.arm_check = responses_arm_check,
};

/* A request older than the timeout means the driver hung. */
static void check_hang(struct isolde_blk *dev, uint64_t now)
{
	uint64_t limit = (uint64_t)dev->timeout_ms * 1000000;

	for (uint32_t i = 0; i < dev->shadow.depth; i++) {
		const struct isolde_shadow_entry *e = &dev->shadow.entries[i];
		if (e->id != 0 && now - e->submitted_ns > limit) {
			fail_device(dev, "driver %s (pid %d) did not answer a %s request within %u ms; "
				    "the driver was stopped", dev->domain.driver_name,
				    (int)dev->domain.pid, isolde_blk_op_name(e->op), dev->timeout_ms);
			return;
		}
	}
}

int isolde_blk_reap(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max,
		    unsigned min, int timeout_ms)
{
	unsigned n = 0;
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
					   : isolde_now_ns() + (uint64_t)timeout_ms * 1000000;

	if (min > max)
		min = max;
	isolde_blk_push(dev);
	for (;;) {
		if (!dev->failed)
			n += consume_responses(dev, done + n, max - n);
		if (dev->failed)
			return (int)(n + drain_failed(dev, done + n, max - n));
		if (n >= min || n == max || isolde_shadow_in_flight(&dev->shadow) == 0)
			return (int)n;

		uint64_t now = isolde_now_ns();
		if (now >= deadline)
			return (int)n;
		int64_t slice = WAIT_SLICE_NS;
		if (deadline - now < (uint64_t)slice)
			slice = (int64_t)(deadline - now);
		switch (isolde_wait(&dev->waiter, &response_wait, dev, slice)) {
		case ISOLDE_WAIT_READY:
			break;
		case ISOLDE_WAIT_WATCH:
			/* The driver exited. Take what it answered before it
			 * died; then fail the rest. */
			n += consume_responses(dev, done + n, max - n);
			driver_exited(dev);
			break;
		case ISOLDE_WAIT_TIMEOUT:
			check_hang(dev, isolde_now_ns());
			break;
		case ISOLDE_WAIT_ERROR:
			return -errno;
		}
	}
}

/* ---- zero-copy buffers ---- */

void *isolde_blk_buf_alloc(struct isolde_blk *dev, size_t len)
{
	uint64_t pages = (len + ISOLDE_PAGE_SIZE - 1) / ISOLDE_PAGE_SIZE;
	int64_t first;

	if (len == 0 || pages > UINT32_MAX)
		return NULL;
	first = isolde_buf_pool_alloc(&dev->pool, (uint32_t)pages);
	if (first < 0)
		return NULL;
	return dev->domain.data + dev->pool_offset + (uint64_t)first * ISOLDE_PAGE_SIZE;
}

void isolde_blk_buf_free(struct isolde_blk *dev, void *buf)
{
	uint64_t off;

	if (!buf || !in_data_area(dev, buf, 1, &off) || (off - dev->pool_offset) % ISOLDE_PAGE_SIZE)
		return;
	isolde_buf_pool_free(&dev->pool, (uint32_t)((off - dev->pool_offset) / ISOLDE_PAGE_SIZE));
}
