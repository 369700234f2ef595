/*
 * net - plain sockets for tests: a free loopback port, and raw stream
 * connections to an nng listener (ipc:// or tcp://) that never speak SP.
 *
 * Threads: any.
 */
#ifndef LMSCHED_KIT_NET_H
#define LMSCHED_KIT_NET_H

#include <stddef.h>
#include <sys/types.h>

/* A loopback TCP port nobody listens on right now, or -1. */
int kit_net_free_port(void);

/* A connected stream socket to the listener of url: ipc://PATH (a Unix
 * socket) or tcp://127.0.0.1:PORT. Returns the fd, or -1. */
int kit_net_connect(const char *url);

/* send() that never raises SIGPIPE. Returns what send returns. */
ssize_t kit_net_send(int fd, const void *buf, size_t len);

#endif
