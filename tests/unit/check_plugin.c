/* Unit tests for tp_plugin: loading and refusing plugins, the throwaway check process, runs of plugin
 * functions on pool threads, the pool itself, and inline runs on the loop thread (test plugins from
 * tests/plugins, built as .so files). */
#include <check.h>

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "activity/tp_activity.h"
#include "activity/tp_plugin.h"
#include "core/tp_config.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"

#define PLUGIN(name) TP_TEST_BUILDDIR "/tests/plugins/" name ".so"
#define EXAMPLE      TP_TEST_BUILDDIR "/examples/plugins/example.so"
#define HARD_TIMEOUT_MS 20000

/* ---- a run on its own event base ------------------------------------------------------------------- */

struct run {
	struct event_base    *base;
	struct tp_plugin_run *r;
	int                   ndone;
	enum tp_outcome_kind  kind;
	char                 *result;
	char                 *type, *message;
	bool                  non_retryable, cancelled;
	char                 *details;
	int                   heartbeats;
	char                 *last_hb;
	char                 *lines[64];
	int                   nlines;
	int                   all_lines;      /* lines seen, kept or not */
	unsigned long         dropped;        /* from a "N log line(s) dropped" line */
	int                   ticks;          /* loop timer ticks while the function ran */
	int                   nevents;        /* callbacks so far, to order them: */
	int                   hb_event, log_event, done_event;  /* the last of each kind */
	int                   cancel_after_ms;
	int64_t               t_start, t_cancel, t_done;
	struct event         *ev_cancel, *ev_tick, *ev_hard;
};

static char *
dump(json_t *v)
{
	return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

static void
on_hb(void *arg, json_t *details)
{
	struct run *t = arg;

	t->heartbeats++;
	t->hb_event = ++t->nevents;
	free(t->last_hb);
	t->last_hb = dump(details);
}

static void
on_log(void *arg, const char *line, size_t len)
{
	struct run *t = arg;
	unsigned long n;

	t->log_event = ++t->nevents;
	if (sscanf(line, "%lu log line(s) dropped", &n) == 1)
		t->dropped += n;
	else
		t->all_lines++;
	if (t->nlines < 64)
		t->lines[t->nlines++] = strndup(line, len);
}

static void
on_done(void *arg, const struct tp_activity_outcome *o)
{
	struct run *t = arg;

	t->ndone++;
	t->done_event = ++t->nevents;
	t->t_done = tp_now_mono_ms();
	t->kind = o->kind;
	t->result = o->result ? strndup(o->result, o->result_len) : NULL;
	t->type = o->type ? strdup(o->type) : NULL;
	t->message = o->message ? strdup(o->message) : NULL;
	t->non_retryable = o->non_retryable;
	t->cancelled = o->cancelled;
	t->details = dump(o->details);
	event_base_loopbreak(t->base);
}

static void
on_cancel_timer(evutil_socket_t fd, short what, void *arg)
{
	struct run *t = arg;

	t->t_cancel = tp_now_mono_ms();
	tp_plugin_cancel(t->r);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct run *t = arg;

	t->ticks++;
}

static void
on_hard(evutil_socket_t fd, short what, void *arg)
{
	struct run *t = arg;

	event_base_loopbreak(t->base);
}

static struct timeval
tv_ms(int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	return tv;
}

static void
run_go(struct run *t)
{
	struct timeval tick = tv_ms(20), hard = tv_ms(HARD_TIMEOUT_MS), c;

	t->ev_tick = event_new(t->base, -1, EV_PERSIST, on_tick, t);
	event_add(t->ev_tick, &tick);
	t->ev_hard = evtimer_new(t->base, on_hard, t);
	event_add(t->ev_hard, &hard);
	if (t->cancel_after_ms > 0) {
		c = tv_ms(t->cancel_after_ms);
		t->ev_cancel = evtimer_new(t->base, on_cancel_timer, t);
		event_add(t->ev_cancel, &c);
	}
	event_base_dispatch(t->base);
	ck_assert_int_eq(t->ndone, 1);
}

static void
info_init(struct tp_activity_info *info, const char *input)
{
	memset(info, 0, sizeof *info);
	info->type = "T";
	info->activity_id = "a-1";
	info->workflow_id = "wf-1";
	info->run_id = "run-1";
	info->workflow_type = "WF";
	info->task_queue = "q";
	info->namespace_ = "default";
	info->attempt = 2;
	info->deadline_ms = 1234;
	info->heartbeat_timeout_ms = 5000;
	info->input = input;
	info->input_len = input ? strlen(input) : 0;
}

/* Run fn (from a plugin or from this file) with input; cancel after cancel_ms (0: never). */
static void
run_fn(struct run *t, tp_activity_fn *fn, const struct tp_activity_info *info, int cancel_ms)
{
	struct tp_activity_callbacks cb = { on_hb, on_log, on_done, t };
	char err[256] = "";

	memset(t, 0, sizeof *t);
	t->base = event_base_new();
	t->cancel_after_ms = cancel_ms;
	t->t_start = tp_now_mono_ms();
	t->r = tp_plugin_start_fn(t->base, fn, 0, info, &cb, err, sizeof err);
	ck_assert_msg(t->r != NULL, "start: %s", err);
	ck_assert_int_eq(tp_plugin_active(), 1);
	run_go(t);
	ck_assert_int_eq(tp_plugin_active(), 0);
}

static void
run_free(struct run *t)
{
	if (t->ev_cancel)
		event_free(t->ev_cancel);
	if (t->ev_tick)
		event_free(t->ev_tick);
	if (t->ev_hard)
		event_free(t->ev_hard);
	tp_plugin_release_base(t->base);
	event_base_free(t->base);
	free(t->result);
	free(t->type);
	free(t->message);
	free(t->details);
	free(t->last_hb);
	for (int i = 0; i < t->nlines; i++)
		free(t->lines[i]);
}

static struct tp_plugin_lib *
open_ok(const char *path)
{
	char err[1024] = "";
	struct tp_plugin_lib *lib = tp_plugin_open(path, err, sizeof err);

	ck_assert_msg(lib != NULL, "%s: %s", path, err);
	return lib;
}

static tp_activity_fn *
fn_of(struct tp_plugin_lib *lib, const char *name)
{
	tp_activity_fn *fn = tp_plugin_find(lib, name);

	ck_assert_msg(fn != NULL, "no function %s", name);
	return fn;
}

/* ---- loading ------------------------------------------------------------------------------------------- */

START_TEST(test_open_good)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	char names[256];

	ck_assert_str_eq(tp_plugin_descriptor(lib)->name, "testplug");
	ck_assert_ptr_nonnull(tp_plugin_find(lib, "echo_input"));
	ck_assert_ptr_null(tp_plugin_find(lib, "nope"));
	tp_plugin_names(lib, names, sizeof names);
	ck_assert_ptr_nonnull(strstr(names, "echo_input, payloads, wait_cancel"));
	tp_plugin_close(lib);
	lib = open_ok(EXAMPLE);
	ck_assert_str_eq(tp_plugin_descriptor(lib)->name, "example");
	ck_assert_ptr_nonnull(tp_plugin_find(lib, "progress"));
	tp_plugin_close(lib);
}
END_TEST

