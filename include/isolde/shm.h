/* SPDX-License-Identifier: MIT */
/*
 * isolde/shm.h - the layout of a driver domain's one shared memory object.
 *
 *   offset 0            struct isolde_shm_header (one page)
 *   ring_offset         struct isolde_sring + nslots * 128-byte slots
 *   grant_offset        grant_count struct isolde_grant (mapped read-only
 *                       by the driver)
 *   data_offset         data area: buffers the requests name through grants
 *
 * Every region starts on a page boundary. The memfd is sealed against
 * shrinking and growing, so a driver cannot make the front end's mapping
 * fault by truncating it.
 */
#ifndef ISOLDE_SHM_H
#define ISOLDE_SHM_H

#include <stdint.h>
#include <stddef.h>

#include "isolde/ring.h"

#define ISOLDE_SHM_MAGIC UINT64_C(0x69736f6c64650a01) /* "isolde\n\1" */
#define ISOLDE_SHM_VERSION 1u
#define ISOLDE_PAGE_SIZE 4096u

/* device_flags */
#define ISOLDE_DEV_READONLY 0x1u
#define ISOLDE_DEV_BLOCKDEV 0x2u /* the device fd is a block device, not a file */
#define ISOLDE_DEV_REMOTE 0x4u   /* the driver reaches the device (fd 6 says how); it
				    reports the size (reported_size) */

/* device_class values: what the rings carry */
#define ISOLDE_CLASS_BLOCK 0u /* isolde/blkif.h on one ring */
#define ISOLDE_CLASS_NET 1u   /* isolde/netif.h on a TX and an RX ring */

/* driver_state values (written by the driver, informational only) */
#define ISOLDE_DRIVER_STARTING 0u
#define ISOLDE_DRIVER_READY 1u
#define ISOLDE_DRIVER_FAILED 2u

struct isolde_shm_header {
	/*
	 * Written by the front end before the driver starts; never changed
	 * while the driver runs. The driver checks it once at start.
	 */
	uint64_t magic;
	uint32_t version;
	uint32_t header_size;
	uint64_t total_size;
	uint64_t ring_offset;
	uint32_t ring_slots;
	uint32_t slot_size;
	uint64_t grant_offset;
	uint32_t grant_count;
	uint32_t max_segs;
	uint64_t data_offset;
	uint64_t data_size;
	uint64_t device_size;
	uint32_t device_flags;
	uint32_t notify_mode;  /* enum isolde_notify_mode */
	uint32_t spin_min_ns;  /* hybrid window bounds */
	uint32_t spin_max_ns;
	uint32_t generation;   /* bumped on every driver (re)start */
	uint32_t device_class; /* ISOLDE_CLASS_BLOCK or ISOLDE_CLASS_NET */
	/* A network device (isolde/netif.h): the RX ring (the TX ring is at
	 * ring_offset), each buffer's size, the offloads it carries and its
	 * MTU. Zero for a block device. */
	uint64_t rx_ring_offset;
	uint32_t buf_size;
	uint32_t net_features;  /* ISOLDE_NETIF_F_* */
	uint32_t mtu;
	uint32_t reserved0;

	/*
	 * Written by the driver. The front end never bases a decision about
	 * data on these: they are for liveness and statistics only.
	 */
	_Alignas(ISOLDE_CACHELINE) uint32_t driver_state;
	uint32_t driver_pid;
	uint64_t heartbeat;       /* incremented once per service-loop pass */
	uint64_t requests_done;
	uint64_t batches;         /* service-loop passes that found requests */
	/*
	 * A remote device (blk-nbd, blk-rbd) is only known to its driver:
	 * before it reports ready, a driver whose device_size above is 0
	 * writes the size and ISOLDE_DEV_READONLY of what it reached here.
	 * The launcher copies them once, at ready; the first generation's
	 * answer becomes the device's size, and every later generation must
	 * give the same or it failed to start (docs/PROTOCOL.md §1.7).
	 */
	uint64_t reported_size;
	uint32_t reported_flags;
	uint32_t reserved1;
	/* The driver's session with its remote (a librados instance id), so
	 * that the next generation can take over what a dead one held (its
	 * exclusive lock). 0 for none. */
	uint64_t session_id;
};

_Static_assert(sizeof(struct isolde_shm_header) <= ISOLDE_PAGE_SIZE, "header fits a page");

struct isolde_shm_layout {
	uint32_t device_class;
	uint32_t ring_slots;
	uint64_t rx_ring_offset; /* ISOLDE_CLASS_NET */
	uint32_t grant_count;
	uint64_t ring_offset;
	uint64_t grant_offset;
	uint64_t data_offset;
	uint64_t data_size;
	uint64_t total_size;
};

/*
 * Compute the layout for ring_slots slots (a power of two) and a data area of
 * at least data_size bytes (rounded up to pages). Returns 0, or -1 if the
 * inputs are out of range.
 */
int isolde_shm_layout_compute(struct isolde_shm_layout *l, uint32_t ring_slots, uint64_t data_size);

/*
 * A network device's layout (isolde/netif.h): a TX and an RX ring of
 * ring_slots slots, a grant and an ISOLDE_NETIF_BUF_SIZE buffer per slot of
 * each, and at least extra_data bytes more of data area (a VM's round-up).
 */
int isolde_shm_layout_compute_net(struct isolde_shm_layout *l, uint32_t ring_slots, uint64_t extra_data);

/*
 * Driver side: check a private copy of the header against the size of the
 * shared object. Returns NULL if consistent, else a message naming the field.
 */
const char *isolde_shm_header_check(const struct isolde_shm_header *h, uint64_t object_size);

#endif
