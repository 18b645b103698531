// SPDX-License-Identifier: MIT
#include "backend.h"

/* blk_nbd.c */
extern const struct isolde_driver_ops blk_nbd_ops;

int main(int argc, char **argv)
{
	return isolde_driver_main(argc, argv, &blk_nbd_ops);
}
