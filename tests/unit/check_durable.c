/* Unit tests of tp_durable's commits: in-flight rows wait journal.commit_delay (write-behind), and
 * a task that ends within it is never written; a result is committed in the loop turn that brought
 * it and takes the waiting rows along; a flush, the free and a recovery write what waits; the delay
 * and the degraded mode (disk full) get along; and the journal.commit_delay setting.
 *
 * The statements the journal runs are watched through tp_journal_set_step_hook. Deliveries of the
 * outbox go to a client of 127.0.0.1:1, where nothing listens: they fail and stay in the outbox. */
#include <check.h>
#include <event2/event.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "core/tp_config.h"
#include "core/tp_log.h"
#include "core/tp_util.h"
#include "journal/tp_journal.h"
#include "master/tp_durable.h"
#include "temporal/tp_temporal.h"

#define MIN_CONF \
	"temporal = { address = \"127.0.0.1:1\"; };\n" \
	"activities = ( { type = \"Echo\"; exec = [ \"/bin/cat\" ]; } );\n"

static char dir[64];
static char path[128];
static struct event_base *base;
static struct tp_config *cfg;
static struct tp_temporal *tc;
static struct tp_journal *jr;

/* What the journal ran. */
static struct {
	int     begins, commits;
	int     if_puts, if_dels, ob_puts;
	int64_t first_if_put_ms;   /* monotonic */
	int     fail_commits;      /* fail this many COMMITs with SQLITE_FULL */
} st;

/* Backpressure calls seen. */
static int paused_calls, resumed_calls;

