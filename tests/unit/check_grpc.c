/* Unit tests for tp_grpc: the pure helpers, then the channel against a small in-process HTTP/2
 * server (nghttp2 server session on a loopback listener, same event loop). */
#include "config.h"

#include <check.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <nghttp2/nghttp2.h>

#include "transport/tp_grpc.h"
#include "transport/tp_h2.h"
#include "core/tp_util.h"

/* ============================================================================================ *
 * Pure helpers                                                                                  *
 * ============================================================================================ */

START_TEST(test_frame_prefix)
{
	uint8_t p[5];

	tp_grpc_frame_prefix(p, 0);
	ck_assert_mem_eq(p, "\0\0\0\0\0", 5);
	tp_grpc_frame_prefix(p, 0x01020304);
	ck_assert_mem_eq(p, "\0\x01\x02\x03\x04", 5);
	tp_grpc_frame_prefix(p, 0xffffffffu);
	ck_assert_mem_eq(p, "\0\xff\xff\xff\xff", 5);
}
END_TEST

/* prefix + "hello grpc" */
static size_t
framed(uint8_t *buf, const char *msg)
{
	size_t n = strlen(msg);

	tp_grpc_frame_prefix(buf, (uint32_t)n);
	memcpy(buf + 5, msg, n);
	return n + 5;
}

START_TEST(test_deframer_bytewise)
{
	struct tp_grpc_deframer d;
	uint8_t buf[64];
	size_t n = framed(buf, "hello grpc"), i;

	tp_grpc_deframer_init(&d, 1024);
	for (i = 0; i < n; i++) {
		ck_assert(!tp_grpc_deframer_done(&d));
		ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf + i, 1), 0);
	}
	ck_assert(tp_grpc_deframer_done(&d));
	ck_assert_uint_eq(d.msg_len, 10);
	ck_assert_mem_eq(d.msg, "hello grpc", 10);
	tp_grpc_deframer_free(&d);
}
END_TEST

START_TEST(test_deframer_splits)
{
	uint8_t buf[64];
	size_t n = framed(buf, "0123456789abcdef"), a, b;

	/* Every split into three pieces, empty pieces included. */
	for (a = 0; a <= n; a++) {
		for (b = a; b <= n; b++) {
			struct tp_grpc_deframer d;

			tp_grpc_deframer_init(&d, 16);
			ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, a), 0);
			ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf + a, b - a), 0);
			ck_assert(tp_grpc_deframer_done(&d) == (b == n));
			ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf + b, n - b), 0);
			ck_assert(tp_grpc_deframer_done(&d));
			ck_assert_mem_eq(d.msg, "0123456789abcdef", 16);
			tp_grpc_deframer_free(&d);
		}
	}
}
END_TEST

START_TEST(test_deframer_partial_and_empty)
{
	struct tp_grpc_deframer d;
	uint8_t buf[8];

	tp_grpc_deframer_init(&d, 16);
	tp_grpc_frame_prefix(buf, 4);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, 3), 0);
	ck_assert(!tp_grpc_deframer_done(&d));
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf + 3, 2), 0);
	ck_assert(!tp_grpc_deframer_done(&d));        /* header only, body missing */
	tp_grpc_deframer_free(&d);

	/* A zero-length message is complete with its prefix. */
	tp_grpc_deframer_init(&d, 16);
	tp_grpc_frame_prefix(buf, 0);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, 5), 0);
	ck_assert(tp_grpc_deframer_done(&d));
	ck_assert_uint_eq(d.msg_len, 0);
	tp_grpc_deframer_free(&d);

	/* Nothing at all: not done (the caller treats it as an empty response). */
	tp_grpc_deframer_init(&d, 16);
	ck_assert(!tp_grpc_deframer_done(&d));
	ck_assert_int_eq(d.nmsgs, 0);
	tp_grpc_deframer_free(&d);
}
END_TEST

START_TEST(test_deframer_oversize)
{
	struct tp_grpc_deframer d;
	uint8_t buf[64];
	size_t n = framed(buf, "12345");

	tp_grpc_deframer_init(&d, 4);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, 2), 0);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf + 2, n - 2), TP_GRPC_RESOURCE_EXHAUSTED);
	ck_assert_uint_eq(d.msg_len, 5);
	/* sticky */
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, 1), TP_GRPC_RESOURCE_EXHAUSTED);
	ck_assert(!tp_grpc_deframer_done(&d));
	tp_grpc_deframer_free(&d);

	/* exactly max is fine */
	tp_grpc_deframer_init(&d, 5);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, n), 0);
	ck_assert(tp_grpc_deframer_done(&d));
	tp_grpc_deframer_free(&d);
}
END_TEST

START_TEST(test_deframer_compressed)
{
	struct tp_grpc_deframer d;
	uint8_t buf[64];
	size_t n = framed(buf, "zz");

	buf[0] = 1;
	tp_grpc_deframer_init(&d, 64);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, n), TP_GRPC_INTERNAL);
	ck_assert(!tp_grpc_deframer_done(&d));
	tp_grpc_deframer_free(&d);

	buf[0] = 0x80;            /* reserved flag bits */
	tp_grpc_deframer_init(&d, 64);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, n), TP_GRPC_INTERNAL);
	tp_grpc_deframer_free(&d);
}
END_TEST

START_TEST(test_deframer_two_messages)
{
	struct tp_grpc_deframer d;
	uint8_t buf[64];
	size_t n = framed(buf, "one");

	n += framed(buf + n, "two");
	tp_grpc_deframer_init(&d, 64);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, n), TP_GRPC_INTERNAL);
	ck_assert_int_eq(d.nmsgs, 1);
	ck_assert(!tp_grpc_deframer_done(&d));
	tp_grpc_deframer_free(&d);

	/* the same, one byte at a time: the error comes with the first extra byte */
	tp_grpc_deframer_init(&d, 64);
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf, 8), 0);
	ck_assert(tp_grpc_deframer_done(&d));
	ck_assert_int_eq(tp_grpc_deframer_feed(&d, buf + 8, 1), TP_GRPC_INTERNAL);
	tp_grpc_deframer_free(&d);
}
END_TEST

static const char *
enc(int64_t ms)
{
	static char buf[32];

	ck_assert_int_gt(tp_grpc_timeout_encode(ms, buf, sizeof(buf)), 0);
	return buf;
}

START_TEST(test_timeout_encode)
{
	char small[3];
	int64_t samples[] = { 1, 7, 999, 1000, 1001, 1500, 59999, 60000, 70000, 3600000, 3600001,
	    99999999, 100000000, 100000001, 123456789012LL, INT64_MAX / 4 };
	size_t i;

	ck_assert_str_eq(enc(1), "1m");
	ck_assert_str_eq(enc(999), "999m");
	ck_assert_str_eq(enc(1500), "1500m");
	ck_assert_str_eq(enc(70000), "70S");
	ck_assert_str_eq(enc(1000), "1S");
	ck_assert_str_eq(enc(60000), "1M");
	ck_assert_str_eq(enc(120000), "2M");
	ck_assert_str_eq(enc(3600000), "1H");
	ck_assert_str_eq(enc(7200000), "2H");
	ck_assert_str_eq(enc(99999999), "99999999m");
	ck_assert_str_eq(enc(100000000), "100000S");   /* 9 digits of ms do not fit */
	ck_assert_str_eq(enc(100000001), "100001S");   /* rounded up */
	ck_assert_str_eq(enc(0), "1n");
	ck_assert_str_eq(enc(-5), "1n");
	/* every encoding: at most 8 digits, never shorter than asked */
	for (i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		const char *s = enc(samples[i]);

		ck_assert_uint_le(strlen(s), 9);
		ck_assert_int_ge(tp_grpc_timeout_decode(s), samples[i] < 99999999LL * 3600000 ?
		    samples[i] : 99999999LL * 3600000);
	}
	ck_assert_str_eq(enc(INT64_MAX), "99999999H");
	ck_assert_int_eq(tp_grpc_timeout_encode(1500, small, sizeof(small)), -1);
	ck_assert_int_eq(tp_grpc_timeout_encode(5, small, sizeof(small)), 2);
	ck_assert_str_eq(small, "5m");
}
END_TEST

