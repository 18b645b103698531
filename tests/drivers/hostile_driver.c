// SPDX-License-Identifier: MIT
/*
 * hostile-driver: blk-file with one attack on everything beyond its own
 * generation, for the containment tests (tests/system/test_hostile.py).
 * It serves correctly until request --after (default 10) of its first
 * generation, makes its attack there, logs what the kernel answered
 * ("attack NAME: ...") and then does what the attack says: serve on, crash
 * (so that the next generation shows whether the attack outlived it) or
 * stop. With --every-generation every generation attacks.
 *
 * Each attack is a function in the table below; --attack=list prints them.
 * Built with the tests; never installed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "blk_file.h"
#include "isolde/driver.h"
#include "uring_attach.h"

#ifndef F_OFD_SETLK
#define F_OFD_SETLK 37
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_WRITE 0x0008
#endif

enum after_attack { SERVE, CRASH, STOP };

struct attack {
	const char *name;
	enum after_attack (*run)(struct isolde_driver *drv);
};

static const char *attack_name = "none";
static const struct attack *attack;
static unsigned long after = 10;
static long target_pid;
static long target_port = 9;
static bool every_generation;
static unsigned long seen;

static void report(struct isolde_driver *drv, const char *what, long r)
{
	if (r < 0)
		isolde_driver_log(drv, "attack %s: %s: refused (%s)", attack_name, what, strerror(errno));
	else
		isolde_driver_log(drv, "attack %s: %s: succeeded (%ld)", attack_name, what, r);
}

/* ---- reaching beyond the generation through its fds ---- */

static enum after_attack fcntl_append(struct isolde_driver *drv)
{
	report(drv, "F_SETFL O_APPEND on the device", syscall(SYS_fcntl, ISOLDE_DRIVER_FD_DEVICE, F_SETFL, O_APPEND));
	return CRASH;
}

static enum after_attack fcntl_direct(struct isolde_driver *drv)
{
	report(drv, "F_SETFL O_DIRECT on the device", syscall(SYS_fcntl, ISOLDE_DRIVER_FD_DEVICE, F_SETFL, O_DIRECT));
	return CRASH;
}

static enum after_attack ofd_lock(struct isolde_driver *drv)
{
	struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	report(drv, "F_OFD_SETLK on the device", syscall(SYS_fcntl, ISOLDE_DRIVER_FD_DEVICE, F_OFD_SETLK, &lk));
	return CRASH;
}

static enum after_attack setown_signal(struct isolde_driver *drv)
{
	/* SIGIO turned into SIGKILL for the target whenever the log pipe
	 * becomes writable. */
	report(drv, "F_SETOWN on its log", syscall(SYS_fcntl, 2, F_SETOWN, target_pid));
	report(drv, "F_SETSIG SIGKILL on its log", syscall(SYS_fcntl, 2, F_SETSIG, SIGKILL));
	report(drv, "F_SETFL O_ASYNC on its log", syscall(SYS_fcntl, 2, F_SETFL, O_ASYNC | O_NONBLOCK));
	isolde_driver_log(drv, "attack %s: poking the pipe", attack_name);
	return SERVE;
}

static enum after_attack add_seals(struct isolde_driver *drv)
{
	report(drv, "F_ADD_SEALS F_SEAL_WRITE on the shared memory",
	       syscall(SYS_fcntl, ISOLDE_DRIVER_FD_SHM, F_ADD_SEALS, F_SEAL_WRITE));
	return SERVE;
}

static enum after_attack shrink_shm(struct isolde_driver *drv)
{
	report(drv, "ftruncate the shared memory to one page", syscall(SYS_ftruncate, ISOLDE_DRIVER_FD_SHM, 4096));
	return SERVE;
}

/* ---- the host's disk ---- */

