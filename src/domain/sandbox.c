// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "sandbox.h"
#include "landlock.h"
#include "libraries.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "isolde/domain.h"

/* Everything a driver needs to exist: memory, signals to itself, time, the
 * ring's eventfds, its log, exit. mmap, mprotect, fcntl and prlimit64 are
 * allowed with some arguments only (add_base_filters). */
static const char *const group_base[] = {
	"read", "write", "readv", "writev", "close", "exit", "exit_group",
	"rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack",
	"brk", "munmap", "mremap", "madvise", "futex",
	"clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday", "clock_getres",
	"getpid", "gettid", "poll", "ppoll", "restart_syscall", "sched_yield", "pause",
	"fstat", "lseek", "getrandom", "arch_prctl", "set_tid_address",
	"set_robust_list", "rseq", "dup",
};
/* fallocate and ioctl are in this group too, filtered (add_io_filters). */
static const char *const group_io[] = {
	"pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
};
static const char *const group_sync[] = { "fsync", "fdatasync", "sync_file_range" };
/* The ring is the launcher's (domain_uring.h); the driver only enters it. */
static const char *const group_uring[] = { "io_uring_enter" };
/* Talking over the socket the launcher connected (fd 6), and nothing else:
 * these are allowed on fd 6 only (add_stream_filters). */
static const char *const group_stream[] = {
	"sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "getsockopt", "setsockopt",
	"getsockname", "getpeername",
};
/* A client of its own network (librados): TCP sockets (socket() is filtered
 * to AF_INET/AF_INET6 stream sockets, add_net_filters), and the event
 * machinery of a threaded messenger. connect goes to the supervisor, which
 * reports one to a port outside the policy and lets the rest meet Landlock,
 * which allows only the policy's ports. No bind, listen or accept: those
 * are refused and reported. */
static const char *const group_net[] = {
	"sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "getsockopt", "setsockopt",
	"getsockname", "getpeername", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
	"epoll_pwait", "eventfd2", "pipe2", "uname", "timerfd_create", "timerfd_settime", "timerfd_gettime",
};
/* A dynamic loader at work (policy 'libraries'): it opens its libraries
 * read-only (openat is filtered to read-only flags; Landlock decides which
 * files) and looks at them; executable mappings are filtered (add_loader_filters). */
static const char *const group_loader[] = { "newfstatat", "pread64" };

/* Calls with no business in a driver: asking for them is an attack, and the
 * driver is killed on the spot (SIGSYS). */
static const char *const kill_list[] = {
	"ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
	"init_module", "finit_module", "delete_module", "bpf", "reboot", "swapon", "swapoff",
	"mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "perf_event_open",
	"userfaultfd", "keyctl", "add_key", "request_key", "open_by_handle_at",
	"open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	"quotactl", "quotactl_fd", "acct", "settimeofday", "clock_settime", "clock_adjtime",
	"adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "vhangup", "lookup_dcookie",
	"kcmp", "process_madvise", "memfd_secret",
};

static const unsigned long block_ioctls[] = { BLKDISCARD, BLKZEROOUT, BLKGETSIZE64, BLKSSZGET };
static const int fcntl_commands[] = { F_GETFD, F_SETFD, F_GETFL, F_DUPFD_CLOEXEC };
/* Hole punching never allocates; ZERO_RANGE without KEEP_SIZE cannot pass
 * the image's end without tripping RLIMIT_FSIZE. Nothing else allocates
 * outside the image or changes its size (KEEP_SIZE past the end, INSERT_RANGE
 * and COLLAPSE_RANGE escape RLIMIT_FSIZE). */
static const int fallocate_modes[] = { FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE };
/* A thread shares the memory, signal handlers and fds; it is never a new
 * process, and never in a new namespace. */
#define THREAD_FLAGS_REQUIRED (CLONE_VM | CLONE_SIGHAND | CLONE_THREAD | CLONE_FILES | CLONE_FS)
#define CLONE_FLAGS_CHECKED (THREAD_FLAGS_REQUIRED | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | \
			     CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_PTRACE | \
			     CLONE_UNTRACED | CLONE_VFORK | CLONE_PARENT)

