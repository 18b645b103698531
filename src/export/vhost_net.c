// SPDX-License-Identifier: MIT
/*
 * The vhost-user-net export: `isolde serve --export
 * vhost-user-net:PATH[,netdev=NAME][,poll=MODE]`. A QEMU guest's virtio-net
 * card (-netdev vhost-user) whose frames go through a network device's
 * isolated driver: what the guest sends goes on the TX ring, what the
 * driver receives from the wire goes into the guest's receive buffers.
 *
 * vhost_user.c speaks the protocol; here are queue 0 (receive: the guest
 * posts empty buffers) and queue 1 (transmit). Transmit requests arrive one
 * by one: each is copied once out of guest memory into a private buffer,
 * its 12-byte virtio_net_hdr checked there (isolde_net_send checks the
 * offload against what the device carries), and answered once the frame is
 * on the TX ring; while every TX buffer is in flight, requests wait here in
 * order, which holds the guest back. Receive buffers are taken from the
 * guest (vhost_user_take) only when a frame is there to fill one, so none is
 * held while the wire is quiet, and a guest that posts none only makes the
 * driver's frames wait in the RX ring.
 *
 * Offloads: the guest is offered checksum and TSO in both directions as far
 * as the network device carries them. A frame from the wire that needs an
 * offload the guest did not accept, or that does not fit the guest's
 * buffer, is dropped and counted; a guest's transmit request that is
 * malformed is answered and dropped, and logged (rate-limited).
 *
 * One thread per export runs an event loop for the vhost-user socket, the
 * guest's kicks and the network device.
 */
#define _GNU_SOURCE
#include "vhost_net.h"

#include "error.h"
#include "loop.h"
#include "net_export.h"
#include "vhost_user.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define VIRTIO_NET_F_CSUM 0
#define VIRTIO_NET_F_GUEST_CSUM 1
#define VIRTIO_NET_F_GUEST_TSO4 7
#define VIRTIO_NET_F_GUEST_TSO6 8
#define VIRTIO_NET_F_HOST_TSO4 11
#define VIRTIO_NET_F_HOST_TSO6 12

#define RX_QUEUE 0u
#define TX_QUEUE 1u
#define TX_WAIT_MAX VQ_MAX_SIZE        /* each head is in flight once */
#define HYBRID_IDLE_NS 50000u
#define STALLED_POLL_MS 1              /* frames wait, the guest has no buffer */

/* virtio_net_hdr_mrg_rxbuf: VIRTIO_F_VERSION_1 makes it the header of every frame. */
struct virtio_net_hdr_v1 {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};
_Static_assert(sizeof(struct virtio_net_hdr_v1) == 12, "virtio_net_hdr_v1 is 12 bytes");

struct vhost_net {
	char name[64];
	struct isolde_net *net;
	enum isolde_notify_mode mode;    /* the network device's */
	struct isolde_loop *loop;
	struct vhost_user *vu;
	struct vhost_device_ops ops;
	pthread_t thread;
	bool thread_started;
	atomic_bool stop;
	/* TX requests waiting for a TX buffer, in the guest's order. */
	struct vhost_request **tx_wait;
	unsigned tx_head, tx_count;
	bool rx_stalled;                 /* frames wait and the guest had no buffer */
	uint8_t frame[sizeof(struct virtio_net_hdr_v1) + ISOLDE_NETIF_MAX_FRAME];
	struct vhost_net_stats stats;
};

static uint64_t offered_features(uint32_t net_features)
{
	uint64_t f = 0;
	if (net_features & ISOLDE_NETIF_F_CSUM)
		f |= (1ull << VIRTIO_NET_F_CSUM) | (1ull << VIRTIO_NET_F_GUEST_CSUM);
	if (net_features & ISOLDE_NETIF_F_TSO4)
		f |= (1ull << VIRTIO_NET_F_HOST_TSO4) | (1ull << VIRTIO_NET_F_GUEST_TSO4);
	if (net_features & ISOLDE_NETIF_F_TSO6)
		f |= (1ull << VIRTIO_NET_F_HOST_TSO6) | (1ull << VIRTIO_NET_F_GUEST_TSO6);
	return f;
}

/* ---- transmit: the guest's frames to the TX ring ---- */

