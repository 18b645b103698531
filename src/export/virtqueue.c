// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "virtqueue.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The guest may rewrite its memory at any time: copy once, and keep the
 * compiler from re-reading the source in place of the copy. */
static void read_once(void *dst, const void *src, size_t n)
{
	memcpy(dst, src, n);
	__asm__ volatile("" ::: "memory");
}

bool vq_head_in_flight(const struct virtqueue *vq, uint16_t head)
{
	return head < VQ_MAX_SIZE && (vq->inflight_heads[head / 64] >> (head % 64)) & 1;
}

static void mark_in_flight(struct virtqueue *vq, uint16_t head)
{
	vq->inflight_heads[head / 64] |= 1ull << (head % 64);
	vq->inflight++;
}

/* A head the device answers or forgets; one that is not in flight (the
 * device's mistake, not the guest's) changes nothing. */
static void release_head(struct virtqueue *vq, uint16_t head)
{
	if (!vq_head_in_flight(vq, head))
		return;
	vq->inflight_heads[head / 64] &= ~(1ull << (head % 64));
	vq->inflight--;
}

void vq_break(struct virtqueue *vq, const char *fmt, ...)
{
	va_list ap;

	if (vq->broken)
		return;
	vq->broken = true;
	va_start(ap, fmt);
	vsnprintf(vq->broken_reason, sizeof vq->broken_reason, fmt, ap);
	va_end(ap);
}

bool vq_map_rings(struct virtqueue *vq, const struct guest_memory *m)
{
	uint64_t n = vq->num;

	vq->desc = NULL;
	vq->avail = NULL;
	vq->used = NULL;
	if (!vq->addr_set || n == 0)
		return false;
	if (vq->desc_uva % 16 || vq->avail_uva % 2 || vq->used_uva % 4) {
		snprintf(vq->broken_reason, sizeof vq->broken_reason,
			 "queue %u: ring addresses desc 0x%llx avail 0x%llx used 0x%llx are misaligned",
			 vq->index, (unsigned long long)vq->desc_uva, (unsigned long long)vq->avail_uva,
			 (unsigned long long)vq->used_uva);
		return false;
	}
	vq->desc = guest_memory_uva(m, vq->desc_uva, 16 * n);
	vq->avail = guest_memory_uva(m, vq->avail_uva, 6 + 2 * n);
	vq->used = guest_memory_uva(m, vq->used_uva, 6 + 8 * n);
	/* The front end's addresses were aligned, but a region's mmap_offset
	 * need not be: the rings are read with atomic accesses, which must be. */
	if (vq->desc && vq->avail && vq->used &&
	    ((uintptr_t)vq->desc % 16 || (uintptr_t)vq->avail % 2 || (uintptr_t)vq->used % 4)) {
		snprintf(vq->broken_reason, sizeof vq->broken_reason,
			 "queue %u: rings land misaligned in this process (a region's mmap_offset is odd)",
			 vq->index);
		vq->desc = NULL;
		vq->avail = NULL;
		vq->used = NULL;
		return false;
	}
	if (!vq->desc || !vq->avail || !vq->used) {
		snprintf(vq->broken_reason, sizeof vq->broken_reason,
			 "queue %u: ring %s at 0x%llx is not in guest memory", vq->index,
			 !vq->desc ? "desc" : !vq->avail ? "avail" : "used",
			 (unsigned long long)(!vq->desc ? vq->desc_uva : !vq->avail ? vq->avail_uva : vq->used_uva));
		vq->desc = NULL;
		vq->avail = NULL;
		vq->used = NULL;
		return false;
	}
	return true;
}

unsigned vq_available(struct virtqueue *vq)
{
	if (vq->broken || !vq->avail)
		return 0;
	uint16_t idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
	uint16_t n = (uint16_t)(idx - vq->last_avail);
	if (n > vq->num) {
		vq_break(vq, "queue %u: available index moved from %u to %u, more than the queue's %u entries",
			 vq->index, vq->last_avail, idx, vq->num);
		return 0;
	}
	return n;
}

/* The chain's descriptors, copied; 0 (queue broken) if its shape is wrong. */
static unsigned collect_chain(struct virtqueue *vq, const struct guest_memory *m, uint16_t head,
			      struct vring_desc *chain)
{
	struct vring_desc d, *table = NULL;
	unsigned count = 0, limit, idx;

