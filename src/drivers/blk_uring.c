// SPDX-License-Identifier: MIT
/*
 * blk-uring: a block driver over a regular file or a block device through
 * io_uring, in backend.h's asynchronous model. Each service-loop pass queues
 * one submission per checked request and starts the whole batch with one
 * io_uring_enter; completions come back in any order, each answered by its
 * tag. Page-cache reads of a file system that can read without blocking
 * (ext4, xfs, btrfs: FMODE_NOWAIT) complete inside that io_uring_enter, so a
 * pass that finds 32 of them costs one system call instead of 32.
 *
 * Operations:
 *   READ          IORING_OP_READV
 *   WRITE         IORING_OP_WRITEV, FUA as RWF_DSYNC in rw_flags
 *   FLUSH         IORING_OP_FSYNC with IORING_FSYNC_DATASYNC and IOSQE_IO_DRAIN
 *   DISCARD and WRITE_ZEROES are blk-file's (fallocate or the block ioctls),
 *                 done synchronously: the ring may not carry FALLOCATE, whose
 *                 mode and range seccomp could not check there.
 * So is anything io_uring hands back unfinished: a short transfer's rest,
 * -EAGAIN/-ECANCELED.
 *
 * Async workers. What cannot be done without blocking io_uring hands to its
 * io-wq worker threads: writes to the page cache, fsync, fallocate, and
 * every read of a file without FMODE_NOWAIT (tmpfs, on Linux 6.18). The
 * kernel creates workers like any task, within RLIMIT_NPROC, and the sandbox
 * sets RLIMIT_NPROC to 0 (sandbox.c): every such request then ends, about
 * 50 ms later, with -ECANCELED. So without workers (RLIMIT_NPROC 0, or a first
 * -ECANCELED) WRITE, FLUSH, DISCARD and WRITE_ZEROES are done synchronously,
 * as blk-file does them. READs go on the ring only if the file can be read
 * without blocking (preadv2 with RWF_NOWAIT tells: it checks the same
 * FMODE_NOWAIT) and no READ has come back cancelled; otherwise they are
 * synchronous too, workers or not: a read handed to a worker thread costs a
 * wake-up and a second CPU (on tmpfs with workers allowed: 140K instead of
 * 700K reads per second at queue depth 32 on 2 vCPUs).
 *
 * Ordering, with workers (without them only READs are ever in flight, and
 * everything else is finished when it is consumed):
 *   1. A FLUSH starts only after everything submitted before it has
 *      completed (IOSQE_IO_DRAIN), so its fdatasync covers every WRITE,
 *      DISCARD and WRITE_ZEROES the driver consumed before it, as blk-file's
 *      does.
 *   2. Nothing consumed after a FLUSH starts before that FLUSH has completed:
 *      IOSQE_IO_DRAIN also holds back later submissions, and an operation
 *      done synchronously first waits for the ring to empty while a FLUSH is
 *      on it. A FLUSH is thus a full barrier, as it is in blk-file, so the
 *      front end and exports see one semantics whichever driver runs; the
 *      price, paid only around flushes, is a queue that drains.
 *   3. A write that a fallback finishes outside the ring while a FLUSH is on
 *      it (a short write's rest, a WRITE_ZEROES done with written zeroes) is
 *      covered by one more fdatasync before that FLUSH is answered.
 *   4. Otherwise requests in flight together complete in any order, as on
 *      any queued block device; the front end matches responses by id, and
 *      its users do not overlap requests that are in flight together.
 *
 * Containment. seccomp sees io_uring_enter, not the operations it carries,
 * so this driver does not make its ring: the launcher does
 * (src/domain/domain_uring.h) and hands it over as fd 7, already bound to
 * the device as fixed file 0 and restricted to READV, WRITEV and FSYNC on
 * fixed files, with no io_uring_register operation left. The policy's
 * 'uring' group allows io_uring_enter only: no ring of the driver's own can
 * carry OPENAT, SOCKET, CONNECT or FALLOCATE past seccomp. The driver maps
 * the ring with the parameters the launcher passes (--uring-params).
 */
#define _GNU_SOURCE
#include "blk_uring.h"

#include <errno.h>
#include <linux/falloc.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blk_file.h"
#include "uring_attach.h"

#define DEVICE_INDEX 0 /* the device fd among the ring's fixed files */

