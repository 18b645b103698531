// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
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

#define NOBODY 65534

/* Everything a driver needs to exist: memory, signals to itself, time, the
 * ring's eventfds, stderr, exit. */
static const char *const group_base[] = {
	"read", "write", "readv", "writev", "close", "exit", "exit_group",
	"rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack",
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "futex",
	"clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday", "clock_getres",
	"getpid", "gettid", "poll", "ppoll", "restart_syscall", "sched_yield", "pause",
	"fstat", "newfstatat", "lseek", "getrandom", "arch_prctl", "set_tid_address",
	"set_robust_list", "rseq", "readlink", "fcntl", "dup",
};
static const char *const group_io[] = {
	"pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "fallocate",
};
static const char *const group_sync[] = { "fsync", "fdatasync", "sync_file_range" };
static const char *const group_uring[] = { "io_uring_setup", "io_uring_enter", "io_uring_register" };

/* Calls with no business in a driver: asking for them is an attack, and the
 * driver is killed on the spot (SIGSYS). */
static const char *const kill_list[] = {
	"ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
	"init_module", "finit_module", "delete_module", "bpf", "reboot", "swapon", "swapoff",
	"mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "perf_event_open",
	"userfaultfd", "keyctl", "add_key", "request_key", "open_by_handle_at",
};

static const unsigned long block_ioctls[] = { BLKDISCARD, BLKZEROOUT, BLKGETSIZE64, BLKSSZGET };

void isolde_sandbox_plan(struct isolde_sandbox *sb, const struct isolde_policy *p, uint64_t shm_size,
			 uint64_t file_size_limit)
{
	bool root = geteuid() == 0;

	memset(sb, 0, sizeof *sb);
	sb->namespaces = root;
	sb->drop_identity = root;
	sb->address_space = p->memory_bytes + shm_size;
	sb->max_files = p->max_files;
	sb->file_size = file_size_limit;
	sb->syscalls = p->syscalls;
}

static int allow_all(scmp_filter_ctx ctx, const char *const *names, size_t n, char *err, size_t errlen)
{
	for (size_t i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);
		if (nr == __NR_SCMP_ERROR)
			continue; /* not on this architecture */
		int r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
		if (r) {
			snprintf(err, errlen, "seccomp: cannot allow %s: %s", names[i], strerror(-r));
			return -1;
		}
	}
	return 0;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

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
	/* A foreign architecture's system calls (int 0x80 on x86_64) kill. */
	if ((r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS))) {
		snprintf(err, errlen, "seccomp: bad-arch action: %s", strerror(-r));
		goto out;
	}
	if (allow_all(ctx, group_base, COUNT(group_base), err, errlen))
		goto out;
	if ((sb->syscalls & ISOLDE_SYSCALLS_IO) && allow_all(ctx, group_io, COUNT(group_io), err, errlen))
		goto out;
	if ((sb->syscalls & ISOLDE_SYSCALLS_SYNC) && allow_all(ctx, group_sync, COUNT(group_sync), err, errlen))
		goto out;
	if ((sb->syscalls & ISOLDE_SYSCALLS_URING) &&
	    allow_all(ctx, group_uring, COUNT(group_uring), err, errlen))
		goto out;
	if (sb->syscalls & ISOLDE_SYSCALLS_IO) {
		for (size_t i = 0; i < COUNT(block_ioctls); i++) {
			r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
					     SCMP_A1(SCMP_CMP_EQ, block_ioctls[i]));
			if (r) {
				snprintf(err, errlen, "seccomp: ioctl rule: %s", strerror(-r));
				goto out;
			}
		}
	}
	/* getrlimit/setrlimit on itself (pid 0) only: every driver runs as
	 * nobody, and another's limits are not its business. */
	r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prlimit64), 1, SCMP_A0(SCMP_CMP_EQ, 0));
	if (r) {
		snprintf(err, errlen, "seccomp: prlimit64 rule: %s", strerror(-r));
		goto out;
	}
	/* abort() and raise() signal the caller itself, nothing else. */
	r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
			     SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)driver_pid));
	if (r) {
		snprintf(err, errlen, "seccomp: tgkill rule: %s", strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < COUNT(kill_list); i++) {
		int nr = seccomp_syscall_resolve_name(kill_list[i]);
		if (nr != __NR_SCMP_ERROR && (r = seccomp_rule_add(ctx, SCMP_ACT_KILL_PROCESS, nr, 0))) {
			snprintf(err, errlen, "seccomp: cannot deny %s: %s", kill_list[i], strerror(-r));
			goto out;
		}
	}

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

int isolde_sandbox_enter(const struct isolde_sandbox *sb, const char **stage)
{
	struct rlimit lim;

	if (sb->namespaces && enter_empty_root(stage))
		return -1;
	if (sb->drop_identity) {
		*stage = "drop to uid/gid nobody";
		if (setgroups(0, NULL) || setresgid(NOBODY, NOBODY, NOBODY) ||
		    setresuid(NOBODY, NOBODY, NOBODY))
			return -1;
	}
	*stage = "set rlimits";
	lim.rlim_cur = lim.rlim_max = sb->address_space;
	if (setrlimit(RLIMIT_AS, &lim))
		return -1;
	lim.rlim_cur = lim.rlim_max = sb->max_files;
	if (setrlimit(RLIMIT_NOFILE, &lim))
		return -1;
	lim.rlim_cur = lim.rlim_max = sb->file_size;
	if (setrlimit(RLIMIT_FSIZE, &lim))
		return -1;
	lim.rlim_cur = lim.rlim_max = 0;
	/* After the uid change: execve only checks RLIMIT_NPROC if the
	 * setuid itself found the user over the limit. */
	if (setrlimit(RLIMIT_CORE, &lim) || setrlimit(RLIMIT_NPROC, &lim))
		return -1;
	*stage = "set no_new_privs";
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
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