START_TEST(test_timeout_decode)
{
	ck_assert_int_eq(tp_grpc_timeout_decode("1H"), 3600000);
	ck_assert_int_eq(tp_grpc_timeout_decode("2M"), 120000);
	ck_assert_int_eq(tp_grpc_timeout_decode("70S"), 70000);
	ck_assert_int_eq(tp_grpc_timeout_decode("1500m"), 1500);
	ck_assert_int_eq(tp_grpc_timeout_decode("1500u"), 2);
	ck_assert_int_eq(tp_grpc_timeout_decode("1000u"), 1);
	ck_assert_int_eq(tp_grpc_timeout_decode("1n"), 1);
	ck_assert_int_eq(tp_grpc_timeout_decode("1000000n"), 1);
	ck_assert_int_eq(tp_grpc_timeout_decode("1000001n"), 2);
	ck_assert_int_eq(tp_grpc_timeout_decode("0m"), 0);
	ck_assert_int_eq(tp_grpc_timeout_decode("99999999H"), 99999999LL * 3600000);
	ck_assert_int_eq(tp_grpc_timeout_decode(NULL), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode(""), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("S"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("12"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("123456789S"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("1x"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("-1S"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("1 S"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("1SS"), -1);
	ck_assert_int_eq(tp_grpc_timeout_decode("+1S"), -1);
}
END_TEST

START_TEST(test_code_from_http)
{
	ck_assert_int_eq(tp_grpc_code_from_http(400), TP_GRPC_INTERNAL);
	ck_assert_int_eq(tp_grpc_code_from_http(401), TP_GRPC_UNAUTHENTICATED);
	ck_assert_int_eq(tp_grpc_code_from_http(403), TP_GRPC_PERMISSION_DENIED);
	ck_assert_int_eq(tp_grpc_code_from_http(404), TP_GRPC_UNIMPLEMENTED);
	ck_assert_int_eq(tp_grpc_code_from_http(429), TP_GRPC_UNAVAILABLE);
	ck_assert_int_eq(tp_grpc_code_from_http(502), TP_GRPC_UNAVAILABLE);
	ck_assert_int_eq(tp_grpc_code_from_http(503), TP_GRPC_UNAVAILABLE);
	ck_assert_int_eq(tp_grpc_code_from_http(504), TP_GRPC_UNAVAILABLE);
	ck_assert_int_eq(tp_grpc_code_from_http(200), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_from_http(500), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_from_http(415), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_from_http(0), TP_GRPC_UNKNOWN);
}
END_TEST

START_TEST(test_code_from_h2_error)
{
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_REFUSED_STREAM), TP_GRPC_UNAVAILABLE);
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_CANCEL), TP_GRPC_CANCELLED);
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_ENHANCE_YOUR_CALM),
	    TP_GRPC_RESOURCE_EXHAUSTED);
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_INADEQUATE_SECURITY),
	    TP_GRPC_PERMISSION_DENIED);
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_NO_ERROR), TP_GRPC_INTERNAL);
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_PROTOCOL_ERROR), TP_GRPC_INTERNAL);
	ck_assert_int_eq(tp_grpc_code_from_h2_error(NGHTTP2_INTERNAL_ERROR), TP_GRPC_INTERNAL);
}
END_TEST

START_TEST(test_code_names_parse)
{
	ck_assert_str_eq(tp_grpc_code_name(0), "OK");
	ck_assert_str_eq(tp_grpc_code_name(4), "DEADLINE_EXCEEDED");
	ck_assert_str_eq(tp_grpc_code_name(14), "UNAVAILABLE");
	ck_assert_str_eq(tp_grpc_code_name(16), "UNAUTHENTICATED");
	ck_assert_str_eq(tp_grpc_code_name(17), "UNKNOWN_CODE");
	ck_assert_str_eq(tp_grpc_code_name(-1), "UNKNOWN_CODE");

	ck_assert_int_eq(tp_grpc_code_parse("0", 1), 0);
	ck_assert_int_eq(tp_grpc_code_parse("3", 1), 3);
	ck_assert_int_eq(tp_grpc_code_parse("16", 2), 16);
	ck_assert_int_eq(tp_grpc_code_parse("14xyz", 2), 14);   /* only len bytes count */
	ck_assert_int_eq(tp_grpc_code_parse("17", 2), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_parse("", 0), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_parse(NULL, 0), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_parse("-1", 2), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_parse("1a", 2), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_parse(" 1", 2), TP_GRPC_UNKNOWN);
	ck_assert_int_eq(tp_grpc_code_parse("1000", 4), TP_GRPC_UNKNOWN);
}
END_TEST

static const char *
pdec(const char *in, size_t outlen)
{
	static char out[128];

	tp_grpc_percent_decode(in, strlen(in), out, outlen);
	return out;
}

START_TEST(test_percent_decode)
{
	char one[1] = { 'x' };

	ck_assert_str_eq(pdec("a%20b", 128), "a b");
	ck_assert_str_eq(pdec("Context%20timeout%20is%20not%20set.", 128), "Context timeout is not set.");
	ck_assert_str_eq(pdec("%C3%A9t%c3%a9", 128), "\xc3\xa9t\xc3\xa9");
	ck_assert_str_eq(pdec("100%", 128), "100%");
	ck_assert_str_eq(pdec("%2", 128), "%2");
	ck_assert_str_eq(pdec("%zz%2g", 128), "%zz%2g");
	ck_assert_str_eq(pdec("%%41", 128), "%A");
	ck_assert_str_eq(pdec("plain", 128), "plain");
	ck_assert_str_eq(pdec("", 128), "");
	ck_assert_str_eq(pdec("a%20bcdef", 4), "a b");          /* truncated to outlen - 1 */
	tp_grpc_percent_decode("abc", 3, one, 1);
	ck_assert_int_eq(one[0], '\0');
}
END_TEST

static bool
b64_is(const char *in, const char *want, size_t wantlen)
{
	size_t n = 12345;
	uint8_t *out = tp_grpc_base64_decode(in, strlen(in), &n);
	bool ok = out != NULL && n == wantlen && memcmp(out, want, wantlen) == 0;

	free(out);
	return ok;
}

static bool
b64_bad(const char *in)
{
	size_t n;
	uint8_t *out = tp_grpc_base64_decode(in, strlen(in), &n);

	free(out);
	return out == NULL;
}

START_TEST(test_base64)
{
	ck_assert(b64_is("aGVsbG8=", "hello", 5));
	ck_assert(b64_is("aGVsbG8", "hello", 5));
	ck_assert(b64_is("aGk=", "hi", 2));
	ck_assert(b64_is("aGk", "hi", 2));
	ck_assert(b64_is("aGVs", "hel", 3));
	ck_assert(b64_is("", "", 0));
	ck_assert(b64_is("AAEC/+8=", "\x00\x01\x02\xff\xef", 5));
	ck_assert(b64_is("CAMSBGJhZCE", "\x08\x03\x12\x04" "bad!", 8));
	ck_assert(b64_bad("a"));
	ck_assert(b64_bad("aGVsb"));          /* 5 chars: impossible length */
	ck_assert(b64_bad("aGk*"));
	ck_assert(b64_bad("a=bc"));
	ck_assert(b64_bad("aGVsbG8=="));      /* too much padding */
	ck_assert(b64_bad("aG=k"));
	ck_assert(b64_bad("aGVs bG8="));
	ck_assert(b64_bad("aGVs-_8"));        /* URL-safe alphabet is not accepted */
}
END_TEST

START_TEST(test_backoff)
{
	struct tp_backoff b;
	int round, i;

	tp_backoff_init(&b, 100, 5000, 2.0, 0.2);
	for (round = 0; round < 3; round++) {
		int64_t expect = 100;

		for (i = 0; i < 30; i++) {
			int64_t d = tp_backoff_next(&b);

			ck_assert_int_ge(d, (int64_t)(expect * 0.8) - 1);
			ck_assert_int_le(d, (int64_t)(expect * 1.2) + 1);
			ck_assert_int_le(d, 6001);
			ck_assert_int_eq(b.attempts, i + 1);
			expect = expect * 2 > 5000 ? 5000 : expect * 2;
			ck_assert_int_eq(b.next_ms, expect);
		}
		tp_backoff_reset(&b);
		ck_assert_int_eq(b.attempts, 0);
		ck_assert_int_eq(b.next_ms, 100);
	}

	/* no jitter: exact growth by a non-integer multiplier, then the cap */
	tp_backoff_init(&b, 100, 1000, 1.7, 0.0);
	ck_assert_int_eq(tp_backoff_next(&b), 100);
	ck_assert_int_eq(tp_backoff_next(&b), 170);
	ck_assert_int_eq(tp_backoff_next(&b), 289);
	ck_assert_int_eq(tp_backoff_next(&b), 491);
	ck_assert_int_eq(tp_backoff_next(&b), 835);
	ck_assert_int_eq(tp_backoff_next(&b), 1000);
	ck_assert_int_eq(tp_backoff_next(&b), 1000);

	/* jitter spreads: not every delay equal */
	{
		int64_t first, d;
		bool differs = false;

		tp_backoff_init(&b, 1000, 1000, 1.0, 0.5);
		first = tp_backoff_next(&b);
		for (i = 0; i < 50; i++) {
			d = tp_backoff_next(&b);
			ck_assert_int_ge(d, 499);
			ck_assert_int_le(d, 1501);
			differs = differs || d != first;
		}
		ck_assert(differs);
	}
}
END_TEST

START_TEST(test_retryable)
{
	ck_assert(tp_grpc_is_retryable(TP_GRPC_UNAVAILABLE, "connection refused"));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_DATA_LOSS, NULL));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_INTERNAL, ""));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_UNKNOWN, NULL));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_ABORTED, NULL));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_OUT_OF_RANGE, NULL));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_RESOURCE_EXHAUSTED, "namespace rate limit exceeded"));
	ck_assert(tp_grpc_is_retryable(TP_GRPC_RESOURCE_EXHAUSTED, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_RESOURCE_EXHAUSTED,
	    "grpc: received message larger than max (5000 vs. 4096)"));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_RESOURCE_EXHAUSTED,
	    "grpc: trying to send message larger than max (5000 vs. 4096)"));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_OK, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_CANCELLED, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_INVALID_ARGUMENT, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_DEADLINE_EXCEEDED, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_NOT_FOUND, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_ALREADY_EXISTS, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_PERMISSION_DENIED, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_FAILED_PRECONDITION, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_UNIMPLEMENTED, NULL));
	ck_assert(!tp_grpc_is_retryable(TP_GRPC_UNAUTHENTICATED, NULL));
	ck_assert(!tp_grpc_is_retryable(99, NULL));
}
END_TEST

