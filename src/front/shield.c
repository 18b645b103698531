// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "shield.h"
#include "write_all.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define OLD_VERSION_UNCHECKED 1u /* isolde before the whole-file checksum */
#define CLOSE_PASSES 8            /* sample re-checks at close before vouching for nothing */
#define STREAM_CHUNK (1u << 20)
#define TEMP_ATTEMPTS 16

static bool bit_test(const uint64_t *map, uint64_t b)
{
	return map[b / 64] >> (b % 64) & 1;
}

static void bit_assign(uint64_t *map, uint64_t b, bool v)
{
	if (v)
		map[b / 64] |= UINT64_C(1) << (b % 64);
	else
		map[b / 64] &= ~(UINT64_C(1) << (b % 64));
}

static bool is_known(const struct isolde_shield *sh, uint64_t b)
{
	return bit_test(sh->known, b);
}

static void set_known(struct isolde_shield *sh, uint64_t b, bool k)
{
	bit_assign(sh->known, b, k);
}

static uint64_t bitmap_words(uint64_t nblocks)
{
	return (nblocks + 63) / 64;
}

static size_t bitmap_bytes(const struct isolde_shield *sh)
{
	return bitmap_words(sh->nblocks) * sizeof(uint64_t);
}

static size_t sums_bytes(const struct isolde_shield *sh)
{
	return sh->nblocks * sizeof(uint64_t);
}

/* ---- reading and writing whole buffers ---- */

/* False with errno set (0 at end of file) unless all len bytes were read. */
static bool pread_all(int fd, void *buf, size_t len, off_t off)
{
	unsigned char *p = buf;

	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = 0;
			return false;
		}
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return true;
}

static const char *read_error(void)
{
	return errno ? strerror(errno) : "unexpected end of file";
}

/* ---- messages ---- */

