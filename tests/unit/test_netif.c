// SPDX-License-Identifier: MIT
/* The network ring's shared checks: the offload description (both sides
 * use it on what the other wrote) and a network device's header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "isolde/netif.h"
#include "isolde/shm.h"
#include "isolde/grant.h"

static const struct isolde_netif_offload none;

static void test_plain_frame_lengths(void **state)
{
	(void)state;
	assert_null(isolde_netif_offload_check(&none, 14, 0));
	assert_null(isolde_netif_offload_check(&none, ISOLDE_NETIF_MAX_FRAME, 0));
	assert_string_equal(isolde_netif_offload_check(&none, 13, 0), "length");
	assert_string_equal(isolde_netif_offload_check(&none, 0, 0), "length");
	assert_string_equal(isolde_netif_offload_check(&none, ISOLDE_NETIF_MAX_FRAME + 1, 0), "length");
	assert_string_equal(isolde_netif_offload_check(&none, UINT32_MAX, ISOLDE_NETIF_F_ALL), "length");
}

static void test_checksum_offload(void **state)
{
	(void)state;
	struct isolde_netif_offload o = { .flags = ISOLDE_NETIF_O_NEEDS_CSUM, .csum_start = 34, .csum_offset = 16 };
	assert_null(isolde_netif_offload_check(&o, 100, ISOLDE_NETIF_F_CSUM));
	/* Not negotiated. */
	assert_string_equal(isolde_netif_offload_check(&o, 100, 0), "offload.flags");
	/* The checksum's place must be inside the frame, even at 16-bit wrap. */
	assert_string_equal(isolde_netif_offload_check(&o, 51, ISOLDE_NETIF_F_CSUM), "offload.csum_offset");
	o.csum_start = 0xffff;
	o.csum_offset = 0xffff;
	assert_string_equal(isolde_netif_offload_check(&o, 1000, ISOLDE_NETIF_F_CSUM), "offload.csum_offset");
	struct isolde_netif_offload bad = { .flags = 0x80 };
	assert_string_equal(isolde_netif_offload_check(&bad, 100, ISOLDE_NETIF_F_ALL), "offload.flags");
	struct isolde_netif_offload valid = { .flags = ISOLDE_NETIF_O_DATA_VALID };
	assert_null(isolde_netif_offload_check(&valid, 100, 0));
	struct isolde_netif_offload res = { .reserved = 1 };
	assert_string_equal(isolde_netif_offload_check(&res, 100, ISOLDE_NETIF_F_ALL), "offload.reserved");
}

static void test_segmentation_offload(void **state)
{
	(void)state;
	struct isolde_netif_offload o = { .flags = ISOLDE_NETIF_O_NEEDS_CSUM, .gso_type = ISOLDE_NETIF_GSO_TCPV4,
					  .hdr_len = 66, .gso_size = 1448, .csum_start = 34, .csum_offset = 16 };
	assert_null(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_ALL));
	assert_string_equal(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_CSUM | ISOLDE_NETIF_F_TSO6),
			    "offload.gso_type");
	o.gso_type = ISOLDE_NETIF_GSO_TCPV6 | ISOLDE_NETIF_GSO_ECN;
	assert_null(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_ALL));
	o.gso_type = 3; /* UDP: never negotiated */
	assert_string_equal(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_ALL), "offload.gso_type");
	o.gso_type = ISOLDE_NETIF_GSO_TCPV4;
	o.gso_size = 0;
	assert_string_equal(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_ALL), "offload.gso_size");
	o.gso_size = 1448;
	o.flags = 0; /* a segment without its checksum to finish */
	assert_string_equal(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_ALL), "offload.flags");
	o.flags = ISOLDE_NETIF_O_NEEDS_CSUM;
	o.hdr_len = 65001;
	assert_string_equal(isolde_netif_offload_check(&o, 65000, ISOLDE_NETIF_F_ALL), "offload.hdr_len");
	struct isolde_netif_offload nogso = { .gso_size = 1448 };
	assert_string_equal(isolde_netif_offload_check(&nogso, 100, ISOLDE_NETIF_F_ALL), "offload.gso_type");
	struct isolde_netif_offload ecn_alone = { .gso_type = ISOLDE_NETIF_GSO_ECN };
	assert_string_equal(isolde_netif_offload_check(&ecn_alone, 100, ISOLDE_NETIF_F_ALL), "offload.gso_type");
}

