// SPDX-License-Identifier: MIT
/*
 * Unit tests: the shared request/response ring (src/ring/ring.c) and, in the
 * two-thread tests, the waiters of src/ring/notify.c with real eventfds.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "isolde/notify.h"
#include "isolde/ring.h"

#define SLOT 128u
#define REQ_MAGIC 0x52455131u /* "REQ1" */
#define RSP_MAGIC 0x52535031u /* "RSP1" */

/* What travels in a slot: a kind, a sequence number and a body derived from
 * both, so a slot that holds anything else is noticed. */
struct msg {
	uint32_t magic;
	uint32_t pad;
	uint64_t seq;
	unsigned char body[SLOT - 16];
};
_Static_assert(sizeof(struct msg) == SLOT, "message fills a slot");

static void msg_make(struct msg *m, uint32_t magic, uint64_t seq)
{
	m->magic = magic;
	m->pad = (uint32_t)~seq;
	m->seq = seq;
	for (size_t i = 0; i < sizeof m->body; i++)
		m->body[i] = (unsigned char)(seq * 131u + i * 7u + magic);
}

static bool msg_ok(const struct msg *m, uint32_t magic, uint64_t seq)
{
	struct msg want;
	msg_make(&want, magic, seq);
	return memcmp(m, &want, sizeof want) == 0;
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* ---- a ring with both ends in one thread ---- */

struct rp {
	struct isolde_sring *s;
	struct isolde_front_ring fr;
	struct isolde_back_ring br;
	uint32_t n;
	uint32_t start;
};

static void rp_init(struct rp *r, uint32_t nslots, uint32_t start)
{
	size_t size = (isolde_sring_size(nslots, SLOT) + ISOLDE_CACHELINE - 1) &
		      ~(size_t)(ISOLDE_CACHELINE - 1);

	r->s = aligned_alloc(ISOLDE_CACHELINE, size);
	assert_non_null(r->s);
	memset(r->s, 0xA5, size);
	isolde_sring_init(r->s);
	assert_int_equal(r->s->req_prod, 0);
	assert_int_equal(r->s->rsp_prod, 0);
	assert_int_equal(r->s->req_event, 1);
	assert_int_equal(r->s->rsp_event, 1);
	isolde_front_ring_attach(&r->fr, r->s, nslots, SLOT);
	isolde_back_ring_attach(&r->br, r->s, nslots, SLOT);
	r->n = nslots;
	r->start = start;
	/* Start anywhere: as if `start` requests had already gone round. */
	r->s->req_prod = r->s->rsp_prod = start;
	r->s->req_event = r->s->rsp_event = start + 1;
	r->fr.req_prod_pvt = r->fr.rsp_cons = start;
	r->br.rsp_prod_pvt = r->br.req_cons = start;
}

static void rp_fini(struct rp *r)
{
	free(r->s);
	r->s = NULL;
}

static void front_produce(struct rp *r, uint64_t seq)
{
	struct msg m;
	assert_true(isolde_front_free_slots(&r->fr) > 0);
	msg_make(&m, REQ_MAGIC, seq);
	memcpy(isolde_front_next_request(&r->fr), &m, sizeof m);
	r->fr.req_prod_pvt++;
}

static void back_consume(struct rp *r, uint64_t want_seq)
{
	struct msg m;
	isolde_copy_from_shared(&m, isolde_back_request_at(&r->br, r->br.req_cons), sizeof m);
	r->br.req_cons++;
	if (!msg_ok(&m, REQ_MAGIC, want_seq))
		fail_msg("back: slot holds magic %08x seq %llu, want request %llu", m.magic,
			 (unsigned long long)m.seq, (unsigned long long)want_seq);
}

static void back_respond(struct rp *r, uint64_t seq)
{
	struct msg m;
	/* The response goes into the slot of a request already consumed. */
	assert_true(r->br.req_cons - r->br.rsp_prod_pvt > 0);
	assert_true(r->br.req_cons - r->br.rsp_prod_pvt <= r->n);
	msg_make(&m, RSP_MAGIC, seq);
	memcpy(isolde_back_next_response(&r->br), &m, sizeof m);
	r->br.rsp_prod_pvt++;
}

static void front_take(struct rp *r, uint64_t want_seq)
{
	struct msg m;
	isolde_copy_from_shared(&m, isolde_ring_slot(r->fr.sring, r->fr.nslots, r->fr.slot_size,
						     r->fr.rsp_cons), sizeof m);
	r->fr.rsp_cons++;
	if (!msg_ok(&m, RSP_MAGIC, want_seq))
		fail_msg("front: slot holds magic %08x seq %llu, want response %llu", m.magic,
			 (unsigned long long)m.seq, (unsigned long long)want_seq);
}

static int64_t front_avail(struct rp *r)
{
	uint32_t prod;
	return isolde_front_unconsumed_responses(&r->fr, &prod);
}

static void test_init_and_attach(void **state)
{
	(void)state;
	struct rp r;

	rp_init(&r, 8, 0);
	assert_int_equal(isolde_front_free_slots(&r.fr), 8);
	assert_int_equal(front_avail(&r), 0);
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0);
	/* Nothing to publish: no notification, no index change. */
	assert_false(isolde_front_push_requests(&r.fr));
	assert_false(isolde_back_push_responses(&r.br));
	assert_int_equal(r.s->req_prod, 0);
	assert_int_equal(r.s->rsp_prod, 0);
	/* Slots are laid out back to back, 128 bytes apart, after the indices. */
	for (uint32_t i = 0; i < 8; i++)
		assert_ptr_equal(isolde_ring_slot(r.s, 8, SLOT, i), r.s->slots + i * SLOT);
	assert_ptr_equal(isolde_ring_slot(r.s, 8, SLOT, 8), r.s->slots);
	assert_ptr_equal(isolde_ring_slot(r.s, 8, SLOT, UINT32_MAX), r.s->slots + 7 * SLOT);
	/* The four shared indices are on four different cache lines. */
	assert_int_equal(offsetof(struct isolde_sring, rsp_event) - offsetof(struct isolde_sring, req_prod),
			 ISOLDE_CACHELINE);
	assert_int_equal(offsetof(struct isolde_sring, rsp_prod), 2 * ISOLDE_CACHELINE);
	assert_int_equal(offsetof(struct isolde_sring, req_event), 3 * ISOLDE_CACHELINE);
	assert_int_equal(offsetof(struct isolde_sring, slots) % ISOLDE_CACHELINE, 0);
	rp_fini(&r);

	assert_false(isolde_ring_order_valid(0));
	assert_false(isolde_ring_order_valid(1));
	assert_true(isolde_ring_order_valid(2));
	assert_false(isolde_ring_order_valid(3));
	assert_true(isolde_ring_order_valid(1024));
	assert_false(isolde_ring_order_valid(2048));
	assert_false(isolde_ring_order_valid(1023));

	static const char *const names[] = { "event", "spin", "hybrid" };
	for (int m = 0; m < 3; m++) {
		enum isolde_notify_mode got = (enum isolde_notify_mode)99;
		assert_int_equal(isolde_notify_mode_parse(names[m], &got), 0);
		assert_int_equal(got, m);
		assert_string_equal(isolde_notify_mode_name((enum isolde_notify_mode)m), names[m]);
	}
	enum isolde_notify_mode got = ISOLDE_NOTIFY_SPIN;
	assert_int_equal(isolde_notify_mode_parse("EVENT", &got), -1);
	assert_int_equal(isolde_notify_mode_parse("", &got), -1);
	assert_int_equal(isolde_notify_mode_parse("spinning", &got), -1);
	assert_int_equal(got, ISOLDE_NOTIFY_SPIN);
	assert_string_equal(isolde_notify_mode_name((enum isolde_notify_mode)3), "unknown");
}