static bool
starts_with(const char *s, const char *prefix)
{
	return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

static int
watch_step(struct sqlite3_stmt *stmt)
{
	const char *sql = sqlite3_sql(stmt);

	if (starts_with(sql, "BEGIN"))
		st.begins++;
	if (starts_with(sql, "COMMIT")) {
		if (st.fail_commits > 0) {
			st.fail_commits--;
			return SQLITE_FULL;
		}
		st.commits++;
	}
	if (starts_with(sql, "INSERT OR REPLACE INTO inflight")) {
		if (st.if_puts++ == 0)
			st.first_if_put_ms = tp_now_mono_ms();
	}
	if (starts_with(sql, "DELETE FROM inflight"))
		st.if_dels++;
	if (starts_with(sql, "INSERT OR REPLACE INTO outbox"))
		st.ob_puts++;
	return tp_journal_step_real(stmt);
}

static void
on_backpressure(void *arg, bool pause)
{
	if (pause)
		paused_calls++;
	else
		resumed_calls++;
}

static void
setup(void)
{
	struct tp_journal_opts jo = { path, TP_JOURNAL_SYNC_FULL, 200 };
	struct tp_config_errors errs;
	char err[256] = "";
	int rc;

	tp_log_init("test", NULL, TP_LOG_ERROR);
	snprintf(dir, sizeof(dir), "/tmp/check-durable-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/journal.db", dir);
	memset(&st, 0, sizeof(st));
	paused_calls = resumed_calls = 0;
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	cfg = tp_config_load_string(MIN_CONF, "test.conf", false, &errs);
	ck_assert_ptr_nonnull(cfg);
	tc = tp_temporal_new(base, cfg, "check-durable", err, sizeof(err));
	ck_assert_msg(tc != NULL, "%s", err);
	rc = tp_journal_open(&jo, &jr, err, sizeof(err));
	ck_assert_msg(rc == TP_JOURNAL_OK, "open: %d %s", rc, err);
	tp_journal_set_step_hook(watch_step);
}

static void
teardown(void)
{
	char cmd[160];

	tp_journal_set_step_hook(NULL);
	tp_journal_close(jr);
	jr = NULL;
	tp_temporal_free(tc);
	tc = NULL;
	event_base_free(base);
	base = NULL;
	tp_config_free(cfg);
	cfg = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

static struct tp_durable *
durable(int delay_ms)
{
	struct tp_durable_opts o = { base, tc, jr, 1024 * 1024, { on_backpressure, NULL, NULL },
		delay_ms };

	return tp_durable_new(&o);
}

/* One turn of the loop, without waiting: what is active runs (the end-of-turn flush). */
static void
turn(void)
{
	ck_assert_int_ge(event_base_loop(base, EVLOOP_NONBLOCK), 0);
}

/* Run the loop for ms. */
static void
run_for(int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	event_base_loopexit(base, &tv);
	ck_assert_int_ge(event_base_dispatch(base), 0);
}

static void
started(struct tp_durable *d, const char *token)
{
	Tprefork__Channel__V1__TaskStarted s = TPREFORK__CHANNEL__V1__TASK_STARTED__INIT;

	s.task_token.data = (uint8_t *)token;
	s.task_token.len = strlen(token);
	s.activity_type = (char *)"Resize";
	s.activity_id = (char *)token;
	s.workflow_id = (char *)"wf-1";
	s.run_id = (char *)"run-1";
	s.attempt = 1;
	s.started_ms = tp_now_real_ms();
	s.deadline_ms = s.started_ms + 60000;
	tp_durable_task_started(d, &s, 4242, 1);
}

static void
done(struct tp_durable *d, const char *token)
{
	ProtobufCBinaryData t = { strlen(token), (uint8_t *)token };

	tp_durable_task_done(d, &t);
}

/* A child's undelivered result for token. */
static void
undelivered(struct tp_durable *d, const char *token)
{
	Tprefork__Channel__V1__Undelivered u = TPREFORK__CHANNEL__V1__UNDELIVERED__INIT;
	static uint8_t req[] = { 0x0a, 0x03, 'a', 'b', 'c' };

	u.task_token.data = (uint8_t *)token;
	u.task_token.len = strlen(token);
	u.kind = TPREFORK__CHANNEL__V1__UNDELIVERED__KIND__COMPLETED;
	u.request.data = req;
	u.request.len = sizeof(req);
	ck_assert_int_eq(tp_durable_undelivered(d, &u), 0);
}

/* Rows in the journal (read through the journal's own connection, outside its transactions). */
static int64_t
rows_inflight(void)
{
	int64_t nin = -1, nout = -1;

	ck_assert_int_eq(tp_journal_count(jr, &nin, &nout), TP_JOURNAL_OK);
	return nin;
}

static int64_t
rows_outbox(void)
{
	int64_t nin = -1, nout = -1;

	ck_assert_int_eq(tp_journal_count(jr, &nin, &nout), TP_JOURNAL_OK);
	return nout;
}

/* ---- write-behind of in-flight rows --------------------------------------------------------- */

/* Started and done within the delay: no INSERT, no DELETE, not even a transaction. */
START_TEST(task_within_delay_never_written)
{
	struct tp_durable *d = durable(50);

	started(d, "tok-a");
	turn();
	ck_assert_int_eq(st.begins, 0);
	done(d, "tok-a");
	run_for(150);
	ck_assert_int_eq(st.begins, 0);
	ck_assert_int_eq(st.if_puts, 0);
	ck_assert_int_eq(st.if_dels, 0);
	ck_assert_uint_eq(tp_durable_inflight_len(d), 0);
	ck_assert(tp_durable_flush(d));
	ck_assert_int_eq(st.begins, 0);
	tp_durable_free(d);
	ck_assert_int_eq(st.begins, 0);
	ck_assert_int_eq(rows_inflight(), 0);
}
END_TEST

/* A task that stays: its row is committed once the delay has passed, not at the end of the turn;
 * the rows of several turns within the delay share one transaction; the DELETE waits likewise. */
START_TEST(kept_task_written_after_delay)
{
	struct tp_durable *d = durable(40);
	int64_t t0 = tp_now_mono_ms();

	started(d, "tok-a");
	turn();
	ck_assert_int_eq(st.if_puts, 0);
	started(d, "tok-b");
	turn();
	started(d, "tok-c");
	turn();
	ck_assert_int_eq(st.begins, 0);
	ck_assert_int_eq(rows_inflight(), 0);
	run_for(200);
	ck_assert_int_eq(st.if_puts, 3);
	ck_assert_int_eq(st.begins, 1);
	ck_assert_int_eq(st.commits, 1);
	/* Not before the delay (a timer may fire a little early: 5 ms of slack). */
	ck_assert_int_ge(st.first_if_put_ms - t0, 35);
	ck_assert_int_eq(rows_inflight(), 3);

	done(d, "tok-a");
	done(d, "tok-b");
	turn();
	ck_assert_int_eq(st.if_dels, 0);
	run_for(200);
	ck_assert_int_eq(st.if_dels, 2);
	ck_assert_int_eq(st.begins, 2);
	ck_assert_int_eq(rows_inflight(), 1);
	tp_durable_free(d);
	ck_assert_int_eq(rows_inflight(), 1);
}
END_TEST

/* commit_delay = 0: every turn's changes are committed at its end, as without the delay. */
START_TEST(zero_delay_commits_each_turn)
{
	struct tp_durable *d = durable(0);

	started(d, "tok-a");
	turn();
	ck_assert_int_eq(st.if_puts, 1);
	ck_assert_int_eq(rows_inflight(), 1);
	done(d, "tok-a");
	turn();
	ck_assert_int_eq(st.if_dels, 1);
	ck_assert_int_eq(rows_inflight(), 0);
	/* Within one turn, a task that comes and goes is not written. */
	started(d, "tok-b");
	done(d, "tok-b");
	turn();
	ck_assert_int_eq(st.if_puts, 1);
	ck_assert_int_eq(st.begins, 2);
	tp_durable_free(d);
}
END_TEST

/* ---- results are not delayed ---------------------------------------------------------------- */

/* A child's undelivered result and the master's own failure are committed in the turn that brought
 * them, with the in-flight rows waiting for the delay. */
START_TEST(result_committed_same_turn_with_waiting_rows)
{
	struct tp_durable *d = durable(1000);
	ProtobufCBinaryData tb = { 5, (uint8_t *)"tok-b" };

	started(d, "tok-a");
	started(d, "tok-b");
	turn();
	ck_assert_int_eq(st.begins, 0);
	undelivered(d, "tok-a");
	turn();
	ck_assert_int_eq(st.begins, 1);
	ck_assert_int_eq(st.ob_puts, 1);
	ck_assert_int_eq(rows_outbox(), 1);
	ck_assert_int_eq(rows_inflight(), 2);

	/* A dead child's task: failed through the outbox, and its row deleted, in the same commit. */
	done(d, "tok-a");
	turn();
	ck_assert_int_eq(st.begins, 1);
	ck_assert(tp_durable_fail_task(d, &tb, "WorkerCrashed", "test"));
	done(d, "tok-b");
	turn();
	ck_assert_int_eq(st.begins, 2);
	ck_assert_int_eq(st.ob_puts, 2);
	ck_assert_int_eq(st.if_dels, 2);
	ck_assert_int_eq(rows_inflight(), 0);
	ck_assert_int_eq(rows_outbox(), 2);
	tp_durable_free(d);
	ck_assert_int_eq(rows_outbox(), 2);
}
END_TEST

/* ---- nothing waits past a flush, the free or a recovery ------------------------------------- */

START_TEST(flush_and_free_write_waiting_rows)
{
	struct tp_durable *d = durable(1000);

	started(d, "tok-c");
	ck_assert(tp_durable_flush(d));
	ck_assert_int_eq(rows_inflight(), 1);
	started(d, "tok-a");
	started(d, "tok-b");
	done(d, "tok-c");
	turn();
	ck_assert_int_eq(st.begins, 1);
	tp_durable_free(d);
	ck_assert_int_eq(st.begins, 2);
	ck_assert_int_eq(st.if_puts, 3);
	ck_assert_int_eq(st.if_dels, 1);
	ck_assert_int_eq(rows_inflight(), 2);
}
END_TEST

/* The rows of a previous run: recovered (failed through the outbox, in-flight rows deleted) and
 * committed before tp_durable_recover returns, whatever the delay. */
START_TEST(recovery_committed_at_once)
{
	struct tp_journal_inflight old = { (const uint8_t *)"tok-old", 7, 999, 1, "act-1", "Resize",
		"wf-1", "run-1", 1, 1000, 61000 };
	struct tp_durable *d;

	ck_assert_int_eq(tp_journal_begin(jr), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(jr, &old), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(jr), TP_JOURNAL_OK);
	memset(&st, 0, sizeof(st));
	d = durable(1000);
	ck_assert_int_eq(tp_durable_recover(d), 1);
	ck_assert_int_eq(st.begins, 1);
	ck_assert_int_eq(rows_inflight(), 0);
	ck_assert_int_eq(rows_outbox(), 1);
	tp_durable_free(d);
}
END_TEST

/* ---- the degraded mode ---------------------------------------------------------------------- */

/* A delayed commit that fails: paused at once, the rows kept, no write until the retry (every
 * second, from the tick), then everything written and the children resumed. */
START_TEST(delayed_commit_failure_degrades_and_recovers)
{
	struct tp_durable *d = durable(20);

	st.fail_commits = 1000;
	started(d, "tok-a");
	run_for(100);
	ck_assert(tp_durable_paused(d));
	ck_assert_int_eq(paused_calls, 1);
	ck_assert_int_eq(st.begins, 1);
	started(d, "tok-b");
	undelivered(d, "tok-a");
	run_for(100);
	ck_assert_int_eq(st.begins, 1);   /* nothing until the retry */
	tp_durable_tick(d);
	ck_assert_int_eq(st.begins, 1);   /* not due yet */
	run_for(1000);
	tp_durable_tick(d);
	ck_assert_int_eq(st.begins, 2);
	ck_assert(tp_durable_paused(d));
	st.fail_commits = 0;
	run_for(1050);
	tp_durable_tick(d);
	ck_assert(!tp_durable_paused(d));
	ck_assert_int_eq(resumed_calls, 1);
	ck_assert_int_eq(rows_inflight(), 2);
	ck_assert_int_eq(rows_outbox(), 1);
	/* Back to normal: the delay applies again. */
	done(d, "tok-b");
	turn();
	ck_assert_int_eq(st.if_dels, 0);
	run_for(100);
	ck_assert_int_eq(st.if_dels, 1);
	tp_durable_free(d);
}
END_TEST

/* ---- the setting ---------------------------------------------------------------------------- */

static char *
load_error(const char *text)
{
	struct tp_config_errors errs;
	struct tp_config *c = tp_config_load_string(text, "test.conf", false, &errs);
	char *line;

	ck_assert_ptr_null(c);
	ck_assert_uint_ge(errs.n, 1);
	line = strdup(errs.lines[0]);
	tp_config_errors_free(&errs);
	return line;
}

START_TEST(config_commit_delay)
{
	struct tp_config_errors errs;
	struct tp_config *c;
	char *e;

	ck_assert_int_eq(cfg->journal_commit_delay_ms, 100);
	c = tp_config_load_string(MIN_CONF "journal = { commit_delay = 0; };\n", "test.conf", false,
	    &errs);
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(c->journal_commit_delay_ms, 0);
	tp_config_free(c);
	c = tp_config_load_string(MIN_CONF "journal = { commit_delay = 1000; };\n", "test.conf", false,
	    &errs);
	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(c->journal_commit_delay_ms, 1000);
	tp_config_free(c);
	e = load_error(MIN_CONF "journal = {\n  commit_delay = 1001;\n};\n");
	ck_assert_str_eq(e, "test.conf:4: 'commit_delay' must be between 0 and 1000 (got 1001)");
	free(e);
	e = load_error(MIN_CONF "journal = { commit_delay = -1; };\n");
	ck_assert_str_eq(e, "test.conf:3: 'commit_delay' must be between 0 and 1000 (got -1)");
	free(e);
	e = load_error(MIN_CONF "journal = { commit_delay = 0.5; };\n");
	ck_assert_str_eq(e, "test.conf:3: 'commit_delay' must be an integer");
	free(e);
}
END_TEST

static Suite *
durable_suite(void)
{
	Suite *s = suite_create("durable");
	TCase *tc_core = tcase_create("core");

	tcase_add_checked_fixture(tc_core, setup, teardown);
	tcase_set_timeout(tc_core, 30);
	tcase_add_test(tc_core, task_within_delay_never_written);
	tcase_add_test(tc_core, kept_task_written_after_delay);
	tcase_add_test(tc_core, zero_delay_commits_each_turn);
	tcase_add_test(tc_core, result_committed_same_turn_with_waiting_rows);
	tcase_add_test(tc_core, flush_and_free_write_waiting_rows);
	tcase_add_test(tc_core, recovery_committed_at_once);
	tcase_add_test(tc_core, delayed_commit_failure_degrades_and_recovers);
	tcase_add_test(tc_core, config_commit_delay);
	suite_add_tcase(s, tc_core);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(durable_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
