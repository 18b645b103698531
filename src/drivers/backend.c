// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "backend.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "isolde/driver.h"

void isolde_driver_log(const struct isolde_driver *drv, const char *fmt, ...)
{
	char line[400];
	va_list ap;

	(void)drv;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	/* fd 2 is this generation's log pipe; the launcher prefixes each line
	 * with the driver's name and pid. One write per line; a full pipe
	 * (nobody reading) loses the line rather than stall the driver. */
	size_t len = strlen(line);
	line[len++] = '\n';
	(void)!write(2, line, len);
}

int isolde_driver_fstat(int fd, struct stat *st)
{
	/* glibc's fstat is newfstatat, which takes a path; the policy allows
	 * only fstat, which cannot look anything up. */
	return (int)syscall(SYS_fstat, fd, st);
}

uint8_t isolde_driver_status_from_errno(int e)
{
	switch (e) {
	case ENOSPC:
	case EDQUOT:
		return ISOLDE_BLK_S_NOSPC;
	case EOPNOTSUPP:
		return ISOLDE_BLK_S_UNSUPPORTED;
	default:
		return ISOLDE_BLK_S_IOERR;
	}
}

static int parse_fd(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);
	return (*s && !*end && v >= 0 && v < 1024) ? (int)v : -1;
}

static int parse_args(struct isolde_driver *drv, int argc, char **argv, int fds[4])
{
	static const char *const fd_opts[4] = { "--shm-fd", "--kick-fd", "--call-fd", "--device-fd" };

	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *value = i + 1 < argc ? argv[i + 1] : NULL;
		bool matched = false;

		for (int k = 0; k < 4; k++) {
			if (strcmp(arg, fd_opts[k]) == 0) {
				if (!value || (fds[k] = parse_fd(value)) < 0) {
					isolde_driver_log(drv, "%s needs a file descriptor number", arg);
					return -1;
				}
				i++;
				matched = true;
			}
		}
		if (matched)
			continue;
		/* The launcher's io_uring, for a policy with 'uring'. */
		if (strcmp(arg, "--uring-fd") == 0 || strcmp(arg, "--uring-params") == 0) {
			if (!value || (arg[8] == 'f' && (drv->uring_fd = parse_fd(value)) < 0)) {
				isolde_driver_log(drv, "%s needs a value", arg);
				return -1;
			}
			if (arg[8] == 'p')
				drv->uring_params_hex = value;
			i++;
			continue;
		}
		if (strcmp(arg, "--take-over-session") == 0) {
			char *end;
			errno = 0;
			drv->previous_session = value ? strtoull(value, &end, 10) : 0;
			if (!value || errno || *end || drv->previous_session == 0) {
				isolde_driver_log(drv, "--take-over-session needs a session number");
				return -1;
			}
			i++;
			continue;
		}
		if (strncmp(arg, "--", 2) == 0 && drv->ops->parse_arg) {
			const char *eq = strchr(arg, '=');
			char key[64];
			size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
			if (klen >= sizeof key) {
				isolde_driver_log(drv, "argument too long: %s", arg);
				return -1;
			}
			memcpy(key, arg, klen);
			key[klen] = '\0';
			if (drv->ops->parse_arg(drv, key, eq ? eq + 1 : NULL) == 0)
				continue;
		}
		isolde_driver_log(drv, "unknown argument: %s", arg);
		return -1;
	}
	for (int k = 0; k < 4; k++) {
		if (fds[k] < 0) {
			isolde_driver_log(drv, "missing %s", fd_opts[k]);
			return -1;
		}
	}
	return 0;
}

static const char *class_name(uint32_t device_class)
{
	switch (device_class) {
	case ISOLDE_CLASS_BLOCK:
		return "a block device";
	case ISOLDE_CLASS_NET:
		return "a network device";
	default:
		return "an unknown device class";
	}
}

