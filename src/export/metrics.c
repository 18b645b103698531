// SPDX-License-Identifier: MIT
/*
 * isolde serve's metrics: the Prometheus text exposition format 0.0.4,
 * rendered from the daemon's snapshots, and an HTTP listener for it.
 *
 * Rendering: every family is a row of one table (name, type, help, and
 * the function that writes its samples). A family's samples are written
 * together, all devices (or all exports) in turn, under one HELP and one
 * TYPE line, as the format requires. Label values are escaped (backslash,
 * double quote, newline) and made valid UTF-8 (a byte that does not start
 * a well-formed sequence becomes U+FFFD): export specs are whatever a
 * client gave, and the format is UTF-8 text.
 *
 * The listener is libmicrohttpd with its own polling thread (epoll), on a
 * socket bound here (so that address errors say what is wrong). A hostile
 * client gets little: at most METRICS_MAX_CONNECTIONS connections (the
 * next one is accepted and closed at once), request headers within
 * METRICS_MEMORY_LIMIT (431 past it), no request body read (a request
 * that has one is answered before it, and the connection closed), and
 * METRICS_TIMEOUT_S seconds per connection: libmicrohttpd closes one idle
 * that long, and a reaper thread here cuts one that has not completed a
 * request within that long of connecting (or of its last request), however
 * slowly it trickles bytes - libmicrohttpd's own timeout counts idleness
 * only. Answering a request allocates one rendered text, which the
 * response owns; the snapshots it is rendered from are a buffer allocated
 * once (one polling thread: requests are answered one at a time).
 */
#define _GNU_SOURCE
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "isolde/notify.h"
#include "ratelimit.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_PATH "/metrics"
#define METRICS_MAX_CONNECTIONS 16   /* the next client is refused */
#define METRICS_MHD_LIMIT (2 * METRICS_MAX_CONNECTIONS) /* libmicrohttpd's own, a backstop */
#define METRICS_TIMEOUT_S 10         /* idle, and connect (or last request) to request done */
#define METRICS_MEMORY_LIMIT (16u << 10) /* per connection: bounds the request header */
#define METRICS_BACKLOG 64
#define METRICS_LOG_LINES 10         /* log lines per METRICS_LOG_WINDOW_S, then suppressed */
#define METRICS_LOG_WINDOW_S 60

/* ------------------------------------------------------------------ */
/* Rendering                                                          */
/* ------------------------------------------------------------------ */

enum metric_type { COUNTER, GAUGE, HISTOGRAM };
static const char *const type_names[] = { [COUNTER] = "counter", [GAUGE] = "gauge", [HISTOGRAM] = "histogram" };

enum metric_scope {
	PER_DAEMON,  /* one sample set, no device label */
	PER_DEVICE,  /* device="NAME" */
	PER_EXPORT,  /* device="NAME", export="ID", kind="KIND" */
};

/* What an emitter writes a family's samples for: one device, or one export. */
struct sample_ctx {
	FILE *f;
	const char *name;                        /* the family's */
	const struct daemon_snapshots *all;
	const struct server_snapshot *dev;       /* PER_DEVICE, PER_EXPORT */
	const struct server_export_snapshot *ex; /* PER_EXPORT */
	uint64_t now_ns;
};

typedef void emit_fn(const struct sample_ctx *c);

static emit_fn emit_devices, emit_up, emit_state, emit_generation, emit_inflight, emit_requests, emit_bytes,
	emit_errors, emit_latency, emit_restarts, emit_replayed, emit_recovery, emit_denials, emit_violations,
	emit_log_suppressed, emit_snapshot_age, emit_export_connections, emit_export_inflight, emit_export_info;

