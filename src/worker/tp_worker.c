#include "worker/tp_worker.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "activity/tp_activity.h"
#include "activity/tp_plugin.h"
#include "channel/tp_channel.h"
#include "core/tp_config.h"
#include "core/tp_log.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"
#include "temporal/tp_pb.h"
#include "temporal/tp_temporal.h"
#include "transport/tp_grpc.h"

#include "temporal/api/namespace/v1/message.pb-c.h"

typedef Temporal__Api__Workflowservice__V1__PollActivityTaskQueueResponse poll_resp;

/* The SDKs' local timeout buffer beyond start-to-close before an activity is stopped. */
#define LOCAL_DEADLINE_BUFFER_MS 5000
/* Heartbeat throttling (temporal-protocol.md §5). */
#define HB_DEFAULT_INTERVAL_MS 30000
#define HB_MAX_INTERVAL_MS 60000
/* With the poll-completion capability, ShutdownWorker is sent again this long after its answer
 * while polls stay open. */
#define SHUTDOWN_AGAIN_MS 2000
/* A TaskDone only ends the master's bookkeeping (its journal row, the list of what to fail if this
 * process dies); the report itself has been delivered or handed over before it. It goes with the
 * next message (a TaskStarted, usually), in the same write (one send() per task, not two), or
 * this long after at the latest. If the process dies meanwhile, the master fails a task the server
 * has closed already, which answers NOT_FOUND. */
#define TASK_DONE_WITHIN_MS 50
/* A poll that brought a task is replaced when the worker next writes to the server (that task's
 * report, usually), or this long after at the latest, while another poll of this process is open:
 * for a short task, one write (one wake-up of the server's reader) where there would be two. The
 * last open poll is replaced at once, so the queue is never left unpolled. */
#define POLL_REPLACE_WITHIN_MS 5
/* While the worker serves, the small answers to its reports and heartbeats (and the server's PINGs)
 * are read with the next poll that brings a task, or this long after the last read at the latest,
 * instead of waking the process each (tp_h2_conn_set_lazy_read; cleartext connections). Only while
 * a poll is open: with every slot taken none is, and a report's answer frees its slot. Off from
 * the drain on, so that nothing delays the exit. */
#define LAZY_READ_MS 100
/* stderr lines logged per activity before the rest is suppressed. */
#define STDERR_LINES_MAX 100

struct worker;

struct poll {
	struct worker           *w;
	struct poll             *next, *prev;
	struct tp_temporal_call *call;
};

struct task {
	struct worker           *w;
	struct task             *next, *prev;
	poll_resp               *resp;          /* owned */
	const struct tp_activity_conf *ac;
	struct tp_activity_run  *run;           /* NULL once the handler is done */
	char                     label[160];    /* "Type id=... attempt=N" for logs */
	/* heartbeats */
	json_t                  *hb_pending;    /* newest details not yet sent (owned) */
	json_t                  *hb_latest;     /* newest details seen (owned), for failure reports */
	int64_t                  hb_interval_ms;
	int64_t                  hb_last_ms;    /* when the last heartbeat was sent; 0: never */
	struct event            *hb_ev;
	struct tp_temporal_call *hb_call;
	/* state */
	bool                     server_cancel; /* cancel_requested seen: report Canceled */
	bool                     server_reset;  /* activity_reset seen: report ActivityReset */
	bool                     server_paused; /* activity_paused seen: report ActivityPause */
	int                      hb_records;    /* heartbeat records from the handler */
	int                      hb_sent;       /* RecordActivityTaskHeartbeat calls made */
	bool                     not_found;     /* the server no longer knows the task: report nothing */
	bool                     timed_out;     /* local deadline passed: report nothing */
	bool                     shutdown_cancel; /* cancelled by the drain: report WorkerShutdown */
	struct event            *deadline_ev;
	struct tp_temporal_call *report_call;
	int                      stderr_lines;
	int64_t                  started_ms;
	int                      outcome;       /* Tprefork__Channel__V1__TaskDone__Outcome */
};

struct worker {
	struct event_base       *base;
	const struct tp_config  *cfg;
	int                      index;
	bool                     standalone;
	struct tp_temporal      *tc;
	char                     key[37];        /* worker_instance_key */
	char                     identity[300];
	bool                     poll_complete_cap; /* namespace capability */
	bool                     ready;
	bool                     draining;
	bool                     cancelling;
	bool                     paused;         /* the master's journal is unwritable: no new polls */
	bool                     closing;
	int                      polls_open;
	int                      tasks_held;
	struct poll             *polls;
	struct task             *tasks;
	struct tp_backoff        poll_backoff;
	struct event            *poll_retry_ev;
	bool                     poll_waiting;   /* poll_retry_ev armed */
	struct event            *poll_soon_ev;   /* replaces polls by POLL_REPLACE_WITHIN_MS */
	struct tp_backoff        describe_backoff;
	struct event            *describe_ev;
	struct tp_temporal_call *describe_call;
	struct tp_temporal_call *shutdown_call;
	struct event            *sigs[6];
	int                      nsigs;
	int                      drain_signals;  /* drain requests seen */
	struct tp_channel       *ch;             /* to the master; NULL standalone */
	struct event            *stats_ev;
	struct event            *poll_drain_ev;  /* bounded wait for open polls at a drain */
	struct event            *shutdown_again_ev; /* re-send ShutdownWorker while polls stay open */
	int                      exit_status;
	unsigned long            completed, failed, cancelled;
};