static void
refused(const char *path, const char *needle)
{
	char err[1024] = "";

	ck_assert_ptr_null(tp_plugin_open(path, err, sizeof err));
	ck_assert_msg(strstr(err, needle) != NULL, "%s: \"%s\" lacks \"%s\"", path, err, needle);
}

START_TEST(test_refused)
{
	refused(PLUGIN("bad_abi"), "built for plugin ABI version 999; this tprefork supports version 1");
	refused(PLUGIN("bad_signature"), "build signature \"tprefork-activity/1 ptr=4");
	refused(PLUGIN("no_symbol"), "no symbol 'tprefork_plugin'");
	refused(PLUGIN("no_table"), "no table of activities");
	refused(TP_TEST_BUILDDIR "/tests/plugins/does-not-exist.so", "cannot load:");
	refused(TP_TEST_BUILDDIR "/config.h", "cannot load:");
}
END_TEST

/* ---- configuration checks ------------------------------------------------------------------------------ */

static struct tp_config *
config_with(const char *plugins, const char *activities)
{
	struct tp_config_errors errs;
	char *text = tp_xasprintf("plugins = ( %s );\nactivities = (\n%s\n);\n", plugins, activities);
	struct tp_config *cfg = tp_config_load_string(text, "test.conf", false, &errs);

	ck_assert_msg(cfg != NULL, "config: %s", errs.n ? errs.lines[0] : "?");
	free(text);
	return cfg;
}

static bool
has_line(const struct tp_config_errors *e, const char *a, const char *b)
{
	for (size_t i = 0; i < e->n; i++)
		if (strstr(e->lines[i], a) && (b == NULL || strstr(e->lines[i], b)))
			return true;
	return false;
}

START_TEST(test_check_good)
{
	struct tp_config *cfg = config_with("\"" PLUGIN("testplug") "\", \"" EXAMPLE "\"",
	    "{ type = \"A\"; plugin = \"testplug\"; function = \"echo_input\"; },\n"
	    "{ type = \"B\"; plugin = \"example.so\"; function = \"primes\"; },\n"
	    "{ type = \"echo\"; plugin = \"" EXAMPLE "\"; }");
	struct tp_config_errors errs = { NULL, 0 };

	ck_assert_int_eq(tp_plugin_check_config(cfg, 0, &errs), 0);
	ck_assert_int_eq((int)errs.n, 0);
	ck_assert_str_eq(cfg->activities[2].function, "echo");
	tp_config_free(cfg);
}
END_TEST

START_TEST(test_check_refuses)
{
	struct tp_config *cfg = config_with(
	    "\"" PLUGIN("bad_abi") "\",\n \"" PLUGIN("testplug") "\",\n \"" PLUGIN("no_symbol") "\"",
	    "{ type = \"A\"; plugin = \"testplug\"; function = \"nope\"; },\n"
	    "{ type = \"B\"; plugin = \"bad_abi\"; function = \"nothing\"; }");
	struct tp_config_errors errs = { NULL, 0 };
	int n = tp_plugin_check_config(cfg, 0, &errs);

	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "check: %s\n", errs.lines[i]);
	ck_assert_int_eq(n, 3);
	ck_assert(has_line(&errs, "test.conf:1: plugin '" PLUGIN("bad_abi") "' refused", "ABI version 999"));
	ck_assert(has_line(&errs, "plugin '" PLUGIN("no_symbol") "' refused", "no symbol"));
	ck_assert(has_line(&errs, "test.conf:5: activity 'A': plugin 'testplug' has no function 'nope'",
	    "(it has: echo_input, payloads"));
	tp_config_errors_free(&errs);
	tp_config_free(cfg);
}
END_TEST

START_TEST(test_check_crash_and_hang)
{
	struct tp_config *cfg = config_with("\"" PLUGIN("crash_on_load") "\"",
	    "{ type = \"A\"; plugin = \"crash_on_load\"; function = \"nothing\"; }");
	struct tp_config_errors errs = { NULL, 0 };
	int64_t t0;

	ck_assert_int_eq(tp_plugin_check_config(cfg, 0, &errs), 1);
	ck_assert_msg(has_line(&errs, "plugin '" PLUGIN("crash_on_load") "' refused: crashed while "
	    "loading: signal 11", NULL), "%s", errs.lines[0]);
	tp_config_errors_free(&errs);
	tp_config_free(cfg);

	cfg = config_with("\"" PLUGIN("hang_on_load") "\"",
	    "{ type = \"A\"; plugin = \"hang_on_load\"; function = \"nothing\"; }");
	t0 = tp_now_mono_ms();
	ck_assert_int_eq(tp_plugin_check_config(cfg, 300, &errs), 1);
	ck_assert_int_lt(tp_now_mono_ms() - t0, 3000);
	ck_assert_msg(has_line(&errs, "did not finish loading within 300 ms", NULL), "%s", errs.lines[0]);
	tp_config_errors_free(&errs);
	tp_config_free(cfg);
}
END_TEST

START_TEST(test_config_plugin_names)
{
	struct tp_config_errors errs;
	struct tp_config *cfg;

	cfg = tp_config_load_string("plugins = ( \"" PLUGIN("testplug") "\" );\n"
	    "activities = ( { type = \"A\"; plugin = \"other\"; } );\n", "t.conf", false, &errs);
	ck_assert_ptr_null(cfg);
	ck_assert_int_eq((int)errs.n, 1);
	ck_assert_str_eq(errs.lines[0], "t.conf:2: activity 'A': plugin 'other' is not one of 'plugins'");
	tp_config_errors_free(&errs);
	cfg = tp_config_load_string("plugins = ( \"/nonexistent/x.so\" );\n"
	    "activities = ( { type = \"A\"; plugin = \"x\"; cwd = \"/\"; } );\n", "t.conf", false, &errs);
	ck_assert_ptr_null(cfg);
	ck_assert(has_line(&errs, "t.conf:1: plugin '/nonexistent/x.so': No such file", NULL));
	ck_assert(has_line(&errs, "t.conf:2: activity 'A': 'cwd' applies to exec activities only", NULL));
	tp_config_errors_free(&errs);
}
END_TEST

