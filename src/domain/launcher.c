// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "isolde/domain.h"
#include "isolde/blkif.h"

#include <errno.h>
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

static bool running_from_build_tree(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	size_t root_len = strlen(ISOLDE_BUILD_ROOT);

	if (n <= 0 || root_len == 0)
		return false;
	exe[n] = '\0';
	return strncmp(exe, ISOLDE_BUILD_ROOT, root_len) == 0 && exe[root_len] == '/';
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
			dir = running_from_build_tree() ? ISOLDE_BUILD_DRIVER_DIR : ISOLDE_LIBEXEC_DIR;
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

static char **build_argv(const char *path, char *const *extra)
{
	static const char *const fixed[] = {
		"--shm-fd", "3", "--kick-fd", "4", "--call-fd", "5", "--device-fd", "6",
	};
	size_t nfixed = sizeof fixed / sizeof fixed[0];
	size_t nextra = 0;

	while (extra && extra[nextra])
		nextra++;
	char **argv = calloc(1 + nfixed + nextra + 1, sizeof *argv);
	if (!argv)
		return NULL;
	argv[0] = strdup(path);
	for (size_t i = 0; i < nfixed; i++)
		argv[1 + i] = strdup(fixed[i]);
	for (size_t i = 0; i < nextra; i++)
		argv[1 + nfixed + i] = strdup(extra[i]);
	for (size_t i = 0; i < 1 + nfixed + nextra; i++) {
		if (!argv[i]) {
			for (size_t j = 0; j < 1 + nfixed + nextra; j++)
				free(argv[j]);
			free(argv);
			return NULL;
		}
	}
	return argv;
}

static void free_argv(char **argv)
{
	for (size_t i = 0; argv && argv[i]; i++)
		free(argv[i]);
	free(argv);
}

int isolde_domain_create(struct isolde_domain *d, const struct isolde_domain_params *p,
			 char *err, size_t errlen)
{
	memset(d, 0, sizeof *d);
	d->shm_fd = d->kick_fd = d->call_fd = d->pidfd = -1;
	d->device_fd = p->device_fd;
	snprintf(d->driver_name, sizeof d->driver_name, "%s", base_name(p->driver));

	if (isolde_driver_resolve(p->driver, d->driver_path, sizeof d->driver_path, err, errlen))
		return -1;
	if (isolde_shm_layout_compute(&d->layout, p->ring_slots, p->data_size)) {
		set_err(err, errlen, "bad ring size %u or data area size %llu", p->ring_slots,
			(unsigned long long)p->data_size);
		return -1;
	}
	d->argv = build_argv(d->driver_path, p->driver_args);
	if (!d->argv)
		goto fail_errno;

	d->shm_fd = memfd_create("isolde-domain", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (d->shm_fd < 0 || ftruncate(d->shm_fd, (off_t)d->layout.total_size) != 0)
		goto fail_errno;
	/* A driver that could shrink the object would make our mapping fault. */
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

	d->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	d->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->kick_fd < 0 || d->call_fd < 0)
		goto fail_errno;

	struct isolde_shm_header *h = d->header;
	h->magic = ISOLDE_SHM_MAGIC;
	h->version = ISOLDE_SHM_VERSION;
	h->header_size = sizeof *h;
	h->total_size = d->layout.total_size;
	h->ring_offset = d->layout.ring_offset;
	h->ring_slots = d->layout.ring_slots;
	h->slot_size = ISOLDE_BLK_SLOT_SIZE;
	h->grant_offset = d->layout.grant_offset;
	h->grant_count = d->layout.grant_count;
	h->max_segs = ISOLDE_BLK_MAX_SEGS;
	h->data_offset = d->layout.data_offset;
	h->data_size = d->layout.data_size;
	h->device_size = p->device_size;
	h->device_flags = p->device_flags;
	h->notify_mode = p->notify;
	h->spin_min_ns = ISOLDE_HYBRID_SPIN_MIN_NS;
	h->spin_max_ns = ISOLDE_HYBRID_SPIN_MAX_NS;
	return 0;

fail_errno:
	set_err(err, errlen, "cannot create the shared memory or event channels: %s", strerror(errno));
	isolde_domain_destroy(d);
	return -1;
}

/* In the child between fork and exec: only async-signal-safe calls. */
static void exec_driver(struct isolde_domain *d, pid_t parent, int status_fd)
{
	int src[4] = { d->shm_fd, d->kick_fd, d->call_fd, d->device_fd };
	int tmp[4];
	sigset_t none;
	int e;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
		goto fail;
	setpgid(0, 0);
	/* A crashing driver is a routine event here, not something to keep
	 * a core file of. */
	struct rlimit no_core = { 0, 0 };
	setrlimit(RLIMIT_CORE, &no_core);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);

	/* Move everything out of the way of 3..6 first, then into place. */
	for (int i = 0; i < 4; i++) {
		tmp[i] = fcntl(src[i], F_DUPFD, 16);
		if (tmp[i] < 0)
			goto fail;
	}
	int status_tmp = fcntl(status_fd, F_DUPFD_CLOEXEC, 16);
	if (status_tmp < 0)
		goto fail;
	status_fd = status_tmp;
	for (int i = 0; i < 4; i++) {
		if (dup2(tmp[i], ISOLDE_DRIVER_FD_SHM + i) < 0)
			goto fail;
	}
	int null_fd = open("/dev/null", O_RDWR);
	if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0)
		goto fail;
	/* Everything past the device fd goes, except the exec status pipe,
	 * which is close-on-exec. */
	for (int fd = ISOLDE_DRIVER_FD_DEVICE + 1; fd < status_fd; fd++)
		close(fd);
	close_range((unsigned)status_fd + 1, ~0u, 0);

	execv(d->driver_path, d->argv);