/* What the kernel works on for one tag; valid from submit to completion. */
struct uring_req {
	struct iovec iov[ISOLDE_BLK_MAX_SEGS];
	int iovcnt;
	uint8_t op;
	uint16_t flags;
	uint64_t offset; /* READ/WRITE: the next byte still to do */
	uint32_t length; /* READ/WRITE: the bytes still to do */
};

struct blk_uring {
	struct io_uring ring;
	struct uring_req *reqs;   /* ring_slots entries, indexed by tag */
	unsigned queued;          /* SQEs prepared and not yet submitted */
	unsigned on_ring;         /* requests the ring holds, queued ones included */
	unsigned flushes_on_ring;
	bool workers;             /* io-wq can run blocking operations */
	bool reads_nowait;        /* READs complete without a worker */
	bool blockdev;
	bool flush_again;         /* a write was finished outside the ring while
				   * a FLUSH was on it (ordering rule 3) */
};

static struct blk_uring uring;

static void fatal(struct isolde_driver *drv, const char *what, int err)
{
	isolde_driver_log(drv, "%s: %s", what, strerror(err));
	exit(1);
}

/* ---- submission ---- */

/* Start every prepared SQE: one io_uring_enter for the batch. */
static void submit_queued(struct isolde_driver *drv, struct blk_uring *u)
{
	while (u->queued > 0) {
		int r = io_uring_submit(&u->ring);

		if (r == -EINTR)
			continue;
		if (r <= 0)
			fatal(drv, "io_uring_enter", r < 0 ? -r : EIO);
		u->queued -= (unsigned)r < u->queued ? (unsigned)r : u->queued;
	}
}

/* At most one SQE per tag and at most ring_slots tags: the SQ, which has
 * ring_slots entries, cannot be full once what was queued is submitted. */
static struct io_uring_sqe *next_sqe(struct isolde_driver *drv, struct blk_uring *u, uint32_t tag)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	if (!sqe) {
		submit_queued(drv, u);
		sqe = io_uring_get_sqe(&u->ring);
		if (!sqe) {
			isolde_driver_log(drv, "submission queue full with %u requests on the ring", u->on_ring);
			abort();
		}
	}
	u->queued++;
	u->on_ring++;
	io_uring_sqe_set_data64(sqe, tag);
	return sqe;
}

/* ---- completion ---- */

/* A request ended with -ECANCELED: io_uring could not create a worker
 * thread for it. Do such requests synchronously from now on. */
static void note_cancel(struct isolde_driver *drv, struct blk_uring *u, const struct uring_req *r,
			int res)
{
	if (res != -ECANCELED)
		return;
	if (u->workers) {
		u->workers = false;
		isolde_driver_log(drv, "io_uring could not start a worker thread: writes, flushes, "
				  "discards and write-zeroes are done synchronously from now on");
	}
	if (r->op == ISOLDE_BLK_OP_READ && u->reads_nowait) {
		u->reads_nowait = false;
		isolde_driver_log(drv, "a read needed an io_uring worker thread and none could "
				  "start: reads are done synchronously from now on");
	}
}

/* Do what is left of a request with blk-file's system calls. */
static uint8_t finish_sync(struct isolde_driver *drv, struct blk_uring *u, struct uring_req *r)
{
	struct isolde_blk_request req = {
		.op = r->op, .flags = r->flags, .offset = r->offset, .length = r->length,
	};
	uint8_t status = blk_file_io(drv, &req, r->iov, r->iovcnt);

	if (r->op != ISOLDE_BLK_OP_READ && u->flushes_on_ring > 0)
		u->flush_again = true;
	return status;
}

/* Skip n bytes that are done. */
static void advance(struct uring_req *r, uint32_t n)
{
	int i = 0;

	r->offset += n;
	r->length -= n;
	while (n > 0 && i < r->iovcnt) {
		if (n >= r->iov[i].iov_len) {
			n -= (uint32_t)r->iov[i].iov_len;
			i++;
		} else {
			r->iov[i].iov_base = (char *)r->iov[i].iov_base + n;
			r->iov[i].iov_len -= n;
			n = 0;
		}
	}
	memmove(r->iov, r->iov + i, sizeof r->iov[0] * (size_t)(r->iovcnt - i));
	r->iovcnt -= i;
}

