// SPDX-License-Identifier: MIT
/*
 * blk-nbd: a block driver over a remote NBD export, built on libnbd, in
 * backend.h's asynchronous model.
 *
 * The driver never connects anywhere: the trusted launcher parses the image
 * URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH), connects
 * and hands over the connected stream socket as fd 6 (the device fd), with
 * the handshake not started, and the export's name as --export=NAME. In init
 * libnbd runs the fixed newstyle handshake on that fd (nbd_connect_socket):
 * structured replies requested, no TLS (nbd_set_tls LIBNBD_TLS_DISABLE: a
 * server that requires it fails the handshake), no metadata contexts. What it
 * reaches - size, read-only - goes to the front end through
 * isolde_driver_report_device, which refuses a size that changed and a
 * read-only export opened read-write. TCP_NODELAY is set on a TCP socket, as
 * nbd_connect_tcp would (without it every start pays Nagle's 40 ms).
 *
 * Requests in flight share the one connection, each an NBD command (or
 * several) with a completion callback. The callbacks only record; reap drives
 * libnbd (nbd_aio_notify_read/write as poll(2) and nbd_aio_get_direction say,
 * never blocking) and then answers every request whose commands are all done,
 * on this thread. The socket is the only place completions come from, so the
 * service loop watches it (POLLIN, and POLLOUT while libnbd has a send
 * waiting for room) and a spinning wait polls it often
 * (isolde_driver_watch_fd_events).
 *
 * Operations:
 *   READ, WRITE   one nbd_aio_pread/pwrite per granted segment, each split
 *                 at the server's maximum block size (32 MiB if it names
 *                 none), straight from and into the granted memory; a
 *                 request is done when all its commands are (the first error
 *                 wins). Segments that break the server's minimum block size
 *                 (only a multi-segment request can) go through a private
 *                 buffer instead. The front end sends one segment per
 *                 request, so normally nothing is copied.
 *   FUA           LIBNBD_CMD_FLAG_FUA if the server can (nbd_can_fua); else
 *                 the write, then a flush.
 *   FLUSH         nbd_aio_flush, as a full barrier: it is sent once every
 *                 request consumed before it has completed (NBD's flush
 *                 covers only writes already answered), and nothing consumed
 *                 after it starts before it has completed - the semantics
 *                 blk-file and blk-uring give. A server that cannot flush
 *                 (no NBD_FLAG_SEND_FLUSH) never says writes are durable, so
 *                 FLUSH, and FUA without a flush to emulate it, fail with
 *                 IOERR (UNSUPPORTED would be a protocol violation for a FLUSH);
 *                 the front end reports every later flush as failed. Logged
 *                 once per start. On a read-only device FLUSH succeeds at once:
 *                 nothing was written.
 *   DISCARD       nbd_aio_trim; advisory: succeeds at once if the server
 *                 cannot trim, and if it refuses (ENOTSUP, EINVAL).
 *   WRITE_ZEROES  nbd_aio_zero, with LIBNBD_CMD_FLAG_NO_HOLE unless
 *                 ISOLDE_BLK_F_MAY_UNMAP; if the server cannot (or answers
 *                 ENOTSUP), written zeroes.
 *
 * Errors. A server's error for one command is the request's status (ENOSPC
 * and EDQUOT: NOSPC; anything else IOERR - never UNSUPPORTED or INVALID, which
 * the front end takes as lies for an operation it checked). ESHUTDOWN (the
 * server is going away), a connection that closes or breaks, or libnbd giving
 * up on the handle: the driver logs libnbd's error and exits 1 without
 * answering what is in flight; the front end restarts it, the launcher
 * connects again, and the requests are replayed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libnbd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "backend.h"

/* The NBD protocol's advice when the server names no maximum. */
#define DEFAULT_MAX_BLOCK (32u << 20)
/* libnbd's own limit for a command with a payload. */
#define LIBNBD_MAX_REQUEST (64u << 20)
/* Zeroes written when the server cannot zero: never written to, so its pages
 * are the kernel's zero page. */
#define ZERO_BUF_SIZE (1u << 20)
/* A spinning wait polls the socket about this often (ns). */
#define SPIN_POLL_NS 2000u
/* Replies handled per reap before the ring is looked at again. */
#define REAP_ROUNDS_MAX 4096u

#define NO_TAG UINT32_MAX

