// SPDX-License-Identifier: MIT
#include "isolde/notify.h"
#include "isolde/ring.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A spinning side looks at the clock and the watch fd this often. The clock
 * is a vDSO call; the watch fd is a poll() and only happens about once a
 * millisecond, so a busy ring never pays for it. */
#define SPIN_CLOCK_EVERY 64u
#define SPIN_WATCH_EVERY_NS 1000000u

static const char *const mode_names[] = {
	[ISOLDE_NOTIFY_EVENT] = "event",
	[ISOLDE_NOTIFY_SPIN] = "spin",
	[ISOLDE_NOTIFY_HYBRID] = "hybrid",
};

const char *isolde_notify_mode_name(enum isolde_notify_mode m)
{
	if ((unsigned)m < sizeof mode_names / sizeof mode_names[0])
		return mode_names[m];
	return "unknown";
}

int isolde_notify_mode_parse(const char *name, enum isolde_notify_mode *m)
{
	for (unsigned i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++) {
		if (strcmp(name, mode_names[i]) == 0) {
			*m = (enum isolde_notify_mode)i;
			return 0;
		}
	}
	return -1;
}

uint64_t isolde_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void isolde_waiter_init(struct isolde_waiter *w, enum isolde_notify_mode mode,
			int wait_fd, int peer_fd, int watch_fd,
			uint32_t spin_min_ns, uint32_t spin_max_ns)
{
	memset(w, 0, sizeof *w);
	w->mode = mode;
	w->wait_fd = wait_fd;
	w->peer_fd = peer_fd;
	/* Raw fstat: a driver's policy allows it, not glibc's newfstatat. */
	struct stat st;
	w->peer_is_socket = peer_fd >= 0 && syscall(SYS_fstat, peer_fd, &st) == 0 && S_ISSOCK(st.st_mode);
	w->watch_fd = watch_fd;
	w->spin_min_ns = spin_min_ns ? spin_min_ns : ISOLDE_HYBRID_SPIN_MIN_NS;
	w->spin_max_ns = spin_max_ns >= w->spin_min_ns ? spin_max_ns : w->spin_min_ns;
	uint64_t start = (uint64_t)w->spin_min_ns * 4;
	w->spin_ns = start < w->spin_max_ns ? (uint32_t)start : w->spin_max_ns;
}

void isolde_waiter_signal(struct isolde_waiter *w, bool needed)
{
	uint64_t one = 1;

	if (!needed || w->mode == ISOLDE_NOTIFY_SPIN || w->peer_fd < 0)
		return;
	/* EAGAIN means the counter is saturated: the peer is signalled anyway.
	 * The fd is non-blocking so a peer cannot stall us by filling it. */
	ssize_t n = w->peer_is_socket ? send(w->peer_fd, &one, sizeof one, MSG_NOSIGNAL | MSG_DONTWAIT)
				      : write(w->peer_fd, &one, sizeof one);
	if (n == sizeof one)
		w->signals_sent++;
}

static short watch_events(const struct isolde_waiter *w)
{
	return w->watch_events ? w->watch_events : POLLIN;
}

static bool watch_fired(const struct isolde_waiter *w)
{
	struct pollfd p = { .fd = w->watch_fd, .events = watch_events(w) };

	return w->watch_fd >= 0 && poll(&p, 1, 0) > 0;
}

/* Spin until pending, the window ends or the watch fires. */
static enum isolde_wait_result spin_until(struct isolde_waiter *w, const struct isolde_wait_ops *ops,
					  void *ctx, uint64_t start, uint64_t until)
{
	uint64_t watch_every = w->watch_spin_ns ? w->watch_spin_ns : SPIN_WATCH_EVERY_NS;
	uint64_t next_watch = start + watch_every;

	for (uint32_t i = 1;; i++) {
		if (ops->pending(ctx))
			return ISOLDE_WAIT_READY;
		isolde_cpu_relax();
		if (i % SPIN_CLOCK_EVERY)
			continue;
		uint64_t now = isolde_now_ns();
		if (now >= until)
			return ISOLDE_WAIT_TIMEOUT;
		if (now >= next_watch) {
			if (watch_fired(w))
				return ISOLDE_WAIT_WATCH;
			next_watch = now + watch_every;
		}
	}
}

