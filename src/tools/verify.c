// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "verify.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "pattern.h"

#define UNKNOWN_SEQ UINT64_MAX /* a failed write left the block undefined */
#define MISMATCH_REPORT_MAX 10

struct slot {
	struct isolde_blk_io io;
	unsigned char *buf;
	uint64_t block;
	uint64_t seq;
};

struct workload {
	const struct verify_options *o;
	struct verify_result *r;
	struct isolde_blk *dev;
	uint64_t nblocks;
	unsigned depth;
	uint64_t *expected; /* per block: seq of the last successful write; 0 = never */
	unsigned char *busy;
	struct slot *slots;
	struct slot **free_slots;
	unsigned nfree;
	uint64_t rng;
	uint64_t seq;       /* of the last write issued, over every round */
};

static uint64_t pick_idle_block(struct workload *w)
{
	uint64_t b = pattern_rand(&w->rng) % w->nblocks;

	while (w->busy[b])
		b = (b + 1) % w->nblocks;
	return b;
}

/* Reap at least one completion and hand each to on_done. */
static int reap_some(struct workload *w, unsigned *inflight, void (*on_done)(struct workload *, struct slot *))
{
	struct isolde_blk_io *done[64];
	int n = isolde_blk_reap(w->dev, done, 64, 1, -1);

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		struct slot *s = done[i]->user_data;
		on_done(w, s);
		w->free_slots[w->nfree++] = s;
	}
	*inflight -= (unsigned)n;
	return 0;
}

static void write_done(struct workload *w, struct slot *s)
{
	w->busy[s->block] = 0;
	w->r->writes++;
	if (s->io.result == 0) {
		w->expected[s->block] = s->seq;
	} else {
		w->r->errors++;
		w->expected[s->block] = UNKNOWN_SEQ;
	}
}

/* With the shield, a read's buffer is filled with this before it is
 * submitted: after an error it must hold this or zeroes, never data. */
#define UNREAD_BYTE 0xee

static bool holds_only(const unsigned char *p, size_t len, unsigned char byte)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != byte)
			return false;
	return true;
}

static bool checks_error_buffers(const struct workload *w)
{
	return w->o->cfg.shield && !w->o->zero_copy;
}

static void read_done(struct workload *w, struct slot *s)
{
	w->r->reads++;
	if (s->io.result != 0) {
		w->r->errors++;
		if (checks_error_buffers(w) && !holds_only(s->buf, w->o->bs, UNREAD_BYTE) &&
		    !holds_only(s->buf, w->o->bs, 0))
			w->r->error_reads_with_data++;
		return;
	}
	enum pattern_verdict v = pattern_check(s->buf, w->o->bs, w->o->seed, s->block, s->seq);
	if (v != PATTERN_OK) {
		if (w->r->mismatches++ < MISMATCH_REPORT_MAX)
			fprintf(stderr, "isolde verify: block %llu (offset %llu) is %s\n",
				(unsigned long long)s->block, (unsigned long long)(s->block * w->o->bs),
				pattern_verdict_name(v));
	}
}

/* Submit one request; false once the device refuses (failed). */
static bool submit(struct workload *w, struct slot *s, uint8_t op, unsigned *inflight)
{
	s->io.op = op;
	s->io.flags = 0;
	s->io.buf = s->buf;
	s->io.len = (uint32_t)w->o->bs;
	s->io.offset = s->block * w->o->bs;
	s->io.user_data = s;
	int r = isolde_blk_submit(w->dev, &s->io);
	if (r == 0) {
		(*inflight)++;
		w->nfree--;
		return true;
	}
	/* -EAGAIN cannot happen: slots never outnumber the queue depth. */
	w->r->errors++;
	return false;
}

/* Every write completed so far made durable; a failure is an error. */
static void flush(struct workload *w)
{
	int r = isolde_blk_flush(w->dev);

	w->r->flushes++;
	if (r != 0) {
		w->r->flush_failures++;
		w->r->errors++;
		fprintf(stderr, "isolde verify: flush %llu failed: %s\n", (unsigned long long)w->r->flushes,
			strerror(-r));
	}
}

