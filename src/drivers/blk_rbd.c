// SPDX-License-Identifier: MIT
/*
 * blk-rbd: a block driver for a Ceph RBD image through librbd, in backend.h's
 * asynchronous model.
 *
 * What it is given. fd 6 is not a file but a read-only, sealed memfd of
 * `key=value\n` lines (parse_spec): id (the cephx client id), pool, image,
 * optional snap, mon_host (as ceph.conf writes it, already IP addresses) and
 * key (the client's cephx secret, base64). The driver reads nothing from the
 * file system - its sandbox has no /etc - so librados is configured entirely
 * with rados_conf_set (configure), never from a ceph.conf or a keyring file.
 *
 * Operations (submit_now):
 *   READ          rbd_aio_readv; the completion must give exactly the length
 *                 (a short read, which a read past the end would be, is an
 *                 I/O error: the backend already refused any request outside
 *                 the image, so it can only mean the image shrank)
 *   WRITE         rbd_aio_writev. librbd's cache is off (rbd_cache=false), so
 *                 a write completes only once the OSDs have it on stable
 *                 storage: every acknowledged write is durable, and FUA needs
 *                 nothing more. (With a writeback cache librbd would
 *                 acknowledge writes that a SIGKILLed driver never sent; the
 *                 front end replays only unacknowledged requests.)
 *   FLUSH         rbd_aio_flush, as a full barrier (below)
 *   DISCARD       rbd_aio_discard (advisory; EOPNOTSUPP is success)
 *   WRITE_ZEROES  rbd_aio_write_zeroes: with ISOLDE_BLK_F_MAY_UNMAP it may
 *                 deallocate (zero_flags 0: librbd discards, objects removed
 *                 or truncated), without it the range stays allocated
 *                 (RBD_WRITE_ZEROES_FLAG_THICK_PROVISION) - as blk-file does
 *                 PUNCH_HOLE or ZERO_RANGE.
 *
 * Ordering. As in blk-uring, a FLUSH is a full barrier: it starts only when
 * nothing submitted before it is still in librbd, and nothing consumed after
 * it starts before it has completed (such requests wait, in order, in the
 * driver's deferred queue). So the front end sees one semantics whichever
 * driver runs. Otherwise requests complete in any order.
 *
 * Completions. librbd calls back on its own threads: the callback records
 * (tag, result) in a queue sized ring_slots under a mutex and, if the queue
 * was not already signalled, writes the eventfd the service loop watches
 * (isolde_driver_watch_fd). completion_pending reads the queue's count (an
 * atomic load, no system call); reap drains the eventfd and the queue and
 * answers each request with isolde_driver_complete on the driver's own
 * thread. The eventfd is written and read under the same mutex, so it is
 * readable exactly while the queue holds something: a service loop with
 * nothing in flight never finds a stale wake-up it would spin on.
 *
 * The exclusive lock. Images have exclusive-lock by default. A SIGKILLed
 * driver still holds the lock when its successor starts, and librbd would
 * wait for the dead client's watch to time out (osd_client_watch_timeout,
 * 30 s) before taking it. The launcher passes the dead generation's session
 * (its librados instance id) as --take-over-session; take_over breaks that
 * session's lock at once. Any other holder is asked whether it is alive (a
 * notification on the image's header, which a live librbd acknowledges at
 * once): one that answers is another live client and the driver refuses to
 * start; one that does not within 3 s is dead - typically the driver of an
 * earlier isolde run, which also ended with SIGKILL - and its lock is
 * broken. Breaking blocklists the holder, so nothing it left in flight can
 * land later and even a hung client can never write again. Then the driver
 * takes the lock explicitly (rbd_lock_acquire), which also makes librbd
 * refuse to hand it to another client while this one lives (their writes
 * fail with EROFS): two clients never write at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

#include "backend.h"

extern const struct isolde_driver_ops blk_rbd_ops;

/*
 * librados's ceph::timer names its thread from the thread that creates it,
 * and glibc's pthread_setname_np does that by opening
 * /proc/self/task/TID/comm for writing: a file the empty root does not have,
 * through a call the policy refuses (a denial each generation). A thread's
 * name is cosmetic; this executable's definition, exported for the libraries
 * (meson.build), lets a thread name itself (prctl, no file) and ignores the
 * rest.
 */
