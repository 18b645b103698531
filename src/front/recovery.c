// SPDX-License-Identifier: MIT
/*
 * Recovery: what happens to a device after its driver failed, as a state
 * machine that never waits. A failure detected anywhere in the front end is
 * recorded by isolde_recovery_fail (the first one counts; the driver gets
 * SIGKILL without anyone waiting for it to die); isolde_recovery_step, run
 * from every place that waits or polls, does what can be done now and
 * returns:
 *
 *   RUNNING --fail--> DOWN: the old generation is reaped and ended (its
 *                     io_uring drained, PROTOCOL.md §1.6); the supervisor's
 *                     verdict (isolde_supervisor_judge) is
 *                     - give up: FAILED, every request -EIO from now on;
 *                     - restart: BACKOFF until the backoff has passed, then
 *   STARTING:         the launcher's start, step by step
 *                     (isolde_domain_start_step); a start that fails is a
 *                     failure (start-failure, or killed) and goes back to
 *                     DOWN; a start that succeeds replays every request in
 *                     the shadow and the device is RUNNING again.
 *
 * Every wait is on an fd in the device's watch set (the driver's pidfd, the
 * start's status pipe and listener, the io_uring being drained) or on a
 * deadline (isolde_recovery_timeout_ms), so a device that is restarting
 * holds up nothing: not the thread's other work, not other devices.
 */
#define _GNU_SOURCE
#include "device.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A child that failed to start gets this long to exit on its own (so that
 * one killed from outside is counted as such) before it is killed. */
#define START_FAILURE_GRACE_NS (50 * 1000000ull)

static const char *const state_names[] = {
	[ISOLDE_DEV_RUNNING] = "running", [ISOLDE_DEV_DOWN] = "down", [ISOLDE_DEV_BACKOFF] = "backoff",
	[ISOLDE_DEV_STARTING] = "starting", [ISOLDE_DEV_FAILED] = "failed",
};

const char *isolde_dev_state_name(enum isolde_dev_state s)
{
	return (unsigned)s < sizeof state_names / sizeof state_names[0] ? state_names[s] : "?";
}

void isolde_recovery_event(struct isolde_blk *dev, const struct isolde_blk_event *ev)
{
	if (dev->on_event)
		dev->on_event(dev->on_event_ctx, ev);
}

void isolde_fail_device(struct isolde_blk *dev, const char *fmt, ...)
{
	va_list ap;

	if (dev->failed)
		return;
	va_start(ap, fmt);
	vsnprintf(dev->error, sizeof dev->error, fmt, ap);
	va_end(ap);
	dev->failed = true;
	dev->rec.state = ISOLDE_DEV_FAILED;
	isolde_domain_kill_async(&dev->domain);
	fprintf(stderr, "isolde: %s\n", dev->error);
	struct isolde_blk_event ev = { .type = ISOLDE_BLK_EVENT_GAVE_UP, .failure = dev->rec.failure,
				       .reason = dev->error, .generation = dev->domain.generation };
	isolde_recovery_event(dev, &ev);
}

static void enter_down(struct isolde_blk *dev, enum isolde_failure f, uint64_t grace_ns)
{
	struct isolde_recovery *r = &dev->rec;

	r->state = ISOLDE_DEV_DOWN;
	r->failure = f;
	r->kill_at_ns = isolde_now_ns() + grace_ns;
	if (!grace_ns)
		isolde_domain_kill_async(&dev->domain);
}

void isolde_recovery_fail(struct isolde_blk *dev, enum isolde_failure f, const char *fmt, ...)
{
	struct isolde_recovery *r = &dev->rec;
	va_list ap;

	if (r->state != ISOLDE_DEV_RUNNING)
		return; /* one failure at a time: the first explains the rest */
	va_start(ap, fmt);
	vsnprintf(r->why, sizeof r->why, fmt, ap);
	va_end(ap);
	r->detected_ns = dev->death_seen_ns ? dev->death_seen_ns : isolde_now_ns();
	dev->death_seen_ns = 0;
	enter_down(dev, f, 0);
	struct isolde_blk_event ev = { .type = ISOLDE_BLK_EVENT_FAILED, .failure = f, .reason = r->why,
				       .generation = dev->domain.generation };
	isolde_recovery_event(dev, &ev);
}