static enum after_attack fallocate_keep_size(struct isolde_driver *drv)
{
	report(drv, "fallocate KEEP_SIZE 1 GiB past the end",
	       syscall(SYS_fallocate, ISOLDE_DRIVER_FD_DEVICE, FALLOC_FL_KEEP_SIZE,
		       (off_t)drv->params.device_size, (off_t)1 << 30));
	return SERVE;
}

static enum after_attack fallocate_insert(struct isolde_driver *drv)
{
	report(drv, "fallocate INSERT_RANGE 128 MiB",
	       syscall(SYS_fallocate, ISOLDE_DRIVER_FD_DEVICE, FALLOC_FL_INSERT_RANGE, (off_t)0, (off_t)128 << 20));
	return SERVE;
}

static enum after_attack fallocate_collapse(struct isolde_driver *drv)
{
	report(drv, "fallocate COLLAPSE_RANGE 1 MiB",
	       syscall(SYS_fallocate, ISOLDE_DRIVER_FD_DEVICE, FALLOC_FL_COLLAPSE_RANGE, (off_t)0, (off_t)1 << 20));
	return SERVE;
}

static enum after_attack zero_range_past_end(struct isolde_driver *drv)
{
	/* Within the filter's bounds, past the image's end: RLIMIT_FSIZE. */
	report(drv, "fallocate ZERO_RANGE across the end",
	       syscall(SYS_fallocate, ISOLDE_DRIVER_FD_DEVICE, FALLOC_FL_ZERO_RANGE,
		       (off_t)drv->params.device_size - 4096, (off_t)(1 << 20)));
	return SERVE;
}

static enum after_attack write_past_end(struct isolde_driver *drv)
{
	static const char block[4096];
	report(drv, "pwrite 1 MiB past the end",
	       syscall(SYS_pwrite64, ISOLDE_DRIVER_FD_DEVICE, block, sizeof block,
		       (off_t)drv->params.device_size + (1 << 20)));
	return SERVE;
}

/* ---- other processes ---- */

static enum after_attack kill_other(struct isolde_driver *drv)
{
	report(drv, "kill SIGKILL to the target", syscall(SYS_kill, (pid_t)target_pid, SIGKILL));
	return SERVE;
}

static enum after_attack tgkill_other(struct isolde_driver *drv)
{
	report(drv, "tgkill SIGKILL to the target",
	       syscall(SYS_tgkill, (pid_t)target_pid, (pid_t)target_pid, SIGKILL));
	return SERVE;
}

static enum after_attack kill_parent(struct isolde_driver *drv)
{
	report(drv, "kill SIGKILL to the front end", syscall(SYS_kill, getppid(), SIGKILL));
	return SERVE;
}

static enum after_attack sigqueue_other(struct isolde_driver *drv)
{
	siginfo_t si = { .si_signo = SIGKILL, .si_code = SI_QUEUE };
	report(drv, "rt_sigqueueinfo SIGKILL to the target",
	       syscall(SYS_rt_sigqueueinfo, (pid_t)target_pid, SIGKILL, &si));
	return SERVE;
}

static enum after_attack pidfd_other(struct isolde_driver *drv)
{
	report(drv, "pidfd_open the target", syscall(SYS_pidfd_open, (pid_t)target_pid, 0));
	return SERVE;
}

static enum after_attack ptrace_parent(struct isolde_driver *drv)
{
	report(drv, "ptrace attach to the front end", syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, getppid(), 0, 0));
	return SERVE; /* not reached: ptrace is on the kill list */
}

static enum after_attack process_vm(struct isolde_driver *drv)
{
	char buf[16];
	struct iovec local = { buf, sizeof buf }, remote = { (void *)0x400000, sizeof buf };
	report(drv, "process_vm_readv of the front end",
	       syscall(SYS_process_vm_readv, getppid(), &local, 1, &remote, 1, 0));
	return SERVE; /* not reached: on the kill list */
}

/* ---- new authority ---- */

