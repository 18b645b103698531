/* SPDX-License-Identifier: MIT */
/*
 * A served device: one device, its exports, and the event loop (loop.h) of
 * the thread that serves them. isolde serve runs one per device, each in
 * its own thread (src/export/daemon.c), so that a device that is busy or
 * restarting its driver never delays another.
 *
 * An export (NBD, FUSE, vhost-user-blk) registers its fds with the loop and
 * turns what its clients ask into server_io requests. It never touches the
 * ring: server_submit hands a request to the front end, queues it while the
 * ring is full, splits it if it is larger than a ring request may be, and
 * calls the request's done callback - in the loop thread - once all of it
 * completed. Driver failures are recovered below this line: an export only
 * ever sees a request complete, successfully or with -EIO past the restart
 * budget.
 *
 * Stopping (server_stop): every export is asked to quiesce (stop taking
 * requests), the loop runs until nothing is in flight or the drain timeout
 * passed - then what is still in flight fails with -EIO - and every export
 * is stopped (sockets removed, mounts undone).
 *
 * Everything here runs in the device's thread, except what says otherwise.
 */
#ifndef ISOLDE_EXPORT_SERVER_H
#define ISOLDE_EXPORT_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "isolde/blk.h"
#include "loop.h"

#define SERVER_MAX_REQUEST (32u << 20) /* largest READ/WRITE an export may submit */
#define SERVER_MAX_EXPORTS 16
#define SERVER_LATENCY_BUCKETS 14      /* request latency histogram (server_stats) */
#define SERVER_RECOVERY_BUCKETS 12     /* recovery time histogram */

struct isolde_server;
struct server_io;

typedef void (*server_io_done)(struct server_io *sio);
typedef void (*server_fd_cb)(void *ctx, uint32_t events);
typedef bool (*server_poll_cb)(void *ctx);

struct server_io {
	/* Filled by the export. */
	uint8_t op;              /* ISOLDE_BLK_OP_* */
	uint16_t flags;          /* ISOLDE_BLK_F_* */
	void *buf;               /* READ/WRITE data, len bytes; valid until done */
	uint64_t len;            /* READ/WRITE: up to SERVER_MAX_REQUEST; DISCARD and
				  * WRITE_ZEROES: any range of the device (the
				  * server splits what the ring cannot carry) */
	uint64_t offset;
	server_io_done done;     /* called once, in the loop thread */
	void *ctx;
	/* Set before done is called. */
	int result;              /* 0 or -errno */
	/* Private to the server. */
	uint64_t pieces_left;    /* pieces not yet completed */
	uint64_t pieces_next;    /* next piece to put on the ring */
	uint64_t submitted_ns;
	struct server_io *next;
};

struct export_ops {
	const char *scheme;      /* "nbd", "fuse", "vhost-user-blk" */
	/* spec is what follows "SCHEME:" in --export. */
	int (*start)(struct isolde_server *srv, const char *spec, void **state, char *err, size_t errlen);
	/* Stop taking new requests; requests already submitted still complete. */
	void (*quiesce)(void *state);
	/* Release everything: connections, sockets, mounts. Nothing is in flight. */
	void (*stop)(void *state);
	/* One JSON object describing the export, for `isolde status`. */
	void (*describe)(void *state, FILE *json);
	/* Requests it submitted that have not completed. */
	unsigned (*inflight)(void *state);
	/* Clients connected now. */
	unsigned (*connections)(void *state);
};

/* What the server counts of the requests its exports made (metrics). */
struct server_stats {
	uint64_t reads, writes, flushes, others;
	uint64_t read_bytes, write_bytes;
	uint64_t errors;
	uint64_t latency_count;                       /* requests completed */
	uint64_t latency_sum_ns;
	uint64_t latency_buckets[SERVER_LATENCY_BUCKETS]; /* cumulative: <= server_latency_bounds_ns[i] */
	uint64_t recovery_count;
	uint64_t recovery_sum_us;
	uint64_t recovery_buckets[SERVER_RECOVERY_BUCKETS]; /* cumulative: <= server_recovery_bounds_us[i] */
};
extern const uint64_t server_latency_bounds_ns[SERVER_LATENCY_BUCKETS];
extern const uint64_t server_recovery_bounds_us[SERVER_RECOVERY_BUCKETS];

/* One export as a snapshot shows it. */
struct server_export_snapshot {
	unsigned id;
	char kind[24];
	char spec[256];
	unsigned connections;
	unsigned inflight;
	char *json;              /* its describe() object */
};

