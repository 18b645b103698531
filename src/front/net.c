// SPDX-License-Identifier: MIT
/*
 * The network front end (isolde/net.h): a TX and an RX ring to a network
 * driver domain, a private record of every buffer posted, and the same
 * recovery as a block device (recovery.c).
 *
 * Buffer b of each ring is fixed: TX buffer b is grant b at data offset
 * b * BUF_SIZE, RX buffer b grant slots + b after the TX buffers. A request's
 * id is its sequence number << 16 | b, so an answer names its buffer and the
 * check against the private record (busy, same sequence) is one lookup.
 */
#define _GNU_SOURCE
#include "isolde/net.h"
#include "isolde/domain.h"
#include "isolde/supervisor.h"

#include "error.h"
#include "recovery.h"
#include "../domain/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <limits.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define ID_BUFFER_BITS 16
#define ID_SEQ_MASK ((UINT64_C(1) << (64 - ID_BUFFER_BITS)) - 1)
#define WAIT_SLICE_NS (100 * 1000000LL)

_Static_assert(sizeof(struct virtio_net_hdr) == ISOLDE_TAP_VNET_HDR, "vnet header");
_Static_assert(ISOLDE_NET_MAX_RING <= (1u << ID_BUFFER_BITS), "buffer fits the id");

enum rx_state {
	RX_IDLE,   /* ours, waiting to be posted */
	RX_POSTED, /* the driver's to fill */
	RX_READY,  /* filled and checked, waiting for the application */
};

struct tx_entry {
	uint64_t seq;
	uint64_t posted_ns;       /* given to the current driver */
	uint32_t len;
	struct isolde_netif_offload off;
	bool busy;
};

struct rx_entry {
	uint64_t seq;
	uint32_t len;
	struct isolde_netif_offload off;
	enum rx_state state;
};

struct isolde_net {
	char ifname[16];     /* IFNAMSIZ */
	char netns[72];
	int tap_fd;               /* held here: every generation gets a copy */
	uint32_t features;
	unsigned slots;
	uint32_t hang_ms;
	struct isolde_policy policy;
	struct isolde_domain domain;
	struct isolde_front_ring tx, rx;
	struct isolde_waiter waiter;
	struct isolde_supervisor supervisor;
	struct isolde_recovery rec;

	struct tx_entry *txe;
	uint32_t *tx_free;        /* a stack of free TX buffers */
	unsigned ntx_free;
	uint64_t tx_seq;
	struct rx_entry *rxe;
	uint32_t *rx_ready;       /* a FIFO of RX_READY buffers, in arrival order */
	unsigned rx_head, rx_count;
	uint32_t *rx_idle;        /* RX_IDLE buffers to post at the next push */
	unsigned nrx_idle;
	uint64_t rx_seq;

	uint64_t heartbeat_seen;
	uint64_t heartbeat_changed_ns;
	uint64_t rx_frames_seen;      /* stats.rx_frames when the wire last looked idle */
	uint64_t rx_stuck_since_ns;   /* frames wait on the TAP, buffers posted, none filled */
	uint64_t rx_probed_ns;        /* the TAP last looked at (a system call: not every poll) */
	struct isolde_net_stats stats;
};

static bool running(const struct isolde_net *net)
{
	return net->rec.state == ISOLDE_DEV_RUNNING;
}

static unsigned tx_inflight(const struct isolde_net *net)
{
	return net->slots - net->ntx_free;
}

static uint64_t tx_data(const struct isolde_net *net, uint32_t b)
{
	(void)net;
	return (uint64_t)b * ISOLDE_NETIF_BUF_SIZE;
}

static uint64_t rx_data(const struct isolde_net *net, uint32_t b)
{
	return (uint64_t)(net->slots + b) * ISOLDE_NETIF_BUF_SIZE;
}