/* Copy the device-readable segments of req into x->frame; their length,
 * or 0 (logged) if the request is not a frame. */
static size_t copy_tx(struct vhost_net *x, struct vhost_request *req)
{
	const struct vq_elem *e = req->elem;
	size_t len = 0;

	if (e->bad) {
		vhost_user_log(x->vu, "queue %u: frame at descriptor %u: %s", TX_QUEUE, e->head, e->bad_reason);
		return 0;
	}
	if (e->nin) {
		vhost_user_log(x->vu, "queue %u: frame at descriptor %u has %u device-writable segments", TX_QUEUE,
			       e->head, e->nin);
		return 0;
	}
	for (unsigned i = 0; i < e->nout; i++) {
		if (e->iov[i].iov_len > sizeof x->frame - len) {
			vhost_user_log(x->vu, "queue %u: frame at descriptor %u is longer than %zu bytes", TX_QUEUE,
				       e->head, sizeof x->frame);
			return 0;
		}
		memcpy(x->frame + len, e->iov[i].iov_base, e->iov[i].iov_len);
		len += e->iov[i].iov_len;
	}
	if (len < sizeof(struct virtio_net_hdr_v1) + ISOLDE_NETIF_MIN_FRAME) {
		vhost_user_log(x->vu, "queue %u: frame at descriptor %u: %zu bytes, shorter than a header and an "
			       "Ethernet header", TX_QUEUE, e->head, len);
		return 0;
	}
	return len;
}

/* The guest may ask only for the offloads it negotiated (virtio 1.x,
 * 5.1.6.2); what the device carries is isolde_net_send's check. ECN was
 * never offered (VIRTIO_NET_F_HOST_ECN). */
static bool guest_may_send(const struct isolde_netif_offload *off, uint64_t features)
{
	if ((off->flags & ISOLDE_NETIF_O_NEEDS_CSUM) && !(features >> VIRTIO_NET_F_CSUM & 1))
		return false;
	if (off->gso_type & ISOLDE_NETIF_GSO_ECN)
		return false;
	switch (off->gso_type) {
	case ISOLDE_NETIF_GSO_TCPV4:
		return features >> VIRTIO_NET_F_HOST_TSO4 & 1;
	case ISOLDE_NETIF_GSO_TCPV6:
		return features >> VIRTIO_NET_F_HOST_TSO6 & 1;
	default:
		return true; /* none, or a type isolde_net_send refuses */
	}
}

static void send_one(struct vhost_net *x, struct vhost_request *req)
{
	size_t len = copy_tx(x, req);

	/* Zeros from a shrunk memory file are not the guest's frame. */
	if (vhost_user_memory_lost(req) || !len) {
		if (len == 0)
			x->stats.tx_malformed++;
		vhost_user_complete(req, 0);
		return;
	}
	struct virtio_net_hdr_v1 h;
	memcpy(&h, x->frame, sizeof h);
	struct isolde_netif_offload off = { .flags = h.flags, .gso_type = h.gso_type, .hdr_len = h.hdr_len,
					    .gso_size = h.gso_size, .csum_start = h.csum_start,
					    .csum_offset = h.csum_offset };
	int r = guest_may_send(&off, vhost_user_features(x->vu))
			? isolde_net_send(x->net, x->frame + sizeof h, len - sizeof h, &off) : -ENOPROTOOPT;
	if (r == 0) {
		x->stats.tx_frames++;
	} else if (r == -EIO) {
		x->stats.tx_dropped++;
	} else {
		x->stats.tx_malformed++;
		vhost_user_log(x->vu, "queue %u: frame at descriptor %u (%zu bytes, flags 0x%x, gso_type 0x%x): %s",
			       TX_QUEUE, req->elem->head, len - sizeof h, h.flags, h.gso_type,
			       r == -EMSGSIZE ? "not a frame's length" : r == -ENOPROTOOPT ? "an offload the guest "
			       "did not negotiate" : "an offload the device does not carry");
	}
	vhost_user_complete(req, 0);
}