static void maybe_poll(struct worker *w);
static void poll_soon(struct worker *w);
static void check_drained(struct worker *w);

/* ---- helpers -------------------------------------------------------------------------------- */

static int64_t
duration_ms(const Google__Protobuf__Duration *d)
{
	return d ? (int64_t)d->seconds * 1000 + d->nanos / 1000000 : 0;
}

static int64_t
timestamp_ms(const Google__Protobuf__Timestamp *t)
{
	return t ? (int64_t)t->seconds * 1000 + t->nanos / 1000000 : 0;
}

static const char *
str_or_empty(const char *s)
{
	return s ? s : "";
}

/* ---- tasks: bookkeeping --------------------------------------------------------------------- */

static void
task_free(struct task *t)
{
	struct worker *w = t->w;

	if (t->prev)
		t->prev->next = t->next;
	else
		w->tasks = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (t->hb_call)
		tp_temporal_call_cancel(t->hb_call);
	if (t->report_call)
		tp_temporal_call_cancel(t->report_call);
	if (t->hb_ev)
		event_free(t->hb_ev);
	if (t->deadline_ev)
		event_free(t->deadline_ev);
	json_decref(t->hb_pending);
	json_decref(t->hb_latest);
	if (t->resp)
		tp_pb_free(&t->resp->base);
	free(t);
	w->tasks_held--;
}

/* The task is over (reported or given up): free its slot and poll again. */
static void
task_finish(struct task *t)
{
	struct worker *w = t->w;

	if (w->ch) {
		Tprefork__Channel__V1__TaskDone d = TPREFORK__CHANNEL__V1__TASK_DONE__INIT;
		tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;
		d.task_token = t->resp->task_token;
		d.outcome = t->outcome;
		m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_DONE;
		m.task_done = &d;
		tp_channel_send_lazy(w->ch, &m, TASK_DONE_WITHIN_MS);
	}
	task_free(t);
	maybe_poll(w);
	check_drained(w);
}

/* ---- reporting ------------------------------------------------------------------------------ */

/* A report that could not be delivered goes to the master's outbox, which keeps trying (and
 * journals it). Returns 0 if it was handed over. */
static int
hand_over_report(struct task *t, const struct tp_temporal_status *st)
{
	Tprefork__Channel__V1__Undelivered u = TPREFORK__CHANNEL__V1__UNDELIVERED__INIT;
	tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;

	/* A request the server refused as such would be refused again. */
	if (t->w->ch == NULL || st->request == NULL || st->request_len == 0 ||
	    st->code == TP_GRPC_INVALID_ARGUMENT || st->code == TP_GRPC_ALREADY_EXISTS ||
	    st->code == TP_GRPC_UNIMPLEMENTED)
		return -1;
	switch (t->outcome) {
	case TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__COMPLETED:
		u.kind = TPREFORK__CHANNEL__V1__UNDELIVERED__KIND__COMPLETED;
		break;
	case TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__FAILED:
		u.kind = TPREFORK__CHANNEL__V1__UNDELIVERED__KIND__FAILED;
		break;
	case TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__CANCELED:
		u.kind = TPREFORK__CHANNEL__V1__UNDELIVERED__KIND__CANCELED;
		break;
	default:
		return -1;
	}
	u.task_token = t->resp->task_token;
	u.request.data = (uint8_t *)st->request;
	u.request.len = st->request_len;
	m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_UNDELIVERED;
	m.undelivered = &u;
	return tp_channel_send(t->w->ch, &m);
}

static void
on_report_done(void *arg, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	struct task *t = arg;

	t->report_call = NULL;
	if (resp)
		tp_pb_free(resp);
	if (st->code == TP_GRPC_NOT_FOUND) {
		tp_log_info("%s: the server no longer knows this task (timed out, or completed "
		    "elsewhere); result dropped", t->label);
		t->outcome = TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__NOT_REPORTED;
	} else if (st->code != TP_GRPC_OK) {
		bool handed = hand_over_report(t, st) == 0;
		tp_log_error("%s: cannot report the result after %d attempt(s): %s: %s%s", t->label,
		    st->attempts, tp_grpc_code_name(st->code), st->message,
		    handed ? "; handed to the master's outbox" : "");
		t->outcome = TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__UNDELIVERED;
	}
	task_finish(t);
}

static void
report_failure(struct task *t, const char *type, const char *message, bool non_retryable,
    json_t *details)
{
	struct worker *w = t->w;
	tp_failure *f = tp_pb_app_failure(type, message, non_retryable, details);
	tp_payloads *hb = t->hb_latest ? tp_pb_payloads_from_json(t->hb_latest) : NULL;

	w->failed++;
	t->outcome = TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__FAILED;
	tp_log_debug("%s: failed: %s: %s%s", t->label, type, message,
	    non_retryable ? " (non-retryable)" : "");
	t->report_call = tp_temporal_fail(w->tc, &t->resp->task_token, f, hb, on_report_done, t);
	tp_pb_failure_free(f);
	tp_pb_payloads_free(hb);
}

static bool
is_blank(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
			return false;
	return true;
}