static volatile sig_atomic_t verify_stop_requested;

static void request_stop(int sig)
{
	(void)sig;
	verify_stop_requested = 1;
}

static int write_phase(struct workload *w)
{
	unsigned inflight = 0;
	uint64_t issued = 0, limit = w->o->ops;
	bool refused = false, flush_due = false;

	while ((issued < limit && !refused) || inflight > 0) {
		/* SIGINT or SIGTERM: no more writes; what was written is checked. */
		if (verify_stop_requested && issued < limit) {
			fprintf(stderr, "isolde verify: stopping after %llu writes (signal); checking them\n",
				(unsigned long long)issued);
			limit = issued;
		}
		while (inflight < w->depth && issued < limit && !refused && !flush_due) {
			struct slot *s = w->free_slots[w->nfree - 1];
			s->block = pick_idle_block(w);
			s->seq = ++w->seq;
			pattern_fill(s->buf, w->o->bs, w->o->seed, s->block, s->seq);
			issued++;
			if (!submit(w, s, ISOLDE_BLK_OP_WRITE, &inflight)) {
				w->r->writes++;
				refused = true;
				break;
			}
			w->busy[s->block] = 1;
			flush_due = w->o->flush_every && issued % w->o->flush_every == 0;
		}
		if (inflight > 0 && reap_some(w, &inflight, write_done) < 0)
			return -1;
		if (flush_due && inflight == 0) {
			flush(w);
			flush_due = false;
		}
	}
	/* The last write is covered too, unless a periodic flush just did. */
	if (!refused && (!w->o->flush_every || issued % w->o->flush_every))
		flush(w);
	return refused ? -1 : 0;
}

static int read_phase(struct workload *w)
{
	unsigned inflight = 0;
	uint64_t b = 0;
	bool refused = false;

	for (;;) {
		while (inflight < w->depth && b < w->nblocks && !refused) {
			if (w->expected[b] == 0 || w->expected[b] == UNKNOWN_SEQ) {
				b++;
				continue;
			}
			struct slot *s = w->free_slots[w->nfree - 1];
			s->block = b;
			s->seq = w->expected[b];
			b++;
			if (checks_error_buffers(w))
				memset(s->buf, UNREAD_BYTE, w->o->bs);
			if (!submit(w, s, ISOLDE_BLK_OP_READ, &inflight)) {
				w->r->reads++;
				refused = true;
			}
		}
		if (inflight == 0)
			break;
		if (reap_some(w, &inflight, read_done) < 0)
			return -1;
	}
	return refused ? -1 : 0;
}

static void free_workload(struct workload *w)
{
	if (w->slots) {
		for (unsigned i = 0; i < w->depth; i++) {
			if (w->o->zero_copy)
				isolde_blk_buf_free(w->dev, w->slots[i].buf);
			else
				free(w->slots[i].buf);
		}
	}
	free(w->slots);
	free(w->free_slots);
	free(w->expected);
	free(w->busy);
}

