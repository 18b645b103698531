/* SPDX-License-Identifier: MIT */
/*
 * isolde/blk.h - libisolde's block front end.
 *
 * Opens a block device through an isolated driver domain: a separate driver
 * process that reaches the image only through an fd the front end opened and
 * passed, and that talks to the front end only over a shared-memory ring.
 *
 *     struct isolde_blk_config cfg;
 *     isolde_blk_config_default(&cfg);
 *     cfg.image = "disk.img";
 *     cfg.notify = ISOLDE_NOTIFY_HYBRID;
 *     struct isolde_blk *dev = isolde_blk_open(&cfg, err, sizeof err);
 *     isolde_blk_write(dev, buf, 4096, 0);
 *     isolde_blk_close(dev);
 *
 * Synchronous calls return 0 or a negative errno. The asynchronous API
 * (isolde_blk_submit / isolde_blk_push / isolde_blk_reap) keeps up to
 * queue_depth requests in flight. A handle must be used by one thread at a
 * time.
 *
 * Buffers: any user buffer works (copy mode: data is copied through the
 * shared data area). A buffer from isolde_blk_buf_alloc() lives in the data
 * area itself and is granted to the driver without a copy (zero copy); note
 * that the driver maps the whole data area for its whole life, so it can read
 * and write such a buffer at any time, and a replayed write re-sends whatever
 * the buffer then holds. Copy mode keeps the caller's data out of the
 * driver's reach: a replayed write is copied again from the caller's buffer.
 *
 * The front end trusts nothing the driver writes: every response is copied
 * once into private memory and checked against a private shadow of the
 * request. When the driver fails - it exits or is killed, a response fails
 * the check (a protocol violation), or it stops making progress while I/O is
 * pending (a hang) - the front end kills it, starts a fresh one and replays
 * every pending request from the shadow, in submission order: the caller
 * sees neither an error nor a duplicated effect. Restarts are limited by the
 * driver's policy (N per window, with backoff for a driver that fails before
 * completing anything); past the budget the device fails for good and every
 * pending and later request gets -EIO, and isolde_blk_error() says why.
 *
 * This work happens inside the calls that wait or poll (isolde_blk_reap,
 * isolde_blk_poll and the synchronous calls), as a state machine that
 * never blocks: a driver that dies while nobody waits or polls is restarted
 * on the next call. A driver is killed if the thread that started it exits
 * (PR_SET_PDEATHSIG): the one that opened the device, or after a restart
 * the one whose wait restarted it.
 */
#ifndef ISOLDE_BLK_H
#define ISOLDE_BLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "isolde/blkif.h"
#include "isolde/failure.h"
#include "isolde/notify.h"

#define ISOLDE_BLK_DEFAULT_QUEUE_DEPTH 32u
#define ISOLDE_BLK_MAX_QUEUE_DEPTH 1024u
#define ISOLDE_BLK_DEFAULT_MAX_IO (1u << 20)

struct isolde_blk_config {
	const char *image;          /* path of an image file or block device */
	const char *driver;         /* driver name (blk-file) or a path to a driver binary */
	enum isolde_notify_mode notify;
	unsigned queue_depth;       /* max requests in flight; ring = next power of two */
	size_t max_io;              /* largest single request, bytes */
	size_t data_size;           /* zero-copy pool bytes (after one max_io bounce
				     * buffer per queue slot); 0 = 16 MiB */
	bool readonly;
	bool direct;                /* O_DIRECT on the image */
	unsigned timeout_ms;        /* hang detection: no heartbeat this long while I/O
				     * is pending; 0 = the policy's heartbeat */
	const char *policy;         /* policy file; NULL = the driver's shipped policy */
	bool shield;                /* checksum every block written, check every block read */
	char **driver_args;         /* extra argv for the driver (test drivers), NULL-terminated */
	/* A driver whose policy grants io_uring is refused where it cannot get
	 * namespaces (not root, no user namespace), unless this is set: then
	 * seccomp, Landlock and the launcher's restricted ring alone hold it. */
	bool uring_without_namespaces;
	/* What the driver runs in: "process" or "vm" (a QEMU virtual machine
	 * with its own kernel); NULL: what its policy says ('domain'). */
	const char *domain;
	void *owned;                /* private: memory owned by isolde_blk_config_parse */
};

