// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "landlock.h"
#include "libraries.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * The uapi header of the build machine may predate the ABI of the machine
 * that runs isolde (Debian 12 ships 6.1's headers), so the interface is
 * spelled out here, as in Documentation/userspace-api/landlock.rst.
 */
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif

#define CREATE_RULESET_VERSION (1u << 0)
#define RULE_PATH_BENEATH 1
#define RULE_NET_PORT 2

#define FS_EXECUTE (1ull << 0)
#define FS_READ_FILE (1ull << 2)
#define FS_ABI1_ALL ((1ull << 13) - 1) /* execute .. make_sym */
#define FS_REFER (1ull << 13)          /* ABI 2 */
#define FS_TRUNCATE (1ull << 14)       /* ABI 3 */
#define FS_IOCTL_DEV (1ull << 15)      /* ABI 5 */
#define NET_BIND_TCP (1ull << 0)       /* ABI 4 */
#define NET_CONNECT_TCP (1ull << 1)
#define SCOPE_ABSTRACT_UNIX_SOCKET (1ull << 0) /* ABI 6 */
#define SCOPE_SIGNAL (1ull << 1)

struct ruleset_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net;
	uint64_t scoped;
};

struct path_beneath_attr {
	uint64_t allowed_access;
	int32_t parent_fd;
} __attribute__((packed));

struct net_port_attr {
	uint64_t allowed_access;
	uint64_t port;
};

int isolde_landlock_abi(void)
{
	long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, CREATE_RULESET_VERSION);
	return abi > 0 ? (int)abi : 0;
}

static int add_path_rule(int ruleset, int fd, uint64_t access, const char *what, char *err, size_t errlen)
{
	struct path_beneath_attr rule = { .allowed_access = access, .parent_fd = fd };

	if (syscall(__NR_landlock_add_rule, ruleset, RULE_PATH_BENEATH, &rule, 0) == 0)
		return 0;
	snprintf(err, errlen, "landlock: cannot allow %s: %s", what, strerror(errno));
	return -1;
}

static int add_library_rules(int ruleset, const struct isolde_libraries *l, char *err, size_t errlen)
{
	if (l->interpreter_fd >= 0 &&
	    add_path_rule(ruleset, l->interpreter_fd, FS_EXECUTE | FS_READ_FILE, "executing the loader", err, errlen))
		return -1;
	for (unsigned i = 0; i < l->nread_fds; i++)
		if (add_path_rule(ruleset, l->read_fds[i], FS_READ_FILE, "reading a library", err, errlen))
			return -1;
	return 0;
}

static int add_port_rules(int ruleset, const struct isolde_port_range *connect, unsigned n, char *err,
			  size_t errlen)
{
	for (unsigned i = 0; i < n; i++) {
		for (uint32_t port = connect[i].lo; port <= connect[i].hi; port++) {
			struct net_port_attr rule = { .allowed_access = NET_CONNECT_TCP, .port = port };
			if (syscall(__NR_landlock_add_rule, ruleset, RULE_NET_PORT, &rule, 0) != 0) {
				snprintf(err, errlen, "landlock: cannot allow connecting to TCP port %u: %s",
					 (unsigned)port, strerror(errno));
				return -1;
			}
		}
	}
	return 0;
}

int isolde_landlock_ruleset(int abi, int binary_fd, const struct isolde_libraries *libraries,
			    const struct isolde_port_range *connect, unsigned nconnect, char *err, size_t errlen)
{
	/* QEMU (binary_fd -1) reopens the fds it is given by path, which
	 * file rules would refuse: its files are bounded by its uid and a
	 * read-only mount tree instead (sandbox.c). */
	struct ruleset_attr attr = { .handled_access_fs = binary_fd >= 0 ? FS_ABI1_ALL : 0 };
	size_t attr_size = sizeof attr.handled_access_fs;
	struct path_beneath_attr exec_rule = { .allowed_access = FS_EXECUTE | FS_READ_FILE,
					       .parent_fd = binary_fd };

	if (abi >= 2 && binary_fd >= 0)
		attr.handled_access_fs |= FS_REFER;
	if (abi >= 3 && binary_fd >= 0)
		attr.handled_access_fs |= FS_TRUNCATE;
	if (abi >= 5 && binary_fd >= 0)
		attr.handled_access_fs |= FS_IOCTL_DEV;
	if (abi >= 4) {
		attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP;
		attr_size = offsetof(struct ruleset_attr, scoped);
	}
	if (abi >= 6) {
		attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
		attr_size = sizeof attr;
	}
	int fd = (int)syscall(__NR_landlock_create_ruleset, &attr, attr_size, 0);
	if (fd < 0) {
		snprintf(err, errlen, "landlock: cannot create a ruleset (ABI %d): %s", abi, strerror(errno));
		return -1;
	}
	if (binary_fd >= 0 && syscall(__NR_landlock_add_rule, fd, RULE_PATH_BENEATH, &exec_rule, 0) != 0) {
		snprintf(err, errlen, "landlock: cannot allow executing the driver binary: %s",
			 strerror(errno));
		close(fd);
		return -1;
	}
	if ((libraries && add_library_rules(fd, libraries, err, errlen)) ||
	    add_port_rules(fd, connect, nconnect, err, errlen)) {
		close(fd);
		return -1;
	}
	return fd;
}

int isolde_landlock_enforce(int ruleset_fd)
{
	return syscall(__NR_landlock_restrict_self, ruleset_fd, 0) == 0 ? 0 : -1;
}
