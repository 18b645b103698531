// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "vm.h"
#include "vm_initrd.h"
#include "error.h"
#include "build_tree.h"
#include "../vm/agent_exit.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef ISOLDE_BUILD_VM_AGENT
#define ISOLDE_BUILD_VM_AGENT ""
#endif
#ifndef ISOLDE_BUILD_VM_GUEST_DIR
#define ISOLDE_BUILD_VM_GUEST_DIR ""
#endif
#ifndef ISOLDE_VM_GUEST_INSTALL_DIR
#define ISOLDE_VM_GUEST_INSTALL_DIR "/usr/local/share/isolde/vm-guest"
#endif
#ifndef ISOLDE_LIBEXEC_DIR
#define ISOLDE_LIBEXEC_DIR "/usr/local/libexec/isolde"
#endif

/* Bounds on what is read into memory for every generation's initramfs. */
#define MAX_BINARY (64u << 20)
#define MAX_BASE_INITRD (256u << 20)
/* What the monitor may send per service call. */
#define QMP_BYTES_PER_SERVICE 16384
#define CALL_BYTES_PER_SERVICE 4096

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

uint64_t isolde_vm_shm_size(uint64_t layout_size)
{
	uint64_t s = 1u << 20;

	while (s < layout_size)
		s <<= 1;
	return s;
}

/* Read a whole file (by fd, from its start) into memory. */
static int read_all(int fd, size_t max, unsigned char **out, size_t *len, const char *what, char *err,
		    size_t errlen)
{
	struct stat st;

	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t)st.st_size > max)
		return isolde_fail(err, errlen, "%s is not a regular file of 1 byte to %zu MiB", what, max >> 20);
	unsigned char *buf = malloc((size_t)st.st_size);
	if (!buf)
		return isolde_fail(err, errlen, "out of memory reading %s", what);
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
		if (n <= 0) {
			free(buf);
			return isolde_fail(err, errlen, "cannot read %s: %s", what, n < 0 ? strerror(errno) : "it shrank");
		}
		got += (size_t)n;
	}
	*out = buf;
	*len = got;
	return 0;
}

static int read_path(const char *path, size_t max, unsigned char **out, size_t *len, const char *what,
		     char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return isolde_fail(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
	int r = read_all(fd, max, out, len, what, err, errlen);
	close(fd);
	return r;
}

/* A driver for the guest has nothing to load it: no PT_INTERP. */
static bool is_static_elf(const unsigned char *b, size_t len)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)b;

	if (len < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_machine != EM_X86_64 || eh->e_phentsize != sizeof(Elf64_Phdr))
		return false;
	if (eh->e_phoff > len || (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > len - eh->e_phoff)
		return false;
	const Elf64_Phdr *ph = (const Elf64_Phdr *)(b + eh->e_phoff);
	for (unsigned i = 0; i < eh->e_phnum; i++)
		if (ph[i].p_type == PT_INTERP)
			return false;
	return true;
}

/*
 * Under TCG the guest's TSC is the host's, and a guest kernel on microvm
 * (no PIT interrupts, no HPET) that calibrates it against the emulated
 * timers while the host is busy can spin at boot for ever, silently: it is
 * told the frequency instead, measured here against the host's clock.
 */
static unsigned host_tsc_khz(void)
{
#if defined(__x86_64__)
	struct timespec a, b;
	unsigned lo, hi;

	clock_gettime(CLOCK_MONOTONIC_RAW, &a);
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	uint64_t t0 = ((uint64_t)hi << 32) | lo;
	struct timespec nap = { 0, 20 * 1000 * 1000 };
	nanosleep(&nap, NULL);
	clock_gettime(CLOCK_MONOTONIC_RAW, &b);
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	uint64_t t1 = ((uint64_t)hi << 32) | lo;
	uint64_t ns = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)(b.tv_nsec - a.tv_nsec);
	uint64_t khz = ns ? (t1 - t0) * 1000000u / ns : 0;
	return khz > 100000 && khz < 100000000 ? (unsigned)khz : 0;
#else
	return 0;
#endif
}

