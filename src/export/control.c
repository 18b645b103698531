// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "control.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "isolde/supervisor.h"
#include "json.h"
#include "server.h"
#include "unix_socket.h"

/*
 * Clients send one short line, at once. One that has not sent it within
 * COMMAND_TIMEOUT_MS is dropped, and when every slot is taken the client
 * idle longest gives up its slot to the newcomer: idle connections never
 * keep `isolde status` out.
 */
#define MAX_CLIENTS 64
#define COMMAND_TIMEOUT_MS 2000
#define ACCEPTS_PER_WAKEUP MAX_CLIENTS /* the rest wait in the backlog for the next pass */

struct control_client {
	struct control *c;
	int fd;
	bool evicted;              /* shut down, out of its slot, freed by its own callback */
	uint64_t deadline_ns;      /* its command line must be complete by then */
	uint64_t active_ns;        /* when it connected or last sent something */
	struct control_client *next_evicted;
	char line[64];
	size_t len;
};

struct control {
	struct isolde_server *srv;
	int fd;
	int timer_fd;              /* fires at the earliest deadline_ns */
	char path[108];
	struct control_client *clients[MAX_CLIENTS];
	struct control_client *evicted; /* awaiting their own callback */
};

void control_write_status(struct isolde_server *s, FILE *f)
{
	struct isolde_blk *dev = server_device(s);
	const struct isolde_supervisor_stats *sup = isolde_blk_supervisor_stats(dev);
	struct isolde_blk_stats st;
	uint32_t p50, p99, max;

	isolde_blk_get_stats(dev, &st);
	isolde_supervisor_recovery_summary(sup, &p50, &p99, &max);
	fputs("{\"driver\": ", f);
	json_string(f, isolde_blk_driver_name(dev));
	fprintf(f, ", \"state\": \"%s\", \"pid\": %d, \"notify\": \"%s\", \"generation\": %u, "
		"\"size\": %llu, \"readonly\": %s, \"queue_depth\": %u, \"inflight\": %u, \"backlog\": %u, "
		"\"restarts\": %llu, \"restarts_by_reason\": {",
		isolde_blk_failed(dev) ? "failed" : "running", (int)isolde_blk_driver_pid(dev),
		isolde_notify_mode_name(isolde_blk_notify_mode(dev)), isolde_blk_generation(dev),
		(unsigned long long)isolde_blk_size(dev), isolde_blk_readonly(dev) ? "true" : "false",
		isolde_blk_queue_depth(dev), isolde_blk_inflight(dev), server_backlog(s),
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
		json_string(f, isolde_blk_error(dev));
	else
		fputs("null", f);
	fputs(", \"exports\": ", f);
	server_describe_exports(s, f);
	fputs("}\n", f);
}

static void unlink_evicted(struct control *c, struct control_client *cl)
{
	for (struct control_client **p = &c->evicted; *p; p = &(*p)->next_evicted) {
		if (*p == cl) {
			*p = cl->next_evicted;
			return;
		}
	}
}

static void free_slot(struct control *c, struct control_client *cl)
{
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (c->clients[i] == cl)
			c->clients[i] = NULL;
}

/* Only from the client's own callback (or at stop): the loop may still hold
 * an event for any other fd, and unwatching frees what that event points to. */
static void drop_client(struct control_client *cl)
{
	struct control *c = cl->c;

	server_unwatch(c->srv, cl->fd);
	close(cl->fd);
	if (cl->evicted)
		unlink_evicted(c, cl);
	else
		free_slot(c, cl);
	free(cl);
}

/* The earliest deadline of a client in a slot, or none (0: disarmed). */
static void arm_timer(struct control *c)
{
	uint64_t first = 0;
	struct itimerspec its = { 0 };

	for (int i = 0; i < MAX_CLIENTS; i++)
		if (c->clients[i] && (first == 0 || c->clients[i]->deadline_ns < first))
			first = c->clients[i]->deadline_ns;
	if (first) {
		its.it_value.tv_sec = (time_t)(first / 1000000000u);
		its.it_value.tv_nsec = (long)(first % 1000000000u);
	}
	timerfd_settime(c->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void reply(struct control_client *cl, const char *text, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t w = send(cl->fd, text + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
}

static void answer(struct control_client *cl)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return;
	if (strcmp(cl->line, "status") == 0)
		control_write_status(cl->c->srv, f);
	else
		fprintf(f, "{\"error\": \"unknown command; the only one is 'status'\"}\n");
	fclose(f);
	reply(cl, text, len);
	free(text);
}

/* Read what the client sent and answer a complete line. true: done with it. */
static bool serve_client(struct control_client *cl)
{
	ssize_t n = read(cl->fd, cl->line + cl->len, sizeof cl->line - 1 - cl->len);

	if (n < 0)
		return errno != EAGAIN && errno != EINTR;
	if (n == 0)
		return true;
	cl->len += (size_t)n;
	cl->line[cl->len] = '\0';
	cl->active_ns = isolde_now_ns();
	char *nl = strchr(cl->line, '\n');
	if (!nl) {
		if (cl->len < sizeof cl->line - 1)
			return false;
		static const char too_long[] = "{\"error\": \"command line too long\"}\n";
		reply(cl, too_long, sizeof too_long - 1);
		return true;
	}
	*nl = '\0';
	answer(cl);
	return true;
}

/*
 * Take the client out of its slot now, but free it only in its own
 * callback, which the shutdown makes run on the next pass (EOF). Whatever
 * complete command it already sent is answered first.
 */
static void evict(struct control_client *cl)
{
	struct control *c = cl->c;

	(void)serve_client(cl);
	shutdown(cl->fd, SHUT_RDWR);
	free_slot(c, cl);
	cl->evicted = true;
	cl->next_evicted = c->evicted;
	c->evicted = cl;
}

static void client_readable(void *ctx, uint32_t events)
{
	struct control_client *cl = ctx;
	struct control *c = cl->c;

	(void)events;
	if (cl->evicted || serve_client(cl)) {
		bool had_slot = !cl->evicted;
		drop_client(cl);
		if (had_slot)
			arm_timer(c);
	}
}

static void timer_fired(void *ctx, uint32_t events)
{
	struct control *c = ctx;
	uint64_t expirations, now = isolde_now_ns();

	(void)events;
	(void)!read(c->timer_fd, &expirations, sizeof expirations);
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (c->clients[i] && c->clients[i]->deadline_ns <= now)
			evict(c->clients[i]);
	arm_timer(c);
}

/* A free slot; when there is none, the one of the client idle longest. */
static int take_slot(struct control *c)
{
	int idlest = 0;

	for (int i = 0; i < MAX_CLIENTS; i++) {
		if (!c->clients[i])
			return i;
		if (c->clients[i]->active_ns < c->clients[idlest]->active_ns)
			idlest = i;
	}
	evict(c->clients[idlest]);
	return idlest;
}

static void accept_client(struct control *c, int fd)
{
	struct control_client *cl = calloc(1, sizeof *cl);

	if (cl) {
		cl->c = c;
		cl->fd = fd;
		cl->active_ns = isolde_now_ns();
		cl->deadline_ns = cl->active_ns + (uint64_t)COMMAND_TIMEOUT_MS * 1000000u;
	}
	if (!cl || server_watch(c->srv, fd, EPOLLIN, client_readable, cl) != 0) {
		close(fd);
		free(cl);
		return;
	}
	c->clients[take_slot(c)] = cl;
}

static void listener_readable(void *ctx, uint32_t events)
{
	struct control *c = ctx;
	(void)events;

	for (int n = 0; n < ACCEPTS_PER_WAKEUP; n++) {
		int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			break;
		accept_client(c, fd);
	}
	arm_timer(c);
}

static void close_listener(struct control *c)
{
	server_unwatch(c->srv, c->fd);
	close(c->fd);
	unlink(c->path);
	if (c->timer_fd >= 0) {
		server_unwatch(c->srv, c->timer_fd);
		close(c->timer_fd);
	}
}

struct control *control_start(struct isolde_server *s, const char *path, char *err, size_t errlen)
{
	struct control *c = calloc(1, sizeof *c);
	char why[256];

	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->srv = s;
	snprintf(c->path, sizeof c->path, "%s", path);
	c->fd = unix_listen(path, why, sizeof why);
	if (c->fd < 0) {
		snprintf(err, errlen, "--control: %s", why);
		free(c);
		return NULL;
	}
	c->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->timer_fd < 0 || server_watch(s, c->timer_fd, EPOLLIN, timer_fired, c) != 0 ||
	    server_watch(s, c->fd, EPOLLIN, listener_readable, c) != 0) {
		snprintf(err, errlen, "--control %s: cannot watch it%s%s", path, c->timer_fd < 0 ? ": " : "",
			 c->timer_fd < 0 ? strerror(errno) : "");
		close_listener(c);
		free(c);
		return NULL;
	}
	return c;
}

void control_stop(struct control *c)
{
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (c->clients[i])
			drop_client(c->clients[i]);
	while (c->evicted)
		drop_client(c->evicted);
	close_listener(c);
	free(c);
}
