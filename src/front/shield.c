// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "shield.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define SIDECAR_MAGIC UINT64_C(0x444c454948534c49) /* "ILSHIELD" */
#define SIDECAR_VERSION 1u
#define STATE_CLEAN 1u
#define STATE_DIRTY 2u

struct sidecar_header {
	uint64_t magic;
	uint32_t version;
	uint32_t state;
	uint64_t block_size;
	uint64_t image_size;
	uint64_t image_dev;
	uint64_t image_ino;
	int64_t image_mtime_ns;
	uint64_t nblocks;
};

static bool is_known(const struct isolde_shield *sh, uint64_t b)
{
	return sh->known[b / 64] >> (b % 64) & 1;
}

static void set_known(struct isolde_shield *sh, uint64_t b, bool k)
{
	if (k)
		sh->known[b / 64] |= UINT64_C(1) << (b % 64);
	else
		sh->known[b / 64] &= ~(UINT64_C(1) << (b % 64));
}

static uint64_t bitmap_words(uint64_t nblocks)
{
	return (nblocks + 63) / 64;
}

static void identity(int fd, struct sidecar_header *h)
{
	struct stat st;

	if (fstat(fd, &st) == 0) {
		h->image_dev = st.st_dev;
		h->image_ino = st.st_ino;
		h->image_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	}
}

static bool read_full(int fd, void *buf, size_t len, off_t off)
{
	return pread(fd, buf, len, off) == (ssize_t)len;
}

static bool write_full(int fd, const void *buf, size_t len, off_t off)
{
	return pwrite(fd, buf, len, off) == (ssize_t)len;
}

/* Load a sidecar that is clean and describes this very image. */
static void load_sidecar(struct isolde_shield *sh, uint64_t size)
{
	struct sidecar_header h, want = { 0 };
	int fd = open(sh->sidecar, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	identity(sh->image_fd, &want);
	if (read_full(fd, &h, sizeof h, 0) && h.magic == SIDECAR_MAGIC && h.version == SIDECAR_VERSION &&
	    h.state == STATE_CLEAN && h.block_size == ISOLDE_SHIELD_BLOCK && h.image_size == size &&
	    h.nblocks == sh->nblocks && h.image_dev == want.image_dev && h.image_ino == want.image_ino &&
	    h.image_mtime_ns == want.image_mtime_ns) {
		size_t bits = bitmap_words(sh->nblocks) * sizeof(uint64_t);
		size_t sums = sh->nblocks * sizeof(uint64_t);
		if (read_full(fd, sh->known, bits, sizeof h) && read_full(fd, sh->sums, sums, (off_t)(sizeof h + bits)))
			sh->loaded = true;
		else
			memset(sh->known, 0, bits);
	}
	close(fd);
}

static void write_state(struct isolde_shield *sh, uint32_t state, uint64_t size)
{
	struct sidecar_header h = {
		.magic = SIDECAR_MAGIC, .version = SIDECAR_VERSION, .state = state,
		.block_size = ISOLDE_SHIELD_BLOCK, .image_size = size, .nblocks = sh->nblocks,
	};
	size_t bits = bitmap_words(sh->nblocks) * sizeof(uint64_t);
	int fd;

	if (!sh->sidecar[0])
		return;
	fd = open(sh->sidecar, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "isolde: warning: cannot write shield sidecar %s: %s; checksums will not "
			"persist\n", sh->sidecar, strerror(errno));
		sh->sidecar[0] = '\0';
		return;
	}
	identity(sh->image_fd, &h);
	bool ok = true;
	if (state == STATE_CLEAN) {
		ok = ftruncate(fd, 0) == 0 && write_full(fd, sh->known, bits, sizeof h) &&
		     write_full(fd, sh->sums, sh->nblocks * sizeof(uint64_t), (off_t)(sizeof h + bits)) &&
		     fdatasync(fd) == 0;
	}
	/* The header last: a crash before it leaves the old (dirty) one. */
	ok = ok && write_full(fd, &h, sizeof h, 0) && fdatasync(fd) == 0;
	if (!ok)
		fprintf(stderr, "isolde: warning: cannot write shield sidecar %s: %s\n", sh->sidecar,
			strerror(errno));
	close(fd);
}

int isolde_shield_open(struct isolde_shield *sh, const char *image, int image_fd, uint64_t size,
		       char *err, size_t errlen)
{
	memset(sh, 0, sizeof *sh);
	sh->image_fd = image_fd;
	sh->nblocks = size / ISOLDE_SHIELD_BLOCK;
	sh->sums = calloc(sh->nblocks + 1, sizeof *sh->sums);
	sh->known = calloc(bitmap_words(sh->nblocks) + 1, sizeof *sh->known);
	sh->activity = calloc(sh->nblocks + 1, sizeof *sh->activity);
	sh->writes_inflight = calloc(sh->nblocks + 1, sizeof *sh->writes_inflight);
	if (!sh->sums || !sh->known || !sh->activity || !sh->writes_inflight) {
		snprintf(err, errlen, "out of memory for the integrity shield of %llu blocks",
			 (unsigned long long)sh->nblocks);
		isolde_shield_close(sh);
		return -1;
	}
	/* An image reached through /proc/self/fd has no directory to keep a
	 * sidecar in: its checksums live as long as the device is open. */
	if (strncmp(image, "/proc/", 6) != 0)
		snprintf(sh->sidecar, sizeof sh->sidecar, "%s.isolde-shield", image);
	if (sh->sidecar[0]) {
		load_sidecar(sh, size);
		write_state(sh, STATE_DIRTY, size);
	}
	return 0;
}

