// SPDX-License-Identifier: MIT
/*
 * isolde serve: isolated drivers behind NBD, FUSE and vhost-user-blk, as a
 * storage daemon (src/export/daemon.h): devices and exports given on the
 * command line or in a configuration file are set up before it says
 * "ready"; the control socket adds and removes more while it runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "control.h"
#include "daemon.h"
#include "isolde/blk.h"
#include "metrics.h"
#include "net_export.h"
#include "isolde/net.h"

#define MAX_ITEMS 256           /* devices and exports set up at start */
#define CONFIG_MAX_LINE 1024
#define LEGACY_DEVICE "disk"    /* the device --image defines */

static int run_serve_command(int argc, char **argv);

const struct cli_command serve_command = {
	.name = "serve",
	.summary = "serve devices through isolated drivers over NBD, FUSE and vhost-user-blk",
	.usage =
	"usage: isolde serve --device SPEC [--device SPEC ...] --export SPEC [...] [OPTIONS]\n"
	"       isolde serve --image PATH --export SPEC [...] [OPTIONS]\n"
	"       isolde serve --config FILE [OPTIONS]\n"
	"\n"
	"Runs a driver domain for each device and puts it behind standard interfaces\n"
	"until SIGINT or SIGTERM, which completes the requests in flight, then removes\n"
	"sockets and mounts. A driver that fails is restarted and its requests\n"
	"replayed; clients see no error. Each device is served by a thread of its own:\n"
	"one that is busy or restarting never delays another. `isolde ctl` adds and\n"
	"removes devices and exports while it runs (--control).\n"
	"\n"
	"  --device SPEC       NAME,image=PATH[,driver=D][,domain=process|vm][,notify=M]\n"
	"                      [,qd=N][,max_io=SIZE]\n"
	"                      [,timeout_ms=MS][,policy=FILE][,readonly][,direct][,shield]\n"
	"                      [,uring_without_namespaces][,driver_arg=ARG]...\n"
	"                      (paths may not hold a comma)\n"
	"  --export SPEC       nbd:unix:PATH        NBD on a Unix socket\n"
	"                      nbd:tcp:HOST:PORT    NBD on TCP (HOST may be empty for 127.0.0.1)\n"
	"                      (either with ,name=NAME: the export's name; default \"\")\n"
	"                      fuse:PATH            the device as one regular file at PATH\n"
	"                      vhost-user-blk:PATH  a vhost-user-blk back end for QEMU on a Unix socket\n"
	"                      (with ,poll=event|spin|hybrid: how its queues are watched;\n"
	"                      default: the device's notify mode)\n"
	"                      add ,device=NAME when there is more than one device\n"
	"                      tap:IFNAME[,netns=NS]  the host's side of a network device:\n"
	"                      frames the host sends to this TAP go through the isolated\n"
	"                      driver to the wire, and back (with ,netdev=NAME when there\n"
	"                      is more than one network device)\n"
	"                      vhost-user-net:PATH[,poll=MODE]  a network device as a QEMU\n"
	"                      guest's virtio-net card (-netdev vhost-user) on a Unix socket\n"
	"                      (,netdev=NAME as for tap)\n"
	"  --netdev SPEC       NAME,ifname=IF[,netns=NS][,driver=D][,notify=M][,ring=N]\n"
	"                      [,offload=on|off][,mtu=N][,timeout_ms=MS][,policy=FILE]\n"
	"                      [,driver_arg=ARG]...: a network device whose driver\n"
	"                      (default net-tap) gets only the TAP IF (created if missing)\n"
	"                      in network namespace NS (/run/netns/NS)\n"
	"  --config FILE       lines 'device SPEC', 'netdev SPEC', 'export SPEC', 'control SOCK',\n"
	"                      'metrics ADDRESS'; '#' starts a comment\n"
	"  --control SOCK      Unix socket for `isolde ctl` and `isolde status`\n"
	"  --metrics ADDRESS   Prometheus metrics over HTTP on tcp:HOST:PORT (HOST empty:\n"
	"                      127.0.0.1; port 0: any free one, printed)\n"
	"\n"
	"One device the short way (it is named \"" LEGACY_DEVICE "\"):\n"
	"  --image PATH        image file or block device\n"
	"  --driver NAME|PATH  driver (default blk-file)\n"
	"  --policy FILE       the driver's policy (default: the one shipped for it)\n"
	"  --notify MODE       event, spin or hybrid (default hybrid)\n"
	"  --domain KIND       process or vm: the driver in a QEMU VM with its own kernel\n"
	"                      (default: what the policy says)\n"
	"  --qd D              queue depth of the ring (default 64)\n"
	"  --readonly          refuse writes\n"
	"  --direct            open the image with O_DIRECT\n"
	"  --allow-uring-without-namespaces\n"
	"                      run an io_uring driver where no namespaces can be had (not\n"
	"                      root, no user namespace): seccomp, Landlock and the\n"
	"                      launcher's restricted ring are then its only confinement\n"
	"  -h, --help          this text\n",
	.run = run_serve_command,
};

