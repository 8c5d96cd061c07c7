/* Unit tests: tp_channel, the master-child message channel (framing, the per-turn write, lazy
 * messages, order, flush at free, a malformed frame, batched reads). */
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel/tp_channel.h"

struct got {
	int   n;
	char  ids[64][32];   /* the activity ids of TaskStarted, "done" for a TaskDone */
	int   errors;
	char  why[64];
};

static void
on_msg(void *arg, const tp_envelope *m)
{
	struct got *g = arg;

	if (g->n >= 64)
		return;
	if (m->msg_case == TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_STARTED)
		snprintf(g->ids[g->n], sizeof(g->ids[0]), "%s", m->task_started->activity_id);
	else if (m->msg_case == TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_DONE)
		snprintf(g->ids[g->n], sizeof(g->ids[0]), "done");
	else
		snprintf(g->ids[g->n], sizeof(g->ids[0]), "other");
	g->n++;
}

static void
on_err(void *arg, const char *why)
{
	struct got *g = arg;

	g->errors++;
	snprintf(g->why, sizeof(g->why), "%s", why);
}

static void
send_started(struct tp_channel *ch, const char *id)
{
	Tprefork__Channel__V1__TaskStarted s = TPREFORK__CHANNEL__V1__TASK_STARTED__INIT;
	tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;
	uint8_t tok[1] = { 1 };

	s.task_token.data = tok;
	s.task_token.len = 1;
	s.activity_id = (char *)id;
	m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_STARTED;
	m.task_started = &s;
	ck_assert_int_eq(tp_channel_send(ch, &m), 0);
}

static void
send_done_lazy(struct tp_channel *ch, int within_ms)
{
	Tprefork__Channel__V1__TaskDone d = TPREFORK__CHANNEL__V1__TASK_DONE__INIT;
	tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;
	uint8_t tok[1] = { 1 };

	d.task_token.data = tok;
	d.task_token.len = 1;
	m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_DONE;
	m.task_done = &d;
	ck_assert_int_eq(tp_channel_send_lazy(ch, &m, within_ms), 0);
}

/* Bytes waiting in the socket of fd (without reading them). */
static int
readable(int fd, int timeout_ms)
{
	struct pollfd p = { fd, POLLIN, 0 };

	return poll(&p, 1, timeout_ms);
}

struct pair {
	struct event_base *base;
	struct tp_channel *a, *b;
	struct got         ga, gb;
	int                fds[2];
};

static void
pair_open(struct pair *p)
{
	struct tp_channel_callbacks ca = { on_msg, on_err, &p->ga }, cb = { on_msg, on_err, &p->gb };

	memset(p, 0, sizeof(*p));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, p->fds), 0);
	p->base = event_base_new();
	ck_assert_ptr_nonnull(p->base);
	p->a = tp_channel_new(p->base, p->fds[0], &ca);
	p->b = tp_channel_new(p->base, p->fds[1], &cb);
	ck_assert_ptr_nonnull(p->a);
	ck_assert_ptr_nonnull(p->b);
}

static void
pair_close(struct pair *p)
{
	tp_channel_free(p->a);
	tp_channel_free(p->b);
	event_base_free(p->base);
}

static void
turn(struct pair *p)
{
	event_base_loop(p->base, EVLOOP_NONBLOCK);
}

/* Turns of the loop for ms (a blocking dispatch up to then). */
static void
run_for(struct pair *p, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(p->base, &tv);
	event_base_dispatch(p->base);
}

/* The messages of one turn are written together at its end, in order, and delivered. */
START_TEST(test_turn_batch_in_order)
{
	struct pair p;

	pair_open(&p);
	send_started(p.a, "1");
	send_started(p.a, "2");
	send_started(p.a, "3");
	ck_assert_int_eq(readable(p.fds[1], 0), 0);        /* nothing written before the turn ends */
	ck_assert_uint_gt(tp_channel_pending(p.a), 0);
	turn(&p);
	ck_assert_uint_eq(tp_channel_pending(p.a), 0);
	for (int i = 0; i < 10 && p.gb.n < 3; i++)
		turn(&p);
	ck_assert_int_eq(p.gb.n, 3);
	ck_assert_str_eq(p.gb.ids[0], "1");
	ck_assert_str_eq(p.gb.ids[1], "2");
	ck_assert_str_eq(p.gb.ids[2], "3");
	ck_assert_int_eq(p.gb.errors, 0);
	pair_close(&p);
}
END_TEST

