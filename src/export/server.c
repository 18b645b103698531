// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "json.h"

#define HYBRID_SPIN_MAX_NS 50000u /* the longest the loop spins for answers before sleeping */
#define HYBRID_SPIN_MIN_NS 2000u  /* below this, it stops spinning ... */
#define HYBRID_PROBE_EVERY 32u    /* ... and tries again once in this many sleeps */
#define PUBLISH_EVERY_NS (100 * 1000000ull)
#define STATUS_WAKE_MS 100        /* while I/O is pending, for hang checks */

const uint64_t server_latency_bounds_ns[SERVER_LATENCY_BUCKETS] = {
	10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
	50000000, 250000000, 1000000000, 5000000000,
};
const uint64_t server_recovery_bounds_us[SERVER_RECOVERY_BUCKETS] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 5000000, 30000000,
};

static const struct export_ops *const export_kinds[] = { &nbd_export_ops, &fuse_export_ops,
							  &vhost_blk_export_ops };

struct running_export {
	const struct export_ops *ops;
	void *state;
	unsigned id;
	char spec[256];
	bool removing;
	void (*removed)(void *ctx, bool found);
	void *removed_ctx;
};

struct isolde_server {
	struct isolde_loop *loop;
	struct isolde_blk *dev;
	char name[64];
	int call_fd, watch_fd;
	struct running_export exports[SERVER_MAX_EXPORTS];
	unsigned nexports;
	struct server_io *backlog_head, *backlog_tail;
	unsigned backlog_len;
	bool stopping;
	unsigned drain_ms;
	unsigned inflight_pieces;
	struct server_stats stats;
	server_event_fn on_event;
	void *on_event_ctx;
	uint64_t published_ns;
	uint64_t active_ns;         /* the loop last had something to do */
	/* Hybrid mode: how long the loop spins for answers before it sleeps.
	 * It halves when a spin found nothing and doubles when one did, so
	 * on a machine with more runnable tasks than cores - where spinning
	 * takes the core the driver needs - it falls to nothing. */
	uint32_t spin_window_ns;
	unsigned spin_probe;
	struct server_snapshot_store own_store; /* when nobody gave one */
	struct server_snapshot_store *store;
};

static void noop_cb(void *ctx, uint32_t events)
{
	(void)ctx;
	(void)events;
}

