// SPDX-License-Identifier: MIT
/*
 * The FUSE export: the device as one regular file.
 *
 *     isolde serve --image disk.img --export fuse:/tmp/dev
 *     losetup --find --show /tmp/dev        # or dd, qemu-img, python ...
 *
 * The mountpoint is a regular file and the FUSE file system mounted over it
 * IS that file: its root inode is a regular file whose bytes are the
 * device's (nbdfuse and qemu-storage-daemon's fuse export do the same).
 *
 * PATH
 *   missing      an empty regular file is created (0600) and removed at stop
 *   regular file mounted over; its own contents are hidden, never touched
 *   directory    refused: mounting over a directory would hide everything in
 *                it, and a file made up inside it would have a name the user
 *                never chose. Give a file path instead (PATH/disk).
 *   other        refused: device nodes, sockets, fifos; a symbolic link (give
 *                the file itself: it is what is mounted over and removed);
 *                a path where an isolde FUSE file is mounted already
 *
 * The file: size = the device's, mode 0600 (0400 with --readonly), owned by
 * the user running the server. default_permissions: the kernel checks
 * those bits. allow_other only when running as root (where it needs no
 * user_allow_other in /etc/fuse.conf): FUSE's own gate then lets any user's
 * process through to the mode bits; without it only the server's user gets
 * in, so a server run by a user serves that user alone. Opened
 * with FOPEN_DIRECT_IO: no page cache of its own (a loop device or a file
 * system above caches already), every write reaches the device before it
 * returns, and a read always sees what the driver has. The cost: mmap is
 * not available, as with qemu-storage-daemon.
 *
 * The size is fixed, like a block device's: truncate to the device size
 * succeeds and changes nothing, to any other size fails with EINVAL; O_TRUNC
 * on open is ignored, as for a block device (so `dd of=FILE` and `cp img
 * FILE` work and overwrite the start of the device); a write that starts at
 * the end fails with ENOSPC, one that crosses it is cut short.
 *
 * Requests: READ and WRITE (up to 1 MiB each: max_read = max_write) become
 * server_io requests, answered from their done callback; a write on a file
 * opened O_SYNC/O_DSYNC (or a pwritev2 RWF_DSYNC) is FUA. fsync, and the
 * flush the kernel sends when a writer closes the file, are a device FLUSH.
 * fallocate: PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE are WRITE_ZEROES (a
 * punched hole must read back as zeroes, which DISCARD - advisory - does
 * not promise; MAY_UNMAP lets the driver deallocate); anything else is
 * EOPNOTSUPP, as for a block device. Nothing blocks the loop: /dev/fuse is
 * non-blocking and read only when epoll says so, single-threaded.
 *
 * Stopping: quiesce stops reading /dev/fuse. stop unmounts: a plain
 * umount first; if the file is still in use (a loop device is attached, a
 * process holds it open) that fails with EBUSY, which is logged, and the
 * mount is detached lazily (libfuse's umount2(MNT_DETACH) as root,
 * fusermount3 -u -z otherwise) and the connection closed: its remaining
 * users get ENOTCONN from then on instead of hanging. A file the export
 * created is removed. If someone unmounts PATH while the server runs, the
 * export logs it and stops serving; the rest of the server carries on.
 *
 * Limitation: with `isolde serve --direct` the device accepts only aligned
 * requests (O_DIRECT on the image), and this export does no
 * read-modify-write: unaligned reads and writes of the file fail with EINVAL.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "json.h"
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif

#define FX_MAX_IO (1u << 20)           /* max_read = max_write */
#define FX_BATCH 64                    /* requests read from /dev/fuse per wake-up */
#define FX_MAX_BACKGROUND 64           /* kernel: async requests (readahead, aio) in flight */
#define FX_ATTR_TIMEOUT 1.0

struct fx_op;