static void
report_completed(struct task *t, const char *result, size_t len)
{
	struct worker *w = t->w;
	tp_payloads *ps = NULL;
	char err[512], msg[700];

	if (result && !is_blank(result, len)) {
		ps = tp_pb_payloads_from_json_text(result, len, err, sizeof(err));
		if (ps == NULL) {
			snprintf(msg, sizeof(msg), "the result on stdout is %s", err);
			report_failure(t, "InvalidResult", msg, true, NULL);
			return;
		}
	}
	w->completed++;
	t->outcome = TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__COMPLETED;
	tp_log_debug("%s: completed", t->label);
	t->report_call = tp_temporal_complete(w->tc, &t->resp->task_token, ps, on_report_done, t);
	tp_pb_payloads_free(ps);
}

static void
report_canceled(struct task *t)
{
	struct worker *w = t->w;

	w->cancelled++;
	t->outcome = TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__CANCELED;
	tp_log_info("%s: cancelled as the server requested", t->label);
	t->report_call = tp_temporal_canceled(w->tc, &t->resp->task_token, NULL, on_report_done, t);
}

static void
on_activity_done(void *arg, const struct tp_activity_outcome *o)
{
	struct task *t = arg;
	struct worker *w = t->w;

	t->run = NULL;
	if (t->hb_ev)
		evtimer_del(t->hb_ev);
	if (t->deadline_ev)
		evtimer_del(t->deadline_ev);
	if (t->hb_records > 0)
		tp_log_debug("%s: %d heartbeat record(s), %d heartbeat RPC(s)", t->label, t->hb_records,
		    t->hb_sent);
	if (t->not_found || t->timed_out) {
		/* As the SDKs do: the server has timed it out or forgotten it; nothing to report. */
		tp_log_info("%s: stopped (%s); not reported", t->label,
		    t->timed_out ? "local deadline passed" : "task no longer known to the server");
		t->outcome = TPREFORK__CHANNEL__V1__TASK_DONE__OUTCOME__NOT_REPORTED;
		task_finish(t);
	} else if (o->kind == TP_OUTCOME_COMPLETED) {
		report_completed(t, o->result, o->result_len);
	} else if (t->server_cancel && o->cancelled) {
		report_canceled(t);
	} else if ((t->server_reset || t->server_paused) && o->cancelled) {
		/* As the Python SDK does: a retryable failure; the server holds a paused activity until
		 * it is unpaused, and schedules a reset one again. */
		report_failure(t, t->server_reset ? "ActivityReset" : "ActivityPause",
		    t->server_reset ? "the activity was reset on the server and stopped"
		                    : "the activity was paused on the server and stopped", false, NULL);
	} else if (t->shutdown_cancel && o->cancelled) {
		report_failure(t, "WorkerShutdown",
		    "Worker is shutting down and this activity did not complete in time", false, NULL);
	} else {
		report_failure(t, o->type, o->message, o->non_retryable, o->details);
	}
	maybe_poll(w);  /* the polls owed (poll_soon) go in the report's write */
}

/* ---- heartbeats ----------------------------------------------------------------------------- */

static void send_heartbeat(struct task *t);

static void
on_heartbeat_done(void *arg, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	struct task *t = arg;
	Temporal__Api__Workflowservice__V1__RecordActivityTaskHeartbeatResponse *r =
	    (void *)resp;

	t->hb_call = NULL;
	if (st->code == TP_GRPC_NOT_FOUND) {
		t->not_found = true;
		if (t->run)
			tp_activity_cancel(t->run);
	} else if (st->code != TP_GRPC_OK) {
		tp_log_warnx("%s: heartbeat failed: %s: %s", t->label, tp_grpc_code_name(st->code),
		    st->message);
	} else if (r->cancel_requested || r->activity_reset || r->activity_paused) {
		if (!t->server_cancel && !t->server_reset && !t->server_paused && t->run) {
			/* sdk-core's order: a cancellation wins over a reset, a reset over a pause. */
			t->server_cancel = r->cancel_requested;
			t->server_reset = !r->cancel_requested && r->activity_reset;
			t->server_paused = !r->cancel_requested && !r->activity_reset;
			tp_log_info("%s: the server requested cancellation (%s)", t->label,
			    t->server_cancel ? "cancel requested"
			                     : t->server_reset ? "activity reset" : "activity paused");
			tp_activity_cancel(t->run);
		}
	}
	if (resp)
		tp_pb_free(resp);
	/* Details that arrived while this heartbeat was in flight go at the end of the window. */
	if (t->run && t->hb_pending && !evtimer_pending(t->hb_ev, NULL))
		tp_timer_in(t->hb_ev, t->hb_last_ms + t->hb_interval_ms - tp_now_mono_ms());
}

static void
send_heartbeat(struct task *t)
{
	struct worker *w = t->w;
	tp_payloads *ps = tp_pb_payloads_from_json(t->hb_pending);
	int64_t timeout = t->hb_interval_ms > 1000 ? t->hb_interval_ms : 1000;

	json_decref(t->hb_pending);
	t->hb_pending = NULL;
	t->hb_last_ms = tp_now_mono_ms();
	t->hb_sent++;
	tp_log_debug("%s: heartbeat %d sent (%d record(s) so far)", t->label, t->hb_sent, t->hb_records);
	t->hb_call = tp_temporal_heartbeat(w->tc, &t->resp->task_token, ps, timeout,
	    on_heartbeat_done, t);
	tp_pb_payloads_free(ps);
}

