// SPDX-License-Identifier: MIT
/*
 * The daemon: a registry of devices (main thread), one thread per device.
 *
 * Why a thread per device rather than one per core: a device's thread owns
 * its front end, its driver (PR_SET_PDEATHSIG ties a driver to the thread
 * that started it, so removing the device ends its driver with the thread)
 * and its exports; nothing is shared between devices but this registry, so
 * a device can neither delay nor corrupt another, and there is no lock on
 * any I/O path. The cost is a thread per device, which sleeps when its
 * device is idle (event and hybrid modes; docs/EVALUATION.md measures it).
 *
 * Life of a device record (main thread):
 *   OPENING  its thread opens the device (isolde_blk_open may take a while:
 *            the first driver's start) and creates its server, then posts
 *            opened() here;
 *   SERVING  its thread runs server_run; commands reach it as tasks on its
 *            loop (loop_post), answers come back as tasks on ours;
 *   STOPPING server_stop was posted; when the thread has drained, closed
 *            the device and posted ended(), it is joined and freed.
 * A record is freed only in ended(), after every task its thread posted
 * here (they come in order), so those tasks may use it.
 */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define MAX_SUBSCRIBERS 64
#define MAX_QUERIES 32
#define STOP_DRAIN_MS 60000 /* SIGINT/SIGTERM: requests in flight may take this long */

enum rec_state { REC_OPENING, REC_SERVING, REC_STOPPING };

struct device_rec {
	struct isolde_daemon *d;
	char name[DAEMON_NAME_MAX + 1];
	char spec[1024];
	struct isolde_blk_config cfg;
	char *own_strings[3];              /* daemon_device_add_config's copies */
	enum rec_state state;
	struct isolde_loop *loop;          /* the device thread's */
	pthread_t thread;
	struct server_snapshot_store store;
	/* Written by the device thread before it posts opened()/ended(). */
	struct isolde_blk *dev;
	struct isolde_server *srv;
	char open_error[512];
	uint64_t size;                     /* of the device, and its first driver's pid */
	pid_t first_pid;
	bool failed;                       /* the device had failed when it stopped */
	unsigned drain_ms;
	daemon_reply_fn add_reply, del_reply;
	void *add_ctx, *del_ctx;
	bool stop_wanted;                  /* asked to stop while opening: opened() stops it */
};

struct subscriber {
	daemon_event_fn fn;
	void *ctx;
};

/* A query waits for every serving device to publish, or for its timer. */
struct query {
	struct isolde_daemon *d;
	bool active;
	bool exports;                      /* query-exports, else query-devices */
	unsigned waiting;
	int timer_fd;
	daemon_reply_fn reply;
	void *ctx;
	struct device_rec *waits_for[DAEMON_MAX_DEVICES];
	unsigned nwaits;
};

struct export_rec {
	unsigned id;
	struct device_rec *rec;
};

struct isolde_daemon {
	struct isolde_loop *loop;
	int signal_fd;
	bool stopping;
	bool stopped;
	pthread_mutex_t lock;              /* the registry, for daemon_snapshots */
	struct device_rec *devices[DAEMON_MAX_DEVICES];
	unsigned ndevices;
	struct export_rec exports[DAEMON_MAX_DEVICES * SERVER_MAX_EXPORTS];
	unsigned nexports;
	unsigned next_export_id;
	struct subscriber subscribers[MAX_SUBSCRIBERS];
	struct query queries[MAX_QUERIES];
	bool any_failed;
};