static unsigned drain_tx(struct vhost_net *x)
{
	unsigned n = 0;

	while (x->tx_count) {
		if (!isolde_net_failed(x->net) && isolde_net_tx_free(x->net) == 0)
			break;
		struct vhost_request *req = x->tx_wait[x->tx_head];
		x->tx_head = (x->tx_head + 1) % TX_WAIT_MAX;
		x->tx_count--;
		send_one(x, req);
		n++;
	}
	if (n)
		isolde_net_push(x->net);
	return n;
}

static void on_request(void *dev, struct vhost_request *req)
{
	struct vhost_net *x = dev;

	if (req->queue != TX_QUEUE || x->tx_count == TX_WAIT_MAX) {
		/* Only the receive queue is pulled and only two queues exist;
		 * a full wait list means heads in flight twice. Neither can be. */
		vhost_user_abandon(req, "not a transmit request");
		return;
	}
	x->tx_wait[(x->tx_head + x->tx_count++) % TX_WAIT_MAX] = req;
	drain_tx(x);
}

/* ---- receive: frames from the wire into the guest's buffers ---- */

static bool guest_accepts(const struct isolde_netif_offload *off, uint64_t features)
{
	if ((off->flags & ISOLDE_NETIF_O_NEEDS_CSUM) && !(features >> VIRTIO_NET_F_GUEST_CSUM & 1))
		return false;
	switch (off->gso_type) {
	case ISOLDE_NETIF_GSO_NONE:
		return true;
	case ISOLDE_NETIF_GSO_TCPV4:
		return features >> VIRTIO_NET_F_GUEST_TSO4 & 1;
	case ISOLDE_NETIF_GSO_TCPV6:
		return features >> VIRTIO_NET_F_GUEST_TSO6 & 1;
	default:
		return false; /* ECN: never offered */
	}
}

/* Take the next frame from the device and throw it away. */
static void discard_frame(struct vhost_net *x)
{
	uint8_t sink;
	isolde_net_receive(x->net, &sink, sizeof sink, NULL);
}

static void drop_frame(struct vhost_net *x)
{
	discard_frame(x);
	x->stats.rx_dropped++;
}

static unsigned deliver_rx(struct vhost_net *x)
{
	struct isolde_netif_offload off;
	unsigned n = 0;
	int len;

	x->rx_stalled = false;
	while ((len = isolde_net_peek(x->net, &off)) > 0) {
		uint64_t features = vhost_user_features(x->vu);
		if (!features) {
			drop_frame(x); /* no guest: the wire's frames go nowhere */
			continue;
		}
		if (!guest_accepts(&off, features)) {
			drop_frame(x);
			continue;
		}
		struct vhost_request *req = vhost_user_take(x->vu, RX_QUEUE);
		if (!req) {
			x->rx_stalled = true;
			break;
		}
		const struct vq_elem *e = req->elem;
		size_t room = 0;
		for (unsigned i = e->nout; i < e->nout + e->nin; i++)
			room += e->iov[i].iov_len;
		if (e->bad || e->nout) {
			vhost_user_log(x->vu, "queue %u: buffer at descriptor %u: %s", RX_QUEUE, e->head,
				       e->bad ? e->bad_reason : "has device-readable segments");
			drop_frame(x);
			vhost_user_abandon(req, e->bad ? e->bad_reason : "a receive buffer the device cannot write");
			continue;
		}
		if (room < sizeof(struct virtio_net_hdr_v1) + (size_t)len) {
			/* Answered empty: the guest's driver counts a length error
			 * and posts the buffer again. */
			discard_frame(x); /* counted once, as too long */
			x->stats.rx_too_long++;
			vhost_user_complete(req, 0);
			continue;
		}
		struct virtio_net_hdr_v1 h = { .flags = off.flags, .gso_type = off.gso_type, .hdr_len = off.hdr_len,
					       .gso_size = off.gso_size, .csum_start = off.csum_start,
					       .csum_offset = off.csum_offset, .num_buffers = 1 };
		if (!(features >> VIRTIO_NET_F_GUEST_CSUM & 1))
			h.flags &= (uint8_t)~ISOLDE_NETIF_O_DATA_VALID;
		/* The header into the first segments, the frame after it. */
		size_t put = 0;
		for (unsigned i = 0; put < sizeof h; i++) {
			size_t k = e->iov[i].iov_len < sizeof h - put ? e->iov[i].iov_len : sizeof h - put;
			memcpy(e->iov[i].iov_base, (const uint8_t *)&h + put, k);
			put += k;
		}
		isolde_net_receive_iov(x->net, e->iov, e->nin, sizeof h);
		x->stats.rx_frames++;
		vhost_user_complete(req, (uint32_t)(sizeof h + (size_t)len));
		n++;
	}
	if (n)
		isolde_net_push(x->net); /* the buffers, posted to the driver again */
	return n;
}