static void
on_heartbeat_timer(evutil_socket_t fd, short what, void *arg)
{
	struct task *t = arg;

	if (t->hb_pending && t->hb_call == NULL && t->run)
		send_heartbeat(t);
}

/* A heartbeat record from the handler: the first goes at once, later ones are coalesced and the
 * newest is sent at the end of each throttle window. */
static void
on_activity_heartbeat(void *arg, json_t *details)
{
	struct task *t = arg;
	int64_t now = tp_now_mono_ms();

	t->hb_records++;
	json_decref(t->hb_pending);
	t->hb_pending = json_incref(details ? details : json_null());
	json_decref(t->hb_latest);
	t->hb_latest = json_incref(t->hb_pending);
	if (t->hb_call != NULL || evtimer_pending(t->hb_ev, NULL))
		return;
	if (t->hb_last_ms == 0 || now - t->hb_last_ms >= t->hb_interval_ms)
		send_heartbeat(t);
	else
		tp_timer_in(t->hb_ev, t->hb_last_ms + t->hb_interval_ms - now);
}

static void
on_activity_log(void *arg, const char *line, size_t len)
{
	struct task *t = arg;

	if (++t->stderr_lines <= STDERR_LINES_MAX)
		tp_log_info("%s: %.*s", t->label, (int)len, line);
	else if (t->stderr_lines == STDERR_LINES_MAX + 1)
		tp_log_info("%s: further output suppressed", t->label);
}

/* ---- starting a task ------------------------------------------------------------------------ */

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct task *t = arg;

	if (t->run == NULL)
		return;
	t->timed_out = true;
	tp_log_warnx("%s: start-to-close deadline passed; stopping it", t->label);
	tp_activity_kill(t->run);
}

static void
arm_deadline(struct task *t)
{
	const poll_resp *r = t->resp;
	int64_t now = tp_now_real_ms();
	int64_t deadline = 0, s2c = duration_ms(r->start_to_close_timeout);
	int64_t sched2close = duration_ms(r->schedule_to_close_timeout);

	if (s2c > 0)
		deadline = now + s2c;
	if (sched2close > 0 && r->scheduled_time) {
		int64_t d = timestamp_ms(r->scheduled_time) + sched2close;
		if (deadline == 0 || d < deadline)
			deadline = d;
	}
	if (deadline > 0)
		tp_timer_in(t->deadline_ev, deadline - now + LOCAL_DEADLINE_BUFFER_MS);
}

static void
fill_info(const struct task *t, struct tp_activity_info *info)
{
	const poll_resp *r = t->resp;
	int64_t s2c = duration_ms(r->start_to_close_timeout);

	memset(info, 0, sizeof(*info));
	info->type = r->activity_type ? str_or_empty(r->activity_type->name) : "";
	info->activity_id = str_or_empty(r->activity_id);
	info->workflow_id = r->workflow_execution ? str_or_empty(r->workflow_execution->workflow_id) : "";
	info->run_id = r->workflow_execution ? str_or_empty(r->workflow_execution->run_id)
	                                     : str_or_empty(r->activity_run_id);
	info->workflow_type = r->workflow_type ? str_or_empty(r->workflow_type->name) : "";
	info->task_queue = t->w->cfg->task_queue;
	info->namespace_ = t->w->cfg->namespace_;
	info->attempt = r->attempt;
	info->deadline_ms = s2c > 0 ? tp_now_real_ms() + s2c : 0;
	info->heartbeat_timeout_ms = duration_ms(r->heartbeat_timeout);
}

static int64_t
heartbeat_interval(const poll_resp *r)
{
	int64_t hbt = duration_ms(r->heartbeat_timeout);
	int64_t iv = hbt > 0 ? hbt * 8 / 10 : HB_DEFAULT_INTERVAL_MS;
	return iv > HB_MAX_INTERVAL_MS ? HB_MAX_INTERVAL_MS : iv;
}

/* The arguments as borrowed views (data from the task; encodings copied behind the array, in the
 * same block). NULL without arguments; free the result with free(). */
static struct tp_activity_payload *
payload_views(const tp_payloads *in, size_t *n)
{
	struct tp_activity_payload *v;
	char *enc;

	*n = in ? in->n_payloads : 0;
	if (*n == 0)
		return NULL;
	v = tp_xcalloc(*n, sizeof(*v) + 64);
	enc = (char *)(v + *n);
	for (size_t i = 0; i < *n; i++, enc += 64) {
		tp_pb_encoding(in->payloads[i], enc, 64);
		v[i].data = in->payloads[i]->data.data;
		v[i].len = in->payloads[i]->data.len;
		v[i].encoding = enc;
	}
	return v;
}