static int attach(struct isolde_driver *drv, int shm_fd, unsigned device_class)
{
	struct stat st;
	unsigned char *base;
	const char *bad;

	if (isolde_driver_fstat(shm_fd, &st) != 0 || st.st_size < (off_t)ISOLDE_PAGE_SIZE) {
		isolde_driver_log(drv, "shared memory fd is unusable");
		return -1;
	}
	base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, shm_fd, 0);
	if (base == MAP_FAILED) {
		isolde_driver_log(drv, "cannot map shared memory: %s", strerror(errno));
		return -1;
	}
	drv->header = (struct isolde_shm_header *)base;
	isolde_copy_from_shared(&drv->params, drv->header, sizeof drv->params);
	bad = isolde_shm_header_check(&drv->params, (uint64_t)st.st_size);
	if (bad) {
		isolde_driver_log(drv, "shared memory header is inconsistent: field %s", bad);
		return -1;
	}
	/* The header check accepts every class; a driver serves only its own,
	 * and the rings of another would mean something else in every slot. */
	if (drv->params.device_class != device_class) {
		isolde_driver_log(drv, "shared memory header is for %s; %s drives %s",
				  class_name(drv->params.device_class), drv->ops->name,
				  class_name(device_class));
		return -1;
	}
	/* The grant table is the front end's; a stray write to it is a driver
	 * bug and should fault here rather than pass unnoticed. */
	size_t grant_bytes = (size_t)drv->params.grant_count * sizeof(struct isolde_grant);
	size_t grant_span = (grant_bytes + ISOLDE_PAGE_SIZE - 1) & ~(size_t)(ISOLDE_PAGE_SIZE - 1);
	if (mprotect(base + drv->params.grant_offset, grant_span, PROT_READ) != 0) {
		isolde_driver_log(drv, "cannot protect the grant table: %s", strerror(errno));
		return -1;
	}
	isolde_back_ring_attach(&drv->ring, (struct isolde_sring *)(base + drv->params.ring_offset),
				drv->params.ring_slots, drv->params.slot_size);
	drv->ring.peer_sleeps = drv->params.notify_mode != ISOLDE_NOTIFY_SPIN;
	drv->grants.table = (const struct isolde_grant *)(base + drv->params.grant_offset);
	drv->grants.count = drv->params.grant_count;
	drv->grants.data = base + drv->params.data_offset;
	drv->grants.data_size = drv->params.data_size;
	return 0;
}

static bool range_ok(const struct isolde_driver *drv, uint64_t offset, uint64_t length)
{
	return offset <= drv->params.device_size && length <= drv->params.device_size - offset;
}

/* Map the request's segments to iovecs through the grant accessor. */
static uint8_t map_segments(struct isolde_driver *drv, const struct isolde_blk_request *req,
			    struct iovec *iov)
{
	unsigned access = req->op == ISOLDE_BLK_OP_READ ? ISOLDE_GRANT_DRIVER_WRITES
							: ISOLDE_GRANT_DRIVER_READS;
	uint64_t total = 0;

	if (req->nr_segs == 0 || req->nr_segs > ISOLDE_BLK_MAX_SEGS)
		return ISOLDE_BLK_S_INVALID;
	for (unsigned i = 0; i < req->nr_segs; i++) {
		const struct isolde_blk_seg *s = &req->seg[i];
		void *p = isolde_grant_access(&drv->grants, s->gref, s->offset, s->length, access);
		if (!p)
			return ISOLDE_BLK_S_INVALID;
		iov[i].iov_base = p;
		iov[i].iov_len = s->length;
		total += s->length;
	}
	return total == req->length ? ISOLDE_BLK_S_OK : ISOLDE_BLK_S_INVALID;
}

/*
 * Every check a request passes before any I/O, on the driver's private copy:
 * range, segments (through the grant accessor), flags, read-only. On OK, iov
 * and *iovcnt describe the granted data of a READ or WRITE.
 */
