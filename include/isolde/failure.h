/* SPDX-License-Identifier: MIT */
/*
 * isolde/failure.h - how a driver failed, and what self-repair did about it:
 * the failure classes and the restart statistics libisolde reports
 * (isolde_blk_supervisor_stats). The decisions themselves are the
 * supervisor's (not installed).
 */
#ifndef ISOLDE_FAILURE_H
#define ISOLDE_FAILURE_H

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
	ISOLDE_FAIL_UNREACHABLE = 10, /* a remote device could not be reached: no driver was started */
	ISOLDE_FAIL_KERNEL = 11,  /* a VM domain's own kernel failed (panicked) */
	ISOLDE_FAIL_COUNT
};

const char *isolde_failure_name(enum isolde_failure f);

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

/* Median / p99 / max of the kept recovery samples; 0 if none. */
void isolde_supervisor_recovery_summary(const struct isolde_supervisor_stats *st,
					uint32_t *p50, uint32_t *p99, uint32_t *max);

#endif
