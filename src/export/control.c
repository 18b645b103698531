// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "control.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "isolde/supervisor.h"
#include "json.h"
#include "server.h"
#include "unix_socket.h"

#define MAX_CLIENTS 16

struct control_client {
	struct control *c;
	int fd;
	char line[64];
	size_t len;
};

struct control {
	struct isolde_server *srv;
	int fd;
	char path[108];
	struct control_client *clients[MAX_CLIENTS];
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

static void drop_client(struct control_client *cl)
{
	struct control *c = cl->c;

	server_unwatch(c->srv, cl->fd);
	close(cl->fd);
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (c->clients[i] == cl)
			c->clients[i] = NULL;
	free(cl);
}

static void client_readable(void *ctx, uint32_t events)
{
	struct control_client *cl = ctx;
	ssize_t n = read(cl->fd, cl->line + cl->len, sizeof cl->line - 1 - cl->len);

	(void)events;
	if (n <= 0 && !(n < 0 && errno == EAGAIN)) {
		drop_client(cl);
		return;
	}
	if (n < 0)
		return;
	cl->len += (size_t)n;
	cl->line[cl->len] = '\0';
	char *nl = strchr(cl->line, '\n');
	if (!nl) {
		if (cl->len == sizeof cl->line - 1)
			drop_client(cl); /* no command is that long */
		return;
	}
	*nl = '\0';
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (f) {
		if (strcmp(cl->line, "status") == 0)
			control_write_status(cl->c->srv, f);
		else
			fprintf(f, "{\"error\": \"unknown command; the only one is 'status'\"}\n");
		fclose(f);
		for (size_t off = 0; off < len;) {
			ssize_t w = send(cl->fd, text + off, len - off, MSG_NOSIGNAL);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		free(text);
	}
	drop_client(cl);
}

static void listener_readable(void *ctx, uint32_t events)
{
	struct control *c = ctx;
	(void)events;

	for (;;) {
		int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			return;
		int slot = -1;
		for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
			if (!c->clients[i])
				slot = i;
		struct control_client *cl = slot >= 0 ? calloc(1, sizeof *cl) : NULL;
		if (!cl) {
			close(fd);
			continue;
		}
		cl->c = c;
		cl->fd = fd;
		if (server_watch(c->srv, fd, EPOLLIN, client_readable, cl) != 0) {
			close(fd);
			free(cl);
			continue;
		}
		c->clients[slot] = cl;
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
	if (server_watch(s, c->fd, EPOLLIN, listener_readable, c) != 0) {
		snprintf(err, errlen, "--control %s: cannot watch it", path);
		close(c->fd);
		unlink(path);
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
	server_unwatch(c->srv, c->fd);
	close(c->fd);
	unlink(c->path);
	free(c);
}