struct fuse_export {
	struct isolde_server *srv;
	struct fuse_session *se;
	int fd;                  /* /dev/fuse, owned by the session */
	bool watching;           /* fd is in the server's epoll set */
	bool gone;               /* unmounted or aborted from outside */
	bool created;            /* PATH did not exist: remove it at stop */
	bool readonly;
	uint64_t size;
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime, ctime;
	struct fuse_buf buf;     /* one request read from /dev/fuse, reused */
	struct fx_op *free_ops;  /* recycled, see op_put */
	uint64_t requests, errors;
	unsigned inflight;
	char path[PATH_MAX];
};

/* One FUSE request waiting for the device. */
struct fx_op {
	struct server_io sio;
	struct fuse_export *fx;
	fuse_req_t req;
	size_t count;            /* READ: bytes to return; WRITE: bytes written */
	struct fx_op *next_free;
};

/* ---- requests ---- */

/*
 * An op is recycled, not freed, until the export stops: no malloc per
 * request, and an op stays valid memory after its done callback even if the
 * server were to look at the request once more. Ops are only taken again by
 * the next FUSE request; there are at most as many as requests were ever in
 * flight at once.
 */
static struct fx_op *op_get(struct fuse_export *fx, fuse_req_t req)
{
	struct fx_op *op = fx->free_ops;

	if (op)
		fx->free_ops = op->next_free;
	else if (!(op = malloc(sizeof *op)))
		return NULL;
	memset(op, 0, sizeof *op);
	op->fx = fx;
	op->req = req;
	op->sio.ctx = op;
	fx->inflight++;
	fx->requests++;
	return op;
}

static void op_put(struct fx_op *op)
{
	struct fuse_export *fx = op->fx;

	fx->inflight--;
	op->next_free = fx->free_ops;
	fx->free_ops = op;
}

static void reply_result(struct fx_op *op)
{
	if (op->sio.result) {
		op->fx->errors++;
		fuse_reply_err(op->req, -op->sio.result);
	}
}

static void read_done(struct server_io *sio)
{
	struct fx_op *op = sio->ctx;

	if (sio->result == 0)
		fuse_reply_buf(op->req, sio->buf, op->count);
	reply_result(op);
	free(sio->buf);
	op_put(op);
}

static void write_done(struct server_io *sio)
{
	struct fx_op *op = sio->ctx;

	if (sio->result == 0) {
		clock_gettime(CLOCK_REALTIME, &op->fx->mtime);
		op->fx->ctime = op->fx->mtime;
		fuse_reply_write(op->req, op->count);
	}
	reply_result(op);
	free(sio->buf);
	op_put(op);
}

static void status_done(struct server_io *sio)
{
	struct fx_op *op = sio->ctx;

	if (sio->result == 0)
		fuse_reply_err(op->req, 0);
	reply_result(op);
	op_put(op);
}

/* WRITE_ZEROES over the whole range (the server splits it). */
static void zeroes_done(struct server_io *sio)
{
	struct fx_op *op = sio->ctx;

	if (sio->result == 0) {
		clock_gettime(CLOCK_REALTIME, &op->fx->mtime);
		op->fx->ctime = op->fx->mtime;
	}
	status_done(sio);
}

static void submit(struct fx_op *op, uint8_t kind, uint16_t flags, void *buf, uint64_t len,
		   uint64_t offset, server_io_done done)
{
	op->sio.op = kind;
	op->sio.flags = flags;
	op->sio.buf = buf;
	op->sio.len = len;
	op->sio.offset = offset;
	op->sio.done = done;
	/* done may run before this returns: op is not touched afterwards. */
	server_submit(op->fx->srv, &op->sio);
}

/* ---- file system operations ---- */

static void fx_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = FX_MAX_IO;
	conn->max_read = FX_MAX_IO; /* must equal the max_read mount option */
	conn->max_background = FX_MAX_BACKGROUND;
	conn->congestion_threshold = FX_MAX_BACKGROUND * 3 / 4;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	/* Nothing is cached that could go stale: the file is direct I/O. */
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
}

