// SPDX-License-Identifier: MIT
#include "backend.h"

extern const struct isolde_driver_ops blk_rbd_ops; /* blk_rbd.c */

int main(int argc, char **argv)
{
	return isolde_driver_main(argc, argv, &blk_rbd_ops);
}
