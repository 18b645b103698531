/* SPDX-License-Identifier: MIT */
/*
 * The driver side of a driver domain: everything a block driver shares -
 * attaching to the shared memory it was handed, the service loop over the
 * ring, and checked access to granted data. A driver supplies only how to do
 * each operation on its device. A network driver shares the start and the
 * checked access, and has a loop of its own (net_tap.h).
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

	/*
	 * Optional asynchronous model (blk-uring). When submit is set, io and
	 * handle are not used and the service loop is:
	 *
	 *   1. copy out every visible request; check each exactly as
	 *      isolde_driver_serve does (an invalid one is answered at once);
	 *      record the valid one's id, op and length under a free tag
	 *      (0 .. ring_slots - 1) in the backend's private table and call
	 *      submit, which queues the I/O and returns ISOLDE_DRIVER_QUEUED,
	 *      or does it at once and returns its ISOLDE_BLK_S_* status;
	 *   2. reap: start what was queued (one system call for the batch)
	 *      and finish what is done, each by isolde_driver_complete();
	 *      returns how many it completed;
	 *   3. call the front end once for the pass;
	 *   4. if there was nothing to do, wait for a request or for
	 *      completion_pending to become true. A driver that can sleep
	 *      on a completion gives the fd with isolde_driver_watch_fd().
	 *
	 * At most ring_slots requests are ever in flight (the ring allows no
	 * more), so a driver sized to ring_slots never runs out of room.
	 */
	int (*submit)(struct isolde_driver *drv, const struct isolde_blk_request *req,
		      const struct iovec *iov, int iovcnt, uint32_t tag);
	unsigned (*reap)(struct isolde_driver *drv);
	/* True if reap would find a completion; no system call. */
	bool (*completion_pending)(struct isolde_driver *drv);

	/*
	 * Optional: the device is being closed (the launcher sent SIGTERM,
	 * with nothing in flight): release what the device holds for this
	 * driver - a remote image's lock - before the driver exits. Called on
	 * the service loop's thread; the launcher kills the driver if it takes
	 * longer than ISOLDE_DRIVER_STOP_MS.
	 */
	void (*stop)(struct isolde_driver *drv);
};

/* Asynchronous model: with requests in flight, the service loop beats its
 * heart at least this often while it waits for the device. */
#define ISOLDE_DRIVER_BUSY_BEAT_NS (100 * 1000000ll)

/* submit's return value for "queued; reap will complete it". */
#define ISOLDE_DRIVER_QUEUED (-1)

/* The backend's private record of a request handed to ops->submit. */
struct isolde_driver_pending {
	uint64_t id;
	uint32_t length;
	uint8_t op;
	bool busy;
};

struct isolde_driver {
	const struct isolde_driver_ops *ops;
	struct isolde_shm_header params;  /* private copy, checked once */
	struct isolde_shm_header *header; /* shared: only the driver-written fields are used */
	struct isolde_back_ring ring;
	struct isolde_grant_view grants;
	struct isolde_waiter waiter;
	int device_fd;
	int uring_fd;                     /* the launcher's io_uring, or -1 */
	const char *uring_params_hex;     /* its io_uring_params, to map it */
	bool notify_pending;              /* a push in this batch crossed rsp_event */
	uint64_t heartbeat;               /* private counts, mirrored into the header */
	uint64_t requests_done;
	uint64_t batches;
	/* Asynchronous model only: requests handed to ops->submit and not
	 * yet completed, one record per tag, and a stack of free tags. */
	struct isolde_driver_pending *pending;
	uint32_t *free_tags;
	uint32_t nfree;
	uint32_t inflight;
	/* --take-over-session: the session of the generation before this
	 * one (isolde_driver_report_session), or 0. */
	uint64_t previous_session;
	void *priv;                       /* driver-specific state */
};

/* Entry point for block driver binaries: attach, init, serve until killed.
 * A shared memory of another device class is refused (exit status 1). */
int isolde_driver_main(int argc, char **argv, const struct isolde_driver_ops *ops);

