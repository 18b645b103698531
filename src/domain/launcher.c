// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "isolde/domain.h"
#include "isolde/blkif.h"
#include "isolde/netif.h"

#include "build_tree.h"
#include "cgroup.h"
#include "domain_uring.h"
#include "driver_log.h"
#include "landlock.h"
#include "sandbox.h"
#include "libraries.h"
#include "vm.h"

#include <errno.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef ISOLDE_BUILD_ROOT
#define ISOLDE_BUILD_ROOT ""
#endif
#ifndef ISOLDE_BUILD_DRIVER_DIR
#define ISOLDE_BUILD_DRIVER_DIR ""
#endif
#ifndef ISOLDE_LIBEXEC_DIR
#define ISOLDE_LIBEXEC_DIR "/usr/local/libexec/isolde"
#endif

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static bool driver_name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 32)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
	}
	return true;
}

int isolde_driver_resolve(const char *driver, char *path, size_t len, char *err, size_t errlen)
{
	if (strchr(driver, '/')) {
		if (snprintf(path, len, "%s", driver) >= (int)len) {
			set_err(err, errlen, "driver path too long: %s", driver);
			return -1;
		}
	} else {
		const char *dir = getenv("ISOLDE_DRIVER_DIR");

		if (!driver_name_ok(driver)) {
			set_err(err, errlen,
				"driver name '%s' is not valid (letters, digits, '-', '_'; or a path)",
				driver);
			return -1;
		}
		if (!dir || !*dir)
			dir = isolde_running_from_build_tree() ? ISOLDE_BUILD_DRIVER_DIR : ISOLDE_LIBEXEC_DIR;
		if (snprintf(path, len, "%s/%s", dir, driver) >= (int)len) {
			set_err(err, errlen, "driver path too long: %s/%s", dir, driver);
			return -1;
		}
	}
	if (access(path, X_OK) != 0) {
		set_err(err, errlen, "driver '%s': cannot execute %s: %s", driver, path, strerror(errno));
		return -1;
	}
	return 0;
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static void free_argv(char **argv)
{
	for (size_t i = 0; argv && argv[i]; i++)
		free(argv[i]);
	free(argv);
}

/* A NULL-terminated copy of extra (which may be NULL). */
static char **copy_args(char *const *extra)
{
	size_t n = 0;

	while (extra && extra[n])
		n++;
	char **copy = calloc(n + 1, sizeof *copy);
	for (size_t i = 0; copy && i < n; i++) {
		if (!(copy[i] = strdup(extra[i]))) {
			free_argv(copy);
			return NULL;
		}
	}
	return copy;
}

/* argv[0], the fd options, the ring's (if any), the session to take over
 * (if any), then the driver's own. */
static char **build_argv(const char *path, char **extra, const char *uring_params, uint64_t session)
{
	const char *fixed[] = {
		"--shm-fd", "3", "--kick-fd", "4", "--call-fd", "5", "--device-fd", "6",
		"--uring-fd", "7", "--uring-params", uring_params,
	};
	size_t nfixed = uring_params ? 12 : 8, nextra = 0, k = 0;
	char session_text[24];

	snprintf(session_text, sizeof session_text, "%llu", (unsigned long long)session);
	while (extra && extra[nextra])
		nextra++;
	char **argv = calloc(1 + nfixed + 2 + nextra + 1, sizeof *argv);
	if (!argv)
		return NULL;
	bool ok = (argv[k++] = strdup(path)) != NULL;
	for (size_t i = 0; ok && i < nfixed; i++)
		ok = (argv[k++] = strdup(fixed[i])) != NULL;
	if (ok && session) {
		ok = (argv[k++] = strdup("--take-over-session")) != NULL;
		ok = ok && (argv[k++] = strdup(session_text)) != NULL;
	}
	for (size_t i = 0; ok && i < nextra; i++)
		ok = (argv[k++] = strdup(extra[i])) != NULL;
	if (!ok) {
		free_argv(argv);
		return NULL;
	}
	return argv;
}

/* Where a start is (isolde_domain_start_step): each phase waits for an fd. */
enum start_phase {
	START_NONE,      /* no start in progress */
	START_LISTENER,  /* the child's report of its seccomp listener (status pipe) */
	START_EXEC,      /* the child's execveat, as a notification (listener) */
	START_EXECED,    /* end-of-file on the status pipe: the exec happened */
	START_READY,     /* the driver says READY in the header (call eventfd) */
};

/* What a domain holds for its generations besides the process. The log's
 * rate limit lives as long as the domain, so restarts grant no new lines. */
struct isolde_generation {
	struct isolde_sandbox sb;     /* the plan of the running generation */
	char **argv;
	int device_fd;                /* the parent's copy until the exec */
	int log_write_fd;             /* the parent's copy until the exec */
	int landlock_fd;
	struct isolde_driver_log log;
	struct isolde_domain_uring uring;
	struct isolde_cgroup cgroup;
	struct isolde_vm_generation vm; /* a VM domain's (vm.h) */
	struct isolde_ratelimit log_limit;
	uint32_t denials;             /* by this generation */
	bool killed_for_denials;
	uint64_t lines_before;        /* logged by earlier generations */
	/* The start, step by step (isolde_domain_start_step). */
	enum start_phase phase;
	int status_fd;                /* child -> launcher, until the exec */
	int control_fd;               /* launcher -> child, until the listener is ours */
	uint64_t deadline_ns;         /* of the start, or of the drain */
	/* The end: killed, reaped, then the generation's resources released. */
	bool kill_sent;
	bool ending;                  /* reaped; the generation is not over yet */
	bool draining;                /* its io_uring is being waited for */
	uint64_t drain_started_ns;
	unsigned drain_first_inflight;
};

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* What a generation held besides its process, log and ring, let go:
 * the end of a generation that ran, and of a standby that never did. */
static void release_generation(struct isolde_generation *g)
{
	if (g->cgroup.ndirs)
		isolde_cgroup_remove(&g->cgroup);
	close_fd(&g->device_fd);
	close_fd(&g->log_write_fd);
	close_fd(&g->landlock_fd);
	isolde_vm_end(&g->vm);
	free_argv(g->argv);
	g->argv = NULL;
	g->ending = false;
}

static void init_generation(struct isolde_generation *g)
{
	g->device_fd = g->log_write_fd = g->landlock_fd = -1;
	g->status_fd = g->control_fd = -1;
	g->log.fd = -1;
	g->vm.initrd_fd = g->vm.kick_qemu = g->vm.call_qemu = g->vm.qmp_qemu = g->vm.control_qemu = -1;
	g->vm.kick_fd = g->vm.control_fd = g->vm.call_fd = g->vm.qmp_fd = -1;
}

int isolde_domain_create(struct isolde_domain *d, const struct isolde_domain_params *p,
			 char *err, size_t errlen)
{
	memset(d, 0, sizeof *d);
	d->shm_fd = d->kick_fd = d->call_fd = d->pidfd = d->standby_pidfd = -1;
	d->listener_fd = d->watch_fd = d->binary_fd = -1;
	if (!p->policy || !p->open_device) {
		set_err(err, errlen, "driver %s: no policy or no way to open its device", p->driver);
		return -1;
	}
	d->policy = *p->policy;
	d->open_device = p->open_device;
	d->open_device_ctx = p->open_device_ctx;
	d->uring_without_namespaces = p->uring_without_namespaces;
	snprintf(d->driver_name, sizeof d->driver_name, "%s", base_name(p->driver));

	if (isolde_driver_resolve(p->driver, d->driver_path, sizeof d->driver_path, err, errlen))
		return -1;
	bool net = p->device_class == ISOLDE_CLASS_NET;
	if (net && d->policy.domain == ISOLDE_DOMAIN_VM) {
		set_err(err, errlen, "driver %s: a VM domain serves block devices; a network driver needs a "
			"process domain", d->driver_name);
		return -1;
	}
	if (net ? isolde_shm_layout_compute_net(&d->layout, p->ring_slots, 0)
		: isolde_shm_layout_compute(&d->layout, p->ring_slots, p->data_size)) {
		set_err(err, errlen, "bad ring size %u or data area size %llu", p->ring_slots,
			(unsigned long long)p->data_size);
		return -1;
	}
	/* ivshmem maps a power of two: the data area takes the rest. */
	if (d->policy.domain == ISOLDE_DOMAIN_VM) {
		uint64_t whole = isolde_vm_shm_size(d->layout.total_size);
		if (isolde_shm_layout_compute(&d->layout, p->ring_slots,
					      d->layout.data_size + whole - d->layout.total_size) ||
		    d->layout.total_size != whole) {
			set_err(err, errlen, "no VM domain layout for ring size %u and data area size %llu",
				p->ring_slots, (unsigned long long)p->data_size);
			return -1;
		}
	}
	d->extra_args = copy_args(p->driver_args);
	d->gen = calloc(1, sizeof *d->gen);
	if (!d->extra_args || !d->gen)
		goto fail_errno;
	init_generation(d->gen);
	isolde_ratelimit_init(&d->gen->log_limit, d->policy.log_lines, d->policy.log_window_s);
	/* Executed by fd: the driver's root is empty, and a binary replaced on
	 * disk after open does not change what restarts run. */
	d->binary_fd = open(d->driver_path, O_PATH | O_CLOEXEC);
	if (d->binary_fd < 0)
		goto fail_errno;
	if (d->policy.domain == ISOLDE_DOMAIN_VM && (p->device_flags & ISOLDE_DEV_REMOTE)) {
		set_err(err, errlen, "driver %s: a VM domain serves image files and block devices; a remote "
			"image needs a process domain", d->driver_name);
		goto fail;
	}
	if (d->policy.domain == ISOLDE_DOMAIN_VM) {
		if (!(d->vm = calloc(1, sizeof *d->vm)) || !(d->standby = calloc(1, sizeof *d->standby)))
			goto fail_errno;
		init_generation(d->standby);
		if (isolde_vm_find(d->vm, d->binary_fd, d->driver_name, d->layout.total_size,
				   d->policy.guest_memory_bytes, (p->device_flags & ISOLDE_DEV_READONLY) != 0,
				   (p->device_flags & ISOLDE_DEV_BLOCKDEV) != 0, err, errlen)) {
			isolde_vm_free(d->vm);
			free(d->vm);
			d->vm = NULL;
			goto fail;
		}
	} else if (d->policy.libraries) {
		if (!(d->libraries = calloc(1, sizeof *d->libraries)))
			goto fail_errno;
		if (isolde_libraries_find(d->libraries, d->driver_path, &d->policy, err, errlen)) {
			free(d->libraries);
			d->libraries = NULL;
			goto fail;
		}
	}
	d->watch_fd = epoll_create1(EPOLL_CLOEXEC);
	if (d->watch_fd < 0)
		goto fail_errno;

	d->shm_fd = memfd_create("isolde-domain", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (d->shm_fd < 0 || ftruncate(d->shm_fd, (off_t)d->layout.total_size) != 0)
		goto fail_errno;
	/* A driver that could shrink the object would make our mapping fault;
	 * F_SEAL_SEAL keeps it from adding F_SEAL_WRITE against us. */
	if (fcntl(d->shm_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
		goto fail_errno;
	d->shm = mmap(NULL, d->layout.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, d->shm_fd, 0);
	if (d->shm == MAP_FAILED) {
		d->shm = NULL;
		goto fail_errno;
	}
	d->header = (struct isolde_shm_header *)d->shm;
	d->sring = (struct isolde_sring *)(d->shm + d->layout.ring_offset);
	d->grants = (struct isolde_grant *)(d->shm + d->layout.grant_offset);
	d->data = d->shm + d->layout.data_offset;
	if (net)
		d->rx_sring = (struct isolde_sring *)(d->shm + d->layout.rx_ring_offset);

	/* A VM's kick doorbell is a socket, replaced every generation
	 * (isolde_vm_prepare) under this number; the front end's waiter sees
	 * a socket from the start. Its calls come through the watch fd. */
	if (d->vm) {
		int pair[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) != 0)
			goto fail_errno;
		close(pair[1]);
		d->kick_fd = pair[0];
	} else {
		d->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	}
	d->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->kick_fd < 0 || d->call_fd < 0)
		goto fail_errno;

	struct isolde_shm_header *h = &d->header_template;
	h->magic = ISOLDE_SHM_MAGIC;
	h->version = ISOLDE_SHM_VERSION;
	h->header_size = sizeof *h;
	h->total_size = d->layout.total_size;
	h->ring_offset = d->layout.ring_offset;
	h->ring_slots = d->layout.ring_slots;
	h->slot_size = net ? ISOLDE_NETIF_SLOT_SIZE : ISOLDE_BLK_SLOT_SIZE;
	h->grant_offset = d->layout.grant_offset;
	h->grant_count = d->layout.grant_count;
	h->max_segs = net ? 1 : ISOLDE_BLK_MAX_SEGS;
	h->device_class = d->layout.device_class;
	if (net) {
		h->rx_ring_offset = d->layout.rx_ring_offset;
		h->buf_size = ISOLDE_NETIF_BUF_SIZE;
		h->net_features = p->net_features;
		h->mtu = p->mtu ? p->mtu : ISOLDE_NETIF_DEFAULT_MTU;
	}
	h->data_offset = d->layout.data_offset;
	h->data_size = d->layout.data_size;
	h->device_size = p->device_size;
	/* In the guest the image is the disk /dev/vda. */
	h->device_flags = p->device_flags | (d->vm ? ISOLDE_DEV_BLOCKDEV : 0);
	h->notify_mode = p->notify;
	h->spin_min_ns = ISOLDE_HYBRID_SPIN_MIN_NS;
	h->spin_max_ns = ISOLDE_HYBRID_SPIN_MAX_NS;
	return 0;

fail_errno:
	set_err(err, errlen, "cannot create the shared memory or event channels: %s", strerror(errno));
fail:
	isolde_domain_destroy(d);
	return -1;
}

/* Messages from the child to the launcher on the status pipe. */
enum child_msg { CHILD_LISTENER = 1, CHILD_FAILED = 2 };
struct child_report {
	int kind;
	int value;      /* listener fd number, or errno */
	char stage[48]; /* what failed */
};

/* The filter travels parent -> child; a static buffer, so the child need
 * not allocate between clone and exec. */
static unsigned char filter_buf[ISOLDE_SANDBOX_FILTER_MAX];

static void child_fail(int status_fd, const char *stage)
{
	struct child_report r = { .kind = CHILD_FAILED, .value = errno };

	strncpy(r.stage, stage, sizeof r.stage - 1);
	(void)!write(status_fd, &r, sizeof r);
	_exit(127);
}

static bool read_full(int fd, void *buf, size_t len)
{
	unsigned char *p = buf;

	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

#define CHILD_FDS 6 /* shm, kick, call, device, log, uring */
#define MAX_CHILD_FDS (CHILD_FDS > ISOLDE_VM_FDS ? CHILD_FDS : ISOLDE_VM_FDS)

/* Put the generation's fds in place (a driver's on 2..7, QEMU's on 2..11)
 * and close everything else but keep[]. */
static void arrange_fds(struct isolde_domain *d, int status_fd, int *keep, unsigned nkeep)
{
	struct isolde_generation *g = d->gen;
	int src[MAX_CHILD_FDS] = { d->shm_fd, d->kick_fd, d->call_fd, g->device_fd, g->log_write_fd,
				   g->uring.active ? g->uring.ring.ring_fd : -1 };
	int dst[MAX_CHILD_FDS] = { ISOLDE_DRIVER_FD_SHM, ISOLDE_DRIVER_FD_KICK, ISOLDE_DRIVER_FD_CALL,
				   ISOLDE_DRIVER_FD_DEVICE, 2, ISOLDE_DRIVER_FD_URING };
	int tmp[MAX_CHILD_FDS];
	unsigned n = CHILD_FDS;
	int last = g->uring.active ? ISOLDE_DRIVER_FD_URING : ISOLDE_DRIVER_FD_DEVICE;

	if (d->vm) {
		n = isolde_vm_child_fds(d->vm, &g->vm, d->shm_fd, g->device_fd, g->log_write_fd, src, dst);
		last = ISOLDE_VM_FD_CONTROL;
	}
	/* Out of the way of 0..11 first, then into place. */
	for (unsigned i = 0; i < n; i++)
		if ((tmp[i] = src[i] < 0 ? -1 : fcntl(src[i], F_DUPFD, 16)) < 0 && src[i] >= 0)
			child_fail(status_fd, "arrange fds");
	for (unsigned i = 0; i < nkeep; i++)
		if (keep[i] >= 0 && (keep[i] = fcntl(keep[i], F_DUPFD_CLOEXEC, 16)) < 0)
			child_fail(status_fd, "arrange fds");
	status_fd = keep[0];
	for (unsigned i = 0; i < n; i++)
		if (tmp[i] >= 0 && dup2(tmp[i], dst[i]) < 0)
			child_fail(status_fd, "arrange fds");
	/* Not close-on-exec: if 0 or 1 was closed, /dev/null lands there and
	 * dup2 onto itself would keep the flag. */
	int null_fd = open("/dev/null", O_RDWR);
	if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0)
		child_fail(status_fd, "open /dev/null");
	for (int fd = last + 1; fd < 1024; fd++) {
		bool kept = false;
		for (unsigned i = 0; i < nkeep; i++)
			kept |= fd == keep[i];
		if (!kept)
			close(fd);
	}
	if (close_range(1024, ~0u, 0) != 0)
		child_fail(status_fd, "close inherited fds");
}

/* In the child between clone and exec: only async-signal-safe calls. */
static void exec_driver(struct isolde_domain *d, pid_t parent, int status_fd, int control_fd)
{
	struct isolde_generation *g = d->gen;
	sigset_t none;
	const char *stage = "start";
	char *const no_env[] = { NULL };
	char go;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
		child_fail(status_fd, "set the parent-death signal");
	setpgid(0, 0);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);

	int keep[4] = { status_fd, control_fd, d->vm ? d->vm->qemu_fd : d->binary_fd, g->landlock_fd };
	arrange_fds(d, status_fd, keep, 4);
	status_fd = keep[0];
	control_fd = keep[1];
	int binary_fd = keep[2], landlock_fd = keep[3];

	/* The launcher maps our user namespace and moves us into our control
	 * group before we go on. */
	if (!read_full(control_fd, &go, 1) || go != 'g')
		child_fail(status_fd, "wait for the launcher");
	if (isolde_sandbox_enter(&g->sb, landlock_fd, &stage) != 0)
		child_fail(status_fd, stage);
	if (landlock_fd >= 0)
		close(landlock_fd);
	/* The kernel clears the parent-death signal when credentials change,
	 * so it is armed (again) after the sandbox dropped them. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
		child_fail(status_fd, "set the parent-death signal");

	/* QEMU filters its own system calls (-sandbox): no listener, and its
	 * exec is an ordinary one. */
	if (d->vm) {
		syscall(SYS_execveat, binary_fd, "", g->vm.argv, no_env, AT_EMPTY_PATH);
		child_fail(status_fd, "execute QEMU");
	}

	uint32_t len;
	if (!read_full(control_fd, &len, sizeof len) || len > sizeof filter_buf ||
	    !read_full(control_fd, filter_buf, len))
		child_fail(status_fd, "receive the seccomp filter");
	int listener = isolde_sandbox_load_filter(filter_buf, len);
	if (listener < 0)
		child_fail(status_fd, "load the seccomp filter");
	/* The launcher takes the listener with pidfd_getfd; only then may
	 * the driver's copy go, so that the driver cannot answer itself. */
	struct child_report r = { .kind = CHILD_LISTENER, .value = listener };
	char ack;
	if (write(status_fd, &r, sizeof r) != sizeof r || !read_full(control_fd, &ack, 1))
		child_fail(status_fd, "hand over the seccomp listener");
	close(listener);

	syscall(SYS_execveat, binary_fd, "", g->argv, no_env, AT_EMPTY_PATH);
	child_fail(status_fd, "execute the driver");
}

static bool namespaces_refused(int e)
{
	return e == EPERM || e == EINVAL || e == ENOSPC || e == EUSERS;
}

/* clone3 into new namespaces where allowed; without them where not (the
 * plan records it), unless the policy needs them. Returns the child's pid
 * in both processes' sense of fork(). */
static pid_t clone_driver(struct isolde_domain *d, struct isolde_sandbox *sb, int *pidfd,
			  char *err, size_t errlen)
{
	struct clone_args args;

	for (;;) {
		memset(&args, 0, sizeof args);
		args.flags = CLONE_PIDFD;
		if (sb->namespaces)
			args.flags |= CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS |
				      (sb->host_network ? 0 : CLONE_NEWNET);
		if (sb->user_namespace)
			args.flags |= CLONE_NEWUSER;
		args.pidfd = (uint64_t)(uintptr_t)pidfd;
		args.exit_signal = SIGCHLD;
		pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
		if (pid >= 0)
			return pid;
		int e = errno;
		if (!sb->namespaces || !namespaces_refused(e)) {
			set_err(err, errlen, "cannot start driver %s: clone3: %s", d->driver_name, strerror(e));
			return -1;
		}
		if (sb->uring && !d->uring_without_namespaces) {
			set_err(err, errlen, "driver %s needs io_uring (policy %s), and this host gives it no "
				"namespaces (clone3: %s; not root and no user namespace): refusing to run "
				"it uncontained; run as root, allow unprivileged user namespaces, or accept "
				"seccomp, Landlock and the restricted ring alone with "
				"--allow-uring-without-namespaces", d->driver_name, d->policy.source,
				strerror(e));
			return -1;
		}
		isolde_sandbox_drop_namespaces(sb, e);
	}
}

static void watch(struct isolde_domain *d, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };

	if (fd >= 0)
		epoll_ctl(d->watch_fd, EPOLL_CTL_ADD, fd, &ev);
}

