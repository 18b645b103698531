// SPDX-License-Identifier: MIT
/*
 * The control socket (control.h; the protocol is docs/CONTROL.md).
 *
 * A client's input is checked once, here, line by line: framing, JSON, the
 * request's envelope, the command's arguments against its table entry
 * (name, type, range). What reaches the daemon is well-typed; the daemon
 * checks what only it can know (does the device exist, does the image
 * open) and its errors name the field too.
 *
 * Lifetime of a client. A struct client is referenced by
 *   - its connection, from accept until client_close,
 *   - every command the daemon has not answered yet (struct pending),
 *   - its event subscription, until daemon_unsubscribe,
 *   - its place on the deferred list, until that work ran,
 *   - whoever is running one of its callbacks, for the duration,
 * and freed with the last. A reply or an event that arrives after the
 * connection closed finds the client closed and is dropped.
 *
 * Nothing here calls into the daemon from inside a daemon callback (a
 * reply, which may come synchronously from within a daemon_* call, or an
 * event): what needs the daemon then - reading the client's next request,
 * unsubscribing - goes on the deferred list, run from the control's own
 * eventfd in a later pass of the loop. After control_stop, clients still
 * referenced by pending replies are detached (cl->c == NULL): they only
 * wait for those replies to free themselves.
 */
#define _GNU_SOURCE
#include "control.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "isolde/blk.h"
#include "loop.h"
#include "metrics.h"
#include "ratelimit.h"
#include "unix_socket.h"

#define ACCEPTS_PER_WAKEUP CONTROL_MAX_CLIENTS /* the rest wait in the backlog for the next pass */
#define READ_CHUNK 16384
#define LOG_LINES 5                            /* per second, for lines a client can cause */
#define MAX_TIMEOUT_MS 3600000                 /* device-del's timeout-ms */

struct control;

struct client {
	struct control *c;         /* NULL once control_stop detached it */
	unsigned refs;
	unsigned serial;           /* "client N" in log lines */
	int fd;                    /* -1 once closed */
	int slot;                  /* index in c->slots, -1 when out of it */
	bool closed;
	bool eof;                  /* it sent all it will (half-closed) */
	bool done_reading;         /* no more of its input is looked at ("status", an over-long line) */
	bool finishing;            /* close once its output is written */
	bool processing;           /* inside process_lines: its input buffer is in use */
	bool subscribed;           /* an event stream; token valid until unsubscribed */
	bool deferred;             /* on c->deferred */
	int token;
	uint32_t interest;         /* the epoll events asked for */
	unsigned pending;          /* commands the daemon owes it */
	uint64_t active_ns;        /* connected, last request line, or last answer written */
	uint64_t out_moved_ns;     /* output last moved, or began to wait */
	char *in;
	size_t in_len, in_cap;
	char *out;
	size_t out_off, out_len, out_cap;
	struct client *next_deferred;
	struct client *prev, *next; /* every client of c not yet freed */
};

struct control {
	struct isolde_daemon *d;
	struct isolde_loop *loop;
	int fd, timer_fd, wake_fd;
	bool timer_armed, listener_paused;
	char path[108];
	struct client *slots[CONTROL_MAX_CLIENTS];
	unsigned nsubscribers;     /* open clients in slots that are event streams */
	struct client *clients;
	struct client *deferred;
	unsigned next_serial;
	struct isolde_ratelimit log_limit;
};

enum pending_kind { PENDING_COMMAND, PENDING_STATUS };

