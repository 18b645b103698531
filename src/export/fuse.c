// SPDX-License-Identifier: MIT
/* Placeholder until the fuse export lands. */
#include "server.h"

static int start(struct isolde_server *srv, const char *spec, void **state, char *err, size_t errlen)
{
	(void)srv;
	(void)spec;
	(void)state;
	snprintf(err, errlen, "the fuse export is not built yet");
	return -1;
}

static void nothing(void *state) { (void)state; }
static void describe(void *state, FILE *f) { (void)state; fputs("{}", f); }

const struct export_ops fuse_export_ops = {
	.scheme = "fuse", .start = start, .quiesce = nothing, .stop = nothing, .describe = describe,
};