START_TEST(test_load_config_and_start)
{
	struct tp_config *cfg = config_with("\"" PLUGIN("testplug") "\"",
	    "{ type = \"A\"; plugin = \"testplug\"; function = \"echo_input\"; },\n"
	    "{ type = \"B\"; plugin = \"testplug\"; function = \"missing\"; }");
	struct tp_config_errors errs = { NULL, 0 };
	struct tp_activity_callbacks cb;
	struct tp_activity_info info;
	struct run t;
	char err[256] = "";

	ck_assert_int_eq(tp_plugin_load_config(cfg, &errs), 1);
	ck_assert(has_line(&errs, "has no function 'missing'", NULL));
	tp_config_errors_free(&errs);
	info_init(&info, "[1,\"two\"]");
	memset(&t, 0, sizeof t);
	t.base = event_base_new();
	cb = (struct tp_activity_callbacks){ on_hb, on_log, on_done, &t };
	ck_assert_ptr_null(tp_plugin_start(t.base, &cfg->activities[1], &info, &cb, err, sizeof err));
	ck_assert_ptr_nonnull(strstr(err, "has no function 'missing'"));
	t.r = tp_plugin_start(t.base, &cfg->activities[0], &info, &cb, err, sizeof err);
	ck_assert_msg(t.r != NULL, "%s", err);
	ck_assert_int_eq(tp_plugin_unload_all(), -1);  /* a run is active */
	run_go(&t);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "[1,\"two\"]");
	ck_assert_int_eq(tp_plugin_unload_all(), 0);
	run_free(&t);
	tp_config_free(cfg);
}
END_TEST

/* ---- runs ----------------------------------------------------------------------------------------------- */

static pthread_t main_thread, fn_thread;

static void
slow_fn(tp_activity_handle *h)
{
	fn_thread = pthread_self();
	tp_activity_sleep(h, 300);
	tp_activity_set_result(h, "\"slept\"");
}

START_TEST(test_runs_on_own_thread)
{
	struct tp_activity_info info;
	struct run t;

	main_thread = pthread_self();
	info_init(&info, "[]");
	run_fn(&t, slow_fn, &info, 0);
	ck_assert(!pthread_equal(main_thread, fn_thread));
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "\"slept\"");
	ck_assert_msg(t.ticks >= 5, "the loop ticked only %d times in 300 ms", t.ticks);
	ck_assert_int_ge(t.t_done - t.t_start, 290);
	run_free(&t);
}
END_TEST

START_TEST(test_info_and_payloads)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	struct tp_activity_payload p[2] = { { "\"a\"", 3, "json/plain" }, { "raw\001", 4, "binary/plain" } };
	struct tp_activity_info info;
	struct run t;

	info_init(&info, NULL);
	info.heartbeat_details = "{\"done\":3}";
	info.payloads = p;
	info.npayloads = 2;
	run_fn(&t, fn_of(lib, "info"), &info, 0);
	ck_assert_str_eq(t.result, "{\"activity_type\":\"T\",\"activity_id\":\"a-1\",\"workflow_id\":\"wf-1\","
	    "\"workflow_run_id\":\"run-1\",\"workflow_type\":\"WF\",\"task_queue\":\"q\","
	    "\"namespace\":\"default\",\"attempt\":2,\"deadline_ms\":1234,\"heartbeat_timeout_ms\":5000,"
	    "\"heartbeat_details\":\"{\\\"done\\\":3}\"}");
	run_free(&t);
	run_fn(&t, fn_of(lib, "payloads"), &info, 0);
	ck_assert_str_eq(t.result, "[{\"encoding\":\"json/plain\",\"len\":3,\"text\":\"\\\"a\\\"\"},"
	    "{\"encoding\":\"binary/plain\",\"len\":4,\"text\":\"raw\\u0001\"},true]");
	run_free(&t);
	tp_plugin_close(lib);
}
END_TEST

START_TEST(test_heartbeats_coalesce)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	struct tp_activity_info info;
	struct run t;

	info_init(&info, "[200000, 0]");
	run_fn(&t, fn_of(lib, "hb_storm"), &info, 0);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "{\"records\":200000}");
	ck_assert_str_eq(t.last_hb, "{\"n\":200000}");  /* the newest details always arrive */
	ck_assert_int_ge(t.heartbeats, 1);
	ck_assert_msg(t.heartbeats < 200000, "%d heartbeats reached the loop", t.heartbeats);
	fprintf(stderr, "hb_storm: 200000 records -> %d loop wake-ups with details\n", t.heartbeats);
	run_free(&t);
	tp_plugin_close(lib);
}
END_TEST

START_TEST(test_cancel_reaches_function)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	char marker[] = "/tmp/tp-plugin-test-XXXXXX", text[128] = "";
	struct tp_activity_info info;
	struct run t;
	char *input;
	FILE *f;
	int fd = mkstemp(marker);

	ck_assert_int_ge(fd, 0);
	close(fd);
	input = tp_xasprintf("[\"%s\", 1000, 20000]", marker);
	info_init(&info, input);
	run_fn(&t, fn_of(lib, "wait_cancel"), &info, 200);
	ck_assert_int_eq(t.kind, TP_OUTCOME_FAILED);
	ck_assert_str_eq(t.type, "Cancelled");
	ck_assert(t.cancelled);
	ck_assert_msg(t.t_done - t.t_cancel < 200, "done %lld ms after the cancel",
	    (long long)(t.t_done - t.t_cancel));
	f = fopen(marker, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(text, sizeof text, f));
	fclose(f);
	ck_assert_msg(strstr(text, " sleep") != NULL, "marker: %s", text);
	ck_assert_str_eq(t.last_hb, "{\"i\":0}");
	unlink(marker);
	free(input);
	run_free(&t);
	tp_plugin_close(lib);
}
END_TEST

START_TEST(test_cancel_ignored)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	struct tp_activity_info info;
	struct run t;

	info_init(&info, "[400]");
	run_fn(&t, fn_of(lib, "ignore_cancel"), &info, 50);
	/* A thread cannot be stopped: done comes when the function returns, with its outcome. */
	ck_assert_int_ge(t.t_done - t.t_start, 390);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "{\"saw_cancel\":true}");
	ck_assert(t.cancelled);
	run_free(&t);
	tp_plugin_close(lib);
}
END_TEST