static void add_degraded(struct isolde_sandbox *sb, const char *what)
{
	size_t n = strlen(sb->degraded);

	snprintf(sb->degraded + n, sizeof sb->degraded - n, "%s%s", n ? "; " : "", what);
}

/*
 * A VM domain: what the policy grants the driver is the guest's to enforce
 * (its kernel is the boundary the driver meets); the process around it is
 * QEMU, which gets an envelope of its own: the host's file system read-only
 * (QEMU needs its libraries and firmware), its own uid and namespaces, no
 * network, Landlock with no TCP and its scopes, QEMU's own seccomp
 * (-sandbox), and limits sized for QEMU rather than for the driver.
 */
static void plan_vm(struct isolde_sandbox *sb, const struct isolde_policy *p, uint64_t shm_size)
{
	sb->vm = true;
	sb->syscalls = 0;
	sb->uring = false;
	sb->libraries = NULL;
	sb->host_network = false;
	sb->nconnect = 0;
	sb->address_space = p->guest_memory_bytes + shm_size + ISOLDE_VM_QEMU_ADDRESS_SPACE;
	sb->max_files = ISOLDE_VM_QEMU_FILES;
	sb->max_tasks = ISOLDE_VM_QEMU_TASKS;
	sb->cgroup.tasks = sb->max_tasks;
	/* File rules would refuse QEMU's reopening of its fds by path
	 * (landlock.h); below ABI 4 nothing would be left to handle. */
	if (sb->landlock_abi < 4)
		sb->landlock_abi = 0;
}

void isolde_sandbox_plan(struct isolde_sandbox *sb, const struct isolde_policy *p,
			 const struct isolde_libraries *libraries, uint64_t shm_size, uint64_t device_size,
			 bool blockdev)
{
	bool root = geteuid() == 0;
	char why[128];

	memset(sb, 0, sizeof *sb);
	sb->namespaces = true;
	sb->user_namespace = !root;
	sb->own_uid = root;
	sb->outer_uid = geteuid();
	sb->outer_gid = getegid();
	sb->address_space = p->memory_bytes + shm_size;
	sb->max_files = p->max_files;
	/* A block device cannot grow, and the limit does not apply to it. */
	sb->file_size = blockdev ? RLIM_INFINITY : device_size;
	sb->max_tasks = 1 + p->threads;
	sb->syscalls = p->syscalls;
	sb->threads = p->threads;
	sb->device_size = device_size;
	sb->uring = (p->syscalls & ISOLDE_SYSCALLS_URING) != 0;
	sb->libraries = p->libraries ? libraries : NULL;
	/* The root holds nothing but the way to the libraries, if any. */
	snprintf(sb->root_options, sizeof sb->root_options, "size=%s,nr_inodes=%u,mode=0555",
		 sb->libraries ? "64k" : "16k", 8 + (sb->libraries ? isolde_libraries_inodes(sb->libraries) : 0));
	sb->host_network = p->nconnect > 0;
	sb->nconnect = p->nconnect;
	sb->connect = p->connect;
	sb->cgroup.cpu_percent = p->cpu_percent;
	sb->cgroup.tasks = sb->max_tasks;
	sb->cgroups = isolde_cgroup_available(why, sizeof why);
	if (!root) {
		add_degraded(sb, "not root: the driver runs as this user (inside a user namespace of its "
			     "own where one can be had) with no control group (CPU time is not bounded)");
	} else if (!sb->cgroups) {
		char msg[192];
		snprintf(msg, sizeof msg, "no control group (%s): CPU time is not bounded", why);
		add_degraded(sb, msg);
	}
	sb->landlock_abi = isolde_landlock_abi();
	if (sb->landlock_abi == 0)
		add_degraded(sb, "no Landlock in this kernel");
	else if (sb->landlock_abi < 6)
		add_degraded(sb, "Landlock without signal scoping (ABI < 6)");
	if (p->domain == ISOLDE_DOMAIN_VM)
		plan_vm(sb, p, shm_size);
}

