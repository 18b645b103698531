// SPDX-License-Identifier: MIT
#include "blk_file.h"

static const struct isolde_driver_ops blk_file_ops = {
	.name = "blk-file",
	.init = blk_file_init,
	.io = blk_file_io,
};

int main(int argc, char **argv)
{
	return isolde_driver_main(argc, argv, &blk_file_ops);
}
