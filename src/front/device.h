/* SPDX-License-Identifier: MIT */
/* The front end's private device state, shared by its source files. */
#ifndef ISOLDE_FRONT_DEVICE_H
#define ISOLDE_FRONT_DEVICE_H

#include <limits.h>
#include <stdbool.h>

#include "isolde/blk.h"
#include "isolde/domain.h"
#include "isolde/notify.h"
#include "isolde/policy.h"
#include "isolde/ring.h"
#include "isolde/supervisor.h"

#include "buf_pool.h"
#include "shadow.h"
#include "remote.h"
#include "shield.h"
#include "recovery.h"

struct isolde_blk {
	char image[PATH_MAX];
	int device_fd;             /* -1 for a remote image */
	struct isolde_remote *remote; /* a remote image (remote.h), or NULL */
	char **driver_args;        /* the config's, then the remote's */
	uint64_t size;
	bool readonly;
	bool direct;
	unsigned align;            /* offsets and lengths must be multiples (O_DIRECT) */
	unsigned queue_depth;
	size_t max_io;
	uint32_t hang_ms;          /* no heartbeat this long with I/O pending = hang */
	struct isolde_policy policy;

	struct isolde_domain domain;
	struct isolde_front_ring ring;
	struct isolde_waiter waiter;
	struct isolde_shadow shadow;
	struct isolde_buf_pool pool;
	uint64_t pool_offset;      /* zero-copy pool, within the data area */

	struct isolde_supervisor supervisor;
	struct isolde_recovery rec;
	uint64_t heartbeat_seen;   /* last heartbeat value read, and when it changed */
	uint64_t heartbeat_changed_ns;

	bool shield_on;
	struct isolde_shield shield;
	uint64_t *shield_sums;     /* per shadow entry: a zero-copy write's sums at submit */
	size_t shield_sums_per_io;

	int flush_error;           /* sticky: the write-back error every flush reports */
	struct isolde_blk_stats stats;
	struct isolde_blk_io *sync_ios; /* queue_depth of them, for the sync API */
};

/* replay.c: how a block device takes up a fresh generation. */
extern const struct isolde_recovery_ops isolde_blk_recovery_ops;

/* io.c: put shadow entry idx on the ring, granting its buffer. */
void isolde_front_post(struct isolde_blk *dev, uint32_t idx);

#endif
