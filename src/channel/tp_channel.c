#include "channel/tp_channel.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/tp_util.h"

struct tp_channel {
	struct bufferevent          *bev;         /* the output side */
	struct event                *rd_ev;       /* reads: see on_sock_read */
	struct evbuffer             *in;          /* bytes read, not yet a whole frame */
	struct evbuffer             *pend;        /* frames of this loop turn, not yet written */
	struct event                *flush_ev;    /* end of the turn: write pend */
	struct event                *lazy_ev;     /* only lazy frames pending: write them by then */
	struct event                *batch_ev;    /* batched reads: the next read (see on_batch) */
	int                          batch_ms;    /* 0: read on every wake-up */
	bool                         flush_armed;
	bool                         lazy_armed;
	struct tp_channel_callbacks  cb;
	bool                         failed;
};

uint8_t *
tp_channel_encode(const tp_envelope *m, size_t *len)
{
	size_t n = tprefork__channel__v1__envelope__get_packed_size(m);
	uint8_t *buf;

	if (n > TP_CHANNEL_MAX)
		return NULL;
	buf = malloc(n + 4);
	if (buf == NULL)
		return NULL;
	buf[0] = (uint8_t)(n >> 24);
	buf[1] = (uint8_t)(n >> 16);
	buf[2] = (uint8_t)(n >> 8);
	buf[3] = (uint8_t)n;
	tprefork__channel__v1__envelope__pack(m, buf + 4);
	*len = n + 4;
	return buf;
}

static uint32_t
get_len(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void
fail(struct tp_channel *ch, const char *why)
{
	if (ch->failed)
		return;
	ch->failed = true;
	event_del(ch->rd_ev);
	if (ch->batch_ev)
		evtimer_del(ch->batch_ev);
	ch->cb.error(ch->cb.arg, why);
}

/* Deliver every complete frame in the input buffer. Returns -1 if the channel failed: its error
 * callback ran and may have freed it, so the caller must not touch ch again. */
static int
on_read(struct tp_channel *ch)
{
	struct evbuffer *in = ch->in;
	uint8_t hdr[4];

	while (!ch->failed && evbuffer_get_length(in) >= 4) {
		uint32_t n;
		uint8_t *body;
		tp_envelope *m;

		evbuffer_copyout(in, hdr, 4);
		n = get_len(hdr);
		if (n > TP_CHANNEL_MAX) {
			fail(ch, "oversized frame");
			return -1;
		}
		if (evbuffer_get_length(in) < (size_t)n + 4)
			return 0;
		evbuffer_drain(in, 4);
		body = evbuffer_pullup(in, n);
		m = tprefork__channel__v1__envelope__unpack(NULL, n, body);
		evbuffer_drain(in, n);
		if (m == NULL || m->msg_case == TPREFORK__CHANNEL__V1__ENVELOPE__MSG__NOT_SET) {
			if (m)
				tprefork__channel__v1__envelope__free_unpacked(m, NULL);
			fail(ch, "malformed message");
			return -1;
		}
		ch->cb.msg(ch->cb.arg, m);
		tprefork__channel__v1__envelope__free_unpacked(m, NULL);
	}
	return 0;
}

/* Reads bypass the bufferevent, which asks the kernel how much is readable (FIONREAD) before every
 * read: one recv() per buffer, appended to the input buffer and delivered. At most max recv()
 * calls; returns the bytes read, or -1 once the channel has failed (EOF, an error, a bad frame):
 * then its error callback ran and may have freed it. */
static ssize_t
read_some(struct tp_channel *ch, int max)
{
	int fd = bufferevent_getfd(ch->bev);
	uint8_t buf[16384];
	ssize_t n, total = 0;

	if (ch->failed)
		return -1;
	for (int i = 0; i < max; i++) {
		n = recv(fd, buf, sizeof(buf), 0);
		if (n == 0) {
			fail(ch, "closed");
			return -1;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				fail(ch, strerror(errno));
				return -1;
			}
			break;
		}
		total += n;
		if (evbuffer_add(ch->in, buf, (size_t)n) != 0) {
			fail(ch, "out of memory");
			return -1;
		}
		if (on_read(ch) != 0)
			return -1;
		if ((size_t)n < sizeof(buf))
			break;
	}
	return total;
}

/* The socket is readable. With batched reads, stop watching it: what comes next is read on a timer
 * (on_batch). */