void server_log(const struct isolde_server *s, const char *fmt, ...)
{
	va_list ap;

	fputs("isolde serve: ", stderr);
	if (s && s->name[0] && strcmp(s->name, "disk") != 0)
		fprintf(stderr, "%s: ", s->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int server_watch(struct isolde_server *s, int fd, uint32_t events, server_fd_cb cb, void *ctx)
{
	return loop_watch(s->loop, fd, events, cb, ctx);
}

int server_modify(struct isolde_server *s, int fd, uint32_t events)
{
	return loop_modify(s->loop, fd, events);
}

void server_unwatch(struct isolde_server *s, int fd)
{
	loop_unwatch(s->loop, fd);
}

int server_add_poller(struct isolde_server *s, server_poll_cb cb, void *ctx)
{
	return loop_add_poller(s->loop, cb, ctx);
}

void server_remove_poller(struct isolde_server *s, server_poll_cb cb, void *ctx)
{
	loop_remove_poller(s->loop, cb, ctx);
}

uint64_t server_device_size(const struct isolde_server *s) { return isolde_blk_size(s->dev); }
bool server_readonly(const struct isolde_server *s) { return isolde_blk_readonly(s->dev); }
uint32_t server_alignment(const struct isolde_server *s) { return isolde_blk_alignment(s->dev); }
bool server_stopping(const struct isolde_server *s) { return s->stopping; }
struct isolde_blk *server_device(const struct isolde_server *s) { return s->dev; }
struct isolde_loop *server_loop(const struct isolde_server *s) { return s->loop; }
unsigned server_backlog(const struct isolde_server *s) { return s->backlog_len; }
const char *server_name(const struct isolde_server *s) { return s->name; }

/* ---- requests ---- */

/* One ring request: a piece of an export's request. */
struct piece {
	struct isolde_blk_io io;
	struct server_io *parent;
};

static void count_done(struct isolde_server *s, const struct server_io *sio)
{
	struct server_stats *st = &s->stats;
	uint64_t ns = isolde_now_ns() - sio->submitted_ns;

	switch (sio->op) {
	case ISOLDE_BLK_OP_READ:
		st->reads++;
		st->read_bytes += sio->result ? 0 : sio->len;
		break;
	case ISOLDE_BLK_OP_WRITE:
		st->writes++;
		st->write_bytes += sio->result ? 0 : sio->len;
		break;
	case ISOLDE_BLK_OP_FLUSH:
		st->flushes++;
		break;
	default:
		st->others++;
		break;
	}
	if (sio->result)
		st->errors++;
	st->latency_count++;
	st->latency_sum_ns += ns;
	for (unsigned i = 0; i < SERVER_LATENCY_BUCKETS; i++)
		if (ns <= server_latency_bounds_ns[i])
			st->latency_buckets[i]++;
}

static void finish(struct isolde_server *s, struct server_io *sio)
{
	count_done(s, sio);
	sio->done(sio);
}

static void parent_piece_done(struct isolde_server *s, struct server_io *sio, int result)
{
	if (result && !sio->result)
		sio->result = result;
	if (--sio->pieces_left == 0)
		finish(s, sio);
}

static void backlog_push(struct isolde_server *s, struct server_io *sio)
{
	sio->next = NULL;
	if (s->backlog_tail)
		s->backlog_tail->next = sio;
	else
		s->backlog_head = sio;
	s->backlog_tail = sio;
	s->backlog_len++;
}

static uint64_t pieces_of(const struct server_io *sio, uint64_t piece_max)
{
	if (piece_max == 0 || sio->len == 0)
		return 1;
	return (sio->len + piece_max - 1) / piece_max;
}

/*
 * Put as much of the backlog on the ring as fits, in order: a request's
 * pieces go on before any piece of the next request, and a request larger
 * than the free room waits at the head until completions make room.
 */
static void submit_backlog(struct isolde_server *s)
{
	while (s->backlog_head) {
		struct server_io *sio = s->backlog_head;
		bool data = sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE;
		uint64_t piece_max = isolde_blk_piece_max(s->dev, sio->op);
		uint64_t npieces = pieces_of(sio, piece_max);

		while (sio->pieces_next < npieces) {
			if (isolde_blk_inflight(s->dev) >= isolde_blk_queue_depth(s->dev))
				return; /* wait for room */
			uint64_t off = (uint64_t)sio->pieces_next * piece_max;
			struct piece *p = calloc(1, sizeof *p);
			if (!p)
				return; /* try again after the next completion */
			p->parent = sio;
			p->io.op = sio->op;
			p->io.flags = sio->flags;
			p->io.offset = sio->offset + off;
			p->io.len = piece_max == 0 ? 0
				    : (uint32_t)(sio->len - off < piece_max ? sio->len - off : piece_max);
			p->io.buf = data ? (unsigned char *)sio->buf + off : NULL;
			p->io.user_data = p;
			int r = isolde_blk_submit(s->dev, &p->io);
			if (r == -EAGAIN) {
				free(p);
				return;
			}
			sio->pieces_next++;
			if (r) {
				/* Not parent_piece_done: its done callback may free sio
				 * (or submit) while sio still heads the backlog. */
				free(p);
				if (!sio->result)
					sio->result = r;
				sio->pieces_left--;
			} else {
				s->inflight_pieces++;
			}
		}
		s->backlog_head = sio->next;
		if (!s->backlog_head)
			s->backlog_tail = NULL;
		s->backlog_len--;
		/* Every piece failed at submission, or the rest already completed. */
		if (sio->pieces_left == 0)
			finish(s, sio);
	}
}

void server_submit(struct isolde_server *s, struct server_io *sio)
{
	sio->submitted_ns = isolde_now_ns();
	/* Data must be buffered by the export, so its size is bounded;
	 * DISCARD and WRITE_ZEROES carry none and may cover up to 4 GiB. */
	if ((sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE) && sio->len > SERVER_MAX_REQUEST) {
		sio->result = -EINVAL;
		finish(s, sio);
		return;
	}
	/* A range beyond the device is refused here, before it is split
	 * into more pieces than there could be requests of it. */
	if (sio->len > isolde_blk_size(s->dev) || sio->offset > isolde_blk_size(s->dev) - sio->len) {
		sio->result = -EINVAL;
		finish(s, sio);
		return;
	}
	sio->result = 0;
	sio->pieces_next = 0;
	sio->pieces_left = pieces_of(sio, isolde_blk_piece_max(s->dev, sio->op));
	backlog_push(s, sio);
	submit_backlog(s);
}

static unsigned collect(struct isolde_server *s)
{
	struct isolde_blk_io *done[128];
	unsigned total = 0;
	int n;

	do {
		n = isolde_blk_poll(s->dev, done, 128);
		for (int i = 0; i < n; i++) {
			struct piece *p = done[i]->user_data;
			struct server_io *sio = p->parent;
			int result = p->io.result;
			free(p);
			s->inflight_pieces--;
			parent_piece_done(s, sio, result);
		}
		total += n > 0 ? (unsigned)n : 0;
		submit_backlog(s);
	} while (n == 128);
	isolde_blk_push(s->dev);
	return total;
}

/* ---- events ---- */

static void count_recovery(struct isolde_server *s, uint64_t us)
{
	struct server_stats *st = &s->stats;

	st->recovery_count++;
	st->recovery_sum_us += us;
	for (unsigned i = 0; i < SERVER_RECOVERY_BUCKETS; i++)
		if (us <= server_recovery_bounds_us[i])
			st->recovery_buckets[i]++;
}

static void device_event(void *ctx, const struct isolde_blk_event *ev)
{
	struct isolde_server *s = ctx;

	if (ev->type == ISOLDE_BLK_EVENT_RECOVERED)
		count_recovery(s, ev->recovery_us);
	if (s->on_event)
		s->on_event(s->on_event_ctx, s, ev);
}

void server_set_event_handler(struct isolde_server *s, server_event_fn fn, void *ctx)
{
	s->on_event = fn;
	s->on_event_ctx = ctx;
}

/* ---- lifecycle ---- */

struct isolde_server *server_create(struct isolde_loop *loop, struct isolde_blk *dev, const char *name,
				    struct server_snapshot_store *store, char *err, size_t errlen)
{
	struct isolde_server *s = calloc(1, sizeof *s);

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->loop = loop;
	s->spin_window_ns = HYBRID_SPIN_MAX_NS;
	s->dev = dev;
	snprintf(s->name, sizeof s->name, "%s", name ? name : "disk");
	server_snapshot_store_init(&s->own_store);
	s->store = store ? store : &s->own_store;
	isolde_blk_event_fds(dev, &s->call_fd, &s->watch_fd);
	if (loop_watch(loop, s->call_fd, EPOLLIN, noop_cb, NULL) ||
	    loop_watch(loop, s->watch_fd, EPOLLIN, noop_cb, NULL)) {
		snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
		server_destroy(s);
		return NULL;
	}
	isolde_blk_set_event_handler(dev, device_event, s);
	server_publish(s);
	return s;
}

static struct running_export *find_export(struct isolde_server *s, unsigned id)
{
	for (unsigned i = 0; i < s->nexports; i++)
		if (s->exports[i].id == id)
			return &s->exports[i];
	return NULL;
}

bool server_has_export(const struct isolde_server *s, unsigned id)
{
	return find_export((struct isolde_server *)s, id) != NULL;
}

int server_add_export(struct isolde_server *s, const char *spec, unsigned id, char *err, size_t errlen)
{
	const char *colon = strchr(spec, ':');

	if (s->nexports == SERVER_MAX_EXPORTS) {
		snprintf(err, errlen, "at most %d exports per device", SERVER_MAX_EXPORTS);
		return -1;
	}
	for (size_t i = 0; colon && i < sizeof export_kinds / sizeof export_kinds[0]; i++) {
		const struct export_ops *ops = export_kinds[i];
		if (strlen(ops->scheme) == (size_t)(colon - spec) &&
		    strncmp(spec, ops->scheme, (size_t)(colon - spec)) == 0) {
			struct running_export *e = &s->exports[s->nexports];
			memset(e, 0, sizeof *e);
			if (ops->start(s, colon + 1, &e->state, err, errlen))
				return -1;
			e->ops = ops;
			e->id = id;
			snprintf(e->spec, sizeof e->spec, "%s", spec);
			s->nexports++;
			server_publish(s);
			return 0;
		}
	}
	snprintf(err, errlen, "--export '%s': unknown kind (nbd:unix:PATH, nbd:tcp:HOST:PORT, fuse:PATH, "
		 "vhost-user-blk:PATH)",
		 spec);
	return -1;
}

void server_remove_export(struct isolde_server *s, unsigned id, void (*done)(void *ctx, bool found),
			  void *ctx)
{
	struct running_export *e = find_export(s, id);

	if (!e || e->removing) {
		done(ctx, e != NULL);
		return;
	}
	e->removing = true;
	e->removed = done;
	e->removed_ctx = ctx;
	e->ops->quiesce(e->state);
}

/* Exports being removed go once nothing of theirs is in flight. */
static void finish_removals(struct isolde_server *s)
{
	for (unsigned i = 0; i < s->nexports;) {
		struct running_export *e = &s->exports[i];
		if (!e->removing || (e->ops->inflight && e->ops->inflight(e->state) > 0)) {
			i++;
			continue;
		}
		void (*done)(void *, bool) = e->removed;
		void *ctx = e->removed_ctx;
		e->ops->stop(e->state);
		memmove(e, e + 1, (s->nexports - i - 1) * sizeof *e);
		s->nexports--;
		server_publish(s);
		done(ctx, true);
	}
}

void server_stop(struct isolde_server *s, unsigned drain_ms)
{
	if (s->stopping)
		return;
	s->stopping = true;
	s->drain_ms = drain_ms;
	for (unsigned i = 0; i < s->nexports; i++)
		if (!s->exports[i].removing)
			s->exports[i].ops->quiesce(s->exports[i].state);
}

static bool busy(const struct isolde_server *s)
{
	return s->inflight_pieces > 0 || s->backlog_head != NULL;
}

/* How long the loop may sleep: not at all while the ring must be watched,
 * and never past the device's recovery deadline. */
static int sleep_ms(struct isolde_server *s, uint64_t *spin_since)
{
	int recovery = isolde_blk_timeout_ms(s->dev);
	int publish = STATUS_WAKE_MS;

	if (recovery >= 0) {
		*spin_since = 0;
		return recovery < publish ? recovery : publish;
	}
	if (!busy(s)) {
		*spin_since = 0;
		if (s->stopping)
			return 0;
		/* Idle: one more wake-up to publish what the last activity
		 * changed, then sleep until something happens. */
		if (s->active_ns < s->published_ns)
			return -1;
		uint64_t due = s->published_ns + PUBLISH_EVERY_NS, now = isolde_now_ns();
		return due <= now ? 0 : (int)((due - now + 999999) / 1000000);
	}
	if (isolde_blk_notify_mode(s->dev) == ISOLDE_NOTIFY_HYBRID) {
		uint64_t now = isolde_now_ns();
		if (*spin_since == 0) {
			if (s->spin_window_ns == 0 && ++s->spin_probe % HYBRID_PROBE_EVERY == 0)
				s->spin_window_ns = HYBRID_SPIN_MIN_NS;
			*spin_since = now;
		}
		if (now - *spin_since < s->spin_window_ns)
			return 0;
		/* The window passed without an answer: spinning did not pay. */
		s->spin_window_ns = s->spin_window_ns / 2 >= HYBRID_SPIN_MIN_NS ? s->spin_window_ns / 2 : 0;
	}
	if (!isolde_blk_prepare_sleep(s->dev))
		return 0;
	*spin_since = 0;
	return STATUS_WAKE_MS; /* wake for hang checks while I/O is pending */
}

/* Past the drain timeout, what is still in flight fails cleanly. */
static bool drained(struct isolde_server *s, uint64_t *deadline)
{
	if (!busy(s))
		return true;
	if (*deadline == 0)
		*deadline = isolde_now_ns() + (uint64_t)s->drain_ms * 1000000;
	else if (isolde_now_ns() > *deadline && !isolde_blk_failed(s->dev)) {
		server_log(s, "%u requests still in flight after %u ms: failing them with EIO",
			   isolde_blk_inflight(s->dev) + s->backlog_len, s->drain_ms);
		isolde_blk_abort(s->dev, "the device is being removed and its requests did not drain in time");
	}
	return false;
}

/* An answer came while the loop spun for it: a longer spin may pay too. */
static void spin_paid(struct isolde_server *s, uint64_t *spin_since)
{
	uint32_t grown = s->spin_window_ns ? s->spin_window_ns * 2 : HYBRID_SPIN_MIN_NS;

	s->spin_window_ns = grown < HYBRID_SPIN_MAX_NS ? grown : HYBRID_SPIN_MAX_NS;
	*spin_since = 0;
}

int server_run(struct isolde_server *s)
{
	uint64_t spin_since = 0, drain_deadline = 0;

	for (;;) {
		if (collect(s) && spin_since)
			spin_paid(s, &spin_since);
		finish_removals(s);
		if (s->stopping && drained(s, &drain_deadline))
			break;
		bool pollers_spin = loop_run_pollers(s->loop);
		if (collect(s) && spin_since)
			spin_paid(s, &spin_since);
		if (isolde_now_ns() - s->published_ns >= PUBLISH_EVERY_NS && s->active_ns >= s->published_ns)
			server_publish(s);
		int n = loop_once(s->loop, pollers_spin ? 0 : sleep_ms(s, &spin_since));
		if (n < 0) {
			server_log(s, "epoll_wait: %s", strerror(errno));
			break;
		}
		if (n > 0 || pollers_spin || busy(s))
			s->active_ns = isolde_now_ns();
	}
	for (unsigned i = 0; i < s->nexports; i++)
		s->exports[i].ops->stop(s->exports[i].state);
	s->nexports = 0;
	server_publish(s);
	return 0;
}

void server_destroy(struct isolde_server *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->nexports; i++)
		s->exports[i].ops->stop(s->exports[i].state);
	if (s->dev)
		isolde_blk_set_event_handler(s->dev, NULL, NULL);
	loop_unwatch(s->loop, s->call_fd);
	loop_unwatch(s->loop, s->watch_fd);
	server_snapshot_store_fini(&s->own_store);
	free(s);
}

/* ---- status and snapshots ---- */

void server_describe_exports(const struct isolde_server *s, FILE *f)
{
	fputs("[", f);
	for (unsigned i = 0; i < s->nexports; i++) {
		fputs(i ? ", " : "", f);
		s->exports[i].ops->describe(s->exports[i].state, f);
	}
	fputs("]", f);
}

void server_write_status(struct isolde_server *s, FILE *f)
{
	struct isolde_blk *dev = s->dev;
	const struct isolde_supervisor_stats *sup = isolde_blk_supervisor_stats(dev);
	struct isolde_blk_stats st;
	uint32_t p50, p99, max;

	isolde_blk_get_stats(dev, &st);
	isolde_supervisor_recovery_summary(sup, &p50, &p99, &max);
	fputs("{\"name\": ", f);
	json_write_string(f, s->name);
	fputs(", \"driver\": ", f);
	json_write_string(f, isolde_blk_driver_name(dev));
	fprintf(f, ", \"state\": \"%s\", \"pid\": %d, \"notify\": \"%s\", \"generation\": %u, "
		"\"size\": %llu, \"readonly\": %s, \"queue_depth\": %u, \"inflight\": %u, \"backlog\": %u, "
		"\"restarts\": %llu, \"restarts_by_reason\": {",
		isolde_blk_state(dev), (int)isolde_blk_driver_pid(dev),
		isolde_notify_mode_name(isolde_blk_notify_mode(dev)), isolde_blk_generation(dev),
		(unsigned long long)isolde_blk_size(dev), isolde_blk_readonly(dev) ? "true" : "false",
		isolde_blk_queue_depth(dev), isolde_blk_inflight(dev), s->backlog_len,
		(unsigned long long)sup->restarts);
	for (int i = 0; i < ISOLDE_FAIL_COUNT; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", isolde_failure_name((enum isolde_failure)i),
			(unsigned long long)sup->by_failure[i]);
	fprintf(f, "}, \"replayed\": %llu, \"denials\": %llu, \"recovery_us\": {\"count\": %u, \"p50\": %u, "
		"\"p99\": %u, \"max\": %u}, \"io\": {\"requests\": %llu, \"errors\": %llu, \"kicks\": %llu, "
		"\"calls\": %llu, \"bytes_copied\": %llu, \"protocol_violations\": %llu}, \"error\": ",
		(unsigned long long)sup->replayed, (unsigned long long)st.denials, sup->recovery_count, p50, p99,
		max, (unsigned long long)st.requests, (unsigned long long)st.errors,
		(unsigned long long)st.kicks, (unsigned long long)st.calls, (unsigned long long)st.bytes_copied,
		(unsigned long long)st.protocol_violations);
	if (isolde_blk_failed(dev))
		json_write_string(f, isolde_blk_error(dev));
	else
		fputs("null", f);
	fputs(", \"exports\": ", f);
	server_describe_exports(s, f);
	fputs("}", f);
}

static char *render(void (*fn)(void *, FILE *), void *arg)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return NULL;
	fn(arg, f);
	fclose(f);
	return text;
}

