/* SPDX-License-Identifier: MIT */
/*
 * Landlock for a driver domain: a ruleset that denies every file-system
 * access the kernel can deny, every TCP bind and connect, signals to
 * processes outside the driver's own domain and connections to abstract
 * Unix sockets. Its one rule lets the launcher's execveat of the driver
 * binary (opened O_PATH) through.
 *
 * Seccomp already refuses the calls that would open, connect or signal; the
 * empty root and the network namespace already leave nothing to reach.
 * Landlock is the layer under both that needs no privilege and no
 * namespace, so it still holds where those are missing (not root, no user
 * namespace) and for what seccomp cannot see. It degrades with the kernel's
 * ABI: file rights since ABI 1, TCP since ABI 4, signal and abstract-socket
 * scoping since ABI 6; what is missing is reported by the plan.
 *
 * The ruleset is built by the parent (it allocates), inherited through
 * clone, and applied by the child with one landlock_restrict_self call.
 */
#ifndef ISOLDE_DOMAIN_LANDLOCK_H
#define ISOLDE_DOMAIN_LANDLOCK_H

#include <stddef.h>

/* The Landlock ABI this kernel offers: 0 if none. */
int isolde_landlock_abi(void);

/*
 * A ruleset fd (close-on-exec) for a driver executed from binary_fd, or -1
 * with err. abi must be >= 1. What it allows beyond executing the binary:
 * reading its libraries and executing their loader (libraries, or NULL),
 * and connecting to the TCP ports of connect[] (ABI 4 or later: the
 * launcher runs no driver with ports on a kernel below it). binary_fd -1
 * (QEMU, for a VM domain; ABI 4 or later): no file rules at all, only TCP
 * (none) and the scopes.
 */
struct isolde_libraries;
struct isolde_port_range;
int isolde_landlock_ruleset(int abi, int binary_fd, const struct isolde_libraries *libraries,
			    const struct isolde_port_range *connect, unsigned nconnect, char *err, size_t errlen);

/* In the child (async-signal-safe): enforce the ruleset on this process and
 * everything it executes. Requires no_new_privs. 0, or -1 with errno. */
int isolde_landlock_enforce(int ruleset_fd);

#endif
