// SPDX-License-Identifier: MIT
/*
 * Unit tests: the integrity shield's side file. How it is opened (no
 * symbolic link followed, owner, type and mode checked), how it is written
 * (beside it, then renamed), its whole-file checksum, what makes it an error
 * at open (corrupt, written for the image as it was before, contradicted by
 * the image's blocks), what is only a warning (left dirty by a crash, the
 * previous format), and what close forgets. Each test runs in a fresh
 * temporary directory with an image of distinct blocks.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "shield.h"

#define BLOCK ISOLDE_SHIELD_BLOCK
#define HDR sizeof(struct isolde_shield_file_header)

struct fx {
	char dir[64];
	char image[128];
	char side[160];
	int fd;                 /* the image, as the front end holds it */
	uint64_t nblocks;
	struct isolde_shield sh;
	bool open;              /* sh needs closing at teardown */
	char err[1024];
};

/* ---- the image ---- */

static void fill_block(unsigned char *buf, uint64_t b, unsigned salt)
{
	for (unsigned i = 0; i < BLOCK; i++)
		buf[i] = (unsigned char)(b * 131 + i * 7 + salt);
	memcpy(buf, &b, sizeof b);
}

static void write_block(struct fx *f, uint64_t b, unsigned salt)
{
	unsigned char buf[BLOCK];

	fill_block(buf, b, salt);
	assert_int_equal(pwrite(f->fd, buf, BLOCK, (off_t)(b * BLOCK)), BLOCK);
}

static void make_image(struct fx *f, uint64_t nblocks)
{
	f->nblocks = nblocks;
	assert_int_equal(ftruncate(f->fd, (off_t)(nblocks * BLOCK)), 0);
	for (uint64_t b = 0; b < nblocks; b++)
		write_block(f, b, 0);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);

	if (!f)
		return -1;
	snprintf(f->dir, sizeof f->dir, "/tmp/isolde-shield-XXXXXX");
	if (!mkdtemp(f->dir)) {
		free(f);
		return -1;
	}
	snprintf(f->image, sizeof f->image, "%s/disk.img", f->dir);
	snprintf(f->side, sizeof f->side, "%s.isolde-shield", f->image);
	f->fd = open(f->image, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (f->fd < 0)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	DIR *d = opendir(f->dir);
	struct dirent *e;

	if (f->open)
		isolde_shield_close(&f->sh);
	close(f->fd);
	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			char p[600];
			snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
			if (unlink(p) != 0)
				rmdir(p);
		}
	}
	if (d)
		closedir(d);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* ---- the shield ---- */

static int shield_open(struct fx *f)
{
	f->err[0] = '\0';
	int rc = isolde_shield_open(&f->sh, f->image, f->fd, f->nblocks * BLOCK, f->err, sizeof f->err);
	f->open = rc == 0;
	return rc;
}

static void shield_close(struct fx *f)
{
	assert_true(f->open);
	isolde_shield_close(&f->sh);
	f->open = false;
}

/* Read blocks [first, first + n) of the image and show them to the shield. */
static int read_through(struct fx *f, uint64_t first, uint64_t n, uint64_t *bad)
{
	unsigned char buf[BLOCK];

	for (uint64_t b = first; b < first + n; b++) {
		assert_int_equal(pread(f->fd, buf, BLOCK, (off_t)(b * BLOCK)), BLOCK);
		uint64_t epoch = isolde_shield_read_begin(&f->sh);
		if (isolde_shield_read_end(&f->sh, epoch, buf, b * BLOCK, BLOCK, bad) != 0)
			return -1;
	}
	return 0;
}

/* A clean side file, afresh, that knows blocks [0, known). */
static void make_clean_side_file(struct fx *f, uint64_t known)
{
	uint64_t bad;

	unlink(f->side);
	assert_int_equal(shield_open(f), 0);
	assert_int_equal(read_through(f, 0, known, &bad), 0);
	shield_close(f);
}

static bool knows(const struct isolde_shield *sh, uint64_t b)
{
	return sh->known[b / 64] >> (b % 64) & 1;
}

/* ---- the side file, by hand ---- */

