#include "temporal/tp_temporal.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "core/tp_config.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"
#include "temporal/tp_pb.h"
#include "transport/tp_grpc.h"

#include "google/rpc/status.pb-c.h"
#include "temporal/api/errordetails/v1/message.pb-c.h"

#define SERVICE_PATH "/temporal.api.workflowservice.v1.WorkflowService/"
#define DEFAULT_TIMEOUT_MS 10000
#define RPC_NS(name) temporal__api__workflowservice__v1__##name

struct tp_temporal {
	struct event_base      *base;
	struct tp_grpc_channel *ch;
	char                   *identity;
	char                   *namespace_;
	char                   *auth;          /* "Bearer <key>" or NULL; never logged */
	struct tp_grpc_header   ns_header[1];
	struct tp_temporal_call *calls;        /* calls in flight or waiting to retry */
	int64_t                 report_retry_ms; /* how long reports are retried */
	void (*close_done)(void *);
	void                   *close_arg;
};

struct tp_temporal_call {
	struct tp_temporal             *t;
	struct tp_temporal_call        *next, *prev;
	char                           *path;
	uint8_t                        *req;
	size_t                          req_len;
	const ProtobufCMessageDescriptor *resp_desc;
	int64_t                         timeout_ms;
	int64_t                         give_up_at;  /* monotonic ms; 0: no retries */
	struct tp_backoff               backoff;
	struct tp_grpc_call            *grpc;
	struct event                   *retry_ev;
	int                             attempts;
	bool                            start_failed; /* tp_grpc_call_start failed: report it */
	enum tp_h2_patience             patience;
	tp_temporal_cb                  cb;
	void                           *arg;
};

/* ---- error details -------------------------------------------------------------------------- */

static bool
type_is(const char *url, const char *name)
{
	const char *slash = strrchr(url, '/');
	const char *tail = slash ? slash + 1 : url;
	return strcmp(tail, name) == 0;
}

enum tp_temporal_detail
tp_temporal_decode_details(const uint8_t *p, size_t len, int *cause)
{
	Google__Rpc__Status *st;
	enum tp_temporal_detail d = TP_DETAIL_NONE;

	*cause = 0;
	if (p == NULL || len == 0)
		return TP_DETAIL_NONE;
	st = google__rpc__status__unpack(NULL, len, p);
	if (st == NULL)
		return TP_DETAIL_OTHER;
	for (size_t i = 0; i < st->n_details && d == TP_DETAIL_NONE; i++) {
		const Google__Protobuf__Any *any = st->details[i];
		const char *url = any->type_url ? any->type_url : "";
		if (type_is(url, "temporal.api.errordetails.v1.NotFoundFailure"))
			d = TP_DETAIL_NOT_FOUND;
		else if (type_is(url, "temporal.api.errordetails.v1.NamespaceNotFoundFailure"))
			d = TP_DETAIL_NAMESPACE_NOT_FOUND;
		else if (type_is(url, "temporal.api.errordetails.v1.NamespaceNotActiveFailure"))
			d = TP_DETAIL_NAMESPACE_NOT_ACTIVE;
		else if (type_is(url, "temporal.api.errordetails.v1.ClientVersionNotSupportedFailure"))
			d = TP_DETAIL_CLIENT_VERSION_NOT_SUPPORTED;
		else if (type_is(url, "temporal.api.errordetails.v1.ServerVersionNotSupportedFailure"))
			d = TP_DETAIL_SERVER_VERSION_NOT_SUPPORTED;
		else if (type_is(url, "temporal.api.errordetails.v1.ResourceExhaustedFailure")) {
			Temporal__Api__Errordetails__V1__ResourceExhaustedFailure *re =
			    temporal__api__errordetails__v1__resource_exhausted_failure__unpack(NULL,
				any->value.len, any->value.data);
			d = TP_DETAIL_RESOURCE_EXHAUSTED;
			if (re) {
				*cause = (int)re->cause;
				temporal__api__errordetails__v1__resource_exhausted_failure__free_unpacked(re,
				    NULL);
			}
		} else
			d = TP_DETAIL_OTHER;
	}
	google__rpc__status__free_unpacked(st, NULL);
	return d;
}

