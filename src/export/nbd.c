// SPDX-License-Identifier: MIT
/*
 * The NBD export: `isolde serve --export nbd:unix:PATH` or
 * `--export nbd:tcp:HOST:PORT`, either optionally followed by a
 * comma-separated list of KEY=VALUE options (each at most once):
 *
 *   name=NAME               the export's name (default "")
 *   max-connections=N       clients served at once (default 128, 1..4096)
 *   handshake-timeout=S     seconds to finish option negotiation (default 10)
 *   idle-timeout=S          close a connection idle this long (default 0: never)
 *   send-timeout=S          close a connection whose replies do not move this long (30)
 *   max-buffer=SIZE         request and reply data of all connections (default 256M)
 *
 * docs/ARCHITECTURE.md §15 explains the limits and derives the memory bound.
 *
 * Sockets, buffers and the device around the protocol state machine of
 * nbd_proto.c. Everything runs in the server's loop thread: a connection
 * reads requests, hands each to server_submit, and queues each reply when
 * its done callback fires, in whatever order the device completes them.
 *
 * Export names. There is one export. It answers to "" (the protocol's
 * default export, which is what a URI without a path asks for) and to the
 * name given with ",name=NAME" if any; NBD_OPT_LIST and NBD_INFO_NAME
 * report that canonical name. Any other name is refused (NBD_REP_ERR_UNKNOWN
 * for NBD_OPT_GO and NBD_OPT_INFO; NBD_OPT_EXPORT_NAME cannot answer an
 * error, so the session ends): a typo in a name should fail, not silently
 * reach the one disk there is.
 *
 * Multiple connections (NBD_FLAG_CAN_MULTI_CONN). The protocol allows the
 * flag when the effects of FLUSH and FUA are visible on every connection
 * once replied to. Here every connection of every export submits to the
 * same server, hence the same front end, ring, driver and image: there is
 * no per-connection cache or queue. A WRITE is replied to only after the
 * driver's pwrite completed, so its data is in the image (the kernel's
 * page cache of that one file) for any later READ on any connection. A
 * FLUSH becomes the driver's fdatasync of the image, which makes durable
 * every write to the file that completed before it, whichever connection
 * sent it and whichever driver generation performed it (a restarted driver
 * gets a new fd for the same file; fdatasync is per file, and replay keeps
 * flushes after the writes they follow). FUA is RWF_DSYNC on the write
 * itself. So the flag is true and is always set.
 *
 * The connection limit. The listener never pauses for it: a client beyond
 * max-connections is accepted and refused in words (nbd_proto's refusal:
 * NBD_REP_ERR_POLICY with "export 'NAME' has reached its limit of N
 * connections; try again later"), then closed once it gives up or after
 * REFUSE_TIMEOUT_MS. At most MAX_REFUSING clients are being refused at
 * once; beyond that a client is closed as soon as it is accepted. A
 * connection counts against the limit until its socket is closed and its
 * last request completed, because until then it may hold buffers.
 *
 * Timeouts. One timerfd per export ticks every TICK_MS and checks every
 * connection: no handshake within handshake-timeout, queued replies that
 * did not move a byte for send-timeout (a slow reader, which would pin its
 * buffers), and, with idle-timeout, nothing in flight, nothing to send and
 * no input for that long. Each closes the connection with one log line.
 *
 * Backpressure. A connection stops taking new requests (drops EPOLLIN)
 * while it holds CONN_MAX_REQUESTS requests (in flight or with an unsent
 * reply) or CONN_MAX_BYTES of request buffers, or CONN_MAX_SMALL_OUTPUT
 * bytes of unsent handshake or error replies, or the export's connections
 * together hold max-buffer bytes of request buffers and it holds any, or
 * the server is quiescing. A WRITE whose payload is being read always
 * reads on: its buffer is already counted, and stopping half-way would
 * hold it forever. Reading resumes from the done callback, the socket
 * becoming writable, or - when another connection's buffers free the
 * export's budget - the export's wake eventfd. Bytes already read wait in
 * the connection's input buffer. One request may take a connection or the
 * export past its byte limit (so a 32 MiB request always fits), and a
 * connection that holds no buffer always gets its next request through,
 * so nothing ever waits for budget it alone could free.
 *
 * Lifetime. A connection object holds a reference for its socket and one
 * per request in flight on the device. When the client goes away (EOF,
 * a reset, a protocol violation, a timeout), the socket is closed at once
 * and the replies already queued are dropped; the object lives on until
 * the last in-flight request's done callback, which then finds the socket
 * gone and just frees the request.
 *
 * Logging. Every line a client can cause goes through export_log, at most
 * LOG_BURST lines per LOG_WINDOW_MS per export, then one line saying how
 * many were suppressed: a hostile client must not be able to fill stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "isolde/units.h"
#include "nbd_proto.h"
#include "json.h"
#include "server.h"
#include "unix_socket.h"

#define CONN_MAX_REQUESTS 128u
#define CONN_MAX_BYTES (32u << 20)
#define CONN_MAX_SMALL_OUTPUT (256u << 10)
#define IN_BUF_SIZE (64u << 10)
#define DIRECT_READ_MIN (16u << 10)  /* payload read straight into its buffer above this */
#define SMALL_ITEM_SIZE 4096u
#define NAME_MAX_LEN 256u
#define FINAL_FLUSH_MS 2000
#define MAX_REFUSING 16u             /* clients being refused at once; more are closed at accept */
#define REFUSE_TIMEOUT_MS 2000       /* a refused client gets this long to read why */
#define TICK_MS 1000                 /* how often the timeouts are checked */
#define LOG_BURST 5u                 /* client-caused log lines per window and export */
#define LOG_WINDOW_MS 1000

