/* tp_h2: one HTTP/2 client connection (nghttp2) on a libevent bufferevent.
 *
 * The connection resolves the host (evdns, without blocking the loop), tries each address in turn,
 * optionally runs TLS (ALPN "h2" required, SNI, chain and host-name verification), sends the client
 * preface and becomes READY once the server's first SETTINGS frame has arrived. It sends keepalive
 * PINGs, honours GOAWAY and closes itself once a drained session has no stream left.
 *
 * States (tp_h2_conn_state):
 *   CONNECTING  resolving, TCP connect, TLS handshake, or waiting for the server's SETTINGS;
 *               bounded by connect_timeout_ms.
 *   READY       streams may be opened (up to tp_h2_conn_max_streams()).
 *   DRAINING    a GOAWAY was received, a local shutdown started, or stream ids ran out: existing
 *               streams finish, no new ones are accepted.
 *   CLOSED      the transport is gone (tp_h2_conn_error() tells why, NULL for a clean end); every
 *               stream has been closed; only tp_h2_conn_free() remains to be called.
 *
 * Callbacks and re-entrancy. The owner is told about changes through two kinds of callback, both
 * possibly invoked while nghttp2 or libevent code is on the stack:
 *   - the connection's notify(arg): "state changed, a stream slot was freed, look again";
 *   - a stream's tp_h2_stream_cbs.
 * Inside them the owner may only record what happened and schedule its own work (e.g. with
 * event_active); it must not call tp_h2_conn_free(), tp_h2_submit(), tp_h2_conn_shutdown() or
 * tp_h2_stream_cancel() from there. Every other entry point is callable from the owner's own
 * event callbacks. Nothing here logs or exits. The process must ignore SIGPIPE.
 */
#ifndef TP_H2_H
#define TP_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

struct event_base;
struct tp_h2_conn;
struct tp_h2_stream;
struct tp_h2_resolver;

enum tp_h2_state {
	TP_H2_CONNECTING = 0,
	TP_H2_READY,
	TP_H2_DRAINING,
	TP_H2_CLOSED
};

/* --- TLS client context -------------------------------------------------------------------- */

struct tp_h2_tls_opts {
	const char *ca_file;      /* PEM bundle; NULL: the system default verify paths */
	const char *cert_file;    /* client certificate chain (PEM), optional */
	const char *key_file;     /* its private key (PEM); required with cert_file */
	bool        skip_verify;  /* true: no chain and no host-name verification */
};

/* Build a TLS client context: TLS >= 1.2, ALPN "h2", no compression or renegotiation, peer
 * verification unless skip_verify. Returns the context (free with SSL_CTX_free), or NULL with a
 * message in err (unreadable CA, certificate or key file, key not matching the certificate). */
SSL_CTX *tp_h2_tls_ctx_new(const struct tp_h2_tls_opts *o, char *err, size_t errlen);

/* --- name resolution --------------------------------------------------------------------- */

/* A reference-counted evdns_base shared by a channel's connections. Answers from /etc/hosts and
 * numeric addresses never touch the network. Returns NULL when evdns cannot be set up (the
 * connections then fall back to a blocking getaddrinfo()). */
struct tp_h2_resolver *tp_h2_resolver_new(struct event_base *base);
/* Drop the caller's reference; the evdns_base is freed once no lookup is in flight. NULL is
 * accepted. */
void tp_h2_resolver_unref(struct tp_h2_resolver *r);

/* --- connection ---------------------------------------------------------------------------- */

struct tp_h2_conn_opts {
	const char *host;                  /* name or numeric address (copied) */
	const char *port;                  /* decimal (copied) */
	SSL_CTX    *ssl_ctx;               /* NULL: cleartext h2 with prior knowledge; else TLS (up-ref'd) */
	const char *server_name;           /* SNI and verification name; NULL: host (copied) */
	bool        skip_verify;           /* no host-name check (the context decides about the chain) */
	int         connect_timeout_ms;    /* > 0 */
	int         keepalive_ms;          /* PING interval once READY; > 0 */
	int         keepalive_timeout_ms;  /* no PING ACK within it: connection failed; > 0 */
	uint32_t    window_size;           /* stream and connection receive window; 0: 2^31-1 */
};

typedef void (*tp_h2_notify_cb)(void *arg);

/* Create a connection (no I/O yet). resolver may be NULL. Returns NULL on allocation failure. */
struct tp_h2_conn *tp_h2_conn_new(struct event_base *base, struct tp_h2_resolver *resolver,
    const struct tp_h2_conn_opts *o, tp_h2_notify_cb notify, void *arg);
/* Start connecting. Never fails synchronously: failures move the connection to CLOSED (with an
 * error) and call notify, possibly before this returns. */