static void set_error(struct daemon_error *e, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void set_error(struct daemon_error *e, const char *field, const char *fmt, ...)
{
	va_list ap;

	e->field = field;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
}

static void reply_error(daemon_reply_fn reply, void *ctx, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void reply_error(daemon_reply_fn reply, void *ctx, const char *field, const char *fmt, ...)
{
	struct daemon_error e = { .field = field };
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e.message, sizeof e.message, fmt, ap);
	va_end(ap);
	if (reply)
		reply(ctx, false, NULL, &e);
}

/* ---- events ---- */

static void broadcast(struct isolde_daemon *d, const char *json)
{
	for (unsigned i = 0; i < MAX_SUBSCRIBERS; i++)
		if (d->subscribers[i].fn)
			d->subscribers[i].fn(d->subscribers[i].ctx, json);
}

/* An event, built with open_memstream: "{"event": TYPE, "device": NAME ...}" */
static FILE *event_begin(char **text, size_t *len, const char *type, const char *device)
{
	FILE *f = open_memstream(text, len);
	struct timespec ts;

	if (!f)
		return NULL;
	clock_gettime(CLOCK_REALTIME, &ts);
	fputs("{\"event\": ", f);
	json_write_string(f, type);
	fputs(", \"device\": ", f);
	json_write_string(f, device);
	fprintf(f, ", \"time\": %lld.%06ld", (long long)ts.tv_sec, ts.tv_nsec / 1000);
	return f;
}

/* text is read after fclose, which is when open_memstream sets it. */
static void event_end(struct isolde_daemon *d, FILE *f, char **text)
{
	fputs("}", f);
	fclose(f);
	broadcast(d, *text);
	free(*text);
}

static void emit_simple(struct isolde_daemon *d, const char *type, const char *device, const char *extra_json)
{
	char *text;
	size_t len;
	FILE *f = event_begin(&text, &len, type, device);

	if (!f)
		return;
	if (extra_json)
		fprintf(f, ", %s", extra_json);
	event_end(d, f, &text);
}

struct posted_event {
	struct isolde_daemon *d;
	char *json;
};

static void deliver_event(void *ctx)
{
	struct posted_event *e = ctx;

	broadcast(e->d, e->json);
	free(e->json);
	free(e);
}

/* In the device's thread: an event of its front end, sent to ours. */
static void on_server_event(void *ctx, struct isolde_server *s, const struct isolde_blk_event *ev)
{
	struct device_rec *rec = ctx;
	static const char *const types[] = {
		[ISOLDE_BLK_EVENT_FAILED] = "driver-failed",
		[ISOLDE_BLK_EVENT_RECOVERED] = "driver-recovered",
		[ISOLDE_BLK_EVENT_GAVE_UP] = "device-failed",
	};
	char *text;
	size_t len;
	FILE *f = event_begin(&text, &len, types[ev->type], server_name(s));

	if (!f)
		return;
	fprintf(f, ", \"generation\": %u", ev->generation);
	if (ev->type == ISOLDE_BLK_EVENT_RECOVERED) {
		fprintf(f, ", \"replayed\": %u, \"recovery_us\": %llu", ev->replayed,
			(unsigned long long)ev->recovery_us);
	} else {
		fputs(", \"reason\": ", f);
		json_write_string(f, isolde_failure_name(ev->failure));
		fputs(", \"detail\": ", f);
		json_write_string(f, ev->reason ? ev->reason : "");
	}
	fputs("}", f);
	fclose(f);
	struct posted_event *pe = malloc(sizeof *pe);
	if (!pe) {
		free(text);
		return;
	}
	pe->d = rec->d;
	pe->json = text;
	if (loop_post(rec->d->loop, deliver_event, pe) != 0) {
		free(text);
		free(pe);
	}
}

int daemon_subscribe(struct isolde_daemon *d, daemon_event_fn fn, void *ctx)
{
	for (int i = 0; i < MAX_SUBSCRIBERS; i++) {
		if (!d->subscribers[i].fn) {
			d->subscribers[i] = (struct subscriber){ fn, ctx };
			return i;
		}
	}
	return -1;
}

void daemon_unsubscribe(struct isolde_daemon *d, int token)
{
	if (token >= 0 && token < MAX_SUBSCRIBERS)
		d->subscribers[token] = (struct subscriber){ NULL, NULL };
}

/* ---- the registry ---- */

static struct device_rec *find_device(struct isolde_daemon *d, const char *name)
{
	for (unsigned i = 0; i < d->ndevices; i++)
		if (strcmp(d->devices[i]->name, name) == 0)
			return d->devices[i];
	return NULL;
}

static void registry_remove(struct isolde_daemon *d, struct device_rec *rec)
{
	pthread_mutex_lock(&d->lock);
	for (unsigned i = 0; i < d->ndevices; i++) {
		if (d->devices[i] == rec) {
			d->devices[i] = d->devices[--d->ndevices];
			break;
		}
	}
	pthread_mutex_unlock(&d->lock);
	for (unsigned i = 0; i < d->nexports;) {
		if (d->exports[i].rec == rec)
			d->exports[i] = d->exports[--d->nexports];
		else
			i++;
	}
}

static void free_rec(struct device_rec *rec)
{
	isolde_blk_config_free(&rec->cfg);
	for (unsigned i = 0; i < 3; i++)
		free(rec->own_strings[i]);
	loop_destroy(rec->loop);
	server_snapshot_store_fini(&rec->store);
	free(rec);
}

unsigned daemon_device_count(struct isolde_daemon *d)
{
	return d->ndevices;
}

void daemon_snapshots(struct isolde_daemon *d, struct daemon_snapshots *out)
{
	pthread_mutex_lock(&d->lock);
	out->n = 0;
	for (unsigned i = 0; i < d->ndevices; i++) {
		struct device_rec *rec = d->devices[i];
		if (rec->state == REC_OPENING)
			continue;
		server_snapshot_store_copy(&rec->store, &out->devices[out->n++]);
	}
	pthread_mutex_unlock(&d->lock);
}

void daemon_snapshots_free(struct daemon_snapshots *s)
{
	for (unsigned i = 0; i < s->n; i++)
		server_snapshot_free(&s->devices[i]);
	s->n = 0;
}

/* ---- a device's thread ---- */

static void opened(void *ctx);
static void ended(void *ctx);
static void post_stop(struct device_rec *rec, unsigned drain_ms);

static void *device_thread(void *arg)
{
	struct device_rec *rec = arg;
	char err[512];

	rec->dev = isolde_blk_open(&rec->cfg, err, sizeof err);
	if (rec->dev)
		rec->srv = server_create(rec->loop, rec->dev, rec->name, &rec->store, err, sizeof err);
	if (!rec->srv) {
		snprintf(rec->open_error, sizeof rec->open_error, "%s", err);
		isolde_blk_close(rec->dev);
		rec->dev = NULL;
		loop_post(rec->d->loop, opened, rec);
		return NULL;
	}
	server_set_event_handler(rec->srv, on_server_event, rec);
	rec->size = isolde_blk_size(rec->dev);
	rec->first_pid = isolde_blk_driver_pid(rec->dev);
	loop_post(rec->d->loop, opened, rec);
	server_run(rec->srv);
	rec->failed = isolde_blk_failed(rec->dev);
	server_destroy(rec->srv);
	isolde_blk_close(rec->dev);
	loop_post(rec->d->loop, ended, rec);
	return NULL;
}

static void announce(struct device_rec *rec)
{
	char *text;
	size_t len;
	FILE *f = event_begin(&text, &len, "device-added", rec->name);

	if (!f)
		return;
	fputs(", \"image\": ", f);
	json_write_string(f, rec->cfg.image);
	fputs(", \"driver\": ", f);
	json_write_string(f, rec->cfg.driver);
	fprintf(f, ", \"size\": %llu, \"pid\": %d", (unsigned long long)rec->size, (int)rec->first_pid);
	event_end(rec->d, f, &text);
}

/* Main thread: the device's thread opened it, or failed to. */
static void opened(void *ctx)
{
	struct device_rec *rec = ctx;
	struct isolde_daemon *d = rec->d;

	if (!rec->srv) {
		pthread_join(rec->thread, NULL);
		registry_remove(d, rec);
		reply_error(rec->add_reply, rec->add_ctx, NULL, "device %s: %s", rec->name, rec->open_error);
		if (rec->del_reply)
			rec->del_reply(rec->del_ctx, true, NULL, NULL);
		free_rec(rec);
		return;
	}
	pthread_mutex_lock(&d->lock); /* daemon_snapshots reads it from other threads */
	rec->state = REC_SERVING;
	pthread_mutex_unlock(&d->lock);
	announce(rec);
	if (rec->add_reply) {
		char *ret = NULL;
		size_t len;
		FILE *f = open_memstream(&ret, &len);
		if (f) {
			fprintf(f, "{\"name\": \"%s\", \"image\": ", rec->name);
			json_write_string(f, rec->cfg.image);
			fputs(", \"driver\": ", f);
			json_write_string(f, rec->cfg.driver);
			fprintf(f, ", \"notify\": \"%s\", \"size\": %llu, \"pid\": %d}",
				isolde_notify_mode_name(rec->cfg.notify),
				(unsigned long long)rec->size, (int)rec->first_pid);
			fclose(f);
		}
		rec->add_reply(rec->add_ctx, true, ret, NULL);
		free(ret);
	}
	/* Removed while it was opening, or the daemon stopped meanwhile. */
	if (rec->stop_wanted)
		post_stop(rec, rec->drain_ms);
}

static void stop_task(void *ctx)
{
	struct device_rec *rec = ctx;

	server_stop(rec->srv, rec->drain_ms);
}

static void post_stop(struct device_rec *rec, unsigned drain_ms)
{
	if (rec->state == REC_STOPPING)
		return;
	rec->drain_ms = drain_ms ? drain_ms : DAEMON_DRAIN_DEFAULT_MS;
	if (rec->state == REC_OPENING) {
		rec->stop_wanted = true; /* opened() posts it */
		return;
	}
	rec->state = REC_STOPPING;
	loop_post(rec->loop, stop_task, rec);
}

static void query_forget(struct isolde_daemon *d, struct device_rec *rec);

/* Main thread: the device's thread is done; its device is closed. */
static void ended(void *ctx)
{
	struct device_rec *rec = ctx;
	struct isolde_daemon *d = rec->d;

	pthread_join(rec->thread, NULL);
	query_forget(d, rec);
	registry_remove(d, rec);
	if (rec->failed)
		d->any_failed = true;
	emit_simple(d, "device-removed", rec->name, rec->failed ? "\"failed\": true" : "\"failed\": false");
	if (rec->del_reply)
		rec->del_reply(rec->del_ctx, true, NULL, NULL);
	free_rec(rec);
}

/* ---- devices ---- */

static bool name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > DAEMON_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
		      c == '_' || c == '.'))
			return false;
	}
	return true;
}