static void unwatch(struct isolde_domain *d, int fd)
{
	if (fd >= 0)
		epoll_ctl(d->watch_fd, EPOLL_CTL_DEL, fd, NULL);
}

/* The start's own channels, closed once the exec happened or it failed. */
static void close_start_channels(struct isolde_generation *g, struct isolde_domain *d)
{
	unwatch(d, g->status_fd);
	close_fd(&g->status_fd);
	close_fd(&g->control_fd);
	g->phase = START_NONE;
}

/* Kill the driver for a policy reason the kernel cannot see. */
static void kill_for_policy(struct isolde_domain *d, const char *why)
{
	if (d->gen->killed_for_denials || d->pidfd < 0)
		return;
	d->gen->killed_for_denials = true;
	fprintf(stderr, "isolde: driver %s (pid %d) %s: killing it\n", d->driver_name, (int)d->pid, why);
	pidfd_send_signal(d->pidfd, SIGKILL, NULL, 0);
}

#define ANSWERS_PER_SERVICE 64u /* a flood of refused calls cannot hold the caller */

static bool port_allowed(const struct isolde_policy *p, unsigned port)
{
	for (unsigned i = 0; i < p->nconnect; i++)
		if (port >= p->connect[i].lo && port <= p->connect[i].hi)
			return true;
	return false;
}