/* Every metric isolde serve exposes: docs/METRICS.md describes the same list. */
static const struct metric_family {
	const char *name;
	enum metric_type type;
	enum metric_scope scope;
	emit_fn *emit;
	const char *help;
} families[] = {
	{ "isolde_devices", GAUGE, PER_DAEMON, emit_devices, "Devices the daemon serves." },
	{ "isolde_device_up", GAUGE, PER_DEVICE, emit_up,
	  "1 while the device's driver is running, else 0 (restarting, or failed for good)." },
	{ "isolde_device_state", GAUGE, PER_DEVICE, emit_state,
	  "1 for the device's current recovery state, 0 for the others." },
	{ "isolde_device_generation", GAUGE, PER_DEVICE, emit_generation,
	  "The driver's generation: 1 for the first driver, +1 per restart." },
	{ "isolde_device_inflight", GAUGE, PER_DEVICE, emit_inflight,
	  "Requests submitted to the device and not completed (including those waiting for a ring slot)." },
	{ "isolde_device_requests_total", COUNTER, PER_DEVICE, emit_requests,
	  "Requests the device's exports made that completed, by operation." },
	{ "isolde_device_bytes_total", COUNTER, PER_DEVICE, emit_bytes,
	  "Bytes read and written by requests that completed successfully." },
	{ "isolde_device_errors_total", COUNTER, PER_DEVICE, emit_errors,
	  "Requests the device's exports made that completed with an error." },
	{ "isolde_device_request_duration_seconds", HISTOGRAM, PER_DEVICE, emit_latency,
	  "Time from an export's submission of a request to its completion." },
	{ "isolde_device_restarts_total", COUNTER, PER_DEVICE, emit_restarts,
	  "Driver failures that led to a restart (or to giving up), by failure class." },
	{ "isolde_device_replayed_total", COUNTER, PER_DEVICE, emit_replayed,
	  "Requests re-posted to a restarted driver." },
	{ "isolde_device_recovery_seconds", HISTOGRAM, PER_DEVICE, emit_recovery,
	  "Time from a driver failure's detection to the first completion of its successor." },
	{ "isolde_device_denials_total", COUNTER, PER_DEVICE, emit_denials,
	  "System calls the drivers' policy refused." },
	{ "isolde_device_protocol_violations_total", COUNTER, PER_DEVICE, emit_violations,
	  "Driver responses the front end rejected." },
	{ "isolde_device_log_suppressed_total", COUNTER, PER_DEVICE, emit_log_suppressed,
	  "Driver log lines and refusal reports dropped over the policy's log rate." },
	{ "isolde_device_snapshot_age_seconds", GAUGE, PER_DEVICE, emit_snapshot_age,
	  "Age of the snapshot these values come from (a device thread publishes one about every 0.1 s)." },
	{ "isolde_export_connections", GAUGE, PER_EXPORT, emit_export_connections,
	  "Clients connected to the export." },
	{ "isolde_export_inflight", GAUGE, PER_EXPORT, emit_export_inflight,
	  "Requests the export submitted that have not completed." },
	{ "isolde_export_info", GAUGE, PER_EXPORT, emit_export_info,
	  "Always 1; the export's spec as it was given." },
};

/* isolde_blk_state's values, for isolde_device_state. */
static const char *const device_states[] = { "running", "down", "backoff", "starting", "failed" };

/*
 * Length of the well-formed UTF-8 sequence at s (at most n bytes), or 0 if
 * none starts there (RFC 3629: no overlong forms, no surrogates, nothing
 * past U+10FFFF).
 */
