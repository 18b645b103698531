/* SPDX-License-Identifier: MIT */
/*
 * The NBD protocol as a pure state machine: bytes from the client go in
 * (nbd_proto_feed), and what they mean comes out through three callbacks -
 * bytes to send back, a buffer for a write's payload, a validated request
 * to carry out. No sockets, no device, no allocation: the fuzz target in
 * tests/fuzz drives it with arbitrary bytes, and src/export/nbd.c drives it
 * with a socket and the server's device.
 *
 * It implements the fixed newstyle handshake (with NBD_OPT_EXPORT_NAME,
 * ABORT, LIST, INFO, GO and STRUCTURED_REPLY; every other option is
 * answered NBD_REP_ERR_UNSUP after its data is skipped) and the
 * transmission phase's request parser. The reference is the NBD protocol
 * document, doc/proto.md of github.com/NetworkBlockDevice/nbd.
 *
 * Every field from the client is untrusted. A request only reaches the
 * request callback if its command is READ, WRITE, FLUSH, TRIM or
 * WRITE_ZEROES, its flags are valid for it, its range lies inside the
 * export (offset + length cannot wrap: checked without adding), its length
 * is not 0 (FLUSH excepted) and at most NBD_MAX_BLOCK for READ and WRITE,
 * and it does not write to a read-only export. Anything else is answered
 * here with the error the protocol document asks for.
 *
 * A connection the server will not serve (nbd_proto_config.refusal, e.g. an
 * export at its connection limit) still gets the greeting, so that the
 * client learns why instead of waiting: every option but NBD_OPT_ABORT is
 * answered NBD_REP_ERR_POLICY with the refusal as its message, and
 * NBD_OPT_EXPORT_NAME, which cannot carry an error, ends the session. Such a
 * connection never reaches the transmission phase.
 */
#ifndef ISOLDE_EXPORT_NBD_PROTO_H
#define ISOLDE_EXPORT_NBD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- wire constants (doc/proto.md, "Values") ---- */
#define NBD_MAGIC 0x4e42444d41474943ull          /* "NBDMAGIC" */
#define NBD_OPT_MAGIC 0x49484156454f5054ull      /* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x0003e889045565a9ull
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

/* handshake flags (server) and client flags */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

/* transmission flags */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)

/* options */
#define NBD_OPT_EXPORT_NAME 1u
#define NBD_OPT_ABORT 2u
#define NBD_OPT_LIST 3u
#define NBD_OPT_STARTTLS 5u
#define NBD_OPT_INFO 6u
#define NBD_OPT_GO 7u
#define NBD_OPT_STRUCTURED_REPLY 8u

/* option replies */
#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_ERR(n) (0x80000000u + (n))
#define NBD_REP_ERR_UNSUP NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID NBD_REP_ERR(3)
#define NBD_REP_ERR_UNKNOWN NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_TOO_BIG NBD_REP_ERR(9)

/* NBD_REP_INFO types */
#define NBD_INFO_EXPORT 0u
#define NBD_INFO_NAME 1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE 3u

/* commands and command flags */
#define NBD_CMD_READ 0u
#define NBD_CMD_WRITE 1u
#define NBD_CMD_DISC 2u
#define NBD_CMD_FLUSH 3u
#define NBD_CMD_TRIM 4u
#define NBD_CMD_CACHE 5u
#define NBD_CMD_WRITE_ZEROES 6u
#define NBD_CMD_BLOCK_STATUS 7u
#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)

/* structured replies */
#define NBD_REPLY_FLAG_DONE (1u << 0)
#define NBD_REPLY_TYPE_NONE 0u
#define NBD_REPLY_TYPE_OFFSET_DATA 1u
#define NBD_REPLY_TYPE_ERROR ((1u << 15) + 1)

/* errors */
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

/* ---- limits ---- */
#define NBD_MAX_BLOCK (32u << 20)   /* largest READ or WRITE: the server's SERVER_MAX_REQUEST */
#define NBD_PREFERRED_BLOCK 4096u
#define NBD_MAX_STRING 4096u        /* export names and messages, per the protocol */
/* Largest option we read into memory (INFO/GO: a name and a few info requests). */
#define NBD_OPT_MAX (4u + NBD_MAX_STRING + 2u + 2u * 256u)
/* Largest reply the proto formats without data: a structured error chunk
 * with a message of up to NBD_MSG_MAX bytes. */
#define NBD_MSG_MAX 80u
#define NBD_REPLY_MAX (20u + 6u + NBD_MSG_MAX)

struct nbd_proto_config {
	uint64_t size;             /* bytes */
	uint32_t min_block;        /* alignment requests must keep (O_DIRECT); 0 or 1 = none */
	bool readonly;
	bool multi_conn;           /* advertise NBD_FLAG_CAN_MULTI_CONN */
	const char *name;          /* the export's canonical name; "" is always accepted too */
	const char *description;   /* NBD_INFO_DESCRIPTION, or NULL */
	const char *refusal;       /* non-NULL: refuse the client with this message (see above) */
};

