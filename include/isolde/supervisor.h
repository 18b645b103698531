/* SPDX-License-Identifier: MIT */
/*
 * isolde/supervisor.h - self-repair: how a driver failure is classified, and
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

enum isolde_failure {
	ISOLDE_FAIL_CPU = 0,      /* CPU exception: SIGILL, SIGFPE, SIGTRAP */
	ISOLDE_FAIL_MMU = 1,      /* MMU exception: SIGSEGV, SIGBUS */
	ISOLDE_FAIL_PANIC = 2,    /* abort(), or any exit: a driver never exits on its own */
	ISOLDE_FAIL_POLICY = 3,   /* killed by its policy: SIGSYS (seccomp), SIGXFSZ (grew the image) */
	ISOLDE_FAIL_HANG = 4,     /* no heartbeat while I/O was pending */
	ISOLDE_FAIL_PROTOCOL = 5, /* a response the front end rejected */
	ISOLDE_FAIL_KILLED = 6,   /* killed from outside (SIGKILL, SIGTERM, ...) */
	ISOLDE_FAIL_START = 7,    /* a restarted driver did not come up */
	ISOLDE_FAIL_CORRUPTION = 8, /* a read the integrity shield caught lying */
	ISOLDE_FAIL_ERROR_STATUS = 9, /* an I/O error a fresh driver is asked to confirm */
	ISOLDE_FAIL_COUNT
};

const char *isolde_failure_name(enum isolde_failure f);

/* Classify how a driver process ended. */
enum isolde_failure isolde_classify_exit(bool signaled, int code);

#define ISOLDE_RECOVERY_SAMPLES 4096

struct isolde_supervisor_stats {
	uint64_t restarts;
	uint64_t by_failure[ISOLDE_FAIL_COUNT];
	uint64_t replayed;          /* requests re-posted to a restarted driver */
	/* Recovery time in microseconds: failure detected to the first
	 * replayed request completed (or to the driver ready, if nothing was
	 * pending). The most recent ISOLDE_RECOVERY_SAMPLES are kept. */
	uint32_t recovery_us[ISOLDE_RECOVERY_SAMPLES];
	uint32_t recovery_count;    /* samples kept (<= ISOLDE_RECOVERY_SAMPLES) */
};

struct isolde_supervisor {
	uint32_t restart_max;
	uint32_t window_s;
	uint32_t crash_loop_max;
	uint32_t progress_min;      /* completions that count as progress */
	uint64_t *restart_times;    /* ring of the last restart_max restart times */
	uint32_t restart_next;
	uint32_t no_progress;       /* consecutive failures with no request completed */
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

void isolde_supervisor_record_recovery(struct isolde_supervisor *s, uint64_t micros);

/* Median / p99 / max of the kept recovery samples; 0 if none. */
void isolde_supervisor_recovery_summary(const struct isolde_supervisor_stats *st,
					uint32_t *p50, uint32_t *p99, uint32_t *max);

#endif