static void on_available(void *dev, unsigned queue)
{
	struct vhost_net *x = dev;
	if (queue == RX_QUEUE)
		deliver_rx(x);
}

/* ---- the thread ---- */

static void net_readable(void *ctx, uint32_t events)
{
	(void)ctx;
	(void)events; /* the next pass polls the device */
}

static unsigned net_pass(struct vhost_net *x)
{
	isolde_net_poll(x->net);
	return drain_tx(x) + deliver_rx(x);
}

static int sleep_ms(struct vhost_net *x, uint64_t *idle_since)
{
	if (x->mode == ISOLDE_NOTIFY_SPIN && isolde_net_timeout_ms(x->net) < 0 && !isolde_net_failed(x->net))
		return 0;
	if (x->mode == ISOLDE_NOTIFY_HYBRID) {
		uint64_t now = isolde_now_ns();
		if (!*idle_since)
			*idle_since = now;
		if (now - *idle_since < HYBRID_IDLE_NS)
			return 0;
	}
	if (x->rx_stalled)
		return STALLED_POLL_MS; /* a kick of the receive queue ends it sooner */
	if (!isolde_net_prepare_sleep(x->net))
		return 0;
	return isolde_net_timeout_ms(x->net);
}

static void *export_thread(void *arg)
{
	struct vhost_net *x = arg;
	uint64_t idle_since = 0;

	while (!atomic_load(&x->stop)) {
		unsigned work = net_pass(x);
		bool spin = loop_run_pollers(x->loop);
		work += net_pass(x);
		int timeout = 0;
		if (work)
			idle_since = 0;
		else if (!spin)
			timeout = sleep_ms(x, &idle_since);
		if (loop_once(x->loop, timeout) < 0 && errno != EINTR)
			break;
	}
	/* Waiting frames go nowhere now; their requests are answered so that
	 * nothing is left in flight. */
	vhost_user_quiesce(x->vu);
	while (x->tx_count) {
		vhost_user_complete(x->tx_wait[x->tx_head], 0);
		x->tx_head = (x->tx_head + 1) % TX_WAIT_MAX;
		x->tx_count--;
		x->stats.tx_dropped++;
	}
	return NULL;
}

static void wake(void *ctx)
{
	(void)ctx;
}

/* ---- the export ---- */

int vhost_net_parse(const char *spec, char *buf, size_t buflen, const char **path, const char **netdev,
		    enum isolde_notify_mode *poll, bool *poll_set, char *err, size_t errlen)
{
	static const char scheme[] = "vhost-user-net:";
	if (strncmp(spec, scheme, sizeof scheme - 1) != 0)
		return isolde_fail(err, errlen, "'%s' is not a vhost-user-net export "
				   "(vhost-user-net:PATH[,netdev=NAME][,poll=MODE])", spec);
	if (strlen(spec + sizeof scheme - 1) >= buflen)
		return isolde_fail(err, errlen, "vhost-user-net export spec too long");
	snprintf(buf, buflen, "%s", spec + sizeof scheme - 1);
	*netdev = NULL;
	*poll_set = false;
	char *comma = strchr(buf, ',');
	if (comma)
		*comma = '\0';
	*path = buf;
	if (!buf[0])
		return isolde_fail(err, errlen, "vhost-user-net export: no socket path (vhost-user-net:PATH)");
	char *save = NULL;
	for (char *tok = comma ? strtok_r(comma + 1, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq || !eq[1])
			return isolde_fail(err, errlen, "vhost-user-net export: field '%s' needs a value",
					   eq ? (*eq = 0, tok) : tok);
		*eq = '\0';
		if (strcmp(tok, "netdev") == 0) {
			*netdev = eq + 1;
		} else if (strcmp(tok, "poll") == 0) {
			if (isolde_notify_mode_parse(eq + 1, poll) != 0)
				return isolde_fail(err, errlen, "vhost-user-net export: field 'poll': '%s' is not "
						   "event, spin or hybrid", eq + 1);
			*poll_set = true;
		} else {
			return isolde_fail(err, errlen, "vhost-user-net export: unknown field '%s' (known: netdev, "
					   "poll)", tok);
		}
	}
	return 0;
}