/* Fill the ring, then watch responses take the places of their requests. */
static void fill_ring(uint32_t n, uint32_t start)
{
	struct rp r;
	rp_init(&r, n, start);

	for (uint32_t i = 0; i < n; i++) {
		assert_int_equal(isolde_front_free_slots(&r.fr), n - i);
		front_produce(&r, i);
	}
	assert_int_equal(isolde_front_free_slots(&r.fr), 0);
	/* Nothing is visible before the push. */
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0);
	assert_true(isolde_front_push_requests(&r.fr));
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n);
	for (uint32_t i = 0; i < n; i++)
		back_consume(&r, i);
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0);

	/* The first response lands in the first request's slot ... */
	assert_ptr_equal(isolde_back_next_response(&r.br), isolde_back_request_at(&r.br, start));
	back_respond(&r, 0);
	assert_int_equal(front_avail(&r), 0); /* not yet pushed */
	assert_true(isolde_back_push_responses(&r.br));
	assert_int_equal(front_avail(&r), 1);
	/* ... while the other slots still hold their requests. */
	for (uint32_t i = 1; i < n; i++)
		assert_true(msg_ok(isolde_ring_slot(r.s, n, SLOT, start + i), REQ_MAGIC, i));
	assert_int_equal(isolde_front_free_slots(&r.fr), 0);
	front_take(&r, 0);
	assert_int_equal(isolde_front_free_slots(&r.fr), 1);
	/* The freed slot is the one the next request goes into. */
	assert_ptr_equal(isolde_front_next_request(&r.fr), isolde_ring_slot(r.s, n, SLOT, start));
	front_produce(&r, n);
	assert_int_equal(isolde_front_free_slots(&r.fr), 0);
	isolde_front_push_requests(&r.fr);
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 1);
	/* The new request overwrote only the consumed response's slot. */
	for (uint32_t i = 1; i < n; i++)
		assert_true(msg_ok(isolde_ring_slot(r.s, n, SLOT, start + i), REQ_MAGIC, i));

	/* Answer everything; the front end sees it all, in order. */
	for (uint32_t i = 1; i < n; i++)
		back_respond(&r, i);
	back_consume(&r, n);
	back_respond(&r, n);
	isolde_back_push_responses(&r.br);
	assert_int_equal(front_avail(&r), n);
	for (uint32_t i = 1; i <= n; i++)
		front_take(&r, i);
	assert_int_equal(front_avail(&r), 0);
	assert_int_equal(isolde_front_free_slots(&r.fr), n);
	assert_int_equal(r.fr.req_prod_pvt, start + n + 1);
	assert_int_equal(r.s->req_prod, start + n + 1);
	assert_int_equal(r.s->rsp_prod, start + n + 1);
	rp_fini(&r);
}

static void test_fill_ring(void **state)
{
	(void)state;
	fill_ring(2, 0);
	fill_ring(4, 0);
	fill_ring(8, 0);
	fill_ring(4, 0xFFFFFFFEu);
	fill_ring(8, 0xFFFFFFFDu);
	fill_ring(8, UINT32_MAX);
}

/* Thousands of batch rounds starting just below UINT32_MAX: the indices wrap
 * and every payload still arrives intact and in order. */