/* One validated transmission request. */
struct nbd_cmd {
	uint64_t handle;
	uint64_t offset;
	uint32_t len;
	uint16_t type;             /* NBD_CMD_* */
	uint16_t flags;            /* NBD_CMD_FLAG_* */
};

struct nbd_proto_ops {
	/* Queue len bytes for the client, in order. */
	void (*send)(void *ctx, const void *buf, size_t len);
	/*
	 * A valid WRITE of cmd->len (> 0) bytes arrived: return a buffer for its
	 * payload, or NULL to have the payload skipped and the request failed
	 * with NBD_ENOMEM. The buffer belongs to the caller; the proto fills it.
	 */
	void *(*payload_buffer)(void *ctx, const struct nbd_cmd *cmd);
	/* Carry out a valid request (for WRITE, buf holds its whole payload). */
	void (*request)(void *ctx, const struct nbd_cmd *cmd, void *buf);
};

enum nbd_state {
	NBD_ST_CLIENT_FLAGS,   /* greeting sent; waiting for the client's flags */
	NBD_ST_OPT_HEADER,     /* option haggling */
	NBD_ST_OPT_DATA,       /* reading an option's data into opt_data */
	NBD_ST_OPT_SKIP,       /* skipping an option's data; then answer it */
	NBD_ST_REQ_HEADER,     /* transmission: waiting for a request */
	NBD_ST_PAYLOAD,        /* reading a WRITE's payload into its buffer */
	NBD_ST_PAYLOAD_SKIP,   /* skipping a refused WRITE's payload; then answer it */
	NBD_ST_CLOSING,        /* soft disconnect (NBD_CMD_DISC, NBD_OPT_ABORT): finish, flush, close */
	NBD_ST_DEAD,           /* hard disconnect: the client broke the protocol */
};

struct nbd_proto {
	struct nbd_proto_config cfg;
	const struct nbd_proto_ops *ops;
	void *ctx;
	enum nbd_state state;
	bool fixed_newstyle, no_zeroes, structured, transmission;
	const char *why;             /* why the state is DEAD or CLOSING, for the log */
	/* The message being assembled. */
	uint8_t hdr[28];
	uint32_t hdr_have;
	uint32_t opt, opt_len, opt_have;
	uint8_t opt_data[NBD_OPT_MAX];
	struct nbd_cmd cmd;          /* the request whose payload is being read or skipped */
	uint8_t *payload;
	uint32_t payload_have;
	uint32_t skip_error;         /* the reply to a refused WRITE once its payload is skipped */
	const char *skip_msg;
};

/* Reset p and queue the server's greeting. cfg's strings must outlive p. */
void nbd_proto_init(struct nbd_proto *p, const struct nbd_proto_config *cfg,
		    const struct nbd_proto_ops *ops, void *ctx);

/*
 * Consume client bytes until one message is complete (an option answered,
 * a request handed over or answered) or the input runs out. Returns how
 * many bytes were consumed: 0 only once the connection is closing or dead,
 * after which the rest of the input must be ignored.
 */
size_t nbd_proto_feed(struct nbd_proto *p, const void *in, size_t len);

/*
 * While a WRITE's payload is being read: where the next bytes go and how
 * many are still wanted, so that a caller can read them straight from its
 * socket; then nbd_proto_payload_received with the number it read.
 * Returns false in any other state.
 */
bool nbd_proto_payload_dest(const struct nbd_proto *p, void **dst, size_t *want);
void nbd_proto_payload_received(struct nbd_proto *p, size_t n);

static inline bool nbd_proto_closing(const struct nbd_proto *p) { return p->state == NBD_ST_CLOSING; }
static inline bool nbd_proto_dead(const struct nbd_proto *p) { return p->state == NBD_ST_DEAD; }

/* The transmission flags this connection was (or would be) given. */
uint16_t nbd_proto_transmission_flags(const struct nbd_proto *p);

/*
 * Format the reply to a request into out (NBD_REPLY_MAX bytes): for a
 * successful READ (nbd_err 0) only the header, which the cmd->len data
 * bytes must follow; otherwise the whole reply, with msg (may be NULL)
 * carried in a structured error chunk when structured replies are on.
 * Returns the number of bytes written.
 */
size_t nbd_proto_reply(const struct nbd_proto *p, uint8_t *out, const struct nbd_cmd *cmd,
		       uint32_t nbd_err, const char *msg);

/* Map a negative errno from the device to the NBD error to report. */
uint32_t nbd_errno(int neg_errno);

const char *nbd_cmd_name(uint16_t type);

#endif
