// SPDX-License-Identifier: MIT
#include "isolde/blkif.h"

const char *isolde_blk_op_name(unsigned op)
{
	switch (op) {
	case ISOLDE_BLK_OP_READ: return "READ";
	case ISOLDE_BLK_OP_WRITE: return "WRITE";
	case ISOLDE_BLK_OP_FLUSH: return "FLUSH";
	case ISOLDE_BLK_OP_DISCARD: return "DISCARD";
	case ISOLDE_BLK_OP_WRITE_ZEROES: return "WRITE_ZEROES";
	default: return "unknown";
	}
}

const char *isolde_blk_status_name(unsigned status)
{
	switch (status) {
	case ISOLDE_BLK_S_OK: return "ok";
	case ISOLDE_BLK_S_IOERR: return "I/O error";
	case ISOLDE_BLK_S_UNSUPPORTED: return "unsupported";
	case ISOLDE_BLK_S_INVALID: return "invalid request";
	case ISOLDE_BLK_S_NOSPC: return "no space";
	default: return "unknown";
	}
}