static uint8_t check_request(struct isolde_driver *drv, const struct isolde_blk_request *req,
			     struct iovec *iov, int *iovcnt)
{
	uint8_t status = ISOLDE_BLK_S_OK;

	*iovcnt = 0;
	switch (req->op) {
	case ISOLDE_BLK_OP_READ:
	case ISOLDE_BLK_OP_WRITE:
		if (req->length == 0 || !range_ok(drv, req->offset, req->length))
			status = ISOLDE_BLK_S_INVALID;
		else
			status = map_segments(drv, req, iov);
		*iovcnt = req->nr_segs;
		break;
	case ISOLDE_BLK_OP_FLUSH:
		if (req->length != 0 || req->nr_segs != 0)
			status = ISOLDE_BLK_S_INVALID;
		break;
	case ISOLDE_BLK_OP_DISCARD:
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		if (req->nr_segs != 0 || !range_ok(drv, req->offset, req->length))
			status = ISOLDE_BLK_S_INVALID;
		break;
	default:
		status = ISOLDE_BLK_S_UNSUPPORTED;
	}
	if (status == ISOLDE_BLK_S_OK && (req->flags & ~ISOLDE_BLK_F_ALL))
		status = ISOLDE_BLK_S_INVALID;
	if (status == ISOLDE_BLK_S_OK && req->op != ISOLDE_BLK_OP_READ &&
	    req->op != ISOLDE_BLK_OP_FLUSH && (drv->params.device_flags & ISOLDE_DEV_READONLY))
		status = ISOLDE_BLK_S_INVALID;
	return status;
}

/* The response to a request: its id and op, the status, and the length
 * only on success. */
static void fill_response(struct isolde_blk_response *rsp, uint64_t id, uint8_t op,
			  uint32_t length, uint8_t status)
{
	memset(rsp, 0, sizeof *rsp);
	rsp->id = id;
	rsp->op = op;
	rsp->status = status;
	rsp->length = status == ISOLDE_BLK_S_OK ? length : 0;
}

void isolde_driver_serve(struct isolde_driver *drv, const struct isolde_blk_request *req,
			 struct isolde_blk_response *rsp)
{
	struct iovec iov[ISOLDE_BLK_MAX_SEGS];
	int iovcnt;
	uint8_t status = check_request(drv, req, iov, &iovcnt);

	if (status == ISOLDE_BLK_S_OK)
		status = drv->ops->io(drv, req, iov, iovcnt);
	fill_response(rsp, req->id, req->op, req->length, status);
}

void isolde_driver_respond(struct isolde_driver *drv, const struct isolde_blk_response *rsp)
{
	memcpy(isolde_back_next_response(&drv->ring), rsp, sizeof *rsp);
	drv->ring.rsp_prod_pvt++;
	if (isolde_back_push_responses(&drv->ring))
		drv->notify_pending = true;
	/* Statistics for people, not a protocol: plain stores, no locked
	 * instruction on the per-request path. */
	__atomic_store_n(&drv->header->requests_done, ++drv->requests_done, __ATOMIC_RELAXED);
}

void isolde_driver_complete(struct isolde_driver *drv, uint32_t tag, uint8_t status)
{
	struct isolde_blk_response rsp;
	struct isolde_driver_pending *p;

	if (!drv->pending || tag >= drv->params.ring_slots || !drv->pending[tag].busy) {
		isolde_driver_log(drv, "completion for tag %u, which is not in flight", tag);
		abort();
	}
	p = &drv->pending[tag];
	fill_response(&rsp, p->id, p->op, p->length, status);
	p->busy = false;
	drv->free_tags[drv->nfree++] = tag;
	drv->inflight--;
	isolde_driver_respond(drv, &rsp);
}

void isolde_driver_watch_fd(struct isolde_driver *drv, int fd)
{
	drv->waiter.watch_fd = fd;
}

