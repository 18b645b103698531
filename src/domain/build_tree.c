// SPDX-License-Identifier: MIT
#include "build_tree.h"

#include <limits.h>
#include <string.h>
#include <unistd.h>

bool isolde_running_from_build_tree(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	size_t root_len = strlen(ISOLDE_BUILD_ROOT);

	if (n <= 0 || root_len == 0)
		return false;
	exe[n] = '\0';
	return strncmp(exe, ISOLDE_BUILD_ROOT, root_len) == 0 && exe[root_len] == '/';
}