static void
task_run(struct task *t)
{
	struct worker *w = t->w;
	struct tp_activity_callbacks cb = { on_activity_heartbeat, on_activity_log, on_activity_done, t };
	struct tp_activity_info info;
	char *input = NULL, *hb_json = NULL, err[512], msg[700];
	size_t input_len = 0;

	fill_info(t, &info);
	if (t->ac == NULL) {
		snprintf(msg, sizeof(msg), "activity type \"%s\" is not registered on task queue \"%s\" "
		    "(this worker serves %zu type(s))", info.type, w->cfg->task_queue,
		    w->cfg->nactivities);
		report_failure(t, "UnknownActivityType", msg, true, NULL);
		return;
	}
	/* Commands get JSON only; plugins also get the raw payloads (binary ones included). */
	if (tp_pb_input_to_json(t->resp->input, &input, &input_len, err, sizeof(err)) != 0 &&
	    t->ac->kind == TP_HANDLER_EXEC) {
		report_failure(t, "UnsupportedEncoding", err, true, NULL);
		return;
	}
	hb_json = tp_pb_payloads_to_json(t->resp->heartbeat_details);
	info.input = input;
	info.input_len = input_len;
	info.heartbeat_details = hb_json;
	info.payloads = payload_views(t->resp->input, &info.npayloads);
	t->run = tp_activity_start(w->base, t->ac, &info, &cb, err, sizeof(err));
	free(input);
	free(hb_json);
	free((void *)info.payloads);
	if (t->run == NULL) {
		tp_log_error("%s: cannot start the handler: %s", t->label, err);
		report_failure(t, "HandlerStartFailed", err, false, NULL);
		return;
	}
	arm_deadline(t);
	if (w->cancelling) {
		t->shutdown_cancel = true;
		tp_activity_cancel(t->run);
	}
}

static void
send_task_started(const struct task *t)
{
	Tprefork__Channel__V1__TaskStarted s = TPREFORK__CHANNEL__V1__TASK_STARTED__INIT;
	tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;
	struct tp_activity_info info;

	fill_info(t, &info);
	s.task_token = t->resp->task_token;
	s.activity_type = (char *)info.type;
	s.activity_id = (char *)info.activity_id;
	s.workflow_id = (char *)info.workflow_id;
	s.run_id = (char *)info.run_id;
	s.attempt = info.attempt;
	s.started_ms = tp_now_real_ms();
	s.deadline_ms = info.deadline_ms;
	s.pgid = t->run ? tp_activity_pid(t->run) : 0;
	m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_STARTED;
	m.task_started = &s;
	tp_channel_send(t->w->ch, &m);
}

static void
task_start(struct worker *w, poll_resp *resp)
{
	struct task *t = tp_xcalloc(1, sizeof(*t));
	const char *type = resp->activity_type ? str_or_empty(resp->activity_type->name) : "";

	t->w = w;
	t->resp = resp;
	t->ac = tp_config_find_activity(w->cfg, type);
	t->started_ms = tp_now_mono_ms();
	t->hb_interval_ms = heartbeat_interval(resp);
	t->hb_ev = evtimer_new(w->base, on_heartbeat_timer, t);
	t->deadline_ev = evtimer_new(w->base, on_deadline, t);
	snprintf(t->label, sizeof(t->label), "%.60s id=%.60s attempt=%d", type,
	    str_or_empty(resp->activity_id), resp->attempt);
	t->next = w->tasks;
	if (w->tasks)
		w->tasks->prev = t;
	w->tasks = t;
	w->tasks_held++;
	tp_log_debug("%s: started", t->label);
	task_run(t);
	if (w->ch)
		send_task_started(t);
}

/* ---- polling -------------------------------------------------------------------------------- */

static void
poll_unlink(struct poll *p)
{
	struct worker *w = p->w;

	if (p->prev)
		p->prev->next = p->next;
	else
		w->polls = p->next;
	if (p->next)
		p->next->prev = p->prev;
	w->polls_open--;
	free(p);
}

static void
log_poll_error(struct worker *w, const struct tp_temporal_status *st, int64_t delay)
{
	/* Log the first failure of a streak and then every doubling, not every retry. */
	int n = w->poll_backoff.attempts;
	if ((n & (n - 1)) == 0)
		tp_log_warnx("poll failed (%d in a row): %s: %s; retrying in %lld ms", n,
		    tp_grpc_code_name(st->code), st->message, (long long)delay);
}

static void
on_poll_done(void *arg, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	struct poll *p = arg;
	struct worker *w = p->w;
	poll_resp *r = (poll_resp *)resp;
	bool started = false;

	poll_unlink(p);
	if (st->code == TP_GRPC_OK) {
		tp_backoff_reset(&w->poll_backoff);
		if (r->task_token.len > 0) {
			task_start(w, r);   /* takes r; runs even while draining: it must not be lost */
			r = NULL;
			started = true;
		}
	} else if (st->code != TP_GRPC_DEADLINE_EXCEEDED && st->code != TP_GRPC_CANCELLED) {
		int64_t delay = tp_backoff_next(&w->poll_backoff);
		if (st->code == TP_GRPC_RESOURCE_EXHAUSTED && delay < 1000)
			delay = 1000;
		log_poll_error(w, st, delay);
		if (!w->poll_waiting && !w->draining) {
			w->poll_waiting = true;
			tp_timer_in(w->poll_retry_ev, delay);
		}
	}
	if (r)
		tp_pb_free(&r->base);
	if (w->draining && w->polls_open == 0)
		tp_log_info("polls closed: %d task(s) still in flight", w->tasks_held);
	if (started && w->polls_open > 0)
		poll_soon(w);
	else
		maybe_poll(w);
	check_drained(w);
}

