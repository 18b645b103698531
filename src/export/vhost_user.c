// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "vhost_user.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "json.h"
#include "unix_socket.h"

/* Message header flags. */
#define VU_VERSION 0x1u
#define VU_VERSION_MASK 0x3u
#define VU_FLAG_REPLY 0x4u
#define VU_FLAG_NEED_REPLY 0x8u

#define VU_HEADER_SIZE 12u
#define VU_MAX_PAYLOAD 4096u     /* the largest message, SET_MEM_TABLE, is 264 bytes */
#define VU_MAX_FDS 8u
#define VU_CONFIG_MAX 256u

#define VU_VRING_IDX_MASK 0xffu
#define VU_VRING_NOFD_MASK 0x100u

/* Feature bits that are the transport's, not the device's. */
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29
#define VHOST_USER_F_PROTOCOL_FEATURES 30
#define VIRTIO_F_VERSION_1 32
#define TRANSPORT_FEATURES ((1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VIRTIO_RING_F_EVENT_IDX) | \
			    (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_F_VERSION_1))

#define PROTOCOL_F_MQ 0
#define PROTOCOL_F_REPLY_ACK 3
#define PROTOCOL_F_CONFIG 9
#define PROTOCOL_FEATURES ((1ull << PROTOCOL_F_MQ) | (1ull << PROTOCOL_F_REPLY_ACK) | (1ull << PROTOCOL_F_CONFIG))

/* How long the hybrid poller keeps polling after the last request. */
#define HYBRID_POLL_NS 50000u

/* Requests one pass of the loop takes from one queue: a guest that keeps
 * its queue full gets its turn, then the other exports and queues theirs.
 * What is left is taken on the next pass (vq_slot.backlog). */
#define PASS_BUDGET 64u

/* What the requests in flight of one export may hold in our memory: the
 * elements (their segment lists), and ours and the device's state for
 * each. A queue has at most its size in flight, but a front end can
 * disconnect, or reset its queues, and start again while the earlier ones
 * are still in flight. Past this the export takes no more until some
 * complete; a guest within its advertised limits (seg_max 126, QEMU's
 * 1024-entry queues, 8 of them) needs at most a quarter of it. */
#define MAX_REQUEST_BYTES (64u << 20)
#define DEVICE_REQUEST_BYTES 256u   /* the device's state, allowance for it */

/* Memory tables an export keeps mapped: the current one and those that
 * requests in flight still point into. 8 of 8 regions for each of the
 * server's 16 exports fill the process's SIGBUS registry exactly. */
#define MAX_TABLES (GUEST_MEMORY_MAX_MAPPED / 16 / GUEST_MEMORY_MAX_REGIONS)

/* Lines the front end and its guest can make us log: LOG_BURST at once,
 * then LOG_PER_SECOND; the rest are counted and the count is logged. */
#define LOG_BURST 100u
#define LOG_PER_SECOND 10u
#define LOG_LINE_NS (1000000000ull / LOG_PER_SECOND)

enum vu_request {
	VU_GET_FEATURES = 1, VU_SET_FEATURES = 2, VU_SET_OWNER = 3, VU_RESET_OWNER = 4,
	VU_SET_MEM_TABLE = 5, VU_SET_LOG_BASE = 6, VU_SET_LOG_FD = 7, VU_SET_VRING_NUM = 8,
	VU_SET_VRING_ADDR = 9, VU_SET_VRING_BASE = 10, VU_GET_VRING_BASE = 11, VU_SET_VRING_KICK = 12,
	VU_SET_VRING_CALL = 13, VU_SET_VRING_ERR = 14, VU_GET_PROTOCOL_FEATURES = 15,
	VU_SET_PROTOCOL_FEATURES = 16, VU_GET_QUEUE_NUM = 17, VU_SET_VRING_ENABLE = 18,
	VU_GET_CONFIG = 24, VU_SET_CONFIG = 25,
};

