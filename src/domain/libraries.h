/* SPDX-License-Identifier: MIT */
/*
 * A dynamically linked driver's libraries (policy 'libraries loaded'):
 * which files its dynamic loader loads at start, found once per domain by
 * the trusted launcher, and how its empty root shows exactly those.
 *
 * The launcher reads the binary's ELF interpreter and asks that loader for
 * the list (`ld.so --list BINARY`, which loads and relocates but runs none
 * of the driver's code), adds the policy's further paths, and plans:
 *
 *   - the directories and symbolic links on the way to each library, as
 *     the loader will look them up (/lib64 -> usr/lib64 on a merged /usr),
 *     made in the driver's tmpfs root;
 *   - each directory holding a library, bind-mounted read-only (nosuid,
 *     nodev; not noexec, for the loader maps code from it);
 *   - Landlock rules that let the driver read exactly those library files
 *     (and execute the loader), nothing else in those directories.
 *
 * The mounts are made in the child between clone and exec with system calls
 * only (no allocation): everything is computed here, in the parent.
 */
#ifndef ISOLDE_DOMAIN_LIBRARIES_H
#define ISOLDE_DOMAIN_LIBRARIES_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include "isolde/policy.h"

#define ISOLDE_LIBRARIES_MAX_FILES 192
#define ISOLDE_LIBRARIES_MAX_OPS 256

enum isolde_library_op_kind { LIBRARY_MKDIR, LIBRARY_SYMLINK, LIBRARY_BIND };

struct isolde_library_op {
	enum isolde_library_op_kind kind;
	char path[PATH_MAX];   /* where, as the driver sees it */
	char target[PATH_MAX]; /* SYMLINK: its text; BIND: the host directory */
	unsigned long flags;   /* BIND: the remount's flags (read-only, and what
				  the host's mount has that may not be cleared) */
};

struct isolde_libraries {
	bool dynamic;                /* the binary has an ELF interpreter */
	char interpreter[PATH_MAX];
	unsigned nfiles;             /* libraries the loader loads, real paths */
	char (*files)[PATH_MAX];
	int interpreter_fd;          /* O_PATH, for Landlock: read and execute */
	unsigned nread_fds;          /* O_PATH, for Landlock: read (files, policy paths) */
	int read_fds[ISOLDE_LIBRARIES_MAX_FILES + ISOLDE_POLICY_MAX_LIBRARY_PATHS];
	bool read_beneath[ISOLDE_LIBRARIES_MAX_FILES + ISOLDE_POLICY_MAX_LIBRARY_PATHS]; /* a directory */
	unsigned nops;
	struct isolde_library_op *ops;
};

/* Find what the binary loads and plan its root. 0, or -1 with err. */
int isolde_libraries_find(struct isolde_libraries *l, const char *binary, const struct isolde_policy *p,
			  char *err, size_t errlen);

void isolde_libraries_free(struct isolde_libraries *l);

/* In the child, with the new root mounted at root (not yet pivoted): make
 * the plan's directories, links and read-only binds. 0, or -1 with stage. */
int isolde_libraries_mount(const struct isolde_libraries *l, const char *root, const char **stage);

/* tmpfs inodes the plan needs in the root. */
unsigned isolde_libraries_inodes(const struct isolde_libraries *l);

#endif
