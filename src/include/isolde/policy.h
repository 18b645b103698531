/* SPDX-License-Identifier: MIT */
/*
 * isolde/policy.h (internal) - what a driver is allowed: the MINIX 3 isolation policy,
 * enforced with Linux mechanisms by the launcher.
 *
 * A policy file is lines of "key value...", '#' starts a comment. The first
 * eight keys are required, the rest optional (their default is shown); none
 * may repeat, and an unknown key is an error:
 *
 *   driver     blk-file              the driver this policy is for
 *   device     read-write            read-only | read-write
 *   syscalls   base io sync          system-call groups (see isolde_syscall_group_*)
 *   memory     64M                   address space for the driver's own use
 *                                    (the shared memory is added on top)
 *   files      16                    open file limit
 *   heartbeat  2000ms                no heartbeat this long while I/O is
 *                                    pending means the driver hung
 *   restart    1000 per 60s          restart budget: at most N in the window
 *   crash-loop 10                    give up after this many restarts in a row
 *                                    in which the driver made no progress
 *   progress   32                    a generation that completed fewer requests
 *                                    than this before it failed made no progress
 *   threads    0                     threads the driver may start (clone with
 *                                    CLONE_THREAD only; never a process)
 *   cpu        100%                  CPU time, in percent of one core (cgroup)
 *   log        100 per 1s            lines of driver log and of refused-call
 *                                    reports passed on; the rest are counted
 */
#ifndef ISOLDE_POLICY_H
#define ISOLDE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* System-call groups a policy may grant. */
#define ISOLDE_SYSCALLS_BASE  0x1u /* memory, signals, time, eventfd/stderr I/O, exit */
#define ISOLDE_SYSCALLS_IO    0x2u /* positional read/write, fallocate, block ioctls */
#define ISOLDE_SYSCALLS_SYNC  0x4u /* fsync, fdatasync, sync_file_range */
#define ISOLDE_SYSCALLS_URING 0x8u /* io_uring_setup/enter/register */
#define ISOLDE_SYSCALLS_ALL   0xfu

struct isolde_policy {
	char driver[64];
	bool device_writable;
	uint32_t syscalls;          /* ISOLDE_SYSCALLS_* */
	uint64_t memory_bytes;
	uint32_t max_files;
	uint32_t heartbeat_ms;
	uint32_t restart_max;       /* restarts allowed ... */
	uint32_t restart_window_s;  /* ... within this many seconds */
	uint32_t crash_loop_max;    /* consecutive restarts without progress */
	uint32_t progress_min;      /* completions that make a generation's progress */
	uint32_t threads;           /* threads besides the first */
	uint32_t cpu_percent;       /* of one core */
	uint32_t log_lines;         /* log lines passed on ... */
	uint32_t log_window_s;      /* ... per this many seconds */
	char source[256];           /* the file it came from */
};

/* Defaults of the optional keys. */
#define ISOLDE_POLICY_DEFAULT_PROGRESS 32u
#define ISOLDE_POLICY_DEFAULT_CPU_PERCENT 100u
#define ISOLDE_POLICY_DEFAULT_LOG_LINES 100u
#define ISOLDE_POLICY_MAX_THREADS 256u

/*
 * Parse a policy file. Returns 0, or -1 with "FILE:LINE: field 'KEY': what is
 * wrong" (or "FILE: missing required key 'KEY'") in err.
 */
int isolde_policy_load(struct isolde_policy *p, const char *path, char *err, size_t errlen);
/* The same, from text in memory; name is used in messages. */
int isolde_policy_parse(struct isolde_policy *p, const char *name, const char *text,
			char *err, size_t errlen);

/*
 * Find the policy of a driver: $ISOLDE_POLICY_DIR/NAME.policy, then the
 * source tree's policies/ when running from the build tree, else the
 * installed data directory. Returns 0 and the path, or -1 with err.
 */
int isolde_policy_find(const char *driver_name, char *path, size_t len, char *err, size_t errlen);

/* Write the policy in file syntax (what `isolde policy show` prints). */
void isolde_policy_format(const struct isolde_policy *p, char *buf, size_t len);

const char *isolde_syscall_group_name(uint32_t group);


#endif