static uint8_t rw_done(struct isolde_driver *drv, struct blk_uring *u, struct uring_req *r, int res)
{
	if (res >= 0 && (uint32_t)res == r->length)
		return ISOLDE_BLK_S_OK;
	if (res == 0 || (res > 0 && (uint32_t)res > r->length))
		return ISOLDE_BLK_S_IOERR; /* end of a file that shrank under us, as in blk-file */
	/* -EOPNOTSUPP on a FUA write: no RWF_DSYNC here; blk-file writes,
	 * then syncs. */
	bool retry = res == -EAGAIN || res == -ECANCELED || res == -EINTR ||
		     (res == -EOPNOTSUPP && (r->flags & ISOLDE_BLK_F_FUA));
	if (res < 0 && !retry)
		return isolde_driver_status_from_errno(-res);
	if (res > 0)
		advance(r, (uint32_t)res);
	return finish_sync(drv, u, r);
}

static uint8_t flush_done(struct isolde_driver *drv, struct blk_uring *u, int res)
{
	uint8_t status = res == 0 ? ISOLDE_BLK_S_OK : isolde_driver_status_from_errno(-res);

	if (res == -ECANCELED || res == -EAGAIN)
		status = fdatasync(drv->device_fd) == 0 ? ISOLDE_BLK_S_OK : isolde_driver_status_from_errno(errno);
	else if (status == ISOLDE_BLK_S_OK && u->flush_again && fdatasync(drv->device_fd) != 0)
		status = isolde_driver_status_from_errno(errno);
	if (--u->flushes_on_ring == 0)
		u->flush_again = false;
	return status;
}

static void complete_cqe(struct isolde_driver *drv, struct blk_uring *u, const struct io_uring_cqe *cqe)
{
	uint64_t tag = io_uring_cqe_get_data64(cqe);
	struct uring_req *r;
	uint8_t status;

	if (tag >= drv->params.ring_slots) {
		isolde_driver_log(drv, "completion with user data %llu, which is no tag",
				  (unsigned long long)tag);
		abort();
	}
	r = &u->reqs[tag];
	note_cancel(drv, u, r, cqe->res);
	u->on_ring--;
	switch (r->op) {
	case ISOLDE_BLK_OP_READ:
	case ISOLDE_BLK_OP_WRITE:
		status = rw_done(drv, u, r, cqe->res);
		break;
	default: /* only READ, WRITE and FLUSH go on the ring */
		status = flush_done(drv, u, cqe->res);
		break;
	}
	isolde_driver_complete(drv, (uint32_t)tag, status);
}

unsigned blk_uring_reap(struct isolde_driver *drv)
{
	struct blk_uring *u = drv->priv;
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	submit_queued(drv, u);
	io_uring_for_each_cqe(&u->ring, head, cqe) {
		complete_cqe(drv, u, cqe);
		n++;
	}
	io_uring_cq_advance(&u->ring, n);
	return n;
}

bool blk_uring_completion_pending(struct isolde_driver *drv)
{
	struct blk_uring *u = drv->priv;

	return io_uring_cq_ready(&u->ring) != 0;
}

/* Complete everything on the ring, waiting for it. */
static void wait_ring_empty(struct isolde_driver *drv, struct blk_uring *u)
{
	submit_queued(drv, u);
	while (u->on_ring > 0) {
		struct io_uring_cqe *cqe;
		int r = io_uring_wait_cqe(&u->ring, &cqe);

		if (r == -EINTR)
			continue;
		if (r < 0)
			fatal(drv, "waiting for io_uring completions", -r);
		complete_cqe(drv, u, cqe);
		io_uring_cqe_seen(&u->ring, cqe);
	}
}

/* ---- submit ---- */

/* Do a request synchronously; it must not overtake a FLUSH on the ring. */
static int run_sync(struct isolde_driver *drv, struct blk_uring *u, struct uring_req *r)
{
	if (u->flushes_on_ring > 0)
		wait_ring_empty(drv, u);
	return finish_sync(drv, u, r);
}

