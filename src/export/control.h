/* SPDX-License-Identifier: MIT */
/*
 * The control socket of `isolde serve`: a Unix socket on which a client
 * sends one line, "status", and gets one JSON object back (what
 * `isolde status` prints). Up to 64 clients at a time. One that has not
 * sent its line within 2 s is dropped; one that sends more than 62
 * characters before its newline is told so and dropped. A newcomer finding
 * every slot taken gets the one of the client idle longest, so idle
 * connections cannot keep `isolde status` out.
 */
#ifndef ISOLDE_EXPORT_CONTROL_H
#define ISOLDE_EXPORT_CONTROL_H

#include <stddef.h>
#include <stdio.h>

struct isolde_server;
struct control;

struct control *control_start(struct isolde_server *s, const char *path, char *err, size_t errlen);
void control_stop(struct control *c);
/* The status object itself (also used by tests through the socket). */
void control_write_status(struct isolde_server *s, FILE *f);

#endif