_Static_assert(NBD_MAX_BLOCK == SERVER_MAX_REQUEST, "the NBD maximum block size is the server's limit");

/* What the KEY=VALUE options of --export set; numbers in the units the keys name. */
struct nbd_limits {
	uint64_t max_connections;
	uint64_t handshake_timeout;  /* seconds */
	uint64_t idle_timeout;       /* seconds; 0: none */
	uint64_t send_timeout;       /* seconds */
	uint64_t max_buffer;         /* bytes */
};

static const struct nbd_limits default_limits = {
	.max_connections = 128,
	.handshake_timeout = 10,
	.idle_timeout = 0,
	.send_timeout = 30,
	.max_buffer = 256ull << 20,
};

struct nbd_export;

/* Bytes queued for a client: a reply (header + a READ's data) or small messages. */
struct out_item {
	struct out_item *next;
	uint8_t *data;
	size_t data_len;
	size_t sent;                 /* of hdr_len + data_len */
	uint32_t hdr_len;
	bool is_req;                 /* embedded in a struct nbd_req */
	uint8_t hdr[NBD_REPLY_MAX];
};

struct nbd_conn;

struct nbd_req {
	struct server_io sio;
	struct out_item out;         /* its reply */
	struct nbd_conn *conn;
	struct nbd_cmd cmd;
	uint8_t *buf;                /* READ and WRITE data, cmd.len bytes */
	bool flush_after;            /* FUA on TRIM / WRITE_ZEROES: a FLUSH before the reply */
};

struct nbd_conn {
	struct nbd_export *ex;
	struct nbd_conn *prev, *next;
	unsigned id;
	int fd;
	unsigned refs;               /* the socket's + one per request in flight + callers' */
	unsigned busy;               /* inside one of our handlers: done callbacks only queue */
	bool refusing;               /* accepted beyond the limit: told why, never served */
	bool closed;                 /* the socket is closed */
	bool eof;                    /* the client sends no more */
	bool broken;                 /* a socket error: close at the next update */
	bool waits_for_budget;       /* stopped reading because the export is over max-buffer */
	uint32_t events;             /* registered with the loop */
	unsigned nreq;               /* requests alive: in flight or reply unsent */
	unsigned inflight;           /* submitted, done not yet called */
	size_t req_bytes;            /* their buffers */
	size_t small_out;            /* unsent bytes of small items */
	int64_t started_ms;          /* accepted */
	int64_t input_ms;            /* last read that returned bytes */
	int64_t out_moved_ms;        /* the output queue last became non-empty or lost bytes */
	struct nbd_req *partial;     /* the WRITE whose payload is being read */
	struct out_item *out_head, *out_tail;
	uint8_t *in;
	size_t in_off, in_len;
	struct nbd_proto proto;
};

/* At most LOG_BURST lines per window; the rest are counted and reported once. */
struct log_limit {
	int64_t window_ms;           /* when the current window began */
	unsigned lines;              /* printed in it */
	unsigned long suppressed;    /* not printed since the last report */
};

struct nbd_export {
	struct isolde_server *srv;
	int listen_fd, timer_fd, wake_fd;
	bool is_unix, quiesced, listener_paused, wake_pending;
	dev_t sock_dev;
	ino_t sock_ino;
	char path[108];
	char address[320];
	char name[NAME_MAX_LEN + 1];
	char refusal[NAME_MAX_LEN + 128]; /* what a client beyond the limit is told */
	struct nbd_limits lim;
	struct nbd_proto_config cfg;
	struct nbd_conn *conns;      /* every connection object, refusing ones too */
	unsigned nconns;             /* served connections with an open socket */
	unsigned nlive;              /* served connection objects: what the limit counts */
	unsigned nrefusing;          /* refusing connections with an open socket */
	unsigned next_id;
	unsigned inflight;
	uint64_t requests;           /* completed */
	uint64_t refused;            /* clients turned away, since the start */
	uint64_t timed_out;          /* connections closed by a timeout, since the start */
	uint64_t buf_bytes;          /* request buffers of all connections: what max-buffer bounds */
	struct log_limit log;
};

static void conn_update(struct nbd_conn *c);
static void conn_set_events(struct nbd_conn *c);

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- logging what clients cause ---- */

static void log_report_suppressed(struct nbd_export *ex, int64_t now)
{
	if (now - ex->log.window_ms < LOG_WINDOW_MS)
		return;
	if (ex->log.suppressed)
		server_log(ex->srv, "nbd %s: %lu messages suppressed", ex->address, ex->log.suppressed);
	ex->log.window_ms = now;
	ex->log.lines = 0;
	ex->log.suppressed = 0;
}

