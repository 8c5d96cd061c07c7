#include "master/tp_durable.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tp_log.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"
#include "journal/tp_journal.h"
#include "temporal/tp_pb.h"
#include "temporal/tp_temporal.h"
#include "transport/tp_grpc.h"

/* Delivery of the outbox: at most this many calls at once, each one attempt of 10 s with a short
 * retry of its own, then a backoff per row from 1 s doubling to 5 s (+-20 %), the SDKs' longest
 * wait between tries. A success makes every waiting row due at once: the server is back. */
#define MAX_DELIVERIES 32
#define DELIVERY_TIMEOUT_MS 10000
#define DELIVERY_RETRY_MS 2000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 5000
/* While the journal cannot be written, the write is retried this often. */
#define JOURNAL_RETRY_MS 1000
#define NBUCKETS_MIN 64

enum table { T_INFLIGHT = 0, T_OUTBOX = 1 };

/* A row of either table, in memory. */
struct row {
	struct tp_durable   *d;
	struct row          *hnext;       /* hash chain */
	struct row          *dnext;       /* the dirty list */
	enum table           tbl;
	ProtobufCBinaryData  token;       /* owned */
	bool                 on_dirty;    /* on the dirty list */
	bool                 dirty;       /* the whole row must be written */
	bool                 touched;     /* only attempts / next try changed */
	bool                 in_db;       /* a committed transaction holds it */
	bool                 dead;        /* removed; freed when it leaves the dirty list */
	char                *label;       /* "Type id=X attempt=N" */
	/* in flight */
	int64_t              pid, generation, attempt, started_ms, deadline_ms;
	char                *activity_id, *activity_type, *workflow_id, *run_id;
	/* outbox */
	enum tp_journal_kind kind;
	uint8_t             *req;
	size_t               req_len;
	int64_t              attempts;
	int64_t              next_try_ms;   /* Unix ms, as journaled */
	int64_t              next_try_mono; /* when to try next */
	int64_t              created_ms;
	bool                 own;           /* the master's own failure (not a child's report) */
	struct tp_temporal_call *call;
};

struct map {
	struct row **b;
	size_t       nb;
	size_t       n;
};

/* A committed row to delete. */
struct del {
	struct del          *next;
	enum table           tbl;
	ProtobufCBinaryData  token;
};

struct tp_durable {
	struct event_base       *base;
	struct tp_temporal      *tc;
	struct tp_journal       *jr;
	size_t                   memory_cap;
	struct tp_durable_hooks  hooks;
	struct map               maps[2];
	struct row              *dirty;        /* rows to write (LIFO; order does not matter) */
	struct del              *dels;
	struct event            *flush_ev;     /* end of the loop turn */
	bool                     flush_armed;
	struct event            *delay_ev;     /* commit_delay_ms after an in-flight change */
	bool                     delay_armed;
	int                      commit_delay_ms;
	bool                     degraded;     /* the last write failed: children paused */
	int64_t                  retry_at;     /* monotonic: next write attempt while degraded */
	int                      failures;     /* failed writes in a row */
	size_t                   outbox_bytes;
	int                      deliveries;
	unsigned long            delivered, expired, rejected;
};

/* ---- the maps ------------------------------------------------------------------------------- */

