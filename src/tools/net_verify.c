// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "net_verify.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "isolde/blk.h"

/* IEEE 802 local experimental ethertype: nothing in the namespace answers it. */
#define NV_ETHERTYPE 0x88B5
#define NV_MAGIC 0x4953564eu          /* "ISVN" */
#define NV_MIN_FRAME 64u
#define NV_MAX_FRAME 1514u            /* the TAP's default MTU */
#define NV_BURST 8u
#define NV_LIVENESS_FRAMES 16u
#define NV_LIVENESS_ROUNDS 3u
#define NV_TRAFFIC_LIMIT_NS 20000000000ull

enum { DIR_TX = 1, DIR_RX = 2 };

struct nv_frame {
	uint8_t dst[6], src[6];
	uint16_t ethertype;           /* network order */
	uint32_t magic;
	uint8_t dir;
	uint8_t pad[3];
	uint64_t seq;
	uint32_t len;
	uint32_t pad2;
	uint64_t hash;                /* of the whole frame with this field zero */
} __attribute__((packed));

struct nv {
	const struct net_verify_options *o;
	struct net_verify_result *r;
	struct isolde_net *net;
	int ps;                       /* the packet socket on the TAP's kernel side */
	int ifindex;
	uint64_t limit;               /* sequence numbers below this are valid */
	uint8_t *seen[3];             /* per direction: a bit per sequence number */
	uint8_t buf[NV_MAX_FRAME + 64];
	uint8_t expect[NV_MAX_FRAME + 64];
};

static uint64_t frame_hash(const uint8_t *f, size_t len)
{
	uint8_t copy[NV_MAX_FRAME + 64];
	memcpy(copy, f, len);
	memset(copy + offsetof(struct nv_frame, hash), 0, sizeof(uint64_t));
	return XXH3_64bits(copy, len);
}

static size_t frame_len(const struct nv *v, int dir, uint64_t seq)
{
	uint64_t x = XXH3_64bits_withSeed(&seq, sizeof seq, v->o->seed * 4 + (uint64_t)dir);
	return NV_MIN_FRAME + (size_t)(x % (NV_MAX_FRAME - NV_MIN_FRAME + 1));
}

/* The frame dir/seq is, written into f; its length. */
static size_t build_frame(const struct nv *v, int dir, uint64_t seq, uint8_t *f)
{
	size_t len = frame_len(v, dir, seq);
	struct nv_frame h = { .dst = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff }, .src = { 0x02, 0, 0, 0, 0x1e, 0x01 },
			      .ethertype = htons(NV_ETHERTYPE), .magic = NV_MAGIC, .dir = (uint8_t)dir, .seq = seq,
			      .len = (uint32_t)len };
	memcpy(f, &h, sizeof h);
	uint64_t s = XXH3_64bits_withSeed(&seq, sizeof seq, v->o->seed ^ ((uint64_t)dir << 56));
	for (size_t i = sizeof h; i < len; i++) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		f[i] = (uint8_t)s;
	}
	uint64_t hash = frame_hash(f, len);
	memcpy(f + offsetof(struct nv_frame, hash), &hash, sizeof hash);
	return len;
}

static struct net_verify_direction *direction(struct nv *v, int dir)
{
	return dir == DIR_TX ? &v->r->tx : &v->r->rx;
}

/* One frame that arrived on the side where frames of direction dir land. */
static void check_frame(struct nv *v, int dir, const uint8_t *f, size_t len)
{
	struct net_verify_direction *d = direction(v, dir);
	struct nv_frame h;

	if (len < sizeof h) {
		v->r->foreign++;
		return;
	}
	memcpy(&h, f, sizeof h);
	if (h.ethertype != htons(NV_ETHERTYPE)) {
		v->r->foreign++;
		return;
	}
	if (frame_hash(f, len) != h.hash) {
		d->caught++;
		return;
	}
	if (h.dir != dir) {
		v->r->foreign++; /* intact and going the other way: our own frame, echoed */
		return;
	}
	if (h.magic != NV_MAGIC || h.seq >= v->limit || h.len != len ||
	    build_frame(v, dir, h.seq, v->expect) != len || memcmp(f, v->expect, len) != 0) {
		d->undetected++;
		return;
	}
	uint8_t *bit = &v->seen[dir][h.seq / 8], m = (uint8_t)(1u << (h.seq % 8));
	if (*bit & m) {
		d->duplicates++;
	} else {
		*bit |= m;
		d->delivered++;
	}
}

