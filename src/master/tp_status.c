#include "master/tp_status.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tp_status {
	struct evhttp          *http;
	struct tp_status_source src;
};

static json_t *
child_json(const struct tp_status_child *c)
{
	json_t *inflight = json_array();

	for (size_t i = 0; i < c->ninflight; i++) {
		const struct tp_status_task *t = &c->inflight[i];
		json_array_append_new(inflight, json_pack("{s:s, s:s, s:s, s:i, s:I}",
		    "activity_type", t->activity_type, "activity_id", t->activity_id,
		    "workflow_id", t->workflow_id, "attempt", t->attempt,
		    "started_ms", (json_int_t)t->started_ms));
	}
	return json_pack("{s:I, s:i, s:i, s:s, s:i, s:i, s:I, s:I, s:I, s:o}",
	    "pid", (json_int_t)c->pid, "index", c->index, "generation", c->generation,
	    "state", c->state, "polls", c->polls, "tasks", c->tasks,
	    "completed", (json_int_t)c->completed, "failed", (json_int_t)c->failed,
	    "cancelled", (json_int_t)c->cancelled, "inflight", inflight);
}

static void
render_status(struct evbuffer *out, const struct tp_status_snapshot *s)
{
	json_t *children = json_array(), *root;
	char *text;

	for (size_t i = 0; i < s->nchildren; i++)
		json_array_append_new(children, child_json(&s->children[i]));
	root = json_pack("{s:s, s:i, s:i, s:i, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:{s:b, s:I, s:I}, s:o}",
	    "state", s->state, "generation", s->generation, "workers", s->workers_wanted,
	    "slots_per_worker", s->slots_per_worker, "task_queue", s->task_queue,
	    "namespace", s->namespace_, "completed", (json_int_t)s->completed,
	    "failed", (json_int_t)s->failed, "cancelled", (json_int_t)s->cancelled,
	    "child_restarts", (json_int_t)s->child_restarts,
	    "tasks_failed_by_master", (json_int_t)s->tasks_failed_by_master,
	    "journal", "paused", s->journal_paused, "inflight", (json_int_t)s->journal_inflight,
	    "outbox", (json_int_t)s->journal_outbox, "children", children);
	text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
	evbuffer_add_printf(out, "%s\n", text ? text : "{}");
	free(text);
	json_decref(root);
}

