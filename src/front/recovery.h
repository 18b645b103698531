/* SPDX-License-Identifier: MIT */
/*
 * Recovery (recovery.c): what happens to a device - block or network - after
 * its driver failed, as one state machine that never waits. The device owns
 * a struct isolde_recovery and says, through its ops, how to take up a fresh
 * generation (attach to its rings, replay what was in flight).
 */
#ifndef ISOLDE_FRONT_RECOVERY_H
#define ISOLDE_FRONT_RECOVERY_H

#include <stdbool.h>
#include <stdint.h>

#include "isolde/blk.h"
#include "isolde/domain.h"
#include "isolde/failure.h"
#include "isolde/policy.h"
#include "isolde/supervisor.h"

/* Where a device is in the life of its drivers. */
enum isolde_dev_state {
	ISOLDE_DEV_RUNNING,   /* a driver serves the ring */
	ISOLDE_DEV_DOWN,      /* it failed: being killed, reaped, its generation ended */
	ISOLDE_DEV_BACKOFF,   /* a restart waits for its backoff */
	ISOLDE_DEV_STARTING,  /* the next generation is starting */
	ISOLDE_DEV_FAILED,    /* given up: every request fails */
};

struct isolde_recovery_ops {
	/* The next generation is ready: take up its rings and put everything
	 * in flight on them again. Returns how many requests it replayed. */
	unsigned (*resume)(void *owner);
};

struct isolde_recovery {
	enum isolde_dev_state state;
	enum isolde_failure failure; /* the failure being recovered from */
	char why[512];
	uint64_t detected_ns;
	uint64_t deadline_ns;        /* BACKOFF: when to start */
	uint64_t kill_at_ns;         /* DOWN: when the driver gets SIGKILL */
	uint64_t unreachable_said;   /* the last 10 s step of unreachability reported */

	/* What it acts on, set once by the device's open. */
	struct isolde_domain *domain;
	struct isolde_supervisor *supervisor;
	const struct isolde_policy *policy;
	const char *name;            /* the image or interface, for messages */
	bool remote;                 /* a remote device: a failed open is the remote's */
	const char *unit;            /* "requests" or "frames", for messages */
	const struct isolde_recovery_ops *ops;
	void *owner;
	isolde_blk_event_fn on_event;
	void *on_event_ctx;

	bool failed;                 /* past the restart budget: every request fails */
	char error[512];
	uint64_t completed_gen;      /* requests the running driver completed */
	uint64_t death_seen_ns;      /* the driver's end noticed, before reaping it
				      * (which may wait for its I/O to drain) */
	uint64_t recovery_started_ns; /* failure detected; 0 once the first replayed
				       * request completed */
	unsigned replayed_last;      /* requests replayed by the last restart */
};

/* The one place a failure is recorded and acted on: the first one counts;
 * the driver gets SIGKILL without anyone waiting for it to die. */
void isolde_recovery_fail(struct isolde_recovery *r, enum isolde_failure f, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Do what can be done now; run from every place that waits or polls. */
void isolde_recovery_step(struct isolde_recovery *r);
int isolde_recovery_timeout_ms(const struct isolde_recovery *r);
/* A request of the running generation completed: counts its progress, and
 * the first one after a replay ends the recovery. */
void isolde_recovery_completed(struct isolde_recovery *r);
void isolde_recovery_event(struct isolde_recovery *r, const struct isolde_blk_event *ev);
/* Give up on the device: every pending and later request fails. */
void isolde_recovery_give_up(struct isolde_recovery *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *isolde_dev_state_name(enum isolde_dev_state s);

#endif
