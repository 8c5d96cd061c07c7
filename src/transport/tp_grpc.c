/* tp_grpc: gRPC unary calls over HTTP/2 (tp_h2). See tp_grpc.h.
 *
 * Re-entrancy design. tp_h2 reports from inside nghttp2 and libevent callbacks, so this layer only
 * records there: a finished call moves to the channel's done list, a connection change or a freed
 * stream slot schedules the channel's dispatch event. All real work (opening connections,
 * submitting queued calls, reaping dead connections, running user callbacks, finishing a graceful
 * close) happens in on_dispatch, a plain event callback with nothing of ours below it on the stack.
 * A user callback may free the channel: on_dispatch then stops and frees it on the way out.
 *
 * A call is always on exactly one list matching its state:
 *   QUEUED      ch->queue   waiting for a connection or a stream slot (FIFO by start order)
 *   ACTIVE      ch->active  on an HTTP/2 stream (call->stream)
 *   DONE        ch->done    outcome known, callback not yet run
 *   DELIVERING  none        its callback is running; freed right after
 */
#include "config.h"

#include "transport/tp_grpc.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <arpa/inet.h>
#include <event2/event.h>

#include "core/tp_util.h"
#include "transport/tp_h2.h"

#define TP_GRPC_DEFAULT_MAX_RECV   ((size_t)128 << 20)
#define TP_GRPC_MAX_RESUBMITS      5          /* transparent re-sends of unprocessed streams */
#define TP_GRPC_KEEPALIVE_MIN      10000
#define TP_GRPC_KEEPALIVE_MAX      3600000    /* cap when a server asks us to ping less */
#define TP_GRPC_MSGLEN             512
#define TP_GRPC_USER_AGENT         "tprefork/" PACKAGE_VERSION " grpc-c"

/* ============================================================================================ *
 * Pure helpers                                                                                  *
 * ============================================================================================ */

#define TIMEOUT_MAX_VALUE 99999999LL   /* 8 digits */

int
tp_grpc_timeout_encode(int64_t ms, char *buf, size_t buflen)
{
	static const struct { char unit; int64_t ms; } units[] = {
		{ 'H', 3600000 }, { 'M', 60000 }, { 'S', 1000 }, { 'm', 1 },
	};
	int64_t v = 1;
	char u = 'n';
	size_t i;
	int n;

	if (ms > 0) {
		/* The coarsest unit that is exact and fits, else round up to the finest that fits. */
		u = 0;
		for (i = 0; i < 4 && u == 0; i++)
			if (ms % units[i].ms == 0 && ms / units[i].ms <= TIMEOUT_MAX_VALUE) {
				v = ms / units[i].ms;
				u = units[i].unit;
			}
		for (i = 4; i-- > 0 && u == 0;) {
			int64_t r = ms / units[i].ms + (ms % units[i].ms != 0);

			if (r <= TIMEOUT_MAX_VALUE) {
				v = r;
				u = units[i].unit;
			}
		}
		if (u == 0) {
			v = TIMEOUT_MAX_VALUE;
			u = 'H';
		}
	}
	if (buf == NULL)
		return -1;
	/* Digits by hand: this runs for every request, and snprintf costs more than the rest. */
	n = 1;
	for (int64_t x = v; x >= 10; x /= 10)
		n++;
	if ((size_t)n + 2 > buflen)
		return -1;
	buf[n] = u;
	buf[n + 1] = '\0';
	for (i = (size_t)n; i-- > 0; v /= 10)
		buf[i] = (char)('0' + v % 10);
	return n + 1;
}

int64_t
tp_grpc_timeout_decode(const char *s)
{
	size_t n, i;
	int64_t v = 0;

	if (s == NULL)
		return -1;
	n = strlen(s);
	if (n < 2 || n > 9)
		return -1;
	for (i = 0; i + 1 < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	switch (s[n - 1]) {
	case 'H': return v * 3600000;
	case 'M': return v * 60000;
	case 'S': return v * 1000;
	case 'm': return v;
	case 'u': return (v + 999) / 1000;
	case 'n': return (v + 999999) / 1000000;
	default:  return -1;
	}
}

void
tp_grpc_frame_prefix(uint8_t out[5], uint32_t len)
{
	out[0] = 0;
	out[1] = (uint8_t)(len >> 24);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 8);
	out[4] = (uint8_t)len;
}

void
tp_grpc_deframer_init(struct tp_grpc_deframer *d, size_t max)
{
	memset(d, 0, sizeof(*d));
	d->max = max;
}

static int
deframer_fail(struct tp_grpc_deframer *d, int code)
{
	d->err = code;
	return code;
}

/* The 5-byte prefix is complete: validate it and make room for the message. */
static int
deframer_start(struct tp_grpc_deframer *d)
{
	uint32_t len = (uint32_t)d->hdr[1] << 24 | (uint32_t)d->hdr[2] << 16 |
	    (uint32_t)d->hdr[3] << 8 | d->hdr[4];

	d->msg_len = len;
	d->msg_have = 0;
	if (d->hdr[0] != 0)     /* compressed (we never negotiate an encoding) or reserved bits */
		return TP_GRPC_INTERNAL;
	if (len > d->max)
		return TP_GRPC_RESOURCE_EXHAUSTED;
	if (len > 0) {
		d->msg = malloc(len);
		if (d->msg == NULL)
			return TP_GRPC_RESOURCE_EXHAUSTED;
	}
	return 0;
}