void isolde_recovery_note(struct isolde_blk *dev, uint64_t micros)
{
	isolde_supervisor_record_recovery(&dev->supervisor, micros);
	fprintf(stderr, "isolde: driver %s generation %u (pid %d) recovered in %llu us, %u requests "
		"replayed\n", dev->domain.driver_name, dev->domain.generation, (int)dev->domain.pid,
		(unsigned long long)micros, dev->replayed_last);
	struct isolde_blk_event ev = { .type = ISOLDE_BLK_EVENT_RECOVERED, .generation = dev->domain.generation,
				       .replayed = dev->replayed_last, .recovery_us = micros };
	isolde_recovery_event(dev, &ev);
}

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
static void resume(struct isolde_blk *dev)
{
	struct isolde_recovery *r = &dev->rec;

	isolde_front_ring_attach(&dev->ring, dev->domain.sring, dev->domain.layout.ring_slots,
				 ISOLDE_BLK_SLOT_SIZE);
	dev->ring.peer_sleeps = dev->waiter.mode != ISOLDE_NOTIFY_SPIN;
	dev->waiter.spin_ns = dev->waiter.spin_min_ns;
	dev->heartbeat_seen = 0;
	dev->heartbeat_changed_ns = isolde_now_ns();
	r->state = ISOLDE_DEV_RUNNING;
	if (dev->supervisor.unreachable_since_ns) {
		fprintf(stderr, "isolde: %s: the device is reachable again after %.1f s\n", dev->image,
			(double)(isolde_now_ns() - dev->supervisor.unreachable_since_ns) / 1e9);
		isolde_supervisor_reached(&dev->supervisor);
	}
	unsigned n = replay(dev);
	dev->supervisor.stats.replayed += n;
	dev->replayed_last = n;
	if (n)
		dev->recovery_started_ns = r->detected_ns;
	else
		isolde_recovery_note(dev, (isolde_now_ns() - r->detected_ns) / 1000);
}

/* Why the device gives up, in words that name the policy. */
static void give_up(struct isolde_blk *dev, enum isolde_verdict_kind kind)
{
	struct isolde_recovery *r = &dev->rec;

	if (kind == ISOLDE_VERDICT_UNREACHABLE)
		isolde_fail_device(dev, "the device stayed unreachable for %u s (%s; limit of policy %s); "
				   "pending and new I/O fails", dev->policy.unreachable_ms / 1000, r->why,
				   dev->policy.source);
	else if (kind == ISOLDE_VERDICT_CRASH_LOOP)
		isolde_fail_device(dev, "driver %s failed (%s: %s) after %u restarts in a row in which it "
				   "completed fewer than %u requests (crash-loop limit of policy %s); pending "
				   "and new I/O fails", dev->domain.driver_name, isolde_failure_name(r->failure),
				   r->why, dev->supervisor.no_progress, dev->supervisor.progress_min,
				   dev->policy.source);
	else
		isolde_fail_device(dev, "driver %s failed (%s: %s) and its restart budget of %u per %u s "
				   "(policy %s) is spent; pending and new I/O fails", dev->domain.driver_name,
				   isolde_failure_name(r->failure), r->why, dev->policy.restart_max,
				   dev->policy.restart_window_s, dev->policy.source);
}