/* A command the daemon is working on: the reply_fn's context. */
struct pending {
	struct client *cl;
	json_t *id;                /* the request's id, or NULL */
	enum pending_kind kind;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- logging: everything a client can cause is rate-limited ---- */

static void control_log(struct control *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void control_log(struct control *c, const char *fmt, ...)
{
	uint64_t suppressed;
	va_list ap;

	if (!isolde_ratelimit_allow(&c->log_limit, now_ns(), &suppressed))
		return;
	if (suppressed)
		fprintf(stderr, "isolde serve: control %s: %llu messages suppressed\n", c->path,
			(unsigned long long)suppressed);
	fprintf(stderr, "isolde serve: control %s: ", c->path);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void report_suppressed(struct control *c)
{
	uint64_t suppressed;

	if (c->log_limit.suppressed && isolde_ratelimit_allow(&c->log_limit, now_ns(), &suppressed) && suppressed)
		fprintf(stderr, "isolde serve: control %s: %llu messages suppressed\n", c->path,
			(unsigned long long)suppressed);
}

/* ---- references ---- */

static void client_ref(struct client *cl)
{
	cl->refs++;
}

static void client_unref(struct client *cl)
{
	if (--cl->refs)
		return;
	if (cl->c) {
		if (cl->prev)
			cl->prev->next = cl->next;
		else
			cl->c->clients = cl->next;
		if (cl->next)
			cl->next->prev = cl->prev;
	}
	free(cl->in);
	free(cl->out);
	free(cl);
}

static void process_lines(struct client *cl);

/* Run process_lines (or the unsubscribe of a closed client) in a pass of
 * the loop of its own, outside whatever daemon callback we are in. */
static void defer(struct client *cl)
{
	struct control *c = cl->c;
	uint64_t one = 1;

	if (!c || cl->deferred)
		return;
	cl->deferred = true;
	client_ref(cl);
	cl->next_deferred = c->deferred;
	c->deferred = cl;
	(void)!write(c->wake_fd, &one, sizeof one);
}

static void run_deferred(struct client *cl)
{
	cl->deferred = false;
	if (cl->closed && cl->subscribed) {
		if (cl->c)
			daemon_unsubscribe(cl->c->d, cl->token);
		cl->subscribed = false;
		client_unref(cl); /* the subscription's */
	} else if (!cl->closed) {
		process_lines(cl);
	}
	client_unref(cl); /* the deferred list's */
}

static void wake_readable(void *ctx, uint32_t events)
{
	struct control *c = ctx;
	uint64_t v;

	(void)events;
	(void)!read(c->wake_fd, &v, sizeof v);
	struct client *list = c->deferred;
	c->deferred = NULL;
	while (list) {
		struct client *cl = list;
		list = cl->next_deferred;
		run_deferred(cl);
	}
}

/* ---- the connection ---- */

static size_t unsent(const struct client *cl)
{
	return cl->out_len - cl->out_off;
}

static bool want_input(const struct client *cl)
{
	return !cl->closed && !cl->eof && !cl->done_reading && cl->pending < CONTROL_MAX_PENDING &&
	       unsent(cl) <= CONTROL_OUTPUT_PAUSE && cl->in_len <= CONTROL_MAX_LINE;
}

static void set_interest(struct client *cl)
{
	uint32_t ev = 0;

	if (cl->closed || !cl->c)
		return;
	if (want_input(cl))
		ev |= EPOLLIN;
	if (unsent(cl))
		ev |= EPOLLOUT;
	if (ev != cl->interest && loop_modify(cl->c->loop, cl->fd, ev) == 0)
		cl->interest = ev;
}

static void client_close(struct client *cl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Close the connection (a log line when fmt says why). The caller holds a
 * reference of its own if it uses cl afterwards. */
static void client_close(struct client *cl, const char *fmt, ...)
{
	struct control *c = cl->c;

	if (cl->closed)
		return;
	if (fmt && c) {
		char why[256];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, sizeof why, fmt, ap);
		va_end(ap);
		control_log(c, "client %u: %s; disconnecting", cl->serial, why);
	}
	cl->closed = true;
	if (c) {
		loop_unwatch(c->loop, cl->fd);
		if (cl->slot >= 0)
			c->slots[cl->slot] = NULL;
		if (cl->subscribed)
			c->nsubscribers--;
	}
	cl->slot = -1;
	close(cl->fd);
	cl->fd = -1;
	free(cl->out);
	cl->out = NULL;
	cl->out_off = cl->out_len = cl->out_cap = 0;
	if (!cl->processing) {
		free(cl->in);
		cl->in = NULL;
		cl->in_len = cl->in_cap = 0;
	}
	if (cl->subscribed)
		defer(cl); /* daemon_unsubscribe, outside any daemon callback */
	client_unref(cl); /* the connection's */
}

static bool has_complete_line(const struct client *cl)
{
	return cl->in_len && memchr(cl->in, '\n', cl->in_len);
}

/* Close a client that is done: told to finish, or half-closed with nothing
 * left to answer. */
static void maybe_finish(struct client *cl)
{
	if (cl->closed || unsent(cl) || cl->processing)
		return;
	if (cl->finishing || (cl->eof && !cl->pending && !has_complete_line(cl)))
		client_close(cl, NULL);
}

static void flush_out(struct client *cl)
{
	if (cl->closed || !unsent(cl))
		return;
	while (!cl->closed && unsent(cl)) {
		ssize_t w = send(cl->fd, cl->out + cl->out_off, unsent(cl), MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				client_close(cl, NULL); /* it went away */
			return;
		}
		cl->out_off += (size_t)w;
		cl->out_moved_ns = now_ns();
	}
	if (cl->closed)
		return;
	cl->out_off = cl->out_len = 0;
	cl->active_ns = now_ns();
	if (cl->out_cap > CONTROL_OUTPUT_PAUSE) { /* do not keep a large buffer */
		free(cl->out);
		cl->out = NULL;
		cl->out_cap = 0;
	}
	maybe_finish(cl);
}

/*
 * Queue one line (text and a newline) and write what the socket takes. A
 * message always fits into empty output; past that, unsent output may not
 * grow beyond CONTROL_MAX_OUTPUT: a client that does not read (an event
 * stream above all) is dropped rather than grow our memory.
 */
static void queue_line(struct client *cl, const char *text, size_t len)
{
	size_t was = unsent(cl);

	if (cl->closed)
		return;
	if (was && was + len + 1 > CONTROL_MAX_OUTPUT) {
		client_close(cl, "more than %u KiB of output unread", CONTROL_MAX_OUTPUT >> 10);
		return;
	}
	if (cl->out_off && cl->out_len + len + 1 > cl->out_cap) { /* what was sent makes room */
		memmove(cl->out, cl->out + cl->out_off, was);
		cl->out_off = 0;
		cl->out_len = was;
	}
	size_t need = cl->out_len + len + 1;
	if (need > cl->out_cap) {
		size_t cap = cl->out_cap ? cl->out_cap : 4096;
		while (cap < need)
			cap *= 2;
		/* Doubling stops at the bound: a buffer is never much larger than
		 * CONTROL_MAX_OUTPUT or its one message. */
		if (cap > CONTROL_MAX_OUTPUT)
			cap = need > CONTROL_MAX_OUTPUT ? need : CONTROL_MAX_OUTPUT;
		char *p = realloc(cl->out, cap);
		if (!p) {
			client_close(cl, "out of memory for its output");
			return;
		}
		cl->out = p;
		cl->out_cap = cap;
	}
	memcpy(cl->out + cl->out_len, text, len);
	cl->out[cl->out_len + len] = '\n';
	cl->out_len += len + 1;
	if (!was)
		cl->out_moved_ns = now_ns();
	flush_out(cl);
	set_interest(cl);
}

/* ---- building answers ---- */

/* A JSON string of s; bytes that are not UTF-8 become '?'. */
static json_t *jstr(const char *s)
{
	json_t *j = json_string(s ? s : "");

	if (j || !s)
		return j;
	char *copy = strdup(s);
	if (!copy)
		return NULL;
	for (unsigned char *p = (unsigned char *)copy; *p; p++)
		if (*p >= 0x80)
			*p = '?';
	j = json_string(copy);
	free(copy);
	return j;
}

static void queue_json(struct client *cl, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_ENCODE_ANY) : NULL;

	if (!text) {
		client_close(cl, "out of memory for an answer");
		return;
	}
	queue_line(cl, text, strlen(text));
	free(text);
}

static void send_error(struct client *cl, json_t *id, const char *cls, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void send_error(struct client *cl, json_t *id, const char *cls, const char *field, const char *fmt, ...)
{
	char desc[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(desc, sizeof desc, fmt, ap);
	va_end(ap);
	json_t *err = json_object();
	json_t *obj = json_object();
	if (err && obj) {
		json_object_set_new(err, "class", json_string(cls));
		json_object_set_new(err, "desc", jstr(desc));
		if (field)
			json_object_set_new(err, "field", jstr(field));
		json_object_set(obj, "error", err);
		if (id)
			json_object_set(obj, "id", id);
	}
	queue_json(cl, err && obj ? obj : NULL);
	json_decref(err);
	json_decref(obj);
}

/* {"return": RET, "id": ID}, RET a JSON text (NULL: {}) kept as it is
 * unless it spans lines. */
static void send_return(struct client *cl, json_t *id, const char *ret)
{
	char *text = NULL, *idtext = NULL, *reformatted = NULL;
	size_t len = 0;

	if (!ret)
		ret = "{}";
	if (strchr(ret, '\n')) {
		json_t *v = json_loads(ret, JSON_DECODE_ANY, NULL);
		reformatted = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;
		json_decref(v);
		if (!reformatted) {
			send_error(cl, id, "InternalError", NULL, "the daemon's answer is not JSON");
			return;
		}
		ret = reformatted;
	}
	if (id && !(idtext = json_dumps(id, JSON_ENCODE_ANY))) {
		free(reformatted);
		client_close(cl, "out of memory for an answer");
		return;
	}
	FILE *f = open_memstream(&text, &len);
	if (f) {
		fprintf(f, "{\"return\": %s", ret);
		if (idtext)
			fprintf(f, ", \"id\": %s", idtext);
		fputc('}', f);
		fclose(f);
	}
	if (f && text)
		queue_line(cl, text, len);
	else
		client_close(cl, "out of memory for an answer");
	free(text);
	free(idtext);
	free(reformatted);
}

static void send_return_value(struct client *cl, json_t *id, json_t *v)
{
	char *text = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;

	if (!text)
		send_error(cl, id, "InternalError", NULL, "out of memory");
	else
		send_return(cl, id, text);
	free(text);
}

/* ---- the daemon's answers and events ---- */

/* The old protocol's answer: the first device's status object, or
 * {"error": "..."}; then the connection closes. */
static void answer_status(struct client *cl, bool ok, const char *ret, const struct daemon_error *err)
{
	json_t *all = ok ? json_loads(ret ? ret : "[]", JSON_DECODE_ANY, NULL) : NULL;
	json_t *first = json_is_array(all) ? json_array_get(all, 0) : NULL;

	cl->finishing = true;
	if (first) {
		queue_json(cl, first);
	} else {
		json_t *e = json_object();
		if (e)
			json_object_set_new(e, "error", jstr(!ok ? (err ? err->message : "failed") : all ? "no devices" :
							     "the daemon's answer is not JSON"));
		queue_json(cl, e);
		json_decref(e);
	}
	json_decref(all);
}

static void answer(struct client *cl, json_t *id, bool ok, const char *ret, const struct daemon_error *err)
{
	if (ok)
		send_return(cl, id, ret);
	else
		send_error(cl, id, err && err->field ? "InvalidArgument" : "CommandFailed", err ? err->field : NULL,
			   "%s", err ? err->message : "failed");
}

/* daemon_reply_fn: in the main thread, maybe inside the daemon_* call. */
static void on_reply(void *ctx, bool ok, const char *ret, const struct daemon_error *err)
{
	struct pending *p = ctx;
	struct client *cl = p->cl;

	if (!cl->closed) {
		if (p->kind == PENDING_STATUS)
			answer_status(cl, ok, ret, err);
		else
			answer(cl, p->id, ok, ret, err);
	}
	cl->pending--;
	if (!cl->closed && !cl->processing)
		defer(cl); /* its next request, or its end */
	json_decref(p->id);
	free(p);
	client_unref(cl); /* the pending command's */
}

static struct pending *pending_new(struct client *cl, json_t *id, enum pending_kind kind)
{
	struct pending *p = calloc(1, sizeof *p);

	if (!p) {
		send_error(cl, id, "InternalError", NULL, "out of memory");
		return NULL;
	}
	p->cl = cl;
	p->id = id ? json_incref(id) : NULL;
	p->kind = kind;
	client_ref(cl);
	cl->pending++;
	return p;
}

/* daemon_event_fn: one event for one subscriber, main thread. */
static void on_event(void *ctx, const char *event_json)
{
	struct client *cl = ctx;

	if (cl->closed || !event_json)
		return;
	if (!strchr(event_json, '\n')) {
		queue_line(cl, event_json, strlen(event_json));
		return;
	}
	json_t *v = json_loads(event_json, JSON_DECODE_ANY, NULL);
	if (v)
		queue_json(cl, v);
	json_decref(v);
}

/* ---- commands ---- */

enum arg_type { ARG_STRING, ARG_INT, ARG_BOOL };

struct arg {
	const char *name;
	enum arg_type type;
	bool required;
	json_int_t min, max;          /* ARG_INT */
	bool device_name;             /* ARG_STRING: [A-Za-z0-9_.-], 1..DAEMON_NAME_MAX */
	bool spec_value;              /* ARG_STRING: goes into a spec: no ',' */
	const char *const *choices;   /* ARG_STRING: one of these */
};

struct command {
	const char *name;
	const struct arg *args;       /* ends with a NULL name */
	void (*run)(struct client *cl, json_t *id, json_t *args);
};

static const char *const notify_modes[] = { "event", "spin", "hybrid", NULL };
static const char *const domain_kinds[] = { "process", "vm", NULL };

static const struct arg device_add_args[] = {
	{ .name = "spec", .type = ARG_STRING },
	{ .name = "name", .type = ARG_STRING, .device_name = true },
	{ .name = "image", .type = ARG_STRING, .spec_value = true },
	{ .name = "driver", .type = ARG_STRING, .spec_value = true },
	{ .name = "notify", .type = ARG_STRING, .choices = notify_modes },
	{ .name = "domain", .type = ARG_STRING, .choices = domain_kinds },
	{ .name = "qd", .type = ARG_INT, .min = 1, .max = ISOLDE_BLK_MAX_QUEUE_DEPTH },
	{ .name = "readonly", .type = ARG_BOOL },
	{ .name = "direct", .type = ARG_BOOL },
	{ .name = "shield", .type = ARG_BOOL },
	{ .name = "policy", .type = ARG_STRING, .spec_value = true },
	{ NULL },
};
static const struct arg device_del_args[] = {
	{ .name = "name", .type = ARG_STRING, .required = true, .device_name = true },
	{ .name = "timeout-ms", .type = ARG_INT, .min = 0, .max = MAX_TIMEOUT_MS },
	{ NULL },
};
static const struct arg export_add_args[] = {
	{ .name = "spec", .type = ARG_STRING, .required = true },
	{ .name = "device", .type = ARG_STRING, .device_name = true },
	{ NULL },
};
static const struct arg export_del_args[] = {
	{ .name = "id", .type = ARG_INT, .required = true, .min = 0, .max = UINT32_MAX },
	{ NULL },
};
static const struct arg no_args[] = { { NULL } };

static bool device_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > DAEMON_NAME_MAX)
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

static const char *type_name(enum arg_type t)
{
	return t == ARG_STRING ? "a string" : t == ARG_INT ? "an integer" : "true or false";
}

/* One argument's value against its table entry; false: the error is sent. */
static bool check_value(struct client *cl, json_t *id, const struct arg *a, json_t *v)
{
	bool typed = a->type == ARG_STRING ? json_is_string(v) : a->type == ARG_INT ? json_is_integer(v) :
		     json_is_boolean(v);

	if (!typed) {
		if (a->type == ARG_INT)
			send_error(cl, id, "InvalidArgument", a->name, "argument '%s' must be an integer in %lld..%lld",
				   a->name, (long long)a->min, (long long)a->max);
		else
			send_error(cl, id, "InvalidArgument", a->name, "argument '%s' must be %s", a->name,
				   type_name(a->type));
		return false;
	}
	if (a->type == ARG_INT && (json_integer_value(v) < a->min || json_integer_value(v) > a->max)) {
		send_error(cl, id, "InvalidArgument", a->name, "argument '%s': %lld is not in %lld..%lld", a->name,
			   (long long)json_integer_value(v), (long long)a->min, (long long)a->max);
		return false;
	}
	if (a->type != ARG_STRING)
		return true;
	const char *s = json_string_value(v);
	if (!*s) {
		send_error(cl, id, "InvalidArgument", a->name, "argument '%s' must not be empty", a->name);
		return false;
	}
	if (a->device_name && !device_name_ok(s)) {
		send_error(cl, id, "InvalidArgument", a->name,
			   "argument '%s': '%s' is not a device name (1 to %d of A-Z a-z 0-9 . _ -)", a->name, s,
			   DAEMON_NAME_MAX);
		return false;
	}
	if (a->spec_value && strchr(s, ',')) {
		send_error(cl, id, "InvalidArgument", a->name, "argument '%s' may not contain ','", a->name);
		return false;
	}
	if (a->choices) {
		for (const char *const *c = a->choices; *c; c++)
			if (strcmp(s, *c) == 0)
				return true;
		char known[128];
		size_t n = 0;
		known[0] = '\0';
		for (const char *const *c = a->choices; *c && n < sizeof known; c++)
			n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", n ? ", " : "", *c);
		send_error(cl, id, "InvalidArgument", a->name, "argument '%s': '%s' is not %s", a->name, s, known);
		return false;
	}
	return true;
}

static void list_args(char *buf, size_t len, const struct arg *args)
{
	size_t n = 0;

	buf[0] = '\0';
	for (const struct arg *a = args; a->name && n < len; a++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? ", " : "", a->name);
}

/* Every argument given is known and well-typed, and every one required is
 * there; false: the error is sent. */
static bool check_args(struct client *cl, json_t *id, const struct command *cmd, json_t *args)
{
	const char *key;
	json_t *v;

	json_object_foreach(args, key, v) {
		const struct arg *a = cmd->args;
		while (a->name && strcmp(a->name, key) != 0)
			a++;
		if (!a->name) {
			char known[256];
			list_args(known, sizeof known, cmd->args);
			if (known[0])
				send_error(cl, id, "InvalidArgument", key, "unknown argument '%s' (%s takes %s)", key,
					   cmd->name, known);
			else
				send_error(cl, id, "InvalidArgument", key, "unknown argument '%s' (%s takes none)", key,
					   cmd->name);
			return false;
		}
		if (!check_value(cl, id, a, v))
			return false;
	}
	for (const struct arg *a = cmd->args; a->name; a++) {
		if (a->required && !json_object_get(args, a->name)) {
			send_error(cl, id, "InvalidArgument", a->name, "missing argument '%s'", a->name);
			return false;
		}
	}
	return true;
}

static const char *str_arg(json_t *args, const char *name)
{
	return json_string_value(json_object_get(args, name));
}

/* device-add's fields as a device spec: NAME,image=PATH,... */
static char *spec_from_fields(json_t *args)
{
	static const char *const valued[] = { "image", "driver", "domain", "notify", "policy" };
	static const char *const flags[] = { "readonly", "direct", "shield" };
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	json_t *qd = json_object_get(args, "qd");

	if (!f)
		return NULL;
	fputs(str_arg(args, "name"), f);
	for (size_t i = 0; i < sizeof valued / sizeof valued[0]; i++)
		if (str_arg(args, valued[i]))
			fprintf(f, ",%s=%s", valued[i], str_arg(args, valued[i]));
	if (qd)
		fprintf(f, ",qd=%lld", (long long)json_integer_value(qd));
	for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
		if (json_is_true(json_object_get(args, flags[i])))
			fprintf(f, ",%s", flags[i]);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static void cmd_device_add(struct client *cl, json_t *id, json_t *args)
{
	const char *spec = str_arg(args, "spec");
	const char *key;
	json_t *v;
	char *built = NULL;

	if (spec) {
		json_object_foreach(args, key, v) {
			if (strcmp(key, "spec") != 0) {
				send_error(cl, id, "InvalidArgument", key,
					   "argument '%s': give either 'spec' or the fields (name, image, ...), not both",
					   key);
				return;
			}
		}
	} else {
		static const char *const required[] = { "name", "image" };
		for (size_t i = 0; i < 2; i++) {
			if (!str_arg(args, required[i])) {
				send_error(cl, id, "InvalidArgument", required[i],
					   "missing argument '%s' (or give the whole device as 'spec')", required[i]);
				return;
			}
		}
		if (!(spec = built = spec_from_fields(args))) {
			send_error(cl, id, "InternalError", NULL, "out of memory");
			return;
		}
	}
	struct pending *p = pending_new(cl, id, PENDING_COMMAND);
	if (p)
		daemon_device_add(cl->c->d, spec, on_reply, p);
	free(built);
}

static void cmd_device_del(struct client *cl, json_t *id, json_t *args)
{
	json_t *t = json_object_get(args, "timeout-ms");
	struct pending *p = pending_new(cl, id, PENDING_COMMAND);

	if (p)
		daemon_device_del(cl->c->d, str_arg(args, "name"), t ? (unsigned)json_integer_value(t) : 0, on_reply,
				  p);
}

/* Does an export spec name its device (",device=" after its address)? */
static bool spec_names_device(const char *spec)
{
	for (const char *p = strchr(spec, ','); p; p = strchr(p + 1, ','))
		if (strncmp(p + 1, "device=", 7) == 0)
			return true;
	return false;
}

static void cmd_export_add(struct client *cl, json_t *id, json_t *args)
{
	const char *spec = str_arg(args, "spec");
	const char *device = str_arg(args, "device");
	char *joined = NULL;

	if (device) {
		if (spec_names_device(spec)) {
			send_error(cl, id, "InvalidArgument", "device",
				   "argument 'device': the spec names its device already");
			return;
		}
		if (asprintf(&joined, "%s,device=%s", spec, device) < 0) {
			send_error(cl, id, "InternalError", NULL, "out of memory");
			return;
		}
		spec = joined;
	}
	struct pending *p = pending_new(cl, id, PENDING_COMMAND);
	if (p)
		daemon_export_add(cl->c->d, spec, on_reply, p);
	free(joined);
}

static void cmd_export_del(struct client *cl, json_t *id, json_t *args)
{
	struct pending *p = pending_new(cl, id, PENDING_COMMAND);

	if (p)
		daemon_export_del(cl->c->d, (unsigned)json_integer_value(json_object_get(args, "id")), on_reply, p);
}

static void cmd_query_devices(struct client *cl, json_t *id, json_t *args)
{
	struct pending *p = pending_new(cl, id, PENDING_COMMAND);

	(void)args;
	if (p)
		daemon_query_devices(cl->c->d, on_reply, p);
}

static void cmd_query_exports(struct client *cl, json_t *id, json_t *args)
{
	struct pending *p = pending_new(cl, id, PENDING_COMMAND);

	(void)args;
	if (p)
		daemon_query_exports(cl->c->d, on_reply, p);
}

/* Rendered here from the snapshots: nothing waits. */
static void cmd_metrics(struct client *cl, json_t *id, json_t *args)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	(void)args;
	if (!f) {
		send_error(cl, id, "InternalError", NULL, "out of memory");
		return;
	}
	metrics_render(cl->c->d, f);
	if (fclose(f) != 0) {
		free(text);
		send_error(cl, id, "InternalError", NULL, "out of memory");
		return;
	}
	json_t *s = jstr(text);
	send_return_value(cl, id, s);
	json_decref(s);
	free(text);
}

static void cmd_events(struct client *cl, json_t *id, json_t *args)
{
	struct control *c = cl->c;

	(void)args;
	if (c->nsubscribers >= CONTROL_MAX_SUBSCRIBERS) {
		send_error(cl, id, "Busy", NULL, "%d clients are streaming events already, the most there may be",
			   CONTROL_MAX_SUBSCRIBERS);
		return;
	}
	int token = daemon_subscribe(c->d, on_event, cl);
	if (token < 0) {
		send_error(cl, id, "Busy", NULL, "the daemon takes no more event subscribers");
		return;
	}
	cl->subscribed = true;
	cl->token = token;
	c->nsubscribers++;
	client_ref(cl); /* the subscription's */
	send_return(cl, id, NULL);
}

static const struct command commands[] = {
	{ "device-add", device_add_args, cmd_device_add },
	{ "device-del", device_del_args, cmd_device_del },
	{ "export-add", export_add_args, cmd_export_add },
	{ "export-del", export_del_args, cmd_export_del },
	{ "query-devices", no_args, cmd_query_devices },
	{ "query-exports", no_args, cmd_query_exports },
	{ "metrics", no_args, cmd_metrics },
	{ "events", no_args, cmd_events },
};

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* ---- requests ---- */

/* The old protocol's one line. */
static void legacy_status(struct client *cl)
{
	struct pending *p = pending_new(cl, NULL, PENDING_STATUS);

	cl->done_reading = true;
	if (p)
		daemon_query_devices(cl->c->d, on_reply, p);
	else
		cl->finishing = true;
}

/* A parsed request: its envelope, then its command's arguments. */
static void dispatch(struct client *cl, json_t *req)
{
	json_t *id = json_object_get(req, "id");
	json_t *execute = json_object_get(req, "execute");
	json_t *args = json_object_get(req, "arguments");
	const char *key;
	json_t *v;

	json_object_foreach(req, key, v) {
		if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id")) {
			send_error(cl, id, "InvalidRequest", key,
				   "unknown member '%s' (a request has execute, arguments and id)", key);
			return;
		}
	}
	if (!execute) {
		send_error(cl, id, "InvalidRequest", "execute", "missing member 'execute' (the command)");
		return;
	}
	if (!json_is_string(execute)) {
		send_error(cl, id, "InvalidRequest", "execute", "'execute' must be a string (the command)");
		return;
	}
	if (args && !json_is_object(args)) {
		send_error(cl, id, "InvalidRequest", "arguments", "'arguments' must be an object");
		return;
	}
	const struct command *cmd = find_command(json_string_value(execute));
	if (!cmd) {
		send_error(cl, id, "CommandNotFound", "execute",
			   "unknown command '%s' (commands: device-add, device-del, export-add, export-del, "
			   "query-devices, query-exports, metrics, events)", json_string_value(execute));
		return;
	}
	if (cl->subscribed) {
		send_error(cl, id, "InvalidState", "execute",
			   "this connection streams events; send commands on another one");
		return;
	}
	json_t *none = NULL;
	if (!args && !(args = none = json_object())) {
		send_error(cl, id, "InternalError", NULL, "out of memory");
		return;
	}
	if (check_args(cl, id, cmd, args))
		cmd->run(cl, id, args);
	json_decref(none);
}

static void handle_line(struct client *cl, const char *line, size_t len)
{
	while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	while (len && (line[0] == ' ' || line[0] == '\t')) {
		line++;
		len--;
	}
	if (len == 0)
		return; /* blank lines are allowed, and ignored */
	if (len == 6 && memcmp(line, "status", 6) == 0) {
		legacy_status(cl);
		return;
	}
	json_error_t je;
	json_t *req = json_loadb(line, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
	if (!req) {
		send_error(cl, NULL, "ParseError", NULL, "not JSON: %s (at byte %d)", je.text, je.position);
		return;
	}
	if (json_is_object(req))
		dispatch(cl, req);
	else
		send_error(cl, NULL, "InvalidRequest", NULL, "a request is a JSON object, not %s",
			   json_is_array(req) ? "an array" : json_is_string(req) ? "a string" : "a scalar");
	json_decref(req);
}

static void overlong(struct client *cl)
{
	control_log(cl->c, "client %u: a line longer than %d bytes", cl->serial, CONTROL_MAX_LINE);
	cl->done_reading = true;
	cl->finishing = true;
	send_error(cl, NULL, "ParseError", NULL, "line longer than %d bytes; disconnecting", CONTROL_MAX_LINE);
}

/* Answer the complete lines buffered, as far as the client's limits let
 * us (commands pending, output unread); the rest wait. */
static void process_lines(struct client *cl)
{
	size_t start = 0;

	if (cl->processing)
		return;
	cl->processing = true;
	client_ref(cl);
	while (!cl->closed && !cl->done_reading && cl->pending < CONTROL_MAX_PENDING &&
	       unsent(cl) <= CONTROL_OUTPUT_PAUSE) {
		char *line = cl->in + start;
		char *nl = memchr(line, '\n', cl->in_len - start);
		if (!nl) {
			if (cl->in_len - start > CONTROL_MAX_LINE)
				overlong(cl);
			break;
		}
		cl->active_ns = now_ns();
		start += (size_t)(nl - line) + 1;
		handle_line(cl, line, (size_t)(nl - line));
	}
	cl->processing = false;
	if (cl->closed) {
		free(cl->in);
		cl->in = NULL;
		cl->in_len = cl->in_cap = 0;
	} else {
		if (start) {
			memmove(cl->in, cl->in + start, cl->in_len - start);
			cl->in_len -= start;
		}
		maybe_finish(cl);
		set_interest(cl);
	}
	client_unref(cl);
}

/* One read: level-triggered, so what is left comes on the next pass. */
static void read_input(struct client *cl)
{
	size_t room = CONTROL_MAX_LINE + 1 - cl->in_len; /* a full line and its newline */
	size_t want = room < READ_CHUNK ? room : READ_CHUNK;

	if (cl->in_cap < cl->in_len + want + 1) {
		size_t cap = cl->in_len + want + 1;
		char *p = realloc(cl->in, cap);
		if (!p) {
			client_close(cl, "out of memory for its input");
			return;
		}
		cl->in = p;
		cl->in_cap = cap;
	}
	ssize_t n = read(cl->fd, cl->in + cl->in_len, want);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			client_close(cl, NULL);
		return;
	}
	if (n > 0) {
		cl->in_len += (size_t)n;
		return;
	}
	/* End of its input. A subscriber is done; another gets its answers,
	 * its last line counted even without a newline. */
	cl->eof = true;
	if (cl->subscribed) {
		client_close(cl, NULL);
		return;
	}
	if (cl->in_len && cl->in[cl->in_len - 1] != '\n' && cl->in_len <= CONTROL_MAX_LINE)
		cl->in[cl->in_len++] = '\n';
}

static void client_io(void *ctx, uint32_t events)
{
	struct client *cl = ctx;

	client_ref(cl);
	if (events & EPOLLOUT)
		flush_out(cl);
	if (!cl->closed && (events & EPOLLIN) && want_input(cl)) {
		read_input(cl);
		if (!cl->closed)
			process_lines(cl);
	}
	/* Gone both ways (a hang-up), or an error: no answer can reach it. */
	if (!cl->closed && (events & (EPOLLHUP | EPOLLERR)) && !(cl->interest & EPOLLIN))
		client_close(cl, NULL);
	else if (!cl->closed)
		set_interest(cl);
	client_unref(cl);
}

/* ---- timeouts, slots, the listener ---- */

static void arm_timer(struct control *c, bool on)
{
	struct itimerspec its = { 0 };

	if (on == c->timer_armed)
		return;
	if (on)
		its.it_value.tv_sec = its.it_interval.tv_sec = 1;
	if (timerfd_settime(c->timer_fd, 0, &its, NULL) == 0)
		c->timer_armed = on;
}

/* Once a second while there are clients: idle ones and ones that stopped
 * reading are dropped, a paused listener tries again. */
static void timer_fired(void *ctx, uint32_t events)
{
	struct control *c = ctx;
	uint64_t expirations, now = now_ns();
	bool any = false;

	(void)events;
	(void)!read(c->timer_fd, &expirations, sizeof expirations);
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
		struct client *cl = c->slots[i];
		if (!cl)
			continue;
		if (unsent(cl) && now - cl->out_moved_ns >= (uint64_t)CONTROL_STALL_MS * 1000000u)
			client_close(cl, "took no output for %d s", CONTROL_STALL_MS / 1000);
		else if (!cl->subscribed && !cl->pending && !unsent(cl) &&
			 now - cl->active_ns >= (uint64_t)CONTROL_IDLE_MS * 1000000u)
			client_close(cl, "idle for %d s", CONTROL_IDLE_MS / 1000);
		else
			any = true;
	}
	if (c->listener_paused && loop_modify(c->loop, c->fd, EPOLLIN) == 0)
		c->listener_paused = false;
	report_suppressed(c);
	if (!any && !c->listener_paused)
		arm_timer(c, false);
}

/*
 * A free slot; when there is none, the one of the client idle longest,
 * preferring one that waits for no answer. Event streams are never taken:
 * there are at most CONTROL_MAX_SUBSCRIBERS < CONTROL_MAX_CLIENTS, so a
 * newcomer always gets in.
 */
static int take_slot(struct control *c)
{
	int victim = -1;

	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
		struct client *cl = c->slots[i];
		if (!cl)
			return i;
		if (cl->subscribed)
			continue;
		if (victim < 0) {
			victim = i;
			continue;
		}
		struct client *v = c->slots[victim];
		bool busy = cl->pending || unsent(cl), vbusy = v->pending || unsent(v);
		if (busy < vbusy || (busy == vbusy && cl->active_ns < v->active_ns))
			victim = i;
	}
	if (victim < 0)
		return -1;
	client_close(c->slots[victim], "%d clients connected; a newcomer takes the slot of the idlest",
		     CONTROL_MAX_CLIENTS);
	return victim;
}