START_TEST(test_log_queue_bounded)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	struct tp_activity_info info;
	struct run t;

	info_init(&info, "[5000]");
	run_fn(&t, fn_of(lib, "log_lines"), &info, 0);
	/* Every line either reached the loop or was counted as dropped; the queue stays bounded. */
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_ptr_null(t.result);
	ck_assert_int_ge(t.all_lines, 1);
	ck_assert_int_eq((long)t.all_lines + (long)t.dropped, 5000);
	ck_assert_str_eq(t.lines[0], "line 1");
	fprintf(stderr, "log_lines: 5000 lines -> %d delivered, %lu dropped\n", t.all_lines, t.dropped);
	run_free(&t);
	tp_plugin_close(lib);
}
END_TEST

static void
returns_nothing_fn(tp_activity_handle *h)
{
	(void)h;
}

START_TEST(test_no_outcome_completes_empty)
{
	struct tp_activity_info info;
	struct run t;

	info_init(&info, "[]");
	run_fn(&t, returns_nothing_fn, &info, 0);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_ptr_null(t.result);
	ck_assert(!t.cancelled);
	run_free(&t);
}
END_TEST

/* ---- the example plugin --------------------------------------------------------------------------------- */

START_TEST(test_example_progress_resumes)
{
	struct tp_plugin_lib *lib = open_ok(EXAMPLE);
	struct tp_activity_info info;
	struct run t;

	info_init(&info, "[5, 10]");
	info.heartbeat_details = "{\"done\":3}";
	run_fn(&t, fn_of(lib, "progress"), &info, 0);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "{\"steps\":5,\"resumed_from\":3,\"attempt\":2}");
	ck_assert_str_eq(t.last_hb, "{\"done\":5}");
	run_free(&t);
	info_init(&info, "[1000, 10]");
	run_fn(&t, fn_of(lib, "progress"), &info, 100);
	ck_assert_int_eq(t.kind, TP_OUTCOME_FAILED);
	ck_assert(t.cancelled);
	run_free(&t);
	info_init(&info, "[100000]");
	run_fn(&t, fn_of(lib, "primes"), &info, 0);
	ck_assert_str_eq(t.result, "9592");
	run_free(&t);
	info_init(&info, "[\"nope\", true]");
	run_fn(&t, fn_of(lib, "fail"), &info, 0);
	ck_assert_str_eq(t.type, "ExampleError");
	ck_assert_str_eq(t.message, "nope");
	ck_assert(t.non_retryable);
	ck_assert_str_eq(t.details, "[{\"input\":[\"nope\",true]}]");
	run_free(&t);
	tp_plugin_close(lib);
}
END_TEST

/* ---- the pool of threads ------------------------------------------------------------------------- */

#define SLOTS 64

/* What a run of slot_fn saw on its thread, by slot (its activity id). Written by the pool thread
 * before the function returns, read by the loop after done. */
static pid_t slot_tid[SLOTS];
static bool  slot_masked[SLOTS];   /* every blockable signal blocked */
static bool  slot_flag_clear[SLOTS];  /* the cancel flag was clear when the function started */

/* Record the thread, then sleep the input's ms ("[ms]") and complete with the sleep's return code;
 * a cancelled sleep returns without an outcome (reported as cancelled). */
static void
slot_fn(tp_activity_handle *h)
{
	const struct tp_activity_task *task = tp_activity_task(h);
	int slot = atoi(task->activity_id), ms = atoi(task->input_json + 1), rc = 0;
	sigset_t mask;
	char res[16];

	slot_tid[slot] = (pid_t)syscall(SYS_gettid);
	slot_flag_clear[slot] = !tp_activity_is_cancelled(h);
	pthread_sigmask(SIG_SETMASK, NULL, &mask);
	slot_masked[slot] = sigismember(&mask, SIGTERM) && sigismember(&mask, SIGINT) &&
	    sigismember(&mask, SIGCHLD) && sigismember(&mask, SIGUSR1) && sigismember(&mask, SIGHUP);
	if (ms > 0)
		rc = tp_activity_sleep(h, ms);
	if (rc == TP_ACTIVITY_ECANCELLED)
		return;
	snprintf(res, sizeof res, "%d", rc);
	tp_activity_set_result(h, res);
}

struct multi;

struct slot {
	struct multi         *m;
	struct tp_plugin_run *r;
	int                   ndone;
	enum tp_outcome_kind  kind;
	bool                  cancelled;
	bool                  has_result;
	int64_t               t_done;
};

/* Several runs on one event base. */
struct multi {
	struct event_base    *base;
	struct slot           slots[SLOTS];
	int                   want, ndone;
};

static void
multi_done(void *arg, const struct tp_activity_outcome *o)
{
	struct slot *s = arg;

	s->ndone++;
	s->kind = o->kind;
	s->cancelled = o->cancelled;
	s->has_result = o->result != NULL && strcmp(o->result, "0") == 0;
	s->t_done = tp_now_mono_ms();
	if (++s->m->ndone == s->m->want)
		event_base_loopbreak(s->m->base);
}

static void
multi_init(struct multi *m)
{
	memset(m, 0, sizeof *m);
	m->base = event_base_new();
}

/* For the next runs on the same base. */
static void
multi_again(struct multi *m)
{
	m->want = m->ndone = 0;
}

/* Start slot_fn in slot i, sleeping ms; flags as for tp_plugin_start_fn. */
static void
multi_start_flags(struct multi *m, int i, int ms, unsigned flags)
{
	struct slot *s = &m->slots[i];
	struct tp_activity_callbacks cb = { NULL, NULL, multi_done, s };
	struct tp_activity_info info;
	char id[16], input[32], err[256] = "";

	snprintf(id, sizeof id, "%d", i);
	snprintf(input, sizeof input, "[%d]", ms);
	info_init(&info, input);
	info.activity_id = id;
	memset(s, 0, sizeof *s);
	s->m = m;
	slot_tid[i] = 0;
	slot_masked[i] = slot_flag_clear[i] = false;
	s->r = tp_plugin_start_fn(m->base, slot_fn, flags, &info, &cb, err, sizeof err);
	ck_assert_msg(s->r != NULL, "start: %s", err);
	m->want++;
}

static void
multi_start(struct multi *m, int i, int ms)
{
	multi_start_flags(m, i, ms, 0);
}

