// SPDX-License-Identifier: MIT
/* The NBD protocol state machine: see nbd_proto.h. */
#include "nbd_proto.h"

#include <errno.h>
#include <string.h>

/* ---- big-endian fields ---- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* ---- state changes ---- */

static void die(struct nbd_proto *p, const char *why)
{
	p->state = NBD_ST_DEAD;
	p->why = why;
}

static void wind_down(struct nbd_proto *p, const char *why)
{
	p->state = NBD_ST_CLOSING;
	p->why = why;
}

static void expect(struct nbd_proto *p, enum nbd_state st)
{
	p->state = st;
	p->hdr_have = 0;
}

void nbd_proto_init(struct nbd_proto *p, const struct nbd_proto_config *cfg,
		    const struct nbd_proto_ops *ops, void *ctx)
{
	uint8_t greeting[18];

	memset(p, 0, sizeof *p);
	p->cfg = *cfg;
	if (!p->cfg.name)
		p->cfg.name = "";
	p->ops = ops;
	p->ctx = ctx;
	expect(p, NBD_ST_CLIENT_FLAGS);
	put64(greeting, NBD_MAGIC);
	put64(greeting + 8, NBD_OPT_MAGIC);
	put16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	ops->send(ctx, greeting, sizeof greeting);
}

uint16_t nbd_proto_transmission_flags(const struct nbd_proto *p)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH;

	if (p->cfg.readonly)
		f |= NBD_FLAG_READ_ONLY;
	else
		f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
	if (p->cfg.multi_conn)
		f |= NBD_FLAG_CAN_MULTI_CONN;
	/* A read is always answered with one data chunk, so "don't fragment"
	 * costs nothing; it only exists with structured replies. */
	if (p->structured)
		f |= NBD_FLAG_SEND_DF;
	return f;
}

/* ---- handshake ---- */

static void opt_reply(struct nbd_proto *p, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[20];

	put64(h, NBD_REP_MAGIC);
	put32(h + 8, p->opt);
	put32(h + 12, type);
	put32(h + 16, len);
	p->ops->send(p->ctx, h, sizeof h);
	if (len)
		p->ops->send(p->ctx, data, len);
}

static void opt_error(struct nbd_proto *p, uint32_t type, const char *msg)
{
	opt_reply(p, type, msg, (uint32_t)min_size(strlen(msg), NBD_MAX_STRING));
}

/* The one export answers to its own name and to "", the default export. */
static bool export_known(const struct nbd_proto *p, const uint8_t *name, uint32_t len)
{
	return len == 0 || (len == strlen(p->cfg.name) && memcmp(name, p->cfg.name, len) == 0);
}

static void enter_transmission(struct nbd_proto *p)
{
	p->transmission = true;
	expect(p, NBD_ST_REQ_HEADER);
}

static void do_export_name(struct nbd_proto *p)
{
	uint8_t r[8 + 2 + 124] = { 0 };

	if (!export_known(p, p->opt_data, p->opt_len)) {
		/* This option cannot answer an error: the session ends. */
		die(p, "NBD_OPT_EXPORT_NAME asked for an export that does not exist");
		return;
	}
	put64(r, p->cfg.size);
	put16(r + 8, nbd_proto_transmission_flags(p));
	p->ops->send(p->ctx, r, p->no_zeroes ? 10 : sizeof r);
	enter_transmission(p);
}

static void info_reply(struct nbd_proto *p, uint16_t type, const void *payload, uint32_t len)
{
	uint8_t buf[2 + NBD_MAX_STRING];

	put16(buf, type);
	memcpy(buf + 2, payload, len);
	opt_reply(p, NBD_REP_INFO, buf, 2 + len);
}