enum stage {
	STAGE_IO,         /* the request's own commands */
	STAGE_FUA_FLUSH,  /* a FUA write without FUA: the flush after it */
	STAGE_ZERO_WRITE, /* WRITE_ZEROES the server refused: written zeroes */
};

/* One isolde request, by tag; valid from submit to completion. */
struct nbd_req {
	struct iovec iov[ISOLDE_BLK_MAX_SEGS];
	int iovcnt;
	uint8_t op;
	uint16_t flags;
	uint8_t stage;
	uint64_t offset;
	uint32_t length;
	uint32_t outstanding; /* commands not yet completed, +1 while issuing */
	int error;            /* the first error, an errno */
	unsigned char *bounce; /* READ/WRITE through a private buffer, or NULL */
	uint32_t next;         /* the next deferred request, or NO_TAG */
};

struct blk_nbd {
	struct nbd_handle *h;
	int fd;
	const char *export_name;
	struct nbd_req *reqs;
	uint32_t slots;
	bool readonly;
	bool can_flush, can_fua, can_trim, can_zero;
	uint32_t min_block; /* 1 if the server named none */
	uint32_t max_block;
	/* Requests whose commands have all completed, to be finished by reap
	 * (a stack: order does not matter, they were in flight together). */
	uint32_t *done;
	uint32_t ndone;
	/* Requests held back by a FLUSH (ordering), first in first out. */
	uint32_t deferred_head, deferred_tail;
	uint32_t active;        /* requests whose commands are issued or issuing */
	bool flush_active;      /* a FLUSH among them */
	short watch_events;     /* what the service loop's wait watches for */
};

static struct blk_nbd nbd = { .export_name = "" };
static char zero_buf[ZERO_BUF_SIZE];

/* ---- fatal: the connection is gone ---- */

/* Log why, and exit: the front end restarts the driver, the launcher
 * connects again, and what was in flight is replayed. */
static void fatal_nbd(struct isolde_driver *drv, const char *what)
{
	const char *msg = nbd_get_error();
	int e = nbd_get_errno();

	if (nbd_aio_is_closed(nbd.h) > 0)
		isolde_driver_log(drv, "the NBD server closed the connection (during %s, %u requests in flight)",
				  what, drv->inflight);
	else
		isolde_driver_log(drv, "the NBD connection failed during %s (%u requests in flight): %s",
				  what, drv->inflight, msg ? msg : e ? strerror(e) : "no error from libnbd");
	exit(1);
}

static void check_alive(struct isolde_driver *drv, const char *what)
{
	if (nbd_aio_is_dead(nbd.h) > 0 || nbd_aio_is_closed(nbd.h) > 0)
		fatal_nbd(drv, what);
}

/* ---- completion bookkeeping ---- */

static uint32_t tag_of(const struct nbd_req *r)
{
	return (uint32_t)(r - nbd.reqs);
}

static void drop_ref(struct nbd_req *r)
{
	if (--r->outstanding == 0)
		nbd.done[nbd.ndone++] = tag_of(r); /* at most once per tag: <= slots */
}

/*
 * libnbd calls this exactly once for every command it accepted, from inside
 * nbd_aio_notify_read/write (on this thread). Only record: what is finished
 * is answered by reap, after it has checked the connection is still alive
 * (when it dies, libnbd fails every command in flight with ENOTCONN; those
 * must be replayed, not answered).
 */
static int command_done(void *user_data, int *error)
{
	struct nbd_req *r = user_data;

	if (*error && !r->error)
		r->error = *error;
	drop_ref(r);
	return 1; /* retire the command */
}

static void note_failed_issue(struct isolde_driver *drv, struct nbd_req *r)
{
	int e = nbd_get_errno();

	/* A dead handle refuses every command: restart, do not answer. */
	check_alive(drv, "a command");
	if (!r->error)
		r->error = e ? e : EIO;
	isolde_driver_log(drv, "NBD refused a %s command: %s", isolde_blk_op_name(r->op), nbd_get_error());
}

/* ---- issuing commands ---- */

static nbd_completion_callback completion(struct nbd_req *r)
{
	return (nbd_completion_callback){ .callback = command_done, .user_data = r };
}