static void
multi_on_hard(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

/* Run the loop until every run started is done. */
static void
multi_wait(struct multi *m)
{
	struct event *hard = evtimer_new(m->base, multi_on_hard, m->base);
	struct timeval tv = tv_ms(HARD_TIMEOUT_MS);

	event_add(hard, &tv);
	if (m->ndone < m->want)
		event_base_dispatch(m->base);
	event_free(hard);
	ck_assert_int_eq(m->ndone, m->want);
	for (int i = 0; i < SLOTS; i++)
		if (m->slots[i].m != NULL)
			ck_assert_int_eq(m->slots[i].ndone, 1);
}

static void
multi_free(struct multi *m)
{
	tp_plugin_release_base(m->base);
	event_base_free(m->base);
}

static int
distinct_tids(const pid_t *tids, int n)
{
	int d = 0;

	for (int i = 0; i < n; i++) {
		int j;
		for (j = 0; j < i && tids[j] != tids[i]; j++)
			;
		d += j == i;
	}
	return d;
}

static bool
thread_exists(pid_t tid)
{
	char path[64];
	struct stat st;

	snprintf(path, sizeof path, "/proc/self/task/%d", (int)tid);
	return stat(path, &st) == 0;
}

/* Has the thread gone within ms? (A joined thread's task may linger an instant after the join.) */
static bool
thread_gone(pid_t tid, int ms)
{
	int64_t t0 = tp_now_mono_ms();

	while (thread_exists(tid) && tp_now_mono_ms() - t0 < ms)
		usleep(5000);
	return !thread_exists(tid);
}

/* Sequential runs, on a new base each and on one base, reuse one thread: a thread is idle again
 * before the loop learns that its run returned, and the next run takes the most recently idle. */
START_TEST(test_pool_reuses_threads)
{
	pid_t tids[2 * SLOTS], self = (pid_t)syscall(SYS_gettid);
	struct multi m;
	int n = 0;

	for (int i = 0; i < SLOTS; i++) {  /* a new base (and notifier) for every run */
		multi_init(&m);
		multi_start(&m, 0, 0);
		multi_wait(&m);
		ck_assert_int_eq(m.slots[0].kind, TP_OUTCOME_COMPLETED);
		ck_assert(m.slots[0].has_result);
		ck_assert(slot_masked[0]);
		tids[n++] = slot_tid[0];
		multi_free(&m);
	}
	multi_init(&m);
	for (int i = 0; i < SLOTS; i++) {  /* one base for every run */
		multi_again(&m);
		multi_start(&m, 0, 0);
		multi_wait(&m);
		ck_assert(m.slots[0].has_result);
		ck_assert(slot_masked[0]);
		tids[n++] = slot_tid[0];
	}
	multi_free(&m);
	for (int i = 0; i < n; i++)
		ck_assert_int_ne(tids[i], self);
	ck_assert_msg(distinct_tids(tids, n) == 1, "%d sequential runs used %d threads", n,
	    distinct_tids(tids, n));
	ck_assert_int_eq(tp_plugin_active(), 0);
}
END_TEST

/* K blocking runs at once get K threads and finish together; K more then reuse the same K. */
START_TEST(test_pool_concurrent_runs)
{
	enum { K = 8 };
	pid_t first[K];
	struct multi m;
	int64_t t0;

	multi_init(&m);
	t0 = tp_now_mono_ms();
	for (int i = 0; i < K; i++)
		multi_start(&m, i, 300);
	ck_assert_int_eq(tp_plugin_active(), K);
	multi_wait(&m);
	ck_assert_msg(tp_now_mono_ms() - t0 < 1500, "%d runs of 300 ms took %lld ms", K,
	    (long long)(tp_now_mono_ms() - t0));
	for (int i = 0; i < K; i++) {
		ck_assert_int_eq(m.slots[i].kind, TP_OUTCOME_COMPLETED);
		ck_assert(m.slots[i].has_result);
		ck_assert(slot_masked[i]);
		ck_assert_int_ge(m.slots[i].t_done - t0, 290);
	}
	ck_assert_int_eq(distinct_tids(slot_tid, K), K);
	memcpy(first, slot_tid, sizeof first);

	multi_again(&m);
	for (int i = 0; i < K; i++)
		multi_start(&m, i, 50);
	multi_wait(&m);
	ck_assert_int_eq(distinct_tids(slot_tid, K), K);
	for (int i = 0; i < K; i++) {
		bool known = false;
		for (int j = 0; j < K; j++)
			known = known || slot_tid[i] == first[j];
		ck_assert_msg(known, "run %d got a new thread while %d were idle", i, K);
		ck_assert(m.slots[i].has_result);
	}
	ck_assert_int_eq(tp_plugin_active(), 0);
	multi_free(&m);
}
END_TEST

static void
multi_cancel_timer(evutil_socket_t fd, short what, void *arg)
{
	tp_plugin_cancel(arg);
}

/* A sleeping run on a reused thread is cancelled at once; the next run on that thread starts with a
 * clear flag and sleeps its full time. */
START_TEST(test_pool_cancel_reused_thread)
{
	struct timeval tv = tv_ms(200);
	struct multi m;
	struct event *c;
	pid_t tid;
	int64_t t0;

	multi_init(&m);
	multi_start(&m, 0, 0);
	multi_wait(&m);
	tid = slot_tid[0];

	multi_again(&m);
	multi_start(&m, 1, 20000);
	c = evtimer_new(m.base, multi_cancel_timer, m.slots[1].r);
	event_add(c, &tv);
	t0 = tp_now_mono_ms();
	multi_wait(&m);
	event_free(c);
	ck_assert_int_eq(slot_tid[1], tid);
	ck_assert(slot_flag_clear[1]);
	ck_assert_int_eq(m.slots[1].kind, TP_OUTCOME_FAILED);
	ck_assert(m.slots[1].cancelled);
	ck_assert_msg(m.slots[1].t_done - t0 < 1000, "cancelled after %lld ms",
	    (long long)(m.slots[1].t_done - t0));

	multi_again(&m);
	t0 = tp_now_mono_ms();
	multi_start(&m, 2, 100);
	multi_wait(&m);
	ck_assert_int_eq(slot_tid[2], tid);
	ck_assert(slot_flag_clear[2]);
	ck_assert_int_eq(m.slots[2].kind, TP_OUTCOME_COMPLETED);
	ck_assert(!m.slots[2].cancelled);
	ck_assert(m.slots[2].has_result);  /* the sleep returned TP_ACTIVITY_OK */
	ck_assert_int_ge(m.slots[2].t_done - t0, 95);
	multi_free(&m);
}
END_TEST

/* An idle thread exits after the idle timeout, a busy one does not; the pool works on after, and
 * stopping it ends its idle threads. */
START_TEST(test_pool_idle_expiry)
{
	struct multi m;
	pid_t tid;
	int64_t t0;

	tp_plugin_set_idle_timeout(300);
	multi_init(&m);
	multi_start(&m, 0, 600);  /* longer than the idle timeout: only idle time counts */
	multi_wait(&m);
	ck_assert_int_eq(m.slots[0].kind, TP_OUTCOME_COMPLETED);
	ck_assert(m.slots[0].has_result);
	tid = slot_tid[0];
	ck_assert(thread_exists(tid));  /* idle, not gone yet */
	t0 = tp_now_mono_ms();
	ck_assert_msg(thread_gone(tid, 5000), "the idle thread %d is still there after 5 s", (int)tid);
	ck_assert_int_ge(tp_now_mono_ms() - t0, 150);

	tp_plugin_set_idle_timeout(0);  /* 30 s: from here on, only pool_stop ends a thread */
	multi_again(&m);  /* a new thread (the exited one is joined on the way) */
	multi_start(&m, 1, 0);
	multi_wait(&m);
	ck_assert(m.slots[1].has_result);
	ck_assert(slot_masked[1]);
	ck_assert(thread_exists(slot_tid[1]));
	ck_assert_int_eq(tp_plugin_unload_all(), 0);  /* stops the pool */
	ck_assert_msg(thread_gone(slot_tid[1], 1000), "the idle thread outlived the pool");
	multi_free(&m);
}
END_TEST

/* Runs on two event bases at once each report to their own loop; a base released and freed while
 * another one's run is active, and a new base (perhaps at the same address), get notifiers of their
 * own. */
START_TEST(test_pool_two_bases)
{
	struct multi a, b;

	multi_init(&a);
	multi_init(&b);
	multi_start(&a, 0, 1000);
	multi_start(&b, 1, 0);
	multi_wait(&b);  /* b's run is done while a's still sleeps */
	ck_assert_int_eq(a.ndone, 0);
	ck_assert_int_eq(tp_plugin_active(), 1);
	multi_free(&b);
	multi_init(&b);
	multi_start(&b, 2, 0);
	multi_wait(&b);
	ck_assert(b.slots[2].has_result);
	ck_assert_int_eq(a.ndone, 0);
	multi_wait(&a);
	ck_assert_int_eq(a.slots[0].kind, TP_OUTCOME_COMPLETED);
	ck_assert(a.slots[0].has_result);
	ck_assert_int_ne(slot_tid[0], slot_tid[1]);
	ck_assert_int_eq(slot_tid[2], slot_tid[1]);  /* the idle thread, not a new one */
	ck_assert_int_eq(tp_plugin_active(), 0);
	multi_free(&a);
	multi_free(&b);
}
END_TEST

/* ---- inline runs -------------------------------------------------------------------------------- */

/* The threads of this process. */
static int
task_count(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* What the inline functions below saw (they run on the test's thread). */
static int     inline_calls;
static pid_t   inline_tid;
static int     inline_saw_cancel, inline_hb_rc, inline_sleep_rc;
static int64_t inline_sleep_ms;

static void
inline_reset(void)
{
	inline_calls = 0;
	inline_tid = 0;
	inline_saw_cancel = inline_hb_rc = inline_sleep_rc = 0;
	inline_sleep_ms = -1;
	fn_thread = (pthread_t)0;
}

/* Record the thread, log a line, heartbeat twice, complete with the input. */
static void
inline_echo_fn(tp_activity_handle *h)
{
	inline_calls++;
	inline_tid = (pid_t)syscall(SYS_gettid);
	fn_thread = pthread_self();
	tp_activity_log(h, "inline line");
	tp_activity_heartbeat(h, "{\"n\":1}");
	tp_activity_heartbeat(h, "{\"n\":2}");
	tp_activity_set_result(h, tp_activity_task(h)->input_json);
}

/* Look at the flag and heartbeat; without a cancellation, complete. */
static void
inline_cancel_fn(tp_activity_handle *h)
{
	inline_calls++;
	inline_saw_cancel = tp_activity_is_cancelled(h);
	inline_hb_rc = tp_activity_heartbeat(h, "{\"at\":\"cancel\"}");
	if (!inline_saw_cancel)
		tp_activity_set_result(h, "\"not cancelled\"");
}

/* Try to sleep 5 s. */
static void
inline_sleep_fn(tp_activity_handle *h)
{
	int64_t t0 = tp_now_mono_ms();

	inline_calls++;
	inline_sleep_rc = tp_activity_sleep(h, 5000);
	inline_sleep_ms = tp_now_mono_ms() - t0;
	tp_activity_set_result(h, "1");
}

static void
inline_init(struct run *t)
{
	memset(t, 0, sizeof *t);
	t->base = event_base_new();
	t->t_start = tp_now_mono_ms();
}

static struct tp_plugin_run *
inline_start_cb(struct run *t, tp_activity_fn *fn, const struct tp_activity_info *info,
    void (*done)(void *, const struct tp_activity_outcome *))
{
	struct tp_activity_callbacks cb = { on_hb, on_log, done, t };
	struct tp_plugin_run *r;
	char err[256] = "";

	r = tp_plugin_start_fn(t->base, fn, TP_PLUGIN_RUN_INLINE, info, &cb, err, sizeof err);
	ck_assert_msg(r != NULL, "start: %s", err);
	return r;
}

static void
inline_start(struct run *t, tp_activity_fn *fn, const struct tp_activity_info *info)
{
	t->r = inline_start_cb(t, fn, info, on_done);
}

/* One turn of the loop, without waiting: everything an inline run does happens in it. */
static void
one_turn(struct event_base *base)
{
	ck_assert_int_ge(event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), 0);
}

/* The function is not called from the start, but in the next loop turn, on the loop's thread, with
 * no pool thread made; its log line, its newest details and its outcome arrive in that turn, in that
 * order. */
START_TEST(test_inline_runs_in_one_loop_turn)
{
	pid_t self = (pid_t)syscall(SYS_gettid);
	int threads = task_count();
	struct tp_activity_info info;
	struct run t;

	main_thread = pthread_self();
	inline_reset();
	info_init(&info, "[1,\"two\"]");
	inline_init(&t);
	inline_start(&t, inline_echo_fn, &info);
	ck_assert_int_eq(inline_calls, 0);
	ck_assert_int_eq(t.ndone, 0);
	ck_assert_int_eq(tp_plugin_active(), 1);
	one_turn(t.base);
	ck_assert_int_eq(inline_calls, 1);
	ck_assert_int_eq(t.ndone, 1);
	ck_assert(pthread_equal(fn_thread, main_thread));
	ck_assert_int_eq(inline_tid, self);
	ck_assert_int_eq(task_count(), threads);
	ck_assert_int_eq(tp_plugin_active(), 0);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "[1,\"two\"]");
	ck_assert(!t.cancelled);
	ck_assert_int_eq(t.heartbeats, 1);  /* the newest details only */
	ck_assert_str_eq(t.last_hb, "{\"n\":2}");
	ck_assert_int_eq(t.nlines, 1);
	ck_assert_str_eq(t.lines[0], "inline line");
	ck_assert_int_eq(t.log_event, 1);
	ck_assert_int_eq(t.hb_event, 2);
	ck_assert_int_eq(t.done_event, 3);
	run_free(&t);
}
END_TEST

static void
on_start_inline(evutil_socket_t fd, short what, void *arg)
{
	struct multi *m = arg;

	multi_start(m, 0, 300);  /* a pool run, to show the inline ones do not wait for it */
	for (int i = 1; i < SLOTS; i++)
		multi_start_flags(m, i, 0, TP_PLUGIN_RUN_INLINE);
}

/* Runs started from a callback complete in the same loop iteration (all of them, queued behind one
 * activation), on the loop's thread, while a pool run on the same base goes on. */
START_TEST(test_inline_same_iteration_as_start)
{
	pid_t self = (pid_t)syscall(SYS_gettid);
	struct multi m;
	struct event *starter;

	multi_init(&m);
	starter = event_new(m.base, -1, 0, on_start_inline, &m);
	event_active(starter, EV_TIMEOUT, 0);
	one_turn(m.base);
	ck_assert_int_eq(m.want, SLOTS);
	ck_assert_int_eq(m.ndone, SLOTS - 1);
	ck_assert_int_eq(m.slots[0].ndone, 0);
	ck_assert_int_eq(tp_plugin_active(), 1);
	for (int i = 1; i < SLOTS; i++) {
		ck_assert_int_eq(m.slots[i].ndone, 1);
		ck_assert_int_eq(m.slots[i].kind, TP_OUTCOME_COMPLETED);
		ck_assert(m.slots[i].has_result);
		ck_assert_int_eq(slot_tid[i], self);
		ck_assert(slot_flag_clear[i]);
	}
	multi_wait(&m);
	ck_assert(m.slots[0].has_result);
	ck_assert_int_ne(slot_tid[0], self);
	ck_assert_int_eq(tp_plugin_active(), 0);
	event_free(starter);
	multi_free(&m);
}
END_TEST

/* One run of fn, to its outcome: on a pool thread, or inline (then within a single loop turn). */
static void
run_mode(struct run *t, tp_activity_fn *fn, const struct tp_activity_info *info, bool inl)
{
	if (!inl) {
		run_fn(t, fn, info, 0);
		return;
	}
	inline_init(t);
	inline_start(t, fn, info);
	one_turn(t->base);
	ck_assert_int_eq(t->ndone, 1);
}

/* Failures, the API's error returns and log lines, on a pool thread and inline; inline,
 * tp_activity_sleep refuses to block the loop (TP_ACTIVITY_ESTATE at once). */
static void
check_failure_and_api(bool inl)
{
	struct tp_plugin_lib *lib = open_ok(PLUGIN("testplug"));
	const char *const want[] = { "heartbeat_bad_json=-2", "heartbeat_null=0", "heartbeat_ok=0",
		"result_bad_json=-2", "failure_bad_details=-2", "cancelled=0", inl ? "sleep=-3" : "sleep=0",
		"result_ok=0", "result_again=-3", "failure_after_result=-3" };
	struct tp_activity_info info;
	struct run t;

	info_init(&info, "[\"MyError\", \"it broke\", true, [1, {\"k\": \"v\"}]]");
	run_mode(&t, fn_of(lib, "fail_typed"), &info, inl);
	ck_assert_int_eq(t.kind, TP_OUTCOME_FAILED);
	ck_assert_str_eq(t.type, "MyError");
	ck_assert_str_eq(t.message, "it broke");
	ck_assert(t.non_retryable);
	ck_assert(!t.cancelled);
	ck_assert_str_eq(t.details, "[1,{\"k\":\"v\"}]");
	run_free(&t);

	info_init(&info, "[null, null, false]");
	run_mode(&t, fn_of(lib, "fail_typed"), &info, inl);
	ck_assert_str_eq(t.type, "PluginFailed");
	ck_assert_str_eq(t.message, "");
	ck_assert_ptr_null(t.details);
	run_free(&t);

	info_init(&info, "[]");
	run_mode(&t, fn_of(lib, "api_checks"), &info, inl);
	ck_assert_int_eq(t.nlines, 10);
	for (int i = 0; i < 10; i++)
		ck_assert_str_eq(t.lines[i], want[i]);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, " 1 ");
	ck_assert_str_eq(t.last_hb, "{\"x\":1}");
	if (inl)
		ck_assert_int_lt(t.hb_event, t.done_event);
	run_free(&t);
	tp_plugin_close(lib);
}

