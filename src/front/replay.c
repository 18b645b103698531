// SPDX-License-Identifier: MIT
/* How a block device takes up a fresh driver generation (recovery.h). */
#define _GNU_SOURCE
#include "device.h"

#include <stdlib.h>
#include <string.h>

static int by_sequence(const void *a, const void *b, void *ctx)
{
	const struct isolde_shadow *s = ctx;
	uint64_t x = s->entries[*(const uint32_t *)a].id, y = s->entries[*(const uint32_t *)b].id;
	return x < y ? -1 : x > y;
}

/*
 * Re-post every request in the shadow to a fresh driver, oldest first, so a
 * flush still follows the writes it was meant to cover. Copy-mode writes are
 * copied again from the caller's buffer: the dead driver may have scribbled
 * on the data area. Requests submitted while the driver was down are in the
 * shadow too, and go with them.
 */
static unsigned replay(struct isolde_blk *dev)
{
	uint32_t order[ISOLDE_BLK_MAX_QUEUE_DEPTH];
	unsigned n = 0;
	uint64_t now = isolde_now_ns();

	for (uint32_t i = 0; i < dev->shadow.depth; i++)
		if (dev->shadow.entries[i].id != 0)
			order[n++] = i;
	qsort_r(order, n, sizeof order[0], by_sequence, &dev->shadow);
	for (unsigned k = 0; k < n; k++) {
		struct isolde_shadow_entry *e = &dev->shadow.entries[order[k]];

		if (e->copy && e->op == ISOLDE_BLK_OP_WRITE)
			memcpy(dev->domain.data + e->data_offset, e->io->buf, e->length);
		e->submitted_ns = now;
		e->replayed = e->replayed || e->posted;
		isolde_front_post(dev, order[k]);
	}
	isolde_waiter_signal(&dev->waiter, isolde_front_push_requests(&dev->ring) || n > 0);
	return n;
}

/* The new generation is ready: the front end's side of the ring afresh,
 * then everything in flight again. */
static unsigned resume(void *owner)
{
	struct isolde_blk *dev = owner;

	isolde_front_ring_attach(&dev->ring, dev->domain.sring, dev->domain.layout.ring_slots,
				 ISOLDE_BLK_SLOT_SIZE);
	dev->ring.peer_sleeps = dev->waiter.mode != ISOLDE_NOTIFY_SPIN;
	dev->waiter.spin_ns = dev->waiter.spin_min_ns;
	dev->heartbeat_seen = 0;
	dev->heartbeat_changed_ns = isolde_now_ns();
	return replay(dev);
}

const struct isolde_recovery_ops isolde_blk_recovery_ops = { .resume = resume };
