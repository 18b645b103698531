/* SPDX-License-Identifier: MIT */
/*
 * The control socket of `isolde serve`: a Unix socket (mode 0600) that
 * speaks a line-framed JSON protocol in the shape of QEMU's QMP, one
 * request or response per line (docs/CONTROL.md is the contract):
 *
 *   -> {"execute": "device-del", "arguments": {"name": "d1"}, "id": 7}
 *   <- {"return": {}, "id": 7}
 *   <- {"error": {"class": "InvalidArgument", "desc": "...", "field": "name"}, "id": 8}
 *
 * Commands: device-add, device-del, export-add, export-del, query-devices,
 * query-exports, metrics, events (the connection becomes a stream of
 * {"event": ...} lines), and the plain line "status" of the old protocol
 * (the first device's status object, then close).
 *
 * Everything runs in the daemon's main loop (daemon_loop). Commands are
 * answered when the daemon answers them, in any order, each with its
 * request's id; a client may pipeline up to CONTROL_MAX_PENDING of them.
 * Client input is untrusted: every bad line gets one error naming the
 * field, and the limits below bound what a client can hold.
 */
#ifndef ISOLDE_EXPORT_CONTROL_H
#define ISOLDE_EXPORT_CONTROL_H

#include <jansson.h>
#include <stddef.h>

#define CONTROL_MAX_LINE 65536          /* bytes of a request line, without its newline */
#define CONTROL_MAX_CLIENTS 64          /* connections at once; a newcomer evicts the idlest */
#define CONTROL_MAX_SUBSCRIBERS 16      /* of them, event streams (never evicted) */
#define CONTROL_MAX_PENDING 16          /* commands of one client the daemon is working on */
#define CONTROL_IDLE_MS 30000           /* nothing pending, no request line for this long: dropped */
#define CONTROL_STALL_MS 30000          /* output queued and not one byte taken for this long: dropped */
#define CONTROL_MAX_OUTPUT (1u << 20)   /* unsent output beyond this (past one message): dropped */
#define CONTROL_OUTPUT_PAUSE (64u << 10) /* requests are not read while more than this is unsent */

struct isolde_daemon;
struct control;

/* Listen on path in daemon_loop(d). NULL with err. */
struct control *control_start(struct isolde_daemon *d, const char *path, char *err, size_t errlen);
/*
 * Close every client, unsubscribe from events and remove the socket. Call
 * before daemon_destroy. Replies the daemon still owes are dropped safely
 * when they come, even after this returns.
 */
void control_stop(struct control *c);

/*
 * The client's end, for `isolde ctl` and `isolde status`: a blocking
 * connection that sends requests and reads what comes back, line by line.
 */
struct control_conn;

struct control_conn *control_connect(const char *path, char *err, size_t errlen);
/* Send {"execute": execute, "arguments": arguments, "id": id}; arguments
 * (may be NULL) is consumed. 0, or -1 with err. */
int control_send(struct control_conn *cc, const char *execute, json_t *arguments, json_int_t id, char *err,
		 size_t errlen);
/* The next line from the server, parsed (a reply or an event). NULL at the
 * end (err is "") or on an error (err says what; errno EINTR when a
 * signal interrupted the wait). */
json_t *control_recv(struct control_conn *cc, char *err, size_t errlen);
/* The reply to id (other lines are skipped); NULL as for control_recv. */
json_t *control_reply(struct control_conn *cc, json_int_t id, char *err, size_t errlen);
void control_close(struct control_conn *cc);

#endif
