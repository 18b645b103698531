/* SPDX-License-Identifier: MIT */
/*
 * The tap export (tap_export.c): an isolated network driver put between the
 * host's network stack and the wire. The export opens a TAP device of its
 * own (the host's side); every frame the host sends to it goes through the
 * TX ring to the driver, which puts it on the driver's TAP (the wire); every
 * frame from the wire comes back through the RX ring and is written to the
 * export's TAP. One thread per network device runs it.
 */
#ifndef ISOLDE_EXPORT_TAP_EXPORT_H
#define ISOLDE_EXPORT_TAP_EXPORT_H

#include <stddef.h>

#include "isolde/net.h"

struct tap_export;

/*
 * Parse "tap:IFNAME[,netns=NS][,netdev=NAME]" into its parts (pointing into
 * buf, a copy of spec of buflen bytes). Returns 0, or -1 with err naming the
 * bad field.
 */
int tap_export_parse(const char *spec, char *buf, size_t buflen, const char **ifname, const char **netns,
		     const char **netdev, char *err, size_t errlen);

/* Open the network device of cfg (its driver started) and the export's
 * TAP, and start the thread that moves frames between them. */
struct tap_export *tap_export_start(const char *name, const struct isolde_net_config *cfg, const char *ifname,
				    const char *netns, char *err, size_t errlen);
/* What the device says about itself, for the start message. */
void tap_export_describe(const struct tap_export *x, char *buf, size_t len);
/* Stop the thread, close the device (its driver stopped) and the TAP. */
void tap_export_stop(struct tap_export *x);

#endif