int daemon_parse_device_spec(const char *spec, char *name, size_t namelen, struct isolde_blk_config *cfg,
			     struct daemon_error *err)
{
	const char *comma = strchr(spec, ',');
	size_t n = comma ? (size_t)(comma - spec) : strlen(spec);
	char msg[400];

	if (n == 0 || n >= namelen || n > DAEMON_NAME_MAX) {
		set_error(err, "name", "a device spec starts with its name (1 to %d of A-Z a-z 0-9 . _ -), "
			  "then ,image=PATH and options", DAEMON_NAME_MAX);
		return -1;
	}
	memcpy(name, spec, n);
	name[n] = '\0';
	if (!name_ok(name) || strchr(name, '=')) {
		set_error(err, "name", "'%s' is not a device name (1 to %d of A-Z a-z 0-9 . _ -)", name,
			  DAEMON_NAME_MAX);
		return -1;
	}
	isolde_blk_config_default(cfg);
	cfg->queue_depth = 64; /* serve's default: deeper than a library user's */
	if (!comma) {
		set_error(err, "image", "device %s: no image (NAME,image=PATH)", name);
		return -1;
	}
	if (isolde_blk_config_parse(cfg, comma + 1, msg, sizeof msg) != 0) {
		/* "field 'qd': ..." names the field; keep it for the reply. */
		static char field[32];
		const char *q = strstr(msg, "field '");
		field[0] = '\0';
		if (q) {
			q += 7;
			size_t k = strcspn(q, "'");
			if (k < sizeof field) {
				memcpy(field, q, k);
				field[k] = '\0';
			}
		} else if (strstr(msg, "no image")) {
			snprintf(field, sizeof field, "image");
		}
		set_error(err, field[0] ? field : NULL, "device %s: %s", name, msg);
		isolde_blk_config_free(cfg);
		return -1;
	}
	return 0;
}