/*
 * A 'net' driver's connect comes here so that one outside its ports is
 * reported, not only refused: Landlock is what enforces the ports (a
 * connect let through here still meets it, so a thread that changes the
 * address after this look gains nothing), this only reads the address to
 * say what was refused. True: let it go on to Landlock.
 */
static bool connect_in_policy(struct isolde_domain *d, const struct seccomp_notif *req, char *what, size_t len)
{
	struct sockaddr_storage ss;
	size_t n = req->data.args[2] < sizeof ss ? (size_t)req->data.args[2] : sizeof ss;
	struct iovec local = { &ss, n }, remote = { (void *)(uintptr_t)req->data.args[1], n };
	char addr[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	memset(&ss, 0, sizeof ss);
	/* An address that cannot be read here (a bad pointer, a host whose
	 * ptrace rules forbid even a parent) is Landlock's to judge, unreported. */
	if (n < sizeof(sa_family_t) || process_vm_readv((pid_t)req->pid, &local, 1, &remote, 1, 0) != (ssize_t)n ||
	    ioctl(d->listener_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) != 0)
		return true;
	if (ss.ss_family == AF_INET && n >= sizeof(struct sockaddr_in)) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &in->sin_addr, addr, sizeof addr);
		port = ntohs(in->sin_port);
	} else if (ss.ss_family == AF_INET6 && n >= sizeof(struct sockaddr_in6)) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof addr);
		port = ntohs(in6->sin6_port);
	} else {
		/* Its socket() could only make TCP sockets: the kernel refuses
		 * another family on them. */
		return true;
	}
	if (port_allowed(&d->policy, port))
		return true;
	snprintf(what, len, "a TCP connection to %s port %u, which is not among its 'connect' ports", addr, port);
	return false;
}