static void export_log(struct nbd_export *ex, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void export_log(struct nbd_export *ex, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	log_report_suppressed(ex, now_ms());
	if (ex->log.lines >= LOG_BURST) {
		ex->log.suppressed++;
		return;
	}
	ex->log.lines++;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	server_log(ex->srv, "nbd %s: %s", ex->address, line);
}

/* ---- the export-wide buffer budget ---- */

static bool export_over_budget(const struct nbd_export *ex)
{
	return ex->buf_bytes >= ex->lim.max_buffer;
}

static void budget_take(struct nbd_conn *c, size_t n)
{
	c->req_bytes += n;
	c->ex->buf_bytes += n;
}

/*
 * Connections that stopped for the budget are woken through the export's
 * eventfd, not from here: this runs deep inside another connection's
 * handlers (its flush or close), where updating other connections could
 * recurse without bound.
 */
static void budget_give_back(struct nbd_conn *c, size_t n)
{
	struct nbd_export *ex = c->ex;
	bool was_over = export_over_budget(ex);
	uint64_t one = 1;

	c->req_bytes -= n;
	ex->buf_bytes -= n;
	if (was_over && !export_over_budget(ex) && !ex->wake_pending && ex->wake_fd >= 0 &&
	    write(ex->wake_fd, &one, sizeof one) == sizeof one)
		ex->wake_pending = true;
}

/* ---- output ---- */

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

static void out_push(struct nbd_conn *c, struct out_item *it)
{
	it->next = NULL;
	if (c->out_tail) {
		c->out_tail->next = it;
	} else {
		c->out_head = it;
		c->out_moved_ms = now_ms(); /* the send-timeout counts from here */
	}
	c->out_tail = it;
}

static void req_release(struct nbd_req *req)
{
	struct nbd_conn *c = req->conn;

	c->nreq--;
	if (req->buf)
		budget_give_back(c, req->cmd.len);
	free(req->buf);
	free(req);
}

static void out_release(struct nbd_conn *c, struct out_item *it)
{
	if (it->is_req) {
		req_release((struct nbd_req *)((char *)it - offsetof(struct nbd_req, out)));
		return;
	}
	c->small_out -= it->data_len;
	free(it);
}

/* The proto's messages: coalesced into small items. */
static void proto_send(void *ctx, const void *buf, size_t len)
{
	struct nbd_conn *c = ctx;
	const uint8_t *p = buf;

	while (len && !c->closed) {
		struct out_item *t = c->out_tail;
		if (!t || t->is_req || t->data_len == SMALL_ITEM_SIZE) {
			t = calloc(1, sizeof *t + SMALL_ITEM_SIZE);
			if (!t) {
				c->broken = true; /* a reply lost would desynchronise the client */
				return;
			}
			t->data = (uint8_t *)(t + 1);
			out_push(c, t);
		}
		size_t n = min_size(len, SMALL_ITEM_SIZE - t->data_len);
		memcpy(t->data + t->data_len, p, n);
		t->data_len += n;
		c->small_out += n;
		p += n;
		len -= n;
	}
}

static void conn_flush(struct nbd_conn *c)
{
	while (c->out_head && !c->closed && !c->broken) {
		struct iovec iov[64];
		size_t want = 0;
		int n = 0;

		for (struct out_item *it = c->out_head; it && n < 63; it = it->next) {
			size_t skip = it->sent;
			if (skip < it->hdr_len) {
				iov[n++] = (struct iovec){ it->hdr + skip, it->hdr_len - skip };
				skip = 0;
			} else {
				skip -= it->hdr_len;
			}
			if (it->data_len > skip)
				iov[n++] = (struct iovec){ it->data + skip, it->data_len - skip };
		}
		for (int i = 0; i < n; i++)
			want += iov[i].iov_len;
		ssize_t w = writev(c->fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				c->broken = true;
			return;
		}
		if (w > 0)
			c->out_moved_ms = now_ms();
		for (size_t left = (size_t)w; left && c->out_head;) {
			struct out_item *it = c->out_head;
			size_t rest = it->hdr_len + it->data_len - it->sent;
			if (left < rest) {
				it->sent += left;
				break;
			}
			left -= rest;
			c->out_head = it->next;
			if (!c->out_head)
				c->out_tail = NULL;
			out_release(c, it);
		}
		if ((size_t)w < want)
			return; /* the socket is full: EPOLLOUT says when to go on */
	}
}

/* ---- lifetime ---- */

static void conn_unref(struct nbd_conn *c)
{
	if (--c->refs)
		return;
	struct nbd_export *ex = c->ex;
	if (!c->refusing)
		ex->nlive--;
	if (c->prev)
		c->prev->next = c->next;
	else
		ex->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

static void listener_resume(struct nbd_export *ex)
{
	if (ex->listener_paused && !ex->quiesced && ex->listen_fd >= 0 &&
	    server_modify(ex->srv, ex->listen_fd, EPOLLIN) == 0)
		ex->listener_paused = false;
}

static void conn_close(struct nbd_conn *c)
{
	if (c->closed)
		return;
	c->closed = true;
	server_unwatch(c->ex->srv, c->fd);
	close(c->fd);
	c->fd = -1;
	while (c->out_head) {
		struct out_item *it = c->out_head;
		c->out_head = it->next;
		out_release(c, it);
	}
	c->out_tail = NULL;
	if (c->partial) {
		req_release(c->partial);
		c->partial = NULL;
	}
	free(c->in);
	c->in = NULL;
	if (c->refusing)
		c->ex->nrefusing--;
	else
		c->ex->nconns--;
	listener_resume(c->ex);
	conn_unref(c); /* the socket's reference */
}

/* ---- requests ---- */

static struct nbd_req *req_new(struct nbd_conn *c, const struct nbd_cmd *cmd, bool with_buf)
{
	struct nbd_req *req = calloc(1, sizeof *req);

	if (!req)
		return NULL;
	if (with_buf && !(req->buf = malloc(cmd->len))) {
		free(req);
		return NULL;
	}
	req->conn = c;
	req->cmd = *cmd;
	c->nreq++;
	if (with_buf)
		budget_take(c, cmd->len);
	return req;
}

static void *conn_payload_buffer(void *ctx, const struct nbd_cmd *cmd)
{
	struct nbd_conn *c = ctx;
	struct nbd_req *req = req_new(c, cmd, true);

	if (!req)
		return NULL;
	c->partial = req;
	return req->buf;
}

static void req_done(struct server_io *sio)
{
	struct nbd_req *req = sio->ctx;
	struct nbd_conn *c = req->conn;
	int result = sio->result;

	/* The FLUSH that makes it FUA - unless the client left. */
	if (result == 0 && !c->closed && req->flush_after) {
		req->flush_after = false;
		sio->op = ISOLDE_BLK_OP_FLUSH;
		sio->flags = 0;
		sio->offset = 0;
		sio->len = 0;
		server_submit(c->ex->srv, sio);
		return;
	}
	c->inflight--;
	c->ex->inflight--;
	c->ex->requests++;
	if (c->closed) {
		req_release(req); /* the client left; nobody to answer */
		conn_unref(c);
		return;
	}
	uint32_t err = nbd_errno(result);
	req->out.hdr_len = (uint32_t)nbd_proto_reply(&c->proto, req->out.hdr, &req->cmd, err,
						     err ? strerror(-result) : NULL);
	if (!err && req->cmd.type == NBD_CMD_READ) {
		req->out.data = req->buf;
		req->out.data_len = req->cmd.len;
	}
	req->out.is_req = true;
	out_push(c, &req->out);
	/*
	 * Completions come in batches (the loop collects up to 128 at a time).
	 * While more of this connection's requests are in flight, the reply
	 * waits for EPOLLOUT, which the loop reports as soon as this batch is
	 * done: one writev for the batch instead of one per reply. The last
	 * reply in flight goes out at once, so QD1 pays nothing.
	 */
	if (!c->busy) { /* else inside our own handler, which flushes when it is done */
		if (c->inflight > 0)
			conn_set_events(c);
		else
			conn_update(c);
	}
	conn_unref(c); /* the request's reference */
}

static void conn_request(void *ctx, const struct nbd_cmd *cmd, void *buf)
{
	struct nbd_conn *c = ctx;
	struct nbd_req *req;

	if (cmd->type == NBD_CMD_WRITE) {
		req = c->partial;
		c->partial = NULL;
		if (!req || req->buf != buf)
			abort(); /* the proto asked conn_payload_buffer for this very buffer */
	} else {
		req = req_new(c, cmd, cmd->type == NBD_CMD_READ);
		if (!req) {
			uint8_t r[NBD_REPLY_MAX];
			proto_send(c, r, nbd_proto_reply(&c->proto, r, cmd, NBD_ENOMEM, "out of memory"));
			return;
		}
	}
	struct server_io *sio = &req->sio;
	sio->done = req_done;
	sio->ctx = req;
	sio->offset = cmd->offset;
	sio->len = cmd->len;
	switch (cmd->type) {
	case NBD_CMD_READ:
		sio->op = ISOLDE_BLK_OP_READ;
		sio->buf = req->buf;
		break;
	case NBD_CMD_WRITE:
		sio->op = ISOLDE_BLK_OP_WRITE;
		sio->buf = req->buf;
		if (cmd->flags & NBD_CMD_FLAG_FUA)
			sio->flags = ISOLDE_BLK_F_FUA;
		break;
	case NBD_CMD_FLUSH:
		/* FUA on a flush adds nothing: a flush is durable when answered. */
		sio->op = ISOLDE_BLK_OP_FLUSH;
		sio->offset = 0;
		sio->len = 0;
		break;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		if (cmd->type == NBD_CMD_TRIM)
			sio->op = ISOLDE_BLK_OP_DISCARD;
		else {
			sio->op = ISOLDE_BLK_OP_WRITE_ZEROES;
			/* Without NO_HOLE the range may be deallocated, as long as it reads back as zeroes. */
			if (!(cmd->flags & NBD_CMD_FLAG_NO_HOLE))
				sio->flags = ISOLDE_BLK_F_MAY_UNMAP;
		}
		/* The ring carries FUA on writes only: durability here is a FLUSH after. */
		/* The whole range: the server splits what one ring request
		 * cannot carry. */
		req->flush_after = cmd->flags & NBD_CMD_FLAG_FUA;
		break;
	}
	c->inflight++;
	c->refs++;
	c->ex->inflight++;
	server_submit(c->ex->srv, sio);
}

static const struct nbd_proto_ops conn_proto_ops = {
	.send = proto_send,
	.payload_buffer = conn_payload_buffer,
	.request = conn_request,
};

/* ---- input ---- */

static bool conn_in_payload(const struct nbd_conn *c)
{
	void *dst;
	size_t want;

	return nbd_proto_payload_dest(&c->proto, &dst, &want);
}

/* The export's budget stops a connection only while it holds buffers of its own. */
static bool conn_blocked_by_budget(const struct nbd_conn *c)
{
	return export_over_budget(c->ex) && c->req_bytes > 0;
}

/* May the next request (or option) be parsed? Each may allocate or queue output. */
static bool conn_may_take_request(const struct nbd_conn *c)
{
	return c->nreq < CONN_MAX_REQUESTS && c->req_bytes < CONN_MAX_BYTES &&
	       c->small_out < CONN_MAX_SMALL_OUTPUT && !conn_blocked_by_budget(c);
}

/* May input be read and parsed? A WRITE's payload always may: its buffer is counted already. */
static bool conn_may_read(const struct nbd_conn *c)
{
	return !c->closed && !c->broken && !c->ex->quiesced && !nbd_proto_closing(&c->proto) &&
	       !nbd_proto_dead(&c->proto) && (conn_in_payload(c) || conn_may_take_request(c));
}

/* Parse what is buffered, while the limits allow. */
static void conn_process(struct nbd_conn *c)
{
	while (c->in_off < c->in_len && conn_may_read(c)) {
		size_t n = nbd_proto_feed(&c->proto, c->in + c->in_off, c->in_len - c->in_off);
		if (n == 0)
			break;
		c->in_off += n;
	}
	if (c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
}

static void conn_read(struct nbd_conn *c)
{
	while (conn_may_read(c) && !c->eof) {
		void *dst;
		size_t want;
		ssize_t n;

		if (c->in_off == c->in_len && nbd_proto_payload_dest(&c->proto, &dst, &want) &&
		    want >= DIRECT_READ_MIN) {
			/* A large payload goes straight into its request's buffer. */
			n = read(c->fd, dst, want);
			if (n > 0)
				nbd_proto_payload_received(&c->proto, (size_t)n);
		} else {
			if (c->in_off > 0 && c->in_len == IN_BUF_SIZE) {
				memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
				c->in_len -= c->in_off;
				c->in_off = 0;
			}
			want = IN_BUF_SIZE - c->in_len;
			if (want == 0)
				break; /* cannot happen: a parsable buffer is always consumed */
			n = read(c->fd, c->in + c->in_len, want);
			if (n > 0) {
				c->in_len += (size_t)n;
				conn_process(c);
			}
		}
		if (n > 0)
			c->input_ms = now_ms();
		if (n == 0) {
			c->eof = true;
			break;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				c->broken = true;
			break;
		}
		if ((size_t)n < want)
			break; /* most likely drained: the loop says when there is more */
	}
}

static void conn_set_events(struct nbd_conn *c)
{
	uint32_t ev = 0;
	bool may_read = conn_may_read(c);

	if (may_read && !c->eof)
		ev |= EPOLLIN;
	if (c->out_head)
		ev |= EPOLLOUT;
	/* The one stop nothing of this connection's own ends: the export's wake does. */
	c->waits_for_budget = !may_read && !c->closed && conn_blocked_by_budget(c);
	if (ev != c->events && server_modify(c->ex->srv, c->fd, ev) == 0)
		c->events = ev;
}

/* Input waits in the buffer while the limits allowed no more, and now they do. */
static bool conn_input_ready(const struct nbd_conn *c)
{
	return c->in_off < c->in_len && conn_may_read(c);
}

/*
 * After anything happened to a connection: parse what the limits now
 * allow, send what is queued, then close it or register what it waits for.
 * Sending may release requests and so lift a limit that stopped parsing;
 * input already buffered would then wait for an event that never comes
 * (the socket has nothing more), so it is parsed again at once.
 */
static void conn_update(struct nbd_conn *c)
{
	if (c->closed)
		return;
	c->refs++;
	c->busy++;
	do {
		conn_process(c);
		conn_flush(c);
	} while (!c->broken && conn_input_ready(c));
	c->busy--;
	if (nbd_proto_dead(&c->proto)) {
		export_log(c->ex, "client %u: %s; disconnecting", c->id, c->proto.why);
		conn_close(c);
	} else if (c->broken) {
		conn_close(c);
	} else if ((nbd_proto_closing(&c->proto) || c->eof) && c->inflight == 0 && !c->out_head) {
		conn_close(c); /* a soft disconnect, or EOF: everything answered */
	} else {
		conn_set_events(c);
	}
	conn_unref(c);
}

static void conn_event(void *ctx, uint32_t events)
{
	struct nbd_conn *c = ctx;

	c->refs++;
	c->busy++;
	if (events & EPOLLIN)
		conn_read(c);
	else if (events & (EPOLLHUP | EPOLLERR))
		c->broken = true; /* gone while we were not reading: nobody to answer */
	c->busy--;
	conn_update(c);
	conn_unref(c);
}

static void conn_start(struct nbd_export *ex, int fd, bool refusing)
{
	struct nbd_conn *c = calloc(1, sizeof *c);
	struct nbd_proto_config cfg = ex->cfg;

	if (!c || !(c->in = malloc(IN_BUF_SIZE))) {
		free(c);
		close(fd);
		return;
	}
	if (!ex->is_unix) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	c->ex = ex;
	c->fd = fd;
	c->id = ++ex->next_id;
	c->refs = 1;
	c->events = EPOLLIN;
	c->refusing = refusing;
	c->started_ms = c->input_ms = now_ms();
	if (server_watch(ex->srv, fd, EPOLLIN, conn_event, c) != 0) {
		export_log(ex, "cannot watch fd %d; closing client %u", fd, c->id);
		free(c->in);
		free(c);
		close(fd);
		return;
	}
	c->next = ex->conns;
	if (ex->conns)
		ex->conns->prev = c;
	ex->conns = c;
	if (refusing) {
		ex->nrefusing++;
		cfg.refusal = ex->refusal;
	} else {
		ex->nconns++;
		ex->nlive++;
	}
	nbd_proto_init(&c->proto, &cfg, &conn_proto_ops, c);
	conn_update(c);
}

/* ---- accepting clients ---- */

static void listener_pause(struct nbd_export *ex)
{
	if (!ex->listener_paused && server_modify(ex->srv, ex->listen_fd, 0) == 0)
		ex->listener_paused = true;
}

/* A client beyond max-connections: told why while there is room for that, else just closed. */
static void refuse(struct nbd_export *ex, int fd)
{
	ex->refused++;
	if (ex->nrefusing >= MAX_REFUSING) {
		export_log(ex, "closing client %u unanswered: at max-connections=%llu with %u clients being "
			   "refused", ++ex->next_id, (unsigned long long)ex->lim.max_connections, ex->nrefusing);
		close(fd);
		return;
	}
	export_log(ex, "refusing client %u: at max-connections=%llu", ex->next_id + 1,
		   (unsigned long long)ex->lim.max_connections);
	conn_start(ex, fd, true);
}

static void listener_event(void *ctx, uint32_t events)
{
	struct nbd_export *ex = ctx;

	(void)events;
	while (!ex->quiesced) {
		int fd = accept4(ex->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Do not spin on a level-triggered listener: wait for a close. */
				export_log(ex, "accept: %s; waiting for a client to leave", strerror(errno));
				listener_pause(ex);
			}
			return;
		}
		if (ex->nlive >= ex->lim.max_connections)
			refuse(ex, fd);
		else
			conn_start(ex, fd, false);
	}
}

/* ---- timeouts and wake-ups ---- */

/* True if c is to be closed now; then the reason was logged (refusals close quietly). */
static bool conn_deadline_passed(struct nbd_conn *c, int64_t now)
{
	const struct nbd_limits *lim = &c->ex->lim;
	unsigned long long s;

	if (c->closed)
		return false; /* only waiting for requests in flight */
	if (c->refusing)
		return now - c->started_ms >= REFUSE_TIMEOUT_MS;
	if (!c->proto.transmission && now - c->started_ms >= (int64_t)lim->handshake_timeout * 1000) {
		s = lim->handshake_timeout;
		export_log(c->ex, "client %u: no handshake within %llu s (handshake-timeout); disconnecting",
			   c->id, s);
		return true;
	}
	if (c->out_head && now - c->out_moved_ms >= (int64_t)lim->send_timeout * 1000) {
		s = lim->send_timeout;
		export_log(c->ex, "client %u: read none of its replies for %llu s (send-timeout); "
			   "disconnecting a slow reader", c->id, s);
		return true;
	}
	if (lim->idle_timeout && c->proto.transmission && c->inflight == 0 && !c->out_head &&
	    now - c->input_ms >= (int64_t)lim->idle_timeout * 1000) {
		s = lim->idle_timeout;
		export_log(c->ex, "client %u: idle for %llu s (idle-timeout); disconnecting", c->id, s);
		return true;
	}
	return false;
}

static void export_tick(void *ctx, uint32_t events)
{
	struct nbd_export *ex = ctx;
	uint64_t expirations;
	int64_t now = now_ms();

	(void)events;
	if (read(ex->timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
		return;
	log_report_suppressed(ex, now);
	for (struct nbd_conn *c = ex->conns, *next; c; c = next) {
		c->refs++;
		if (conn_deadline_passed(c, now)) {
			if (!c->refusing)
				ex->timed_out++;
			conn_close(c);
		}
		next = c->next;
		conn_unref(c);
	}
}

/* The export's buffers fell below max-buffer: connections that stopped for it go on. */
static void export_wake(void *ctx, uint32_t events)
{
	struct nbd_export *ex = ctx;
	uint64_t n;

	(void)events;
	if (read(ex->wake_fd, &n, sizeof n) < 0 && errno != EAGAIN)
		return;
	ex->wake_pending = false;
	for (struct nbd_conn *c = ex->conns, *next; c; c = next) {
		c->refs++;
		if (c->waits_for_budget && !c->closed) {
			c->waits_for_budget = false;
			conn_update(c);
		}
		next = c->next;
		conn_unref(c);
	}
}

/* ---- the export ---- */

static int listen_tcp(struct nbd_export *ex, const char *hostport, char *err, size_t errlen)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	int fd = -1, r;

	if (!colon || !colon[1] || (size_t)(colon - hostport) >= sizeof host) {
		snprintf(err, errlen, "nbd:tcp:%s: expected HOST:PORT (HOST may be empty for 127.0.0.1)",
			 hostport);
		return -1;
	}
	memcpy(host, hostport, (size_t)(colon - hostport));
	host[colon - hostport] = '\0';
	size_t hlen = strlen(host);
	if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') { /* [IPv6] */
		memmove(host, host + 1, hlen - 2);
		host[hlen - 2] = '\0';
	}
	if (!host[0])
		snprintf(host, sizeof host, "127.0.0.1"); /* loopback unless told otherwise */
	r = getaddrinfo(host, colon + 1, &hints, &res);
	if (r != 0) {
		snprintf(err, errlen, "nbd:tcp:%s: %s", hostport, gai_strerror(r));
		return -1;
	}
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		int one = 1;
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
			snprintf(err, errlen, "nbd:tcp:%s: %s", hostport, strerror(errno));
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0)
		return -1;

	/* The address as bound (the port too, if 0 asked for any). */
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
			port = ntohs(s6->sin6_port);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
			port = ntohs(s4->sin_port);
		}
	}
	snprintf(ex->address, sizeof ex->address, ss.ss_family == AF_INET6 ? "tcp:[%s]:%u" : "tcp:%s:%u",
		 ip, port);
	return fd;
}

