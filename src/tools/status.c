// SPDX-License-Identifier: MIT
/* isolde status: ask a running `isolde serve` how its driver is doing. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"

static int run_status_command(int argc, char **argv);

const struct cli_command status_command = {
	.name = "status",
	.summary = "show the driver of a running isolde serve: state, restarts, denials, I/O",
	.usage =
	"usage: isolde status --control SOCK [--json]\n"
	"\n"
	"Asks the isolde serve listening on SOCK (its --control) for the driver's\n"
	"state, notify mode, generation, restarts by reason, replayed requests,\n"
	"policy denials, I/O counters and exports.\n"
	"\n"
	"  --control SOCK   the server's control socket (required)\n"
	"  --json           print the server's JSON object as it is\n"
	"  -h, --help       this text\n",
	.run = run_status_command,
};

/* Find "key": in a flat JSON text and return what follows; good enough for
 * the object our own server writes. */
static const char *field(const char *json, const char *key)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\": ", key);
	const char *p = strstr(json, pat);
	return p ? p + strlen(pat) : "?";
}

static void print_field(const char *label, const char *json, const char *key)
{
	const char *v = field(json, key);
	size_t n = strcspn(v, ",}\n");
	printf("%-22s %.*s\n", label, (int)n, v);
}

static int run_status_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &status_command;
	const char *path = NULL;
	bool json = false;
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'j': json = true; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (!path)
		return cli_usage_error(cmd, "--control is required");

	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof addr.sun_path)
		return cli_usage_error(cmd, "--control: path too long");
	memcpy(addr.sun_path, path, strlen(path));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
		fprintf(stderr, "isolde status: cannot reach a server at %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	char buf[65536];
	size_t len = 0;
	if (write(fd, "status\n", 7) != 7) {
		fprintf(stderr, "isolde status: %s: %s\n", path, strerror(errno));
		close(fd);
		return 1;
	}
	for (ssize_t n; len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0;)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	if (len == 0) {
		fprintf(stderr, "isolde status: %s answered nothing\n", path);
		return 1;
	}
	if (json) {
		fputs(buf, stdout);
		return 0;
	}
	print_field("driver", buf, "driver");
	print_field("state", buf, "state");
	print_field("pid", buf, "pid");
	print_field("notify", buf, "notify");
	print_field("generation", buf, "generation");
	print_field("restarts", buf, "restarts");
	const char *by = field(buf, "restarts_by_reason");
	printf("%-22s %.*s\n", "restarts by reason", (int)strcspn(by, "}") + 1, by);
	print_field("replayed requests", buf, "replayed");
	print_field("policy denials", buf, "denials");
	print_field("requests done", buf, "requests");
	print_field("request errors", buf, "errors");
	print_field("in flight", buf, "inflight");
	print_field("error", buf, "error");
	const char *ex = field(buf, "exports");
	printf("%-22s %.*s\n", "exports", (int)strcspn(ex, "\n"), ex);
	return 0;
}