void isolde_driver_watch_fd_events(struct isolde_driver *drv, int fd, short events,
				   uint32_t spin_poll_ns)
{
	drv->waiter.watch_fd = fd;
	drv->waiter.watch_events = events;
	drv->waiter.watch_spin_ns = spin_poll_ns;
}

static void handle_default(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	struct isolde_blk_response rsp;

	isolde_driver_serve(drv, req, &rsp);
	isolde_driver_respond(drv, &rsp);
}

/* SIGTERM: the device is being closed. The handler only notes it and
 * kicks the service loop awake (whichever thread the signal reached). */
static volatile sig_atomic_t stop_requested;

bool isolde_driver_stop_requested(void)
{
	return stop_requested;
}

static void on_stop_signal(int sig)
{
	uint64_t one = 1;

	(void)sig;
	stop_requested = 1;
	(void)!write(ISOLDE_DRIVER_FD_KICK, &one, sizeof one);
}

static void stop_if_asked(struct isolde_driver *drv)
{
	if (!stop_requested)
		return;
	if (drv->ops->stop)
		drv->ops->stop(drv);
	exit(0);
}

/* A spinning wait looks at nothing but these: a stop must show here. */
static bool requests_pending(void *ctx)
{
	return isolde_back_unconsumed_requests(ctx) != 0 || stop_requested;
}

static bool requests_arm_check(void *ctx)
{
	return isolde_back_final_check_requests(ctx) || stop_requested;
}

static const struct isolde_wait_ops request_wait = {
	.pending = requests_pending,
	.arm_check = requests_arm_check,
};

/*
 * Copy the next request out of its slot: the head once, then exactly the
 * segments it announces (each byte is read once; the copy is what is
 * checked).
 */
static void fetch_request(struct isolde_driver *drv, struct isolde_blk_request *req)
{
	const unsigned char *slot = isolde_back_request_at(&drv->ring, drv->ring.req_cons);

	memset(req, 0, sizeof *req);
	isolde_copy_from_shared(req, slot, ISOLDE_BLK_REQUEST_HEAD);
	if (req->nr_segs <= ISOLDE_BLK_MAX_SEGS)
		isolde_copy_from_shared(&req->seg, slot + ISOLDE_BLK_REQUEST_HEAD,
					isolde_blk_request_bytes(req->nr_segs) - ISOLDE_BLK_REQUEST_HEAD);
	drv->ring.req_cons++;
}

static void serve_forever(struct isolde_driver *drv)
{
	void (*handle)(struct isolde_driver *, const struct isolde_blk_request *) =
		drv->ops->handle ? drv->ops->handle : handle_default;

	for (;;) {
		uint32_t n = isolde_back_unconsumed_requests(&drv->ring);

		__atomic_store_n(&drv->header->heartbeat, ++drv->heartbeat, __ATOMIC_RELAXED);
		stop_if_asked(drv);
		if (n == 0) {
			if (isolde_wait(&drv->waiter, &request_wait, &drv->ring, -1) == ISOLDE_WAIT_ERROR) {
				if (errno == EINTR)
					continue;
				isolde_driver_log(drv, "waiting for requests failed: %s", strerror(errno));
				exit(1);
			}
			continue;
		}
		__atomic_store_n(&drv->header->batches, ++drv->batches, __ATOMIC_RELAXED);
		while (n--) {
			struct isolde_blk_request req;

			fetch_request(drv, &req);
			handle(drv, &req);
		}
		/* Many responses, one call: responses were published one by
		 * one (a spinning front end sees each at once), the eventfd is
		 * written once per batch. */
		isolde_waiter_signal(&drv->waiter, drv->notify_pending);
		drv->notify_pending = false;
	}
}

/* ---- the asynchronous model ---- */

