// SPDX-License-Identifier: MIT
/*
 * The block front end, opening and closing: check the configuration, open
 * the image (and reopen it for every driver generation), load the policy,
 * create the driver domain and start its first driver; and what a device
 * says about itself. The I/O path is io.c, recovery recovery.c.
 */
#define _GNU_SOURCE
#include "device.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZERO_COPY_POOL_DEFAULT (16u << 20)

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

/*
 * A remote image (remote.h): its driver reaches it, the front end only
 * parses the name and makes each generation's fd 6. The driver must be the
 * one for the kind, and its arguments get the remote's.
 */
/* The integrity shield over the device's dev->size bytes. A remote image
 * has no fd here and no side file: its checksums last for the session. */
static int open_shield(struct isolde_blk *dev, const struct isolde_blk_config *cfg, char *err, size_t errlen)
{
	dev->shield_sums_per_io = cfg->max_io / ISOLDE_SHIELD_BLOCK + 1;
	if (!(dev->shield_sums = calloc((size_t)cfg->queue_depth * dev->shield_sums_per_io, sizeof *dev->shield_sums))) {
		set_err(err, errlen, "out of memory");
		return -1;
	}
	if (isolde_shield_open(&dev->shield, cfg->image, dev->remote ? -1 : dev->device_fd, dev->size, err, errlen))
		return -1;
	dev->shield_on = true;
	return 0;
}

