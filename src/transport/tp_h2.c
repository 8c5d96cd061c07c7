/* tp_h2: one HTTP/2 client connection (nghttp2) on a libevent bufferevent. See tp_h2.h. */
#include "config.h"

#include "transport/tp_h2.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "core/tp_util.h"

#define TP_H2_OUTBUF_HIGH  (1u << 20)  /* hand no more frames to the socket beyond this backlog */
#define TP_H2_CLOSE_GRACE  2000        /* ms a local GOAWAY may take to flush before we just close */
#define TP_H2_PING_ACK_DELAY 200       /* ms a server PING's ACK may wait for a write of ours */
#define TP_H2_ERRLEN       512
/* Lazy reads (tp_h2_conn_set_lazy_read): fewer bytes than this do not wake the process. A
 * unary response without a body (a report's answer: HEADERS, an empty DATA, trailers) is 36
 * bytes, a PING with the WINDOW_UPDATE grpc-go sends before it 30; a poll that brings a task
 * answers with several hundred. */
#define TP_H2_LAZY_LOWAT   128

/* nghttp2 1.61 replaced the ssize_t based callbacks; use the new ones where they exist. */
#if NGHTTP2_VERSION_NUM >= 0x013d00
#define TP_H2_NEW_API 1
typedef nghttp2_ssize tp_h2_ssize;
#else
typedef ssize_t tp_h2_ssize;
#endif

struct tp_h2_resolver {
	struct event_base *base;
	struct evdns_base *dns;
	int                refs;     /* the owner's, each connection's and each lookup's */
};

/* An in-flight lookup. It may outlive its connection: a cancelled evdns lookup still calls back
 * later (with EVUTIL_EAI_CANCEL), so the callback gets this object, never the connection. */
struct tp_h2_lookup {
	struct tp_h2_conn                *c;    /* NULL once nobody waits for the answer */
	struct tp_h2_resolver            *r;    /* holds a reference until the callback */
	struct evdns_getaddrinfo_request *req;  /* NULL when answered synchronously */
};

struct tp_h2_stream {
	struct tp_h2_conn             *c;
	int32_t                        id;
	const struct tp_h2_stream_cbs *cbs;    /* NULL once detached (cancelled) */
	void                          *arg;
	const uint8_t                 *body;   /* borrowed request body */
	size_t                         bodylen;
	size_t                         bodyoff;
	bool                           headers_sent;
	bool                           remote_end;
	bool                           remote_reset;
	enum tp_h2_patience            patience;
	TAILQ_ENTRY(tp_h2_stream)      link;
};

struct tp_h2_conn {
	struct event_base     *base;
	struct tp_h2_resolver *resolver;     /* may be NULL; referenced */
	SSL_CTX               *ssl_ctx;      /* NULL: cleartext; referenced */
	char                  *host;
	char                  *port;
	char                  *server_name;
	bool                   skip_verify;
	int                    connect_timeout_ms;
	int                    keepalive_ms;
	int                    keepalive_timeout_ms;
	uint32_t               window;
	tp_h2_notify_cb        notify;
	void                  *arg;

	enum tp_h2_state       state;
	bool                   started;
	bool                   was_ready;
	bool                   shutdown_req;     /* local graceful end requested */
	bool                   term_sent;        /* our GOAWAY is queued */
	bool                   fail_pending;     /* failure noticed inside nghttp2; close when out */
	bool                   ping_outstanding;
	bool                   ack_pending;      /* a server PING waits for its ACK (see on_ping_recv) */
	uint8_t                ack_data[8];
	int64_t                ack_since;        /* monotonic ms the PING arrived */
	int                    in_session;       /* depth of nghttp2 calls on the stack */
	bool                   has_err;
	char                   err[TP_H2_ERRLEN];
	char                   attempt_err[TP_H2_ERRLEN]; /* why the last address failed */
	char                   proto_err[TP_H2_ERRLEN];   /* we sent GOAWAY with an error */
	char                   ng_msg[160];               /* nghttp2's last error text */

	bool                   goaway_recv;
	int32_t                goaway_last;
	uint32_t               goaway_code;
	char                   goaway_debug[64];

	struct tp_h2_lookup     *lookup;
	struct evutil_addrinfo  *ai;         /* resolved addresses */
	struct evutil_addrinfo  *ai_next;    /* the next one to try */

	struct bufferevent    *bev;
	struct event          *rd_ev;        /* cleartext: our own read of the socket (see on_sock_read) */
	nghttp2_session       *session;
	struct event          *timer_ev;     /* connect timeout, later the close grace */
	struct event          *ping_ev;      /* keepalive interval (persistent) */
	struct event          *ping_to_ev;   /* PING ACK deadline */
	struct event          *ack_ev;       /* our ACK of the server's PING is due */
	struct event          *work_ev;      /* deferred flush / shutdown step */

	/* lazy reads (cleartext only) */
	int                    lazy_ms;      /* 0: off */
	bool                   lowat_on;     /* the socket's SO_RCVLOWAT is TP_H2_LAZY_LOWAT */
	struct event          *lazy_ev;      /* pending whenever lowat_on: bounds the wait */
	size_t                 nprompt;      /* open streams by patience */
	size_t                 nlazy;
	size_t                 ncarrier;
	uint8_t                rx_hdr_have;  /* bytes of the current frame's header received */
	uint32_t               rx_len;       /* its length field, as far as received */
	uint32_t               rx_left;      /* payload bytes of the current frame still to come */

	TAILQ_HEAD(, tp_h2_stream) streams;
	size_t                 nstreams;
};