static void
on_sock_read(evutil_socket_t fd, short what, void *arg)
{
	struct tp_channel *ch = arg;

	(void)fd;
	(void)what;
	if (read_some(ch, 4) > 0 && ch->batch_ms > 0) {
		event_del(ch->rd_ev);
		tp_timer_in(ch->batch_ev, ch->batch_ms);
	}
}

/* Batched reads: read what came since the last read; go on on the timer while something keeps
 * coming, watch the socket again after a read that finds nothing (level-triggered: bytes that
 * arrive in between wake the loop at once). */
static void
on_batch(evutil_socket_t fd, short what, void *arg)
{
	struct tp_channel *ch = arg;
	ssize_t n;

	(void)fd;
	(void)what;
	n = read_some(ch, 64);
	if (n > 0)
		tp_timer_in(ch->batch_ev, ch->batch_ms);
	else if (n == 0)
		event_add(ch->rd_ev, NULL);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct tp_channel *ch = arg;

	if (what & BEV_EVENT_EOF)
		fail(ch, "closed");
	else if (what & BEV_EVENT_ERROR)
		fail(ch, strerror(EVUTIL_SOCKET_ERROR()));
}

static void on_flush(evutil_socket_t fd, short what, void *arg);

static void
free_events(struct tp_channel *ch)
{
	if (ch->rd_ev)
		event_free(ch->rd_ev);
	if (ch->flush_ev)
		event_free(ch->flush_ev);
	if (ch->lazy_ev)
		event_free(ch->lazy_ev);
	if (ch->batch_ev)
		event_free(ch->batch_ev);
	if (ch->in)
		evbuffer_free(ch->in);
	if (ch->pend)
		evbuffer_free(ch->pend);
}

struct tp_channel *
tp_channel_new(struct event_base *base, int fd, const struct tp_channel_callbacks *cb)
{
	struct tp_channel *ch = calloc(1, sizeof(*ch));

	if (ch == NULL)
		return NULL;
	tp_fd_set_nonblock(fd);
	tp_fd_set_cloexec(fd);
	ch->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (ch->bev == NULL) {
		free(ch);
		return NULL;
	}
	ch->in = evbuffer_new();
	ch->pend = evbuffer_new();
	ch->flush_ev = event_new(base, -1, 0, on_flush, ch);
	ch->lazy_ev = evtimer_new(base, on_flush, ch);
	ch->batch_ev = evtimer_new(base, on_batch, ch);
	ch->rd_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_sock_read, ch);
	if (ch->in == NULL || ch->pend == NULL || ch->flush_ev == NULL || ch->lazy_ev == NULL ||
	    ch->batch_ev == NULL || ch->rd_ev == NULL || event_add(ch->rd_ev, NULL) != 0) {
		free_events(ch);
		bufferevent_free(ch->bev);
		free(ch);
		return NULL;
	}
	ch->cb = *cb;
	bufferevent_setcb(ch->bev, NULL, NULL, on_event, ch);
	bufferevent_enable(ch->bev, EV_WRITE);
	return ch;
}

/* Write the frames of this turn in one send() when nothing is queued before them (a socketpair takes
 * far more than a turn's worth). Left to the bufferevent, every message would enable EV_WRITE, come
 * back through the loop and disable it again: two epoll_ctl and a loop turn each. What the socket
 * does not take, or an error (which the bufferevent then reports through on_event), goes through
 * the bufferevent. */