int
tp_grpc_deframer_feed(struct tp_grpc_deframer *d, const uint8_t *p, size_t n)
{
	size_t take;
	int rc;

	if (d->err != 0)
		return d->err;
	while (n > 0) {
		if (d->hdr_have < 5) {
			if (d->nmsgs > 0)            /* bytes after the one message */
				return deframer_fail(d, TP_GRPC_INTERNAL);
			take = 5 - d->hdr_have < n ? 5 - d->hdr_have : n;
			memcpy(d->hdr + d->hdr_have, p, take);
			d->hdr_have += take;
			p += take;
			n -= take;
			if (d->hdr_have < 5)
				break;
			rc = deframer_start(d);
			if (rc != 0)
				return deframer_fail(d, rc);
		} else {
			take = d->msg_len - d->msg_have < n ? d->msg_len - d->msg_have : n;
			memcpy(d->msg + d->msg_have, p, take);
			d->msg_have += take;
			p += take;
			n -= take;
		}
		if (d->msg_have == d->msg_len) {     /* complete (a 0-length one at once) */
			d->nmsgs++;
			d->hdr_have = 0;
		}
	}
	return 0;
}

bool
tp_grpc_deframer_done(const struct tp_grpc_deframer *d)
{
	return d->err == 0 && d->nmsgs == 1 && d->hdr_have == 0;
}

void
tp_grpc_deframer_free(struct tp_grpc_deframer *d)
{
	free(d->msg);
	d->msg = NULL;
	d->msg_len = d->msg_have = d->hdr_have = 0;
	d->nmsgs = 0;
	d->err = 0;
}

int
tp_grpc_code_from_http(int http_status)
{
	switch (http_status) {
	case 400: return TP_GRPC_INTERNAL;
	case 401: return TP_GRPC_UNAUTHENTICATED;
	case 403: return TP_GRPC_PERMISSION_DENIED;
	case 404: return TP_GRPC_UNIMPLEMENTED;
	case 429:
	case 502:
	case 503:
	case 504: return TP_GRPC_UNAVAILABLE;
	default:  return TP_GRPC_UNKNOWN;
	}
}

int
tp_grpc_code_from_h2_error(uint32_t h2_error)
{
	switch (h2_error) {
	case NGHTTP2_REFUSED_STREAM:      return TP_GRPC_UNAVAILABLE;
	case NGHTTP2_CANCEL:              return TP_GRPC_CANCELLED;
	case NGHTTP2_ENHANCE_YOUR_CALM:
	case NGHTTP2_FLOW_CONTROL_ERROR:  return TP_GRPC_RESOURCE_EXHAUSTED;
	case NGHTTP2_INADEQUATE_SECURITY: return TP_GRPC_PERMISSION_DENIED;
	default:                          return TP_GRPC_INTERNAL;
	}
}

const char *
tp_grpc_code_name(int code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
		"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
		"UNAUTHENTICATED",
	};

	if (code < 0 || code >= (int)(sizeof(names) / sizeof(names[0])))
		return "UNKNOWN_CODE";
	return names[code];
}

int
tp_grpc_code_parse(const char *s, size_t len)
{
	int v = 0;
	size_t i;

	if (s == NULL || len == 0 || len > 3)
		return TP_GRPC_UNKNOWN;
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return TP_GRPC_UNKNOWN;
		v = v * 10 + (s[i] - '0');
	}
	return v <= TP_GRPC_UNAUTHENTICATED ? v : TP_GRPC_UNKNOWN;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void
tp_grpc_percent_decode(const char *in, size_t len, char *out, size_t outlen)
{
	size_t i = 0, j = 0;

	if (out == NULL || outlen == 0)
		return;
	while (in != NULL && i < len && j + 1 < outlen) {
		if (in[i] == '%' && i + 2 < len && hexval(in[i + 1]) >= 0 && hexval(in[i + 2]) >= 0) {
			out[j++] = (char)(hexval(in[i + 1]) * 16 + hexval(in[i + 2]));
			i += 3;
		} else {
			out[j++] = in[i++];   /* invalid sequences are kept as they are */
		}
	}
	out[j] = '\0';
}

static int
b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

uint8_t *
tp_grpc_base64_decode(const char *in, size_t len, size_t *outlen)
{
	size_t pad = 0, i, j = 0;
	uint32_t acc = 0;
	int bits = 0;
	uint8_t *out;

	if (in == NULL && len > 0)
		return NULL;
	while (len > 0 && in[len - 1] == '=' && pad < 2) {
		len--;
		pad++;
	}
	if ((pad > 0 && (len + pad) % 4 != 0) || len % 4 == 1)
		return NULL;
	out = malloc(len / 4 * 3 + 3);
	if (out == NULL)
		return NULL;
	for (i = 0; i < len; i++) {
		int v = b64val(in[i]);

		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[j++] = (uint8_t)(acc >> bits);
		}
	}
	if (outlen != NULL)
		*outlen = j;
	return out;
}

void
tp_backoff_init(struct tp_backoff *b, int64_t initial_ms, int64_t max_ms, double multiplier,
    double jitter)
{
	b->initial_ms = initial_ms > 0 ? initial_ms : 1;
	b->max_ms = max_ms >= b->initial_ms ? max_ms : b->initial_ms;
	b->multiplier = multiplier >= 1.0 ? multiplier : 1.0;
	b->jitter = jitter < 0.0 ? 0.0 : (jitter > 1.0 ? 1.0 : jitter);
	tp_backoff_reset(b);
}