static size_t utf8_sequence(const unsigned char *s, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		if (s[0] == 0xe0)
			lo = 0xa0;
		else if (s[0] == 0xed)
			hi = 0x9f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		if (s[0] == 0xf0)
			lo = 0x90;
		else if (s[0] == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/* A label value: at most max bytes of s (it need not end in NUL there),
 * escaped, as valid UTF-8. */
static void put_label_value(FILE *f, const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strnlen(s, max);

	while (n > 0) {
		size_t len = utf8_sequence(p, n);
		if (len == 0) {
			fputs("\xef\xbf\xbd", f); /* U+FFFD REPLACEMENT CHARACTER */
			len = 1;
		} else if (*p == '\\')
			fputs("\\\\", f);
		else if (*p == '"')
			fputs("\\\"", f);
		else if (*p == '\n')
			fputs("\\n", f);
		else
			fwrite(p, 1, len, f);
		p += len;
		n -= len;
	}
}

/* HELP text escapes backslash and newline only. */
static void put_help(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\\\", f);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

struct label {
	const char *key;
	const char *value;
	size_t max; /* 0: NUL-terminated */
};

/* NAME[SUFFIX]{scope labels,extra labels} VALUE */
static void sample(const struct sample_ctx *c, const char *suffix, const struct label *extra, unsigned nextra,
		   const char *value)
{
	struct label l[8];
	unsigned n = 0;
	char id[16];

	if (c->dev)
		l[n++] = (struct label){ "device", c->dev->name, sizeof c->dev->name };
	if (c->ex) {
		snprintf(id, sizeof id, "%u", c->ex->id);
		l[n++] = (struct label){ "export", id, sizeof id };
		l[n++] = (struct label){ "kind", c->ex->kind, sizeof c->ex->kind };
	}
	for (unsigned i = 0; i < nextra && n < sizeof l / sizeof l[0]; i++)
		l[n++] = extra[i];

	fputs(c->name, c->f);
	fputs(suffix, c->f);
	for (unsigned i = 0; i < n; i++) {
		fprintf(c->f, "%s%s=\"", i ? "," : "{", l[i].key);
		put_label_value(c->f, l[i].value, l[i].max ? l[i].max : SIZE_MAX);
		fputc('"', c->f);
	}
	fprintf(c->f, "%s %s\n", n ? "}" : "", value);
}

static void sample_u64(const struct sample_ctx *c, const char *suffix, const struct label *extra,
		       unsigned nextra, uint64_t v)
{
	char value[24];

	snprintf(value, sizeof value, "%" PRIu64, v);
	sample(c, suffix, extra, nextra, value);
}

static void sample_1(const struct sample_ctx *c, const char *key, const char *value, uint64_t v)
{
	struct label l = { key, value, 0 };

	sample_u64(c, "", &l, 1, v);
}

/* v / 10^digits as an exact decimal: 10000 ns, 9 digits -> "0.00001". */
static void fixed(char *out, size_t outlen, uint64_t v, unsigned digits)
{
	uint64_t scale = 1;
	char frac[24];

	for (unsigned i = 0; i < digits; i++)
		scale *= 10;
	snprintf(frac, sizeof frac, "%0*" PRIu64, (int)digits, v % scale);
	for (size_t len = strlen(frac); len > 0 && frac[len - 1] == '0'; len--)
		frac[len - 1] = '\0';
	snprintf(out, outlen, "%" PRIu64 "%s%s", v / scale, frac[0] ? "." : "", frac);
}

/*
 * A histogram from cumulative buckets (buckets[i]: observations <=
 * bounds[i]), in a unit of 10^-digits seconds: _bucket{le} for each bound
 * and +Inf (= count), _sum, _count.
 */
static void histogram(const struct sample_ctx *c, const uint64_t *bounds, const uint64_t *buckets, unsigned n,
		      unsigned digits, uint64_t count, uint64_t sum)
{
	char le[32], value[32];
	struct label l = { "le", le, 0 };

	for (unsigned i = 0; i < n; i++) {
		fixed(le, sizeof le, bounds[i], digits);
		sample_u64(c, "_bucket", &l, 1, buckets[i]);
	}
	snprintf(le, sizeof le, "+Inf");
	sample_u64(c, "_bucket", &l, 1, count);
	fixed(value, sizeof value, sum, digits);
	sample(c, "_sum", NULL, 0, value);
	sample_u64(c, "_count", NULL, 0, count);
}

static bool state_is(const struct server_snapshot *s, const char *state)
{
	return s->state && strcmp(s->state, state) == 0;
}

static void emit_devices(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->all->n);
}

static void emit_up(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, state_is(c->dev, "running"));
}

static void emit_state(const struct sample_ctx *c)
{
	for (size_t i = 0; i < sizeof device_states / sizeof device_states[0]; i++)
		sample_1(c, "state", device_states[i], state_is(c->dev, device_states[i]));
}

static void emit_generation(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->generation);
}

static void emit_inflight(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->inflight);
}

