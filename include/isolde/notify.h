/* SPDX-License-Identifier: MIT */
/*
 * isolde/notify.h - the three ways one side of a ring waits for the other.
 *
 *   event   block on an eventfd until the peer signals it (Xen event channel)
 *   spin    poll the ring; no system call on the fast path; burns a core
 *   hybrid  spin for an adaptive window, then arm the event index, re-check
 *           and block: spin latency under load, no CPU while idle
 *
 * The same ring serves all three: the mode only changes how a side waits and
 * whether it arms its event index (a spinning side never does, so its peer
 * never has to signal it).
 */
#ifndef ISOLDE_NOTIFY_H
#define ISOLDE_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

enum isolde_notify_mode {
	ISOLDE_NOTIFY_EVENT = 0,
	ISOLDE_NOTIFY_SPIN = 1,
	ISOLDE_NOTIFY_HYBRID = 2,
};

const char *isolde_notify_mode_name(enum isolde_notify_mode m);
/* Returns 0 and sets *m, or -1 if name is not event, spin or hybrid. */
int isolde_notify_mode_parse(const char *name, enum isolde_notify_mode *m);

/* Hybrid spin window bounds (nanoseconds). */
#define ISOLDE_HYBRID_SPIN_MIN_NS 5000u
#define ISOLDE_HYBRID_SPIN_MAX_NS 200000u

struct isolde_waiter {
	enum isolde_notify_mode mode;
	int wait_fd;    /* eventfd this side blocks on (EFD_NONBLOCK) */
	int peer_fd;    /* eventfd that signals the peer (EFD_NONBLOCK); across a VM
			 * boundary a doorbell socket or port, non-blocking too
			 * (src/domain/vm.h): 8 bytes per signal */
	bool peer_is_socket; /* signal with send(MSG_NOSIGNAL): a peer gone must
			      * not raise SIGPIPE in the application */
	int watch_fd;   /* optional second fd that ends a wait when readable
			 * (the front end watches the driver's pidfd); -1 if none */
	short watch_events;      /* poll() events on watch_fd that end a wait; 0 means
				  * POLLIN (a socket driver adds POLLOUT while a send
				  * waits for room) */
	uint32_t watch_spin_ns;  /* a spinning wait polls watch_fd this often; 0
				  * means about once a millisecond */
	uint32_t spin_ns;     /* current hybrid window */
	uint32_t spin_min_ns;
	uint32_t spin_max_ns;
	/* Counters, private to this side. */
	uint64_t signals_sent;     /* eventfd writes to the peer */
	uint64_t signals_received; /* sum of eventfd counter values read, or
				    * 8-byte doorbell messages */
	uint64_t sleeps;           /* times this side blocked in poll() */
};

void isolde_waiter_init(struct isolde_waiter *w, enum isolde_notify_mode mode,
			int wait_fd, int peer_fd, int watch_fd,
			uint32_t spin_min_ns, uint32_t spin_max_ns);

/* Consume what signalled fd (an eventfd, or a doorbell port or socket),
 * at most 64 bytes of it, and count it. */
void isolde_waiter_drain(struct isolde_waiter *w, int fd);

/* Signal the peer if `needed` and the mode uses signals (not spin). */
void isolde_waiter_signal(struct isolde_waiter *w, bool needed);

/*
 * What the waiter needs to know about the ring it waits on:
 *   pending(ctx)     true if there is work (read the producer index once)
 *   arm_check(ctx)   arm the event index and re-check; true if work is pending
 */
struct isolde_wait_ops {
	bool (*pending)(void *ctx);
	bool (*arm_check)(void *ctx);
};

enum isolde_wait_result {
	ISOLDE_WAIT_READY = 0,   /* work is pending (or may be: re-check) */
	ISOLDE_WAIT_TIMEOUT = 1, /* deadline passed with nothing pending */
	ISOLDE_WAIT_WATCH = 2,   /* watch_fd became readable */
	ISOLDE_WAIT_ERROR = 3,   /* poll/read failed; errno is set */
};

/*
 * Wait until ops->pending says there is work, the watch fd fires (one of
 * watch_events, or an error or hang-up), or timeout_ns passes (-1: no
 * deadline). A spinning side reads the clock every 64 polls (a vDSO call)
 * and polls the watch fd about once a millisecond (watch_spin_ns if set), so
 * the fast path makes no system call.
 *
 * Hybrid: spin for spin_ns, then arm and sleep. A sleep that ends within
 * 4 x spin_max_ns doubles the window (spinning longer would have saved the
 * wake-up); a longer sleep halves it (the peer really was idle).
 */
enum isolde_wait_result isolde_wait(struct isolde_waiter *w, const struct isolde_wait_ops *ops,
				    void *ctx, int64_t timeout_ns);

uint64_t isolde_now_ns(void);

#endif