/* ---- client --------------------------------------------------------------------------------- */

struct tp_temporal *
tp_temporal_new(struct event_base *base, const struct tp_config *cfg, const char *identity,
    char *err, size_t errlen)
{
	struct tp_temporal *t = tp_xcalloc(1, sizeof(*t));
	struct tp_grpc_header hdr[4];
	struct tp_grpc_channel_opts o;
	size_t n = 0;

	t->base = base;
	t->report_retry_ms = TP_TEMPORAL_REPORT_RETRY_MS;
	t->identity = tp_xstrdup(identity);
	t->namespace_ = tp_xstrdup(cfg->namespace_);
	hdr[n++] = (struct tp_grpc_header){ "client-name", TP_TEMPORAL_CLIENT_NAME };
	hdr[n++] = (struct tp_grpc_header){ "client-version", PACKAGE_VERSION };
	hdr[n++] = (struct tp_grpc_header){ "temporal-namespace", cfg->namespace_ };
	if (cfg->api_key) {
		t->auth = tp_xasprintf("Bearer %s", cfg->api_key);
		hdr[n++] = (struct tp_grpc_header){ "authorization", t->auth };
	}
	memset(&o, 0, sizeof(o));
	o.host = cfg->host;
	o.port = cfg->port;
	/* An API key implies TLS, as the SDKs do, unless TLS is configured explicitly off. */
	o.tls = cfg->tls || cfg->api_key != NULL;
	o.tls_ca_file = cfg->tls_ca;
	o.tls_cert_file = cfg->tls_cert;
	o.tls_key_file = cfg->tls_key;
	o.tls_server_name = cfg->tls_server_name;
	o.tls_skip_verify = cfg->tls_skip_verify;
	o.headers = hdr;
	o.nheaders = n;
	t->ch = tp_grpc_channel_new(base, &o, err, errlen);
	if (t->ch == NULL) {
		tp_temporal_free(t);
		return NULL;
	}
	return t;
}

static void
call_free(struct tp_temporal_call *c)
{
	struct tp_temporal *t = c->t;

	if (c->prev)
		c->prev->next = c->next;
	else
		t->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->retry_ev)
		event_free(c->retry_ev);
	free(c->path);
	free(c->req);
	free(c);
}

void
tp_temporal_free(struct tp_temporal *t)
{
	if (t == NULL)
		return;
	while (t->calls) {
		if (t->calls->grpc)
			tp_grpc_call_cancel(t->calls->grpc);
		call_free(t->calls);
	}
	tp_grpc_channel_free(t->ch);
	if (t->auth)
		explicit_bzero(t->auth, strlen(t->auth));
	free(t->auth);
	free(t->identity);
	free(t->namespace_);
	free(t);
}

static void
on_closed(void *arg)
{
	struct tp_temporal *t = arg;
	if (t->close_done)
		t->close_done(t->close_arg);
}

void
tp_temporal_close(struct tp_temporal *t, void (*done)(void *arg), void *arg)
{
	t->close_done = done;
	t->close_arg = arg;
	tp_grpc_channel_close(t->ch, on_closed, t);
}

const char *tp_temporal_identity(const struct tp_temporal *t) { return t->identity; }
const char *tp_temporal_namespace(const struct tp_temporal *t) { return t->namespace_; }

size_t
tp_temporal_pending(const struct tp_temporal *t)
{
	size_t n = 0;
	for (const struct tp_temporal_call *c = t->calls; c; c = c->next)
		n++;
	return n;
}

/* ---- one call with retries ------------------------------------------------------------------ */

static void start_attempt(struct tp_temporal_call *c);
static void finish(struct tp_temporal_call *c, const struct tp_temporal_status *st,
    ProtobufCMessage *resp);

