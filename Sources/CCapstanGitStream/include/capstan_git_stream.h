#ifndef CAPSTAN_GIT_STREAM_H
#define CAPSTAN_GIT_STREAM_H

/// Registers Capstan's plain socket stream with libgit2 (GIT_STREAM_STANDARD). libgit2 1.5 has
/// no network timeouts; this stream connects with a deadline and sets send/receive timeouts,
/// so a remote that accepts a connection and then stalls fails the fetch instead of hanging it.
/// It carries git://, http://, the socket under https:// and the socket under ssh://.
/// Returns 0 or a libgit2 error code.
int capstan_git_stream_install(void);

/// The timeout applied to connects and to each read or write, in milliseconds (process-wide).
void capstan_git_stream_set_timeout_ms(int timeout_ms);
int capstan_git_stream_timeout_ms(void);

#endif
