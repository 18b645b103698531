// SPDX-License-Identifier: MIT
/*
 * isolde bench: the same random I/O done directly in this process (the
 * baseline) and through an isolated driver domain in each notify mode, side
 * by side in one run: IOPS, latency percentiles, CPU per I/O in the front end
 * and in the driver, and notifications per I/O.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "histogram.h"
#include "isolde/blk.h"
#include "isolde/units.h"
#include "pattern.h"

const char *const bench_mode_names[MODE_COUNT] = { "direct", "event", "spin", "hybrid" };
const char *const bench_rw_names[RW_COUNT] = { "randread", "randwrite", "randrw" };
const char *const bench_copy_names[COPY_COUNT] = { "zero", "copy" };

#define MAX_LIST 16

struct bench_opts {
	const char *image;
	const char *driver;
	const char *domain;   /* process or vm; NULL: the policy's */
	const char *policy;   /* NULL: the driver's shipped one */
	int modes[MODE_COUNT];
	unsigned nmodes;
	unsigned qd[MAX_LIST];
	unsigned nqd;
	uint64_t bs[MAX_LIST];
	unsigned nbs;
	int rw[RW_COUNT];
	unsigned nrw;
	int copy[COPY_COUNT];
	unsigned ncopy;
	double seconds;
	double idle_seconds;
	const char *json;
	const char *report;
	uint64_t seed;
};

/* ---- CPU time ---- */

/* Nanoseconds a task has run, from the scheduler's own accounting. */
static uint64_t task_cpu_ns(const char *schedstat_path)
{
	unsigned long long ns = 0;
	FILE *f = fopen(schedstat_path, "re");

	if (!f)
		return 0;
	if (fscanf(f, "%llu", &ns) != 1)
		ns = 0;
	fclose(f);
	return ns;
}

static uint64_t self_cpu_ns(void)
{
	return task_cpu_ns("/proc/thread-self/schedstat");
}

static uint64_t driver_cpu_ns(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof path, "/proc/%d/schedstat", (int)pid);
	return task_cpu_ns(path);
}

/* ---- the workload ---- */

struct job {
	const struct bench_opts *o;
	uint64_t bs;
	uint64_t nblocks;
	enum bench_rw rw;
	uint64_t rng;
	struct histogram hist;
	uint64_t ios;
	uint64_t errors;
};

static uint8_t next_op(struct job *j)
{
	switch (j->rw) {
	case RW_RANDREAD: return ISOLDE_BLK_OP_READ;
	case RW_RANDWRITE: return ISOLDE_BLK_OP_WRITE;
	default: return (pattern_rand(&j->rng) & 1) ? ISOLDE_BLK_OP_WRITE : ISOLDE_BLK_OP_READ;
	}
}

static uint64_t next_offset(struct job *j)
{
	return (pattern_rand(&j->rng) % j->nblocks) * j->bs;
}

static void fill_random(unsigned char *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i + 8 <= n; i += 8) {
		uint64_t v = pattern_rand(&seed);
		memcpy(p + i, &v, 8);
	}
}

