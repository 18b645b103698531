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
 *   unreachable 60s                  a remote device (blk-nbd, blk-rbd) that
 *                                    cannot be reached is tried again, backing
 *                                    off, for this long before its I/O fails
 *   libraries  (none)                'loaded [PATH...]': the driver is
 *                                    dynamically linked; it may read (and map
 *                                    as code) exactly the libraries its loader
 *                                    loads at start, found by the launcher,
 *                                    and the files under each PATH
 *   connect    (none)                'PORT|LO-HI ...': TCP ports the driver
 *                                    may connect to itself (Landlock); such a
 *                                    driver shares the host's network
 *                                    namespace. Needs the 'net' group.
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
#define ISOLDE_SYSCALLS_URING 0x8u /* io_uring_enter on the launcher's ring */
#define ISOLDE_SYSCALLS_STREAM 0x10u /* send/receive on the handed socket (fd 6) only */
#define ISOLDE_SYSCALLS_NET   0x20u /* TCP sockets of its own, connect, epoll, pipes */
#define ISOLDE_SYSCALLS_ALL   0x3fu

#define ISOLDE_POLICY_MAX_LIBRARY_PATHS 8
#define ISOLDE_POLICY_MAX_PORT_RANGES 16

struct isolde_port_range {
	uint16_t lo, hi;
};

/* What a driver runs in: a sandboxed process, or a virtual machine of its
 * own (QEMU, its own kernel; src/domain/vm.h). */
enum isolde_domain_kind {
	ISOLDE_DOMAIN_PROCESS = 0,
	ISOLDE_DOMAIN_VM = 1,
};

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
	uint32_t unreachable_ms;    /* a remote device may stay unreachable this long */
	bool libraries;             /* 'libraries loaded': dynamically linked */
	unsigned nlibrary_paths;    /* further read-only paths */
	char library_paths[ISOLDE_POLICY_MAX_LIBRARY_PATHS][256];
	unsigned nconnect;          /* TCP ports it may connect to */
	struct isolde_port_range connect[ISOLDE_POLICY_MAX_PORT_RANGES];
	enum isolde_domain_kind domain; /* 'domain', default process */
	uint64_t guest_memory_bytes; /* 'guest-memory': a VM domain's RAM */
	bool vm_standby;            /* 'standby': a VM domain boots its next VM ahead */
	char source[256];           /* the file it came from */
};

/* Defaults of the optional keys. */
#define ISOLDE_POLICY_DEFAULT_PROGRESS 32u
#define ISOLDE_POLICY_DEFAULT_CPU_PERCENT 100u
#define ISOLDE_POLICY_DEFAULT_LOG_LINES 100u
#define ISOLDE_POLICY_MAX_THREADS 256u
#define ISOLDE_POLICY_DEFAULT_UNREACHABLE_MS 60000u
#define ISOLDE_POLICY_DEFAULT_GUEST_MEMORY (UINT64_C(256) << 20)
#define ISOLDE_POLICY_MIN_GUEST_MEMORY (UINT64_C(64) << 20)
#define ISOLDE_POLICY_MAX_GUEST_MEMORY (UINT64_C(16) << 30)

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

/*
 * The policy a driver runs under: the file at path, or (path NULL) the one
 * shipped for it; it must name the driver (its name, without a directory).
 * Returns 0, or -1 with err.
 */
int isolde_policy_load_for(struct isolde_policy *p, const char *driver_name, const char *path,
			   char *err, size_t errlen);

/* Write the policy in file syntax (what `isolde policy show` prints). */
void isolde_policy_format(const struct isolde_policy *p, char *buf, size_t len);

const char *isolde_syscall_group_name(uint32_t group);

const char *isolde_domain_kind_name(enum isolde_domain_kind k);
/* "process" or "vm"; 0, or -1 for anything else. */
int isolde_domain_kind_parse(const char *s, enum isolde_domain_kind *k);


#endif