static const char *const request_names[] = {
	[VU_GET_FEATURES] = "GET_FEATURES", [VU_SET_FEATURES] = "SET_FEATURES",
	[VU_SET_OWNER] = "SET_OWNER", [VU_RESET_OWNER] = "RESET_OWNER",
	[VU_SET_MEM_TABLE] = "SET_MEM_TABLE", [VU_SET_LOG_BASE] = "SET_LOG_BASE",
	[VU_SET_LOG_FD] = "SET_LOG_FD", [VU_SET_VRING_NUM] = "SET_VRING_NUM",
	[VU_SET_VRING_ADDR] = "SET_VRING_ADDR", [VU_SET_VRING_BASE] = "SET_VRING_BASE",
	[VU_GET_VRING_BASE] = "GET_VRING_BASE", [VU_SET_VRING_KICK] = "SET_VRING_KICK",
	[VU_SET_VRING_CALL] = "SET_VRING_CALL", [VU_SET_VRING_ERR] = "SET_VRING_ERR",
	[VU_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
	[VU_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES", [VU_GET_QUEUE_NUM] = "GET_QUEUE_NUM",
	[VU_SET_VRING_ENABLE] = "SET_VRING_ENABLE", [VU_GET_CONFIG] = "GET_CONFIG",
	[VU_SET_CONFIG] = "SET_CONFIG",
};

struct vu_header {
	uint32_t request;
	uint32_t flags;
	uint32_t size;
};

struct vu_vring_state {
	uint32_t index;
	uint32_t num;
};

struct vu_vring_addr {
	uint32_t index;
	uint32_t flags;
	uint64_t desc, used, avail, log;
};

struct vu_config_head {
	uint32_t offset;
	uint32_t size;
	uint32_t flags;
};

struct vq_slot {
	struct vhost_conn *conn;
	struct virtqueue vq;
	int kick_fd, call_fd, err_fd;
	bool started;            /* a kick fd (or "poll me") was given */
	bool enabled;
	bool reported_broken;
	bool backlog;            /* a pass stopped at PASS_BUDGET: more to take */
	unsigned inflight;       /* requests of every generation */
	unsigned generation;     /* RESET_OWNER starts a new one: older requests are stale */
};

struct vhost_conn {
	struct vhost_user *vu;
	unsigned refs;           /* the socket's, and one per request in flight */
	int fd;                  /* -1 once closed */
	uint64_t features;
	uint64_t protocol_features;
	struct guest_memory *mem;
	struct vq_slot q[VHOST_USER_MAX_QUEUES];
	/* The message being received. */
	union {
		struct vu_header hdr;
		uint8_t bytes[VU_HEADER_SIZE + VU_MAX_PAYLOAD];
	} in;
	size_t have;
	int fds[VU_MAX_FDS];
	unsigned nfds;
	bool fds_overflow;
	/* GET_VRING_BASE of this queue waits for its requests; -1 if none. */
	int waiting_queue;
	bool polling;            /* registered as a server poller */
	uint64_t last_work_ns;
	bool sleeping;           /* hybrid: notifications on, waiting for a kick */
};

struct vhost_user {
	struct isolde_loop *loop;
	char log_prefix[96];         /* "[device: ]vhost-user-blk" */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd;
	enum isolde_notify_mode poll;
	const struct vhost_device_ops *ops;
	void *dev;
	struct vhost_conn *conn;
	bool quiescing;
	unsigned long long connections, requests, inflight;
	size_t request_bytes;    /* what requests in flight hold, as request_cost counts */
	bool throttled;          /* over MAX_REQUEST_BYTES: take nothing until half of it */
	unsigned tables;         /* memory tables mapped, of every connection */
	uint64_t log_credit_ns, log_last_ns;  /* the log's token bucket */
	unsigned long long log_suppressed;
};

static const char *request_name(uint32_t r)
{
	if (r < sizeof request_names / sizeof request_names[0] && request_names[r])
		return request_names[r];
	return "unknown request";
}

/* The token bucket: credit accrues with time up to LOG_BURST lines. */
static bool log_allowed(struct vhost_user *vu)
{
	uint64_t now = isolde_now_ns(), cap = LOG_BURST * LOG_LINE_NS;
	uint64_t credit = vu->log_credit_ns + (now - vu->log_last_ns);

	vu->log_last_ns = now;
	vu->log_credit_ns = credit < cap ? credit : cap;
	if (vu->log_credit_ns < LOG_LINE_NS) {
		vu->log_suppressed++;
		return false;
	}
	vu->log_credit_ns -= LOG_LINE_NS;
	return true;
}

void vhost_user_log(struct vhost_user *vu, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!log_allowed(vu))
		return;
	if (vu->log_suppressed) {
		fprintf(stderr, "isolde serve: %s: %s: %llu messages suppressed\n", vu->log_prefix, vu->path,
			vu->log_suppressed);
		vu->log_suppressed = 0;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "isolde serve: %s: %s: %s\n", vu->log_prefix, vu->path, msg);
}

/* A device without a config space (the network device: QEMU keeps
 * virtio-net's itself, and QEMU 7.2 crashes if a vhost-user-net back end
 * offers CONFIG) is not offered it. */
static uint64_t protocol_features(const struct vhost_user *vu)
{
	return vu->ops->get_config ? PROTOCOL_FEATURES : PROTOCOL_FEATURES & ~(1ull << PROTOCOL_F_CONFIG);
}

static uint64_t offered_features(const struct vhost_user *vu)
{
	return vu->ops->features | TRANSPORT_FEATURES;
}

/* ---- connection lifetime ---- */

/* Drop a reference to a table of vu's, counting the tables still mapped. */
static void table_unref(struct vhost_user *vu, struct guest_memory *m)
{
	if (m && m->refs == 1)
		vu->tables--;
	guest_memory_unref(m);
}

static void conn_ref(struct vhost_conn *c)
{
	c->refs++;
}

static void conn_unref(struct vhost_conn *c)
{
	if (--c->refs > 0)
		return;
	table_unref(c->vu, c->mem);
	free(c);
}

static bool conn_poll(void *ctx);

static void slot_stop(struct vhost_conn *c, struct vq_slot *s)
{
	if (s->kick_fd >= 0) {
		loop_unwatch(c->vu->loop, s->kick_fd);
		close(s->kick_fd);
		s->kick_fd = -1;
	}
	s->started = false;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void close_received_fds(struct vhost_conn *c)
{
	for (unsigned i = 0; i < c->nfds; i++)
		close_fd(&c->fds[i]);
	c->nfds = 0;
	c->fds_overflow = false;
}

static void conn_close(struct vhost_conn *c)
{
	struct vhost_user *vu = c->vu;

	if (c->fd < 0)
		return;
	loop_unwatch(vu->loop, c->fd);
	close_fd(&c->fd);
	close_received_fds(c);
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		slot_stop(c, &c->q[i]);
		close_fd(&c->q[i].call_fd);
		close_fd(&c->q[i].err_fd);
	}
	if (c->polling)
		loop_remove_poller(vu->loop, conn_poll, c);
	c->polling = false;
	if (vu->conn == c)
		vu->conn = NULL;
	conn_unref(c);
}

/* ---- queues ---- */

static bool slot_running(const struct vq_slot *s)
{
	const struct vhost_conn *c = s->conn;
	return s->started && s->enabled && !s->vq.broken && s->vq.desc && c->fd >= 0 && !c->vu->quiescing;
}

/* The front end shrank a file under c's memory (or under m, which a
 * request points into): what was read from it since is zeros, not the
 * guest's. The connection ends, logged once; true from then on. */
static bool conn_memory_lost(struct vhost_conn *c, const struct guest_memory *m)
{
	if (!guest_memory_poisoned(c->mem) && !guest_memory_poisoned(m))
		return false;
	if (c->fd >= 0) {
		vhost_user_log(c->vu, "the front end shrank its memory file under a mapped region (it reads "
			       "as zeros now); closing the connection");
		conn_close(c);
	}
	return true;
}

static void report_broken(struct vq_slot *s)
{
	if (!s->vq.broken || s->reported_broken)
		return;
	/* A queue that broke on the zeros of a shrunk file is not the reason. */
	if (conn_memory_lost(s->conn, NULL))
		return;
	s->reported_broken = true;
	vhost_user_log(s->conn->vu, "%s; the queue stops until the front end resets it",
		       s->vq.broken_reason);
	if (s->err_fd >= 0) {
		uint64_t one = 1;
		if (write(s->err_fd, &one, sizeof one) < 0) {
			/* The front end learns it from the stopped queue anyway. */
		}
	}
}

/* What a request in flight holds in our memory, for MAX_REQUEST_BYTES. */
static size_t request_cost(const struct vq_elem *e)
{
	return sizeof(struct vhost_request) + DEVICE_REQUEST_BYTES + sizeof *e +
	       (e->nout + e->nin) * sizeof e->iov[0];
}

static bool over_request_bytes(struct vhost_user *vu)
{
	if (vu->request_bytes >= MAX_REQUEST_BYTES)
		vu->throttled = true;
	return vu->throttled;
}

/* Make sure the loop makes another pass for c: its poller (spin and
 * hybrid have it anyway; event mode adds it for as long as there is a
 * backlog). Hybrid stops sleeping: the guest will not kick for what it
 * already kicked for. False if no poller can be added. */
static bool conn_want_pass(struct vhost_conn *c)
{
	if (!c->polling && loop_add_poller(c->vu->loop, conn_poll, c) == 0)
		c->polling = true;
	if (c->vu->poll == ISOLDE_NOTIFY_HYBRID) {
		c->last_work_ns = isolde_now_ns();
		if (c->sleeping) {
			c->sleeping = false;
			for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++)
				vq_set_notification(&c->q[i].vq, false);
		}
	}
	return c->polling;
}

