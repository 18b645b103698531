/* SPDX-License-Identifier: MIT */
/*
 * An event loop: one epoll set, run by one thread. Every thread of
 * isolde serve runs one: each device's thread (its device, its exports)
 * and the main thread (the control socket, the metrics listener, signals).
 *
 * Callbacks run in the loop's thread. A watch removed while a batch of
 * events is being dispatched is not called again and is freed after the
 * batch, so a callback may unwatch any fd, its own or another's.
 * loop_post is the one thread-safe entry: it queues a task for the loop's
 * thread and wakes it.
 */
#ifndef ISOLDE_EXPORT_LOOP_H
#define ISOLDE_EXPORT_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOP_MAX_POLLERS 16

struct isolde_loop;

typedef void (*loop_fd_cb)(void *ctx, uint32_t events);
typedef bool (*loop_poll_cb)(void *ctx);
typedef void (*loop_task_fn)(void *ctx);

struct isolde_loop *loop_create(char *err, size_t errlen);
/* Frees the loop; tasks still queued are dropped (their contexts leak). */
void loop_destroy(struct isolde_loop *l);

int loop_watch(struct isolde_loop *l, int fd, uint32_t events, loop_fd_cb cb, void *ctx);
int loop_modify(struct isolde_loop *l, int fd, uint32_t events);
void loop_unwatch(struct isolde_loop *l, int fd);
bool loop_watching(const struct isolde_loop *l, int fd);

/* A poller runs on every pass, before the loop waits; while any returns
 * true the loop does not sleep. */
int loop_add_poller(struct isolde_loop *l, loop_poll_cb cb, void *ctx);
void loop_remove_poller(struct isolde_loop *l, loop_poll_cb cb, void *ctx);
/* Run the pollers; true if some poller wants the loop to keep spinning. */
bool loop_run_pollers(struct isolde_loop *l);

/* Wait up to timeout_ms (-1: no limit) and dispatch what came, tasks
 * posted meanwhile included. Returns the number of events, or -1. */
int loop_once(struct isolde_loop *l, int timeout_ms);

/* From any thread: run fn(ctx) in the loop's thread, soon. 0 or -1. */
int loop_post(struct isolde_loop *l, loop_task_fn fn, void *ctx);

#endif
