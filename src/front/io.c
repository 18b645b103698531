// SPDX-License-Identifier: MIT
/*
 * The block front end's I/O path: put requests on the ring, check every
 * response against the private shadow, complete them; wait and poll (hang
 * checks, a dead driver noticed, recovery advanced: recovery.c); zero-copy
 * buffers. Opening and closing is open.c.
 */
#define _GNU_SOURCE
#include "device.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>

#define WAIT_SLICE_NS (100 * 1000000LL) /* how often a blocked front end checks for a hang */
#define SHIELD_MAX_RETRIES 2u /* restarts a read may cause before its mismatch is an error */
#define ERROR_MAX_RETRIES 1u  /* fresh drivers asked to confirm an I/O error */

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
	isolde_recovery_fail(&dev->rec, ISOLDE_FAIL_PROTOCOL, "%s", why);
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

	if (dev->rec.failed)
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
	/* A remote device has no local description to ask: the replayed
	 * flush's own answer, from the server, is all there is (ARCHITECTURE
	 * §13). */
	if (dev->device_fd < 0)
		return 0;
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
	isolde_recovery_completed(&dev->rec);
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
		isolde_recovery_fail(&dev->rec, ISOLDE_FAIL_CORRUPTION, "(pid %d) returned block %llu different from "
				     "what was written (integrity shield)", (int)dev->domain.pid,
				     (unsigned long long)corrupt_block);
	else if (doubted)
		isolde_recovery_fail(&dev->rec, ISOLDE_FAIL_ERROR_STATUS, "(pid %d) reported '%s'; asking a fresh "
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
		isolde_recovery_fail(&dev->rec, ISOLDE_FAIL_HANG, "(pid %d) made no progress for %u ms with %u "
				     "requests pending", (int)dev->domain.pid, dev->hang_ms,
				     isolde_shadow_in_flight(&dev->shadow));
		return;
	}
	for (uint32_t i = 0; i < dev->shadow.depth; i++) {
		const struct isolde_shadow_entry *e = &dev->shadow.entries[i];
		if (e->id != 0 && now - e->submitted_ns >= 10 * limit) {
			isolde_recovery_fail(&dev->rec, ISOLDE_FAIL_HANG, "(pid %d) left a %s request unanswered for "
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
	dev->rec.death_seen_ns = isolde_now_ns();
	/* Take what it answered before it died, then recover the rest. */
	*n += consume_responses(dev, done + *n, max - *n);
	const struct isolde_exit *x = &dev->domain.last_exit;
	isolde_recovery_fail(&dev->rec, x->by_policy ? ISOLDE_FAIL_POLICY
			     : x->kernel ? ISOLDE_FAIL_KERNEL : isolde_classify_exit(x->signaled, x->code),
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
		isolde_recovery_step(&dev->rec);
	if (dev->rec.failed)
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
	int ms = isolde_recovery_timeout_ms(&dev->rec);
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
		if (dev->rec.failed || n >= min || n == max || isolde_shadow_in_flight(&dev->shadow) == 0)
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
	isolde_blk_push(dev);
	/* Calls are counted, then the eventfd is empty until the next. */
	isolde_waiter_drain(&dev->waiter, dev->domain.call_fd);
	return (int)attend(dev, done, max, watch_readable(dev));
}

int isolde_blk_timeout_ms(const struct isolde_blk *dev)
{
	return running(dev) ? -1 : isolde_recovery_timeout_ms(&dev->rec);
}

bool isolde_blk_prepare_sleep(struct isolde_blk *dev)
{
	uint32_t prod;

	if (dev->rec.failed)
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
	isolde_recovery_give_up(&dev->rec, "%s", why);
}

void isolde_blk_set_event_handler(struct isolde_blk *dev, isolde_blk_event_fn fn, void *ctx)
{
	dev->rec.on_event = fn;
	dev->rec.on_event_ctx = ctx;
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