/* One data command of at most max_block bytes. */
static void issue_rw(struct isolde_driver *drv, struct nbd_req *r, void *buf, uint32_t len,
		     uint64_t offset, uint32_t flags)
{
	while (len > 0 && !r->error) {
		uint32_t chunk = len < nbd.max_block ? len : nbd.max_block;
		int64_t c;

		r->outstanding++;
		if (r->op == ISOLDE_BLK_OP_READ)
			c = nbd_aio_pread(nbd.h, buf, chunk, offset, completion(r), 0);
		else
			c = nbd_aio_pwrite(nbd.h, buf, chunk, offset, completion(r), flags);
		if (c < 0) {
			r->outstanding--;
			note_failed_issue(drv, r);
			return;
		}
		buf = (char *)buf + chunk;
		offset += chunk;
		len -= chunk;
	}
}

static bool segments_aligned(const struct nbd_req *r)
{
	if (nbd.min_block <= 1 || r->iovcnt == 1)
		return true;
	for (int i = 0; i < r->iovcnt; i++)
		if (r->iov[i].iov_len % nbd.min_block)
			return false;
	return true;
}

static void issue_data(struct isolde_driver *drv, struct nbd_req *r)
{
	uint32_t flags = (r->op == ISOLDE_BLK_OP_WRITE && (r->flags & ISOLDE_BLK_F_FUA) && nbd.can_fua)
				 ? LIBNBD_CMD_FLAG_FUA : 0;
	uint64_t offset = r->offset;

	if (!segments_aligned(r)) {
		r->bounce = malloc(r->length);
		if (!r->bounce) {
			r->error = ENOMEM;
			return;
		}
		if (r->op == ISOLDE_BLK_OP_WRITE) {
			size_t at = 0;
			for (int i = 0; i < r->iovcnt; i++) {
				memcpy(r->bounce + at, r->iov[i].iov_base, r->iov[i].iov_len);
				at += r->iov[i].iov_len;
			}
		}
		issue_rw(drv, r, r->bounce, r->length, offset, flags);
		return;
	}
	for (int i = 0; i < r->iovcnt && !r->error; i++) {
		issue_rw(drv, r, r->iov[i].iov_base, (uint32_t)r->iov[i].iov_len, offset, flags);
		offset += r->iov[i].iov_len;
	}
}

static void issue_flush(struct isolde_driver *drv, struct nbd_req *r)
{
	r->outstanding++;
	if (nbd_aio_flush(nbd.h, completion(r), 0) < 0) {
		r->outstanding--;
		note_failed_issue(drv, r);
	}
}

static void issue_zero_writes(struct isolde_driver *drv, struct nbd_req *r)
{
	uint64_t offset = r->offset;
	uint32_t len = r->length;

	while (len > 0 && !r->error) {
		uint32_t chunk = len < ZERO_BUF_SIZE ? len : ZERO_BUF_SIZE;

		if (chunk > nbd.max_block)
			chunk = nbd.max_block;
		r->outstanding++;
		if (nbd_aio_pwrite(nbd.h, zero_buf, chunk, offset, completion(r), 0) < 0) {
			r->outstanding--;
			note_failed_issue(drv, r);
			return;
		}
		offset += chunk;
		len -= chunk;
	}
}

/* Start a stage of a request: its commands are issued; when they have all
 * completed (perhaps at once, if issuing failed) it is on the done list. */
static void start_stage(struct isolde_driver *drv, struct nbd_req *r, enum stage stage)
{
	int64_t c = 0;

	r->stage = (uint8_t)stage;
	r->outstanding = 1; /* held while issuing */
	switch (stage) {
	case STAGE_FUA_FLUSH:
		issue_flush(drv, r);
		break;
	case STAGE_ZERO_WRITE:
		issue_zero_writes(drv, r);
		break;
	case STAGE_IO:
		switch (r->op) {
		case ISOLDE_BLK_OP_READ:
		case ISOLDE_BLK_OP_WRITE:
			issue_data(drv, r);
			break;
		case ISOLDE_BLK_OP_FLUSH:
			issue_flush(drv, r);
			break;
		case ISOLDE_BLK_OP_DISCARD:
			r->outstanding++;
			c = nbd_aio_trim(nbd.h, r->length, r->offset, completion(r), 0);
			break;
		case ISOLDE_BLK_OP_WRITE_ZEROES:
			if (!nbd.can_zero) {
				issue_zero_writes(drv, r);
				r->stage = STAGE_ZERO_WRITE;
				break;
			}
			r->outstanding++;
			c = nbd_aio_zero(nbd.h, r->length, r->offset, completion(r),
					 (r->flags & ISOLDE_BLK_F_MAY_UNMAP) ? 0 : LIBNBD_CMD_FLAG_NO_HOLE);
			break;
		}
		if (c < 0) {
			r->outstanding--;
			note_failed_issue(drv, r);
		}
		break;
	}
	drop_ref(r);
}