void isolde_sandbox_drop_namespaces(struct isolde_sandbox *sb, int error)
{
	char msg[160];

	sb->namespaces = false;
	sb->user_namespace = false;
	snprintf(msg, sizeof msg, "no namespaces or empty root (clone3 refused them: %s)", strerror(error));
	add_degraded(sb, msg);
}

/* ---- seccomp ---- */

static int fail_rule(char *err, size_t errlen, const char *what, int r)
{
	snprintf(err, errlen, "seccomp: cannot add the rule for %s: %s", what, strerror(-r));
	return -1;
}

static int add_list(scmp_filter_ctx ctx, uint32_t action, const char *const *names, size_t n,
		    char *err, size_t errlen)
{
	for (size_t i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);
		if (nr == __NR_SCMP_ERROR)
			continue; /* not on this architecture */
		int r = seccomp_rule_add(ctx, action, nr, 0);
		if (r && r != -EEXIST) /* two groups may share a call */
			return fail_rule(err, errlen, names[i], r);
	}
	return 0;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define RULE(ctx, action, call, ...) seccomp_rule_add(ctx, action, SCMP_SYS(call), __VA_ARGS__)

/*
 * The fds a driver opens itself come after the launcher's (0-6, and 7 with
 * 'uring'). A rule "fd >= 8" as one comparison would let 0x100000003
 * through (the kernel reads an int: fd 3), so it is fd 7 exactly (without
 * 'uring'), then one rule per power-of-two band, each comparing all 64
 * bits: [8,16), [16,32), ... [32768,65536) (RLIMIT_NOFILE is at most 65536).
 */
#define OWN_FD_BANDS 13

static int add_own_fd_rules(scmp_filter_ctx ctx, const struct isolde_sandbox *sb, int nr, const char *name,
			    unsigned fd_arg, const struct scmp_arg_cmp *more, unsigned nmore, char *err,
			    size_t errlen)
{
	for (int b = sb->uring ? 0 : -1; b < OWN_FD_BANDS; b++) {
		uint64_t lo = b < 0 ? ISOLDE_DRIVER_FD_URING : UINT64_C(8) << b;
		uint64_t mask = b < 0 ? ~UINT64_C(0) : ~(lo - 1);
		struct scmp_arg_cmp cmp[4];
		if (nmore)
			memcpy(cmp, more, nmore * sizeof *more);
		cmp[nmore] = (struct scmp_arg_cmp){ .arg = fd_arg, .op = SCMP_CMP_MASKED_EQ,
						    .datum_a = mask, .datum_b = lo };
		int r = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, nmore + 1, cmp);
		if (r)
			return fail_rule(err, errlen, name, r);
	}
	return 0;
}