void isolde_blk_config_default(struct isolde_blk_config *cfg);

/*
 * Parse "image=PATH,driver=NAME,notify=MODE,qd=N,readonly,direct,max_io=BYTES,
 * timeout_ms=MS,policy=PATH,shield,uring_without_namespaces,driver_arg=ARG"
 * into cfg (strings point into a private copy owned by cfg until
 * isolde_blk_config_free; driver_arg may be given up to 16 times, each one
 * element of the driver's extra argv). A bare first element without '=' is
 * the image.
 * Returns 0, or -1 with a message naming the bad field in err.
 */
int isolde_blk_config_parse(struct isolde_blk_config *cfg, const char *spec,
			    char *err, size_t errlen);
void isolde_blk_config_free(struct isolde_blk_config *cfg);

struct isolde_blk;

struct isolde_blk *isolde_blk_open(const struct isolde_blk_config *cfg, char *err, size_t errlen);
/* Completes nothing: pending requests are abandoned. Stops the driver. */
void isolde_blk_close(struct isolde_blk *dev);

uint64_t isolde_blk_size(const struct isolde_blk *dev);
unsigned isolde_blk_queue_depth(const struct isolde_blk *dev);
size_t isolde_blk_max_io(const struct isolde_blk *dev);
/*
 * The largest request of op (ISOLDE_BLK_OP_*) one ring request carries:
 * max_io for READ and WRITE, 1 GiB for DISCARD and WRITE_ZEROES (lengths on
 * the ring are 32-bit), 0 for FLUSH (it has no length). A larger request is
 * split into pieces of this size, in order: the synchronous API does it,
 * and so does isolde serve for its exports.
 */
uint64_t isolde_blk_piece_max(const struct isolde_blk *dev, uint8_t op);
pid_t isolde_blk_driver_pid(const struct isolde_blk *dev);
/* True once the driver has failed past its restart budget: all I/O fails. */
bool isolde_blk_failed(const struct isolde_blk *dev);
/* Why the device failed, or "" if it has not. */
const char *isolde_blk_error(const struct isolde_blk *dev);
/* Restarts by failure class, replayed requests, recovery times. */
const struct isolde_supervisor_stats *isolde_blk_supervisor_stats(const struct isolde_blk *dev);
/* The driver's generation: 1 for the first driver, +1 per restart. */
uint32_t isolde_blk_generation(const struct isolde_blk *dev);

/* ---- synchronous I/O (copy or zero copy, any size: split at max_io) ---- */
int isolde_blk_read(struct isolde_blk *dev, void *buf, size_t len, uint64_t offset);
int isolde_blk_write(struct isolde_blk *dev, const void *buf, size_t len, uint64_t offset);
int isolde_blk_write_fua(struct isolde_blk *dev, const void *buf, size_t len, uint64_t offset);
/*
 * Make every write completed before it durable. A failed flush is never
 * retried into success: once the device reported a write-back error, this
 * and every later flush of the handle fail with it (isolde_blk_flush_error),
 * since data the error lost is not on the disk whatever a later flush says.
 */
int isolde_blk_flush(struct isolde_blk *dev);
/*
 * Give up on the device now: its driver is killed, and every pending and
 * later request fails with -EIO; isolde_blk_error says why. For callers that
 * must end a device whose requests do not drain.
 */
void isolde_blk_abort(struct isolde_blk *dev, const char *why);
/* The write-back error every flush now reports (sticky), or 0. */
int isolde_blk_flush_error(const struct isolde_blk *dev);
int isolde_blk_discard(struct isolde_blk *dev, uint64_t offset, uint64_t len);
int isolde_blk_write_zeroes(struct isolde_blk *dev, uint64_t offset, uint64_t len, bool may_unmap);