static void dispatch(struct isolde_driver *drv, uint32_t tag)
{
	struct nbd_req *r = &nbd.reqs[tag];

	nbd.active++;
	if (r->op == ISOLDE_BLK_OP_FLUSH)
		nbd.flush_active = true;
	start_stage(drv, r, STAGE_IO);
}

static void defer(uint32_t tag)
{
	nbd.reqs[tag].next = NO_TAG;
	if (nbd.deferred_head == NO_TAG)
		nbd.deferred_head = tag;
	else
		nbd.reqs[nbd.deferred_tail].next = tag;
	nbd.deferred_tail = tag;
}

/* Start what a FLUSH held back, in order, up to the next FLUSH that must
 * wait for what is active to complete. */
static void dispatch_deferred(struct isolde_driver *drv)
{
	while (nbd.deferred_head != NO_TAG && !nbd.flush_active) {
		uint32_t tag = nbd.deferred_head;

		if (nbd.reqs[tag].op == ISOLDE_BLK_OP_FLUSH && nbd.active > 0)
			break;
		nbd.deferred_head = nbd.reqs[tag].next;
		dispatch(drv, tag);
	}
}

/* ---- finishing ---- */

static uint8_t status_of(int e)
{
	switch (e) {
	case 0:
		return ISOLDE_BLK_S_OK;
	case ENOSPC:
	case EDQUOT:
		return ISOLDE_BLK_S_NOSPC;
	default:
		return ISOLDE_BLK_S_IOERR;
	}
}

static void copy_out(struct nbd_req *r)
{
	size_t at = 0;

	for (int i = 0; i < r->iovcnt; i++) {
		memcpy(r->iov[i].iov_base, r->bounce + at, r->iov[i].iov_len);
		at += r->iov[i].iov_len;
	}
}

/* A request's stage completed: start the next stage, or answer it. Returns
 * 1 if it was answered. */
static unsigned finish(struct isolde_driver *drv, uint32_t tag)
{
	struct nbd_req *r = &nbd.reqs[tag];
	int e = r->error;

	if (e == ESHUTDOWN) {
		isolde_driver_log(drv, "the NBD server is shutting down (ESHUTDOWN on a %s)",
				  isolde_blk_op_name(r->op));
		exit(1);
	}
	if (r->stage == STAGE_IO) {
		switch (r->op) {
		case ISOLDE_BLK_OP_READ:
			if (!e && r->bounce)
				copy_out(r);
			break;
		case ISOLDE_BLK_OP_WRITE:
			if (!e && (r->flags & ISOLDE_BLK_F_FUA) && !nbd.can_fua) {
				if (!nbd.can_flush) {
					e = EIO; /* nothing can make it durable */
					break;
				}
				start_stage(drv, r, STAGE_FUA_FLUSH);
				return 0;
			}
			break;
		case ISOLDE_BLK_OP_DISCARD:
			if (e == ENOTSUP || e == EOPNOTSUPP || e == EINVAL)
				e = 0; /* advisory */
			break;
		case ISOLDE_BLK_OP_WRITE_ZEROES:
			if (e == ENOTSUP || e == EOPNOTSUPP) {
				r->error = 0;
				start_stage(drv, r, STAGE_ZERO_WRITE);
				return 0;
			}
			break;
		}
	}
	if (r->op == ISOLDE_BLK_OP_FLUSH)
		nbd.flush_active = false;
	free(r->bounce);
	r->bounce = NULL;
	nbd.active--;
	isolde_driver_complete(drv, tag, status_of(e));
	return 1;
}

/* ---- the socket ---- */