static enum after_attack open_file(struct isolde_driver *drv)
{
	report(drv, "openat /etc/passwd", syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY));
	return SERVE;
}

static enum after_attack probe_proc(struct isolde_driver *drv)
{
	char buf[64];
	struct stat st;
	report(drv, "newfstatat /proc/1", syscall(SYS_newfstatat, AT_FDCWD, "/proc/1", &st, 0));
	report(drv, "readlink /proc/1/exe", syscall(SYS_readlink, "/proc/1/exe", buf, sizeof buf));
	return SERVE;
}

static enum after_attack socket_connect(struct isolde_driver *drv)
{
	report(drv, "socket AF_INET", syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
	report(drv, "socket AF_UNIX", syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0));
	return SERVE;
}

/* ---- a network client's policy (built dynamically: hostile-remote-driver) ---- */

static long tcp_socket(void)
{
	return syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

static enum after_attack listen_socket(struct isolde_driver *drv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	long fd = tcp_socket();

	report(drv, "socket AF_INET", fd);
	report(drv, "bind 127.0.0.1", syscall(SYS_bind, fd, &a, sizeof a));
	report(drv, "listen", syscall(SYS_listen, fd, 8));
	report(drv, "accept", syscall(SYS_accept4, fd, NULL, NULL, 0));
	if (fd >= 0)
		close((int)fd);
	return SERVE;
}

static enum after_attack connect_outside(struct isolde_driver *drv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)target_port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	long fd = tcp_socket();

	report(drv, "socket AF_INET", fd);
	report(drv, "connect to a port outside the policy", syscall(SYS_connect, fd, &a, sizeof a));
	if (fd >= 0)
		close((int)fd);
	return SERVE;
}

static enum after_attack other_sockets(struct isolde_driver *drv)
{
	int pair[2];
	report(drv, "socket AF_INET SOCK_DGRAM", syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0));
	report(drv, "socket AF_UNIX", syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0));
	report(drv, "socket AF_NETLINK", syscall(SYS_socket, AF_NETLINK, SOCK_RAW, 0));
	report(drv, "socket AF_INET SOCK_RAW", syscall(SYS_socket, AF_INET, SOCK_RAW, 6));
	report(drv, "socketpair AF_UNIX", syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, pair));
	return SERVE;
}

/* Code written into the shared memory, then mapped to run: through fd 3,
 * through a copy of it, and through fd 3 with the register's upper half
 * set, which the kernel ignores. */
static enum after_attack shm_code(struct isolde_driver *drv)
{
	long r = syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_EXEC, MAP_SHARED, ISOLDE_DRIVER_FD_SHM, 0);
	report(drv, "mmap the shared memory PROT_EXEC", r == -1 ? -1 : 0);
	report(drv, "dup the shared memory", syscall(SYS_dup, ISOLDE_DRIVER_FD_SHM));
	report(drv, "F_DUPFD_CLOEXEC the shared memory",
	       syscall(SYS_fcntl, ISOLDE_DRIVER_FD_SHM, F_DUPFD_CLOEXEC, 100));
	r = syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_EXEC, MAP_SHARED,
		    (long)(0x100000000L | ISOLDE_DRIVER_FD_SHM), 0);
	report(drv, "mmap fd 0x100000003 PROT_EXEC", r == -1 ? -1 : 0);
	r = syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	report(drv, "mmap anonymous PROT_EXEC", r == -1 ? -1 : 0);
	/* A library of its own, mapped writable and executable: a private copy
	 * it could write code into. */
	long lib = syscall(SYS_openat, AT_FDCWD, "/lib/x86_64-linux-gnu/libc.so.6", O_RDONLY | O_CLOEXEC);
	report(drv, "openat its libc", lib);
	r = syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE, lib, 0);
	report(drv, "mmap its libc PROT_WRITE|PROT_EXEC", r == -1 ? -1 : 0);
	r = syscall(SYS_mmap, NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, lib, 0);
	report(drv, "mmap its libc PROT_EXEC", r == -1 ? -1 : 0);
	if (r != -1)
		report(drv, "mprotect that code writable and executable",
		       syscall(SYS_mprotect, r, 4096, PROT_READ | PROT_WRITE | PROT_EXEC));
	if (lib >= 0)
		close((int)lib);
	return SERVE;
}

