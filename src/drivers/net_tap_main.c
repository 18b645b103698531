// SPDX-License-Identifier: MIT
#include "net_tap.h"

int main(int argc, char **argv)
{
	return net_tap_main(argc, argv, "net-tap", NULL);
}
