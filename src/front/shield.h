/* SPDX-License-Identifier: MIT */
/*
 * The integrity shield: a checksum (XXH3-64) of every 4 KiB block written
 * through the front end, kept in the application domain where the driver
 * cannot reach it, and checked against every block read back. A read that
 * does not match is a driver fault - the data the driver returned is not
 * what was written - even though its response looked well-formed.
 *
 * A block never written through isolde is learned on its first read. A
 * block whose contents are undefined (partly written, discarded, written by
 * a failed request) is forgotten until it is written or read whole again.
 * Blocks with write activity during a read's lifetime are not judged by
 * that read: a read racing a write may legitimately return either data.
 *
 * The checksums persist in a sidecar file next to the image (IMAGE.isolde-
 * shield), marked dirty while the device is open; a dirty sidecar, or one
 * that does not match the image's size, inode and modification time, is
 * discarded and the blocks are learned again.
 */
#ifndef ISOLDE_FRONT_SHIELD_H
#define ISOLDE_FRONT_SHIELD_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ISOLDE_SHIELD_BLOCK 4096u

struct isolde_shield {
	uint64_t nblocks;
	uint64_t *sums;
	uint64_t *known;           /* bitmap */
	uint64_t *activity;        /* epoch of the last write submitted or completed */
	uint16_t *writes_inflight;
	uint64_t epoch;
	char sidecar[PATH_MAX];    /* "" when not persisted */
	int image_fd;              /* to read the image's identity at close */
	bool loaded;               /* the sidecar was valid at open */
	/* statistics */
	uint64_t blocks_verified;
	uint64_t blocks_learned;
	uint64_t mismatches;
};

/* image_fd is the front end's own fd of the image (not the driver's). */
int isolde_shield_open(struct isolde_shield *sh, const char *image, int image_fd, uint64_t size,
		       char *err, size_t errlen);
/* Persist (clean) and free. */
void isolde_shield_close(struct isolde_shield *sh);

/* A read is about to be submitted: the epoch it must be judged against. */
uint64_t isolde_shield_read_begin(struct isolde_shield *sh);
/*
 * A read of [off, off+len) completed with data buf (private memory). Returns
 * -1 if a block contradicts its checksum (*bad_block set), else 0; blocks
 * seen whole for the first time are learned.
 */
int isolde_shield_read_end(struct isolde_shield *sh, uint64_t begin_epoch, const void *buf,
			   uint64_t off, uint64_t len, uint64_t *bad_block);

void isolde_shield_write_begin(struct isolde_shield *sh, uint64_t off, uint64_t len);
/* ok: the write succeeded and buf holds what was written. */
void isolde_shield_write_end(struct isolde_shield *sh, const void *buf, uint64_t off, uint64_t len,
			     bool ok);
/* Completion of a WRITE_ZEROES (ok: the range now reads as zeroes). A
 * DISCARD completes with isolde_shield_write_end(sh, NULL, off, len, false):
 * its blocks are undefined. Both began with isolde_shield_write_begin. */
void isolde_shield_zeroes_end(struct isolde_shield *sh, uint64_t off, uint64_t len, bool ok);

#endif
