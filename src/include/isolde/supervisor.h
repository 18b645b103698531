/* SPDX-License-Identifier: MIT */
/*
 * isolde/supervisor.h (internal) - self-repair: how a driver failure is classified, and
 * when a failed driver may be started again (the MINIX 3 reincarnation
 * server's job).
 *
 * The front end detects failures (its ring, its pidfd, its heartbeat watch)
 * and recovers from them itself: it restarts the driver and replays every
 * request in its private shadow. This module holds the decisions and the
 * record: classification, the restart budget, the backoff, the counters.
 */
#ifndef ISOLDE_SUPERVISOR_H
#define ISOLDE_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isolde/failure.h"

/* Classify how a driver process ended. */
enum isolde_failure isolde_classify_exit(bool signaled, int code);

struct isolde_supervisor {
	uint32_t restart_max;
	uint32_t window_s;
	uint32_t crash_loop_max;
	uint32_t progress_min;      /* completions that count as progress */
	uint64_t *restart_times;    /* ring of the last restart_max restart times */
	uint32_t restart_next;
	uint32_t no_progress;       /* consecutive failures with no request completed */
	uint32_t unreachable_limit_ms; /* a remote device may be unreachable this long */
	uint64_t unreachable_since_ns; /* 0: reachable */
	uint32_t unreachable_tries;
	struct isolde_supervisor_stats stats;
};

int isolde_supervisor_init(struct isolde_supervisor *s, uint32_t restart_max, uint32_t window_s,
			   uint32_t crash_loop_max, uint32_t progress_min);

/*
 * Did a generation that completed this many requests make progress? Only
 * if it completed at least progress_min: a driver that answers a few
 * requests and then fails again, generation after generation, is in a crash
 * loop however it spreads its answers.
 */
bool isolde_supervisor_made_progress(const struct isolde_supervisor *s, uint64_t completed);
void isolde_supervisor_fini(struct isolde_supervisor *s);

/*
 * May the driver be restarted now? Not if restart_max restarts already
 * happened within the window, nor if the failed driver made no progress and
 * crash_loop_max restarts in a row made none either (a crash loop).
 * made_progress: did the failed driver complete any request?
 */
bool isolde_supervisor_may_restart(const struct isolde_supervisor *s, bool made_progress,
				   uint64_t now_ns);

/*
 * Record a restart caused by f. made_progress says whether the failed
 * driver completed any request: only failures without progress (a crash
 * loop) back off and count towards crash_loop_max - except a driver killed
 * from outside (ISOLDE_FAIL_KILLED), which is not the driver's fault. Returns how long to wait before starting the driver:
 * 0 for the first, then 1, 2, 4 ... ms up to ISOLDE_BACKOFF_MAX_MS.
 */
uint64_t isolde_supervisor_record_restart(struct isolde_supervisor *s, enum isolde_failure f,
					  bool made_progress, uint64_t now_ns);
#define ISOLDE_BACKOFF_MAX_MS 500u

/* What the supervisor decides about a failed driver. */
enum isolde_verdict_kind {
	ISOLDE_VERDICT_RESTART,     /* start a new generation after backoff_ns */
	ISOLDE_VERDICT_CRASH_LOOP,  /* give up: crash_loop_max restarts in a row without progress */
	ISOLDE_VERDICT_BUDGET,      /* give up: restart_max restarts within the window */
	ISOLDE_VERDICT_UNREACHABLE, /* give up: the remote device stayed unreachable past the limit */
};

struct isolde_verdict {
	enum isolde_verdict_kind kind;
	uint64_t backoff_ns;
};

/*
 * The one decision after a failure f of a driver that made_progress or not:
 * may_restart, and if so record_restart. The caller acts on the verdict.
 */
struct isolde_verdict isolde_supervisor_judge(struct isolde_supervisor *s, enum isolde_failure f,
					      bool made_progress, uint64_t now_ns);

/* A remote device was reached again (a driver started): forget the
 * unreachable time. */
void isolde_supervisor_reached(struct isolde_supervisor *s);
#define ISOLDE_UNREACHABLE_BACKOFF_MAX_MS 1000u

void isolde_supervisor_record_recovery(struct isolde_supervisor *s, uint64_t micros);

#endif