static void accept_client(struct control *c, int fd)
{
	struct client *cl = calloc(1, sizeof *cl);

	if (!cl) {
		control_log(c, "out of memory for a client");
		close(fd);
		return;
	}
	cl->c = c;
	cl->fd = fd;
	cl->refs = 1;
	cl->serial = ++c->next_serial;
	cl->token = -1;
	cl->slot = -1;
	cl->active_ns = cl->out_moved_ns = now_ns();
	cl->interest = EPOLLIN;
	cl->next = c->clients;
	if (c->clients)
		c->clients->prev = cl;
	c->clients = cl;
	if (loop_watch(c->loop, fd, EPOLLIN, client_io, cl) != 0) {
		control_log(c, "client %u: cannot watch fd %d; closing it", cl->serial, fd);
		cl->closed = true;
		close(fd);
		client_unref(cl);
		return;
	}
	int slot = take_slot(c);
	if (slot < 0) { /* cannot happen while subscribers are fewer than slots */
		client_close(cl, "no slot free");
		return;
	}
	cl->slot = slot;
	c->slots[slot] = cl;
	arm_timer(c, true);
}

static void listener_readable(void *ctx, uint32_t events)
{
	struct control *c = ctx;

	(void)events;
	for (int n = 0; n < ACCEPTS_PER_WAKEUP; n++) {
		int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0) {
			accept_client(c, fd);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			/* Do not spin on a level-triggered listener: try again on the next tick. */
			control_log(c, "accept: %s; pausing for a second", strerror(errno));
			if (loop_modify(c->loop, c->fd, 0) == 0)
				c->listener_paused = true;
			arm_timer(c, true);
		}
		break;
	}
}