/*
 * A driver with a service loop of its own (a network driver, net_tap.h)
 * starts in the same steps as isolde_driver_main:
 *
 *   isolde_driver_attach   with drv->ops (name, parse_arg) and drv->priv set:
 *                          parse argv (the fd options, then ops->parse_arg),
 *                          map and check the shared memory, which must be of
 *                          device_class (ISOLDE_CLASS_*), map the grant table
 *                          read-only, attach drv->ring at ring_offset and set
 *                          up drv->waiter. Returns 0, or the exit status (2:
 *                          bad arguments, 1: unusable shared memory), logged.
 *   its own initialisation; on failure isolde_driver_failed, then exit 1
 *   isolde_driver_ready    catch SIGTERM, then report ready to the launcher
 *   its loop, which exits 0 once isolde_driver_stop_requested() is true
 *
 * The SIGTERM handler also kicks the driver's own kick eventfd, so a loop
 * whose wait's pending and arm_check look at isolde_driver_stop_requested()
 * wakes at once, whatever the mode.
 */
int isolde_driver_attach(struct isolde_driver *drv, int argc, char **argv, unsigned device_class);
void isolde_driver_ready(struct isolde_driver *drv);
void isolde_driver_failed(struct isolde_driver *drv);
bool isolde_driver_stop_requested(void);

/* Check a request and do it through ops->io; fills rsp. */
void isolde_driver_serve(struct isolde_driver *drv, const struct isolde_blk_request *req,
			 struct isolde_blk_response *rsp);

/* Put one response on the ring and publish it. */
void isolde_driver_respond(struct isolde_driver *drv, const struct isolde_blk_response *rsp);

/*
 * Asynchronous model: answer the request submitted under tag with status
 * (an ISOLDE_BLK_S_* value). The response is built from the backend's
 * private record (id, op, and the length on success), never from anything
 * the driver or shared memory holds, and the tag is freed. A tag that is not
 * in flight is a driver bug: logged, then abort().
 */
void isolde_driver_complete(struct isolde_driver *drv, uint32_t tag, uint8_t status);

/* Asynchronous model: also end a wait when fd becomes readable (an
 * io_uring fd is, while its completion queue holds entries). */
void isolde_driver_watch_fd(struct isolde_driver *drv, int fd);

/*
 * Asynchronous model, a driver whose completions arrive on a socket (blk-nbd):
 * watch fd for the poll() events given (POLLIN; POLLOUT too while a send
 * waits for room in the socket), and have a spinning wait poll it every
 * spin_poll_ns (0: about once a millisecond) - its completions cannot be
 * seen without a system call. A wait that ends because the fd fired is
 * followed by reap even with nothing in flight, so a driver learns of a
 * connection that closed while it was idle. Cheap: call it before each wait.
 */
void isolde_driver_watch_fd_events(struct isolde_driver *drv, int fd, short events,
				   uint32_t spin_poll_ns);

/*
 * The status for an errno the device gave. ISOLDE_BLK_S_INVALID is never
 * returned: it means the request broke the protocol, which the front end
 * treats as a lie about a request it checked; the OS refusing a well-formed
 * request (EINVAL included) is a device error.
 */
uint8_t isolde_driver_status_from_errno(int e);

/*
 * A remote device's driver, in init: say what was reached. If the front end
 * gave no size (params.device_size 0: the first generation), this one
 * becomes the device's size; otherwise a different size is an error (-1,
 * logged), because the device changed under the front end. A remote that is
 * read-only must not be opened read-write (-1, logged).
 */
int isolde_driver_report_device(struct isolde_driver *drv, uint64_t size, bool readonly);

/* Publish this generation's session with its remote (0 for none). */
void isolde_driver_report_session(struct isolde_driver *drv, uint64_t session_id);

/* Log a line (the launcher adds the driver's name and pid). */
void isolde_driver_log(const struct isolde_driver *drv, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* fstat(2) itself: drivers may not use glibc's, which looks up a path. */
struct stat;
int isolde_driver_fstat(int fd, struct stat *st);

#endif