/* A device or export to set up, and where it was given (for errors). */
struct item {
	char *spec;
	char name[DAEMON_NAME_MAX + 1]; /* devices' */
	char origin[300];       /* "--device", "FILE:LINE" */
};

struct plan {
	struct item devices[MAX_ITEMS], exports[MAX_ITEMS], netdevs[MAX_ITEMS];
	unsigned ndevices, nexports, nnetdevs;
	char *control, *metrics;
	char control_origin[300], metrics_origin[300];
	bool legacy;
	struct isolde_blk_config legacy_cfg;
};

static void plan_free(struct plan *p)
{
	for (unsigned i = 0; i < p->ndevices; i++)
		free(p->devices[i].spec);
	for (unsigned i = 0; i < p->nexports; i++)
		free(p->exports[i].spec);
	for (unsigned i = 0; i < p->nnetdevs; i++)
		free(p->netdevs[i].spec);
	free(p->control);
	free(p->metrics);
}

static int plan_add(struct item *items, unsigned *n, const char *spec, const char *origin)
{
	if (*n == MAX_ITEMS)
		return -1;
	items[*n].spec = strdup(spec);
	snprintf(items[*n].origin, sizeof items[*n].origin, "%s", origin);
	if (!items[*n].spec)
		return -1;
	(*n)++;
	return 0;
}

/* A device spec is checked as it is read, so that its error names where
 * it was given before anything else is judged. */
static int plan_add_device(struct plan *p, const char *spec, const char *origin)
{
	struct isolde_blk_config cfg;
	struct daemon_error e = { 0 };
	char name[DAEMON_NAME_MAX + 1];

	if (daemon_parse_device_spec(spec, name, sizeof name, &cfg, &e) != 0) {
		fprintf(stderr, "isolde serve: %s: %s\n", origin, e.message);
		return -1;
	}
	isolde_blk_config_free(&cfg);
	for (unsigned i = 0; i < p->ndevices; i++) {
		if (strcmp(p->devices[i].name, name) == 0) {
			fprintf(stderr, "isolde serve: %s: there is a device %s already (%s)\n", origin, name,
				p->devices[i].origin);
			return -1;
		}
	}
	if (plan_add(p->devices, &p->ndevices, spec, origin)) {
		fprintf(stderr, "isolde serve: %s: more than %d devices\n", origin, MAX_ITEMS);
		return -1;
	}
	snprintf(p->devices[p->ndevices - 1].name, sizeof p->devices[0].name, "%s", name);
	return 0;
}

/* A network device: its spec checked as it is read, its name its first
 * element. */
static int plan_add_netdev(struct plan *p, const char *spec, const char *origin)
{
	struct isolde_net_config cfg;
	char err[512], name[DAEMON_NAME_MAX + 1];
	size_t n = strcspn(spec, ",");

	if (n == 0 || n > DAEMON_NAME_MAX || memchr(spec, '=', n)) {
		fprintf(stderr, "isolde serve: %s: a network device spec starts with its name (NAME,ifname=IF,...)\n",
			origin);
		return -1;
	}
	memcpy(name, spec, n);
	name[n] = '\0';
	isolde_net_config_default(&cfg);
	int rc = isolde_net_config_parse(&cfg, spec, err, sizeof err);
	isolde_net_config_free(&cfg);
	if (rc) {
		fprintf(stderr, "isolde serve: %s: network device %s: %s\n", origin, name, err);
		return -1;
	}
	for (unsigned i = 0; i < p->nnetdevs; i++) {
		if (strcmp(p->netdevs[i].name, name) == 0) {
			fprintf(stderr, "isolde serve: %s: there is a network device %s already (%s)\n", origin, name,
				p->netdevs[i].origin);
			return -1;
		}
	}
	if (plan_add(p->netdevs, &p->nnetdevs, spec, origin)) {
		fprintf(stderr, "isolde serve: %s: more than %d network devices\n", origin, MAX_ITEMS);
		return -1;
	}
	snprintf(p->netdevs[p->nnetdevs - 1].name, sizeof p->netdevs[0].name, "%s", name);
	return 0;
}