int64_t
tp_backoff_next(struct tp_backoff *b)
{
	double base = (double)b->next_ms;
	double d = base * (1.0 + b->jitter * (2.0 * tp_random_unit() - 1.0));
	double next = base * b->multiplier;

	b->next_ms = next >= (double)b->max_ms ? b->max_ms : (int64_t)llround(next);
	b->attempts++;
	return d < 0.0 ? 0 : (int64_t)llround(d);
}

void
tp_backoff_reset(struct tp_backoff *b)
{
	b->next_ms = b->initial_ms;
	b->attempts = 0;
}

bool
tp_grpc_is_retryable(int code, const char *message)
{
	switch (code) {
	case TP_GRPC_RESOURCE_EXHAUSTED:
		return message == NULL || strstr(message, "message larger than max") == NULL;
	case TP_GRPC_DATA_LOSS:
	case TP_GRPC_INTERNAL:
	case TP_GRPC_UNKNOWN:
	case TP_GRPC_ABORTED:
	case TP_GRPC_OUT_OF_RANGE:
	case TP_GRPC_UNAVAILABLE:
		return true;
	default:
		return false;
	}
}

/* ============================================================================================ *
 * Channel and calls                                                                             *
 * ============================================================================================ */

enum call_state { CALL_QUEUED, CALL_ACTIVE, CALL_DONE, CALL_DELIVERING };

struct tp_grpc_conn {
	struct tp_h2_conn *h2;
	bool               shutdown;       /* tp_h2_conn_shutdown() called */
	bool               goaway_noted;   /* its GOAWAY has been looked at */
	TAILQ_ENTRY(tp_grpc_conn) link;
};

struct tp_grpc_call {
	struct tp_grpc_channel *ch;
	TAILQ_ENTRY(tp_grpc_call) link;
	enum call_state         state;
	uint64_t                seq;          /* start order, keeps re-queued calls in place */
	struct tp_h2_stream    *stream;       /* ACTIVE only */
	char                   *path;
	uint8_t                *body;         /* prefix + request */
	size_t                  bodylen;
	struct tp_grpc_header  *extra;        /* one block: array then strings */
	size_t                  nextra;
	int64_t                 timeout_ms;
	int64_t                 deadline;     /* monotonic ms; 0: none */
	struct event           *deadline_ev;
	int                     resubmits;
	enum tp_h2_patience     patience;
	tp_grpc_done_cb         cb;
	void                   *arg;

	/* the response as it arrives */
	int                     http_status;
	bool                    ct_seen;
	bool                    ct_grpc;
	char                    ct[64];
	bool                    has_status;
	int                     status;
	char                   *raw_message;
	char                   *raw_details;
	struct tp_grpc_deframer df;

	/* the outcome */
	int                     code;
	char                   *message;
	uint8_t                *details;
	size_t                  details_len;
};

TAILQ_HEAD(tp_grpc_call_list, tp_grpc_call);

struct tp_grpc_channel {
	struct event_base      *base;
	struct tp_h2_resolver  *resolver;     /* NULL for numeric hosts */
	SSL_CTX                *ssl_ctx;      /* NULL: cleartext */
	char                   *host;
	char                   *port;
	char                   *server_name;
	char                   *authority;
	bool                    tls;
	bool                    skip_verify;
	struct tp_grpc_header  *headers;      /* one block */
	size_t                  nheaders;
	size_t                  max_recv;
	int                     keepalive_ms;
	int                     keepalive_timeout_ms;
	int                     connect_timeout_ms;
	int                     lazy_ms;

	TAILQ_HEAD(, tp_grpc_conn) conns;     /* every live connection */
	struct tp_grpc_conn    *cur;          /* where new calls go; NULL: open one when needed */

	struct tp_grpc_call_list queue;
	struct tp_grpc_call_list active;
	struct tp_grpc_call_list done;
	size_t                  npending;
	uint64_t                next_seq;

	struct event           *dispatch_ev;
	int                     in_dispatch;
	bool                    free_pending;
	bool                    closing;
	bool                    close_done;
	void                  (*close_cb)(void *);
	void                   *close_arg;
};

static const uint8_t empty_msg[1];

static void
schedule_dispatch(struct tp_grpc_channel *ch)
{
	event_active(ch->dispatch_ev, EV_TIMEOUT, 0);
}

static void
on_conn_notify(void *arg)
{
	schedule_dispatch(arg);
}

/* Copy n headers into one allocation, names lower-cased. */
static struct tp_grpc_header *
headers_copy(const struct tp_grpc_header *h, size_t n)
{
	size_t i, size = n * sizeof(*h) + 1;
	struct tp_grpc_header *out;
	char *p;

	for (i = 0; i < n; i++)
		size += strlen(h[i].name) + strlen(h[i].value) + 2;
	out = malloc(size);
	if (out == NULL)
		return NULL;
	p = (char *)(out + n);
	for (i = 0; i < n; i++) {
		size_t nl = strlen(h[i].name) + 1, vl = strlen(h[i].value) + 1, k;

		for (k = 0; k < nl; k++)
			p[k] = (char)tolower((unsigned char)h[i].name[k]);
		out[i].name = p;
		p += nl;
		memcpy(p, h[i].value, vl);
		out[i].value = p;
		p += vl;
	}
	return out;
}

static bool
headers_valid(const struct tp_grpc_header *h, size_t n)
{
	size_t i;

	if (n > 0 && h == NULL)
		return false;
	for (i = 0; i < n; i++)
		if (h[i].name == NULL || h[i].name[0] == '\0' || h[i].value == NULL)
			return false;
	return true;
}

/* --- calls: lifecycle -------------------------------------------------------------------------- */