static void emit_requests(const struct sample_ctx *c)
{
	const struct server_stats *st = &c->dev->stats;

	sample_1(c, "op", "read", st->reads);
	sample_1(c, "op", "write", st->writes);
	sample_1(c, "op", "flush", st->flushes);
	sample_1(c, "op", "other", st->others);
}

static void emit_bytes(const struct sample_ctx *c)
{
	sample_1(c, "direction", "read", c->dev->stats.read_bytes);
	sample_1(c, "direction", "write", c->dev->stats.write_bytes);
}

static void emit_errors(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->stats.errors);
}

static void emit_latency(const struct sample_ctx *c)
{
	const struct server_stats *st = &c->dev->stats;

	histogram(c, server_latency_bounds_ns, st->latency_buckets, SERVER_LATENCY_BUCKETS, 9, st->latency_count,
		  st->latency_sum_ns);
}

static void emit_restarts(const struct sample_ctx *c)
{
	for (int i = 0; i < ISOLDE_FAIL_COUNT; i++)
		sample_1(c, "reason", isolde_failure_name((enum isolde_failure)i), c->dev->sup.by_failure[i]);
}

static void emit_replayed(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->sup.replayed);
}

static void emit_recovery(const struct sample_ctx *c)
{
	const struct server_stats *st = &c->dev->stats;

	histogram(c, server_recovery_bounds_us, st->recovery_buckets, SERVER_RECOVERY_BUCKETS, 6,
		  st->recovery_count, st->recovery_sum_us);
}

static void emit_denials(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->blk.denials);
}

static void emit_violations(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->blk.protocol_violations);
}

static void emit_log_suppressed(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->dev->blk.log_suppressed);
}

static void emit_snapshot_age(const struct sample_ctx *c)
{
	uint64_t published = c->dev->published_ns;
	char value[32];

	fixed(value, sizeof value, published && c->now_ns > published ? c->now_ns - published : 0, 9);
	sample(c, "", NULL, 0, value);
}

static void emit_export_connections(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->ex->connections);
}

static void emit_export_inflight(const struct sample_ctx *c)
{
	sample_u64(c, "", NULL, 0, c->ex->inflight);
}

static void emit_export_info(const struct sample_ctx *c)
{
	struct label l = { "spec", c->ex->spec, sizeof c->ex->spec };

	sample_u64(c, "", &l, 1, 1);
}

static void render_snapshots(const struct daemon_snapshots *all, FILE *f)
{
	unsigned n = all->n < DAEMON_MAX_DEVICES ? all->n : DAEMON_MAX_DEVICES;

	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
		const struct metric_family *fam = &families[i];
		struct sample_ctx c = { .f = f, .name = fam->name, .all = all, .now_ns = isolde_now_ns() };

		fprintf(f, "# HELP %s ", fam->name);
		put_help(f, fam->help);
		fprintf(f, "\n# TYPE %s %s\n", fam->name, type_names[fam->type]);
		if (fam->scope == PER_DAEMON) {
			fam->emit(&c);
			continue;
		}
		for (unsigned d = 0; d < n; d++) {
			c.dev = &all->devices[d];
			if (fam->scope == PER_DEVICE) {
				fam->emit(&c);
				continue;
			}
			unsigned nex = c.dev->nexports < SERVER_MAX_EXPORTS ? c.dev->nexports : SERVER_MAX_EXPORTS;
			for (unsigned e = 0; e < nex; e++) {
				c.ex = &c.dev->exports[e];
				fam->emit(&c);
			}
			c.ex = NULL;
		}
	}
}

void metrics_render(struct isolde_daemon *d, FILE *f)
{
	struct daemon_snapshots *snaps = malloc(sizeof *snaps);

	if (!snaps) {
		fputs("# isolde: out of memory rendering the metrics\n", f);
		return;
	}
	daemon_snapshots(d, snaps);
	render_snapshots(snaps, f);
	daemon_snapshots_free(snaps);
	free(snaps);
}

/* ------------------------------------------------------------------ */
/* The HTTP listener                                                  */
/* ------------------------------------------------------------------ */