static int open_remote(struct isolde_blk *dev, const struct isolde_blk_config *cfg, uint32_t *flags,
		       char *err, size_t errlen)
{
	enum isolde_remote_kind kind = isolde_remote_kind_of(cfg->image);
	const char *want = isolde_remote_driver(kind);
	size_t nargs = 0;

	if (strcmp(base_name(cfg->driver), want) != 0) {
		set_err(err, errlen, "image %s is served by driver %s, not %s", cfg->image, want, cfg->driver);
		return -1;
	}
	if (cfg->direct) {
		set_err(err, errlen, "image %s is remote: direct (O_DIRECT) applies to local images only",
			cfg->image);
		return -1;
	}
	if (!(dev->remote = calloc(1, sizeof *dev->remote))) {
		set_err(err, errlen, "out of memory");
		return -1;
	}
	if (isolde_remote_open(dev->remote, cfg->image, err, errlen))
		return -1;
	while (cfg->driver_args && cfg->driver_args[nargs])
		nargs++;
	if (!(dev->driver_args = calloc(nargs + 2, sizeof *dev->driver_args))) {
		set_err(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < nargs; i++)
		dev->driver_args[i] = cfg->driver_args[i];
	if (dev->remote->driver_arg[0])
		dev->driver_args[nargs] = dev->remote->driver_arg;
	*flags = ISOLDE_DEV_REMOTE | (cfg->readonly ? ISOLDE_DEV_READONLY : 0);
	dev->align = 1;
	return 0;
}

static const char *local_driver_of_remote(const struct isolde_blk_config *cfg)
{
	const char *d = base_name(cfg->driver);
	return strcmp(d, "blk-nbd") == 0 || strcmp(d, "blk-rbd") == 0 ? d : NULL;
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
	if (isolde_policy_load_for(&dev->policy, driver, cfg->policy, err, errlen))
		return -1;
	snprintf(path, sizeof path, "%s", dev->policy.source);
	if (cfg->domain && isolde_domain_kind_parse(cfg->domain, &dev->policy.domain)) {
		set_err(err, errlen, "domain '%s' is not process or vm", cfg->domain);
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

	bool remote = isolde_remote_kind_of(cfg->image) != ISOLDE_REMOTE_NONE;
	if (!remote && local_driver_of_remote(cfg)) {
		set_err(err, errlen, "driver %s serves remote images (%s), not %s", local_driver_of_remote(cfg),
			strcmp(local_driver_of_remote(cfg), "blk-nbd") == 0
				? "nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"
				: "rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=CLIENT][:keyring=PATH]",
			cfg->image);
		goto fail;
	}
	if (load_policy(dev, cfg, err, errlen) ||
	    (remote ? open_remote(dev, cfg, &dev_flags, err, errlen) : open_image(dev, cfg, &dev_flags, err, errlen)))
		goto fail;
	/* A VM domain's driver reaches the image as a virtio disk of 512-byte
	 * sectors, opened O_DIRECT in the guest (src/domain/vm.h). */
	if (dev->policy.domain == ISOLDE_DOMAIN_VM && !remote) {
		if (dev->size % 512) {
			set_err(err, errlen, "image %s is %llu bytes, not a multiple of 512: a VM domain serves "
				"it as a disk of 512-byte sectors", cfg->image, (unsigned long long)dev->size);
			goto fail;
		}
		if (dev->align < 512)
			dev->align = 512;
	}
	dev->hang_ms = cfg->timeout_ms ? cfg->timeout_ms : dev->policy.heartbeat_ms;
	if (isolde_supervisor_init(&dev->supervisor, dev->policy.restart_max, dev->policy.restart_window_s,
				   dev->policy.crash_loop_max, dev->policy.progress_min)) {
		set_err(err, errlen, "out of memory");
		goto fail;
	}
	dev->supervisor.unreachable_limit_ms = dev->policy.unreachable_ms;
	dev->rec = (struct isolde_recovery){ .domain = &dev->domain, .supervisor = &dev->supervisor,
					     .policy = &dev->policy, .name = dev->image, .remote = remote,
					     .unit = "requests", .ops = &isolde_blk_recovery_ops, .owner = dev };

	/* Data area: one bounce buffer of max_io per shadow entry for copy
	 * mode, then the zero-copy pool. */
	uint64_t bounce = (uint64_t)cfg->queue_depth * cfg->max_io;
	uint64_t pool = cfg->data_size ? cfg->data_size : ZERO_COPY_POOL_DEFAULT;
	pool = (pool + ISOLDE_PAGE_SIZE - 1) / ISOLDE_PAGE_SIZE * ISOLDE_PAGE_SIZE;
	dev->pool_offset = bounce;

	struct isolde_domain_params params = {
		.driver = cfg->driver,
		.driver_args = dev->remote ? dev->driver_args : cfg->driver_args,
		.open_device = dev->remote ? isolde_remote_device : reopen_image,
		.open_device_ctx = dev->remote ? (void *)dev->remote : (void *)dev,
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
	/* The shield first: a side file it refuses costs no driver start. A
	 * remote image's size is known once its first driver reached it. */
	if (cfg->shield && !dev->remote && open_shield(dev, cfg, err, errlen))
		goto fail;
	if (isolde_domain_create(&dev->domain, &params, err, errlen))
		goto fail;
	if (isolde_domain_start(&dev->domain, err, errlen))
		goto fail;
	if (dev->remote) {
		dev->size = dev->domain.reported_size;
		if (cfg->shield && open_shield(dev, cfg, err, errlen))
			goto fail;
	}
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
	/* A remote device's driver holds what others wait for (an image's
	 * lock): it is asked to let go first. */
	if (dev->remote && !dev->rec.failed && isolde_shadow_in_flight(&dev->shadow) == 0)
		isolde_domain_stop(&dev->domain, ISOLDE_DRIVER_STOP_MS);
	isolde_domain_destroy(&dev->domain);
	if (dev->shield_on)
		isolde_shield_close(&dev->shield);
	free(dev->shield_sums);
	if (dev->device_fd >= 0)
		close(dev->device_fd);
	if (dev->remote) {
		isolde_remote_close(dev->remote);
		free(dev->remote);
	}
	free(dev->driver_args);
	isolde_shadow_fini(&dev->shadow);
	isolde_buf_pool_fini(&dev->pool);
	isolde_supervisor_fini(&dev->supervisor);
	free(dev->sync_ios);
	free(dev);
}

uint64_t isolde_blk_size(const struct isolde_blk *dev) { return dev->size; }
unsigned isolde_blk_queue_depth(const struct isolde_blk *dev) { return dev->queue_depth; }
size_t isolde_blk_max_io(const struct isolde_blk *dev) { return dev->max_io; }

uint64_t isolde_blk_piece_max(const struct isolde_blk *dev, uint8_t op)
{
	if (op == ISOLDE_BLK_OP_READ || op == ISOLDE_BLK_OP_WRITE)
		return dev->max_io;
	return op == ISOLDE_BLK_OP_FLUSH ? 0 : 1u << 30;
}
pid_t isolde_blk_driver_pid(const struct isolde_blk *dev) { return dev->domain.pid; }
bool isolde_blk_failed(const struct isolde_blk *dev) { return dev->rec.failed; }
int isolde_blk_flush_error(const struct isolde_blk *dev) { return dev->flush_error; }
const struct isolde_enforcement *isolde_blk_enforcement(const struct isolde_blk *dev) { return &dev->domain.applied; }
const char *isolde_blk_error(const struct isolde_blk *dev) { return dev->rec.error; }
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
	memcpy(st->denials_by_class, dev->domain.denials_by_class, sizeof st->denials_by_class);
	st->shield_verified = dev->shield.blocks_verified;
	st->shield_learned = dev->shield.blocks_learned;
	st->shield_mismatches = dev->shield.mismatches;
	st->kicks = dev->waiter.signals_sent;
	/* A VM domain's calls arrive through the watch fd (src/domain/vm.h). */
	st->calls = dev->waiter.signals_received + dev->domain.vm_calls;
	st->front_sleeps = dev->waiter.sleeps;
	isolde_domain_log_counts(&dev->domain, &st->log_lines, &st->log_suppressed);
}
