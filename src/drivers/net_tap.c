// SPDX-License-Identifier: MIT
/*
 * net-tap: a network driver over a TAP device (isolde/netif.h). The launcher
 * opened the TAP (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking, with the
 * offloads of net_features) and handed it over as fd 6; the driver only reads
 * and writes frames on it, each behind a virtio_net_hdr, so its policy needs
 * no system call beyond 'base': no ioctl, no fcntl, no socket, no open.
 *
 * One thread. A pass of the service loop sends up to NET_TAP_BATCH frames the
 * front end queued on the TX ring and receives up to NET_TAP_BATCH frames
 * into the buffers it posted on the RX ring, so that neither direction
 * starves the other and the heart keeps beating under load.
 */
#define _GNU_SOURCE
#include "net_tap.h"

#include <errno.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define NET_TAP_BATCH 64u
/* An idle driver still beats its heart this often, so that the front end's
 * hang detection never mistakes quiet for a hang. */
#define NET_TAP_BEAT_NS (100 * 1000000ll)
/* While it holds an RX buffer, a spinning wait polls the TAP this often: a
 * frame must not wait the default millisecond. */
#define NET_TAP_WATCH_SPIN_NS 5000u
#define NET_TAP_NOTE_EVERY_NS (10 * 1000000000ull)

_Static_assert(sizeof(struct virtio_net_hdr) == 10, "the TAP's vnet header size");

static void note(struct net_tap *nt, struct net_tap_note *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void note(struct net_tap *nt, struct net_tap_note *n, const char *fmt, ...)
{
	uint64_t now = isolde_now_ns();
	char line[300];
	va_list ap;

	if (n->next_ns && now < n->next_ns) {
		n->suppressed++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n->suppressed)
		isolde_driver_log(&nt->drv, "%s (and %llu more since the last report)", line,
				  (unsigned long long)n->suppressed);
	else
		isolde_driver_log(&nt->drv, "%s", line);
	n->suppressed = 0;
	n->next_ns = now + NET_TAP_NOTE_EVERY_NS;
}

static void count_answer(struct net_tap *nt)
{
	struct isolde_driver *drv = &nt->drv;

	/* Statistics for people, as in the block backend: plain stores. */
	__atomic_store_n(&drv->header->requests_done, ++drv->requests_done, __ATOMIC_RELAXED);
}

/* Each answer is published at once (a spinning front end sees it without
 * waiting for the pass to end); the front end is called once per pass. */
static void publish(struct net_tap *nt, struct isolde_back_ring *r)
{
	if (isolde_back_push_responses(r))
		nt->notify = true;
}

/* ---- TX ---- */

static void answer_tx(struct net_tap *nt, uint64_t id, uint8_t status)
{
	struct isolde_back_ring *r = &nt->drv.ring;
	struct isolde_netif_tx_response rsp;
	unsigned times = 1;

	memset(&rsp, 0, sizeof rsp);
	rsp.id = id;
	rsp.status = status;
	if (nt->hooks->tx_answer)
		times = nt->hooks->tx_answer(nt, &rsp);
	while (times--) {
		memcpy(isolde_back_next_response(r), &rsp, sizeof rsp);
		r->rsp_prod_pvt++;
		publish(nt, r);
	}
	count_answer(nt);
}

static uint8_t send_frame(struct net_tap *nt, const struct isolde_netif_tx_request *req, unsigned char *frame)
{
	/* Built from the private copy of the request: what the kernel is told
	 * is what was checked. */
	struct virtio_net_hdr h = {
		.flags = req->offload.flags,
		.gso_type = req->offload.gso_type,
		.hdr_len = req->offload.hdr_len,
		.gso_size = req->offload.gso_size,
		.csum_start = req->offload.csum_start,
		.csum_offset = req->offload.csum_offset,
	};
	struct iovec iov[2] = { { &h, sizeof h }, { frame, req->length } };
	ssize_t n;

	do
		n = writev(nt->drv.device_fd, iov, 2);
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)(sizeof h + req->length))
		return ISOLDE_NETIF_S_OK;
	/* The interface is down, its queue full, or the kernel did not like
	 * the frame: dropped, as a NIC drops it. */
	note(nt, &nt->tx_refused, "the TAP refused a frame of %u bytes: %s", req->length,
	     n < 0 ? strerror(errno) : "short write");
	return ISOLDE_NETIF_S_ERROR;
}

static void serve_tx_request(struct net_tap *nt, const struct isolde_netif_tx_request *req)
{
	struct isolde_driver *drv = &nt->drv;
	unsigned char *frame = NULL;
	const char *bad = isolde_netif_offload_check(&req->offload, req->length, drv->params.net_features);
	int status;

	if (!bad && req->reserved)
		bad = "reserved";
	if (!bad && !(frame = isolde_grant_access(&drv->grants, req->gref, 0, req->length,
						  ISOLDE_GRANT_DRIVER_READS)))
		bad = "gref";
	if (bad) {
		note(nt, &nt->tx_invalid, "TX request %#llx (%u bytes, grant %u) is invalid: %s",
		     (unsigned long long)req->id, req->length, req->gref, bad);
		answer_tx(nt, req->id, ISOLDE_NETIF_S_INVALID);
		return;
	}
	status = nt->hooks->tx_frame ? nt->hooks->tx_frame(nt, req, frame) : NET_TAP_SEND;
	if (status == NET_TAP_SEND)
		status = send_frame(nt, req, frame);
	answer_tx(nt, req->id, (uint8_t)status);
}