/* ============================================================================================ *
 * A tiny HTTP/2 gRPC server for the channel tests                                               *
 * ============================================================================================ */

struct srv;

struct sconn {
	struct srv         *srv;
	struct bufferevent *bev;
	nghttp2_session    *s;
	int32_t             goaway_last;      /* -1: none sent */
	bool                dead;
	bool                ping_out;         /* bdp_ping: our PING awaits its ACK */
	int64_t             ping_ms;
	uint8_t             ping_data[8];
	bool                data_in_read;     /* a DATA frame came in the current read */
	struct evbuffer    *held;             /* split_tail: what a flush holds back */
	LIST_ENTRY(sconn)   link;
};

struct sstream {
	struct sconn  *sc;
	int32_t        id;
	char           path[128];
	char           timeout[32];
	char           ua[96];
	uint8_t        req[8192];
	size_t         reqlen;
	uint8_t       *resp;                   /* owned */
	size_t         resplen;
	size_t         respoff;
	bool           trailers;               /* send grpc-status 0 after the data */
	struct event  *timer;
	LIST_ENTRY(sstream) link;
};

struct srv {
	struct event_base     *base;
	struct evconnlistener *lis;
	int                    port;
	uint32_t               max_streams;     /* 0: not announced */
	bool                   no_ping_ack;
	bool                   bdp_ping;        /* PING after DATA while none is outstanding (grpc-go) */
	size_t                 split_tail;      /* send the last this many bytes of a flush 50 ms late */
	int                    pings_sent;
	int                    acks;
	int                    acks_bad;        /* an ACK whose payload is not the PING's */
	int                    acks_behind_data; /* the ACK came after DATA in the same read */
	int64_t                ack_min_ms;      /* PING to ACK */
	int64_t                ack_max_ms;
	uint8_t                ack_first[16];   /* the first payload byte of every ACK, in order */
	int                    nack_first;
	int                    nconns;
	int                    cur_streams;
	int                    peak_streams;
	int                    nreq;
	int                    rst_cancel;      /* RST_STREAM(CANCEL) received */
	int                    goaway_recv;
	char                   last_timeout[32];
	char                   last_ua[96];
	LIST_HEAD(, sconn)     conns;
	LIST_HEAD(, sstream)   streams;
};

static void sconn_free(struct sconn *sc);

static void
on_release(evutil_socket_t fd, short what, void *arg)
{
	struct sconn *sc = arg;

	bufferevent_write_buffer(sc->bev, sc->held);
}

static void
sconn_flush(struct sconn *sc)
{
	size_t n;
	struct timeval tv = { 0, 50000 };

	if (sc->dead)
		return;
	if (sc->srv->split_tail > 0 && nghttp2_session_send(sc->s) == 0 && sc->held != NULL &&
	    (n = evbuffer_get_length(sc->held)) > 0) {
		/* s_send collected this flush: like a frame the network cut in two, its last
		 * split_tail bytes go 50 ms after the rest */
		if (n > sc->srv->split_tail) {
			n -= sc->srv->split_tail;
			sc->srv->split_tail = 0;
			event_base_once(sc->srv->base, -1, EV_TIMEOUT, on_release, sc, &tv);
		}
		bufferevent_write(sc->bev, evbuffer_pullup(sc->held, (ssize_t)n), n);
		evbuffer_drain(sc->held, n);
	}
	if (nghttp2_session_send(sc->s) != 0 ||
	    (!nghttp2_session_want_read(sc->s) && !nghttp2_session_want_write(sc->s) &&
	    evbuffer_get_length(bufferevent_get_output(sc->bev)) == 0))
		sc->dead = true;
}

static ssize_t
s_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
	struct sconn *sc = ud;

	if (sc->srv->split_tail > 0) {
		if (sc->held == NULL)
			sc->held = evbuffer_new();
		evbuffer_add(sc->held, data, len);
	} else {
		bufferevent_write(sc->bev, data, len);
	}
	return (ssize_t)len;
}

static ssize_t
s_read_resp(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
    nghttp2_data_source *src, void *ud)
{
	struct sstream *st = src->ptr;
	size_t n = st->resplen - st->respoff;

	if (n > len)
		n = len;
	memcpy(buf, st->resp + st->respoff, n);
	st->respoff += n;
	if (st->respoff == st->resplen) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		if (st->trailers) {
			nghttp2_nv t[] = { { (uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0 } };

			*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
			nghttp2_submit_trailer(s, id, t, 1);
		}
	}
	return (ssize_t)n;
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0 }

static void
respond_data(struct sstream *st, const uint8_t *p, size_t n, bool trailers)
{
	nghttp2_nv h[] = { NV(":status", "200"), NV("content-type", "application/grpc") };
	nghttp2_data_provider dp;

	st->resp = malloc(n + 1);
	memcpy(st->resp, p, n);
	st->resplen = n;
	st->trailers = trailers;
	dp.source.ptr = st;
	dp.read_callback = s_read_resp;
	nghttp2_submit_response(st->sc->s, st->id, h, 2, &dp);
}

static void
respond_echo(struct sstream *st)
{
	respond_data(st, st->req, st->reqlen, true);
}

static void
on_slow(evutil_socket_t fd, short what, void *arg)
{
	struct sstream *st = arg;

	respond_echo(st);
	sconn_flush(st->sc);
}

static void
on_drop(evutil_socket_t fd, short what, void *arg)
{
	struct sconn *sc = arg;

	sconn_free(sc);
}

/* One handler per test method, named by its :path. */
static void
h_empty(struct sstream *st)
{
	nghttp2_nv h[] = { NV(":status", "200"), NV("content-type", "application/grpc") };
	nghttp2_nv t[] = { NV("grpc-status", "0") };

	nghttp2_submit_headers(st->sc->s, NGHTTP2_FLAG_NONE, st->id, NULL, h, 2, NULL);
	nghttp2_submit_trailer(st->sc->s, st->id, t, 1);
}

static void
h_trailers_only(struct sstream *st)
{
	nghttp2_nv h[] = { NV(":status", "200"), NV("content-type", "application/grpc"),
	    NV("grpc-status", "3"), NV("grpc-message", "bad%20thing%zz"),
	    NV("grpc-status-details-bin", "CAMSBGJhZCE") };

	nghttp2_submit_response(st->sc->s, st->id, h, 5, NULL);
}

static void
h_http404(struct sstream *st)
{
	static const uint8_t page[] = "<html>nope</html>";
	nghttp2_nv h[] = { NV(":status", "404"), NV("content-type", "text/html") };
	nghttp2_data_provider dp;

	st->resp = malloc(sizeof(page));
	memcpy(st->resp, page, sizeof(page));
	st->resplen = sizeof(page) - 1;
	dp.source.ptr = st;
	dp.read_callback = s_read_resp;
	nghttp2_submit_response(st->sc->s, st->id, h, 2, &dp);
}

static void
h_no_status(struct sstream *st)
{
	respond_data(st, st->req, st->reqlen, false);
}

static void
h_big(struct sstream *st)
{
	static uint8_t big[5 + 2048];

	tp_grpc_frame_prefix(big, 2048);
	respond_data(st, big, sizeof(big), true);
}

static void
h_large(struct sstream *st)
{
	/* 3 MiB: far beyond HTTP/2's default 64 KiB windows */
	size_t n = (size_t)3 << 20, i;
	uint8_t *large = malloc(n + 5);

	tp_grpc_frame_prefix(large, (uint32_t)n);
	for (i = 0; i < n; i++)
		large[5 + i] = (uint8_t)(i * 7);
	respond_data(st, large, n + 5, true);
	free(large);
}

static void
h_two(struct sstream *st)
{
	uint8_t two[10];

	tp_grpc_frame_prefix(two, 0);
	tp_grpc_frame_prefix(two + 5, 0);
	respond_data(st, two, sizeof(two), true);
}