START_TEST(test_failure_and_api_errors)
{
	check_failure_and_api(false);
}
END_TEST

START_TEST(test_inline_failure_and_api)
{
	check_failure_and_api(true);
}
END_TEST

START_TEST(test_inline_sleep_does_not_block)
{
	struct tp_activity_info info;
	struct run t;

	inline_reset();
	info_init(&info, "[]");
	inline_init(&t);
	inline_start(&t, inline_sleep_fn, &info);
	one_turn(t.base);
	ck_assert_int_eq(t.ndone, 1);
	ck_assert_int_eq(inline_sleep_rc, TP_ACTIVITY_ESTATE);
	ck_assert_msg(inline_sleep_ms >= 0 && inline_sleep_ms < 100, "the sleep took %lld ms",
	    (long long)inline_sleep_ms);
	ck_assert_int_lt(t.t_done - t.t_start, 1000);
	ck_assert_str_eq(t.result, "1");
	run_free(&t);
}
END_TEST

/* A cancel between the start and the loop's turn: the function sees the flag (and heartbeat says
 * so), and the outcome is the cancellation. */
START_TEST(test_inline_cancel_before_turn)
{
	struct tp_activity_info info;
	struct run t;

	inline_reset();
	info_init(&info, "[]");
	inline_init(&t);
	inline_start(&t, inline_cancel_fn, &info);
	tp_plugin_cancel(t.r);
	tp_plugin_cancel(t.r);  /* idempotent */
	ck_assert_int_eq(inline_calls, 0);
	one_turn(t.base);
	ck_assert_int_eq(inline_calls, 1);
	ck_assert_int_eq(inline_saw_cancel, 1);
	ck_assert_int_eq(inline_hb_rc, TP_ACTIVITY_ECANCELLED);
	ck_assert_int_eq(t.ndone, 1);
	ck_assert_int_eq(t.kind, TP_OUTCOME_FAILED);
	ck_assert_str_eq(t.type, "Cancelled");
	ck_assert(t.cancelled);
	ck_assert_str_eq(t.last_hb, "{\"at\":\"cancel\"}");  /* recorded details still arrive */
	ck_assert_int_eq(tp_plugin_active(), 0);
	run_free(&t);

	inline_reset();  /* and without a cancel, the same function completes */
	inline_init(&t);
	inline_start(&t, inline_cancel_fn, &info);
	one_turn(t.base);
	ck_assert_int_eq(inline_saw_cancel, 0);
	ck_assert_int_eq(inline_hb_rc, TP_ACTIVITY_OK);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "\"not cancelled\"");
	run_free(&t);
}
END_TEST