static unsigned answer_syscalls(struct isolde_domain *d)
{
	struct isolde_generation *g = d->gen;
	unsigned answered = 0;

	while (d->listener_fd >= 0 && answered < ANSWERS_PER_SERVICE) {
		struct pollfd p = { .fd = d->listener_fd, .events = POLLIN };
		struct seccomp_notif req;
		struct seccomp_notif_resp resp;

		if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
			break;
		memset(&req, 0, sizeof req);
		if (ioctl(d->listener_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0)
			break; /* the caller died meanwhile */
		memset(&resp, 0, sizeof resp);
		resp.id = req.id;
		answered++;
		char what[160];
		bool is_connect = req.data.nr == SYS_connect && d->policy.nconnect;
		if (is_connect && connect_in_policy(d, &req, what, sizeof what)) {
			resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
			ioctl(d->listener_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
			continue;
		}
		d->denials++;
		d->denials_by_class[is_connect ? ISOLDE_DENY_NETWORK : isolde_sandbox_syscall_class(req.data.nr)]++;
		g->denials++;
		if (is_connect) {
			/* What Landlock would answer. */
			resp.error = -EACCES;
			isolde_limited_log(&g->log_limit, "policy %s denied driver %s (pid %d) %s: refused with "
					   "EACCES", d->policy.source, d->driver_name, (int)req.pid, what);
		} else {
			char *name = isolde_sandbox_syscall_name(req.data.nr);
			resp.error = -EPERM;
			isolde_limited_log(&g->log_limit, "policy %s denied driver %s (pid %d) system call %s (%d): "
					   "refused with EPERM", d->policy.source, d->driver_name, (int)req.pid,
					   name ? name : "?", req.data.nr);
			free(name);
		}
		ioctl(d->listener_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
		if (g->denials >= ISOLDE_DENIALS_PER_GENERATION)
			kill_for_policy(d, "keeps making system calls its policy refuses");
	}
	return answered;
}

void isolde_domain_log_counts(const struct isolde_domain *d, uint64_t *lines, uint64_t *suppressed)
{
	*lines = d->gen ? d->gen->lines_before + d->gen->log.lines : 0;
	*suppressed = d->gen ? d->gen->log_limit.suppressed_total : 0;
}

unsigned isolde_domain_service(struct isolde_domain *d)
{
	unsigned answered = d->gen->phase == START_NONE || d->gen->phase == START_READY ? answer_syscalls(d) : 0;

	if (d->vm) {
		uint64_t before = d->gen->vm.calls;
		isolde_vm_service(&d->gen->vm);
		d->vm_calls += d->gen->vm.calls - before;
	}
	isolde_driver_log_drain(&d->gen->log);
	return answered;
}

/* ---- the start ---- */

/* The generation's resources, before the clone: device, ring, log, argv. */
static int prepare_generation(struct isolde_domain *d, int log_pipe[2], char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;
	bool blockdev = (d->header_template.device_flags & ISOLDE_DEV_BLOCKDEV) != 0;
	char params[2 * sizeof(struct io_uring_params) + 1];

	g->denials = 0;
	g->killed_for_denials = false;
	g->kill_sent = false;
	/* A remote device is no file of the driver's: it may grow none
	 * (RLIMIT_FSIZE 0). */
	bool remote = (d->header_template.device_flags & ISOLDE_DEV_REMOTE) != 0;
	isolde_sandbox_plan(&g->sb, &d->policy, d->libraries, d->layout.total_size,
			    remote ? 0 : d->header_template.device_size, blockdev && !d->vm);
	/* Landlock's TCP rules (ABI 4) are what bound the ports: without
	 * them the driver is not run at all. */
	if (g->sb.nconnect && g->sb.landlock_abi < 4) {
		set_err(err, errlen, "policy %s lets driver %s connect to TCP ports, which needs Landlock ABI 4 "
			"(Linux 6.7) to bound; this kernel has ABI %d: refusing to run it with any port open",
			d->policy.source, d->driver_name, g->sb.landlock_abi);
		return -1;
	}
	d->open_failed = false;
	if ((g->device_fd = d->open_device(d->open_device_ctx, err, errlen)) < 0) {
		d->open_failed = true;
		return -1;
	}
	if (g->sb.uring) {
		if (isolde_domain_uring_create(&g->uring, d->layout.ring_slots, g->device_fd, err, errlen))
			return -1;
		isolde_domain_uring_params_hex(&g->uring, params, sizeof params);
	}
	if (!(g->argv = build_argv(d->driver_path, d->extra_args, g->sb.uring ? params : NULL, d->session_id))) {
		set_err(err, errlen, "out of memory");
		return -1;
	}
	if (d->vm && isolde_vm_prepare(d->vm, &g->vm, g->argv, err, errlen))
		return -1;
	/* Non-blocking at both ends: a driver whose log is not read loses
	 * lines instead of stalling, and the launcher never waits for it.
	 * QEMU takes its end as a chardev socket (a pipe it would reopen by
	 * path, which its uid may not). */
	if (d->vm ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, log_pipe) != 0
		  : pipe2(log_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
		set_err(err, errlen, "cannot start driver %s: log pipe: %s", d->driver_name, strerror(errno));
		return -1;
	}
	g->log_write_fd = log_pipe[1];
	if (g->sb.landlock_abi > 0 &&
	    (g->landlock_fd = isolde_landlock_ruleset(g->sb.landlock_abi, d->vm ? -1 : d->binary_fd, g->sb.libraries,
						      g->sb.connect, g->sb.nconnect, err, errlen)) < 0) {
		close(log_pipe[0]);
		return -1;
	}
	return 0;
}

/* Parent, right after clone: what must be in place before the child goes on. */
static int admit_child(struct isolde_domain *d, pid_t pid, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;

	if (isolde_sandbox_map_user(&g->sb, pid, err, errlen))
		return -1;
	if (g->sb.cgroups && isolde_cgroup_enter(&g->cgroup, d->driver_name, pid, &g->sb.cgroup, err, errlen))
		return -1;
	if (send(g->control_fd, "g", 1, MSG_NOSIGNAL) != 1) {
		set_err(err, errlen, "driver %s died while entering its sandbox", d->driver_name);
		return -1;
	}
	if (g->sb.degraded[0] && !d->warned) {
		fprintf(stderr, "isolde: warning: driver %s runs with less confinement than its policy "
			"asks: %s\n", d->driver_name, g->sb.degraded);
		d->warned = true;
	}
	return 0;
}

/* A start that failed: the channels go. A child that is still there, most
 * likely exiting on its own now that they are gone, is the caller's to
 * kill (isolde_domain_kill_async), reap and end. */
static int start_failed(struct isolde_domain *d)
{
	close_start_channels(d->gen, d);
	return -1;
}

/*
 * Clone the generation's process (d->gen, d->pid) and admit it: its
 * resources, the clone, its exec towards the driver (or QEMU), its user
 * namespace and control group. With watched, its fds join the watch fd; a
 * standby's join it only when it is activated. 0, or -1 with err (what
 * was made is ended like any generation: reap, then end).
 */
static int spawn_generation(struct isolde_domain *d, bool watched, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;
	int status_pipe[2] = { -1, -1 }, control_pipe[2] = { -1, -1 }, log_pipe[2] = { -1, -1 };
	pid_t parent = getpid();
	int pidfd = -1;

	if (prepare_generation(d, log_pipe, err, errlen)) {
		g->ending = true;
		return -1;
	}
	/* The control channel is a socket so that writing to a driver killed
	 * mid-start fails with EPIPE instead of raising SIGPIPE in the caller. */
	if (pipe2(status_pipe, O_CLOEXEC) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, control_pipe) != 0) {
		set_err(err, errlen, "cannot start driver %s: pipe: %s", d->driver_name, strerror(errno));
		close_fd(&status_pipe[0]), close_fd(&status_pipe[1]), close(log_pipe[0]);
		g->ending = true;
		return -1;
	}
	pid_t pid = clone_driver(d, &g->sb, &pidfd, err, errlen);
	if (pid < 0) {
		close(status_pipe[0]), close(status_pipe[1]), close(control_pipe[0]), close(control_pipe[1]);
		close(log_pipe[0]);
		g->ending = true;
		return -1;
	}
	if (pid == 0) {
		close(status_pipe[0]);
		close(control_pipe[1]);
		exec_driver(d, parent, status_pipe[1], control_pipe[0]);
	}
	close(status_pipe[1]);
	close(control_pipe[0]);
	d->pid = pid;
	d->pidfd = pidfd;
	g->status_fd = status_pipe[0];
	g->control_fd = control_pipe[1];
	g->ending = true; /* from here on it ends like any driver: reap, then end */
	g->deadline_ns = isolde_now_ns() + (uint64_t)ISOLDE_DRIVER_START_TIMEOUT_MS * 1000000;
	isolde_driver_log_attach(&g->log, log_pipe[0], d->driver_name, pid, &g->log_limit);
	if (watched) {
		watch(d, d->pidfd);
		watch(d, g->log.fd);
		watch(d, g->status_fd);
	}
	if (admit_child(d, pid, err, errlen)) {
		unwatch(d, g->status_fd);
		close_fd(&g->status_fd);
		close_fd(&g->control_fd);
		return -1;
	}
	g->phase = START_EXECED;
	return 0;
}

/* ---- a VM domain's warm standby ---- */

/* The standby and the running generation trade places (struct and process). */
static void swap_standby(struct isolde_domain *d)
{
	struct isolde_generation *g = d->gen;
	pid_t pid = d->pid;
	int pidfd = d->pidfd;

	d->gen = d->standby;
	d->pid = d->standby_pid;
	d->pidfd = d->standby_pidfd;
	d->standby = g;
	d->standby_pid = pid;
	d->standby_pidfd = pidfd;
}

static void discard_standby(struct isolde_domain *d);

/* Boot the next VM while this one serves, so that a failure finds one
 * waiting (isolde_vm_activate). Not fatal: without it a restart boots. */
static void start_standby(struct isolde_domain *d)
{
	char err[256];

	if (!d->standby || d->standby_pid > 0 || d->standby->ending || !d->policy.vm_standby)
		return;
	swap_standby(d);
	int r = spawn_generation(d, false, err, sizeof err);
	swap_standby(d);
	if (r) {
		fprintf(stderr, "isolde: driver %s: no warm standby: %s\n", d->driver_name, err);
		discard_standby(d);
	}
}

/* Kill and release the standby (it never served). */
static void discard_standby(struct isolde_domain *d)
{
	struct isolde_generation *s = d->standby;

	if (!s)
		return;
	if (d->standby_pidfd >= 0) {
		siginfo_t info;
		pidfd_send_signal(d->standby_pidfd, SIGKILL, NULL, 0);
		while (waitid(P_PIDFD, (id_t)d->standby_pidfd, &info, WEXITED) != 0 && errno == EINTR)
			;
		close(d->standby_pidfd);
	}
	d->standby_pid = 0;
	d->standby_pidfd = -1;
	close_fd(&s->status_fd);
	close_fd(&s->control_fd);
	isolde_driver_log_close(&s->log);
	s->log.lines = 0;
	release_generation(s);
	s->phase = START_NONE;
}

/* Whether the standby is there to take over: alive, its start not failed. */
static bool standby_ready(struct isolde_domain *d)
{
	struct pollfd p = { .fd = d->standby_pidfd, .events = POLLIN };

	if (!d->standby || d->standby_pid <= 0)
		return false;
	if (poll(&p, 1, 0) == 0)
		return true;
	fprintf(stderr, "isolde: driver %s: the warm standby (QEMU pid %d) ended before it was needed\n",
		d->driver_name, (int)d->standby_pid);
	discard_standby(d);
	return false;
}

/*
 * Start a VM generation: take the standby if one waits, else boot one;
 * then hand it the domain's doorbell and let its agent start the driver.
 */
static int start_vm(struct isolde_domain *d, char *err, size_t errlen)
{
	if (standby_ready(d)) {
		struct isolde_generation *old = d->gen;
		swap_standby(d);
		/* What lives as long as the domain stays with the running one. */
		d->gen->log_limit = old->log_limit;
		d->gen->lines_before = old->lines_before;
		d->gen->log.limit = &d->gen->log_limit;
		fprintf(stderr, "isolde: driver %s generation %u: the warm standby (QEMU pid %d) takes over\n",
			d->driver_name, d->generation, (int)d->pid);
		watch(d, d->pidfd);
		watch(d, d->gen->log.fd);
		watch(d, d->gen->status_fd);
	} else if (spawn_generation(d, true, err, errlen)) {
		return -1;
	}
	struct isolde_generation *g = d->gen;
	if (isolde_vm_activate(&g->vm, d->kick_fd, err, errlen))
		return -1;
	watch(d, g->vm.call_fd);
	watch(d, g->vm.qmp_fd);
	g->deadline_ns = isolde_now_ns() + (uint64_t)ISOLDE_VM_START_TIMEOUT_MS * 1000000;
	g->phase = g->status_fd >= 0 ? START_EXECED : START_READY;
	return 0;
}

int isolde_domain_start_begin(struct isolde_domain *d, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;

	if (d->pid > 0 || g->ending) {
		set_err(err, errlen, "driver %s is still running or ending (pid %d)", d->driver_name, (int)d->pid);
		return -1;
	}
	if (d->unsafe[0]) {
		set_err(err, errlen, "%s", d->unsafe);
		return -1;
	}
	memset(&d->last_exit, 0, sizeof d->last_exit);
	/* Whatever the last driver wrote, the next one starts from our copy. */
	d->generation++;
	d->header_template.generation = d->generation;
	memcpy(d->header, &d->header_template, sizeof *d->header);
	isolde_sring_init(d->sring);
	if (d->rx_sring)
		isolde_sring_init(d->rx_sring);
	memset(d->grants, 0, (size_t)d->layout.grant_count * sizeof *d->grants);
	uint64_t v;
	(void)!read(d->kick_fd, &v, sizeof v);
	(void)!read(d->call_fd, &v, sizeof v);

	if (d->vm)
		return start_vm(d, err, errlen) ? start_failed(d) : 0;
	if (spawn_generation(d, true, err, errlen))
		return -1;
	g->phase = START_NONE;

	/* The filter names the driver's pid, so it is built now. */
	ssize_t len = isolde_sandbox_build_filter(&g->sb, d->pid, filter_buf, sizeof filter_buf, err, errlen);
	if (len < 0)
		return start_failed(d);
	uint32_t len32 = (uint32_t)len;
	if (send(g->control_fd, &len32, sizeof len32, MSG_NOSIGNAL) != sizeof len32 ||
	    send(g->control_fd, filter_buf, (size_t)len, MSG_NOSIGNAL) != len) {
		set_err(err, errlen, "cannot pass the seccomp filter to driver %s", d->driver_name);
		return start_failed(d);
	}
	g->phase = START_LISTENER;
	return 0;
}

static bool readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP));
}