/* A connection libmicrohttpd accepted, as the reaper sees it. */
struct conn_slot {
	int fd;                 /* -1: free */
	bool cut;               /* shut down by the reaper; libmicrohttpd closes it */
	uint64_t deadline_ns;   /* its request must be complete by then */
	char peer[INET6_ADDRSTRLEN + 8];
};

struct metrics_http {
	struct isolde_daemon *d;
	struct MHD_Daemon *mhd;
	char address[INET6_ADDRSTRLEN + 16];
	struct daemon_snapshots *snaps;   /* the polling thread's, for every request */
	struct MHD_Response *not_found, *not_allowed, *failed;

	pthread_mutex_t lock;             /* the slots, and the reaper's wake-ups */
	pthread_cond_t wake;
	pthread_t reaper;
	bool reaper_running, stopping;
	unsigned connections;             /* slots in use */
	struct conn_slot slots[METRICS_MHD_LIMIT];

	pthread_mutex_t log_lock;
	struct isolde_ratelimit log_limit;
};

static void mlog(struct metrics_http *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Rate limited, one line: a hostile client must not be able to fill stderr, or forge lines. */
static void mlog(struct metrics_http *m, const char *fmt, ...)
{
	char line[512];
	uint64_t suppressed;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	size_t len = strlen(line);
	while (len > 0 && line[len - 1] == '\n')
		line[--len] = '\0';
	for (char *c = line; *c; c++) /* libmicrohttpd may quote what a client sent */
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			*c = '?';
	pthread_mutex_lock(&m->log_lock);
	if (isolde_ratelimit_allow(&m->log_limit, isolde_now_ns(), &suppressed)) {
		if (suppressed)
			fprintf(stderr, "isolde serve: metrics %s: %" PRIu64 " messages suppressed\n", m->address,
				suppressed);
		fprintf(stderr, "isolde serve: metrics %s: %s\n", m->address, line);
	}
	pthread_mutex_unlock(&m->log_lock);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
	char line[512];

	vsnprintf(line, sizeof line, fmt, ap);
	mlog(cls, "%s", line);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t outlen)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (sa && sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
		snprintf(out, outlen, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else if (sa && sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
		snprintf(out, outlen, "%s:%u", ip, ntohs(s4->sin_port));
	} else
		snprintf(out, outlen, "?");
}

/* Every accept, in the polling thread: refuse past the limit. */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
	struct metrics_http *m = cls;
	bool full;

	(void)addrlen;
	pthread_mutex_lock(&m->lock);
	full = m->connections >= METRICS_MAX_CONNECTIONS;
	pthread_mutex_unlock(&m->lock);
	if (full) {
		char peer[INET6_ADDRSTRLEN + 8];
		format_peer(addr, peer, sizeof peer);
		mlog(m, "refused %s: %d connections open", peer, METRICS_MAX_CONNECTIONS);
		return MHD_NO;
	}
	return MHD_YES;
}

/*
 * Connections start and end, in the polling thread. libmicrohttpd reports
 * the end before it closes the socket, so a slot's fd is the connection's
 * for as long as the slot holds it: the reaper never shuts down a reused fd.
 */
static void connection_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
			      enum MHD_ConnectionNotificationCode code)
{
	struct metrics_http *m = cls;
	struct conn_slot *slot = *socket_context;

	pthread_mutex_lock(&m->lock);
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *fd = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		const union MHD_ConnectionInfo *peer = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		for (size_t i = 0; i < METRICS_MHD_LIMIT && fd; i++) {
			if (m->slots[i].fd >= 0)
				continue;
			slot = &m->slots[i];
			slot->fd = fd->connect_fd;
			slot->cut = false;
			slot->deadline_ns = isolde_now_ns() + METRICS_TIMEOUT_S * 1000000000ull;
			format_peer(peer ? peer->client_addr : NULL, slot->peer, sizeof slot->peer);
			m->connections++;
			*socket_context = slot;
			break;
		}
		if (!slot && fd) /* cannot happen (as many slots as libmicrohttpd's limit): never untracked */
			shutdown(fd->connect_fd, SHUT_RDWR);
		pthread_cond_signal(&m->wake);
	} else if (code == MHD_CONNECTION_NOTIFY_CLOSED && slot) {
		slot->fd = -1;
		m->connections--;
		*socket_context = NULL;
	}
	pthread_mutex_unlock(&m->lock);
}

