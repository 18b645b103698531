// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

#define MAX_EXPORTS 16
#define MAX_WATCHES 1024
#define MAX_POLLERS 16
#define HYBRID_SPIN_NS 50000u     /* the loop spins this long for answers before sleeping */
#define DRAIN_TIMEOUT_MS 60000

static const struct export_ops *const export_kinds[] = { &nbd_export_ops, &fuse_export_ops,
							  &vhost_blk_export_ops };

struct watch {
	int fd;
	server_fd_cb cb;
	void *ctx;
};

struct running_export {
	const struct export_ops *ops;
	void *state;
	char spec[256];
};

struct poller {
	server_poll_cb cb;
	void *ctx;
};

struct isolde_server {
	struct isolde_blk *dev;
	struct poller pollers[MAX_POLLERS];
	unsigned npollers;
	int epfd;
	int signal_fd;
	int call_fd, watch_fd;
	struct watch *watches[MAX_WATCHES];
	struct running_export exports[MAX_EXPORTS];
	unsigned nexports;
	struct control *control;
	struct server_io *backlog_head, *backlog_tail;
	unsigned backlog_len;
	bool stopping;
	unsigned inflight_pieces;
};

static void noop_cb(void *ctx, uint32_t events)
{
	(void)ctx;
	(void)events;
}

void server_log(const struct isolde_server *s, const char *fmt, ...)
{
	va_list ap;

	(void)s;
	fputs("isolde serve: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int server_watch(struct isolde_server *s, int fd, uint32_t events, server_fd_cb cb, void *ctx)
{
	struct epoll_event ev = { .events = events };
	struct watch *w;

	if (fd < 0 || fd >= MAX_WATCHES || s->watches[fd] || !(w = malloc(sizeof *w)))
		return -1;
	w->fd = fd;
	w->cb = cb;
	w->ctx = ctx;
	ev.data.ptr = w;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		free(w);
		return -1;
	}
	s->watches[fd] = w;
	return 0;
}

int server_modify(struct isolde_server *s, int fd, uint32_t events)
{
	struct epoll_event ev = { .events = events };

	if (fd < 0 || fd >= MAX_WATCHES || !s->watches[fd])
		return -1;
	ev.data.ptr = s->watches[fd];
	return epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ev);
}

void server_unwatch(struct isolde_server *s, int fd)
{
	if (fd < 0 || fd >= MAX_WATCHES || !s->watches[fd])
		return;
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
	free(s->watches[fd]);
	s->watches[fd] = NULL;
}

uint64_t server_device_size(const struct isolde_server *s) { return isolde_blk_size(s->dev); }
bool server_readonly(const struct isolde_server *s) { return isolde_blk_readonly(s->dev); }
uint32_t server_alignment(const struct isolde_server *s) { return isolde_blk_alignment(s->dev); }
bool server_stopping(const struct isolde_server *s) { return s->stopping; }

/* ---- requests ---- */

/* One ring request: a piece of an export's request. */
struct piece {
	struct isolde_blk_io io;
	struct server_io *parent;
};