/* ---- options: KEY=VALUE after the address ---- */

enum option_kind { OPTION_NAME, OPTION_COUNT, OPTION_SECONDS, OPTION_SIZE };

struct option_key {
	const char *key;
	enum option_kind kind;
	size_t field;                /* offsetof(struct nbd_limits, ...) for numbers */
	uint64_t min, max;
};

static const struct option_key option_keys[] = {
	{ "name", OPTION_NAME, 0, 0, 0 },
	{ "max-connections", OPTION_COUNT, offsetof(struct nbd_limits, max_connections), 1, 4096 },
	{ "handshake-timeout", OPTION_SECONDS, offsetof(struct nbd_limits, handshake_timeout), 1, 3600 },
	{ "idle-timeout", OPTION_SECONDS, offsetof(struct nbd_limits, idle_timeout), 0, 7 * 86400 },
	{ "send-timeout", OPTION_SECONDS, offsetof(struct nbd_limits, send_timeout), 1, 3600 },
	{ "max-buffer", OPTION_SIZE, offsetof(struct nbd_limits, max_buffer), 1ull << 20, 64ull << 30 },
};

#define NOPTION_KEYS (sizeof option_keys / sizeof option_keys[0])
#define OPTION_KEY_LIST "name, max-connections, handshake-timeout, idle-timeout, send-timeout, max-buffer"

