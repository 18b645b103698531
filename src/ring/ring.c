// SPDX-License-Identifier: MIT
#include "isolde/ring.h"

#include <string.h>

/*
 * Both sides publish with a release store and read the peer's producer index
 * with an acquire load: slot contents written before the release are visible
 * after the acquire. The full fence between publishing and reading the event
 * index (and between arming an event index and re-reading the producer) is
 * what makes hold-off safe: without it, a store-load reordering lets each side
 * believe the other will notify, and both sleep.
 */

void isolde_sring_init(struct isolde_sring *s)
{
	__atomic_store_n(&s->req_prod, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->rsp_prod, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->req_event, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&s->rsp_event, 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

void isolde_front_ring_attach(struct isolde_front_ring *fr, struct isolde_sring *s,
			      uint32_t nslots, uint32_t slot_size)
{
	fr->sring = s;
	fr->nslots = nslots;
	fr->slot_size = slot_size;
	fr->req_prod_pvt = 0;
	fr->rsp_cons = 0;
	fr->peer_sleeps = true;
}

void isolde_back_ring_attach(struct isolde_back_ring *br, struct isolde_sring *s,
			     uint32_t nslots, uint32_t slot_size)
{
	br->sring = s;
	br->nslots = nslots;
	br->slot_size = slot_size;
	br->rsp_prod_pvt = 0;
	br->req_cons = 0;
	br->peer_sleeps = true;
}

bool isolde_front_push_requests(struct isolde_front_ring *fr)
{
	uint32_t old = __atomic_load_n(&fr->sring->req_prod, __ATOMIC_RELAXED);
	uint32_t new_ = fr->req_prod_pvt;

	if (old == new_)
		return false;
	__atomic_store_n(&fr->sring->req_prod, new_, __ATOMIC_RELEASE);
	if (!fr->peer_sleeps)
		return false;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return isolde_ring_need_notify(old, new_,
				       __atomic_load_n(&fr->sring->req_event, __ATOMIC_RELAXED));
}

int64_t isolde_front_unconsumed_responses(const struct isolde_front_ring *fr, uint32_t *prod)
{
	uint32_t p = __atomic_load_n(&fr->sring->rsp_prod, __ATOMIC_ACQUIRE);
	uint32_t avail = p - fr->rsp_cons;
	uint32_t outstanding = fr->req_prod_pvt - fr->rsp_cons;

	*prod = p;
	if (avail > outstanding)
		return -1;
	return avail;
}

bool isolde_front_final_check_responses(struct isolde_front_ring *fr)
{
	uint32_t prod;

	if (isolde_front_unconsumed_responses(fr, &prod) != 0)
		return true;
	__atomic_store_n(&fr->sring->rsp_event, fr->rsp_cons + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return isolde_front_unconsumed_responses(fr, &prod) != 0;
}

uint32_t isolde_back_unconsumed_requests(const struct isolde_back_ring *br)
{
	uint32_t prod = __atomic_load_n(&br->sring->req_prod, __ATOMIC_ACQUIRE);
	uint32_t published = prod - br->req_cons;
	/* Slots the driver may consume before it would reach a response the
	 * front end has not read yet (Xen's RING_REQUEST_CONS_OVERFLOW). */
	uint32_t room = br->nslots - (br->req_cons - br->rsp_prod_pvt);

	return published < room ? published : room;
}

bool isolde_back_push_responses(struct isolde_back_ring *br)
{
	uint32_t old = __atomic_load_n(&br->sring->rsp_prod, __ATOMIC_RELAXED);
	uint32_t new_ = br->rsp_prod_pvt;

	if (old == new_)
		return false;
	__atomic_store_n(&br->sring->rsp_prod, new_, __ATOMIC_RELEASE);
	if (!br->peer_sleeps)
		return false;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return isolde_ring_need_notify(old, new_,
				       __atomic_load_n(&br->sring->rsp_event, __ATOMIC_RELAXED));
}

bool isolde_back_final_check_requests(struct isolde_back_ring *br)
{
	if (isolde_back_unconsumed_requests(br) != 0)
		return true;
	__atomic_store_n(&br->sring->req_event, br->req_cons + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return isolde_back_unconsumed_requests(br) != 0;
}

void isolde_copy_from_shared(void *dst, const volatile void *src, size_t n)
{
	memcpy(dst, (const void *)src, n);
	__asm__ volatile("" ::: "memory");
}