/* Check one request and hand it to ops->submit under a free tag. */
static void submit_checked(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	struct iovec iov[ISOLDE_BLK_MAX_SEGS];
	struct isolde_blk_response rsp;
	int iovcnt;
	uint8_t status = check_request(drv, req, iov, &iovcnt);

	if (status != ISOLDE_BLK_S_OK) {
		fill_response(&rsp, req->id, req->op, req->length, status);
		isolde_driver_respond(drv, &rsp);
		return;
	}
	/* The ring never lets more than ring_slots requests be consumed
	 * and unanswered, so a tag is always free here. */
	if (drv->nfree == 0) {
		isolde_driver_log(drv, "no free tag with %u requests in flight", drv->inflight);
		abort();
	}
	uint32_t tag = drv->free_tags[--drv->nfree];
	struct isolde_driver_pending *p = &drv->pending[tag];

	p->id = req->id;
	p->op = req->op;
	p->length = req->length;
	p->busy = true;
	drv->inflight++;
	int r = drv->ops->submit(drv, req, iov, iovcnt, tag);
	if (r != ISOLDE_DRIVER_QUEUED)
		isolde_driver_complete(drv, tag, (uint8_t)r);
}

static bool async_pending(void *ctx)
{
	struct isolde_driver *drv = ctx;

	return isolde_back_unconsumed_requests(&drv->ring) != 0 || stop_requested ||
	       (drv->inflight && drv->ops->completion_pending(drv));
}

/* Arm req_event and re-check the ring (no request can slip by), then look at
 * the completions: an fd that is readable while completions are pending (the
 * watch fd) cannot lose one either. */
static bool async_arm_check(void *ctx)
{
	struct isolde_driver *drv = ctx;

	return isolde_back_final_check_requests(&drv->ring) || stop_requested ||
	       (drv->inflight && drv->ops->completion_pending(drv));
}

static const struct isolde_wait_ops async_wait = {
	.pending = async_pending,
	.arm_check = async_arm_check,
};

static void serve_async(struct isolde_driver *drv)
{
	bool watched = false; /* the last wait ended because the watch fd fired */

	for (;;) {
		uint32_t n = isolde_back_unconsumed_requests(&drv->ring);
		unsigned done = 0;
		enum isolde_wait_result w;

		__atomic_store_n(&drv->header->heartbeat, ++drv->heartbeat, __ATOMIC_RELAXED);
		if (!drv->inflight)
			stop_if_asked(drv);
		if (n > 0) {
			__atomic_store_n(&drv->header->batches, ++drv->batches, __ATOMIC_RELAXED);
			for (uint32_t i = 0; i < n; i++) {
				struct isolde_blk_request req;

				fetch_request(drv, &req);
				submit_checked(drv, &req);
			}
		}
		/* Also with nothing in flight when the watch fd fired: a
		 * socket's peer may have closed it (blk-nbd). */
		if (drv->inflight || watched)
			done = drv->ops->reap(drv);
		watched = false;
		/* As in serve_forever: each response was published at once,
		 * the front end is called once for the pass. */
		isolde_waiter_signal(&drv->waiter, drv->notify_pending);
		drv->notify_pending = false;
		if (n == 0 && done == 0) {
			/* Waiting on a slow device (a remote server) is not a
			 * hang: with requests in flight the loop wakes to beat
			 * its heart, and the front end's request-age limit (10
			 * heartbeats) is what bounds a device that never answers. */
			w = isolde_wait(&drv->waiter, &async_wait, drv, drv->inflight ? ISOLDE_DRIVER_BUSY_BEAT_NS : -1);
			if (w == ISOLDE_WAIT_ERROR && errno == EINTR)
				continue;
			if (w == ISOLDE_WAIT_ERROR) {
				isolde_driver_log(drv, "waiting for requests failed: %s", strerror(errno));
				exit(1);
			}
			watched = w == ISOLDE_WAIT_WATCH;
		}
	}
}