static void conn_fail(struct tp_h2_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_close(struct tp_h2_conn *c);
static void flush(struct tp_h2_conn *c);
static void try_next_addr(struct tp_h2_conn *c);

static struct timeval
ms_tv(int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	return tv;
}

static void
schedule_work(struct tp_h2_conn *c)
{
	event_active(c->work_ev, EV_TIMEOUT, 0);
}

/* --- TLS context ----------------------------------------------------------------------------- */

static void
ssl_err(char *err, size_t errlen, const char *what, const char *file)
{
	char buf[200] = "unknown error";
	unsigned long e = ERR_peek_error();   /* the root cause comes first */

	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	snprintf(err, errlen, "%s '%s': %s", what, file, buf);
}

static int
tls_load_files(SSL_CTX *ctx, const struct tp_h2_tls_opts *o, char *err, size_t errlen)
{
	if (o->ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
			ssl_err(err, errlen, "cannot load CA file", o->ca_file);
			return -1;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		ssl_err(err, errlen, "cannot load the default CA paths", "");
		return -1;
	}
	if (o->cert_file == NULL && o->key_file == NULL)
		return 0;
	if (o->cert_file == NULL || o->key_file == NULL) {
		snprintf(err, errlen, "a client certificate needs both a certificate and a key file");
		return -1;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
		ssl_err(err, errlen, "cannot load client certificate", o->cert_file);
		return -1;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
		ssl_err(err, errlen, "cannot load client key", o->key_file);
		return -1;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ssl_err(err, errlen, "client key does not match certificate", o->cert_file);
		return -1;
	}
	return 0;
}

SSL_CTX *
tp_h2_tls_ctx_new(const struct tp_h2_tls_opts *o, char *err, size_t errlen)
{
	static const unsigned char alpn[] = { 2, 'h', '2' };
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		snprintf(err, errlen, "cannot create a TLS context");
		return NULL;
	}
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		goto fail_generic;
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* ALPN: SSL_CTX_set_alpn_protos returns 0 on success. */
	if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn)) != 0)
		goto fail_generic;
	SSL_CTX_set_verify(ctx, o->skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
	if (tls_load_files(ctx, o, err, errlen) != 0)
		goto fail;
	return ctx;

fail_generic:
	snprintf(err, errlen, "cannot configure the TLS context");
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* --- resolver ------------------------------------------------------------------------------- */

struct tp_h2_resolver *
tp_h2_resolver_new(struct event_base *base)
{
	struct tp_h2_resolver *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->base = base;
	/* Nameservers are added only after DISABLE_WHEN_INACTIVE is in force: otherwise libevent 2.1
	 * keeps their sockets registered and the loop never runs out of events. A missing
	 * resolv.conf still leaves /etc/hosts and numeric addresses working. */
	r->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (r->dns != NULL &&
	    evdns_base_resolv_conf_parse(r->dns, DNS_OPTIONS_ALL, "/etc/resolv.conf") != 0)
		evdns_base_load_hosts(r->dns, NULL);
	if (r->dns == NULL) {
		free(r);
		return NULL;
	}
	r->refs = 1;
	return r;
}

static void
resolver_ref(struct tp_h2_resolver *r)
{
	if (r != NULL)
		r->refs++;
}

void
tp_h2_resolver_unref(struct tp_h2_resolver *r)
{
	if (r == NULL || --r->refs > 0)
		return;
	evdns_base_free(r->dns, 0);
	free(r);
}

static void
on_resolver_free(evutil_socket_t fd, short what, void *arg)
{
	tp_h2_resolver_unref(arg);
}

/* Drop a lookup's reference from inside an evdns callback, where the base cannot be freed yet. */
static void
resolver_unref_deferred(struct tp_h2_resolver *r)
{
	if (r->refs > 1) {
		r->refs--;
		return;
	}
	/* Last reference: free on the next loop turn; if that cannot be scheduled, keep it. */
	(void)event_base_once(r->base, -1, EV_TIMEOUT, on_resolver_free, r, NULL);
}

/* --- connection setup ------------------------------------------------------------------------ */

static void on_timer(evutil_socket_t fd, short what, void *arg);
static void on_ping(evutil_socket_t fd, short what, void *arg);
static void on_ping_timeout(evutil_socket_t fd, short what, void *arg);
static void on_ack_due(evutil_socket_t fd, short what, void *arg);
static void on_work(evutil_socket_t fd, short what, void *arg);
static void on_lazy_due(evutil_socket_t fd, short what, void *arg);

struct tp_h2_conn *
tp_h2_conn_new(struct event_base *base, struct tp_h2_resolver *resolver,
    const struct tp_h2_conn_opts *o, tp_h2_notify_cb notify, void *arg)
{
	struct tp_h2_conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->base = base;
	c->notify = notify;
	c->arg = arg;
	c->host = strdup(o->host);
	c->port = strdup(o->port);
	c->server_name = strdup(o->server_name != NULL ? o->server_name : o->host);
	c->timer_ev = evtimer_new(base, on_timer, c);
	c->ping_ev = event_new(base, -1, EV_PERSIST, on_ping, c);
	c->ping_to_ev = evtimer_new(base, on_ping_timeout, c);
	c->ack_ev = evtimer_new(base, on_ack_due, c);
	c->work_ev = event_new(base, -1, 0, on_work, c);
	c->lazy_ev = evtimer_new(base, on_lazy_due, c);
	TAILQ_INIT(&c->streams);
	if (c->host == NULL || c->port == NULL || c->server_name == NULL || c->timer_ev == NULL ||
	    c->ping_ev == NULL || c->ping_to_ev == NULL || c->ack_ev == NULL || c->work_ev == NULL ||
	    c->lazy_ev == NULL) {
		tp_h2_conn_free(c);
		return NULL;
	}
	c->skip_verify = o->skip_verify;
	c->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 10000;
	c->keepalive_ms = o->keepalive_ms > 0 ? o->keepalive_ms : 30000;
	c->keepalive_timeout_ms = o->keepalive_timeout_ms > 0 ? o->keepalive_timeout_ms : 15000;
	c->window = o->window_size > 0 && o->window_size <= NGHTTP2_MAX_WINDOW_SIZE ?
	    o->window_size : NGHTTP2_MAX_WINDOW_SIZE;
	if (o->ssl_ctx != NULL) {
		if (SSL_CTX_up_ref(o->ssl_ctx) != 1) {    /* never fall back to cleartext */
			tp_h2_conn_free(c);
			return NULL;
		}
		c->ssl_ctx = o->ssl_ctx;
	}
	resolver_ref(resolver);
	c->resolver = resolver;
	return c;
}

static void
on_lookup(int err, struct evutil_addrinfo *ai, void *arg)
{
	struct tp_h2_lookup *l = arg;
	struct tp_h2_conn *c = l->c;

	resolver_unref_deferred(l->r);
	free(l);
	if (c == NULL) {           /* cancelled: the connection is gone */
		if (ai != NULL)
			evutil_freeaddrinfo(ai);
		return;
	}
	c->lookup = NULL;
	if (err != 0) {
		conn_fail(c, "cannot resolve '%s': %s", c->host, evutil_gai_strerror(err));
		return;
	}
	c->ai = ai;
	c->ai_next = ai;
	try_next_addr(c);
}

static void
start_lookup(struct tp_h2_conn *c)
{
	struct evutil_addrinfo hints;
	struct tp_h2_lookup *l;
	struct evdns_getaddrinfo_request *req;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	if (c->resolver == NULL) {     /* no evdns: blocking lookup */
		struct evutil_addrinfo *ai = NULL;
		int err = evutil_getaddrinfo(c->host, c->port, &hints, &ai);

		if (err != 0) {
			conn_fail(c, "cannot resolve '%s': %s", c->host, evutil_gai_strerror(err));
			return;
		}
		c->ai = ai;
		c->ai_next = ai;
		try_next_addr(c);
		return;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL) {
		conn_fail(c, "out of memory");
		return;
	}
	l->c = c;
	l->r = c->resolver;
	resolver_ref(l->r);
	c->lookup = l;
	req = evdns_getaddrinfo(c->resolver->dns, c->host, c->port, &hints, on_lookup, l);
	if (c->lookup == l)        /* not answered synchronously */
		l->req = req;
}

void
tp_h2_conn_connect(struct tp_h2_conn *c)
{
	struct timeval tv;

	if (c->started)
		return;
	c->started = true;
	tv = ms_tv(c->connect_timeout_ms);
	evtimer_add(c->timer_ev, &tv);
	start_lookup(c);
}

static bool
is_ip_literal(const char *s)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static SSL *
make_ssl(struct tp_h2_conn *c)
{
	SSL *ssl = SSL_new(c->ssl_ctx);
	bool ip = is_ip_literal(c->server_name);

	if (ssl == NULL)
		return NULL;
	if (!ip && SSL_set_tlsext_host_name(ssl, c->server_name) != 1)
		goto fail;
	if (!c->skip_verify) {
		X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);

		X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, c->server_name) != 1 :
		    SSL_set1_host(ssl, c->server_name) != 1)
			goto fail;
	}
	return ssl;