static void rounds(uint32_t n, uint32_t start, unsigned nrounds)
{
	struct rp r;
	uint64_t x = 0x2545F4914F6CDD1Dull ^ n ^ start;
	uint64_t seq = 0;

	rp_init(&r, n, start);
	for (unsigned round = 0; round < nrounds; round++) {
		uint32_t k = 1 + (uint32_t)(rnd(&x) % n);
		for (uint32_t i = 0; i < k; i++)
			front_produce(&r, seq + i);
		isolde_front_push_requests(&r.fr);
		assert_int_equal(isolde_back_unconsumed_requests(&r.br), k);
		for (uint32_t i = 0; i < k; i++)
			back_consume(&r, seq + i);
		for (uint32_t i = 0; i < k; i++)
			back_respond(&r, seq + i);
		isolde_back_push_responses(&r.br);
		assert_int_equal(front_avail(&r), k);
		for (uint32_t i = 0; i < k; i++)
			front_take(&r, seq + i);
		seq += k;
		assert_int_equal(isolde_front_free_slots(&r.fr), n);
	}
	assert_int_equal(r.fr.req_prod_pvt, (uint32_t)(start + seq));
	assert_int_equal(r.br.rsp_prod_pvt, (uint32_t)(start + seq));
	if (start > UINT32_MAX - seq)
		assert_true(r.fr.req_prod_pvt < start); /* it really wrapped */
	rp_fini(&r);
}

static void test_wraparound_rounds(void **state)
{
	(void)state;
	rounds(4, 0xFFFFFFF0u, 5000);
	rounds(8, 0xFFFFFFF0u, 5000);
	rounds(2, 0xFFFFFFF0u, 3000);
	rounds(8, 0x7FFFFFF0u, 3000);
}

/* ---- notification ---- */

static bool ref_need_notify(uint32_t old, uint32_t new_, uint32_t event)
{
	for (uint32_t i = old; i != new_;) {
		i++;
		if (i == event)
			return true;
	}
	return false;
}

static void test_need_notify_table(void **state)
{
	(void)state;
	/* event in (old, new] */
	assert_false(isolde_ring_need_notify(5, 5, 5));
	assert_false(isolde_ring_need_notify(5, 5, 6));
	assert_false(isolde_ring_need_notify(5, 8, 5));
	assert_true(isolde_ring_need_notify(5, 8, 6));
	assert_true(isolde_ring_need_notify(5, 8, 7));
	assert_true(isolde_ring_need_notify(5, 8, 8));
	assert_false(isolde_ring_need_notify(5, 8, 9));
	assert_false(isolde_ring_need_notify(5, 8, 4));
	assert_false(isolde_ring_need_notify(5, 8, 0));
	assert_true(isolde_ring_need_notify(0, 1, 1));
	assert_false(isolde_ring_need_notify(0, 1, 0));
	/* Across the wrap. */
	assert_true(isolde_ring_need_notify(0xFFFFFFFEu, 2, 0xFFFFFFFFu));
	assert_true(isolde_ring_need_notify(0xFFFFFFFEu, 2, 0));
	assert_true(isolde_ring_need_notify(0xFFFFFFFEu, 2, 1));
	assert_true(isolde_ring_need_notify(0xFFFFFFFEu, 2, 2));
	assert_false(isolde_ring_need_notify(0xFFFFFFFEu, 2, 3));
	assert_false(isolde_ring_need_notify(0xFFFFFFFEu, 2, 0xFFFFFFFEu));
	assert_false(isolde_ring_need_notify(0xFFFFFFFEu, 2, 0x80000000u));
	assert_true(isolde_ring_need_notify(UINT32_MAX, 0, 0));
	assert_false(isolde_ring_need_notify(UINT32_MAX, 0, UINT32_MAX));
	assert_true(isolde_ring_need_notify(0xFFFFFFF0u, 0x10, 0));

	/* Against the definition, for small moves anywhere on the circle. */
	uint64_t x = 12345;
	for (int i = 0; i < 200000; i++) {
		uint32_t base = (uint32_t)rnd(&x);
		if (i % 4 == 0)
			base = 0xFFFFFFF0u + (uint32_t)(rnd(&x) % 32); /* near the wrap */
		uint32_t old = base;
		uint32_t new_ = base + (uint32_t)(rnd(&x) % 1025);
		uint32_t event = base + (uint32_t)(rnd(&x) % 1100) - 20;
		if (isolde_ring_need_notify(old, new_, event) != ref_need_notify(old, new_, event))
			fail_msg("need_notify(%u, %u, %u) wrong", old, new_, event);
	}
}

/* Requests: the front end notifies exactly when the driver armed req_event. */
static void push_notify_requests(uint32_t start)
{
	struct rp r;
	uint64_t seq = 0, bseq = 0;
	rp_init(&r, 8, start);

	/* Initially armed (event = prod + 1): the first push notifies. */
	front_produce(&r, seq++);
	assert_true(isolde_front_push_requests(&r.fr));
	assert_false(isolde_front_push_requests(&r.fr)); /* nothing new */
	/* Not re-armed: quiet. */
	front_produce(&r, seq++);
	assert_false(isolde_front_push_requests(&r.fr));
	front_produce(&r, seq++);
	front_produce(&r, seq++);
	assert_false(isolde_front_push_requests(&r.fr));

	/* The driver drains the ring and arms: the next batch notifies once. */
	while (isolde_back_unconsumed_requests(&r.br))
		back_consume(&r, bseq++);
	assert_false(isolde_back_final_check_requests(&r.br));
	assert_int_equal(r.s->req_event, r.br.req_cons + 1);
	while (r.br.rsp_prod_pvt != r.br.req_cons)
		back_respond(&r, r.br.rsp_prod_pvt - start);
	isolde_back_push_responses(&r.br);
	while (front_avail(&r) > 0)
		front_take(&r, r.fr.rsp_cons - start);

	for (int i = 0; i < 3; i++)
		front_produce(&r, seq++);
	assert_true(isolde_front_push_requests(&r.fr)); /* a batch of 3: one notification */
	front_produce(&r, seq++);
	assert_false(isolde_front_push_requests(&r.fr));

	/* Arm again, then N pushes of one request each: exactly one notifies. */
	while (isolde_back_unconsumed_requests(&r.br))
		back_consume(&r, bseq++);
	while (r.br.rsp_prod_pvt != r.br.req_cons)
		back_respond(&r, r.br.rsp_prod_pvt - start);
	isolde_back_push_responses(&r.br);
	while (front_avail(&r) > 0)
		front_take(&r, r.fr.rsp_cons - start);
	assert_false(isolde_back_final_check_requests(&r.br));
	int notifies = 0;
	for (int i = 0; i < 6; i++) {
		front_produce(&r, seq++);
		notifies += isolde_front_push_requests(&r.fr);
	}
	assert_int_equal(notifies, 1);

	/* Final check with requests pending says so, and does not sleep. */
	uint32_t ev = r.s->req_event;
	assert_true(isolde_back_final_check_requests(&r.br));
	assert_int_equal(r.s->req_event, ev); /* no need to arm */

	/* The race the final check closes: the driver saw nothing, then the
	 * front end published without notifying (event stale), then the
	 * driver arms and re-checks: it must see the request. */
	while (isolde_back_unconsumed_requests(&r.br))
		back_consume(&r, bseq++);
	while (r.br.rsp_prod_pvt != r.br.req_cons)
		back_respond(&r, r.br.rsp_prod_pvt - start);
	isolde_back_push_responses(&r.br);
	while (front_avail(&r) > 0)
		front_take(&r, r.fr.rsp_cons - start);
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0); /* driver: "nothing" */
	front_produce(&r, seq++);
	assert_false(isolde_front_push_requests(&r.fr)); /* no kick: event is stale */
	assert_true(isolde_back_final_check_requests(&r.br)); /* but the re-check finds it */
	rp_fini(&r);
}