/* A request ended (answered, or not): the connection gets a new period. */
static void request_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
			      enum MHD_RequestTerminationCode toe)
{
	struct metrics_http *m = cls;
	const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct conn_slot *slot = info ? info->socket_context : NULL;

	(void)req_cls;
	(void)toe;
	if (!slot)
		return;
	pthread_mutex_lock(&m->lock);
	if (slot->fd >= 0)
		slot->deadline_ns = isolde_now_ns() + METRICS_TIMEOUT_S * 1000000000ull;
	pthread_mutex_unlock(&m->lock);
}

static void deadline_timespec(uint64_t ns, struct timespec *ts)
{
	ts->tv_sec = (time_t)(ns / 1000000000u);
	ts->tv_nsec = (long)(ns % 1000000000u);
}

/* Cut connections past their deadline; sleep until the next one. */
static void *reaper_main(void *arg)
{
	struct metrics_http *m = arg;

	pthread_mutex_lock(&m->lock);
	while (!m->stopping) {
		uint64_t now = isolde_now_ns(), next = UINT64_MAX;
		char cut[METRICS_MHD_LIMIT][sizeof m->slots[0].peer];
		unsigned ncut = 0;
		for (size_t i = 0; i < METRICS_MHD_LIMIT; i++) {
			struct conn_slot *s = &m->slots[i];
			if (s->fd < 0 || s->cut)
				continue;
			if (s->deadline_ns <= now) {
				shutdown(s->fd, SHUT_RDWR); /* libmicrohttpd sees it end, and closes it */
				s->cut = true;
				memcpy(cut[ncut++], s->peer, sizeof s->peer);
			} else if (s->deadline_ns < next)
				next = s->deadline_ns;
		}
		if (ncut) { /* not under the lock: stderr may block */
			pthread_mutex_unlock(&m->lock);
			for (unsigned i = 0; i < ncut; i++)
				mlog(m, "dropped %s: no complete request within %d s", cut[i], METRICS_TIMEOUT_S);
			pthread_mutex_lock(&m->lock);
			continue;
		}
		if (next == UINT64_MAX) {
			pthread_cond_wait(&m->wake, &m->lock);
		} else {
			struct timespec ts;
			deadline_timespec(next, &ts);
			pthread_cond_timedwait(&m->wake, &m->lock, &ts);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

static char *render_text(struct metrics_http *m, size_t *len)
{
	char *text = NULL;
	FILE *f = open_memstream(&text, len);

	if (!f)
		return NULL;
	daemon_snapshots(m->d, m->snaps);
	render_snapshots(m->snaps, f);
	daemon_snapshots_free(m->snaps);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

/* Does the request say a body follows? */
static bool has_body(struct MHD_Connection *conn)
{
	const char *len = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);

	return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) ||
	       (len && strspn(len, "0") != strlen(len));
}

/*
 * Every request. One without a body is answered once it is complete (the
 * handler's second call), so the connection may be kept alive; one with a
 * body is answered at once, on the first call, so libmicrohttpd reads none
 * of the body and closes the connection after the answer.
 */
static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version, const char *upload_data,
				      size_t *upload_data_size, void **req_cls)
{
	static int seen; /* *req_cls after the first call: nothing is allocated per request */
	struct metrics_http *m = cls;
	struct MHD_Response *resp;
	enum MHD_Result r;
	size_t len = 0;
	char *text;

	(void)version;
	(void)upload_data;
	if (*req_cls == NULL) {
		*req_cls = &seen;
		if (!has_body(conn))
			return MHD_YES;
	} else if (*upload_data_size != 0) {
		return MHD_NO; /* a body it did not announce: close */
	}
	if (strcmp(url, METRICS_PATH) != 0)
		return MHD_queue_response(conn, MHD_HTTP_NOT_FOUND, m->not_found);
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, m->not_allowed);
	text = render_text(m, &len);
	resp = text ? MHD_create_response_from_buffer_with_free_callback(len, text, free) : NULL;
	if (!resp) {
		free(text);
		return MHD_queue_response(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, m->failed);
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, METRICS_CONTENT_TYPE);
	r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}