void isolde_shield_close(struct isolde_shield *sh)
{
	if (sh->sums && sh->sidecar[0])
		write_state(sh, STATE_CLEAN, sh->nblocks * ISOLDE_SHIELD_BLOCK);
	free(sh->sums);
	free(sh->known);
	free(sh->activity);
	free(sh->writes_inflight);
	memset(sh, 0, sizeof *sh);
}

/* Whole blocks inside [off, off+len), and the partial blocks at the ends. */
static void span(uint64_t off, uint64_t len, uint64_t *first_whole, uint64_t *end_whole,
		 uint64_t *first_any, uint64_t *end_any)
{
	*first_any = off / ISOLDE_SHIELD_BLOCK;
	*end_any = (off + len + ISOLDE_SHIELD_BLOCK - 1) / ISOLDE_SHIELD_BLOCK;
	*first_whole = (off + ISOLDE_SHIELD_BLOCK - 1) / ISOLDE_SHIELD_BLOCK;
	*end_whole = (off + len) / ISOLDE_SHIELD_BLOCK;
	if (*end_whole < *first_whole)
		*end_whole = *first_whole;
}

static uint64_t clamp(const struct isolde_shield *sh, uint64_t b)
{
	return b < sh->nblocks ? b : sh->nblocks;
}

uint64_t isolde_shield_read_begin(struct isolde_shield *sh)
{
	return ++sh->epoch;
}

int isolde_shield_read_end(struct isolde_shield *sh, uint64_t begin_epoch, const void *buf,
			   uint64_t off, uint64_t len, uint64_t *bad_block)
{
	uint64_t fw, ew, fa, ea;
	const unsigned char *p = buf;

	span(off, len, &fw, &ew, &fa, &ea);
	ew = clamp(sh, ew);
	/* Judge first, learn only from a read that contradicts nothing. */
	for (uint64_t b = fw; b < ew; b++) {
		if (!is_known(sh, b) || sh->writes_inflight[b] || sh->activity[b] > begin_epoch)
			continue;
		uint64_t sum = XXH3_64bits(p + (b * ISOLDE_SHIELD_BLOCK - off), ISOLDE_SHIELD_BLOCK);
		if (sum != sh->sums[b]) {
			sh->mismatches++;
			*bad_block = b;
			return -1;
		}
		sh->blocks_verified++;
	}
	for (uint64_t b = fw; b < ew; b++) {
		if (is_known(sh, b) || sh->writes_inflight[b] || sh->activity[b] > begin_epoch)
			continue;
		sh->sums[b] = XXH3_64bits(p + (b * ISOLDE_SHIELD_BLOCK - off), ISOLDE_SHIELD_BLOCK);
		set_known(sh, b, true);
		sh->blocks_learned++;
	}
	return 0;
}

void isolde_shield_write_begin(struct isolde_shield *sh, uint64_t off, uint64_t len)
{
	uint64_t fw, ew, fa, ea;

	span(off, len, &fw, &ew, &fa, &ea);
	ea = clamp(sh, ea);
	sh->epoch++;
	for (uint64_t b = fa; b < ea; b++) {
		set_known(sh, b, false);
		sh->writes_inflight[b]++;
		sh->activity[b] = sh->epoch;
	}
}

void isolde_shield_write_end(struct isolde_shield *sh, const void *buf, uint64_t off, uint64_t len,
			     bool ok)
{
	uint64_t fw, ew, fa, ea;
	const unsigned char *p = buf;

	span(off, len, &fw, &ew, &fa, &ea);
	ea = clamp(sh, ea);
	ew = clamp(sh, ew);
	sh->epoch++;
	for (uint64_t b = fa; b < ea; b++) {
		if (sh->writes_inflight[b])
			sh->writes_inflight[b]--;
		sh->activity[b] = sh->epoch;
		/* Partly written, failed, or raced by another write: undefined. */
		bool whole = b >= fw && b < ew;
		if (ok && whole && sh->writes_inflight[b] == 0) {
			sh->sums[b] = XXH3_64bits(p + (b * ISOLDE_SHIELD_BLOCK - off), ISOLDE_SHIELD_BLOCK);
			set_known(sh, b, true);
		} else {
			set_known(sh, b, false);
		}
	}
}

void isolde_shield_zeroes_end(struct isolde_shield *sh, uint64_t off, uint64_t len, bool ok)
{
	static const unsigned char zero[ISOLDE_SHIELD_BLOCK];
	uint64_t fw, ew, fa, ea;

	isolde_shield_write_end(sh, NULL, off, len, false);
	if (!ok)
		return;
	uint64_t zsum = XXH3_64bits(zero, sizeof zero);
	span(off, len, &fw, &ew, &fa, &ea);
	ew = clamp(sh, ew);
	for (uint64_t b = fw; b < ew; b++) {
		if (sh->writes_inflight[b] == 0) {
			sh->sums[b] = zsum;
			set_known(sh, b, true);
		}
	}
}