fail:
	e = errno;
	(void)!write(status_fd, &e, sizeof e);
	_exit(127);
}

static int wait_ready(struct isolde_domain *d, char *err, size_t errlen)
{
	uint64_t deadline = isolde_now_ns() + (uint64_t)ISOLDE_DRIVER_START_TIMEOUT_MS * 1000000;

	for (;;) {
		uint32_t state = __atomic_load_n(&d->header->driver_state, __ATOMIC_ACQUIRE);
		if (state == ISOLDE_DRIVER_READY)
			return 0;
		uint64_t now = isolde_now_ns();
		if (now >= deadline) {
			set_err(err, errlen, "driver %s (pid %d) did not become ready within %d ms",
				d->driver_name, (int)d->pid, ISOLDE_DRIVER_START_TIMEOUT_MS);
			return -1;
		}
		struct pollfd p[2] = { { .fd = d->call_fd, .events = POLLIN },
				       { .fd = d->pidfd, .events = POLLIN } };
		int r = poll(p, 2, (int)((deadline - now) / 1000000) + 1);
		if (r < 0 && errno != EINTR) {
			set_err(err, errlen, "waiting for driver %s: %s", d->driver_name, strerror(errno));
			return -1;
		}
		if (p[0].revents & POLLIN) {
			uint64_t v;
			(void)!read(d->call_fd, &v, sizeof v);
		}
		if (p[1].revents) {
			char why[160];
			if (__atomic_load_n(&d->header->driver_state, __ATOMIC_ACQUIRE) == ISOLDE_DRIVER_READY)
				continue;
			isolde_domain_reap(d, why, sizeof why);
			set_err(err, errlen, "driver %s %s before it was ready", d->driver_name, why);
			return -1;
		}
	}
}