static struct MHD_Response *static_response(const char *body, const char *allow)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);

	if (!r)
		return NULL;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	if (allow)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
	return r;
}

/*
 * "tcp:HOST:PORT": HOST an IPv4 address or a name, [IPv6] in brackets, or
 * empty for 127.0.0.1; PORT 0 to 65535 (0: any free one).
 */
static int parse_address(const char *address, struct sockaddr_storage *ss, socklen_t *sslen, char *err,
			 size_t errlen)
{
	static const char usage[] = "expected tcp:HOST:PORT (HOST empty for 127.0.0.1, [ADDRESS] for IPv6)";
	char host[256];
	const char *rest, *port;
	bool bracketed = false;

	if (strncmp(address, "tcp:", 4) != 0) {
		snprintf(err, errlen, "--metrics %s: %s", address, usage);
		return -1;
	}
	rest = address + 4;
	if (rest[0] == '[') {
		const char *close = strchr(rest, ']');
		if (!close || close[1] != ':') {
			snprintf(err, errlen, "--metrics %s: %s", address, usage);
			return -1;
		}
		rest++;
		port = close + 2;
		bracketed = true;
		if ((size_t)(close - rest) >= sizeof host || close == rest) {
			snprintf(err, errlen, "--metrics %s: bad IPv6 address", address);
			return -1;
		}
		memcpy(host, rest, (size_t)(close - rest));
		host[close - rest] = '\0';
	} else {
		const char *colon = strrchr(rest, ':');
		if (!colon) {
			snprintf(err, errlen, "--metrics %s: %s", address, usage);
			return -1;
		}
		if (memchr(rest, ':', (size_t)(colon - rest))) {
			snprintf(err, errlen, "--metrics %s: an IPv6 address goes in brackets: tcp:[ADDRESS]:PORT",
				 address);
			return -1;
		}
		if ((size_t)(colon - rest) >= sizeof host) {
			snprintf(err, errlen, "--metrics %s: host name too long", address);
			return -1;
		}
		memcpy(host, rest, (size_t)(colon - rest));
		host[colon - rest] = '\0';
		port = colon + 1;
	}

	unsigned long portnum = 0;
	size_t digits = strspn(port, "0123456789");
	if (digits == 0 || digits > 5 || port[digits] || (portnum = strtoul(port, NULL, 10)) > 65535) {
		snprintf(err, errlen, "--metrics %s: the port must be a number from 0 to 65535", address);
		return -1;
	}
	if (!host[0])
		snprintf(host, sizeof host, "127.0.0.1"); /* loopback unless told otherwise */

	struct addrinfo hints = { .ai_family = bracketed ? AF_INET6 : AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | (bracketed ? AI_NUMERICHOST : 0) };
	struct addrinfo *res = NULL;
	int r = getaddrinfo(host, NULL, &hints, &res);
	if (r != 0 || !res) {
		snprintf(err, errlen, "--metrics %s: %s: %s", address, host,
			 r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
		return -1;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*sslen = res->ai_addrlen;
	freeaddrinfo(res);
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)portnum);
	else if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)portnum);
	else {
		snprintf(err, errlen, "--metrics %s: not an IP address", address);
		return -1;
	}
	return 0;
}

/* A listening socket on the address; m->address says where, port included. */
static int listen_on(struct metrics_http *m, const char *address, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof ss;
	int one = 1, fd;

	if (parse_address(address, &ss, &sslen, err, errlen))
		return -1;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "--metrics %s: socket: %s", address, strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, METRICS_BACKLOG) != 0) {
		snprintf(err, errlen, "--metrics %s: %s", address, strerror(errno));
		close(fd);
		return -1;
	}
	sslen = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
		snprintf(err, errlen, "--metrics %s: getsockname: %s", address, strerror(errno));
		close(fd);
		return -1;
	}
	char ip[INET6_ADDRSTRLEN] = "?";
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
		snprintf(m->address, sizeof m->address, "tcp:[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
		snprintf(m->address, sizeof m->address, "tcp:%s:%u", ip, ntohs(s4->sin_port));
	}
	return fd;
}