/* A report on the status pipe, or end-of-file (0). -1: nothing yet. */
static int read_report(struct isolde_generation *g, struct child_report *r)
{
	if (!readable(g->status_fd))
		return -1;
	ssize_t n = read(g->status_fd, r, sizeof *r);
	return n == (ssize_t)sizeof *r ? 1 : 0;
}

static int phase_listener(struct isolde_domain *d, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;
	struct child_report report = { 0 };
	int r = read_report(g, &report);

	if (r < 0)
		return 0;
	if (r == 0 || report.kind != CHILD_LISTENER) {
		if (r == 1 && report.kind == CHILD_FAILED)
			set_err(err, errlen, "cannot sandbox driver %s: %s: %s", d->driver_name, report.stage,
				strerror(report.value));
		else
			set_err(err, errlen, "driver %s died while entering its sandbox", d->driver_name);
		return -1;
	}
	d->listener_fd = (int)syscall(SYS_pidfd_getfd, d->pidfd, report.value, 0);
	if (d->listener_fd < 0) {
		set_err(err, errlen, "cannot take the seccomp listener of driver %s: %s", d->driver_name,
			strerror(errno));
		return -1;
	}
	fcntl(d->listener_fd, F_SETFD, FD_CLOEXEC);
	if (send(g->control_fd, "k", 1, MSG_NOSIGNAL) != 1) {
		set_err(err, errlen, "driver %s died while entering its sandbox", d->driver_name);
		return -1;
	}
	close_fd(&g->control_fd);
	watch(d, d->listener_fd);
	g->phase = START_EXEC;
	return 0;
}