static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...)
{
	va_list ap;

	fputs("isolde: warning: integrity shield: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The side file cannot be used: say which, why, and what to do. Always -1. */
static int refuse(const struct isolde_shield *sh, char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int refuse(const struct isolde_shield *sh, char *err, size_t errlen, const char *fmt, ...)
{
	char why[PATH_MAX + 256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "integrity shield: side file %s %s; remove it to learn the checksums afresh",
		 sh->sidecar, why);
	return -1;
}

static const char *file_kind(mode_t mode)
{
	if (S_ISDIR(mode))
		return "a directory";
	if (S_ISFIFO(mode))
		return "a FIFO";
	if (S_ISSOCK(mode))
		return "a socket";
	if (S_ISCHR(mode))
		return "a character device";
	if (S_ISBLK(mode))
		return "a block device";
	return "of an unknown type";
}

/* ---- the image's identity ---- */

/* What the side file records of the image; false if it cannot be stat'ed. */
static bool identity(const struct isolde_shield *sh, struct isolde_shield_file_header *h)
{
	struct stat st;

	if (fstat(sh->image_fd, &st) != 0)
		return false;
	h->image_size = sh->image_size;
	h->image_dev = st.st_dev;
	h->image_ino = st.st_ino;
	h->image_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	return true;
}

/* What changed between the image the side file describes and this one. */
static const char *identity_change(const struct isolde_shield_file_header *was,
				   const struct isolde_shield_file_header *now)
{
	if (was->image_size != now->image_size)
		return "its size";
	if (was->image_dev != now->image_dev)
		return "its device";
	if (was->image_ino != now->image_ino)
		return "its inode";
	if (was->image_mtime_ns != now->image_mtime_ns)
		return "its modification time";
	return NULL;
}

static void fill_header(const struct isolde_shield *sh, uint32_t state, struct isolde_shield_file_header *h)
{
	memset(h, 0, sizeof *h);
	h->magic = ISOLDE_SHIELD_FILE_MAGIC;
	h->version = ISOLDE_SHIELD_FILE_VERSION;
	h->state = state;
	h->block_size = ISOLDE_SHIELD_BLOCK;
	h->image_size = sh->image_size;
	h->nblocks = sh->nblocks;
}

/* ---- the whole-file checksum ---- */

static void hash_header(XXH3_state_t *x, const struct isolde_shield_file_header *h)
{
	struct isolde_shield_file_header copy = *h;

	copy.checksum = 0;
	XXH3_64bits_update(x, &copy, sizeof copy);
}

static uint64_t file_checksum(const struct isolde_shield *sh, const struct isolde_shield_file_header *h)
{
	XXH3_state_t *x = XXH3_createState();
	uint64_t sum;

	if (!x)
		return 0; /* never a valid file's: the write fails its check at open */
	XXH3_64bits_reset(x);
	hash_header(x, h);
	if (h->state == ISOLDE_SHIELD_FILE_CLEAN) {
		XXH3_64bits_update(x, sh->known, bitmap_bytes(sh));
		XXH3_64bits_update(x, sh->sums, sums_bytes(sh));
	}
	sum = XXH3_64bits_digest(x);
	XXH3_freeState(x);
	return sum;
}

/* The file's body, [off, off + len): into buf when given, else hashed only. */
static bool hash_body(XXH3_state_t *x, int fd, void *buf, uint64_t len, off_t off)
{
	if (buf) {
		if (!pread_all(fd, buf, len, off))
			return false;
		XXH3_64bits_update(x, buf, len);
		return true;
	}
	unsigned char *chunk = malloc(STREAM_CHUNK);
	bool ok = chunk != NULL;
	while (ok && len > 0) {
		size_t n = len < STREAM_CHUNK ? (size_t)len : STREAM_CHUNK;
		ok = pread_all(fd, chunk, n, off);
		if (ok)
			XXH3_64bits_update(x, chunk, n);
		len -= n;
		off += (off_t)n;
	}
	free(chunk);
	return ok;
}

/*
 * Hash the side file after its header; a clean one describing an image of
 * this size is read into sh->known and sh->sums on the way. 1: the checksum
 * holds, 0: it does not, -1: read error (errno).
 */
static int check_checksum(struct isolde_shield *sh, int fd, const struct isolde_shield_file_header *h)
{
	XXH3_state_t *x = XXH3_createState();
	bool clean = h->state == ISOLDE_SHIELD_FILE_CLEAN, ours = clean && h->nblocks == sh->nblocks;
	uint64_t bits = bitmap_words(h->nblocks) * sizeof(uint64_t), sums = h->nblocks * sizeof(uint64_t);
	bool ok;

	if (!x) {
		errno = ENOMEM;
		return -1;
	}
	XXH3_64bits_reset(x);
	hash_header(x, h);
	ok = !clean || (hash_body(x, fd, ours ? sh->known : NULL, bits, sizeof *h) &&
			hash_body(x, fd, ours ? sh->sums : NULL, sums, (off_t)(sizeof *h + bits)));
	uint64_t sum = XXH3_64bits_digest(x);
	XXH3_freeState(x);
	if (!ok)
		return -1;
	return sum == h->checksum;
}

/* ---- loading ---- */

static int check_kind_and_owner(const struct isolde_shield *sh, const struct stat *st, char *err,
				size_t errlen)
{
	if (!S_ISREG(st->st_mode))
		return refuse(sh, err, errlen, "is not a regular file but %s", file_kind(st->st_mode));
	if (st->st_uid != geteuid())
		return refuse(sh, err, errlen, "is owned by uid %u, not by uid %u that runs isolde",
			      (unsigned)st->st_uid, (unsigned)geteuid());
	if (st->st_mode & (S_IWGRP | S_IWOTH))
		return refuse(sh, err, errlen, "is writable by users other than its owner (mode %04o)",
			      (unsigned)(st->st_mode & 07777));
	/* isolde's own is renamed into place and never linked again. */
	if (st->st_nlink != 1)
		return refuse(sh, err, errlen, "has %lu hard links; isolde's own has one",
			      (unsigned long)st->st_nlink);
	return 0;
}

/* The size a side file with this header must have (UINT64_MAX: none can). */
static uint64_t expected_size(const struct isolde_shield_file_header *h)
{
	if (h->state != ISOLDE_SHIELD_FILE_CLEAN)
		return sizeof *h;
	if (h->nblocks > (UINT64_MAX - sizeof *h) / 16)
		return UINT64_MAX;
	return sizeof *h + bitmap_words(h->nblocks) * sizeof(uint64_t) + h->nblocks * sizeof(uint64_t);
}

/* No bit past the last block: the sample counts every set bit. */
static bool bitmap_tail_clear(const struct isolde_shield *sh)
{
	unsigned used = (unsigned)(sh->nblocks % 64);

	return used == 0 || sh->known[sh->nblocks / 64] >> used == 0;
}

/* A header that is this format's and consistent in itself, of a file of that size. */
static int check_header(const struct isolde_shield *sh, const struct isolde_shield_file_header *h,
			off_t file_size, char *err, size_t errlen)
{
	if ((uint64_t)file_size < sizeof *h)
		return refuse(sh, err, errlen, "is corrupt: %lld bytes, shorter than its header",
			      (long long)file_size);
	if (h->block_size != ISOLDE_SHIELD_BLOCK || h->nblocks != h->image_size / ISOLDE_SHIELD_BLOCK ||
	    (h->state != ISOLDE_SHIELD_FILE_CLEAN && h->state != ISOLDE_SHIELD_FILE_DIRTY))
		return refuse(sh, err, errlen, "is corrupt: its header contradicts itself");
	if ((uint64_t)file_size != expected_size(h))
		return refuse(sh, err, errlen, "is corrupt: %lld bytes, not the %llu its header implies",
			      (long long)file_size, (unsigned long long)expected_size(h));
	return 0;
}

/* Everything after the checksum: is this the image the file describes? */
static int check_describes_image(struct isolde_shield *sh, const struct isolde_shield_file_header *h,
				 const char *image, char *err, size_t errlen)
{
	struct isolde_shield_file_header now;
	const char *changed;

	if (!identity(sh, &now)) {
		snprintf(err, errlen, "integrity shield: cannot stat image %s: %s", image, strerror(errno));
		return -1;
	}
	changed = identity_change(h, &now);
	if (changed)
		return refuse(sh, err, errlen, "was written for image %s as it was before (%s changed "
			      "since): the image was changed outside isolde", image, changed);
	if (!bitmap_tail_clear(sh))
		return refuse(sh, err, errlen, "is corrupt: it knows blocks past the end of the image");
	return 0;
}

static int read_sidecar(struct isolde_shield *sh, int fd, const char *image, char *err, size_t errlen)
{
	struct isolde_shield_file_header h;
	struct stat st;
	int sum_ok;

	if (fstat(fd, &st) != 0)
		return refuse(sh, err, errlen, "cannot be examined: %s", strerror(errno));
	if (check_kind_and_owner(sh, &st, err, errlen))
		return -1;
	memset(&h, 0, sizeof h);
	size_t head = (uint64_t)st.st_size < sizeof h ? (size_t)st.st_size : sizeof h;
	if (head < offsetof(struct isolde_shield_file_header, block_size))
		return refuse(sh, err, errlen, "is corrupt: %lld bytes, shorter than its header",
			      (long long)st.st_size);
	if (!pread_all(fd, &h, head, 0))
		return refuse(sh, err, errlen, "cannot be read: %s", read_error());
	if (h.magic != ISOLDE_SHIELD_FILE_MAGIC)
		return refuse(sh, err, errlen, "is corrupt: it does not begin with the side file's magic number");
	if (h.version == OLD_VERSION_UNCHECKED) {
		warn("side file %s was written by an older isolde, without a checksum of its own; it is "
		     "discarded and the checksums are learned afresh", sh->sidecar);
		return 0;
	}
	if (h.version != ISOLDE_SHIELD_FILE_VERSION)
		return refuse(sh, err, errlen, "is corrupt or from another isolde: format version %u, this "
			      "isolde reads %u", h.version, ISOLDE_SHIELD_FILE_VERSION);
	if (check_header(sh, &h, st.st_size, err, errlen))
		return -1;
	sum_ok = check_checksum(sh, fd, &h);
	if (sum_ok < 0)
		return refuse(sh, err, errlen, "cannot be read: %s", read_error());
	if (!sum_ok)
		return refuse(sh, err, errlen, "is corrupt: its checksum does not match its contents");
	if (h.state == ISOLDE_SHIELD_FILE_DIRTY) {
		/* Not an error: a crash is no reason to refuse the image, and
		 * learning afresh is what a first open does. Its sums, had it
		 * kept any, would not cover the session's writes. */
		warn("side file %s was left by an isolde that did not close image %s (a crash?); its "
		     "checksums are learned afresh", sh->sidecar, image);
		return 0;
	}
	if (check_describes_image(sh, &h, image, err, errlen))
		return -1;
	sh->loaded = true;
	return 0;
}

/* 0 when there is nothing to load or it was loaded (sh->loaded), -1 with
 * err when the side file must not be used. */
static int load_sidecar(struct isolde_shield *sh, const char *image, char *err, size_t errlen)
{
	/* O_NONBLOCK: a FIFO planted there must not hang the open. */
	int fd = open(sh->sidecar, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	int rc;

	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return 0;
		if (e == ELOOP && lstat(sh->sidecar, &st) == 0 && S_ISLNK(st.st_mode))
			return refuse(sh, err, errlen, "is a symbolic link, which isolde does not follow");
		return refuse(sh, err, errlen, "cannot be opened: %s", strerror(e));
	}
	rc = read_sidecar(sh, fd, image, err, errlen);
	close(fd);
	if (rc != 0 || !sh->loaded) {
		memset(sh->known, 0, bitmap_bytes(sh));
		sh->loaded = false;
	}
	return rc;
}

/* ---- the image against its checksums ---- */

static uint64_t count_known(const struct isolde_shield *sh)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < bitmap_words(sh->nblocks); w++)
		n += (uint64_t)__builtin_popcountll(sh->known[w]);
	return n;
}

/* The index of the k-th set bit of word (k < its population). */
static unsigned nth_bit(uint64_t word, uint64_t k)
{
	while (k--)
		word &= word - 1;
	return (unsigned)__builtin_ctzll(word);
}

/*
 * Up to ISOLDE_SHIELD_OPEN_SAMPLE known blocks, spread evenly by rank over
 * all the known blocks, in one pass over the bitmap. The sample depends only
 * on the bitmap, so what close checked is exactly what the next open checks.
 */
static unsigned pick_sample(const struct isolde_shield *sh, uint64_t picks[ISOLDE_SHIELD_OPEN_SAMPLE])
{
	uint64_t known = count_known(sh), seen = 0;
	unsigned n = known < ISOLDE_SHIELD_OPEN_SAMPLE ? (unsigned)known : ISOLDE_SHIELD_OPEN_SAMPLE;
	unsigned i = 0;

	for (uint64_t w = 0; w < bitmap_words(sh->nblocks) && i < n; w++) {
		uint64_t word = sh->known[w];
		uint64_t pop = (uint64_t)__builtin_popcountll(word);
		for (; i < n; i++) {
			uint64_t rank = (2 * (uint64_t)i + 1) * known / (2 * (uint64_t)n);
			if (rank >= seen + pop)
				break;
			picks[i] = w * 64 + nth_bit(word, rank - seen);
		}
		seen += pop;
	}
	return i;
}

/* 1: block b of the image has its checksum, 0: it differs, -1: unreadable (errno). */
static int block_matches(const struct isolde_shield *sh, uint64_t b, void *buf)
{
	if (!pread_all(sh->image_fd, buf, ISOLDE_SHIELD_BLOCK, (off_t)(b * ISOLDE_SHIELD_BLOCK)))
		return -1;
	return XXH3_64bits(buf, ISOLDE_SHIELD_BLOCK) == sh->sums[b];
}

/* A block buffer that suits an O_DIRECT image fd too. */
static void *block_buffer(void)
{
	return aligned_alloc(ISOLDE_SHIELD_BLOCK, ISOLDE_SHIELD_BLOCK);
}

/* Read the sample through the front end's own fd: a side file planted with
 * wrong sums fails here, once, instead of failing reads one by one. */
static int check_against_image(struct isolde_shield *sh, const char *image, char *err, size_t errlen)
{
	uint64_t picks[ISOLDE_SHIELD_OPEN_SAMPLE];
	unsigned n = pick_sample(sh, picks);
	void *buf = block_buffer();
	int rc = 0;

	if (!buf) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (unsigned i = 0; i < n && rc == 0; i++) {
		int m = block_matches(sh, picks[i], buf);
		sh->open_checked++;
		if (m < 0) {
			snprintf(err, errlen, "integrity shield: cannot check side file %s against image %s: "
				 "reading block %llu: %s", sh->sidecar, image, (unsigned long long)picks[i],
				 read_error());
			rc = -1;
		} else if (m == 0) {
			rc = refuse(sh, err, errlen, "does not match image %s at block %llu: the image was "
				    "changed outside isolde, or the file belongs to another image", image,
				    (unsigned long long)picks[i]);
		}
	}
	free(buf);
	return rc;
}

/* ---- writing ---- */

/* A new file beside the side file, created here and nowhere else. */
static int create_temp(const struct isolde_shield *sh, char *tmp, size_t len)
{
	for (int attempt = 0; attempt < TEMP_ATTEMPTS; attempt++) {
		uint64_t r;
		if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
			r = (uint64_t)attempt ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)tmp;
		snprintf(tmp, len, "%s.tmp-%d-%016llx", sh->sidecar, (int)getpid(), (unsigned long long)r);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST)
			return fd;
	}
	return -1;
}

