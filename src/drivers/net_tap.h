/* SPDX-License-Identifier: MIT */
/*
 * net-tap's service loop (net_tap.c), shared with the test driver that wraps
 * it (tests/drivers/net_fault.c). The wrapper changes the loop only through
 * hooks at the points where a network driver can lie or fail; net-tap itself
 * runs with none.
 */
#ifndef ISOLDE_DRIVERS_NET_TAP_H
#define ISOLDE_DRIVERS_NET_TAP_H

#include "backend.h"
#include "isolde/netif.h"

struct net_tap;

/* tx_frame's return value for "send it as net-tap would". */
#define NET_TAP_SEND (-1)

/* Every hook is optional. */
struct net_tap_hooks {
	/* Driver-specific argv, as isolde_driver_ops.parse_arg; 0 or -1. */
	int (*parse_arg)(struct net_tap *nt, const char *key, const char *value);
	/* Once, after attaching, before the driver reports ready; 0 or -1. */
	int (*init)(struct net_tap *nt);
	/* Frame number nt->frames (from 1: TX requests taken and RX frames
	 * received, together) is about to be handled. */
	void (*frame)(struct net_tap *nt, bool rx);
	/* A TX request that passed every check, with its granted frame:
	 * NET_TAP_SEND, or the ISOLDE_NETIF_S_* status to answer it with
	 * instead of sending it. */
	int (*tx_frame)(struct net_tap *nt, const struct isolde_netif_tx_request *req, unsigned char *frame);
	/* A TX answer about to go on the ring: how many times to put it there
	 * (net-tap: once). */
	unsigned (*tx_answer)(struct net_tap *nt, struct isolde_netif_tx_response *rsp);
	/* An RX answer about to go on the ring, and the frame (rsp->length
	 * bytes, in the front end's buffer) it describes. */
	void (*rx_answer)(struct net_tap *nt, unsigned char *frame, struct isolde_netif_rx_response *rsp);
	/* True: leave the TAP's frames unread in this pass. */
	bool (*rx_paused)(struct net_tap *nt);
};

/* A log line that may repeat with every frame: the first, then one a while
 * that counts the ones left out. */
struct net_tap_note {
	uint64_t next_ns;
	uint64_t suppressed;
};

struct net_tap {
	struct isolde_driver drv;      /* drv.ring is the TX ring */
	struct isolde_back_ring rx;    /* at params.rx_ring_offset */
	const struct net_tap_hooks *hooks;
	void *priv;                    /* the wrapper's */
	uint64_t frames;               /* TX requests taken and RX frames received */
	bool notify;                   /* a push in this pass crossed rsp_event */
	/* The RX buffer being filled: consumed from the ring, not yet
	 * answered. Its request is the checked private copy. */
	bool holding;
	struct isolde_netif_rx_request held;
	unsigned char *held_buf;
	struct net_tap_note tx_invalid, tx_refused, rx_invalid, rx_dropped;
};

/* Entry point: attach to a network device's shared memory, report ready,
 * serve the TX and RX rings over the TAP fd until SIGTERM (exit 0). name is
 * the driver's, for its log; hooks may be NULL. */
int net_tap_main(int argc, char **argv, const char *name, const struct net_tap_hooks *hooks);

#endif
