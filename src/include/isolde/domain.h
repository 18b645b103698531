/* SPDX-License-Identifier: MIT */
/*
 * isolde/domain.h (internal) - the launcher: creates a driver domain's shared memory and
 * event channels, and runs the driver as a separate process that holds exactly
 * these file descriptors:
 *
 *   0, 1  /dev/null                  2  its log: a pipe of its generation's
 *                                       own, non-blocking (driver_log.h)
 *   3     shared memory (memfd)      4  kick eventfd (front end -> driver)
 *   5     call eventfd (driver -> front end)
 *   6     the device: an open file description of this generation's own,
 *         opened by the launcher (the driver opens nothing itself)
 *   7     only with the policy's 'uring': an io_uring the launcher made,
 *         restricted to I/O on fd 6 (src/domain/domain_uring.h)
 *
 * Nothing the driver holds is shared with the application or with another
 * generation: a driver that sets O_APPEND on its device, fills its log or
 * leaves I/O in flight leaves it behind when it dies.
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
#include "isolde/blk.h"
#include "isolde/policy.h"
#include "isolde/ring.h"
#include "isolde/shm.h"

#include "isolde/driver.h"

#define ISOLDE_DRIVER_START_TIMEOUT_MS 10000

/* Opens the device afresh for a new generation: a new open file
 * description (of the same file), or -1 with err. */
typedef int (*isolde_open_device_fn)(void *ctx, char *err, size_t errlen);

struct isolde_domain_params {
	const char *driver;        /* name (blk-file) or path to a driver binary */
	char *const *driver_args;  /* extra argv, NULL-terminated, may be NULL */
	isolde_open_device_fn open_device;
	void *open_device_ctx;
	uint64_t device_size;
	uint32_t device_flags;     /* ISOLDE_DEV_* */
	uint32_t ring_slots;
	uint64_t data_size;
	enum isolde_notify_mode notify;
	/* ISOLDE_CLASS_BLOCK, or ISOLDE_CLASS_NET: two rings (isolde/netif.h),
	 * data_size ignored, device_size 0, the device a TAP fd */
	uint32_t device_class;
	uint32_t net_features;     /* ISOLDE_NETIF_F_*: what the TAP was set up to carry */
	uint32_t mtu;
	const struct isolde_policy *policy; /* required: what the driver may do */
	/* A policy with 'uring' where no namespaces can be had (not root and
	 * no user namespace) is refused unless this is set. */
	bool uring_without_namespaces;
};

/* How the last driver process ended (filled by isolde_domain_reap). */
struct isolde_exit {
	bool signaled;     /* killed by a signal (else exited) */
	int code;          /* the signal, or the exit status */
	bool by_policy;    /* the launcher killed it for breaking its policy */
	bool by_launcher;  /* the launcher's SIGKILL ended it (kill, not a failure of its own) */
	bool kernel;       /* a VM domain whose guest kernel failed (src/domain/vm.h) */
	char text[200];    /* "(pid 12) was killed by signal 11 (SIGSEGV)" */
};

/* What a generation holds besides its process: launcher.c. */
struct isolde_generation;
/* A VM domain's QEMU, guest and agent: src/domain/vm.h. */
struct isolde_vm;


struct isolde_domain {
	char driver_name[64];          /* for messages */
	char driver_path[PATH_MAX];
	char **extra_args;             /* the driver's own arguments (a copy) */
	isolde_open_device_fn open_device;
	void *open_device_ctx;
	bool uring_without_namespaces;
	int shm_fd;
	unsigned char *shm;            /* the front end's mapping */
	struct isolde_shm_layout layout;
	struct isolde_shm_header *header;
	struct isolde_sring *sring;
	struct isolde_sring *rx_sring; /* a network device's RX ring, else NULL */
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
	uint64_t denials_by_class[ISOLDE_DENIAL_CLASSES];
	struct isolde_exit last_exit;
	bool warned;                   /* sandbox degradation already reported */
	struct isolde_enforcement applied; /* by the last start */
	/* The last generation left memory that cannot be reused safely (its
	 * I/O did not drain): the device must not go on. */
	char unsafe[512];
	struct isolde_generation *gen; /* the running generation's resources */
	/* 'domain vm': the driver runs in a QEMU virtual machine; NULL for a
	 * process domain. */
	struct isolde_vm *vm;
	/* A VM domain's warm standby: the next generation, booted while this
	 * one serves; its agent waits for the go (src/domain/vm.h). */
	struct isolde_generation *standby;
	pid_t standby_pid;             /* 0 when there is none */
	uint64_t vm_calls;             /* doorbell messages from the VMs, all generations */
	int standby_pidfd;
	/* 'libraries loaded': what the driver's loader loads (libraries.h),
	 * found once; NULL otherwise. */
	struct isolde_libraries *libraries;
	/* A remote device (ISOLDE_DEV_REMOTE): what the last generation said
	 * at ready, copied once from the header - its device's size and
	 * flags, and its session, which the next generation takes over. */
	uint64_t reported_size;
	uint32_t reported_flags;
	uint64_t session_id;
	/* The last start failed because the device could not be opened (a
	 * remote device that is away): no driver was started. */
	bool open_failed;
};

