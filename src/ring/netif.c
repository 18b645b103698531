// SPDX-License-Identifier: MIT
/* The one check of a frame's offload description, for both sides of a
 * network ring (isolde/netif.h). */
#include "isolde/netif.h"

#include <stddef.h>

const char *isolde_netif_offload_check(const struct isolde_netif_offload *o, uint32_t length,
				       uint32_t features)
{
	if (length < ISOLDE_NETIF_MIN_FRAME || length > ISOLDE_NETIF_MAX_FRAME)
		return "length";
	if (o->flags & ~(unsigned)(ISOLDE_NETIF_O_NEEDS_CSUM | ISOLDE_NETIF_O_DATA_VALID))
		return "offload.flags";
	if (o->flags & ISOLDE_NETIF_O_NEEDS_CSUM) {
		if (!(features & ISOLDE_NETIF_F_CSUM))
			return "offload.flags";
		if ((uint32_t)o->csum_start + o->csum_offset + 2u > length)
			return "offload.csum_offset";
	}
	if (o->hdr_len > length)
		return "offload.hdr_len";
	if (o->reserved)
		return "offload.reserved";
	unsigned gso = o->gso_type & ~ISOLDE_NETIF_GSO_ECN;
	if (gso == ISOLDE_NETIF_GSO_NONE) {
		if (o->gso_type != ISOLDE_NETIF_GSO_NONE || o->gso_size != 0)
			return "offload.gso_type";
		return NULL;
	}
	if ((gso == ISOLDE_NETIF_GSO_TCPV4 && !(features & ISOLDE_NETIF_F_TSO4)) ||
	    (gso == ISOLDE_NETIF_GSO_TCPV6 && !(features & ISOLDE_NETIF_F_TSO6)) ||
	    (gso != ISOLDE_NETIF_GSO_TCPV4 && gso != ISOLDE_NETIF_GSO_TCPV6))
		return "offload.gso_type";
	/* A segment the receiver cuts must carry its checksum to it. */
	if (!(o->flags & ISOLDE_NETIF_O_NEEDS_CSUM))
		return "offload.flags";
	if (o->gso_size == 0)
		return "offload.gso_size";
	return NULL;
}