void isolde_waiter_drain(struct isolde_waiter *w, int fd)
{
	uint64_t v[8];
	ssize_t n = read(fd, v, sizeof v);

	/* An eventfd gives its counter in 8 bytes; a doorbell port or socket
	 * gives 8 bytes per signal, several at once: each counts one. */
	if (n == sizeof v[0])
		w->signals_received += v[0];
	else if (n > 0)
		w->signals_received += (uint64_t)n / sizeof v[0];
}

/* Arm, re-check, then sleep in poll() until signalled, watched or timed out. */
static enum isolde_wait_result block_until(struct isolde_waiter *w, const struct isolde_wait_ops *ops,
					   void *ctx, uint64_t deadline)
{
	if (ops->arm_check(ctx))
		return ISOLDE_WAIT_READY;

	struct pollfd p[2] = {
		{ .fd = w->wait_fd, .events = POLLIN },
		{ .fd = w->watch_fd, .events = watch_events(w) },
	};
	nfds_t n = w->watch_fd >= 0 ? 2 : 1;
	int timeout_ms = -1;

	if (deadline != UINT64_MAX) {
		uint64_t now = isolde_now_ns();
		if (now >= deadline)
			return ISOLDE_WAIT_TIMEOUT;
		uint64_t ms = (deadline - now + 999999) / 1000000;
		timeout_ms = ms > INT32_MAX ? INT32_MAX : (int)ms;
	}
	w->sleeps++;
	int r = poll(p, n, timeout_ms);
	if (r < 0) {
		if (errno == EINTR)
			return ISOLDE_WAIT_READY;
		return ISOLDE_WAIT_ERROR;
	}
	if (r == 0)
		return ops->pending(ctx) ? ISOLDE_WAIT_READY : ISOLDE_WAIT_TIMEOUT;
	if (p[0].revents & POLLIN)
		isolde_waiter_drain(w, w->wait_fd);
	if (n == 2 && p[1].revents)
		return ops->pending(ctx) ? ISOLDE_WAIT_READY : ISOLDE_WAIT_WATCH;
	return ISOLDE_WAIT_READY;
}

enum isolde_wait_result isolde_wait(struct isolde_waiter *w, const struct isolde_wait_ops *ops,
				    void *ctx, int64_t timeout_ns)
{
	uint64_t start = isolde_now_ns();
	uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + (uint64_t)timeout_ns;

	switch (w->mode) {
	case ISOLDE_NOTIFY_SPIN:
		return spin_until(w, ops, ctx, start, deadline);
	case ISOLDE_NOTIFY_HYBRID: {
		uint64_t window_end = start + w->spin_ns;
		enum isolde_wait_result r;

		r = spin_until(w, ops, ctx, start, window_end < deadline ? window_end : deadline);
		if (r != ISOLDE_WAIT_TIMEOUT || isolde_now_ns() >= deadline)
			return r;
		/*
		 * The window passed without work: sleep. How long the sleep
		 * lasted says whether that was right. Work that came soon after
		 * we gave up means a longer window would have caught it without
		 * a wake-up: double the window. A long sleep means the peer was
		 * really idle: halve it, so idling stays cheap.
		 */
		uint64_t slept_from = isolde_now_ns();
		r = block_until(w, ops, ctx, deadline);
		uint64_t slept = isolde_now_ns() - slept_from;
		if (r == ISOLDE_WAIT_READY && slept < 4 * (uint64_t)w->spin_max_ns) {
			uint64_t grown = (uint64_t)w->spin_ns * 2;
			w->spin_ns = grown < w->spin_max_ns ? (uint32_t)grown : w->spin_max_ns;
		} else {
			w->spin_ns = w->spin_ns / 2 > w->spin_min_ns ? w->spin_ns / 2 : w->spin_min_ns;
		}
		return r;
	}
	case ISOLDE_NOTIFY_EVENT:
	default:
		return block_until(w, ops, ctx, deadline);
	}
}