static unsigned serve_tx(struct net_tap *nt)
{
	struct isolde_back_ring *r = &nt->drv.ring;
	/* Clamped by the ring to what may be answered without overwriting an
	 * answer the front end has not read, whatever req_prod says. */
	uint32_t n = isolde_back_unconsumed_requests(r);

	if (n > NET_TAP_BATCH)
		n = NET_TAP_BATCH;
	for (uint32_t i = 0; i < n; i++) {
		struct isolde_netif_tx_request req;

		isolde_copy_from_shared(&req, isolde_back_request_at(r, r->req_cons), sizeof req);
		r->req_cons++;
		nt->frames++;
		if (nt->hooks->frame)
			nt->hooks->frame(nt, false);
		serve_tx_request(nt, &req);
	}
	return n;
}

/* ---- RX ---- */

static void answer_rx(struct net_tap *nt, struct isolde_netif_rx_response *rsp)
{
	memcpy(isolde_back_next_response(&nt->rx), rsp, sizeof *rsp);
	nt->rx.rsp_prod_pvt++;
	publish(nt, &nt->rx);
	count_answer(nt);
}

/* Take the next posted buffer into private keeping: true if it can be filled.
 * A malformed one is answered at once (it returns to the front end unused). */
static bool take_rx_buffer(struct net_tap *nt)
{
	struct isolde_driver *drv = &nt->drv;
	struct isolde_netif_rx_request *req = &nt->held;

	isolde_copy_from_shared(req, isolde_back_request_at(&nt->rx, nt->rx.req_cons), sizeof *req);
	nt->rx.req_cons++;
	nt->held_buf = NULL;
	if (!req->reserved)
		nt->held_buf = isolde_grant_access(&drv->grants, req->gref, 0, drv->params.buf_size,
						   ISOLDE_GRANT_DRIVER_WRITES);
	if (!nt->held_buf) {
		struct isolde_netif_rx_response rsp;

		note(nt, &nt->rx_invalid, "RX buffer %#llx (grant %u) is invalid: %s",
		     (unsigned long long)req->id, req->gref, req->reserved ? "reserved" : "gref");
		memset(&rsp, 0, sizeof rsp);
		rsp.id = req->id;
		rsp.status = ISOLDE_NETIF_S_INVALID;
		answer_rx(nt, &rsp);
		return false;
	}
	nt->holding = true;
	return true;
}

/* Receive one frame into the held buffer: 1 if it was answered, 0 if a frame
 * was dropped, -1 if none is waiting. */
static int receive(struct net_tap *nt)
{
	struct isolde_driver *drv = &nt->drv;
	uint32_t size = drv->params.buf_size;
	/* The header lands in private memory: the offload answered is the one
	 * checked, whatever the front end does to its buffer meanwhile. */
	struct virtio_net_hdr h;
	struct iovec iov[2] = { { &h, sizeof h }, { nt->held_buf, size } };
	struct isolde_netif_rx_response rsp;
	ssize_t n = readv(drv->device_fd, iov, 2);
	const char *bad;

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return -1;
	if (n <= 0) {
		/* A TAP whose interface was deleted does not come back; the
		 * launcher's restart and crash-loop rules decide what next. */
		isolde_driver_log(drv, "reading the TAP device failed: %s",
				  n < 0 ? strerror(errno) : "end of file");
		exit(1);
	}
	memset(&rsp, 0, sizeof rsp);
	rsp.offload.flags = h.flags;
	rsp.offload.gso_type = h.gso_type;
	rsp.offload.hdr_len = h.hdr_len;
	rsp.offload.gso_size = h.gso_size;
	rsp.offload.csum_start = h.csum_start;
	rsp.offload.csum_offset = h.csum_offset;
	/* The kernel reports a frame's full length even when it had to cut it
	 * to the buffer. And what it hands over must pass the front end's
	 * check of an RX answer, or the front end would take the driver for a
	 * liar: drop it here instead. */
	if ((size_t)n < sizeof h + ISOLDE_NETIF_MIN_FRAME)
		bad = "runt";
	else if ((size_t)n - sizeof h > size)
		bad = "larger than a buffer";
	else
		bad = isolde_netif_offload_check(&rsp.offload, (uint32_t)((size_t)n - sizeof h),
						 drv->params.net_features);
	if (bad) {
		note(nt, &nt->rx_dropped, "dropped a received frame of %zd bytes: %s",
		     n - (ssize_t)sizeof h, bad);
		return 0;
	}
	nt->frames++;
	if (nt->hooks->frame)
		nt->hooks->frame(nt, true);
	rsp.id = nt->held.id;
	rsp.length = (uint32_t)((size_t)n - sizeof h);
	rsp.status = ISOLDE_NETIF_S_OK;
	if (nt->hooks->rx_answer)
		nt->hooks->rx_answer(nt, nt->held_buf, &rsp);
	nt->holding = false;
	answer_rx(nt, &rsp);
	return 1;
}