static void begin_request(struct vq_slot *s, struct vhost_request *req, struct vq_elem *e)
{
	struct vhost_conn *c = s->conn;
	struct vhost_user *vu = c->vu;

	req->conn = c;
	req->mem = c->mem;
	req->queue = s->vq.index;
	req->generation = s->generation;
	req->elem = e;
	req->cost = request_cost(e);
	conn_ref(c);
	guest_memory_ref(c->mem);
	s->inflight++;
	vu->inflight++;
	vu->request_bytes += req->cost;
	vu->requests++;
}

static bool slot_pulled(const struct vq_slot *s)
{
	return (s->conn->vu->ops->pulled_queues >> s->vq.index) & 1;
}

/* A queue the device pulls from: it hears that the guest made buffers
 * available and takes them when it has something to put in them. */
static void slot_offer(struct vq_slot *s)
{
	struct vhost_user *vu = s->conn->vu;

	if (slot_running(s) && vq_available(&s->vq))
		vu->ops->available(vu->dev, s->vq.index);
	report_broken(s);
}

/* Start up to budget requests the guest made available on s; returns how
 * many. Stopping at the budget leaves s->backlog set and a pass to come;
 * if no pass can be had, it goes on: slow is better than stuck. The
 * caller holds a reference to s->conn (the connection may close here). */
static unsigned slot_process(struct vq_slot *s, unsigned budget)
{
	struct vhost_conn *c = s->conn;
	unsigned n = 0;

	if (slot_pulled(s)) {
		slot_offer(s);
		return 0;
	}
	while (slot_running(s)) {
		struct vq_elem *e;
		struct vhost_request *req;

		if (n == budget && vq_available(&s->vq)) {
			s->backlog = true;
			if (conn_want_pass(c))
				break;
		}
		if (over_request_bytes(c->vu))
			break; /* request_finish wants a pass once there is room */
		e = vq_pop(&s->vq, c->mem);
		/* Whatever vq_pop made of it, zeros are not the guest's. */
		if (conn_memory_lost(c, NULL)) {
			free(e);
			return n;
		}
		if (!e)
			break;
		if (!(req = calloc(1, sizeof *req))) {
			vq_drop(&s->vq, e->head);
			vq_break(&s->vq, "queue %u: out of memory", s->vq.index);
			free(e);
			break;
		}
		n++;
		begin_request(s, req, e);
		c->vu->ops->request(c->vu->dev, req);
	}
	report_broken(s);
	return n;
}

/* event mode, and hybrid once it sleeps: process, then ask for a kick, then
 * look again for what arrived before the guest saw that. Stops at the
 * pass budget (notifications stay as they are: the next pass comes anyway)
 * and when the export holds too much. */
static unsigned slot_process_then_arm(struct vq_slot *s)
{
	unsigned n = 0;

	if (slot_pulled(s)) {
		/* A kick whenever the guest adds buffers: the device may be
		 * waiting for one. */
		vq_set_notification(&s->vq, true);
		slot_offer(s);
		return 0;
	}
	for (;;) {
		n += slot_process(s, n < PASS_BUDGET ? PASS_BUDGET - n : 0);
		if (!slot_running(s) || s->backlog || s->conn->vu->throttled)
			return n;
		vq_set_notification(&s->vq, true);
		if (!vq_available(&s->vq))
			return n;
	}
}

static void kick_cb(void *ctx, uint32_t events)
{
	struct vq_slot *s = ctx;
	struct vhost_conn *c = s->conn;
	uint64_t count;

	(void)events;
	if (read(s->kick_fd, &count, sizeof count) < 0 && errno != EAGAIN) {
		/* An eventfd read only fails when there is nothing to read. */
	}
	conn_ref(c);
	if (c->vu->poll == ISOLDE_NOTIFY_EVENT) {
		slot_process_then_arm(s);
	} else {
		/* hybrid: poll again from now on */
		conn_want_pass(c);
		slot_process(s, PASS_BUDGET);
	}
	conn_unref(c);
}

static bool any_queue_unkicked(const struct vhost_conn *c)
{
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++)
		if (slot_running(&c->q[i]) && c->q[i].kick_fd < 0)
			return true; /* "no fd": the front end never kicks this queue */
	return false;
}

/* event mode: the passes that take what a kick's pass left at the budget;
 * the poller goes once nothing is left. */
static bool poll_backlog(struct vhost_conn *c)
{
	bool more = false;

	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		struct vq_slot *s = &c->q[i];

		if (!s->backlog)
			continue;
		s->backlog = false;
		if (slot_running(s))
			slot_process_then_arm(s);
		more |= s->backlog;
	}
	if (!more && c->polling) {
		loop_remove_poller(c->vu->loop, conn_poll, c);
		c->polling = false;
	}
	return more;
}

/* spin, hybrid, and event mode with a queue that is never kicked. */
static bool poll_queues(struct vhost_conn *c)
{
	unsigned n = 0;
	bool any = false, backlog = false;

	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		struct vq_slot *s = &c->q[i];

		s->backlog = false;
		if (slot_running(s)) {
			any = true;
			n += slot_process(s, PASS_BUDGET);
			backlog |= s->backlog;
		}
	}
	if (!any)
		return false;
	if (c->vu->poll == ISOLDE_NOTIFY_SPIN || any_queue_unkicked(c))
		return true;
	uint64_t now = isolde_now_ns();
	if (n)
		c->last_work_ns = now;
	if (backlog)
		return true;
	if (c->sleeping)
		return false;
	if (now - c->last_work_ns < HYBRID_POLL_NS)
		return true;
	/* Idle long enough: ask for kicks, and sleep unless something came. */
	n = 0;
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++)
		if (slot_running(&c->q[i]))
			n += slot_process_then_arm(&c->q[i]);
	if (n) {
		c->last_work_ns = now;
		for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++)
			vq_set_notification(&c->q[i].vq, false);
		return true;
	}
	c->sleeping = true;
	return false;
}