static int add_base_filters(scmp_filter_ctx ctx, const struct isolde_sandbox *sb, pid_t driver_pid,
			    char *err, size_t errlen)
{
	int r;

	/* No executable mapping after exec: code the driver writes stays data.
	 * (A dynamically linked driver's loader maps its libraries as code:
	 * add_loader_filters.) */
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, mmap, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))))
		return fail_rule(err, errlen, "mmap", r);
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, mprotect, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))))
		return fail_rule(err, errlen, "mprotect", r);
	/* Flags of the fd itself only: F_SETFL (O_APPEND, O_DIRECT, O_ASYNC),
	 * F_SETOWN/F_SETSIG (signals to anyone), leases and locks would
	 * reach beyond this generation or this process. */
	for (size_t i = 0; i < COUNT(fcntl_commands); i++) {
		if (sb->libraries && fcntl_commands[i] == F_DUPFD_CLOEXEC)
			continue;
		if ((r = RULE(ctx, SCMP_ACT_ALLOW, fcntl, 1, SCMP_A1(SCMP_CMP_EQ, fcntl_commands[i]))))
			return fail_rule(err, errlen, "fcntl", r);
	}
	/* Where code may be mapped from files, no second fd of the shared
	 * memory (or of anything else the launcher gave) may be made: the
	 * driver could write code there and map it. Its own fds it may copy. */
	if (sb->libraries) {
		struct scmp_arg_cmp dupfd = SCMP_A1(SCMP_CMP_EQ, F_DUPFD_CLOEXEC);
		if (add_own_fd_rules(ctx, sb, SCMP_SYS(dup), "dup", 0, NULL, 0, err, errlen) ||
		    add_own_fd_rules(ctx, sb, SCMP_SYS(fcntl), "fcntl", 0, &dupfd, 1, err, errlen))
			return -1;
	}
	/* F_SETFL on its own sockets: a client library makes them
	 * non-blocking (O_NONBLOCK only). */
	if (sb->syscalls & ISOLDE_SYSCALLS_NET) {
		struct scmp_arg_cmp setfl[2] = { SCMP_A1(SCMP_CMP_EQ, F_SETFL),
						 SCMP_A2(SCMP_CMP_MASKED_EQ, ~(uint64_t)(O_NONBLOCK | O_ACCMODE), 0) };
		if (add_own_fd_rules(ctx, sb, SCMP_SYS(fcntl), "fcntl", 0, setfl, 2, err, errlen))
			return -1;
	}
	/* Its own limits (pid 0) only. */
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, prlimit64, 1, SCMP_A0(SCMP_CMP_EQ, 0))))
		return fail_rule(err, errlen, "prlimit64", r);
	/* abort() and raise() signal the caller itself, nothing else. */
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, tgkill, 1, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)driver_pid))))
		return fail_rule(err, errlen, "tgkill", r);
	/* glibc's static startup looks for its own binary; an empty root has
	 * nothing to show, and saying so is not worth a log line. */
	if ((r = RULE(ctx, SCMP_ACT_ERRNO(ENOENT), readlink, 0)))
		return fail_rule(err, errlen, "readlink", r);
	/* clone3 passes its flags in memory the filter cannot read: glibc
	 * falls back to clone on ENOSYS. */
	if ((r = RULE(ctx, SCMP_ACT_ERRNO(ENOSYS), clone3, 0)))
		return fail_rule(err, errlen, "clone3", r);
	return 0;
}

static int add_io_filters(scmp_filter_ctx ctx, const struct isolde_sandbox *sb, char *err, size_t errlen)
{
	int r;

	for (size_t i = 0; i < COUNT(block_ioctls); i++) {
		r = RULE(ctx, SCMP_ACT_ALLOW, ioctl, 2, SCMP_A0(SCMP_CMP_EQ, ISOLDE_DRIVER_FD_DEVICE),
			 SCMP_A1(SCMP_CMP_EQ, block_ioctls[i]));
		if (r)
			return fail_rule(err, errlen, "ioctl", r);
	}
	for (size_t i = 0; i < COUNT(fallocate_modes); i++) {
		r = RULE(ctx, SCMP_ACT_ALLOW, fallocate, 4, SCMP_A0(SCMP_CMP_EQ, ISOLDE_DRIVER_FD_DEVICE),
			 SCMP_A1(SCMP_CMP_EQ, fallocate_modes[i]), SCMP_A2(SCMP_CMP_LE, sb->device_size),
			 SCMP_A3(SCMP_CMP_LE, sb->device_size));
		if (r)
			return fail_rule(err, errlen, "fallocate", r);
	}
	return 0;
}

/* The dynamic loader: read-only opens, code mapped from its own files
 * (never from fds 0-6 or 0-7, never anonymous, never writable), and an
 * answer for its questions. */