static const struct option_key *option_find(const char *key, size_t len)
{
	for (size_t i = 0; i < NOPTION_KEYS; i++)
		if (strlen(option_keys[i].key) == len && memcmp(option_keys[i].key, key, len) == 0)
			return &option_keys[i];
	return NULL;
}

/* One KEY's VALUE into ex; -1 with why (which names the key) if it is not valid. */
static int option_set(struct nbd_export *ex, const struct option_key *k, const char *value, char *why,
		      size_t whylen)
{
	uint64_t v;

	if (k->kind == OPTION_NAME) {
		if (strlen(value) > NAME_MAX_LEN) {
			snprintf(why, whylen, "name: at most %u bytes", NAME_MAX_LEN);
			return -1;
		}
		snprintf(ex->name, sizeof ex->name, "%s", value);
		return 0;
	}
	int r = k->kind == OPTION_SIZE ? isolde_parse_size(value, &v) : isolde_parse_u64(value, &v);
	if (r != 0 || v < k->min || v > k->max) {
		if (k->kind == OPTION_SIZE)
			snprintf(why, whylen, "%s=%s: expected a size from %lluM to %lluG (like 256M)", k->key,
				 value, (unsigned long long)(k->min >> 20), (unsigned long long)(k->max >> 30));
		else
			snprintf(why, whylen, "%s=%s: expected %s from %llu to %llu", k->key, value,
				 k->kind == OPTION_SECONDS ? "seconds" : "a number", (unsigned long long)k->min,
				 (unsigned long long)k->max);
		return -1;
	}
	memcpy((char *)&ex->lim + k->field, &v, sizeof v);
	return 0;
}

