#define _GNU_SOURCE
#include "capstan_git_stream.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <time.h>
#include <zlib.h>

#include <git2.h>
#include <git2/sys/stream.h>

static _Thread_local int timeout_ms = 60000;
static _Thread_local long long deadline_ms = 0;  /* CLOCK_MONOTONIC milliseconds; 0 = none */

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void capstan_git_stream_set_timeout_ms(int ms) { timeout_ms = ms > 0 ? ms : 60000; }
int capstan_git_stream_timeout_ms(void) { return timeout_ms; }
void capstan_git_stream_set_deadline_ms(long long ms) { deadline_ms = now_ms() + (ms > 0 ? ms : 0); }
void capstan_git_stream_clear_deadline(void) { deadline_ms = 0; }

/* How long the next wait may last: the per-operation timeout, cut by the overall deadline.
   Returns 0 when the deadline has passed. */
static int wait_budget_ms(void) {
    int budget = timeout_ms;
    if (deadline_ms > 0) {
        long long left = deadline_ms - now_ms();
        if (left <= 0) return 0;
        if (left < budget) budget = (int)left;
    }
    return budget;
}

/* Where the calling thread's connections went, and where they may go (per thread, like the
   timeouts: one libgit2 operation runs on one thread from start to end). */
#define ENDPOINT_HOST_MAX 256
#define ENDPOINT_PORT_MAX 16
typedef struct {
    char host[ENDPOINT_HOST_MAX];
    char port[ENDPOINT_PORT_MAX];
} endpoint;

static _Thread_local endpoint last_connection;
static _Thread_local unsigned long long connection_count = 0;
static _Thread_local endpoint pinned;
static _Thread_local int is_pinned = 0;
static _Thread_local endpoint refused;
static _Thread_local int has_refused = 0;

/* Copies host and port; 0 when either is too long to keep whole. */
static int endpoint_set(endpoint *e, const char *host, const char *port) {
    size_t h = strlen(host), p = strlen(port);
    if (h >= ENDPOINT_HOST_MAX || p >= ENDPOINT_PORT_MAX) {
        e->host[0] = e->port[0] = '\0';
        return 0;
    }
    memcpy(e->host, host, h + 1);
    memcpy(e->port, port, p + 1);
    return 1;
}

static int endpoint_is(const endpoint *e, const char *host, const char *port) {
    return e->host[0] != '\0' && strcasecmp(e->host, host) == 0 && strcmp(e->port, port) == 0;
}

void capstan_git_stream_reset_endpoints(void) {
    memset(&last_connection, 0, sizeof last_connection);
    memset(&pinned, 0, sizeof pinned);
    memset(&refused, 0, sizeof refused);
    is_pinned = has_refused = 0;
}

unsigned long long capstan_git_stream_last_connection(char *host, size_t host_len, char *port, size_t port_len) {
    if (host_len > 0) snprintf(host, host_len, "%s", last_connection.host);
    if (port_len > 0) snprintf(port, port_len, "%s", last_connection.port);
    return connection_count;
}

int capstan_git_stream_pin(const char *host, const char *port) {
    is_pinned = 1;
    return endpoint_set(&pinned, host, port);
}

int capstan_git_stream_refused(char *host, size_t host_len, char *port, size_t port_len) {
    if (!has_refused) return 0;
    if (host_len > 0) snprintf(host, host_len, "%s", refused.host);
    if (port_len > 0) snprintf(port, port_len, "%s", refused.port);
    return 1;
}

typedef struct {
    git_stream parent;
    char *host;
    char *port;
    int fd;
} capstan_stream;

static void set_error(const char *what, const char *host, const char *port, int err) {
    char message[512];
    if (err == ETIME)
        snprintf(message, sizeof message, "%s %s:%s timed out: the fetch took longer than its timeout of %d ms", what, host, port, timeout_ms);
    else if (err == ETIMEDOUT || err == EAGAIN || err == EWOULDBLOCK)
        snprintf(message, sizeof message, "%s %s:%s timed out after %d ms", what, host, port, timeout_ms);
    else
        snprintf(message, sizeof message, "%s %s:%s failed: %s", what, host, port, strerror(err));
    git_error_set_str(GIT_ERROR_NET, message);
}

static int connect_with_deadline(int fd, const struct sockaddr *addr, socklen_t len, int ms) {
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return errno;
    int rc = connect(fd, addr, len);
    if (rc < 0 && errno != EINPROGRESS) return errno;
    if (rc < 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int ready;
        do { ready = poll(&p, 1, ms); } while (ready < 0 && errno == EINTR);
        if (ready == 0) return ETIMEDOUT;
        if (ready < 0) return errno;
        int soerr = 0;
        socklen_t l = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l) < 0) return errno;
        if (soerr != 0) return soerr;
    }
    if (fcntl(fd, F_SETFL, flags) < 0) return errno;
    return 0;
}

