// SPDX-License-Identifier: MIT
/* isolde serve: an isolated driver behind NBD, FUSE (and later vhost-user-blk). */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "isolde/blk.h"
#include "server.h"

#define MAX_EXPORTS_CLI 16

static int run_serve_command(int argc, char **argv);

const struct cli_command serve_command = {
	.name = "serve",
	.summary = "serve an image through an isolated driver over NBD and/or FUSE",
	.usage =
	"usage: isolde serve --image PATH --export SPEC [--export SPEC ...] [OPTIONS]\n"
	"\n"
	"Runs a driver domain for PATH and puts it behind standard interfaces until\n"
	"SIGINT or SIGTERM, which completes the requests in flight, then removes\n"
	"sockets and mounts. A driver that fails is restarted and its requests\n"
	"replayed; clients see no error.\n"
	"\n"
	"  --image PATH        image file or block device (required)\n"
	"  --export SPEC       nbd:unix:PATH        NBD on a Unix socket\n"
	"                      nbd:tcp:HOST:PORT    NBD on TCP (HOST may be empty for 127.0.0.1)\n"
	"                      (either with ,name=NAME: the export's name; default \"\")\n"
	"                      fuse:PATH            the device as one regular file at PATH\n"
	"                      vhost-user-blk:PATH  a vhost-user-blk back end for QEMU on a Unix socket\n"
	"                      (with ,poll=event|spin|hybrid: how its queues are watched;\n"
	"                      default: the --notify mode)\n"
	"  --driver NAME|PATH  driver (default blk-file)\n"
	"  --policy FILE       the driver's policy (default: the one shipped for it)\n"
	"  --notify MODE       event, spin or hybrid (default hybrid)\n"
	"  --qd D              queue depth of the ring (default 64)\n"
	"  --readonly          refuse writes\n"
	"  --direct            open the image with O_DIRECT\n"
	"  --allow-uring-without-namespaces\n"
	"                      run an io_uring driver where no namespaces can be had (not\n"
	"                      root, no user namespace): seccomp, Landlock and the\n"
	"                      launcher's restricted ring are then its only confinement\n"
	"  --control SOCK      Unix socket for `isolde status`\n"
	"  -h, --help          this text\n",
	.run = run_serve_command,
};

enum { OPT_POLICY = 256, OPT_READONLY, OPT_DIRECT, OPT_CONTROL, OPT_URING_NO_NS };

static int run_serve_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "export", required_argument, NULL, 'e' },
		{ "driver", required_argument, NULL, 'd' },
		{ "policy", required_argument, NULL, OPT_POLICY },
		{ "notify", required_argument, NULL, 'n' },
		{ "qd", required_argument, NULL, 'q' },
		{ "readonly", no_argument, NULL, OPT_READONLY },
		{ "direct", no_argument, NULL, OPT_DIRECT },
		{ "allow-uring-without-namespaces", no_argument, NULL, OPT_URING_NO_NS },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &serve_command;
	struct isolde_blk_config cfg;
	struct server_config scfg = { 0 };
	const char *exports[MAX_EXPORTS_CLI];
	unsigned nexports = 0;
	uint64_t v;
	char err[512];
	int c;

	isolde_blk_config_default(&cfg);
	cfg.queue_depth = 64;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': cfg.image = optarg; break;
		case 'e':
			if (nexports == MAX_EXPORTS_CLI)
				return cli_usage_error(cmd, "--export: at most %d", MAX_EXPORTS_CLI);
			exports[nexports++] = optarg;
			break;
		case 'd': cfg.driver = optarg; break;
		case OPT_POLICY: cfg.policy = optarg; break;
		case 'n':
			if (isolde_notify_mode_parse(optarg, &cfg.notify))
				return cli_usage_error(cmd, "--notify: '%s' is not event, spin or hybrid", optarg);
			break;
		case 'q':
			if (!cli_parse_u64(cmd, "--qd", optarg, 1, ISOLDE_BLK_MAX_QUEUE_DEPTH, &v))
				return EXIT_USAGE;
			cfg.queue_depth = (unsigned)v;
			break;
		case OPT_READONLY: cfg.readonly = true; break;
		case OPT_DIRECT: cfg.direct = true; break;
		case OPT_URING_NO_NS: cfg.uring_without_namespaces = true; break;
		case OPT_CONTROL: scfg.control_path = optarg; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (!cfg.image)
		return cli_usage_error(cmd, "--image is required");
	if (nexports == 0)
		return cli_usage_error(cmd, "at least one --export is required");

	struct isolde_blk *dev = isolde_blk_open(&cfg, err, sizeof err);
	if (!dev) {
		fprintf(stderr, "isolde serve: %s\n", err);
		return 1;
	}
	struct isolde_server *srv = server_create(dev, &scfg, err, sizeof err);
	if (!srv) {
		fprintf(stderr, "isolde serve: %s\n", err);
		isolde_blk_close(dev);
		return 1;
	}
	for (unsigned i = 0; i < nexports; i++) {
		if (server_add_export(srv, exports[i], err, sizeof err) != 0) {
			fprintf(stderr, "isolde serve: %s\n", err);
			server_destroy(srv);
			isolde_blk_close(dev);
			return 1;
		}
	}
	fprintf(stderr, "isolde serve: %s (%llu bytes) through driver %s pid %d, notify %s; ready\n",
		cfg.image, (unsigned long long)isolde_blk_size(dev), cfg.driver,
		(int)isolde_blk_driver_pid(dev), isolde_notify_mode_name(cfg.notify));
	int rc = server_run(srv);
	bool failed = isolde_blk_failed(dev);
	server_destroy(srv);
	isolde_blk_close(dev);
	fprintf(stderr, "isolde serve: stopped\n");
	return rc || failed ? 1 : 0;
}