/* ---- zero-copy buffers in the shared data area ---- */
void *isolde_blk_buf_alloc(struct isolde_blk *dev, size_t len);
void isolde_blk_buf_free(struct isolde_blk *dev, void *buf);

/* ---- asynchronous I/O ---- */
struct isolde_blk_io {
	uint8_t op;          /* enum isolde_blk_op */
	uint16_t flags;      /* ISOLDE_BLK_F_* */
	void *buf;           /* READ/WRITE data; NULL otherwise */
	uint32_t len;        /* <= max_io */
	uint64_t offset;
	void *user_data;
	int result;          /* set on completion: 0 or -errno */
};

/*
 * Queue io on the ring (not yet visible to the driver: see isolde_blk_push).
 * Returns 0; -EAGAIN if queue_depth requests are in flight (reap first);
 * -EINVAL for a malformed request (unknown op or flag, range beyond the
 * device, len 0 or > max_io, misaligned with direct); -EROFS for a write to a
 * read-only device; -EIO if the device has failed. io must stay
 * valid until reaped.
 */
int isolde_blk_submit(struct isolde_blk *dev, struct isolde_blk_io *io);

/* Publish queued requests to the driver; kicks it at most once. */
void isolde_blk_push(struct isolde_blk *dev);

/*
 * Push, then collect up to max completed requests into done[], waiting until
 * at least min are done (or timeout_ms passes; -1 waits as long as the device
 * lives). Returns the number collected, or a negative errno.
 */
int isolde_blk_reap(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max,
		    unsigned min, int timeout_ms);

/* Requests submitted and not yet reaped. */
unsigned isolde_blk_inflight(const struct isolde_blk *dev);

/* ---- event-loop integration (for servers that wait on many fds) ---- */

/*
 * The two fds that become readable when the device needs attention: the
 * call eventfd (the driver answered, once armed with
 * isolde_blk_prepare_sleep) and the watch fd (the driver exited, or made a
 * system call its policy refuses). Both stay the same across restarts.
 */
void isolde_blk_event_fds(const struct isolde_blk *dev, int *call_fd, int *watch_fd);

/*
 * Without blocking: publish queued requests, answer the watch fd, detect a
 * hang, advance the recovery of a failed driver (each step that needs no
 * waiting: reap, backoff, start, replay), and collect up to max completed
 * requests. Returns how many, or a negative errno.
 */
int isolde_blk_poll(struct isolde_blk *dev, struct isolde_blk_io **done, unsigned max);

/*
 * Call before sleeping on the event fds. Returns true if the caller may
 * sleep: nothing is waiting to be collected, and (in event and hybrid mode)
 * the ring is armed so the driver's next answer makes the call fd readable.
 * In spin mode it returns false while requests are in flight: a spinning
 * front end does not sleep.
 */
bool isolde_blk_prepare_sleep(struct isolde_blk *dev);

/*
 * How long an event loop may sleep on the two fds before it must call
 * isolde_blk_poll again: -1 (as long as it likes) while a driver runs,
 * else the milliseconds until the recovery's next deadline (a backoff that
 * ends, a start or a drain that times out). isolde_blk_poll never blocks:
 * a device whose driver is restarting holds up nothing else.
 */
int isolde_blk_timeout_ms(const struct isolde_blk *dev);

/* "running", "down", "backoff", "starting" or "failed". */
const char *isolde_blk_state(const struct isolde_blk *dev);

enum isolde_notify_mode isolde_blk_notify_mode(const struct isolde_blk *dev);
/* READ/WRITE offsets and lengths must be multiples of this: 1, or with
 * O_DIRECT the device's logical block size (4096 for a file). */
