/* SPDX-License-Identifier: MIT */
/*
 * isolde/blkif.h - the block protocol carried on an isolde ring (cf. Xen
 * blkif.h). Requests are written by the front end, responses by the driver,
 * into the same 128-byte slots.
 *
 * A READ or WRITE names its data by segments: (grant reference, offset within
 * the grant, length). The segments' lengths add up to the request's length.
 * Offsets into the device are in bytes.
 */
#ifndef ISOLDE_BLKIF_H
#define ISOLDE_BLKIF_H

#include <stdint.h>

enum isolde_blk_op {
	ISOLDE_BLK_OP_READ = 1,
	ISOLDE_BLK_OP_WRITE = 2,
	ISOLDE_BLK_OP_FLUSH = 3,        /* make completed writes durable */
	ISOLDE_BLK_OP_DISCARD = 4,      /* advisory: the range's contents become undefined */
	ISOLDE_BLK_OP_WRITE_ZEROES = 5, /* the range reads back as zeroes */
};

/* Request flags. */
#define ISOLDE_BLK_F_FUA 0x1u       /* WRITE: durable before the response */
#define ISOLDE_BLK_F_MAY_UNMAP 0x2u /* WRITE_ZEROES: may deallocate (punch a hole) */
#define ISOLDE_BLK_F_ALL (ISOLDE_BLK_F_FUA | ISOLDE_BLK_F_MAY_UNMAP)

enum isolde_blk_status {
	ISOLDE_BLK_S_OK = 0,
	ISOLDE_BLK_S_IOERR = 1,       /* the device failed */
	ISOLDE_BLK_S_UNSUPPORTED = 2, /* the driver does not do this operation */
	ISOLDE_BLK_S_INVALID = 3,     /* the request was malformed (bad grant, range) */
	ISOLDE_BLK_S_NOSPC = 4,       /* out of space (sparse image on a full disk) */
	ISOLDE_BLK_S_MAX = ISOLDE_BLK_S_NOSPC,
};

#define ISOLDE_BLK_MAX_SEGS 8

struct isolde_blk_seg {
	uint32_t gref;
	uint32_t offset; /* within the grant */
	uint32_t length;
};

struct isolde_blk_request {
	uint64_t id;     /* opaque to the driver; echoed in the response */
	uint64_t offset; /* device byte offset */
	uint32_t length; /* bytes; 0 for FLUSH */
	uint8_t op;      /* enum isolde_blk_op */
	uint8_t nr_segs; /* READ/WRITE: 1..ISOLDE_BLK_MAX_SEGS; else 0 */
	uint16_t flags;  /* ISOLDE_BLK_F_* */
	uint32_t reserved[2];
	struct isolde_blk_seg seg[ISOLDE_BLK_MAX_SEGS];
};

struct isolde_blk_response {
	uint64_t id;     /* the request's id */
	uint32_t length; /* bytes done: the request's length on success */
	uint8_t op;      /* the request's op */
	uint8_t status;  /* enum isolde_blk_status */
	uint16_t reserved;
};

union isolde_blk_slot {
	struct isolde_blk_request req;
	struct isolde_blk_response rsp;
};

#define ISOLDE_BLK_SLOT_SIZE 128u

_Static_assert(sizeof(struct isolde_blk_request) == ISOLDE_BLK_SLOT_SIZE, "request is one slot");
_Static_assert(sizeof(union isolde_blk_slot) == ISOLDE_BLK_SLOT_SIZE, "slot size");
_Static_assert(sizeof(struct isolde_blk_response) == 16, "response size");

/* Bytes of a request that carry meaning: the fixed part and nr_segs
 * segments. Only these are written and read, so a one- or two-segment
 * request moves one cache line between the cores, not two. */
#define ISOLDE_BLK_REQUEST_HEAD 32u
static inline unsigned isolde_blk_request_bytes(unsigned nr_segs)
{
	return ISOLDE_BLK_REQUEST_HEAD + nr_segs * (unsigned)sizeof(struct isolde_blk_seg);
}
_Static_assert(__builtin_offsetof(struct isolde_blk_request, seg) == ISOLDE_BLK_REQUEST_HEAD, "head");

const char *isolde_blk_op_name(unsigned op);
const char *isolde_blk_status_name(unsigned status);

#endif