static int set_once(char **slot, char *origin_slot, const char *value, const char *origin, const char *what)
{
	if (*slot) {
		fprintf(stderr, "isolde serve: %s: %s given twice (first at %s)\n", origin, what, origin_slot);
		return -1;
	}
	*slot = strdup(value);
	snprintf(origin_slot, 300, "%s", origin);
	return *slot ? 0 : -1;
}

/* Lines "KEYWORD VALUE"; blank lines and '#' comments are skipped. */
static int read_config(struct plan *p, const char *path)
{
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	char origin[300];
	unsigned lineno = 0;
	int rc = 0;

	if (!f) {
		fprintf(stderr, "isolde serve: --config %s: %s\n", path, strerror(errno));
		return -1;
	}
	while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		snprintf(origin, sizeof origin, "%s:%u", path, lineno);
		if (n > CONFIG_MAX_LINE) {
			fprintf(stderr, "isolde serve: %s: line longer than %d characters\n", origin,
				CONFIG_MAX_LINE);
			rc = -1;
			break;
		}
		if ((size_t)n != strlen(line)) {
			fprintf(stderr, "isolde serve: %s: a NUL byte\n", origin);
			rc = -1;
			break;
		}
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char *s = line + strspn(line, " \t\r\n");
		char *end = s + strlen(s);
		while (end > s && strchr(" \t\r\n", end[-1]))
			*--end = '\0';
		if (!*s)
			continue;
		char *value = s + strcspn(s, " \t");
		if (*value) {
			*value++ = '\0';
			value += strspn(value, " \t");
		}
		if (!*value) {
			fprintf(stderr, "isolde serve: %s: '%s' needs a value\n", origin, s);
			rc = -1;
		} else if (strcmp(s, "device") == 0) {
			rc = plan_add_device(p, value, origin);
		} else if (strcmp(s, "export") == 0) {
			rc = plan_add(p->exports, &p->nexports, value, origin);
			if (rc)
				fprintf(stderr, "isolde serve: %s: more than %d exports\n", origin, MAX_ITEMS);
		} else if (strcmp(s, "netdev") == 0) {
			rc = plan_add_netdev(p, value, origin);
		} else if (strcmp(s, "control") == 0) {
			rc = set_once(&p->control, p->control_origin, value, origin, "control");
		} else if (strcmp(s, "metrics") == 0) {
			rc = set_once(&p->metrics, p->metrics_origin, value, origin, "metrics");
		} else {
			fprintf(stderr, "isolde serve: %s: unknown keyword '%s' (known: device, netdev, export, "
				"control, metrics)\n", origin, s);
			rc = -1;
		}
	}
	if (rc == 0 && ferror(f)) {
		fprintf(stderr, "isolde serve: --config %s: %s\n", path, strerror(errno));
		rc = -1;
	}
	free(line);
	fclose(f);
	return rc;
}

/* ---- waiting for the daemon's replies at start ---- */

struct pending {
	bool done, ok;
	char message[600];
	json_t *ret;
};

static void on_reply(void *ctx, bool ok, const char *return_json, const struct daemon_error *err)
{
	struct pending *p = ctx;

	p->done = true;
	p->ok = ok;
	if (!ok)
		snprintf(p->message, sizeof p->message, "%s", err ? err->message : "failed");
	else if (return_json)
		p->ret = json_loads(return_json, 0, NULL);
}

static bool wait_all(struct isolde_daemon *d, struct pending *p, unsigned n)
{
	for (;;) {
		unsigned left = 0;
		for (unsigned i = 0; i < n; i++)
			left += !p[i].done;
		if (left == 0)
			return true;
		if (loop_once(daemon_loop(d), -1) < 0)
			return false;
	}
}