static int find_qemu(struct isolde_vm *vm, char *err, size_t errlen)
{
	const char *env = getenv("ISOLDE_QEMU");

	if (env && *env) {
		snprintf(vm->qemu_path, sizeof vm->qemu_path, "%s", env);
	} else {
		const char *path = getenv("PATH");
		char dirs[4096];
		snprintf(dirs, sizeof dirs, "%s", path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
		vm->qemu_path[0] = '\0';
		for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
			char cand[PATH_MAX];
			if (snprintf(cand, sizeof cand, "%s/qemu-system-x86_64", dir) < (int)sizeof cand &&
			    access(cand, X_OK) == 0) {
				snprintf(vm->qemu_path, sizeof vm->qemu_path, "%s", cand);
				break;
			}
		}
		if (!vm->qemu_path[0])
			return isolde_fail(err, errlen, "a VM domain needs qemu-system-x86_64, which is not on PATH "
				    "(Debian: qemu-system-x86; or set ISOLDE_QEMU)");
	}
	vm->qemu_fd = open(vm->qemu_path, O_PATH | O_CLOEXEC);
	if (vm->qemu_fd < 0 || access(vm->qemu_path, X_OK) != 0)
		return isolde_fail(err, errlen, "cannot execute QEMU %s: %s", vm->qemu_path, strerror(errno));
	return 0;
}

static int find_guest(struct isolde_vm *vm, char *err, size_t errlen)
{
	const char *dir = getenv("ISOLDE_VM_GUEST_DIR");
	char path[PATH_MAX + 32];

	if (!dir || !*dir)
		dir = isolde_running_from_build_tree() ? ISOLDE_BUILD_VM_GUEST_DIR : ISOLDE_VM_GUEST_INSTALL_DIR;
	snprintf(vm->guest_dir, sizeof vm->guest_dir, "%s", dir);
	snprintf(path, sizeof path, "%s/vmlinux", dir);
	vm->kernel_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (vm->kernel_fd < 0)
		return isolde_fail(err, errlen, "the VM domain's guest kernel %s cannot be read (%s): build it with "
			    "scripts/build-vm-guest.sh %s (make does), or set ISOLDE_VM_GUEST_DIR", path,
			    strerror(errno), dir);
	snprintf(path, sizeof path, "%s/initramfs.cpio.gz", dir);
	return read_path(path, MAX_BASE_INITRD, &vm->base_initrd, &vm->base_initrd_len, "the guest's initramfs",
			 err, errlen);
}

static int find_agent(struct isolde_vm *vm, char *err, size_t errlen)
{
	const char *dir = getenv("ISOLDE_DRIVER_DIR");
	char path[PATH_MAX + 32];

	if (dir && *dir)
		snprintf(path, sizeof path, "%s/isolde-vm-agent", dir);
	else if (isolde_running_from_build_tree())
		snprintf(path, sizeof path, "%s", ISOLDE_BUILD_VM_AGENT);
	else
		snprintf(path, sizeof path, "%s/isolde-vm-agent", ISOLDE_LIBEXEC_DIR);
	if (read_path(path, MAX_BINARY, &vm->agent, &vm->agent_len, "the VM domain's agent", err, errlen))
		return -1;
	if (!is_static_elf(vm->agent, vm->agent_len))
		return isolde_fail(err, errlen, "the VM domain's agent %s is not a static x86-64 executable", path);
	return 0;
}

int isolde_vm_find(struct isolde_vm *vm, int driver_fd, const char *driver_name, uint64_t shm_size,
		   uint64_t guest_memory, bool readonly, bool host_blockdev, char *err, size_t errlen)
{
	char self[64];

	memset(vm, 0, sizeof *vm);
	vm->qemu_fd = vm->kernel_fd = -1;
	vm->shm_size = shm_size;
	vm->guest_memory = guest_memory;
	vm->readonly = readonly;
	vm->host_blockdev = host_blockdev;
	vm->tsc_khz = host_tsc_khz();
	if (find_qemu(vm, err, errlen) || find_guest(vm, err, errlen) || find_agent(vm, err, errlen))
		return -1;
	/* The binary the domain opened (O_PATH), not whatever the path names now. */
	snprintf(self, sizeof self, "/proc/self/fd/%d", driver_fd);
	if (read_path(self, MAX_BINARY, &vm->driver, &vm->driver_len, "the driver binary", err, errlen))
		return -1;
	if (!is_static_elf(vm->driver, vm->driver_len))
		return isolde_fail(err, errlen, "driver %s is not a statically linked x86-64 executable: a VM domain "
			    "holds the driver binary and nothing else (no loader, no libraries)", driver_name);
	return 0;
}

void isolde_vm_free(struct isolde_vm *vm)
{
	close_fd(&vm->qemu_fd);
	close_fd(&vm->kernel_fd);
	free(vm->base_initrd);
	free(vm->agent);
	free(vm->driver);
	vm->base_initrd = vm->agent = vm->driver = NULL;
}