/* opts: "KEY=VALUE[,KEY=VALUE...]", each KEY at most once; modified in place. */
static int options_parse(struct nbd_export *ex, char *opts, char *why, size_t whylen)
{
	bool seen[NOPTION_KEYS] = { false };

	for (char *item = opts, *next; item; item = next) {
		next = strchr(item, ',');
		if (next)
			*next++ = '\0';
		char *eq = strchr(item, '=');
		if (!eq) {
			snprintf(why, whylen, "'%s': expected KEY=VALUE (keys: " OPTION_KEY_LIST ")", item);
			return -1;
		}
		const struct option_key *k = option_find(item, (size_t)(eq - item));
		if (!k) {
			*eq = '\0';
			snprintf(why, whylen, "unknown option '%s' (keys: " OPTION_KEY_LIST ")", item);
			return -1;
		}
		if (seen[k - option_keys]) {
			snprintf(why, whylen, "%s: given twice", k->key);
			return -1;
		}
		seen[k - option_keys] = true;
		if (option_set(ex, k, eq + 1, why, whylen) != 0)
			return -1;
	}
	return 0;
}

/* ---- the export's fds ---- */

static int listen_unix(struct nbd_export *ex, const char *path, char *why, size_t whylen)
{
	struct stat st;

	ex->is_unix = true;
	if (strlen(path) >= sizeof ex->path) {
		snprintf(why, whylen, "a socket path must be shorter than %zu bytes", sizeof ex->path);
		return -1;
	}
	memcpy(ex->path, path, strlen(path) + 1);
	ex->listen_fd = unix_listen(ex->path, why, whylen);
	if (ex->listen_fd < 0)
		return -1;
	if (stat(ex->path, &st) == 0) {
		ex->sock_dev = st.st_dev;
		ex->sock_ino = st.st_ino;
	}
	snprintf(ex->address, sizeof ex->address, "unix:%s", ex->path);
	return 0;
}