/* Responses: the driver notifies exactly when the front end armed rsp_event. */
static void push_notify_responses(uint32_t start)
{
	struct rp r;
	uint64_t seq = 0, bseq = 0, fseq = 0;
	rp_init(&r, 8, start);

	for (int i = 0; i < 8; i++)
		front_produce(&r, seq++);
	isolde_front_push_requests(&r.fr);
	for (int i = 0; i < 8; i++)
		back_consume(&r, bseq++);

	/* Initially armed: the first response push notifies, then quiet. */
	back_respond(&r, 0);
	assert_true(isolde_back_push_responses(&r.br));
	back_respond(&r, 1);
	assert_false(isolde_back_push_responses(&r.br));
	assert_false(isolde_back_push_responses(&r.br));
	/* Front end with responses pending: final check says so, no arming. */
	uint32_t ev = r.s->rsp_event;
	assert_true(isolde_front_final_check_responses(&r.fr));
	assert_int_equal(r.s->rsp_event, ev);
	front_take(&r, fseq++);
	front_take(&r, fseq++);
	/* Nothing pending: it arms and may sleep. */
	assert_false(isolde_front_final_check_responses(&r.fr));
	assert_int_equal(r.s->rsp_event, r.fr.rsp_cons + 1);
	/* A batch of 3 responses: one notification. */
	for (int i = 0; i < 3; i++)
		back_respond(&r, 2 + (uint64_t)i);
	assert_true(isolde_back_push_responses(&r.br));
	/* Not re-armed: quiet, even though the front end has not consumed. */
	back_respond(&r, 5);
	assert_false(isolde_back_push_responses(&r.br));
	for (int i = 0; i < 4; i++)
		front_take(&r, fseq++);
	/* Armed once; two single pushes: one notification. */
	assert_false(isolde_front_final_check_responses(&r.fr));
	back_respond(&r, 6);
	bool a = isolde_back_push_responses(&r.br);
	back_respond(&r, 7);
	bool b = isolde_back_push_responses(&r.br);
	assert_true(a);
	assert_false(b);
	front_take(&r, fseq++);
	front_take(&r, fseq++);
	/* The final-check race for responses. */
	for (int i = 0; i < 2; i++)
		front_produce(&r, seq++);
	isolde_front_push_requests(&r.fr);
	back_consume(&r, bseq++);
	back_consume(&r, bseq++);
	assert_int_equal(front_avail(&r), 0); /* front end: "nothing" */
	back_respond(&r, 8);
	assert_false(isolde_back_push_responses(&r.br)); /* event stale: no call */
	assert_true(isolde_front_final_check_responses(&r.fr)); /* re-check finds it */
	rp_fini(&r);
}

/*
 * The window the final check's re-check closes, made deterministic: the
 * consumer's event-index store faults (the index page is read-only), and the
 * fault handler plays the producer - it publishes while the consumer is
 * between "nothing pending" and "armed", and its push does not notify
 * because the event index is still the old one. The consumer's final check
 * must still report the work, or it would sleep through it.
 */
static struct rp *window_ring;
static int window_side; /* 0: the driver arms req_event, 1: the front end arms rsp_event */
static int window_hits;

static void window_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	struct rp *r = window_ring;
	struct msg m;

	mprotect(r->s, 4096, PROT_READ | PROT_WRITE);
	window_hits++;
	if (window_side == 0) {
		msg_make(&m, REQ_MAGIC, 1000);
		memcpy(isolde_front_next_request(&r->fr), &m, sizeof m);
		r->fr.req_prod_pvt++;
		if (isolde_front_push_requests(&r->fr))
			window_hits += 100; /* would have notified: no race */
	} else {
		msg_make(&m, RSP_MAGIC, 1000);
		memcpy(isolde_back_next_response(&r->br), &m, sizeof m);
		r->br.rsp_prod_pvt++;
		if (isolde_back_push_responses(&r->br))
			window_hits += 100;
	}
}