struct side {
	unsigned char *bytes;
	size_t len;
};

static struct side read_side(const struct fx *f)
{
	struct side s = { 0 };
	struct stat st;
	int fd = open(f->side, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	s.len = (size_t)st.st_size;
	s.bytes = malloc(s.len + 1);
	assert_non_null(s.bytes);
	assert_int_equal(read(fd, s.bytes, s.len), (ssize_t)s.len);
	close(fd);
	return s;
}

/* Replace the side file with these bytes, a regular file of ours, 0600. */
static void write_side(const struct fx *f, const void *bytes, size_t len)
{
	unlink(f->side);
	int fd = open(f->side, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, bytes, len), (ssize_t)len);
	close(fd);
}

static struct isolde_shield_file_header *header_of(struct side *s)
{
	return (struct isolde_shield_file_header *)s->bytes;
}

/* What a correct writer would put in the checksum field. */
static uint64_t checksum_of(const struct side *s)
{
	struct isolde_shield_file_header h;
	XXH3_state_t *x = XXH3_createState();

	assert_non_null(x);
	memcpy(&h, s->bytes, HDR);
	h.checksum = 0;
	XXH3_64bits_reset(x);
	XXH3_64bits_update(x, &h, HDR);
	XXH3_64bits_update(x, s->bytes + HDR, s->len - HDR);
	uint64_t sum = XXH3_64bits_digest(x);
	XXH3_freeState(x);
	return sum;
}

static void reseal(struct side *s)
{
	header_of(s)->checksum = checksum_of(s);
}

static uint64_t *sums_of(struct side *s, uint64_t nblocks)
{
	return (uint64_t *)(s->bytes + HDR + (nblocks + 63) / 64 * 8);
}

/* ---- stderr, for the warnings ---- */

struct capture {
	int saved;
	FILE *f;
	char text[4096];
};

static void capture_begin(struct capture *c)
{
	fflush(stderr);
	c->f = tmpfile();
	assert_non_null(c->f);
	c->saved = dup(2);
	assert_true(c->saved >= 0);
	assert_true(dup2(fileno(c->f), 2) >= 0);
}

static const char *capture_end(struct capture *c)
{
	fflush(stderr);
	dup2(c->saved, 2);
	close(c->saved);
	rewind(c->f);
	size_t n = fread(c->text, 1, sizeof c->text - 1, c->f);
	c->text[n] = '\0';
	fclose(c->f);
	return c->text;
}

static unsigned count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	unsigned n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void assert_contains(const char *text, const char *what)
{
	if (!strstr(text, what))
		fail_msg("\"%s\" not in \"%s\"", what, text);
}

/* ---- persistence ---- */

