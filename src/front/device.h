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

/* Where a device is in the life of its drivers (recovery.c). */
enum isolde_dev_state {
	ISOLDE_DEV_RUNNING,   /* a driver serves the ring */
	ISOLDE_DEV_DOWN,      /* it failed: being killed, reaped, its generation ended */
	ISOLDE_DEV_BACKOFF,   /* a restart waits for its backoff */
	ISOLDE_DEV_STARTING,  /* the next generation is starting */
	ISOLDE_DEV_FAILED,    /* given up: every request fails */
};

struct isolde_recovery {
	enum isolde_dev_state state;
	enum isolde_failure failure; /* the failure being recovered from */
	char why[512];
	uint64_t detected_ns;
	uint64_t deadline_ns;        /* BACKOFF: when to start */
	uint64_t kill_at_ns;         /* DOWN: when the driver gets SIGKILL */
	uint64_t unreachable_said;   /* the last 10 s step of unreachability reported */
};

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
	isolde_blk_event_fn on_event;
	void *on_event_ctx;
	uint64_t completed_gen;    /* requests the running driver completed */
	uint64_t heartbeat_seen;   /* last heartbeat value read, and when it changed */
	uint64_t heartbeat_changed_ns;
	uint64_t death_seen_ns;    /* the driver's end noticed, before reaping it
				    * (which may wait for its I/O to drain) */
	uint64_t recovery_started_ns; /* failure detected; 0 once the first replayed
				       * request completed */
	unsigned replayed_last;    /* requests replayed by the last restart */

	bool shield_on;
	struct isolde_shield shield;
	uint64_t *shield_sums;     /* per shadow entry: a zero-copy write's sums at submit */
	size_t shield_sums_per_io;

	int flush_error;           /* sticky: the write-back error every flush reports */
	bool failed;               /* past the restart budget: every request fails */
	char error[512];
	struct isolde_blk_stats stats;
	struct isolde_blk_io *sync_ios; /* queue_depth of them, for the sync API */
};

/* recovery.c: the one place a failure is recorded and acted on. */
void isolde_recovery_fail(struct isolde_blk *dev, enum isolde_failure f, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void isolde_recovery_step(struct isolde_blk *dev);
int isolde_recovery_timeout_ms(const struct isolde_blk *dev);
void isolde_recovery_note(struct isolde_blk *dev, uint64_t micros);
void isolde_recovery_event(struct isolde_blk *dev, const struct isolde_blk_event *ev);
void isolde_fail_device(struct isolde_blk *dev, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *isolde_dev_state_name(enum isolde_dev_state s);

/* io.c: put shadow entry idx on the ring, granting its buffer. */
void isolde_front_post(struct isolde_blk *dev, uint32_t idx);

#endif
