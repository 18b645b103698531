// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "libraries.h"
#include "error.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define LIST_OUTPUT_MAX (256 * 1024)


/* The ELF interpreter (PT_INTERP) of a 64-bit binary, or "" if static. */
static int read_interpreter(const char *binary, char *interp, size_t len, char *err, size_t errlen)
{
	Elf64_Ehdr eh;
	int fd = open(binary, O_RDONLY | O_CLOEXEC);

	interp[0] = '\0';
	if (fd < 0)
		return isolde_fail(err, errlen, "cannot read driver %s: %s", binary, strerror(errno));
	if (pread(fd, &eh, sizeof eh, 0) != sizeof eh || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > 256) {
		close(fd);
		return isolde_fail(err, errlen, "driver %s is not a 64-bit ELF executable", binary);
	}
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + i * sizeof ph)) != sizeof ph)
			break;
		if (ph.p_type != PT_INTERP)
			continue;
		if (ph.p_filesz < 2 || ph.p_filesz > len || pread(fd, interp, ph.p_filesz, (off_t)ph.p_offset) !=
							     (ssize_t)ph.p_filesz || interp[ph.p_filesz - 1] != '\0' ||
		    interp[0] != '/') {
			close(fd);
			return isolde_fail(err, errlen, "driver %s has a malformed ELF interpreter", binary);
		}
		break;
	}
	close(fd);
	return 0;
}