static int add_loader_filters(scmp_filter_ctx ctx, const struct isolde_sandbox *sb, char *err, size_t errlen)
{
	const uint64_t allowed = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_DIRECTORY | O_NONBLOCK | O_LARGEFILE |
				 O_NOCTTY;
	/* Executable and never writable: a private writable copy of a
	 * library would be code the driver writes. */
	struct scmp_arg_cmp code[2] = { SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC | PROT_WRITE, PROT_EXEC),
					SCMP_A3(SCMP_CMP_MASKED_EQ, MAP_ANONYMOUS, 0) };
	int r;

	if ((r = RULE(ctx, SCMP_ACT_ALLOW, openat, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, ~allowed & 0xffffffffu, 0))))
		return fail_rule(err, errlen, "openat", r);
	if (add_own_fd_rules(ctx, sb, SCMP_SYS(mmap), "mmap", 4, code, 2, err, errlen))
		return -1;
	/* ld.so asks whether /etc/ld.so.preload exists, libselinux where
	 * selinuxfs is mounted: nothing is, in this root. */
	if ((r = RULE(ctx, SCMP_ACT_ERRNO(ENOENT), access, 0)))
		return fail_rule(err, errlen, "access", r);
	if ((r = RULE(ctx, SCMP_ACT_ERRNO(ENOENT), statfs, 0)))
		return fail_rule(err, errlen, "statfs", r);
	return 0;
}

/* Sockets of its own: TCP over IPv4 or IPv6, nothing else. */
static int add_net_filters(scmp_filter_ctx ctx, char *err, size_t errlen)
{
	const int families[] = { AF_INET, AF_INET6 };
	const int protocols[] = { 0, IPPROTO_TCP };
	const uint64_t type_mask = 0xffffffffu & ~(uint64_t)(SOCK_NONBLOCK | SOCK_CLOEXEC);

	for (size_t f = 0; f < COUNT(families); f++) {
		for (size_t p = 0; p < COUNT(protocols); p++) {
			int r = RULE(ctx, SCMP_ACT_ALLOW, socket, 3, SCMP_A0(SCMP_CMP_EQ, families[f]),
				     SCMP_A1(SCMP_CMP_MASKED_EQ, type_mask, SOCK_STREAM),
				     SCMP_A2(SCMP_CMP_EQ, protocols[p]));
			if (r)
				return fail_rule(err, errlen, "socket", r);
		}
	}
	return 0;
}

/* The stream group: each call on fd 6, the launcher's socket, only; and
 * making it non-blocking. */
static int add_stream_filters(scmp_filter_ctx ctx, char *err, size_t errlen)
{
	int r = RULE(ctx, SCMP_ACT_ALLOW, fcntl, 3, SCMP_A0(SCMP_CMP_EQ, ISOLDE_DRIVER_FD_DEVICE),
		     SCMP_A1(SCMP_CMP_EQ, F_SETFL), SCMP_A2(SCMP_CMP_MASKED_EQ, ~(uint64_t)(O_NONBLOCK | O_ACCMODE), 0));
	if (r)
		return fail_rule(err, errlen, "fcntl", r);
	for (size_t i = 0; i < COUNT(group_stream); i++) {
		int nr = seccomp_syscall_resolve_name(group_stream[i]);
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, ISOLDE_DRIVER_FD_DEVICE));
		if (r)
			return fail_rule(err, errlen, group_stream[i], r);
	}
	return 0;
}

static int add_thread_filter(scmp_filter_ctx ctx, char *err, size_t errlen)
{
	int r = RULE(ctx, SCMP_ACT_ALLOW, clone, 1,
		     SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_FLAGS_CHECKED, THREAD_FLAGS_REQUIRED));
	if (r)
		return fail_rule(err, errlen, "clone", r);
	/* Threads name themselves (pthread_setname_np), nothing more. */
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, prctl, 1, SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME))) ||
	    (r = RULE(ctx, SCMP_ACT_ALLOW, prctl, 1, SCMP_A0(SCMP_CMP_EQ, PR_GET_NAME))))
		return fail_rule(err, errlen, "prctl", r);
	return 0;
}