/* What the root shows a dynamically linked driver: its libraries, read-only,
 * and nothing else. */
static enum after_attack library_files(struct isolde_driver *drv)
{
	report(drv, "openat /etc/passwd", syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY));
	report(drv, "openat the library directory",
	       syscall(SYS_openat, AT_FDCWD, "/usr/lib/x86_64-linux-gnu", O_RDONLY | O_DIRECTORY));
	report(drv, "openat a library it does not load",
	       syscall(SYS_openat, AT_FDCWD, "/usr/lib/x86_64-linux-gnu/libcrypt.so.1", O_RDONLY));
	report(drv, "openat its libc read-write",
	       syscall(SYS_openat, AT_FDCWD, "/lib/x86_64-linux-gnu/libc.so.6", O_RDWR));
	report(drv, "openat its libc read-only", syscall(SYS_openat, AT_FDCWD, "/lib/x86_64-linux-gnu/libc.so.6",
						      O_RDONLY | O_CLOEXEC));
	report(drv, "openat /tmp/x O_CREAT", syscall(SYS_openat, AT_FDCWD, "/tmp/x", O_CREAT | O_WRONLY, 0600));
	return SERVE;
}

static enum after_attack fork_process(struct isolde_driver *drv)
{
	long r = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
	if (r == 0)
		_exit(0);
	report(drv, "clone a process", r);
	report(drv, "fork", syscall(SYS_fork));
	return SERVE;
}

static int thread_fn(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

static enum after_attack start_thread(struct isolde_driver *drv)
{
	size_t size = 1 << 16;
	char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stack == MAP_FAILED) {
		report(drv, "mmap a thread stack", -1);
		return SERVE;
	}
	report(drv, "clone3 a thread", syscall(SYS_clone3, NULL, 0));
	report(drv, "clone a thread",
	       clone(thread_fn, stack + size, CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
				CLONE_SYSVSEM, NULL));
	return SERVE;
}

static enum after_attack exec_shell(struct isolde_driver *drv)
{
	char *const argv[] = { "/bin/sh", NULL };
	report(drv, "execve /bin/sh", syscall(SYS_execve, "/bin/sh", argv, NULL));
	report(drv, "execveat its own binary", syscall(SYS_execveat, 0, "", argv, NULL, 0x1000));
	return SERVE;
}

static enum after_attack become_root(struct isolde_driver *drv)
{
	report(drv, "setuid 0", syscall(SYS_setuid, 0));
	report(drv, "setgid 0", syscall(SYS_setgid, 0));
	return SERVE;
}

static enum after_attack raise_limits(struct isolde_driver *drv)
{
	struct rlimit big = { RLIM_INFINITY, RLIM_INFINITY };
	report(drv, "prlimit64 RLIMIT_NOFILE to infinity", syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &big, NULL));
	report(drv, "prlimit64 RLIMIT_FSIZE of the front end",
	       syscall(SYS_prlimit64, getppid(), RLIMIT_FSIZE, NULL, &big));
	return SERVE;
}

static enum after_attack own_uring(struct isolde_driver *drv)
{
	char params[120] = { 0 };
	report(drv, "io_uring_setup a ring of its own", syscall(SYS_io_uring_setup, 8, params));
	return SERVE;
}

static enum after_attack exec_mapping(struct isolde_driver *drv)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	report(drv, "mmap PROT_EXEC", p == MAP_FAILED ? -1 : 0);
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p != MAP_FAILED)
		report(drv, "mprotect a data page PROT_EXEC", syscall(SYS_mprotect, p, 4096, PROT_READ | PROT_EXEC));
	return SERVE;
}

