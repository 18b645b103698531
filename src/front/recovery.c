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
#include "recovery.h"

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

void isolde_recovery_event(struct isolde_recovery *r, const struct isolde_blk_event *ev)
{
	if (r->on_event)
		r->on_event(r->on_event_ctx, ev);
}

void isolde_recovery_give_up(struct isolde_recovery *r, const char *fmt, ...)
{
	va_list ap;

	if (r->failed)
		return;
	va_start(ap, fmt);
	vsnprintf(r->error, sizeof r->error, fmt, ap);
	va_end(ap);
	r->failed = true;
	r->state = ISOLDE_DEV_FAILED;
	isolde_domain_kill_async(r->domain);
	fprintf(stderr, "isolde: %s\n", r->error);
	struct isolde_blk_event ev = { .type = ISOLDE_BLK_EVENT_GAVE_UP, .failure = r->failure,
				       .reason = r->error, .generation = r->domain->generation };
	isolde_recovery_event(r, &ev);
}

static void enter_down(struct isolde_recovery *r, enum isolde_failure f, uint64_t grace_ns)
{

	r->state = ISOLDE_DEV_DOWN;
	r->failure = f;
	r->kill_at_ns = isolde_now_ns() + grace_ns;
	if (!grace_ns)
		isolde_domain_kill_async(r->domain);
}

void isolde_recovery_fail(struct isolde_recovery *r, enum isolde_failure f, const char *fmt, ...)
{
	va_list ap;

	if (r->state != ISOLDE_DEV_RUNNING)
		return; /* one failure at a time: the first explains the rest */
	va_start(ap, fmt);
	vsnprintf(r->why, sizeof r->why, fmt, ap);
	va_end(ap);
	r->detected_ns = r->death_seen_ns ? r->death_seen_ns : isolde_now_ns();
	r->death_seen_ns = 0;
	enter_down(r, f, 0);
	struct isolde_blk_event ev = { .type = ISOLDE_BLK_EVENT_FAILED, .failure = f, .reason = r->why,
				       .generation = r->domain->generation };
	isolde_recovery_event(r, &ev);
}

static void recovered(struct isolde_recovery *r, uint64_t micros)
{
	isolde_supervisor_record_recovery(r->supervisor, micros);
	fprintf(stderr, "isolde: driver %s generation %u (pid %d) recovered in %llu us, %u %s "
		"replayed\n", r->domain->driver_name, r->domain->generation, (int)r->domain->pid,
		(unsigned long long)micros, r->replayed_last, r->unit);
	struct isolde_blk_event ev = { .type = ISOLDE_BLK_EVENT_RECOVERED, .generation = r->domain->generation,
				       .replayed = r->replayed_last, .recovery_us = micros };
	isolde_recovery_event(r, &ev);
}

void isolde_recovery_completed(struct isolde_recovery *r)
{
	r->completed_gen++;
	if (r->recovery_started_ns && !r->failed) {
		recovered(r, (isolde_now_ns() - r->recovery_started_ns) / 1000);
		r->recovery_started_ns = 0;
	}
}

/* The new generation is ready: the device takes it up and replays. */
static void resume(struct isolde_recovery *r)
{
	r->state = ISOLDE_DEV_RUNNING;
	if (r->supervisor->unreachable_since_ns) {
		fprintf(stderr, "isolde: %s: the device is reachable again after %.1f s\n", r->name,
			(double)(isolde_now_ns() - r->supervisor->unreachable_since_ns) / 1e9);
		isolde_supervisor_reached(r->supervisor);
	}
	unsigned n = r->ops->resume(r->owner);
	r->supervisor->stats.replayed += n;
	r->replayed_last = n;
	if (n)
		r->recovery_started_ns = r->detected_ns;
	else
		recovered(r, (isolde_now_ns() - r->detected_ns) / 1000);
}

/* Why the device gives up, in words that name the policy. */
static void give_up(struct isolde_recovery *r, enum isolde_verdict_kind kind)
{

	if (kind == ISOLDE_VERDICT_UNREACHABLE)
		isolde_recovery_give_up(r, "the device stayed unreachable for %u s (%s; limit of policy %s); "
				   "pending and new I/O fails", r->policy->unreachable_ms / 1000, r->why,
				   r->policy->source);
	else if (kind == ISOLDE_VERDICT_CRASH_LOOP)
		isolde_recovery_give_up(r, "driver %s failed (%s: %s) after %u restarts in a row in which it "
				   "completed fewer than %u %s (crash-loop limit of policy %s); pending "
				   "and new I/O fails", r->domain->driver_name, isolde_failure_name(r->failure),
				   r->why, r->supervisor->no_progress, r->supervisor->progress_min, r->unit,
				   r->policy->source);
	else
		isolde_recovery_give_up(r, "driver %s failed (%s: %s) and its restart budget of %u per %u s "
				   "(policy %s) is spent; pending and new I/O fails", r->domain->driver_name,
				   isolde_failure_name(r->failure), r->why, r->policy->restart_max,
				   r->policy->restart_window_s, r->policy->source);
}

