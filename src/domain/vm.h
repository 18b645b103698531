/* SPDX-License-Identifier: MIT */
/*
 * A driver domain that is a virtual machine: the unmodified static driver
 * binary runs on a Linux kernel of its own inside QEMU (TCG here), and serves
 * the front end through the same shared memory, now an ivshmem device.
 * Only the launcher's start and the doorbells differ from a process domain
 * (docs/ARCHITECTURE.md §18):
 *
 *   shared memory  the domain's memfd as QEMU's memory-backend-file
 *                  (share=on) behind an ivshmem-plain PCI device; the guest
 *                  agent (src/vm/guest_agent.c) maps its BAR 2 and hands it
 *                  to the driver as fd 3. Its size is a power of two.
 *   doorbells      two virtio-serial ports, each backed by one end of a
 *                  socketpair: 8 bytes written are one signal. The kick
 *                  socket keeps the domain's kick fd number (dup3), so the
 *                  front end's waiter does not change; the call socket is
 *                  in the watch fd, and isolde_vm_service drains it.
 *   device         the generation's own open file description of the image,
 *                  as QEMU's virtio-blk disk (-add-fd, writeback cache with
 *                  flushes passed on); the guest driver sees /dev/vda.
 *   log            the guest's serial console and QEMU's stderr, on one
 *                  socket, read like a driver's log pipe.
 *   supervision    QEMU's pidfd; its exit status, which the guest agent
 *                  sets through isa-debug-exit to say how the driver ended
 *                  (src/vm/agent_exit.h); QMP events (GUEST_PANICKED, from
 *                  pvpanic, when the guest kernel panics); the heartbeat in
 *                  the shared header, as for any driver.
 *
 * The guest is Debian's kernel with the virtio modules
 * (scripts/build-vm-guest.sh); each generation gets it with a second,
 * uncompressed initramfs appended that holds the agent as /init, the driver
 * and its argv. QEMU runs in the sandbox isolde_sandbox_plan decides for a
 * VM domain, and under its own -sandbox (seccomp).
 */
#ifndef ISOLDE_DOMAIN_VM_H
#define ISOLDE_DOMAIN_VM_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A VM takes seconds to boot under TCG: its start may take this long. */
#define ISOLDE_VM_START_TIMEOUT_MS 60000

/* QEMU's fds (the child arranges them so; the command line names them). */
#define ISOLDE_VM_FD_LOG 2     /* QEMU's stderr: the log socket */
#define ISOLDE_VM_FD_SHM 3
#define ISOLDE_VM_FD_KICK 4
#define ISOLDE_VM_FD_CALL 5
#define ISOLDE_VM_FD_DEVICE 6
#define ISOLDE_VM_FD_CONSOLE 7 /* the guest's serial console: the log socket too */
#define ISOLDE_VM_FD_QMP 8
#define ISOLDE_VM_FD_KERNEL 9
#define ISOLDE_VM_FD_INITRD 10
#define ISOLDE_VM_FD_CONTROL 11 /* the agent waits here for the go */
#define ISOLDE_VM_FDS 10

/* What a VM domain needs, found once when the domain is created. */
struct isolde_vm {
	int qemu_fd;                   /* the QEMU binary, O_PATH */
	char qemu_path[PATH_MAX];
	int kernel_fd;                 /* the guest kernel, read-only */
	char guest_dir[PATH_MAX];
	unsigned char *base_initrd;    /* the guest's own initramfs */
	size_t base_initrd_len;
	unsigned char *agent;          /* /init */
	size_t agent_len;
	unsigned char *driver;         /* the driver binary, as the domain opened it */
	size_t driver_len;
	uint64_t shm_size;
	uint64_t guest_memory;
	bool readonly;
	bool host_blockdev;            /* the image is a block device of the host's */
	unsigned tsc_khz;              /* the host's TSC, for the guest kernel; 0 unknown */
};

/* A generation's VM resources. */
struct isolde_vm_generation {
	int initrd_fd;                 /* base + this generation's files, sealed */
	int kick_qemu, call_qemu, qmp_qemu, control_qemu; /* QEMU's ends, until the exec */
	int kick_fd;                   /* ours, until it takes the domain's kick number */
	int control_fd;                /* ours: one byte, 'g', lets the agent start the driver */
	int call_fd;                   /* ours: the driver's calls (watched) */
	int qmp_fd;                    /* ours: QEMU's monitor (watched) */
	char **argv;                   /* QEMU's command line */
	char qmp_line[512];            /* the monitor's current line */
	size_t qmp_len;
	bool qmp_overflow;             /* the current line is too long: skipped */
	bool guest_panicked;           /* QMP said GUEST_PANICKED */
	uint64_t calls;                /* doorbell messages drained */
};

/*
 * Find QEMU ($ISOLDE_QEMU, else qemu-system-x86_64 on PATH), the guest
 * ($ISOLDE_VM_GUEST_DIR, the build tree's, or the installed one) and the
 * agent, and read the driver binary (driver_fd, O_PATH), which must be
 * static: the guest has no libraries. 0, or -1 with err.
 */
int isolde_vm_find(struct isolde_vm *vm, int driver_fd, const char *driver_name, uint64_t shm_size,
		   uint64_t guest_memory, bool readonly, bool host_blockdev, char *err, size_t errlen);
void isolde_vm_free(struct isolde_vm *vm);

/* The size of a VM domain's shared memory: ivshmem wants a power of two. */
uint64_t isolde_vm_shm_size(uint64_t layout_size);

/*
 * Before the clone: this generation's doorbells, monitor, control port,
 * initramfs (with the driver's argv) and QEMU's command line. 0, or -1 with
 * err; isolde_vm_end releases what was made.
 */
int isolde_vm_prepare(struct isolde_vm *vm, struct isolde_vm_generation *g, char *const *driver_argv,
		      char *err, size_t errlen);

/*
 * Make this VM the domain's driver: its kick socket takes the domain's
 * kick fd number (the front end's waiter signals that number), and the
 * agent is told to start the driver. A VM booted ahead (a warm standby)
 * only waits for this. 0, or -1 with err.
 */
int isolde_vm_activate(struct isolde_vm_generation *g, int kick_fd, char *err, size_t errlen);

/* The fds QEMU gets, as (source, target) pairs for the child: n pairs. */
unsigned isolde_vm_child_fds(const struct isolde_vm *vm, const struct isolde_vm_generation *g,
			     int shm_fd, int device_fd, int log_fd, int *src, int *dst);

/* After the exec: QEMU holds its ends; ours of them go. */
void isolde_vm_execed(struct isolde_vm_generation *g);

/* The watch fd fired: drain the call doorbell and read the monitor,
 * bounded. */
void isolde_vm_service(struct isolde_vm_generation *g);

/*
 * QEMU ended: say how, from its exit status, the agent's code in it and
 * the monitor's events. *signaled and *code become the driver's (a driver
 * killed by SIGSEGV in the guest is an MMU fault, as in a process);
 * *kernel is set when the guest kernel failed. text gets the sentence.
 */
void isolde_vm_explain_exit(struct isolde_vm_generation *g, pid_t qemu_pid, bool *signaled, int *code,
			    bool *kernel, char *text, size_t textlen);

/* Release a generation's VM resources. */
void isolde_vm_end(struct isolde_vm_generation *g);

#endif
