/* SPDX-License-Identifier: MIT */
/*
 * isolde/ring.h - a shared-memory request/response ring with Xen ring.h
 * semantics.
 *
 * One array of slots carries requests from the front end to the driver and
 * responses back; a response is written into the slot of a request the driver
 * has already consumed, so at most `nslots` requests are ever outstanding.
 *
 * Ownership of the four shared indices (each on its own cache line so the two
 * sides never write the same line):
 *
 *   req_prod   written by the front end (release store), read by the driver
 *   rsp_event  written by the front end: "call me when rsp_prod passes this"
 *   rsp_prod   written by the driver (release store), read by the front end
 *   req_event  written by the driver: "kick me when req_prod passes this"
 *
 * Consumer indices (req_cons, rsp_cons) and the producers' private indices
 * never leave their owner's private memory, so neither side can be confused
 * about its own position by the other.
 *
 * Indices are free-running uint32_t; slot = index & (nslots - 1).
 *
 * Notification hold-off: a producer publishes a batch, then notifies only if
 * the batch crossed the consumer's event index (see isolde_ring_need_notify).
 * A consumer that is about to sleep sets its event index to cons + 1, issues a
 * full barrier and re-checks the producer index (the RING_FINAL_CHECK
 * pattern), so no wake-up can be lost.
 */
#ifndef ISOLDE_RING_H
#define ISOLDE_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ISOLDE_CACHELINE 64
#define ISOLDE_RING_MIN_ORDER 1
#define ISOLDE_RING_MAX_ORDER 10 /* 1024 slots */

struct isolde_sring {
	/* Front end writes. */
	_Alignas(ISOLDE_CACHELINE) uint32_t req_prod;
	_Alignas(ISOLDE_CACHELINE) uint32_t rsp_event;
	/* Driver writes. */
	_Alignas(ISOLDE_CACHELINE) uint32_t rsp_prod;
	_Alignas(ISOLDE_CACHELINE) uint32_t req_event;
	_Alignas(ISOLDE_CACHELINE) unsigned char slots[];
};

/* Bytes needed for a shared ring of nslots slots of slot_size bytes. */
static inline size_t isolde_sring_size(uint32_t nslots, uint32_t slot_size)
{
	return sizeof(struct isolde_sring) + (size_t)nslots * slot_size;
}

/* Front end's private view. */
struct isolde_front_ring {
	struct isolde_sring *sring;
	uint32_t nslots;
	uint32_t slot_size;
	uint32_t req_prod_pvt; /* next request slot to fill */
	uint32_t rsp_cons;     /* next response to consume */
	bool peer_sleeps;      /* false in spin mode: pushes skip the fence and
				* the event index, since nobody waits on them */
};

/* Driver's private view. */
struct isolde_back_ring {
	struct isolde_sring *sring;
	uint32_t nslots;
	uint32_t slot_size;
	uint32_t rsp_prod_pvt; /* next response slot to fill */
	uint32_t req_cons;     /* next request to consume */
	bool peer_sleeps;      /* as in isolde_front_ring */
};

static inline bool isolde_ring_order_valid(uint32_t nslots)
{
	return nslots >= (1u << ISOLDE_RING_MIN_ORDER) &&
	       nslots <= (1u << ISOLDE_RING_MAX_ORDER) &&
	       (nslots & (nslots - 1)) == 0;
}

/* Called once by the creator (front end) before the driver sees the ring. */
void isolde_sring_init(struct isolde_sring *s);

/* Attach with peer_sleeps = true; a spin-mode side clears it afterwards. */
void isolde_front_ring_attach(struct isolde_front_ring *fr, struct isolde_sring *s,
			      uint32_t nslots, uint32_t slot_size);
void isolde_back_ring_attach(struct isolde_back_ring *br, struct isolde_sring *s,
			     uint32_t nslots, uint32_t slot_size);

static inline void *isolde_ring_slot(struct isolde_sring *s, uint32_t nslots,
				     uint32_t slot_size, uint32_t idx)
{
	return s->slots + (size_t)(idx & (nslots - 1)) * slot_size;
}

/*
 * The notification rule shared by both directions: a producer that moved its
 * index from old to new must notify iff the consumer's event index lies in
 * (old, new]. Unsigned wrap-around makes this correct across index overflow.
 */
static inline bool isolde_ring_need_notify(uint32_t old, uint32_t new_, uint32_t event)
{
	return (uint32_t)(new_ - event) < (uint32_t)(new_ - old);
}

/* ---- front end: produce requests ---- */

/* Slots the front end may still fill without overrunning unconsumed responses. */
static inline uint32_t isolde_front_free_slots(const struct isolde_front_ring *fr)
{
	return fr->nslots - (fr->req_prod_pvt - fr->rsp_cons);
}

static inline void *isolde_front_next_request(struct isolde_front_ring *fr)
{
	return isolde_ring_slot(fr->sring, fr->nslots, fr->slot_size, fr->req_prod_pvt);
}

/* Publish requests filled so far; returns true if the driver must be kicked
 * (never when peer_sleeps is false). */
bool isolde_front_push_requests(struct isolde_front_ring *fr);

/*
 * Number of responses the driver has published and the front end has not
 * consumed, read once from rsp_prod (acquire). Returns -1 if the driver
 * published more responses than there are outstanding requests: a protocol
 * violation. *prod receives the value read.
 */
int64_t isolde_front_unconsumed_responses(const struct isolde_front_ring *fr, uint32_t *prod);

/*
 * Arm rsp_event and re-check: returns true if responses are (now) pending,
 * false if the front end may sleep until called. A protocol violation counts
 * as pending so the caller goes and finds it.
 */
bool isolde_front_final_check_responses(struct isolde_front_ring *fr);

/* ---- driver: consume requests, produce responses ---- */

/*
 * Requests published and not yet consumed, clamped so a confused front end can
 * never make the driver overwrite a response it has not yet consumed.
 */
uint32_t isolde_back_unconsumed_requests(const struct isolde_back_ring *br);

static inline const void *isolde_back_request_at(const struct isolde_back_ring *br, uint32_t idx)
{
	return isolde_ring_slot(br->sring, br->nslots, br->slot_size, idx);
}

static inline void *isolde_back_next_response(struct isolde_back_ring *br)
{
	return isolde_ring_slot(br->sring, br->nslots, br->slot_size, br->rsp_prod_pvt);
}

/* Publish responses filled so far; returns true if the front end must be called. */
bool isolde_back_push_responses(struct isolde_back_ring *br);

/* Arm req_event and re-check: true if requests are pending. */
bool isolde_back_final_check_requests(struct isolde_back_ring *br);

/*
 * Copy n bytes out of shared memory into private memory exactly once. The
 * compiler barrier stops it from re-reading shared memory in place of the
 * private copy (the double fetch of Xen XSA-155).
 */
void isolde_copy_from_shared(void *dst, const volatile void *src, size_t n);

static inline void isolde_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield" ::: "memory");
#else
	__asm__ volatile("" ::: "memory");
#endif
}

#endif