int isolde_domain_start(struct isolde_domain *d, char *err, size_t errlen)
{
	int status_pipe[2];
	pid_t parent = getpid();
	int child_errno = 0;

	if (d->pid > 0) {
		set_err(err, errlen, "driver %s is already running (pid %d)", d->driver_name, (int)d->pid);
		return -1;
	}
	isolde_sring_init(d->sring);
	memset(d->grants, 0, (size_t)d->layout.grant_count * sizeof *d->grants);
	d->generation++;
	d->header->generation = d->generation;
	d->header->driver_state = ISOLDE_DRIVER_STARTING;
	d->header->driver_pid = 0;
	d->header->heartbeat = 0;
	d->header->requests_done = 0;
	d->header->batches = 0;
	uint64_t v;
	(void)!read(d->kick_fd, &v, sizeof v);
	(void)!read(d->call_fd, &v, sizeof v);

	if (pipe2(status_pipe, O_CLOEXEC) != 0) {
		set_err(err, errlen, "cannot start driver %s: pipe: %s", d->driver_name, strerror(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		set_err(err, errlen, "cannot start driver %s: fork: %s", d->driver_name, strerror(errno));
		close(status_pipe[0]);
		close(status_pipe[1]);
		return -1;
	}
	if (pid == 0) {
		close(status_pipe[0]);
		exec_driver(d, parent, status_pipe[1]);
	}
	close(status_pipe[1]);
	d->pid = pid;
	d->pidfd = pidfd_open(pid, 0);
	ssize_t n = read(status_pipe[0], &child_errno, sizeof child_errno);
	close(status_pipe[0]);
	if (n == sizeof child_errno) {
		waitpid(pid, NULL, 0);
		if (d->pidfd >= 0)
			close(d->pidfd);
		d->pid = 0;
		d->pidfd = -1;
		set_err(err, errlen, "cannot execute driver %s (%s): %s", d->driver_name,
			d->driver_path, strerror(child_errno));
		return -1;
	}
	if (d->pidfd < 0) {
		set_err(err, errlen, "pidfd_open: %s", strerror(errno));
		isolde_domain_kill(d);
		return -1;
	}
	if (wait_ready(d, err, errlen) != 0) {
		isolde_domain_kill(d);
		return -1;
	}
	return 0;
}

bool isolde_domain_reap(struct isolde_domain *d, char *why, size_t whylen)
{
	siginfo_t info;

	if (d->pid <= 0)
		return true;
	memset(&info, 0, sizeof info);
	if (waitid(P_PIDFD, (id_t)d->pidfd, &info, WEXITED | WNOHANG) != 0) {
		if (errno != ECHILD)
			return false;
		set_err(why, whylen, "(pid %d) is gone", (int)d->pid);
	} else if (info.si_pid == 0) {
		return false;
	} else if (info.si_code == CLD_EXITED) {
		set_err(why, whylen, "(pid %d) exited with status %d", (int)d->pid, info.si_status);
	} else {
		set_err(why, whylen, "(pid %d) was killed by signal %d (SIG%s)%s", (int)d->pid,
			info.si_status, sigabbrev_np(info.si_status) ? sigabbrev_np(info.si_status) : "?",
			info.si_code == CLD_DUMPED ? ", core dumped" : "");
	}
	close(d->pidfd);
	d->pidfd = -1;
	d->pid = 0;
	return true;
}

void isolde_domain_kill(struct isolde_domain *d)
{
	if (d->pid <= 0)
		return;
	if (d->pidfd >= 0)
		pidfd_send_signal(d->pidfd, SIGKILL, NULL, 0);
	else
		kill(d->pid, SIGKILL);
	siginfo_t info;
	if (d->pidfd >= 0)
		waitid(P_PIDFD, (id_t)d->pidfd, &info, WEXITED);
	else
		waitpid(d->pid, NULL, 0);
	if (d->pidfd >= 0)
		close(d->pidfd);
	d->pidfd = -1;
	d->pid = 0;
}

void isolde_domain_destroy(struct isolde_domain *d)
{
	isolde_domain_kill(d);
	if (d->shm)
		munmap(d->shm, d->layout.total_size);
	if (d->shm_fd >= 0)
		close(d->shm_fd);
	if (d->kick_fd >= 0)
		close(d->kick_fd);
	if (d->call_fd >= 0)
		close(d->call_fd);
	free_argv(d->argv);
	d->argv = NULL;
	d->shm = NULL;
	d->shm_fd = d->kick_fd = d->call_fd = -1;
}