fail:
	SSL_free(ssl);
	return NULL;
}

static void on_bev_read(struct bufferevent *bev, void *arg);
static void on_sock_read(evutil_socket_t fd, short what, void *arg);
static void on_bev_write(struct bufferevent *bev, void *arg);
static void on_bev_event(struct bufferevent *bev, short what, void *arg);

static struct bufferevent *
make_bev(struct tp_h2_conn *c)
{
	struct bufferevent *bev;
	SSL *ssl;

	if (c->ssl_ctx == NULL)
		return bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
	ssl = make_ssl(c);
	if (ssl == NULL)
		return NULL;
	bev = bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return NULL;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/* Start connecting to one address. Returns 0, or -1 with attempt_err set. */
static int
start_attempt(struct tp_h2_conn *c, const struct evutil_addrinfo *ai)
{
	struct bufferevent *bev = make_bev(c);

	if (bev == NULL) {
		snprintf(c->attempt_err, sizeof(c->attempt_err), "cannot set up the socket");
		return -1;
	}
	bufferevent_setcb(bev, on_bev_read, on_bev_write, on_bev_event, c);
	if (bufferevent_socket_connect(bev, ai->ai_addr, (int)ai->ai_addrlen) != 0) {
		snprintf(c->attempt_err, sizeof(c->attempt_err), "%s",
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		bufferevent_free(bev);
		return -1;
	}
	/* libevent does not create the socket close-on-exec; nothing forks in between. */
	(void)tp_fd_set_cloexec(bufferevent_getfd(bev));
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	c->bev = bev;
	return 0;
}

static void
try_next_addr(struct tp_h2_conn *c)
{
	while (c->ai_next != NULL) {
		struct evutil_addrinfo *ai = c->ai_next;

		c->ai_next = ai->ai_next;
		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		if (start_attempt(c, ai) == 0)
			return;
	}
	conn_fail(c, "%s", c->attempt_err[0] != '\0' ? c->attempt_err : "no usable address");
}

/* --- nghttp2 callbacks --------------------------------------------------------------------- */

static tp_h2_ssize
on_send(nghttp2_session *session, const uint8_t *data, size_t len, int flags, void *ud)
{
	struct tp_h2_conn *c = ud;

	if (c->bev == NULL)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) >= TP_H2_OUTBUF_HIGH)
		return NGHTTP2_ERR_WOULDBLOCK;
	if (bufferevent_write(c->bev, data, len) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	return (tp_h2_ssize)len;
}

static tp_h2_ssize
on_read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
    uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	struct tp_h2_stream *s = src->ptr;
	size_t n;

	if (s->cbs == NULL)        /* cancelled: its RST_STREAM is on the way */
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	n = s->bodylen - s->bodyoff;
	if (n > length)
		n = length;
	if (n > 0)
		memcpy(buf, s->body + s->bodyoff, n);
	s->bodyoff += n;
	if (s->bodyoff == s->bodylen)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (tp_h2_ssize)n;
}

static struct tp_h2_stream *
stream_of(nghttp2_session *session, int32_t id)
{
	return id > 0 ? nghttp2_session_get_stream_user_data(session, id) : NULL;
}

static void
on_settings(struct tp_h2_conn *c)
{
	struct timeval tv;

	if (c->state != TP_H2_CONNECTING)
		return;
	c->state = TP_H2_READY;
	c->was_ready = true;
	evtimer_del(c->timer_ev);
	tv = ms_tv(c->keepalive_ms);
	event_add(c->ping_ev, &tv);
}