static int sync_directory_of(const char *path)
{
	char dir[PATH_MAX];
	char *slash;
	int fd, rc;

	snprintf(dir, sizeof dir, "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else
		slash[slash == dir] = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	/* EINVAL: this file system cannot sync a directory; nothing more to do. */
	rc = fsync(fd) == 0 || errno == EINVAL ? 0 : -1;
	close(fd);
	return rc;
}

static bool write_contents(const struct isolde_shield *sh, int fd, uint32_t state)
{
	struct isolde_shield_file_header h;

	fill_header(sh, state, &h);
	if (!identity(sh, &h))
		return false;
	h.checksum = file_checksum(sh, &h);
	/* umask does not decide who may read it; only the owner writes it. */
	if (fchmod(fd, 0600) != 0 || !isolde_write_all(fd, &h, sizeof h))
		return false;
	if (state == ISOLDE_SHIELD_FILE_CLEAN &&
	    (!isolde_write_all(fd, sh->known, bitmap_bytes(sh)) || !isolde_write_all(fd, sh->sums, sums_bytes(sh))))
		return false;
	return fdatasync(fd) == 0;
}

/*
 * The side file itself is never opened for writing: a new file is written
 * beside it and renamed over it. A link planted in its place is replaced,
 * not followed; a crash leaves the old file or the new one, whole.
 */
static int replace_sidecar(const struct isolde_shield *sh, uint32_t state)
{
	char tmp[PATH_MAX + 64];
	int fd = create_temp(sh, tmp, sizeof tmp);
	bool ok;
	int e;

	if (fd < 0)
		return -1;
	ok = write_contents(sh, fd, state);
	e = errno;
	if (close(fd) != 0 && ok) {
		ok = false;
		e = errno;
	}
	if (ok && rename(tmp, sh->sidecar) != 0) {
		ok = false;
		e = errno;
	}
	if (!ok) {
		unlink(tmp);
		errno = e;
		return -1;
	}
	return sync_directory_of(sh->sidecar);
}

static bool persist(struct isolde_shield *sh, uint32_t state)
{
	if (!sh->sidecar[0])
		return true;
	if (replace_sidecar(sh, state) != 0) {
		warn("cannot write side file %s: %s; checksums will not persist", sh->sidecar, strerror(errno));
		return false;
	}
	return true;
}

/* ---- close: vouch only for what the image holds ---- */

static void forget(struct isolde_shield *sh, uint64_t b, uint64_t *first)
{
	if (sh->close_forgotten++ == 0)
		*first = b;
	set_known(sh, b, false);
}

/* Blocks a read contradicted this session and that still differ. */
static void recheck_suspects(struct isolde_shield *sh, void *buf, uint64_t *first)
{
	for (uint64_t w = 0; w < bitmap_words(sh->nblocks); w++) {
		for (uint64_t bits = sh->suspect[w] & sh->known[w]; bits; bits &= bits - 1) {
			uint64_t b = w * 64 + (uint64_t)__builtin_ctzll(bits);
			if (block_matches(sh, b, buf) != 1)
				forget(sh, b, first);
		}
	}
}

/* The sample the next open checks must hold. Forgetting a block moves the
 * sample, so check again, a few times; then vouch for nothing. false then. */
static bool recheck_sample(struct isolde_shield *sh, void *buf, uint64_t *first)
{
	uint64_t picks[ISOLDE_SHIELD_OPEN_SAMPLE];

	for (int pass = 0; pass < CLOSE_PASSES; pass++) {
		unsigned n = pick_sample(sh, picks);
		bool held = true;
		for (unsigned i = 0; i < n; i++) {
			if (block_matches(sh, picks[i], buf) != 1) {
				forget(sh, picks[i], first);
				held = false;
			}
		}
		if (held)
			return true;
	}
	memset(sh->known, 0, bitmap_bytes(sh));
	return false;
}

/*
 * A faulty driver can write blocks it was not asked to, or lose a write the
 * shield caught (the read failed with EIO). Persisting their checksums
 * would make the next open fail as if the image had been changed outside
 * isolde; forget them, and say so now, when the driver that did it is known.
 */
static void reconcile(struct isolde_shield *sh, const char *image)
{
	void *buf = block_buffer();
	uint64_t first = 0;
	bool held;

	if (!buf) {
		memset(sh->known, 0, bitmap_bytes(sh));
		return;
	}
	recheck_suspects(sh, buf, &first);
	held = recheck_sample(sh, buf, &first);
	free(buf);
	if (!held)
		warn("image %s differs from what was written through isolde in many blocks (first: block "
		     "%llu): a driver wrote them unasked or lost writes; no checksum is kept", image,
		     (unsigned long long)first);
	else if (sh->close_forgotten)
		warn("%llu block(s) of image %s (first: block %llu) differ from what was written through "
		     "isolde: a driver wrote them unasked or lost a write; their checksums are forgotten",
		     (unsigned long long)sh->close_forgotten, image, (unsigned long long)first);
}

/* ---- open and close ---- */

static void shield_free(struct isolde_shield *sh)
{
	free(sh->sums);
	free(sh->known);
	free(sh->suspect);
	free(sh->activity);
	free(sh->writes_inflight);
	memset(sh, 0, sizeof *sh);
}

/* IMAGE.isolde-shield, unless the image has no directory to keep it in
 * (reached through /proc/self/fd) or the name would not fit. */
static void name_sidecar(struct isolde_shield *sh, const char *image)
{
	static const char suffix[] = ".isolde-shield";
	/* Room for create_temp's suffix, so that no name is ever cut short. */
	size_t room = sizeof sh->sidecar - sizeof ".tmp-2147483647-0123456789abcdef";

	if (strncmp(image, "/proc/", 6) == 0)
		return;
	if (strlen(image) + strlen(suffix) >= room) {
		warn("the path of image %s is too long for a side file beside it; checksums will not persist",
		     image);
		return;
	}
	snprintf(sh->sidecar, sizeof sh->sidecar, "%s%s", image, suffix);
}

int isolde_shield_open(struct isolde_shield *sh, const char *image, int image_fd, uint64_t size,
		       char *err, size_t errlen)
{
	memset(sh, 0, sizeof *sh);
	sh->image_fd = image_fd;
	sh->image_size = size;
	sh->nblocks = size / ISOLDE_SHIELD_BLOCK;
	sh->sums = calloc(sh->nblocks + 1, sizeof *sh->sums);
	sh->known = calloc(bitmap_words(sh->nblocks) + 1, sizeof *sh->known);
	sh->suspect = calloc(bitmap_words(sh->nblocks) + 1, sizeof *sh->suspect);
	sh->activity = calloc(sh->nblocks + 1, sizeof *sh->activity);
	sh->writes_inflight = calloc(sh->nblocks + 1, sizeof *sh->writes_inflight);
	if (!sh->sums || !sh->known || !sh->suspect || !sh->activity || !sh->writes_inflight) {
		snprintf(err, errlen, "out of memory for the integrity shield of %llu blocks",
			 (unsigned long long)sh->nblocks);
		shield_free(sh);
		return -1;
	}
	/* A remote image (no fd) has nowhere isolde owns beside it. */
	if (image_fd >= 0)
		name_sidecar(sh, image);
	if (!sh->sidecar[0])
		return 0;
	if (load_sidecar(sh, image, err, errlen) != 0 ||
	    (sh->loaded && check_against_image(sh, image, err, errlen) != 0)) {
		shield_free(sh);
		return -1;
	}
	/* Until close, the side file vouches for nothing: a crash leaves no
	 * clean file whose sums the session's writes made stale. */
	if (!persist(sh, ISOLDE_SHIELD_FILE_DIRTY)) {
		if (sh->loaded)
			warn("side file %s stays as it was and will not match image %s once it is written "
			     "to; remove it", sh->sidecar, image);
		sh->sidecar[0] = '\0';
	}
	return 0;
}

void isolde_shield_close(struct isolde_shield *sh)
{
	if (sh->sums && sh->sidecar[0]) {
		/* The image's name is gone; the side file's says which it is. */
		char image[PATH_MAX];
		snprintf(image, sizeof image, "%.*s", (int)(strlen(sh->sidecar) - strlen(".isolde-shield")),
			 sh->sidecar);
		reconcile(sh, image);
		(void)persist(sh, ISOLDE_SHIELD_FILE_CLEAN);
	}
	shield_free(sh);
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
			bit_assign(sh->suspect, b, true);
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

unsigned isolde_shield_sums(const void *buf, uint64_t off, uint64_t len, uint64_t *sums)
{
	uint64_t fw, ew, fa, ea;
	const unsigned char *p = buf;
	unsigned n = 0;

	span(off, len, &fw, &ew, &fa, &ea);
	for (uint64_t b = fw; b < ew; b++)
		sums[n++] = XXH3_64bits(p + (b * ISOLDE_SHIELD_BLOCK - off), ISOLDE_SHIELD_BLOCK);
	return n;
}

/* The sum of whole block b of a write: taken before the driver could touch
 * the data (sums), or from the caller's private buffer now (p). */
static uint64_t written_sum(const unsigned char *p, const uint64_t *sums, uint64_t b, uint64_t fw,
			    uint64_t off)
{
	return sums ? sums[b - fw] : XXH3_64bits(p + (b * ISOLDE_SHIELD_BLOCK - off), ISOLDE_SHIELD_BLOCK);
}

static void write_end(struct isolde_shield *sh, const unsigned char *p, const uint64_t *sums, uint64_t off,
		      uint64_t len, bool ok)
{
	uint64_t fw, ew, fa, ea;

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
		if (ok && whole && sh->writes_inflight[b] == 0 && (p || sums)) {
			sh->sums[b] = written_sum(p, sums, b, fw, off);
			set_known(sh, b, true);
		} else {
			set_known(sh, b, false);
		}
	}
}

void isolde_shield_write_end(struct isolde_shield *sh, const void *buf, uint64_t off, uint64_t len,
			     bool ok)
{
	write_end(sh, buf, NULL, off, len, ok);
}

void isolde_shield_write_end_sums(struct isolde_shield *sh, const uint64_t *sums, uint64_t off,
				  uint64_t len, bool ok)
{
	write_end(sh, NULL, sums, off, len, ok);
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