static void close_fds(struct control *c)
{
	if (c->fd >= 0) {
		loop_unwatch(c->loop, c->fd);
		close(c->fd);
		unlink(c->path);
	}
	if (c->timer_fd >= 0) {
		loop_unwatch(c->loop, c->timer_fd);
		close(c->timer_fd);
	}
	if (c->wake_fd >= 0) {
		loop_unwatch(c->loop, c->wake_fd);
		close(c->wake_fd);
	}
}

struct control *control_start(struct isolde_daemon *d, const char *path, char *err, size_t errlen)
{
	struct control *c = calloc(1, sizeof *c);
	char why[256];

	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->d = d;
	c->loop = daemon_loop(d);
	c->timer_fd = c->wake_fd = -1;
	snprintf(c->path, sizeof c->path, "%s", path);
	isolde_ratelimit_init(&c->log_limit, LOG_LINES, 1);
	c->fd = unix_listen(path, why, sizeof why);
	if (c->fd < 0) {
		snprintf(err, errlen, "--control: %s", why);
		free(c);
		return NULL;
	}
	c->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->timer_fd < 0 || c->wake_fd < 0 || loop_watch(c->loop, c->timer_fd, EPOLLIN, timer_fired, c) != 0 ||
	    loop_watch(c->loop, c->wake_fd, EPOLLIN, wake_readable, c) != 0 ||
	    loop_watch(c->loop, c->fd, EPOLLIN, listener_readable, c) != 0) {
		snprintf(err, errlen, "--control %s: cannot watch it: %s", path, strerror(errno));
		close_fds(c);
		free(c);
		return NULL;
	}
	return c;
}