/* Replace the polls that brought tasks with the next write, or by POLL_REPLACE_WITHIN_MS. */
static void
poll_soon(struct worker *w)
{
	if (w->polls_open < w->cfg->pollers && !evtimer_pending(w->poll_soon_ev, NULL))
		tp_timer_in(w->poll_soon_ev, POLL_REPLACE_WITHIN_MS);
}

static void
on_poll_soon(evutil_socket_t fd, short what, void *arg)
{
	maybe_poll(arg);
}

static void
on_poll_retry(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	w->poll_waiting = false;
	maybe_poll(w);
}

/* Keep `pollers` polls open while there is a free slot for every task a poll may bring back
 * (design invariant 4). */
static void
maybe_poll(struct worker *w)
{
	evtimer_del(w->poll_soon_ev);
	while (w->ready && !w->draining && !w->paused && !w->poll_waiting &&
	    w->polls_open < w->cfg->pollers &&
	    w->polls_open + w->tasks_held < w->cfg->max_concurrent) {
		struct poll *p = tp_xcalloc(1, sizeof(*p));
		p->w = w;
		p->next = w->polls;
		if (w->polls)
			w->polls->prev = p;
		w->polls = p;
		w->polls_open++;
		p->call = tp_temporal_poll_activity(w->tc, w->cfg->task_queue, w->key,
		    w->cfg->poll_timeout_ms, on_poll_done, p);
	}
}

/* ---- start-up ------------------------------------------------------------------------------- */

static void describe(struct worker *w);

static void
become_ready(struct worker *w)
{
	w->ready = true;
	tp_temporal_set_lazy_read(w->tc, LAZY_READ_MS);
	tp_log_info("ready: namespace=%s task_queue=%s pollers=%d slots=%d "
	    "poll_complete_on_shutdown=%s identity=%s", w->cfg->namespace_, w->cfg->task_queue,
	    w->cfg->pollers, w->cfg->max_concurrent, w->poll_complete_cap ? "yes" : "no", w->identity);
	if (w->ch) {
		Tprefork__Channel__V1__Ready r = TPREFORK__CHANNEL__V1__READY__INIT;
		tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;
		r.identity = w->identity;
		r.worker_instance_key = w->key;
		r.poll_complete_on_shutdown = w->poll_complete_cap;
		m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_READY;
		m.ready = &r;
		tp_channel_send(w->ch, &m);
	}
	maybe_poll(w);
}

static void
on_describe_done(void *arg, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	struct worker *w = arg;
	Temporal__Api__Workflowservice__V1__DescribeNamespaceResponse *r = (void *)resp;

	w->describe_call = NULL;
	if (st->code == TP_GRPC_OK) {
		if (r->namespace_info && r->namespace_info->capabilities)
			w->poll_complete_cap =
			    r->namespace_info->capabilities->worker_poll_complete_on_shutdown;
		tp_pb_free(resp);
		become_ready(w);
		return;
	}
	if (st->code == TP_GRPC_UNIMPLEMENTED) {
		become_ready(w);
		return;
	}
	int64_t delay = tp_backoff_next(&w->describe_backoff);
	tp_log_warnx("cannot describe namespace \"%s\": %s: %s%s; retrying in %lld ms",
	    w->cfg->namespace_, tp_grpc_code_name(st->code), st->message,
	    st->detail == TP_DETAIL_NAMESPACE_NOT_FOUND ? " (the namespace does not exist)" : "",
	    (long long)delay);
	if (w->draining) {
		check_drained(w);
		return;
	}
	tp_timer_in(w->describe_ev, delay);
}

static void
on_describe_timer(evutil_socket_t fd, short what, void *arg)
{
	describe(arg);
}

static void
describe(struct worker *w)
{
	w->describe_call = tp_temporal_describe_namespace(w->tc, on_describe_done, w);
}

/* ---- draining ------------------------------------------------------------------------------- */

static void
on_closed(void *arg)
{
	struct worker *w = arg;
	event_base_loopbreak(w->base);
}

/* Everything done: close the connection with GOAWAY and leave the loop. */
static void
check_drained(struct worker *w)
{
	if (!w->draining || w->closing || w->polls_open > 0 || w->tasks_held > 0 ||
	    w->shutdown_call != NULL)
		return;
	w->closing = true;
	tp_log_info("drained: %lu completed, %lu failed, %lu cancelled; closing the connection",
	    w->completed, w->failed, w->cancelled);
	if (w->describe_call) {
		tp_temporal_call_cancel(w->describe_call);
		w->describe_call = NULL;
	}
	tp_temporal_close(w->tc, on_closed, w);
}

static void
on_shutdown_worker_done(void *arg, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	struct worker *w = arg;

	w->shutdown_call = NULL;
	if (resp)
		tp_pb_free(resp);
	if (st->code != TP_GRPC_OK && st->code != TP_GRPC_UNIMPLEMENTED)
		tp_log_warnx("ShutdownWorker failed: %s: %s", tp_grpc_code_name(st->code), st->message);
	/* A poll that reached the server just as it handled ShutdownWorker can miss it (a race
	 * servers fix in their own time): ask again while polls stay open. */
	if (w->poll_complete_cap && w->polls_open > 0 && !w->closing)
		tp_timer_in(w->shutdown_again_ev, SHUTDOWN_AGAIN_MS);
	check_drained(w);
}