static void
h_refuse(struct sstream *st)
{
	nghttp2_submit_rst_stream(st->sc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
}

static void
h_cancel(struct sstream *st)
{
	nghttp2_submit_rst_stream(st->sc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
}

static void
h_slow(struct sstream *st)
{
	struct timeval tv = { 0, 30000 };

	st->timer = evtimer_new(st->sc->srv->base, on_slow, st);
	evtimer_add(st->timer, &tv);
}

static void
h_goaway_after(struct sstream *st)
{
	/* Answer this one; streams above it were "never processed". */
	nghttp2_submit_goaway(st->sc->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR,
	    (const uint8_t *)"bye", 3);
	st->sc->goaway_last = st->id;
	respond_echo(st);
}

static void
h_drop(struct sstream *st)
{
	event_base_once(st->sc->srv->base, -1, EV_TIMEOUT, on_drop, st->sc, NULL);
}

static void
h_hang(struct sstream *st)
{
}

static void
h_unknown(struct sstream *st)
{
	nghttp2_nv h[] = { NV(":status", "200"), NV("content-type", "application/grpc"),
	    NV("grpc-status", "12"), NV("grpc-message", "unknown method") };

	nghttp2_submit_response(st->sc->s, st->id, h, 4, NULL);
}

static const struct {
	const char *path;
	void      (*fn)(struct sstream *);
} handlers[] = {
	{ "/t.S/Echo", respond_echo }, { "/t.S/Empty", h_empty },
	{ "/t.S/TrailersOnly", h_trailers_only }, { "/t.S/Http404", h_http404 },
	{ "/t.S/NoStatus", h_no_status }, { "/t.S/Big", h_big }, { "/t.S/Large", h_large },
	{ "/t.S/Two", h_two }, { "/t.S/Refuse", h_refuse }, { "/t.S/Cancel", h_cancel },
	{ "/t.S/Slow", h_slow }, { "/t.S/GoawayAfter", h_goaway_after }, { "/t.S/Drop", h_drop },
	{ "/t.S/Hang", h_hang },
};

static void
handle_request(struct sstream *st)
{
	struct srv *srv = st->sc->srv;
	size_t i;

	srv->nreq++;
	snprintf(srv->last_timeout, sizeof(srv->last_timeout), "%s", st->timeout);
	snprintf(srv->last_ua, sizeof(srv->last_ua), "%s", st->ua);
	if (st->sc->goaway_last >= 0 && st->id > st->sc->goaway_last)
		return;                          /* after our GOAWAY: never processed */
	for (i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
		if (strcmp(st->path, handlers[i].path) == 0) {
			handlers[i].fn(st);
			return;
		}
	}
	h_unknown(st);
}

static int
s_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct sconn *sc = ud;
	struct sstream *st;

	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	st = calloc(1, sizeof(*st));
	st->sc = sc;
	st->id = f->hd.stream_id;
	LIST_INSERT_HEAD(&sc->srv->streams, st, link);
	nghttp2_session_set_stream_user_data(s, st->id, st);
	if (++sc->srv->cur_streams > sc->srv->peak_streams)
		sc->srv->peak_streams = sc->srv->cur_streams;
	return 0;
}

static int
s_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
    const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct sstream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);

	if (st == NULL)
		return 0;
	if (strcmp((const char *)name, ":path") == 0)
		snprintf(st->path, sizeof(st->path), "%s", value);
	else if (strcmp((const char *)name, "grpc-timeout") == 0)
		snprintf(st->timeout, sizeof(st->timeout), "%s", value);
	else if (strcmp((const char *)name, "user-agent") == 0)
		snprintf(st->ua, sizeof(st->ua), "%s", value);
	return 0;
}

static int
s_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
	struct sstream *st = nghttp2_session_get_stream_user_data(s, id);

	if (st != NULL && st->reqlen + len <= sizeof(st->req)) {
		memcpy(st->req + st->reqlen, data, len);
		st->reqlen += len;
	}
	return 0;
}

static void
s_ping_acked(struct sconn *sc, const uint8_t *data)
{
	struct srv *srv = sc->srv;
	int64_t ms = tp_now_mono_ms() - sc->ping_ms;

	sc->ping_out = false;
	srv->acks++;
	if (memcmp(data, sc->ping_data, sizeof(sc->ping_data)) != 0)
		srv->acks_bad++;
	if (sc->data_in_read)
		srv->acks_behind_data++;
	if (srv->acks == 1 || ms < srv->ack_min_ms)
		srv->ack_min_ms = ms;
	if (ms > srv->ack_max_ms)
		srv->ack_max_ms = ms;
}

static int
s_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct sconn *sc = ud;
	struct sstream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);

	if (f->hd.type == NGHTTP2_RST_STREAM && f->rst_stream.error_code == NGHTTP2_CANCEL)
		sc->srv->rst_cancel++;
	if (f->hd.type == NGHTTP2_GOAWAY)
		sc->srv->goaway_recv++;
	if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
		if (sc->srv->nack_first < (int)sizeof(sc->srv->ack_first))
			sc->srv->ack_first[sc->srv->nack_first++] = f->ping.opaque_data[0];
		if (sc->ping_out)
			s_ping_acked(sc, f->ping.opaque_data);
	}
	if (f->hd.type == NGHTTP2_DATA) {
		sc->data_in_read = true;
		if (sc->srv->bdp_ping && !sc->ping_out) {
			sc->ping_out = true;
			sc->ping_ms = tp_now_mono_ms();
			sc->ping_data[0] = (uint8_t)++sc->srv->pings_sent;
			nghttp2_submit_ping(s, NGHTTP2_FLAG_NONE, sc->ping_data);
		}
	}
	if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) && st != NULL &&
	    (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		handle_request(st);
	return 0;
}

static void
sstream_free(struct sstream *st)
{
	LIST_REMOVE(st, link);
	st->sc->srv->cur_streams--;
	if (st->timer != NULL)
		event_free(st->timer);
	free(st->resp);
	free(st);
}

static int
s_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
	struct sstream *st = nghttp2_session_get_stream_user_data(s, id);

	if (st != NULL)
		sstream_free(st);
	return 0;
}

static void
sconn_free(struct sconn *sc)
{
	struct sstream *st, *next;

	for (st = LIST_FIRST(&sc->srv->streams); st != NULL; st = next) {
		next = LIST_NEXT(st, link);
		if (st->sc == sc)
			sstream_free(st);
	}
	LIST_REMOVE(sc, link);
	nghttp2_session_del(sc->s);
	bufferevent_free(sc->bev);
	if (sc->held != NULL)
		evbuffer_free(sc->held);
	free(sc);
}

static void
s_on_read(struct bufferevent *bev, void *arg)
{
	struct sconn *sc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n = evbuffer_get_length(in);
	unsigned char *p = evbuffer_pullup(in, (ssize_t)n);

	sc->data_in_read = false;
	if (nghttp2_session_mem_recv(sc->s, p, n) < 0)
		sc->dead = true;
	evbuffer_drain(in, n);
	sconn_flush(sc);
	if (sc->dead)
		sconn_free(sc);
}

static void
s_on_write(struct bufferevent *bev, void *arg)
{
	struct sconn *sc = arg;

	sconn_flush(sc);
	if (sc->dead)
		sconn_free(sc);
}

static void
s_on_event(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		sconn_free(arg);
}

static void
s_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct srv *srv = arg;
	struct sconn *sc = calloc(1, sizeof(*sc));
	nghttp2_session_callbacks *cbs;
	nghttp2_option *opt;
	nghttp2_settings_entry iv[1] = { { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, srv->max_streams } };

	sc->srv = srv;
	sc->goaway_last = -1;
	sc->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	nghttp2_session_callbacks_new(&cbs);
	nghttp2_session_callbacks_set_send_callback(cbs, s_send);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, s_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, s_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, s_data);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, s_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, s_stream_close);
	nghttp2_option_new(&opt);
	nghttp2_option_set_no_auto_ping_ack(opt, srv->no_ping_ack);
	nghttp2_session_server_new2(&sc->s, cbs, sc, opt);
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cbs);
	nghttp2_submit_settings(sc->s, NGHTTP2_FLAG_NONE, iv, srv->max_streams > 0 ? 1 : 0);
	LIST_INSERT_HEAD(&srv->conns, sc, link);
	srv->nconns++;
	bufferevent_setcb(sc->bev, s_on_read, s_on_write, s_on_event, sc);
	bufferevent_enable(sc->bev, EV_READ | EV_WRITE);
	sconn_flush(sc);
}

static struct srv *
srv_new(struct event_base *base)
{
	struct srv *srv = calloc(1, sizeof(*srv));
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	srv->base = base;
	LIST_INIT(&srv->conns);
	LIST_INIT(&srv->streams);
	srv->lis = evconnlistener_new_bind(base, s_accept, srv, LEV_OPT_CLOSE_ON_FREE |
	    LEV_OPT_REUSEABLE, 16, (struct sockaddr *)&sin, sizeof(sin));
	ck_assert_ptr_nonnull(srv->lis);
	getsockname(evconnlistener_get_fd(srv->lis), (struct sockaddr *)&sin, &len);
	srv->port = ntohs(sin.sin_port);
	return srv;
}

static void
srv_free(struct srv *srv)
{
	while (!LIST_EMPTY(&srv->conns))
		sconn_free(LIST_FIRST(&srv->conns));
	evconnlistener_free(srv->lis);
	free(srv);
}

/* ============================================================================================ *
 * Channel tests                                                                                 *
 * ============================================================================================ */

struct fixture {
	struct event_base      *base;
	struct srv             *srv;
	struct tp_grpc_channel *ch;
	char                    port[16];
	struct event           *guard;     /* ends a stuck test */
	bool                    closed;
};

struct result {
	struct fixture *fx;
	bool            done;
	int             ncalls;             /* callback runs (must stay <= 1) */
	int             code;
	char            message[256];
	uint8_t         msg[4096];
	size_t          len;
	bool            msg_nonnull;
	bool            large_ok;
	uint8_t         details[64];
	size_t          details_len;
	int            *countdown;          /* when it reaches 0: stop the loop */
	int64_t         done_ms;            /* monotonic, when the callback ran */
};