static void
metric(struct evbuffer *out, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
render_metrics(struct evbuffer *out, const struct tp_status_snapshot *s)
{
	const char *lbl = "worker_type=\"ActivityWorker\"";
	long used = 0, polls = 0, slots = 0;

	for (size_t i = 0; i < s->nchildren; i++) {
		used += s->children[i].tasks;
		polls += s->children[i].polls;
		slots += s->slots_per_worker;
	}
	metric(out, "temporal_worker_task_slots_used", "gauge", "Activity slots in use.");
	evbuffer_add_printf(out, "temporal_worker_task_slots_used{%s} %ld\n", lbl, used);
	metric(out, "temporal_worker_task_slots_available", "gauge", "Activity slots free.");
	evbuffer_add_printf(out, "temporal_worker_task_slots_available{%s} %ld\n", lbl,
	    slots > used ? slots - used : 0);
	metric(out, "temporal_num_pollers", "gauge", "Open activity task polls.");
	evbuffer_add_printf(out, "temporal_num_pollers{poller_type=\"activity_task\"} %ld\n", polls);
	metric(out, "tprefork_workers", "gauge", "Worker children alive.");
	evbuffer_add_printf(out, "tprefork_workers %zu\n", s->nchildren);
	metric(out, "tprefork_generation", "gauge", "Configuration generation in effect.");
	evbuffer_add_printf(out, "tprefork_generation %d\n", s->generation);
	metric(out, "tprefork_activities_total", "counter", "Activities reported, by outcome.");
	evbuffer_add_printf(out, "tprefork_activities_total{outcome=\"completed\"} %llu\n",
	    (unsigned long long)s->completed);
	evbuffer_add_printf(out, "tprefork_activities_total{outcome=\"failed\"} %llu\n",
	    (unsigned long long)s->failed);
	evbuffer_add_printf(out, "tprefork_activities_total{outcome=\"cancelled\"} %llu\n",
	    (unsigned long long)s->cancelled);
	metric(out, "tprefork_child_restarts_total", "counter", "Unexpected exits of worker children.");
	evbuffer_add_printf(out, "tprefork_child_restarts_total %llu\n",
	    (unsigned long long)s->child_restarts);
	metric(out, "tprefork_tasks_failed_by_master_total", "counter",
	    "Tasks of dead or killed children failed by the master so Temporal retries them.");
	evbuffer_add_printf(out, "tprefork_tasks_failed_by_master_total %llu\n",
	    (unsigned long long)s->tasks_failed_by_master);
	metric(out, "tprefork_journal_paused", "gauge",
	    "1 while the journal cannot be written (children stop polling).");
	evbuffer_add_printf(out, "tprefork_journal_paused %d\n", s->journal_paused ? 1 : 0);
	metric(out, "tprefork_journal_outbox", "gauge", "Reports waiting in the master's outbox.");
	evbuffer_add_printf(out, "tprefork_journal_outbox %zu\n", s->journal_outbox);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
	struct tp_status *st = arg;
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	struct tp_status_snapshot snap;
	struct evbuffer *out;
	bool is_status, is_metrics;

	is_status = path && strcmp(path, "/status") == 0;
	is_metrics = path && strcmp(path, "/metrics") == 0;
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_send_error(req, 405, "only GET");
		return;
	}
	if (!is_status && !is_metrics) {
		evhttp_send_error(req, HTTP_NOTFOUND, "try /status or /metrics");
		return;
	}
	out = evbuffer_new();
	memset(&snap, 0, sizeof(snap));
	st->src.fill(st->src.arg, &snap);
	if (is_status)
		render_status(out, &snap);
	else
		render_metrics(out, &snap);
	st->src.done(st->src.arg, &snap);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	    is_status ? "application/json" : "text/plain; version=0.0.4");
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

static int
split_listen(const char *listen, char *host, size_t hostlen, unsigned short *port)
{
	const char *colon;
	char *end;
	long p;

	if (listen[0] == '[') {
		const char *rb = strchr(listen, ']');
		if (rb == NULL || rb[1] != ':' || (size_t)(rb - listen - 1) >= hostlen)
			return -1;
		memcpy(host, listen + 1, (size_t)(rb - listen - 1));
		host[rb - listen - 1] = '\0';
		colon = rb + 1;
	} else {
		colon = strrchr(listen, ':');
		if (colon == NULL || (size_t)(colon - listen) >= hostlen)
			return -1;
		memcpy(host, listen, (size_t)(colon - listen));
		host[colon - listen] = '\0';
	}
	p = strtol(colon + 1, &end, 10);
	if (*end != '\0' || p < 0 || p > 65535)
		return -1;
	*port = (unsigned short)p;
	return 0;
}

struct tp_status *
tp_status_new(struct event_base *base, const char *listen, const struct tp_status_source *src,
    char *err, size_t errlen)
{
	struct tp_status *st;
	char host[256];
	unsigned short port;

	if (split_listen(listen, host, sizeof(host), &port) != 0) {
		snprintf(err, errlen, "status.listen must be host:port (got \"%s\")", listen);
		return NULL;
	}
	st = calloc(1, sizeof(*st));
	if (st == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	st->src = *src;
	st->http = evhttp_new(base);
	if (st->http == NULL || evhttp_bind_socket(st->http, host, port) != 0) {
		snprintf(err, errlen, "cannot listen on %s", listen);
		tp_status_free(st);
		return NULL;
	}
	evhttp_set_allowed_methods(st->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_gencb(st->http, on_request, st);
	return st;
}

void
tp_status_free(struct tp_status *st)
{
	if (st == NULL)
		return;
	if (st->http)
		evhttp_free(st->http);
	free(st);
}