/* Take everything that has arrived on both sides; 0, or -1 if the device failed. */
static int drain(struct nv *v)
{
	int n = isolde_net_poll(v->net);
	for (;;) {
		n = isolde_net_receive(v->net, v->buf, sizeof v->buf, NULL);
		if (n < 0)
			break;
		check_frame(v, DIR_RX, v->buf, (size_t)n);
	}
	for (;;) {
		struct sockaddr_ll from;
		socklen_t fl = sizeof from;
		ssize_t k = recvfrom(v->ps, v->buf, sizeof v->buf, MSG_TRUNC, (struct sockaddr *)&from, &fl);
		if (k < 0)
			break;
		if (from.sll_pkttype == PACKET_OUTGOING)
			continue;
		if ((size_t)k > sizeof v->buf) {
			direction(v, DIR_TX)->caught++; /* longer than any frame sent */
			continue;
		}
		check_frame(v, DIR_TX, v->buf, (size_t)k);
	}
	return n == -EIO ? -1 : 0;
}

static int send_tx(struct nv *v, uint64_t seq)
{
	size_t len = build_frame(v, DIR_TX, seq, v->buf);
	int r = isolde_net_send(v->net, v->buf, len, NULL);
	if (r == 0)
		v->r->tx.sent++;
	return r;
}

static int send_rx(struct nv *v, uint64_t seq)
{
	size_t len = build_frame(v, DIR_RX, seq, v->buf);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(NV_ETHERTYPE),
				  .sll_ifindex = v->ifindex, .sll_halen = 6 };
	memset(to.sll_addr, 0xff, 6);
	if (sendto(v->ps, v->buf, len, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)len)
		return -errno;
	v->r->rx.sent++;
	return 0;
}

/* Frames [from, to) each way; returns once all are sent (or the device failed
 * or the time limit passed). */
static int traffic(struct nv *v, uint64_t from, uint64_t to, uint64_t deadline)
{
	uint64_t tx = from, rx = from;

	while ((tx < to || rx < to) && isolde_now_ns() < deadline) {
		unsigned moved = 0;
		for (unsigned k = 0; k < NV_BURST && tx < to; k++) {
			int r = send_tx(v, tx);
			if (r == -EAGAIN)
				break;
			if (r == -EIO)
				return -1;
			tx++; /* another error: the frame was refused, and it stays unsent */
			moved++;
		}
		isolde_net_push(v->net);
		for (unsigned k = 0; k < NV_BURST && rx < to; k++) {
			if (send_rx(v, rx) != 0)
				break; /* the TAP's queue is full: wait */
			rx++;
			moved++;
		}
		if (drain(v))
			return -1;
		if (!moved)
			isolde_net_wait(v->net, 5);
	}
	return 0;
}

/* Keep taking what arrives until both sides have [from, to) or until deadline. */
static int settle(struct nv *v, uint64_t want_tx, uint64_t want_rx, uint64_t deadline)
{
	while (isolde_now_ns() < deadline) {
		if (drain(v))
			return -1;
		if (v->r->tx.delivered >= want_tx && v->r->rx.delivered >= want_rx)
			return 0;
		isolde_net_wait(v->net, 5);
	}
	return 0;
}

static int open_packet_socket(struct nv *v, const char *ifname, char *err, size_t errlen)
{
	v->ifindex = (int)if_nametoindex(ifname);
	if (!v->ifindex) {
		snprintf(err, errlen, "the TAP %s is not in the workload's namespace: %s", ifname, strerror(errno));
		return -1;
	}
	v->ps = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(NV_ETHERTYPE));
	if (v->ps < 0) {
		snprintf(err, errlen, "packet socket: %s", strerror(errno));
		return -1;
	}
	struct sockaddr_ll at = { .sll_family = AF_PACKET, .sll_protocol = htons(NV_ETHERTYPE),
				  .sll_ifindex = v->ifindex };
	if (bind(v->ps, (struct sockaddr *)&at, sizeof at) != 0) {
		snprintf(err, errlen, "binding the packet socket to %s: %s", ifname, strerror(errno));
		return -1;
	}
	return 0;
}