uint32_t isolde_blk_alignment(const struct isolde_blk *dev);
bool isolde_blk_readonly(const struct isolde_blk *dev);
/* The driver's name, without its directory (what `isolde status` shows). */
const char *isolde_blk_driver_name(const struct isolde_blk *dev);

/* What a system call the policy refused would have reached. */
enum isolde_denial_class {
	ISOLDE_DENY_DEVICE,    /* ioctl, fallocate and the like on a device */
	ISOLDE_DENY_MEMORY,    /* mappings, protections, memory files */
	ISOLDE_DENY_PROCESS,   /* processes, signals, namespaces, credentials, tracing */
	ISOLDE_DENY_NETWORK,   /* sockets */
	ISOLDE_DENY_FILE,      /* paths, file systems, file descriptors beyond its own */
	ISOLDE_DENY_OTHER,
	ISOLDE_DENIAL_CLASSES
};
const char *isolde_denial_class_name(enum isolde_denial_class c);

struct isolde_blk_stats {
	uint64_t requests;         /* completed */
	uint64_t errors;           /* completed with an error */
	uint64_t kicks;            /* eventfd signals front end -> driver */
	uint64_t calls;            /* eventfd signals driver -> front end, as counted by the front end */
	uint64_t front_sleeps;     /* times the front end blocked waiting */
	uint64_t bytes_copied;     /* copy-mode bytes through the data area */
	uint64_t protocol_violations;
	uint64_t denials;          /* system calls the driver's policy refused */
	uint64_t denials_by_class[ISOLDE_DENIAL_CLASSES]; /* the same, by enum isolde_denial_class */
	uint64_t shield_verified;  /* blocks read back and found as written */
	uint64_t shield_learned;   /* blocks first seen by a read */
	uint64_t shield_mismatches; /* blocks the driver returned different from written */
	uint64_t log_lines;        /* lines the drivers logged (passed on or suppressed) */
	uint64_t log_suppressed;   /* lines and refusal reports over the policy's log rate */
};

void isolde_blk_get_stats(const struct isolde_blk *dev, struct isolde_blk_stats *st);

/*
 * What recovery reports as it happens, in the thread that polls or waits:
 * a driver failed (and will be restarted or not), a driver recovered (its
 * first request after the restart completed, or it came up with nothing to
 * replay), the device gave up.
 */
enum isolde_blk_event_type {
	ISOLDE_BLK_EVENT_FAILED,
	ISOLDE_BLK_EVENT_RECOVERED,
	ISOLDE_BLK_EVENT_GAVE_UP,
};

struct isolde_blk_event {
	enum isolde_blk_event_type type;
	enum isolde_failure failure;   /* FAILED, GAVE_UP */
	const char *reason;            /* FAILED: what happened; GAVE_UP: isolde_blk_error */
	uint32_t generation;           /* FAILED: the failed one; RECOVERED: the new one */
	unsigned replayed;             /* RECOVERED: requests replayed */
	uint64_t recovery_us;          /* RECOVERED: detection to the first completion */
};

typedef void (*isolde_blk_event_fn)(void *ctx, const struct isolde_blk_event *ev);
void isolde_blk_set_event_handler(struct isolde_blk *dev, isolde_blk_event_fn fn, void *ctx);

/* What of a policy a driver's start enforced (the plan, after the host had
 * its say): a missing mechanism is also a warning on stderr. */
struct isolde_enforcement {
	bool namespaces;       /* mnt, net, ipc, uts and the empty root */
	bool user_namespace;   /* ... inside a user namespace of its own (not root) */
	bool own_uid;          /* a uid no other process has (root) */
	bool cgroups;          /* CPU and task limits */
	int landlock_abi;      /* 0: no Landlock */
	bool restricted_uring; /* the launcher's io_uring (policy 'uring') */
	bool vm;               /* a VM domain: the driver runs in a QEMU guest of its own */
};

/* How the running driver is confined. */
const struct isolde_enforcement *isolde_blk_enforcement(const struct isolde_blk *dev);

#endif