/* DOWN: the old generation gone, the supervisor decides. False: not yet. */
static bool step_down(struct isolde_blk *dev)
{
	struct isolde_recovery *r = &dev->rec;
	uint64_t now = isolde_now_ns();

	if (dev->domain.pid > 0) {
		if (now >= r->kill_at_ns)
			isolde_domain_kill_async(&dev->domain);
		if (!isolde_domain_reap(&dev->domain))
			return false;
	}
	int end = isolde_domain_end_step(&dev->domain, 0);
	if (end == 0)
		return false;
	/* What the dead driver may still write is not known: nothing that
	 * memory holds may be handed out again. */
	if (end < 0 || dev->domain.unsafe[0]) {
		isolde_fail_device(dev, "%s; pending and new I/O fails", dev->domain.unsafe);
		return false;
	}
	/* A start that failed because the child was killed from outside is
	 * that kill, not a start failure. */
	const struct isolde_exit *x = &dev->domain.last_exit;
	if (r->failure == ISOLDE_FAIL_START && x->signaled && !x->by_launcher &&
	    isolde_classify_exit(true, x->code) == ISOLDE_FAIL_KILLED)
		r->failure = ISOLDE_FAIL_KILLED;
	bool progress = isolde_supervisor_made_progress(&dev->supervisor, dev->completed_gen);
	struct isolde_verdict v = isolde_supervisor_judge(&dev->supervisor, r->failure, progress, now);
	if (v.kind != ISOLDE_VERDICT_RESTART) {
		give_up(dev, v.kind);
		return false;
	}
	if (r->failure == ISOLDE_FAIL_UNREACHABLE) {
		/* Said once when it goes away, then every ten seconds. */
		uint64_t away = now - dev->supervisor.unreachable_since_ns;
		if (dev->supervisor.unreachable_tries == 1 || away / 10000000000u != r->unreachable_said) {
			r->unreachable_said = away / 10000000000u;
			fprintf(stderr, "isolde: %s: the device is unreachable (%s) for %llu s; trying again, for "
				"up to %u s\n", dev->image, r->why, (unsigned long long)(away / 1000000000u),
				dev->policy.unreachable_ms / 1000);
		}
	} else {
		fprintf(stderr, "isolde: driver %s failed (%s: %s); restart %llu, generation %u%s\n",
			dev->domain.driver_name, isolde_failure_name(r->failure), r->why,
			(unsigned long long)dev->supervisor.stats.restarts, dev->domain.generation + 1,
			v.backoff_ns ? " after backoff" : "");
	}
	r->state = ISOLDE_DEV_BACKOFF;
	r->deadline_ns = now + v.backoff_ns;
	return true;
}

/* A start that did not come up is itself a failure, judged like any; a
 * remote device that could not be reached is not the driver's. */
static void start_failed(struct isolde_blk *dev, const char *err)
{
	snprintf(dev->rec.why, sizeof dev->rec.why, "%s", err);
	enter_down(dev, dev->remote && dev->domain.open_failed ? ISOLDE_FAIL_UNREACHABLE : ISOLDE_FAIL_START,
		   START_FAILURE_GRACE_NS);
}

static bool step_backoff(struct isolde_blk *dev)
{
	struct isolde_recovery *r = &dev->rec;
	char err[400];

	if (isolde_now_ns() < r->deadline_ns)
		return false;
	dev->completed_gen = 0;
	if (isolde_domain_start_begin(&dev->domain, err, sizeof err) != 0) {
		start_failed(dev, err);
		return true;
	}
	r->state = ISOLDE_DEV_STARTING;
	return true;
}

static bool step_starting(struct isolde_blk *dev)
{
	char err[400];
	int s = isolde_domain_start_step(&dev->domain, err, sizeof err);

	if (s == 0)
		return false;
	if (s < 0)
		start_failed(dev, err);
	else
		resume(dev);
	return true;
}

void isolde_recovery_step(struct isolde_blk *dev)
{
	bool moved = true;

	while (moved) {
		switch (dev->rec.state) {
		case ISOLDE_DEV_DOWN: moved = step_down(dev); break;
		case ISOLDE_DEV_BACKOFF: moved = step_backoff(dev); break;
		case ISOLDE_DEV_STARTING: moved = step_starting(dev); break;
		default: moved = false; break;
		}
	}
	/* A failed device's driver is still reaped and ended. */
	if (dev->rec.state == ISOLDE_DEV_FAILED && dev->domain.pid > 0 && isolde_domain_reap(&dev->domain))
		isolde_domain_end_step(&dev->domain, 0);
}

int isolde_recovery_timeout_ms(const struct isolde_blk *dev)
{
	const struct isolde_recovery *r = &dev->rec;
	uint64_t now = isolde_now_ns(), until;

	switch (r->state) {
	case ISOLDE_DEV_BACKOFF:
		until = r->deadline_ns;
		break;
	case ISOLDE_DEV_DOWN:
		if (dev->domain.pid > 0 && r->kill_at_ns > now)
			until = r->kill_at_ns;
		else
			return isolde_domain_start_timeout_ms(&dev->domain); /* a drain, if any */
		break;
	case ISOLDE_DEV_STARTING:
		return isolde_domain_start_timeout_ms(&dev->domain);
	default:
		return -1;
	}
	return until <= now ? 0 : (int)((until - now + 999999) / 1000000);
}