int pthread_setname_np(pthread_t thread, const char *name)
{
	if (strlen(name) > 15)
		return ERANGE;
	if (!pthread_equal(thread, pthread_self()))
		return 0;
	return prctl(PR_SET_NAME, name, 0, 0, 0) == 0 ? 0 : errno;
}

/* ---- the spec on fd 6 ---- */

#define SPEC_MAX_BYTES 16384
#define SPEC_LINE_MAX 2048
#define NAME_MAX_BYTES 256

struct rbd_spec {
	char id[NAME_MAX_BYTES];
	char pool[NAME_MAX_BYTES];
	char image[NAME_MAX_BYTES];
	char snap[NAME_MAX_BYTES];
	char mon_host[SPEC_LINE_MAX];
	char key[128];
};

enum spec_key { S_ID, S_POOL, S_IMAGE, S_SNAP, S_MON_HOST, S_KEY, S_COUNT };

static const struct {
	const char *name;
	bool required;
	size_t offset;
	size_t size;
	const char *allowed; /* NULL: any printable byte but '\0' */
} spec_keys[S_COUNT] = {
	{ "id", true, offsetof(struct rbd_spec, id), NAME_MAX_BYTES,
	  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-" },
	{ "pool", true, offsetof(struct rbd_spec, pool), NAME_MAX_BYTES, NULL },
	{ "image", true, offsetof(struct rbd_spec, image), NAME_MAX_BYTES, NULL },
	{ "snap", false, offsetof(struct rbd_spec, snap), NAME_MAX_BYTES, NULL },
	/* IP addresses only: the driver cannot resolve a name (no /etc). */
	{ "mon_host", true, offsetof(struct rbd_spec, mon_host), SPEC_LINE_MAX,
	  "0123456789abcdefABCDEFv.:[]/, ;" },
	{ "key", true, offsetof(struct rbd_spec, key), 128,
	  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=" },
};

static int spec_error(struct isolde_driver *drv, const char *fmt, const char *arg)
{
	char msg[300];

	snprintf(msg, sizeof msg, fmt, arg);
	isolde_driver_log(drv, "image spec on fd %d: %s", drv->device_fd, msg);
	return -1;
}

static int parse_line(struct isolde_driver *drv, struct rbd_spec *spec, bool seen[S_COUNT],
		      const char *line, size_t len)
{
	const char *eq = memchr(line, '=', len);
	char name[32];
	int k;

	if (!eq || eq == line)
		return spec_error(drv, "a line is not key=value: '%.40s'", line);
	if ((size_t)(eq - line) >= sizeof name)
		return spec_error(drv, "unknown key '%.40s'", line);
	memcpy(name, line, (size_t)(eq - line));
	name[eq - line] = '\0';
	for (k = 0; k < S_COUNT && strcmp(spec_keys[k].name, name) != 0; k++)
		;
	if (k == S_COUNT)
		return spec_error(drv, "unknown key '%s' (known: id, pool, image, snap, mon_host, key)", name);
	if (seen[k])
		return spec_error(drv, "key '%s' is given twice", name);
	seen[k] = true;

	const char *value = eq + 1;
	size_t vlen = len - (size_t)(value - line);
	if (vlen == 0)
		return spec_error(drv, "key '%s' has an empty value", name);
	if (vlen >= spec_keys[k].size)
		return spec_error(drv, "the value of '%s' is too long", name);
	for (size_t i = 0; i < vlen; i++) {
		unsigned char c = (unsigned char)value[i];
		bool ok = spec_keys[k].allowed ? (c && strchr(spec_keys[k].allowed, c) != NULL)
					       : (c >= 0x20 && c != 0x7f);
		if (!ok)
			return spec_error(drv, k == S_MON_HOST ? "the value of '%s' holds a character that is "
				"not part of an IP address list (names cannot be resolved here)"
				: "the value of '%s' holds a character it may not", name);
	}
	char *dst = (char *)spec + spec_keys[k].offset;
	memcpy(dst, value, vlen);
	dst[vlen] = '\0';
	return 0;
}

/* Read fd 6 whole, from offset 0 (it is the launcher's memfd; its offset
 * is nobody's business), and parse it strictly. */
static int parse_spec(struct isolde_driver *drv, struct rbd_spec *spec)
{
	static char buf[SPEC_MAX_BYTES + 1];
	bool seen[S_COUNT] = { false };
	size_t len = 0;
	struct stat st;

	memset(spec, 0, sizeof *spec);
	if (isolde_driver_fstat(drv->device_fd, &st) != 0 || !S_ISREG(st.st_mode))
		return spec_error(drv, "%s", "not a readable memfd");
	for (;;) {
		ssize_t n = pread(drv->device_fd, buf + len, sizeof buf - len, (off_t)len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return spec_error(drv, "cannot read it: %s", strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > SPEC_MAX_BYTES)
			return spec_error(drv, "%s", "larger than 16 KiB");
	}
	if (len == 0)
		return spec_error(drv, "%s", "empty");
	if (buf[len - 1] != '\n')
		return spec_error(drv, "%s", "the last line does not end with a newline");
	for (size_t pos = 0; pos < len;) {
		const char *line = buf + pos;
		const char *nl = memchr(line, '\n', len - pos);
		size_t llen = (size_t)(nl - line);

		if (llen >= SPEC_LINE_MAX)
			return spec_error(drv, "a line is longer than %s bytes", "2047");
		if (memchr(line, '\0', llen))
			return spec_error(drv, "%s", "a line holds a NUL byte");
		buf[pos + llen] = '\0';
		if (parse_line(drv, spec, seen, line, llen) != 0)
			return -1;
		pos += llen + 1;
	}
	for (int k = 0; k < S_COUNT; k++)
		if (spec_keys[k].required && !seen[k])
			return spec_error(drv, "the required key '%s' is missing", spec_keys[k].name);
	return 0;
}

/* ---- state ---- */

/* What librbd works on for one tag; valid from submit to completion. */
struct rbd_req {
	struct iovec iov[ISOLDE_BLK_MAX_SEGS];
	int iovcnt;
	uint8_t op;
	uint16_t flags;
	uint64_t offset;
	uint32_t length;
	uint32_t tag;
};

struct done {
	uint32_t tag;
	int64_t result;
};

struct blk_rbd {
	rados_t cluster;
	rados_ioctx_t ioctx;
	rbd_image_t image;
	uint32_t slots;
	struct rbd_req *reqs;       /* slots entries, by tag */

	/* Completions, filled on librbd's threads. */
	pthread_mutex_t lock;
	struct done *done;          /* slots entries, a FIFO */
	uint32_t done_head, done_count; /* done_count also read without the lock */
	bool signalled;             /* the eventfd holds a wake-up */
	int efd;

	/* The barrier (main thread only). */
	uint32_t *deferred;         /* tags waiting behind a FLUSH, a FIFO */
	uint32_t def_head, def_count;
	uint32_t in_librbd;         /* requests handed to librbd, not reaped */
	bool flush_in_librbd;
	bool locked;                /* this driver took the exclusive lock */
};

static struct blk_rbd rbd;

/* ---- completion ---- */

static void on_complete(rbd_completion_t c, void *arg)
{
	struct rbd_req *r = arg;
	struct blk_rbd *b = &rbd;
	int64_t result = rbd_aio_get_return_value(c);

	rbd_aio_release(c);
	pthread_mutex_lock(&b->lock);
	/* At most slots requests are in flight: the FIFO cannot overflow. */
	struct done *d = &b->done[(b->done_head + b->done_count) % b->slots];
	d->tag = r->tag;
	d->result = result;
	__atomic_store_n(&b->done_count, b->done_count + 1, __ATOMIC_RELEASE);
	if (!b->signalled) {
		uint64_t one = 1;
		b->signalled = true;
		/* An eventfd write of 1 cannot block or fail short of
		 * overflowing a counter this keeps at 0 or 1. */
		(void)!write(b->efd, &one, sizeof one);
	}
	pthread_mutex_unlock(&b->lock);
}

static uint8_t status_of(const struct rbd_req *r, int64_t result)
{
	if (result < 0) {
		if (r->op == ISOLDE_BLK_OP_DISCARD && result == -EOPNOTSUPP)
			return ISOLDE_BLK_S_OK; /* discard is advisory */
		return isolde_driver_status_from_errno((int)-result);
	}
	if (r->op == ISOLDE_BLK_OP_READ && (uint64_t)result != r->length)
		return ISOLDE_BLK_S_IOERR; /* short: the image shrank under us */
	return ISOLDE_BLK_S_OK;
}

/* ---- submission ---- */

/* Hand one request to librbd: ISOLDE_DRIVER_QUEUED or a status. */
static int submit_now(struct isolde_driver *drv, struct blk_rbd *b, struct rbd_req *r)
{
	rbd_completion_t c;
	int ret;

	ret = rbd_aio_create_completion(r, on_complete, &c);
	if (ret < 0) {
		isolde_driver_log(drv, "rbd_aio_create_completion: %s", strerror(-ret));
		return isolde_driver_status_from_errno(-ret);
	}
	switch (r->op) {
	case ISOLDE_BLK_OP_READ:
		ret = rbd_aio_readv(b->image, r->iov, r->iovcnt, r->offset, c);
		break;
	case ISOLDE_BLK_OP_WRITE:
		/* FUA: nothing more; without a cache a completed write is
		 * durable (see the top of this file). */
		ret = rbd_aio_writev(b->image, r->iov, r->iovcnt, r->offset, c);
		break;
	case ISOLDE_BLK_OP_FLUSH:
		ret = rbd_aio_flush(b->image, c);
		break;
	case ISOLDE_BLK_OP_DISCARD:
		ret = rbd_aio_discard(b->image, r->offset, r->length, c);
		break;
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		ret = rbd_aio_write_zeroes(b->image, r->offset, r->length, c,
					   (r->flags & ISOLDE_BLK_F_MAY_UNMAP)
						   ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
		break;
	default:
		rbd_aio_release(c);
		return ISOLDE_BLK_S_UNSUPPORTED;
	}
	if (ret < 0) {
		rbd_aio_release(c);
		return status_of(r, ret);
	}
	b->in_librbd++;
	if (r->op == ISOLDE_BLK_OP_FLUSH)
		b->flush_in_librbd = true;
	return ISOLDE_DRIVER_QUEUED;
}

static bool barrier_up(const struct blk_rbd *b)
{
	return b->flush_in_librbd || b->def_count > 0;
}

static void defer(struct blk_rbd *b, uint32_t tag)
{
	b->deferred[(b->def_head + b->def_count++) % b->slots] = tag;
}

/* Start what waited behind a FLUSH, in order, as far as the barrier
 * allows; returns how many were answered at once (a failed start). */
static unsigned start_deferred(struct isolde_driver *drv, struct blk_rbd *b)
{
	unsigned n = 0;

	while (b->def_count > 0 && !b->flush_in_librbd) {
		uint32_t tag = b->deferred[b->def_head];
		struct rbd_req *r = &b->reqs[tag];

		if (r->op == ISOLDE_BLK_OP_FLUSH && b->in_librbd > 0)
			break; /* it waits for everything before it */
		b->def_head = (b->def_head + 1) % b->slots;
		b->def_count--;
		int s = submit_now(drv, b, r);
		if (s != ISOLDE_DRIVER_QUEUED) {
			isolde_driver_complete(drv, tag, (uint8_t)s);
			n++;
		}
	}
	return n;
}

static int blk_rbd_submit(struct isolde_driver *drv, const struct isolde_blk_request *req,
			  const struct iovec *iov, int iovcnt, uint32_t tag)
{
	struct blk_rbd *b = drv->priv;
	struct rbd_req *r = &b->reqs[tag];

	r->op = req->op;
	r->flags = req->flags;
	r->offset = req->offset;
	r->length = req->length;
	r->iovcnt = iovcnt;
	r->tag = tag;
	memcpy(r->iov, iov, sizeof r->iov[0] * (size_t)iovcnt);

	if (barrier_up(b) || (req->op == ISOLDE_BLK_OP_FLUSH && b->in_librbd > 0)) {
		defer(b, tag);
		return ISOLDE_DRIVER_QUEUED;
	}
	return submit_now(drv, b, r);
}

static unsigned blk_rbd_reap(struct isolde_driver *drv)
{
	struct blk_rbd *b = drv->priv;
	unsigned n = 0;

	for (;;) {
		struct done batch[64];
		uint32_t got = 0;

		pthread_mutex_lock(&b->lock);
		while (got < 64 && b->done_count > 0) {
			batch[got++] = b->done[b->done_head];
			b->done_head = (b->done_head + 1) % b->slots;
			__atomic_store_n(&b->done_count, b->done_count - 1, __ATOMIC_RELAXED);
		}
		if (b->done_count == 0 && b->signalled) {
			uint64_t v;
			/* Written under this lock: it is there to read. */
			(void)!read(b->efd, &v, sizeof v);
			b->signalled = false;
		}
		pthread_mutex_unlock(&b->lock);
		if (got == 0)
			break;
		for (uint32_t i = 0; i < got; i++) {
			struct rbd_req *r = &b->reqs[batch[i].tag];

			b->in_librbd--;
			if (r->op == ISOLDE_BLK_OP_FLUSH)
				b->flush_in_librbd = false;
			isolde_driver_complete(drv, batch[i].tag, status_of(r, batch[i].result));
			n++;
		}
		n += start_deferred(drv, b);
	}
	return n;
}

static bool blk_rbd_completion_pending(struct isolde_driver *drv)
{
	struct blk_rbd *b = drv->priv;

	return __atomic_load_n(&b->done_count, __ATOMIC_ACQUIRE) != 0;
}

/* ---- setup ---- */

static int rados_fail(struct isolde_driver *drv, const char *what, int r)
{
	isolde_driver_log(drv, "%s: %s", what, strerror(-r));
	return -1;
}

/*
 * Everything librados would otherwise look up in files, listen on or write
 * to. The driver's stderr is its log pipe: librados logs nothing there
 * (log_to_stderr and err_to_stderr false: its error lines are timestamped,
 * some spurious, and the launcher rate-limits the pipe); the driver itself
 * says what failed and why, one line each.
 *
 * A client opens no listening socket of its own (ms_bind_* is for daemons):
 * it only connects, to the monitors in mon_host and the OSDs the maps name.
 * The admin socket, a listening Unix socket, is turned off here.
 */
static int configure(struct isolde_driver *drv, struct blk_rbd *b, const struct rbd_spec *spec)
{
	static const char *const fixed[][2] = {
		/* No configuration or keyring file: the key is set first
		 * (setting keyring before it makes librados look for a
		 * keyring and complain that it found none). */
		{ "keyring", "" },
		{ "keyfile", "" },
		/* No admin socket, no log file, no logging to the pipe,
		 * syslog or the cluster log. */
		{ "admin_socket", "" },
		{ "log_file", "" },
		{ "log_to_file", "false" },
		{ "log_to_stderr", "false" },
		{ "err_to_stderr", "false" },
		{ "log_to_syslog", "false" },
		{ "err_to_syslog", "false" },
		{ "clog_to_syslog", "false" },
		{ "clog_to_monitors", "false" },
		/* REQUIRED: acknowledged means written (top of the file). */
		{ "rbd_cache", "false" },
		/* Fail rather than hang past the launcher's start timeout
		 * (10 s) if the monitors cannot be reached; I/O itself waits
		 * for the cluster as long as it takes (rados_osd_op_timeout 0,
		 * the default), like a disk's queue. */
		{ "client_mount_timeout", "8" },
		{ "rados_mon_op_timeout", "8" },
	};
	int r;

	if ((r = rados_conf_set(b->cluster, "key", spec->key)) < 0)
		return rados_fail(drv, "librados option key (the client's secret)", r);
	for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
		r = rados_conf_set(b->cluster, fixed[i][0], fixed[i][1]);
		if (r < 0) {
			isolde_driver_log(drv, "librados option %s=%s: %s", fixed[i][0], fixed[i][1], strerror(-r));
			return -1;
		}
	}
	if ((r = rados_conf_set(b->cluster, "mon_host", spec->mon_host)) < 0) {
		isolde_driver_log(drv, "librados option mon_host=%s: %s", spec->mon_host, strerror(-r));
		return -1;
	}
	return 0;
}

/* The image's lock holders: entity names ("client.<instance id>") and
 * addresses ("IP:PORT/NONCE", what rbd_lock_break wants), NUL-separated. */
struct lockers {
	char clients[1024], cookies[1024], addrs[1024], tag[128];
	const char *client[8], *addr[8];
	int n;
};

static int list_lockers(struct isolde_driver *drv, struct blk_rbd *b, struct lockers *l)
{
	size_t tl = sizeof l->tag, cl = sizeof l->clients, kl = sizeof l->cookies, al = sizeof l->addrs;
	int exclusive;
	ssize_t n = rbd_list_lockers(b->image, &exclusive, l->tag, &tl, l->clients, &cl, l->cookies, &kl,
				     l->addrs, &al);

	if (n < 0)
		return rados_fail(drv, "listing the image's lock holders", (int)n);
	if (n > 8) {
		isolde_driver_log(drv, "the image's lock has %zd holders", n);
		return -1;
	}
	l->n = (int)n;
	const char *c = l->clients, *a = l->addrs;
	for (int i = 0; i < l->n; i++) {
		l->client[i] = c;
		l->addr[i] = a;
		c += strnlen(c, sizeof l->clients - (size_t)(c - l->clients)) + 1;
		a += strnlen(a, sizeof l->addrs - (size_t)(a - l->addrs)) + 1;
		if (c > l->clients + cl || a > l->addrs + al) {
			isolde_driver_log(drv, "librbd returned a malformed list of lock holders");
			return -1;
		}
	}
	return 0;
}

/* How long a lock holder has to answer before it counts as dead. A live
 * librbd client answers at once (1 ms here); the launcher gives a starting
 * driver 10 s in all. */
#define PING_TIMEOUT_MS 3000

/*
 * Which clients that watch the image answer: a notification on its header
 * with an empty payload (librbd's legacy "header updated": a live client
 * marks its header for a refresh and acknowledges). A dead client does not
 * answer, though its watch stays until osd_client_watch_timeout (30 s).
 * acked gets the global ids that answered.
 */
static int ping_watchers(struct isolde_driver *drv, struct blk_rbd *b, uint64_t *acked, size_t *nacked)
{
	char id[64], oid[96];
	char *reply = NULL;
	size_t reply_len = 0, nacks = 0, ntimeouts = 0;
	struct notify_ack_t *acks = NULL;
	struct notify_timeout_t *timeouts = NULL;
	size_t max = *nacked;
	int r;

	*nacked = 0;
	if ((r = rbd_get_id(b->image, id, sizeof id)) < 0)
		return rados_fail(drv, "reading the image's id", r);
	snprintf(oid, sizeof oid, "rbd_header.%s", id);
	r = rados_notify2(b->ioctx, oid, "", 0, PING_TIMEOUT_MS, &reply, &reply_len);
	if (r < 0 && r != -ETIMEDOUT) {
		if (reply)
			rados_buffer_free(reply);
		return rados_fail(drv, "asking the image's watchers whether they are alive", r);
	}
	if (!reply || rados_decode_notify_response(reply, reply_len, &acks, &nacks, &timeouts, &ntimeouts) != 0) {
		if (reply)
			rados_buffer_free(reply);
		isolde_driver_log(drv, "cannot decode the answers of the image's watchers");
		return -1;
	}
	for (size_t i = 0; i < nacks && *nacked < max; i++)
		acked[(*nacked)++] = acks[i].notifier_id;
	rados_free_notify_response(acks, nacks, timeouts);
	rados_buffer_free(reply);
	return 0;
}

static int break_lock(struct isolde_driver *drv, struct blk_rbd *b, const struct lockers *l, int i,
		      const char *who)
{
	/* librbd checks that the lock is still held from this address (it
	 * cannot break a new holder's), blocklists the holder, so nothing
	 * it left in flight can land later, and waits for the OSD map that
	 * says so. */
	int r = rbd_lock_break(b->image, RBD_LOCK_MODE_EXCLUSIVE, l->addr[i]);

	if (r < 0 && r != -ENOENT) {
		isolde_driver_log(drv, "breaking the lock of %s (%s at %s): %s", who, l->client[i], l->addr[i],
				  strerror(-r));
		return -1;
	}
	isolde_driver_log(drv, "took the image's lock over from %s (%s at %s, now blocklisted)", who,
			  l->client[i], l->addr[i]);
	return 0;
}

/*
 * Before taking the exclusive lock:
 *  - a holder that is the previous generation (--take-over-session N, so
 *    "client.N", which the launcher has seen die) has its lock broken at
 *    once;
 *  - any other holder - an isolde driver whose process died (each isolde
 *    run ends its driver with SIGKILL, so the next run's first generation
 *    finds its lock), or a live client - is asked whether it is alive
 *    (ping_watchers): if it answers, another live client uses the image and
 *    the driver refuses to start; if it does not within 3 s, it is dead (or
 *    hung) and its lock is broken. Breaking blocklists it: even a hung
 *    client can never write again, so two clients never write at once.
 * librbd's own default for a dead holder is to wait until its watch times
 * out (28 s measured), which no start of a driver could wait for.
 */
static int take_over(struct isolde_driver *drv, struct blk_rbd *b)
{
	uint64_t acked[64];
	size_t nacked = 0;
	bool pinged = false;
	struct lockers l;
	char dead[32];

	if (list_lockers(drv, b, &l) != 0)
		return -1;
	snprintf(dead, sizeof dead, "client.%" PRIu64, drv->previous_session);
	for (int i = 0; i < l.n; i++) {
		bool alive = false;
		uint64_t gid;
		char *end;

		if (drv->previous_session && strcmp(l.client[i], dead) == 0) {
			if (break_lock(drv, b, &l, i, "the previous driver") != 0)
				return -1;
			continue;
		}
		if (strncmp(l.client[i], "client.", 7) != 0 ||
		    (errno = 0, gid = strtoull(l.client[i] + 7, &end, 10), errno || *end)) {
			isolde_driver_log(drv, "the image's lock is held by '%s', which is no client", l.client[i]);
			return -1;
		}
		if (!pinged) {
			nacked = sizeof acked / sizeof acked[0];
			if (ping_watchers(drv, b, acked, &nacked) != 0)
				return -1;
			pinged = true;
		}
		for (size_t k = 0; k < nacked; k++)
			if (acked[k] == gid)
				alive = true;
		if (alive) {
			isolde_driver_log(drv, "the image's exclusive lock is held by %s at %s, which is alive: "
					  "another client uses the image", l.client[i], l.addr[i]);
			return -1;
		}
		if (break_lock(drv, b, &l, i, "a client that did not answer within 3 s") != 0)
			return -1;
	}
	return 0;
}

static int lock_image(struct isolde_driver *drv, struct blk_rbd *b, const struct rbd_spec *spec)
{
	uint64_t features;
	int r;

	if ((r = rbd_get_features(b->image, &features)) < 0)
		return rados_fail(drv, "reading the image's features", r);
	if (!(features & RBD_FEATURE_EXCLUSIVE_LOCK)) {
		isolde_driver_log(drv, "image %s/%s has no exclusive-lock feature: nothing keeps another "
				  "client from writing it at the same time", spec->pool, spec->image);
		isolde_driver_report_session(drv, rados_get_instance_id(b->cluster));
		return 0;
	}
	if (take_over(drv, b) != 0)
		return -1;
	/* From here this session may hold the lock: say so before taking it,
	 * so that a successor can take it over whenever this one dies. */
	isolde_driver_report_session(drv, rados_get_instance_id(b->cluster));
	r = rbd_lock_acquire(b->image, RBD_LOCK_MODE_EXCLUSIVE);
	if (r < 0) {
		isolde_driver_log(drv, "taking the image's exclusive lock: %s%s", strerror(-r),
				  r == -EROFS ? " (another live client holds it)" : "");
		return -1;
	}
	b->locked = true;
	return 0;
}

static int blk_rbd_init(struct isolde_driver *drv)
{
	struct blk_rbd *b = &rbd;
	struct rbd_spec spec;
	bool readonly;
	uint64_t size;
	int r;

	/* Until this generation has broken the previous one's lock, the
	 * session that may hold it is the previous one: if this generation
	 * dies first, its successor takes over from that one. */
	if (drv->previous_session)
		isolde_driver_report_session(drv, drv->previous_session);
	if (parse_spec(drv, &spec) != 0)
		return -1;
	readonly = spec.snap[0] || (drv->params.device_flags & ISOLDE_DEV_READONLY);
	/* What would read files before librados is even configured: glibc's
	 * first localtime() reads /etc/localtime unless TZ names no file
	 * (":" is UTC, no file), and OpenSSL, which librados initialises,
	 * reads its openssl.cnf unless told not to first. (The libraries'
	 * own constructors - libselinux, libnl - run before main and find
	 * nothing in the empty root.) */
	setenv("TZ", ":", 1);
	OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
	/* librados starts some 20 threads; each would get a malloc arena of
	 * 64 MiB of address space, which RLIMIT_AS counts. */
	mallopt(M_ARENA_MAX, 2);

	b->slots = drv->params.ring_slots;
	b->reqs = calloc(b->slots, sizeof *b->reqs);
	b->done = calloc(b->slots, sizeof *b->done);
	b->deferred = calloc(b->slots, sizeof *b->deferred);
	if (!b->reqs || !b->done || !b->deferred) {
		isolde_driver_log(drv, "out of memory for %u requests", b->slots);
		return -1;
	}
	if ((r = pthread_mutex_init(&b->lock, NULL)) != 0)
		return rados_fail(drv, "pthread_mutex_init", -r);
	b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (b->efd < 0)
		return rados_fail(drv, "eventfd", -errno);

	/* rados_create2, not rados_create: with no cluster name (which only
	 * reading a ceph.conf would set) librados stores options but never
	 * tells its observers, so the log settings would not take effect. */
	char name[NAME_MAX_BYTES + 8];
	snprintf(name, sizeof name, "client.%s", spec.id);
	if ((r = rados_create2(&b->cluster, "ceph", name, 0)) < 0)
		return rados_fail(drv, "rados_create2", r);
	if (configure(drv, b, &spec) != 0)
		return -1;
	if ((r = rados_connect(b->cluster)) < 0) {
		isolde_driver_log(drv, "connecting to the cluster at %s as client.%s: %s", spec.mon_host,
				  spec.id, strerror(-r));
		return -1;
	}
	if ((r = rados_ioctx_create(b->cluster, spec.pool, &b->ioctx)) < 0) {
		isolde_driver_log(drv, "opening pool '%s': %s", spec.pool, strerror(-r));
		return -1;
	}
	if (readonly)
		r = rbd_open_read_only(b->ioctx, spec.image, &b->image, spec.snap[0] ? spec.snap : NULL);
	else
		r = rbd_open(b->ioctx, spec.image, &b->image, NULL);
	if (r < 0) {
		isolde_driver_log(drv, "opening image '%s%s%s' in pool '%s'%s: %s", spec.image,
				  spec.snap[0] ? "@" : "", spec.snap, spec.pool,
				  readonly ? " read-only" : "", strerror(-r));
		return -1;
	}
	if ((r = rbd_get_size(b->image, &size)) < 0)
		return rados_fail(drv, "reading the image's size", r);
	if (isolde_driver_report_device(drv, size, spec.snap[0] != 0) != 0)
		return -1;
	if (readonly)
		isolde_driver_report_session(drv, rados_get_instance_id(b->cluster));
	else if (lock_image(drv, b, &spec) != 0)
		return -1;

	drv->priv = b;
	isolde_driver_watch_fd(drv, b->efd);
	return 0;
}

/*
 * The device is being closed (SIGTERM, nothing in flight): give the lock
 * back and leave the cluster, so that the next user of the image - the
 * next isolde run, say - finds it free instead of a dead holder to ping
 * and break. rados_shutdown joins librados's threads, so the exit() that
 * follows runs no destructor under a live thread. The launcher kills the
 * driver if this takes longer than ISOLDE_DRIVER_STOP_MS (2 s).
 */
static void blk_rbd_stop(struct isolde_driver *drv)
{
	struct blk_rbd *b = drv->priv;
	int r;

	if (!b)
		return;
	if (b->locked && (r = rbd_lock_release(b->image)) < 0)
		isolde_driver_log(drv, "releasing the image's lock: %s", strerror(-r));
	if ((r = rbd_close(b->image)) < 0)
		isolde_driver_log(drv, "closing the image: %s", strerror(-r));
	rados_ioctx_destroy(b->ioctx);
	rados_shutdown(b->cluster);
	/* Nothing is held any more. */
	isolde_driver_report_session(drv, 0);
}

const struct isolde_driver_ops blk_rbd_ops = {
	.name = "blk-rbd",
	.init = blk_rbd_init,
	.submit = blk_rbd_submit,
	.reap = blk_rbd_reap,
	.completion_pending = blk_rbd_completion_pending,
	.stop = blk_rbd_stop,
};