static void file_stat(const struct fuse_export *fx, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = FUSE_ROOT_ID;
	st->st_mode = S_IFREG | (fx->readonly ? 0400 : 0600);
	st->st_nlink = 1;
	st->st_uid = fx->uid;
	st->st_gid = fx->gid;
	st->st_size = (off_t)fx->size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((fx->size + 511) / 512);
	st->st_atim = fx->atime;
	st->st_mtim = fx->mtime;
	st->st_ctim = fx->ctime;
}

static bool not_the_file(fuse_req_t req, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return false;
	fuse_reply_err(req, ENOENT);
	return true;
}

static void fx_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	struct stat st;

	(void)fi;
	if (not_the_file(req, ino))
		return;
	file_stat(fx, &st);
	fuse_reply_attr(req, &st, FX_ATTR_TIMEOUT);
}

static void fx_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	struct timespec now;
	struct stat st;

	(void)fi;
	if (not_the_file(req, ino))
		return;
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM); /* the file's owner and mode follow the server */
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != fx->size) {
		fuse_reply_err(req, EINVAL); /* the device cannot grow or shrink */
		return;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		fx->atime = now;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		fx->atime = attr->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		fx->mtime = now;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		fx->mtime = attr->st_mtim;
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
		      FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_SIZE))
		fx->ctime = now;
	file_stat(fx, &st);
	fuse_reply_attr(req, &st, FX_ATTR_TIMEOUT);
}

static void fx_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;

	if (not_the_file(req, ino))
		return;
	if (writing && fx->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->fh = writing;
	fi->noflush = !writing; /* a reader's close needs no FLUSH */
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fuse_reply_open(req, fi);
}

static void fx_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void fx_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	struct fx_op *op;
	void *buf;

	(void)fi;
	if (not_the_file(req, ino))
		return;
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if ((uint64_t)off >= fx->size || size == 0) {
		fuse_reply_buf(req, NULL, 0); /* end of file */
		return;
	}
	if (size > fx->size - (uint64_t)off)
		size = (size_t)(fx->size - (uint64_t)off);
	if (size > SERVER_MAX_REQUEST)
		size = SERVER_MAX_REQUEST; /* a short read; the kernel never asks for this much */
	if (!(buf = malloc(size)) || !(op = op_get(fx, req))) {
		free(buf);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	op->count = size;
	submit(op, ISOLDE_BLK_OP_READ, 0, buf, (uint32_t)size, (uint64_t)off, read_done);
}

static void fx_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	struct fx_op *op;
	void *buf;

	if (not_the_file(req, ino))
		return;
	if (fx->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (size == 0) {
		fuse_reply_write(req, 0);
		return;
	}
	if ((uint64_t)off >= fx->size) {
		fuse_reply_err(req, ENOSPC); /* as a block device does at its end */
		return;
	}
	if (size > fx->size - (uint64_t)off)
		size = (size_t)(fx->size - (uint64_t)off);
	if (size > SERVER_MAX_REQUEST)
		size = SERVER_MAX_REQUEST;
	/* The data lives in the buffer the next request is read into: copy it. */
	if (!(buf = malloc(size)) || !(op = op_get(fx, req))) {
		free(buf);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memcpy(buf, data, size);
	op->count = size;
	submit(op, ISOLDE_BLK_OP_WRITE, (fi->flags & O_DSYNC) ? ISOLDE_BLK_F_FUA : 0, buf,
	       (uint32_t)size, (uint64_t)off, write_done);
}

static void device_flush(fuse_req_t req)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	struct fx_op *op;

	if (fx->readonly) {
		fuse_reply_err(req, 0); /* nothing can have been written */
		return;
	}
	if (!(op = op_get(fx, req))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	submit(op, ISOLDE_BLK_OP_FLUSH, 0, NULL, 0, 0, status_done);
}

static void fx_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (not_the_file(req, ino))
		return;
	if (!fi->fh) {
		fuse_reply_err(req, 0); /* a reader closing */
		return;
	}
	device_flush(req);
}

static void fx_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	if (not_the_file(req, ino))
		return;
	device_flush(req);
}

