// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "domain_uring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int restrict_ring(struct io_uring *ring)
{
	static const uint8_t ops[] = { IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC };
	struct io_uring_restriction res[sizeof ops + 2];
	unsigned n = 0;

	memset(res, 0, sizeof res);
	for (size_t i = 0; i < sizeof ops; i++) {
		res[n].opcode = IORING_RESTRICTION_SQE_OP;
		res[n++].sqe_op = ops[i];
	}
	res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
	res[n++].sqe_flags = IOSQE_FIXED_FILE;
	res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
	res[n++].sqe_flags = IOSQE_IO_DRAIN;
	/* No IORING_RESTRICTION_REGISTER_OP: nothing may be registered once
	 * the ring is enabled, by the driver or by anyone. */
	return io_uring_register_restrictions(ring, res, n);
}

int isolde_domain_uring_create(struct isolde_domain_uring *u, unsigned entries, int device_fd,
			       char *err, size_t errlen)
{
	int r;

	memset(u, 0, sizeof *u);
	/* SUBMIT_ALL: a bad SQE fails alone instead of stopping the batch
	 * behind it (Linux 5.18); without it, the same ring otherwise. Not
	 * SINGLE_ISSUER: enabling here would make this thread the only one
	 * allowed to submit. */
	u->params.flags = IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL;
	r = io_uring_queue_init_params(entries, &u->ring, &u->params);
	if (r == -EINVAL) {
		memset(&u->params, 0, sizeof u->params);
		u->params.flags = IORING_SETUP_R_DISABLED;
		r = io_uring_queue_init_params(entries, &u->ring, &u->params);
	}
	if (r < 0) {
		snprintf(err, errlen, "cannot create the driver's io_uring (%u entries): %s", entries,
			 strerror(-r));
		return -1;
	}
	u->active = true;
	const char *step = "register the device";
	if ((r = io_uring_register_files(&u->ring, &device_fd, 1)) == 0) {
		step = "restrict it";
		if ((r = restrict_ring(&u->ring)) == 0) {
			step = "enable it";
			r = io_uring_enable_rings(&u->ring);
		}
	}
	if (r < 0) {
		snprintf(err, errlen, "cannot set up the driver's io_uring: %s: %s", step, strerror(-r));
		isolde_domain_uring_release(u);
		return -1;
	}
	fcntl(u->ring.ring_fd, F_SETFD, FD_CLOEXEC);
	return 0;
}

void isolde_domain_uring_params_hex(const struct isolde_domain_uring *u, char *out, size_t len)
{
	const unsigned char *p = (const unsigned char *)&u->params;
	size_t n = 0;

	for (size_t i = 0; i < sizeof u->params && n + 3 <= len; i++)
		n += (size_t)snprintf(out + n, len - n, "%02x", p[i]);
}

/* The kernel's own counts: SQEs consumed, CQEs posted, CQEs overflowed. */
static int kernel_counts(const struct isolde_domain_uring *u, uint32_t *consumed, uint32_t *posted,
			 uint32_t *overflowed)
{
	char path[64], buf[8192];
	bool have_sq = false, have_cq = false, in_overflow = false;
	int fd;
	FILE *f;

	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", u->ring.ring_fd);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || !(f = fdopen(fd, "r"))) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*overflowed = 0;
	while (fgets(buf, sizeof buf, f)) {
		if (sscanf(buf, "CachedSqHead: %u", consumed) == 1)
			have_sq = true;
		else if (sscanf(buf, "CachedCqTail: %u", posted) == 1)
			have_cq = true;
		else if (strncmp(buf, "CqOverflowList:", 15) == 0)
			in_overflow = true;
		else if (in_overflow && strncmp(buf, "  user_data=", 12) == 0)
			(*overflowed)++;
		else
			in_overflow = false;
	}
	fclose(f);
	return have_sq && have_cq ? 0 : -1;
}

unsigned isolde_domain_uring_inflight(const struct isolde_domain_uring *u)
{
	return u->inflight;
}

int isolde_domain_uring_drain(struct isolde_domain_uring *u, int wait_ms, char *err, size_t errlen)
{
	uint32_t consumed, posted, overflowed;

	if (!u->active)
		return 1;
	for (;;) {
		if (kernel_counts(u, &consumed, &posted, &overflowed) != 0) {
			snprintf(err, errlen, "cannot read the driver's io_uring state from /proc/self/fdinfo");
			return -1;
		}
		u->inflight = consumed - (posted + overflowed);
		if (u->inflight == 0) {
			isolde_domain_uring_release(u);
			return 1;
		}
		/* Take what was posted, so the next completion is a POLLIN. */
		__atomic_store_n(u->ring.cq.khead, posted, __ATOMIC_RELEASE);
		if (wait_ms <= 0)
			return 0;
		struct pollfd p = { .fd = u->ring.ring_fd, .events = POLLIN };
		int slice = wait_ms < 10 ? wait_ms : 10;
		if (poll(&p, 1, slice) < 0 && errno != EINTR) {
			snprintf(err, errlen, "waiting for the driver's io_uring: %s", strerror(errno));
			return -1;
		}
		wait_ms -= slice;
	}
}

void isolde_domain_uring_release(struct isolde_domain_uring *u)
{
	if (!u->active)
		return;
	io_uring_queue_exit(&u->ring);
	u->active = false;
}