static int stream_connect(git_stream *s) {
    capstan_stream *st = (capstan_stream *)s;
    if (is_pinned && !endpoint_is(&pinned, st->host, st->port)) {
        /* Credentials went to the pinned endpoint in this operation; libgit2 may send them again
           to wherever a redirect points (it keeps them on the transport). */
        has_refused = 1;
        endpoint_set(&refused, st->host, st->port);
        char message[512];
        snprintf(message, sizeof message, "refusing to connect to %s:%s: credentials were sent to another host in this fetch", st->host, st->port);
        git_error_set_str(GIT_ERROR_NET, message);
        return -1;
    }
    int ms = wait_budget_ms();
    if (ms == 0) { set_error("connecting to", st->host, st->port, ETIME); return -1; }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL, *ai;
    int gai = getaddrinfo(st->host, st->port, &hints, &res);
    if (gai != 0) {
        char message[512];
        snprintf(message, sizeof message, "cannot resolve host %s: %s", st->host, gai_strerror(gai));
        git_error_set_str(GIT_ERROR_NET, message);
        return -1;
    }
    int last = ECONNREFUSED;
    for (ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) { last = errno; continue; }
        int err = connect_with_deadline(fd, ai->ai_addr, ai->ai_addrlen, ms);
        if (err == 0) {
            st->fd = fd;
            endpoint_set(&last_connection, st->host, st->port);
            connection_count++;
            freeaddrinfo(res);
            return 0;
        }
        last = err;
        close(fd);
    }
    freeaddrinfo(res);
    set_error("connecting to", st->host, st->port, last);
    return -1;
}

/* Waits until fd is ready for `events` within the budget; 0 ok, else an errno value. */
static int wait_ready(int fd, short events) {
    for (;;) {
        int budget = wait_budget_ms();
        if (budget == 0) return ETIME;
        struct pollfd p = {.fd = fd, .events = events};
        int ready = poll(&p, 1, budget);
        if (ready > 0) return 0;
        if (ready == 0) return wait_budget_ms() == 0 ? ETIME : ETIMEDOUT;
        if (errno != EINTR) return errno;
    }
}

static ssize_t stream_read(git_stream *s, void *data, size_t len) {
    capstan_stream *st = (capstan_stream *)s;
    ssize_t n;
    int err = wait_ready(st->fd, POLLIN);
    if (err != 0) { set_error("reading from", st->host, st->port, err); return -1; }
    do { n = recv(st->fd, data, len, 0); } while (n < 0 && errno == EINTR);
    if (n < 0) { set_error("reading from", st->host, st->port, errno); return -1; }
    return n;
}

static ssize_t stream_write(git_stream *s, const char *data, size_t len, int flags) {
    capstan_stream *st = (capstan_stream *)s;
    (void)flags;
    size_t off = 0;
    while (off < len) {
        int err = wait_ready(st->fd, POLLOUT);
        if (err != 0) { set_error("writing to", st->host, st->port, err); return -1; }
        ssize_t n = send(st->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { set_error("writing to", st->host, st->port, errno); return -1; }
        off += (size_t)n;
    }
    return (ssize_t)len;
}

static int stream_close(git_stream *s) {
    capstan_stream *st = (capstan_stream *)s;
    if (st->fd >= 0) { close(st->fd); st->fd = -1; }
    return 0;
}

static void stream_free(git_stream *s) {
    capstan_stream *st = (capstan_stream *)s;
    stream_close(s);
    free(st->host);
    free(st->port);
    free(st);
}

static int stream_init(git_stream **out, const char *host, const char *port) {
    capstan_stream *st = calloc(1, sizeof *st);
    if (!st) return -1;
    st->parent.version = GIT_STREAM_VERSION;
    st->parent.connect = stream_connect;
    st->parent.read = stream_read;
    st->parent.write = stream_write;
    st->parent.close = stream_close;
    st->parent.free = stream_free;
    st->host = strdup(host);
    st->port = strdup(port);
    st->fd = -1;
    if (!st->host || !st->port) { stream_free(&st->parent); return -1; }
    *out = &st->parent;
    return 0;
}

int capstan_loose_object_is_complete(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit(&z) != Z_OK) { fclose(f); return -1; }
    unsigned char in[16384], out[65536];
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        size_t got = fread(in, 1, sizeof in, f);
        if (got == 0) break;  /* input ended before the stream did: truncated */
        z.next_in = in;
        z.avail_in = (uInt)got;
        do {
            z.next_out = out;
            z.avail_out = sizeof out;
            rc = inflate(&z, Z_NO_FLUSH);
            if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) { inflateEnd(&z); fclose(f); return 0; }
        } while (z.avail_in > 0 && rc != Z_STREAM_END);
    }
    inflateEnd(&z);
    fclose(f);
    return rc == Z_STREAM_END ? 1 : 0;
}

int capstan_git_stream_install(void) {
    static git_stream_registration registration = {.version = GIT_STREAM_VERSION, .init = stream_init, .wrap = NULL};
    return git_stream_register(GIT_STREAM_STANDARD, &registration);
}
