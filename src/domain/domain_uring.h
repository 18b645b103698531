/* SPDX-License-Identifier: MIT */
/*
 * The io_uring of a driver whose policy grants `uring`. The launcher, not
 * the driver, creates it, for each generation:
 *
 *   - bound to that generation's device fd, registered as fixed file 0;
 *   - restricted before it is enabled (IORING_REGISTER_RESTRICTIONS): only
 *     READV, WRITEV and FSYNC, only on fixed files, with no flag but
 *     IOSQE_IO_DRAIN, and no io_uring_register operation at all once
 *     enabled. The driver may call io_uring_enter, never io_uring_setup or
 *     io_uring_register (seccomp), so no ring of its own can carry OPENAT,
 *     SOCKET, CONNECT or FALLOCATE past seccomp.
 *
 * The launcher keeps its own reference. A killed driver's requests are not
 * all cancelled when it dies: an O_DIRECT read or write already at the
 * device completes later, and a read would land in the shared data area
 * (which replay hands to new requests) or a write overwrite newer data on
 * the device. So before the next generation starts, the launcher waits
 * until every request the kernel consumed from the ring has completed: the
 * kernel's own counts (CachedSqHead, CachedCqTail and the overflow list in
 * /proc/self/fdinfo), which the driver cannot write. Every consumed SQE
 * completes exactly once here: links, CQE skipping and multishot requests
 * are not allowed. An SQE the kernel dropped (a bad index the driver wrote)
 * has no completion, so the drain does not end: it times out, and the
 * device fails instead of reusing memory that may still be written.
 */
#ifndef ISOLDE_DOMAIN_URING_H
#define ISOLDE_DOMAIN_URING_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>

struct isolde_domain_uring {
	bool active;
	struct io_uring ring;          /* the launcher's mapping and fd */
	struct io_uring_params params; /* what the driver needs to map it */
	unsigned inflight;             /* at the last look */
};

/* Create the restricted ring for a generation's device fd. 0 or -1 + err. */
int isolde_domain_uring_create(struct isolde_domain_uring *u, unsigned entries, int device_fd,
			       char *err, size_t errlen);

/* The params as hex, for the driver's --uring-params argument. */
void isolde_domain_uring_params_hex(const struct isolde_domain_uring *u, char *out, size_t len);

/*
 * The driver is dead: wait up to wait_ms for every request it started to
 * complete. 1: drained (and the ring released); 0: requests are still in
 * flight (call again; the caller keeps the deadline); -1 with err: the
 * kernel's counts cannot be read.
 */
int isolde_domain_uring_drain(struct isolde_domain_uring *u, int wait_ms, char *err, size_t errlen);

/* Requests in flight when last looked at (for messages). */
unsigned isolde_domain_uring_inflight(const struct isolde_domain_uring *u);

/* Release without waiting (nothing was ever submitted, or giving up). */
void isolde_domain_uring_release(struct isolde_domain_uring *u);

#endif
