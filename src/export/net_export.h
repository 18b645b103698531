/* SPDX-License-Identifier: MIT */
/*
 * A network device's export, whichever it is: tap:IFNAME (tap_export.c) or
 * vhost-user-net:PATH (vhost_net.c). Each network device of isolde serve
 * has exactly one; this is where serve finds which.
 */
#ifndef ISOLDE_EXPORT_NET_EXPORT_H
#define ISOLDE_EXPORT_NET_EXPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "isolde/net.h"

struct net_export;

/* Whether spec is a network export's (by its scheme). */
bool net_export_is(const char *spec);
/* Check spec; *netdev is the network device it names (in buf, of buflen
 * bytes), NULL if it names none. 0, or -1 with err. */
int net_export_netdev(const char *spec, char *buf, size_t buflen, const char **netdev, char *err, size_t errlen);
/* Open the network device of cfg, named name, behind the export of spec. */
struct net_export *net_export_start(const char *name, const struct isolde_net_config *cfg, const char *spec,
				    char *err, size_t errlen);
void net_export_describe(const struct net_export *x, char *buf, size_t len);
void net_export_stop(struct net_export *x);
/* The line isolde serve prints of a network device when it stops. */
void net_export_report(const char *name, const struct isolde_net *net);

#endif
