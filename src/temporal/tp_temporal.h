/* tp_temporal: typed Temporal WorkflowService calls for an activity worker, on a tp_grpc channel.
 *
 * Adds the Temporal headers (temporal-namespace, client-name/client-version, authorization: Bearer),
 * packs requests, unpacks responses, decodes grpc-status-details-bin into a detail kind (so NOT_FOUND
 * and NamespaceNotFound differ), and retries transient failures of non-poll calls with jittered
 * exponential backoff (temporal-protocol.md §1.4). Polls are never retried here: the worker's poll
 * loop owns that backoff.
 *
 * Lower layer: never logs. Each callback runs exactly once unless the call is cancelled.
 */
#ifndef TP_TEMPORAL_H
#define TP_TEMPORAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "temporal/api/workflowservice/v1/request_response.pb-c.h"
#include "transport/tp_h2.h"

struct event_base;
struct tp_config;

#define TP_TEMPORAL_CLIENT_NAME "temporal-c-tprefork"

/* What grpc-status-details-bin said, beyond the code. */
enum tp_temporal_detail {
	TP_DETAIL_NONE = 0,
	TP_DETAIL_NOT_FOUND,              /* NotFoundFailure: task token / activity gone */
	TP_DETAIL_NAMESPACE_NOT_FOUND,    /* NamespaceNotFoundFailure */
	TP_DETAIL_NAMESPACE_NOT_ACTIVE,
	TP_DETAIL_RESOURCE_EXHAUSTED,     /* ResourceExhaustedFailure (cause in detail_cause) */
	TP_DETAIL_CLIENT_VERSION_NOT_SUPPORTED,
	TP_DETAIL_SERVER_VERSION_NOT_SUPPORTED,
	TP_DETAIL_OTHER
};

struct tp_temporal_status {
	int  code;                 /* gRPC code; 0 = OK */
	enum tp_temporal_detail detail;
	int  detail_cause;         /* ResourceExhaustedCause when detail is RESOURCE_EXHAUSTED */
	int  attempts;             /* attempts made (1 without retries) */
	char message[512];
	/* The serialized request of the call (valid during the callback only): a report that could not
	 * be delivered is handed on as it was sent. */
	const uint8_t *request;
	size_t         request_len;
};

/* Completion: on OK, resp is the unpacked response and the callee owns it (free it with
 * tp_pb_free(resp), as it lives in an arena); otherwise resp is NULL. */
typedef void (*tp_temporal_cb)(void *arg, const struct tp_temporal_status *st,
                               ProtobufCMessage *resp);

struct tp_temporal;
struct tp_temporal_call;

struct tp_temporal_call_opts {
	int64_t timeout_ms;        /* per attempt; 0: 10 s */
	int64_t retry_for_ms;      /* retry transient errors until this much time has passed; 0: none */
	enum tp_h2_patience patience; /* how soon the answer must be read (default TP_H2_PROMPT) */
};

/* A client for cfg's server and namespace. identity is sent as the worker identity. Returns NULL
 * with err filled when the channel cannot be set up (bad TLS files). */
struct tp_temporal *tp_temporal_new(struct event_base *base, const struct tp_config *cfg,
    const char *identity, char *err, size_t errlen);
/* Graceful close (pending calls finish, then GOAWAY); done runs once closed. */
void tp_temporal_close(struct tp_temporal *t, void (*done)(void *arg), void *arg);
void tp_temporal_free(struct tp_temporal *t);
const char *tp_temporal_identity(const struct tp_temporal *t);
const char *tp_temporal_namespace(const struct tp_temporal *t);
size_t tp_temporal_pending(const struct tp_temporal *t);

/* Generic call of WorkflowService/<method> with any request message. */
struct tp_temporal_call *tp_temporal_call(struct tp_temporal *t, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
    const struct tp_temporal_call_opts *opts, tp_temporal_cb cb, void *arg);
/* The same with a request already serialized (copied). */
struct tp_temporal_call *tp_temporal_call_raw(struct tp_temporal *t, const char *method,
    const uint8_t *req, size_t len, const ProtobufCMessageDescriptor *resp_desc,
    const struct tp_temporal_call_opts *opts, tp_temporal_cb cb, void *arg);