int blk_uring_submit(struct isolde_driver *drv, const struct isolde_blk_request *req,
		     const struct iovec *iov, int iovcnt, uint32_t tag)
{
	struct blk_uring *u = drv->priv;
	struct uring_req *r = &u->reqs[tag];
	struct io_uring_sqe *sqe;

	r->op = req->op;
	r->flags = req->flags;
	r->offset = req->offset;
	r->length = req->length;
	r->iovcnt = iovcnt;
	memcpy(r->iov, iov, sizeof r->iov[0] * (size_t)iovcnt);

	switch (req->op) {
	case ISOLDE_BLK_OP_READ:
		if (!u->reads_nowait)
			return run_sync(drv, u, r);
		sqe = next_sqe(drv, u, tag);
		io_uring_prep_readv(sqe, DEVICE_INDEX, r->iov, (unsigned)iovcnt, req->offset);
		break;
	case ISOLDE_BLK_OP_WRITE:
		if (!u->workers)
			return run_sync(drv, u, r);
		sqe = next_sqe(drv, u, tag);
		io_uring_prep_writev2(sqe, DEVICE_INDEX, r->iov, (unsigned)iovcnt, req->offset,
				      (req->flags & ISOLDE_BLK_F_FUA) ? RWF_DSYNC : 0);
		break;
	case ISOLDE_BLK_OP_FLUSH:
		if (!u->workers)
			return run_sync(drv, u, r);
		sqe = next_sqe(drv, u, tag);
		io_uring_prep_fsync(sqe, DEVICE_INDEX, IORING_FSYNC_DATASYNC);
		sqe->flags |= IOSQE_IO_DRAIN;
		u->flushes_on_ring++;
		break;
	case ISOLDE_BLK_OP_DISCARD:
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		return run_sync(drv, u, r);
	default:
		/* isolde_driver_serve's checks let only these five ops through. */
		return ISOLDE_BLK_S_UNSUPPORTED;
	}
	sqe->flags |= IOSQE_FIXED_FILE;
	return ISOLDE_DRIVER_QUEUED;
}

/* ---- setup ---- */

/*
 * Can io_uring run a blocking operation? Its worker threads are created like
 * any task of this uid, within RLIMIT_NPROC; with a limit of 0 (the sandbox's)
 * every creation fails, since this process already counts. A limit above 0
 * may still be reached: then requests end with -ECANCELED, are finished
 * synchronously, and the driver stops using workers (note_cancel).
 * (Not a probe request: a failed creation is retried with backoff for about
 * 50 ms, which every restart would pay; and a READV with IOSQE_ASYNC never
 * completes at all on Linux 6.18 when no worker can be created.)
 */
static bool workers_possible(void)
{
	struct rlimit lim;

	/* This process counts: the sandbox's uid is the driver's own, with a
	 * limit of 1 + the threads its policy grants. */
	return getrlimit(RLIMIT_NPROC, &lim) != 0 || lim.rlim_cur > 1;
}

/*
 * Does io_uring read this file without a worker? It tries a read in place
 * only if the file has FMODE_NOWAIT; so does preadv2 with RWF_NOWAIT, which
 * fails with EOPNOTSUPP without it (before any other check: an O_DIRECT
 * fd's EINVAL for this unaligned byte still means yes).
 */
static bool reads_nowait(struct isolde_driver *drv)
{
	char byte;
	struct iovec iov = { &byte, 1 };

	if (drv->params.device_size == 0)
		return false;
	return preadv2(drv->device_fd, &iov, 1, 0, RWF_NOWAIT) >= 0 || errno != EOPNOTSUPP;
}

int blk_uring_init(struct isolde_driver *drv)
{
	struct blk_uring *u = &uring;
	uint32_t slots = drv->params.ring_slots;
	int r;

	if (blk_file_init(drv) != 0)
		return -1;
	u->reqs = calloc(slots, sizeof *u->reqs);
	if (!u->reqs) {
		isolde_driver_log(drv, "out of memory for %u requests", slots);
		return -1;
	}
	if ((r = isolde_driver_map_uring(drv, &u->ring)) < 0)
		return -1;
	u->blockdev = (drv->params.device_flags & ISOLDE_DEV_BLOCKDEV) != 0;
	u->workers = workers_possible();
	u->reads_nowait = reads_nowait(drv);
	drv->priv = u;
	/* The ring's fd is readable while completions wait: a sleeping
	 * service loop wakes for them as for a kick. */
	isolde_driver_watch_fd(drv, u->ring.ring_fd);
	return 0;
}