/* A lazy message waits for the next ordinary one and goes before it. */
START_TEST(test_lazy_rides_with_next)
{
	struct pair p;

	pair_open(&p);
	send_done_lazy(p.a, 10000);
	turn(&p);
	ck_assert_int_eq(readable(p.fds[1], 50), 0);       /* still held */
	ck_assert_uint_gt(tp_channel_pending(p.a), 0);
	send_started(p.a, "7");
	turn(&p);
	for (int i = 0; i < 10 && p.gb.n < 2; i++)
		turn(&p);
	ck_assert_int_eq(p.gb.n, 2);
	ck_assert_str_eq(p.gb.ids[0], "done");
	ck_assert_str_eq(p.gb.ids[1], "7");
	pair_close(&p);
}
END_TEST

/* Alone, a lazy message is written when its time is up. */
START_TEST(test_lazy_alone_by_deadline)
{
	struct pair p;

	pair_open(&p);
	send_done_lazy(p.a, 100);
	turn(&p);
	ck_assert_int_eq(p.gb.n, 0);
	run_for(&p, 300);
	ck_assert_int_eq(p.gb.n, 1);
	ck_assert_str_eq(p.gb.ids[0], "done");
	pair_close(&p);
}
END_TEST

/* Freeing a channel writes what it still holds, lazy messages included. */
START_TEST(test_free_flushes)
{
	struct pair p;

	pair_open(&p);
	send_started(p.a, "9");
	send_done_lazy(p.a, 10000);
	tp_channel_free(p.a);
	p.a = NULL;
	ck_assert_int_eq(readable(p.fds[1], 1000), 1);
	tp_channel_read_now(p.b);
	ck_assert_int_eq(p.gb.n, 2);
	ck_assert_str_eq(p.gb.ids[0], "9");
	ck_assert_str_eq(p.gb.ids[1], "done");
	tp_channel_free(p.b);
	event_base_free(p.base);
}
END_TEST

/* The peer's end: "closed"; an oversized frame: an error, and no more messages. */
START_TEST(test_eof_and_oversized)
{
	struct pair p;
	uint8_t bad[4] = { 0xff, 0xff, 0xff, 0xff };

	pair_open(&p);
	ck_assert_int_eq(write(p.fds[0], bad, sizeof(bad)), 4);
	for (int i = 0; i < 10 && p.gb.errors == 0; i++)
		turn(&p);
	ck_assert_int_eq(p.gb.errors, 1);
	ck_assert_str_eq(p.gb.why, "oversized frame");
	tp_channel_free(p.b);
	p.b = NULL;
	for (int i = 0; i < 10 && p.ga.errors == 0; i++)
		turn(&p);
	ck_assert_int_eq(p.ga.errors, 1);
	ck_assert_str_eq(p.ga.why, "closed");
	ck_assert_int_eq(tp_channel_send(p.a, &(tp_envelope)TPREFORK__CHANNEL__V1__ENVELOPE__INIT), -1);
	tp_channel_free(p.a);
	event_base_free(p.base);
}
END_TEST

/* More than the socket takes at once: the rest goes through the bufferevent, in order. */
START_TEST(test_large_turn)
{
	enum { N = 48, LEN = 16384 };
	struct pair p;
	char *id = malloc(LEN + 1), want[8];
	int ok = 0;

	pair_open(&p);
	for (int i = 0; i < N; i++) {
		snprintf(id, 8, "%03d", i);
		memset(id + 3, 'x', LEN - 3);
		id[LEN] = '\0';
		send_started(p.a, id);
	}
	for (int i = 0; i < 200 && p.gb.n < N; i++)
		turn(&p);
	ck_assert_int_eq(p.gb.n, N);
	for (int i = 0; i < N; i++) {
		snprintf(want, sizeof(want), "%03d", i);
		ok += strncmp(p.gb.ids[i], want, 3) == 0;
	}
	ck_assert_int_eq(ok, N);
	ck_assert_uint_eq(tp_channel_pending(p.a), 0);
	free(id);
	pair_close(&p);
}
END_TEST

/* Batched reads: the first message wakes the reader at once; what follows while it keeps coming is
 * read on the timer, in order; a read that finds nothing goes back to waking on the next byte; what
 * a peer wrote before it closed is read by tp_channel_read_now, and its EOF still reported. */
