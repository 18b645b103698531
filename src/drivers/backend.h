/* SPDX-License-Identifier: MIT */
/*
 * The driver side of a driver domain: everything a block driver shares -
 * attaching to the shared memory it was handed, the service loop over the
 * ring, and checked access to granted data. A driver supplies only how to do
 * each operation on its device.
 */
#ifndef ISOLDE_DRIVERS_BACKEND_H
#define ISOLDE_DRIVERS_BACKEND_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "isolde/blkif.h"
#include "isolde/grant.h"
#include "isolde/notify.h"
#include "isolde/ring.h"
#include "isolde/shm.h"

struct isolde_driver;

struct isolde_driver_ops {
	const char *name;
	/* Parse driver-specific argv (after the fd options); 0 or -1. */
	int (*parse_arg)(struct isolde_driver *drv, const char *arg, const char *value);
	/* Called once after attaching, before the driver reports ready. */
	int (*init)(struct isolde_driver *drv);
	/* Do one checked request; return an ISOLDE_BLK_S_* status. iov is
	 * the granted data (READ/WRITE only), already bounds-checked. */
	uint8_t (*io)(struct isolde_driver *drv, const struct isolde_blk_request *req,
		      const struct iovec *iov, int iovcnt);
	/*
	 * Optional: replaces the default "serve, then respond" for one
	 * request (test drivers use it to misbehave). It must call
	 * isolde_driver_serve() and isolde_driver_respond() itself.
	 */
	void (*handle)(struct isolde_driver *drv, const struct isolde_blk_request *req);
};

struct isolde_driver {
	const struct isolde_driver_ops *ops;
	struct isolde_shm_header params;  /* private copy, checked once */
	struct isolde_shm_header *header; /* shared: only the driver-written fields are used */
	struct isolde_back_ring ring;
	struct isolde_grant_view grants;
	struct isolde_waiter waiter;
	int device_fd;
	bool notify_pending;              /* a push in this batch crossed rsp_event */
	uint64_t heartbeat;               /* private counts, mirrored into the header */
	uint64_t requests_done;
	uint64_t batches;
	void *priv;                       /* driver-specific state */
};

/* Entry point for driver binaries: attach, init, serve until killed. */
int isolde_driver_main(int argc, char **argv, const struct isolde_driver_ops *ops);

/* Check a request and do it through ops->io; fills rsp. */
void isolde_driver_serve(struct isolde_driver *drv, const struct isolde_blk_request *req,
			 struct isolde_blk_response *rsp);

/* Put one response on the ring and publish it. */
void isolde_driver_respond(struct isolde_driver *drv, const struct isolde_blk_response *rsp);

/* Log a line to stderr prefixed with the driver's name and pid. */
void isolde_driver_log(const struct isolde_driver *drv, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