/* NBD_OPT_INFO and NBD_OPT_GO: name length, name, count of info requests, requests. */
static void do_info_go(struct nbd_proto *p)
{
	const uint8_t *d = p->opt_data;
	uint32_t len = p->opt_len, name_len, nreq;
	bool want_name = false, want_description = false;
	uint8_t buf[14];

	if (len < 6 || (name_len = get32(d)) > len - 6) {
		opt_error(p, NBD_REP_ERR_INVALID, "malformed option: name length beyond the option");
		return;
	}
	nreq = get16(d + 4 + name_len);
	if ((uint64_t)len != 6ull + name_len + 2ull * nreq) {
		opt_error(p, NBD_REP_ERR_INVALID, "malformed option: length does not match its contents");
		return;
	}
	if (!export_known(p, d + 4, name_len)) {
		opt_error(p, NBD_REP_ERR_UNKNOWN, "no such export: this server has one, named in NBD_OPT_LIST");
		return;
	}
	for (uint32_t i = 0; i < nreq; i++) {
		uint16_t type = get16(d + 6 + name_len + 2 * i);
		want_name |= type == NBD_INFO_NAME;
		want_description |= type == NBD_INFO_DESCRIPTION;
	}
	put64(buf, p->cfg.size);
	put16(buf + 8, nbd_proto_transmission_flags(p));
	info_reply(p, NBD_INFO_EXPORT, buf, 10);
	/* Always sent: a 32 MiB maximum is not the protocol's default. */
	put32(buf, p->cfg.min_block > 1 ? p->cfg.min_block : 1);
	put32(buf + 4, NBD_PREFERRED_BLOCK);
	put32(buf + 8, NBD_MAX_BLOCK);
	info_reply(p, NBD_INFO_BLOCK_SIZE, buf, 12);
	if (want_name)
		info_reply(p, NBD_INFO_NAME, p->cfg.name,
			   (uint32_t)min_size(strlen(p->cfg.name), NBD_MAX_STRING));
	if (want_description && p->cfg.description)
		info_reply(p, NBD_INFO_DESCRIPTION, p->cfg.description,
			   (uint32_t)min_size(strlen(p->cfg.description), NBD_MAX_STRING));
	opt_reply(p, NBD_REP_ACK, NULL, 0);
	if (p->opt == NBD_OPT_GO)
		enter_transmission(p);
}

/* An option whose data was read into opt_data. */
static void option_read(struct nbd_proto *p)
{
	expect(p, NBD_ST_OPT_HEADER);
	if (p->opt == NBD_OPT_EXPORT_NAME)
		do_export_name(p);
	else
		do_info_go(p);
}