/* The listener, the tick and the wake-up, all watched by the loop. */
static int export_watch(struct nbd_export *ex)
{
	struct itimerspec tick = { .it_interval = { .tv_sec = TICK_MS / 1000 },
				   .it_value = { .tv_sec = TICK_MS / 1000 } };

	ex->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	ex->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ex->timer_fd < 0 || ex->wake_fd < 0 || timerfd_settime(ex->timer_fd, 0, &tick, NULL) != 0)
		return -1;
	if (server_watch(ex->srv, ex->timer_fd, EPOLLIN, export_tick, ex) != 0)
		return -1;
	if (server_watch(ex->srv, ex->wake_fd, EPOLLIN, export_wake, ex) != 0)
		return -1;
	return server_watch(ex->srv, ex->listen_fd, EPOLLIN, listener_event, ex);
}

static void close_watched(struct isolde_server *srv, int *fd)
{
	if (*fd < 0)
		return;
	server_unwatch(srv, *fd); /* nothing if it was never watched */
	close(*fd);
	*fd = -1;
}

/* Close the listener, removing its socket file only if it is still ours. */
static void export_unlisten(struct nbd_export *ex)
{
	struct stat st;

	if (ex->listen_fd < 0)
		return;
	close_watched(ex->srv, &ex->listen_fd);
	if (ex->is_unix && stat(ex->path, &st) == 0 && st.st_dev == ex->sock_dev && st.st_ino == ex->sock_ino)
		unlink(ex->path);
}

static void export_close_fds(struct nbd_export *ex)
{
	export_unlisten(ex);
	close_watched(ex->srv, &ex->timer_fd);
	close_watched(ex->srv, &ex->wake_fd);
}

