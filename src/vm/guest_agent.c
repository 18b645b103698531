/* SPDX-License-Identifier: MIT */
/*
 * isolde-vm-agent - /init (PID 1) of a VM driver domain's guest.
 *
 * The guest is a QEMU VM whose only job is to run one unmodified driver
 * binary with the same fds 0-6 a process domain gets (isolde/driver.h),
 * except that here they are the guest's view of what the host shares:
 *
 *   0, 1  /dev/null       2  /dev/console (the serial console: the domain's log)
 *   3     ivshmem BAR 2 (sysfs resource2: the host's memfd)
 *   4     virtio-serial port isolde.kick     5  port isolde.call
 *   6     /dev/vda (virtio-blk on the host's device fd), O_DIRECT
 *
 * It prepares all of that, then waits for one byte, 'g', on the port
 * isolde.control before it starts the driver: a VM booted ahead of need
 * (the host's warm standby) waits there until the running one has died and
 * the shared memory is reset for it.
 *
 * When the driver ends, the agent ends the VM and says how the driver ended
 * in QEMU's exit status (agent_exit.h): the host has nothing else it can
 * trust once the guest is gone.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>
#endif

#include "agent_exit.h"

#define AGENT "isolde-vm-agent"
#define DEVICE_WAIT_NS (30ull * 1000000000ull)
#define DEVICE_POLL_NS (10ull * 1000000ull)
#define ARGV_MAX_BYTES (64 * 1024)
#define ARGV_MAX_COUNT 256
/* Where the fds wait, close-on-exec, until the child puts them on 3..6. */
#define HIGH_FD_BASE 16

static bool console_ready;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[512];
	int n = snprintf(line, sizeof line, AGENT ": ");
	va_list ap;

	if (!console_ready)
		return;
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	/* One write, so the line is not interleaved with the driver's. */
	if (write(2, line, (size_t)n) < 0)
		return;
}

static void sleep_ns(unsigned long long ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull) };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static unsigned long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/*
 * Ends the VM with the value QEMU turns into its exit status. PID 1 must
 * never return or exit on the way: the kernel would panic, and the host
 * would read a panic (status 1) instead of the driver's end.
 */
static __attribute__((noreturn)) void end_vm(uint32_t value)
{
	/* The console is a UART: what the driver and the agent wrote last is
	 * still in the tty's buffer until drained, and QEMU exits on the outl. */
	if (console_ready)
		tcdrain(2);
	/* The driver's writes to /dev/vda may still be in the page cache. */
	sync();
#if defined(__x86_64__) || defined(__i386__)
	if (ioperm(ISOLDE_VM_EXIT_IOBASE, ISOLDE_VM_EXIT_IOSIZE, 1) == 0)
		__asm__ volatile("outl %0, %w1" : : "a"(value), "Nd"((uint16_t)ISOLDE_VM_EXIT_IOBASE));
#endif
	/* Still here: the machine has no isa-debug-exit. Power off (QEMU exits
	 * 0, which the host reads as "not the agent's report"). */
	sleep_ns(1000000000ull);
	reboot(RB_POWER_OFF);
	/* Last resort: the panic that PID 1's exit causes ends the VM too. */
	_exit(1);
}

static __attribute__((noreturn)) void fail(const char *step, int err)
{
	say("cannot %s: %s", step, strerror(err));
	end_vm(isolde_vm_exit_value_exited(ISOLDE_VM_EXIT_START_FAILED));
}

static void mount_fs(const char *type, const char *target)
{
	char step[64];

	if (mkdir(target, 0755) != 0 && errno != EEXIST) {
		snprintf(step, sizeof step, "create %s", target);
		fail(step, errno);
	}
	if (mount(type, target, type, MS_NOSUID | MS_NOEXEC, NULL) != 0 && errno != EBUSY) {
		snprintf(step, sizeof step, "mount %s on %s", type, target);
		fail(step, errno);
	}
}

/* The kernel may have left init without fds 0-2 (no /dev/console in the
 * root before devtmpfs is mounted): make them, whatever was there. */
static void open_console(void)
{
	int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	int con_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);

	if (null_fd < 0 || con_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 || dup2(con_fd, 2) < 0)
		end_vm(isolde_vm_exit_value_exited(ISOLDE_VM_EXIT_START_FAILED));
	if (null_fd > 2)
		close(null_fd);
	if (con_fd > 2)
		close(con_fd);
	console_ready = true;
}

/* Reads a whole small file, NUL-terminated; -1 (errno set) when it does not
 * fit in size - 1 bytes. */
static ssize_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t len = 0;

	if (fd < 0)
		return -1;
	for (;;) {
		ssize_t n = read(fd, buf + len, size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int err = errno;
			close(fd);
			errno = err;
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == size) {
			close(fd);
			errno = EFBIG;
			return -1;
		}
	}
	close(fd);
	buf[len] = '\0';
	return (ssize_t)len;
}

