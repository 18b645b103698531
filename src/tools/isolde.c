// SPDX-License-Identifier: MIT
/* The isolde command: one binary, a subcommand per job. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct cli_command *const commands[] = {
	&verify_command,
	&demo_command,
	&policy_command,
	&bench_command,
	&serve_command,
	&status_command,
	&ctl_command,
	&inject_command,
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
	fputs("usage: isolde COMMAND [OPTIONS]\n\n"
	      "Runs block drivers in isolated driver domains: separate processes that\n"
	      "serve the front end through shared-memory rings.\n\n"
	      "commands:\n", f);
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-8s %s\n", commands[i]->name, commands[i]->summary);
	fputs("\n'isolde COMMAND --help' describes a command.\n", f);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs("isolde: no command given\n\n", stderr);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		puts("isolde " ISOLDE_VERSION);
		return 0;
	}
	for (size_t i = 0; i < NCOMMANDS; i++) {
		if (strcmp(argv[1], commands[i]->name) == 0)
			return commands[i]->run(argc - 1, argv + 1);
	}
	fprintf(stderr, "isolde: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