static int async_init(struct isolde_driver *drv)
{
	uint32_t slots = drv->params.ring_slots;

	if (!drv->ops->reap || !drv->ops->completion_pending) {
		isolde_driver_log(drv, "an asynchronous driver needs submit, reap and completion_pending");
		return -1;
	}
	drv->pending = calloc(slots, sizeof *drv->pending);
	drv->free_tags = calloc(slots, sizeof *drv->free_tags);
	if (!drv->pending || !drv->free_tags) {
		isolde_driver_log(drv, "out of memory for %u request records", slots);
		return -1;
	}
	/* Stacked so that tag 0 is handed out first. */
	for (uint32_t i = 0; i < slots; i++)
		drv->free_tags[i] = slots - 1 - i;
	drv->nfree = slots;
	return 0;
}

int isolde_driver_report_device(struct isolde_driver *drv, uint64_t size, bool readonly)
{
	bool want_writable = !(drv->params.device_flags & ISOLDE_DEV_READONLY);

	if (size == 0 || size % 512) {
		isolde_driver_log(drv, "the remote device's size %llu is not a positive multiple of 512",
				  (unsigned long long)size);
		return -1;
	}
	if (drv->params.device_size && drv->params.device_size != size) {
		isolde_driver_log(drv, "the remote device is now %llu bytes, not the %llu it was opened with",
				  (unsigned long long)size, (unsigned long long)drv->params.device_size);
		return -1;
	}
	if (readonly && want_writable) {
		isolde_driver_log(drv, "the remote device is read-only; open it read-only");
		return -1;
	}
	drv->params.device_size = size;
	drv->header->reported_size = size;
	drv->header->reported_flags = readonly ? ISOLDE_DEV_READONLY : 0;
	return 0;
}

void isolde_driver_report_session(struct isolde_driver *drv, uint64_t session_id)
{
	drv->header->session_id = session_id;
}

int isolde_driver_attach(struct isolde_driver *drv, int argc, char **argv, unsigned device_class)
{
	int fds[4] = { -1, -1, -1, -1 };

	drv->uring_fd = -1;
	if (parse_args(drv, argc, argv, fds) != 0)
		return 2;
	drv->device_fd = fds[3];
	if (attach(drv, fds[0], device_class) != 0)
		return 1;
	isolde_waiter_init(&drv->waiter, (enum isolde_notify_mode)drv->params.notify_mode, fds[1], fds[2], -1,
			   drv->params.spin_min_ns, drv->params.spin_max_ns);
	return 0;
}

void isolde_driver_ready(struct isolde_driver *drv)
{
	struct sigaction stop = { .sa_handler = on_stop_signal };
	uint64_t one = 1;

	sigemptyset(&stop.sa_mask);
	sigaction(SIGTERM, &stop, NULL);
	drv->header->driver_pid = (uint32_t)getpid();
	__atomic_store_n(&drv->header->driver_state, ISOLDE_DRIVER_READY, __ATOMIC_RELEASE);
	/* Ready is always signalled, whatever the mode: the launcher waits on it. */
	(void)!write(drv->waiter.peer_fd, &one, sizeof one);
}

void isolde_driver_failed(struct isolde_driver *drv)
{
	__atomic_store_n(&drv->header->driver_state, ISOLDE_DRIVER_FAILED, __ATOMIC_RELEASE);
}

int isolde_driver_main(int argc, char **argv, const struct isolde_driver_ops *ops)
{
	static struct isolde_driver drv;
	int r;

	drv.ops = ops;
	if ((r = isolde_driver_attach(&drv, argc, argv, ISOLDE_CLASS_BLOCK)) != 0)
		return r;
	if ((ops->submit && async_init(&drv) != 0) || (ops->init && ops->init(&drv) != 0)) {
		isolde_driver_failed(&drv);
		return 1;
	}
	isolde_driver_ready(&drv);
	if (ops->submit)
		serve_async(&drv);
	else
		serve_forever(&drv);
	return 0;
}
