/*
 * net - plain sockets (see net.h).
 */
#if defined(__APPLE__)
/* SO_NOSIGPIPE is a Darwin extension, hidden by the _POSIX_C_SOURCE the
 * build defines. */
#define _DARWIN_C_SOURCE 1
#endif
#include "kit/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Linux has MSG_NOSIGNAL; elsewhere the socket option does it. */
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

int kit_net_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

int kit_net_connect(const char *url)
{
    int fd = -1;
    if (strncmp(url, "ipc://", 6) == 0) {
        struct sockaddr_un a;
        memset(&a, 0, sizeof(a));
        a.sun_family = AF_UNIX;
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", url + 6);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            close(fd);
            fd = -1;
        }
    } else if (strncmp(url, "tcp://", 6) == 0 && strrchr(url, ':') > url + 5) {
        struct sockaddr_in a;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons((uint16_t)atoi(strrchr(url, ':') + 1));
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            close(fd);
            fd = -1;
        }
    }
#ifdef SO_NOSIGPIPE
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
    }
#endif
    return fd;
}

ssize_t kit_net_send(int fd, const void *buf, size_t len)
{
    return send(fd, buf, len, MSG_NOSIGNAL);
}
