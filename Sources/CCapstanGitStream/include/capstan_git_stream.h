#ifndef CAPSTAN_GIT_STREAM_H
#define CAPSTAN_GIT_STREAM_H

#include <stddef.h>

/// Registers Capstan's plain socket stream with libgit2 (GIT_STREAM_STANDARD). libgit2 1.5 has
/// no network timeouts; this stream connects with a deadline and sets send/receive timeouts,
/// so a remote that accepts a connection and then stalls fails the fetch instead of hanging it.
/// It carries git://, http://, the socket under https:// and the socket under ssh://.
/// Returns 0 or a libgit2 error code.
int capstan_git_stream_install(void);

/// The timeout applied to connects and to each read or write, in milliseconds, and an overall
/// deadline for the whole operation (a remote that trickles bytes forever is cut off). Both are
/// per thread: set them on the thread that then runs the libgit2 operation.
void capstan_git_stream_set_timeout_ms(int timeout_ms);
int capstan_git_stream_timeout_ms(void);
void capstan_git_stream_set_deadline_ms(long long milliseconds_from_now);
void capstan_git_stream_clear_deadline(void);

/// Where the calling thread's connections go, for the credentials callback: a redirect makes
/// libgit2 connect to another host, and it hands that callback the URL it started from.
/// `reset` forgets the last connection, the pin and the refusal (call it before an operation).
void capstan_git_stream_reset_endpoints(void);
/// Copies the host and port of the calling thread's most recent connection (empty strings before
/// the first, or when they were too long to keep) and returns how many connections the thread has
/// made so far: the count tells one connection from the next to the same place.
unsigned long long capstan_git_stream_last_connection(char *host, size_t host_len, char *port, size_t port_len);
/// From now until the next reset, the calling thread connects only to `host:port` (compared
/// case-insensitively for the host): credentials were sent there. Returns 0 when host or port
/// were too long to keep (then every connection is refused).
int capstan_git_stream_pin(const char *host, const char *port);
/// 1 (and the endpoint) when a connection was refused because of the pin since the last reset.
int capstan_git_stream_refused(char *host, size_t host_len, char *port, size_t port_len);

/// 1 when the loose object file at `path` inflates completely, 0 when it is damaged (truncated,
/// not zlib), -1 when it cannot be opened. Guards libgit2 1.5, which spins forever on some
/// truncated loose objects (libgit2 issue 7342).
int capstan_loose_object_is_complete(const char *path);

#endif