/* The server loop calls this on every pass while it is registered. */
static bool conn_poll(void *ctx)
{
	struct vhost_conn *c = ctx;
	bool again;

	conn_ref(c);
	if (c->vu->poll == ISOLDE_NOTIFY_EVENT && !any_queue_unkicked(c))
		again = poll_backlog(c);
	else
		again = poll_queues(c);
	conn_unref(c);
	return again;
}

/* The queue just started (kick fd, enable or reconnect): set up its
 * notifications and take what is already there. */
static void slot_kickoff(struct vq_slot *s)
{
	struct vhost_conn *c = s->conn;

	if (!slot_running(s))
		return;
	if (c->vu->poll == ISOLDE_NOTIFY_EVENT && s->kick_fd >= 0) {
		slot_process_then_arm(s);
		return;
	}
	if (!c->polling && loop_add_poller(c->vu->loop, conn_poll, c) == 0)
		c->polling = true;
	c->sleeping = false;
	c->last_work_ns = isolde_now_ns();
	vq_set_notification(&s->vq, false);
	slot_process(s, PASS_BUDGET);
}

static int send_reply(struct vhost_conn *c, uint32_t request, const void *payload, uint32_t size)
{
	struct vu_header h = { request, VU_VERSION | VU_FLAG_REPLY, size };
	struct iovec iov[2] = { { &h, sizeof h }, { (void *)payload, size } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };

	if (sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)(sizeof h + size)) {
		vhost_user_log(c->vu, "%s: cannot reply: %s", request_name(request), strerror(errno));
		return -1;
	}
	return 0;
}

/* Put req on its used ring and signal the guest if it asked; or, if it
 * cannot be answered, only forget its head. */
static void answer(struct vq_slot *s, struct vhost_request *req, bool push, uint32_t written)
{
	struct vhost_conn *c = s->conn;

	/* A request of an earlier generation (RESET_OWNER) is not this
	 * queue's: its head means nothing here. */
	if (req->generation != s->generation)
		return;
	/* A guest that disconnected, whose queue broke, or whose memory file
	 * shrank gets nothing written into its memory. */
	if (!push || c->fd < 0 || !s->vq.used || s->vq.broken || conn_memory_lost(c, req->mem)) {
		vq_drop(&s->vq, req->elem->head);
		return;
	}
	vq_push(&s->vq, req->elem->head, written);
	if (s->call_fd >= 0 && vq_should_notify(&s->vq)) {
		uint64_t one = 1;
		if (write(s->call_fd, &one, sizeof one) < 0) {
			/* EAGAIN: the counter is saturated, the guest will look anyway. */
		}
	}
}

/* Throttled, and now below half of MAX_REQUEST_BYTES: the current front
 * end's queues get a pass (they stopped without asking for a kick). */
static void resume_if_room(struct vhost_user *vu)
{
	if (!vu->throttled || vu->request_bytes > MAX_REQUEST_BYTES / 2)
		return;
	vu->throttled = false;
	if (!vu->conn)
		return;
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		struct vq_slot *s = &vu->conn->q[i];
		if (slot_running(s)) {
			s->backlog = true;
			conn_want_pass(vu->conn);
		}
	}
}

static void request_finish(struct vhost_request *req, bool push, uint32_t written)
{
	struct vhost_conn *c = req->conn;
	struct vhost_user *vu = c->vu;
	struct vq_slot *s = &c->q[req->queue];

	vu->inflight--;
	vu->request_bytes -= req->cost;
	s->inflight--;
	answer(s, req, push, written);
	table_unref(vu, req->mem);
	free(req->elem);
	free(req);
	if (c->fd >= 0 && c->waiting_queue == (int)s->vq.index && s->inflight == 0) {
		struct vu_vring_state st = { s->vq.index, s->vq.last_avail };
		c->waiting_queue = -1;
		if (send_reply(c, VU_GET_VRING_BASE, &st, sizeof st) != 0)
			conn_close(c);
		else
			loop_modify(vu->loop, c->fd, EPOLLIN);
	}
	resume_if_room(vu);
	conn_unref(c);
}

struct vhost_request *vhost_user_take(struct vhost_user *vu, unsigned queue)
{
	struct vhost_conn *c = vu->conn;
	struct vhost_request *req;
	struct vq_elem *e;

	if (!c || queue >= VHOST_USER_MAX_QUEUES)
		return NULL;
	struct vq_slot *s = &c->q[queue];
	if (!slot_running(s) || over_request_bytes(vu))
		return NULL;
	conn_ref(c);
	e = vq_pop(&s->vq, c->mem);
	if (!e && slot_running(s) && (vu->poll == ISOLDE_NOTIFY_EVENT || c->sleeping)) {
		/* Out of buffers: ask for a kick, then look again for one
		 * the guest added before it saw that. */
		vq_set_notification(&s->vq, true);
		e = vq_pop(&s->vq, c->mem);
	}
	req = NULL;
	if (conn_memory_lost(c, NULL)) {
		free(e);
	} else if (!e) {
		report_broken(s);
	} else if (!(req = calloc(1, sizeof *req))) {
		vq_drop(&s->vq, e->head);
		vq_break(&s->vq, "queue %u: out of memory", s->vq.index);
		report_broken(s);
		free(e);
	} else {
		begin_request(s, req, e);
	}
	conn_unref(c);
	return req;
}

uint64_t vhost_user_features(const struct vhost_user *vu)
{
	return vu->conn && vu->conn->fd >= 0 ? vu->conn->features : 0;
}

void vhost_user_complete(struct vhost_request *req, uint32_t written)
{
	request_finish(req, true, written);
}

bool vhost_user_memory_lost(struct vhost_request *req)
{
	return conn_memory_lost(req->conn, req->mem);
}

void vhost_user_abandon(struct vhost_request *req, const char *reason)
{
	struct vq_slot *s = &req->conn->q[req->queue];

	vq_break(&s->vq, "queue %u: request at descriptor %u: %s", req->queue, req->elem->head, reason);
	report_broken(s);
	request_finish(req, false, 0);
}

/* ---- messages ---- */

static int reply_u64(struct vhost_conn *c, uint32_t request, uint64_t v)
{
	return send_reply(c, request, &v, sizeof v);
}

/* What a handler decided. */
enum outcome {
	DONE,        /* acted on; ack if asked */
	REPLIED,     /* sent its own reply */
	REFUSED,     /* not acted on; nack if asked; the connection stays */
	MALFORMED,   /* logged; the connection ends */
	DEFERRED,    /* the reply comes later (GET_VRING_BASE) */
};