static void
copy_printable(char *dst, size_t dstlen, const uint8_t *p, size_t n)
{
	size_t i, j = 0;

	for (i = 0; i < n && j + 1 < dstlen; i++)
		dst[j++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	dst[j] = '\0';
}

static void
on_goaway(struct tp_h2_conn *c, const nghttp2_goaway *g)
{
	c->goaway_recv = true;
	c->goaway_last = g->last_stream_id;
	c->goaway_code = g->error_code;
	copy_printable(c->goaway_debug, sizeof(c->goaway_debug), g->opaque_data, g->opaque_data_len);
	if (c->state == TP_H2_READY || c->state == TP_H2_CONNECTING)
		c->state = TP_H2_DRAINING;
}

/* The server's PING. grpc-go servers probe the bandwidth-delay product with a PING after every
 * DATA they receive while no probe is outstanding: one per request, so answering at once costs a
 * wake-up and a write on both sides per request (two or three per activity) for no use to us.
 * RFC 9113 §6.7 requires the ACK but sets no deadline. Ours waits for a write of ours at least half
 * of TP_H2_PING_ACK_DELAY after the PING, or for that delay when there is none, and goes behind
 * that write's frames: the server reads the DATA while its probe is still outstanding and sends
 * no new one, so under load it PINGs every 100-200 ms instead of per request; a keepalive PING is
 * answered well within any timeout (seconds). A second PING before the ACK answers the first. */
static void
on_ping_recv(struct tp_h2_conn *c, const uint8_t data[8])
{
	struct timeval tv;

	if (c->ack_pending)
		(void)nghttp2_submit_ping(c->session, NGHTTP2_FLAG_ACK, c->ack_data);
	memcpy(c->ack_data, data, sizeof(c->ack_data));
	c->ack_pending = true;
	c->ack_since = tp_now_mono_ms();
	tv = ms_tv(TP_H2_PING_ACK_DELAY);
	evtimer_add(c->ack_ev, &tv);
}

static int
on_frame_recv(nghttp2_session *session, const nghttp2_frame *f, void *ud)
{
	struct tp_h2_conn *c = ud;
	struct tp_h2_stream *s;

	switch (f->hd.type) {
	case NGHTTP2_SETTINGS:
		if ((f->hd.flags & NGHTTP2_FLAG_ACK) == 0)
			on_settings(c);
		break;
	case NGHTTP2_PING:
		if (f->hd.flags & NGHTTP2_FLAG_ACK) {
			c->ping_outstanding = false;
			evtimer_del(c->ping_to_ev);
		} else {
			on_ping_recv(c, f->ping.opaque_data);
		}
		return 0;
	case NGHTTP2_GOAWAY:
		on_goaway(c, &f->goaway);
		break;
	case NGHTTP2_HEADERS:
	case NGHTTP2_DATA:
		s = stream_of(session, f->hd.stream_id);
		if (s != NULL && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
			s->remote_end = true;
		return 0;
	case NGHTTP2_RST_STREAM:
		s = stream_of(session, f->hd.stream_id);
		if (s != NULL)
			s->remote_reset = true;
		return 0;
	default:
		return 0;
	}
	c->notify(c->arg);
	return 0;
}

static int
on_frame_send(nghttp2_session *session, const nghttp2_frame *f, void *ud)
{
	struct tp_h2_conn *c = ud;
	struct tp_h2_stream *s;

	if (f->hd.type == NGHTTP2_HEADERS) {
		s = stream_of(session, f->hd.stream_id);
		if (s != NULL)
			s->headers_sent = true;
	} else if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR) {
		snprintf(c->proto_err, sizeof(c->proto_err), "HTTP/2 connection error %s%s%s",
		    nghttp2_http2_strerror(f->goaway.error_code), c->ng_msg[0] ? ": " : "", c->ng_msg);
	}
	return 0;
}

static int
on_header(nghttp2_session *session, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
    const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct tp_h2_stream *s;

	if (f->hd.type != NGHTTP2_HEADERS)
		return 0;
	s = stream_of(session, f->hd.stream_id);
	if (s == NULL || s->cbs == NULL)
		return 0;
	s->cbs->on_header(s->arg, (const char *)name, namelen, (const char *)value, valuelen,
	    f->headers.cat == NGHTTP2_HCAT_HEADERS);
	return 0;
}

static int
on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
    size_t len, void *ud)
{
	struct tp_h2_stream *s = stream_of(session, id);

	if (s == NULL || s->cbs == NULL)
		return 0;
	if (s->cbs->on_data(s->arg, data, len) != 0) {
		s->cbs = NULL;
		s->arg = NULL;
		nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
	}
	return 0;
}

/* --- lazy reads -------------------------------------------------------------------------- */

/* While a LAZY stream is open, a CARRIER one too and no PROMPT one, a cleartext connection at a
 * frame boundary sets SO_RCVLOWAT to TP_H2_LAZY_LOWAT: a small answer (a report's, a PING) then
 * waits in the socket for the next larger one (a poll that brings a task) instead of waking the
 * process, for lazy_ms at most: lazy_ev, pending whenever the mark is raised and re-armed by every
 * read (which drains the socket), lowers it. A PROMPT stream, the close of the last CARRIER (no
 * larger answer is on its way then: a worker whose slots are all taken has no poll open, and a
 * report's answer frees its slot) or a frame cut by a read lowers it at once, so that what waits
 * is read as it comes. Linux wakes epoll only once a TCP socket holds SO_RCVLOWAT bytes
 * (also at EOF and on errors), and setting the option re-checks at once. */
static void
patience_count(struct tp_h2_conn *c, enum tp_h2_patience p, int d)
{
	if (p == TP_H2_PROMPT)
		c->nprompt += (size_t)d;
	else if (p == TP_H2_LAZY)
		c->nlazy += (size_t)d;
	else
		c->ncarrier += (size_t)d;
}

static void
lowat_set(struct tp_h2_conn *c, bool on)
{
	int v = on ? TP_H2_LAZY_LOWAT : 1;

	if (c->bev != NULL && setsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_RCVLOWAT, &v,
	    sizeof(v)) == 0)
		c->lowat_on = on;
	else
		c->lowat_on = false;
	if (!c->lowat_on)
		evtimer_del(c->lazy_ev);
}

