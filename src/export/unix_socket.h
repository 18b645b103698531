/* SPDX-License-Identifier: MIT */
/* Listening Unix sockets for exports and the control socket. */
#ifndef ISOLDE_EXPORT_UNIX_SOCKET_H
#define ISOLDE_EXPORT_UNIX_SOCKET_H

#include <stddef.h>

/*
 * Bind and listen on PATH (non-blocking, close-on-exec, mode 0600). A stale
 * socket file that nobody listens on is replaced; a live one is an error, as
 * is any other file at PATH. Returns the fd, or -1 with err.
 */
int unix_listen(const char *path, char *err, size_t errlen);

#endif