/* The baseline: the same I/O, synchronously, in this process. */
static int run_direct(struct job *j, struct bench_result *r)
{
	int fd = open(j->o->image, O_RDWR | O_CLOEXEC);
	unsigned char *buf = aligned_alloc(4096, (j->bs + 4095) / 4096 * 4096);

	if (fd < 0 || !buf) {
		fprintf(stderr, "isolde bench: cannot open %s: %s\n", j->o->image, strerror(errno));
		free(buf);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	fill_random(buf, j->bs, j->o->seed);
	uint64_t cpu0 = self_cpu_ns(), t0 = isolde_now_ns();
	uint64_t end = t0 + (uint64_t)(j->o->seconds * 1e9), now = t0;
	while (now < end) {
		uint8_t op = next_op(j);
		uint64_t off = next_offset(j);
		ssize_t n = op == ISOLDE_BLK_OP_READ ? pread(fd, buf, j->bs, (off_t)off)
						     : pwrite(fd, buf, j->bs, (off_t)off);
		uint64_t done = isolde_now_ns();
		if (n != (ssize_t)j->bs)
			j->errors++;
		hist_add(&j->hist, done - now);
		j->ios++;
		now = done;
	}
	r->seconds = (double)(now - t0) / 1e9;
	r->cpu_us_front = (double)(self_cpu_ns() - cpu0) / 1e3 / (double)(j->ios ? j->ios : 1);
	free(buf);
	close(fd);
	return 0;
}

struct slot {
	struct isolde_blk_io io;
	uint64_t submitted;
};

static int run_isolated(struct job *j, struct bench_result *r, enum isolde_notify_mode notify, unsigned qd,
			enum bench_copy copy)
{
	struct isolde_blk_config cfg;
	char err[512];
	struct slot *slots = calloc(qd, sizeof *slots);

	isolde_blk_config_default(&cfg);
	cfg.image = j->o->image;
	cfg.driver = j->o->driver;
	cfg.domain = j->o->domain;
	cfg.policy = j->o->policy;
	cfg.notify = notify;
	cfg.queue_depth = qd;
	if (j->bs > cfg.max_io)
		cfg.max_io = (j->bs + 4095) / 4096 * 4096;
	cfg.data_size = (j->bs + 4095) / 4096 * 4096 * qd;
	struct isolde_blk *dev = slots ? isolde_blk_open(&cfg, err, sizeof err) : NULL;
	if (!dev) {
		fprintf(stderr, "isolde bench: %s\n", slots ? err : "out of memory");
		free(slots);
		return -1;
	}
	for (unsigned i = 0; i < qd; i++) {
		slots[i].io.buf = copy == COPY_ZERO ? isolde_blk_buf_alloc(dev, j->bs)
						    : aligned_alloc(4096, (j->bs + 4095) / 4096 * 4096);
		if (!slots[i].io.buf) {
			fprintf(stderr, "isolde bench: out of buffer memory\n");
			isolde_blk_close(dev);
			return -1;
		}
		fill_random(slots[i].io.buf, j->bs, j->o->seed + i);
		slots[i].io.user_data = &slots[i];
		slots[i].io.len = (uint32_t)j->bs;
	}

	struct isolde_blk_stats s0, s1;
	pid_t driver = isolde_blk_driver_pid(dev);
	isolde_blk_get_stats(dev, &s0);
	uint64_t dcpu0 = driver_cpu_ns(driver), cpu0 = self_cpu_ns(), t0 = isolde_now_ns();
	uint64_t end = t0 + (uint64_t)(j->o->seconds * 1e9), now = t0;
	unsigned inflight = 0;

	for (unsigned i = 0; i < qd; i++) {
		struct slot *s = &slots[i];
		s->io.op = next_op(j);
		s->io.offset = next_offset(j);
		s->submitted = now;
		if (isolde_blk_submit(dev, &s->io) == 0)
			inflight++;
	}
	while (inflight > 0) {
		struct isolde_blk_io *done[64];
		int n = isolde_blk_reap(dev, done, 64, 1, -1);
		if (n < 0)
			break;
		now = isolde_now_ns();
		for (int k = 0; k < n; k++) {
			struct slot *s = done[k]->user_data;
			if (s->io.result)
				j->errors++;
			hist_add(&j->hist, now - s->submitted);
			j->ios++;
			inflight--;
			if (now < end) {
				s->io.op = next_op(j);
				s->io.offset = next_offset(j);
				s->submitted = now;
				if (isolde_blk_submit(dev, &s->io) == 0)
					inflight++;
			}
		}
	}
	/* Read the driver's CPU before closing: close reaps it. */
	uint64_t dcpu1 = driver_cpu_ns(isolde_blk_driver_pid(dev));
	r->seconds = (double)(now - t0) / 1e9;
	r->cpu_us_front = (double)(self_cpu_ns() - cpu0) / 1e3 / (double)(j->ios ? j->ios : 1);
	r->cpu_us_driver = driver == isolde_blk_driver_pid(dev)
				   ? (double)(dcpu1 - dcpu0) / 1e3 / (double)(j->ios ? j->ios : 1) : 0;
	isolde_blk_get_stats(dev, &s1);
	r->kicks_per_io = (double)(s1.kicks - s0.kicks) / (double)(j->ios ? j->ios : 1);
	r->calls_per_io = (double)(s1.calls - s0.calls) / (double)(j->ios ? j->ios : 1);
	r->driver_restarts = (unsigned)isolde_blk_supervisor_stats(dev)->restarts;
	if (isolde_blk_failed(dev))
		fprintf(stderr, "isolde bench: %s\n", isolde_blk_error(dev));
	for (unsigned i = 0; i < qd; i++) {
		if (copy == COPY_ZERO)
			isolde_blk_buf_free(dev, slots[i].io.buf);
		else
			free(slots[i].io.buf);
	}
	isolde_blk_close(dev);
	free(slots);
	return 0;
}

/* CPU used by an idle device over a few seconds: what waiting costs. */
static int measure_idle(const struct bench_opts *o, enum isolde_notify_mode notify, struct bench_idle *out)
{
	struct isolde_blk_config cfg;
	char err[512], buf[4096];

	isolde_blk_config_default(&cfg);
	cfg.image = o->image;
	cfg.driver = o->driver;
	cfg.domain = o->domain;
	cfg.policy = o->policy;
	cfg.notify = notify;
	cfg.queue_depth = 1;
	struct isolde_blk *dev = isolde_blk_open(&cfg, err, sizeof err);
	if (!dev) {
		fprintf(stderr, "isolde bench: %s\n", err);
		return -1;
	}
	/* Some traffic first, so an adaptive spinner is at its busiest. */
	for (int i = 0; i < 2000; i++)
		isolde_blk_read(dev, buf, sizeof buf, (uint64_t)(i % 64) * 4096);
	pid_t driver = isolde_blk_driver_pid(dev);
	uint64_t d0 = driver_cpu_ns(driver), f0 = self_cpu_ns(), t0 = isolde_now_ns();
	struct timespec ts = { (time_t)o->idle_seconds,
			       (long)((o->idle_seconds - (double)(time_t)o->idle_seconds) * 1e9) };
	nanosleep(&ts, NULL);
	uint64_t wall = isolde_now_ns() - t0;
	out->seconds = (double)wall / 1e9;
	out->driver_cpu_pct = 100.0 * (double)(driver_cpu_ns(driver) - d0) / (double)wall;
	out->front_cpu_pct = 100.0 * (double)(self_cpu_ns() - f0) / (double)wall;
	isolde_blk_close(dev);
	return 0;
}

static void summarize(struct job *j, struct bench_result *r)
{
	r->ios = j->ios;
	r->errors = j->errors;
	r->iops = r->seconds > 0 ? (double)j->ios / r->seconds : 0;
	r->mbps = r->iops * (double)j->bs / 1e6;
	r->lat_us[0] = (double)hist_quantile(&j->hist, 0.50) / 1e3;
	r->lat_us[1] = (double)hist_quantile(&j->hist, 0.99) / 1e3;
	r->lat_us[2] = (double)hist_quantile(&j->hist, 0.999) / 1e3;
	r->lat_us[3] = (double)j->hist.max / 1e3;
}

/* ---- image preparation and machine description ---- */

/* Random reads of holes are not reads of data: fill the image first. */
static int prepare_image(const char *path, uint64_t *size, char *fs, size_t fslen)
{
	struct stat st;
	struct statfs sfs;
	int fd = open(path, O_RDWR | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st) != 0) {
		fprintf(stderr, "isolde bench: cannot open image %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*size = (uint64_t)st.st_size;
	snprintf(fs, fslen, "unknown");
	if (fstatfs(fd, &sfs) == 0) {
		if (sfs.f_type == 0x01021994)
			snprintf(fs, fslen, "tmpfs");
		else if (sfs.f_type == 0xEF53)
			snprintf(fs, fslen, "ext4");
		else if (sfs.f_type == 0x58465342)
			snprintf(fs, fslen, "xfs");
		else if (sfs.f_type == 0x9123683E)
			snprintf(fs, fslen, "btrfs");
		else
			snprintf(fs, fslen, "0x%lx", (unsigned long)sfs.f_type);
	}
	if (S_ISREG(st.st_mode) && (uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size) {
		static unsigned char chunk[1 << 20];
		fprintf(stderr, "isolde bench: filling %s (%llu MiB) so reads read data, not holes\n", path,
			(unsigned long long)(*size >> 20));
		fill_random(chunk, sizeof chunk, 42);
		for (uint64_t off = 0; off < *size; off += sizeof chunk) {
			size_t n = *size - off < sizeof chunk ? (size_t)(*size - off) : sizeof chunk;
			if (pwrite(fd, chunk, n, (off_t)off) != (ssize_t)n) {
				fprintf(stderr, "isolde bench: cannot fill %s: %s\n", path, strerror(errno));
				close(fd);
				return -1;
			}
		}
		fdatasync(fd);
	}
	close(fd);
	return 0;
}

static void describe_machine(struct bench_machine *m, int argc, char **argv)
{
	struct utsname u;
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "re");

	snprintf(m->cpu, sizeof m->cpu, "unknown");
	while (f && fgets(line, sizeof line, f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *c = strchr(line, ':');
			if (c) {
				c += 2;
				c[strcspn(c, "\n")] = '\0';
				snprintf(m->cpu, sizeof m->cpu, "%s", c);
			}
			break;
		}
	}
	if (f)
		fclose(f);
	m->cpus = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	m->mem_bytes = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
	if (uname(&u) == 0)
		snprintf(m->kernel, sizeof m->kernel, "%s %s %s", u.sysname, u.release, u.machine);
	time_t now = time(NULL);
	strftime(m->date, sizeof m->date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
	size_t n = 0;
	m->command[0] = '\0';
	for (int i = 0; i < argc && n < sizeof m->command - 2; i++)
		n += (size_t)snprintf(m->command + n, sizeof m->command - n, "%s%s", i ? " " : "isolde ", argv[i]);
}

/* ---- JSON ---- */

static int write_json(const struct bench_run *run, const char *path)
{
	FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "we");
	const struct bench_machine *m = &run->machine;

	if (!f) {
		fprintf(stderr, "isolde bench: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	fprintf(f, "{\"machine\": {\"cpu\": ");
	json_write_string(f, m->cpu);
	fprintf(f, ", \"cpus\": %u, \"kernel\": ", m->cpus);
	json_write_string(f, m->kernel);
	fprintf(f, ", \"memory_bytes\": %llu, \"image_fs\": ", (unsigned long long)m->mem_bytes);
	json_write_string(f, m->image_fs);
	fprintf(f, ", \"image_bytes\": %llu, \"date\": ", (unsigned long long)m->image_bytes);
	json_write_string(f, m->date);
	fprintf(f, ", \"command\": ");
	json_write_string(f, m->command);
	fprintf(f, ", \"seconds_per_run\": %.3f},\n \"results\": [", run->seconds_per_run);
	for (size_t i = 0; i < run->nresults; i++) {
		const struct bench_result *r = &run->results[i];
		fprintf(f, "%s\n  {\"mode\": \"%s\", \"qd\": %u, \"bs\": %llu, \"rw\": \"%s\", \"copy\": \"%s\", "
			"\"iops\": %.1f, \"mbps\": %.2f, \"lat_us\": {\"p50\": %.2f, \"p99\": %.2f, "
			"\"p999\": %.2f, \"max\": %.2f}, \"cpu_us_per_io\": {\"front\": %.3f, \"driver\": %.3f}, "
			"\"kicks_per_io\": %.4f, \"calls_per_io\": %.4f, \"ios\": %llu, \"errors\": %llu, "
			"\"seconds\": %.3f, \"driver_restarts\": %u}",
			i ? "," : "", bench_mode_names[r->mode], r->qd, (unsigned long long)r->bs,
			bench_rw_names[r->rw], r->copy < 0 ? "none" : bench_copy_names[r->copy], r->iops, r->mbps,
			r->lat_us[0], r->lat_us[1], r->lat_us[2], r->lat_us[3], r->cpu_us_front, r->cpu_us_driver,
			r->kicks_per_io, r->calls_per_io, (unsigned long long)r->ios,
			(unsigned long long)r->errors, r->seconds, r->driver_restarts);
	}
	fprintf(f, "\n ],\n \"idle\": [");
	for (size_t i = 0; i < run->nidle; i++) {
		const struct bench_idle *d = &run->idle[i];
		fprintf(f, "%s\n  {\"mode\": \"%s\", \"seconds\": %.2f, \"driver_cpu_pct\": %.3f, "
			"\"front_cpu_pct\": %.3f}", i ? "," : "", bench_mode_names[d->mode], d->seconds,
			d->driver_cpu_pct, d->front_cpu_pct);
	}
	fprintf(f, "\n ]}\n");
	if (f != stdout && fclose(f) != 0) {
		fprintf(stderr, "isolde bench: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- the command ---- */

static int run_bench_command(int argc, char **argv);

const struct cli_command bench_command = {
	.name = "bench",
	.summary = "measure isolation's cost: direct I/O vs each notify mode, side by side",
	.usage =
	"usage: isolde bench --image PATH [OPTIONS]\n"
	"\n"
	"Runs the same random I/O directly in this process (direct: the baseline and\n"
	"the limit) and through an isolated driver domain in each notify mode, one\n"
	"combination after another in one run, and reports IOPS, MB/s, latency\n"
	"p50/p99/p99.9/max, CPU per I/O in the front end and in the driver, and\n"
	"notifications per I/O. direct is synchronous: it ignores --qd. Also measures\n"
	"the CPU each mode burns while idle. The image is filled first if it is\n"
	"sparse; randwrite and randrw OVERWRITE it.\n"
	"\n"
	"  --image PATH       image file (required; a tmpfs file measures the ring, not a disk)\n"
	"  --modes LIST       of direct,event,spin,hybrid (default all)\n"
	"  --qd LIST          queue depths (default 1,8,32)\n"
	"  --bs LIST          block sizes (default 4k,64k)\n"
	"  --rw LIST          of randread,randwrite,randrw (default randread,randwrite)\n"
	"  --copy LIST        of zero,copy (default zero,copy)\n"
	"  --seconds N        per combination (default 3)\n"
	"  --idle-seconds N   idle CPU measurement per mode, 0 to skip (default 2)\n"
	"  --driver NAME      driver (default blk-file)\n"
	"  --domain KIND      process or vm (the driver in a QEMU VM; CPU 'driver' is\n"
	"                     then all of QEMU's); default: what the policy says\n"
	"  --policy FILE      the driver's policy (default: the one shipped for it)\n"
	"  --seed S           random seed (default 1)\n"
	"  --json FILE        write results as JSON ('-' for stdout)\n"
	"  --report DIR       write DIR/bench.md and DIR/plots/*.svg (gnuplot)\n"
	"  -h, --help         this text\n",
	.run = run_bench_command,
};

/* Parse "a,b,c" with a per-item parser; false after a usage error. */
static bool parse_names(const char *opt, const char *value, const char *const *names, unsigned nnames,
			int *out, unsigned *n)
{
	char copy[256];
	char *save = NULL;

	snprintf(copy, sizeof copy, "%s", value);
	*n = 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		unsigned k;
		for (k = 0; k < nnames && strcmp(t, names[k]) != 0; k++)
			;
		if (k == nnames) {
			cli_usage_error(&bench_command, "%s: unknown value '%s'", opt, t);
			return false;
		}
		for (unsigned i = 0; i < *n; i++) {
			if (out[i] == (int)k) {
				cli_usage_error(&bench_command, "%s: '%s' given twice", opt, t);
				return false;
			}
		}
		out[(*n)++] = (int)k;
	}
	if (*n == 0) {
		cli_usage_error(&bench_command, "%s: empty list", opt);
		return false;
	}
	return true;
}

static bool parse_numbers(const char *opt, const char *value, bool sizes, uint64_t min, uint64_t max,
			  uint64_t *out, unsigned *n)
{
	char copy[256];
	char *save = NULL;

	snprintf(copy, sizeof copy, "%s", value);
	*n = 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		uint64_t v;
		if (*n == MAX_LIST) {
			cli_usage_error(&bench_command, "%s: at most %d values", opt, MAX_LIST);
			return false;
		}
		if ((sizes ? isolde_parse_size(t, &v) : isolde_parse_u64(t, &v)) || v < min || v > max) {
			cli_usage_error(&bench_command, "%s: '%s' is not %s in %llu..%llu", opt, t,
					sizes ? "a size" : "a number", (unsigned long long)min,
					(unsigned long long)max);
			return false;
		}
		out[(*n)++] = v;
	}
	if (*n == 0) {
		cli_usage_error(&bench_command, "%s: empty list", opt);
		return false;
	}
	return true;
}

static double parse_seconds(const char *opt, const char *value, double min, double max, bool *ok)
{
	char *end;
	double v = strtod(value, &end);

	*ok = *value && !*end && v >= min && v <= max;
	if (!*ok)
		cli_usage_error(&bench_command, "%s: '%s' is not a number of seconds in %g..%g", opt, value,
				min, max);
	return v;
}

enum { OPT_MODES = 256, OPT_COPY, OPT_IDLE, OPT_JSON, OPT_REPORT, OPT_RW, OPT_DOMAIN, OPT_POLICY };

static int run_bench_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "modes", required_argument, NULL, OPT_MODES },
		{ "qd", required_argument, NULL, 'q' },
		{ "bs", required_argument, NULL, 'b' },
		{ "rw", required_argument, NULL, OPT_RW },
		{ "copy", required_argument, NULL, OPT_COPY },
		{ "seconds", required_argument, NULL, 't' },
		{ "idle-seconds", required_argument, NULL, OPT_IDLE },
		{ "driver", required_argument, NULL, 'd' },
		{ "domain", required_argument, NULL, OPT_DOMAIN },
		{ "policy", required_argument, NULL, OPT_POLICY },
		{ "seed", required_argument, NULL, 's' },
		{ "json", required_argument, NULL, OPT_JSON },
		{ "report", required_argument, NULL, OPT_REPORT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &bench_command;
	struct bench_opts o = {
		.driver = "blk-file", .modes = { 0, 1, 2, 3 }, .nmodes = 4, .qd = { 1, 8, 32 }, .nqd = 3,
		.bs = { 4096, 65536 }, .nbs = 2, .rw = { RW_RANDREAD, RW_RANDWRITE }, .nrw = 2,
		.copy = { COPY_ZERO, COPY_COPY }, .ncopy = 2, .seconds = 3, .idle_seconds = 2, .seed = 1,
	};
	uint64_t nums[MAX_LIST];
	bool ok;
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': o.image = optarg; break;
		case 'd': o.driver = optarg; break;
		case OPT_DOMAIN:
			if (strcmp(optarg, "process") != 0 && strcmp(optarg, "vm") != 0)
				return cli_usage_error(cmd, "--domain: '%s' is not process or vm", optarg);
			o.domain = optarg;
			break;
		case OPT_POLICY: o.policy = optarg; break;
		case OPT_MODES:
			if (!parse_names("--modes", optarg, bench_mode_names, MODE_COUNT, o.modes, &o.nmodes))
				return EXIT_USAGE;
			break;
		case OPT_RW:
			if (!parse_names("--rw", optarg, bench_rw_names, RW_COUNT, o.rw, &o.nrw))
				return EXIT_USAGE;
			break;
		case OPT_COPY:
			if (!parse_names("--copy", optarg, bench_copy_names, COPY_COUNT, o.copy, &o.ncopy))
				return EXIT_USAGE;
			break;
		case 'q':
			if (!parse_numbers("--qd", optarg, false, 1, ISOLDE_BLK_MAX_QUEUE_DEPTH, nums, &o.nqd))
				return EXIT_USAGE;
			for (unsigned i = 0; i < o.nqd; i++)
				o.qd[i] = (unsigned)nums[i];
			break;
		case 'b':
			if (!parse_numbers("--bs", optarg, true, 512, 16u << 20, o.bs, &o.nbs))
				return EXIT_USAGE;
			for (unsigned i = 0; i < o.nbs; i++)
				if (o.bs[i] % 512)
					return cli_usage_error(cmd, "--bs: %llu is not a multiple of 512",
							       (unsigned long long)o.bs[i]);
			break;
		case 't':
			o.seconds = parse_seconds("--seconds", optarg, 0.1, 3600, &ok);
			if (!ok)
				return EXIT_USAGE;
			break;
		case OPT_IDLE:
			o.idle_seconds = parse_seconds("--idle-seconds", optarg, 0, 3600, &ok);
			if (!ok)
				return EXIT_USAGE;
			break;
		case 's':
			if (!cli_parse_u64(cmd, "--seed", optarg, 0, UINT64_MAX, &o.seed))
				return EXIT_USAGE;
			break;
		case OPT_JSON: o.json = optarg; break;
		case OPT_REPORT: o.report = optarg; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (!o.image)
		return cli_usage_error(cmd, "--image is required");

	struct bench_run run = { .seconds_per_run = o.seconds };
	describe_machine(&run.machine, argc, argv);
	if (prepare_image(o.image, &run.machine.image_bytes, run.machine.image_fs,
			  sizeof run.machine.image_fs))
		return 1;
	for (unsigned b = 0; b < o.nbs; b++) {
		if (o.bs[b] > run.machine.image_bytes)
			return cli_usage_error(cmd, "--bs: %llu is larger than the image",
					       (unsigned long long)o.bs[b]);
	}

	/* The plan: direct once per (bs, rw) - it has no queue and no
	 * buffers to share - and every isolated combination. */
	size_t total = 0;
	for (unsigned m = 0; m < o.nmodes; m++)
		total += o.modes[m] == MODE_DIRECT ? 1 : (size_t)o.nqd * o.ncopy;
	total *= (size_t)o.nbs * o.nrw;
	run.results = calloc(total, sizeof *run.results);
	if (!run.results)
		return 1;

	uint64_t t_start = isolde_now_ns();
	for (unsigned b = 0; b < o.nbs; b++)
	for (unsigned w = 0; w < o.nrw; w++)
	for (unsigned m = 0; m < o.nmodes; m++) {
		enum bench_mode mode = (enum bench_mode)o.modes[m];
		unsigned nq = mode == MODE_DIRECT ? 1 : o.nqd, nc = mode == MODE_DIRECT ? 1 : o.ncopy;
		for (unsigned q = 0; q < nq; q++)
		for (unsigned k = 0; k < nc; k++) {
			struct bench_result *r = &run.results[run.nresults];
			struct job j = { .o = &o, .bs = o.bs[b], .rw = (enum bench_rw)o.rw[w],
					 .rng = o.seed + run.nresults };
			hist_init(&j.hist);
			j.nblocks = run.machine.image_bytes / j.bs;
			r->mode = mode;
			r->qd = mode == MODE_DIRECT ? 1 : o.qd[q];
			r->bs = j.bs;
			r->rw = j.rw;
			r->copy = mode == MODE_DIRECT ? -1 : o.copy[k];
			double left = (double)(total - run.nresults) * (o.seconds + 0.05) +
				      (double)o.nmodes * o.idle_seconds;
			fprintf(stderr, "isolde bench: [%zu/%zu] %-6s qd %-4u bs %-6llu %-9s %-4s (about %.0f s left)\n",
				run.nresults + 1, total, bench_mode_names[mode], r->qd, (unsigned long long)j.bs,
				bench_rw_names[j.rw], r->copy < 0 ? "-" : bench_copy_names[r->copy], left);
			int rc = mode == MODE_DIRECT
					 ? run_direct(&j, r)
					 : run_isolated(&j, r, (enum isolde_notify_mode)(mode - MODE_EVENT), r->qd,
							(enum bench_copy)r->copy);
			if (rc)
				return 1;
			summarize(&j, r);
			run.nresults++;
		}
	}
	if (o.idle_seconds > 0) {
		for (unsigned m = 0; m < o.nmodes; m++) {
			if (o.modes[m] == MODE_DIRECT)
				continue;
			struct bench_idle *d = &run.idle[run.nidle];
			d->mode = (enum bench_mode)o.modes[m];
			fprintf(stderr, "isolde bench: idle CPU of %s for %.0f s\n", bench_mode_names[d->mode],
				o.idle_seconds);
			if (measure_idle(&o, (enum isolde_notify_mode)(d->mode - MODE_EVENT), d))
				return 1;
			run.nidle++;
		}
	}
	fprintf(stderr, "isolde bench: done in %.0f s\n", (double)(isolde_now_ns() - t_start) / 1e9);

	int rc = 0;
	uint64_t errors = 0;
	for (size_t i = 0; i < run.nresults; i++)
		errors += run.results[i].errors;
	if (o.json && write_json(&run, o.json))
		rc = 1;
	if (o.report && bench_write_report(&run, o.report))
		rc = 1;
	if (!o.json || strcmp(o.json, "-") != 0) {
		printf("%-6s %4s %6s %-9s %-4s %10s %9s %8s %8s %8s %9s %9s %7s %7s\n", "mode", "qd", "bs", "rw",
		       "copy", "iops", "MB/s", "p50us", "p99us", "p999us", "cpuF/io", "cpuD/io", "kick/io",
		       "call/io");
		for (size_t i = 0; i < run.nresults; i++) {
			const struct bench_result *r = &run.results[i];
			printf("%-6s %4u %6llu %-9s %-4s %10.0f %9.1f %8.2f %8.2f %8.2f %9.3f %9.3f %7.3f %7.3f\n",
			       bench_mode_names[r->mode], r->qd, (unsigned long long)r->bs, bench_rw_names[r->rw],
			       r->copy < 0 ? "-" : bench_copy_names[r->copy], r->iops, r->mbps, r->lat_us[0],
			       r->lat_us[1], r->lat_us[2], r->cpu_us_front, r->cpu_us_driver, r->kicks_per_io,
			       r->calls_per_io);
		}
		for (size_t i = 0; i < run.nidle; i++)
			printf("idle %-6s: driver %.2f%% of a core, front end %.2f%% over %.1f s\n",
			       bench_mode_names[run.idle[i].mode], run.idle[i].driver_cpu_pct,
			       run.idle[i].front_cpu_pct, run.idle[i].seconds);
	}
	if (errors) {
		fprintf(stderr, "isolde bench: %llu I/O errors: the figures are not valid\n",
			(unsigned long long)errors);
		rc = 1;
	}
	free(run.results);
	return rc;
}