static void violation(struct isolde_net *net, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(struct isolde_net *net, const char *fmt, ...)
{
	char why[300];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	net->stats.protocol_violations++;
	isolde_recovery_fail(&net->rec, ISOLDE_FAIL_PROTOCOL, "(pid %d) broke the network protocol: %s",
			     (int)net->domain.pid, why);
}

/* ---- posting ---- */

static void post_tx(struct isolde_net *net, uint32_t b)
{
	struct tx_entry *e = &net->txe[b];
	struct isolde_netif_tx_request req = {
		.id = (e->seq << ID_BUFFER_BITS) | b, .gref = b, .length = e->len, .offload = e->off,
	};

	e->posted_ns = isolde_now_ns();
	isolde_grant_set(net->domain.grants, b, tx_data(net, b), e->len, ISOLDE_GRANT_DRIVER_READS);
	memcpy(isolde_front_next_request(&net->tx), &req, sizeof req);
	net->tx.req_prod_pvt++;
}

static void post_rx(struct isolde_net *net, uint32_t b)
{
	struct rx_entry *e = &net->rxe[b];
	struct isolde_netif_rx_request req = { .id = (e->seq << ID_BUFFER_BITS) | b, .gref = net->slots + b };

	e->state = RX_POSTED;
	isolde_grant_set(net->domain.grants, net->slots + b, rx_data(net, b), ISOLDE_NETIF_BUF_SIZE,
			 ISOLDE_GRANT_DRIVER_WRITES);
	memcpy(isolde_front_next_request(&net->rx), &req, sizeof req);
	net->rx.req_prod_pvt++;
}

void isolde_net_push(struct isolde_net *net)
{
	if (!running(net))
		return;
	for (unsigned i = 0; i < net->nrx_idle; i++) {
		net->rxe[net->rx_idle[i]].seq = ++net->rx_seq & ID_SEQ_MASK;
		post_rx(net, net->rx_idle[i]);
	}
	net->nrx_idle = 0;
	bool tx = isolde_front_push_requests(&net->tx);
	bool rx = isolde_front_push_requests(&net->rx);
	isolde_waiter_signal(&net->waiter, tx || rx);
}

/* ---- sending ---- */

static int check_sendable(struct isolde_net *net)
{
	if (net->rec.failed)
		return -EIO;
	return net->ntx_free ? 0 : -EAGAIN;
}

/* Queue TX buffer b, filled with len bytes, for the driver. */
static void queue_tx(struct isolde_net *net, uint32_t b, uint32_t len, const struct isolde_netif_offload *off)
{
	struct tx_entry *e = &net->txe[b];

	e->seq = ++net->tx_seq & ID_SEQ_MASK;
	e->len = len;
	e->off = *off;
	e->busy = true;
	net->ntx_free--;
	/* A driver that is down gets it with the replay. */
	if (running(net))
		post_tx(net, b);
}

int isolde_net_send(struct isolde_net *net, const void *frame, size_t len, const struct isolde_netif_offload *off)
{
	static const struct isolde_netif_offload none;
	int r = check_sendable(net);

	if (r)
		return r;
	if (len < ISOLDE_NETIF_MIN_FRAME || len > ISOLDE_NETIF_MAX_FRAME)
		return -EMSGSIZE;
	if (!off)
		off = &none;
	if (isolde_netif_offload_check(off, (uint32_t)len, net->features))
		return -EINVAL;
	uint32_t b = net->tx_free[net->ntx_free - 1];
	memcpy(net->domain.data + tx_data(net, b), frame, len);
	queue_tx(net, b, (uint32_t)len, off);
	return 0;
}

static void offload_from_vnet(struct isolde_netif_offload *o, const struct virtio_net_hdr *h)
{
	*o = (struct isolde_netif_offload){ .flags = h->flags, .gso_type = h->gso_type, .hdr_len = h->hdr_len,
					    .gso_size = h->gso_size, .csum_start = h->csum_start,
					    .csum_offset = h->csum_offset };
}

static void vnet_from_offload(struct virtio_net_hdr *h, const struct isolde_netif_offload *o)
{
	*h = (struct virtio_net_hdr){ .flags = o->flags, .gso_type = o->gso_type, .hdr_len = o->hdr_len,
				      .gso_size = o->gso_size, .csum_start = o->csum_start,
				      .csum_offset = o->csum_offset };
}

int isolde_net_send_from_fd(struct isolde_net *net, int fd)
{
	int r = check_sendable(net);

	if (r)
		return r;
	uint32_t b = net->tx_free[net->ntx_free - 1];
	struct virtio_net_hdr h;
	struct iovec iov[2] = { { &h, sizeof h }, { net->domain.data + tx_data(net, b), ISOLDE_NETIF_BUF_SIZE } };
	ssize_t n = readv(fd, iov, 2);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	struct isolde_netif_offload off;
	offload_from_vnet(&off, &h);
	if ((size_t)n < sizeof h || isolde_netif_offload_check(&off, (uint32_t)((size_t)n - sizeof h), net->features)) {
		net->stats.tx_refused++;
		return 0;
	}
	queue_tx(net, b, (uint32_t)((size_t)n - sizeof h), &off);
	return 1;
}

/* ---- answers ---- */

/* Answers the driver published on ring r and the front end has not taken;
 * more than it was asked for is a violation (-1). */
static int64_t answers_waiting(struct isolde_net *net, struct isolde_front_ring *r, const char *ring)
{
	uint32_t prod;
	int64_t n = isolde_front_unconsumed_responses(r, &prod);

	if (n < 0)
		violation(net, "%s rsp_prod %u is beyond the %u requests posted", ring, prod, r->req_prod_pvt);
	return n;
}

/* The next answer, copied once out of shared memory. */
static void take_answer(struct isolde_front_ring *r, void *answer, size_t size)
{
	isolde_copy_from_shared(answer, isolde_ring_slot(r->sring, r->nslots, r->slot_size, r->rsp_cons), size);
	r->rsp_cons++;
}

static void consume_tx(struct isolde_net *net)
{
	int64_t n = answers_waiting(net, &net->tx, "TX");

	for (int64_t i = 0; i < n && running(net); i++) {
		struct isolde_netif_tx_response rsp;
		take_answer(&net->tx, &rsp, sizeof rsp);
		uint32_t b = (uint32_t)(rsp.id & ((1u << ID_BUFFER_BITS) - 1));
		if (b >= net->slots || !net->txe[b].busy || net->txe[b].seq != rsp.id >> ID_BUFFER_BITS) {
			violation(net, "TX answer with id %#llx, which names no frame in flight",
				  (unsigned long long)rsp.id);
			return;
		}
		if (rsp.status != ISOLDE_NETIF_S_OK && rsp.status != ISOLDE_NETIF_S_ERROR) {
			violation(net, "TX answer with status %u to a well-formed frame", rsp.status);
			return;
		}
		isolde_grant_revoke(net->domain.grants, b);
		net->txe[b].busy = false;
		net->tx_free[net->ntx_free++] = b;
		if (rsp.status == ISOLDE_NETIF_S_OK)
			net->stats.tx_frames++;
		else
			net->stats.tx_errors++;
		isolde_recovery_completed(&net->rec);
	}
}

static void consume_rx(struct isolde_net *net)
{
	int64_t n = answers_waiting(net, &net->rx, "RX");

	for (int64_t i = 0; i < n && running(net); i++) {
		struct isolde_netif_rx_response rsp;
		take_answer(&net->rx, &rsp, sizeof rsp);
		uint32_t b = (uint32_t)(rsp.id & ((1u << ID_BUFFER_BITS) - 1));
		struct rx_entry *e = b < net->slots ? &net->rxe[b] : NULL;
		if (!e || e->state != RX_POSTED || e->seq != rsp.id >> ID_BUFFER_BITS) {
			violation(net, "RX answer with id %#llx, which names no buffer posted",
				  (unsigned long long)rsp.id);
			return;
		}
		if (rsp.status != ISOLDE_NETIF_S_OK) {
			violation(net, "RX answer with status %u to a well-formed buffer", rsp.status);
			return;
		}
		const char *bad = rsp.length > ISOLDE_NETIF_BUF_SIZE ? "length"
				  : isolde_netif_offload_check(&rsp.offload, rsp.length, net->features);
		if (bad) {
			violation(net, "RX frame of %u bytes with a bad %s", rsp.length, bad);
			return;
		}
		isolde_grant_revoke(net->domain.grants, net->slots + b);
		e->len = rsp.length;
		e->off = rsp.offload;
		e->state = RX_READY;
		net->rx_ready[(net->rx_head + net->rx_count++) % net->slots] = b;
		net->stats.rx_frames++;
		isolde_recovery_completed(&net->rec);
	}
}

/* ---- receiving ---- */

static int next_ready(struct isolde_net *net, uint32_t *b)
{
	if (!net->rx_count)
		return net->rec.failed ? -EIO : -EAGAIN;
	*b = net->rx_ready[net->rx_head];
	net->rx_head = (net->rx_head + 1) % net->slots;
	net->rx_count--;
	return 0;
}

static void recycle_rx(struct isolde_net *net, uint32_t b)
{
	net->rxe[b].state = RX_IDLE;
	net->rx_idle[net->nrx_idle++] = b;
}

int isolde_net_receive(struct isolde_net *net, void *buf, size_t cap, struct isolde_netif_offload *off)
{
	uint32_t b;
	int r = next_ready(net, &b);

	if (r)
		return r;
	const struct rx_entry *e = &net->rxe[b];
	memcpy(buf, net->domain.data + rx_data(net, b), e->len < cap ? e->len : cap);
	if (off)
		*off = e->off;
	int len = (int)e->len;
	recycle_rx(net, b);
	return len;
}

int isolde_net_peek(const struct isolde_net *net, struct isolde_netif_offload *off)
{
	if (!net->rx_count)
		return net->rec.failed ? -EIO : -EAGAIN;
	const struct rx_entry *e = &net->rxe[net->rx_ready[net->rx_head]];
	if (off)
		*off = e->off;
	return (int)e->len;
}

/* As for receive_to_fd: one copy, from the data area into the caller's
 * segments; the front end never interprets the bytes. */
int isolde_net_receive_iov(struct isolde_net *net, const struct iovec *iov, unsigned iovcnt, size_t skip)
{
	uint32_t b;
	int r = next_ready(net, &b);

	if (r)
		return r;
	const struct rx_entry *e = &net->rxe[b];
	const uint8_t *src = net->domain.data + rx_data(net, b);
	size_t left = e->len;
	for (unsigned i = 0; i < iovcnt && left; i++) {
		size_t n = iov[i].iov_len;
		if (skip >= n) {
			skip -= n;
			continue;
		}
		n -= skip;
		if (n > left)
			n = left;
		memcpy((uint8_t *)iov[i].iov_base + skip, src, n);
		src += n;
		left -= n;
		skip = 0;
	}
	int len = (int)e->len;
	recycle_rx(net, b);
	return len;
}

/*
 * The frame goes from the data area to fd in one writev, the kernel's copy:
 * the front end never reads or interprets its bytes, so a driver changing
 * them meanwhile changes only what it could have received from the wire.
 * The header is built from the checked private copy.
 */
int isolde_net_receive_to_fd(struct isolde_net *net, int fd)
{
	uint32_t b;
	int r = next_ready(net, &b);

	if (r)
		return r;
	const struct rx_entry *e = &net->rxe[b];
	struct virtio_net_hdr h;
	vnet_from_offload(&h, &e->off);
	struct iovec iov[2] = { { &h, sizeof h }, { net->domain.data + rx_data(net, b), e->len } };
	ssize_t n = writev(fd, iov, 2);
	int len = (int)e->len;
	recycle_rx(net, b);
	if (n < 0) {
		net->stats.rx_dropped++;
		return -errno;
	}
	return len;
}

/* ---- supervision ---- */

/*
 * A hang: frames wait to be sent and the driver's heartbeat has not moved
 * for hang_ms. The heartbeat is the driver's word, so a frame left
 * unanswered ten times as long counts as a hang too, whatever the
 * heartbeat says (as io.c's check_hang for a block device): a driver that
 * beats and never answers would otherwise hold every TX buffer for ever.
 * The same for receiving: frames waiting on the TAP (the front end's own fd
 * says so, without reading them) while RX buffers are posted and none is
 * filled for that long is a driver that stopped reading the wire, not a
 * quiet wire.
 */
static void check_rx_stuck(struct isolde_net *net, uint64_t now, uint64_t limit)
{
	unsigned posted = net->slots - net->nrx_idle - net->rx_count;
	struct pollfd p = { .fd = net->tap_fd, .events = POLLIN };

	if (net->stats.rx_frames == net->rx_frames_seen && posted && now - net->rx_probed_ns < limit / 8)
		return;
	net->rx_probed_ns = now;
	if (net->stats.rx_frames != net->rx_frames_seen || posted == 0 || poll(&p, 1, 0) <= 0) {
		net->rx_frames_seen = net->stats.rx_frames;
		net->rx_stuck_since_ns = now;
		return;
	}
	if (now - net->rx_stuck_since_ns >= 10 * limit)
		isolde_recovery_fail(&net->rec, ISOLDE_FAIL_HANG, "(pid %d) left frames on the wire unread for %u ms "
				     "with %u receive buffers posted", (int)net->domain.pid, 10 * net->hang_ms, posted);
}

static void check_hang(struct isolde_net *net, uint64_t now)
{
	uint64_t hb = __atomic_load_n(&net->domain.header->heartbeat, __ATOMIC_RELAXED);
	uint64_t limit = (uint64_t)net->hang_ms * 1000000;

	if (hb != net->heartbeat_seen || tx_inflight(net) == 0) {
		net->heartbeat_seen = hb;
		net->heartbeat_changed_ns = now;
	}
	check_rx_stuck(net, now, limit);
	if (tx_inflight(net) == 0 || !running(net))
		return;
	if (now - net->heartbeat_changed_ns > limit) {
		isolde_recovery_fail(&net->rec, ISOLDE_FAIL_HANG, "(pid %d) made no progress for %u ms with %u "
				     "frames to send", (int)net->domain.pid, net->hang_ms, tx_inflight(net));
		return;
	}
	for (unsigned b = 0; b < net->slots; b++) {
		const struct tx_entry *e = &net->txe[b];
		if (e->busy && now - e->posted_ns >= 10 * limit) {
			isolde_recovery_fail(&net->rec, ISOLDE_FAIL_HANG, "(pid %d) left a frame unanswered for %u ms",
					     (int)net->domain.pid, 10 * net->hang_ms);
			return;
		}
	}
}

static void watch_fired(struct isolde_net *net)
{
	isolde_domain_service(&net->domain);
	if (net->domain.pid > 0 && !isolde_domain_reap(&net->domain))
		return;
	net->rec.death_seen_ns = isolde_now_ns();
	consume_tx(net);
	consume_rx(net);
	if (!running(net))
		return;
	const struct isolde_exit *x = &net->domain.last_exit;
	isolde_recovery_fail(&net->rec, x->by_policy ? ISOLDE_FAIL_POLICY : isolde_classify_exit(x->signaled, x->code),
			     "%s", x->text);
}

static bool watch_readable(const struct isolde_net *net)
{
	struct pollfd p = { .fd = net->domain.watch_fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

static void attend(struct isolde_net *net, bool watch_ready)
{
	if (running(net)) {
		if (watch_ready)
			watch_fired(net);
		if (running(net))
			consume_tx(net);
		if (running(net))
			consume_rx(net);
		if (running(net))
			check_hang(net, isolde_now_ns());
	}
	if (!running(net))
		isolde_recovery_step(&net->rec);
	if (running(net))
		isolde_net_push(net);
}

int isolde_net_poll(struct isolde_net *net)
{
	isolde_waiter_drain(&net->waiter, net->domain.call_fd);
	attend(net, watch_readable(net));
	if (net->rec.failed && !net->rx_count)
		return -EIO;
	return (int)net->rx_count;
}

static bool answers_pending(void *ctx)
{
	struct isolde_net *net = ctx;
	uint32_t prod;
	return isolde_front_unconsumed_responses(&net->tx, &prod) != 0 ||
	       isolde_front_unconsumed_responses(&net->rx, &prod) != 0;
}

static bool answers_arm_check(void *ctx)
{
	struct isolde_net *net = ctx;
	bool tx = isolde_front_final_check_responses(&net->tx);
	bool rx = isolde_front_final_check_responses(&net->rx);
	return tx || rx;
}

static const struct isolde_wait_ops answer_wait = { answers_pending, answers_arm_check };

int isolde_net_wait(struct isolde_net *net, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : isolde_now_ns() + (uint64_t)timeout_ms * 1000000;

	for (;;) {
		int r = isolde_net_poll(net);
		if (r != 0 || net->rec.failed)
			return r;
		uint64_t now = isolde_now_ns();
		if (now >= deadline)
			return 0;
		int64_t slice = WAIT_SLICE_NS;
		if (deadline - now < (uint64_t)slice)
			slice = (int64_t)(deadline - now);
		if (!running(net)) {
			int ms = isolde_recovery_timeout_ms(&net->rec);
			int slice_ms = (int)((slice + 999999) / 1000000);
			struct pollfd p = { .fd = net->domain.watch_fd, .events = POLLIN };
			poll(&p, 1, ms < 0 || ms > slice_ms ? slice_ms : ms);
			continue;
		}
		if (isolde_wait(&net->waiter, &answer_wait, net, slice) == ISOLDE_WAIT_ERROR)
			return -errno;
	}
}

void isolde_net_event_fds(const struct isolde_net *net, int *call_fd, int *watch_fd)
{
	*call_fd = net->domain.call_fd;
	*watch_fd = net->domain.watch_fd;
}

bool isolde_net_prepare_sleep(struct isolde_net *net)
{
	if (net->rx_count)
		return false;
	if (!running(net))
		return true;
	if (answers_pending(net))
		return false;
	/* A spinning driver never calls: frames are only seen by looking. */
	if (net->waiter.mode == ISOLDE_NOTIFY_SPIN)
		return false;
	return !answers_arm_check(net);
}

int isolde_net_timeout_ms(const struct isolde_net *net)
{
	if (!running(net))
		return isolde_recovery_timeout_ms(&net->rec);
	/* Hang detection needs a look now and then while frames wait. */
	return tx_inflight(net) ? (int)(WAIT_SLICE_NS / 1000000) : -1;
}

/* ---- restart ---- */

static int by_tx_sequence(const void *a, const void *b, void *ctx)
{
	const struct isolde_net *net = ctx;
	uint64_t x = net->txe[*(const uint32_t *)a].seq, y = net->txe[*(const uint32_t *)b].seq;
	return x < y ? -1 : x > y;
}

/* A fresh generation: both rings afresh, every frame still to be sent again
 * in the order it was queued, every empty buffer posted again. */
static unsigned resume(void *owner)
{
	struct isolde_net *net = owner;
	uint32_t order[ISOLDE_NET_MAX_RING];
	unsigned n = 0;

	isolde_front_ring_attach(&net->tx, net->domain.sring, net->slots, ISOLDE_NETIF_SLOT_SIZE);
	isolde_front_ring_attach(&net->rx, net->domain.rx_sring, net->slots, ISOLDE_NETIF_SLOT_SIZE);
	net->tx.peer_sleeps = net->rx.peer_sleeps = net->waiter.mode != ISOLDE_NOTIFY_SPIN;
	net->waiter.spin_ns = net->waiter.spin_min_ns;
	net->heartbeat_seen = 0;
	net->heartbeat_changed_ns = isolde_now_ns();
	net->rx_stuck_since_ns = net->heartbeat_changed_ns;
	for (uint32_t b = 0; b < net->slots; b++)
		if (net->txe[b].busy)
			order[n++] = b;
	qsort_r(order, n, sizeof order[0], by_tx_sequence, net);
	for (unsigned k = 0; k < n; k++)
		post_tx(net, order[k]);
	net->stats.tx_replayed += n;
	for (uint32_t b = 0; b < net->slots; b++)
		if (net->rxe[b].state == RX_POSTED)
			recycle_rx(net, b);
	isolde_net_push(net);
	return n;
}

static const struct isolde_recovery_ops net_recovery_ops = { .resume = resume };

/* ---- open, close ---- */

static int dup_tap(void *ctx, char *err, size_t errlen)
{
	struct isolde_net *net = ctx;
	int fd = fcntl(net->tap_fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		isolde_fail(err, errlen, "cannot copy the TAP fd of %s: %s", net->ifname, strerror(errno));
	return fd;
}

static int load_policy(struct isolde_net *net, const struct isolde_net_config *cfg, char *err, size_t errlen)
{
	const char *slash = strrchr(cfg->driver, '/');
	const char *driver = slash ? slash + 1 : cfg->driver;
	char path[PATH_MAX];

	if (isolde_driver_resolve(cfg->driver, path, sizeof path, err, errlen))
		return -1;
	if (isolde_policy_load_for(&net->policy, driver, cfg->policy, err, errlen))
		return -1;
	snprintf(path, sizeof path, "%s", net->policy.source);
	if (net->policy.domain != ISOLDE_DOMAIN_PROCESS)
		return isolde_fail(err, errlen, "policy %s: a network driver runs in a process domain, not 'domain %s'",
				   path, isolde_domain_kind_name(net->policy.domain));
	if (!net->policy.device_writable)
		return isolde_fail(err, errlen, "policy %s allows driver %s read-only access; a network device is "
				   "read and written", path, driver);
	return 0;
}

struct isolde_net *isolde_net_open(const struct isolde_net_config *cfg, char *err, size_t errlen)
{
	if (!cfg->driver || !*cfg->driver) {
		isolde_fail(err, errlen, "no driver given");
		return NULL;
	}
	if (isolde_tap_check_ifname(cfg->ifname, "ifname", err, errlen) ||
	    isolde_tap_check_netns(cfg->netns, "netns", err, errlen))
		return NULL;
	if (!isolde_ring_order_valid(cfg->ring) || cfg->ring > ISOLDE_NET_MAX_RING) {
		isolde_fail(err, errlen, "ring %u is not a power of two in 2..%u", cfg->ring, ISOLDE_NET_MAX_RING);
		return NULL;
	}
	if ((unsigned)cfg->notify > ISOLDE_NOTIFY_HYBRID) {
		isolde_fail(err, errlen, "unknown notify mode %d", (int)cfg->notify);
		return NULL;
	}
	struct isolde_net *net = calloc(1, sizeof *net);
	if (!net) {
		isolde_fail(err, errlen, "out of memory");
		return NULL;
	}
	net->tap_fd = -1;
	net->domain.shm_fd = net->domain.kick_fd = net->domain.call_fd = net->domain.pidfd = -1;
	net->domain.listener_fd = net->domain.watch_fd = net->domain.binary_fd = -1;
	snprintf(net->ifname, sizeof net->ifname, "%s", cfg->ifname);
	snprintf(net->netns, sizeof net->netns, "%s", cfg->netns ? cfg->netns : "");
	net->slots = cfg->ring;
	net->features = cfg->offload ? ISOLDE_NETIF_F_ALL : 0;
	if (load_policy(net, cfg, err, errlen))
		goto fail;
	net->hang_ms = cfg->timeout_ms ? cfg->timeout_ms : net->policy.heartbeat_ms;
	if (isolde_supervisor_init(&net->supervisor, net->policy.restart_max, net->policy.restart_window_s,
				   net->policy.crash_loop_max, net->policy.progress_min)) {
		isolde_fail(err, errlen, "out of memory");
		goto fail;
	}
	net->rec = (struct isolde_recovery){ .domain = &net->domain, .supervisor = &net->supervisor,
					     .policy = &net->policy, .name = net->ifname, .unit = "frames",
					     .ops = &net_recovery_ops, .owner = net };
	net->txe = calloc(net->slots, sizeof *net->txe);
	net->tx_free = calloc(net->slots, sizeof *net->tx_free);
	net->rxe = calloc(net->slots, sizeof *net->rxe);
	net->rx_ready = calloc(net->slots, sizeof *net->rx_ready);
	net->rx_idle = calloc(net->slots, sizeof *net->rx_idle);
	if (!net->txe || !net->tx_free || !net->rxe || !net->rx_ready || !net->rx_idle) {
		isolde_fail(err, errlen, "out of memory");
		goto fail;
	}
	for (uint32_t b = 0; b < net->slots; b++) {
		net->tx_free[net->ntx_free++] = net->slots - 1 - b;
		net->rx_idle[net->nrx_idle++] = b;
	}
	net->tap_fd = isolde_tap_open(net->ifname, net->netns, net->features, cfg->mtu, err, errlen);
	if (net->tap_fd < 0)
		goto fail;
	struct isolde_domain_params params = {
		.driver = cfg->driver,
		.driver_args = cfg->driver_args,
		.open_device = dup_tap,
		.open_device_ctx = net,
		.ring_slots = net->slots,
		.notify = cfg->notify,
		.device_class = ISOLDE_CLASS_NET,
		.net_features = net->features,
		.mtu = cfg->mtu ? cfg->mtu : ISOLDE_NETIF_DEFAULT_MTU,
		.policy = &net->policy,
	};
	if (isolde_domain_create(&net->domain, &params, err, errlen) ||
	    isolde_domain_start(&net->domain, err, errlen))
		goto fail;
	isolde_waiter_init(&net->waiter, cfg->notify, net->domain.call_fd, net->domain.kick_fd, net->domain.watch_fd,
			   ISOLDE_HYBRID_SPIN_MIN_NS, ISOLDE_HYBRID_SPIN_MAX_NS);
	resume(net);
	return net;
fail:
	isolde_net_close(net);
	return NULL;
}

void isolde_net_close(struct isolde_net *net)
{
	if (!net)
		return;
	if (!net->rec.failed && net->domain.pid > 0)
		isolde_domain_stop(&net->domain, ISOLDE_DRIVER_STOP_MS);
	isolde_domain_destroy(&net->domain);
	if (net->tap_fd >= 0)
		close(net->tap_fd);
	isolde_supervisor_fini(&net->supervisor);
	free(net->txe);
	free(net->tx_free);
	free(net->rxe);
	free(net->rx_ready);
	free(net->rx_idle);
	free(net);
}

unsigned isolde_net_tx_free(const struct isolde_net *net) { return net->ntx_free; }
unsigned isolde_net_rx_ready(const struct isolde_net *net) { return net->rx_count; }
bool isolde_net_failed(const struct isolde_net *net) { return net->rec.failed; }
const char *isolde_net_error(const struct isolde_net *net) { return net->rec.error; }
const char *isolde_net_state(const struct isolde_net *net) { return isolde_dev_state_name(net->rec.state); }
pid_t isolde_net_driver_pid(const struct isolde_net *net) { return net->domain.pid; }
uint32_t isolde_net_generation(const struct isolde_net *net) { return net->domain.generation; }
uint32_t isolde_net_features(const struct isolde_net *net) { return net->features; }
const char *isolde_net_ifname(const struct isolde_net *net) { return net->ifname; }
const struct isolde_enforcement *isolde_net_enforcement(const struct isolde_net *net) { return &net->domain.applied; }

const struct isolde_supervisor_stats *isolde_net_supervisor_stats(const struct isolde_net *net)
{
	return &net->supervisor.stats;
}

void isolde_net_set_event_handler(struct isolde_net *net, isolde_blk_event_fn fn, void *ctx)
{
	net->rec.on_event = fn;
	net->rec.on_event_ctx = ctx;
}

void isolde_net_get_stats(const struct isolde_net *net, struct isolde_net_stats *st)
{
	*st = net->stats;
	st->kicks = net->waiter.signals_sent;
	st->calls = net->waiter.signals_received;
	st->denials = net->domain.denials;
	memcpy(st->denials_by_class, net->domain.denials_by_class, sizeof st->denials_by_class);
}