/* Raise or lower the mark as the streams and the framing now allow; after_read restarts the
 * bound (the socket has just been drained). A LAZY stream raises it; once raised it stays while
 * the reads come (the bound lowers it lazy_ms after the last one), so that a busy connection does
 * not set it twice per report. */
static void
lazy_update(struct tp_h2_conn *c, bool after_read)
{
	bool allowed = c->lazy_ms > 0 && c->rd_ev != NULL && c->state != TP_H2_CLOSED &&
	    c->nprompt == 0 && c->ncarrier > 0 && c->rx_hdr_have == 0 && c->rx_left == 0;
	struct timeval tv;

	if (!allowed) {
		if (c->lowat_on)
			lowat_set(c, false);
		return;
	}
	if (!c->lowat_on) {
		if (c->nlazy == 0)
			return;
		lowat_set(c, true);
		if (!c->lowat_on)
			return;
	} else if (!after_read) {
		return;                /* the bound already runs */
	}
	tv = ms_tv(c->lazy_ms);
	evtimer_add(c->lazy_ev, &tv);
}

static void
on_lazy_due(evutil_socket_t fd, short what, void *arg)
{
	struct tp_h2_conn *c = arg;

	(void)fd;
	(void)what;
	if (c->lowat_on)
		lowat_set(c, false);   /* whatever waits is read on this loop turn */
}

/* Follow the frame boundaries in what the socket delivered (9-byte headers, 24-bit lengths). */
static void
rx_track(struct tp_h2_conn *c, const unsigned char *p, size_t n)
{
	while (n > 0) {
		if (c->rx_left > 0) {
			size_t k = n < c->rx_left ? n : c->rx_left;
			c->rx_left -= (uint32_t)k;
			p += k;
			n -= k;
			continue;
		}
		if (c->rx_hdr_have < 3)
			c->rx_len = (c->rx_len << 8) | *p;
		p++;
		n--;
		if (++c->rx_hdr_have == 9) {
			c->rx_left = c->rx_len & 0xffffffu;
			c->rx_len = 0;
			c->rx_hdr_have = 0;
		}
	}
}

static bool
is_unprocessed(const struct tp_h2_conn *c, const struct tp_h2_stream *s)
{
	return !s->headers_sent || (c->goaway_recv && s->id > c->goaway_last);
}

/* Unlink a stream, tell its owner (unless detached) and free it. */
static void
stream_release(struct tp_h2_conn *c, struct tp_h2_stream *s, uint32_t code, const char *conn_err)
{
	struct tp_h2_close_info ci;

	ci.error_code = code;
	ci.remote_end = s->remote_end;
	ci.remote_reset = s->remote_reset;
	ci.unprocessed = is_unprocessed(c, s);
	ci.conn_error = conn_err;
	TAILQ_REMOVE(&c->streams, s, link);
	c->nstreams--;
	patience_count(c, s->patience, -1);
	if (s->patience == TP_H2_CARRIER && c->ncarrier == 0)
		lazy_update(c, false);
	if (s->cbs != NULL)
		s->cbs->on_close(s->arg, &ci);
	free(s);
}

static int
on_stream_close(nghttp2_session *session, int32_t id, uint32_t code, void *ud)
{
	struct tp_h2_conn *c = ud;
	struct tp_h2_stream *s = stream_of(session, id);

	if (s == NULL)
		return 0;
	nghttp2_session_set_stream_user_data(session, id, NULL);
	stream_release(c, s, code, NULL);
	if (c->shutdown_req && c->nstreams == 0)
		schedule_work(c);
	c->notify(c->arg);
	return 0;
}

static int
on_error(nghttp2_session *session, int code, const char *msg, size_t len, void *ud)
{
	struct tp_h2_conn *c = ud;

	copy_printable(c->ng_msg, sizeof(c->ng_msg), (const uint8_t *)msg, len);
	return 0;
}

static int
session_start(struct tp_h2_conn *c)
{
	nghttp2_session_callbacks *cbs;
	nghttp2_option *opt;
	nghttp2_settings_entry iv[2] = {
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, c->window },
	};
	int rv;

	if (nghttp2_session_callbacks_new(&cbs) != 0)
		return NGHTTP2_ERR_NOMEM;
#ifdef TP_H2_NEW_API
	nghttp2_session_callbacks_set_send_callback2(cbs, on_send);
#else
	nghttp2_session_callbacks_set_send_callback(cbs, on_send);
#endif
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
	nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
	nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
	if (nghttp2_option_new(&opt) != 0) {
		nghttp2_session_callbacks_del(cbs);
		return NGHTTP2_ERR_NOMEM;
	}
	nghttp2_option_set_no_auto_ping_ack(opt, 1);     /* see on_ping_recv */
	rv = nghttp2_session_client_new2(&c->session, cbs, c, opt);
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cbs);
	if (rv != 0)
		return rv;
	rv = nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 2);
	if (rv == 0)
		rv = nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
		    (int32_t)c->window);
	return rv;
}

/* --- bufferevent callbacks ------------------------------------------------------------------ */

static bool
alpn_is_h2(struct tp_h2_conn *c)
{
	SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
	const unsigned char *p = NULL;
	unsigned int n = 0;

	if (ssl != NULL)
		SSL_get0_alpn_selected(ssl, &p, &n);
	return n == 2 && memcmp(p, "h2", 2) == 0;
}

static void
on_connected(struct tp_h2_conn *c)
{
	int one = 1, rv;

	if (c->ssl_ctx != NULL && !alpn_is_h2(c)) {
		conn_fail(c, "the server did not negotiate HTTP/2 (ALPN \"h2\")");
		return;
	}
	(void)setsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	evutil_freeaddrinfo(c->ai);
	c->ai = c->ai_next = NULL;
	rv = session_start(c);
	if (rv != 0) {
		conn_fail(c, "cannot start the HTTP/2 session: %s", nghttp2_strerror(rv));
		return;
	}
	if (c->ssl_ctx == NULL) {
		c->rd_ev = event_new(c->base, bufferevent_getfd(c->bev), EV_READ | EV_PERSIST,
		    on_sock_read, c);
		if (c->rd_ev == NULL || event_add(c->rd_ev, NULL) != 0) {
			conn_fail(c, "cannot watch the socket");
			return;
		}
		bufferevent_disable(c->bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
			on_bev_read(c->bev, c);   /* whatever the bufferevent read before the switch */
			return;
		}
	}
	flush(c);
}