int net_verify_run(const struct net_verify_options *o, struct net_verify_result *r, char *err, size_t errlen)
{
	struct nv *v = calloc(1, sizeof *v);
	int rc = -1;

	memset(r, 0, sizeof *r);
	if (!v) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	v->o = o;
	v->r = r;
	v->ps = -1;
	unsigned rounds = o->max_rounds ? o->max_rounds : 1;
	v->limit = o->frames * rounds + (uint64_t)NV_LIVENESS_ROUNDS * NV_LIVENESS_FRAMES;
	for (int d = DIR_TX; d <= DIR_RX; d++)
		if (!(v->seen[d] = calloc(1, v->limit / 8 + 1))) {
			snprintf(err, errlen, "out of memory");
			goto out;
		}
	/* A namespace of the workload's own: its TAP, nothing else, gone with it. */
	if (unshare(CLONE_NEWNET) != 0) {
		snprintf(err, errlen, "unshare(CLONE_NEWNET): %s (the network workload needs root)", strerror(errno));
		goto out;
	}
	struct isolde_net_config cfg = o->cfg;
	cfg.netns = NULL;
	if (!cfg.ifname)
		cfg.ifname = "isverify0";
	if (!(v->net = isolde_net_open(&cfg, err, errlen)))
		goto out;
	if (open_packet_socket(v, cfg.ifname, err, errlen))
		goto out;
	if (o->opened)
		o->opened(isolde_net_driver_pid(v->net), o->opened_ctx);

	uint64_t next = 0;
	int failed = 0;
	for (unsigned round = 1; !failed; round++) {
		r->rounds = round;
		failed = traffic(v, next, next + o->frames, isolde_now_ns() + NV_TRAFFIC_LIMIT_NS);
		next += o->frames;
		if (!failed)
			failed = settle(v, r->tx.sent, r->rx.sent, isolde_now_ns() + 200000000ull);
		if (round >= rounds || !o->again || !o->again(o->opened_ctx))
			break;
	}
	unsigned hang_ms = cfg.timeout_ms ? cfg.timeout_ms : 2000;
	uint64_t grace = (uint64_t)(hang_ms * 3 + 500) * 1000000ull;
	/* Alive: one whole round each way, after whatever the fault did. */
	for (unsigned round = 0; !failed && !r->alive && round < NV_LIVENESS_ROUNDS; round++) {
		uint64_t tx0 = r->tx.delivered, rx0 = r->rx.delivered;
		uint64_t until = isolde_now_ns() + grace;
		failed = traffic(v, next, next + NV_LIVENESS_FRAMES, until);
		if (!failed)
			failed = settle(v, tx0 + NV_LIVENESS_FRAMES, rx0 + NV_LIVENESS_FRAMES, until);
		next += NV_LIVENESS_FRAMES;
		r->alive = !failed && r->tx.delivered - tx0 == NV_LIVENESS_FRAMES &&
			   r->rx.delivered - rx0 == NV_LIVENESS_FRAMES;
	}
	isolde_net_get_stats(v->net, &r->stats);
	r->supervisor = *isolde_net_supervisor_stats(v->net);
	if (isolde_net_failed(v->net))
		snprintf(r->error, sizeof r->error, "the device failed: %s", isolde_net_error(v->net));
	else if (!r->alive)
		snprintf(r->error, sizeof r->error, "no round of %u frames each way arrived whole in %u rounds "
			 "(state %s; to the TAP %llu of %llu frames, from it %llu of %llu): frames lost with no "
			 "failure detected", NV_LIVENESS_FRAMES, NV_LIVENESS_ROUNDS, isolde_net_state(v->net),
			 (unsigned long long)r->tx.delivered, (unsigned long long)r->tx.sent,
			 (unsigned long long)r->rx.delivered, (unsigned long long)r->rx.sent);
	rc = 0;
out:
	if (v->ps >= 0)
		close(v->ps);
	isolde_net_close(v->net);
	free(v->seen[DIR_TX]);
	free(v->seen[DIR_RX]);
	free(v);
	return rc;
}