struct vhost_net *vhost_net_start(const char *name, const struct isolde_net_config *cfg, const char *spec,
				  char *err, size_t errlen)
{
	char buf[512], why[512];
	const char *path, *netdev;
	enum isolde_notify_mode poll = cfg->notify;
	bool poll_set;

	if (vhost_net_parse(spec, buf, sizeof buf, &path, &netdev, &poll, &poll_set, err, errlen))
		return NULL;
	struct vhost_net *x = calloc(1, sizeof *x);
	if (!x || !(x->tx_wait = calloc(TX_WAIT_MAX, sizeof *x->tx_wait))) {
		free(x);
		isolde_fail(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(x->name, sizeof x->name, "%s", name);
	x->mode = cfg->notify;
	if (!(x->loop = loop_create(why, sizeof why))) {
		isolde_fail(err, errlen, "%s", why);
		goto fail;
	}
	if (!(x->net = isolde_net_open(cfg, why, sizeof why))) {
		isolde_fail(err, errlen, "network device %s: %s", name, why);
		goto fail;
	}
	int call_fd, watch_fd;
	isolde_net_event_fds(x->net, &call_fd, &watch_fd);
	if (loop_watch(x->loop, call_fd, EPOLLIN, net_readable, x) || loop_watch(x->loop, watch_fd, EPOLLIN,
										net_readable, x)) {
		isolde_fail(err, errlen, "cannot watch network device %s", name);
		goto fail;
	}
	x->ops.kind = "vhost-user-net";
	x->ops.features = offered_features(isolde_net_features(x->net));
	x->ops.max_queues = 2;
	x->ops.pulled_queues = 1u << RX_QUEUE;
	x->ops.available = on_available;
	x->ops.request = on_request;
	char prefix[96];
	snprintf(prefix, sizeof prefix, "%s: vhost-user-net", name);
	if (!(x->vu = vhost_user_start(x->loop, prefix, path, poll, &x->ops, x, why, sizeof why))) {
		isolde_fail(err, errlen, "--export %s: %s", spec, why);
		goto fail;
	}
	int r = pthread_create(&x->thread, NULL, export_thread, x);
	if (r) {
		isolde_fail(err, errlen, "cannot start the vhost-user-net export's thread: %s", strerror(r));
		goto fail;
	}
	x->thread_started = true;
	return x;
fail:
	vhost_net_stop(x);
	return NULL;
}

void vhost_net_describe(const struct vhost_net *x, char *buf, size_t len)
{
	snprintf(buf, len, "network device %s: vhost-user-net through driver pid %d, notify %s, offload %s",
		 x->name, (int)isolde_net_driver_pid(x->net), isolde_notify_mode_name(x->mode),
		 isolde_net_features(x->net) ? "on" : "off");
}

void vhost_net_stop(struct vhost_net *x)
{
	if (!x)
		return;
	if (x->thread_started) {
		atomic_store(&x->stop, true);
		loop_post(x->loop, wake, NULL);
		pthread_join(x->thread, NULL);
	}
	if (x->vu)
		vhost_user_stop(x->vu);
	if (x->net) {
		net_export_report(x->name, x->net);
		fprintf(stderr, "isolde serve: network device %s: guest: %llu frames sent, %llu received, %llu "
			"malformed frames refused, %llu frames dropped (%llu too long for the guest's buffer)\n",
			x->name, (unsigned long long)x->stats.tx_frames, (unsigned long long)x->stats.rx_frames,
			(unsigned long long)x->stats.tx_malformed,
			(unsigned long long)(x->stats.tx_dropped + x->stats.rx_dropped + x->stats.rx_too_long),
			(unsigned long long)x->stats.rx_too_long);
	}
	isolde_net_close(x->net);
	loop_destroy(x->loop);
	free(x->tx_wait);
	free(x);
}