static void final_check_window(int side, uint32_t start)
{
	struct rp r;
	struct sigaction sa, old_segv, old_bus;
	size_t size = 2 * 4096;

	memset(&r, 0, sizeof r);
	r.s = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(r.s != MAP_FAILED);
	isolde_sring_init(r.s);
	isolde_front_ring_attach(&r.fr, r.s, 8, SLOT);
	isolde_back_ring_attach(&r.br, r.s, 8, SLOT);
	r.n = 8;
	r.s->req_prod = r.s->rsp_prod = start;
	r.s->req_event = r.s->rsp_event = start + 1;
	r.fr.req_prod_pvt = r.fr.rsp_cons = start;
	r.br.rsp_prod_pvt = r.br.req_cons = start;

	/* One request round trip, so both event indices are stale (passed). */
	front_produce(&r, 0);
	isolde_front_push_requests(&r.fr);
	back_consume(&r, 0);
	if (side == 1) {
		/* The front end will wait for the response to a second request. */
		front_produce(&r, 1);
		isolde_front_push_requests(&r.fr);
		back_consume(&r, 1);
	}
	back_respond(&r, 0);
	isolde_back_push_responses(&r.br);
	front_take(&r, 0);
	if (side == 0)
		assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0);
	else
		assert_int_equal(front_avail(&r), 0);

	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = window_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGSEGV, &sa, &old_segv), 0);
	assert_int_equal(sigaction(SIGBUS, &sa, &old_bus), 0);
	window_ring = &r;
	window_side = side;
	window_hits = 0;
	assert_int_equal(mprotect(r.s, 4096, PROT_READ), 0);
	bool pending = side == 0 ? isolde_back_final_check_requests(&r.br)
				 : isolde_front_final_check_responses(&r.fr);
	mprotect(r.s, 4096, PROT_READ | PROT_WRITE);
	sigaction(SIGSEGV, &old_segv, NULL);
	sigaction(SIGBUS, &old_bus, NULL);

	/* The producer really ran inside the window, without notifying. */
	assert_int_equal(window_hits, 1);
	if (!pending)
		fail_msg("%s final check missed work published while it armed: lost wake-up",
			 side == 0 ? "driver" : "front end");
	if (side == 0) {
		assert_int_equal(isolde_back_unconsumed_requests(&r.br), 1);
		back_consume(&r, 1000);
	} else {
		assert_int_equal(front_avail(&r), 1);
		front_take(&r, 1000);
	}
	munmap(r.s, size);
}

static void test_final_check_window(void **state)
{
	(void)state;
	final_check_window(0, 0);
	final_check_window(0, UINT32_MAX);
	final_check_window(1, 0);
	final_check_window(1, 0xFFFFFFFEu);
}

static void test_push_notify(void **state)
{
	(void)state;
	push_notify_requests(0);
	push_notify_requests(0xFFFFFFFDu);
	push_notify_requests(UINT32_MAX);
	push_notify_responses(0);
	push_notify_responses(0xFFFFFFFCu);
	push_notify_responses(UINT32_MAX);
}

/* ---- protocol violations ---- */

static void unconsumed_responses_violation(uint32_t start)
{
	struct rp r;
	uint32_t prod = 0;
	rp_init(&r, 8, start);

	/* Two outstanding requests (only private: not even pushed). */
	front_produce(&r, 0);
	front_produce(&r, 1);
	r.s->rsp_prod = start + 2;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), 2);
	assert_int_equal(prod, start + 2);
	r.s->rsp_prod = start + 3;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	assert_int_equal(prod, start + 3);
	assert_true(isolde_front_final_check_responses(&r.fr)); /* violation counts as pending */
	r.s->rsp_prod = start + 1000;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	r.s->rsp_prod = start - 1; /* moved backwards */
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	assert_int_equal(prod, start - 1);
	r.s->rsp_prod = start + 0x80000000u;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	r.s->rsp_prod = start;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), 0);
	/* After consuming one, the limit moves with rsp_cons. */
	r.fr.rsp_cons++;
	r.s->rsp_prod = start + 2;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), 1);
	r.s->rsp_prod = start + 3;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	r.s->rsp_prod = start;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	/* Nothing outstanding: any response at all is a violation. */
	r.fr.rsp_cons++;
	r.s->rsp_prod = start + 3;
	assert_int_equal(isolde_front_unconsumed_responses(&r.fr, &prod), -1);
	rp_fini(&r);
}

static void test_unconsumed_responses_violation(void **state)
{
	(void)state;
	unconsumed_responses_violation(0);
	unconsumed_responses_violation(0xFFFFFFFFu);
	unconsumed_responses_violation(0xFFFFFFF0u);
	unconsumed_responses_violation(1);
}

static void back_clamp(uint32_t n, uint32_t start)
{
	struct rp r;
	rp_init(&r, n, start);

	r.s->req_prod = start + 2;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 2);
	r.s->req_prod = start + n;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n);
	r.s->req_prod = start + n + 1;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n);
	r.s->req_prod = start + 0x80000000u;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n);
	r.s->req_prod = start - 1; /* behind the driver: as if 2^32 - 1 ahead */
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n);

	/* With consumed-but-unanswered requests, only the free slots count. */
	r.br.req_cons += 3;
	r.s->req_prod = start + 4 * n + 1000;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n - 3);
	r.br.rsp_prod_pvt += 1;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n - 2);
	r.br.rsp_prod_pvt += 2;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), n);
	/* Below the clamp, the real count. */
	r.s->req_prod = start + 4;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 1);
	r.s->req_prod = start + 3;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0);

	/* All n consumed, none answered: nothing more may be consumed. */
	r.br.req_cons = start + n;
	r.br.rsp_prod_pvt = start;
	r.s->req_prod = start + 2 * n;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 0);
	/* One response frees one slot: one more request may be consumed. */
	r.br.rsp_prod_pvt = start + 1;
	assert_int_equal(isolde_back_unconsumed_requests(&r.br), 1);
	rp_fini(&r);
}

