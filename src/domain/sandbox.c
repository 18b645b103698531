// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "sandbox.h"
#include "landlock.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
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

void isolde_sandbox_plan(struct isolde_sandbox *sb, const struct isolde_policy *p,
			 uint64_t shm_size, uint64_t device_size, bool blockdev)
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
		if (r)
			return fail_rule(err, errlen, names[i], r);
	}
	return 0;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define RULE(ctx, action, call, ...) seccomp_rule_add(ctx, action, SCMP_SYS(call), __VA_ARGS__)

static int add_base_filters(scmp_filter_ctx ctx, pid_t driver_pid, char *err, size_t errlen)
{
	int r;

	/* No executable mapping after exec: code the driver writes stays data. */
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, mmap, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))))
		return fail_rule(err, errlen, "mmap", r);
	if ((r = RULE(ctx, SCMP_ACT_ALLOW, mprotect, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0))))
		return fail_rule(err, errlen, "mprotect", r);
	/* Flags of the fd itself only: F_SETFL (O_APPEND, O_DIRECT, O_ASYNC),
	 * F_SETOWN/F_SETSIG (signals to anyone), leases and locks would
	 * reach beyond this generation or this process. */
	for (size_t i = 0; i < COUNT(fcntl_commands); i++)
		if ((r = RULE(ctx, SCMP_ACT_ALLOW, fcntl, 1, SCMP_A1(SCMP_CMP_EQ, fcntl_commands[i]))))
			return fail_rule(err, errlen, "fcntl", r);
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

static int add_thread_filter(scmp_filter_ctx ctx, char *err, size_t errlen)
{
	int r = RULE(ctx, SCMP_ACT_ALLOW, clone, 1,
		     SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_FLAGS_CHECKED, THREAD_FLAGS_REQUIRED));
	return r ? fail_rule(err, errlen, "clone", r) : 0;
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
	if (add_list(ctx, SCMP_ACT_ALLOW, group_base, COUNT(group_base), err, errlen) ||
	    add_base_filters(ctx, driver_pid, err, errlen))
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

/* An empty, read-only tmpfs as /, the old root detached. */
static int enter_empty_root(const char **stage)
{
	*stage = "make mounts private";
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		return -1;
	*stage = "mount the empty root";
	if (mount("isolde-driver-root", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "size=16k,nr_inodes=8,mode=0555"))
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

int isolde_sandbox_enter(const struct isolde_sandbox *sb, int landlock_fd, const char **stage)
{
	if (sb->namespaces && enter_empty_root(stage))
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