static void
push(struct tp_channel *ch)
{
	size_t len = evbuffer_get_length(ch->pend);
	ssize_t n = 0;

	if (len == 0)
		return;
	if (evbuffer_get_length(bufferevent_get_output(ch->bev)) == 0) {
		const uint8_t *p = evbuffer_pullup(ch->pend, -1);
		do
			n = send(bufferevent_getfd(ch->bev), p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		while (n < 0 && errno == EINTR);
		if (n > 0)
			evbuffer_drain(ch->pend, (size_t)n);
	}
	if (evbuffer_get_length(ch->pend) > 0)
		(void)bufferevent_write_buffer(ch->bev, ch->pend);
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct tp_channel *ch = arg;

	(void)fd;
	(void)what;
	ch->flush_armed = false;
	if (ch->lazy_armed) {
		evtimer_del(ch->lazy_ev);
		ch->lazy_armed = false;
	}
	push(ch);
}

static int
queue(struct tp_channel *ch, const tp_envelope *m)
{
	size_t len;
	uint8_t *buf;
	int rc;

	if (ch == NULL || ch->failed)
		return -1;
	buf = tp_channel_encode(m, &len);
	if (buf == NULL)
		return -1;
	rc = evbuffer_add(ch->pend, buf, len);
	free(buf);
	return rc == 0 ? 0 : -1;
}

int
tp_channel_send(struct tp_channel *ch, const tp_envelope *m)
{
	if (queue(ch, m) != 0)
		return -1;
	if (!ch->flush_armed) {
		ch->flush_armed = true;
		event_active(ch->flush_ev, EV_TIMEOUT, 1);
	}
	return 0;
}

int
tp_channel_send_lazy(struct tp_channel *ch, const tp_envelope *m, int within_ms)
{
	if (queue(ch, m) != 0)
		return -1;
	if (!ch->flush_armed && !ch->lazy_armed) {
		ch->lazy_armed = true;
		tp_timer_in(ch->lazy_ev, within_ms);
	}
	return 0;
}

void
tp_channel_batch_reads(struct tp_channel *ch, int ms)
{
	ch->batch_ms = ms > 0 ? ms : 0;
}

void
tp_channel_read_now(struct tp_channel *ch)
{
	struct evbuffer *in;
	int fd;

	if (ch == NULL || ch->failed)
		return;
	in = ch->in;
	fd = bufferevent_getfd(ch->bev);
	/* Bounded: a dead peer's bytes are all in the socket already. */
	while (evbuffer_get_length(in) < TP_CHANNEL_MAX + 4 && evbuffer_read(in, fd, 65536) > 0)
		;
	(void)on_read(ch);
}

size_t
tp_channel_pending(const struct tp_channel *ch)
{
	return evbuffer_get_length(bufferevent_get_output(ch->bev)) + evbuffer_get_length(ch->pend);
}

void
tp_channel_free(struct tp_channel *ch)
{
	struct evbuffer *out;
	int fd;

	if (ch == NULL)
		return;
	/* Best effort: push what is queued (the socket is non-blocking; a full peer loses it). */
	push(ch);
	out = bufferevent_get_output(ch->bev);
	fd = bufferevent_getfd(ch->bev);
	while (evbuffer_get_length(out) > 0 && evbuffer_write(out, fd) > 0)
		;
	free_events(ch);
	bufferevent_free(ch->bev);
	free(ch);
}

static int
write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd pfd = { fd, POLLOUT, 0 };
			poll(&pfd, 1, 1000);
			continue;
		}
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int
tp_channel_write_sync(int fd, const tp_envelope *m)
{
	size_t len;
	uint8_t *buf = tp_channel_encode(m, &len);
	int rc;

	if (buf == NULL)
		return -1;
	rc = write_all(fd, buf, len);
	free(buf);
	return rc;
}

static int
read_exact(int fd, uint8_t *p, size_t n, int64_t deadline, char *why, size_t whylen)
{
	while (n > 0) {
		int64_t left = deadline - tp_now_mono_ms();
		struct pollfd pfd = { fd, POLLIN, 0 };
		ssize_t r;

		if (left <= 0) {
			snprintf(why, whylen, "timed out");
			return -1;
		}
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) {
			snprintf(why, whylen, "poll: %s", strerror(errno));
			return -1;
		}
		r = read(fd, p, n);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r <= 0) {
			snprintf(why, whylen, "%s", r == 0 ? "closed" : strerror(errno));
			return -1;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

tp_envelope *
tp_channel_read_sync(int fd, int timeout_ms, char *why, size_t whylen)
{
	int64_t deadline = tp_now_mono_ms() + timeout_ms;
	uint8_t hdr[4], *body;
	uint32_t n;
	tp_envelope *m;

	if (read_exact(fd, hdr, 4, deadline, why, whylen) != 0)
		return NULL;
	n = get_len(hdr);
	if (n > TP_CHANNEL_MAX) {
		snprintf(why, whylen, "oversized frame (%u bytes)", n);
		return NULL;
	}
	body = malloc(n ? n : 1);
	if (body == NULL) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	if (read_exact(fd, body, n, deadline, why, whylen) != 0) {
		free(body);
		return NULL;
	}
	m = tprefork__channel__v1__envelope__unpack(NULL, n, body);
	free(body);
	if (m == NULL)
		snprintf(why, whylen, "malformed message");
	return m;
}
