// SPDX-License-Identifier: MIT
/*
 * libFuzzer target for the NBD protocol state machine (src/export/nbd_proto.c):
 * arbitrary client bytes through the handshake and the transmission phase.
 *
 * The first input byte chooses the configuration (read-only, a name, a
 * refused connection) and how the rest is cut into the pieces a socket
 * would deliver; the rest is what the client sends. Every request the
 * state machine hands over is checked against what it promises
 * (nbd_proto.h) - inside the export, non-empty, at most NBD_MAX_BLOCK for
 * READ/WRITE, no write to a read-only export, nothing at all on a refused
 * connection - and answered at once, the way src/export/nbd.c would;
 * anything else aborts, which libFuzzer reports as a crash. ASan and UBSan
 * catch the rest. Built by tests/fuzz/run.sh (clang) or by meson when the compiler is
 * clang; tests/fuzz/replay.c runs a corpus through it without libFuzzer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd_proto.h"

#define EXPORT_SIZE (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct harness {
	struct nbd_proto p;
	uint8_t *payload;       /* the buffer handed out for the current WRITE */
	uint32_t payload_len;
	size_t sent;            /* bytes the server queued */
	unsigned requests;
};

static void check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "nbd_proto broke its promise: %s\n", what);
		abort();
	}
}

static void h_send(void *ctx, const void *buf, size_t len)
{
	struct harness *h = ctx;
	volatile uint8_t sink = 0;

	check(len > 0, "empty send");
	for (size_t i = 0; i < len; i++) /* let ASan see every byte */
		sink ^= ((const uint8_t *)buf)[i];
	(void)sink;
	h->sent += len;
}

static void *h_payload_buffer(void *ctx, const struct nbd_cmd *cmd)
{
	struct harness *h = ctx;

	check(!h->p.cfg.refusal, "a payload on a refused connection");
	check(cmd->type == NBD_CMD_WRITE, "payload for a command other than WRITE");
	check(cmd->len > 0 && cmd->len <= NBD_MAX_BLOCK, "payload length");
	check(h->payload == NULL, "a second payload while one is being read");
	h->payload = malloc(cmd->len);
	h->payload_len = cmd->len;
	return h->payload;
}

static void h_request(void *ctx, const struct nbd_cmd *cmd, void *buf)
{
	struct harness *h = ctx;
	const struct nbd_proto_config *cfg = &h->p.cfg;
	uint8_t reply[NBD_REPLY_MAX];

	check(h->p.transmission, "request before the transmission phase");
	check(!cfg->refusal, "a request on a refused connection");
	switch (cmd->type) {
	case NBD_CMD_READ:
	case NBD_CMD_WRITE:
		check(cmd->len > 0 && cmd->len <= NBD_MAX_BLOCK, "READ/WRITE length");
		break;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		check(cmd->len > 0, "empty TRIM/WRITE_ZEROES");
		break;
	case NBD_CMD_FLUSH:
		break;
	default:
		check(0, "a command the export does not carry out");
	}
	if (cmd->type != NBD_CMD_FLUSH)
		check(cmd->offset <= cfg->size && cmd->len <= cfg->size - cmd->offset, "range outside the export");
	if (cfg->readonly)
		check(cmd->type == NBD_CMD_READ || cmd->type == NBD_CMD_FLUSH, "write to a read-only export");
	if (cmd->type == NBD_CMD_WRITE) {
		check(buf == h->payload && cmd->len == h->payload_len, "WRITE without its payload");
		free(h->payload);
		h->payload = NULL;
	} else {
		check(buf == NULL, "a buffer with a command other than WRITE");
	}
	/* Answer at once, success or a device error, as the export would. */
	uint32_t err = (h->requests++ % 7 == 3) ? nbd_errno(-5) : 0;
	size_t n = nbd_proto_reply(&h->p, reply, cmd, err, err ? "Input/output error" : NULL);
	check(n > 0 && n <= sizeof reply, "reply size");
	h_send(h, reply, n);
}

static const struct nbd_proto_ops ops = {
	.send = h_send, .payload_buffer = h_payload_buffer, .request = h_request,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct harness h; /* nbd_proto is large: keep it off the stack */
	struct nbd_proto_config cfg = { .size = EXPORT_SIZE, .multi_conn = true };

	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	data++;
	size--;
	cfg.readonly = mode & 1;
	cfg.name = (mode & 2) ? "disk" : "";
	cfg.description = (mode & 4) ? "fuzz" : NULL;
	/* How the bytes arrive: all at once, one by one, or in pieces of 2..33. */
	size_t piece = (mode >> 3) == 0 ? size : (mode >> 3) == 1 ? 1 : (size_t)(mode >> 3) + 1;
	/* The largest piece size also refuses the client (an export at its
	 * connection limit): the seeds' 0xff mode takes every stream through it. */
	if ((mode >> 3) == 31)
		cfg.refusal = "export 'disk' has reached its limit of 128 connections; try again later";

	memset(&h, 0, sizeof h);
	nbd_proto_init(&h.p, &cfg, &ops, &h);
	check(h.sent == 18, "greeting");
	size_t off = 0;
	while (off < size) {
		size_t len = size - off < piece ? size - off : piece;
		void *dst;
		size_t want;
		/* Sometimes take a payload the way nbd.c does: straight into its buffer. */
		if ((mode & 4) && nbd_proto_payload_dest(&h.p, &dst, &want)) {
			size_t n = want < len ? want : len;
			memcpy(dst, data + off, n);
			nbd_proto_payload_received(&h.p, n);
			off += n;
			continue;
		}
		size_t used = nbd_proto_feed(&h.p, data + off, len);
		check(used <= len, "consumed more than given");
		if (used == 0) {
			check(nbd_proto_closing(&h.p) || nbd_proto_dead(&h.p), "stuck while open");
			break;
		}
		off += used;
	}
	check(!cfg.refusal || !h.p.transmission, "a refused connection reached transmission");
	free(h.payload); /* a WRITE cut short, as when a client leaves mid-payload */
	h.payload = NULL;
	return 0;
}
