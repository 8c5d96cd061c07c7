/* tp_grpc: gRPC unary calls over HTTP/2 (tp_h2), with no Temporal knowledge.
 *
 * A channel is one logical connection to a server. It opens an HTTP/2 connection lazily (h2c with
 * prior knowledge, or TLS with ALPN h2), queues calls while connecting, honours
 * SETTINGS_MAX_CONCURRENT_STREAMS (extra calls wait in a queue), sends keepalive PINGs, and treats a
 * GOAWAY as routine: streams at or below last-stream-id finish on the old connection, new calls go to a
 * new connection, streams above last-stream-id are re-sent on the new connection (they were never
 * processed). A connection failure completes the calls on it with UNAVAILABLE.
 *
 * Lower layer: never logs, never exits. Every call's callback runs exactly once, from the event loop
 * (never from inside tp_grpc_call_start), unless the call is cancelled first.
 *
 * Inside a call's callback (or the close callback) the owner may start calls, cancel other calls,
 * close or even free the channel. A call object is freed right after its callback returns (or by
 * tp_grpc_call_cancel): it must not be used after that. The process must ignore SIGPIPE.
 */
#ifndef TP_GRPC_H
#define TP_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transport/tp_h2.h"

struct event_base;

/* gRPC status codes. */
enum tp_grpc_code {
	TP_GRPC_OK = 0, TP_GRPC_CANCELLED = 1, TP_GRPC_UNKNOWN = 2, TP_GRPC_INVALID_ARGUMENT = 3,
	TP_GRPC_DEADLINE_EXCEEDED = 4, TP_GRPC_NOT_FOUND = 5, TP_GRPC_ALREADY_EXISTS = 6,
	TP_GRPC_PERMISSION_DENIED = 7, TP_GRPC_RESOURCE_EXHAUSTED = 8, TP_GRPC_FAILED_PRECONDITION = 9,
	TP_GRPC_ABORTED = 10, TP_GRPC_OUT_OF_RANGE = 11, TP_GRPC_UNIMPLEMENTED = 12, TP_GRPC_INTERNAL = 13,
	TP_GRPC_UNAVAILABLE = 14, TP_GRPC_DATA_LOSS = 15, TP_GRPC_UNAUTHENTICATED = 16
};

struct tp_grpc_header {
	const char *name;   /* lower-case */
	const char *value;
};

struct tp_grpc_channel_opts {
	const char *host;                 /* required */
	const char *port;                 /* required, decimal */
	bool        tls;                  /* false: h2c prior knowledge; true: TLS + ALPN h2 */
	const char *tls_ca_file;          /* PEM; NULL: system default roots */
	const char *tls_cert_file;        /* client certificate (PEM), optional */
	const char *tls_key_file;         /* client key (PEM), required with cert */
	const char *tls_server_name;      /* SNI and verification name; NULL: host */
	bool        tls_skip_verify;      /* default false: verify chain and host name */
	const char *authority;            /* :authority; NULL: host:port */
	const struct tp_grpc_header *headers; /* metadata sent on every call (copied) */
	size_t      nheaders;
	size_t      max_recv_msg;         /* 0: 128 MiB; a larger response fails RESOURCE_EXHAUSTED */
	int         keepalive_ms;         /* 0: 30000; values under 10000 are raised to 10000 */
	int         keepalive_timeout_ms; /* 0: 15000; no PING ack within it: connection failed */
	int         connect_timeout_ms;   /* 0: 10000 (TCP + TLS handshake + server SETTINGS) */
};

/* The outcome of a call. Pointers are valid only during the callback. */
struct tp_grpc_status {
	int            code;          /* enum tp_grpc_code */
	const char    *message;       /* percent-decoded grpc-message, or a local description; never NULL */
	const uint8_t *details;       /* decoded grpc-status-details-bin (a serialized google.rpc.Status), or NULL */
	size_t         details_len;
};

/* Completion callback: st->code == OK means msg/len hold the response message (len may be 0). */
typedef void (*tp_grpc_done_cb)(void *arg, const struct tp_grpc_status *st,
                                const uint8_t *msg, size_t len);

struct tp_grpc_channel;
struct tp_grpc_call;

/* Create a channel (no I/O yet). Returns NULL and a message in err on bad options (e.g. unreadable
 * CA, certificate or key file). Strings in opts are copied. */
struct tp_grpc_channel *tp_grpc_channel_new(struct event_base *base,
    const struct tp_grpc_channel_opts *opts, char *err, size_t errlen);

/* Start a unary call. path is "/package.Service/Method"; req/len is the serialized request (copied);
 * timeout_ms > 0 is sent as grpc-timeout and enforced locally (DEADLINE_EXCEEDED). extra headers
 * (may be NULL) are sent after the channel's. Returns the call, or NULL only on allocation failure. */
struct tp_grpc_call *tp_grpc_call_start(struct tp_grpc_channel *ch, const char *path,
    const uint8_t *req, size_t len, int64_t timeout_ms,
    const struct tp_grpc_header *extra, size_t nextra,
    tp_grpc_done_cb cb, void *arg);

/* How soon the call's answer must be read (tp_h2_patience; TP_H2_PROMPT by default), on every
 * stream it is sent on. */
void tp_grpc_call_set_patience(struct tp_grpc_call *call, enum tp_h2_patience p);