static void print_device(const json_t *ret, bool with_name)
{
	const char *name = json_string_value(json_object_get(ret, "name"));
	const char *image = json_string_value(json_object_get(ret, "image"));
	const char *driver = json_string_value(json_object_get(ret, "driver"));
	const char *notify = json_string_value(json_object_get(ret, "notify"));

	fprintf(stderr, "isolde serve: %s%s%s%s (%lld bytes) through driver %s pid %lld, notify %s%s\n",
		with_name ? "device " : "", with_name ? name : "", with_name ? ": " : "", image ? image : "?",
		(long long)json_integer_value(json_object_get(ret, "size")), driver ? driver : "?",
		(long long)json_integer_value(json_object_get(ret, "pid")), notify ? notify : "?",
		with_name ? "" : "; ready");
}

/* An error of a listener: its origin in front unless that is the option
 * its message starts with already. */
static void print_error(const char *origin, const char *option, const char *err)
{
	if (strcmp(origin, option) == 0 && strncmp(err, option, strlen(option)) == 0)
		fprintf(stderr, "isolde serve: %s\n", err);
	else
		fprintf(stderr, "isolde serve: %s: %s\n", origin, err);
}

/* ---- network devices ---- */

/*
 * Start every network device with its export (tap or vhost-user-net); each
 * has exactly one. Returns 0, or -1 having said which item is wrong (those
 * started are in started[0 .. *nstarted)).
 */
static int start_network(const struct plan *p, struct net_export **started, unsigned *nstarted)
{
	int paired[MAX_ITEMS];
	char buf[512], err[700];
	const char *netdev;

	for (unsigned k = 0; k < p->nnetdevs; k++)
		paired[k] = -1;
	for (unsigned i = 0; i < p->nexports; i++) {
		const struct item *e = &p->exports[i];
		if (!net_export_is(e->spec))
			continue;
		if (net_export_netdev(e->spec, buf, sizeof buf, &netdev, err, sizeof err)) {
			fprintf(stderr, "isolde serve: %s: %s\n", e->origin, err);
			return -1;
		}
		int k = -1;
		for (unsigned j = 0; j < p->nnetdevs; j++)
			if (netdev ? strcmp(p->netdevs[j].name, netdev) == 0 : p->nnetdevs == 1)
				k = (int)j;
		if (k < 0) {
			if (netdev)
				fprintf(stderr, "isolde serve: %s: no network device %s (--netdev %s,ifname=...)\n",
					e->origin, netdev, netdev);
			else
				fprintf(stderr, "isolde serve: %s: %s; add ,netdev=NAME\n", e->origin,
					p->nnetdevs ? "there is more than one network device"
						    : "no network device to export (--netdev NAME,ifname=IF)");
			return -1;
		}
		if (paired[k] >= 0) {
			fprintf(stderr, "isolde serve: %s %s: network device %s has an export already (%s %s); a "
				"network device has one export\n", e->origin, e->spec, p->netdevs[k].name,
				p->exports[paired[k]].origin, p->exports[paired[k]].spec);
			return -1;
		}
		paired[k] = (int)i;
	}
	for (unsigned k = 0; k < p->nnetdevs; k++) {
		if (paired[k] < 0) {
			fprintf(stderr, "isolde serve: %s: network device %s has no export (--export tap:IFNAME,"
				"netdev=%s or --export vhost-user-net:PATH,netdev=%s)\n", p->netdevs[k].origin,
				p->netdevs[k].name, p->netdevs[k].name, p->netdevs[k].name);
			return -1;
		}
	}
	for (unsigned k = 0; k < p->nnetdevs; k++) {
		const struct item *e = &p->exports[paired[k]];
		struct isolde_net_config cfg;
		struct net_export *x = NULL;
		isolde_net_config_default(&cfg);
		if (isolde_net_config_parse(&cfg, p->netdevs[k].spec, err, sizeof err) == 0)
			x = net_export_start(p->netdevs[k].name, &cfg, e->spec, err, sizeof err);
		isolde_net_config_free(&cfg);
		if (!x) {
			fprintf(stderr, "isolde serve: %s: %s\n", e->origin, err);
			return -1;
		}
		started[(*nstarted)++] = x;
		net_export_describe(x, err, sizeof err);
		fprintf(stderr, "isolde serve: %s\n", err);
	}
	return 0;
}

enum { OPT_POLICY = 256, OPT_DOMAIN, OPT_READONLY, OPT_DIRECT, OPT_CONTROL, OPT_URING_NO_NS, OPT_DEVICE, OPT_CONFIG,
       OPT_METRICS, OPT_NETDEV };

