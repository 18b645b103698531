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
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ZERO_COPY_POOL_DEFAULT (16u << 20)
#define WAIT_SLICE_NS (100 * 1000000LL) /* how often a blocked front end checks for a hang */
#define SHIELD_MAX_RETRIES 2u /* restarts a read may cause before its mismatch is an error */
#define ERROR_MAX_RETRIES 1u  /* fresh drivers asked to confirm an I/O error */

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

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

/*
 * The device for a new driver generation: a new open file description of
 * the front end's own image, reopened through /proc so that it is the same
 * file even if the path was replaced. Never a dup: flags (O_APPEND,
 * O_DIRECT), locks and write-back error cursors that a dead driver set on
 * its description stay with it.
 */
static int reopen_image(void *ctx, char *err, size_t errlen)
{
	struct isolde_blk *dev = ctx;
	int flags = (dev->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY | (dev->direct ? O_DIRECT : 0);
	char path[64];
	struct stat mine, theirs;

	snprintf(path, sizeof path, "/proc/self/fd/%d", dev->device_fd);
	int fd = open(path, flags);
	if (fd < 0) {
		set_err(err, errlen, "cannot reopen image %s for the driver (%s): %s", dev->image, path,
			strerror(errno));
		return -1;
	}
	if (fstat(fd, &theirs) != 0 || fstat(dev->device_fd, &mine) != 0 || mine.st_dev != theirs.st_dev ||
	    mine.st_ino != theirs.st_ino || mine.st_rdev != theirs.st_rdev) {
		set_err(err, errlen, "reopening image %s gave another file", dev->image);
		close(fd);
		return -1;
	}
	return fd;
}

/* The driver's policy: given, or the one shipped for it. It must name the
 * driver it is used with, and allow the device access asked for. */
static int load_policy(struct isolde_blk *dev, const struct isolde_blk_config *cfg, char *err,
		       size_t errlen)
{
	const char *driver = base_name(cfg->driver);
	char path[PATH_MAX];

	/* A driver that does not exist is the first thing to report. */
	if (isolde_driver_resolve(cfg->driver, path, sizeof path, err, errlen))
		return -1;
	if (cfg->policy)
		snprintf(path, sizeof path, "%s", cfg->policy);
	else if (isolde_policy_find(driver, path, sizeof path, err, errlen))
		return -1;
	if (isolde_policy_load(&dev->policy, path, err, errlen))
		return -1;
	if (strcmp(dev->policy.driver, driver) != 0) {
		set_err(err, errlen, "policy %s is for driver %s, not %s", path, dev->policy.driver, driver);
		return -1;
	}
	if (!dev->policy.device_writable && !cfg->readonly) {
		set_err(err, errlen, "policy %s allows driver %s read-only access; open the device "
			"read-only", path, driver);
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
	/* The data area is one max_io bounce buffer per queue slot plus the
	 * zero-copy pool; each is held to 2 GiB so the area stays within the
	 * 4 GiB a grant can address. */
	if ((uint64_t)cfg->queue_depth * cfg->max_io > (UINT64_C(2) << 30)) {
		set_err(err, errlen, "qd %u x max_io %zu needs %llu MiB of bounce buffers, more than the "
			"2048 MiB a driver domain shares; lower qd or max_io", cfg->queue_depth,
			cfg->max_io, (unsigned long long)(((uint64_t)cfg->queue_depth * cfg->max_io) >> 20));
		return -1;
	}
	if (cfg->data_size > (UINT64_C(2) << 30) - ISOLDE_PAGE_SIZE) {
		set_err(err, errlen, "zero-copy pool of %zu bytes is more than 2 GiB", cfg->data_size);
		return -1;
	}
	if (cfg->timeout_ms > 3600000) {
		set_err(err, errlen, "timeout_ms %u is more than an hour", cfg->timeout_ms);
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
	dev->domain.listener_fd = dev->domain.watch_fd = dev->domain.binary_fd = -1;
	snprintf(dev->image, sizeof dev->image, "%s", cfg->image);
	dev->readonly = cfg->readonly;
	dev->direct = cfg->direct;
	dev->queue_depth = cfg->queue_depth;
	dev->max_io = cfg->max_io;

	if (load_policy(dev, cfg, err, errlen) || open_image(dev, cfg, &dev_flags, err, errlen))
		goto fail;
	dev->hang_ms = cfg->timeout_ms ? cfg->timeout_ms : dev->policy.heartbeat_ms;
	if (isolde_supervisor_init(&dev->supervisor, dev->policy.restart_max, dev->policy.restart_window_s,
				   dev->policy.crash_loop_max, dev->policy.progress_min)) {
		set_err(err, errlen, "out of memory");
		goto fail;
	}

	/* Data area: one bounce buffer of max_io per shadow entry for copy
	 * mode, then the zero-copy pool. */
	uint64_t bounce = (uint64_t)cfg->queue_depth * cfg->max_io;
	uint64_t pool = cfg->data_size ? cfg->data_size : ZERO_COPY_POOL_DEFAULT;
	pool = (pool + ISOLDE_PAGE_SIZE - 1) / ISOLDE_PAGE_SIZE * ISOLDE_PAGE_SIZE;
	dev->pool_offset = bounce;

	struct isolde_domain_params params = {
		.driver = cfg->driver,
		.driver_args = cfg->driver_args,
		.open_device = reopen_image,
		.open_device_ctx = dev,
		.device_size = dev->size,
		.device_flags = dev_flags,
		.ring_slots = next_pow2(cfg->queue_depth),
		.data_size = bounce + pool,
		.notify = cfg->notify,
		.policy = &dev->policy,
		.uring_without_namespaces = cfg->uring_without_namespaces,
	};
	if (isolde_shadow_init(&dev->shadow, cfg->queue_depth) ||
	    isolde_buf_pool_init(&dev->pool, (uint32_t)(pool / ISOLDE_PAGE_SIZE)) ||
	    !(dev->sync_ios = calloc(cfg->queue_depth, sizeof *dev->sync_ios))) {
		set_err(err, errlen, "out of memory");
		goto fail;
	}
	/* The shield first: a side file it refuses costs no driver start. */
	if (cfg->shield) {
		dev->shield_sums_per_io = cfg->max_io / ISOLDE_SHIELD_BLOCK + 1;
		if (!(dev->shield_sums = calloc((size_t)cfg->queue_depth * dev->shield_sums_per_io,
						sizeof *dev->shield_sums))) {
			set_err(err, errlen, "out of memory");
			goto fail;
		}
		if (isolde_shield_open(&dev->shield, cfg->image, dev->device_fd, dev->size, err, errlen))
			goto fail;
		dev->shield_on = true;
	}
	if (isolde_domain_create(&dev->domain, &params, err, errlen))
		goto fail;
	if (isolde_domain_start(&dev->domain, err, errlen))
		goto fail;
	isolde_front_ring_attach(&dev->ring, dev->domain.sring, params.ring_slots, ISOLDE_BLK_SLOT_SIZE);
	dev->ring.peer_sleeps = cfg->notify != ISOLDE_NOTIFY_SPIN;
	isolde_waiter_init(&dev->waiter, cfg->notify, dev->domain.call_fd, dev->domain.kick_fd,
			   dev->domain.watch_fd, ISOLDE_HYBRID_SPIN_MIN_NS, ISOLDE_HYBRID_SPIN_MAX_NS);
	dev->heartbeat_changed_ns = isolde_now_ns();
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
	if (dev->shield_on)
		isolde_shield_close(&dev->shield);
	free(dev->shield_sums);
	if (dev->device_fd >= 0)
		close(dev->device_fd);
	isolde_shadow_fini(&dev->shadow);
	isolde_buf_pool_fini(&dev->pool);
	isolde_supervisor_fini(&dev->supervisor);
	free(dev->sync_ios);
	free(dev);
}

uint64_t isolde_blk_size(const struct isolde_blk *dev) { return dev->size; }
unsigned isolde_blk_queue_depth(const struct isolde_blk *dev) { return dev->queue_depth; }
size_t isolde_blk_max_io(const struct isolde_blk *dev) { return dev->max_io; }
pid_t isolde_blk_driver_pid(const struct isolde_blk *dev) { return dev->domain.pid; }
bool isolde_blk_failed(const struct isolde_blk *dev) { return dev->failed; }
int isolde_blk_flush_error(const struct isolde_blk *dev) { return dev->flush_error; }
const struct isolde_enforcement *isolde_blk_enforcement(const struct isolde_blk *dev) { return &dev->domain.applied; }
const char *isolde_blk_error(const struct isolde_blk *dev) { return dev->error; }
unsigned isolde_blk_inflight(const struct isolde_blk *dev) { return isolde_shadow_in_flight(&dev->shadow); }

const struct isolde_supervisor_stats *isolde_blk_supervisor_stats(const struct isolde_blk *dev)
{
	return &dev->supervisor.stats;
}

uint32_t isolde_blk_generation(const struct isolde_blk *dev) { return dev->domain.generation; }

void isolde_blk_get_stats(const struct isolde_blk *dev, struct isolde_blk_stats *st)
{
	*st = dev->stats;
	st->denials = dev->domain.denials;
	st->shield_verified = dev->shield.blocks_verified;
	st->shield_learned = dev->shield.blocks_learned;
	st->shield_mismatches = dev->shield.mismatches;
	st->kicks = dev->waiter.signals_sent;
	st->calls = dev->waiter.signals_received;
	st->front_sleeps = dev->waiter.sleeps;
	isolde_domain_log_counts(&dev->domain, &st->log_lines, &st->log_suppressed);
}

/* ---- failure ---- */

/* Write request e (shadow index idx) onto the ring, granting its buffer. */
void isolde_front_post(struct isolde_blk *dev, uint32_t idx)
{
	struct isolde_shadow_entry *e = &dev->shadow.entries[idx];
	struct isolde_blk_request req;

	memset(&req, 0, sizeof req);
	req.id = e->id;
	req.op = e->op;
	req.flags = e->flags;
	req.offset = e->offset;
	req.length = e->length;
	if (e->op == ISOLDE_BLK_OP_READ || e->op == ISOLDE_BLK_OP_WRITE) {
		uint32_t gref = idx * ISOLDE_BLK_MAX_SEGS;

		isolde_grant_set(dev->domain.grants, gref, e->data_offset, e->length,
				 e->op == ISOLDE_BLK_OP_READ ? ISOLDE_GRANT_DRIVER_WRITES
							     : ISOLDE_GRANT_DRIVER_READS);
		req.nr_segs = 1;
		req.seg[0].gref = gref;
		req.seg[0].length = e->length;
	}
	memcpy(isolde_front_next_request(&dev->ring), &req, isolde_blk_request_bytes(req.nr_segs));
	dev->ring.req_prod_pvt++;
	e->posted = true;
}

static bool running(const struct isolde_blk *dev)
{
	return dev->rec.state == ISOLDE_DEV_RUNNING;
}

static void protocol_violation(struct isolde_blk *dev, const char *fmt, ...)
{
	char why[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	dev->stats.protocol_violations++;
	isolde_recovery_fail(dev, ISOLDE_FAIL_PROTOCOL, "%s", why);
}

/* ---- submission ---- */

/* The shield's sums of shadow entry idx's zero-copy write. */
static uint64_t *shield_sums_of(struct isolde_blk *dev, uint32_t idx)
{
	return dev->shield_sums + (size_t)idx * dev->shield_sums_per_io;
}

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
	struct isolde_shadow_entry *e;
	int r, idx;

	if (dev->failed)
		return -EIO;
	r = check_io(dev, io);
	if (r)
		return r;
	if (running(dev) && isolde_front_free_slots(&dev->ring) == 0)
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

	if (io->op == ISOLDE_BLK_OP_READ || io->op == ISOLDE_BLK_OP_WRITE) {
		if (!in_data_area(dev, io->buf, io->len, &e->data_offset)) {
			e->copy = true;
			e->data_offset = (uint64_t)idx * dev->max_io;
			if (io->op == ISOLDE_BLK_OP_WRITE) {
				memcpy(dev->domain.data + e->data_offset, io->buf, io->len);
				dev->stats.bytes_copied += io->len;
			}
		}
	}
	if (dev->shield_on) {
		if (io->op == ISOLDE_BLK_OP_READ)
			e->shield_epoch = isolde_shield_read_begin(&dev->shield);
		else if (io->op != ISOLDE_BLK_OP_FLUSH)
			isolde_shield_write_begin(&dev->shield, io->offset, io->len);
		/* A zero-copy buffer is the driver's to change while the write
		 * is in flight: what the caller wrote is summed now. */
		if (io->op == ISOLDE_BLK_OP_WRITE && !e->copy)
			isolde_shield_sums(io->buf, io->offset, io->len, shield_sums_of(dev, (uint32_t)idx));
	}
	/* While no driver runs, the shadow holds it: replay posts it. */
	if (running(dev))
		isolde_front_post(dev, (uint32_t)idx);
	return 0;
}

void isolde_blk_push(struct isolde_blk *dev)
{
	if (!running(dev))
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

/* A read's data in private memory: copied to the caller's buffer (copy
 * mode), or in place in the data area (zero copy, where the driver can
 * still reach it). */
static const void *read_data(struct isolde_blk *dev, const struct isolde_shadow_entry *e)
{
	if (!e->copy)
		return dev->domain.data + e->data_offset;
	memcpy(e->io->buf, dev->domain.data + e->data_offset, e->length);
	dev->stats.bytes_copied += e->length;
	return e->io->buf;
}

/* The shield learns what writes, discards and zeroes did. */
static void shield_completed(struct isolde_blk *dev, uint32_t idx, const struct isolde_shadow_entry *e,
			     int result)
{
	switch (e->op) {
	case ISOLDE_BLK_OP_WRITE:
		if (e->copy)
			isolde_shield_write_end(&dev->shield, e->io->buf, e->offset, e->length, result == 0);
		else
			isolde_shield_write_end_sums(&dev->shield, shield_sums_of(dev, idx), e->offset,
						     e->length, result == 0);
		break;
	case ISOLDE_BLK_OP_DISCARD:
		isolde_shield_write_end(&dev->shield, NULL, e->offset, e->length, false);
		break;
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		isolde_shield_zeroes_end(&dev->shield, e->offset, e->length, result == 0);
		break;
	default:
		break;
	}
}

/* A FLUSH, or a WRITE with FUA: its answer is a statement about durability. */
static bool durability_op(const struct isolde_shadow_entry *e)
{
	return e->op == ISOLDE_BLK_OP_FLUSH || (e->op == ISOLDE_BLK_OP_WRITE && (e->flags & ISOLDE_BLK_F_FUA));
}

/*
 * Ask the image itself whether write-back failed since the front end last
 * asked: its own open file description has its own error cursor, which no
 * driver generation can have consumed.
 */
static int confirm_writeback(struct isolde_blk *dev)
{
	return fdatasync(dev->device_fd) == 0 ? 0 : -errno;
}

/*
 * The durability rule (PROTOCOL.md §7). An error on a FLUSH or FUA write
 * is final: it is never doubted, never replayed into success. Linux reports
 * a write-back error once per open file description, so a flush that
 * followed the one that saw it would succeed although the data is lost; the
 * first error therefore sticks, and every later FLUSH reports it. A FLUSH
 * replayed to a new driver may follow a dead driver's flush that saw the
 * error and never answered; its success is confirmed on the front end's own
 * file description.
 */
static int durable_result(struct isolde_blk *dev, const struct isolde_shadow_entry *e, int result)
{
	bool flush = e->op == ISOLDE_BLK_OP_FLUSH;

	if (!durability_op(e))
		return result;
	if (result == 0 && flush && e->replayed)
		result = confirm_writeback(dev);
	/* A FUA write's own ENOSPC is the write's, not write-back's. */
	if (result && (flush || result == -EIO) && !dev->flush_error) {
		dev->flush_error = result;
		fprintf(stderr, "isolde: %s: a %s failed (%s): data written before it may not be on the "
			"disk; every later flush reports this error until the device is reopened\n",
			dev->image, flush ? "flush" : "FUA write", strerror(-result));
	}
	return flush && dev->flush_error ? dev->flush_error : result;
}

static struct isolde_blk_io *complete(struct isolde_blk *dev, uint32_t idx, int result)
{
	struct isolde_shadow_entry *e = &dev->shadow.entries[idx];
	struct isolde_blk_io *io = e->io;

	if (e->op == ISOLDE_BLK_OP_READ || e->op == ISOLDE_BLK_OP_WRITE)
		isolde_grant_revoke(dev->domain.grants, idx * ISOLDE_BLK_MAX_SEGS);
	result = durable_result(dev, e, result);
	if (dev->shield_on)
		shield_completed(dev, idx, e, result);
	io->result = result;
	dev->completed_gen++;
	if (dev->recovery_started_ns && !dev->failed) {
		isolde_recovery_note(dev, (isolde_now_ns() - dev->recovery_started_ns) / 1000);
		dev->recovery_started_ns = 0;
	}
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
		protocol_violation(dev, "(pid %d) published %u responses but only %u requests were "
				   "outstanding", (int)dev->domain.pid, prod - dev->ring.rsp_cons,
				   dev->ring.req_prod_pvt - dev->ring.rsp_cons);
		return 0;
	}
	bool corrupt = false, doubted = false;
	uint64_t corrupt_block = 0;
	uint8_t doubted_status = 0;

	while (avail-- > 0 && n < max) {
		struct isolde_blk_response rsp;
		char why[200];
		uint32_t idx;

		isolde_copy_from_shared(&rsp, isolde_ring_slot(dev->ring.sring, dev->ring.nslots,
							      dev->ring.slot_size, dev->ring.rsp_cons),
					sizeof rsp);
		dev->ring.rsp_cons++;
		if (isolde_shadow_check(&dev->shadow, &rsp, &idx, why, sizeof why)) {
			protocol_violation(dev, "(pid %d) %s", (int)dev->domain.pid, why);
			return n;
		}
		struct isolde_shadow_entry *e = &dev->shadow.entries[idx];
		int result = status_errno(rsp.status);
		/*
		 * Every request was checked before it was sent, so calling it
		 * invalid is a lie, and so is not supporting an op every driver
		 * must (DISCARD and WRITE_ZEROES may be unsupported).
		 */
		if (rsp.status == ISOLDE_BLK_S_INVALID ||
		    (rsp.status == ISOLDE_BLK_S_UNSUPPORTED && e->op != ISOLDE_BLK_OP_DISCARD &&
		     e->op != ISOLDE_BLK_OP_WRITE_ZEROES)) {
			protocol_violation(dev, "(pid %d) answered a valid %s request with status '%s'",
					   (int)dev->domain.pid, isolde_blk_op_name(e->op),
					   isolde_blk_status_name(rsp.status));
			return n;
		}
		/* A device error is believed once a fresh driver repeats it -
		 * except where repeating it could turn it into a false success
		 * (durable_result). */
		if ((rsp.status == ISOLDE_BLK_S_IOERR || rsp.status == ISOLDE_BLK_S_NOSPC) &&
		    !durability_op(e) && e->error_retries++ < ERROR_MAX_RETRIES) {
			doubted = true;
			doubted_status = rsp.status;
			continue;
		}
		if (result == 0 && e->op == ISOLDE_BLK_OP_READ) {
			const void *data = read_data(dev, e);
			uint64_t bad;
			if (dev->shield_on && isolde_shield_read_end(&dev->shield, e->shield_epoch, data, e->offset,
								     e->length, &bad)) {
				/* Data known to be wrong never stays where the caller
				 * looks, whether this read is retried or fails. */
				memset(e->io->buf, 0, e->length);
				if (e->shield_retries++ < SHIELD_MAX_RETRIES) {
					/* Not completed: it stays in the shadow and is
					 * replayed to the next driver. */
					corrupt = true;
					corrupt_block = bad;
					continue;
				}
				fprintf(stderr, "isolde: block %llu of %s still differs from what was written "
					"after %u driver restarts; the read fails with EIO\n",
					(unsigned long long)bad, dev->image, SHIELD_MAX_RETRIES);
				result = -EIO;
			}
		}
		done[n++] = complete(dev, idx, result);
	}
	if (corrupt)
		isolde_recovery_fail(dev, ISOLDE_FAIL_CORRUPTION, "(pid %d) returned block %llu different from "
				     "what was written (integrity shield)", (int)dev->domain.pid,
				     (unsigned long long)corrupt_block);
	else if (doubted)
		isolde_recovery_fail(dev, ISOLDE_FAIL_ERROR_STATUS, "(pid %d) reported '%s'; asking a fresh "
				     "driver to confirm", (int)dev->domain.pid,
				     isolde_blk_status_name(doubted_status));
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

/*
 * A hang: requests are pending and the driver's heartbeat has not moved for
 * hang_ms. The heartbeat is the driver's word, so a request waiting ten
 * times as long counts as a hang too, whatever the heartbeat says.
 */
static void check_hang(struct isolde_blk *dev, uint64_t now)
{
	uint64_t hb = __atomic_load_n(&dev->domain.header->heartbeat, __ATOMIC_RELAXED);
	uint64_t limit = (uint64_t)dev->hang_ms * 1000000;

	if (hb != dev->heartbeat_seen) {
		dev->heartbeat_seen = hb;
		dev->heartbeat_changed_ns = now;
	}
	if (isolde_shadow_in_flight(&dev->shadow) == 0) {
		dev->heartbeat_changed_ns = now;
		return;
	}
	if (now - dev->heartbeat_changed_ns >= limit && !isolde_domain_waiting_on_device(&dev->domain)) {
		isolde_recovery_fail(dev, ISOLDE_FAIL_HANG, "(pid %d) made no progress for %u ms with %u "
				     "requests pending", (int)dev->domain.pid, dev->hang_ms,
				     isolde_shadow_in_flight(&dev->shadow));
		return;
	}
	for (uint32_t i = 0; i < dev->shadow.depth; i++) {
		const struct isolde_shadow_entry *e = &dev->shadow.entries[i];
		if (e->id != 0 && now - e->submitted_ns >= 10 * limit) {
			isolde_recovery_fail(dev, ISOLDE_FAIL_HANG, "(pid %d) left a %s request unanswered for "
					     "%u ms", (int)dev->domain.pid, isolde_blk_op_name(e->op),
					     10 * dev->hang_ms);
			return;
		}
	}
}

/* The watch fd fired while the driver runs: a system call to answer, a log
 * line, or the driver ended. */
static void watch_fired(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max, unsigned *n)
{
	isolde_domain_service(&dev->domain);
	if (dev->domain.pid > 0 && !isolde_domain_reap(&dev->domain))
		return;
	dev->death_seen_ns = isolde_now_ns();
	/* Take what it answered before it died, then recover the rest. */
	*n += consume_responses(dev, done + *n, max - *n);
	const struct isolde_exit *x = &dev->domain.last_exit;
	isolde_recovery_fail(dev, x->by_policy ? ISOLDE_FAIL_POLICY : isolde_classify_exit(x->signaled, x->code),
			     "%s", x->text);
}

/*
 * What can be done without waiting: publish, answer the driver's calls,
 * detect its end or its hang, collect responses; or, while it is down,
 * advance the recovery. Every request of a failed device completes -EIO.
 */
static unsigned attend(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max, bool watch_ready)
{
	unsigned n = 0;

	if (running(dev)) {
		if (watch_ready)
			watch_fired(dev, done, max, &n);
		if (running(dev))
			n += consume_responses(dev, done + n, max - n);
		if (running(dev))
			check_hang(dev, isolde_now_ns());
	}
	if (!running(dev))
		isolde_recovery_step(dev);
	if (dev->failed)
		n += drain_failed(dev, done + n, max - n);
	return n;
}

static bool watch_readable(const struct isolde_blk *dev)
{
	struct pollfd p = { .fd = dev->domain.watch_fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

/* While the driver is down: sleep on the watch fd, up to the recovery's
 * next deadline and the caller's. */
static void wait_recovery(struct isolde_blk *dev, int64_t slice_ns)
{
	int ms = isolde_recovery_timeout_ms(dev);
	int slice_ms = (int)((slice_ns + 999999) / 1000000);
	struct pollfd p[2] = { { .fd = dev->domain.watch_fd, .events = POLLIN },
			       { .fd = dev->domain.call_fd, .events = POLLIN } };

	poll(p, 2, ms < 0 || ms > slice_ms ? slice_ms : ms);
}

int isolde_blk_reap(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max,
		    unsigned min, int timeout_ms)
{
	unsigned n = 0;
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX
					   : isolde_now_ns() + (uint64_t)timeout_ms * 1000000;
	bool watch_ready = false;

	if (min > max)
		min = max;
	isolde_blk_push(dev);
	for (;;) {
		n += attend(dev, done + n, max - n, watch_ready);
		watch_ready = false;
		if (dev->failed || n >= min || n == max || isolde_shadow_in_flight(&dev->shadow) == 0)
			return (int)n;
		uint64_t now = isolde_now_ns();
		if (now >= deadline)
			return (int)n;
		int64_t slice = WAIT_SLICE_NS;
		if (deadline - now < (uint64_t)slice)
			slice = (int64_t)(deadline - now);
		if (!running(dev)) {
			wait_recovery(dev, slice);
			continue;
		}
		switch (isolde_wait(&dev->waiter, &response_wait, dev, slice)) {
		case ISOLDE_WAIT_READY:
		case ISOLDE_WAIT_TIMEOUT:
			break;
		case ISOLDE_WAIT_WATCH:
			watch_ready = true;
			break;
		case ISOLDE_WAIT_ERROR:
			return -errno;
		}
	}
}

/* ---- event-loop integration ---- */

void isolde_blk_event_fds(const struct isolde_blk *dev, int *call_fd, int *watch_fd)
{
	*call_fd = dev->domain.call_fd;
	*watch_fd = dev->domain.watch_fd;
}

int isolde_blk_poll(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max)
{
	uint64_t v;

	isolde_blk_push(dev);
	/* Calls are counted, then the eventfd is empty until the next. */
	if (read(dev->domain.call_fd, &v, sizeof v) == sizeof v)
		dev->waiter.signals_received += v;
	return (int)attend(dev, done, max, watch_readable(dev));
}

int isolde_blk_timeout_ms(const struct isolde_blk *dev)
{
	return running(dev) ? -1 : isolde_recovery_timeout_ms(dev);
}

bool isolde_blk_prepare_sleep(struct isolde_blk *dev)
{
	uint32_t prod;

	if (dev->failed)
		return isolde_shadow_in_flight(&dev->shadow) == 0;
	if (!running(dev))
		return true; /* the watch fd and isolde_blk_timeout_ms wake it */
	if (isolde_front_unconsumed_responses(&dev->ring, &prod) != 0)
		return false;
	if (dev->waiter.mode == ISOLDE_NOTIFY_SPIN)
		return isolde_shadow_in_flight(&dev->shadow) == 0;
	return !isolde_front_final_check_responses(&dev->ring);
}

const char *isolde_blk_state(const struct isolde_blk *dev) { return isolde_dev_state_name(dev->rec.state); }

void isolde_blk_abort(struct isolde_blk *dev, const char *why)
{
	isolde_fail_device(dev, "%s", why);
}

void isolde_blk_set_event_handler(struct isolde_blk *dev, isolde_blk_event_fn fn, void *ctx)
{
	dev->on_event = fn;
	dev->on_event_ctx = ctx;
}
enum isolde_notify_mode isolde_blk_notify_mode(const struct isolde_blk *dev) { return dev->waiter.mode; }
uint32_t isolde_blk_alignment(const struct isolde_blk *dev) { return dev->align; }
bool isolde_blk_readonly(const struct isolde_blk *dev) { return dev->readonly; }
const char *isolde_blk_driver_name(const struct isolde_blk *dev) { return dev->domain.driver_name; }

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
