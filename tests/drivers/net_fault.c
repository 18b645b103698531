// SPDX-License-Identifier: MIT
/*
 * net-fault: net-tap with one deterministic fault, for tests. It is net-tap's
 * own loop (net_tap.h), with hooks; for the first --after frames (TX requests
 * and RX frames together, default 10) it behaves exactly like net-tap, then
 * misbehaves as --fault says. Only the first generation misbehaves, unless
 * --every-generation: so by default a test sees one fault, a recovery, and a
 * driver that works from then on. Built with the test suite; never installed.
 *
 *   crash           abort()
 *   hang            stop serving and stop the heartbeat (sleep forever)
 *   exit            exit(3)
 *   rx-bad-length   an RX answer longer than its buffer (buf_size + 1)
 *   rx-bad-id       an RX answer with an id no buffer posted ever had
 *   rx-bad-offload  an RX answer claiming GSO TCPV4 with gso_size 0
 *   rx-overrun      publish the RX ring's rsp_prod 1000 past the answers
 *                   written, call the front end and stop (so that no later
 *                   push corrects it)
 *   tx-bad-id       a TX answer with an id no request ever had
 *   tx-twice        answer one TX request twice
 *   tx-bad-status   a TX answer with status 77
 *   scribble        write garbage over every TX buffer the front end granted,
 *                   the TX ring's req_prod and rsp_event and its slots - all
 *                   the driver can write of what TX is made of - then keep
 *                   serving from the wreck
 *   stall-rx        from then on, leave the TAP's frames unread, with the RX
 *                   buffers posted and the heartbeat on
 *   stall-tx        from then on, send TX frames and never answer them, while
 *                   the heartbeat goes on: the front end must see the
 *                   unanswered frames, not the heartbeat
 *   drop-tx         from then on, answer every TX frame OK without sending it:
 *                   a liar the protocol cannot catch, and that harms nothing
 *                   but its own traffic
 *   corrupt-rx      from then on, flip the last byte of every received IPv4 or
 *                   IPv6 packet and answer it OK, without the "checksum
 *                   checked" and "checksum to be completed" flags, so that the
 *                   receiver checks the checksum the packet carries: the TCP,
 *                   UDP or ICMP checksum on the other side must reject it (a
 *                   raw socket, as root's ping uses, sees it before that
 *                   check). Two kinds pass untouched: frames that are not IP
 *                   (ARP), so the link still works, and GSO frames, whose
 *                   checksums are computed only when they are cut, after any
 *                   flip: no checksum could catch it
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net_tap.h"

static const char *fault = "none";
static unsigned long after = 10;
static bool every_generation;
static bool fired;

static const char *const known_faults[] = {
	"none", "crash", "hang", "exit", "rx-bad-length", "rx-bad-id", "rx-bad-offload", "rx-overrun",
	"tx-bad-id", "tx-twice", "tx-bad-status", "scribble", "stall-rx", "stall-tx", "drop-tx", "corrupt-rx",
};

/* Flipped into the sequence bits of an id: the front end posted no such one. */
#define BAD_ID_BITS UINT64_C(0x5a5a0000)

static int parse_arg(struct net_tap *nt, const char *key, const char *value)
{
	if (strcmp(key, "--fault") == 0 && value) {
		for (size_t i = 0; i < sizeof known_faults / sizeof known_faults[0]; i++) {
			if (strcmp(value, known_faults[i]) == 0) {
				fault = known_faults[i];
				return 0;
			}
		}
		isolde_driver_log(&nt->drv, "unknown fault '%s'", value);
		return -1;
	}
	if (strcmp(key, "--after") == 0 && value) {
		char *end;
		after = strtoul(value, &end, 10);
		return (*value && !*end) ? 0 : -1;
	}
	if (strcmp(key, "--every-generation") == 0 && !value) {
		every_generation = true;
		return 0;
	}
	return -1;
}

static bool is(const char *name)
{
	return strcmp(fault, name) == 0;
}

/* The fault is due: this generation misbehaves, and its first --after frames
 * went by. */
static bool due(const struct net_tap *nt)
{
	return !is("none") && nt->frames > after && (every_generation || nt->drv.params.generation == 1);
}

/* A one-shot fault of this name is due now: it fires, and is logged. */
static bool fire(struct net_tap *nt, const char *name, const char *what)
{
	if (fired || !is(name) || !due(nt))
		return false;
	fired = true;
	isolde_driver_log(&nt->drv, "fault %s: %s at frame %llu of generation %u", name, what,
			  (unsigned long long)nt->frames, nt->drv.params.generation);
	return true;
}

static void scribble(struct net_tap *nt)
{
	struct isolde_driver *drv = &nt->drv;
	struct isolde_sring *s = drv->ring.sring;

	/* The grant table itself is read-only here; what it says the TX
	 * buffers are is not. */
	for (uint32_t g = 0; g < drv->params.ring_slots; g++) {
		uint64_t off = drv->grants.table[g].offset;
		uint64_t len = drv->grants.table[g].length;
		if (off >= drv->grants.data_size)
			continue;
		if (len > drv->grants.data_size - off)
			len = drv->grants.data_size - off;
		memset(drv->grants.data + off, 0xa5, len);
	}
	__atomic_store_n(&s->req_prod, __atomic_load_n(&s->req_prod, __ATOMIC_RELAXED) + 0x5a5a5a5au,
			 __ATOMIC_RELEASE);
	__atomic_store_n(&s->rsp_event, 0xa5a5a5a5u, __ATOMIC_RELAXED);
	memset(s->slots, 0xa5, (size_t)drv->ring.nslots * drv->ring.slot_size);
}