/* Abandon a call (and its retries); its callback will not run. */
void tp_temporal_call_cancel(struct tp_temporal_call *c);

/* --- the RPCs of an activity worker -------------------------------------------------------- */

struct tp_temporal_call *tp_temporal_get_system_info(struct tp_temporal *t,
    tp_temporal_cb cb, void *arg);
struct tp_temporal_call *tp_temporal_describe_namespace(struct tp_temporal *t,
    tp_temporal_cb cb, void *arg);
/* One long poll (no retries; timeout_ms is the poll's grpc-timeout). */
struct tp_temporal_call *tp_temporal_poll_activity(struct tp_temporal *t, const char *task_queue,
    const char *worker_instance_key, int64_t timeout_ms, tp_temporal_cb cb, void *arg);
/* details may be NULL. */
struct tp_temporal_call *tp_temporal_heartbeat(struct tp_temporal *t,
    const ProtobufCBinaryData *token, const Temporal__Api__Common__V1__Payloads *details,
    int64_t timeout_ms, tp_temporal_cb cb, void *arg);
/* result may be NULL (no result). */
struct tp_temporal_call *tp_temporal_complete(struct tp_temporal *t,
    const ProtobufCBinaryData *token, const Temporal__Api__Common__V1__Payloads *result,
    tp_temporal_cb cb, void *arg);
struct tp_temporal_call *tp_temporal_fail(struct tp_temporal *t,
    const ProtobufCBinaryData *token, const Temporal__Api__Failure__V1__Failure *failure,
    const Temporal__Api__Common__V1__Payloads *last_heartbeat_details,
    tp_temporal_cb cb, void *arg);
struct tp_temporal_call *tp_temporal_canceled(struct tp_temporal *t,
    const ProtobufCBinaryData *token, const Temporal__Api__Common__V1__Payloads *details,
    tp_temporal_cb cb, void *arg);

/* The three reports, for requests serialized earlier (an outbox). */
enum tp_temporal_report {
	TP_REPORT_COMPLETED = 1,   /* RespondActivityTaskCompleted */
	TP_REPORT_FAILED = 2,      /* RespondActivityTaskFailed */
	TP_REPORT_CANCELED = 3     /* RespondActivityTaskCanceled */
};
/* Send a serialized Respond*Request of kind (copied). NULL for an unknown kind. */
struct tp_temporal_call *tp_temporal_report_raw(struct tp_temporal *t,
    enum tp_temporal_report kind, const uint8_t *req, size_t len,
    const struct tp_temporal_call_opts *opts, tp_temporal_cb cb, void *arg);
/* The RespondActivityTaskFailedRequest tp_temporal_fail would send (malloc'd, *len bytes). */
uint8_t *tp_temporal_pack_fail(struct tp_temporal *t, const ProtobufCBinaryData *token,
    const Temporal__Api__Failure__V1__Failure *failure,
    const Temporal__Api__Common__V1__Payloads *last_heartbeat_details, size_t *len);
/* Lazy reads (tp_h2_conn_set_lazy_read) on the client's connections; 0 turns them off. The
 * answers of heartbeats and reports may then wait up to ms while a poll is open (its answer
 * brings them in); every other call is read at once. */
void tp_temporal_set_lazy_read(struct tp_temporal *t, int ms);
/* How long complete / fail / canceled retry transient errors (default
 * TP_TEMPORAL_REPORT_RETRY_MS). */
void tp_temporal_set_report_retry(struct tp_temporal *t, int64_t ms);

/* ShutdownWorker for the ACTIVITY task queue type; sent once, not retried. */
struct tp_temporal_call *tp_temporal_shutdown_worker(struct tp_temporal *t,
    const char *task_queue, const char *worker_instance_key, const char *reason,
    tp_temporal_cb cb, void *arg);

/* Decode a serialized google.rpc.Status (grpc-status-details-bin) into detail kind and cause. */
enum tp_temporal_detail tp_temporal_decode_details(const uint8_t *p, size_t len, int *cause);

/* How long reports (complete / fail / canceled) are retried before the caller is told. */
#define TP_TEMPORAL_REPORT_RETRY_MS 60000

#endif