	read_once(&d, &vq->desc[head], sizeof d);
	if (d.flags & VRING_DESC_F_INDIRECT) {
		const void *src;
		if (!vq->indirect) {
			vq_break(vq, "queue %u: descriptor %u is indirect, which was not negotiated", vq->index, head);
			return 0;
		}
		if (d.flags & VRING_DESC_F_NEXT) {
			vq_break(vq, "queue %u: indirect descriptor %u also has NEXT", vq->index, head);
			return 0;
		}
		if (d.len == 0 || d.len % sizeof d || d.len / sizeof d > VQ_MAX_SEGMENTS) {
			vq_break(vq, "queue %u: indirect table of %u bytes (a multiple of %zu up to %u entries)",
				 vq->index, d.len, sizeof d, VQ_MAX_SEGMENTS);
			return 0;
		}
		if (!(src = guest_memory_gpa(m, d.addr, d.len))) {
			vq_break(vq, "queue %u: indirect table at 0x%llx (%u bytes) is not in guest memory",
				 vq->index, (unsigned long long)d.addr, d.len);
			return 0;
		}
		if (!(table = malloc(d.len))) {
			vq_break(vq, "queue %u: out of memory", vq->index);
			return 0;
		}
		read_once(table, src, d.len);
		limit = d.len / sizeof d;
		d = table[0];
	} else {
		limit = vq->num < VQ_MAX_SEGMENTS ? vq->num : VQ_MAX_SEGMENTS;
	}
	for (;;) {
		if (d.flags & VRING_DESC_F_INDIRECT) {
			vq_break(vq, "queue %u: chain from %u holds an indirect descriptor %s", vq->index, head,
				 table ? "inside an indirect table" : "after its head");
			count = 0;
			break;
		}
		if (count == limit) {
			vq_break(vq, "queue %u: chain from %u is longer than %u descriptors (a loop?)",
				 vq->index, head, limit);
			count = 0;
			break;
		}
		if (count > 0 && !(d.flags & VRING_DESC_F_WRITE) && (chain[count - 1].flags & VRING_DESC_F_WRITE)) {
			vq_break(vq, "queue %u: chain from %u has a device-readable descriptor after a "
				 "device-writable one", vq->index, head);
			count = 0;
			break;
		}
		chain[count++] = d;
		if (!(d.flags & VRING_DESC_F_NEXT))
			break;
		idx = d.next;
		if (idx >= (table ? limit : vq->num)) {
			vq_break(vq, "queue %u: chain from %u names descriptor %u, past the %s's %u entries",
				 vq->index, head, idx, table ? "indirect table" : "queue", table ? limit : vq->num);
			count = 0;
			break;
		}
		if (table)
			d = table[idx];
		else
			read_once(&d, &vq->desc[idx], sizeof d);
	}
	free(table);
	return count;
}

struct vq_elem *vq_pop(struct virtqueue *vq, const struct guest_memory *m)
{
	static struct vring_desc chain[VQ_MAX_SEGMENTS]; /* the server has one thread */
	struct vq_elem *e;
	unsigned count, segments = 0, n = 0;
	uint16_t head;

	if (!vq_available(vq))
		return NULL;
	head = __atomic_load_n(&vq->avail->ring[vq->last_avail & (vq->num - 1)], __ATOMIC_RELAXED);
	if (head >= vq->num) {
		vq_break(vq, "queue %u: available entry %u names descriptor %u, past the queue's %u",
			 vq->index, vq->last_avail, head, vq->num);
		return NULL;
	}
	/* Taking it again would answer the guest twice for one request, and
	 * let it have any number in flight by naming one head over and over. */
	if (vq_head_in_flight(vq, head)) {
		vq_break(vq, "queue %u: available entry %u names descriptor %u, which is already in flight "
			 "(%u of the queue's %u requests in flight)", vq->index, vq->last_avail, head,
			 vq->inflight, vq->num);
		return NULL;
	}
	if (!(count = collect_chain(vq, m, head, chain)))
		return NULL;
	for (unsigned i = 0; i < count; i++)
		segments += chain[i].len != 0;
	if (!(e = calloc(1, sizeof *e + segments * sizeof e->iov[0]))) {
		vq_break(vq, "queue %u: out of memory", vq->index);
		return NULL;
	}
	e->head = head;
	for (unsigned i = 0; i < count; i++) {
		const struct vring_desc *d = &chain[i];
		void *p;

		if (d->len == 0)
			continue; /* carries nothing */
		p = guest_memory_gpa(m, d->addr, d->len);
		if (!p && !e->bad) {
			e->bad = true;
			snprintf(e->bad_reason, sizeof e->bad_reason,
				 "buffer 0x%llx (%u bytes) is not in guest memory", (unsigned long long)d->addr, d->len);
		}
		e->iov[n].iov_base = p;
		e->iov[n].iov_len = d->len;
		n++;
		if (d->flags & VRING_DESC_F_WRITE)
			e->nin++;
		else
			e->nout++;
	}
	vq->last_avail++;
	mark_in_flight(vq, head);
	return e;
}

void vq_push(struct virtqueue *vq, uint16_t head, uint32_t written)
{
	struct vring_used_elem *slot = &vq->used->ring[vq->used_idx & (vq->num - 1)];

	__atomic_store_n(&slot->id, head, __ATOMIC_RELAXED);
	__atomic_store_n(&slot->len, written, __ATOMIC_RELAXED);
	vq->used_idx++;
	__atomic_store_n(&vq->used->idx, vq->used_idx, __ATOMIC_RELEASE);
	release_head(vq, head);
}

void vq_drop(struct virtqueue *vq, uint16_t head)
{
	release_head(vq, head);
}

bool vq_should_notify(struct virtqueue *vq)
{
	uint16_t old = vq->signalled_used, now = vq->used_idx, event;
	bool valid = vq->signalled_used_valid;

	/* The used index must be visible before we read whether the guest
	 * wants to hear about it; it reads them in the other order. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!vq->event_idx)
		return !(__atomic_load_n(&vq->avail->flags, __ATOMIC_RELAXED) & VRING_AVAIL_F_NO_INTERRUPT);
	vq->signalled_used = now;
	vq->signalled_used_valid = true;
	if (!valid)
		return true;
	event = __atomic_load_n(&vq->avail->ring[vq->num], __ATOMIC_RELAXED);
	return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

void vq_set_notification(struct virtqueue *vq, bool enable)
{
	if (!vq->desc || !vq->used)
		return;
	if (vq->event_idx) {
		/* Disabling leaves avail_event behind: the guest kicks at most
		 * once more, when its index passes it. */
		if (enable)
			__atomic_store_n((uint16_t *)&vq->used->ring[vq->num], vq->last_avail, __ATOMIC_RELAXED);
	} else {
		__atomic_store_n(&vq->used->flags, enable ? 0 : VRING_USED_F_NO_NOTIFY, __ATOMIC_RELAXED);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}