static void export_configure(struct nbd_export *ex)
{
	struct isolde_server *srv = ex->srv;

	ex->cfg.size = server_device_size(srv);
	ex->cfg.readonly = server_readonly(srv);
	ex->cfg.min_block = server_alignment(srv);
	ex->cfg.multi_conn = true; /* see the top of this file */
	ex->cfg.name = ex->name;
	ex->cfg.description = "isolde: a disk image served through an isolated driver";
	snprintf(ex->refusal, sizeof ex->refusal,
		 "export '%s' has reached its limit of %llu connection%s; try again later", ex->name,
		 (unsigned long long)ex->lim.max_connections, ex->lim.max_connections == 1 ? "" : "s");
}

/* SPEC = unix:PATH | tcp:HOST:PORT, then ",KEY=VALUE..." (PATH and VALUEs hold no comma). */
static int start(struct isolde_server *srv, const char *spec, void **state, char *err, size_t errlen)
{
	struct nbd_export *ex = calloc(1, sizeof *ex);
	char where[512], why[256] = "";

	if (!ex) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	ex->srv = srv;
	ex->listen_fd = ex->timer_fd = ex->wake_fd = -1;
	ex->lim = default_limits;
	if (strlen(spec) >= sizeof where) {
		snprintf(err, errlen, "--export nbd:%s: too long", spec);
		goto fail;
	}
	snprintf(where, sizeof where, "%s", spec);
	char *opts = strchr(where, ',');
	if (opts)
		*opts++ = '\0';
	if (opts && options_parse(ex, opts, why, sizeof why) != 0) {
		snprintf(err, errlen, "--export nbd:%s: %s", spec, why);
		goto fail;
	}
	if (strncmp(where, "unix:", 5) == 0 && where[5]) {
		if (listen_unix(ex, where + 5, why, sizeof why) != 0) {
			snprintf(err, errlen, "--export nbd:%s: %s", spec, why);
			goto fail;
		}
	} else if (strncmp(where, "tcp:", 4) == 0) {
		ex->listen_fd = listen_tcp(ex, where + 4, err, errlen);
		if (ex->listen_fd < 0)
			goto fail;
	} else {
		snprintf(err, errlen, "--export nbd:%s: expected nbd:unix:PATH or nbd:tcp:HOST:PORT "
			 "(optionally followed by ,KEY=VALUE: " OPTION_KEY_LIST ")", spec);
		goto fail;
	}
	export_configure(ex);
	if (export_watch(ex) != 0) {
		snprintf(err, errlen, "--export nbd:%s: cannot set up its event sources: %s", spec, strerror(errno));
		goto fail;
	}
	server_log(srv, "nbd export on %s, name '%s'%s; at most %llu connections, %llu MiB of buffers", ex->address,
		   ex->name, ex->cfg.readonly ? ", read-only" : "", (unsigned long long)ex->lim.max_connections,
		   (unsigned long long)(ex->lim.max_buffer >> 20));
	*state = ex;
	return 0;
fail:
	export_close_fds(ex);
	free(ex);
	return -1;
}

static void quiesce(void *state)
{
	struct nbd_export *ex = state;

	ex->quiesced = true;
	if (ex->listen_fd >= 0)
		listener_pause(ex);
	/* Stop reading; what is in flight completes and is answered. */
	for (struct nbd_conn *c = ex->conns, *next; c; c = next) {
		c->refs++;
		conn_update(c);
		next = c->next;
		conn_unref(c);
	}
}

static void stop(void *state)
{
	struct nbd_export *ex = state;
	int64_t deadline = now_ms() + FINAL_FLUSH_MS;

	export_close_fds(ex);
	for (struct nbd_conn *c = ex->conns, *next; c; c = next) {
		c->refs++;
		/* Replies still queued get a short chance to leave. */
		while (!c->closed && c->out_head && !c->broken && now_ms() < deadline) {
			struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
			if (poll(&pfd, 1, (int)(deadline - now_ms())) <= 0)
				break;
			conn_flush(c);
		}
		conn_close(c);
		next = c->next;
		conn_unref(c);
	}
	/*
	 * A connection still alive has requests in flight: the server gave up
	 * draining them and nothing will complete them now. They, and the
	 * export they point to, are left allocated for the process to exit.
	 */
	if (!ex->conns)
		free(ex);
}

static void describe(void *state, FILE *f)
{
	struct nbd_export *ex = state;

	fputs("{\"kind\": \"nbd\", \"address\": ", f);
	json_write_string(f, ex->address);
	fputs(", \"name\": ", f);
	json_write_string(f, ex->name);
	fprintf(f, ", \"readonly\": %s, \"connections\": %u, \"requests\": %llu, \"inflight\": %u",
		ex->cfg.readonly ? "true" : "false", ex->nconns, (unsigned long long)ex->requests,
		ex->inflight);
	fprintf(f, ", \"max_connections\": %llu, \"refusing\": %u, \"refused\": %llu, \"timed_out\": %llu"
		", \"buffer_bytes\": %llu, \"max_buffer\": %llu}",
		(unsigned long long)ex->lim.max_connections, ex->nrefusing, (unsigned long long)ex->refused,
		(unsigned long long)ex->timed_out, (unsigned long long)ex->buf_bytes,
		(unsigned long long)ex->lim.max_buffer);
}

static unsigned inflight(void *state)
{
	return ((struct nbd_export *)state)->inflight;
}

static unsigned connections(void *state)
{
	return ((struct nbd_export *)state)->nconns;
}

const struct export_ops nbd_export_ops = {
	.scheme = "nbd", .start = start, .quiesce = quiesce, .stop = stop, .describe = describe,
	.inflight = inflight, .connections = connections,
};