static void fx_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			 struct fuse_file_info *fi)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	bool keep_size = mode & FALLOC_FL_KEEP_SIZE;
	uint16_t flags;
	struct fx_op *op;

	(void)fi;
	if (not_the_file(req, ino))
		return;
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
		flags = ISOLDE_BLK_F_MAY_UNMAP;
	else if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE)
		flags = 0;
	else {
		fuse_reply_err(req, EOPNOTSUPP); /* preallocation: the device is all there */
		return;
	}
	if (fx->readonly) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (offset < 0 || length <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	uint64_t start = (uint64_t)offset, end = start + (uint64_t)length;
	if (end < start || end > fx->size) {
		if (!keep_size) {
			fuse_reply_err(req, ENOSPC); /* the file cannot grow */
			return;
		}
		end = fx->size;
	}
	if (start >= end) {
		fuse_reply_err(req, 0); /* all beyond the end, size kept */
		return;
	}
	if (!(op = op_get(fx, req))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	submit(op, ISOLDE_BLK_OP_WRITE_ZEROES, flags, NULL, end - start, start, zeroes_done);
}

static void fx_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fuse_export *fx = fuse_req_userdata(req);
	struct statvfs sv;

	(void)ino;
	memset(&sv, 0, sizeof sv);
	sv.f_bsize = 4096;
	sv.f_frsize = 4096;
	sv.f_blocks = (fsblkcnt_t)((fx->size + 4095) / 4096);
	sv.f_files = 1;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops fx_ops = {
	.init = fx_init,
	.getattr = fx_getattr,
	.setattr = fx_setattr,
	.open = fx_open,
	.release = fx_release,
	.read = fx_read,
	.write = fx_write,
	.flush = fx_flush,
	.fsync = fx_fsync,
	.fallocate = fx_fallocate,
	.statfs = fx_statfs,
};

/* ---- the /dev/fuse fd in the server's loop ---- */

static void stop_watching(struct fuse_export *fx)
{
	if (fx->watching) {
		server_unwatch(fx->srv, fx->fd);
		fx->watching = false;
	}
}

static void fuse_readable(void *ctx, uint32_t events)
{
	struct fuse_export *fx = ctx;

	(void)events;
	for (int i = 0; i < FX_BATCH && fx->watching; i++) {
		int r = fuse_session_receive_buf(fx->se, &fx->buf);
		if (r == -EAGAIN || r == -EINTR)
			return;
		if (r == 0 || fuse_session_exited(fx->se)) {
			/* ENODEV: unmounted, or aborted through fusectl. */
			server_log(fx->srv, "fuse: %s was unmounted from outside; no longer serving it",
				   fx->path);
			fx->gone = true;
			stop_watching(fx);
			return;
		}
		if (r < 0) {
			server_log(fx->srv, "fuse: reading /dev/fuse for %s: %s; no longer serving it",
				   fx->path, strerror(-r));
			stop_watching(fx);
			return;
		}
		fuse_session_process_buf(fx->se, &fx->buf);
	}
}

/* ---- export_ops ---- */

/*
 * The absolute path of spec without looking at its last component (which
 * may be a FUSE mount this very thread serves, or will): the directory is
 * resolved, the name kept. "" if spec names a directory ("x/", "x/..").
 */
static int canonical_path(const char *spec, char *out, size_t outlen, char *err, size_t errlen)
{
	const char *slash = strrchr(spec, '/');
	const char *base = slash ? slash + 1 : spec;
	char dir[PATH_MAX], real[PATH_MAX];

	*out = '\0';
	if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		return 0;
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else if (slash == spec)
		snprintf(dir, sizeof dir, "/");
	else
		snprintf(dir, sizeof dir, "%.*s", (int)(slash - spec), spec);
	if (!realpath(dir, real)) {
		snprintf(err, errlen, "--export fuse:%s: %s: %s", spec, dir, strerror(errno));
		return -1;
	}
	if ((size_t)snprintf(out, outlen, "%s%s%s", real, strcmp(real, "/") ? "/" : "", base) >= outlen) {
		snprintf(err, errlen, "--export fuse:%s: the path is too long", spec);
		return -1;
	}
	return 0;
}

/* Is an isolde FUSE file system mounted at path (from a server that runs,
 * perhaps this one, or one that died)? Never looks at path itself. */
static bool isolde_mount_at(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, mnt[PATH_MAX];
	size_t cap = 0;
	bool found = false;

	if (!f)
		return false;
	while (!found && getline(&line, &cap, f) > 0) {
		char *p = line;
		for (int i = 0; i < 4 && p; i++) /* the mount point is the fifth field */
			if ((p = strchr(p, ' ')))
				p++;
		if (!p)
			continue;
		size_t n = 0;
		while (*p && *p != ' ' && n < sizeof mnt - 1) {
			if (p[0] == '\\' && p[1] >= '0' && p[1] <= '7' && p[2] && p[3]) {
				mnt[n++] = (char)(((p[1] - '0') << 6) | ((p[2] - '0') << 3) | (p[3] - '0'));
				p += 4;
			} else {
				mnt[n++] = *p++;
			}
		}
		mnt[n] = '\0';
		const char *type = strstr(p, " - ");
		found = strcmp(mnt, path) == 0 && type && strncmp(type + 3, "fuse.isolde ", 12) == 0;
	}
	free(line);
	fclose(f);
	return found;
}

/* Refuse what a careful user would not want mounted over; create PATH if it
 * is missing. */
static int prepare_path(struct fuse_export *fx, const char *spec, char *err, size_t errlen)
{
	struct stat st;

	if (!*spec) {
		snprintf(err, errlen, "--export fuse:PATH: the path is missing");
		return -1;
	}
	if (canonical_path(spec, fx->path, sizeof fx->path, err, errlen))
		return -1;
	/* Before anything looks at PATH: it may be this server's own mount,
	 * which nobody answers until the loop runs. */
	if (*fx->path && isolde_mount_at(fx->path)) {
		snprintf(err, errlen, "--export fuse:%s: an isolde FUSE export is already mounted there (by "
			 "another isolde serve, or one that died: then remove it with umount %s)", spec, spec);
		return -1;
	}
	if (!*fx->path || (lstat(fx->path, &st) == 0 && S_ISDIR(st.st_mode))) {
		snprintf(err, errlen, "--export fuse:%s is a directory; the device is mounted as a regular "
			 "file: give a file path, such as %s%sdisk (created if missing)", spec, spec,
			 spec[strlen(spec) - 1] == '/' ? "" : "/");
		return -1;
	}
	if (lstat(fx->path, &st) != 0) {
		if (errno == ENOTCONN) {
			snprintf(err, errlen, "--export fuse:%s: a dead FUSE mount is there (a server that "
				 "was killed?); remove it with: umount %s", spec, spec);
			return -1;
		}
		if (errno != ENOENT) {
			snprintf(err, errlen, "--export fuse:%s: %s", spec, strerror(errno));
			return -1;
		}
		int fd = open(fx->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			snprintf(err, errlen, "--export fuse:%s: cannot create it: %s", spec, strerror(errno));
			return -1;
		}
		close(fd);
		fx->created = true;
	} else if (S_ISLNK(st.st_mode)) {
		snprintf(err, errlen, "--export fuse:%s is a symbolic link; give the path of the file "
			 "itself", spec);
		return -1;
	} else if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "--export fuse:%s is not a regular file; give a file path (created "
			 "if missing)", spec);
		return -1;
	}
	return 0;
}

