/* SPDX-License-Identifier: MIT */
/*
 * The verified network workload, for `isolde inject --driver net-tap`: in a
 * network namespace of its own, frames go both ways through an isolated
 * network driver and its TAP, and every frame that arrives is checked
 * against what was sent.
 *
 *   front end --TX ring--> driver --> TAP ==kernel==> packet socket
 *   front end <--RX ring-- driver <-- TAP <==kernel== packet socket
 *
 * The packet socket is bound to the TAP's kernel side, so the namespace's
 * own stack is not involved beyond moving the frame. Each frame carries its
 * direction, sequence number and length, a payload derived from them, and a
 * 64-bit hash of the rest, as a transport's checksum: a frame the driver
 * damaged fails the hash and is dropped and counted, as TCP would drop it;
 * a frame that passes the hash and still differs from what was sent would
 * be corruption no transport could see, and must never happen. Loss and
 * duplication are counted: a restart may cause both, as a network may.
 * After the traffic, a liveness check: a round of frames each way must all
 * arrive, or the device is counted as failed.
 */
#ifndef ISOLDE_TOOLS_NET_VERIFY_H
#define ISOLDE_TOOLS_NET_VERIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "isolde/net.h"

struct net_verify_options {
	struct isolde_net_config cfg;   /* ifname and netns are the workload's own */
	uint64_t frames;                /* each way */
	uint64_t seed;
	/* Called once the device is open, before the traffic (fault injection
	 * attaches to the driver here). */
	void (*opened)(pid_t driver_pid, void *ctx);
	void *opened_ctx;
	/* After a round of traffic, another while again(opened_ctx) says so,
	 * up to max_rounds in all; then the liveness check. */
	bool (*again)(void *ctx);
	unsigned max_rounds;
};

struct net_verify_direction {
	uint64_t sent;
	uint64_t delivered;      /* arrived intact, first time */
	uint64_t duplicates;     /* arrived intact again */
	uint64_t caught;         /* arrived damaged: the hash caught it */
	uint64_t undetected;     /* passed the hash, differs from what was sent: must be 0 */
};

struct net_verify_result {
	struct net_verify_direction tx, rx;   /* front end to TAP, TAP to front end */
	uint64_t foreign;        /* other frames (the namespace's own chatter), ignored */
	bool alive;              /* the last round arrived whole both ways */
	unsigned rounds;         /* of traffic run, before the liveness check */
	struct isolde_net_stats stats;
	struct isolde_supervisor_stats supervisor;
	char error[512];         /* why the device is failed or not alive */
};

/* 0 if the workload ran (look at the result), -1 if it could not start (err).
 * Unshares the calling process's network namespace: run it in a child. */
int net_verify_run(const struct net_verify_options *o, struct net_verify_result *r, char *err, size_t errlen);

#endif