static enum outcome malformed(struct vhost_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static enum outcome malformed(struct vhost_conn *c, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	vhost_user_log(c->vu, "%s: %s; closing the connection", request_name(c->in.hdr.request), msg);
	return MALFORMED;
}

static bool size_is(struct vhost_conn *c, uint32_t expected, enum outcome *o)
{
	if (c->in.hdr.size == expected)
		return true;
	*o = malformed(c, "payload of %u bytes, expected %u", c->in.hdr.size, expected);
	return false;
}

/* GET_* requests carry nothing, though some front ends send a zero u64. */
static bool size_empty(struct vhost_conn *c, enum outcome *o)
{
	if (c->in.hdr.size == 0 || c->in.hdr.size == 8)
		return true;
	*o = malformed(c, "payload of %u bytes, expected 0", c->in.hdr.size);
	return false;
}

static const void *payload(const struct vhost_conn *c)
{
	return c->in.bytes + VU_HEADER_SIZE;
}

static uint64_t payload_u64(const struct vhost_conn *c)
{
	uint64_t v;
	memcpy(&v, payload(c), sizeof v);
	return v;
}

static struct vq_slot *queue_at(struct vhost_conn *c, uint32_t index, enum outcome *o)
{
	unsigned max = c->vu->ops->max_queues;

	if (index < max)
		return &c->q[index];
	*o = malformed(c, "queue index %u out of range (%u queues)", index, max);
	return NULL;
}

static bool no_fds(struct vhost_conn *c, enum outcome *o)
{
	if (c->nfds == 0 && !c->fds_overflow)
		return true;
	*o = malformed(c, "%u unexpected fds", c->nfds);
	return false;
}

static void set_vq_features(struct vhost_conn *c)
{
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		c->q[i].vq.event_idx = (c->features >> VIRTIO_RING_F_EVENT_IDX) & 1;
		c->q[i].vq.indirect = (c->features >> VIRTIO_RING_F_INDIRECT_DESC) & 1;
	}
}

static void reset_queues(struct vhost_conn *c)
{
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		struct vq_slot *s = &c->q[i];
		slot_stop(c, s);
		close_fd(&s->call_fd);
		close_fd(&s->err_fd);
		s->enabled = false;
		s->reported_broken = false;
		s->backlog = false;
		s->generation++;
		memset(&s->vq, 0, sizeof s->vq);
		s->vq.index = i;
	}
	set_vq_features(c);
}

static enum outcome on_set_mem_table(struct vhost_conn *c)
{
	struct guest_region_desc regions[GUEST_MEMORY_MAX_REGIONS];
	uint32_t n;
	struct guest_memory *m;
	enum outcome o = MALFORMED;
	char why[256];

	if (c->in.hdr.size < 8)
		return malformed(c, "payload of %u bytes, shorter than its 8-byte head", c->in.hdr.size);
	memcpy(&n, payload(c), sizeof n);
	if (n == 0 || n > GUEST_MEMORY_MAX_REGIONS)
		return malformed(c, "%u regions (1 to %d allowed)", n, GUEST_MEMORY_MAX_REGIONS);
	if (!size_is(c, 8 + n * (uint32_t)sizeof regions[0], &o))
		return o;
	if (c->nfds != n || c->fds_overflow)
		return malformed(c, "%u regions but %u fds", n, c->nfds);
	memcpy(regions, (const uint8_t *)payload(c) + 8, n * sizeof regions[0]);
	/* The table this one replaces goes now unless requests hold it. */
	if (c->vu->tables - (c->mem && c->mem->refs == 1) >= MAX_TABLES)
		return malformed(c, "%u memory tables are still mapped for requests in flight, the most "
				 "an export keeps", c->vu->tables);
	if (!(m = guest_memory_map(regions, n, c->fds, why, sizeof why)))
		return malformed(c, "%s", why);
	c->vu->tables++;
	table_unref(c->vu, c->mem);
	c->mem = m;
	/* Rings already placed must be found again in the new table. */
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		struct vq_slot *s = &c->q[i];
		if (!s->vq.addr_set) {
			s->vq.desc = NULL;
			s->vq.avail = NULL;
			s->vq.used = NULL;
		} else if (!vq_map_rings(&s->vq, m)) {
			char reason[sizeof s->vq.broken_reason];
			memcpy(reason, s->vq.broken_reason, sizeof reason);
			vq_break(&s->vq, "%s", reason);
			report_broken(s);
		}
	}
	return DONE;
}

/* SET_VRING_KICK, _CALL, _ERR: the queue, and the fd or -1 ("no fd"). */
static struct vq_slot *vring_fd(struct vhost_conn *c, int *fd, enum outcome *o)
{
	uint64_t v;
	struct vq_slot *s;

	if (!size_is(c, sizeof v, o))
		return NULL;
	v = payload_u64(c);
	if (v & ~(uint64_t)(VU_VRING_IDX_MASK | VU_VRING_NOFD_MASK)) {
		*o = malformed(c, "unknown bits in 0x%llx", (unsigned long long)v);
		return NULL;
	}
	if (!(s = queue_at(c, v & VU_VRING_IDX_MASK, o)))
		return NULL;
	if (v & VU_VRING_NOFD_MASK) {
		if (c->nfds || c->fds_overflow) {
			*o = malformed(c, "queue %u: an fd came with the 'no fd' flag", s->vq.index);
			return NULL;
		}
		*fd = -1;
	} else {
		if (c->nfds != 1 || c->fds_overflow) {
			*o = malformed(c, "queue %u: %s without the 'no fd' flag", s->vq.index,
				       c->nfds ? "more than one fd" : "no fd");
			return NULL;
		}
		*fd = c->fds[0];
		c->fds[0] = -1;
		c->nfds = 0;
		/* A front end could pass a pipe it never drains: a blocking write
		 * to it would stop the whole server. */
		int fl = fcntl(*fd, F_GETFL);
		if (fl < 0 || fcntl(*fd, F_SETFL, fl | O_NONBLOCK) != 0) {
			close(*fd);
			*o = malformed(c, "queue %u: fd: %s", s->vq.index, strerror(errno));
			return NULL;
		}
	}
	return s;
}

/* ---- the requests: a handler each, and one table of their rules ---- */

static enum outcome on_get_features(struct vhost_conn *c)
{
	return reply_u64(c, c->in.hdr.request, offered_features(c->vu)) ? MALFORMED : REPLIED;
}