static void parent_piece_done(struct isolde_server *s, struct server_io *sio, int result)
{
	if (result && !sio->result)
		sio->result = result;
	if (--sio->pieces_left == 0)
		sio->done(sio);
	(void)s;
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

static unsigned pieces_of(const struct server_io *sio, uint64_t piece_max)
{
	if (sio->op == ISOLDE_BLK_OP_FLUSH || sio->len == 0)
		return 1;
	return (unsigned)((sio->len + piece_max - 1) / piece_max);
}

/*
 * Put as much of the backlog on the ring as fits, in order: a request's
 * pieces go on before any piece of the next request, and a request larger
 * than the free room waits at the head until completions make room.
 */
static void submit_backlog(struct isolde_server *s)
{
	size_t max_io = isolde_blk_max_io(s->dev);

	while (s->backlog_head) {
		struct server_io *sio = s->backlog_head;
		bool data = sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE;
		uint64_t piece_max = data ? max_io : (1u << 30);
		unsigned npieces = pieces_of(sio, piece_max);

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
			p->io.len = sio->op == ISOLDE_BLK_OP_FLUSH ? 0
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
			sio->done(sio);
	}
}

void server_submit(struct isolde_server *s, struct server_io *sio)
{
	/* Data must be buffered by the export, so its size is bounded;
	 * DISCARD and WRITE_ZEROES carry none and may cover up to 4 GiB. */
	if ((sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE) && sio->len > SERVER_MAX_REQUEST) {
		sio->result = -EINVAL;
		sio->done(sio);
		return;
	}
	sio->result = 0;
	sio->pieces_next = 0;
	sio->pieces_left = pieces_of(sio, (sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE)
					      ? isolde_blk_max_io(s->dev) : (1u << 30));
	backlog_push(s, sio);
	submit_backlog(s);
}

int server_add_poller(struct isolde_server *s, server_poll_cb cb, void *ctx)
{
	if (s->npollers == MAX_POLLERS)
		return -1;
	s->pollers[s->npollers++] = (struct poller){ cb, ctx };
	return 0;
}

void server_remove_poller(struct isolde_server *s, server_poll_cb cb, void *ctx)
{
	for (unsigned i = 0; i < s->npollers; i++) {
		if (s->pollers[i].cb == cb && s->pollers[i].ctx == ctx) {
			s->pollers[i] = s->pollers[--s->npollers];
			return;
		}
	}
}

/* True if some poller wants the loop to keep spinning. */
static bool run_pollers(struct isolde_server *s)
{
	bool spin = false;

	/* A poller may remove itself (its connection closed): walk backwards. */
	for (unsigned i = s->npollers; i-- > 0;)
		if (i < s->npollers && s->pollers[i].cb(s->pollers[i].ctx))
			spin = true;
	return spin;
}

static void collect(struct isolde_server *s)
{
	struct isolde_blk_io *done[128];
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
		submit_backlog(s);
	} while (n == 128);
	isolde_blk_push(s->dev);
}

/* ---- lifecycle ---- */