/* ---- exhausting what the policy bounds ---- */

static enum after_attack exhaust_memory(struct isolde_driver *drv)
{
	size_t total = 0;
	for (;;) {
		void *p = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			break;
		memset(p, 0x5a, 8 << 20);
		total += 8 << 20;
	}
	isolde_driver_log(drv, "attack %s: mapped %zu MiB before the limit", attack_name, total >> 20);
	return SERVE;
}

static enum after_attack exhaust_fds(struct isolde_driver *drv)
{
	unsigned n = 0;
	while (syscall(SYS_dup, 0) >= 0)
		n++;
	isolde_driver_log(drv, "attack %s: %u more fds before the limit (%s)", attack_name, n, strerror(errno));
	return SERVE;
}

static enum after_attack cpu_burn(struct isolde_driver *drv)
{
	(void)drv;
	return SERVE; /* the burning is in handle(): every request */
}

static enum after_attack log_flood(struct isolde_driver *drv)
{
	char line[200];
	memset(line, 'x', sizeof line - 1);
	line[sizeof line - 1] = '\n';
	/* 100 MB, as fast as the pipe takes it; a full pipe drops lines. */
	for (unsigned i = 0; i < 500000; i++)
		(void)!write(2, line, sizeof line);
	isolde_driver_log(drv, "attack %s: done", attack_name);
	return SERVE;
}

static enum after_attack spoof_log(struct isolde_driver *drv)
{
	static const char fake[] = "\nisolde: driver blk-file recovered\x1b[2J\x1b]0;owned\x07\n";
	(void)!write(2, fake, sizeof fake - 1);
	isolde_driver_log(drv, "attack %s: done", attack_name);
	return SERVE;
}

static enum after_attack denial_flood(struct isolde_driver *drv)
{
	unsigned refused = 0;
	for (unsigned i = 0; i < 100000; i++)
		refused += syscall(SYS_getuid) < 0;
	isolde_driver_log(drv, "attack %s: %u refused", attack_name, refused);
	return SERVE; /* not reached: the launcher kills it on the way */
}

/* ---- the shared memory and the ring ---- */

static enum after_attack scribble_shared(struct isolde_driver *drv)
{
	unsigned char *base = (unsigned char *)drv->header;
	size_t grant_bytes = (size_t)drv->params.grant_count * sizeof(struct isolde_grant);
	size_t span = (grant_bytes + 4095) & ~(size_t)4095;
	/* The grant table is mapped read-only against bugs, not against this. */
	report(drv, "mprotect the grant table writable",
	       syscall(SYS_mprotect, base + drv->params.grant_offset, span, PROT_READ | PROT_WRITE));
	memset(base + drv->params.grant_offset, 0xff, grant_bytes);
	memset(base + 64, 0xa5, 4096 - 64); /* the header past its magic */
	return CRASH;
}

static enum after_attack forge_responses(struct isolde_driver *drv)
{
	for (unsigned i = 0; i < 4; i++) {
		struct isolde_blk_response rsp = { .id = 0x1234000000000000ull | i, .op = 1, .status = 0, .length = 4096 };
		isolde_driver_respond(drv, &rsp);
	}
	isolde_waiter_signal(&drv->waiter, true);
	return STOP;
}

static enum after_attack flood_responses(struct isolde_driver *drv)
{
	__atomic_store_n(&drv->ring.sring->rsp_prod, drv->ring.rsp_prod_pvt + 0x7fffffffu, __ATOMIC_RELEASE);
	isolde_waiter_signal(&drv->waiter, true);
	return STOP;
}