void control_stop(struct control *c)
{
	if (!c)
		return;
	for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
		if (c->slots[i])
			client_close(c->slots[i], NULL);
	/* Subscriptions end now (we are in no daemon callback). */
	while (c->deferred) {
		struct client *cl = c->deferred;
		c->deferred = cl->next_deferred;
		run_deferred(cl);
	}
	/* Left: clients that wait for the daemon's replies. They free themselves. */
	for (struct client *cl = c->clients, *next; cl; cl = next) {
		next = cl->next;
		cl->c = NULL;
		cl->prev = cl->next = NULL;
	}
	close_fds(c);
	free(c);
}

/* ---- the client's end ---- */

#define CLIENT_MAX_LINE (256u << 20) /* what we accept from the server in one line */

struct control_conn {
	int fd;
	char *buf;
	size_t len, cap;
};

struct control_conn *control_connect(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct control_conn *cc;

	if (strlen(path) >= sizeof addr.sun_path) {
		snprintf(err, errlen, "%s: a socket path must be shorter than %zu bytes", path, sizeof addr.sun_path);
		return NULL;
	}
	if (!(cc = calloc(1, sizeof *cc))) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	memcpy(addr.sun_path, path, strlen(path));
	/* Blocking: a full listen backlog makes connect wait, not fail. */
	cc->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cc->fd < 0 || connect(cc->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
		snprintf(err, errlen, "cannot reach a server at %s: %s", path, strerror(errno));
		if (cc->fd >= 0)
			close(cc->fd);
		free(cc);
		return NULL;
	}
	return cc;
}

