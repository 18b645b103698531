/* SPDX-License-Identifier: MIT */
/*
 * The driver sandbox: what the launcher does to a driver process between
 * clone and exec, so that the driver's own code never runs with more than
 * its policy grants.
 *
 *   namespaces   new mount, network, IPC and UTS namespaces when running as
 *                root (clone3 refusing them is a warning, not an error); an
 *                empty, read-only root
 *   identity     uid/gid nobody, no supplementary groups (when root)
 *   rlimits      address space, open files, no new processes, no core dumps,
 *                and a file size limit of the image's size (a regular file
 *                cannot be grown by the driver: SIGXFSZ, a policy kill)
 *   no_new_privs and a seccomp allow-list built from the policy's groups
 *
 * Seccomp actions: calls in the policy's groups are allowed; a short list of
 * calls that only an attacker would make (ptrace, module loading, mount, bpf,
 * ...) kill the driver (SIGSYS: a "policy kill"); every other call is sent to
 * the supervisor through a user-notification listener, which logs it with the
 * driver's and the call's name and refuses it with EPERM. The one exec the
 * launcher itself performs (execveat of the driver binary) is the only
 * notification the supervisor lets through.
 *
 * The pid namespace is deliberately not used: the driver would be its
 * namespace's init, which the kernel shields from its own default-action
 * signals, so abort() would not end it with SIGABRT and failures would be
 * misclassified. Without /proc in the empty root and with kill() denied
 * (tgkill is allowed only towards itself) the driver can neither see nor
 * signal other processes.
 */
#ifndef ISOLDE_DOMAIN_SANDBOX_H
#define ISOLDE_DOMAIN_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "isolde/policy.h"

#define ISOLDE_SANDBOX_FILTER_MAX (64 * 1024) /* bytes of BPF */

struct isolde_sandbox {
	bool namespaces;        /* clone into new namespaces and an empty root */
	bool drop_identity;     /* switch to nobody */
	uint64_t address_space; /* RLIMIT_AS */
	uint32_t max_files;     /* RLIMIT_NOFILE */
	uint64_t file_size;     /* RLIMIT_FSIZE: the image's size, or unlimited */
	uint32_t syscalls;      /* policy groups */
};

/* The parent decides what it can enforce; a missing mechanism is a warning. */
void isolde_sandbox_plan(struct isolde_sandbox *sb, const struct isolde_policy *p,
			 uint64_t shm_size, uint64_t file_size_limit);

/*
 * Build the seccomp filter for a driver whose pid is known (tgkill is only
 * allowed towards itself). Returns the BPF program's length in bytes (a
 * multiple of 8) written to buf, or -1 with err.
 */
ssize_t isolde_sandbox_build_filter(const struct isolde_sandbox *sb, pid_t driver_pid,
				    void *buf, size_t buflen, char *err, size_t errlen);

/*
 * In the child, after clone and before exec: only async-signal-safe calls.
 * Returns 0, or -1 with errno set and *stage naming the step that failed.
 */
int isolde_sandbox_enter(const struct isolde_sandbox *sb, const char **stage);

/* Load the filter (raw seccomp(2)); returns the listener fd or -1. */
int isolde_sandbox_load_filter(const void *bpf, size_t len);

/* The name of syscall nr on this architecture, or NULL. Caller frees. */
char *isolde_sandbox_syscall_name(int nr);

#endif