/* Let libnbd read and send what the socket allows now, without blocking. */
static void drive(struct isolde_driver *drv)
{
	for (unsigned round = 0; round < REAP_ROUNDS_MAX; round++) {
		unsigned dir = nbd_aio_get_direction(nbd.h);
		struct pollfd p = { .fd = nbd.fd };

		if (dir & LIBNBD_AIO_DIRECTION_READ)
			p.events |= POLLIN;
		if (dir & LIBNBD_AIO_DIRECTION_WRITE)
			p.events |= POLLOUT;
		if (!p.events) {
			check_alive(drv, "a poll of the socket");
			return;
		}
		int r = poll(&p, 1, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			isolde_driver_log(drv, "poll on the NBD socket: %s", strerror(errno));
			exit(1);
		}
		if (r == 0)
			return;
		if ((dir & LIBNBD_AIO_DIRECTION_READ) && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
			if (nbd_aio_notify_read(nbd.h) < 0)
				fatal_nbd(drv, "a read from the socket");
		} else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (p.revents & (POLLOUT | POLLHUP | POLLERR))) {
			if (nbd_aio_notify_write(nbd.h) < 0)
				fatal_nbd(drv, "a write to the socket");
		} else {
			isolde_driver_log(drv, "the NBD socket reports 0x%x while libnbd waits for 0x%x",
					  (unsigned)p.revents, (unsigned)p.events);
			exit(1);
		}
		check_alive(drv, "reading replies");
	}
}

/* What the service loop waits for on the socket. */
static void update_watch(struct isolde_driver *drv)
{
	short events = POLLIN;

	if (nbd_aio_get_direction(nbd.h) & LIBNBD_AIO_DIRECTION_WRITE)
		events |= POLLOUT;
	if (events != nbd.watch_events) {
		nbd.watch_events = events;
		isolde_driver_watch_fd_events(drv, nbd.fd, events, SPIN_POLL_NS);
	}
}

/* ---- the asynchronous model ---- */

static int blk_nbd_submit(struct isolde_driver *drv, const struct isolde_blk_request *req,
			  const struct iovec *iov, int iovcnt, uint32_t tag)
{
	struct nbd_req *r = &nbd.reqs[tag];

	switch (req->op) {
	case ISOLDE_BLK_OP_FLUSH:
		if (nbd.readonly)
			return ISOLDE_BLK_S_OK; /* nothing was written */
		if (!nbd.can_flush)
			return ISOLDE_BLK_S_IOERR;
		break;
	case ISOLDE_BLK_OP_DISCARD:
		if (!nbd.can_trim || req->length == 0)
			return ISOLDE_BLK_S_OK;
		break;
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		if (req->length == 0)
			return ISOLDE_BLK_S_OK;
		break;
	case ISOLDE_BLK_OP_READ:
	case ISOLDE_BLK_OP_WRITE:
		break;
	default:
		/* The backend's checks let only these five ops through. */
		return ISOLDE_BLK_S_UNSUPPORTED;
	}
	memset(r, 0, sizeof *r);
	r->op = req->op;
	r->flags = req->flags;
	r->offset = req->offset;
	r->length = req->length;
	r->iovcnt = iovcnt;
	memcpy(r->iov, iov, sizeof r->iov[0] * (size_t)iovcnt);
	r->next = NO_TAG;

	/* Ordering: a FLUSH waits for everything before it; everything after
	 * a FLUSH waits for it. */
	if (nbd.deferred_head != NO_TAG || nbd.flush_active ||
	    (req->op == ISOLDE_BLK_OP_FLUSH && nbd.active > 0))
		defer(tag);
	else
		dispatch(drv, tag);
	return ISOLDE_DRIVER_QUEUED;
}

static unsigned blk_nbd_reap(struct isolde_driver *drv)
{
	unsigned n = 0;

	for (;;) {
		drive(drv);
		if (nbd.ndone == 0)
			break;
		while (nbd.ndone > 0)
			n += finish(drv, nbd.done[--nbd.ndone]);
		dispatch_deferred(drv);
	}
	update_watch(drv);
	return n;
}

static bool blk_nbd_completion_pending(struct isolde_driver *drv)
{
	(void)drv;
	return nbd.ndone > 0;
}

/* ---- setup ---- */

static int blk_nbd_parse_arg(struct isolde_driver *drv, const char *arg, const char *value)
{
	(void)drv;
	if (strcmp(arg, "--export") == 0 && value) {
		nbd.export_name = value;
		return 0;
	}
	return -1;
}

static int flag(struct isolde_driver *drv, int r, const char *what)
{
	if (r < 0) {
		isolde_driver_log(drv, "NBD %s: %s", what, nbd_get_error());
		return 0;
	}
	return r;
}