static void
call_reset_response(struct tp_grpc_call *call)
{
	call->http_status = 0;
	call->ct_seen = call->ct_grpc = call->has_status = false;
	call->ct[0] = '\0';
	call->status = 0;
	free(call->raw_message);
	call->raw_message = NULL;
	free(call->raw_details);
	call->raw_details = NULL;
	tp_grpc_deframer_free(&call->df);
	tp_grpc_deframer_init(&call->df, call->ch->max_recv);
}

static void
call_free(struct tp_grpc_call *call)
{
	if (call->deadline_ev != NULL)
		event_free(call->deadline_ev);
	tp_grpc_deframer_free(&call->df);
	free(call->raw_message);
	free(call->raw_details);
	free(call->message);
	free(call->details);
	free(call->path);
	free(call->body);
	free(call->extra);
	free(call);
}

static struct tp_grpc_call_list *
call_list(struct tp_grpc_channel *ch, enum call_state st)
{
	switch (st) {
	case CALL_QUEUED: return &ch->queue;
	case CALL_ACTIVE: return &ch->active;
	case CALL_DONE:   return &ch->done;
	default:          return NULL;
	}
}

static void
call_unlink(struct tp_grpc_call *call)
{
	struct tp_grpc_call_list *l = call_list(call->ch, call->state);

	if (l != NULL)
		TAILQ_REMOVE(l, call, link);
}

/* Record the outcome and move the call to the done list. The call must be unlinked. */
static void
call_complete(struct tp_grpc_call *call, int code, const char *msg)
{
	struct tp_grpc_channel *ch = call->ch;

	call->code = code;
	free(call->message);
	call->message = strdup(msg != NULL ? msg : "");
	if (call->deadline_ev != NULL)
		evtimer_del(call->deadline_ev);
	call->state = CALL_DONE;
	TAILQ_INSERT_TAIL(&ch->done, call, link);
	schedule_dispatch(ch);
}