/* `INTERP --list BINARY`, its standard output into buf. */
static int run_list(const char *interp, const char *binary, char *buf, size_t len, char *err, size_t errlen)
{
	char *const argv[] = { (char *)interp, "--list", (char *)binary, NULL };
	char *const envp[] = { NULL };
	posix_spawn_file_actions_t fa;
	int out[2], status;
	size_t used = 0;
	pid_t pid;

	if (pipe2(out, O_CLOEXEC))
		return isolde_fail(err, errlen, "cannot list the libraries of %s: %s", binary, strerror(errno));
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	int r = posix_spawn(&pid, interp, &fa, NULL, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	close(out[1]);
	if (r) {
		close(out[0]);
		return isolde_fail(err, errlen, "cannot run %s to list the libraries of %s: %s", interp, binary,
			    strerror(r));
	}
	for (;;) {
		ssize_t n = read(out[0], buf + used, len - 1 - used);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		used += (size_t)n;
		if (used == len - 1)
			break;
	}
	close(out[0]);
	buf[used] = '\0';
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return isolde_fail(err, errlen, "%s --list %s failed (status %d): %.200s", interp, binary, status, buf);
	if (used == len - 1)
		return isolde_fail(err, errlen, "%s --list %s printed more than %zu bytes", interp, binary, len);
	return 0;
}

static bool under(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* A bind target at or above path, or -1. */
static int bind_covering(const struct isolde_libraries *l, const char *path)
{
	for (unsigned i = 0; i < l->nops; i++)
		if (l->ops[i].kind == LIBRARY_BIND && under(path, l->ops[i].path))
			return (int)i;
	return -1;
}

static int add_op(struct isolde_libraries *l, enum isolde_library_op_kind kind, const char *path,
		  const char *target, char *err, size_t errlen)
{
	for (unsigned i = 0; i < l->nops; i++)
		if (l->ops[i].kind == kind && strcmp(l->ops[i].path, path) == 0)
			return 0;
	if (l->nops == ISOLDE_LIBRARIES_MAX_OPS)
		return isolde_fail(err, errlen, "the driver's libraries need more than %d directories and links",
			    ISOLDE_LIBRARIES_MAX_OPS);
	struct isolde_library_op *op = &l->ops[l->nops++];
	op->kind = kind;
	snprintf(op->path, sizeof op->path, "%s", path);
	snprintf(op->target, sizeof op->target, "%s", target ? target : "");
	return 0;
}

/* A directory to bind: skip it if one above covers it. Binds never nest:
 * one below a new bind is dropped (the new one shows it). */
static int add_bind(struct isolde_libraries *l, const char *dir, char *err, size_t errlen)
{
	if (bind_covering(l, dir) >= 0)
		return 0;
	for (unsigned i = 0; i < l->nops; i++) {
		if (l->ops[i].kind == LIBRARY_BIND && under(l->ops[i].path, dir)) {
			l->ops[i] = l->ops[--l->nops];
			i--;
		}
	}
	if (add_op(l, LIBRARY_BIND, dir, dir, err, errlen))
		return -1;
	/* Inside a user namespace, a remount may not clear what the host's
	 * mount has (atime flags, noexec): keep it, add read-only. */
	struct statvfs vfs;
	unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV;
	if (statvfs(dir, &vfs) == 0) {
		if (vfs.f_flag & ST_NOEXEC)
			flags |= MS_NOEXEC;
		if (vfs.f_flag & ST_NOATIME)
			flags |= MS_NOATIME;
		if (vfs.f_flag & ST_NODIRATIME)
			flags |= MS_NODIRATIME;
		if (vfs.f_flag & ST_RELATIME)
			flags |= MS_RELATIME;
	}
	l->ops[l->nops - 1].flags = flags;
	return 0;
}

/*
 * The directories and links on the way to path, as a lookup walks it:
 * each symbolic link is made as it is, then followed. Nothing at or below a
 * bind is made (the bind shows it), except the bind's own mount point.
 */
static int mirror(struct isolde_libraries *l, const char *path, int depth, char *err, size_t errlen)
{
	char cur[PATH_MAX] = "";
	const char *p = path;

	if (depth > 16)
		return isolde_fail(err, errlen, "too many symbolic links on the way to %s", path);
	while (*p == '/')
		p++;
	while (*p) {
		const char *end = strchrnul(p, '/');
		size_t n = strlen(cur);
		struct stat st;

		if (n + 1 + (size_t)(end - p) >= sizeof cur)
			return isolde_fail(err, errlen, "path too long: %s", path);
		cur[n] = '/';
		memcpy(cur + n + 1, p, (size_t)(end - p));
		cur[n + 1 + (end - p)] = '\0';
		int b = bind_covering(l, cur);
		if (b >= 0 && strcmp(l->ops[b].path, cur) != 0)
			return 0;
		if (lstat(cur, &st) != 0)
			return isolde_fail(err, errlen, "cannot find %s (on the way to %s): %s", cur, path, strerror(errno));
		if (S_ISLNK(st.st_mode)) {
			char target[PATH_MAX], next[PATH_MAX];
			ssize_t t = readlink(cur, target, sizeof target - 1);
			if (t <= 0)
				return isolde_fail(err, errlen, "cannot read the link %s: %s", cur, strerror(errno));
			target[t] = '\0';
			if (add_op(l, LIBRARY_SYMLINK, cur, target, err, errlen))
				return -1;
			cur[n] = '\0';
			int w = target[0] == '/' ? snprintf(next, sizeof next, "%s%s", target, end)
						 : snprintf(next, sizeof next, "%s/%s%s", cur, target, end);
			if (w < 0 || (size_t)w >= sizeof next)
				return isolde_fail(err, errlen, "path too long: %s", path);
			return mirror(l, next, depth + 1, err, errlen);
		}
		/* Here b is -1, or the bind whose mount point cur is. */
		if (S_ISDIR(st.st_mode) && add_op(l, LIBRARY_MKDIR, cur, NULL, err, errlen))
			return -1;
		p = *end ? end + 1 : end;
		while (*p == '/')
			p++;
	}
	return 0;
}

static int add_read_rule(struct isolde_libraries *l, const char *real, bool beneath, char *err, size_t errlen)
{
	if (l->nread_fds == sizeof l->read_fds / sizeof l->read_fds[0])
		return isolde_fail(err, errlen, "the driver loads more than %d libraries", ISOLDE_LIBRARIES_MAX_FILES);
	int fd = open(real, O_PATH | O_CLOEXEC);
	if (fd < 0)
		return isolde_fail(err, errlen, "cannot open %s: %s", real, strerror(errno));
	l->read_beneath[l->nread_fds] = beneath;
	l->read_fds[l->nread_fds++] = fd;
	return 0;
}

/* One path the driver may read: its directory bound, the way to it made. */
static int grant_path(struct isolde_libraries *l, const char *path, bool from_policy, char *err, size_t errlen)
{
	char real[PATH_MAX], dir[PATH_MAX];
	struct stat st;

	if (!realpath(path, real) || stat(real, &st) != 0)
		return isolde_fail(err, errlen, "cannot find %s%s: %s", from_policy ? "the policy's library path " : "",
			    path, strerror(errno));
	bool is_dir = S_ISDIR(st.st_mode);
	if (!is_dir && !S_ISREG(st.st_mode))
		return isolde_fail(err, errlen, "%s is neither a file nor a directory", path);
	snprintf(dir, sizeof dir, "%s", real);
	if (!is_dir) {
		char *slash = strrchr(dir, '/');
		if (slash == dir)
			return isolde_fail(err, errlen, "%s is in the root directory, which is never shown", path);
		*slash = '\0';
	}
	if (add_bind(l, dir, err, errlen) || mirror(l, real, 0, err, errlen) || mirror(l, path, 0, err, errlen))
		return -1;
	return add_read_rule(l, real, is_dir, err, errlen);
}

static int add_file(struct isolde_libraries *l, const char *path, char *err, size_t errlen)
{
	if (l->nfiles == ISOLDE_LIBRARIES_MAX_FILES)
		return isolde_fail(err, errlen, "the driver loads more than %d libraries", ISOLDE_LIBRARIES_MAX_FILES);
	snprintf(l->files[l->nfiles++], PATH_MAX, "%s", path);
	return grant_path(l, path, false, err, errlen);
}

/* Lines of `ld.so --list`: "\tNAME => PATH (0x...)", "\tPATH (0x...)",
 * "\tNAME => not found". */
static int parse_list(struct isolde_libraries *l, char *text, const char *binary, char *err, size_t errlen)
{
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *path = strstr(line, "=> ");
		while (*line == '\t' || *line == ' ')
			line++;
		if (path)
			path += 3;
		else if (line[0] == '/')
			path = line;
		else
			continue; /* the vDSO: no file */
		if (strncmp(path, "not found", 9) == 0)
			return isolde_fail(err, errlen, "driver %s needs %.*s, which is not installed", binary,
				    (int)strcspn(line, " "), line);
		char *end = strstr(path, " (");
		if (end)
			*end = '\0';
		if (path[0] != '/')
			continue;
		if (strcmp(path, l->interpreter) == 0)
			continue;
		if (add_file(l, path, err, errlen))
			return -1;
	}
	return 0;
}

int isolde_libraries_find(struct isolde_libraries *l, const char *binary, const struct isolde_policy *p,
			  char *err, size_t errlen)
{
	memset(l, 0, sizeof *l);
	l->interpreter_fd = -1;
	l->files = calloc(ISOLDE_LIBRARIES_MAX_FILES, sizeof *l->files);
	l->ops = calloc(ISOLDE_LIBRARIES_MAX_OPS, sizeof *l->ops);
	char *list = malloc(LIST_OUTPUT_MAX);
	int rc = -1;

	if (!l->files || !l->ops || !list) {
		isolde_fail(err, errlen, "out of memory");
		goto out;
	}
	if (read_interpreter(binary, l->interpreter, sizeof l->interpreter, err, errlen))
		goto out;
	l->dynamic = l->interpreter[0] != '\0';
	if (l->dynamic) {
		char real[PATH_MAX];
		if (!realpath(l->interpreter, real) || grant_path(l, l->interpreter, false, err, errlen))
			goto out;
		/* The interpreter is also executed: its rule is its own. */
		l->interpreter_fd = l->read_fds[--l->nread_fds];
		if (run_list(l->interpreter, binary, list, LIST_OUTPUT_MAX, err, errlen) ||
		    parse_list(l, list, binary, err, errlen))
			goto out;
	}
	for (unsigned i = 0; i < p->nlibrary_paths; i++)
		if (grant_path(l, p->library_paths[i], true, err, errlen))
			goto out;
	rc = 0;
out:
	free(list);
	if (rc)
		isolde_libraries_free(l);
	return rc;
}

void isolde_libraries_free(struct isolde_libraries *l)
{
	for (unsigned i = 0; i < l->nread_fds; i++)
		close(l->read_fds[i]);
	if (l->interpreter_fd >= 0)
		close(l->interpreter_fd);
	free(l->files);
	free(l->ops);
	memset(l, 0, sizeof *l);
	l->interpreter_fd = -1;
}

unsigned isolde_libraries_inodes(const struct isolde_libraries *l)
{
	return l->nops;
}

/* root + path into buf, without allocating (the child of a raw clone). */
static bool join(char *buf, size_t len, const char *root, const char *path)
{
	size_t a = strlen(root), b = strlen(path);
	if (a + b + 1 > len)
		return false;
	memcpy(buf, root, a);
	memcpy(buf + a, path, b + 1);
	return true;
}

int isolde_libraries_mount(const struct isolde_libraries *l, const char *root, const char **stage)
{
	char where[PATH_MAX + 64];

	/* Directories and links first, in the order found (parents first),
	 * then the binds onto their mount points. */
	for (int pass = 0; pass < 2; pass++) {
		for (unsigned i = 0; i < l->nops; i++) {
			const struct isolde_library_op *op = &l->ops[i];
			if ((op->kind == LIBRARY_BIND) != (pass == 1))
				continue;
			*stage = "make the way to the driver's libraries";
			if (!join(where, sizeof where, root, op->path))
				return -1;
			if (op->kind == LIBRARY_MKDIR && mkdir(where, 0555) != 0 && errno != EEXIST)
				return -1;
			if (op->kind == LIBRARY_SYMLINK && symlink(op->target, where) != 0)
				return -1;
			if (op->kind != LIBRARY_BIND)
				continue;
			*stage = "bind the driver's libraries read-only";
			if (mount(op->target, where, NULL, MS_BIND, NULL) != 0 ||
			    mount(NULL, where, NULL, op->flags, NULL) != 0)
				return -1;
		}
	}
	return 0;
}