int control_send(struct control_conn *cc, const char *execute, json_t *arguments, json_int_t id, char *err,
		 size_t errlen)
{
	json_t *req = json_object();
	char *text = NULL;

	if (req) {
		json_object_set_new(req, "execute", json_string(execute));
		if (arguments)
			json_object_set(req, "arguments", arguments);
		json_object_set_new(req, "id", json_integer(id));
		text = json_dumps(req, JSON_COMPACT);
	}
	json_decref(req);
	json_decref(arguments);
	if (!text) {
		snprintf(err, errlen, "cannot build the request (a string that is not UTF-8?)");
		return -1;
	}
	size_t len = strlen(text);
	text[len++] = '\n'; /* in the place of the NUL: we send len bytes */
	for (size_t off = 0; off < len;) {
		ssize_t w = send(cc->fd, text + off, len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			snprintf(err, errlen, "cannot send the request: %s", strerror(errno));
			free(text);
			return -1;
		}
		off += (size_t)w;
	}
	free(text);
	return 0;
}

json_t *control_recv(struct control_conn *cc, char *err, size_t errlen)
{
	for (;;) {
		char *nl = cc->len ? memchr(cc->buf, '\n', cc->len) : NULL;
		if (nl) {
			json_error_t je;
			size_t n = (size_t)(nl - cc->buf);
			json_t *v = json_loadb(cc->buf, n, JSON_DECODE_ANY, &je);
			memmove(cc->buf, nl + 1, cc->len - n - 1);
			cc->len -= n + 1;
			if (!v)
				snprintf(err, errlen, "the server sent a line that is not JSON: %s", je.text);
			return v;
		}
		if (cc->len == cc->cap) {
			size_t cap = cc->cap ? cc->cap * 2 : 65536;
			char *p = cap <= CLIENT_MAX_LINE ? realloc(cc->buf, cap) : NULL;
			if (!p) {
				snprintf(err, errlen, "the server's line is too long");
				return NULL;
			}
			cc->buf = p;
			cc->cap = cap;
		}
		ssize_t n = read(cc->fd, cc->buf + cc->len, cc->cap - cc->len);
		if (n < 0) {
			int e = errno;
			snprintf(err, errlen, "%s", e == EINTR ? "interrupted" : strerror(e));
			errno = e;
			return NULL;
		}
		if (n == 0) {
			snprintf(err, errlen, "%s", cc->len ? "the server closed the connection in the middle of a line" :
				 "");
			errno = 0;
			return NULL;
		}
		cc->len += (size_t)n;
	}
}

json_t *control_reply(struct control_conn *cc, json_int_t id, char *err, size_t errlen)
{
	for (;;) {
		json_t *v = control_recv(cc, err, errlen);
		if (!v)
			return NULL;
		json_t *rid = json_object_get(v, "id");
		if (json_is_object(v) && json_is_integer(rid) && json_integer_value(rid) == id &&
		    (json_object_get(v, "return") || json_object_get(v, "error")))
			return v;
		json_decref(v);
	}
}

void control_close(struct control_conn *cc)
{
	if (!cc)
		return;
	close(cc->fd);
	free(cc->buf);
	free(cc);
}