/* Register rec (name and cfg set) and start its thread; rec is consumed. */
static void device_start(struct isolde_daemon *d, struct device_rec *rec, daemon_reply_fn reply, void *ctx)
{
	char loop_err[200];

	if (find_device(d, rec->name) || d->ndevices == DAEMON_MAX_DEVICES) {
		if (d->ndevices == DAEMON_MAX_DEVICES)
			reply_error(reply, ctx, NULL, "device %s: there are %d devices, the most one server runs",
				    rec->name, DAEMON_MAX_DEVICES);
		else
			reply_error(reply, ctx, "name", "there is a device %s already", rec->name);
		goto fail;
	}
	rec->d = d;
	rec->add_reply = reply;
	rec->add_ctx = ctx;
	if (!(rec->loop = loop_create(loop_err, sizeof loop_err))) {
		reply_error(reply, ctx, NULL, "device %s: %s", rec->name, loop_err);
		goto fail;
	}
	pthread_mutex_lock(&d->lock);
	d->devices[d->ndevices++] = rec;
	pthread_mutex_unlock(&d->lock);
	int r = pthread_create(&rec->thread, NULL, device_thread, rec);
	if (r != 0) {
		registry_remove(d, rec);
		reply_error(reply, ctx, NULL, "device %s: cannot start its thread: %s", rec->name, strerror(r));
		free_rec(rec);
	}
	return;
fail:
	free_rec(rec);
}

