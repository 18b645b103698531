// SPDX-License-Identifier: MIT
#include "isolde/shm.h"
#include "isolde/blkif.h"
#include "isolde/grant.h"
#include "isolde/netif.h"
#include "isolde/notify.h"

#define MAX_DATA_SIZE (UINT64_C(1) << 32) /* grant offsets/lengths are 32-bit within it */

static uint64_t page_round(uint64_t n)
{
	return (n + ISOLDE_PAGE_SIZE - 1) & ~(uint64_t)(ISOLDE_PAGE_SIZE - 1);
}

int isolde_shm_layout_compute(struct isolde_shm_layout *l, uint32_t ring_slots, uint64_t data_size)
{
	if (!isolde_ring_order_valid(ring_slots) || data_size == 0 || data_size > MAX_DATA_SIZE)
		return -1;
	l->device_class = ISOLDE_CLASS_BLOCK;
	l->rx_ring_offset = 0;
	l->ring_slots = ring_slots;
	l->grant_count = ring_slots * ISOLDE_BLK_MAX_SEGS;
	l->ring_offset = ISOLDE_PAGE_SIZE;
	l->grant_offset = l->ring_offset + page_round(isolde_sring_size(ring_slots, ISOLDE_BLK_SLOT_SIZE));
	l->data_offset = l->grant_offset + page_round((uint64_t)l->grant_count * sizeof(struct isolde_grant));
	l->data_size = page_round(data_size);
	l->total_size = l->data_offset + l->data_size;
	return 0;
}

int isolde_shm_layout_compute_net(struct isolde_shm_layout *l, uint32_t ring_slots, uint64_t extra_data)
{
	uint64_t ring_bytes = page_round(isolde_sring_size(ring_slots, ISOLDE_NETIF_SLOT_SIZE));

	if (!isolde_ring_order_valid(ring_slots))
		return -1;
	uint64_t buffers = 2 * (uint64_t)ring_slots * ISOLDE_NETIF_BUF_SIZE;
	if (extra_data > MAX_DATA_SIZE || buffers + extra_data > MAX_DATA_SIZE)
		return -1;
	l->device_class = ISOLDE_CLASS_NET;
	l->ring_slots = ring_slots;
	l->grant_count = 2 * ring_slots;
	l->ring_offset = ISOLDE_PAGE_SIZE;
	l->rx_ring_offset = l->ring_offset + ring_bytes;
	l->grant_offset = l->rx_ring_offset + ring_bytes;
	l->data_offset = l->grant_offset + page_round((uint64_t)l->grant_count * sizeof(struct isolde_grant));
	l->data_size = page_round(buffers + extra_data);
	l->total_size = l->data_offset + l->data_size;
	return 0;
}

/* The region [off, off + len) lies inside [0, size) and does not overlap [lo, hi). */
static int region_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off % ISOLDE_PAGE_SIZE == 0 && off <= size && len <= size - off;
}

static const char *common_check(const struct isolde_shm_header *h);

/* A network device: two rings, one grant per buffer of each, every buffer
 * inside the data area, and only known offloads. */
static const char *net_check(const struct isolde_shm_header *h, uint64_t object_size)
{
	uint64_t ring_bytes = isolde_sring_size(h->ring_slots, ISOLDE_NETIF_SLOT_SIZE);

	if (h->slot_size != ISOLDE_NETIF_SLOT_SIZE)
		return "slot_size";
	if (h->max_segs != 1)
		return "max_segs";
	if (h->ring_offset < ISOLDE_PAGE_SIZE || !region_ok(h->ring_offset, ring_bytes, object_size))
		return "ring_offset";
	if (h->rx_ring_offset < h->ring_offset + ring_bytes || !region_ok(h->rx_ring_offset, ring_bytes, object_size))
		return "rx_ring_offset";
	if (h->grant_count != 2 * h->ring_slots ||
	    !region_ok(h->grant_offset, (uint64_t)h->grant_count * sizeof(struct isolde_grant), object_size) ||
	    h->grant_offset < h->rx_ring_offset + ring_bytes)
		return "grant_offset";
	if (h->buf_size != ISOLDE_NETIF_BUF_SIZE)
		return "buf_size";
	if (h->data_size < (uint64_t)h->grant_count * h->buf_size || h->data_size > MAX_DATA_SIZE ||
	    !region_ok(h->data_offset, h->data_size, object_size) ||
	    h->data_offset < h->grant_offset + (uint64_t)h->grant_count * sizeof(struct isolde_grant))
		return "data_offset";
	if (h->net_features & ~ISOLDE_NETIF_F_ALL)
		return "net_features";
	if (h->mtu < 68 || h->mtu > 65535)
		return "mtu";
	if (h->device_size != 0)
		return "device_size";
	return common_check(h);
}

const char *isolde_shm_header_check(const struct isolde_shm_header *h, uint64_t object_size)
{
	if (h->magic != ISOLDE_SHM_MAGIC)
		return "magic";
	if (h->version != ISOLDE_SHM_VERSION)
		return "version";
	if (h->header_size != sizeof *h)
		return "header_size";
	if (h->total_size != object_size)
		return "total_size";
	if (!isolde_ring_order_valid(h->ring_slots))
		return "ring_slots";
	if (h->device_class == ISOLDE_CLASS_NET)
		return net_check(h, object_size);
	if (h->device_class != ISOLDE_CLASS_BLOCK)
		return "device_class";
	if (h->rx_ring_offset || h->buf_size || h->net_features || h->mtu)
		return "rx_ring_offset";
	if (h->slot_size != ISOLDE_BLK_SLOT_SIZE)
		return "slot_size";
	if (h->max_segs != ISOLDE_BLK_MAX_SEGS)
		return "max_segs";
	if (h->ring_offset < ISOLDE_PAGE_SIZE ||
	    !region_ok(h->ring_offset, isolde_sring_size(h->ring_slots, h->slot_size), object_size))
		return "ring_offset";
	if (h->grant_count == 0 || h->grant_count > h->ring_slots * ISOLDE_BLK_MAX_SEGS ||
	    !region_ok(h->grant_offset, (uint64_t)h->grant_count * sizeof(struct isolde_grant),
		       object_size) ||
	    h->grant_offset < h->ring_offset + isolde_sring_size(h->ring_slots, h->slot_size))
		return "grant_offset";
	if (h->data_size == 0 || h->data_size > MAX_DATA_SIZE ||
	    !region_ok(h->data_offset, h->data_size, object_size) ||
	    h->data_offset < h->grant_offset + (uint64_t)h->grant_count * sizeof(struct isolde_grant))
		return "data_offset";
	return common_check(h);
}

static const char *common_check(const struct isolde_shm_header *h)
{
	if (h->notify_mode > ISOLDE_NOTIFY_HYBRID)
		return "notify_mode";
	if (h->device_flags & ~(uint32_t)(ISOLDE_DEV_READONLY | ISOLDE_DEV_BLOCKDEV | ISOLDE_DEV_REMOTE))
		return "device_flags";
	if (h->spin_min_ns > h->spin_max_ns)
		return "spin_min_ns";
	return NULL;
}