static void load_modules(void)
{
	static char order[16384];
	char step[128];

	if (read_file("/lib/modules/order", order, sizeof order) < 0)
		fail("read /lib/modules/order", errno);
	for (char *save = NULL, *name = strtok_r(order, "\n", &save); name; name = strtok_r(NULL, "\n", &save)) {
		char path[256];

		snprintf(step, sizeof step, "load module %s", name);
		if (strchr(name, '/') || snprintf(path, sizeof path, "/lib/modules/%s.ko", name) >= (int)sizeof path)
			fail(step, EINVAL);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fail(step, errno);
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			fail(step, errno);
		close(fd);
	}
}

static bool read_hex(const char *path, unsigned long *v)
{
	char buf[32], *end;

	if (read_file(path, buf, sizeof buf) <= 0)
		return false;
	errno = 0;
	*v = strtoul(buf, &end, 16);
	return errno == 0 && end != buf;
}

/* The ivshmem device's BAR 2 (its shared memory): the path of resource2. */
static bool find_ivshmem(char *out, size_t size)
{
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		char path[300];
		unsigned long vendor, device;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vendor", e->d_name);
		if (!read_hex(path, &vendor) || vendor != 0x1af4)
			continue;
		snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/device", e->d_name);
		if (!read_hex(path, &device) || device != 0x1110)
			continue;
		snprintf(out, size, "/sys/bus/pci/devices/%s/resource2", e->d_name);
		found = access(out, F_OK) == 0;
	}
	closedir(d);
	return found;
}

/* A virtio-serial port, by the name the host gave it: its /dev node. */
static bool find_port(const char *want, char *out, size_t size)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	while (!found && (e = readdir(d))) {
		char path[300], name[128];
		struct stat st;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		if (read_file(path, name, sizeof name) <= 0)
			continue;
		name[strcspn(name, "\n")] = '\0';
		if (strcmp(name, want) != 0)
			continue;
		snprintf(out, size, "/dev/%s", e->d_name);
		found = stat(out, &st) == 0 && S_ISCHR(st.st_mode);
	}
	closedir(d);
	return found;
}

static bool is_block(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISBLK(st.st_mode);
}

/*
 * The devices appear asynchronously: PCI probing, the virtio-serial control
 * messages that name the ports, and devtmpfs's nodes all come after the
 * modules are loaded.
 */
static void wait_devices(char *shm, char *kick, char *call, char *control, size_t size)
{
	unsigned long long deadline = now_ns() + DEVICE_WAIT_NS;
	bool have_shm = false, have_kick = false, have_call = false, have_control = false, have_disk = false;

	for (;;) {
		have_shm = have_shm || find_ivshmem(shm, size);
		have_kick = have_kick || find_port("isolde.kick", kick, size);
		have_call = have_call || find_port("isolde.call", call, size);
		have_control = have_control || find_port("isolde.control", control, size);
		have_disk = have_disk || is_block("/dev/vda");
		if (have_shm && have_kick && have_call && have_control && have_disk)
			return;
		if (now_ns() >= deadline)
			break;
		sleep_ns(DEVICE_POLL_NS);
	}
	if (!have_shm)
		fail("find the ivshmem device (1af4:1110) with resource2", ETIMEDOUT);
	if (!have_kick)
		fail("find the virtio-serial port isolde.kick", ETIMEDOUT);
	if (!have_call)
		fail("find the virtio-serial port isolde.call", ETIMEDOUT);
	if (!have_control)
		fail("find the virtio-serial port isolde.control", ETIMEDOUT);
	fail("find /dev/vda", ETIMEDOUT);
}

/*
 * Linux turns a PCI device's memory decoding on only when a driver enables
 * it, and ivshmem has no driver here: with decoding off the BAR reads as
 * all ones and drops writes. (virtio_pci happens to enable it while probing
 * and rejecting it, vendor 1af4 being virtio's; nothing promises that.)
 */
static void enable_pci(const char *resource_path)
{
	char path[320];
	int fd;

	snprintf(path, sizeof path, "%.*s/enable", (int)(strrchr(resource_path, '/') - resource_path),
		 resource_path);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1", 1) != 1)
		fail("enable the ivshmem device", errno);
	close(fd);
}