static struct device_rec *new_rec(struct isolde_daemon *d, daemon_reply_fn reply, void *ctx)
{
	struct device_rec *rec;

	if (d->stopping) {
		reply_error(reply, ctx, NULL, "the server is stopping");
		return NULL;
	}
	if (!(rec = calloc(1, sizeof *rec))) {
		reply_error(reply, ctx, NULL, "out of memory");
		return NULL;
	}
	server_snapshot_store_init(&rec->store);
	return rec;
}

void daemon_device_add(struct isolde_daemon *d, const char *spec, daemon_reply_fn reply, void *ctx)
{
	struct daemon_error e = { 0 };
	struct device_rec *rec = new_rec(d, reply, ctx);

	if (!rec)
		return;
	if (daemon_parse_device_spec(spec, rec->name, sizeof rec->name, &rec->cfg, &e) != 0) {
		if (reply)
			reply(ctx, false, NULL, &e);
		free_rec(rec);
		return;
	}
	snprintf(rec->spec, sizeof rec->spec, "%s", spec);
	device_start(d, rec, reply, ctx);
}

void daemon_device_add_config(struct isolde_daemon *d, const char *name, const struct isolde_blk_config *cfg,
			      daemon_reply_fn reply, void *ctx)
{
	struct device_rec *rec;

	if (!name_ok(name)) {
		reply_error(reply, ctx, "name", "'%s' is not a device name (1 to %d of A-Z a-z 0-9 . _ -)", name,
			    DAEMON_NAME_MAX);
		return;
	}
	if (!(rec = new_rec(d, reply, ctx)))
		return;
	snprintf(rec->name, sizeof rec->name, "%s", name);
	rec->cfg = *cfg;
	rec->cfg.owned = NULL;
	const char *strings[3] = { cfg->image, cfg->driver, cfg->policy };
	for (unsigned i = 0; i < 3; i++) {
		if (strings[i] && !(rec->own_strings[i] = strdup(strings[i]))) {
			reply_error(reply, ctx, NULL, "out of memory");
			free_rec(rec);
			return;
		}
	}
	rec->cfg.image = rec->own_strings[0];
	rec->cfg.driver = rec->own_strings[1];
	rec->cfg.policy = rec->own_strings[2];
	snprintf(rec->spec, sizeof rec->spec, "%s,image=%s", name, cfg->image ? cfg->image : "");
	device_start(d, rec, reply, ctx);
}

void daemon_device_del(struct isolde_daemon *d, const char *name, unsigned timeout_ms,
		       daemon_reply_fn reply, void *ctx)
{
	struct device_rec *rec = find_device(d, name);

	if (!rec) {
		reply_error(reply, ctx, "name", "there is no device %s", name);
		return;
	}
	if (rec->del_reply) {
		reply_error(reply, ctx, "name", "device %s is being removed already", name);
		return;
	}
	rec->del_reply = reply;
	rec->del_ctx = ctx;
	post_stop(rec, timeout_ms);
}

/* ---- exports ---- */

struct export_cmd {
	struct device_rec *rec;
	char spec[512];
	unsigned id;
	bool ok;
	char error[512];
	daemon_reply_fn reply;
	void *ctx;
};