static void
on_shutdown_again(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	if (w->polls_open == 0 || w->shutdown_call != NULL || w->closing)
		return;
	tp_log_info("%d poll(s) still open %d ms after ShutdownWorker; sending it again",
	    w->polls_open, SHUTDOWN_AGAIN_MS);
	w->shutdown_call = tp_temporal_shutdown_worker(w->tc, w->cfg->task_queue, w->key,
	    "graceful shutdown", on_shutdown_worker_done, w);
}

/* Cancel every open poll (RST_STREAM). A task the server matched to one at that instant waits for its
 * start-to-close timeout, which is why a drain first waits for the polls (begin_drain). */
static void
cancel_open_polls(struct worker *w)
{
	while (w->polls) {
		struct poll *p = w->polls;
		tp_temporal_call_cancel(p->call);
		poll_unlink(p);
	}
}

static void
begin_drain(struct worker *w)
{
	if (w->draining)
		return;
	w->draining = true;
	tp_temporal_set_lazy_read(w->tc, 0);
	tp_log_info("draining: %d task(s) in flight, %d poll(s) open", w->tasks_held, w->polls_open);
	if (w->poll_waiting) {
		evtimer_del(w->poll_retry_ev);
		w->poll_waiting = false;
	}
	evtimer_del(w->describe_ev);
	if (w->ready)
		w->shutdown_call = tp_temporal_shutdown_worker(w->tc, w->cfg->task_queue, w->key,
		    "graceful shutdown", on_shutdown_worker_done, w);
	if (w->polls_open > 0) {
		/* Without the capability an open poll cannot end early without risk: wait for it
		 * (a task it returns is run) up to poll_drain_wait, then cancel what is left. With
		 * it the server completes the polls at once; the same bound guards against a poll it
		 * misses. */
		if (!w->poll_complete_cap)
			tp_log_info("the server lacks worker_poll_complete_on_shutdown: waiting up to %d ms "
			    "for %d open poll(s)", w->cfg->poll_drain_wait_ms, w->polls_open);
		tp_timer_in(w->poll_drain_ev, w->cfg->poll_drain_wait_ms);
	} else {
		tp_log_info("polls closed: %d task(s) still in flight", w->tasks_held);
	}
	check_drained(w);
}

static void
on_poll_drain_timer(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	if (w->polls_open == 0)
		return;
	tp_log_info("cancelling %d open poll(s) (a task the server hands over at this instant waits "
	    "for its timeout)", w->polls_open);
	cancel_open_polls(w);
	tp_log_info("polls closed (cancelled): %d task(s) still in flight", w->tasks_held);
	check_drained(w);
}

/* Cancel every running activity (each is reported as a retryable WorkerShutdown failure) and any
 * poll still open. */
static void
cancel_all(struct worker *w)
{
	if (w->cancelling)
		return;
	w->cancelling = true;
	if (w->polls_open > 0)
		on_poll_drain_timer(-1, 0, w);
	tp_log_info("cancelling %d running activit%s", w->tasks_held,
	    w->tasks_held == 1 ? "y" : "ies");
	for (struct task *t = w->tasks; t; t = t->next) {
		if (t->run) {
			t->shutdown_cancel = true;
			tp_activity_cancel(t->run);
		}
	}
}

static void
on_drain_signal(evutil_socket_t sig, short what, void *arg)
{
	struct worker *w = arg;

	if (++w->drain_signals == 1)
		begin_drain(w);
	else
		cancel_all(w);
}

static void
on_quit_signal(evutil_socket_t sig, short what, void *arg)
{
	struct worker *w = arg;

	begin_drain(w);
	cancel_all(w);
}

/* ---- the master ----------------------------------------------------------------------------- */

static void
send_stats(struct worker *w)
{
	Tprefork__Channel__V1__Stats s = TPREFORK__CHANNEL__V1__STATS__INIT;
	tp_envelope m = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;

	s.polls_open = w->polls_open;
	s.tasks = w->tasks_held;
	s.completed = w->completed;
	s.failed = w->failed;
	s.cancelled = w->cancelled;
	s.draining = w->draining;
	m.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_STATS;
	m.stats = &s;
	tp_channel_send(w->ch, &m);
}

/* Liveness: the master replaces a child whose loop stays silent for child_timeout. */
static void
on_stats_timer(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	int64_t every = w->cfg->child_timeout_ms / 4;

	send_stats(w);
	tp_timer_in(w->stats_ev, every < 1000 ? 1000 : every);
}

static void
on_channel_msg(void *arg, const tp_envelope *m)
{
	struct worker *w = arg;

	if (m->msg_case == TPREFORK__CHANNEL__V1__ENVELOPE__MSG_STOP) {
		begin_drain(w);
		if (m->stop->cancel)
			cancel_all(w);
		return;
	}
	/* Otherwise the master only sends backpressure; anything else is ignored. */
	if (m->msg_case != TPREFORK__CHANNEL__V1__ENVELOPE__MSG_BACKPRESSURE ||
	    w->paused == m->backpressure->pause)
		return;
	w->paused = m->backpressure->pause;
	if (w->paused) {
		tp_log_warnx("the master's journal cannot be written: no new polls (%d open, %d task(s) "
		    "in flight)", w->polls_open, w->tasks_held);
	} else {
		tp_log_info("the master's journal is writable again: polling resumes");
		maybe_poll(w);
	}
}