static void
on_retry_timer(evutil_socket_t fd, short what, void *arg)
{
	struct tp_temporal_call *c = arg;

	if (c->start_failed) {
		struct tp_temporal_status st = { .code = TP_GRPC_RESOURCE_EXHAUSTED,
			.attempts = c->attempts };
		c->start_failed = false;
		snprintf(st.message, sizeof(st.message), "out of memory starting a call");
		finish(c, &st, NULL);
		return;
	}
	start_attempt(c);
}

/* Whether to try again, and after how long. */
static bool
should_retry(struct tp_temporal_call *c, const struct tp_temporal_status *st, int64_t *delay)
{
	int64_t d;

	if (c->give_up_at == 0 || !tp_grpc_is_retryable(st->code, st->message))
		return false;
	d = tp_backoff_next(&c->backoff);
	/* The SDKs wait at least a second after RESOURCE_EXHAUSTED (server throttling). */
	if (st->code == TP_GRPC_RESOURCE_EXHAUSTED && d < 1000)
		d = 1000;
	if (tp_now_mono_ms() + d > c->give_up_at)
		return false;
	*delay = d;
	return true;
}

static void
finish(struct tp_temporal_call *c, const struct tp_temporal_status *st, ProtobufCMessage *resp)
{
	tp_temporal_cb cb = c->cb;
	void *arg = c->arg;
	struct tp_temporal_status out = *st;
	uint8_t *req = c->req;

	/* The request goes with the outcome (a report that could not be delivered is handed on). */
	out.request = req;
	out.request_len = c->req_len;
	c->req = NULL;
	call_free(c);
	cb(arg, &out, resp);
	free(req);
}

/* The call's retry timer, made when a call first needs it (most never do). */
static struct event *
retry_timer(struct tp_temporal_call *c)
{
	if (c->retry_ev == NULL)
		c->retry_ev = evtimer_new(c->t->base, on_retry_timer, c);
	return c->retry_ev;
}

static void
on_grpc_done(void *arg, const struct tp_grpc_status *gs, const uint8_t *msg, size_t len)
{
	struct tp_temporal_call *c = arg;
	struct tp_temporal_status st;
	ProtobufCMessage *resp = NULL;
	int64_t delay;

	c->grpc = NULL;
	memset(&st, 0, sizeof(st));
	st.code = gs->code;
	st.attempts = c->attempts;
	if (gs->message != NULL) {
		size_t n = strnlen(gs->message, sizeof(st.message) - 1);

		memcpy(st.message, gs->message, n);  /* st is zeroed: the NUL is there */
	}
	st.detail = tp_temporal_decode_details(gs->details, gs->details_len, &st.detail_cause);
	if (st.code == TP_GRPC_OK) {
		resp = tp_pb_unpack(c->resp_desc, len, msg);
		if (resp == NULL) {
			st.code = TP_GRPC_INTERNAL;
			snprintf(st.message, sizeof(st.message), "cannot decode %s response",
			    c->resp_desc->name);
		}
	}
	if (st.code != TP_GRPC_OK && should_retry(c, &st, &delay)) {
		tp_timer_in(retry_timer(c), delay);
		return;
	}
	finish(c, &st, resp);
}

static void
start_attempt(struct tp_temporal_call *c)
{
	c->attempts++;
	c->grpc = tp_grpc_call_start(c->t->ch, c->path, c->req, c->req_len, c->timeout_ms,
	    NULL, 0, on_grpc_done, c);
	if (c->grpc != NULL && c->patience != TP_H2_PROMPT)
		tp_grpc_call_set_patience(c->grpc, c->patience);
	if (c->grpc == NULL) {
		/* Never complete from inside the caller's call: the failure is reported from the
		 * loop, like every other outcome. */
		struct timeval now = { 0, 0 };
		c->start_failed = true;
		evtimer_add(retry_timer(c), &now);
	}
}