static unsigned serve_rx(struct net_tap *nt)
{
	unsigned work = 0;

	if (nt->hooks->rx_paused && nt->hooks->rx_paused(nt))
		return 0;
	/* A malformed buffer answered counts as work too, so a front end that
	 * posts nothing else cannot keep the pass going forever. */
	while (work < NET_TAP_BATCH) {
		if (!nt->holding) {
			if (isolde_back_unconsumed_requests(&nt->rx) == 0)
				break;
			if (!take_rx_buffer(nt)) {
				work++;
				continue;
			}
		}
		if (receive(nt) < 0)
			break;
		work++;
	}
	return work;
}

/* ---- waiting ---- */

/* A spinning wait looks at nothing else: a stop must show here. The RX ring
 * matters only while there is no buffer to fill. */
static bool net_pending(void *ctx)
{
	struct net_tap *nt = ctx;

	return isolde_driver_stop_requested() || isolde_back_unconsumed_requests(&nt->drv.ring) != 0 ||
	       (!nt->holding && isolde_back_unconsumed_requests(&nt->rx) != 0);
}

/* Arm the TX ring always; the RX ring only when a posted buffer is what the
 * driver waits for. While it holds one, what it waits for is a frame, and the
 * TAP fd is the wait's watch fd. */
static bool net_arm_check(void *ctx)
{
	struct net_tap *nt = ctx;

	return isolde_driver_stop_requested() || isolde_back_final_check_requests(&nt->drv.ring) ||
	       (!nt->holding && isolde_back_final_check_requests(&nt->rx));
}

static const struct isolde_wait_ops net_wait = {
	.pending = net_pending,
	.arm_check = net_arm_check,
};

static void wait_for_work(struct net_tap *nt)
{
	struct isolde_driver *drv = &nt->drv;

	enum isolde_wait_result w;

	if (nt->holding)
		isolde_driver_watch_fd_events(drv, drv->device_fd, POLLIN, NET_TAP_WATCH_SPIN_NS);
	else
		isolde_driver_watch_fd_events(drv, -1, 0, 0);
	w = isolde_wait(&drv->waiter, &net_wait, nt, NET_TAP_BEAT_NS);
	if (w == ISOLDE_WAIT_ERROR && errno != EINTR) {
		isolde_driver_log(drv, "waiting for frames failed: %s", strerror(errno));
		exit(1);
	}
}

static void serve(struct net_tap *nt)
{
	struct isolde_driver *drv = &nt->drv;

	for (;;) {
		__atomic_store_n(&drv->header->heartbeat, ++drv->heartbeat, __ATOMIC_RELAXED);
		/* Nothing a front end could want is lost by stopping here:
		 * every answer of the last pass is published, and a frame not
		 * yet answered is one a NIC being removed would drop too. */
		if (isolde_driver_stop_requested())
			exit(0);
		unsigned work = serve_tx(nt);
		work += serve_rx(nt);
		isolde_waiter_signal(&drv->waiter, nt->notify);
		nt->notify = false;
		if (work) {
			__atomic_store_n(&drv->header->batches, ++drv->batches, __ATOMIC_RELAXED);
			continue;
		}
		wait_for_work(nt);
	}
}

/* ---- start ---- */

static int parse_arg(struct isolde_driver *drv, const char *key, const char *value)
{
	struct net_tap *nt = drv->priv;

	return nt->hooks->parse_arg(nt, key, value);
}

int net_tap_main(int argc, char **argv, const char *name, const struct net_tap_hooks *hooks)
{
	static const struct net_tap_hooks no_hooks;
	static struct isolde_driver_ops ops;
	static struct net_tap nt;
	struct isolde_driver *drv = &nt.drv;
	int r;

	nt.hooks = hooks ? hooks : &no_hooks;
	ops.name = name;
	ops.parse_arg = nt.hooks->parse_arg ? parse_arg : NULL;
	drv->ops = &ops;
	drv->priv = &nt;
	if ((r = isolde_driver_attach(drv, argc, argv, ISOLDE_CLASS_NET)) != 0)
		return r;
	/* The header check put the RX ring inside the object, apart from the
	 * TX ring; its slots are the TX ring's size. */
	unsigned char *base = (unsigned char *)drv->header;

	isolde_back_ring_attach(&nt.rx, (struct isolde_sring *)(base + drv->params.rx_ring_offset),
				drv->params.ring_slots, ISOLDE_NETIF_SLOT_SIZE);
	nt.rx.peer_sleeps = drv->ring.peer_sleeps;
	if (nt.hooks->init && nt.hooks->init(&nt) != 0) {
		isolde_driver_failed(drv);
		return 1;
	}
	isolde_driver_ready(drv);
	serve(&nt);
	return 0;
}