static void
on_done_release(void *arg, const struct tp_activity_outcome *o)
{
	struct run *t = arg;

	on_done(arg, o);
	tp_plugin_release_base(t->base);
}

/* Queued runs whose base is released before their turn are dropped: never called, never reported,
 * freed (valgrind), not counted as active; also when the release comes from the done callback of an
 * earlier run of the same turn. */
START_TEST(test_inline_dropped_with_its_base)
{
	struct tp_activity_info info;
	struct run t, b, c;

	inline_reset();
	info_init(&info, "[\"x\"]");
	inline_init(&t);
	inline_start(&t, inline_echo_fn, &info);
	tp_plugin_cancel(inline_start_cb(&t, inline_cancel_fn, &info, on_done));
	inline_start(&t, inline_echo_fn, &info);
	ck_assert_int_eq(tp_plugin_active(), 3);
	run_free(&t);  /* releases and frees the base before its loop ran */
	ck_assert_int_eq(tp_plugin_active(), 0);
	ck_assert_int_eq(inline_calls, 0);
	ck_assert_int_eq(t.ndone, 0);

	inline_reset();
	inline_init(&t);
	b = c = t;
	t.r = inline_start_cb(&t, inline_echo_fn, &info, on_done_release);
	b.r = inline_start_cb(&b, inline_echo_fn, &info, on_done);
	c.r = inline_start_cb(&c, inline_cancel_fn, &info, on_done);
	ck_assert_int_eq(tp_plugin_active(), 3);
	one_turn(t.base);
	ck_assert_int_eq(t.ndone, 1);
	ck_assert_int_eq(inline_calls, 1);
	ck_assert_int_eq(b.ndone + c.ndone, 0);
	ck_assert_int_eq(tp_plugin_active(), 0);
	tp_plugin_release_base(t.base);  /* released already: a no-op */
	event_base_free(t.base);
	t.base = NULL;
	free(t.result);
	free(t.last_hb);
	for (int i = 0; i < t.nlines; i++)
		free(t.lines[i]);

	/* A new base (perhaps at the same address) gets a notifier of its own. */
	inline_reset();
	inline_init(&t);
	inline_start(&t, inline_echo_fn, &info);
	one_turn(t.base);
	ck_assert_int_eq(t.ndone, 1);
	ck_assert_str_eq(t.result, "[\"x\"]");
	run_free(&t);
}
END_TEST