static void
on_guard(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

static void
fx_init(struct fixture *fx, uint32_t max_streams, size_t max_recv)
{
	struct tp_grpc_channel_opts o;
	struct timeval tv = { 10, 0 };
	char err[256];

	memset(fx, 0, sizeof(*fx));
	fx->base = event_base_new();
	fx->srv = srv_new(fx->base);
	fx->srv->max_streams = max_streams;
	snprintf(fx->port, sizeof(fx->port), "%d", fx->srv->port);
	memset(&o, 0, sizeof(o));
	o.host = "127.0.0.1";
	o.port = fx->port;
	o.max_recv_msg = max_recv;
	fx->ch = tp_grpc_channel_new(fx->base, &o, err, sizeof(err));
	ck_assert_msg(fx->ch != NULL, "%s", err);
	fx->guard = evtimer_new(fx->base, on_guard, fx->base);
	evtimer_add(fx->guard, &tv);
}

static void
fx_done(struct fixture *fx)
{
	tp_grpc_channel_free(fx->ch);
	srv_free(fx->srv);
	event_free(fx->guard);
	event_base_free(fx->base);
}

static void
on_result(void *arg, const struct tp_grpc_status *st, const uint8_t *msg, size_t len)
{
	struct result *r = arg;

	r->ncalls++;
	r->done = true;
	r->done_ms = tp_now_mono_ms();
	r->code = st->code;
	snprintf(r->message, sizeof(r->message), "%s", st->message);
	r->msg_nonnull = msg != NULL;
	r->len = len;
	r->large_ok = len == ((size_t)3 << 20);
	for (size_t i = 0; r->large_ok && i < len; i++)
		r->large_ok = msg[i] == (uint8_t)(i * 7);
	if (len > 0 && len <= sizeof(r->msg))
		memcpy(r->msg, msg, len);
	r->details_len = st->details_len;
	if (st->details != NULL && st->details_len <= sizeof(r->details))
		memcpy(r->details, st->details, st->details_len);
	if (r->countdown != NULL && --*r->countdown == 0)
		event_base_loopbreak(r->fx->base);
}

/* Run one call to completion. */
static void
run_call(struct fixture *fx, const char *path, const char *req, int64_t timeout_ms,
    struct result *r)
{
	int countdown = 1;

	memset(r, 0, sizeof(*r));
	r->fx = fx;
	r->countdown = &countdown;
	ck_assert_ptr_nonnull(tp_grpc_call_start(fx->ch, path, (const uint8_t *)req, strlen(req),
	    timeout_ms, NULL, 0, on_result, r));
	ck_assert(!r->done);                /* never from inside call_start */
	event_base_dispatch(fx->base);
	ck_assert_msg(r->done, "call %s did not complete", path);
	ck_assert_int_eq(r->ncalls, 1);
}

START_TEST(test_chan_echo)
{
	struct fixture fx;
	struct result r;

	fx_init(&fx, 0, 0);
	run_call(&fx, "/t.S/Echo", "ping-payload", 5000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_uint_eq(r.len, 12);
	ck_assert_mem_eq(r.msg, "ping-payload", 12);
	/* the time left when the request left: 5 s minus what connecting took */
	ck_assert_int_le(tp_grpc_timeout_decode(fx.srv->last_timeout), 5000);
	ck_assert_int_gt(tp_grpc_timeout_decode(fx.srv->last_timeout), 4000);
	ck_assert_str_eq(fx.srv->last_ua, "tprefork/" PACKAGE_VERSION " grpc-c");
	/* an empty request and no timeout */
	run_call(&fx, "/t.S/Echo", "", 0, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_uint_eq(r.len, 0);
	ck_assert(r.msg_nonnull);
	ck_assert_str_eq(fx.srv->last_timeout, "");
	ck_assert_int_eq(fx.srv->nconns, 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_empty_and_status)
{
	struct fixture fx;
	struct result r;

	fx_init(&fx, 0, 0);
	run_call(&fx, "/t.S/Empty", "", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_uint_eq(r.len, 0);
	ck_assert(r.msg_nonnull);

	run_call(&fx, "/t.S/TrailersOnly", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_INVALID_ARGUMENT);
	ck_assert_str_eq(r.message, "bad thing%zz");
	ck_assert_uint_eq(r.details_len, 8);
	ck_assert_mem_eq(r.details, "\x08\x03\x12\x04" "bad!", 8);

	run_call(&fx, "/t.S/Http404", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_UNIMPLEMENTED);
	ck_assert_ptr_nonnull(strstr(r.message, "404"));

	run_call(&fx, "/t.S/NoStatus", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_UNKNOWN);

	run_call(&fx, "/t.S/Nope", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_UNIMPLEMENTED);
	ck_assert_str_eq(r.message, "unknown method");

	run_call(&fx, "/t.S/Two", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_INTERNAL);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_oversize)
{
	struct fixture fx;
	struct result r;

	fx_init(&fx, 0, 1024);
	run_call(&fx, "/t.S/Big", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_RESOURCE_EXHAUSTED);
	ck_assert_ptr_nonnull(strstr(r.message, "message larger than max"));
	ck_assert(!tp_grpc_is_retryable(r.code, r.message));
	/* the connection is still good, and the server got RST_STREAM(CANCEL) */
	run_call(&fx, "/t.S/Echo", "ok", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_int_eq(fx.srv->rst_cancel, 1);
	ck_assert_int_eq(fx.srv->nconns, 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_large)
{
	struct fixture fx;
	struct result r;

	fx_init(&fx, 0, 0);
	run_call(&fx, "/t.S/Large", "x", 5000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert(r.large_ok);
	/* and with a cap just below it */
	tp_grpc_channel_free(fx.ch);
	{
		struct tp_grpc_channel_opts o;
		char err[256];

		memset(&o, 0, sizeof(o));
		o.host = "127.0.0.1";
		o.port = fx.port;
		o.max_recv_msg = ((size_t)3 << 20) - 1;
		fx.ch = tp_grpc_channel_new(fx.base, &o, err, sizeof(err));
	}
	run_call(&fx, "/t.S/Large", "x", 5000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_RESOURCE_EXHAUSTED);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_resets)
{
	struct fixture fx;
	struct result r;

	fx_init(&fx, 0, 0);
	run_call(&fx, "/t.S/Refuse", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_UNAVAILABLE);
	ck_assert(tp_grpc_is_retryable(r.code, r.message));
	run_call(&fx, "/t.S/Cancel", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_CANCELLED);
	run_call(&fx, "/t.S/Drop", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_UNAVAILABLE);
	ck_assert_msg(strstr(r.message, "closed") != NULL, "%s", r.message);
	/* a new connection is made for the next call */
	run_call(&fx, "/t.S/Echo", "again", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_int_eq(fx.srv->nconns, 2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_deadline)
{
	struct fixture fx;
	struct result r;

	fx_init(&fx, 0, 0);
	run_call(&fx, "/t.S/Hang", "x", 100, &r);
	ck_assert_int_eq(r.code, TP_GRPC_DEADLINE_EXCEEDED);
	run_call(&fx, "/t.S/Echo", "x", 1000, &r);    /* flushes the RST as well */
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_int_eq(fx.srv->rst_cancel, 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_connect_refused)
{
	struct fixture fx;
	struct result r;
	struct tp_grpc_channel_opts o;
	char err[256];

	fx_init(&fx, 0, 0);
	tp_grpc_channel_free(fx.ch);
	memset(&o, 0, sizeof(o));
	o.host = "127.0.0.1";
	o.port = "1";            /* nothing listens there */
	fx.ch = tp_grpc_channel_new(fx.base, &o, err, sizeof(err));
	run_call(&fx, "/t.S/Echo", "x", 1000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_UNAVAILABLE);
	ck_assert_msg(strstr(r.message, "connect to 127.0.0.1:1 failed") != NULL, "%s", r.message);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_max_streams)
{
	struct fixture fx;
	struct result r[12];
	int countdown = 12, i;

	fx_init(&fx, 2, 0);
	for (i = 0; i < 12; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].fx = &fx;
		r[i].countdown = &countdown;
		tp_grpc_call_start(fx.ch, "/t.S/Slow", (const uint8_t *)"s", 1, 5000, NULL, 0,
		    on_result, &r[i]);
	}
	ck_assert_uint_eq(tp_grpc_channel_pending(fx.ch), 12);
	event_base_dispatch(fx.base);
	for (i = 0; i < 12; i++)
		ck_assert_int_eq(r[i].code, TP_GRPC_OK);
	ck_assert_int_le(fx.srv->peak_streams, 2);
	ck_assert_int_eq(fx.srv->nconns, 1);
	ck_assert_uint_eq(tp_grpc_channel_pending(fx.ch), 0);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_goaway)
{
	struct fixture fx;
	struct result r[4];
	const char *paths[4] = { "/t.S/GoawayAfter", "/t.S/Echo", "/t.S/Echo", "/t.S/Echo" };
	int countdown = 4, i;

	fx_init(&fx, 0, 0);
	for (i = 0; i < 4; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].fx = &fx;
		r[i].countdown = &countdown;
		tp_grpc_call_start(fx.ch, paths[i], (const uint8_t *)"g", 1, 5000, NULL, 0,
		    on_result, &r[i]);
	}
	event_base_dispatch(fx.base);
	for (i = 0; i < 4; i++) {
		ck_assert_msg(r[i].code == TP_GRPC_OK, "call %d: %s %s", i,
		    tp_grpc_code_name(r[i].code), r[i].message);
		ck_assert_int_eq(r[i].ncalls, 1);
	}
	/* the three refused streams went to a second connection */
	ck_assert_int_eq(fx.srv->nconns, 2);
	fx_done(&fx);
}
END_TEST

/* --- re-entrancy and lifetime ----------------------------------------------------------------- */

struct reent {
	struct fixture      *fx;
	struct tp_grpc_call *victim;
	struct result        second;
	int                  victim_calls;
	int                  countdown;
	bool                 free_in_cb;
};

static void
on_victim(void *arg, const struct tp_grpc_status *st, const uint8_t *msg, size_t len)
{
	struct reent *re = arg;

	re->victim_calls++;
}

static void
on_first(void *arg, const struct tp_grpc_status *st, const uint8_t *msg, size_t len)
{
	struct reent *re = arg;

	ck_assert_int_eq(st->code, TP_GRPC_OK);
	tp_grpc_call_cancel(re->victim);              /* another call: no callback ever */
	re->victim = NULL;
	if (re->free_in_cb) {
		tp_grpc_call_start(re->fx->ch, "/t.S/Echo", NULL, 0, 1000, NULL, 0, on_victim, re);
		tp_grpc_channel_free(re->fx->ch);         /* from inside a callback */
		re->fx->ch = NULL;
		event_base_loopbreak(re->fx->base);
		return;
	}
	memset(&re->second, 0, sizeof(re->second));
	re->second.fx = re->fx;
	re->second.countdown = &re->countdown;
	tp_grpc_call_start(re->fx->ch, "/t.S/Echo", (const uint8_t *)"2nd", 3, 1000, NULL, 0,
	    on_result, &re->second);
}

START_TEST(test_chan_reentrant)
{
	struct fixture fx;
	struct reent re;
	struct result r;

	fx_init(&fx, 0, 0);
	memset(&re, 0, sizeof(re));
	re.fx = &fx;
	re.countdown = 1;
	re.victim = tp_grpc_call_start(fx.ch, "/t.S/Hang", NULL, 0, 5000, NULL, 0, on_victim, &re);
	tp_grpc_call_start(fx.ch, "/t.S/Echo", NULL, 0, 5000, NULL, 0, on_first, &re);
	event_base_dispatch(fx.base);
	ck_assert(re.second.done);
	ck_assert_int_eq(re.second.code, TP_GRPC_OK);
	ck_assert_int_eq(re.victim_calls, 0);
	/* the cancelled stream was reset on the wire */
	run_call(&fx, "/t.S/Echo", "x", 1000, &r);
	ck_assert_int_eq(fx.srv->rst_cancel, 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_free_in_callback)
{
	struct fixture fx;
	struct reent re;

	fx_init(&fx, 0, 0);
	memset(&re, 0, sizeof(re));
	re.fx = &fx;
	re.free_in_cb = true;
	re.victim = tp_grpc_call_start(fx.ch, "/t.S/Hang", NULL, 0, 5000, NULL, 0, on_victim, &re);
	tp_grpc_call_start(fx.ch, "/t.S/Echo", NULL, 0, 5000, NULL, 0, on_first, &re);
	tp_grpc_call_start(fx.ch, "/t.S/Slow", NULL, 0, 5000, NULL, 0, on_victim, &re);
	event_base_dispatch(fx.base);
	ck_assert_ptr_null(fx.ch);
	/* keep the loop running a little: nothing of the freed channel may fire */
	{
		struct timeval tv = { 0, 100000 };

		event_base_loopexit(fx.base, &tv);
		event_base_dispatch(fx.base);
	}
	ck_assert_int_eq(re.victim_calls, 0);
	fx_done(&fx);
}
END_TEST

static void
on_closed(void *arg)
{
	struct fixture *fx = arg;

	fx->closed = true;
	event_base_loopbreak(fx->base);
}

START_TEST(test_chan_close_graceful)
{
	struct fixture fx;
	struct result slow, late;
	int countdown = 100;

	fx_init(&fx, 0, 0);
	memset(&slow, 0, sizeof(slow));
	memset(&late, 0, sizeof(late));
	slow.fx = late.fx = &fx;
	slow.countdown = late.countdown = &countdown;
	tp_grpc_call_start(fx.ch, "/t.S/Slow", (const uint8_t *)"z", 1, 5000, NULL, 0, on_result,
	    &slow);
	tp_grpc_channel_close(fx.ch, on_closed, &fx);
	tp_grpc_call_start(fx.ch, "/t.S/Echo", NULL, 0, 5000, NULL, 0, on_result, &late);
	ck_assert(!late.done);
	event_base_dispatch(fx.base);
	ck_assert(fx.closed);
	ck_assert_int_eq(slow.code, TP_GRPC_OK);       /* pending call finished first */
	ck_assert_int_eq(late.code, TP_GRPC_UNAVAILABLE);
	ck_assert_uint_eq(tp_grpc_channel_pending(fx.ch), 0);
	/* let the server read our GOAWAY */
	{
		struct timeval tv = { 0, 50000 };

		event_base_loopexit(fx.base, &tv);
		event_base_dispatch(fx.base);
	}
	ck_assert_int_eq(fx.srv->goaway_recv, 1);
	fx_done(&fx);
}
END_TEST

static void
on_close_inside(void *arg, const struct tp_grpc_status *st, const uint8_t *msg, size_t len)
{
	struct result *r = arg;

	on_result(arg, st, msg, len);
	tp_grpc_channel_close(r->fx->ch, on_closed, r->fx);
}

START_TEST(test_chan_close_in_callback)
{
	struct fixture fx;
	struct result a, b;
	int countdown = 100;

	fx_init(&fx, 0, 0);
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.fx = b.fx = &fx;
	a.countdown = b.countdown = &countdown;
	tp_grpc_call_start(fx.ch, "/t.S/Echo", NULL, 0, 5000, NULL, 0, on_close_inside, &a);
	tp_grpc_call_start(fx.ch, "/t.S/Slow", NULL, 0, 5000, NULL, 0, on_result, &b);
	event_base_dispatch(fx.base);
	ck_assert(fx.closed);
	ck_assert_int_eq(a.code, TP_GRPC_OK);
	ck_assert_int_eq(b.code, TP_GRPC_OK);
	ck_assert_int_eq(a.ncalls + b.ncalls, 2);
	fx_done(&fx);
}
END_TEST

START_TEST(test_chan_cancel_queued)
{
	struct fixture fx;
	struct tp_grpc_call *c;
	struct reent re;

	fx_init(&fx, 0, 0);
	memset(&re, 0, sizeof(re));
	c = tp_grpc_call_start(fx.ch, "/t.S/Echo", NULL, 0, 5000, NULL, 0, on_victim, &re);
	tp_grpc_call_cancel(c);         /* before any I/O */
	ck_assert_uint_eq(tp_grpc_channel_pending(fx.ch), 0);
	tp_grpc_channel_close(fx.ch, on_closed, &fx);
	event_base_dispatch(fx.base);
	ck_assert(fx.closed);
	ck_assert_int_eq(re.victim_calls, 0);
	fx_done(&fx);
}
END_TEST

/* --- a mixed load: every path, cancels, deadlines, a stream limit, dropped connections --- */

#define MIXED_N 300

struct mixed {
	struct fixture      *fx;
	struct tp_grpc_call *calls[MIXED_N];
	struct result        r[MIXED_N];
	bool                 cancelled[MIXED_N];
	int                  countdown;
	int                  expected;
	struct event        *cancel_ev;
};

static void
on_mixed_cancel(evutil_socket_t fd, short what, void *arg)
{
	struct mixed *m = arg;
	int i;

	for (i = 0; i < MIXED_N; i += 7) {
		if (m->r[i].done || m->cancelled[i])
			continue;
		tp_grpc_call_cancel(m->calls[i]);
		m->cancelled[i] = true;
		if (--m->countdown == 0)
			event_base_loopbreak(m->fx->base);
	}
}

START_TEST(test_chan_mixed)
{
	static const char *const paths[] = { "/t.S/Echo", "/t.S/Slow", "/t.S/Hang", "/t.S/Refuse",
	    "/t.S/Empty", "/t.S/Drop", "/t.S/TrailersOnly", "/t.S/Cancel", "/t.S/Big" };
	struct fixture fx;
	struct mixed *m = calloc(1, sizeof(*m));
	struct timeval tv = { 0, 20000 };
	int i;

	fx_init(&fx, 3, 1024);
	m->fx = &fx;
	m->countdown = MIXED_N;
	for (i = 0; i < MIXED_N; i++) {
		m->r[i].fx = &fx;
		m->r[i].countdown = &m->countdown;
		m->calls[i] = tp_grpc_call_start(fx.ch, paths[(i * 5 + i / 9) % 9],
		    (const uint8_t *)"m", 1, 100 + (i % 4) * 100, NULL, 0, on_result, &m->r[i]);
		ck_assert_ptr_nonnull(m->calls[i]);
	}
	m->cancel_ev = evtimer_new(fx.base, on_mixed_cancel, m);
	evtimer_add(m->cancel_ev, &tv);
	event_base_dispatch(fx.base);
	for (i = 0; i < MIXED_N; i++) {
		if (m->cancelled[i])
			ck_assert_int_eq(m->r[i].ncalls, 0);
		else
			ck_assert_msg(m->r[i].ncalls == 1, "call %d ran %d times", i, m->r[i].ncalls);
	}
	ck_assert_uint_eq(tp_grpc_channel_pending(fx.ch), 0);
	ck_assert_int_le(fx.srv->peak_streams, 3);
	event_free(m->cancel_ev);
	free(m);
	fx_done(&fx);
}
END_TEST

/* --- tp_h2 directly: keepalive with tiny intervals ------------------------------------------- */

static void
on_h2_notify(void *arg)
{
	struct fixture *fx = arg;

	event_base_loopbreak(fx->base);
}

START_TEST(test_h2_keepalive_timeout)
{
	struct fixture fx;
	struct tp_h2_conn_opts o;
	struct tp_h2_conn *c;
	int i;

	fx_init(&fx, 0, 0);
	fx.srv->no_ping_ack = true;
	memset(&o, 0, sizeof(o));
	o.host = "127.0.0.1";
	o.port = fx.port;
	o.connect_timeout_ms = 1000;
	o.keepalive_ms = 50;
	o.keepalive_timeout_ms = 50;
	c = tp_h2_conn_new(fx.base, NULL, &o, on_h2_notify, &fx);
	ck_assert_ptr_nonnull(c);
	tp_h2_conn_connect(c);
	for (i = 0; i < 50 && tp_h2_conn_state(c) != TP_H2_CLOSED; i++)
		event_base_dispatch(fx.base);
	ck_assert_int_eq(tp_h2_conn_state(c), TP_H2_CLOSED);
	ck_assert(tp_h2_conn_was_ready(c));
	ck_assert_ptr_nonnull(tp_h2_conn_error(c));
	ck_assert_msg(strstr(tp_h2_conn_error(c), "keepalive") != NULL, "%s", tp_h2_conn_error(c));
	tp_h2_conn_free(c);
	fx_done(&fx);
}
END_TEST

/* Dispatch for about ms milliseconds. */
static void
run_for(struct fixture *fx, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(fx->base, &tv);
	while (event_base_dispatch(fx->base) == 0 && !event_base_got_exit(fx->base))
		;
}

/* Dispatch until the test server has n PING ACKs (2 s at most); it must have exactly n. */
static void
await_acks(struct fixture *fx, int n)
{
	for (int i = 0; i < 20 && fx->srv->nack_first < n; i++)
		run_for(fx, 100);
	ck_assert_int_eq(fx->srv->nack_first, n);
}

START_TEST(test_h2_keepalive_ok)
{
	struct fixture fx;
	struct tp_h2_conn_opts o;
	struct tp_h2_conn *c;

	fx_init(&fx, 0, 0);
	memset(&o, 0, sizeof(o));
	o.host = "localhost";    /* through the resolver (hosts file) */
	o.port = fx.port;
	o.connect_timeout_ms = 1000;
	o.keepalive_ms = 20;
	o.keepalive_timeout_ms = 100;
	{
		struct tp_h2_resolver *res = tp_h2_resolver_new(fx.base);

		c = tp_h2_conn_new(fx.base, res, &o, on_h2_notify, &fx);
		tp_h2_resolver_unref(res);
	}
	tp_h2_conn_connect(c);
	run_for(&fx, 300);
	ck_assert_msg(tp_h2_conn_state(c) == TP_H2_READY, "state %d: %s", tp_h2_conn_state(c),
	    tp_h2_conn_error(c) ? tp_h2_conn_error(c) : "");
	tp_h2_conn_shutdown(c);
	while (tp_h2_conn_state(c) != TP_H2_CLOSED && event_base_dispatch(fx.base) == 0)
		;
	ck_assert_int_eq(tp_h2_conn_state(c), TP_H2_CLOSED);
	ck_assert_ptr_null(tp_h2_conn_error(c));
	tp_h2_conn_free(c);
	fx_done(&fx);
}
END_TEST

/* A server that PINGs after every DATA it receives while no PING is outstanding (grpc-go's BDP
 * probe): the ACK waits for a write of ours (behind its DATA) or its deadline, so the server
 * sends far fewer PINGs than requests, and every PING still gets its ACK, with its payload,
 * within TP_H2_PING_ACK_DELAY (200 ms) and never before half of it. */
START_TEST(test_h2_ping_ack_deferred)
{
	struct fixture fx;
	struct result r;
	int i, n = 40;

	fx_init(&fx, 0, 0);
	fx.srv->bdp_ping = true;
	for (i = 0; i < n; i++) {
		run_call(&fx, "/t.S/Echo", "x", 5000, &r);
		ck_assert_int_eq(r.code, TP_GRPC_OK);
		run_for(&fx, 10);
	}
	run_for(&fx, 400);          /* the last PING's deadline */
	ck_assert_int_ge(fx.srv->pings_sent, 2);
	ck_assert_msg(fx.srv->pings_sent <= n / 4, "%d PINGs for %d requests", fx.srv->pings_sent, n);
	ck_assert_int_eq(fx.srv->acks, fx.srv->pings_sent);
	ck_assert_int_eq(fx.srv->acks_bad, 0);
	ck_assert_int_ge(fx.srv->acks_behind_data, 1);
	ck_assert_int_ge(fx.srv->ack_min_ms, 100);
	ck_assert_int_le(fx.srv->ack_max_ms, 2000);

	/* Idle: the deadline answers (no earlier than 200 ms). */
	fx.srv->bdp_ping = false;
	{
		struct sconn *sc = LIST_FIRST(&fx.srv->conns);
		int64_t t0 = tp_now_mono_ms();
		uint8_t a[8] = { 0xa1 }, b[8] = { 0xb2 };

		ck_assert_ptr_nonnull(sc);
		fx.srv->nack_first = 0;
		nghttp2_submit_ping(sc->s, NGHTTP2_FLAG_NONE, a);
		sconn_flush(sc);
		await_acks(&fx, 1);
		ck_assert_int_eq(fx.srv->ack_first[0], 0xa1);
		ck_assert_int_ge(tp_now_mono_ms() - t0, 200);

		/* Two PINGs in a row: the first is answered when the second arrives, both in order. */
		fx.srv->nack_first = 0;
		nghttp2_submit_ping(sc->s, NGHTTP2_FLAG_NONE, a);
		nghttp2_submit_ping(sc->s, NGHTTP2_FLAG_NONE, b);
		sconn_flush(sc);
		await_acks(&fx, 2);
		ck_assert_int_eq(fx.srv->ack_first[0], 0xa1);
		ck_assert_int_eq(fx.srv->ack_first[1], 0xb2);
	}
	/* The connection is still good. */
	run_call(&fx, "/t.S/Echo", "y", 5000, &r);
	ck_assert_int_eq(r.code, TP_GRPC_OK);
	ck_assert_int_eq(fx.srv->nconns, 1);
	fx_done(&fx);
}
END_TEST

/* Start a call with a read patience; the loop stops once countdown calls are done. */
static struct tp_grpc_call *
start_patient(struct fixture *fx, const char *path, const char *req, enum tp_h2_patience p,
    struct result *r, int *countdown)
{
	struct tp_grpc_call *call;

	memset(r, 0, sizeof(*r));
	r->fx = fx;
	r->countdown = countdown;
	call = tp_grpc_call_start(fx->ch, path, (const uint8_t *)req, strlen(req), 5000, NULL, 0,
	    on_result, r);
	ck_assert_ptr_nonnull(call);
	tp_grpc_call_set_patience(call, p);
	return call;
}

/* Milliseconds from t0 until an Echo "x" of patience p (an answer of about 40 bytes) is done;
 * open1, open2: a Hang call of that patience is open meanwhile (-1: none). */
static int64_t
small_answer_ms(struct fixture *fx, enum tp_h2_patience p, int open1, int open2)
{
	struct result a, h1, h2;
	struct tp_grpc_call *hang1 = NULL, *hang2 = NULL;
	int cd = 1;
	int64_t t0;

	if (open1 >= 0)
		hang1 = start_patient(fx, "/t.S/Hang", "h", (enum tp_h2_patience)open1, &h1, &cd);
	if (open2 >= 0)
		hang2 = start_patient(fx, "/t.S/Hang", "h", (enum tp_h2_patience)open2, &h2, &cd);
	t0 = tp_now_mono_ms();
	start_patient(fx, "/t.S/Echo", "x", p, &a, &cd);
	event_base_dispatch(fx->base);
	ck_assert(a.done);
	ck_assert_int_eq(a.code, TP_GRPC_OK);
	ck_assert_uint_eq(a.len, 1);
	if (hang1 != NULL)
		tp_grpc_call_cancel(hang1);
	if (hang2 != NULL)
		tp_grpc_call_cancel(hang2);
	return a.done_ms - t0;
}

static void
on_cancel_due(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	tp_grpc_call_cancel(arg);
}

/* Lazy reads: a LAZY call's small answer waits for the bound (400 ms here, never much more) while a
 * CARRIER call (a poll) is open, and is read as it comes without one; a larger arrival brings it in
 * at once, and so does the close of the last carrier; a PROMPT call, or carriers without a LAZY
 * call, are read as they come; a frame that arrives in two pieces is read when its rest comes, not
 * at the bound. */
START_TEST(test_chan_lazy_read)
{
	struct fixture fx;
	struct result a, b, h, w;
	struct tp_grpc_call *hang;
	struct event *ev;
	struct timeval tv = { 0, 50 * 1000 };
	char big[1001];
	int cd;
	int64_t t0, ms;

	fx_init(&fx, 0, 0);
	run_call(&fx, "/t.S/Echo", "warm-up", 5000, &w);    /* connected, SETTINGS exchanged */
	tp_grpc_channel_set_lazy_read(fx.ch, 400);

	ms = small_answer_ms(&fx, TP_H2_LAZY, TP_H2_CARRIER, -1);
	ck_assert_msg(ms >= 300 && ms < 2000, "a lazy small answer beside a poll took %" PRId64
	    " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_LAZY, TP_H2_CARRIER, TP_H2_LAZY);
	ck_assert_msg(ms >= 300 && ms < 2000, "beside a poll and a lazy call: %" PRId64 " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_LAZY, -1, -1);
	ck_assert_msg(ms < 200, "a lazy small answer without a poll: %" PRId64 " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_LAZY, TP_H2_LAZY, -1);
	ck_assert_msg(ms < 200, "beside a lazy call, without a poll: %" PRId64 " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_PROMPT, TP_H2_CARRIER, -1);
	ck_assert_msg(ms < 200, "a prompt small answer beside a poll: %" PRId64 " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_PROMPT, TP_H2_CARRIER, TP_H2_LAZY);
	ck_assert_msg(ms < 200, "prompt beside a poll and a lazy call: %" PRId64 " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_LAZY, TP_H2_CARRIER, TP_H2_PROMPT);
	ck_assert_msg(ms < 200, "lazy beside a poll and a prompt call: %" PRId64 " ms", ms);
	ms = small_answer_ms(&fx, TP_H2_CARRIER, TP_H2_CARRIER, -1);
	ck_assert_msg(ms < 200, "polls alone: %" PRId64 " ms", ms);

	/* the last poll ends (cancelled here) 50 ms in: what waited is read then */
	cd = 1;
	hang = start_patient(&fx, "/t.S/Hang", "h", TP_H2_CARRIER, &h, &cd);
	ev = evtimer_new(fx.base, on_cancel_due, hang);
	evtimer_add(ev, &tv);
	t0 = tp_now_mono_ms();
	start_patient(&fx, "/t.S/Echo", "x", TP_H2_LAZY, &a, &cd);
	event_base_dispatch(fx.base);
	event_free(ev);
	ck_assert(a.done && !h.done);
	ck_assert_msg(a.done_ms - t0 >= 40 && a.done_ms - t0 < 300, "the last poll closed: %" PRId64
	    " ms", a.done_ms - t0);

	/* the small answer comes in with a large one 30 ms later */
	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	cd = 2;
	hang = start_patient(&fx, "/t.S/Hang", "h", TP_H2_CARRIER, &h, &cd);
	t0 = tp_now_mono_ms();
	start_patient(&fx, "/t.S/Echo", "x", TP_H2_LAZY, &a, &cd);
	start_patient(&fx, "/t.S/Slow", big, TP_H2_LAZY, &b, &cd);
	event_base_dispatch(fx.base);
	ck_assert(a.done && b.done);
	ck_assert_uint_eq(b.len, sizeof(big) - 1);
	ck_assert_msg(a.done_ms - t0 >= 20 && a.done_ms - t0 < 200, "with a large answer: %" PRId64
	    " ms", a.done_ms - t0);
	ck_assert_int_le(a.done_ms, b.done_ms);

	/* a 2 KiB answer whose last 60 bytes (the end of its DATA frame, the trailers) come 50 ms
	 * later */
	fx.srv->split_tail = 60;
	cd = 1;
	t0 = tp_now_mono_ms();
	start_patient(&fx, "/t.S/Big", "", TP_H2_LAZY, &a, &cd);
	event_base_dispatch(fx.base);
	ck_assert(a.done);
	ck_assert_int_eq(a.code, TP_GRPC_OK);
	ck_assert_uint_eq(a.len, 2048);
	ck_assert_int_eq(fx.srv->split_tail, 0);         /* it was split */
	ck_assert_msg(a.done_ms - t0 >= 40 && a.done_ms - t0 < 300, "a cut frame: %" PRId64 " ms",
	    a.done_ms - t0);
	tp_grpc_call_cancel(hang);

	/* off again: read as it comes */
	tp_grpc_channel_set_lazy_read(fx.ch, 0);
	ms = small_answer_ms(&fx, TP_H2_LAZY, TP_H2_CARRIER, -1);
	ck_assert_msg(ms < 200, "lazy reads off: %" PRId64 " ms", ms);
	ck_assert_int_eq(fx.srv->nconns, 1);
	fx_done(&fx);
}
END_TEST

START_TEST(test_h2_connect_timeout)
{
	struct fixture fx;
	struct tp_h2_conn_opts o;
	struct tp_h2_conn *c;
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	char port[16];
	int fd, i;

	fx_init(&fx, 0, 0);
	/* TCP connects (the kernel completes the handshake), nothing ever speaks HTTP/2 */
	fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	ck_assert_int_eq(listen(fd, 4), 0);
	getsockname(fd, (struct sockaddr *)&sin, &len);
	snprintf(port, sizeof(port), "%d", ntohs(sin.sin_port));
	memset(&o, 0, sizeof(o));
	o.host = "127.0.0.1";
	o.port = port;
	o.connect_timeout_ms = 100;
	c = tp_h2_conn_new(fx.base, NULL, &o, on_h2_notify, &fx);
	tp_h2_conn_connect(c);
	for (i = 0; i < 50 && tp_h2_conn_state(c) != TP_H2_CLOSED; i++)
		event_base_dispatch(fx.base);
	ck_assert_int_eq(tp_h2_conn_state(c), TP_H2_CLOSED);
	ck_assert(!tp_h2_conn_was_ready(c));
	ck_assert_msg(strstr(tp_h2_conn_error(c), "timed out after 100 ms") != NULL, "%s",
	    tp_h2_conn_error(c));
	tp_h2_conn_free(c);
	close(fd);
	fx_done(&fx);
}
END_TEST

static Suite *
grpc_suite(void)
{
	Suite *s = suite_create("grpc");
	TCase *pure = tcase_create("pure");
	TCase *chan = tcase_create("channel");

	tcase_add_test(pure, test_frame_prefix);
	tcase_add_test(pure, test_deframer_bytewise);
	tcase_add_test(pure, test_deframer_splits);
	tcase_add_test(pure, test_deframer_partial_and_empty);
	tcase_add_test(pure, test_deframer_oversize);
	tcase_add_test(pure, test_deframer_compressed);
	tcase_add_test(pure, test_deframer_two_messages);
	tcase_add_test(pure, test_timeout_encode);
	tcase_add_test(pure, test_timeout_decode);
	tcase_add_test(pure, test_code_from_http);
	tcase_add_test(pure, test_code_from_h2_error);
	tcase_add_test(pure, test_code_names_parse);
	tcase_add_test(pure, test_percent_decode);
	tcase_add_test(pure, test_base64);
	tcase_add_test(pure, test_backoff);
	tcase_add_test(pure, test_retryable);
	suite_add_tcase(s, pure);

	tcase_set_timeout(chan, 30);
	tcase_add_test(chan, test_chan_echo);
	tcase_add_test(chan, test_chan_lazy_read);
	tcase_add_test(chan, test_chan_empty_and_status);
	tcase_add_test(chan, test_chan_oversize);
	tcase_add_test(chan, test_chan_large);
	tcase_add_test(chan, test_chan_resets);
	tcase_add_test(chan, test_chan_deadline);
	tcase_add_test(chan, test_chan_connect_refused);
	tcase_add_test(chan, test_chan_max_streams);
	tcase_add_test(chan, test_chan_goaway);
	tcase_add_test(chan, test_chan_reentrant);
	tcase_add_test(chan, test_chan_free_in_callback);
	tcase_add_test(chan, test_chan_close_graceful);
	tcase_add_test(chan, test_chan_close_in_callback);
	tcase_add_test(chan, test_chan_mixed);
	tcase_add_test(chan, test_chan_cancel_queued);
	tcase_add_test(chan, test_h2_connect_timeout);
	tcase_add_test(chan, test_h2_keepalive_timeout);
	tcase_add_test(chan, test_h2_keepalive_ok);
	tcase_add_test(chan, test_h2_ping_ack_deferred);
	suite_add_tcase(s, chan);
	return s;
}

int
main(void)
{
	struct sigaction sa;
	SRunner *sr;
	int failed;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sr = srunner_create(grpc_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
