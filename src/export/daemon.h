/* SPDX-License-Identifier: MIT */
/*
 * The storage daemon behind `isolde serve`: many devices, each served by a
 * thread of its own (server.h: its device, its exports, its event loop),
 * managed live from the main thread, whose own loop runs the control socket
 * (control.c), the metrics listener (metrics.c) and the signals.
 *
 * Nothing the main thread does waits for a device's thread. Commands that
 * change a device (add an export, remove the device) are posted to its
 * thread and answered through a callback in the main thread when done.
 * Queries read the snapshot each device thread publishes (server_publish),
 * after asking every device for a fresh one and waiting a bounded time
 * (DAEMON_QUERY_WAIT_MS) for them. Events (a driver failed, recovered, the
 * device gave up; devices and exports added and removed) reach every
 * subscriber, in the main thread, in the order they happened per device.
 */
#ifndef ISOLDE_EXPORT_DAEMON_H
#define ISOLDE_EXPORT_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isolde/blk.h"
#include "loop.h"
#include "server.h"

#define DAEMON_MAX_DEVICES 64
#define DAEMON_NAME_MAX 32            /* device names: [A-Za-z0-9_.-], 1..32 */
#define DAEMON_QUERY_WAIT_MS 200      /* a query takes what the threads published by then */
#define DAEMON_DRAIN_DEFAULT_MS 30000 /* device-del: in-flight I/O drains, or fails, after this */

struct isolde_daemon;

/* Where errors point: the request's field that is wrong (or NULL), and what. */
struct daemon_error {
	const char *field;
	char message[512];
};

/*
 * How a command ends, in the main thread: ok, with a JSON value for its
 * "return" (NULL: {}), or not, with err. The strings are valid only during
 * the call.
 */
typedef void (*daemon_reply_fn)(void *ctx, bool ok, const char *return_json, const struct daemon_error *err);

/* An event, as one JSON object (no newline), in the main thread. */
typedef void (*daemon_event_fn)(void *ctx, const char *event_json);

struct isolde_daemon *daemon_create(char *err, size_t errlen);
void daemon_destroy(struct isolde_daemon *d);
/* The main thread's loop: the control socket and the metrics listener
 * watch their fds there. */
struct isolde_loop *daemon_loop(struct isolde_daemon *d);

/*
 * Devices. A device spec is NAME,image=PATH[,driver=D][,notify=M][,qd=N]
 * [,readonly][,direct][,shield][,policy=FILE] (isolde_blk_config_parse's
 * fields after the name). device-add opens the device in its new thread and
 * replies once it serves (or failed to open: the error names the field or
 * the device's own reason). device-del stops taking requests, lets those in
 * flight drain for up to timeout_ms (0: DAEMON_DRAIN_DEFAULT_MS), fails the
 * rest with EIO, stops the device's exports and closes it.
 */
void daemon_device_add(struct isolde_daemon *d, const char *spec, daemon_reply_fn reply, void *ctx);
/* The same with the fields already parsed (serve's --image and friends,
 * whose paths may hold a comma); the strings are copied. */
void daemon_device_add_config(struct isolde_daemon *d, const char *name, const struct isolde_blk_config *cfg,
			      daemon_reply_fn reply, void *ctx);
void daemon_device_del(struct isolde_daemon *d, const char *name, unsigned timeout_ms,
		       daemon_reply_fn reply, void *ctx);

/*
 * Exports. An export spec is KIND:ADDRESS[,device=NAME][,OPTIONS]
 * (device= may be left out when there is one device). Its reply's return is
 * {"id": N}. export-del quiesces it, and stops it once nothing of it is in
 * flight.
 */
void daemon_export_add(struct isolde_daemon *d, const char *spec, daemon_reply_fn reply, void *ctx);
void daemon_export_del(struct isolde_daemon *d, unsigned id, daemon_reply_fn reply, void *ctx);

/*
 * Queries, answered with fresh snapshots (or the last one of a device whose
 * thread did not answer within DAEMON_QUERY_WAIT_MS). query-devices'
 * return is a JSON array of the devices' `isolde status` objects (each with
 * "name"); query-exports' an array of {"id", "device", "kind", "spec",
 * "connections", "inflight", "export": describe-object}.
 */
void daemon_query_devices(struct isolde_daemon *d, daemon_reply_fn reply, void *ctx);
void daemon_query_exports(struct isolde_daemon *d, daemon_reply_fn reply, void *ctx);

/*
 * Snapshots for whoever renders them (metrics.c), from any thread, without
 * waiting: the last each device published. Free with daemon_snapshots_free.
 */
struct daemon_snapshots {
	unsigned n;
	struct server_snapshot devices[DAEMON_MAX_DEVICES];
};
void daemon_snapshots(struct isolde_daemon *d, struct daemon_snapshots *out);
void daemon_snapshots_free(struct daemon_snapshots *s);

/* Events: subscribe returns a token for unsubscribe (-1 if full). */
int daemon_subscribe(struct isolde_daemon *d, daemon_event_fn fn, void *ctx);
void daemon_unsubscribe(struct isolde_daemon *d, int token);

/*
 * Run the main loop until SIGINT or SIGTERM (or daemon_stop), then stop
 * every device (drain as for device-del) and return 0, or 1 if any device
 * had failed.
 */
int daemon_run(struct isolde_daemon *d);
void daemon_stop(struct isolde_daemon *d);
unsigned daemon_device_count(struct isolde_daemon *d);

/* Parse a device spec (for the command line and the control socket). */
int daemon_parse_device_spec(const char *spec, char *name, size_t namelen, struct isolde_blk_config *cfg,
			     struct daemon_error *err);

#endif