static enum after_attack corrupt_indices(struct isolde_driver *drv)
{
	/* The front end's own indices are private; these it never trusts. */
	__atomic_store_n(&drv->ring.sring->req_prod, 0xdeadbeefu, __ATOMIC_RELEASE);
	__atomic_store_n(&drv->ring.sring->req_event, 0xdeadbeefu, __ATOMIC_RELEASE);
	__atomic_store_n(&drv->ring.sring->rsp_event, 0xdeadbeefu, __ATOMIC_RELEASE);
	return CRASH;
}

static enum after_attack saturate_eventfds(struct isolde_driver *drv)
{
	uint64_t most = 0xfffffffffffffffeull;
	report(drv, "saturate the call eventfd", syscall(SYS_write, ISOLDE_DRIVER_FD_CALL, &most, sizeof most));
	report(drv, "saturate the kick eventfd", syscall(SYS_write, ISOLDE_DRIVER_FD_KICK, &most, sizeof most));
	return SERVE;
}

static enum after_attack heartbeat_games(struct isolde_driver *drv)
{
	/* Alive by its own word, answering nothing. */
	for (;;) {
		__atomic_store_n(&drv->header->heartbeat, ++drv->heartbeat, __ATOMIC_RELAXED);
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	return STOP;
}

static enum after_attack trickle(struct isolde_driver *drv)
{
	(void)drv;
	return STOP; /* a few answers per generation, then silence */
}

/*
 * O_DIRECT reads into the data area, left in flight as the driver dies: if
 * the launcher reused that memory before they landed, they would overwrite
 * what replay put there (writes' data included). One MiB each, one bio
 * each, so that io_uring issues them at once instead of handing them to a
 * worker thread the driver may not have. It waits a second first, for the
 * test to slow its device down. With the policy's 'uring' it uses the
 * launcher's ring, else a ring of its own.
 */
static enum after_attack late_dma(struct isolde_driver *drv)
{
	struct io_uring ring;
	static struct iovec iov[64];
	uint64_t len = drv->params.data_size < drv->params.device_size ? drv->params.data_size
									 : drv->params.device_size;
	bool launchers = drv->uring_fd >= 0;
	unsigned n = 0;