START_TEST(test_batched_reads)
{
	enum { BATCH_MS = 200 };
	struct pair p;

	pair_open(&p);
	tp_channel_batch_reads(p.b, BATCH_MS);
	send_started(p.a, "1");
	run_for(&p, 30);
	ck_assert_int_eq(p.gb.n, 1);                        /* idle: read on its first byte */
	send_started(p.a, "2");
	send_started(p.a, "3");
	run_for(&p, 30);
	ck_assert_int_eq(p.gb.n, 1);                        /* batching: not read yet ... */
	ck_assert_int_eq(readable(p.fds[1], 0), 1);         /* ... though in the socket */
	run_for(&p, BATCH_MS + 100);
	ck_assert_int_eq(p.gb.n, 3);
	ck_assert_str_eq(p.gb.ids[1], "2");
	ck_assert_str_eq(p.gb.ids[2], "3");
	run_for(&p, 2 * BATCH_MS);                          /* a read finds nothing: watching again */
	send_started(p.a, "4");
	run_for(&p, 30);
	ck_assert_int_eq(p.gb.n, 4);
	ck_assert_str_eq(p.gb.ids[3], "4");
	send_started(p.a, "5");                             /* batching again; then the peer goes */
	turn(&p);
	tp_channel_free(p.a);
	p.a = NULL;
	ck_assert_int_eq(p.gb.n, 4);
	tp_channel_read_now(p.b);
	ck_assert_int_eq(p.gb.n, 5);
	ck_assert_str_eq(p.gb.ids[4], "5");
	run_for(&p, BATCH_MS + 100);
	ck_assert_int_eq(p.gb.errors, 1);
	ck_assert_str_eq(p.gb.why, "closed");
	ck_assert_int_eq(p.gb.n, 5);
	tp_channel_free(p.b);
	event_base_free(p.base);
}
END_TEST

/* A reader whose error callback frees its channel, as a worker does with the master's. */
struct owner {
	struct tp_channel *ch;
	int                errors;
};

static void
on_err_free(void *arg, const char *why)
{
	struct owner *o = arg;

	(void)why;
	o->errors++;
	tp_channel_free(o->ch);
	o->ch = NULL;
}

static void
on_msg_none(void *arg, const tp_envelope *m)
{
	(void)arg;
	(void)m;
}

/* The error callback may free the channel: on EOF and on a malformed frame, read on a wake-up and
 * on the batched timer (the sanitizer and valgrind runs of this suite see any use after it). */
START_TEST(test_error_callback_may_free)
{
	for (int batched = 0; batched < 2; batched++) {
		for (int malformed = 0; malformed < 2; malformed++) {
			struct event_base *base = event_base_new();
			struct owner o = { 0 };
			struct tp_channel_callbacks cb = { on_msg_none, on_err_free, &o };
			uint8_t bad[6] = { 0, 0, 0, 2, 0xff, 0xff };
			struct timeval tv = { 0, 300 * 1000 };
			int fds[2];

			ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
			o.ch = tp_channel_new(base, fds[1], &cb);
			ck_assert_ptr_nonnull(o.ch);
			if (batched) {
				Tprefork__Channel__V1__Ready r = TPREFORK__CHANNEL__V1__READY__INIT;
				tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;
				size_t len;
				uint8_t *frame;

				m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_READY;
				m.ready = &r;
				frame = tp_channel_encode(&m, &len);
				tp_channel_batch_reads(o.ch, 50);
				ck_assert_int_eq(write(fds[0], frame, len), (ssize_t)len);  /* wakes it: batching */
				free(frame);
				event_base_loop(base, EVLOOP_ONCE);
				ck_assert_ptr_nonnull(o.ch);
			}
			if (malformed)
				ck_assert_int_eq(write(fds[0], bad, sizeof(bad)), (ssize_t)sizeof(bad));
			else
				close(fds[0]);
			event_base_loopexit(base, &tv);
			event_base_dispatch(base);
			ck_assert_int_eq(o.errors, 1);
			ck_assert_ptr_null(o.ch);
			if (malformed)
				close(fds[0]);
			event_base_free(base);
		}
	}
}
END_TEST

static Suite *
channel_suite(void)
{
	Suite *s = suite_create("channel");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_turn_batch_in_order);
	tcase_add_test(tc, test_lazy_rides_with_next);
	tcase_add_test(tc, test_lazy_alone_by_deadline);
	tcase_add_test(tc, test_free_flushes);
	tcase_add_test(tc, test_eof_and_oversized);
	tcase_add_test(tc, test_large_turn);
	tcase_add_test(tc, test_batched_reads);
	tcase_add_test(tc, test_error_callback_may_free);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(channel_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
