/* SPDX-License-Identifier: MIT */
/*
 * The server every export runs in: one thread, one epoll loop, one device.
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
 * Shutdown (SIGINT, SIGTERM or server_stop): every export is asked to
 * quiesce (stop taking requests), the loop runs until nothing is in flight,
 * then every export is stopped (sockets removed, mounts undone).
 */
#ifndef ISOLDE_EXPORT_SERVER_H
#define ISOLDE_EXPORT_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "isolde/blk.h"

#define SERVER_MAX_REQUEST (32u << 20) /* largest READ/WRITE an export may submit */

struct isolde_server;
struct server_io;

typedef void (*server_io_done)(struct server_io *sio);
typedef void (*server_fd_cb)(void *ctx, uint32_t events);

struct server_io {
	/* Filled by the export. */
	uint8_t op;              /* ISOLDE_BLK_OP_* */
	uint16_t flags;          /* ISOLDE_BLK_F_* */
	void *buf;               /* READ/WRITE data, len bytes; valid until done */
	uint32_t len;            /* READ/WRITE: up to SERVER_MAX_REQUEST */
	uint64_t offset;
	server_io_done done;     /* called once, in the loop thread */
	void *ctx;
	/* Set before done is called. */
	int result;              /* 0 or -errno */
	/* Private to the server. */
	unsigned pieces_left;    /* pieces not yet completed */
	unsigned pieces_next;    /* next piece to put on the ring */
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
};

struct server_config {
	const char *control_path;   /* Unix socket for `isolde status`, or NULL */
};

struct isolde_server *server_create(struct isolde_blk *dev, const struct server_config *cfg,
				    char *err, size_t errlen);
/* Start an export from "SCHEME:SPEC"; 0 or -1 with err. */
int server_add_export(struct isolde_server *s, const char *spec, char *err, size_t errlen);
/* Run until asked to stop; then drain and stop every export. 0 on a clean exit. */
int server_run(struct isolde_server *s);
void server_stop(struct isolde_server *s);
/* Frees the server; the device stays the caller's. */
void server_destroy(struct isolde_server *s);

/* For the control socket. */
struct isolde_blk *server_device(const struct isolde_server *s);
void server_describe_exports(const struct isolde_server *s, FILE *json);
unsigned server_backlog(const struct isolde_server *s);

/* ---- for exports ---- */
int server_watch(struct isolde_server *s, int fd, uint32_t events, server_fd_cb cb, void *ctx);
int server_modify(struct isolde_server *s, int fd, uint32_t events);
void server_unwatch(struct isolde_server *s, int fd);
void server_submit(struct isolde_server *s, struct server_io *sio);
/* A poller runs on every pass of the loop, before it waits; while any
 * poller returns true, the loop does not sleep. For exports that poll
 * their clients' queues instead of, or before, waiting for a kick. */
typedef bool (*server_poll_cb)(void *ctx);
int server_add_poller(struct isolde_server *s, server_poll_cb cb, void *ctx);
void server_remove_poller(struct isolde_server *s, server_poll_cb cb, void *ctx);
uint64_t server_device_size(const struct isolde_server *s);
bool server_readonly(const struct isolde_server *s);
/* Offsets and lengths of READ/WRITE must be multiples of this (1, or the
 * logical block size with O_DIRECT). */
uint32_t server_alignment(const struct isolde_server *s);
bool server_stopping(const struct isolde_server *s);
void server_log(const struct isolde_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

extern const struct export_ops nbd_export_ops;
extern const struct export_ops fuse_export_ops;
extern const struct export_ops vhost_blk_export_ops;

#endif