static uint64_t
hash_token(const ProtobufCBinaryData *t)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < t->len; i++) {
		h ^= t->data[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static bool
same_token(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static struct row *
map_find(const struct map *m, const ProtobufCBinaryData *token)
{
	if (m->nb == 0)
		return NULL;
	for (struct row *r = m->b[hash_token(token) % m->nb]; r; r = r->hnext)
		if (same_token(&r->token, token))
			return r;
	return NULL;
}

static void
map_grow(struct map *m)
{
	size_t nb = m->nb ? m->nb * 2 : NBUCKETS_MIN;
	struct row **b = tp_xcalloc(nb, sizeof(*b));

	for (size_t i = 0; i < m->nb; i++) {
		while (m->b[i]) {
			struct row *r = m->b[i];
			size_t k = hash_token(&r->token) % nb;
			m->b[i] = r->hnext;
			r->hnext = b[k];
			b[k] = r;
		}
	}
	free(m->b);
	m->b = b;
	m->nb = nb;
}

static void
map_add(struct map *m, struct row *r)
{
	size_t k;

	if (m->n + 1 > 2 * m->nb)
		map_grow(m);
	k = hash_token(&r->token) % m->nb;
	r->hnext = m->b[k];
	m->b[k] = r;
	m->n++;
}

static void
map_unlink(struct map *m, struct row *r)
{
	for (struct row **p = &m->b[hash_token(&r->token) % m->nb]; *p; p = &(*p)->hnext) {
		if (*p == r) {
			*p = r->hnext;
			r->hnext = NULL;
			m->n--;
			return;
		}
	}
}

/* ---- rows ----------------------------------------------------------------------------------- */

static void
token_copy(ProtobufCBinaryData *dst, const void *data, size_t len)
{
	dst->len = len;
	dst->data = tp_xmalloc(len ? len : 1);
	memcpy(dst->data, data, len);
}

static struct row *
row_new(struct tp_durable *d, enum table tbl, const void *token, size_t len)
{
	struct row *r = tp_xcalloc(1, sizeof(*r));

	r->d = d;
	r->tbl = tbl;
	token_copy(&r->token, token, len);
	return r;
}

static void
row_free(struct row *r)
{
	free(r->token.data);
	free(r->label);
	free(r->activity_id);
	free(r->activity_type);
	free(r->workflow_id);
	free(r->run_id);
	free(r->req);
	free(r);
}

static void schedule(struct tp_durable *d, enum table tbl);

/* The row must be written (whole, or only its delivery bookkeeping). */
static void
mark(struct tp_durable *d, struct row *r, bool whole)
{
	if (whole)
		r->dirty = true;
	else
		r->touched = true;
	if (!r->on_dirty) {
		r->on_dirty = true;
		r->dnext = d->dirty;
		d->dirty = r;
	}
	schedule(d, r->tbl);
}

/* Take r out of its table; a committed row gets a pending DELETE. */
static void
row_remove(struct tp_durable *d, struct row *r)
{
	map_unlink(&d->maps[r->tbl], r);
	if (r->tbl == T_OUTBOX)
		d->outbox_bytes -= r->req_len;
	if (r->in_db && d->jr) {
		struct del *x = tp_xcalloc(1, sizeof(*x));
		x->tbl = r->tbl;
		token_copy(&x->token, r->token.data, r->token.len);
		x->next = d->dels;
		d->dels = x;
		schedule(d, r->tbl);
	}
	if (r->call) {
		tp_temporal_call_cancel(r->call);
		r->call = NULL;
		d->deliveries--;
	}
	if (r->on_dirty)
		r->dead = true;
	else
		row_free(r);
}

/* ---- the journal: group commit, degraded mode ----------------------------------------------- */

static int
write_row(struct tp_journal *j, const struct row *r)
{
	if (r->tbl == T_INFLIGHT) {
		struct tp_journal_inflight x = { r->token.data, r->token.len, r->pid, r->generation,
			r->activity_id, r->activity_type, r->workflow_id, r->run_id, r->attempt,
			r->started_ms, r->deadline_ms };
		return tp_journal_inflight_put(j, &x);
	}
	if (r->dirty || !r->in_db) {
		struct tp_journal_outbox x = { r->token.data, r->token.len, r->kind, r->req, r->req_len,
			r->attempts, r->next_try_ms, r->created_ms, r->label };
		return tp_journal_outbox_put(j, &x);
	}
	return tp_journal_outbox_touch(j, r->token.data, r->token.len, r->attempts, r->next_try_ms);
}

/* One transaction: the deletes, then the rows. */
static int
write_all(struct tp_durable *d)
{
	int rc = tp_journal_begin(d->jr);

	for (struct del *x = d->dels; x && rc == TP_JOURNAL_OK; x = x->next)
		rc = x->tbl == T_INFLIGHT ? tp_journal_inflight_del(d->jr, x->token.data, x->token.len)
		                          : tp_journal_outbox_del(d->jr, x->token.data, x->token.len);
	for (struct row *r = d->dirty; r && rc == TP_JOURNAL_OK; r = r->dnext)
		if (!r->dead)
			rc = write_row(d->jr, r);
	/* While degraded, a write is made even with nothing pending: its success ends the pause. */
	if (rc == TP_JOURNAL_OK && d->degraded)
		rc = tp_journal_probe(d->jr, tp_now_real_ms());
	if (rc == TP_JOURNAL_OK)
		rc = tp_journal_commit(d->jr);
	if (rc != TP_JOURNAL_OK)
		tp_journal_rollback(d->jr);
	return rc;
}

/* Empty the dirty list; written: the rows are now committed. Removed rows are freed. */
static void
clear_dirty(struct tp_durable *d, bool written)
{
	struct row **p = &d->dirty;

	while (*p) {
		struct row *r = *p;
		if (r->dead) {
			*p = r->dnext;
			row_free(r);
		} else if (written) {
			*p = r->dnext;
			r->on_dirty = r->dirty = r->touched = false;
			r->in_db = true;
			r->dnext = NULL;
		} else {
			p = &r->dnext;
		}
	}
	if (written) {
		while (d->dels) {
			struct del *x = d->dels;
			d->dels = x->next;
			free(x->token.data);
			free(x);
		}
	}
}

static void
enter_degraded(struct tp_durable *d, int rc)
{
	d->failures++;
	d->retry_at = tp_now_mono_ms() + JOURNAL_RETRY_MS;
	if (d->degraded) {
		if ((d->failures & (d->failures - 1)) == 0)
			tp_log_warnx("journal: still cannot write (%d attempts): %s: %s", d->failures,
			    tp_journal_strerror(rc), tp_journal_errmsg(d->jr));
		return;
	}
	d->degraded = true;
	tp_log_error("journal: cannot write: %s: %s; workers stop polling until it can be written "
	    "(%zu report(s) held in memory)", tp_journal_strerror(rc), tp_journal_errmsg(d->jr),
	    d->maps[T_OUTBOX].n);
	if (d->hooks.backpressure)
		d->hooks.backpressure(d->hooks.arg, true);
}

static void
leave_degraded(struct tp_durable *d)
{
	if (!d->degraded)
		return;
	tp_log_info("journal: writable again after %d failed attempt(s); workers resume polling "
	    "(%zu in flight, %zu undelivered)", d->failures, d->maps[T_INFLIGHT].n,
	    d->maps[T_OUTBOX].n);
	d->degraded = false;
	d->failures = 0;
	if (d->hooks.backpressure)
		d->hooks.backpressure(d->hooks.arg, false);
}

/* Whether a flush has anything to write: a row that was put and removed since the last commit (a
 * task that ended within the delay) needs neither its INSERT nor a DELETE. */
static bool
pending(const struct tp_durable *d)
{
	if (d->dels)
		return true;
	for (const struct row *r = d->dirty; r; r = r->dnext)
		if (!r->dead)
			return true;
	return false;
}

bool
tp_durable_flush(struct tp_durable *d)
{
	int rc;

	/* Whatever triggered it, the flush takes everything pending: the timer is not needed. */
	d->flush_armed = false;
	if (d->delay_armed) {
		evtimer_del(d->delay_ev);
		d->delay_armed = false;
	}
	if (d->jr == NULL || (!d->degraded && !pending(d))) {
		clear_dirty(d, true);
		return true;
	}
	rc = write_all(d);
	if (rc == TP_JOURNAL_OK) {
		clear_dirty(d, true);
		leave_degraded(d);
		return true;
	}
	clear_dirty(d, false);
	enter_degraded(d, rc);
	return false;
}

static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	struct tp_durable *d = arg;

	if (!d->degraded)
		tp_durable_flush(d);
	else
		d->flush_armed = false;
}

static void
on_delay(evutil_socket_t fd, short what, void *arg)
{
	struct tp_durable *d = arg;

	d->delay_armed = false;
	if (!d->degraded)
		tp_durable_flush(d);
}

/* At the end of this loop turn (degraded: at the next retry). */
static void
schedule_flush(struct tp_durable *d)
{
	if (d->flush_armed || d->degraded)
		return;
	d->flush_armed = true;
	event_active(d->flush_ev, EV_TIMEOUT, 1);
}

/* When a change of a row of tbl is written. A result must be on disk at once: the outbox (its
 * delivery bookkeeping too, which is rare) at the end of this loop turn, taking the in-flight rows
 * pending along. An in-flight row is only a hint for a restart after a crash of the whole tree (a
 * lost one leaves its task to the Temporal timeout, nothing is lost): it waits commit_delay_ms
 * from the first change on, so that about one transaction per delay serves every TaskStarted and
 * TaskDone instead of one each, and a short task is never written. Not rearmed by later changes: a
 * row waits at most the delay. */
static void
schedule(struct tp_durable *d, enum table tbl)
{
	if (tbl != T_INFLIGHT || d->commit_delay_ms <= 0 || d->jr == NULL) {
		schedule_flush(d);
		return;
	}
	if (d->delay_armed || d->flush_armed || d->degraded)
		return;
	d->delay_armed = true;
	tp_timer_in(d->delay_ev, d->commit_delay_ms);
}

/* ---- delivery ------------------------------------------------------------------------------- */

static const char *
kind_name(enum tp_journal_kind k)
{
	switch (k) {
	case TP_JOURNAL_COMPLETED: return "completed";
	case TP_JOURNAL_FAILED: return "failed";
	case TP_JOURNAL_CANCELED: return "canceled";
	}
	return "?";
}

static int64_t
backoff_ms(int64_t attempts)
{
	int64_t ms = BACKOFF_MIN_MS;

	for (int64_t i = 1; i < attempts && ms < BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	return (int64_t)((double)ms * (0.8 + 0.4 * tp_random_unit()));
}

/* Codes a later attempt cannot change: the row ends. */
static bool
is_permanent(const struct tp_temporal_status *st)
{
	return st->code == TP_GRPC_INVALID_ARGUMENT || st->code == TP_GRPC_ALREADY_EXISTS ||
	    st->code == TP_GRPC_UNIMPLEMENTED;
}

static void
delivery_failed(struct tp_durable *d, struct row *r, const struct tp_temporal_status *st)
{
	int64_t delay = backoff_ms(r->attempts);

	r->next_try_mono = tp_now_mono_ms() + delay;
	r->next_try_ms = tp_now_real_ms() + delay;
	mark(d, r, false);
	if ((r->attempts & (r->attempts - 1)) == 0)
		tp_log_warnx("outbox: cannot deliver %s (%s) yet, attempt %lld: %s: %s; next try in "
		    "%lld ms", r->label, kind_name(r->kind), (long long)r->attempts,
		    tp_grpc_code_name(st->code), st->message, (long long)delay);
}

static void
on_delivered(void *arg, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	struct row *r = arg;
	struct tp_durable *d = r->d;
	bool expired = st->code == TP_GRPC_NOT_FOUND && (st->detail == TP_DETAIL_NONE ||
	    st->detail == TP_DETAIL_NOT_FOUND);

	if (resp)
		tp_pb_free(resp);
	r->call = NULL;
	d->deliveries--;
	r->attempts++;
	if (st->code == TP_GRPC_OK) {
		d->delivered++;
		if (r->own && r->attempts == 1)
			tp_log_debug("outbox: delivered %s (%s)", r->label, kind_name(r->kind));
		else
			tp_log_info("outbox: delivered %s (%s) after %lld attempt(s)", r->label,
			    kind_name(r->kind), (long long)r->attempts);
		bool was_failing = r->attempts > 1;
		row_remove(d, r);
		/* After failures, a success says the server is back: the other rows need not wait. */
		if (was_failing)
			tp_durable_deliver_now(d);
	} else if (expired) {
		d->expired++;
		tp_log_info("outbox: %s (%s): the server no longer knows this task (NOT_FOUND: token "
		    "expired, or the task finished otherwise); row ended", r->label, kind_name(r->kind));
		row_remove(d, r);
	} else if (is_permanent(st)) {
		d->rejected++;
		tp_log_error("outbox: the server rejected %s (%s): %s: %s; row ended", r->label,
		    kind_name(r->kind), tp_grpc_code_name(st->code), st->message);
		row_remove(d, r);
	} else {
		delivery_failed(d, r, st);
	}
	if (d->hooks.delivery_done)
		d->hooks.delivery_done(d->hooks.arg);
}

static void
deliver(struct tp_durable *d, struct row *r)
{
	struct tp_temporal_call_opts o = { DELIVERY_TIMEOUT_MS, DELIVERY_RETRY_MS, TP_H2_PROMPT };

	r->call = tp_temporal_report_raw(d->tc, (enum tp_temporal_report)r->kind, r->req, r->req_len,
	    &o, on_delivered, r);
	if (r->call)
		d->deliveries++;
}

/* Start the deliveries that are due, within MAX_DELIVERIES. */
static void
deliver_due(struct tp_durable *d)
{
	const struct map *m = &d->maps[T_OUTBOX];
	int64_t now = tp_now_mono_ms();

	for (size_t i = 0; i < m->nb && d->deliveries < MAX_DELIVERIES; i++)
		for (struct row *r = m->b[i]; r && d->deliveries < MAX_DELIVERIES; r = r->hnext)
			if (r->call == NULL && r->next_try_mono <= now)
				deliver(d, r);
}

void
tp_durable_deliver_now(struct tp_durable *d)
{
	const struct map *m = &d->maps[T_OUTBOX];

	for (size_t i = 0; i < m->nb; i++)
		for (struct row *r = m->b[i]; r; r = r->hnext)
			r->next_try_mono = 0;
	deliver_due(d);
}

/* ---- the outbox ----------------------------------------------------------------------------- */

/* Put a report into the outbox (taking req) and try it at once. */
static struct row *
outbox_put(struct tp_durable *d, const ProtobufCBinaryData *token, enum tp_journal_kind kind,
    uint8_t *req, size_t len, const char *label, bool own)
{
	struct row *r = map_find(&d->maps[T_OUTBOX], token);

	if (r == NULL) {
		r = row_new(d, T_OUTBOX, token->data, token->len);
		map_add(&d->maps[T_OUTBOX], r);
	} else {
		if (r->call) {
			tp_temporal_call_cancel(r->call);
			r->call = NULL;
			d->deliveries--;
		}
		d->outbox_bytes -= r->req_len;
		free(r->req);
		free(r->label);
	}
	r->kind = kind;
	r->req = req;
	r->req_len = len;
	r->label = tp_xstrdup(label);
	r->own = own;
	r->attempts = 0;
	r->created_ms = tp_now_real_ms();
	r->next_try_ms = r->created_ms;
	r->next_try_mono = 0;
	d->outbox_bytes += len;
	mark(d, r, true);
	if (d->deliveries < MAX_DELIVERIES)
		deliver(d, r);
	return r;
}

static char *
task_label(const struct row *task, const ProtobufCBinaryData *token)
{
	if (task)
		return tp_xasprintf("%.60s id=%.60s attempt=%lld", task->activity_type,
		    task->activity_id, (long long)task->attempt);
	return tp_xasprintf("task (token of %zu bytes)", token->len);
}

/* Pack a retryable failure of type for token and put it into the outbox. */
static void
outbox_fail(struct tp_durable *d, const ProtobufCBinaryData *token, const char *type,
    const char *message, const char *label)
{
	tp_failure *f = tp_pb_app_failure(type, message, false, NULL);
	size_t len;
	uint8_t *req = tp_temporal_pack_fail(d->tc, token, f, NULL, &len);

	tp_pb_failure_free(f);
	outbox_put(d, token, TP_JOURNAL_FAILED, req, len, label, true);
}

int
tp_durable_undelivered(struct tp_durable *d, const Tprefork__Channel__V1__Undelivered *u)
{
	const struct row *task = map_find(&d->maps[T_INFLIGHT], &u->task_token);
	char *label;
	uint8_t *req;

	if (u->kind < 1 || u->kind > 3 || u->task_token.len == 0 || u->request.len == 0)
		return -1;
	label = task_label(task, &u->task_token);
	if (d->outbox_bytes + u->request.len > d->memory_cap) {
		/* A small failure instead: Temporal retries the activity rather than wait for its
		 * timeout. */
		tp_log_error("outbox: %s: the report (%zu bytes) does not fit the memory cap (%zu "
		    "bytes held); failing the task instead (retryable)", label, u->request.len,
		    d->outbox_bytes);
		outbox_fail(d, &u->task_token, "OutboxFull", "tprefork could not hold this activity's "
		    "result while the server was unreachable; it will be retried", label);
		free(label);
		return 0;
	}
	req = tp_xmalloc(u->request.len);
	memcpy(req, u->request.data, u->request.len);
	tp_log_info("outbox: %s (%s) handed over by its worker; the master delivers it", label,
	    kind_name((enum tp_journal_kind)u->kind));
	outbox_put(d, &u->task_token, (enum tp_journal_kind)u->kind, req, u->request.len, label,
	    false);
	free(label);
	return 0;
}

bool
tp_durable_fail_task(struct tp_durable *d, const ProtobufCBinaryData *token, const char *type,
    const char *message)
{
	char *label;

	if (map_find(&d->maps[T_OUTBOX], token))
		return false;
	label = task_label(map_find(&d->maps[T_INFLIGHT], token), token);
	outbox_fail(d, token, type, message, label);
	free(label);
	return true;
}

/* ---- in flight ------------------------------------------------------------------------------ */

void
tp_durable_task_started(struct tp_durable *d, const Tprefork__Channel__V1__TaskStarted *s,
    pid_t pid, int generation)
{
	struct row *r = map_find(&d->maps[T_INFLIGHT], &s->task_token);

	if (r == NULL) {
		r = row_new(d, T_INFLIGHT, s->task_token.data, s->task_token.len);
		map_add(&d->maps[T_INFLIGHT], r);
	} else {
		free(r->activity_id);
		free(r->activity_type);
		free(r->workflow_id);
		free(r->run_id);
	}
	r->pid = pid;
	r->generation = generation;
	r->activity_id = tp_xstrdup(s->activity_id ? s->activity_id : "");
	r->activity_type = tp_xstrdup(s->activity_type ? s->activity_type : "");
	r->workflow_id = tp_xstrdup(s->workflow_id ? s->workflow_id : "");
	r->run_id = tp_xstrdup(s->run_id ? s->run_id : "");
	r->attempt = s->attempt;
	r->started_ms = s->started_ms;
	r->deadline_ms = s->deadline_ms;
	mark(d, r, true);
}

void
tp_durable_task_done(struct tp_durable *d, const ProtobufCBinaryData *token)
{
	struct row *r = map_find(&d->maps[T_INFLIGHT], token);

	if (r)
		row_remove(d, r);
}

bool
tp_durable_has_task(const struct tp_durable *d, const ProtobufCBinaryData *token)
{
	return map_find(&d->maps[T_INFLIGHT], token) != NULL;
}

/* ---- recovery ------------------------------------------------------------------------------- */

/* The rows of a previous run, collected first (the journal is not written while it is read). */
struct found {
	struct row **rows;
	size_t       n;
};

static void
found_add(struct found *f, struct row *r)
{
	f->rows = tp_xrealloc(f->rows, (f->n + 1) * sizeof(*f->rows));
	f->rows[f->n++] = r;
}

static int
on_old_outbox(void *arg, const struct tp_journal_outbox *o)
{
	struct tp_durable *d = arg;
	struct row *r = row_new(d, T_OUTBOX, o->token, o->token_len);

	r->kind = o->kind;
	r->req = tp_xmalloc(o->request_len ? o->request_len : 1);
	memcpy(r->req, o->request, o->request_len);
	r->req_len = o->request_len;
	r->attempts = o->attempts;
	r->next_try_ms = o->next_try_ms;
	r->created_ms = o->created_ms;
	r->label = tp_xstrdup(o->label);
	r->in_db = true;
	map_add(&d->maps[T_OUTBOX], r);
	d->outbox_bytes += r->req_len;
	return 0;
}

static int
on_old_inflight(void *arg, const struct tp_journal_inflight *i)
{
	struct found *f = arg;
	struct row *r = tp_xcalloc(1, sizeof(*r));

	r->tbl = T_INFLIGHT;
	token_copy(&r->token, i->token, i->token_len);
	r->pid = i->child_pid;
	r->generation = i->generation;
	r->attempt = i->attempt;
	r->activity_id = tp_xstrdup(i->activity_id);
	r->activity_type = tp_xstrdup(i->activity_type);
	r->workflow_id = tp_xstrdup(i->workflow_id);
	r->run_id = tp_xstrdup(i->run_id);
	r->in_db = true;
	found_add(f, r);
	return 0;
}

/* A task a previous run held: fail it (unless its report is in the outbox) and end its row. */
static void
recover_task(struct tp_durable *d, struct row *r)
{
	char msg[512], *label = task_label(r, &r->token);

	r->d = d;
	map_add(&d->maps[T_INFLIGHT], r);
	if (map_find(&d->maps[T_OUTBOX], &r->token) == NULL) {
		tp_log_warnx("recovered a task of a previous run: %s (workflow %s, worker pid %lld): "
		    "failing it as WorkerCrashed so that it is retried at once", label, r->workflow_id,
		    (long long)r->pid);
		snprintf(msg, sizeof(msg), "tprefork stopped abruptly while activity %s (id %s, attempt "
		    "%lld) ran in worker pid %lld; it will be retried", r->activity_type, r->activity_id,
		    (long long)r->attempt, (long long)r->pid);
		outbox_fail(d, &r->token, "WorkerCrashed", msg, label);
	}
	free(label);
	row_remove(d, r);
}

int
tp_durable_recover(struct tp_durable *d)
{
	struct found f = { NULL, 0 };
	size_t old_outbox;
	int rc;

	if (d->jr == NULL)
		return 0;
	rc = tp_journal_outbox_each(d->jr, on_old_outbox, d);
	if (rc == TP_JOURNAL_OK)
		rc = tp_journal_inflight_each(d->jr, on_old_inflight, &f);
	if (rc != TP_JOURNAL_OK)
		tp_log_error("journal: cannot read the rows of the previous run: %s: %s",
		    tp_journal_strerror(rc), tp_journal_errmsg(d->jr));
	old_outbox = d->maps[T_OUTBOX].n;
	if (old_outbox > 0)
		tp_log_info("journal: %zu undelivered report(s) of a previous run; delivering them",
		    old_outbox);
	for (size_t i = 0; i < f.n; i++)
		recover_task(d, f.rows[i]);
	free(f.rows);
	if (f.n > 0 || old_outbox > 0)
		tp_log_info("journal: recovered %zu task(s) in flight and %zu undelivered report(s) of a "
		    "previous run", f.n, old_outbox);
	tp_durable_flush(d);
	deliver_due(d);
	return (int)(f.n + old_outbox);
}

/* ---- life ----------------------------------------------------------------------------------- */

struct tp_durable *
tp_durable_new(const struct tp_durable_opts *o)
{
	struct tp_durable *d = tp_xcalloc(1, sizeof(*d));

	d->base = o->base;
	d->tc = o->tc;
	d->jr = o->jr;
	d->memory_cap = o->memory_cap;
	d->hooks = o->hooks;
	d->commit_delay_ms = o->commit_delay_ms > 0 ? o->commit_delay_ms : 0;
	d->flush_ev = event_new(o->base, -1, 0, on_flush, d);
	d->delay_ev = evtimer_new(o->base, on_delay, d);
	if (d->flush_ev == NULL || d->delay_ev == NULL)
		tp_fatalx("cannot create an event");
	return d;
}

void
tp_durable_tick(struct tp_durable *d)
{
	if (d->degraded && tp_now_mono_ms() >= d->retry_at) {
		/* A checkpoint moves the WAL into the database and truncates it: on a full disk that
		 * is often the space the write needs. */
		tp_journal_checkpoint(d->jr, true);
		tp_durable_flush(d);
	}
	deliver_due(d);
}

static void
free_map(struct map *m)
{
	for (size_t i = 0; i < m->nb; i++) {
		while (m->b[i]) {
			struct row *r = m->b[i];
			m->b[i] = r->hnext;
			if (r->call)
				tp_temporal_call_cancel(r->call);
			if (!r->on_dirty)
				row_free(r);
			else
				r->dead = true;
		}
	}
	free(m->b);
}

void
tp_durable_free(struct tp_durable *d)
{
	size_t n_in, n_out;

	if (d == NULL)
		return;
	n_in = d->maps[T_INFLIGHT].n;
	n_out = d->maps[T_OUTBOX].n;
	if (!tp_durable_flush(d))
		tp_log_error("journal: changes could not be written before exit; the journal holds the "
		    "state of the last successful write");
	if (d->jr)
		tp_log_info("journal: %zu task(s) in flight and %zu undelivered report(s) left for the "
		    "next start; outbox delivered %lu, expired %lu, rejected %lu", n_in, n_out,
		    d->delivered, d->expired, d->rejected);
	free_map(&d->maps[T_INFLIGHT]);
	free_map(&d->maps[T_OUTBOX]);
	clear_dirty(d, true);
	event_free(d->flush_ev);
	event_free(d->delay_ev);
	free(d);
}

int tp_durable_deliveries(const struct tp_durable *d) { return d->deliveries; }
size_t tp_durable_outbox_len(const struct tp_durable *d) { return d->maps[T_OUTBOX].n; }
size_t tp_durable_inflight_len(const struct tp_durable *d) { return d->maps[T_INFLIGHT].n; }
bool tp_durable_paused(const struct tp_durable *d) { return d->degraded; }