/* Drain the bufferevent's OpenSSL errors and return the most telling one. libevent queues the
 * library's errors and then the bare SSL_get_error() value; prefer the first real one. */
static unsigned long
tls_error(struct bufferevent *bev)
{
	unsigned long e, best = 0;

	while ((e = bufferevent_get_openssl_error(bev)) != 0)
		if (best == 0 || (ERR_GET_LIB(best) == 0 && ERR_GET_LIB(e) != 0))
			best = e;
	return best;
}

/* Describe why a connection attempt failed (before the session existed). */
static void
attempt_error(struct tp_h2_conn *c, short what)
{
	int e = EVUTIL_SOCKET_ERROR();
	unsigned long ossl = 0;
	long vr = X509_V_OK;
	char buf[200];
	SSL *ssl = c->ssl_ctx != NULL ? bufferevent_openssl_get_ssl(c->bev) : NULL;

	if (ssl != NULL) {
		vr = SSL_get_verify_result(ssl);
		ossl = tls_error(c->bev);
	}
	if (vr != X509_V_OK) {
		snprintf(c->attempt_err, sizeof(c->attempt_err),
		    "TLS certificate verification failed: %s", X509_verify_cert_error_string(vr));
	} else if (ossl != 0) {
		ERR_error_string_n(ossl, buf, sizeof(buf));
		snprintf(c->attempt_err, sizeof(c->attempt_err), "TLS handshake failed: %s", buf);
	} else if ((what & BEV_EVENT_EOF) || e == 0) {
		snprintf(c->attempt_err, sizeof(c->attempt_err), "connection closed by peer%s",
		    ssl != NULL ? " during the TLS handshake" : "");
	} else {
		snprintf(c->attempt_err, sizeof(c->attempt_err), "%s",
		    evutil_socket_error_to_string(e));
	}
}

static void
describe_goaway(const struct tp_h2_conn *c, char *buf, size_t len)
{
	buf[0] = '\0';
	if (c->goaway_recv)
		snprintf(buf, len, " (after GOAWAY %s%s%s)", nghttp2_http2_strerror(c->goaway_code),
		    c->goaway_debug[0] ? " " : "", c->goaway_debug);
}

static void
on_transport_lost(struct tp_h2_conn *c, short what)
{
	int e = EVUTIL_SOCKET_ERROR();
	unsigned long ossl = 0;
	char ga[120], buf[200];

	if (c->state == TP_H2_DRAINING && c->nstreams == 0) {
		conn_close(c);
		return;
	}
	describe_goaway(c, ga, sizeof(ga));
	if (c->ssl_ctx != NULL)
		ossl = tls_error(c->bev);
	if (ossl != 0 && ERR_GET_LIB(ossl) != 0) {
		ERR_error_string_n(ossl, buf, sizeof(buf));
		conn_fail(c, "TLS error: %s%s", buf, ga);
	} else if (what & BEV_EVENT_EOF) {
		conn_fail(c, "connection closed by peer%s", ga);
	} else {
		conn_fail(c, "connection error: %s%s", evutil_socket_error_to_string(e), ga);
	}
}

static void
on_bev_event(struct bufferevent *bev, short what, void *arg)
{
	struct tp_h2_conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		on_connected(c);
		return;
	}
	if ((what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) == 0)
		return;
	if (c->session == NULL) {      /* this address failed; try the next one */
		attempt_error(c, what);
		bufferevent_free(c->bev);
		c->bev = NULL;
		try_next_addr(c);
		return;
	}
	on_transport_lost(c, what);
}

/* Hand received bytes to the session. Returns false when the connection was closed or failed on
 * the way (c must not be touched further by the caller's loop). */
static bool
feed(struct tp_h2_conn *c, const unsigned char *p, size_t n)
{
	tp_h2_ssize rv;

	c->in_session++;
#ifdef TP_H2_NEW_API
	rv = nghttp2_session_mem_recv2(c->session, p, n);
#else
	rv = nghttp2_session_mem_recv(c->session, p, n);
#endif
	c->in_session--;
	if (c->fail_pending) {
		conn_close(c);
		return false;
	}
	if (rv < 0) {
		conn_fail(c, "HTTP/2 error: %s", nghttp2_strerror((int)rv));
		return false;
	}
	return true;
}

static void
on_bev_read(struct bufferevent *bev, void *arg)
{
	struct tp_h2_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n;

	while (c->session != NULL && (n = evbuffer_get_contiguous_space(in)) > 0) {
		unsigned char *p = evbuffer_pullup(in, (ssize_t)n);
		rx_track(c, p, n);
		if (!feed(c, p, n))
			return;
		evbuffer_drain(in, n);
	}
	flush(c);
}

/* Cleartext reads bypass the bufferevent: it asks the kernel how much is readable (FIONREAD) before
 * every read and copies into its buffer; here one recv() into the stack per wake-up (four or five per
 * activity) goes straight to nghttp2, which consumes all of it. TLS keeps the bufferevent. */
static void
on_sock_read(evutil_socket_t fd, short what, void *arg)
{
	struct tp_h2_conn *c = arg;
	unsigned char buf[16384];
	ssize_t n;

	(void)what;
	for (int i = 0; i < 4 && c->session != NULL; i++) {
		n = recv(fd, buf, sizeof(buf), 0);
		if (n == 0) {
			on_transport_lost(c, BEV_EVENT_READING | BEV_EVENT_EOF);
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			on_transport_lost(c, BEV_EVENT_READING | BEV_EVENT_ERROR);
			return;
		}
		rx_track(c, buf, (size_t)n);
		if (!feed(c, buf, (size_t)n))
			return;
		if ((size_t)n < sizeof(buf))
			break;
	}
	lazy_update(c, true);
	flush(c);
}

static void
on_bev_write(struct bufferevent *bev, void *arg)
{
	flush(arg);
}

/* --- sending, ending --------------------------------------------------------------------- */

