/* SPDX-License-Identifier: MIT */
/*
 * A split virtqueue (virtio 1.x, 2.7) seen from the device side, with the
 * guest as an untrusted peer.
 *
 * The descriptor table, available ring and used ring live in guest memory,
 * which the guest can change at any moment. So every index and descriptor
 * is read exactly once into a private copy and checked there: a head or
 * `next` index past the queue, a chain longer than the queue (a loop), an
 * indirect table that is empty, not a whole number of descriptors or
 * itself holds an indirect descriptor, device-readable after
 * device-writable, a head that is already in flight: the chain's structure
 * is wrong and the queue is broken (vq_pop fails; no later request on the
 * queue is looked at). A buffer outside guest memory only spoils its own
 * request: the element comes back with `bad` set and that segment's base
 * NULL, so the device can still answer it with an error in its status byte.
 *
 * Each head the device took is in flight until it is pushed (vq_push) or
 * dropped (vq_drop): the guest may not make it available again before, so
 * that at most num requests are ever in flight, whatever the guest writes.
 *
 * Nothing here knows about block devices.
 */
#ifndef ISOLDE_EXPORT_VIRTQUEUE_H
#define ISOLDE_EXPORT_VIRTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "guest_memory.h"

#define VQ_MAX_SIZE 32768u         /* the split ring's limit */
#define VQ_MAX_SEGMENTS 1024u      /* per request, indirect tables included */

#define VRING_DESC_F_NEXT 1u
#define VRING_DESC_F_WRITE 2u
#define VRING_DESC_F_INDIRECT 4u
#define VRING_USED_F_NO_NOTIFY 1u
#define VRING_AVAIL_F_NO_INTERRUPT 1u

struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vring_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];  /* num entries, then used_event */
};

struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

struct vring_used {
	uint16_t flags;
	uint16_t idx;
	struct vring_used_elem ring[]; /* num entries, then avail_event */
};

struct virtqueue {
	unsigned index;
	unsigned num;                    /* 0 until SET_VRING_NUM */
	uint64_t desc_uva, avail_uva, used_uva; /* as the front end gave them */
	bool addr_set;
	/* Host pointers, translated from the addresses above. */
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	uint16_t last_avail;             /* next available entry to take */
	uint16_t used_idx;               /* next used entry to fill */
	uint16_t signalled_used;         /* used_idx when the guest was last notified */
	bool signalled_used_valid;
	bool event_idx;                  /* VIRTIO_RING_F_EVENT_IDX negotiated */
	bool indirect;                   /* VIRTIO_RING_F_INDIRECT_DESC negotiated */
	bool broken;
	char broken_reason[160];
	/* Heads taken and not yet pushed or dropped, one bit each, and how
	 * many: at most num, since vq_pop takes no head twice. */
	uint64_t inflight_heads[VQ_MAX_SIZE / 64];
	unsigned inflight;
};

/* One request: its device-readable segments, then its device-writable ones. */
struct vq_elem {
	uint16_t head;
	unsigned nout, nin;
	bool bad;                        /* some segment is not in guest memory */
	char bad_reason[128];
	struct iovec iov[];              /* nout + nin, allocated to fit */
};

/* Translate the ring addresses with m; false (reason in vq->broken_reason)
 * when a ring is not in guest memory or misaligned. */
bool vq_map_rings(struct virtqueue *vq, const struct guest_memory *m);

/* How many entries the guest has made available and we have not taken. 0 on
 * a broken queue; breaks the queue if the guest moved idx by more than num. */
unsigned vq_available(struct virtqueue *vq);

/* Take the next available request; NULL if none, or if its chain breaks the
 * queue (its head is already in flight, among others). Its head is in flight
 * from now on. The caller frees the element. */
struct vq_elem *vq_pop(struct virtqueue *vq, const struct guest_memory *m);

/* Put a completed request on the used ring; written is the number of bytes
 * the device wrote into its device-writable segments. The head is no longer
 * in flight. */
void vq_push(struct virtqueue *vq, uint16_t head, uint32_t written);

/* Forget a request without answering it (its queue broke, its front end
 * left): the head is no longer in flight, the used ring is not touched. */
void vq_drop(struct virtqueue *vq, uint16_t head);

/* Whether head was taken and is not yet pushed or dropped. */
bool vq_head_in_flight(const struct virtqueue *vq, uint16_t head);

/* Whether the guest wants an interrupt for what was pushed since the last
 * one (VIRTIO_RING_F_EVENT_IDX's used_event, or the NO_INTERRUPT flag).
 * Call right before notifying; it records the notification. */
bool vq_should_notify(struct virtqueue *vq);

/* Ask the guest for a kick when it makes more requests available (true) or
 * tell it kicks are not needed while we poll (false). After enabling,
 * re-check vq_available: the guest may have added entries before it saw it. */
void vq_set_notification(struct virtqueue *vq, bool enable);

void vq_break(struct virtqueue *vq, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
