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
 * The checksums persist in a side file next to the image (IMAGE.isolde-
 * shield), checksummed as a whole and never written in place: a new file is
 * written beside it and renamed over it, so a symbolic link planted there
 * is replaced, never followed. While the device is open the side file holds
 * only a header marked dirty; one found dirty at open (isolde did not close
 * the image) is discarded with a warning and the blocks are learned again.
 * A side file that is not a regular file owned by isolde's uid and writable
 * by it alone, that is corrupt, that was written for the image as it was
 * before (size, device, inode or modification time changed since), or whose
 * checksums contradict a sample of the image's blocks, is an error at open:
 * the message names the file and says to remove it.
 */
#ifndef ISOLDE_FRONT_SHIELD_H
#define ISOLDE_FRONT_SHIELD_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ISOLDE_SHIELD_BLOCK 4096u

/*
 * The side file: this header, then (state CLEAN only) the bitmap of known
 * blocks, (nblocks + 63) / 64 words, and nblocks checksums. Host byte order:
 * the file describes a local image and is not meant to travel.
 */
#define ISOLDE_SHIELD_FILE_MAGIC UINT64_C(0x444c454948534c49) /* "ILSHIELD" */
#define ISOLDE_SHIELD_FILE_VERSION 2u
#define ISOLDE_SHIELD_FILE_CLEAN 1u
#define ISOLDE_SHIELD_FILE_DIRTY 2u
/* Blocks of the image checked against the side file at open. */
#define ISOLDE_SHIELD_OPEN_SAMPLE 256u

struct isolde_shield_file_header {
	uint64_t magic;
	uint32_t version;
	uint32_t state;
	uint64_t block_size;
	uint64_t image_size;
	uint64_t image_dev;
	uint64_t image_ino;
	int64_t image_mtime_ns;
	uint64_t nblocks;
	uint64_t checksum;         /* XXH3-64 of the file with this field 0 */
};

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
	/* Added with side file version 2. */
	uint64_t image_size;       /* bytes, as the side file records it */
	uint64_t *suspect;         /* bitmap: blocks a read contradicted, re-read at close */
	uint64_t open_checked;     /* blocks of the image compared with the side file at open */
	uint64_t close_forgotten;  /* blocks that differed from their checksum at close */
};

/* image_fd is the front end's own fd of the image (not the driver's). Fails
 * with err set when the side file cannot be trusted (see above); loads it,
 * checks up to ISOLDE_SHIELD_OPEN_SAMPLE known blocks against the image
 * through image_fd, and leaves a dirty header in its place. */
int isolde_shield_open(struct isolde_shield *sh, const char *image, int image_fd, uint64_t size,
		       char *err, size_t errlen);
/* Re-read the blocks the side file will vouch for, forget those that differ
 * (a driver wrote them unasked or lost a write: warned), persist and free. */
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
/*
 * The same, with the sums of the write's whole blocks taken earlier by
 * isolde_shield_sums: for data the driver can reach while the write is in
 * flight (a zero-copy buffer), whose sums must be what the caller wrote,
 * not what the driver left there. isolde_shield_sums returns how many it
 * wrote into sums (at most len / ISOLDE_SHIELD_BLOCK + 1).
 */
unsigned isolde_shield_sums(const void *buf, uint64_t off, uint64_t len, uint64_t *sums);
void isolde_shield_write_end_sums(struct isolde_shield *sh, const uint64_t *sums, uint64_t off,
				  uint64_t len, bool ok);
/* Completion of a WRITE_ZEROES (ok: the range now reads as zeroes). A
 * DISCARD completes with isolde_shield_write_end(sh, NULL, off, len, false):
 * its blocks are undefined. Both began with isolde_shield_write_begin. */
void isolde_shield_zeroes_end(struct isolde_shield *sh, uint64_t off, uint64_t len, bool ok);

#endif