/* `inline = true` in the configuration: tp_activity_start runs the function on the loop thread. */
START_TEST(test_inline_from_config)
{
	struct tp_config *cfg = config_with("\"" PLUGIN("testplug") "\"",
	    "{ type = \"A\"; plugin = \"testplug\"; function = \"echo_input\"; inline = true; },\n"
	    "{ type = \"B\"; plugin = \"testplug\"; function = \"echo_input\"; }");
	struct tp_config_errors errs = { NULL, 0 };
	struct tp_activity_callbacks cb;
	struct tp_activity_info info;
	struct tp_activity_run *ar;
	int threads;
	struct run t;
	char err[256] = "";

	ck_assert(cfg->activities[0].inline_run);
	ck_assert(!cfg->activities[1].inline_run);
	ck_assert_int_eq(tp_plugin_load_config(cfg, &errs), 0);
	threads = task_count();
	info_init(&info, "[3]");
	inline_init(&t);
	cb = (struct tp_activity_callbacks){ on_hb, on_log, on_done, &t };
	ar = tp_activity_start(t.base, &cfg->activities[0], &info, &cb, err, sizeof err);
	ck_assert_msg(ar != NULL, "%s", err);
	ck_assert_int_eq(t.ndone, 0);
	one_turn(t.base);
	ck_assert_int_eq(t.ndone, 1);
	ck_assert_int_eq(t.kind, TP_OUTCOME_COMPLETED);
	ck_assert_str_eq(t.result, "[3]");
	ck_assert_int_eq(task_count(), threads);
	run_free(&t);
	tp_config_free(cfg);
}
END_TEST

/* After each test: stop the pool (join its threads) and close the registry, as a worker does at exit,
 * so that leak checkers see no thread left. */
static void
teardown(void)
{
	tp_plugin_set_idle_timeout(0);
	ck_assert_int_eq(tp_plugin_unload_all(), 0);
}

static Suite *
plugin_suite(void)
{
	Suite *s = suite_create("plugin");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_checked_fixture(tc, NULL, teardown);
	tcase_add_test(tc, test_open_good);
	tcase_add_test(tc, test_refused);
	tcase_add_test(tc, test_check_good);
	tcase_add_test(tc, test_check_refuses);
	tcase_add_test(tc, test_check_crash_and_hang);
	tcase_add_test(tc, test_config_plugin_names);
	tcase_add_test(tc, test_load_config_and_start);
	tcase_add_test(tc, test_runs_on_own_thread);
	tcase_add_test(tc, test_info_and_payloads);
	tcase_add_test(tc, test_heartbeats_coalesce);
	tcase_add_test(tc, test_cancel_reaches_function);
	tcase_add_test(tc, test_cancel_ignored);
	tcase_add_test(tc, test_failure_and_api_errors);
	tcase_add_test(tc, test_log_queue_bounded);
	tcase_add_test(tc, test_no_outcome_completes_empty);
	tcase_add_test(tc, test_example_progress_resumes);
	tcase_add_test(tc, test_pool_reuses_threads);
	tcase_add_test(tc, test_pool_concurrent_runs);
	tcase_add_test(tc, test_pool_cancel_reused_thread);
	tcase_add_test(tc, test_pool_idle_expiry);
	tcase_add_test(tc, test_pool_two_bases);
	tcase_add_test(tc, test_inline_runs_in_one_loop_turn);
	tcase_add_test(tc, test_inline_same_iteration_as_start);
	tcase_add_test(tc, test_inline_failure_and_api);
	tcase_add_test(tc, test_inline_sleep_does_not_block);
	tcase_add_test(tc, test_inline_cancel_before_turn);
	tcase_add_test(tc, test_inline_dropped_with_its_base);
	tcase_add_test(tc, test_inline_from_config);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(plugin_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
