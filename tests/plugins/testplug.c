/* testplug.so: plugin activities for the unit and integration tests.
 *
 *   echo_input     the result is the arguments' JSON array
 *   payloads       the result describes the raw payloads: [{"encoding": e, "len": n, "text": s}, ...]
 *   wait_cancel    [marker, interval_ms, max_ms]: heartbeats {"i": n} every interval_ms until
 *                  cancelled; then writes "<unix time in s> <how it learned>" to the file marker and
 *                  returns with no outcome (reported as cancelled). After max_ms: the result "timeout"
 *   ignore_cancel  [ms]: runs ms milliseconds without looking at the flag (nanosleep), then returns
 *                  {"saw_cancel": bool} (the flag's value at the end)
 *   hb_storm       [records, duration_ms]: `records` heartbeats {"n": k} spread over duration_ms;
 *                  result {"records": records}
 *   fail_typed     [type, message, non_retryable, details]: fails with exactly that
 *   api_checks     exercises the error returns of the API; logs "name=rc" lines; result 1
 *   log_lines      [n]: logs n lines "line k", then completes
 *   info           the result is the task information as JSON */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <tprefork/activity.h>

static json_t *
args_of(tp_activity_handle *h)
{
	const char *in = tp_activity_task(h)->input_json;
	json_t *a = in ? json_loads(in, 0, NULL) : NULL;

	return json_is_array(a) ? a : (json_decref(a), json_array());
}

static void
result(tp_activity_handle *h, json_t *v)
{
	char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

	tp_activity_set_result(h, text);
	free(text);
	json_decref(v);
}

static void
sleep_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
echo_input(tp_activity_handle *h)
{
	const char *in = tp_activity_task(h)->input_json;

	tp_activity_set_result(h, in ? in : "null");
}

static void
payloads(tp_activity_handle *h)
{
	json_t *out = json_array();

	for (size_t i = 0; i < tp_activity_input_count(h); i++) {
		const struct tp_activity_payload *p = tp_activity_input(h, i);
		json_array_append_new(out, json_pack("{sssIss#}", "encoding", p->encoding,
		    "len", (json_int_t)p->len, "text", (const char *)p->data, (int)p->len));
	}
	json_array_append_new(out, json_boolean(tp_activity_input(h, tp_activity_input_count(h)) ==
	    NULL));
	result(h, out);
}

static void
wait_cancel(tp_activity_handle *h)
{
	json_t *a = args_of(h);
	const char *marker = json_string_value(json_array_get(a, 0));
	json_int_t interval = json_integer_value(json_array_get(a, 1));
	json_int_t max = json_integer_value(json_array_get(a, 2));
	const char *how = NULL;
	char details[64];
	FILE *f;

	for (json_int_t i = 0, waited = 0; how == NULL && waited < max; i++, waited += interval) {
		snprintf(details, sizeof details, "{\"i\":%lld}", (long long)i);
		if (tp_activity_heartbeat(h, details) == TP_ACTIVITY_ECANCELLED)
			how = "heartbeat";
		else if (tp_activity_sleep(h, interval) == TP_ACTIVITY_ECANCELLED)
			how = "sleep";
	}
	if (how != NULL && marker != NULL && (f = fopen(marker, "w")) != NULL) {
		fprintf(f, "%.6f %s\n", now_s(), how);
		fclose(f);
	}
	if (how == NULL)
		tp_activity_set_result(h, "\"timeout\"");
	json_decref(a);
}

static void
ignore_cancel(tp_activity_handle *h)
{
	json_t *a = args_of(h);

	sleep_ms(json_integer_value(json_array_get(a, 0)));
	json_decref(a);
	result(h, json_pack("{sb}", "saw_cancel", tp_activity_is_cancelled(h)));
}

static void
hb_storm(tp_activity_handle *h)
{
	json_t *a = args_of(h);
	json_int_t records = json_integer_value(json_array_get(a, 0));
	json_int_t duration = json_integer_value(json_array_get(a, 1));
	char details[64];

	for (json_int_t k = 1; k <= records; k++) {
		snprintf(details, sizeof details, "{\"n\":%lld}", (long long)k);
		tp_activity_heartbeat(h, details);
		if (duration > 0 && k % 100 == 0)
			sleep_ms(duration * 100 / records);
	}
	json_decref(a);
	result(h, json_pack("{sI}", "records", records));
}

static void
fail_typed(tp_activity_handle *h)
{
	json_t *a = args_of(h);
	json_t *d = json_array_get(a, 3);
	char *details = d ? json_dumps(d, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

	tp_activity_set_failure(h, json_string_value(json_array_get(a, 0)),
	    json_string_value(json_array_get(a, 1)), json_is_true(json_array_get(a, 2)), details);
	free(details);
	json_decref(a);
}

static void
log_rc(tp_activity_handle *h, const char *name, int rc)
{
	char line[128];

	snprintf(line, sizeof line, "%s=%d", name, rc);
	tp_activity_log(h, line);
}

static void
api_checks(tp_activity_handle *h)
{
	log_rc(h, "heartbeat_bad_json", tp_activity_heartbeat(h, "{nope"));
	log_rc(h, "heartbeat_null", tp_activity_heartbeat(h, NULL));
	log_rc(h, "heartbeat_ok", tp_activity_heartbeat(h, "{\"x\":1}"));
	log_rc(h, "result_bad_json", tp_activity_set_result(h, "[1,"));
	log_rc(h, "failure_bad_details", tp_activity_set_failure(h, "T", "m", 0, "{"));
	log_rc(h, "cancelled", tp_activity_is_cancelled(h));
	log_rc(h, "sleep", tp_activity_sleep(h, 1));
	log_rc(h, "result_ok", tp_activity_set_result(h, " 1 "));
	log_rc(h, "result_again", tp_activity_set_result(h, "2"));
	log_rc(h, "failure_after_result", tp_activity_set_failure(h, "T", "m", 0, NULL));
}

static void
log_lines(tp_activity_handle *h)
{
	json_t *a = args_of(h);
	json_int_t n = json_integer_value(json_array_get(a, 0));
	char line[64];

	for (json_int_t k = 1; k <= n; k++) {
		snprintf(line, sizeof line, "line %lld", (long long)k);
		tp_activity_log(h, line);
	}
	json_decref(a);
}

static void
info(tp_activity_handle *h)
{
	const struct tp_activity_task *t = tp_activity_task(h);

	result(h, json_pack("{sssssssssssssssisIsIss?}", "activity_type", t->activity_type,
	    "activity_id", t->activity_id, "workflow_id", t->workflow_id,
	    "workflow_run_id", t->workflow_run_id, "workflow_type", t->workflow_type,
	    "task_queue", t->task_queue, "namespace", t->namespace_name, "attempt", (int)t->attempt,
	    "deadline_ms", (json_int_t)t->deadline_ms,
	    "heartbeat_timeout_ms", (json_int_t)t->heartbeat_timeout_ms,
	    "heartbeat_details", t->heartbeat_details));
}

static const struct tp_plugin_activity table[] = {
	{ "echo_input", echo_input },
	{ "payloads", payloads },
	{ "wait_cancel", wait_cancel },
	{ "ignore_cancel", ignore_cancel },
	{ "hb_storm", hb_storm },
	{ "fail_typed", fail_typed },
	{ "api_checks", api_checks },
	{ "log_lines", log_lines },
	{ "info", info },
	{ NULL, NULL }
};

TP_PLUGIN_DEFINE("testplug", "1", table);