static void test_back_clamp(void **state)
{
	(void)state;
	back_clamp(4, 0);
	back_clamp(8, 0);
	back_clamp(4, 0xFFFFFFFEu);
	back_clamp(8, 0xFFFFFFFAu);
	back_clamp(4, UINT32_MAX);
	back_clamp(1024, 0xFFFFFF00u);
}

/* ---- a randomised single-thread model of two sides that sleep ----
 *
 * Each side does random amounts of work in random order and may go to sleep
 * by the rules (push what it produced, arm with the final check, sleep only
 * if that finds nothing). A sleeping side does nothing until a push of its
 * peer returns true. A lost wake-up shows as a sleeping side with work
 * pending. */

struct sim {
	struct rp r;
	uint64_t x;
	uint64_t target;
	uint64_t f_sent, f_got, b_got, b_answered;
	bool f_asleep, b_asleep;
	uint64_t kicks, calls, f_arms, b_arms;
};

static void sim_front_push(struct sim *s)
{
	if (isolde_front_push_requests(&s->r.fr)) {
		s->kicks++;
		s->b_asleep = false;
	}
}

static void sim_back_push(struct sim *s)
{
	if (isolde_back_push_responses(&s->r.br)) {
		s->calls++;
		s->f_asleep = false;
	}
}

static void sim_check(struct sim *s, unsigned long step)
{
	if (s->b_asleep && isolde_back_unconsumed_requests(&s->r.br) != 0)
		fail_msg("step %lu: driver asleep with requests pending (lost kick)", step);
	if (s->f_asleep && front_avail(&s->r) != 0)
		fail_msg("step %lu: front end asleep with responses pending (lost call)", step);
	if (s->f_asleep && s->b_asleep)
		fail_msg("step %lu: both sides asleep", step);
	/* Hold-off: every notification was asked for by an arm (or the
	 * initial event index). */
	assert_true(s->kicks <= s->b_arms + 1);
	assert_true(s->calls <= s->f_arms + 1);
	assert_true(isolde_front_free_slots(&s->r.fr) <= s->r.n);
}

static void simulate(uint32_t n, uint32_t start, uint64_t target, uint64_t seed)
{
	struct sim s;
	memset(&s, 0, sizeof s);
	rp_init(&s.r, n, start);
	s.x = seed;
	s.target = target;

	unsigned long step = 0;
	while (s.f_got < target) {
		if (++step > 200 * target)
			fail_msg("no progress after %lu steps (sent %llu got %llu)", step,
				 (unsigned long long)s.f_sent, (unsigned long long)s.f_got);
		uint64_t v = rnd(&s.x);
		switch (v % 6) {
		case 0: /* front end produces */
			if (!s.f_asleep && s.f_sent < target) {
				uint32_t freeslots = isolde_front_free_slots(&s.r.fr);
				uint32_t k = freeslots ? 1 + (uint32_t)((v >> 8) % freeslots) : 0;
				for (uint32_t i = 0; i < k && s.f_sent < target; i++)
					front_produce(&s.r, s.f_sent++);
			}
			break;
		case 1:
			if (!s.f_asleep)
				sim_front_push(&s);
			break;
		case 2: /* driver consumes */
			if (!s.b_asleep) {
				uint32_t avail = isolde_back_unconsumed_requests(&s.r.br);
				assert_true(avail <= n);
				uint32_t k = (uint32_t)((v >> 8) % (avail + 1));
				for (uint32_t i = 0; i < k; i++)
					back_consume(&s.r, s.b_got++);
			}
			break;
		case 3: /* driver answers, pushing each or at the end */
			if (!s.b_asleep && s.b_got > s.b_answered) {
				uint64_t k = 1 + (v >> 8) % (s.b_got - s.b_answered);
				for (uint64_t i = 0; i < k; i++) {
					back_respond(&s.r, s.b_answered++);
					if ((v >> 20) & 1)
						sim_back_push(&s);
				}
			}
			break;
		case 4: /* front end consumes */
			if (!s.f_asleep) {
				int64_t avail = front_avail(&s.r);
				assert_true(avail >= 0);
				int64_t k = (int64_t)((v >> 8) % (uint64_t)(avail + 1));
				for (int64_t i = 0; i < k; i++)
					front_take(&s.r, s.f_got++);
			}
			break;
		case 5: /* one side tries to sleep */
			if ((v >> 8) & 1) {
				if (!s.b_asleep && s.b_got == s.b_answered) {
					sim_back_push(&s);
					if (isolde_back_unconsumed_requests(&s.r.br) == 0) {
						s.b_arms++;
						if (!isolde_back_final_check_requests(&s.r.br))
							s.b_asleep = true;
					}
				}
			} else {
				if (!s.f_asleep && s.r.fr.req_prod_pvt != s.r.fr.rsp_cons) {
					sim_front_push(&s);
					if (front_avail(&s.r) == 0) {
						s.f_arms++;
						if (!isolde_front_final_check_responses(&s.r.fr))
							s.f_asleep = true;
					}
				}
			}
			break;
		}
		sim_check(&s, step);
	}
	assert_int_equal(s.f_sent, target);
	assert_int_equal(s.b_got, target);
	assert_int_equal(s.b_answered, target);
	assert_int_equal(s.r.fr.req_prod_pvt, (uint32_t)(start + target));
	/* Hold-off really held notifications off. */
	assert_true(s.kicks < target);
	rp_fini(&s.r);
}

static void test_random_model(void **state)
{
	(void)state;
	static const uint32_t starts[] = { 0, 0xFFFFFFF0u, 0x7FFFFFFAu, UINT32_MAX };
	static const uint32_t sizes[] = { 2, 4, 8 };
	uint64_t seed = 0x9E3779B97F4A7C15ull;
	for (size_t i = 0; i < sizeof starts / sizeof starts[0]; i++)
		for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++)
			simulate(sizes[j], starts[i], 4000, seed += 0x1234567);
}