static void render_status(void *s, FILE *f)
{
	server_write_status(s, f);
}

void server_snapshot_free(struct server_snapshot *snap)
{
	free(snap->status_json);
	for (unsigned i = 0; i < snap->nexports; i++)
		free(snap->exports[i].json);
	memset(snap, 0, sizeof *snap);
}

void server_publish(struct isolde_server *s)
{
	struct server_snapshot next = { 0 };
	const struct isolde_supervisor_stats *sup = isolde_blk_supervisor_stats(s->dev);

	snprintf(next.name, sizeof next.name, "%s", s->name);
	next.status_json = render(render_status, s);
	isolde_blk_get_stats(s->dev, &next.blk);
	next.sup.restarts = sup->restarts;
	memcpy(next.sup.by_failure, sup->by_failure, sizeof next.sup.by_failure);
	next.sup.replayed = sup->replayed;
	next.state = isolde_blk_state(s->dev);
	next.generation = isolde_blk_generation(s->dev);
	next.inflight = isolde_blk_inflight(s->dev) + s->backlog_len;
	next.stats = s->stats;
	for (unsigned i = 0; i < s->nexports; i++) {
		struct running_export *e = &s->exports[i];
		struct server_export_snapshot *x = &next.exports[next.nexports++];
		x->id = e->id;
		snprintf(x->kind, sizeof x->kind, "%s", e->ops->scheme);
		snprintf(x->spec, sizeof x->spec, "%s", e->spec);
		x->connections = e->ops->connections ? e->ops->connections(e->state) : 0;
		x->inflight = e->ops->inflight ? e->ops->inflight(e->state) : 0;
		x->json = render((void (*)(void *, FILE *))e->ops->describe, e->state);
	}
	next.published_ns = s->published_ns = isolde_now_ns();
	pthread_mutex_lock(&s->store->lock);
	struct server_snapshot old = s->store->snap;
	s->store->snap = next;
	pthread_mutex_unlock(&s->store->lock);
	server_snapshot_free(&old);
}

void server_snapshot_store_init(struct server_snapshot_store *st)
{
	memset(st, 0, sizeof *st);
	pthread_mutex_init(&st->lock, NULL);
}

void server_snapshot_store_fini(struct server_snapshot_store *st)
{
	server_snapshot_free(&st->snap);
	pthread_mutex_destroy(&st->lock);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

void server_snapshot_store_copy(struct server_snapshot_store *st, struct server_snapshot *out)
{
	pthread_mutex_lock(&st->lock);
	*out = st->snap;
	out->status_json = dup_or_null(st->snap.status_json);
	for (unsigned i = 0; i < out->nexports; i++)
		out->exports[i].json = dup_or_null(st->snap.exports[i].json);
	pthread_mutex_unlock(&st->lock);
}