static enum outcome on_set_features(struct vhost_conn *c)
{
	uint64_t f = payload_u64(c);

	if (f & ~offered_features(c->vu))
		return malformed(c, "features 0x%llx were not offered",
				 (unsigned long long)(f & ~offered_features(c->vu)));
	c->features = f;
	set_vq_features(c);
	return DONE;
}

static enum outcome on_get_protocol_features(struct vhost_conn *c)
{
	return reply_u64(c, c->in.hdr.request, protocol_features(c->vu)) ? MALFORMED : REPLIED;
}

static enum outcome on_set_protocol_features(struct vhost_conn *c)
{
	uint64_t f = payload_u64(c);

	if (f & ~protocol_features(c->vu))
		return malformed(c, "protocol features 0x%llx were not offered",
				 (unsigned long long)(f & ~protocol_features(c->vu)));
	c->protocol_features = f;
	return DONE;
}

static enum outcome on_get_queue_num(struct vhost_conn *c)
{
	return reply_u64(c, c->in.hdr.request, c->vu->ops->max_queues) ? MALFORMED : REPLIED;
}

static enum outcome on_set_owner(struct vhost_conn *c)
{
	(void)c;
	return DONE;
}

static enum outcome on_reset_owner(struct vhost_conn *c)
{
	reset_queues(c);
	return DONE;
}

/* A vring-state request's queue (its payload copied into st), or NULL. */
static struct vq_slot *state_queue(struct vhost_conn *c, struct vu_vring_state *st, enum outcome *o)
{
	memcpy(st, payload(c), sizeof *st);
	return queue_at(c, st->index, o);
}

static enum outcome on_set_vring_num(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vu_vring_state st;
	struct vq_slot *s = state_queue(c, &st, &o);

	if (!s)
		return o;
	if (st.num == 0 || st.num > VQ_MAX_SIZE || (st.num & (st.num - 1)))
		return malformed(c, "queue %u: size %u is not a power of two up to %u", st.index, st.num,
				 VQ_MAX_SIZE);
	if (s->started)
		return malformed(c, "queue %u is running", st.index);
	s->vq.num = st.num;
	/* SET_VRING_ADDR places the rings for this size. */
	s->vq.desc = NULL;
	s->vq.avail = NULL;
	s->vq.used = NULL;
	s->vq.addr_set = false;
	return DONE;
}

static enum outcome on_set_vring_addr(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vu_vring_addr a;
	struct vq_slot *s;

	memcpy(&a, payload(c), sizeof a);
	if (!(s = queue_at(c, a.index, &o)))
		return o;
	if (s->vq.num == 0)
		return malformed(c, "queue %u has no size yet (SET_VRING_NUM)", a.index);
	if (!c->mem)
		return malformed(c, "queue %u: no memory table yet (SET_MEM_TABLE)", a.index);
	s->vq.desc_uva = a.desc;
	s->vq.avail_uva = a.avail;
	s->vq.used_uva = a.used;
	s->vq.addr_set = true;
	if (!vq_map_rings(&s->vq, c->mem)) {
		s->vq.addr_set = false;
		return malformed(c, "%s", s->vq.broken_reason);
	}
	slot_kickoff(s);
	return DONE;
}

static enum outcome on_set_vring_base(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vu_vring_state st;
	struct vq_slot *s = state_queue(c, &st, &o);

	if (!s)
		return o;
	if (st.num > 0xffff)
		return malformed(c, "queue %u: base %u does not fit a split ring's 16 bits", st.index, st.num);
	if (s->started)
		return malformed(c, "queue %u is running", st.index);
	s->vq.last_avail = (uint16_t)st.num;
	s->vq.used_idx = (uint16_t)st.num;
	return DONE;
}

static enum outcome on_get_vring_base(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vu_vring_state st;
	struct vq_slot *s = state_queue(c, &st, &o);

	if (!s)
		return o;
	slot_stop(c, s);
	if (s->inflight) {
		c->waiting_queue = (int)st.index;
		loop_modify(c->vu->loop, c->fd, 0);
		return DEFERRED;
	}
	st.num = s->vq.last_avail;
	return send_reply(c, c->in.hdr.request, &st, sizeof st) ? MALFORMED : REPLIED;
}

static enum outcome on_set_vring_kick(struct vhost_conn *c)
{
	struct vhost_user *vu = c->vu;
	enum outcome o = MALFORMED;
	struct vq_slot *s;
	int fd;

	if (!(s = vring_fd(c, &fd, &o)))
		return o;
	slot_stop(c, s);
	s->kick_fd = fd;
	s->started = true;
	s->vq.broken = false;
	s->reported_broken = false;
	s->vq.signalled_used_valid = false;
	/* Without protocol features a queue runs once it has a kick. */
	if (!((c->features >> VHOST_USER_F_PROTOCOL_FEATURES) & 1))
		s->enabled = true;
	if (s->kick_fd >= 0 && vu->poll != ISOLDE_NOTIFY_SPIN &&
	    loop_watch(vu->loop, s->kick_fd, EPOLLIN, kick_cb, s) != 0)
		return malformed(c, "queue %u: cannot watch the kick fd %d", s->vq.index, s->kick_fd);
	slot_kickoff(s);
	return DONE;
}

static enum outcome on_set_vring_call(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vq_slot *s;
	int fd;

	if (!(s = vring_fd(c, &fd, &o)))
		return o;
	close_fd(&s->call_fd);
	s->call_fd = fd;
	return DONE;
}

static enum outcome on_set_vring_err(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vq_slot *s;
	int fd;

	if (!(s = vring_fd(c, &fd, &o)))
		return o;
	close_fd(&s->err_fd);
	s->err_fd = fd;
	return DONE;
}

static enum outcome on_set_vring_enable(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vu_vring_state st;
	struct vq_slot *s = state_queue(c, &st, &o);

	if (!s)
		return o;
	if (st.num > 1)
		return malformed(c, "queue %u: enable is %u, not 0 or 1", st.index, st.num);
	s->enabled = st.num;
	slot_kickoff(s);
	return DONE;
}

static enum outcome on_get_config(struct vhost_conn *c)
{
	enum outcome o = MALFORMED;
	struct vu_config_head ch;
	uint8_t config[VU_CONFIG_MAX] = { 0 }, reply[sizeof ch + VU_CONFIG_MAX];