struct metrics_http *metrics_http_start(struct isolde_daemon *d, const char *address, char *err, size_t errlen)
{
	struct metrics_http *m = calloc(1, sizeof *m);
	sigset_t all, old;
	int fd;

	if (!m || !(m->snaps = malloc(sizeof *m->snaps))) {
		snprintf(err, errlen, "--metrics %s: out of memory", address);
		free(m);
		return NULL;
	}
	m->d = d;
	for (size_t i = 0; i < METRICS_MHD_LIMIT; i++)
		m->slots[i].fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	pthread_mutex_init(&m->log_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* isolde_now_ns's clock */
	pthread_cond_init(&m->wake, &ca);
	pthread_condattr_destroy(&ca);
	isolde_ratelimit_init(&m->log_limit, METRICS_LOG_LINES, METRICS_LOG_WINDOW_S);

	m->not_found = static_response("not found: the metrics are at " METRICS_PATH "\n", NULL);
	m->not_allowed = static_response("method not allowed: GET or HEAD " METRICS_PATH "\n", "GET, HEAD");
	m->failed = static_response("cannot render the metrics\n", NULL);
	if (!m->not_found || !m->not_allowed || !m->failed) {
		snprintf(err, errlen, "--metrics %s: out of memory", address);
		metrics_http_stop(m);
		return NULL;
	}
	fd = listen_on(m, address, err, errlen);
	if (fd < 0) {
		metrics_http_stop(m);
		return NULL;
	}

	/* The threads started here take no signals: the daemon's main
	 * thread handles them (a signal sent to the process must not land on
	 * a thread that leaves it to its default action). */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	m->mhd = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, accept_policy, m,
				  handle_request, m,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, m, /* first: it applies from here on */
				  MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_MHD_LIMIT,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_TIMEOUT_S,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)METRICS_MEMORY_LIMIT,
				  MHD_OPTION_NOTIFY_CONNECTION, connection_notify, m,
				  MHD_OPTION_NOTIFY_COMPLETED, request_completed, m,
				  MHD_OPTION_END);
	int thread_err = m->mhd ? pthread_create(&m->reaper, NULL, reaper_main, m) : 0;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!m->mhd) {
		snprintf(err, errlen, "--metrics %s: cannot start the HTTP server (libmicrohttpd)", address);
		close(fd); /* libmicrohttpd closes a listening socket it was given only when it stops */
		metrics_http_stop(m);
		return NULL;
	}
	if (thread_err) {
		snprintf(err, errlen, "--metrics %s: cannot start a thread: %s", address, strerror(thread_err));
		metrics_http_stop(m);
		return NULL;
	}
	m->reaper_running = true;
	return m;
}

const char *metrics_http_address(const struct metrics_http *m)
{
	return m ? m->address : "";
}

void metrics_http_stop(struct metrics_http *m)
{
	if (!m)
		return;
	if (m->reaper_running) {
		pthread_mutex_lock(&m->lock);
		m->stopping = true;
		pthread_cond_signal(&m->wake);
		pthread_mutex_unlock(&m->lock);
		pthread_join(m->reaper, NULL);
	}
	if (m->mhd)
		MHD_stop_daemon(m->mhd); /* closes every connection, and the listening socket */
	if (m->not_found)
		MHD_destroy_response(m->not_found);
	if (m->not_allowed)
		MHD_destroy_response(m->not_allowed);
	if (m->failed)
		MHD_destroy_response(m->failed);
	pthread_cond_destroy(&m->wake);
	pthread_mutex_destroy(&m->lock);
	pthread_mutex_destroy(&m->log_lock);
	free(m->snaps);
	free(m);
}
