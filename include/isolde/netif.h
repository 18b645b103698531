/* SPDX-License-Identifier: MIT */
/*
 * isolde/netif.h - the network protocol carried on two isolde rings (cf. Xen
 * netif.h). A network driver domain's shared memory holds
 *
 *   ring_offset     the TX ring: the front end asks the driver to send a
 *                   frame; the driver answers when it is done with it
 *   rx_ring_offset  the RX ring: the front end posts an empty buffer; the
 *                   driver answers with a frame it received in it
 *
 * Both rings have ring_slots slots of ISOLDE_NETIF_SLOT_SIZE bytes, and the
 * same indices, event indices and hold-off as a block ring (isolde/ring.h);
 * one kick eventfd wakes the driver for either ring, one call eventfd wakes
 * the front end. Buffer b of the TX ring (0 <= b < ring_slots) is grant b,
 * of the RX ring grant ring_slots + b, each ISOLDE_NETIF_BUF_SIZE bytes of
 * the data area; a TX grant lets the driver read, an RX grant write.
 *
 * A frame is an Ethernet frame without preamble or FCS. Its offload
 * description (struct isolde_netif_offload) has the meaning of a
 * virtio_net_hdr: a frame may leave its checksum to the receiver
 * (NEEDS_CSUM: csum_start, csum_offset) and may be a TCP segment larger than
 * the MTU that the receiver cuts into gso_size pieces (GSO). Only the offloads
 * in the header's net_features may appear; a driver's RX answer that uses
 * another, or that is malformed in any other way, is a protocol violation.
 *
 * Request ids are opaque to the driver; the front end puts the buffer number
 * in their low 16 bits and checks every answer's id against its private
 * record of what it posted.
 */
#ifndef ISOLDE_NETIF_H
#define ISOLDE_NETIF_H

#include <stdint.h>

#define ISOLDE_NETIF_SLOT_SIZE 32u
/* Room for the largest GSO frame (64 KiB of IP packet and an Ethernet and
 * VLAN header), page-rounded. */
#define ISOLDE_NETIF_BUF_SIZE (68u * 1024u)
#define ISOLDE_NETIF_MAX_FRAME (65535u + 14u + 4u)
#define ISOLDE_NETIF_MIN_FRAME 14u /* an Ethernet header */
#define ISOLDE_NETIF_DEFAULT_MTU 1500u

/* offload.flags (VIRTIO_NET_HDR_F_*) */
#define ISOLDE_NETIF_O_NEEDS_CSUM 0x1u /* checksum from csum_start, stored at +csum_offset */
#define ISOLDE_NETIF_O_DATA_VALID 0x2u /* RX: the checksum was checked */
/* offload.gso_type (VIRTIO_NET_HDR_GSO_*) */
#define ISOLDE_NETIF_GSO_NONE 0u
#define ISOLDE_NETIF_GSO_TCPV4 1u
#define ISOLDE_NETIF_GSO_TCPV6 4u
#define ISOLDE_NETIF_GSO_ECN 0x80u

/* net_features: what the device was set up to carry (TUNSETOFFLOAD) */
#define ISOLDE_NETIF_F_CSUM 0x1u
#define ISOLDE_NETIF_F_TSO4 0x2u
#define ISOLDE_NETIF_F_TSO6 0x4u
#define ISOLDE_NETIF_F_ALL (ISOLDE_NETIF_F_CSUM | ISOLDE_NETIF_F_TSO4 | ISOLDE_NETIF_F_TSO6)

struct isolde_netif_offload {
	uint8_t flags;
	uint8_t gso_type;
	uint16_t hdr_len;     /* GSO: bytes of headers before the payload */
	uint16_t gso_size;    /* GSO: payload bytes per segment */
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t reserved;
};
_Static_assert(sizeof(struct isolde_netif_offload) == 12, "offload size");

enum isolde_netif_status {
	ISOLDE_NETIF_S_OK = 0,
	ISOLDE_NETIF_S_ERROR = 1,   /* TX: the device refused the frame (dropped) */
	ISOLDE_NETIF_S_INVALID = 2, /* TX: the request was malformed */
	ISOLDE_NETIF_S_MAX = ISOLDE_NETIF_S_INVALID,
};

struct isolde_netif_tx_request {
	uint64_t id;
	uint32_t gref;   /* the buffer's grant; the frame starts at its offset 0 */
	uint32_t length; /* ISOLDE_NETIF_MIN_FRAME .. ISOLDE_NETIF_MAX_FRAME */
	struct isolde_netif_offload offload;
	uint32_t reserved;
};

struct isolde_netif_tx_response {
	uint64_t id;
	uint8_t status; /* enum isolde_netif_status */
	uint8_t reserved[7];
};

struct isolde_netif_rx_request {
	uint64_t id;
	uint32_t gref; /* an empty buffer of ISOLDE_NETIF_BUF_SIZE bytes */
	uint32_t reserved;
};

struct isolde_netif_rx_response {
	uint64_t id;
	uint32_t length; /* bytes of frame at the buffer's start */
	uint8_t status;  /* ISOLDE_NETIF_S_OK; anything else returns the buffer unused */
	uint8_t reserved[3];
	struct isolde_netif_offload offload;
	uint32_t reserved2;
};

_Static_assert(sizeof(struct isolde_netif_tx_request) == ISOLDE_NETIF_SLOT_SIZE, "tx request");
_Static_assert(sizeof(struct isolde_netif_tx_response) <= ISOLDE_NETIF_SLOT_SIZE, "tx response");
_Static_assert(sizeof(struct isolde_netif_rx_request) <= ISOLDE_NETIF_SLOT_SIZE, "rx request");
_Static_assert(sizeof(struct isolde_netif_rx_response) == ISOLDE_NETIF_SLOT_SIZE, "rx response");

/*
 * Check an offload description for a frame of `length` bytes against the
 * features the device carries. Returns NULL, or the name of the first field
 * that is wrong. Both sides use it: the driver on TX requests, the front end
 * on RX answers.
 */
const char *isolde_netif_offload_check(const struct isolde_netif_offload *o, uint32_t length,
				       uint32_t features);

#endif