static void export_added(void *ctx)
{
	struct export_cmd *c = ctx;
	struct isolde_daemon *d = c->rec->d;

	if (!c->ok) {
		reply_error(c->reply, c->ctx, "spec", "%s", c->error);
	} else {
		char ret[64], extra[700];
		char *spec = NULL;
		size_t len;
		FILE *f = open_memstream(&spec, &len);
		d->exports[d->nexports++] = (struct export_rec){ c->id, c->rec };
		snprintf(ret, sizeof ret, "{\"id\": %u}", c->id);
		if (c->reply)
			c->reply(c->ctx, true, ret, NULL);
		if (f) {
			json_write_string(f, c->spec);
			fclose(f);
			snprintf(extra, sizeof extra, "\"id\": %u, \"spec\": %s", c->id, spec);
			emit_simple(d, "export-added", c->rec->name, extra);
			free(spec);
		}
	}
	free(c);
}

static void export_add_task(void *ctx)
{
	struct export_cmd *c = ctx;

	c->ok = server_add_export(c->rec->srv, c->spec, c->id, c->error, sizeof c->error) == 0;
	loop_post(c->rec->d->loop, export_added, c);
}

/* "KIND:ADDRESS[,device=NAME][,OPTIONS]": the device named, and the spec
 * without it (the export itself takes no device= option). */
static int split_export_spec(const char *spec, char *device, size_t devlen, char *rest, size_t restlen)
{
	const char *p = spec;
	size_t n = 0;

	device[0] = '\0';
	rest[0] = '\0';
	/* Every other piece, empty ones too, goes on as it was: the export
	 * judges its own options. */
	for (;;) {
		size_t k = strcspn(p, ",");
		if (p != spec && k > 7 && strncmp(p, "device=", 7) == 0) {
			if (device[0] || k - 7 >= devlen)
				return -1;
			memcpy(device, p + 7, k - 7);
			device[k - 7] = '\0';
		} else {
			if (n + k + 2 > restlen)
				return -1;
			if (p != spec)
				rest[n++] = ',';
			memcpy(rest + n, p, k);
			n += k;
			rest[n] = '\0';
		}
		if (p[k] != ',')
			break;
		p += k + 1;
	}
	return 0;
}

void daemon_export_add(struct isolde_daemon *d, const char *spec, daemon_reply_fn reply, void *ctx)
{
	char device[DAEMON_NAME_MAX + 2];
	struct export_cmd *c = calloc(1, sizeof *c);
	struct device_rec *rec = NULL;

	if (!c) {
		reply_error(reply, ctx, NULL, "out of memory");
		return;
	}
	if (split_export_spec(spec, device, sizeof device, c->spec, sizeof c->spec) != 0) {
		free(c);
		reply_error(reply, ctx, "spec", "export '%s': too long, or device= given twice", spec);
		return;
	}
	if (device[0])
		rec = find_device(d, device);
	else if (d->ndevices == 1)
		rec = d->devices[0];
	if (!rec || rec->state != REC_SERVING) {
		free(c);
		if (!device[0])
			reply_error(reply, ctx, "device", "export '%s': say which device (,device=NAME): there "
				    "are %u", spec, d->ndevices);
		else
			reply_error(reply, ctx, "device", "export '%s': there is no device %s%s", spec, device,
				    rec ? " serving yet" : "");
		return;
	}
	c->rec = rec;
	c->id = ++d->next_export_id;
	c->reply = reply;
	c->ctx = ctx;
	loop_post(rec->loop, export_add_task, c);
}

static void export_removed(void *ctx)
{
	struct export_cmd *c = ctx;
	struct isolde_daemon *d = c->rec->d;
	char extra[32];

	if (!c->ok) {
		reply_error(c->reply, c->ctx, "id", "export %u is being removed already", c->id);
		free(c);
		return;
	}
	for (unsigned i = 0; i < d->nexports; i++) {
		if (d->exports[i].id == c->id) {
			d->exports[i] = d->exports[--d->nexports];
			break;
		}
	}
	if (c->reply)
		c->reply(c->ctx, true, NULL, NULL);
	snprintf(extra, sizeof extra, "\"id\": %u", c->id);
	emit_simple(d, "export-removed", c->rec->name, extra);
	free(c);
}

static void export_gone(void *ctx, bool found)
{
	struct export_cmd *c = ctx;

	c->ok = found;
	loop_post(c->rec->d->loop, export_removed, c);
}

