/* SPDX-License-Identifier: MIT */
/*
 * isolde/domain.h - the launcher: creates a driver domain's shared memory and
 * event channels, and runs the driver as a separate process that holds exactly
 * these file descriptors:
 *
 *   0, 1  /dev/null                  2  the launcher's stderr (driver log)
 *   3     shared memory (memfd)      4  kick eventfd (front end -> driver)
 *   5     call eventfd (driver -> front end)
 *   6     the device, opened by the launcher (the driver opens nothing itself)
 *
 * The driver is started with clone + exec of its own binary (by fd, so the
 * binary needs no path inside the driver's empty root), in its own process
 * group, and is killed if the launcher's thread dies (PR_SET_PDEATHSIG).
 * Between clone and exec the child enters the sandbox its policy describes
 * (src/domain/sandbox.h); the seccomp listener comes back to the launcher,
 * which answers every system call the policy does not allow.
 *
 * A domain can be started again after it stopped: the header is rewritten
 * from the launcher's private copy, the ring and grants are reset and the
 * generation bumped, so a restarted driver starts clean whatever its
 * predecessor scribbled.
 */
#ifndef ISOLDE_DOMAIN_H
#define ISOLDE_DOMAIN_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "isolde/grant.h"
#include "isolde/notify.h"
#include "isolde/policy.h"
#include "isolde/ring.h"
#include "isolde/shm.h"

#define ISOLDE_DRIVER_FD_SHM 3
#define ISOLDE_DRIVER_FD_KICK 4
#define ISOLDE_DRIVER_FD_CALL 5
#define ISOLDE_DRIVER_FD_DEVICE 6

#define ISOLDE_DRIVER_START_TIMEOUT_MS 10000

struct isolde_domain_params {
	const char *driver;        /* name (blk-file) or path to a driver binary */
	char *const *driver_args;  /* extra argv, NULL-terminated, may be NULL */
	int device_fd;             /* owned by the caller; passed to the driver */
	uint64_t device_size;
	uint32_t device_flags;     /* ISOLDE_DEV_* */
	uint32_t ring_slots;
	uint64_t data_size;
	enum isolde_notify_mode notify;
	const struct isolde_policy *policy; /* required: what the driver may do */
};

/* How the last driver process ended (filled by isolde_domain_reap). */
struct isolde_exit {
	bool signaled;     /* killed by a signal (else exited) */
	int code;          /* the signal, or the exit status */
	char text[160];    /* "(pid 12) was killed by signal 11 (SIGSEGV)" */
};

struct isolde_domain {
	char driver_name[64];          /* for messages */
	char driver_path[PATH_MAX];
	char **argv;
	int device_fd;
	int shm_fd;
	unsigned char *shm;            /* the front end's mapping */
	struct isolde_shm_layout layout;
	struct isolde_shm_header *header;
	struct isolde_sring *sring;
	struct isolde_grant *grants;
	unsigned char *data;
	int kick_fd;
	int call_fd;
	pid_t pid;                     /* 0 when not running */
	int pidfd;                     /* -1 when not running */
	int listener_fd;               /* seccomp notifications of the running driver, or -1 */
	int watch_fd;                  /* epoll set: pidfd + listener; readable = look */
	int binary_fd;                 /* the driver executable, opened once */
	uint32_t generation;
	struct isolde_policy policy;
	struct isolde_shm_header header_template; /* what start writes, every time */
	uint64_t denials;              /* system calls refused by policy */
	struct isolde_exit last_exit;
	bool warned;                   /* sandbox degradation already reported */
};

/*
 * Find the driver binary: a name containing '/' is a path; otherwise
 * $ISOLDE_DRIVER_DIR/NAME, then the build tree's drivers when running from
 * the build tree, else the installed libexec directory.
 */
int isolde_driver_resolve(const char *driver, char *path, size_t len, char *err, size_t errlen);

/* Is the running executable inside the build tree isolde was built in?
 * Then drivers and policies are taken from the tree, not the install. */
bool isolde_running_from_build_tree(void);

/* Create shared memory and eventfds; does not start the driver. */
int isolde_domain_create(struct isolde_domain *d, const struct isolde_domain_params *p,
			 char *err, size_t errlen);

/* Reset the ring and grants, start a driver, wait until it reports ready. */
int isolde_domain_start(struct isolde_domain *d, char *err, size_t errlen);

/*
 * If the driver has exited, reap it, record how in d->last_exit and return
 * true. Returns false if it is still running.
 */
bool isolde_domain_reap(struct isolde_domain *d);

/*
 * Answer pending seccomp notifications of the running driver: log each
 * refused call (driver, pid, call name) on stderr and fail it with EPERM.
 * Returns the number answered.
 */
unsigned isolde_domain_answer_syscalls(struct isolde_domain *d);

/*
 * Whether the driver is blocked in the kernel waiting for its device (state
 * D in /proc), as in an fdatasync of many dirty pages. Such a driver cannot
 * send heartbeats, yet it is making progress: hang detection lets it be
 * until its request is 10 heartbeats old.
 */
bool isolde_domain_waiting_on_device(const struct isolde_domain *d);

/* Kill the driver (SIGKILL) and reap it; a no-op if it is not running. */
void isolde_domain_kill(struct isolde_domain *d);

/* Kill the driver if running and release everything. */
void isolde_domain_destroy(struct isolde_domain *d);

#endif