static void test_first_open_learns_and_close_persists(void **state)
{
	struct fx *f = *state;
	uint64_t bad;
	struct stat st;

	make_image(f, 100);
	assert_int_equal(shield_open(f), 0);
	assert_false(f->sh.loaded);
	/* While open: a dirty header only, vouching for nothing. */
	struct side s = read_side(f);
	assert_int_equal(s.len, HDR);
	assert_int_equal(header_of(&s)->state, ISOLDE_SHIELD_FILE_DIRTY);
	assert_true(header_of(&s)->checksum == checksum_of(&s));
	free(s.bytes);
	assert_int_equal(read_through(f, 0, 10, &bad), 0);
	assert_int_equal(f->sh.blocks_learned, 10);
	shield_close(f);

	s = read_side(f);
	struct isolde_shield_file_header *h = header_of(&s);
	assert_int_equal(s.len, HDR + 2 * 8 + 100 * 8);
	assert_true(h->magic == ISOLDE_SHIELD_FILE_MAGIC);
	assert_int_equal(h->version, ISOLDE_SHIELD_FILE_VERSION);
	assert_int_equal(h->state, ISOLDE_SHIELD_FILE_CLEAN);
	assert_int_equal(h->nblocks, 100);
	assert_int_equal(h->image_size, 100 * BLOCK);
	assert_true(h->checksum == checksum_of(&s));
	free(s.bytes);
	assert_int_equal(stat(f->side, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(count_entries(f->dir), 2); /* no temporary file left */

	assert_int_equal(shield_open(f), 0);
	assert_true(f->sh.loaded);
	assert_int_equal(f->sh.open_checked, 10);
	for (uint64_t b = 0; b < 100; b++)
		assert_int_equal(knows(&f->sh, b), b < 10);
	/* The loaded sums judge reads: a block differing from them is caught. */
	unsigned char lie[BLOCK];
	fill_block(lie, 3, 1);
	assert_int_equal(isolde_shield_read_end(&f->sh, isolde_shield_read_begin(&f->sh), lie, 3 * BLOCK,
						BLOCK, &bad), -1);
	assert_int_equal(bad, 3);
	assert_int_equal(read_through(f, 0, 10, &bad), 0);
	assert_int_equal(f->sh.blocks_verified, 10);
}

static void test_image_size_not_a_multiple_of_blocks(void **state)
{
	struct fx *f = *state;

	make_image(f, 20);
	assert_int_equal(ftruncate(f->fd, 20 * BLOCK + 1000), 0);
	assert_int_equal(isolde_shield_open(&f->sh, f->image, f->fd, 20 * BLOCK + 1000, f->err, sizeof f->err), 0);
	f->open = true;
	uint64_t bad;
	assert_int_equal(read_through(f, 0, 5, &bad), 0);
	shield_close(f);
	/* The side file records the image's real size, so it loads again. */
	assert_int_equal(isolde_shield_open(&f->sh, f->image, f->fd, 20 * BLOCK + 1000, f->err, sizeof f->err), 0);
	f->open = true;
	assert_true(f->sh.loaded);
}

static void test_no_side_file_for_proc_paths(void **state)
{
	struct fx *f = *state;
	char proc[64];

	make_image(f, 4);
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
	assert_int_equal(isolde_shield_open(&f->sh, proc, f->fd, 4 * BLOCK, f->err, sizeof f->err), 0);
	f->open = true;
	shield_close(f);
	assert_int_equal(count_entries(f->dir), 1);
}

/* ---- opening safely ---- */

static void test_symlink_is_refused_and_its_target_untouched(void **state)
{
	struct fx *f = *state;
	char victim[128], buf[64] = { 0 };
	struct stat st;

	make_image(f, 8);
	snprintf(victim, sizeof victim, "%s/victim", f->dir);
	int fd = open(victim, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	assert_int_equal(write(fd, "precious\n", 9), 9);
	close(fd);
	assert_int_equal(symlink(victim, f->side), 0);

	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, f->side);
	assert_contains(f->err, "is a symbolic link, which isolde does not follow");
	assert_contains(f->err, "remove it");
	/* Refused, and left alone: the link and what it names. */
	assert_int_equal(lstat(f->side, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	fd = open(victim, O_RDONLY | O_CLOEXEC);
	assert_int_equal(read(fd, buf, sizeof buf), 9);
	close(fd);
	assert_string_equal(buf, "precious\n");
}

static void test_symlink_planted_while_open_is_replaced_not_followed(void **state)
{
	struct fx *f = *state;
	char victim[128], buf[64] = { 0 };
	struct stat st;

	make_image(f, 8);
	assert_int_equal(shield_open(f), 0);
	snprintf(victim, sizeof victim, "%s/victim", f->dir);
	int fd = open(victim, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	assert_int_equal(write(fd, "precious\n", 9), 9);
	close(fd);
	assert_int_equal(unlink(f->side), 0);
	assert_int_equal(symlink(victim, f->side), 0);
	shield_close(f);

	fd = open(victim, O_RDONLY | O_CLOEXEC);
	assert_int_equal(read(fd, buf, sizeof buf), 9);
	close(fd);
	assert_string_equal(buf, "precious\n");
	assert_int_equal(lstat(f->side, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(shield_open(f), 0);
}

static void test_fifo_is_refused_without_blocking(void **state)
{
	struct fx *f = *state;

	make_image(f, 8);
	assert_int_equal(mkfifo(f->side, 0600), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "is not a regular file but a FIFO");
}

static void test_directory_is_refused(void **state)
{
	struct fx *f = *state;

	make_image(f, 8);
	assert_int_equal(mkdir(f->side, 0700), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "is not a regular file but a directory");
	/* Nothing was renamed over it either. */
	struct stat st;
	assert_int_equal(stat(f->side, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
}

static void test_other_owner_is_refused(void **state)
{
	struct fx *f = *state;

	if (geteuid() != 0)
		skip(); /* only root can give a file away */
	make_image(f, 8);
	make_clean_side_file(f, 4);
	assert_int_equal(chown(f->side, 65534, 65534), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "is owned by uid 65534, not by uid 0 that runs isolde");
}

static void test_writable_by_others_is_refused(void **state)
{
	struct fx *f = *state;

	make_image(f, 8);
	make_clean_side_file(f, 4);
	assert_int_equal(chmod(f->side, 0620), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "is writable by users other than its owner (mode 0620)");
	assert_int_equal(chmod(f->side, 0602), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "(mode 0602)");
	assert_int_equal(chmod(f->side, 0644), 0); /* readable is fine */
	assert_int_equal(shield_open(f), 0);
	assert_true(f->sh.loaded);
}

static void test_hard_link_is_refused(void **state)
{
	struct fx *f = *state;
	char other[128];

	make_image(f, 8);
	make_clean_side_file(f, 4);
	snprintf(other, sizeof other, "%s/other", f->dir);
	assert_int_equal(link(f->side, other), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "has 2 hard links");
}

/* ---- a corrupt side file ---- */

enum corruption { BAD_MAGIC, BAD_VERSION, BAD_CHECKSUM, FLIPPED_SUM, TRUNCATED, EXTENDED, BAD_BLOCK_SIZE,
		  BAD_STATE, TAIL_BITS, TOO_SHORT };

static void corrupt(struct side *s, enum corruption how, uint64_t nblocks)
{
	struct isolde_shield_file_header *h = header_of(s);

	switch (how) {
	case BAD_MAGIC: h->magic ^= 1; break;
	case BAD_VERSION: h->version = 3; break;
	case BAD_CHECKSUM: h->checksum ^= 1; break;
	case FLIPPED_SUM: sums_of(s, nblocks)[1] ^= 1; break;
	case TRUNCATED: s->len--; break;
	case EXTENDED: s->bytes[s->len++] = 0; break;
	case BAD_BLOCK_SIZE: h->block_size = 512; reseal(s); break;
	case BAD_STATE: h->state = 7; reseal(s); break;
	case TAIL_BITS: s->bytes[HDR] |= 0x80; reseal(s); break; /* 7 blocks: bit 7 is past them */
	case TOO_SHORT: s->len = 12; break;
	}
}

static void test_corrupt_side_file_is_an_error(void **state)
{
	struct fx *f = *state;
	static const struct { enum corruption how; const char *says; } cases[] = {
		{ BAD_MAGIC, "is corrupt: it does not begin with the side file's magic number" },
		{ BAD_VERSION, "is corrupt or from another isolde: format version 3, this isolde reads 2" },
		{ BAD_CHECKSUM, "is corrupt: its checksum does not match its contents" },
		{ FLIPPED_SUM, "is corrupt: its checksum does not match its contents" },
		{ TRUNCATED, "is corrupt: 135 bytes, not the 136 its header implies" },
		{ EXTENDED, "is corrupt: 137 bytes, not the 136 its header implies" },
		{ BAD_BLOCK_SIZE, "is corrupt: its header contradicts itself" },
		{ BAD_STATE, "is corrupt: its header contradicts itself" },
		{ TAIL_BITS, "is corrupt: it knows blocks past the end of the image" },
		{ TOO_SHORT, "is corrupt: 12 bytes, shorter than its header" },
	};

	make_image(f, 7);
	make_clean_side_file(f, 7);
	struct side good = read_side(f);
	assert_int_equal(good.len, HDR + 8 + 7 * 8);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct side s = { malloc(good.len + 1), good.len };
		assert_non_null(s.bytes);
		memcpy(s.bytes, good.bytes, good.len);
		corrupt(&s, cases[i].how, 7);
		write_side(f, s.bytes, s.len);
		free(s.bytes);
		assert_int_equal(shield_open(f), -1);
		assert_contains(f->err, f->side);
		assert_contains(f->err, cases[i].says);
		assert_contains(f->err, "remove it to learn the checksums afresh");
	}
	/* The good one still loads: the errors were the corruptions'. */
	write_side(f, good.bytes, good.len);
	free(good.bytes);
	assert_int_equal(shield_open(f), 0);
	assert_true(f->sh.loaded);
}

static void test_previous_format_is_discarded_with_a_warning(void **state)
{
	struct fx *f = *state;
	struct capture c;

	make_image(f, 8);
	make_clean_side_file(f, 8);
	struct side s = read_side(f);
	header_of(&s)->version = 1; /* the layout of format 1, without the checksum */
	write_side(f, s.bytes, s.len - 8);
	free(s.bytes);
	capture_begin(&c);
	int rc = shield_open(f);
	const char *said = capture_end(&c);
	assert_int_equal(rc, 0);
	assert_false(f->sh.loaded);
	assert_contains(said, "was written by an older isolde");
	assert_contains(said, f->side);
}

/* ---- a side file of another image, or of this one before ---- */

static void test_image_changed_outside_isolde_is_an_error(void **state)
{
	struct fx *f = *state;
	struct stat st;

	make_image(f, 16);
	make_clean_side_file(f, 16);
	struct side good = read_side(f);

	/* Written to behind isolde's back: its modification time moved (set
	 * here, as a write within the same clock tick might not move it). */
	assert_int_equal(fstat(f->fd, &st), 0);
	st.st_mtim.tv_sec += 1;
	struct timespec times[2] = { st.st_atim, st.st_mtim };
	assert_int_equal(futimens(f->fd, times), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "was written for image");
	assert_contains(f->err, "(its modification time changed since): the image was changed outside isolde");
	assert_contains(f->err, "remove it");

	/* Resized. */
	write_side(f, good.bytes, good.len);
	f->nblocks = 17;
	assert_int_equal(ftruncate(f->fd, 17 * BLOCK), 0);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "(its size changed since)");

	/* Replaced by another file at the same path. */
	f->nblocks = 16;
	write_side(f, good.bytes, good.len);
	char other[128];
	snprintf(other, sizeof other, "%s/copy", f->dir);
	int fd = open(other, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	assert_int_equal(ftruncate(fd, 16 * BLOCK), 0);
	assert_int_equal(rename(other, f->image), 0);
	close(f->fd);
	f->fd = fd;
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "(its inode changed since)");
	free(good.bytes);
}

/* Change block b's contents but keep the image's identity, as a copy with
 * preserved times over the same file would. */
static void change_block_keeping_identity(struct fx *f, uint64_t b)
{
	struct stat st;

	assert_int_equal(fstat(f->fd, &st), 0);
	write_block(f, b, 77);
	struct timespec times[2] = { st.st_atim, st.st_mtim };
	assert_int_equal(futimens(f->fd, times), 0);
}

static void test_side_file_contradicted_by_the_image_is_an_error(void **state)
{
	struct fx *f = *state;

	make_image(f, 64);
	make_clean_side_file(f, 64);
	change_block_keeping_identity(f, 41);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "does not match image");
	assert_contains(f->err, f->image);
	assert_contains(f->err, "at block 41");
	assert_contains(f->err, "remove it");
}

static void test_planted_side_file_with_wrong_sums_is_an_error(void **state)
{
	struct fx *f = *state;

	make_image(f, 64);
	make_clean_side_file(f, 64);
	/* Identity copied, checksum right, sums wrong: what an attacker with the
	 * file format would plant. */
	struct side s = read_side(f);
	for (uint64_t b = 0; b < 64; b++)
		sums_of(&s, 64)[b] = b;
	reseal(&s);
	write_side(f, s.bytes, s.len);
	free(s.bytes);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "does not match image");
	assert_contains(f->err, "at block 0");
	/* Refused without touching it: it is still there for the user to see. */
	s = read_side(f);
	assert_int_equal(sums_of(&s, 64)[5], 5);
	free(s.bytes);
}

static void test_open_checks_a_bounded_sample_spread_over_the_image(void **state)
{
	struct fx *f = *state;

	make_image(f, 4096);
	make_clean_side_file(f, 4096);
	assert_int_equal(shield_open(f), 0);
	assert_int_equal(f->sh.open_checked, ISOLDE_SHIELD_OPEN_SAMPLE);
	shield_close(f);
	/* Spread: the sample reaches both ends of the image. */
	for (uint64_t b = 4080; b < 4096; b++)
		change_block_keeping_identity(f, b);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "does not match image");
	for (uint64_t b = 4080; b < 4096; b++)
		write_block(f, b, 0);
	make_clean_side_file(f, 4096);
	for (uint64_t b = 0; b < 16; b++)
		change_block_keeping_identity(f, b);
	assert_int_equal(shield_open(f), -1);
	assert_contains(f->err, "does not match image");
}

/* ---- a crash ---- */

static void test_dirty_side_file_is_discarded_with_a_warning(void **state)
{
	struct fx *f = *state;
	struct capture c;
	uint64_t bad;

	make_image(f, 16);
	make_clean_side_file(f, 16);
	assert_int_equal(shield_open(f), 0);
	assert_true(f->sh.loaded);
	/* What a crash now would leave. */
	struct side dirty = read_side(f);
	assert_int_equal(header_of(&dirty)->state, ISOLDE_SHIELD_FILE_DIRTY);
	assert_int_equal(read_through(f, 0, 16, &bad), 0);
	shield_close(f);
	write_side(f, dirty.bytes, dirty.len);
	free(dirty.bytes);

	capture_begin(&c);
	int rc = shield_open(f);
	const char *said = capture_end(&c);
	assert_int_equal(rc, 0);
	assert_false(f->sh.loaded);
	assert_int_equal(f->sh.open_checked, 0);
	assert_contains(said, "did not close image");
	assert_contains(said, "learned afresh");
	/* Learned again: the next read of a block teaches, not judges. */
	assert_int_equal(read_through(f, 0, 16, &bad), 0);
	assert_int_equal(f->sh.blocks_learned, 16);
}

/* ---- close ---- */

static void test_close_forgets_a_block_a_driver_changed_unasked(void **state)
{
	struct fx *f = *state;
	struct capture c;

	make_image(f, 32);
	make_clean_side_file(f, 32);
	assert_int_equal(shield_open(f), 0);
	write_block(f, 5, 3); /* a driver writing where it was not asked to */
	capture_begin(&c);
	shield_close(f);
	const char *said = capture_end(&c);
	assert_contains(said, "1 block(s) of image");
	assert_contains(said, "(first: block 5)");
	assert_contains(said, "their checksums are forgotten");
	assert_int_equal(shield_open(f), 0);
	assert_true(f->sh.loaded);
	assert_false(knows(&f->sh, 5));
	assert_true(knows(&f->sh, 4) && knows(&f->sh, 6));
}

static void test_close_forgets_a_contradicted_block_outside_the_sample(void **state)
{
	struct fx *f = *state;
	struct capture c;
	unsigned char stale[BLOCK];
	uint64_t bad;

	/* 1024 known blocks: the sample takes every fourth, from block 2. */
	make_image(f, 1024);
	make_clean_side_file(f, 1024);
	assert_int_equal(shield_open(f), 0);
	/* A write acknowledged and lost: the image keeps other data, the
	 * shield caught the read (which then failed). */
	write_block(f, 3, 5);
	fill_block(stale, 3, 5);
	assert_int_equal(isolde_shield_read_end(&f->sh, isolde_shield_read_begin(&f->sh), stale, 3 * BLOCK,
						BLOCK, &bad), -1);
	capture_begin(&c);
	shield_close(f);
	const char *said = capture_end(&c);
	assert_contains(said, "(first: block 3)");
	assert_int_equal(shield_open(f), 0);
	assert_false(knows(&f->sh, 3));
	assert_int_equal(f->sh.open_checked, ISOLDE_SHIELD_OPEN_SAMPLE);
}

static void test_close_keeps_a_block_the_image_still_holds(void **state)
{
	struct fx *f = *state;
	unsigned char lie[BLOCK];
	uint64_t bad;

	make_image(f, 16);
	make_clean_side_file(f, 16);
	assert_int_equal(shield_open(f), 0);
	/* The driver lied in transit; the image is right. */
	fill_block(lie, 3, 8);
	assert_int_equal(isolde_shield_read_end(&f->sh, isolde_shield_read_begin(&f->sh), lie, 3 * BLOCK,
						BLOCK, &bad), -1);
	shield_close(f);
	assert_int_equal(shield_open(f), 0);
	assert_true(knows(&f->sh, 3));
}

static void test_close_keeps_nothing_when_the_image_differs_everywhere(void **state)
{
	struct fx *f = *state;
	struct capture c;

	make_image(f, 4096);
	make_clean_side_file(f, 4096);
	assert_int_equal(shield_open(f), 0);
	for (uint64_t b = 0; b < 4096; b++)
		write_block(f, b, 4);
	capture_begin(&c);
	shield_close(f);
	const char *said = capture_end(&c);
	assert_contains(said, "in many blocks");
	assert_contains(said, "no checksum is kept");
	assert_int_equal(shield_open(f), 0);
	assert_true(f->sh.loaded);
	assert_int_equal(f->sh.open_checked, 0);
}

static void test_written_blocks_persist(void **state)
{
	struct fx *f = *state;
	unsigned char buf[2 * BLOCK];
	uint64_t bad;

	make_image(f, 16);
	assert_int_equal(shield_open(f), 0);
	/* A write of blocks 6-7 through the front end: what io.c does. */
	fill_block(buf, 6, 2);
	fill_block(buf + BLOCK, 7, 2);
	isolde_shield_write_begin(&f->sh, 6 * BLOCK, 2 * BLOCK);
	assert_int_equal(pwrite(f->fd, buf, sizeof buf, 6 * BLOCK), (ssize_t)sizeof buf);
	isolde_shield_write_end(&f->sh, buf, 6 * BLOCK, 2 * BLOCK, true);
	/* A partial write leaves its block unknown. */
	isolde_shield_write_begin(&f->sh, 9 * BLOCK + 512, 512);
	isolde_shield_write_end(&f->sh, buf, 9 * BLOCK + 512, 512, true);
	shield_close(f);
	assert_int_equal(shield_open(f), 0);
	assert_true(knows(&f->sh, 6) && knows(&f->sh, 7));
	assert_false(knows(&f->sh, 9));
	assert_int_equal(f->sh.open_checked, 2);
	assert_int_equal(read_through(f, 6, 2, &bad), 0);
	assert_int_equal(f->sh.blocks_verified, 2);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_first_open_learns_and_close_persists),
		T(test_image_size_not_a_multiple_of_blocks),
		T(test_no_side_file_for_proc_paths),
		T(test_symlink_is_refused_and_its_target_untouched),
		T(test_symlink_planted_while_open_is_replaced_not_followed),
		T(test_fifo_is_refused_without_blocking),
		T(test_directory_is_refused),
		T(test_other_owner_is_refused),
		T(test_writable_by_others_is_refused),
		T(test_hard_link_is_refused),
		T(test_corrupt_side_file_is_an_error),
		T(test_previous_format_is_discarded_with_a_warning),
		T(test_image_changed_outside_isolde_is_an_error),
		T(test_side_file_contradicted_by_the_image_is_an_error),
		T(test_planted_side_file_with_wrong_sums_is_an_error),
		T(test_open_checks_a_bounded_sample_spread_over_the_image),
		T(test_dirty_side_file_is_discarded_with_a_warning),
		T(test_close_forgets_a_block_a_driver_changed_unasked),
		T(test_close_forgets_a_contradicted_block_outside_the_sample),
		T(test_close_keeps_a_block_the_image_still_holds),
		T(test_close_keeps_nothing_when_the_image_differs_everywhere),
		T(test_written_blocks_persist),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