/* Lazy reads on the channel's connections, now and later ones (tp_h2_conn_set_lazy_read). */
void tp_grpc_channel_set_lazy_read(struct tp_grpc_channel *ch, int ms);

/* Abandon a call: RST_STREAM(CANCEL) if it was sent; its callback will not run. */
void tp_grpc_call_cancel(struct tp_grpc_call *call);

/* Number of calls not yet completed (queued or on a stream). */
size_t tp_grpc_channel_pending(const struct tp_grpc_channel *ch);

/* Graceful close: no new calls are accepted (they complete UNAVAILABLE); once the pending calls
 * have completed, a GOAWAY is sent and the connection closed, then done(arg) runs (from the event
 * loop, never from inside this function; done may be NULL). The channel itself stays allocated
 * until tp_grpc_channel_free(), which done may call. A second close is ignored. */
void tp_grpc_channel_close(struct tp_grpc_channel *ch, void (*done)(void *arg), void *arg);

/* Free at once: pending calls are dropped without callbacks. NULL is accepted. */
void tp_grpc_channel_free(struct tp_grpc_channel *ch);

/* --- pure helpers (unit-tested) --------------------------------------------------------------- */

/* grpc-timeout value for ms (at most 8 digits, best unit), e.g. 70000 -> "70S", 1500 -> "1500m".
 * Returns the length written, or -1 if buf is too small. */
int tp_grpc_timeout_encode(int64_t ms, char *buf, size_t buflen);
/* Parse a grpc-timeout value; returns milliseconds (rounded up), or -1 when malformed. */
int64_t tp_grpc_timeout_decode(const char *s);

/* Write the 5-byte message prefix (flag 0, big-endian length). */
void tp_grpc_frame_prefix(uint8_t out[5], uint32_t len);

/* Incremental deframer: feed DATA bytes in any split; complete messages accumulate.
 * Only one message per unary response is expected; a second one is an error. */
struct tp_grpc_deframer {
	uint8_t  hdr[5];
	size_t   hdr_have;
	uint8_t *msg;         /* owned */
	size_t   msg_len;     /* announced length */
	size_t   msg_have;
	size_t   max;         /* cap on one message */
	int      nmsgs;       /* complete messages seen */
	int      err;         /* sticky error code returned by every later feed, 0 if none */
};
void tp_grpc_deframer_init(struct tp_grpc_deframer *d, size_t max);
/* Returns 0, or a gRPC code on error: RESOURCE_EXHAUSTED (over max), INTERNAL (compressed flag set
 * without negotiated encoding, or a second message). */
int  tp_grpc_deframer_feed(struct tp_grpc_deframer *d, const uint8_t *p, size_t n);
/* True when exactly one complete message is held (and no partial bytes are pending). */
bool tp_grpc_deframer_done(const struct tp_grpc_deframer *d);
void tp_grpc_deframer_free(struct tp_grpc_deframer *d);

/* Map an HTTP status without grpc-status to a gRPC code (gRPC's http-grpc-status-mapping.md). */
int tp_grpc_code_from_http(int http_status);
/* Map the error code of an RST_STREAM that ended a stream without a gRPC status (grpc-go's
 * table): REFUSED_STREAM -> UNAVAILABLE, CANCEL -> CANCELLED, ENHANCE_YOUR_CALM and
 * FLOW_CONTROL_ERROR -> RESOURCE_EXHAUSTED, INADEQUATE_SECURITY -> PERMISSION_DENIED,
 * anything else -> INTERNAL. */
int tp_grpc_code_from_h2_error(uint32_t h2_error);
/* "OK", "CANCELLED", ... ("UNKNOWN_CODE" out of range). */
const char *tp_grpc_code_name(int code);
/* Parse a decimal grpc-status value; out-of-range or malformed -> UNKNOWN. */
int tp_grpc_code_parse(const char *s, size_t len);

/* Percent-decode a grpc-message into out (NUL-terminated, at most outlen-1 bytes). */
void tp_grpc_percent_decode(const char *in, size_t len, char *out, size_t outlen);
/* Base64 decode, padded or unpadded, standard alphabet. Returns a malloc'd buffer or NULL. */
uint8_t *tp_grpc_base64_decode(const char *in, size_t len, size_t *outlen);

/* --- retry policy (temporal-protocol.md §1.4) ------------------------------------------------ */

struct tp_backoff {
	int64_t initial_ms;
	int64_t max_ms;
	double  multiplier;
	double  jitter;      /* 0.2 = +-20 % */
	int64_t next_ms;     /* un-jittered next interval */
	int     attempts;    /* delays handed out since the last reset */
};
void    tp_backoff_init(struct tp_backoff *b, int64_t initial_ms, int64_t max_ms,
                        double multiplier, double jitter);
/* The next delay (jittered) and advance. */
int64_t tp_backoff_next(struct tp_backoff *b);
void    tp_backoff_reset(struct tp_backoff *b);

/* Whether a non-poll call that failed with code should be retried (CORE's set: DATA_LOSS, INTERNAL,
 * UNKNOWN, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE), except a RESOURCE_EXHAUSTED whose
 * message says the message is larger than the maximum. */
bool tp_grpc_is_retryable(int code, const char *message);

#endif