static bool read_only(void)
{
	static char cmdline[4096];
	bool ro = false;

	if (read_file("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		fail("read /proc/cmdline", errno);
	for (char *save = NULL, *w = strtok_r(cmdline, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(w, "isolde.ro=", 10) == 0)
			ro = strcmp(w + 10, "1") == 0;
	}
	return ro;
}

static int open_high(const char *path, int flags)
{
	char step[320];
	int fd = open(path, flags | O_CLOEXEC | O_NOCTTY);
	int high;

	snprintf(step, sizeof step, "open %s", path);
	if (fd < 0)
		fail(step, errno);
	high = fcntl(fd, F_DUPFD_CLOEXEC, HIGH_FD_BASE);
	if (high < 0)
		fail(step, errno);
	close(fd);
	return high;
}

/* /isolde/argv: argv[0], argv[1], ... each NUL-terminated, nothing else. */
static char **read_argv(void)
{
	static char buf[ARGV_MAX_BYTES + 1];
	static char *argv[ARGV_MAX_COUNT + 1];
	ssize_t len = read_file("/isolde/argv", buf, sizeof buf);
	int argc = 0;

	if (len < 0)
		fail("read /isolde/argv", errno == EFBIG ? E2BIG : errno);
	if (len == 0 || buf[len - 1] != '\0')
		fail("read /isolde/argv (empty or not NUL-terminated)", EINVAL);
	for (ssize_t i = 0; i < len; i += (ssize_t)strlen(buf + i) + 1) {
		if (argc == ARGV_MAX_COUNT)
			fail("read /isolde/argv (too many arguments)", E2BIG);
		argv[argc++] = buf + i;
	}
	argv[argc] = NULL;
	return argv;
}

static __attribute__((noreturn)) void run_driver(char **argv, const int fds[4])
{
	static char *const empty_env[] = { NULL };

	/* Its own session: nothing it does reaches PID 1 through a terminal. */
	setsid();
	for (int i = 0; i < 4; i++) {
		if (dup2(fds[i], 3 + i) < 0) {
			say("cannot pass fd %d: %s", 3 + i, strerror(errno));
			_exit(ISOLDE_VM_EXIT_START_FAILED);
		}
	}
	if (close_range(7, ~0U, 0) != 0) {
		say("cannot close fds from 7: %s", strerror(errno));
		_exit(ISOLDE_VM_EXIT_START_FAILED);
	}
	execve("/isolde/driver", argv, empty_env);
	say("cannot exec /isolde/driver: %s", strerror(errno));
	_exit(ISOLDE_VM_EXIT_START_FAILED);
}

static void signal_name(int sig, char *out, size_t size)
{
	const char *abbrev = sigabbrev_np(sig);

	if (abbrev)
		snprintf(out, size, "SIG%s", abbrev);
	else if (sig >= SIGRTMIN && sig <= SIGRTMAX)
		snprintf(out, size, "SIGRTMIN+%d", sig - SIGRTMIN);
	else
		snprintf(out, size, "unknown");
}

/*
 * PID 1 reaps every process that ends, the driver's orphans included, and
 * ends the VM with the driver. It sets no signal handlers: the kernel
 * already drops every signal to init that has no handler, so a stray
 * SIGTERM does nothing, and SIGCHLD's default leaves children to waitpid.
 */
static __attribute__((noreturn)) void reap(pid_t driver)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, 0);

		if (pid < 0) {
			if (errno == EINTR)
				continue;
			say("cannot wait for the driver: %s", strerror(errno));
			end_vm(isolde_vm_exit_value_exited(ISOLDE_VM_EXIT_START_FAILED));
		}
		if (pid != driver)
			continue;
		if (WIFEXITED(status)) {
			say("driver exited with status %d", WEXITSTATUS(status));
			end_vm(isolde_vm_exit_value_exited(WEXITSTATUS(status)));
		}
		if (WIFSIGNALED(status)) {
			char name[32];
			signal_name(WTERMSIG(status), name, sizeof name);
			say("driver was killed by signal %d (%s)", WTERMSIG(status), name);
			end_vm(isolde_vm_exit_value_signaled(WTERMSIG(status)));
		}
	}
}

/* Block until the host says go: one byte 'g'. Anything else, or the
 * host's end closing, ends the VM as a start failure. */
static void wait_for_go(const char *control)
{
	int fd = open(control, O_RDWR | O_CLOEXEC | O_NOCTTY);
	char c = 0;
	ssize_t n;

	if (fd < 0)
		fail("open the control port", errno);
	while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
		;
	if (n != 1 || c != 'g')
		fail("wait for the host's go", n < 0 ? errno : EPROTO);
	close(fd);
}

int main(void)
{
	char shm[320], kick[320], call[320], control[320];
	int fds[4];

	umask(022);
	mount_fs("devtmpfs", "/dev");
	open_console();
	mount_fs("proc", "/proc");
	mount_fs("sysfs", "/sys");
	load_modules();
	wait_devices(shm, kick, call, control, sizeof shm);
	enable_pci(shm);
	bool ro = read_only();

	fds[0] = open_high(shm, O_RDWR);
	fds[1] = open_high(kick, O_RDWR | O_NONBLOCK);
	fds[2] = open_high(call, O_RDWR | O_NONBLOCK);
	/* O_DIRECT: the guest's page cache dies with the guest, and with it
	 * every write the driver answered but the disk never saw. The host's
	 * QEMU has the write once the driver's call returns. (Direct I/O
	 * cannot pin the BAR mapping: the driver copies through its own
	 * memory when the kernel says EFAULT, blk_file.c.) */
	fds[3] = open_high("/dev/vda", (ro ? O_RDONLY : O_RDWR) | O_DIRECT);
	char **argv = read_argv();

	wait_for_go(control);

	say("starting driver");
	pid_t pid = fork();
	if (pid < 0)
		fail("fork the driver", errno);
	if (pid == 0)
		run_driver(argv, fds);
	reap(pid);
}
