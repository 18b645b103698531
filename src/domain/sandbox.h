/* SPDX-License-Identifier: MIT */
/*
 * The driver sandbox: what a driver may do, decided in one place
 * (isolde_sandbox_plan, from its policy and from what this host offers),
 * and the steps that enforce it between clone and exec, so the driver's own
 * code never runs with more than its policy grants.
 *
 *   namespaces   new mount, network, IPC and UTS namespaces and an empty,
 *                read-only root; without root inside a user namespace of
 *                the driver's own (65534 inside, the user outside)
 *   identity     root: uid and gid ISOLDE_DRIVER_UID_BASE + the driver's
 *                pid, no groups, no capabilities: no two running drivers
 *                share a uid, and none shares one with anything else
 *   rlimits      address space, open files, tasks (1 + the policy's
 *                threads), no core dumps, and a file size limit of the
 *                image's size (a regular file cannot be grown: SIGXFSZ)
 *   cgroups      CPU and task limits (cgroup.h), when root
 *   Landlock     no file access, no TCP, no signals or abstract sockets
 *                beyond its own domain (landlock.h)
 *   no_new_privs and a seccomp filter built from the policy's groups, with
 *                argument filters where a call is allowed only in part
 *
 * Seccomp actions: allowed calls (some only with certain arguments); a few
 * answered without a notification (readlink: ENOENT, which is all an empty
 * root has to say, and glibc asks at startup; clone3: ENOSYS, so that
 * threads are created with clone, whose flags the filter can see); a list
 * of calls only an attacker would make (ptrace, module loading, mount, bpf,
 * ...) that kill the driver (SIGSYS: a "policy kill"); every other call,
 * and an allowed call with arguments outside its filter, is sent to the
 * supervisor through a user-notification listener, which logs it
 * (rate-limited) and refuses it with EPERM. The launcher's own execveat of
 * the driver binary is the only notification the supervisor lets through.
 *
 * The pid namespace is deliberately not used: the driver would be its
 * namespace's init, which the kernel shields from its own default-action
 * signals, so abort() would not end it with SIGABRT and failures would be
 * misclassified. The driver can neither see nor signal other processes
 * anyway: no /proc in its root, kill and its relatives refused, fcntl's
 * F_SETOWN refused, and Landlock's signal scoping under all of it.
 */
#ifndef ISOLDE_DOMAIN_SANDBOX_H
#define ISOLDE_DOMAIN_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "isolde/policy.h"

#include "cgroup.h"

#define ISOLDE_SANDBOX_FILTER_MAX (64 * 1024) /* bytes of BPF */
/* Root: a driver runs as uid and gid this + its pid (pids stay below 2^22). */
#define ISOLDE_DRIVER_UID_BASE 0x70000000u
/* Not root: the driver is this uid inside its user namespace. */
#define ISOLDE_DRIVER_NS_UID 65534u

/* A VM domain's QEMU (plan_vm in sandbox.c). */
#define ISOLDE_VM_QEMU_ADDRESS_SPACE (UINT64_C(4) << 30) /* beyond guest RAM and ring */
#define ISOLDE_VM_QEMU_FILES 1024u
#define ISOLDE_VM_QEMU_TASKS 128u

struct isolde_sandbox {
	bool vm;                /* the process is a VM domain's QEMU */
	bool namespaces;        /* mnt, net, ipc, uts namespaces and the empty root */
	bool user_namespace;    /* ... inside a user namespace (not root) */
	bool own_uid;           /* root: uid/gid ISOLDE_DRIVER_UID_BASE + pid */
	uid_t outer_uid;        /* not root: what the namespace's uid maps to */
	gid_t outer_gid;
	uint64_t address_space; /* RLIMIT_AS */
	uint32_t max_files;     /* RLIMIT_NOFILE */
	uint64_t file_size;     /* RLIMIT_FSIZE: the image's size, or unlimited */
	uint32_t max_tasks;     /* RLIMIT_NPROC (per uid, so per driver) */
	bool cgroups;
	struct isolde_cgroup_limits cgroup;
	int landlock_abi;       /* 0: none */
	uint32_t syscalls;      /* policy groups */
	uint32_t threads;
	uint64_t device_size;   /* fallocate stays inside it */
	bool uring;             /* the launcher makes the driver's io_uring */
	/* 'libraries loaded': the root shows them; the loader may open files
	 * read-only and map them as code. NULL for a static driver. */
	const struct isolde_libraries *libraries;
	char root_options[64];  /* the tmpfs root's mount options */
	bool host_network;      /* 'connect': no network namespace of its own */
	unsigned nconnect;      /* TCP ports it may connect to (Landlock) */
	const struct isolde_port_range *connect;
	char degraded[384];     /* what this host cannot enforce, for the warning */
};

/*
 * The one place that decides what a driver may do: from its policy, the
 * size of its shared memory and device, and what this host offers. What
 * cannot be enforced here is listed in sb->degraded.
 */
struct isolde_libraries;
void isolde_sandbox_plan(struct isolde_sandbox *sb, const struct isolde_policy *p,
			 const struct isolde_libraries *libraries, uint64_t shm_size, uint64_t device_size,
			 bool blockdev);

/* clone3 refused the namespaces: plan without them (and say so). */
void isolde_sandbox_drop_namespaces(struct isolde_sandbox *sb, int error);

/*
 * Build the seccomp filter for a driver whose pid is known (tgkill is only
 * allowed towards itself). Returns the BPF program's length in bytes (a
 * multiple of 8) written to buf, or -1 with err.
 */
ssize_t isolde_sandbox_build_filter(const struct isolde_sandbox *sb, pid_t driver_pid,
				    void *buf, size_t buflen, char *err, size_t errlen);

/*
 * Parent, right after clone: the user namespace's maps. 0 or -1 + err.
 */
int isolde_sandbox_map_user(const struct isolde_sandbox *sb, pid_t child, char *err, size_t errlen);

/*
 * In the child, after clone and before exec: only async-signal-safe calls.
 * Returns 0, or -1 with errno set and *stage naming the step that failed.
 * landlock_fd is the ruleset to enforce, or -1.
 */
int isolde_sandbox_enter(const struct isolde_sandbox *sb, int landlock_fd, const char **stage);

/* Load the filter (raw seccomp(2)); returns the listener fd or -1. */
int isolde_sandbox_load_filter(const void *bpf, size_t len);

/* The name of syscall nr on this architecture, or NULL. Caller frees. */
char *isolde_sandbox_syscall_name(int nr);
/* What a refused system call would have reached, for the counts. */
enum isolde_denial_class isolde_sandbox_syscall_class(int nr);

#endif
