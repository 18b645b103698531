// SPDX-License-Identifier: MIT
#include "uring_attach.h"

#include <string.h>

static int hex_value(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int isolde_driver_map_uring(struct isolde_driver *drv, struct io_uring *ring)
{
	struct io_uring_params p;
	unsigned char *bytes = (unsigned char *)&p;
	const char *hex = drv->uring_params_hex;
	int r;

	if (drv->uring_fd < 0 || !hex || strlen(hex) != 2 * sizeof p) {
		isolde_driver_log(drv, "no io_uring from the launcher (--uring-fd, --uring-params); "
				  "the policy must grant 'uring'");
		return -1;
	}
	for (size_t i = 0; i < sizeof p; i++) {
		int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			isolde_driver_log(drv, "--uring-params is not hex");
			return -1;
		}
		bytes[i] = (unsigned char)(hi << 4 | lo);
	}
	if ((r = io_uring_queue_mmap(drv->uring_fd, &p, ring)) < 0) {
		isolde_driver_log(drv, "cannot map the launcher's io_uring: %s", strerror(-r));
		return -1;
	}
	return 0;
}
