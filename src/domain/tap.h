/* SPDX-License-Identifier: MIT */
/*
 * TAP devices (tap.c): the trusted side opens them, never a driver. A network
 * driver's device is a TAP fd the launcher opened in the network namespace
 * the user named; the tap export's device is another. Both carry frames with
 * a virtio_net_hdr (IFF_VNET_HDR) and the offloads asked for.
 */
#ifndef ISOLDE_DOMAIN_TAP_H
#define ISOLDE_DOMAIN_TAP_H

#include <stddef.h>
#include <stdint.h>

#define ISOLDE_TAP_VNET_HDR 10u /* sizeof(struct virtio_net_hdr) */

/*
 * Open (creating it if it does not exist) the TAP device ifname in the
 * network namespace netns (a name under /run/netns, as ip-netns(8) makes
 * them; NULL or "" for the caller's own), non-blocking, with a vnet header
 * and the offloads in features (ISOLDE_NETIF_F_*), set its MTU if mtu is not
 * 0, and bring it up. Returns the fd, or -1 with err naming what failed.
 */
int isolde_tap_open(const char *ifname, const char *netns, uint32_t features, uint32_t mtu,
		    char *err, size_t errlen);

/* Check an interface or namespace name before anything is opened: 0, or -1
 * with err saying what is wrong with it (what names the field). */
int isolde_tap_check_ifname(const char *ifname, const char *what, char *err, size_t errlen);
int isolde_tap_check_netns(const char *netns, const char *what, char *err, size_t errlen);

#endif
