// SPDX-License-Identifier: MIT
/*
 * isolde demo: the main job on a built-in default. A temporary image, an
 * isolated driver, a verified workload in each notify mode, a summary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "verify.h"

#define DEMO_IMAGE_SIZE (64u << 20)

static int run_demo_command(int argc, char **argv);

const struct cli_command demo_command = {
	.name = "demo",
	.summary = "run a verified workload through an isolated driver in each notify mode",
	.usage =
	"usage: isolde demo [--ops N] [--qd D] [--dir DIR]\n"
	"\n"
	"Makes a temporary 64 MiB disk image (deleted when the demo ends, however it\n"
	"ends), starts the blk-file driver in its own process, and runs a verified\n"
	"random-write/read-back workload through it in each notify mode: event,\n"
	"spin and hybrid. Prints ops/s per mode and the processes involved.\n"
	"\n"
	"  --ops N     writes per mode (default 20000)\n"
	"  --qd D      queue depth (default 32)\n"
	"  --dir DIR   where to put the temporary image (default $TMPDIR or /tmp)\n"
	"  -h, --help  this text\n",
	.run = run_demo_command,
};

/*
 * The image is created and unlinked at once; the front end (this process)
 * opens it again through /proc/self/fd and hands the driver that fd, so
 * nothing is left behind even if the demo is killed.
 */
static int make_temp_image(const char *dir, char *path, size_t len)
{
	char tmpl[4096];
	int fd;

	snprintf(tmpl, sizeof tmpl, "%s/isolde-demo-XXXXXX", dir);
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd < 0)
		return -1;
	unlink(tmpl);
	if (ftruncate(fd, DEMO_IMAGE_SIZE) != 0) {
		close(fd);
		return -1;
	}
	snprintf(path, len, "/proc/self/fd/%d", fd);
	return fd;
}

static int run_demo_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "ops", required_argument, NULL, 'o' },
		{ "qd", required_argument, NULL, 'q' },
		{ "dir", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const enum isolde_notify_mode modes[] = {
		ISOLDE_NOTIFY_EVENT, ISOLDE_NOTIFY_SPIN, ISOLDE_NOTIFY_HYBRID,
	};
	const struct cli_command *cmd = &demo_command;
	const char *dir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	uint64_t ops = 20000, qd = 32;
	char image[64], err[512];
	bool all_passed = true;
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'o':
			if (!cli_parse_u64(cmd, "--ops", optarg, 1, UINT64_C(1) << 32, &ops))
				return EXIT_USAGE;
			break;
		case 'q':
			if (!cli_parse_u64(cmd, "--qd", optarg, 1, ISOLDE_BLK_MAX_QUEUE_DEPTH, &qd))
				return EXIT_USAGE;
			break;
		case 'd': dir = optarg; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);

	int fd = make_temp_image(dir, image, sizeof image);
	if (fd < 0) {
		fprintf(stderr, "isolde demo: cannot make a temporary image in %s: %s\n", dir, strerror(errno));
		return 1;
	}
	printf("isolde demo: a %u MiB temporary image in %s (already unlinked), driver blk-file,\n"
	       "%llu random 4 KiB writes per mode at queue depth %llu, then every block read back "
	       "and checked.\n"
	       "The front end (this process) is pid %d; each driver runs in its own process.\n\n",
	       DEMO_IMAGE_SIZE >> 20, dir, (unsigned long long)ops, (unsigned long long)qd, (int)getpid());
	printf("  %-7s %10s %10s %7s %11s %11s  %s\n", "mode", "ops", "ops/s", "errors", "mismatches",
	       "driver pid", "notifications (kicks / calls)");
	fflush(stdout);

	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
		struct verify_options o = { .ops = ops, .bs = 4096, .seed = i + 1 };
		struct verify_result r;

		isolde_blk_config_default(&o.cfg);
		o.cfg.image = image;
		o.cfg.notify = modes[i];
		o.cfg.queue_depth = (unsigned)qd;
		if (verify_run(&o, &r, err, sizeof err) != 0) {
			fprintf(stderr, "isolde demo: %s: %s\n", isolde_notify_mode_name(modes[i]), err);
			close(fd);
			return 1;
		}
		uint64_t total = r.writes + r.reads;
		printf("  %-7s %10llu %10.0f %7llu %11llu %11d  %llu / %llu\n",
		       isolde_notify_mode_name(modes[i]), (unsigned long long)total,
		       r.seconds > 0 ? (double)total / r.seconds : 0.0, (unsigned long long)r.errors,
		       (unsigned long long)r.mismatches, (int)r.driver_pid,
		       (unsigned long long)r.stats.kicks, (unsigned long long)r.stats.calls);
		if (r.error[0])
			printf("          %s\n", r.error);
		fflush(stdout);
		all_passed = all_passed && verify_passed(&r);
	}
	close(fd);
	printf("\n%s\n", all_passed ? "All blocks verified in every mode. The temporary image is gone."
				     : "VERIFICATION FAILED: see the errors above.");
	return all_passed ? 0 : 1;
}