static int build_rules(scmp_filter_ctx ctx, const struct isolde_sandbox *sb, pid_t driver_pid,
		       char *err, size_t errlen)
{
	int r;

	/* A foreign architecture's system calls (int 0x80 on x86_64) kill. */
	if ((r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS))) {
		snprintf(err, errlen, "seccomp: bad-arch action: %s", strerror(-r));
		return -1;
	}
	for (size_t i = 0; i < COUNT(group_base); i++) {
		if (sb->libraries && strcmp(group_base[i], "dup") == 0)
			continue; /* filtered: add_base_filters */
		if (add_list(ctx, SCMP_ACT_ALLOW, &group_base[i], 1, err, errlen))
			return -1;
	}
	if (add_base_filters(ctx, sb, driver_pid, err, errlen))
		return -1;
	if (sb->libraries && (add_list(ctx, SCMP_ACT_ALLOW, group_loader, COUNT(group_loader), err, errlen) ||
			      add_loader_filters(ctx, sb, err, errlen)))
		return -1;
	if ((sb->syscalls & ISOLDE_SYSCALLS_NET) &&
	    (add_list(ctx, SCMP_ACT_ALLOW, group_net, COUNT(group_net), err, errlen) ||
	     add_net_filters(ctx, err, errlen)))
		return -1;
	if ((sb->syscalls & ISOLDE_SYSCALLS_STREAM) && !(sb->syscalls & ISOLDE_SYSCALLS_NET) &&
	    add_stream_filters(ctx, err, errlen))
		return -1;
	if ((sb->syscalls & ISOLDE_SYSCALLS_IO) &&
	    (add_list(ctx, SCMP_ACT_ALLOW, group_io, COUNT(group_io), err, errlen) ||
	     add_io_filters(ctx, sb, err, errlen)))
		return -1;
	if ((sb->syscalls & ISOLDE_SYSCALLS_SYNC) &&
	    add_list(ctx, SCMP_ACT_ALLOW, group_sync, COUNT(group_sync), err, errlen))
		return -1;
	if ((sb->syscalls & ISOLDE_SYSCALLS_URING) &&
	    add_list(ctx, SCMP_ACT_ALLOW, group_uring, COUNT(group_uring), err, errlen))
		return -1;
	if (sb->threads && add_thread_filter(ctx, err, errlen))
		return -1;
	return add_list(ctx, SCMP_ACT_KILL_PROCESS, kill_list, COUNT(kill_list), err, errlen);
}

ssize_t isolde_sandbox_build_filter(const struct isolde_sandbox *sb, pid_t driver_pid,
				    void *buf, size_t buflen, char *err, size_t errlen)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_NOTIFY);
	ssize_t len = -1;
	int memfd = -1, r;

	if (!ctx) {
		snprintf(err, errlen, "seccomp_init failed");
		return -1;
	}
	if (build_rules(ctx, sb, driver_pid, err, errlen))
		goto out;
	/* libseccomp writes the program to an fd; read it back so the child
	 * only has to make one seccomp(2) call. */
	memfd = memfd_create("isolde-seccomp", MFD_CLOEXEC);
	if (memfd < 0 || (r = seccomp_export_bpf(ctx, memfd)) != 0) {
		snprintf(err, errlen, "seccomp: cannot export the filter: %s",
			 strerror(memfd < 0 ? errno : -r));
		goto out;
	}
	len = pread(memfd, buf, buflen, 0);
	if (len < 0 || (size_t)len == buflen || len % sizeof(struct sock_filter)) {
		snprintf(err, errlen, "seccomp: filter unreadable or larger than %zu bytes", buflen);
		len = -1;
	}
out:
	if (memfd >= 0)
		close(memfd);
	seccomp_release(ctx);
	return len;
}

/* ---- the user namespace (not root) ---- */