	if (launchers ? isolde_driver_map_uring(drv, &ring) : io_uring_queue_init(64, &ring, 0)) {
		isolde_driver_log(drv, "attack %s: no io_uring", attack_name);
		return SERVE;
	}
	len = len > (64u << 20) ? (64u << 20) : len & ~(uint64_t)4095;
	for (uint64_t off = 0; off < len && n < 64; off += 1u << 20, n++)
		iov[n] = (struct iovec){ (unsigned char *)drv->grants.data + off,
					 len - off < (1u << 20) ? len - off : (1u << 20) };
	sleep(1);
	for (unsigned i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		if (!sqe)
			break;
		io_uring_prep_readv(sqe, launchers ? 0 : ISOLDE_DRIVER_FD_DEVICE, &iov[i], 1, (off_t)i << 20);
		if (launchers)
			sqe->flags |= IOSQE_FIXED_FILE;
	}
	report(drv, "submit reads into the data area", io_uring_submit(&ring));
	return CRASH;
}

static enum after_attack header_lies(struct isolde_driver *drv)
{
	/* What the next generation is told comes from the launcher's copy. */
	drv->header->device_size = UINT64_MAX / 2;
	drv->header->ring_slots = 1u << 30;
	drv->header->data_size = UINT64_MAX;
	return CRASH;
}

static const struct attack attacks[] = {
	{ "fcntl-append", fcntl_append },       { "fcntl-direct", fcntl_direct },
	{ "ofd-lock", ofd_lock },               { "setown-signal", setown_signal },
	{ "add-seals", add_seals },             { "shrink-shm", shrink_shm },
	{ "fallocate-keep-size", fallocate_keep_size }, { "fallocate-insert", fallocate_insert },
	{ "fallocate-collapse", fallocate_collapse },   { "zero-range-past-end", zero_range_past_end },
	{ "write-past-end", write_past_end },   { "kill-other", kill_other },
	{ "tgkill-other", tgkill_other },       { "kill-parent", kill_parent },
	{ "sigqueue-other", sigqueue_other },   { "pidfd-other", pidfd_other },
	{ "ptrace-parent", ptrace_parent },     { "process-vm", process_vm },
	{ "open-file", open_file },             { "probe-proc", probe_proc },
	{ "socket-connect", socket_connect },   { "fork", fork_process },
	{ "thread", start_thread },             { "exec", exec_shell },
	{ "become-root", become_root },         { "raise-limits", raise_limits },
	{ "own-uring", own_uring },             { "exec-mapping", exec_mapping },
	{ "exhaust-memory", exhaust_memory },   { "exhaust-fds", exhaust_fds },
	{ "cpu-burn", cpu_burn },               { "log-flood", log_flood },
	{ "spoof-log", spoof_log },             { "denial-flood", denial_flood },
	{ "scribble-shared", scribble_shared }, { "forge-responses", forge_responses },
	{ "flood-responses", flood_responses }, { "corrupt-indices", corrupt_indices },
	{ "saturate-eventfds", saturate_eventfds }, { "heartbeat-games", heartbeat_games },
	{ "trickle", trickle },                 { "header-lies", header_lies },
	{ "late-dma", late_dma },
	{ "listen-socket", listen_socket },     { "connect-outside", connect_outside },
	{ "other-sockets", other_sockets },     { "shm-code", shm_code },
	{ "library-files", library_files },
};

static int parse_arg(struct isolde_driver *drv, const char *key, const char *value)
{
	char *end;

	if (strcmp(key, "--attack") == 0 && value) {
		for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
			if (strcmp(value, attacks[i].name) == 0) {
				attack = &attacks[i];
				attack_name = attacks[i].name;
				return 0;
			}
		}
		isolde_driver_log(drv, "unknown attack '%s'", value);
		return -1;
	}
	if (strcmp(key, "--after") == 0 && value) {
		after = strtoul(value, &end, 10);
		return *value && !*end && after > 0 ? 0 : -1;
	}
	if (strcmp(key, "--target-pid") == 0 && value) {
		target_pid = strtol(value, &end, 10);
		return *value && !*end && target_pid > 0 ? 0 : -1;
	}
	if (strcmp(key, "--target-port") == 0 && value) {
		target_port = strtol(value, &end, 10);
		return *value && !*end && target_port > 0 && target_port < 65536 ? 0 : -1;
	}
	if (strcmp(key, "--every-generation") == 0 && !value) {
		every_generation = true;
		return 0;
	}
	return -1;
}

static void burn_cpu(void)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	do
		clock_gettime(CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 2000000L);
}

static void handle(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	static enum after_attack state = SERVE;
	struct isolde_blk_response rsp;
	bool my_turn = every_generation || drv->params.generation == 1;

	if (attack && my_turn && ++seen == after) {
		isolde_driver_log(drv, "attack %s at request %lu of generation %u", attack_name, seen,
				  drv->params.generation);
		state = attack->run(drv);
		if (state == CRASH) {
			isolde_driver_log(drv, "attack %s: crashing", attack_name);
			abort();
		}
	}
	if (state == STOP)
		for (;;)
			pause();
	if (attack && attack->run == cpu_burn && my_turn && seen >= after)
		burn_cpu();
	isolde_driver_serve(drv, req, &rsp);
	isolde_driver_respond(drv, &rsp);
}

static const struct isolde_driver_ops hostile_driver_ops = {
	.name = "hostile-driver",
	.parse_arg = parse_arg,
	.init = blk_file_init,
	.io = blk_file_io,
	.handle = handle,
};

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--list") == 0) {
		for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++)
			printf("%s\n", attacks[i].name);
		return 0;
	}
	return isolde_driver_main(argc, argv, &hostile_driver_ops);
}