/* The session wants nothing more (GOAWAY exchanged and no stream left): close once written. */
static void
check_session_done(struct tp_h2_conn *c)
{
	if (nghttp2_session_want_read(c->session) || nghttp2_session_want_write(c->session))
		return;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return;                /* on_bev_write comes back when it is written */
	if (c->proto_err[0] != '\0')
		conn_fail(c, "%s", c->proto_err);
	else
		conn_close(c);
}

/* Cleartext: hand what the session queued to the socket at once. Left to the bufferevent, each send
 * enables EV_WRITE, comes back through the loop and disables it again: two epoll_ctl and a loop turn
 * for a few hundred bytes, several times per activity. EV_WRITE stays enabled only while the socket
 * has not taken everything (its callback flushes again, and reports a write error). TLS keeps going
 * through the bufferevent. */
static void
write_out(struct tp_h2_conn *c)
{
	struct evbuffer *out;

	if (c->ssl_ctx != NULL)
		return;
	out = bufferevent_get_output(c->bev);
	if (evbuffer_get_length(out) > 0)
		(void)evbuffer_write(out, bufferevent_getfd(c->bev));
	if (evbuffer_get_length(out) > 0)
		bufferevent_enable(c->bev, EV_WRITE);
	else
		bufferevent_disable(c->bev, EV_WRITE);
}

static void
flush_ack(struct tp_h2_conn *c, bool ack_now)
{
	int rv;

	if (c->session == NULL || c->state == TP_H2_CLOSED)
		return;
	c->in_session++;
	rv = nghttp2_session_send(c->session);
	if (rv == 0 && c->ack_pending && (ack_now || (tp_now_mono_ms() - c->ack_since >=
	    TP_H2_PING_ACK_DELAY / 2 && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0))) {
		c->ack_pending = false;
		evtimer_del(c->ack_ev);
		/* Refused only once the session is ending, when the ACK no longer matters. */
		if (nghttp2_submit_ping(c->session, NGHTTP2_FLAG_ACK, c->ack_data) == 0)
			rv = nghttp2_session_send(c->session);
	}
	c->in_session--;
	if (c->fail_pending) {
		conn_close(c);
		return;
	}
	if (rv != 0) {
		conn_fail(c, "HTTP/2 error: %s", nghttp2_strerror(rv));
		return;
	}
	write_out(c);
	check_session_done(c);
}

/* Hand what the session queued to the transport, with a waiting PING ACK behind it once the PING
 * is half its allowed delay old (see on_ping_recv). */
static void
flush(struct tp_h2_conn *c)
{
	flush_ack(c, false);
}

static void
on_ack_due(evutil_socket_t fd, short what, void *arg)
{
	flush_ack(arg, true);
}

static void
on_work(evutil_socket_t fd, short what, void *arg)
{
	struct tp_h2_conn *c = arg;
	struct timeval tv;

	if (c->state == TP_H2_CLOSED)
		return;
	if (c->fail_pending) {
		conn_close(c);
		return;
	}
	lazy_update(c, false);
	if (c->shutdown_req && !c->term_sent && c->nstreams == 0 && c->session != NULL) {
		c->term_sent = true;
		nghttp2_session_terminate_session(c->session, NGHTTP2_NO_ERROR);
		tv = ms_tv(TP_H2_CLOSE_GRACE);
		evtimer_add(c->timer_ev, &tv);
	}
	flush(c);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct tp_h2_conn *c = arg;
	const char *phase;

	if (c->state != TP_H2_CONNECTING) {   /* the close grace ran out */
		conn_close(c);
		return;
	}
	if (c->lookup != NULL)
		phase = "resolving the name";
	else if (c->session == NULL)
		phase = c->ssl_ctx != NULL ? "connecting (TCP/TLS)" : "connecting (TCP)";
	else
		phase = "waiting for the server's HTTP/2 SETTINGS";
	conn_fail(c, "timed out after %d ms %s", c->connect_timeout_ms, phase);
}

static void
on_ping(evutil_socket_t fd, short what, void *arg)
{
	struct tp_h2_conn *c = arg;
	struct timeval tv;

	if (c->session == NULL || c->ping_outstanding)
		return;
	if (nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, NULL) != 0)
		return;
	c->ping_outstanding = true;
	tv = ms_tv(c->keepalive_timeout_ms);
	evtimer_add(c->ping_to_ev, &tv);
	flush(c);
}

static void
on_ping_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct tp_h2_conn *c = arg;

	conn_fail(c, "keepalive PING not acknowledged within %d ms", c->keepalive_timeout_ms);
}

/* Cancel the lookup (its callback still comes, with no connection to report to). */
static void
drop_lookup(struct tp_h2_conn *c)
{
	struct tp_h2_lookup *l = c->lookup;
	struct evdns_getaddrinfo_request *req;

	if (l == NULL)
		return;
	c->lookup = NULL;
	l->c = NULL;
	req = l->req;
	if (req != NULL)
		evdns_getaddrinfo_cancel(req);
}

/* Release every transport resource (no callback). */
static void
teardown(struct tp_h2_conn *c)
{
	drop_lookup(c);
	if (c->timer_ev != NULL)      /* NULL only when tp_h2_conn_new failed half-way */
		evtimer_del(c->timer_ev);
	if (c->ping_ev != NULL)
		event_del(c->ping_ev);
	if (c->ping_to_ev != NULL)
		evtimer_del(c->ping_to_ev);
	if (c->ack_ev != NULL)
		evtimer_del(c->ack_ev);
	c->ack_pending = false;
	if (c->work_ev != NULL)
		event_del(c->work_ev);
	if (c->lazy_ev != NULL)
		evtimer_del(c->lazy_ev);
	c->lowat_on = false;
	if (c->session != NULL) {
		nghttp2_session_del(c->session);
		c->session = NULL;
	}
	if (c->rd_ev != NULL) {
		event_free(c->rd_ev);
		c->rd_ev = NULL;
	}
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	if (c->ai != NULL) {
		evutil_freeaddrinfo(c->ai);
		c->ai = c->ai_next = NULL;
	}
}