static int write_proc(pid_t pid, const char *file, const char *text, char *err, size_t errlen)
{
	char path[64];
	int fd;

	snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	size_t len = strlen(text);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len) {
		snprintf(err, errlen, "cannot write %s of the driver's user namespace: %s", file, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

int isolde_sandbox_map_user(const struct isolde_sandbox *sb, pid_t child, char *err, size_t errlen)
{
	char map[64];

	if (!sb->user_namespace)
		return 0;
	/* One uid and one gid: the driver's, which is this user outside. */
	if (write_proc(child, "setgroups", "deny", err, errlen))
		return -1;
	snprintf(map, sizeof map, "%u %u 1\n", ISOLDE_DRIVER_NS_UID, (unsigned)sb->outer_uid);
	if (write_proc(child, "uid_map", map, err, errlen))
		return -1;
	snprintf(map, sizeof map, "%u %u 1\n", ISOLDE_DRIVER_NS_UID, (unsigned)sb->outer_gid);
	return write_proc(child, "gid_map", map, err, errlen);
}

/* ---- in the child ---- */

/* An empty, read-only tmpfs as /, the old root detached; a dynamically
 * linked driver's libraries bound into it read-only (libraries.h). */
static int enter_empty_root(const struct isolde_sandbox *sb, const char **stage)
{
	*stage = "make mounts private";
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		return -1;
	*stage = "mount the empty root";
	if (mount("isolde-driver-root", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, sb->root_options))
		return -1;
	if (sb->libraries && isolde_libraries_mount(sb->libraries, "/tmp", stage))
		return -1;
	*stage = "pivot to the empty root";
	if (chdir("/tmp") || syscall(SYS_pivot_root, ".", ".") || umount2(".", MNT_DETACH) || chdir("/"))
		return -1;
	*stage = "make the root read-only";
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		return -1;
	return 0;
}

static int drop_capabilities(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct none[2];

	memset(none, 0, sizeof none);
	return (int)syscall(SYS_capset, &hdr, none);
}

/*
 * The raw system calls, not glibc's setresuid and friends: those change
 * every thread of the process (a signal to each, then a wait for all), and
 * this child of a raw clone3 inherited glibc's list of the parent's
 * threads, which are not here - with isolde serve's thread per device that
 * wait never ended. The child has one thread; these change just it.
 */
static int set_ids(gid_t gid, uid_t uid)
{
	return syscall(SYS_setresgid, gid, gid, gid) || syscall(SYS_setresuid, uid, uid, uid) ? -1 : 0;
}

static int set_identity(const struct isolde_sandbox *sb, const char **stage)
{
	*stage = "take the driver's own uid and gid";
	if (sb->own_uid) {
		/* No pid namespace: this is the host's pid, unique among the
		 * living, so the uid is too. */
		uid_t id = ISOLDE_DRIVER_UID_BASE + (uid_t)syscall(SYS_getpid);
		return syscall(SYS_setgroups, 0, NULL) || set_ids(id, id) ? -1 : 0;
	}
	if (sb->user_namespace) {
		/* The namespace's creator holds every capability in it until
		 * it drops them; the uid is mapped already. */
		*stage = "drop capabilities in the user namespace";
		return set_ids(ISOLDE_DRIVER_NS_UID, ISOLDE_DRIVER_NS_UID) || drop_capabilities() ? -1 : 0;
	}
	return 0;
}

static int set_limit(int resource, uint64_t value)
{
	struct rlimit lim = { .rlim_cur = value, .rlim_max = value };
	return setrlimit(resource, &lim);
}

/* QEMU sees the host's files, none of them writable through a path. */
static int enter_read_only_host(const char **stage)
{
	struct mount_attr attr = { .attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID };

	*stage = "make mounts private";
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		return -1;
	*stage = "make the file system read-only";
	if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof attr))
		return -1;
	return 0;
}

int isolde_sandbox_enter(const struct isolde_sandbox *sb, int landlock_fd, const char **stage)
{
	if (sb->namespaces && (sb->vm ? enter_read_only_host(stage) : enter_empty_root(sb, stage)))
		return -1;
	if (set_identity(sb, stage))
		return -1;
	*stage = "set rlimits";
	/* RLIMIT_NPROC after the uid change: it counts the new uid's tasks,
	 * and execve only checks it if the setuid found the user over it. */
	if (set_limit(RLIMIT_AS, sb->address_space) || set_limit(RLIMIT_NOFILE, sb->max_files) ||
	    set_limit(RLIMIT_FSIZE, sb->file_size) || set_limit(RLIMIT_CORE, 0) ||
	    set_limit(RLIMIT_NPROC, sb->max_tasks))
		return -1;
	*stage = "set no_new_privs";
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
	if (landlock_fd >= 0) {
		*stage = "enforce the Landlock ruleset";
		if (isolde_landlock_enforce(landlock_fd))
			return -1;
	}
	return 0;
}