/* ---- a generation ---- */

static char **build_qemu_argv(const struct isolde_vm *vm)
{
	char memory[32], shm[160], append[128], blockdev[160], disk[96];
	const char *fixed_head[] = {
		"qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-M", "microvm,pcie=on,rtc=on", "-accel", "tcg",
		/* More than one possible vCPU: TCG then runs multi-threaded and its
		 * atomics are the host's, which the ring's indices need. */
		"-smp", "1,maxcpus=2",
	};

	snprintf(memory, sizeof memory, "%lluM", (unsigned long long)(vm->guest_memory >> 20));
	snprintf(shm, sizeof shm, "memory-backend-file,id=ring,mem-path=/dev/fd/%d,size=%llu,share=on",
		 ISOLDE_VM_FD_SHM, (unsigned long long)vm->shm_size);
	char tsc[40] = "";
	if (vm->tsc_khz)
		snprintf(tsc, sizeof tsc, " tsc_early_khz=%u", vm->tsc_khz);
	snprintf(append, sizeof append, "console=ttyS0 panic=-1 quiet%s isolde.ro=%d", tsc, vm->readonly ? 1 : 0);
	snprintf(blockdev, sizeof blockdev,
		 /* No image lock: the warm standby's QEMU holds the image
		  * beside the running one's, and takes over only once that
		  * one is dead. */
		 "driver=%s,node-name=disk,filename=/dev/fdset/1,cache.direct=off,discard=unmap,locking=off%s",
		 vm->host_blockdev ? "host_device" : "file", vm->readonly ? ",read-only=on" : "");
	snprintf(disk, sizeof disk, "virtio-blk-pci,drive=disk%s", vm->readonly ? "" : ",discard=on");
	char kernel[24], initrd[24], console[48], kick[48], call[48], qmp[48], control[48], addfd[32];
	snprintf(kernel, sizeof kernel, "/dev/fd/%d", ISOLDE_VM_FD_KERNEL);
	snprintf(initrd, sizeof initrd, "/dev/fd/%d", ISOLDE_VM_FD_INITRD);
	snprintf(console, sizeof console, "socket,id=con,fd=%d", ISOLDE_VM_FD_CONSOLE);
	snprintf(kick, sizeof kick, "socket,id=kick,fd=%d", ISOLDE_VM_FD_KICK);
	snprintf(call, sizeof call, "socket,id=call,fd=%d", ISOLDE_VM_FD_CALL);
	snprintf(qmp, sizeof qmp, "socket,id=qmp,fd=%d", ISOLDE_VM_FD_QMP);
	snprintf(control, sizeof control, "socket,id=ctl,fd=%d", ISOLDE_VM_FD_CONTROL);
	snprintf(addfd, sizeof addfd, "fd=%d,set=1", ISOLDE_VM_FD_DEVICE);
	const char *rest[] = {
		"-m", memory, "-kernel", kernel, "-initrd", initrd, "-append", append,
		"-chardev", console, "-serial", "chardev:con",
		"-object", shm, "-device", "ivshmem-plain,memdev=ring",
		"-device", "virtio-serial-pci",
		"-chardev", kick, "-device", "virtserialport,chardev=kick,name=isolde.kick",
		"-chardev", call, "-device", "virtserialport,chardev=call,name=isolde.call",
		"-chardev", control, "-device", "virtserialport,chardev=ctl,name=isolde.control",
		"-add-fd", addfd, "-blockdev", blockdev, "-device", disk,
		"-device", "pvpanic-pci", "-action", "panic=exit-failure",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-chardev", qmp, "-mon", "chardev=qmp,mode=control",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	};
	size_t nhead = sizeof fixed_head / sizeof fixed_head[0], nrest = sizeof rest / sizeof rest[0];
	char **argv = calloc(nhead + nrest + 1, sizeof *argv);
	if (!argv)
		return NULL;
	for (size_t i = 0; i < nhead + nrest; i++) {
		if (!(argv[i] = strdup(i < nhead ? fixed_head[i] : rest[i - nhead]))) {
			for (size_t j = 0; j < i; j++)
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

static int argv_blob(char *const *argv, char **out, size_t *len)
{
	size_t n = 0;

	for (size_t i = 0; argv[i]; i++)
		n += strlen(argv[i]) + 1;
	char *b = malloc(n ? n : 1), *p = b;
	if (!b)
		return -1;
	for (size_t i = 0; argv[i]; i++) {
		size_t l = strlen(argv[i]) + 1;
		memcpy(p, argv[i], l);
		p += l;
	}
	*out = b;
	*len = n;
	return 0;
}

int isolde_vm_prepare(struct isolde_vm *vm, struct isolde_vm_generation *g, char *const *driver_argv,
		      char *err, size_t errlen)
{
	int kick[2] = { -1, -1 }, call[2] = { -1, -1 }, qmp[2] = { -1, -1 }, control[2] = { -1, -1 };
	char *blob = NULL;
	size_t blob_len;

	memset(g, 0, sizeof *g);
	g->initrd_fd = g->kick_qemu = g->call_qemu = g->qmp_qemu = g->control_qemu = -1;
	g->kick_fd = g->control_fd = g->call_fd = g->qmp_fd = -1;
	/* Fresh sockets each generation: a QEMU that shut its end down harms
	 * only its own. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, kick) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, call) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, qmp) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, control) != 0) {
		isolde_fail(err, errlen, "cannot make the VM's doorbells: %s", strerror(errno));
		goto fail;
	}
	g->kick_fd = kick[0];
	g->kick_qemu = kick[1];
	g->control_fd = control[0];
	g->control_qemu = control[1];
	kick[0] = control[0] = control[1] = -1;
	g->call_fd = call[0];
	g->call_qemu = call[1];
	g->qmp_fd = qmp[0];
	g->qmp_qemu = qmp[1];
	kick[1] = call[0] = call[1] = qmp[0] = qmp[1] = -1;
	/* Events come only after the handshake; QEMU reads this once it runs. */
	static const char hello[] = "{\"execute\": \"qmp_capabilities\"}\n";
	if (send(g->qmp_fd, hello, sizeof hello - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof hello - 1)) {
		isolde_fail(err, errlen, "cannot greet the VM's monitor: %s", strerror(errno));
		goto fail;
	}
	if (argv_blob(driver_argv, &blob, &blob_len)) {
		isolde_fail(err, errlen, "out of memory");
		goto fail;
	}
	const struct isolde_initrd_file files[] = {
		{ "init", 0755, vm->agent, vm->agent_len },
		{ "isolde/driver", 0755, vm->driver, vm->driver_len },
		{ "isolde/argv", 0644, (const unsigned char *)blob, blob_len },
	};
	g->initrd_fd = isolde_vm_initrd(vm->base_initrd, vm->base_initrd_len, files,
					sizeof files / sizeof files[0], err, errlen);
	free(blob);
	if (g->initrd_fd < 0)
		goto fail;
	if (!(g->argv = build_qemu_argv(vm))) {
		isolde_fail(err, errlen, "out of memory");
		goto fail;
	}
	return 0;
fail:
	close_fd(&kick[0]), close_fd(&kick[1]), close_fd(&call[0]), close_fd(&call[1]);
	close_fd(&qmp[0]), close_fd(&qmp[1]), close_fd(&control[0]), close_fd(&control[1]);
	isolde_vm_end(g);
	return -1;
}

int isolde_vm_activate(struct isolde_vm_generation *g, int kick_fd, char *err, size_t errlen)
{
	if (dup3(g->kick_fd, kick_fd, O_CLOEXEC) < 0)
		return isolde_fail(err, errlen, "cannot install the VM's kick doorbell: %s", strerror(errno));
	close_fd(&g->kick_fd);
	/* Our end stays open: QEMU drops what a port holds when its peer
	 * hangs up before the guest has opened it. */
	if (send(g->control_fd, "g", 1, MSG_NOSIGNAL) != 1)
		return isolde_fail(err, errlen, "cannot start the driver in its VM (the control port: %s)",
			    strerror(errno));
	return 0;
}

unsigned isolde_vm_child_fds(const struct isolde_vm *vm, const struct isolde_vm_generation *g,
			     int shm_fd, int device_fd, int log_fd, int *src, int *dst)
{
	const int s[ISOLDE_VM_FDS] = { log_fd, shm_fd, g->kick_qemu, g->call_qemu, device_fd, log_fd,
				       g->qmp_qemu, vm->kernel_fd, g->initrd_fd, g->control_qemu };
	const int t[ISOLDE_VM_FDS] = { ISOLDE_VM_FD_LOG, ISOLDE_VM_FD_SHM, ISOLDE_VM_FD_KICK,
				       ISOLDE_VM_FD_CALL, ISOLDE_VM_FD_DEVICE, ISOLDE_VM_FD_CONSOLE,
				       ISOLDE_VM_FD_QMP, ISOLDE_VM_FD_KERNEL, ISOLDE_VM_FD_INITRD,
				       ISOLDE_VM_FD_CONTROL };

	memcpy(src, s, sizeof s);
	memcpy(dst, t, sizeof t);
	return ISOLDE_VM_FDS;
}

void isolde_vm_execed(struct isolde_vm_generation *g)
{
	close_fd(&g->kick_qemu);
	close_fd(&g->call_qemu);
	close_fd(&g->qmp_qemu);
	close_fd(&g->control_qemu);
	close_fd(&g->initrd_fd);
	free_argv(g->argv);
	g->argv = NULL;
}

/* The monitor speaks JSON lines; the one thing read from it is whether an
 * event line names GUEST_PANICKED. QEMU may be the guest's by now, so
 * lines are bounded and nothing else is believed. */
static void qmp_bytes(struct isolde_vm_generation *g, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (b[i] != '\n') {
			if (g->qmp_len + 1 < sizeof g->qmp_line)
				g->qmp_line[g->qmp_len++] = b[i];
			else
				g->qmp_overflow = true;
			continue;
		}
		g->qmp_line[g->qmp_len] = '\0';
		if (!g->qmp_overflow && strstr(g->qmp_line, "\"event\"") &&
		    strstr(g->qmp_line, "\"GUEST_PANICKED\""))
			g->guest_panicked = true;
		g->qmp_len = 0;
		g->qmp_overflow = false;
	}
}

static void read_qmp(struct isolde_vm_generation *g, size_t budget)
{
	char buf[4096];

	while (g->qmp_fd >= 0 && budget > 0) {
		ssize_t n = read(g->qmp_fd, buf, sizeof buf < budget ? sizeof buf : budget);
		if (n <= 0)
			break;
		qmp_bytes(g, buf, (size_t)n);
		budget -= (size_t)n;
	}
}

void isolde_vm_service(struct isolde_vm_generation *g)
{
	char buf[512];
	size_t budget = CALL_BYTES_PER_SERVICE;

	while (g->call_fd >= 0 && budget > 0) {
		ssize_t n = read(g->call_fd, buf, sizeof buf);
		if (n <= 0)
			break;
		g->calls += (uint64_t)n / 8;
		budget -= (size_t)n < budget ? (size_t)n : budget;
	}
	read_qmp(g, QMP_BYTES_PER_SERVICE);
}

void isolde_vm_explain_exit(struct isolde_vm_generation *g, pid_t qemu_pid, bool *signaled, int *code,
			    bool *kernel, char *text, size_t textlen)
{
	/* QEMU wrote its events before it exited: they are in the socket. */
	read_qmp(g, 1u << 20);
	*kernel = false;
	if (*signaled) {
		snprintf(text, textlen, "(QEMU pid %d) was killed by signal %d (SIG%s)", (int)qemu_pid, *code,
			 sigabbrev_np(*code) ? sigabbrev_np(*code) : "?");
		return;
	}
	if (g->guest_panicked) {
		*kernel = true;
		snprintf(text, textlen, "(QEMU pid %d): the guest kernel panicked (QEMU exited with status %d)",
			 (int)qemu_pid, *code);
		return;
	}
	int value;
	switch (isolde_vm_exit_decode(*code, &value)) {
	case ISOLDE_VM_END_SIGNALED:
		snprintf(text, textlen, "(QEMU pid %d): the driver was killed by signal %d (SIG%s) in the guest",
			 (int)qemu_pid, value, sigabbrev_np(value) ? sigabbrev_np(value) : "?");
		*signaled = true;
		*code = value;
		return;
	case ISOLDE_VM_END_EXITED:
		snprintf(text, textlen, "(QEMU pid %d): the driver exited with status %d%s in the guest",
			 (int)qemu_pid, value, value == ISOLDE_VM_EXIT_CODE_MAX ? " or more" : "");
		*code = value;
		return;
	case ISOLDE_VM_END_POWEROFF:
		snprintf(text, textlen, "(QEMU pid %d) exited with status 0: the guest powered off",
			 (int)qemu_pid);
		return;
	case ISOLDE_VM_END_FAILURE:
	case ISOLDE_VM_END_UNKNOWN:
		break;
	}
	snprintf(text, textlen, "(QEMU pid %d) exited with status %d", (int)qemu_pid, *code);
}

void isolde_vm_end(struct isolde_vm_generation *g)
{
	isolde_vm_execed(g);
	close_fd(&g->kick_fd);
	close_fd(&g->control_fd);
	close_fd(&g->call_fd);
	close_fd(&g->qmp_fd);
}
