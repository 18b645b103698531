// SPDX-License-Identifier: MIT
#include "isolde/supervisor.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static const char *const failure_names[ISOLDE_FAIL_COUNT] = {
	[ISOLDE_FAIL_CPU] = "cpu-exception",
	[ISOLDE_FAIL_MMU] = "mmu-exception",
	[ISOLDE_FAIL_PANIC] = "panic",
	[ISOLDE_FAIL_POLICY] = "policy-kill",
	[ISOLDE_FAIL_HANG] = "hang",
	[ISOLDE_FAIL_PROTOCOL] = "protocol-violation",
	[ISOLDE_FAIL_KILLED] = "killed",
	[ISOLDE_FAIL_START] = "start-failure",
	[ISOLDE_FAIL_CORRUPTION] = "silent-corruption",
	[ISOLDE_FAIL_ERROR_STATUS] = "error-status",
	[ISOLDE_FAIL_UNREACHABLE] = "unreachable",
	[ISOLDE_FAIL_KERNEL] = "kernel-panic",
};

const char *isolde_failure_name(enum isolde_failure f)
{
	return (unsigned)f < ISOLDE_FAIL_COUNT ? failure_names[f] : "unknown";
}

enum isolde_failure isolde_classify_exit(bool signaled, int code)
{
	if (!signaled)
		return ISOLDE_FAIL_PANIC;
	switch (code) {
	case SIGILL:
	case SIGFPE:
	case SIGTRAP:
		return ISOLDE_FAIL_CPU;
	case SIGSEGV:
	case SIGBUS:
		return ISOLDE_FAIL_MMU;
	case SIGABRT:
		return ISOLDE_FAIL_PANIC;
	case SIGSYS:
	case SIGXFSZ: /* wrote past the image's end: its file size limit */
		return ISOLDE_FAIL_POLICY;
	default:
		return ISOLDE_FAIL_KILLED;
	}
}

int isolde_supervisor_init(struct isolde_supervisor *s, uint32_t restart_max, uint32_t window_s,
			   uint32_t crash_loop_max, uint32_t progress_min)
{
	memset(s, 0, sizeof *s);
	s->restart_max = restart_max;
	s->window_s = window_s;
	s->crash_loop_max = crash_loop_max;
	s->progress_min = progress_min ? progress_min : 1;
	if (restart_max) {
		s->restart_times = calloc(restart_max, sizeof *s->restart_times);
		if (!s->restart_times)
			return -1;
	}
	return 0;
}

bool isolde_supervisor_made_progress(const struct isolde_supervisor *s, uint64_t completed)
{
	return completed >= s->progress_min;
}

void isolde_supervisor_fini(struct isolde_supervisor *s)
{
	free(s->restart_times);
	s->restart_times = NULL;
}

bool isolde_supervisor_may_restart(const struct isolde_supervisor *s, bool made_progress,
				   uint64_t now_ns)
{
	if (s->restart_max == 0)
		return false;
	if (!made_progress && s->no_progress >= s->crash_loop_max)
		return false; /* the caller reports a crash loop */
	if (s->stats.restarts < s->restart_max)
		return true;
	/* The oldest of the last restart_max restarts must have left the window. */
	uint64_t oldest = s->restart_times[s->restart_next];
	return now_ns - oldest >= (uint64_t)s->window_s * 1000000000u;
}

uint64_t isolde_supervisor_record_restart(struct isolde_supervisor *s, enum isolde_failure f,
					  bool made_progress, uint64_t now_ns)
{
	s->stats.restarts++;
	if ((unsigned)f < ISOLDE_FAIL_COUNT)
		s->stats.by_failure[f]++;
	if (s->restart_max) {
		s->restart_times[s->restart_next] = now_ns;
		s->restart_next = (s->restart_next + 1) % s->restart_max;
	}
	/* A driver killed from outside did not fail by itself: no backoff,
	 * and it does not make a crash loop (the rate budget still counts). */
	if (made_progress || f == ISOLDE_FAIL_KILLED) {
		if (made_progress)
			s->no_progress = 0;
		return 0;
	}
	uint32_t k = s->no_progress++;
	if (k == 0)
		return 0;
	uint64_t ms = k > 10 ? ISOLDE_BACKOFF_MAX_MS : 1u << (k - 1);
	if (ms > ISOLDE_BACKOFF_MAX_MS)
		ms = ISOLDE_BACKOFF_MAX_MS;
	return ms * 1000000u;
}