/* The child's execveat is the one notification we let through. */
static int phase_exec(struct isolde_domain *d, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;
	struct seccomp_notif req;
	struct seccomp_notif_resp resp;

	if (!readable(d->listener_fd)) {
		if (!readable(g->status_fd))
			return 0;
		/* The child reports a failure, or died, before its exec. */
		g->phase = START_EXECED;
		return 0;
	}
	memset(&req, 0, sizeof req);
	if (ioctl(d->listener_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) == 0) {
		memset(&resp, 0, sizeof resp);
		resp.id = req.id;
		if (req.pid == (uint32_t)d->pid && req.data.nr == SYS_execveat)
			resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
		else
			resp.error = -EPERM;
		ioctl(d->listener_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
	}
	(void)err, (void)errlen;
	g->phase = START_EXECED;
	return 0;
}

/* End-of-file on the close-on-exec status pipe: the exec happened. */
static int phase_execed(struct isolde_domain *d, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;
	struct child_report report = { 0 };
	int r = read_report(g, &report);

	if (r < 0)
		return 0;
	if (r == 1 && report.kind == CHILD_FAILED) {
		set_err(err, errlen, "cannot start driver %s (%s): %s: %s", d->driver_name, d->driver_path,
			report.stage, strerror(report.value));
		return -1;
	}
	close_start_channels(g, d);
	g->phase = START_READY;
	/* The driver holds its device, log and ring now; our copies go (the
	 * ring's stays referenced by g->uring, for the drain). */
	close_fd(&g->device_fd);
	close_fd(&g->log_write_fd);
	close_fd(&g->landlock_fd);
	if (d->vm)
		isolde_vm_execed(&g->vm);
	d->applied = (struct isolde_enforcement){
		.namespaces = g->sb.namespaces, .user_namespace = g->sb.user_namespace,
		.own_uid = g->sb.own_uid, .cgroups = g->cgroup.ndirs > 0,
		.landlock_abi = g->sb.landlock_abi, .restricted_uring = g->uring.active, .vm = g->sb.vm,
	};
	return 0;
}

/*
 * A remote device's driver said what it reached: copied once, here, and
 * checked. The first answer is the device's; a later generation that
 * reaches another size, or a read-only device where a writable one was,
 * failed to start. Its session is what the next generation takes over.
 */
static int take_report(struct isolde_domain *d, char *err, size_t errlen)
{
	uint64_t size = __atomic_load_n(&d->header->reported_size, __ATOMIC_RELAXED);
	uint32_t flags = __atomic_load_n(&d->header->reported_flags, __ATOMIC_RELAXED);
	uint64_t session = __atomic_load_n(&d->header->session_id, __ATOMIC_RELAXED);
	uint64_t known = d->header_template.device_size;

	if (size == 0 || size % 512 || size > (UINT64_C(1) << 62)) {
		set_err(err, errlen, "driver %s reported a device size of %llu bytes, which is not a "
			"multiple of 512 in 512..2^62", d->driver_name, (unsigned long long)size);
		return -1;
	}
	if (known && size != known) {
		set_err(err, errlen, "driver %s reached a device of %llu bytes, not the %llu it had: the "
			"remote device changed", d->driver_name, (unsigned long long)size,
			(unsigned long long)known);
		return -1;
	}
	if (flags & ~ISOLDE_DEV_READONLY) {
		set_err(err, errlen, "driver %s reported unknown device flags 0x%x", d->driver_name, flags);
		return -1;
	}
	if ((flags & ISOLDE_DEV_READONLY) && !(d->header_template.device_flags & ISOLDE_DEV_READONLY)) {
		set_err(err, errlen, "driver %s reached a read-only device; open it read-only", d->driver_name);
		return -1;
	}
	d->reported_size = size;
	d->reported_flags = flags;
	d->session_id = session;
	if (!known)
		d->header_template.device_size = size;
	return 0;
}

static int phase_ready(struct isolde_domain *d, char *err, size_t errlen)
{
	uint64_t v;

	(void)!read(d->call_fd, &v, sizeof v);
	isolde_domain_service(d);
	if (__atomic_load_n(&d->header->driver_state, __ATOMIC_ACQUIRE) == ISOLDE_DRIVER_READY) {
		if ((d->header_template.device_flags & ISOLDE_DEV_REMOTE) && take_report(d, err, errlen))
			return -1;
		d->gen->phase = START_NONE;
		if (d->vm)
			start_standby(d);
		return 1;
	}
	if (readable(d->pidfd)) {
		isolde_domain_reap(d);
		set_err(err, errlen, "driver %s %s before it was ready", d->driver_name, d->last_exit.text);
		return -1;
	}
	return 0;
}

int isolde_domain_start_step(struct isolde_domain *d, char *err, size_t errlen)
{
	struct isolde_generation *g = d->gen;
	enum start_phase before;
	int r = 0;

	if (g->phase == START_NONE)
		return d->pid > 0 && !g->kill_sent ? 1 : -1;
	do {
		before = g->phase;
		switch (g->phase) {
		case START_LISTENER: r = phase_listener(d, err, errlen); break;
		case START_EXEC: r = phase_exec(d, err, errlen); break;
		case START_EXECED: r = phase_execed(d, err, errlen); break;
		case START_READY: r = phase_ready(d, err, errlen); break;
		case START_NONE: r = 1; break;
		}
	} while (r == 0 && g->phase != before);
	if (r == 0 && isolde_now_ns() >= g->deadline_ns) {
		set_err(err, errlen, "driver %s (%spid %d) did not become ready within %d ms", d->driver_name,
			d->vm ? "in a VM domain, QEMU " : "", (int)d->pid,
			d->vm ? ISOLDE_VM_START_TIMEOUT_MS : ISOLDE_DRIVER_START_TIMEOUT_MS);
		r = -1;
	}
	return r < 0 ? start_failed(d) : r;
}

int isolde_domain_start_timeout_ms(const struct isolde_domain *d)
{
	uint64_t now = isolde_now_ns(), deadline = d->gen->deadline_ns;

	if (d->gen->phase == START_NONE && !d->gen->draining)
		return -1;
	return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

int isolde_domain_start(struct isolde_domain *d, char *err, size_t errlen)
{
	if (isolde_domain_start_begin(d, err, errlen)) {
		isolde_domain_kill(d);
		return -1;
	}
	for (;;) {
		int r = isolde_domain_start_step(d, err, errlen);
		if (r > 0)
			return 0;
		if (r < 0) {
			isolde_domain_kill(d);
			return -1;
		}
		struct pollfd p[2] = { { .fd = d->watch_fd, .events = POLLIN }, { .fd = d->call_fd, .events = POLLIN } };
		poll(p, 2, isolde_domain_start_timeout_ms(d));
	}
}

/* ---- the end ---- */

static void release_process(struct isolde_domain *d)
{
	unwatch(d, d->pidfd);
	unwatch(d, d->listener_fd);
	if (d->pidfd >= 0)
		close(d->pidfd);
	if (d->listener_fd >= 0)
		close(d->listener_fd);
	d->pidfd = d->listener_fd = -1;
	d->pid = 0;
}

static void note_launcher_kill(struct isolde_domain *d)
{
	struct isolde_exit *x = &d->last_exit;

	if (d->gen->killed_for_denials) {
		x->by_policy = true;
		snprintf(x->text, sizeof x->text, "(pid %d) was killed after %u system calls its policy refuses",
			 (int)d->pid, d->gen->denials);
	} else if (d->gen->kill_sent && x->signaled && x->code == SIGKILL) {
		x->by_launcher = true;
		snprintf(x->text, sizeof x->text, "(pid %d) was stopped by the launcher", (int)d->pid);
	}
}

bool isolde_domain_reap(struct isolde_domain *d)
{
	struct isolde_exit *x = &d->last_exit;
	siginfo_t info;

	if (d->pid <= 0)
		return true;
	memset(&info, 0, sizeof info);
	memset(x, 0, sizeof *x);
	/*
	 * Peek first. When a thread of this process ptraces the driver (isolde
	 * inject does), the kernel treats this wait as the tracer's and reports
	 * ptrace stops even without WSTOPPED; consuming one would both take it
	 * from the tracer and mistake a stopped driver for a dead one.
	 */
	if (waitid(P_PIDFD, (id_t)d->pidfd, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
		if (errno != ECHILD)
			return false;
		set_err(x->text, sizeof x->text, "(pid %d) is gone", (int)d->pid);
	} else if (info.si_pid == 0 || (info.si_code != CLD_EXITED && info.si_code != CLD_KILLED &&
					 info.si_code != CLD_DUMPED)) {
		return false;
	} else if (waitid(P_PIDFD, (id_t)d->pidfd, &info, WEXITED | WNOHANG) != 0 || info.si_pid == 0) {
		return false; /* it was there a moment ago; look again next time */
	} else if (info.si_code == CLD_EXITED) {
		x->code = info.si_status;
		set_err(x->text, sizeof x->text, "(pid %d) exited with status %d", (int)d->pid, info.si_status);
	} else {
		x->signaled = true;
		x->code = info.si_status;
		set_err(x->text, sizeof x->text, "(pid %d) was killed by signal %d (SIG%s)%s", (int)d->pid,
			info.si_status, sigabbrev_np(info.si_status) ? sigabbrev_np(info.si_status) : "?",
			info.si_code == CLD_DUMPED ? ", core dumped" : "");
	}
	if (d->vm)
		isolde_vm_explain_exit(&d->gen->vm, d->pid, &x->signaled, &x->code, &x->kernel, x->text,
				       sizeof x->text);
	note_launcher_kill(d);
	/* A generation that died in its start may already have had a
	 * session, and taken over its predecessor's lock with it: the next
	 * one takes over from that session. */
	uint64_t session = __atomic_load_n(&d->header->session_id, __ATOMIC_RELAXED);
	if ((d->header_template.device_flags & ISOLDE_DEV_REMOTE) && session)
		d->session_id = session;
	close_start_channels(d->gen, d);
	release_process(d);
	return true;
}

/* Wait (up to wait_ms) for the dead driver's io_uring to drain: 1 drained,
 * 0 not yet, -1 unsafe. */
static int drain_uring(struct isolde_domain *d, int wait_ms)
{
	struct isolde_generation *g = d->gen;
	char err[200];

	if (!g->uring.active)
		return 1;
	if (!g->draining) {
		int timeout = d->policy.heartbeat_ms * 10 < 5000 ? 5000 : (int)d->policy.heartbeat_ms * 10;
		g->draining = true;
		g->drain_started_ns = isolde_now_ns();
		g->deadline_ns = g->drain_started_ns + (uint64_t)timeout * 1000000;
		g->drain_first_inflight = 0;
		watch(d, g->uring.ring.ring_fd);
	}
	int ring_fd = g->uring.ring.ring_fd;
	int r = isolde_domain_uring_drain(&g->uring, wait_ms, err, sizeof err);
	if (g->drain_first_inflight == 0)
		g->drain_first_inflight = isolde_domain_uring_inflight(&g->uring);
	if (r == 0 && isolde_now_ns() < g->deadline_ns)
		return 0;
	unwatch(d, ring_fd);
	g->draining = false;
	if (r > 0) {
		if (g->drain_first_inflight)
			fprintf(stderr, "isolde: driver %s: waited %llu ms for %u requests it left in flight on "
				"its io_uring before reusing their memory\n", d->driver_name,
				(unsigned long long)((isolde_now_ns() - g->drain_started_ns) / 1000000),
				g->drain_first_inflight);
		return 1;
	}
	snprintf(d->unsafe, sizeof d->unsafe, "driver %s's io_uring still had %u requests in flight %llu ms "
		 "after it ended (%.100s): its memory may still be written, so the device stops",
		 d->driver_name, isolde_domain_uring_inflight(&g->uring),
		 (unsigned long long)((isolde_now_ns() - g->drain_started_ns) / 1000000),
		 r < 0 ? err : "timed out");
	fprintf(stderr, "isolde: %s\n", d->unsafe);
	/* The ring stays referenced: freeing it would not stop the device
	 * from writing. */
	return -1;
}

int isolde_domain_end_step(struct isolde_domain *d, int wait_ms)
{
	struct isolde_generation *g = d->gen;

	if (!g || !g->ending)
		return 1;
	if (d->pid > 0)
		return 0; /* reap first */
	unwatch(d, g->log.fd);
	isolde_driver_log_close(&g->log);
	g->lines_before += g->log.lines;
	g->log.lines = 0;
	int r = drain_uring(d, wait_ms);
	if (r == 0)
		return 0;
	if (d->vm) {
		unwatch(d, g->vm.call_fd);
		unwatch(d, g->vm.qmp_fd);
	}
	release_generation(g);
	return r;
}

bool isolde_domain_waiting_on_device(const struct isolde_domain *d)
{
	char path[64], stat[512];
	const char *end;
	ssize_t n;
	int fd;

	if (d->pid <= 0)
		return false;
	snprintf(path, sizeof path, "/proc/%d/stat", (int)d->pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return false;
	n = read(fd, stat, sizeof stat - 1);
	close(fd);
	if (n <= 0)
		return false;
	stat[n] = '\0';
	/* "PID (COMM) STATE ...": COMM may hold anything, so look after its last ')'. */
	end = strrchr(stat, ')');
	return end && end[1] == ' ' && end[2] == 'D';
}

void isolde_domain_kill_async(struct isolde_domain *d)
{
	if (d->pid <= 0 || d->gen->kill_sent)
		return;
	/* Already dead: keep how it ended. */
	if (isolde_domain_reap(d))
		return;
	d->gen->kill_sent = true;
	pidfd_send_signal(d->pidfd, SIGKILL, NULL, 0);
}

void isolde_domain_kill(struct isolde_domain *d)
{
	isolde_domain_kill_async(d);
	/* A stop a tracer in this process has not collected may come first
	 * (see isolde_domain_reap); the exit follows it. */
	while (d->pid > 0 && !isolde_domain_reap(d)) {
		struct pollfd p = { .fd = d->pidfd, .events = POLLIN };
		poll(&p, 1, 100);
	}
	while (isolde_domain_end_step(d, 100) == 0)
		;
}

void isolde_domain_stop(struct isolde_domain *d, int wait_ms)
{
	if (d->pid > 0 && d->pidfd >= 0 && syscall(SYS_pidfd_send_signal, d->pidfd, SIGTERM, NULL, 0) == 0) {
		uint64_t deadline = isolde_now_ns() + (uint64_t)wait_ms * 1000000u;
		while (!isolde_domain_reap(d)) {
			uint64_t now = isolde_now_ns();
			struct pollfd p = { .fd = d->pidfd, .events = POLLIN };
			if (now >= deadline)
				break;
			poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
		}
	}
	isolde_domain_kill(d);
}

void isolde_domain_destroy(struct isolde_domain *d)
{
	if (d->gen)
		isolde_domain_kill(d);
	discard_standby(d);
	free(d->standby);
	d->standby = NULL;
	/* A ring that did not drain is let go only now: the device stopped
	 * and its memory is about to be unmapped. */
	if (d->gen)
		isolde_domain_uring_release(&d->gen->uring);
	if (d->shm)
		munmap(d->shm, d->layout.total_size);
	if (d->shm_fd >= 0)
		close(d->shm_fd);
	if (d->kick_fd >= 0)
		close(d->kick_fd);
	if (d->call_fd >= 0)
		close(d->call_fd);
	if (d->watch_fd >= 0)
		close(d->watch_fd);
	if (d->binary_fd >= 0)
		close(d->binary_fd);
	free_argv(d->extra_args);
	if (d->vm) {
		isolde_vm_free(d->vm);
		free(d->vm);
		d->vm = NULL;
	}
	free(d->gen);
	if (d->libraries) {
		isolde_libraries_free(d->libraries);
		free(d->libraries);
		d->libraries = NULL;
	}
	d->extra_args = NULL;
	d->gen = NULL;
	d->shm = NULL;
	d->shm_fd = d->kick_fd = d->call_fd = d->watch_fd = d->binary_fd = -1;
}