struct isolde_server *server_create(struct isolde_blk *dev, const struct server_config *cfg,
				    char *err, size_t errlen)
{
	struct isolde_server *s = calloc(1, sizeof *s);
	sigset_t mask;

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->dev = dev;
	s->signal_fd = -1;
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	/* Signals become readable events; SIGPIPE from a client that went
	 * away becomes EPIPE on the write. */
	if (s->epfd < 0 || sigprocmask(SIG_BLOCK, &mask, NULL) != 0 ||
	    (s->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
		snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
		server_destroy(s);
		return NULL;
	}
	signal(SIGPIPE, SIG_IGN);
	isolde_blk_event_fds(dev, &s->call_fd, &s->watch_fd);
	if (server_watch(s, s->signal_fd, EPOLLIN, noop_cb, NULL) ||
	    server_watch(s, s->call_fd, EPOLLIN, noop_cb, NULL) ||
	    server_watch(s, s->watch_fd, EPOLLIN, noop_cb, NULL)) {
		snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
		server_destroy(s);
		return NULL;
	}
	if (cfg && cfg->control_path) {
		s->control = control_start(s, cfg->control_path, err, errlen);
		if (!s->control) {
			server_destroy(s);
			return NULL;
		}
	}
	return s;
}

int server_add_export(struct isolde_server *s, const char *spec, char *err, size_t errlen)
{
	const char *colon = strchr(spec, ':');

	if (s->nexports == MAX_EXPORTS) {
		snprintf(err, errlen, "at most %d exports", MAX_EXPORTS);
		return -1;
	}
	for (size_t i = 0; colon && i < sizeof export_kinds / sizeof export_kinds[0]; i++) {
		const struct export_ops *ops = export_kinds[i];
		if (strlen(ops->scheme) == (size_t)(colon - spec) &&
		    strncmp(spec, ops->scheme, (size_t)(colon - spec)) == 0) {
			struct running_export *e = &s->exports[s->nexports];
			if (ops->start(s, colon + 1, &e->state, err, errlen))
				return -1;
			e->ops = ops;
			snprintf(e->spec, sizeof e->spec, "%s", spec);
			s->nexports++;
			return 0;
		}
	}
	snprintf(err, errlen, "--export '%s': unknown kind (nbd:unix:PATH, nbd:tcp:HOST:PORT, fuse:PATH, "
		 "vhost-user-blk:PATH)",
		 spec);
	return -1;
}

void server_stop(struct isolde_server *s)
{
	if (s->stopping)
		return;
	s->stopping = true;
	for (unsigned i = 0; i < s->nexports; i++)
		s->exports[i].ops->quiesce(s->exports[i].state);
}

static bool busy(const struct isolde_server *s)
{
	return s->inflight_pieces > 0 || s->backlog_head != NULL;
}

/* How long epoll may sleep: not at all while the ring must be watched,
 * and never past the device's recovery deadline. */
static int sleep_ms(struct isolde_server *s, uint64_t *spin_since)
{
	int recovery = isolde_blk_timeout_ms(s->dev);

	if (recovery >= 0) {
		*spin_since = 0;
		return recovery;
	}
	if (!busy(s)) {
		*spin_since = 0;
		return s->stopping ? 0 : -1;
	}
	if (isolde_blk_notify_mode(s->dev) == ISOLDE_NOTIFY_HYBRID) {
		uint64_t now = isolde_now_ns();
		if (*spin_since == 0)
			*spin_since = now;
		if (now - *spin_since < HYBRID_SPIN_NS)
			return 0;
	}
	if (!isolde_blk_prepare_sleep(s->dev))
		return 0;
	*spin_since = 0;
	return 100; /* wake for hang checks while I/O is pending */
}

int server_run(struct isolde_server *s)
{
	struct epoll_event events[64];
	uint64_t spin_since = 0, drain_deadline = 0;

	for (;;) {
		collect(s);
		if (s->stopping) {
			if (!busy(s))
				break;
			if (drain_deadline == 0)
				drain_deadline = isolde_now_ns() + (uint64_t)DRAIN_TIMEOUT_MS * 1000000;
			else if (isolde_now_ns() > drain_deadline) {
				server_log(s, "requests still in flight after %d ms; stopping anyway",
					   DRAIN_TIMEOUT_MS);
				break;
			}
		}
		bool pollers_spin = run_pollers(s);
		collect(s);
		int n = epoll_wait(s->epfd, events, 64, pollers_spin ? 0 : sleep_ms(s, &spin_since));
		if (n < 0 && errno != EINTR) {
			server_log(s, "epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			struct watch *w = events[i].data.ptr;
			if (w->fd == s->signal_fd) {
				struct signalfd_siginfo si;
				while (read(s->signal_fd, &si, sizeof si) == sizeof si)
					;
				if (!s->stopping)
					server_log(s, "shutting down: completing requests in flight");
				server_stop(s);
				continue;
			}
			w->cb(w->ctx, events[i].events);
		}
	}
	for (unsigned i = 0; i < s->nexports; i++)
		s->exports[i].ops->stop(s->exports[i].state);
	s->nexports = 0;
	return 0;
}

void server_destroy(struct isolde_server *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->nexports; i++)
		s->exports[i].ops->stop(s->exports[i].state);
	if (s->control)
		control_stop(s->control);
	for (int fd = 0; fd < MAX_WATCHES; fd++)
		free(s->watches[fd]);
	if (s->signal_fd >= 0)
		close(s->signal_fd);
	if (s->epfd >= 0)
		close(s->epfd);
	free(s);
}

/* ---- status ---- */

struct isolde_blk *server_device(const struct isolde_server *s) { return s->dev; }

void server_describe_exports(const struct isolde_server *s, FILE *f)
{
	fputs("[", f);
	for (unsigned i = 0; i < s->nexports; i++) {
		fputs(i ? ", " : "", f);
		s->exports[i].ops->describe(s->exports[i].state, f);
	}
	fputs("]", f);
}

unsigned server_backlog(const struct isolde_server *s) { return s->backlog_len; }