/*
 * A remote device that cannot be reached is not the driver's fault and no
 * driver ran: it neither spends the restart budget nor makes a crash loop.
 * The front end tries again, backing off to ISOLDE_UNREACHABLE_BACKOFF_MAX_MS,
 * until the device has been unreachable for the policy's limit.
 */
static struct isolde_verdict judge_unreachable(struct isolde_supervisor *s, uint64_t now_ns)
{
	struct isolde_verdict v = { ISOLDE_VERDICT_RESTART, 0 };

	s->stats.by_failure[ISOLDE_FAIL_UNREACHABLE]++;
	if (!s->unreachable_since_ns)
		s->unreachable_since_ns = now_ns;
	if (now_ns - s->unreachable_since_ns >= (uint64_t)s->unreachable_limit_ms * 1000000u) {
		v.kind = ISOLDE_VERDICT_UNREACHABLE;
		return v;
	}
	uint32_t k = s->unreachable_tries++;
	uint64_t ms = k >= 7 ? ISOLDE_UNREACHABLE_BACKOFF_MAX_MS : (uint64_t)10 << k;
	v.backoff_ns = (ms > ISOLDE_UNREACHABLE_BACKOFF_MAX_MS ? ISOLDE_UNREACHABLE_BACKOFF_MAX_MS : ms) * 1000000u;
	return v;
}

void isolde_supervisor_reached(struct isolde_supervisor *s)
{
	s->unreachable_since_ns = 0;
	s->unreachable_tries = 0;
}

struct isolde_verdict isolde_supervisor_judge(struct isolde_supervisor *s, enum isolde_failure f,
					      bool made_progress, uint64_t now_ns)
{
	struct isolde_verdict v = { ISOLDE_VERDICT_RESTART, 0 };

	if (f == ISOLDE_FAIL_UNREACHABLE)
		return judge_unreachable(s, now_ns);

	if (!isolde_supervisor_may_restart(s, made_progress, now_ns)) {
		v.kind = !made_progress && s->no_progress >= s->crash_loop_max ? ISOLDE_VERDICT_CRASH_LOOP
									      : ISOLDE_VERDICT_BUDGET;
		return v;
	}
	v.backoff_ns = isolde_supervisor_record_restart(s, f, made_progress, now_ns);
	return v;
}

void isolde_supervisor_record_recovery(struct isolde_supervisor *s, uint64_t micros)
{
	struct isolde_supervisor_stats *st = &s->stats;
	uint32_t v = micros > UINT32_MAX ? UINT32_MAX : (uint32_t)micros;

	if (st->recovery_count < ISOLDE_RECOVERY_SAMPLES)
		st->recovery_us[st->recovery_count++] = v;
	else
		memmove(st->recovery_us, st->recovery_us + 1, sizeof st->recovery_us - sizeof v),
			st->recovery_us[ISOLDE_RECOVERY_SAMPLES - 1] = v;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

void isolde_supervisor_recovery_summary(const struct isolde_supervisor_stats *st,
					uint32_t *p50, uint32_t *p99, uint32_t *max)
{
	uint32_t n = st->recovery_count;
	uint32_t *sorted;

	*p50 = *p99 = *max = 0;
	if (n == 0 || !(sorted = malloc(n * sizeof *sorted)))
		return;
	memcpy(sorted, st->recovery_us, n * sizeof *sorted);
	qsort(sorted, n, sizeof *sorted, cmp_u32);
	*p50 = sorted[(n - 1) / 2];
	*p99 = sorted[(uint32_t)((uint64_t)(n - 1) * 99 / 100)];
	*max = sorted[n - 1];
	free(sorted);
}