/* Move to CLOSED: tear down, close every stream, tell the owner. */
static void
conn_close(struct tp_h2_conn *c)
{
	struct tp_h2_stream *s;
	const char *why = c->has_err ? c->err : "connection closed";

	if (c->state == TP_H2_CLOSED)
		return;
	c->fail_pending = false;
	teardown(c);
	c->state = TP_H2_CLOSED;
	while ((s = TAILQ_FIRST(&c->streams)) != NULL)
		stream_release(c, s, NGHTTP2_NO_ERROR, why);
	c->notify(c->arg);
}

static void
conn_fail(struct tp_h2_conn *c, const char *fmt, ...)
{
	char reason[TP_H2_ERRLEN - 128];
	va_list ap;

	if (c->state == TP_H2_CLOSED || c->fail_pending)
		return;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (c->state == TP_H2_CONNECTING)
		snprintf(c->err, sizeof(c->err), "connect to %s:%s failed: %s", c->host, c->port, reason);
	else
		snprintf(c->err, sizeof(c->err), "%s", reason);
	c->has_err = true;
	if (c->in_session > 0) {   /* never free the session under nghttp2's feet */
		c->fail_pending = true;
		schedule_work(c);
		return;
	}
	conn_close(c);
}

void
tp_h2_conn_shutdown(struct tp_h2_conn *c)
{
	if (c == NULL || c->state == TP_H2_CLOSED)
		return;
	if (c->state == TP_H2_CONNECTING || c->session == NULL) {
		conn_close(c);
		return;
	}
	c->shutdown_req = true;
	c->state = TP_H2_DRAINING;
	schedule_work(c);
}

void
tp_h2_conn_free(struct tp_h2_conn *c)
{
	struct tp_h2_stream *s;

	if (c == NULL)
		return;
	teardown(c);
	while ((s = TAILQ_FIRST(&c->streams)) != NULL) {
		TAILQ_REMOVE(&c->streams, s, link);
		free(s);
	}
	if (c->timer_ev != NULL)
		event_free(c->timer_ev);
	if (c->ping_ev != NULL)
		event_free(c->ping_ev);
	if (c->ping_to_ev != NULL)
		event_free(c->ping_to_ev);
	if (c->ack_ev != NULL)
		event_free(c->ack_ev);
	if (c->work_ev != NULL)
		event_free(c->work_ev);
	if (c->lazy_ev != NULL)
		event_free(c->lazy_ev);
	if (c->ssl_ctx != NULL)
		SSL_CTX_free(c->ssl_ctx);
	tp_h2_resolver_unref(c->resolver);
	free(c->host);
	free(c->port);
	free(c->server_name);
	free(c);
}

/* --- queries ----------------------------------------------------------------------------- */

enum tp_h2_state
tp_h2_conn_state(const struct tp_h2_conn *c)
{
	return c->state;
}

bool
tp_h2_conn_was_ready(const struct tp_h2_conn *c)
{
	return c->was_ready;
}

const char *
tp_h2_conn_error(const struct tp_h2_conn *c)
{
	return c->state == TP_H2_CLOSED && c->has_err ? c->err : NULL;
}

bool
tp_h2_conn_goaway(const struct tp_h2_conn *c, int32_t *last_stream_id, uint32_t *error_code,
    const char **debug)
{
	if (!c->goaway_recv)
		return false;
	if (last_stream_id != NULL)
		*last_stream_id = c->goaway_last;
	if (error_code != NULL)
		*error_code = c->goaway_code;
	if (debug != NULL)
		*debug = c->goaway_debug;
	return true;
}

size_t
tp_h2_conn_nstreams(const struct tp_h2_conn *c)
{
	return c->nstreams;
}

uint32_t
tp_h2_conn_max_streams(const struct tp_h2_conn *c)
{
	if (c->session == NULL || !c->was_ready)
		return UINT32_MAX;
	return nghttp2_session_get_remote_settings(c->session,
	    NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

/* --- streams ------------------------------------------------------------------------------- */

struct tp_h2_stream *
tp_h2_submit(struct tp_h2_conn *c, const nghttp2_nv *nva, size_t nvlen,
    const uint8_t *body, size_t bodylen, const struct tp_h2_stream_cbs *cbs, void *arg)
{
	struct tp_h2_stream *s;
	int32_t id;

	if (c->state != TP_H2_READY || c->session == NULL)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	s->c = c;
	s->cbs = cbs;
	s->arg = arg;
	s->body = body;
	s->bodylen = bodylen;
	{
#ifdef TP_H2_NEW_API
		nghttp2_data_provider2 dp;
		dp.source.ptr = s;
		dp.read_callback = on_read_body;
		id = nghttp2_submit_request2(c->session, NULL, nva, nvlen, &dp, s);
#else
		nghttp2_data_provider dp;
		dp.source.ptr = s;
		dp.read_callback = on_read_body;
		id = nghttp2_submit_request(c->session, NULL, nva, nvlen, &dp, s);
#endif
	}
	if (id < 0) {
		free(s);
		if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
			/* Out of stream ids: finish what is open, then close. */
			tp_h2_conn_shutdown(c);
		}
		return NULL;
	}
	s->id = id;
	s->patience = TP_H2_PROMPT;
	TAILQ_INSERT_TAIL(&c->streams, s, link);
	c->nstreams++;
	patience_count(c, s->patience, 1);
	schedule_work(c);          /* its on_work lowers the mark if the stream stays PROMPT */
	return s;
}

void
tp_h2_stream_set_patience(struct tp_h2_stream *s, enum tp_h2_patience p)
{
	patience_count(s->c, s->patience, -1);
	s->patience = p;
	patience_count(s->c, p, 1);
	lazy_update(s->c, false);
}

void
tp_h2_conn_set_lazy_read(struct tp_h2_conn *c, int ms)
{
	c->lazy_ms = ms > 0 ? ms : 0;
	lazy_update(c, false);
}

void
tp_h2_stream_cancel(struct tp_h2_stream *s, uint32_t error_code)
{
	struct tp_h2_conn *c = s->c;

	s->cbs = NULL;
	s->arg = NULL;
	if (c->session != NULL)
		nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, s->id, error_code);
	schedule_work(c);
}

int32_t
tp_h2_stream_id(const struct tp_h2_stream *s)
{
	return s->id;
}
