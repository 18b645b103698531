// SPDX-License-Identifier: MIT
/* isolde policy check FILE | show DRIVER */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "isolde/policy.h"

static int run_policy_command(int argc, char **argv);

const struct cli_command policy_command = {
	.name = "policy",
	.summary = "check a driver policy file, or show the policy a driver runs under",
	.usage =
	"usage: isolde policy check FILE\n"
	"       isolde policy show DRIVER\n"
	"\n"
	"check  parses FILE and reports the file, line and field of the first error;\n"
	"       exits 0 if the policy is valid, 1 if not.\n"
	"show   prints the effective policy of DRIVER (blk-file, ...) and where it\n"
	"       was found ($ISOLDE_POLICY_DIR, the source tree, or the installed\n"
	"       policies).\n"
	"\n"
	"A policy is lines of 'key value...'; every key is required, once:\n"
	"  driver     NAME             the driver it is for\n"
	"  device     read-only|read-write\n"
	"  syscalls   base [io] [sync] [uring]\n"
	"  memory     SIZE             address space beyond the shared memory, e.g. 64M\n"
	"  files      N                open file limit\n"
	"  heartbeat  DURATION         no progress this long with I/O pending = hang\n"
	"  restart    N per Ss         at most N restarts in S whole seconds\n"
	"  crash-loop N                give up after N restarts in a row that completed\n"
	"                              no request\n",
	.run = run_policy_command,
};

static int run_policy_command(int argc, char **argv)
{
	const struct cli_command *cmd = &policy_command;
	struct isolde_policy p;
	char err[512], path[PATH_MAX], text[1024];

	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))
		return cli_help(cmd);
	if (argc != 3)
		return cli_usage_error(cmd, argc < 3 ? "missing argument" : "unexpected argument '%s'",
				       argc > 3 ? argv[3] : "");
	if (strcmp(argv[1], "check") == 0) {
		if (isolde_policy_load(&p, argv[2], err, sizeof err)) {
			fprintf(stderr, "isolde policy: %s\n", err);
			return 1;
		}
		printf("%s: valid policy for driver %s\n", argv[2], p.driver);
		return 0;
	}
	if (strcmp(argv[1], "show") == 0) {
		if (isolde_policy_find(argv[2], path, sizeof path, err, sizeof err) ||
		    isolde_policy_load(&p, path, err, sizeof err)) {
			fprintf(stderr, "isolde policy: %s\n", err);
			return 1;
		}
		isolde_policy_format(&p, text, sizeof text);
		fputs(text, stdout);
		return 0;
	}
	return cli_usage_error(cmd, "unknown action '%s' (check or show)", argv[1]);
}