/*
 * Find the driver binary: a name containing '/' is a path; otherwise
 * $ISOLDE_DRIVER_DIR/NAME, then the build tree's drivers when running from
 * the build tree, else the installed libexec directory.
 */
int isolde_driver_resolve(const char *driver, char *path, size_t len, char *err, size_t errlen);

/* Create shared memory and eventfds; does not start the driver. */
int isolde_domain_create(struct isolde_domain *d, const struct isolde_domain_params *p,
			 char *err, size_t errlen);

/* Reset the ring and grants, start a driver, wait until it reports ready. */
int isolde_domain_start(struct isolde_domain *d, char *err, size_t errlen);

/*
 * The same without blocking, for event loops (recovery never waits):
 * _begin does what needs no waiting (the generation's resources, the clone,
 * the child's admission, the filter) and returns 0, or -1 with err; then
 * _step, each time the watch fd or the call eventfd may have something, or
 * the timeout passed, returns 0 (not yet), 1 (the driver is ready) or -1
 * with err (it failed: the child is being killed; reap and end it). The
 * fds a start waits for are in the watch fd while it lasts.
 */
int isolde_domain_start_begin(struct isolde_domain *d, char *err, size_t errlen);
int isolde_domain_start_step(struct isolde_domain *d, char *err, size_t errlen);
/* Milliseconds until the running start or drain times out; -1 if none. */
int isolde_domain_start_timeout_ms(const struct isolde_domain *d);

/*
 * If the driver has exited, reap it, record how in d->last_exit and return
 * true. Returns false if it is still running. Never blocks. The generation
 * is not over until isolde_domain_end_step says so.
 */
bool isolde_domain_reap(struct isolde_domain *d);

/*
 * End a reaped generation: pass the rest of its log on, wait (up to wait_ms)
 * for what it left in flight on its io_uring, remove its control group.
 * Returns 1 when it is over, 0 if its io_uring is still draining (call
 * again; the ring is in the watch fd meanwhile), -1 if the drain timed out
 * (d->unsafe says why). Also 1 when there is nothing to end.
 */
int isolde_domain_end_step(struct isolde_domain *d, int wait_ms);

/*
 * Close a device's domain gently: SIGTERM, so that the driver releases what
 * its device holds (blk-rbd: the image's lock), then at most wait_ms for it
 * to exit, then isolde_domain_kill. Nothing may be in flight.
 */
void isolde_domain_stop(struct isolde_domain *d, int wait_ms);
#define ISOLDE_DRIVER_STOP_MS 2000

/* SIGKILL the driver, if it runs, without waiting. */
void isolde_domain_kill_async(struct isolde_domain *d);

/*
 * Attend to the running driver when its watch fd fired: answer pending
 * seccomp notifications (each refused call is counted, logged within the
 * policy's log rate, and fails with EPERM; a driver that keeps making them
 * is killed as a policy violation) and pass its log on. Bounded work per
 * call, whatever the driver does. Returns the number of calls answered.
 */
unsigned isolde_domain_service(struct isolde_domain *d);

/* Lines the drivers logged, and lines (log or refusal reports) suppressed
 * by the policy's log rate, over all generations. */
void isolde_domain_log_counts(const struct isolde_domain *d, uint64_t *lines, uint64_t *suppressed);

/* Refused calls a generation may make before it is killed for them. */
#define ISOLDE_DENIALS_PER_GENERATION 1000u

/*
 * Whether the driver is blocked in the kernel waiting for its device (state
 * D in /proc), as in an fdatasync of many dirty pages. Such a driver cannot
 * send heartbeats, yet it is making progress: hang detection lets it be
 * until its request is 10 heartbeats old.
 */
bool isolde_domain_waiting_on_device(const struct isolde_domain *d);

/* Kill the driver (SIGKILL) and reap it; a no-op if it is not running.
 * Reaping ends the generation: its log is passed on, its io_uring drained
 * (see d->unsafe), its control group removed. */
void isolde_domain_kill(struct isolde_domain *d);

/* Kill the driver if running and release everything. */
void isolde_domain_destroy(struct isolde_domain *d);

#endif