static void frame(struct net_tap *nt, bool rx)
{
	(void)rx;
	if (fire(nt, "crash", "abort()"))
		abort();
	if (fire(nt, "exit", "exit(3)"))
		exit(3);
	if (fire(nt, "hang", "no more answers, no more heartbeats"))
		for (;;)
			pause();
	if (fire(nt, "rx-overrun", "RX rsp_prod 1000 past the answers written, then stop")) {
		/* The lie must stay visible: a later push would publish the
		 * true index again. So call the front end and stop. */
		struct isolde_sring *s = nt->rx.sring;
		__atomic_store_n(&s->rsp_prod, __atomic_load_n(&s->rsp_prod, __ATOMIC_RELAXED) + 1000,
				 __ATOMIC_RELEASE);
		isolde_waiter_signal(&nt->drv.waiter, true);
		for (;;)
			pause();
	}
	if (fire(nt, "scribble", "garbage over the TX buffers and the TX ring; serving on"))
		scribble(nt);
}

static int tx_frame(struct net_tap *nt, const struct isolde_netif_tx_request *req, unsigned char *data)
{
	(void)req;
	(void)data;
	if (!is("drop-tx") || !due(nt))
		return NET_TAP_SEND;
	fire(nt, "drop-tx", "TX frames answered OK, not sent");
	return ISOLDE_NETIF_S_OK;
}

static unsigned tx_answer(struct net_tap *nt, struct isolde_netif_tx_response *rsp)
{
	if (fire(nt, "tx-bad-id", "a TX answer with an id never posted"))
		rsp->id ^= BAD_ID_BITS;
	if (fire(nt, "tx-bad-status", "a TX answer with status 77"))
		rsp->status = 77;
	if (fire(nt, "tx-twice", "one TX request answered twice"))
		return 2;
	if (is("stall-tx") && due(nt)) {
		fire(nt, "stall-tx", "TX frames sent, never answered; heartbeat on");
		return 0;
	}
	return 1;
}

/* Flip the last byte of an IP packet's payload; true if there was one. */
static bool corrupt(unsigned char *f, uint32_t len)
{
	uint32_t start, end;

	if (len < 14)
		return false;
	unsigned type = (unsigned)f[12] << 8 | f[13];
	if (type == 0x0800 && len >= 14 + 20) {
		start = 14 + (f[14] & 0xfu) * 4;
		end = 14 + ((uint32_t)f[16] << 8 | f[17]);
	} else if (type == 0x86dd && len >= 14 + 40) {
		start = 14 + 40;
		end = start + ((uint32_t)f[18] << 8 | f[19]);
	} else {
		return false;
	}
	if (end > len)
		end = len;
	if (end <= start)
		return false;
	f[end - 1] ^= 0xff;
	return true;
}

static void rx_answer(struct net_tap *nt, unsigned char *data, struct isolde_netif_rx_response *rsp)
{
	if (fire(nt, "rx-bad-length", "an RX answer longer than its buffer"))
		rsp->length = nt->drv.params.buf_size + 1;
	if (fire(nt, "rx-bad-id", "an RX answer with an id never posted"))
		rsp->id ^= BAD_ID_BITS;
	if (fire(nt, "rx-bad-offload", "an RX answer with GSO TCPV4 and gso_size 0")) {
		rsp->offload.gso_type = ISOLDE_NETIF_GSO_TCPV4;
		rsp->offload.gso_size = 0;
	}
	if (is("corrupt-rx") && due(nt) && rsp->offload.gso_type == ISOLDE_NETIF_GSO_NONE &&
	    corrupt(data, rsp->length)) {
		fire(nt, "corrupt-rx", "received IP packets flipped and answered OK");
		/* A partial checksum left as it is would be completed over
		 * the flipped byte by the receiver; as a full one it is wrong. */
		rsp->offload.flags &= (uint8_t)~(ISOLDE_NETIF_O_DATA_VALID | ISOLDE_NETIF_O_NEEDS_CSUM);
	}
}

static bool rx_paused(struct net_tap *nt)
{
	if (!is("stall-rx") || !due(nt))
		return false;
	fire(nt, "stall-rx", "the TAP's frames left unread; heartbeat on");
	return true;
}

static const struct net_tap_hooks net_fault_hooks = {
	.parse_arg = parse_arg,
	.frame = frame,
	.tx_frame = tx_frame,
	.tx_answer = tx_answer,
	.rx_answer = rx_answer,
	.rx_paused = rx_paused,
};

int main(int argc, char **argv)
{
	return net_tap_main(argc, argv, "net-fault", &net_fault_hooks);
}