static void fx_free(struct fuse_export *fx)
{
	while (fx->free_ops) {
		struct fx_op *op = fx->free_ops;
		fx->free_ops = op->next_free;
		free(op);
	}
	free(fx->buf.mem);
	free(fx);
}

static int start(struct isolde_server *srv, const char *spec, void **state, char *err, size_t errlen)
{
	struct fuse_export *fx = calloc(1, sizeof *fx);
	char opts[256];

	if (!fx) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	fx->srv = srv;
	fx->fd = -1;
	fx->size = server_device_size(srv);
	fx->readonly = server_readonly(srv);
	fx->uid = getuid();
	fx->gid = getgid();
	clock_gettime(CLOCK_REALTIME, &fx->mtime);
	fx->atime = fx->ctime = fx->mtime;
	if (prepare_path(fx, spec, err, errlen)) {
		free(fx);
		return -1;
	}
	snprintf(opts, sizeof opts, "default_permissions,fsname=isolde,subtype=isolde,max_read=%u%s%s",
		 FX_MAX_IO, geteuid() == 0 ? ",allow_other" : "", fx->readonly ? ",ro" : "");
	char *argv[] = { "isolde", "-o", opts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	fx->se = fuse_session_new(&args, &fx_ops, sizeof fx_ops, fx);
	fuse_opt_free_args(&args);
	if (!fx->se) {
		snprintf(err, errlen, "--export fuse:%s: cannot create the FUSE session", spec);
		goto fail;
	}
	if (fuse_session_mount(fx->se, fx->path) != 0) {
		snprintf(err, errlen, "--export fuse:%s: cannot mount FUSE there (is /dev/fuse available, "
			 "and fusermount3 installed when not root?)", spec);
		goto fail;
	}
	fx->fd = fuse_session_fd(fx->se);
	int fl = fcntl(fx->fd, F_GETFL);
	if (fl < 0 || fcntl(fx->fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
	    server_watch(srv, fx->fd, EPOLLIN, fuse_readable, fx) != 0) {
		snprintf(err, errlen, "--export fuse:%s: cannot watch /dev/fuse", spec);
		fuse_session_unmount(fx->se);
		goto fail;
	}
	fx->watching = true;
	server_log(srv, "fuse: %s is the device (%llu bytes%s)", fx->path, (unsigned long long)fx->size,
		   fx->readonly ? ", read-only" : "");
	*state = fx;
	return 0;
fail:
	if (fx->se)
		fuse_session_destroy(fx->se);
	if (fx->created)
		unlink(fx->path);
	fx_free(fx);
	return -1;
}

static void quiesce(void *state)
{
	stop_watching(state);
}

static void stop(void *state)
{
	struct fuse_export *fx = state;

	stop_watching(fx);
	/* A plain unmount while the connection is still open: it needs nothing
	 * from us (no writeback cache, not fuseblk) and fails with EBUSY while
	 * the file is in use. As not root it fails with EPERM and fusermount3,
	 * run by libfuse below, unmounts. */
	if (!fx->gone && umount2(fx->path, UMOUNT_NOFOLLOW) != 0 && errno == EBUSY)
		server_log(fx->srv, "fuse: %s is still in use (a loop device? an open file?): detaching "
			   "it lazily; its users get ENOTCONN from now on", fx->path);
	/* Closes /dev/fuse, which ends the connection; if the mount is still
	 * there, detaches it (MNT_DETACH as root, fusermount3 -u -z if not). */
	fuse_session_unmount(fx->se);
	fuse_session_destroy(fx->se);
	if (fx->created && unlink(fx->path) != 0)
		server_log(fx->srv, "fuse: cannot remove %s, which it created: %s", fx->path, strerror(errno));
	fx_free(fx);
}

static void describe(void *state, FILE *f)
{
	struct fuse_export *fx = state;

	fputs("{\"kind\": \"fuse\", \"path\": ", f);
	json_write_string(f, fx->path);
	fprintf(f, ", \"mounted\": %s, \"readonly\": %s, \"requests\": %llu, \"inflight\": %u, "
		"\"errors\": %llu}", fx->gone ? "false" : "true", fx->readonly ? "true" : "false",
		(unsigned long long)fx->requests, fx->inflight, (unsigned long long)fx->errors);
}

static unsigned inflight(void *state)
{
	return ((struct fuse_export *)state)->inflight;
}

static unsigned connections(void *state)
{
	return ((struct fuse_export *)state)->gone ? 0 : 1;
}

const struct export_ops fuse_export_ops = {
	.scheme = "fuse", .start = start, .quiesce = quiesce, .stop = stop, .describe = describe,
	.inflight = inflight, .connections = connections,
};