static void
on_channel_error(void *arg, const char *why)
{
	struct worker *w = arg;

	tp_log_warnx("lost the master (%s); draining", why);
	tp_channel_free(w->ch);
	w->ch = NULL;
	begin_drain(w);
}

/* ---- set-up --------------------------------------------------------------------------------- */

static void
on_reopen_signal(evutil_socket_t sig, short what, void *arg)
{
	if (tp_log_reopen() != 0)
		tp_log_warn("cannot reopen the log file");
}

static void
add_signal(struct worker *w, int sig, event_callback_fn fn)
{
	struct event *ev = evsignal_new(w->base, sig, fn, w);
	evsignal_add(ev, NULL);
	w->sigs[w->nsigs++] = ev;
}

static void
ignore_signal(int sig)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(sig, &sa, NULL);
}

static void
setup_signals(struct worker *w)
{
	ignore_signal(SIGPIPE);
	if (w->standalone) {
		add_signal(w, SIGTERM, on_drain_signal);
		add_signal(w, SIGINT, on_drain_signal);
		add_signal(w, SIGQUIT, on_quit_signal);
	} else {
		/* A terminal's Ctrl-C or a process-group signal must not bypass the master. */
		ignore_signal(SIGTERM);
		ignore_signal(SIGINT);
		ignore_signal(SIGHUP);
		add_signal(w, SIGUSR1, on_drain_signal);
		add_signal(w, SIGUSR2, on_reopen_signal);
	}
}

static void
make_identity(struct worker *w)
{
	char host[256];

	if (w->cfg->identity) {
		snprintf(w->identity, sizeof(w->identity), "%s", w->cfg->identity);
		return;
	}
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	snprintf(w->identity, sizeof(w->identity), "%ld@%s@tprefork", (long)getpid(), host);
}

static void
worker_free(struct worker *w)
{
	while (w->tasks)
		task_free(w->tasks);
	while (w->polls) {
		tp_temporal_call_cancel(w->polls->call);
		poll_unlink(w->polls);
	}
	if (w->describe_call)
		tp_temporal_call_cancel(w->describe_call);
	if (w->shutdown_call)
		tp_temporal_call_cancel(w->shutdown_call);
	tp_temporal_free(w->tc);
	for (int i = 0; i < w->nsigs; i++)
		event_free(w->sigs[i]);
	if (w->poll_retry_ev)
		event_free(w->poll_retry_ev);
	if (w->poll_soon_ev)
		event_free(w->poll_soon_ev);
	if (w->describe_ev)
		event_free(w->describe_ev);
	if (w->stats_ev)
		event_free(w->stats_ev);
	if (w->poll_drain_ev)
		event_free(w->poll_drain_ev);
	if (w->shutdown_again_ev)
		event_free(w->shutdown_again_ev);
	tp_channel_free(w->ch);
	tp_plugin_release_base(w->base);  /* the plugin runs' notifier is registered on it */
	event_base_free(w->base);
}

int
tp_worker_run(const struct tp_worker_opts *o)
{
	struct worker w;
	char err[512];

	memset(&w, 0, sizeof(w));
	w.cfg = o->cfg;
	w.index = o->index;
	w.standalone = o->standalone;
	w.base = event_base_new();
	if (w.base == NULL)
		tp_fatalx("cannot create an event base");
	if (tp_uuid4(w.key) != 0)
		tp_fatal("cannot make a worker instance key");
	make_identity(&w);
	tp_backoff_init(&w.poll_backoff, 200, 10000, 2.0, 0.2);
	tp_backoff_init(&w.describe_backoff, 200, 10000, 2.0, 0.2);
	w.poll_retry_ev = evtimer_new(w.base, on_poll_retry, &w);
	w.poll_soon_ev = evtimer_new(w.base, on_poll_soon, &w);
	w.describe_ev = evtimer_new(w.base, on_describe_timer, &w);
	w.poll_drain_ev = evtimer_new(w.base, on_poll_drain_timer, &w);
	w.shutdown_again_ev = evtimer_new(w.base, on_shutdown_again, &w);
	setup_signals(&w);
	if (o->channel_fd >= 0) {
		struct tp_channel_callbacks ccb = { on_channel_msg, on_channel_error, &w };
		w.ch = tp_channel_new(w.base, o->channel_fd, &ccb);
		if (w.ch == NULL)
			tp_fatalx("cannot set up the channel to the master");
		w.stats_ev = evtimer_new(w.base, on_stats_timer, &w);
		tp_timer_in(w.stats_ev, 1000);
	}
	w.tc = tp_temporal_new(w.base, w.cfg, w.identity, err, sizeof(err));
	if (w.tc == NULL) {
		tp_log_error("cannot set up the Temporal client: %s", err);
		worker_free(&w);
		return 1;
	}
	tp_temporal_set_report_retry(w.tc, w.cfg->report_retry_ms);
	tp_log_info("connecting to %s (namespace %s)%s", w.cfg->address, w.cfg->namespace_,
	    w.cfg->tls ? " over TLS" : "");
	describe(&w);
	event_base_dispatch(w.base);
	tp_log_info("exiting");
	worker_free(&w);
	return w.exit_status;
}