static char *
path_of(const char *method)
{
	size_t n = strlen(method) + 1;
	char *p = tp_xmalloc(sizeof(SERVICE_PATH) - 1 + n);

	memcpy(p, SERVICE_PATH, sizeof(SERVICE_PATH) - 1);
	memcpy(p + sizeof(SERVICE_PATH) - 1, method, n);
	return p;
}

/* Start a call whose serialized request (req_len bytes at req, malloc'd) it takes over. */
static struct tp_temporal_call *
call_start(struct tp_temporal *t, const char *method, uint8_t *req, size_t req_len,
    const ProtobufCMessageDescriptor *resp_desc, const struct tp_temporal_call_opts *opts,
    tp_temporal_cb cb, void *arg)
{
	struct tp_temporal_call *c = tp_xcalloc(1, sizeof(*c));

	c->t = t;
	c->path = path_of(method);
	c->req_len = req_len;
	c->req = req;
	c->resp_desc = resp_desc;
	c->timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->give_up_at = opts && opts->retry_for_ms > 0 ? tp_now_mono_ms() + opts->retry_for_ms : 0;
	c->patience = opts ? opts->patience : TP_H2_PROMPT;
	/* CORE's policy: 100 ms, x1.7, at most 5 s, +-20 %. */
	tp_backoff_init(&c->backoff, 100, 5000, 1.7, 0.2);
	c->cb = cb;
	c->arg = arg;
	c->next = t->calls;
	if (t->calls)
		t->calls->prev = c;
	t->calls = c;
	start_attempt(c);
	return c;
}

static uint8_t *
pack(const ProtobufCMessage *req, size_t *len)
{
	uint8_t *buf;

	*len = protobuf_c_message_get_packed_size(req);
	buf = tp_xmalloc(*len ? *len : 1);
	protobuf_c_message_pack(req, buf);
	return buf;
}

struct tp_temporal_call *
tp_temporal_call(struct tp_temporal *t, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *resp_desc, const struct tp_temporal_call_opts *opts,
    tp_temporal_cb cb, void *arg)
{
	size_t len;
	uint8_t *buf = pack(req, &len);

	return call_start(t, method, buf, len, resp_desc, opts, cb, arg);
}

struct tp_temporal_call *
tp_temporal_call_raw(struct tp_temporal *t, const char *method, const uint8_t *req, size_t len,
    const ProtobufCMessageDescriptor *resp_desc, const struct tp_temporal_call_opts *opts,
    tp_temporal_cb cb, void *arg)
{
	uint8_t *buf = tp_xmalloc(len ? len : 1);

	memcpy(buf, req, len);
	return call_start(t, method, buf, len, resp_desc, opts, cb, arg);
}

void
tp_temporal_call_cancel(struct tp_temporal_call *c)
{
	if (c == NULL)
		return;
	if (c->grpc)
		tp_grpc_call_cancel(c->grpc);
	call_free(c);
}

/* ---- typed RPCs ----------------------------------------------------------------------------- */