static int parse_args(struct plan *p, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "export", required_argument, NULL, 'e' },
		{ "device", required_argument, NULL, OPT_DEVICE },
		{ "netdev", required_argument, NULL, OPT_NETDEV },
		{ "config", required_argument, NULL, OPT_CONFIG },
		{ "metrics", required_argument, NULL, OPT_METRICS },
		{ "driver", required_argument, NULL, 'd' },
		{ "policy", required_argument, NULL, OPT_POLICY },
		{ "notify", required_argument, NULL, 'n' },
		{ "domain", required_argument, NULL, OPT_DOMAIN },
		{ "qd", required_argument, NULL, 'q' },
		{ "readonly", no_argument, NULL, OPT_READONLY },
		{ "direct", no_argument, NULL, OPT_DIRECT },
		{ "allow-uring-without-namespaces", no_argument, NULL, OPT_URING_NO_NS },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &serve_command;
	struct isolde_blk_config *cfg = &p->legacy_cfg;
	const char *legacy_flag = NULL;     /* one of the flags that only --image uses */
	uint64_t v;
	int c;

	isolde_blk_config_default(cfg);
	cfg->queue_depth = 64;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'i':
			if (cfg->image)
				return cli_usage_error(cmd, "--image given twice; for more devices use --device");
			cfg->image = optarg;
			break;
		case 'e':
			if (plan_add(p->exports, &p->nexports, optarg, "--export"))
				return cli_usage_error(cmd, "--export: at most %d", MAX_ITEMS);
			break;
		case OPT_DEVICE:
			if (plan_add_device(p, optarg, "--device"))
				return EXIT_USAGE;
			break;
		case OPT_NETDEV:
			if (plan_add_netdev(p, optarg, "--netdev"))
				return EXIT_USAGE;
			break;
		case OPT_CONFIG:
			if (read_config(p, optarg))
				return EXIT_USAGE;
			break;
		case OPT_METRICS:
			if (set_once(&p->metrics, p->metrics_origin, optarg, "--metrics", "metrics"))
				return EXIT_USAGE;
			break;
		case OPT_CONTROL:
			if (set_once(&p->control, p->control_origin, optarg, "--control", "control"))
				return EXIT_USAGE;
			break;
		case 'd': cfg->driver = optarg; legacy_flag = "--driver"; break;
		case OPT_POLICY: cfg->policy = optarg; legacy_flag = "--policy"; break;
		case OPT_DOMAIN:
			if (strcmp(optarg, "process") != 0 && strcmp(optarg, "vm") != 0)
				return cli_usage_error(cmd, "--domain: '%s' is not process or vm", optarg);
			cfg->domain = optarg;
			legacy_flag = "--domain";
			break;
		case 'n':
			if (isolde_notify_mode_parse(optarg, &cfg->notify))
				return cli_usage_error(cmd, "--notify: '%s' is not event, spin or hybrid", optarg);
			legacy_flag = "--notify";
			break;
		case 'q':
			if (!cli_parse_u64(cmd, "--qd", optarg, 1, ISOLDE_BLK_MAX_QUEUE_DEPTH, &v))
				return EXIT_USAGE;
			cfg->queue_depth = (unsigned)v;
			legacy_flag = "--qd";
			break;
		case OPT_READONLY: cfg->readonly = true; legacy_flag = "--readonly"; break;
		case OPT_DIRECT: cfg->direct = true; legacy_flag = "--direct"; break;
		case OPT_URING_NO_NS:
			cfg->uring_without_namespaces = true;
			legacy_flag = "--allow-uring-without-namespaces";
			break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	p->legacy = cfg->image != NULL;
	if (legacy_flag && !p->legacy)
		return cli_usage_error(cmd, "%s applies to --image; a --device takes its options in its spec "
				       "(NAME,image=PATH,driver=...)", legacy_flag);
	if (!p->legacy && p->ndevices == 0 && p->nnetdevs == 0)
		return cli_usage_error(cmd, "no device: give --image PATH, --device SPEC, --netdev SPEC or "
				       "--config FILE");
	if (p->nexports == 0 && !p->control)
		return cli_usage_error(cmd, "at least one --export is required (or a --control socket to "
				       "add exports later)");
	return -1;
}

