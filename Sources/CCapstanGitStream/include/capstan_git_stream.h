#ifndef CAPSTAN_GIT_STREAM_H
#define CAPSTAN_GIT_STREAM_H

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

/// 1 when the loose object file at `path` inflates completely, 0 when it is damaged (truncated,
/// not zlib), -1 when it cannot be opened. Guards libgit2 1.5, which spins forever on some
/// truncated loose objects (libgit2 issue 7342).
int capstan_loose_object_is_complete(const char *path);

#endif