static void export_del_task(void *ctx)
{
	struct export_cmd *c = ctx;

	server_remove_export(c->rec->srv, c->id, export_gone, c);
}

void daemon_export_del(struct isolde_daemon *d, unsigned id, daemon_reply_fn reply, void *ctx)
{
	for (unsigned i = 0; i < d->nexports; i++) {
		struct export_rec *x = &d->exports[i];
		if (x->id != id)
			continue;
		if (x->rec->state != REC_SERVING)
			break;
		struct export_cmd *c = calloc(1, sizeof *c);
		if (!c) {
			reply_error(reply, ctx, NULL, "out of memory");
			return;
		}
		c->rec = x->rec;
		c->id = id;
		c->reply = reply;
		c->ctx = ctx;
		loop_post(x->rec->loop, export_del_task, c);
		return;
	}
	reply_error(reply, ctx, "id", "there is no export %u", id);
}

/* ---- queries ---- */

static void render_devices(const struct daemon_snapshots *s, FILE *f)
{
	bool first = true;

	fputs("[", f);
	for (unsigned i = 0; i < s->n; i++) {
		if (!s->devices[i].status_json)
			continue;
		fprintf(f, "%s%s", first ? "" : ", ", s->devices[i].status_json);
		first = false;
	}
	fputs("]", f);
}

static void render_exports(const struct daemon_snapshots *s, FILE *f)
{
	bool first = true;

	fputs("[", f);
	for (unsigned i = 0; i < s->n; i++) {
		for (unsigned k = 0; k < s->devices[i].nexports; k++) {
			const struct server_export_snapshot *x = &s->devices[i].exports[k];
			fprintf(f, "%s{\"id\": %u, \"device\": ", first ? "" : ", ", x->id);
			json_write_string(f, s->devices[i].name);
			fputs(", \"kind\": ", f);
			json_write_string(f, x->kind);
			fputs(", \"spec\": ", f);
			json_write_string(f, x->spec);
			fprintf(f, ", \"connections\": %u, \"inflight\": %u, \"export\": %s}", x->connections,
				x->inflight, x->json ? x->json : "null");
			first = false;
		}
	}
	fputs("]", f);
}

static void query_finish(struct isolde_daemon *d, struct query *q)
{
	struct daemon_snapshots *s = malloc(sizeof *s);
	char *text = NULL;
	size_t len = 0;
	FILE *f = s ? open_memstream(&text, &len) : NULL;

	if (q->timer_fd >= 0) {
		loop_unwatch(d->loop, q->timer_fd);
		close(q->timer_fd);
		q->timer_fd = -1;
	}
	q->active = false;
	if (!f) {
		free(s);
		reply_error(q->reply, q->ctx, NULL, "out of memory");
		return;
	}
	daemon_snapshots(d, s);
	if (q->exports)
		render_exports(s, f);
	else
		render_devices(s, f);
	daemon_snapshots_free(s);
	free(s);
	fclose(f);
	if (q->reply)
		q->reply(q->ctx, true, text, NULL);
	free(text);
}

static void query_timer(void *ctx, uint32_t events)
{
	struct query *q = ctx;

	(void)events;
	query_finish(q->d, q);
}

static void publish_answered(void *ctx)
{
	struct device_rec *rec = ctx;
	struct isolde_daemon *d = rec->d;

	for (unsigned i = 0; i < MAX_QUERIES; i++) {
		struct query *q = &d->queries[i];
		if (!q->active)
			continue;
		for (unsigned k = 0; k < q->nwaits; k++) {
			if (q->waits_for[k] == rec) {
				q->waits_for[k] = NULL;
				if (--q->waiting == 0)
					query_finish(d, q);
				break;
			}
		}
	}
}

static void publish_task(void *ctx)
{
	struct device_rec *rec = ctx;

	if (rec->srv)
		server_publish(rec->srv);
	loop_post(rec->d->loop, publish_answered, rec);
}

/* A device that ends stops being waited for. */
static void query_forget(struct isolde_daemon *d, struct device_rec *rec)
{
	publish_answered(rec);
	(void)d;
}

