/* SPDX-License-Identifier: MIT */
/*
 * Whether isolde runs from the build tree it was built in: then drivers
 * (launcher.c) and policies (policy.c) are taken from the tree, not from
 * where they are installed. Its own file so that neither of the two
 * depends on the other for it.
 */
#ifndef ISOLDE_DOMAIN_BUILD_TREE_H
#define ISOLDE_DOMAIN_BUILD_TREE_H

#include <stdbool.h>

bool isolde_running_from_build_tree(void);

#endif