static int blk_nbd_init(struct isolde_driver *drv)
{
	struct blk_nbd *b = &nbd;
	int64_t size, bs;
	bool want_ro = (drv->params.device_flags & ISOLDE_DEV_READONLY) != 0;
	int one = 1;

	b->slots = drv->params.ring_slots;
	b->reqs = calloc(b->slots, sizeof *b->reqs);
	b->done = calloc(b->slots, sizeof *b->done);
	if (!b->reqs || !b->done) {
		isolde_driver_log(drv, "out of memory for %u requests", b->slots);
		return -1;
	}
	b->deferred_head = b->deferred_tail = NO_TAG;
	b->fd = drv->device_fd;

	b->h = nbd_create();
	if (!b->h) {
		isolde_driver_log(drv, "nbd_create: %s", nbd_get_error());
		return -1;
	}
	if (nbd_set_export_name(b->h, b->export_name) < 0 ||
	    nbd_set_tls(b->h, LIBNBD_TLS_DISABLE) < 0 ||
	    nbd_set_request_structured_replies(b->h, true) < 0 ||
	    nbd_set_request_block_size(b->h, true) < 0 ||
	    nbd_set_pread_initialize(b->h, false) < 0) {
		isolde_driver_log(drv, "setting up the NBD handle: %s", nbd_get_error());
		return -1;
	}
	/* As nbd_connect_tcp would: no Nagle delay for the handshake's small
	 * messages and the request headers (40 ms per start over TCP without).
	 * An AF_UNIX socket refuses it (EOPNOTSUPP), which is fine. */
	(void)setsockopt(b->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/* The handshake, synchronously; libnbd owns the socket from here and
	 * makes it non-blocking. */
	if (nbd_connect_socket(b->h, b->fd) < 0) {
		isolde_driver_log(drv, "NBD handshake for export '%s' failed: %s", b->export_name,
				  nbd_get_error());
		return -1;
	}
	size = nbd_get_size(b->h);
	if (size < 0) {
		isolde_driver_log(drv, "NBD export size: %s", nbd_get_error());
		return -1;
	}
	b->readonly = flag(drv, nbd_is_read_only(b->h), "read-only flag") != 0;
	if (isolde_driver_report_device(drv, (uint64_t)size, b->readonly) != 0)
		return -1;
	/* Opened read-only: never a write, so a FLUSH has nothing to do. */
	b->readonly = b->readonly || want_ro;
	b->can_flush = flag(drv, nbd_can_flush(b->h), "can_flush") > 0;
	b->can_fua = flag(drv, nbd_can_fua(b->h), "can_fua") > 0;
	b->can_trim = flag(drv, nbd_can_trim(b->h), "can_trim") > 0;
	b->can_zero = flag(drv, nbd_can_zero(b->h), "can_zero") > 0;

	bs = nbd_get_block_size(b->h, LIBNBD_SIZE_MINIMUM);
	b->min_block = bs > 1 && bs <= 65536 ? (uint32_t)bs : 1;
	bs = nbd_get_block_size(b->h, LIBNBD_SIZE_MAXIMUM);
	if (bs <= 0)
		b->max_block = DEFAULT_MAX_BLOCK; /* none named */
	else
		b->max_block = bs < LIBNBD_MAX_REQUEST ? (uint32_t)bs : LIBNBD_MAX_REQUEST;
	if (b->max_block < b->min_block)
		b->max_block = b->min_block;
	/* Split points stay aligned to the minimum. */
	b->max_block -= b->max_block % b->min_block;

	if (!b->readonly && !b->can_flush)
		isolde_driver_log(drv, "the NBD server cannot flush (no NBD_FLAG_SEND_FLUSH): every FLUSH%s "
				  "fails with an I/O error, since nothing says writes are durable",
				  b->can_fua ? "" : " and FUA write");
	drv->priv = b;
	b->watch_events = POLLIN;
	isolde_driver_watch_fd_events(drv, b->fd, POLLIN, SPIN_POLL_NS);
	return 0;
}

/* The device is being closed, nothing in flight: say goodbye to the server
 * (NBD_CMD_DISC) instead of vanishing; the launcher bounds how long it takes. */
static void blk_nbd_stop(struct isolde_driver *drv)
{
	(void)drv;
	if (nbd.h)
		(void)nbd_shutdown(nbd.h, 0);
}

/* blk_nbd_main.c's: the operations, for isolde_driver_main. */
extern const struct isolde_driver_ops blk_nbd_ops;
const struct isolde_driver_ops blk_nbd_ops = {
	.name = "blk-nbd",
	.parse_arg = blk_nbd_parse_arg,
	.init = blk_nbd_init,
	.submit = blk_nbd_submit,
	.reap = blk_nbd_reap,
	.completion_pending = blk_nbd_completion_pending,
	.stop = blk_nbd_stop,
};