/*
 * A copy of the server's state, published by its thread (server_publish)
 * for other threads to read under the snapshot lock, so that a query never
 * waits for a device's thread.
 */
struct server_snapshot {
	char name[64];
	char *status_json;       /* the `isolde status` object of the device */
	struct isolde_blk_stats blk;
	struct isolde_supervisor_stats_summary {
		uint64_t restarts;
		uint64_t by_failure[ISOLDE_FAIL_COUNT];
		uint64_t replayed;
	} sup;
	const char *state;       /* isolde_blk_state */
	uint32_t generation;
	unsigned inflight;
	struct server_stats stats;
	unsigned nexports;
	struct server_export_snapshot exports[SERVER_MAX_EXPORTS];
	uint64_t published_ns;
};

/*
 * Where a server publishes its snapshots: owned by whoever outlives the
 * server (the daemon's record of the device), so that another thread can
 * copy the last snapshot while the server is created or destroyed.
 */
struct server_snapshot_store {
	pthread_mutex_t lock;
	struct server_snapshot snap;
};
void server_snapshot_store_init(struct server_snapshot_store *st);
void server_snapshot_store_fini(struct server_snapshot_store *st);
/* Any thread: a copy of the last snapshot (strings duplicated; free with
 * server_snapshot_free). */
void server_snapshot_store_copy(struct server_snapshot_store *st, struct server_snapshot *out);
void server_snapshot_free(struct server_snapshot *snap);

/* Events the server reports (driver failed, recovered, given up). */
typedef void (*server_event_fn)(void *ctx, struct isolde_server *s, const struct isolde_blk_event *ev);

/* store: where snapshots go (NULL: the server keeps its own). */
struct isolde_server *server_create(struct isolde_loop *loop, struct isolde_blk *dev, const char *name,
				    struct server_snapshot_store *store, char *err, size_t errlen);
/* Start an export from "SCHEME:SPEC" under id; 0 or -1 with err. */
int server_add_export(struct isolde_server *s, const char *spec, unsigned id, char *err, size_t errlen);
/* Quiesce export id, and stop it once nothing of it is in flight; then
 * done(ctx, found) runs in this thread. */
void server_remove_export(struct isolde_server *s, unsigned id, void (*done)(void *ctx, bool found),
			  void *ctx);
bool server_has_export(const struct isolde_server *s, unsigned id);
/* Run until stopped; then drain (up to drain_ms, then fail what is left
 * with -EIO) and stop every export. */
int server_run(struct isolde_server *s);
void server_stop(struct isolde_server *s, unsigned drain_ms);
/* Frees the server; the device and the loop stay the caller's. */
void server_destroy(struct isolde_server *s);
void server_set_event_handler(struct isolde_server *s, server_event_fn fn, void *ctx);

/* Publish a fresh snapshot now (it is also published about every 100 ms). */
void server_publish(struct isolde_server *s);

/* The `isolde status` object of the device (this thread). */
void server_write_status(struct isolde_server *s, FILE *f);

/* ---- for exports ---- */
struct isolde_blk *server_device(const struct isolde_server *s);
struct isolde_loop *server_loop(const struct isolde_server *s);
int server_watch(struct isolde_server *s, int fd, uint32_t events, server_fd_cb cb, void *ctx);
int server_modify(struct isolde_server *s, int fd, uint32_t events);
void server_unwatch(struct isolde_server *s, int fd);
void server_submit(struct isolde_server *s, struct server_io *sio);
/* A poller runs on every pass of the loop, before it waits; while any
 * poller returns true, the loop does not sleep. For exports that poll
 * their clients' queues instead of, or before, waiting for a kick. */
int server_add_poller(struct isolde_server *s, server_poll_cb cb, void *ctx);
void server_remove_poller(struct isolde_server *s, server_poll_cb cb, void *ctx);
uint64_t server_device_size(const struct isolde_server *s);
bool server_readonly(const struct isolde_server *s);
/* Offsets and lengths of READ/WRITE must be multiples of this (1, or the
 * logical block size with O_DIRECT). */
uint32_t server_alignment(const struct isolde_server *s);
bool server_stopping(const struct isolde_server *s);
unsigned server_backlog(const struct isolde_server *s);
void server_describe_exports(const struct isolde_server *s, FILE *json);
const char *server_name(const struct isolde_server *s);
void server_log(const struct isolde_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

extern const struct export_ops nbd_export_ops;
extern const struct export_ops fuse_export_ops;
extern const struct export_ops vhost_blk_export_ops;

#endif
