// SPDX-License-Identifier: MIT
#include "blk_uring.h"

static const struct isolde_driver_ops blk_uring_ops = {
	.name = "blk-uring",
	.init = blk_uring_init,
	.submit = blk_uring_submit,
	.reap = blk_uring_reap,
	.completion_pending = blk_uring_completion_pending,
};

int main(int argc, char **argv)
{
	return isolde_driver_main(argc, argv, &blk_uring_ops);
}