static void net_header(struct isolde_shm_header *h, struct isolde_shm_layout *l, uint32_t slots)
{
	assert_int_equal(isolde_shm_layout_compute_net(l, slots, 0), 0);
	memset(h, 0, sizeof *h);
	h->magic = ISOLDE_SHM_MAGIC;
	h->version = ISOLDE_SHM_VERSION;
	h->header_size = sizeof *h;
	h->total_size = l->total_size;
	h->ring_offset = l->ring_offset;
	h->ring_slots = slots;
	h->slot_size = ISOLDE_NETIF_SLOT_SIZE;
	h->grant_offset = l->grant_offset;
	h->grant_count = l->grant_count;
	h->max_segs = 1;
	h->data_offset = l->data_offset;
	h->data_size = l->data_size;
	h->device_class = ISOLDE_CLASS_NET;
	h->rx_ring_offset = l->rx_ring_offset;
	h->buf_size = ISOLDE_NETIF_BUF_SIZE;
	h->net_features = ISOLDE_NETIF_F_ALL;
	h->mtu = 1500;
}

static void test_net_layout(void **state)
{
	(void)state;
	struct isolde_shm_layout l;
	struct isolde_shm_header h;

	net_header(&h, &l, 256);
	assert_int_equal(l.grant_count, 512);
	assert_true(l.rx_ring_offset >= l.ring_offset + isolde_sring_size(256, ISOLDE_NETIF_SLOT_SIZE));
	assert_true(l.grant_offset >= l.rx_ring_offset + isolde_sring_size(256, ISOLDE_NETIF_SLOT_SIZE));
	assert_true(l.data_size >= 512ull * ISOLDE_NETIF_BUF_SIZE);
	assert_null(isolde_shm_header_check(&h, l.total_size));
	assert_int_not_equal(isolde_shm_layout_compute_net(&l, 3, 0), 0);
	assert_int_not_equal(isolde_shm_layout_compute_net(&l, 2048, 0), 0);
}

static void test_net_header_fields_are_checked(void **state)
{
	(void)state;
	struct isolde_shm_layout l;
	struct isolde_shm_header h, g;

	net_header(&h, &l, 64);
	g = h; g.slot_size = 128;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "slot_size");
	g = h; g.rx_ring_offset = h.ring_offset; /* the rings overlap */
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "rx_ring_offset");
	g = h; g.rx_ring_offset = l.total_size;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "rx_ring_offset");
	g = h; g.grant_count = 64; /* one grant per buffer of each ring */
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "grant_offset");
	g = h; g.buf_size = 4096;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "buf_size");
	g = h; g.data_size = 64ull * ISOLDE_NETIF_BUF_SIZE; /* room for the TX buffers only */
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "data_offset");
	g = h; g.net_features = 0x100;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "net_features");
	g = h; g.mtu = 10;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "mtu");
	g = h; g.device_size = 4096;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "device_size");
	g = h; g.device_class = 7;
	assert_string_equal(isolde_shm_header_check(&g, l.total_size), "device_class");
	/* A block header may not carry network fields. */
	struct isolde_shm_layout bl;
	assert_int_equal(isolde_shm_layout_compute(&bl, 32, 1 << 20), 0);
	g = h;
	g.device_class = ISOLDE_CLASS_BLOCK;
	assert_non_null(isolde_shm_header_check(&g, l.total_size));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_frame_lengths),
		cmocka_unit_test(test_checksum_offload),
		cmocka_unit_test(test_segmentation_offload),
		cmocka_unit_test(test_net_layout),
		cmocka_unit_test(test_net_header_fields_are_checked),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