static void call_completef(struct tp_grpc_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
call_completef(struct tp_grpc_call *call, int code, const char *fmt, ...)
{
	char msg[TP_GRPC_MSGLEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	call_complete(call, code, msg);
}

/* Put an unlinked call back on the queue, in start order. */
static void
call_requeue(struct tp_grpc_call *call)
{
	struct tp_grpc_channel *ch = call->ch;
	struct tp_grpc_call *q;

	call->state = CALL_QUEUED;
	q = TAILQ_LAST(&ch->queue, tp_grpc_call_list);
	if (q == NULL || q->seq < call->seq) {    /* the usual case: a new call */
		TAILQ_INSERT_TAIL(&ch->queue, call, link);
		return;
	}
	TAILQ_FOREACH(q, &ch->queue, link) {
		if (q->seq > call->seq) {
			TAILQ_INSERT_BEFORE(q, call, link);
			return;
		}
	}
	TAILQ_INSERT_TAIL(&ch->queue, call, link);
}

/* Take the call off its stream (RST_STREAM CANCEL) and its list. */
static void
call_detach(struct tp_grpc_call *call)
{
	call_unlink(call);
	if (call->stream != NULL) {
		tp_h2_stream_cancel(call->stream, NGHTTP2_CANCEL);
		call->stream = NULL;
	}
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct tp_grpc_call *call = arg;

	if (call->state != CALL_QUEUED && call->state != CALL_ACTIVE)
		return;
	call_detach(call);
	call_completef(call, TP_GRPC_DEADLINE_EXCEEDED, "deadline exceeded after %" PRId64 " ms",
	    call->timeout_ms);
}

/* --- calls: response -------------------------------------------------------------------------- */

static bool
is_grpc_content_type(const char *v, size_t n)
{
	static const char ct[] = "application/grpc";
	size_t k = sizeof(ct) - 1;

	if (n < k || strncasecmp(v, ct, k) != 0)
		return false;
	return n == k || v[k] == '+' || v[k] == ';';
}

static void
on_stream_header(void *arg, const char *name, size_t namelen, const char *value, size_t valuelen,
    bool trailer)
{
	struct tp_grpc_call *call = arg;

	if (strcmp(name, ":status") == 0) {
		long v;

		call->http_status = tp_parse_long(value, 100, 999, &v) == 0 ? (int)v : 0;
	} else if (strcmp(name, "content-type") == 0) {
		call->ct_seen = true;
		call->ct_grpc = is_grpc_content_type(value, valuelen);
		snprintf(call->ct, sizeof(call->ct), "%s", value);
	} else if (strcmp(name, "grpc-status") == 0) {
		call->has_status = true;
		call->status = tp_grpc_code_parse(value, valuelen);
	} else if (strcmp(name, "grpc-message") == 0) {
		free(call->raw_message);
		call->raw_message = strndup(value, valuelen);
	} else if (strcmp(name, "grpc-status-details-bin") == 0) {
		free(call->raw_details);
		call->raw_details = strndup(value, valuelen);
	}
}

static int
on_stream_data(void *arg, const uint8_t *p, size_t n)
{
	struct tp_grpc_call *call = arg;
	struct tp_grpc_deframer *d = &call->df;
	int rc;

	if (!call->ct_grpc)       /* not a gRPC body (an HTML error page...): judged at the end */
		return 0;
	rc = tp_grpc_deframer_feed(d, p, n);
	if (rc == 0)
		return 0;
	/* tp_h2 resets the stream (CANCEL) and detaches it when we return non-zero. */
	call_unlink(call);
	call->stream = NULL;
	if (rc == TP_GRPC_RESOURCE_EXHAUSTED && d->msg_len > d->max)
		call_completef(call, rc, "grpc: received message larger than max (%zu vs. %zu)",
		    d->msg_len, d->max);
	else if (rc == TP_GRPC_RESOURCE_EXHAUSTED)
		call_completef(call, rc, "out of memory for a %zu-byte response", d->msg_len);
	else if (d->nmsgs > 0)
		call_completef(call, rc, "grpc: more than one message in a unary response");
	else
		call_completef(call, rc, "grpc: compressed message without grpc-encoding (flags 0x%02x)",
		    d->hdr[0]);
	return -1;
}

/* The server ended the stream normally: build the status from what it sent. */
static void
call_complete_response(struct tp_grpc_call *call)
{
	char *msg;
	size_t mlen;
	int code;

	if ((call->ct_seen && !call->ct_grpc) || (!call->ct_seen && !call->has_status)) {
		code = call->http_status == 200 ? TP_GRPC_UNKNOWN :
		    tp_grpc_code_from_http(call->http_status);
		call_completef(call, code, "unexpected HTTP response: status %d, content-type '%s'",
		    call->http_status, call->ct);
		return;
	}
	if (!call->has_status) {
		call_completef(call, tp_grpc_code_from_http(call->http_status),
		    "no grpc-status in the response (HTTP status %d)", call->http_status);
		return;
	}
	code = call->status;
	if (code == TP_GRPC_OK && call->df.hdr_have != 0) {
		call_completef(call, TP_GRPC_INTERNAL, "grpc: truncated response message");
		return;
	}
	if (call->raw_details != NULL)
		call->details = tp_grpc_base64_decode(call->raw_details, strlen(call->raw_details),
		    &call->details_len);
	mlen = call->raw_message != NULL ? strlen(call->raw_message) : 0;
	msg = malloc(mlen + 1);
	if (msg == NULL) {
		call_complete(call, code, "");
		return;
	}
	tp_grpc_percent_decode(call->raw_message, mlen, msg, mlen + 1);
	call_complete(call, code, msg);
	free(msg);
}

static void
on_stream_close(void *arg, const struct tp_h2_close_info *ci)
{
	struct tp_grpc_call *call = arg;

	call_unlink(call);
	call->stream = NULL;
	if (ci->unprocessed && call->resubmits < TP_GRPC_MAX_RESUBMITS) {
		/* The server never saw it: send it again on another connection. */
		call->resubmits++;
		call_reset_response(call);
		call_requeue(call);
		schedule_dispatch(call->ch);
		return;
	}
	if (ci->remote_end) {
		call_complete_response(call);
	} else if (ci->conn_error != NULL) {
		call_complete(call, TP_GRPC_UNAVAILABLE, ci->conn_error);
	} else if (ci->unprocessed) {
		call_completef(call, TP_GRPC_UNAVAILABLE, "request not processed by the server "
		    "(refused %d times)", call->resubmits + 1);
	} else {
		call_completef(call, tp_grpc_code_from_h2_error(ci->error_code), "%s: %s",
		    ci->remote_reset ? "stream reset by the server" : "stream failed",
		    nghttp2_http2_strerror(ci->error_code));
	}
}

static const struct tp_h2_stream_cbs stream_cbs = {
	on_stream_header, on_stream_data, on_stream_close,
};

/* --- submitting -------------------------------------------------------------------------------- */

static void
nv_set(nghttp2_nv *nv, const char *name, const char *value)
{
	nv->name = (uint8_t *)(uintptr_t)name;
	nv->namelen = strlen(name);
	nv->value = (uint8_t *)(uintptr_t)value;
	nv->valuelen = strlen(value);
	nv->flags = NGHTTP2_NV_FLAG_NONE;
}

/* The request headers in the order of tp_grpc.h; tbuf holds the grpc-timeout value. */
static nghttp2_nv *
build_nv(const struct tp_grpc_channel *ch, const struct tp_grpc_call *call, char tbuf[16],
    size_t *nvlen)
{
	size_t n = 0, i, max = 8 + ch->nheaders + call->nextra;
	nghttp2_nv *nv = malloc(max * sizeof(*nv));

	if (nv == NULL)
		return NULL;
	nv_set(&nv[n++], ":method", "POST");
	nv_set(&nv[n++], ":scheme", ch->tls ? "https" : "http");
	nv_set(&nv[n++], ":path", call->path);
	nv_set(&nv[n++], ":authority", ch->authority);
	nv_set(&nv[n++], "te", "trailers");
	nv_set(&nv[n++], "content-type", "application/grpc");
	if (call->deadline != 0) {
		int64_t left = call->deadline - tp_now_mono_ms();

		tp_grpc_timeout_encode(left > 0 ? left : 1, tbuf, 16);
		nv_set(&nv[n], "grpc-timeout", tbuf);
		/* Its value changes with every request: indexed, it would only push the constant
		 * headers out of both sides' HPACK tables. */
		nv[n++].flags = NGHTTP2_NV_FLAG_NO_INDEX;
	}
	nv_set(&nv[n++], "user-agent", TP_GRPC_USER_AGENT);
	for (i = 0; i < ch->nheaders; i++)
		nv_set(&nv[n++], ch->headers[i].name, ch->headers[i].value);
	for (i = 0; i < call->nextra; i++)
		nv_set(&nv[n++], call->extra[i].name, call->extra[i].value);
	*nvlen = n;
	return nv;
}

/* Move the queue head onto a new stream of c. */
static void
call_submit(struct tp_grpc_channel *ch, struct tp_grpc_conn *c, struct tp_grpc_call *call)
{
	char tbuf[16];
	size_t nvlen = 0;
	nghttp2_nv *nv = build_nv(ch, call, tbuf, &nvlen);
	struct tp_h2_stream *s = NULL;

	call_unlink(call);
	if (nv != NULL)
		s = tp_h2_submit(c->h2, nv, nvlen, call->body, call->bodylen, &stream_cbs, call);
	free(nv);
	if (s != NULL) {
		if (call->patience != TP_H2_PROMPT)
			tp_h2_stream_set_patience(s, call->patience);
		call->stream = s;
		call->state = CALL_ACTIVE;
		TAILQ_INSERT_TAIL(&ch->active, call, link);
	} else if (nv != NULL && tp_h2_conn_state(c->h2) != TP_H2_READY) {
		call_requeue(call);      /* the connection just ran out of stream ids */
	} else {
		call_completef(call, TP_GRPC_INTERNAL, "cannot start an HTTP/2 stream");
	}
}

/* --- connections ------------------------------------------------------------------------------ */

static struct tp_grpc_conn *
conn_open(struct tp_grpc_channel *ch)
{
	struct tp_h2_conn_opts o;
	struct tp_grpc_conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	memset(&o, 0, sizeof(o));
	o.host = ch->host;
	o.port = ch->port;
	o.ssl_ctx = ch->ssl_ctx;
	o.server_name = ch->server_name;
	o.skip_verify = ch->skip_verify;
	o.connect_timeout_ms = ch->connect_timeout_ms;
	o.keepalive_ms = ch->keepalive_ms;
	o.keepalive_timeout_ms = ch->keepalive_timeout_ms;
	c->h2 = tp_h2_conn_new(ch->base, ch->resolver, &o, on_conn_notify, ch);
	if (c->h2 == NULL) {
		free(c);
		return NULL;
	}
	tp_h2_conn_set_lazy_read(c->h2, ch->lazy_ms);
	TAILQ_INSERT_TAIL(&ch->conns, c, link);
	ch->cur = c;
	tp_h2_conn_connect(c->h2);
	return c;
}

/* A server that found our PINGs too frequent says so; ping half as often from now on. */
static void
note_goaway(struct tp_grpc_channel *ch, struct tp_grpc_conn *c)
{
	uint32_t code;
	const char *debug;

	if (c->goaway_noted || !tp_h2_conn_goaway(c->h2, NULL, &code, &debug))
		return;
	c->goaway_noted = true;
	if (code == NGHTTP2_ENHANCE_YOUR_CALM && strcmp(debug, "too_many_pings") == 0)
		ch->keepalive_ms = ch->keepalive_ms >= TP_GRPC_KEEPALIVE_MAX / 2 ?
		    TP_GRPC_KEEPALIVE_MAX : ch->keepalive_ms * 2;
}

static void
fail_queue(struct tp_grpc_channel *ch, const char *why)
{
	struct tp_grpc_call *call;

	while ((call = TAILQ_FIRST(&ch->queue)) != NULL) {
		call_unlink(call);
		call_complete(call, TP_GRPC_UNAVAILABLE, why);
	}
}

/* Free connections that have closed. Their streams have already been closed by tp_h2. */
static void
reap_conns(struct tp_grpc_channel *ch)
{
	struct tp_grpc_conn *c, *next;

	for (c = TAILQ_FIRST(&ch->conns); c != NULL; c = next) {
		next = TAILQ_NEXT(c, link);
		note_goaway(ch, c);
		if (tp_h2_conn_state(c->h2) != TP_H2_CLOSED)
			continue;
		if (c == ch->cur) {
			ch->cur = NULL;
			/* A connection attempt failed: the calls waiting for it fail (the caller retries
			 * with backoff) instead of reconnecting in a tight loop. */
			if (!tp_h2_conn_was_ready(c->h2))
				fail_queue(ch, tp_h2_conn_error(c->h2) != NULL ? tp_h2_conn_error(c->h2) :
				    "connection closed before it was ready");
		}
		TAILQ_REMOVE(&ch->conns, c, link);
		tp_h2_conn_free(c->h2);
		free(c);
	}
}

/* Submit queued calls while the current connection has free stream slots; open one if needed. */
static void
pump(struct tp_grpc_channel *ch)
{
	struct tp_grpc_conn *c;
	bool opened = false;

	while (!TAILQ_EMPTY(&ch->queue)) {
		c = ch->cur;
		if (c != NULL && tp_h2_conn_state(c->h2) == TP_H2_DRAINING)
			c = ch->cur = NULL;      /* it finishes its streams; new ones go elsewhere */
		if (c == NULL) {
			if (opened)
				return;
			c = conn_open(ch);
			opened = true;
			if (c == NULL) {
				fail_queue(ch, "cannot create a connection (out of memory)");
				return;
			}
		}
		/* CONNECTING: wait; CLOSED: reaped (and reported) on the next dispatch. */
		if (tp_h2_conn_state(c->h2) != TP_H2_READY)
			return;
		if (tp_h2_conn_nstreams(c->h2) >= tp_h2_conn_max_streams(c->h2))
			return;
		call_submit(ch, c, TAILQ_FIRST(&ch->queue));
	}
}

/* --- dispatch --------------------------------------------------------------------------------- */

static void
call_deliver(struct tp_grpc_call *call)
{
	struct tp_grpc_status st;
	const uint8_t *msg = NULL;
	size_t len = 0;

	st.code = call->code;
	st.message = call->message != NULL ? call->message : "";
	st.details = call->details;
	st.details_len = call->details != NULL ? call->details_len : 0;
	if (call->code == TP_GRPC_OK) {
		msg = call->df.nmsgs == 1 && call->df.msg != NULL ? call->df.msg : empty_msg;
		len = call->df.nmsgs == 1 ? call->df.msg_len : 0;
	}
	call->cb(call->arg, &st, msg, len);
}

static void
deliver_done(struct tp_grpc_channel *ch)
{
	struct tp_grpc_call *call;

	while (!ch->free_pending && (call = TAILQ_FIRST(&ch->done)) != NULL) {
		TAILQ_REMOVE(&ch->done, call, link);
		call->state = CALL_DELIVERING;
		ch->npending--;
		call_deliver(call);
		call_free(call);
	}
}

static void
maybe_finish_close(struct tp_grpc_channel *ch)
{
	struct tp_grpc_conn *c;

	if (!ch->closing || ch->close_done || ch->npending > 0)
		return;
	ch->cur = NULL;
	TAILQ_FOREACH(c, &ch->conns, link) {
		if (!c->shutdown) {
			c->shutdown = true;
			tp_h2_conn_shutdown(c->h2);   /* sends GOAWAY; CLOSED later (notify) */
		}
	}
	if (!TAILQ_EMPTY(&ch->conns))
		return;
	ch->close_done = true;
	if (ch->close_cb != NULL)
		ch->close_cb(ch->close_arg);
}

static void channel_destroy(struct tp_grpc_channel *ch);

static void
on_dispatch(evutil_socket_t fd, short what, void *arg)
{
	struct tp_grpc_channel *ch = arg;

	ch->in_dispatch++;
	reap_conns(ch);
	pump(ch);
	deliver_done(ch);
	if (!ch->free_pending)
		maybe_finish_close(ch);
	ch->in_dispatch--;
	if (ch->free_pending && ch->in_dispatch == 0)
		channel_destroy(ch);
}

/* --- public API ------------------------------------------------------------------------------- */

static int
channel_tls_setup(struct tp_grpc_channel *ch, const struct tp_grpc_channel_opts *o, char *err,
    size_t errlen)
{
	struct tp_h2_tls_opts t;

	memset(&t, 0, sizeof(t));
	t.ca_file = o->tls_ca_file;
	t.cert_file = o->tls_cert_file;
	t.key_file = o->tls_key_file;
	t.skip_verify = o->tls_skip_verify;
	ch->ssl_ctx = tp_h2_tls_ctx_new(&t, err, errlen);
	return ch->ssl_ctx != NULL ? 0 : -1;
}

static char *
make_authority(const char *host, const char *port)
{
	bool v6 = strchr(host, ':') != NULL;
	size_t n = strlen(host) + strlen(port) + 4;
	char *a = malloc(n);

	if (a != NULL)
		snprintf(a, n, v6 ? "[%s]:%s" : "%s:%s", host, port);
	return a;
}

static bool
is_numeric_host(const char *host)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void
channel_set_numbers(struct tp_grpc_channel *ch, const struct tp_grpc_channel_opts *o)
{
	ch->max_recv = o->max_recv_msg > 0 ? o->max_recv_msg : TP_GRPC_DEFAULT_MAX_RECV;
	ch->keepalive_ms = o->keepalive_ms > 0 ? o->keepalive_ms : 30000;
	if (ch->keepalive_ms < TP_GRPC_KEEPALIVE_MIN)
		ch->keepalive_ms = TP_GRPC_KEEPALIVE_MIN;
	ch->keepalive_timeout_ms = o->keepalive_timeout_ms > 0 ? o->keepalive_timeout_ms : 15000;
	ch->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 10000;
	ch->tls = o->tls;
	ch->skip_verify = o->tls_skip_verify;
}

static int
channel_copy_opts(struct tp_grpc_channel *ch, const struct tp_grpc_channel_opts *o)
{
	ch->host = strdup(o->host);
	ch->port = strdup(o->port);
	ch->server_name = strdup(o->tls_server_name != NULL ? o->tls_server_name : o->host);
	ch->authority = o->authority != NULL ? strdup(o->authority) : make_authority(o->host, o->port);
	if (o->nheaders > 0)
		ch->headers = headers_copy(o->headers, o->nheaders);
	ch->nheaders = o->nheaders;
	if (ch->host == NULL || ch->port == NULL || ch->server_name == NULL ||
	    ch->authority == NULL || (o->nheaders > 0 && ch->headers == NULL))
		return -1;
	return 0;
}

struct tp_grpc_channel *
tp_grpc_channel_new(struct event_base *base, const struct tp_grpc_channel_opts *opts, char *err,
    size_t errlen)
{
	struct tp_grpc_channel *ch;

	if (base == NULL || opts == NULL || opts->host == NULL || opts->host[0] == '\0' ||
	    opts->port == NULL || opts->port[0] == '\0') {
		snprintf(err, errlen, "a channel needs an event base, a host and a port");
		return NULL;
	}
	if (!headers_valid(opts->headers, opts->nheaders)) {
		snprintf(err, errlen, "channel headers need a non-empty name and a value");
		return NULL;
	}
	ch = calloc(1, sizeof(*ch));
	if (ch == NULL)
		goto fail_nomem;
	ch->base = base;
	TAILQ_INIT(&ch->conns);
	TAILQ_INIT(&ch->queue);
	TAILQ_INIT(&ch->active);
	TAILQ_INIT(&ch->done);
	channel_set_numbers(ch, opts);
	if (channel_copy_opts(ch, opts) != 0)
		goto fail_nomem;
	ch->dispatch_ev = event_new(base, -1, 0, on_dispatch, ch);
	if (ch->dispatch_ev == NULL)
		goto fail_nomem;
	if (opts->tls && channel_tls_setup(ch, opts, err, errlen) != 0)
		goto fail;
	if (!is_numeric_host(ch->host))
		ch->resolver = tp_h2_resolver_new(base);   /* NULL: blocking fallback */
	return ch;

fail_nomem:
	snprintf(err, errlen, "out of memory");
fail:
	if (ch != NULL)
		channel_destroy(ch);
	return NULL;
}

static int
call_fill(struct tp_grpc_call *call, const char *path, const uint8_t *req, size_t len,
    const struct tp_grpc_header *extra, size_t nextra)
{
	call->path = strdup(path != NULL ? path : "");
	call->bodylen = len + 5;
	call->body = malloc(call->bodylen);
	if (call->path == NULL || call->body == NULL || len > UINT32_MAX)
		return -1;
	tp_grpc_frame_prefix(call->body, (uint32_t)len);
	if (len > 0)
		memcpy(call->body + 5, req, len);
	if (nextra > 0 && headers_valid(extra, nextra)) {
		call->extra = headers_copy(extra, nextra);
		if (call->extra == NULL)
			return -1;
		call->nextra = nextra;
	}
	return 0;
}

struct tp_grpc_call *
tp_grpc_call_start(struct tp_grpc_channel *ch, const char *path, const uint8_t *req, size_t len,
    int64_t timeout_ms, const struct tp_grpc_header *extra, size_t nextra, tp_grpc_done_cb cb,
    void *arg)
{
	struct tp_grpc_call *call = calloc(1, sizeof(*call));
	struct timeval tv;

	if (call == NULL)
		return NULL;
	call->ch = ch;
	call->cb = cb;
	call->arg = arg;
	tp_grpc_deframer_init(&call->df, ch->max_recv);
	if (call_fill(call, path, req, len, extra, nextra) != 0)
		goto fail;
	if (timeout_ms > 0) {
		call->timeout_ms = timeout_ms;
		call->deadline = tp_now_mono_ms() + timeout_ms;
		call->deadline_ev = evtimer_new(ch->base, on_deadline, call);
		if (call->deadline_ev == NULL)
			goto fail;
		tv.tv_sec = (time_t)(timeout_ms / 1000);
		tv.tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000;
		evtimer_add(call->deadline_ev, &tv);
	}
	call->seq = ch->next_seq++;
	ch->npending++;
	if (ch->closing)
		call_complete(call, TP_GRPC_UNAVAILABLE, "channel is closing");
	else if (call->path[0] != '/' || (nextra > 0 && call->extra == NULL))
		call_complete(call, TP_GRPC_INTERNAL, "invalid method path or headers");
	else
		call_requeue(call);
	schedule_dispatch(ch);
	return call;
fail:
	call_free(call);
	return NULL;
}

void
tp_grpc_call_cancel(struct tp_grpc_call *call)
{
	struct tp_grpc_channel *ch;

	if (call == NULL || call->state == CALL_DELIVERING)
		return;
	ch = call->ch;
	call_detach(call);
	ch->npending--;
	call_free(call);
	schedule_dispatch(ch);     /* a graceful close may be able to finish now */
}

void
tp_grpc_call_set_patience(struct tp_grpc_call *call, enum tp_h2_patience p)
{
	call->patience = p;
	if (call->state == CALL_ACTIVE && call->stream != NULL)
		tp_h2_stream_set_patience(call->stream, p);
}

void
tp_grpc_channel_set_lazy_read(struct tp_grpc_channel *ch, int ms)
{
	struct tp_grpc_conn *c;

	ch->lazy_ms = ms > 0 ? ms : 0;
	TAILQ_FOREACH(c, &ch->conns, link)
		tp_h2_conn_set_lazy_read(c->h2, ch->lazy_ms);
}

size_t
tp_grpc_channel_pending(const struct tp_grpc_channel *ch)
{
	return ch->npending;
}

void
tp_grpc_channel_close(struct tp_grpc_channel *ch, void (*done)(void *arg), void *arg)
{
	if (ch->closing)
		return;
	ch->closing = true;
	ch->close_cb = done;
	ch->close_arg = arg;
	schedule_dispatch(ch);
}

static void
free_call_list(struct tp_grpc_call_list *l)
{
	struct tp_grpc_call *call;

	while ((call = TAILQ_FIRST(l)) != NULL) {
		TAILQ_REMOVE(l, call, link);
		call_free(call);
	}
}

static void
channel_destroy(struct tp_grpc_channel *ch)
{
	struct tp_grpc_conn *c;

	/* Connections first: that drops their streams without any callback. */
	while ((c = TAILQ_FIRST(&ch->conns)) != NULL) {
		TAILQ_REMOVE(&ch->conns, c, link);
		tp_h2_conn_free(c->h2);
		free(c);
	}
	free_call_list(&ch->queue);
	free_call_list(&ch->active);
	free_call_list(&ch->done);
	if (ch->dispatch_ev != NULL)
		event_free(ch->dispatch_ev);
	tp_h2_resolver_unref(ch->resolver);
	if (ch->ssl_ctx != NULL)
		SSL_CTX_free(ch->ssl_ctx);
	free(ch->host);
	free(ch->port);
	free(ch->server_name);
	free(ch->authority);
	free(ch->headers);
	free(ch);
}

void
tp_grpc_channel_free(struct tp_grpc_channel *ch)
{
	if (ch == NULL)
		return;
	if (ch->in_dispatch > 0) {   /* called from one of our callbacks: finish on the way out */
		ch->free_pending = true;
		return;
	}
	channel_destroy(ch);
}