int verify_run(const struct verify_options *o, struct verify_result *r, char *err, size_t errlen)
{
	struct workload w = { .o = o, .r = r, .rng = o->seed };
	struct isolde_blk_config cfg = o->cfg;
	uint64_t start;

	memset(r, 0, sizeof *r);
	if (o->bs > cfg.max_io)
		cfg.max_io = (o->bs + 4095) / 4096 * 4096;
	w.dev = isolde_blk_open(&cfg, err, errlen);
	if (!w.dev)
		return -1;
	r->driver_pid = isolde_blk_driver_pid(w.dev);
	if (o->announce)
		fprintf(stderr, "isolde verify: driver %s is pid %d (front end pid %d), notify %s, qd %u\n",
			cfg.driver, (int)r->driver_pid, (int)getpid(), isolde_notify_mode_name(cfg.notify),
			cfg.queue_depth);

	w.nblocks = isolde_blk_size(w.dev) / o->bs;
	if (w.nblocks == 0) {
		snprintf(err, errlen, "image %s (%llu bytes) is smaller than one %llu-byte block", cfg.image,
			 (unsigned long long)isolde_blk_size(w.dev), (unsigned long long)o->bs);
		isolde_blk_close(w.dev);
		return -1;
	}
	w.depth = cfg.queue_depth < w.nblocks ? cfg.queue_depth : (unsigned)w.nblocks;
	w.expected = calloc(w.nblocks, sizeof *w.expected);
	w.busy = calloc(w.nblocks, 1);
	w.slots = calloc(w.depth, sizeof *w.slots);
	w.free_slots = calloc(w.depth, sizeof *w.free_slots);
	if (!w.expected || !w.busy || !w.slots || !w.free_slots)
		goto oom;
	for (unsigned i = 0; i < w.depth; i++) {
		w.slots[i].buf = o->zero_copy ? isolde_blk_buf_alloc(w.dev, o->bs)
					      : aligned_alloc(4096, (o->bs + 4095) / 4096 * 4096);
		if (!w.slots[i].buf)
			goto oom;
		w.free_slots[w.nfree++] = &w.slots[i];
	}

	if (o->opened)
		o->opened(w.dev, o->opened_ctx);
	start = isolde_now_ns();
	for (unsigned round = 1;; round++) {
		r->rounds = round;
		if (write_phase(&w) != 0 || read_phase(&w) != 0 || verify_stop_requested)
			break;
		if (round >= o->max_rounds || !o->again || !o->again(o->opened_ctx))
			break;
	}
	r->seconds = (double)(isolde_now_ns() - start) / 1e9;
	isolde_blk_get_stats(w.dev, &r->stats);
	r->supervisor = *isolde_blk_supervisor_stats(w.dev);
	r->generation = isolde_blk_generation(w.dev);
	r->flush_error = isolde_blk_flush_error(w.dev);
	r->enforcement = *isolde_blk_enforcement(w.dev);
	if (isolde_blk_failed(w.dev))
		snprintf(r->error, sizeof r->error, "%s", isolde_blk_error(w.dev));
	free_workload(&w);
	isolde_blk_close(w.dev);
	return 0;
oom:
	snprintf(err, errlen, "out of memory (or zero-copy pool too small for qd %u x %llu bytes)",
		 w.depth, (unsigned long long)o->bs);
	free_workload(&w);
	isolde_blk_close(w.dev);
	return -1;
}

/* ---- the command ---- */

static int run_verify_command(int argc, char **argv);

const struct cli_command verify_command = {
	.name = "verify",
	.summary = "write self-describing blocks through an isolated driver, read them back, check",
	.usage =
	"usage: isolde verify --image PATH [OPTIONS]\n"
	"\n"
	"Random writes of seeded, self-describing blocks through an isolated driver\n"
	"domain at a queue depth, then a read-back and check of every block written.\n"
	"Exits 0 only if every request succeeded and every block verified.\n"
	"THIS OVERWRITES DATA IN THE IMAGE.\n"
	"\n"
	"  --image PATH        image file or block device (required)\n"
	"  --size SIZE         create PATH as a sparse file of SIZE if it does not exist\n"
	"  --driver NAME|PATH  driver to run (default blk-file)\n"
	"  --driver-arg ARG    extra argument for the driver (repeatable; test drivers)\n"
	"  --notify MODE       event, spin or hybrid (default hybrid)\n"
	"  --domain KIND       process or vm: the driver in a QEMU virtual machine with\n"
	"                      its own kernel (default: what the policy says)\n"
	"  --ops N             number of writes (default 10000)\n"
	"  --qd D              queue depth, 1..1024 (default 32)\n"
	"  --bs BYTES          block size, 512..16M, multiple of 512 (default 4k)\n"
	"  --seed S            random seed (default 1)\n"
	"  --zero-copy         use buffers in the shared data area instead of copying\n"
	"  --shield            integrity shield: checksum every block written, check every\n"
	"                      block read; a mismatch restarts the driver and replays\n"
	"  --direct            open the image with O_DIRECT\n"
	"  --flush-every N     a flush after every N writes (default: one after the last)\n"
	"  --allow-uring-without-namespaces\n"
	"                      run an io_uring driver where no namespaces can be had (not\n"
	"                      root, no user namespace), with seccomp, Landlock and the\n"
	"                      launcher's restricted ring as its only confinement\n"
	"  --policy FILE       the driver's policy (default: the one shipped for the driver)\n"
	"  --timeout-ms MS     hang detection: no driver progress this long while I/O is\n"
	"                      pending (default: the policy's heartbeat)\n"
	"  --force             allow a block device as the image\n"
	"  --json              print one JSON object: ops, errors, mismatches, driver_pid,\n"
	"                      restarts, replayed, seconds, ...\n"
	"\n"
	"A driver that fails is restarted and the I/O it had in flight replayed; the\n"
	"workload should not notice. Restarts are counted and logged on stderr.\n"
	"SIGINT or SIGTERM ends the writes early; what was written is still checked.\n"
	"  -h, --help          this text\n",
	.run = run_verify_command,
};