/* DOWN: the old generation gone, the supervisor decides. False: not yet. */
static bool step_down(struct isolde_recovery *r)
{
	uint64_t now = isolde_now_ns();

	if (r->domain->pid > 0) {
		if (now >= r->kill_at_ns)
			isolde_domain_kill_async(r->domain);
		if (!isolde_domain_reap(r->domain))
			return false;
	}
	int end = isolde_domain_end_step(r->domain, 0);
	if (end == 0)
		return false;
	/* What the dead driver may still write is not known: nothing that
	 * memory holds may be handed out again. */
	if (end < 0 || r->domain->unsafe[0]) {
		isolde_recovery_give_up(r, "%s; pending and new I/O fails", r->domain->unsafe);
		return false;
	}
	/* A start that failed because the child was killed from outside is
	 * that kill, not a start failure. */
	const struct isolde_exit *x = &r->domain->last_exit;
	if (r->failure == ISOLDE_FAIL_START && x->signaled && !x->by_launcher &&
	    isolde_classify_exit(true, x->code) == ISOLDE_FAIL_KILLED)
		r->failure = ISOLDE_FAIL_KILLED;
	bool progress = isolde_supervisor_made_progress(r->supervisor, r->completed_gen);
	struct isolde_verdict v = isolde_supervisor_judge(r->supervisor, r->failure, progress, now);
	if (v.kind != ISOLDE_VERDICT_RESTART) {
		give_up(r, v.kind);
		return false;
	}
	if (r->failure == ISOLDE_FAIL_UNREACHABLE) {
		/* Said once when it goes away, then every ten seconds. */
		uint64_t away = now - r->supervisor->unreachable_since_ns;
		if (r->supervisor->unreachable_tries == 1 || away / 10000000000u != r->unreachable_said) {
			r->unreachable_said = away / 10000000000u;
			fprintf(stderr, "isolde: %s: the device is unreachable (%s) for %llu s; trying again, for "
				"up to %u s\n", r->name, r->why, (unsigned long long)(away / 1000000000u),
				r->policy->unreachable_ms / 1000);
		}
	} else {
		fprintf(stderr, "isolde: driver %s failed (%s: %s); restart %llu, generation %u%s\n",
			r->domain->driver_name, isolde_failure_name(r->failure), r->why,
			(unsigned long long)r->supervisor->stats.restarts, r->domain->generation + 1,
			v.backoff_ns ? " after backoff" : "");
	}
	r->state = ISOLDE_DEV_BACKOFF;
	r->deadline_ns = now + v.backoff_ns;
	return true;
}

/* A start that did not come up is itself a failure, judged like any; a
 * remote device that could not be reached is not the driver's. */
static void start_failed(struct isolde_recovery *r, const char *err)
{
	snprintf(r->why, sizeof r->why, "%s", err);
	enter_down(r, r->remote && r->domain->open_failed ? ISOLDE_FAIL_UNREACHABLE : ISOLDE_FAIL_START,
		   START_FAILURE_GRACE_NS);
}

static bool step_backoff(struct isolde_recovery *r)
{
	char err[400];

	if (isolde_now_ns() < r->deadline_ns)
		return false;
	r->completed_gen = 0;
	if (isolde_domain_start_begin(r->domain, err, sizeof err) != 0) {
		start_failed(r, err);
		return true;
	}
	r->state = ISOLDE_DEV_STARTING;
	return true;
}

static bool step_starting(struct isolde_recovery *r)
{
	char err[400];
	int s = isolde_domain_start_step(r->domain, err, sizeof err);

	if (s == 0)
		return false;
	if (s < 0)
		start_failed(r, err);
	else
		resume(r);
	return true;
}

void isolde_recovery_step(struct isolde_recovery *r)
{
	bool moved = true;

	while (moved) {
		switch (r->state) {
		case ISOLDE_DEV_DOWN: moved = step_down(r); break;
		case ISOLDE_DEV_BACKOFF: moved = step_backoff(r); break;
		case ISOLDE_DEV_STARTING: moved = step_starting(r); break;
		default: moved = false; break;
		}
	}
	/* A failed device's driver is still reaped and ended. */
	if (r->state == ISOLDE_DEV_FAILED && r->domain->pid > 0 && isolde_domain_reap(r->domain))
		isolde_domain_end_step(r->domain, 0);
}

int isolde_recovery_timeout_ms(const struct isolde_recovery *r)
{
	uint64_t now = isolde_now_ns(), until;

	switch (r->state) {
	case ISOLDE_DEV_BACKOFF:
		until = r->deadline_ns;
		break;
	case ISOLDE_DEV_DOWN:
		if (r->domain->pid > 0 && r->kill_at_ns > now)
			until = r->kill_at_ns;
		else
			return isolde_domain_start_timeout_ms(r->domain); /* a drain, if any */
		break;
	case ISOLDE_DEV_STARTING:
		return isolde_domain_start_timeout_ms(r->domain);
	default:
		return -1;
	}
	return until <= now ? 0 : (int)((until - now + 999999) / 1000000);
}