/* ---- two threads, real eventfds ---- */

#define MT_WAIT_NS (5LL * 1000000000LL)

struct mt {
	struct rp r;
	enum isolde_notify_mode mode;
	int kick_fd, call_fd;
	struct isolde_waiter fw, bw;
	uint64_t total;
	int stop;
	uint64_t back_arms, front_arms; /* each written by one thread only */
	uint64_t back_got;
	uint64_t back_batches;
	char back_err[256];
	char front_err[256];
};

static bool mt_back_pending(void *ctx)
{
	struct mt *m = ctx;
	return __atomic_load_n(&m->stop, __ATOMIC_ACQUIRE) ||
	       isolde_back_unconsumed_requests(&m->r.br) != 0;
}

static bool mt_back_arm(void *ctx)
{
	struct mt *m = ctx;
	m->back_arms++;
	return __atomic_load_n(&m->stop, __ATOMIC_ACQUIRE) ||
	       isolde_back_final_check_requests(&m->r.br);
}

static bool mt_front_pending(void *ctx)
{
	struct mt *m = ctx;
	uint32_t prod;
	return isolde_front_unconsumed_responses(&m->r.fr, &prod) != 0;
}

static bool mt_front_arm(void *ctx)
{
	struct mt *m = ctx;
	m->front_arms++;
	return isolde_front_final_check_responses(&m->r.fr);
}

static const struct isolde_wait_ops mt_back_ops = { mt_back_pending, mt_back_arm };
static const struct isolde_wait_ops mt_front_ops = { mt_front_pending, mt_front_arm };

/* A wait that ends by timeout, or only at the timeout, is a lost wake-up. */
static bool mt_wait(struct isolde_waiter *w, const struct isolde_wait_ops *ops, void *ctx,
		    char *err, size_t errlen, const char *who)
{
	uint64_t t0 = isolde_now_ns();
	enum isolde_wait_result r = isolde_wait(w, ops, ctx, MT_WAIT_NS);
	uint64_t dt = isolde_now_ns() - t0;

	if (r == ISOLDE_WAIT_READY && dt < (uint64_t)MT_WAIT_NS)
		return true;
	snprintf(err, errlen, "%s: wait returned %d after %llu ms (lost wake-up?)", who, (int)r,
		 (unsigned long long)(dt / 1000000));
	return false;
}