void tp_h2_conn_connect(struct tp_h2_conn *c);
/* Graceful end: no new streams; once the remaining streams have closed, send GOAWAY(NO_ERROR),
 * flush and close. A connection still CONNECTING is closed at once. */
void tp_h2_conn_shutdown(struct tp_h2_conn *c);
/* Free at once: no callback runs, open streams are dropped silently. NULL is accepted. */
void tp_h2_conn_free(struct tp_h2_conn *c);

enum tp_h2_state tp_h2_conn_state(const struct tp_h2_conn *c);
/* True once the connection has been READY (it may have moved on since). */
bool tp_h2_conn_was_ready(const struct tp_h2_conn *c);
/* Why a CLOSED connection ended, or NULL for a clean end (or a connection not CLOSED). */
const char *tp_h2_conn_error(const struct tp_h2_conn *c);
/* Whether a GOAWAY was received; fills what it said (each out pointer may be NULL). debug is
 * the printable prefix of the debug data ("too_many_pings"), valid until the connection is freed. */
bool tp_h2_conn_goaway(const struct tp_h2_conn *c, int32_t *last_stream_id, uint32_t *error_code,
    const char **debug);
/* Streams opened and not yet closed (including cancelled ones not yet reset on the wire). */
size_t tp_h2_conn_nstreams(const struct tp_h2_conn *c);
/* The server's SETTINGS_MAX_CONCURRENT_STREAMS (UINT32_MAX when unlimited or not yet known). */
uint32_t tp_h2_conn_max_streams(const struct tp_h2_conn *c);

/* --- streams ------------------------------------------------------------------------------- */

/* How a stream ended. */
struct tp_h2_close_info {
	uint32_t    error_code;   /* RST_STREAM code, NGHTTP2_NO_ERROR on a clean end */
	bool        remote_end;   /* the peer ended its side (END_STREAM received) */
	bool        remote_reset; /* an RST_STREAM was received */
	bool        unprocessed;  /* the peer never processed it (request never sent, or above a
	                           * GOAWAY's last-stream-id): safe to send again elsewhere */
	const char *conn_error;   /* non-NULL: the connection failed (valid during the callback) */
};

/* Stream callbacks; all three are required. name/value are NUL-terminated. */
struct tp_h2_stream_cbs {
	/* A response header; trailer is true for the fields of a header block after the first. */
	void (*on_header)(void *arg, const char *name, size_t namelen,
	                  const char *value, size_t valuelen, bool trailer);
	/* Response body bytes. Return 0 to continue; non-zero resets the stream with CANCEL and
	 * detaches it (no further callback for it, on_close included). */
	int  (*on_data)(void *arg, const uint8_t *p, size_t n);
	/* The stream is over; the stream object is freed right after. */
	void (*on_close)(void *arg, const struct tp_h2_close_info *ci);
};

/* Open a stream with the request headers nva (copied) and body (borrowed: it must stay valid
 * until on_close runs or the stream is cancelled), ending the request with END_STREAM. The write
 * happens on the next loop iteration. Returns the stream, or NULL when the connection is not
 * READY, has run out of stream ids (it then moves to DRAINING) or on allocation failure. */
struct tp_h2_stream *tp_h2_submit(struct tp_h2_conn *c, const nghttp2_nv *nva, size_t nvlen,
    const uint8_t *body, size_t bodylen, const struct tp_h2_stream_cbs *cbs, void *arg);
/* How soon a stream's answer must be read, on a connection with lazy reads (below). */
enum tp_h2_patience {
	TP_H2_PROMPT = 0,  /* the default: as it arrives; while one is open, nothing is deferred */
	TP_H2_LAZY,        /* a small answer may wait for the next larger read, lazy_ms at most */
	TP_H2_CARRIER      /* a long poll: its answer, when one comes, is large and brings the waiting
	                    * small answers in; nothing is deferred unless one is open */
};
void tp_h2_stream_set_patience(struct tp_h2_stream *s, enum tp_h2_patience p);

/* Lazy reads, for cleartext connections (TLS ignores them): from the start of a LAZY stream until
 * ms after the last read, while a CARRIER stream is open and no PROMPT one, fewer than 128 bytes (a
 * unary answer without a body, a PING) do not wake the process: they are read with the next larger
 * arrival, or ms after the last read at the latest. Without an open carrier nothing larger is on
 * its way, so nothing waits. Saves a wake-up per report on a busy worker. 0 (the default) turns
 * them off; a change applies at once. */
void tp_h2_conn_set_lazy_read(struct tp_h2_conn *c, int ms);

/* Reset the stream with error_code (NGHTTP2_CANCEL for a local cancel) and detach it: no further
 * callback, and the body is no longer read. */
void tp_h2_stream_cancel(struct tp_h2_stream *s, uint32_t error_code);
/* The stream id (positive). */
int32_t tp_h2_stream_id(const struct tp_h2_stream *s);

#endif