	if (!c->vu->ops->get_config) {
		/* GET_CONFIG always has a reply, or the front end waits for it
		 * forever: an empty one is the refusal (as libvhost-user's). */
		vhost_user_log(c->vu, "GET_CONFIG: refused: the device has no config space");
		return send_reply(c, c->in.hdr.request, NULL, 0) ? MALFORMED : REPLIED;
	}
	if (c->in.hdr.size < sizeof ch)
		return malformed(c, "payload of %u bytes, shorter than its %zu-byte head", c->in.hdr.size,
				 sizeof ch);
	memcpy(&ch, payload(c), sizeof ch);
	if (ch.size > VU_CONFIG_MAX || ch.offset > VU_CONFIG_MAX - ch.size)
		return malformed(c, "offset %u and size %u go past the %u-byte config space", ch.offset,
				 ch.size, VU_CONFIG_MAX);
	if (!size_is(c, (uint32_t)sizeof ch + ch.size, &o))
		return o;
	c->vu->ops->get_config(c->vu->dev, config, sizeof config);
	memcpy(reply, &ch, sizeof ch);
	memcpy(reply + sizeof ch, config + ch.offset, ch.size);
	return send_reply(c, c->in.hdr.request, reply, (uint32_t)sizeof ch + ch.size) ? MALFORMED : REPLIED;
}

static enum outcome on_set_config(struct vhost_conn *c)
{
	vhost_user_log(c->vu, "SET_CONFIG: refused: the config space is read-only");
	return REFUSED;
}

static enum outcome on_dirty_log(struct vhost_conn *c)
{
	vhost_user_log(c->vu, "%s: refused: dirty logging was not offered", request_name(c->in.hdr.request));
	return REFUSED;
}

enum size_rule {
	SIZE_EMPTY,   /* nothing, or the zero u64 some front ends send */
	SIZE_EXACT,   /* exactly .bytes */
	SIZE_OWN,     /* the handler checks (variable-sized payloads) */
};

enum fd_rule {
	FDS_NONE,     /* a message with fds is malformed */
	FDS_OWN,      /* the handler takes or refuses them */
};

/*
 * Every request the back end knows: what its payload and fds must be, and
 * who handles it. The checks run before the handler, which may then read
 * the payload it was promised. A request not here is refused (with its
 * "no" when the front end waits for one), unless it came with fds.
 */
static const struct request_rule {
	uint32_t request;
	enum size_rule size;
	uint32_t bytes;
	enum fd_rule fds;
	enum outcome (*handle)(struct vhost_conn *c);
} request_rules[] = {
	{ VU_GET_FEATURES, SIZE_EMPTY, 0, FDS_NONE, on_get_features },
	{ VU_SET_FEATURES, SIZE_EXACT, sizeof(uint64_t), FDS_NONE, on_set_features },
	{ VU_GET_PROTOCOL_FEATURES, SIZE_EMPTY, 0, FDS_NONE, on_get_protocol_features },
	{ VU_SET_PROTOCOL_FEATURES, SIZE_EXACT, sizeof(uint64_t), FDS_NONE, on_set_protocol_features },
	{ VU_GET_QUEUE_NUM, SIZE_EMPTY, 0, FDS_NONE, on_get_queue_num },
	{ VU_SET_OWNER, SIZE_EXACT, 0, FDS_NONE, on_set_owner },
	{ VU_RESET_OWNER, SIZE_EXACT, 0, FDS_NONE, on_reset_owner },
	{ VU_SET_MEM_TABLE, SIZE_OWN, 0, FDS_OWN, on_set_mem_table },
	{ VU_SET_VRING_NUM, SIZE_EXACT, sizeof(struct vu_vring_state), FDS_NONE, on_set_vring_num },
	{ VU_SET_VRING_ADDR, SIZE_EXACT, sizeof(struct vu_vring_addr), FDS_NONE, on_set_vring_addr },
	{ VU_SET_VRING_BASE, SIZE_EXACT, sizeof(struct vu_vring_state), FDS_NONE, on_set_vring_base },
	{ VU_GET_VRING_BASE, SIZE_EXACT, sizeof(struct vu_vring_state), FDS_NONE, on_get_vring_base },
	{ VU_SET_VRING_KICK, SIZE_OWN, 0, FDS_OWN, on_set_vring_kick },
	{ VU_SET_VRING_CALL, SIZE_OWN, 0, FDS_OWN, on_set_vring_call },
	{ VU_SET_VRING_ERR, SIZE_OWN, 0, FDS_OWN, on_set_vring_err },
	{ VU_SET_VRING_ENABLE, SIZE_EXACT, sizeof(struct vu_vring_state), FDS_NONE, on_set_vring_enable },
	{ VU_GET_CONFIG, SIZE_OWN, 0, FDS_NONE, on_get_config },
	{ VU_SET_CONFIG, SIZE_OWN, 0, FDS_NONE, on_set_config },
	{ VU_SET_LOG_BASE, SIZE_OWN, 0, FDS_NONE, on_dirty_log },
	{ VU_SET_LOG_FD, SIZE_OWN, 0, FDS_OWN, on_dirty_log },
};

static enum outcome dispatch(struct vhost_conn *c)
{
	uint32_t req = c->in.hdr.request;
	enum outcome o = MALFORMED;
	const struct request_rule *rule = NULL;

	for (size_t i = 0; i < sizeof request_rules / sizeof request_rules[0] && !rule; i++)
		if (request_rules[i].request == req)
			rule = &request_rules[i];
	if ((!rule || rule->fds == FDS_NONE) && !no_fds(c, &o))
		return o;
	if (!rule) {
		vhost_user_log(c->vu, "unknown request %u (%u bytes); refused", req, c->in.hdr.size);
		return REFUSED;
	}
	if ((rule->size == SIZE_EMPTY && !size_empty(c, &o)) ||
	    (rule->size == SIZE_EXACT && !size_is(c, rule->bytes, &o)))
		return o;
	return rule->handle(c);
}

static void handle_message(struct vhost_conn *c)
{
	uint32_t flags = c->in.hdr.flags;
	enum outcome o;

	if ((flags & VU_VERSION_MASK) != VU_VERSION) {
		malformed(c, "protocol version %u, expected %u", flags & VU_VERSION_MASK, VU_VERSION);
		conn_close(c);
		return;
	}
	o = dispatch(c);
	close_received_fds(c);
	switch (o) {
	case MALFORMED:
		conn_close(c);
		return;
	case DONE:
	case REFUSED:
		/* REPLY_ACK: the front end asked whether it worked. An unknown
		 * request gets its "no" even without it, or the front end would
		 * wait for an answer forever. */
		if ((flags & VU_FLAG_NEED_REPLY) &&
		    (((c->protocol_features >> PROTOCOL_F_REPLY_ACK) & 1) || o == REFUSED) &&
		    reply_u64(c, c->in.hdr.request, o == DONE ? 0 : 1))
			conn_close(c);
		return;
	case REPLIED:
	case DEFERRED:
		return;
	}
}