static void query_start(struct isolde_daemon *d, bool exports, daemon_reply_fn reply, void *ctx)
{
	struct query *q = NULL;

	for (unsigned i = 0; i < MAX_QUERIES && !q; i++)
		if (!d->queries[i].active)
			q = &d->queries[i];
	if (!q) {
		reply_error(reply, ctx, NULL, "too many queries at once; try again");
		return;
	}
	memset(q, 0, sizeof *q);
	q->d = d;
	q->active = true;
	q->exports = exports;
	q->reply = reply;
	q->ctx = ctx;
	q->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	struct itimerspec its = { .it_value = { 0, DAEMON_QUERY_WAIT_MS * 1000000L } };
	if (q->timer_fd < 0 || timerfd_settime(q->timer_fd, 0, &its, NULL) != 0 ||
	    loop_watch(d->loop, q->timer_fd, EPOLLIN, query_timer, q) != 0) {
		if (q->timer_fd >= 0)
			close(q->timer_fd);
		q->timer_fd = -1;
		query_finish(d, q); /* what was published last */
		return;
	}
	for (unsigned i = 0; i < d->ndevices; i++) {
		struct device_rec *rec = d->devices[i];
		if (rec->state == REC_OPENING)
			continue;
		q->waits_for[q->nwaits++] = rec;
		q->waiting++;
		loop_post(rec->loop, publish_task, rec);
	}
	if (q->waiting == 0)
		query_finish(d, q);
}

void daemon_query_devices(struct isolde_daemon *d, daemon_reply_fn reply, void *ctx)
{
	query_start(d, false, reply, ctx);
}

void daemon_query_exports(struct isolde_daemon *d, daemon_reply_fn reply, void *ctx)
{
	query_start(d, true, reply, ctx);
}

/* ---- the daemon ---- */

static void signal_readable(void *ctx, uint32_t events)
{
	struct isolde_daemon *d = ctx;
	struct signalfd_siginfo si;

	(void)events;
	while (read(d->signal_fd, &si, sizeof si) == sizeof si)
		;
	if (!d->stopping)
		fprintf(stderr, "isolde serve: shutting down: completing requests in flight\n");
	daemon_stop(d);
}

struct isolde_daemon *daemon_create(char *err, size_t errlen)
{
	struct isolde_daemon *d = calloc(1, sizeof *d);
	sigset_t mask;

	if (!d) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&d->lock, NULL);
	d->signal_fd = -1;
	if (!(d->loop = loop_create(err, errlen))) {
		daemon_destroy(d);
		return NULL;
	}
	/* Signals are the main thread's: blocked before any device thread
	 * exists, so every thread inherits the mask. SIGPIPE from a client
	 * that went away becomes EPIPE on the write. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0 ||
	    (d->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0 ||
	    loop_watch(d->loop, d->signal_fd, EPOLLIN, signal_readable, d) != 0) {
		snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
		daemon_destroy(d);
		return NULL;
	}
	signal(SIGPIPE, SIG_IGN);
	for (unsigned i = 0; i < MAX_QUERIES; i++)
		d->queries[i].timer_fd = -1;
	return d;
}

struct isolde_loop *daemon_loop(struct isolde_daemon *d)
{
	return d->loop;
}

void daemon_stop(struct isolde_daemon *d)
{
	d->stopping = true;
	for (unsigned i = 0; i < d->ndevices; i++)
		post_stop(d->devices[i], STOP_DRAIN_MS);
}

int daemon_run(struct isolde_daemon *d)
{
	while (!(d->stopping && d->ndevices == 0)) {
		if (loop_once(d->loop, -1) < 0) {
			fprintf(stderr, "isolde serve: epoll_wait: %s\n", strerror(errno));
			break;
		}
	}
	return d->any_failed ? 1 : 0;
}

void daemon_destroy(struct isolde_daemon *d)
{
	if (!d)
		return;
	/* Devices still there (an early exit): stop and wait for them. */
	if (d->ndevices) {
		daemon_stop(d);
		while (d->ndevices && loop_once(d->loop, 1000) >= 0)
			;
	}
	for (unsigned i = 0; i < MAX_QUERIES; i++)
		if (d->queries[i].timer_fd >= 0)
			close(d->queries[i].timer_fd);
	if (d->signal_fd >= 0)
		close(d->signal_fd);
	loop_destroy(d->loop);
	pthread_mutex_destroy(&d->lock);
	free(d);
}