static int create_image(const char *path, uint64_t size, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

	if (fd < 0) {
		if (errno == EEXIST)
			return 0;
		snprintf(err, errlen, "cannot create image %s: %s", path, strerror(errno));
		return -1;
	}
	if (ftruncate(fd, (off_t)size) != 0) {
		snprintf(err, errlen, "cannot size image %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	close(fd);
	return 0;
}

static void print_json(const struct verify_options *o, const struct verify_result *r)
{
	const struct isolde_supervisor_stats *sup = &r->supervisor;
	uint32_t p50, p99, max;

	isolde_supervisor_recovery_summary(sup, &p50, &p99, &max);
	printf("{\"ops\": %llu, \"writes\": %llu, \"reads\": %llu, \"errors\": %llu, "
	       "\"mismatches\": %llu, \"driver_pid\": %d, \"restarts\": %llu, \"replayed\": %llu, "
	       "\"seconds\": %.6f, \"notify\": \"%s\", \"qd\": %u, \"bs\": %llu, \"driver\": ",
	       (unsigned long long)(r->writes + r->reads), (unsigned long long)r->writes,
	       (unsigned long long)r->reads, (unsigned long long)r->errors,
	       (unsigned long long)r->mismatches, (int)r->driver_pid,
	       (unsigned long long)sup->restarts, (unsigned long long)sup->replayed, r->seconds,
	       isolde_notify_mode_name(o->cfg.notify), o->cfg.queue_depth, (unsigned long long)o->bs);
	json_write_string(stdout, o->cfg.driver);
	printf(", \"generation\": %u, \"restarts_by_reason\": {", r->generation);
	for (int f = 0; f < ISOLDE_FAIL_COUNT; f++)
		printf("%s\"%s\": %llu", f ? ", " : "", isolde_failure_name((enum isolde_failure)f),
		       (unsigned long long)sup->by_failure[f]);
	printf("}, \"recovery_us\": {\"count\": %u, \"p50\": %u, \"p99\": %u, \"max\": %u}",
	       sup->recovery_count, p50, p99, max);
	printf(", \"kicks\": %llu, \"calls\": %llu, \"protocol_violations\": %llu, \"denials\": %llu, "
	       "\"shield\": {\"on\": %s, \"verified\": %llu, \"learned\": %llu, \"mismatches\": %llu}, ",
	       (unsigned long long)r->stats.kicks, (unsigned long long)r->stats.calls,
	       (unsigned long long)r->stats.protocol_violations, (unsigned long long)r->stats.denials,
	       o->cfg.shield ? "true" : "false", (unsigned long long)r->stats.shield_verified,
	       (unsigned long long)r->stats.shield_learned, (unsigned long long)r->stats.shield_mismatches);
	printf("\"denials_by_class\": {");
	for (int d = 0; d < ISOLDE_DENIAL_CLASSES; d++)
		printf("%s\"%s\": %llu", d ? ", " : "", isolde_denial_class_name((enum isolde_denial_class)d),
		       (unsigned long long)r->stats.denials_by_class[d]);
	printf("}, ");
	const struct isolde_enforcement *e = &r->enforcement;
	printf("\"flushes\": %llu, \"flush_failures\": %llu, \"error_reads_with_data\": %llu, ",
	       (unsigned long long)r->flushes, (unsigned long long)r->flush_failures,
	       (unsigned long long)r->error_reads_with_data);
	printf("\"flush_error\": %d, \"log_lines\": %llu, \"log_suppressed\": %llu, \"sandbox\": "
	       "{\"namespaces\": %s, \"user_namespace\": %s, \"own_uid\": %s, \"cgroups\": %s, "
	       "\"landlock_abi\": %d, \"restricted_uring\": %s, \"vm\": %s}, \"error\": ",
	       r->flush_error, (unsigned long long)r->stats.log_lines,
	       (unsigned long long)r->stats.log_suppressed, e->namespaces ? "true" : "false",
	       e->user_namespace ? "true" : "false", e->own_uid ? "true" : "false",
	       e->cgroups ? "true" : "false", e->landlock_abi, e->restricted_uring ? "true" : "false",
	       e->vm ? "true" : "false");
	if (r->error[0])
		json_write_string(stdout, r->error);
	else
		fputs("null", stdout);
	puts("}");
}

static void print_human(const struct verify_options *o, const struct verify_result *r)
{
	uint64_t ops = r->writes + r->reads;

	printf("verify: %llu ops (%llu writes, %llu reads) in %.3f s, %.0f ops/s; %llu errors, "
	       "%llu mismatches; driver %s pid %d, notify %s, qd %u, bs %llu; %llu restarts, "
	       "%llu requests replayed\n",
	       (unsigned long long)ops, (unsigned long long)r->writes, (unsigned long long)r->reads,
	       r->seconds, r->seconds > 0 ? (double)ops / r->seconds : 0.0,
	       (unsigned long long)r->errors, (unsigned long long)r->mismatches, o->cfg.driver,
	       (int)r->driver_pid, isolde_notify_mode_name(o->cfg.notify), o->cfg.queue_depth,
	       (unsigned long long)o->bs, (unsigned long long)r->supervisor.restarts,
	       (unsigned long long)r->supervisor.replayed);
}

enum { OPT_SIZE = 256, OPT_POLICY, OPT_SHIELD, OPT_DRIVER_ARG, OPT_ZERO_COPY, OPT_DIRECT, OPT_TIMEOUT, OPT_FORCE, OPT_JSON,
       OPT_FLUSH_EVERY, OPT_URING_NO_NS, OPT_DOMAIN };

static int run_verify_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "size", required_argument, NULL, OPT_SIZE },
		{ "driver", required_argument, NULL, 'd' },
		{ "driver-arg", required_argument, NULL, OPT_DRIVER_ARG },
		{ "policy", required_argument, NULL, OPT_POLICY },
		{ "shield", no_argument, NULL, OPT_SHIELD },
		{ "notify", required_argument, NULL, 'n' },
		{ "domain", required_argument, NULL, OPT_DOMAIN },
		{ "ops", required_argument, NULL, 'o' },
		{ "qd", required_argument, NULL, 'q' },
		{ "bs", required_argument, NULL, 'b' },
		{ "seed", required_argument, NULL, 's' },
		{ "zero-copy", no_argument, NULL, OPT_ZERO_COPY },
		{ "direct", no_argument, NULL, OPT_DIRECT },
		{ "flush-every", required_argument, NULL, OPT_FLUSH_EVERY },
		{ "allow-uring-without-namespaces", no_argument, NULL, OPT_URING_NO_NS },
		{ "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &verify_command;
	struct verify_options o = { .ops = 10000, .bs = 4096, .seed = 1, .announce = true };
	struct verify_result r;
	char *driver_args[33] = { NULL };
	unsigned ndriver_args = 0;
	uint64_t size = 0, v;
	bool json = false, force = false;
	char err[512];
	int c;

	isolde_blk_config_default(&o.cfg);
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': o.cfg.image = optarg; break;
		case OPT_SIZE:
			if (!cli_parse_size(cmd, "--size", optarg, 4096, UINT64_C(1) << 50, &size))
				return EXIT_USAGE;
			break;
		case 'd': o.cfg.driver = optarg; break;
		case OPT_POLICY: o.cfg.policy = optarg; break;
		case OPT_SHIELD: o.cfg.shield = true; break;
		case OPT_DRIVER_ARG:
			if (ndriver_args == 32)
				return cli_usage_error(cmd, "--driver-arg: at most 32");
			driver_args[ndriver_args++] = optarg;
			break;
		case 'n':
			if (isolde_notify_mode_parse(optarg, &o.cfg.notify))
				return cli_usage_error(cmd, "--notify: '%s' is not event, spin or hybrid", optarg);
			break;
		case OPT_DOMAIN:
			if (strcmp(optarg, "process") != 0 && strcmp(optarg, "vm") != 0)
				return cli_usage_error(cmd, "--domain: '%s' is not process or vm", optarg);
			o.cfg.domain = optarg;
			break;
		case 'o':
			if (!cli_parse_u64(cmd, "--ops", optarg, 1, UINT64_C(1) << 40, &o.ops))
				return EXIT_USAGE;
			break;
		case 'q':
			if (!cli_parse_u64(cmd, "--qd", optarg, 1, ISOLDE_BLK_MAX_QUEUE_DEPTH, &v))
				return EXIT_USAGE;
			o.cfg.queue_depth = (unsigned)v;
			break;
		case 'b':
			if (!cli_parse_size(cmd, "--bs", optarg, 512, 16u << 20, &o.bs))
				return EXIT_USAGE;
			if (o.bs % 512)
				return cli_usage_error(cmd, "--bs: %s is not a multiple of 512", optarg);
			break;
		case 's':
			if (!cli_parse_u64(cmd, "--seed", optarg, 0, UINT64_MAX, &o.seed))
				return EXIT_USAGE;
			break;
		case OPT_ZERO_COPY: o.zero_copy = true; break;
		case OPT_DIRECT: o.cfg.direct = true; break;
		case OPT_URING_NO_NS: o.cfg.uring_without_namespaces = true; break;
		case OPT_FLUSH_EVERY:
			if (!cli_parse_u64(cmd, "--flush-every", optarg, 1, UINT64_C(1) << 40, &o.flush_every))
				return EXIT_USAGE;
			break;
		case OPT_TIMEOUT:
			if (!cli_parse_u64(cmd, "--timeout-ms", optarg, 1, 3600000, &v))
				return EXIT_USAGE;
			o.cfg.timeout_ms = (unsigned)v;
			break;
		case OPT_FORCE: force = true; break;
		case OPT_JSON: json = true; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (!o.cfg.image)
		return cli_usage_error(cmd, "--image is required");
	if (ndriver_args)
		o.cfg.driver_args = driver_args;
	if (size && create_image(o.cfg.image, size, err, sizeof err)) {
		fprintf(stderr, "isolde verify: %s\n", err);
		return 1;
	}
	struct stat st;
	if (stat(o.cfg.image, &st) == 0 && S_ISBLK(st.st_mode) && !force)
		return cli_usage_error(cmd, "%s is a block device and verify overwrites it; add --force",
				       o.cfg.image);
	uint64_t zero_copy_bytes = (o.bs + 4095) / 4096 * 4096 * o.cfg.queue_depth;
	if (o.zero_copy && zero_copy_bytes > (16u << 20))
		o.cfg.data_size = zero_copy_bytes;

	struct sigaction stop = { .sa_handler = request_stop };
	sigaction(SIGINT, &stop, NULL);
	sigaction(SIGTERM, &stop, NULL);
	if (verify_run(&o, &r, err, sizeof err) != 0) {
		fprintf(stderr, "isolde verify: %s\n", err);
		return 1;
	}
	if (r.error[0])
		fprintf(stderr, "isolde verify: %s\n", r.error);
	if (json)
		print_json(&o, &r);
	else
		print_human(&o, &r);
	return verify_passed(&r) ? 0 : 1;
}