static int run_serve_command(int argc, char **argv)
{
	static struct plan p; /* large; one per process */
	struct pending *dev_pending = NULL, *exp_pending = NULL;
	struct control *ctl = NULL;
	struct metrics_http *metrics = NULL;
	struct isolde_daemon *d = NULL;
	static struct net_export *taps[MAX_ITEMS];
	unsigned ntaps = 0;
	char err[512];
	int rc;

	/* A server of many devices and clients needs more than the usual soft
	 * limit of 1024 descriptors; take what the hard limit allows. Drivers
	 * get their own, small limit from their policy. */
	struct rlimit nofile;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
		nofile.rlim_cur = nofile.rlim_max;
		setrlimit(RLIMIT_NOFILE, &nofile);
	}
	memset(&p, 0, sizeof p);
	if ((rc = parse_args(&p, argc, argv)) >= 0) {
		plan_free(&p);
		return rc;
	}
	rc = 1;
	unsigned ndev = p.ndevices + p.legacy;
	dev_pending = calloc(ndev ? ndev : 1, sizeof *dev_pending);
	exp_pending = calloc(p.nexports ? p.nexports : 1, sizeof *exp_pending);
	if (!dev_pending || !exp_pending || !(d = daemon_create(err, sizeof err))) {
		fprintf(stderr, "isolde serve: %s\n", d || !dev_pending || !exp_pending ? "out of memory" : err);
		goto out;
	}

	/* Listeners first: a bad address is reported before any driver starts.
	 * Their errors name the address already. */
	if (p.control && !(ctl = control_start(d, p.control, err, sizeof err))) {
		print_error(p.control_origin, "--control", err);
		goto out;
	}
	if (p.metrics) {
		if (!(metrics = metrics_http_start(d, p.metrics, err, sizeof err))) {
			print_error(p.metrics_origin, "--metrics", err);
			goto out;
		}
		fprintf(stderr, "isolde serve: metrics on %s\n", metrics_http_address(metrics));
	}
	/* Devices open in parallel, each in its thread; all must be up. */
	if (p.legacy)
		daemon_device_add_config(d, LEGACY_DEVICE, &p.legacy_cfg, on_reply, &dev_pending[p.ndevices]);
	for (unsigned i = 0; i < p.ndevices; i++)
		daemon_device_add(d, p.devices[i].spec, on_reply, &dev_pending[i]);
	if (!wait_all(d, dev_pending, ndev))
		goto out;
	bool ok = true;
	for (unsigned i = 0; i < ndev; i++) {
		if (!dev_pending[i].ok) {
			fprintf(stderr, "isolde serve: %s%s%s\n", i < p.ndevices ? p.devices[i].origin : "",
				i < p.ndevices ? ": " : "", dev_pending[i].message);
			ok = false;
		}
	}
	if (!ok)
		goto out;
	if (start_network(&p, taps, &ntaps))
		goto out;
	for (unsigned i = 0; i < p.nexports; i++) {
		if (net_export_is(p.exports[i].spec))
			continue;
		daemon_export_add(d, p.exports[i].spec, on_reply, &exp_pending[i]);
		/* One at a time: an export that fails stops the start, and the
		 * ones after it are not set up. */
		if (!wait_all(d, &exp_pending[i], 1))
			goto out;
		if (!exp_pending[i].ok) {
			fprintf(stderr, "isolde serve: %s: %s\n", p.exports[i].origin, exp_pending[i].message);
			goto out;
		}
	}
	if (ndev == 0) {
		fprintf(stderr, "isolde serve: %u network device%s; ready\n", ntaps, ntaps == 1 ? "" : "s");
	} else if (ndev == 1 && ntaps == 0) {
		print_device(dev_pending[0].ret, false);
	} else {
		for (unsigned i = 0; i < ndev; i++)
			print_device(dev_pending[i].ret, true);
		fprintf(stderr, "isolde serve: %u devices; ready\n", ndev + ntaps);
	}
	rc = daemon_run(d);
	fprintf(stderr, "isolde serve: stopped\n");
out:
	for (unsigned i = 0; i < ntaps; i++)
		net_export_stop(taps[i]);
	metrics_http_stop(metrics);
	control_stop(ctl);
	daemon_destroy(d);
	for (unsigned i = 0; dev_pending && i < ndev; i++)
		json_decref(dev_pending[i].ret);
	for (unsigned i = 0; exp_pending && i < p.nexports; i++)
		json_decref(exp_pending[i].ret);
	free(dev_pending);
	free(exp_pending);
	plan_free(&p);
	return rc;
}