static void take_fds(struct vhost_conn *c, struct msghdr *m)
{
	if (m->msg_flags & MSG_CTRUNC)
		c->fds_overflow = true;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof fd, sizeof fd);
			if (c->nfds < VU_MAX_FDS) {
				c->fds[c->nfds++] = fd;
			} else {
				close(fd);
				c->fds_overflow = true;
			}
		}
	}
}

static void conn_readable(void *ctx, uint32_t events)
{
	struct vhost_conn *c = ctx;

	c->refs++; /* handlers may close the connection */
	if (c->waiting_queue >= 0 && (events & (EPOLLHUP | EPOLLERR)))
		conn_close(c);
	while (c->fd >= 0 && c->waiting_queue < 0) {
		size_t want = c->have < VU_HEADER_SIZE ? VU_HEADER_SIZE : VU_HEADER_SIZE + c->in.hdr.size;
		union {
			char buf[CMSG_SPACE(VU_MAX_FDS * sizeof(int))];
			struct cmsghdr align;
		} control;
		struct iovec iov = { c->in.bytes + c->have, want - c->have };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
				    .msg_controllen = sizeof control.buf };
		ssize_t n = recvmsg(c->fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (events & (EPOLLHUP | EPOLLERR))
				conn_close(c);
			break;
		}
		if (n <= 0) {
			if (n < 0)
				vhost_user_log(c->vu, "connection: %s", strerror(errno));
			else if (c->have)
				vhost_user_log(c->vu, "the front end hung up in the middle of a message");
			else
				vhost_user_log(c->vu, "the front end disconnected");
			conn_close(c);
			break;
		}
		take_fds(c, &m);
		c->have += (size_t)n;
		if (c->have == VU_HEADER_SIZE && c->in.hdr.size > VU_MAX_PAYLOAD) {
			vhost_user_log(c->vu, "%s (%u): size %u exceeds the %u-byte limit; closing the connection",
				       request_name(c->in.hdr.request), c->in.hdr.request, c->in.hdr.size,
				       VU_MAX_PAYLOAD);
			conn_close(c);
			break;
		}
		if (c->have >= VU_HEADER_SIZE && c->have == VU_HEADER_SIZE + c->in.hdr.size) {
			handle_message(c);
			c->have = 0;
		}
	}
	conn_unref(c);
}

/* ---- the listening socket ---- */

static void accept_cb(void *ctx, uint32_t events)
{
	struct vhost_user *vu = ctx;
	struct vhost_conn *c;
	int fd;

	(void)events;
	fd = accept4(vu->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (vu->conn || vu->quiescing) {
		vhost_user_log(vu, "refused a front end: %s", vu->quiescing ? "shutting down"
							 : "another one is connected");
		close(fd);
		return;
	}
	if (!(c = calloc(1, sizeof *c))) {
		close(fd);
		return;
	}
	c->vu = vu;
	c->refs = 1;
	c->fd = fd;
	c->waiting_queue = -1;
	for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++) {
		c->q[i].conn = c;
		c->q[i].kick_fd = c->q[i].call_fd = c->q[i].err_fd = -1;
		c->q[i].vq.index = i;
	}
	if (loop_watch(vu->loop, fd, EPOLLIN, conn_readable, c) != 0) {
		vhost_user_log(vu, "cannot watch a new connection");
		close(fd);
		free(c);
		return;
	}
	vu->conn = c;
	vu->connections++;
}

struct vhost_user *vhost_user_start(struct isolde_loop *loop, const char *log_prefix, const char *path,
				    enum isolde_notify_mode poll, const struct vhost_device_ops *ops,
				    void *dev, char *err, size_t errlen)
{
	struct vhost_user *vu = calloc(1, sizeof *vu);
	char why[256];

	if (!vu) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (strlen(path) >= sizeof vu->path) {
		snprintf(err, errlen, "a socket path must be shorter than %zu bytes", sizeof vu->path);
		free(vu);
		return NULL;
	}
	memcpy(vu->path, path, strlen(path) + 1);
	vu->loop = loop;
	snprintf(vu->log_prefix, sizeof vu->log_prefix, "%s", log_prefix);
	vu->log_last_ns = isolde_now_ns();
	vu->log_credit_ns = LOG_BURST * LOG_LINE_NS;
	vu->poll = poll;
	vu->ops = ops;
	vu->dev = dev;
	vu->listen_fd = unix_listen(path, why, sizeof why);
	if (vu->listen_fd < 0) {
		snprintf(err, errlen, "%s", why);
		free(vu);
		return NULL;
	}
	if (loop_watch(loop, vu->listen_fd, EPOLLIN, accept_cb, vu) != 0) {
		snprintf(err, errlen, "cannot watch the socket");
		close(vu->listen_fd);
		unlink(path);
		free(vu);
		return NULL;
	}
	return vu;
}

void vhost_user_quiesce(struct vhost_user *vu)
{
	vu->quiescing = true;
}

void vhost_user_stop(struct vhost_user *vu)
{
	if (vu->conn)
		conn_close(vu->conn);
	loop_unwatch(vu->loop, vu->listen_fd);
	close(vu->listen_fd);
	unlink(vu->path);
	/* A connection with requests the server gave up draining stays
	 * allocated, and with it vu, which it points to. */
	if (vu->inflight == 0)
		free(vu);
}

bool vhost_user_connected(const struct vhost_user *vu)
{
	return vu->conn != NULL;
}

void vhost_user_describe(struct vhost_user *vu, FILE *f)
{
	unsigned running = 0;

	if (vu->conn)
		for (unsigned i = 0; i < VHOST_USER_MAX_QUEUES; i++)
			running += slot_running(&vu->conn->q[i]);
	fprintf(f, "{\"kind\": \"%s\", \"socket\": ", vu->ops->kind);
	json_write_string(f, vu->path);
	fprintf(f, ", \"poll\": \"%s\", \"connected\": %s, \"connections\": %llu, \"queues_running\": %u, "
		"\"requests\": %llu, \"inflight\": %llu}",
		isolde_notify_mode_name(vu->poll), vu->conn ? "true" : "false", vu->connections, running,
		vu->requests, vu->inflight);
}