static void *mt_back_main(void *arg)
{
	struct mt *m = arg;
	uint64_t expect = 0;

	for (;;) {
		uint32_t n = isolde_back_unconsumed_requests(&m->r.br);
		if (n == 0) {
			if (__atomic_load_n(&m->stop, __ATOMIC_ACQUIRE))
				break;
			if (!mt_wait(&m->bw, &mt_back_ops, m, m->back_err, sizeof m->back_err, "driver"))
				break;
			continue;
		}
		if (n > m->r.n) {
			snprintf(m->back_err, sizeof m->back_err, "driver: %u requests on %u slots", n,
				 m->r.n);
			break;
		}
		m->back_batches++;
		bool notify = false, each = (m->back_batches >> 3) & 1;
		while (n--) {
			struct msg req, rsp;
			isolde_copy_from_shared(&req, isolde_back_request_at(&m->r.br, m->r.br.req_cons),
						sizeof req);
			m->r.br.req_cons++;
			if (!msg_ok(&req, REQ_MAGIC, expect)) {
				snprintf(m->back_err, sizeof m->back_err,
					 "driver: request %llu: slot holds magic %08x seq %llu",
					 (unsigned long long)expect, req.magic,
					 (unsigned long long)req.seq);
				goto out;
			}
			msg_make(&rsp, RSP_MAGIC, expect);
			memcpy(isolde_back_next_response(&m->r.br), &rsp, sizeof rsp);
			m->r.br.rsp_prod_pvt++;
			expect++;
			if (each)
				notify |= isolde_back_push_responses(&m->r.br);
		}
		notify |= isolde_back_push_responses(&m->r.br);
		isolde_waiter_signal(&m->bw, notify);
	}
out:
	m->back_got = expect;
	if (m->back_err[0])
		__atomic_store_n(&m->stop, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void two_threads(enum isolde_notify_mode mode, uint32_t nslots, uint32_t start, uint64_t total)
{
	struct mt *m = calloc(1, sizeof *m);
	pthread_t th;
	uint64_t sent = 0, got = 0, x = 0xC0FFEE ^ (uint64_t)mode;

	assert_non_null(m);
	rp_init(&m->r, nslots, start);
	m->mode = mode;
	m->total = total;
	m->kick_fd = eventfd(0, EFD_NONBLOCK);
	m->call_fd = eventfd(0, EFD_NONBLOCK);
	assert_true(m->kick_fd >= 0 && m->call_fd >= 0);
	isolde_waiter_init(&m->fw, mode, m->call_fd, m->kick_fd, -1, ISOLDE_HYBRID_SPIN_MIN_NS,
			   ISOLDE_HYBRID_SPIN_MAX_NS);
	isolde_waiter_init(&m->bw, mode, m->kick_fd, m->call_fd, -1, ISOLDE_HYBRID_SPIN_MIN_NS,
			   ISOLDE_HYBRID_SPIN_MAX_NS);
	uint64_t t_start = isolde_now_ns();
	assert_int_equal(pthread_create(&th, NULL, mt_back_main, m), 0);

	while (got < total && !__atomic_load_n(&m->stop, __ATOMIC_ACQUIRE)) {
		uint32_t freeslots = isolde_front_free_slots(&m->r.fr);
		if (freeslots > nslots) {
			snprintf(m->front_err, sizeof m->front_err, "front: %u free of %u", freeslots, nslots);
			break;
		}
		uint64_t k = total - sent < freeslots ? total - sent : freeslots;
		/* Vary the batch: often one at a time, often the whole space. */
		uint64_t v = rnd(&x);
		if (k > 1 && (v & 3) == 0)
			k = 1 + (v >> 8) % k;
		for (uint64_t i = 0; i < k; i++) {
			struct msg req;
			msg_make(&req, REQ_MAGIC, sent++);
			memcpy(isolde_front_next_request(&m->r.fr), &req, sizeof req);
			m->r.fr.req_prod_pvt++;
		}
		if (k)
			isolde_waiter_signal(&m->fw, isolde_front_push_requests(&m->r.fr));

		uint32_t prod;
		int64_t avail = isolde_front_unconsumed_responses(&m->r.fr, &prod);
		if (avail < 0) {
			snprintf(m->front_err, sizeof m->front_err, "front: rsp_prod %u beyond requests", prod);
			break;
		}
		for (int64_t i = 0; i < avail; i++) {
			struct msg rsp;
			isolde_copy_from_shared(&rsp, isolde_ring_slot(m->r.s, nslots, SLOT, m->r.fr.rsp_cons),
						sizeof rsp);
			m->r.fr.rsp_cons++;
			if (!msg_ok(&rsp, RSP_MAGIC, got)) {
				snprintf(m->front_err, sizeof m->front_err,
					 "front: response %llu: slot holds magic %08x seq %llu",
					 (unsigned long long)got, rsp.magic, (unsigned long long)rsp.seq);
				goto done;
			}
			got++;
		}
		if (avail == 0 && k == 0 &&
		    !mt_wait(&m->fw, &mt_front_ops, m, m->front_err, sizeof m->front_err, "front end"))
			break;
	}
done:
	__atomic_store_n(&m->stop, 1, __ATOMIC_RELEASE);
	uint64_t one = 1;
	assert_int_equal(write(m->kick_fd, &one, sizeof one), (ssize_t)sizeof one);
	pthread_join(th, NULL);

	if (m->front_err[0] || m->back_err[0])
		fail_msg("%s mode: %s %s (sent %llu, answered %llu, driver saw %llu)",
			 isolde_notify_mode_name(mode), m->front_err, m->back_err,
			 (unsigned long long)sent, (unsigned long long)got,
			 (unsigned long long)m->back_got);
	assert_int_equal(sent, total);
	assert_int_equal(got, total);
	assert_int_equal(m->back_got, total);
	assert_int_equal(m->r.s->req_prod, (uint32_t)(start + total));
	assert_int_equal(m->r.s->rsp_prod, (uint32_t)(start + total));
	/* Hold-off: each signal answers an arm (or the initial event index). */
	assert_true(m->fw.signals_sent <= m->back_arms + 1);
	assert_true(m->bw.signals_sent <= m->front_arms + 1);
	if (mode == ISOLDE_NOTIFY_SPIN) {
		assert_int_equal(m->fw.signals_sent, 0);
		assert_int_equal(m->bw.signals_sent, 0);
		assert_int_equal(m->fw.sleeps + m->bw.sleeps, 0);
	} else if (mode == ISOLDE_NOTIFY_EVENT) {
		/* Event mode always sleeps when idle, so signals must have flowed. */
		assert_true(m->fw.sleeps > 0);
		assert_true(m->bw.signals_sent > 0);
		assert_true(m->fw.signals_received > 0);
	}
	print_message("%s: %llu requests in %llu ms, %llu driver batches, kicks %llu calls %llu, "
		      "sleeps f %llu d %llu\n",
		      isolde_notify_mode_name(mode), (unsigned long long)total,
		      (unsigned long long)((isolde_now_ns() - t_start) / 1000000),
		      (unsigned long long)m->back_batches, (unsigned long long)m->fw.signals_sent,
		      (unsigned long long)m->bw.signals_sent, (unsigned long long)m->fw.sleeps,
		      (unsigned long long)m->bw.sleeps);
	close(m->kick_fd);
	close(m->call_fd);
	rp_fini(&m->r);
	free(m);
}

#define MT_TOTAL 200000u

static void test_threads_event(void **state)
{
	(void)state;
	two_threads(ISOLDE_NOTIFY_EVENT, 8, 0xFFFFF000u, MT_TOTAL);
}

static void test_threads_spin(void **state)
{
	(void)state;
	two_threads(ISOLDE_NOTIFY_SPIN, 8, 0xFFFFF000u, MT_TOTAL);
}

static void test_threads_hybrid(void **state)
{
	(void)state;
	two_threads(ISOLDE_NOTIFY_HYBRID, 8, 0xFFFFF000u, MT_TOTAL);
}

/* A tiny ring makes the sides hand over as often as possible. */
static void test_threads_tiny_ring(void **state)
{
	(void)state;
	two_threads(ISOLDE_NOTIFY_EVENT, 2, UINT32_MAX - 5, 50000);
	two_threads(ISOLDE_NOTIFY_HYBRID, 2, UINT32_MAX - 5, 50000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_and_attach),
		cmocka_unit_test(test_fill_ring),
		cmocka_unit_test(test_wraparound_rounds),
		cmocka_unit_test(test_need_notify_table),
		cmocka_unit_test(test_push_notify),
		cmocka_unit_test(test_final_check_window),
		cmocka_unit_test(test_unconsumed_responses_violation),
		cmocka_unit_test(test_back_clamp),
		cmocka_unit_test(test_random_model),
		cmocka_unit_test(test_threads_event),
		cmocka_unit_test(test_threads_spin),
		cmocka_unit_test(test_threads_hybrid),
		cmocka_unit_test(test_threads_tiny_ring),
	};
	return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