/* An option whose data was skipped: answer it from its number and length. */
static void option_skipped(struct nbd_proto *p)
{
	expect(p, NBD_ST_OPT_HEADER);
	if (p->cfg.refusal && p->opt != NBD_OPT_ABORT) {
		opt_error(p, NBD_REP_ERR_POLICY, p->cfg.refusal);
		return;
	}
	switch (p->opt) {
	case NBD_OPT_ABORT:
		/* Any data is ignored, as the protocol asks. */
		opt_reply(p, NBD_REP_ACK, NULL, 0);
		wind_down(p, "the client aborted the handshake");
		break;
	case NBD_OPT_LIST:
		if (p->opt_len) {
			opt_error(p, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
		} else {
			uint8_t buf[4 + NBD_MAX_STRING];
			uint32_t n = (uint32_t)min_size(strlen(p->cfg.name), NBD_MAX_STRING);
			put32(buf, n);
			memcpy(buf + 4, p->cfg.name, n);
			opt_reply(p, NBD_REP_SERVER, buf, 4 + n);
			opt_reply(p, NBD_REP_ACK, NULL, 0);
		}
		break;
	case NBD_OPT_STRUCTURED_REPLY:
		if (p->opt_len) {
			opt_error(p, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
		} else {
			p->structured = true;
			opt_reply(p, NBD_REP_ACK, NULL, 0);
		}
		break;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		opt_error(p, NBD_REP_ERR_TOO_BIG, "option too long");
		break;
	default: /* NBD_OPT_STARTTLS (no TLS here), metadata contexts, anything newer */
		opt_error(p, NBD_REP_ERR_UNSUP, "option not supported by this server");
		break;
	}
}

static void option_header(struct nbd_proto *p)
{
	if (get64(p->hdr) != NBD_OPT_MAGIC) {
		die(p, "bad option magic");
		return;
	}
	p->opt = get32(p->hdr + 8);
	p->opt_len = get32(p->hdr + 12);
	p->opt_have = 0;
	if (!p->fixed_newstyle && p->opt != NBD_OPT_EXPORT_NAME) {
		/* Plain newstyle knows no other option and no option replies. */
		die(p, "an option other than NBD_OPT_EXPORT_NAME without fixed newstyle");
		return;
	}
	if (p->cfg.refusal) {
		/* Every option is refused, so none needs its data. */
		if (p->opt == NBD_OPT_EXPORT_NAME) {
			wind_down(p, "refused (NBD_OPT_EXPORT_NAME cannot carry the reason)");
			return;
		}
		expect(p, NBD_ST_OPT_SKIP);
		if (p->opt_len == 0)
			option_skipped(p);
		return;
	}
	if (p->opt == NBD_OPT_EXPORT_NAME || p->opt == NBD_OPT_INFO || p->opt == NBD_OPT_GO) {
		if (p->opt_len <= NBD_OPT_MAX) {
			expect(p, NBD_ST_OPT_DATA);
			if (p->opt_len == 0)
				option_read(p);
			return;
		}
		if (p->opt == NBD_OPT_EXPORT_NAME) {
			die(p, "NBD_OPT_EXPORT_NAME with a name longer than any export's");
			return;
		}
	}
	expect(p, NBD_ST_OPT_SKIP);
	if (p->opt_len == 0)
		option_skipped(p);
}

static void client_flags(struct nbd_proto *p)
{
	uint32_t flags = get32(p->hdr);

	/* The protocol: the server MUST drop the connection on a flag it does not know. */
	if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		die(p, "unknown client flags");
		return;
	}
	p->fixed_newstyle = flags & NBD_FLAG_C_FIXED_NEWSTYLE;
	p->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
	expect(p, NBD_ST_OPT_HEADER);
}

/* ---- transmission ---- */

size_t nbd_proto_reply(const struct nbd_proto *p, uint8_t *out, const struct nbd_cmd *cmd,
		       uint32_t nbd_err, const char *msg)
{
	if (!p->structured) {
		put32(out, NBD_SIMPLE_REPLY_MAGIC);
		put32(out + 4, nbd_err);
		put64(out + 8, cmd->handle);
		return 16; /* a successful READ's data follows */
	}
	put32(out, NBD_STRUCTURED_REPLY_MAGIC);
	put16(out + 4, NBD_REPLY_FLAG_DONE);
	put64(out + 8, cmd->handle);
	if (nbd_err) {
		uint32_t n = msg ? (uint32_t)min_size(strlen(msg), NBD_MSG_MAX) : 0;
		put16(out + 6, NBD_REPLY_TYPE_ERROR);
		put32(out + 16, 6 + n);
		put32(out + 20, nbd_err);
		put16(out + 24, (uint16_t)n);
		memcpy(out + 26, msg ? msg : "", n);
		return 26 + n;
	}
	if (cmd->type == NBD_CMD_READ && cmd->len > 0) {
		/* One data chunk, sent only once all of it was read: it may carry DONE. */
		put16(out + 6, NBD_REPLY_TYPE_OFFSET_DATA);
		put32(out + 16, 8 + cmd->len);
		put64(out + 20, cmd->offset);
		return 28;
	}
	put16(out + 6, NBD_REPLY_TYPE_NONE);
	put32(out + 16, 0);
	return 20;
}

static void reply_now(struct nbd_proto *p, const struct nbd_cmd *cmd, uint32_t err, const char *msg)
{
	uint8_t r[NBD_REPLY_MAX];

	p->ops->send(p->ctx, r, nbd_proto_reply(p, r, cmd, err, msg));
}

static bool is_write(uint16_t type)
{
	return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM || type == NBD_CMD_WRITE_ZEROES;
}

/* 0, or the NBD error to answer the request with (and a message). */
static uint32_t check_request(const struct nbd_proto *p, const struct nbd_cmd *c, const char **msg)
{
	uint16_t allowed = NBD_CMD_FLAG_FUA; /* valid on every command */

	switch (c->type) {
	case NBD_CMD_READ:
		if (p->structured)
			allowed |= NBD_CMD_FLAG_DF;
		break;
	case NBD_CMD_WRITE:
	case NBD_CMD_FLUSH:
	case NBD_CMD_TRIM:
	case NBD_CMD_CACHE:
		break;
	case NBD_CMD_WRITE_ZEROES:
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		break;
	case NBD_CMD_BLOCK_STATUS:
		*msg = "no metadata context was negotiated";
		return NBD_EINVAL;
	default:
		*msg = "unknown command";
		return NBD_EINVAL;
	}
	if (c->flags & ~allowed) {
		*msg = "flag not valid for this command";
		return NBD_EINVAL;
	}
	if (p->cfg.readonly && is_write(c->type)) {
		*msg = "the export is read-only";
		return NBD_EPERM;
	}
	if (c->type == NBD_CMD_FLUSH)
		return 0; /* offset and length are reserved */
	if ((c->type == NBD_CMD_READ || c->type == NBD_CMD_WRITE) && c->len > NBD_MAX_BLOCK) {
		*msg = "length beyond the maximum block size";
		return NBD_EINVAL;
	}
	/* offset + len may wrap: compare without adding. */
	if (c->offset > p->cfg.size || c->len > p->cfg.size - c->offset) {
		*msg = "range beyond the end of the export";
		/* The protocol asks ENOSPC for writes past the end, EINVAL otherwise. */
		return c->type == NBD_CMD_WRITE || c->type == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
	}
	return 0;
}

static void skip_payload(struct nbd_proto *p, uint32_t err, const char *msg)
{
	p->skip_error = err;
	p->skip_msg = msg;
	p->payload_have = 0;
	expect(p, NBD_ST_PAYLOAD_SKIP);
}

static void request_header(struct nbd_proto *p)
{
	struct nbd_cmd *c = &p->cmd;
	const char *msg = NULL;
	uint32_t err;

	if (get32(p->hdr) != NBD_REQUEST_MAGIC) {
		die(p, "bad request magic");
		return;
	}
	c->flags = get16(p->hdr + 4);
	c->type = get16(p->hdr + 6);
	c->handle = get64(p->hdr + 8);
	c->offset = get64(p->hdr + 16);
	c->len = get32(p->hdr + 24);
	expect(p, NBD_ST_REQ_HEADER);
	if (c->type == NBD_CMD_DISC) {
		wind_down(p, "the client disconnected (NBD_CMD_DISC)");
		return;
	}
	err = check_request(p, c, &msg);
	if (c->type == NBD_CMD_WRITE && c->len > 0) {
		/*
		 * The payload follows whatever the answer. A refused write's
		 * payload is skipped, never stored, so even a 4 GiB one costs
		 * only the bandwidth the client spends on it; the connection
		 * stays in sync and the client gets a clean error.
		 */
		if (err) {
			skip_payload(p, err, msg);
			return;
		}
		p->payload = p->ops->payload_buffer(p->ctx, c);
		if (!p->payload) {
			skip_payload(p, NBD_ENOMEM, "out of memory");
			return;
		}
		p->payload_have = 0;
		expect(p, NBD_ST_PAYLOAD);
		return;
	}
	if (err) {
		reply_now(p, c, err, msg);
		return;
	}
	/* Nothing to do for an empty range, or for a cache hint. */
	if ((c->len == 0 && c->type != NBD_CMD_FLUSH) || c->type == NBD_CMD_CACHE) {
		reply_now(p, c, 0, NULL);
		return;
	}
	p->ops->request(p->ctx, c, NULL);
}

static void payload_complete(struct nbd_proto *p)
{
	uint8_t *buf = p->payload;

	p->payload = NULL;
	expect(p, NBD_ST_REQ_HEADER);
	p->ops->request(p->ctx, &p->cmd, buf);
}

bool nbd_proto_payload_dest(const struct nbd_proto *p, void **dst, size_t *want)
{
	if (p->state != NBD_ST_PAYLOAD)
		return false;
	*dst = p->payload + p->payload_have;
	*want = p->cmd.len - p->payload_have;
	return true;
}

void nbd_proto_payload_received(struct nbd_proto *p, size_t n)
{
	if (p->state != NBD_ST_PAYLOAD || n > p->cmd.len - p->payload_have)
		return;
	p->payload_have += (uint32_t)n;
	if (p->payload_have == p->cmd.len)
		payload_complete(p);
}

/* ---- input ---- */

/* Gather a fixed-size header; true once it is complete. */
static bool gather(struct nbd_proto *p, uint32_t size, const uint8_t *in, size_t len, size_t *used)
{
	size_t n = min_size(size - p->hdr_have, len);

	memcpy(p->hdr + p->hdr_have, in, n);
	p->hdr_have += (uint32_t)n;
	*used = n;
	return p->hdr_have == size;
}

size_t nbd_proto_feed(struct nbd_proto *p, const void *input, size_t len)
{
	const uint8_t *in = input;
	size_t used = 0, n;

	while (used < len) {
		const uint8_t *at = in + used;
		size_t avail = len - used;

		switch (p->state) {
		case NBD_ST_CLIENT_FLAGS:
			if (gather(p, 4, at, avail, &n)) {
				used += n;
				client_flags(p);
				return used;
			}
			used += n;
			break;
		case NBD_ST_OPT_HEADER:
			if (gather(p, 16, at, avail, &n)) {
				used += n;
				option_header(p);
				if (p->state != NBD_ST_OPT_DATA && p->state != NBD_ST_OPT_SKIP)
					return used; /* answered (or dead) */
				break;
			}
			used += n;
			break;
		case NBD_ST_OPT_DATA:
			n = min_size(p->opt_len - p->opt_have, avail);
			memcpy(p->opt_data + p->opt_have, at, n);
			p->opt_have += (uint32_t)n;
			used += n;
			if (p->opt_have == p->opt_len) {
				option_read(p);
				return used;
			}
			break;
		case NBD_ST_OPT_SKIP:
			n = min_size(p->opt_len - p->opt_have, avail);
			p->opt_have += (uint32_t)n;
			used += n;
			if (p->opt_have == p->opt_len) {
				option_skipped(p);
				return used;
			}
			break;
		case NBD_ST_REQ_HEADER:
			if (gather(p, 28, at, avail, &n)) {
				used += n;
				request_header(p);
				if (p->state != NBD_ST_PAYLOAD && p->state != NBD_ST_PAYLOAD_SKIP)
					return used;
				break;
			}
			used += n;
			break;
		case NBD_ST_PAYLOAD:
			n = min_size(p->cmd.len - p->payload_have, avail);
			memcpy(p->payload + p->payload_have, at, n);
			used += n;
			nbd_proto_payload_received(p, n);
			if (p->state != NBD_ST_PAYLOAD)
				return used;
			break;
		case NBD_ST_PAYLOAD_SKIP:
			n = min_size(p->cmd.len - p->payload_have, avail);
			p->payload_have += (uint32_t)n;
			used += n;
			if (p->payload_have == p->cmd.len) {
				expect(p, NBD_ST_REQ_HEADER);
				reply_now(p, &p->cmd, p->skip_error, p->skip_msg);
				return used;
			}
			break;
		case NBD_ST_CLOSING:
		case NBD_ST_DEAD:
			return used;
		}
	}
	return used;
}

/* ---- names ---- */

uint32_t nbd_errno(int neg_errno)
{
	switch (-neg_errno) {
	case 0: return 0;
	case EPERM:
	case EACCES:
	case EROFS: return NBD_EPERM;
	case ENOMEM: return NBD_ENOMEM;
	case EINVAL: return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG: return NBD_ENOSPC;
	case EOVERFLOW: return NBD_EOVERFLOW;
	case EOPNOTSUPP: return NBD_ENOTSUP;
	case ESHUTDOWN: return NBD_ESHUTDOWN;
	default: return NBD_EIO;
	}
}

const char *nbd_cmd_name(uint16_t type)
{
	switch (type) {
	case NBD_CMD_READ: return "read";
	case NBD_CMD_WRITE: return "write";
	case NBD_CMD_DISC: return "disc";
	case NBD_CMD_FLUSH: return "flush";
	case NBD_CMD_TRIM: return "trim";
	case NBD_CMD_CACHE: return "cache";
	case NBD_CMD_WRITE_ZEROES: return "write-zeroes";
	case NBD_CMD_BLOCK_STATUS: return "block-status";
	default: return "unknown";
	}
}