#define CALL(t, method, req, resp_name, opts, cb, arg) \
	tp_temporal_call((t), (method), &(req).base, &RPC_NS(resp_name##__descriptor), (opts), (cb), (arg))

struct tp_temporal_call *
tp_temporal_get_system_info(struct tp_temporal *t, tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__GetSystemInfoRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__GET_SYSTEM_INFO_REQUEST__INIT;
	struct tp_temporal_call_opts o = { DEFAULT_TIMEOUT_MS, 0, TP_H2_PROMPT };

	return CALL(t, "GetSystemInfo", req, get_system_info_response, &o, cb, arg);
}

struct tp_temporal_call *
tp_temporal_describe_namespace(struct tp_temporal *t, tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__DescribeNamespaceRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__DESCRIBE_NAMESPACE_REQUEST__INIT;
	struct tp_temporal_call_opts o = { DEFAULT_TIMEOUT_MS, 0, TP_H2_PROMPT };

	req.namespace_ = t->namespace_;
	req.weak_consistency = 1;
	return CALL(t, "DescribeNamespace", req, describe_namespace_response, &o, cb, arg);
}

struct tp_temporal_call *
tp_temporal_poll_activity(struct tp_temporal *t, const char *task_queue,
    const char *worker_instance_key, int64_t timeout_ms, tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__PollActivityTaskQueueRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__POLL_ACTIVITY_TASK_QUEUE_REQUEST__INIT;
	Temporal__Api__Taskqueue__V1__TaskQueue tq = TEMPORAL__API__TASKQUEUE__V1__TASK_QUEUE__INIT;
	/* A poll's answer that brings a task is large: it wakes the worker at once and brings the
	 * reports' small answers in with it (lazy reads). */
	struct tp_temporal_call_opts o = { timeout_ms, 0, TP_H2_CARRIER };

	tq.name = (char *)task_queue;
	tq.kind = TEMPORAL__API__ENUMS__V1__TASK_QUEUE_KIND__TASK_QUEUE_KIND_NORMAL;
	req.namespace_ = t->namespace_;
	req.task_queue = &tq;
	req.identity = t->identity;
	req.worker_instance_key = (char *)worker_instance_key;
	return CALL(t, "PollActivityTaskQueue", req, poll_activity_task_queue_response, &o, cb, arg);
}

struct tp_temporal_call *
tp_temporal_heartbeat(struct tp_temporal *t, const ProtobufCBinaryData *token,
    const Temporal__Api__Common__V1__Payloads *details, int64_t timeout_ms,
    tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__RecordActivityTaskHeartbeatRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__RECORD_ACTIVITY_TASK_HEARTBEAT_REQUEST__INIT;
	/* Heartbeats are not retried beyond their window: the next one carries newer details. */
	struct tp_temporal_call_opts o = { timeout_ms, timeout_ms, TP_H2_LAZY };

	req.task_token = *token;
	req.details = (Temporal__Api__Common__V1__Payloads *)details;
	req.identity = t->identity;
	req.namespace_ = t->namespace_;
	return CALL(t, "RecordActivityTaskHeartbeat", req, record_activity_task_heartbeat_response,
	    &o, cb, arg);
}

/* Complete, fail and canceled: retried for report_retry_ms; their answers may be read lazily. */
static struct tp_temporal_call_opts
report_opts(const struct tp_temporal *t)
{
	struct tp_temporal_call_opts o = { DEFAULT_TIMEOUT_MS, t->report_retry_ms, TP_H2_LAZY };

	return o;
}

struct tp_temporal_call *
tp_temporal_complete(struct tp_temporal *t, const ProtobufCBinaryData *token,
    const Temporal__Api__Common__V1__Payloads *result, tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__RespondActivityTaskCompletedRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__RESPOND_ACTIVITY_TASK_COMPLETED_REQUEST__INIT;
	struct tp_temporal_call_opts o = report_opts(t);

	req.task_token = *token;
	req.result = (Temporal__Api__Common__V1__Payloads *)result;
	req.identity = t->identity;
	req.namespace_ = t->namespace_;
	return CALL(t, "RespondActivityTaskCompleted", req, respond_activity_task_completed_response,
	    &o, cb, arg);
}

uint8_t *
tp_temporal_pack_fail(struct tp_temporal *t, const ProtobufCBinaryData *token,
    const Temporal__Api__Failure__V1__Failure *failure,
    const Temporal__Api__Common__V1__Payloads *last_heartbeat_details, size_t *len)
{
	Temporal__Api__Workflowservice__V1__RespondActivityTaskFailedRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__RESPOND_ACTIVITY_TASK_FAILED_REQUEST__INIT;

	req.task_token = *token;
	req.failure = (Temporal__Api__Failure__V1__Failure *)failure;
	req.last_heartbeat_details = (Temporal__Api__Common__V1__Payloads *)last_heartbeat_details;
	req.identity = t->identity;
	req.namespace_ = t->namespace_;
	return pack(&req.base, len);
}

struct tp_temporal_call *
tp_temporal_report_raw(struct tp_temporal *t, enum tp_temporal_report kind, const uint8_t *req,
    size_t len, const struct tp_temporal_call_opts *opts, tp_temporal_cb cb, void *arg)
{
	switch (kind) {
	case TP_REPORT_COMPLETED:
		return tp_temporal_call_raw(t, "RespondActivityTaskCompleted", req, len,
		    &RPC_NS(respond_activity_task_completed_response__descriptor), opts, cb, arg);
	case TP_REPORT_FAILED:
		return tp_temporal_call_raw(t, "RespondActivityTaskFailed", req, len,
		    &RPC_NS(respond_activity_task_failed_response__descriptor), opts, cb, arg);
	case TP_REPORT_CANCELED:
		return tp_temporal_call_raw(t, "RespondActivityTaskCanceled", req, len,
		    &RPC_NS(respond_activity_task_canceled_response__descriptor), opts, cb, arg);
	}
	return NULL;
}

void
tp_temporal_set_lazy_read(struct tp_temporal *t, int ms)
{
	tp_grpc_channel_set_lazy_read(t->ch, ms);
}

void
tp_temporal_set_report_retry(struct tp_temporal *t, int64_t ms)
{
	t->report_retry_ms = ms > 0 ? ms : 0;
}

struct tp_temporal_call *
tp_temporal_fail(struct tp_temporal *t, const ProtobufCBinaryData *token,
    const Temporal__Api__Failure__V1__Failure *failure,
    const Temporal__Api__Common__V1__Payloads *last_heartbeat_details,
    tp_temporal_cb cb, void *arg)
{
	struct tp_temporal_call_opts o = report_opts(t);
	size_t len;
	uint8_t *req = tp_temporal_pack_fail(t, token, failure, last_heartbeat_details, &len);

	/* call_start takes the packed request over. */
	return call_start(t, "RespondActivityTaskFailed", req, len,
	    &RPC_NS(respond_activity_task_failed_response__descriptor), &o, cb, arg);
}

struct tp_temporal_call *
tp_temporal_canceled(struct tp_temporal *t, const ProtobufCBinaryData *token,
    const Temporal__Api__Common__V1__Payloads *details, tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__RespondActivityTaskCanceledRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__RESPOND_ACTIVITY_TASK_CANCELED_REQUEST__INIT;
	struct tp_temporal_call_opts o = report_opts(t);

	req.task_token = *token;
	req.details = (Temporal__Api__Common__V1__Payloads *)details;
	req.identity = t->identity;
	req.namespace_ = t->namespace_;
	return CALL(t, "RespondActivityTaskCanceled", req, respond_activity_task_canceled_response,
	    &o, cb, arg);
}

struct tp_temporal_call *
tp_temporal_shutdown_worker(struct tp_temporal *t, const char *task_queue,
    const char *worker_instance_key, const char *reason, tp_temporal_cb cb, void *arg)
{
	Temporal__Api__Workflowservice__V1__ShutdownWorkerRequest req =
	    TEMPORAL__API__WORKFLOWSERVICE__V1__SHUTDOWN_WORKER_REQUEST__INIT;
	Temporal__Api__Enums__V1__TaskQueueType types[1] = {
		TEMPORAL__API__ENUMS__V1__TASK_QUEUE_TYPE__TASK_QUEUE_TYPE_ACTIVITY };
	struct tp_temporal_call_opts o = { 5000, 0, TP_H2_PROMPT };

	req.namespace_ = t->namespace_;
	req.sticky_task_queue = "";
	req.identity = t->identity;
	req.reason = (char *)reason;
	req.worker_instance_key = (char *)worker_instance_key;
	req.task_queue = (char *)task_queue;
	req.n_task_queue_types = 1;
	req.task_queue_types = types;
	return CALL(t, "ShutdownWorker", req, shutdown_worker_response, &o, cb, arg);
}
