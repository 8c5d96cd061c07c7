/* tp_status: the master's status endpoint (libevent's evhttp), loopback by default.
 *
 *   GET /status   JSON: state, generation, children with their counters and in-flight activities
 *   GET /metrics  Prometheus text; Temporal SDK metric names where they apply
 *                 (temporal_worker_task_slots_available/used, temporal_num_pollers, ...)
 *
 * The module knows nothing of the master: on each request it asks the master for a snapshot.
 * Lower layer: returns codes and messages, never logs. */
#ifndef TP_STATUS_H
#define TP_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;

struct tp_status_task {
	const char *activity_type;
	const char *activity_id;
	const char *workflow_id;
	int         attempt;
	int64_t     started_ms;      /* Unix ms */
};

struct tp_status_child {
	long        pid;
	int         index;
	int         generation;
	const char *state;           /* "starting", "ready", "draining" */
	int         polls;
	int         tasks;
	uint64_t    completed, failed, cancelled;
	const struct tp_status_task *inflight;
	size_t      ninflight;
};

struct tp_status_snapshot {
	const char *state;           /* "running", "stopping", "closing" */
	int         generation;
	int         workers_wanted;
	int         slots_per_worker;
	const char *task_queue;
	const char *namespace_;
	uint64_t    completed, failed, cancelled;   /* including children that have exited */
	uint64_t    child_restarts;                 /* unexpected exits */
	uint64_t    tasks_failed_by_master;         /* tasks of dead children failed by the master */
	bool        journal_paused;                 /* the journal cannot be written: polls stop */
	size_t      journal_inflight;               /* tasks in flight the journal holds */
	size_t      journal_outbox;                 /* reports waiting for delivery */
	const struct tp_status_child *children;
	size_t      nchildren;
};

/* Fill *snap; the pointers must stay valid until done(arg) is called (after rendering). */
struct tp_status_source {
	void (*fill)(void *arg, struct tp_status_snapshot *snap);
	void (*done)(void *arg, struct tp_status_snapshot *snap);
	void  *arg;
};

struct tp_status;

/* Listen on "host:port" (IPv4, or [IPv6]:port). Returns NULL with err filled. */
struct tp_status *tp_status_new(struct event_base *base, const char *listen,
    const struct tp_status_source *src, char *err, size_t errlen);
void tp_status_free(struct tp_status *st);

#endif
