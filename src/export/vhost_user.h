/* SPDX-License-Identifier: MIT */
/*
 * A vhost-user back end (QEMU's docs/interop/vhost-user.rst) on a Unix
 * socket, for one device; vhost_blk.c and vhost_net.c are the devices.
 *
 * It speaks the protocol: feature negotiation, the memory table, split
 * virtqueues with kick and call eventfds, the device's config space. One
 * front end is served at a time; when it disconnects, the next may
 * connect. Messages are checked before anything acts on them: a malformed
 * one (a bad size, missing fds, regions that overlap or wrap, a ring
 * outside guest memory, a feature that was not offered) is logged and ends
 * the connection; an unknown request is logged and refused.
 *
 * Queues are polled in one of the ring's three modes: event (wait for the
 * guest's kick), spin (poll the available rings, kicks suppressed) or
 * hybrid (poll for a while after the last request, then wait for a kick).
 *
 * Limits (docs/ARCHITECTURE.md §14.1): each head is in flight at most once, so a
 * queue has at most its size in flight; a pass of the loop takes at most
 * 64 requests from a queue; the requests in flight of all connections hold
 * at most 64 MiB, past which the export waits for completions; a front end
 * that shrinks its memory file loses the connection instead of killing the
 * server with SIGBUS; what it can make us log is rate-limited.
 *
 * Requests the device started belong to their queue until
 * vhost_user_complete; when the front end asks for a queue's state
 * (GET_VRING_BASE, which stops it) the answer waits until that queue's
 * requests completed. If the front end went away meanwhile, completion
 * only frees: nothing is written into the memory of a guest that is gone.
 */
#ifndef ISOLDE_EXPORT_VHOST_USER_H
#define ISOLDE_EXPORT_VHOST_USER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "isolde/notify.h"
#include "guest_memory.h"
#include "loop.h"
#include "virtqueue.h"

#define VHOST_USER_MAX_QUEUES 8

struct vhost_user;
struct vhost_conn;

/* One request taken from a queue, as the device holds it. */
struct vhost_request {
	struct vhost_conn *conn;         /* referenced until completion */
	struct guest_memory *mem;        /* referenced: elem's iovecs point into it */
	unsigned queue;
	unsigned generation;             /* the queue's when it was taken */
	size_t cost;                     /* bytes it holds, for the export's limit */
	struct vq_elem *elem;
};

struct vhost_device_ops {
	const char *kind;                /* "vhost-user-blk", for status */
	uint64_t features;               /* virtio feature bits offered */
	unsigned max_queues;
	/* Queues whose requests the device takes itself (vhost_user_take),
	 * one bit each: a network device's receive queue, whose buffers are
	 * only worth taking once a frame is there to fill one. Their requests
	 * never go to request(); available() says the guest added some. */
	uint32_t pulled_queues;
	void (*available)(void *dev, unsigned queue);
	/* Fill the config space; returns its size (at most len). */
	size_t (*get_config)(void *dev, uint8_t *buf, size_t len);
	/* A request from the guest. The device completes it, now or later,
	 * with vhost_user_complete; it owns req until then. */
	void (*request)(void *dev, struct vhost_request *req);
};

/* log_prefix names the export in what it logs ("disk1: vhost-user-blk"). */
struct vhost_user *vhost_user_start(struct isolde_loop *loop, const char *log_prefix, const char *path,
				    enum isolde_notify_mode poll, const struct vhost_device_ops *ops,
				    void *dev, char *err, size_t errlen);
/* Stop taking requests from the guest; those started still complete. */
void vhost_user_quiesce(struct vhost_user *vu);
void vhost_user_stop(struct vhost_user *vu);
void vhost_user_describe(struct vhost_user *vu, FILE *json);
/* Whether a front end is connected. */
bool vhost_user_connected(const struct vhost_user *vu);

/* Take the next request the guest made available on a pulled queue; NULL
 * if there is none (a kick or a poll brings available() when there is),
 * the queue is not running, or the export holds too much. The device
 * completes it like any other. */
struct vhost_request *vhost_user_take(struct vhost_user *vu, unsigned queue);
/* The feature bits the current front end accepted; 0 without one. */
uint64_t vhost_user_features(const struct vhost_user *vu);

/* Finish req: written bytes went into its device-writable segments. Frees
 * req and its element. */
void vhost_user_complete(struct vhost_request *req, uint32_t written);
/* req cannot even be answered (no status byte in guest memory): the
 * queue stops, as for a malformed chain, and req is freed. */
void vhost_user_abandon(struct vhost_request *req, const char *reason);
/* The front end shrank a memory file under req's buffers or its rings:
 * what the device copied from them may be zeros, not the guest's, and
 * must not reach the disk. The connection is closed (logged once); the
 * device completes req without doing it. Call after copying the guest's
 * data and before submitting. */
bool vhost_user_memory_lost(struct vhost_request *req);
/* Rate-limited per export (a burst, then a few lines a second, then a
 * count of what was left out): nearly everything logged here the front
 * end or its guest can cause at will. */
void vhost_user_log(struct vhost_user *vu, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