int isolde_sandbox_load_filter(const void *bpf, size_t len)
{
	struct sock_fprog prog = {
		.len = (unsigned short)(len / sizeof(struct sock_filter)),
		.filter = (struct sock_filter *)bpf,
	};

	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
}

char *isolde_sandbox_syscall_name(int nr)
{
	return seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
}

/* By name, so that one table serves every architecture libseccomp knows;
 * a call in no list is "other". */
static const char *const denial_classes[ISOLDE_DENY_OTHER][48] = {
	[ISOLDE_DENY_DEVICE] = { "ioctl", "fallocate", "ioperm", "iopl", "pciconfig_read", "pciconfig_write",
				 "pciconfig_iobase", "io_setup", "io_submit", "io_uring_setup", "io_uring_enter",
				 "io_uring_register", "sync_file_range", "fadvise64", "readahead", NULL },
	[ISOLDE_DENY_MEMORY] = { "mmap", "mprotect", "mremap", "madvise", "mlock", "mlock2", "mlockall",
				 "munlock", "munlockall", "mbind", "set_mempolicy", "migrate_pages", "move_pages",
				 "memfd_create", "memfd_secret", "pkey_mprotect", "pkey_alloc", "userfaultfd",
				 "process_vm_readv", "process_vm_writev", "remap_file_pages", "shmget", "shmat",
				 "shmctl", NULL },
	[ISOLDE_DENY_PROCESS] = { "clone", "clone3", "fork", "vfork", "execve", "execveat", "kill", "tkill",
				  "tgkill", "ptrace", "setns", "unshare", "prctl", "setuid", "setgid", "setreuid",
				  "setregid", "setresuid", "setresgid", "setgroups", "capset", "seccomp", "bpf",
				  "perf_event_open", "kexec_load", "init_module", "finit_module", "delete_module",
				  "reboot", "setpriority", "sched_setscheduler", "sched_setaffinity", "prlimit64",
				  "setrlimit", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "wait4", "waitid",
				  "kcmp", "personality", NULL },
	[ISOLDE_DENY_NETWORK] = { "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
				  "sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg", "recvmmsg", "setsockopt",
				  "getsockopt", "shutdown", "getsockname", "getpeername", NULL },
	[ISOLDE_DENY_FILE] = { "open", "openat", "openat2", "creat", "unlink", "unlinkat", "rename", "renameat",
			       "renameat2", "mkdir", "mkdirat", "rmdir", "stat", "lstat", "newfstatat", "statx",
			       "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "link",
			       "linkat", "symlink", "symlinkat", "truncate", "ftruncate", "readlink", "readlinkat",
			       "access", "faccessat", "faccessat2", "statfs", "fstatfs", "getdents64", "chdir",
			       "fchdir", "mount", "umount2", "pivot_root", "chroot", "mknod", "mknodat", "dup3",
			       NULL },
};

const char *isolde_denial_class_name(enum isolde_denial_class c)
{
	static const char *const names[ISOLDE_DENIAL_CLASSES] = { "device", "memory", "process", "network",
								   "file", "other" };
	return (unsigned)c < ISOLDE_DENIAL_CLASSES ? names[c] : "unknown";
}

enum isolde_denial_class isolde_sandbox_syscall_class(int nr)
{
	char *name = isolde_sandbox_syscall_name(nr);
	enum isolde_denial_class c = ISOLDE_DENY_OTHER;

	for (int k = 0; name && k < ISOLDE_DENY_OTHER && c == ISOLDE_DENY_OTHER; k++)
		for (int i = 0; denial_classes[k][i]; i++)
			if (strcmp(name, denial_classes[k][i]) == 0) {
				c = (enum isolde_denial_class)k;
				break;
			}
	free(name);
	return c;
}
