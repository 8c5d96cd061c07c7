/* Unit tests of tp_config: defaults, every section, and the file:line errors. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tp_config.h"
#include "core/tp_log.h"
#include "core/tp_mem.h"

static struct tp_config *
load(const char *text, struct tp_config_errors *errs)
{
	return tp_config_load_string(text, "test.conf", false, errs);
}

/* The single error line of a failed load. */
static char *
one_error(const char *text)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = load(text, &errs);
	char *line;

	ck_assert_ptr_null(cfg);
	ck_assert_uint_ge(errs.n, 1);
	line = strdup(errs.lines[0]);
	tp_config_errors_free(&errs);
	return line;
}

#define MIN_ACT "activities = ( { type = \"Echo\"; exec = [ \"/bin/cat\" ]; } );\n"

START_TEST(defaults)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = load(MIN_ACT, &errs);

	ck_assert_ptr_nonnull(cfg);
	ck_assert_str_eq(cfg->host, "127.0.0.1");
	ck_assert_str_eq(cfg->port, "7233");
	ck_assert_str_eq(cfg->namespace_, "default");
	ck_assert_str_eq(cfg->task_queue, "tprefork");
	ck_assert_int_eq(cfg->count, 4);
	ck_assert_int_eq(cfg->max_concurrent, 8);
	ck_assert_int_eq(cfg->pollers, 2);
	ck_assert_int_eq(cfg->shutdown_timeout_ms, 30000);
	ck_assert_int_eq(cfg->cancel_grace_ms, 5000);
	ck_assert_int_eq(cfg->poll_timeout_ms, 70000);
	ck_assert_int_eq(cfg->poll_drain_wait_ms, 25000);   /* shutdown_timeout - cancel_grace */
	ck_assert(!cfg->tls);
	ck_assert_uint_eq(cfg->nactivities, 1);
	ck_assert_str_eq(cfg->activities[0].argv[0], "/usr/bin/cat");
	ck_assert_int_eq(cfg->activities[0].kill_grace_ms, 5000);
	ck_assert_uint_eq(cfg->activities[0].stdout_cap, 2u * 1024 * 1024);
	tp_config_free(cfg);
}
END_TEST

START_TEST(full)
{
	char dir[] = "/tmp/tp-config-XXXXXX", so[64];
	const char *head =
	    "temporal = { address = \"[::1]:7000\"; namespace = \"ns\"; task_queue = \"q\";\n"
	    "  tls = { ca = \"/etc/ca.pem\"; server_name = \"x.example\"; }; };\n"
	    "workers = { count = 3; max_concurrent_activities = 5; pollers = 1;\n"
	    "  shutdown_timeout = 20; cancel_grace = 4; poll_timeout = 15; };\n"
	    "log = { level = \"debug\"; };\n"
	    "journal = { path = \"/tmp/j.db\"; };\n"
	    "pidfile = \"/tmp/p.pid\";\n";
	const char *tail =
	    "activities = (\n"
	    "  { type = \"A\"; exec = [ \"cat\", \"-u\" ]; env = [ \"X=1\" ]; cwd = \"/tmp\";\n"
	    "    kill_grace = 2; non_retryable_exit_codes = [ 2, 3 ]; },\n"
	    "  { type = \"B\"; plugin = \"example\"; function = \"echo\"; } );\n";
	struct tp_config_errors errs;
	struct tp_config *cfg;
	const struct tp_activity_conf *a;
	char *text;
	FILE *f;

	/* A plugin must exist (its loading is checked by tp_plugin, not here). */
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(so, sizeof(so), "%s/example.so", dir);
	f = fopen(so, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	text = tp_xasprintf("%splugins = ( \"%s\" );\n%s", head, so, tail);
	cfg = load(text, &errs);
	free(text);
	unlink(so);
	rmdir(dir);

	ck_assert_msg(cfg != NULL, "%s", errs.n ? errs.lines[0] : "");
	ck_assert_str_eq(cfg->host, "::1");
	ck_assert_str_eq(cfg->port, "7000");
	ck_assert_str_eq(cfg->namespace_, "ns");
	ck_assert_str_eq(cfg->task_queue, "q");
	ck_assert(cfg->tls);
	ck_assert_str_eq(cfg->tls_server_name, "x.example");
	ck_assert_int_eq(cfg->count, 3);
	ck_assert_int_eq(cfg->max_concurrent, 5);
	ck_assert_int_eq(cfg->pollers, 1);
	ck_assert_int_eq(cfg->shutdown_timeout_ms, 20000);
	ck_assert_int_eq(cfg->cancel_grace_ms, 4000);
	ck_assert_int_eq(cfg->poll_timeout_ms, 15000);
	ck_assert_int_eq(cfg->log_level, TP_LOG_DEBUG);
	ck_assert_str_eq(cfg->journal_path, "/tmp/j.db");
	a = tp_config_find_activity(cfg, "A");
	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(a->kind, TP_HANDLER_EXEC);
	ck_assert_uint_eq(a->argc, 2);
	ck_assert_str_eq(a->argv[1], "-u");
	ck_assert_ptr_null(a->argv[2]);
	ck_assert_str_eq(a->env[0], "X=1");
	ck_assert_int_eq(a->kill_grace_ms, 2000);
	ck_assert_uint_eq(a->n_nonretry, 2);
	ck_assert_int_eq(a->nonretry_codes[1], 3);
	a = tp_config_find_activity(cfg, "B");
	ck_assert_int_eq(a->kind, TP_HANDLER_PLUGIN);
	ck_assert_str_eq(a->function, "echo");
	ck_assert_str_eq(a->plugin_path, so);
	ck_assert_ptr_null(tp_config_find_activity(cfg, "C"));
	tp_config_free(cfg);
}
END_TEST

START_TEST(syntax_error_has_line)
{
	char *e = one_error("workers = { count 3; };\n\n" MIN_ACT);
	ck_assert_msg(strncmp(e, "test.conf:1: ", 13) == 0, "%s", e);
	free(e);
	e = one_error(MIN_ACT "\n\nworkers = { count = ; };\n");
	ck_assert_msg(strncmp(e, "test.conf:4: ", 13) == 0, "%s", e);
	free(e);
}
END_TEST

START_TEST(unknown_key)
{
	char *e = one_error(MIN_ACT "workers = {\n  pollerz = 2; };\n");
	ck_assert_msg(strstr(e, "test.conf:3:") && strstr(e, "workers.pollerz"), "%s", e);
	free(e);
}
END_TEST

START_TEST(bad_values)
{
	char *e;

	e = one_error(MIN_ACT "workers = { pollers = 0; };\n");
	ck_assert_msg(strstr(e, "test.conf:2:") && strstr(e, "pollers"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "workers = { count = \"four\"; };\n");
	ck_assert_msg(strstr(e, "must be an integer"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "temporal = { address = \"nohost\"; };\n");
	ck_assert_msg(strstr(e, "host:port"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "workers = { pollers = 9; max_concurrent_activities = 8; };\n");
	ck_assert_msg(strstr(e, "must not exceed"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "workers = { shutdown_timeout = 5; cancel_grace = 5; };\n");
	ck_assert_msg(strstr(e, "cancel_grace"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "workers = { poll_timeout = 1; };\n");
	ck_assert_msg(strstr(e, "poll_timeout"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "log = { level = \"loud\"; };\n");
	ck_assert_msg(strstr(e, "log.level"), "%s", e);
	free(e);
}
END_TEST

START_TEST(bad_activities)
{
	char *e;

	e = one_error("activities = ( { type = \"A\"; exec = [ \"/nonexistent/cmd\" ]; } );\n");
	ck_assert_msg(strstr(e, "test.conf:1:") && strstr(e, "not found"), "%s", e);
	free(e);
	e = one_error("activities = ( { type = \"A\"; } );\n");
	ck_assert_msg(strstr(e, "exactly one"), "%s", e);
	free(e);
	e = one_error("activities = (\n { type = \"A\"; exec = [\"/bin/cat\"]; },\n"
	    " { type = \"A\"; exec = [\"/bin/cat\"]; } );\n");
	ck_assert_msg(strstr(e, "test.conf:3:") && strstr(e, "defined twice"), "%s", e);
	free(e);
	e = one_error("activities = ( { type = \"A\"; exec = [ ]; } );\n");
	ck_assert_msg(strstr(e, "at least"), "%s", e);
	free(e);
	e = one_error("activities = ( { type = \"A\"; exec = [\"/bin/cat\"]; env = [ \"NOEQUALS\" ]; } );\n");
	ck_assert_msg(strstr(e, "NAME=VALUE"), "%s", e);
	free(e);
	e = one_error("workers = { count = 1; };\n");
	ck_assert_msg(strstr(e, "no 'activities'"), "%s", e);
	free(e);
}
END_TEST

/* `inline` on a plugin activity: default false, a boolean; on an exec activity an error at its line. */
START_TEST(inline_setting)
{
	char dir[] = "/tmp/tp-config-XXXXXX", so[64];
	struct tp_config_errors errs;
	struct tp_config *cfg;
	char *text, *e;
	FILE *f;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(so, sizeof(so), "%s/fast.so", dir);
	f = fopen(so, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	text = tp_xasprintf("plugins = ( \"%s\" );\nactivities = (\n"
	    "  { type = \"A\"; plugin = \"fast\"; function = \"f\"; inline = true; },\n"
	    "  { type = \"B\"; plugin = \"fast\"; function = \"f\"; inline = false; },\n"
	    "  { type = \"C\"; plugin = \"fast\"; function = \"f\"; },\n"
	    "  { type = \"D\"; exec = [ \"/bin/cat\" ]; } );\n", so);
	cfg = load(text, &errs);
	free(text);
	ck_assert_msg(cfg != NULL, "%s", errs.n ? errs.lines[0] : "");
	ck_assert(tp_config_find_activity(cfg, "A")->inline_run);
	ck_assert(!tp_config_find_activity(cfg, "B")->inline_run);
	ck_assert(!tp_config_find_activity(cfg, "C")->inline_run);
	ck_assert(!tp_config_find_activity(cfg, "D")->inline_run);
	tp_config_free(cfg);

	text = tp_xasprintf("plugins = ( \"%s\" );\nactivities = (\n"
	    "  { type = \"A\"; plugin = \"fast\";\n    inline = \"yes\"; } );\n", so);
	e = one_error(text);
	free(text);
	ck_assert_msg(strcmp(e, "test.conf:4: 'inline' must be true or false") == 0, "%s", e);
	free(e);
	unlink(so);
	rmdir(dir);

	e = one_error("activities = (\n  { type = \"A\"; exec = [ \"/bin/cat\" ];\n    inline = true; } );\n");
	ck_assert_msg(strcmp(e, "test.conf:3: activity 'A': 'inline' applies to plugin activities only")
	    == 0, "%s", e);
	free(e);
	e = one_error("activities = ( { type = \"A\"; exec = [ \"/bin/cat\" ]; inline = false; } );\n");
	ck_assert_msg(strstr(e, "test.conf:1:") && strstr(e, "'inline' applies to plugin activities "
	    "only"), "%s", e);
	free(e);
}
END_TEST

START_TEST(several_errors_reported)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = load(MIN_ACT "workers = { count = 0; pollers = 0; bogus = 1; };\n", &errs);

	ck_assert_ptr_null(cfg);
	ck_assert_uint_eq(errs.n, 3);
	tp_config_errors_free(&errs);
}
END_TEST

START_TEST(env_overrides)
{
	struct tp_config_errors errs;
	struct tp_config *cfg;

	setenv("TEMPORAL_ADDRESS", "example.org:443", 1);
	setenv("TEMPORAL_NAMESPACE", "prod", 1);
	setenv("TEMPORAL_API_KEY", "secret", 1);
	cfg = tp_config_load_string(MIN_ACT, "env.conf", true, &errs);
	unsetenv("TEMPORAL_ADDRESS");
	unsetenv("TEMPORAL_NAMESPACE");
	unsetenv("TEMPORAL_API_KEY");
	ck_assert_ptr_nonnull(cfg);
	ck_assert_str_eq(cfg->host, "example.org");
	ck_assert_str_eq(cfg->port, "443");
	ck_assert_str_eq(cfg->namespace_, "prod");
	ck_assert_str_eq(cfg->api_key, "secret");
	tp_config_free(cfg);
}
END_TEST

START_TEST(api_key_file_mode)
{
	char path[] = "/tmp/tp-key-XXXXXX";
	int fd = mkstemp(path);
	char *text, *e;
	struct tp_config_errors errs;
	struct tp_config *cfg;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "k3y\n", 4), 4);
	close(fd);
	text = NULL;
	ck_assert_int_gt(asprintf(&text, "temporal = { api_key_file = \"%s\"; };\n" MIN_ACT, path), 0);
	chmod(path, 0600);
	cfg = load(text, &errs);
	ck_assert_ptr_nonnull(cfg);
	ck_assert_str_eq(cfg->api_key, "k3y");
	tp_config_free(cfg);
	chmod(path, 0644);
	e = one_error(text);
	ck_assert_msg(strstr(e, "chmod 600"), "%s", e);
	free(e);
	unlink(path);
	free(text);
}
END_TEST

START_TEST(journal_settings)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = load(MIN_ACT, &errs);
	char *e;

	/* Defaults: on, FULL, 256 MiB of undelivered reports, a one-minute report retry. */
	ck_assert_ptr_nonnull(cfg);
	ck_assert(cfg->journal_enabled);
	ck_assert_int_eq(cfg->journal_sync, 2);
	ck_assert_int_eq(cfg->journal_memory_cap, 256L * 1024 * 1024);
	ck_assert_int_eq(cfg->report_retry_ms, 60000);
	ck_assert_msg(strstr(cfg->journal_path, "/lib/tprefork/journal.db") != NULL, "%s",
	    cfg->journal_path);
	tp_config_free(cfg);
	cfg = load(MIN_ACT "journal = { path = \"/tmp/j.db\"; enabled = false;\n"
	    "  synchronous = \"normal\"; memory_cap = 8; };\nworkers = { report_retry = 5; };\n", &errs);
	ck_assert_msg(cfg != NULL, "%s", errs.n ? errs.lines[0] : "");
	ck_assert(!cfg->journal_enabled);
	ck_assert_int_eq(cfg->journal_sync, 1);
	ck_assert_int_eq(cfg->journal_memory_cap, 8L * 1024 * 1024);
	ck_assert_int_eq(cfg->report_retry_ms, 5000);
	tp_config_free(cfg);
	cfg = load(MIN_ACT "journal = { synchronous = \"off\"; };\n", &errs);
	ck_assert_ptr_nonnull(cfg);
	ck_assert_int_eq(cfg->journal_sync, 0);
	tp_config_free(cfg);

	e = one_error(MIN_ACT "journal = {\n  synchronous = \"extra\"; };\n");
	ck_assert_msg(strstr(e, "test.conf:3:") && strstr(e, "full, normal, off"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "journal = { enabled = 1; };\n");
	ck_assert_msg(strstr(e, "'enabled' must be true or false"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "journal = { memory_cap = 0; };\n");
	ck_assert_msg(strstr(e, "memory_cap"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "journal = {\n  pathh = \"/x\"; };\n");
	ck_assert_msg(strstr(e, "test.conf:3:") && strstr(e, "unknown setting 'journal.pathh'"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "journal = \"/x\";\n");
	ck_assert_msg(strstr(e, "'journal' must be a group"), "%s", e);
	free(e);
	e = one_error(MIN_ACT "workers = { report_retry = 0; };\n");
	ck_assert_msg(strstr(e, "report_retry"), "%s", e);
	free(e);
}
END_TEST

START_TEST(status_listen)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = load(MIN_ACT "status = { listen = \"127.0.0.1:9233\"; };\n", &errs);
	char *e;

	ck_assert_ptr_nonnull(cfg);
	ck_assert_str_eq(cfg->status_listen, "127.0.0.1:9233");
	tp_config_free(cfg);
	cfg = load(MIN_ACT, &errs);
	ck_assert_ptr_null(cfg->status_listen);
	tp_config_free(cfg);
	e = one_error(MIN_ACT "status = { port = 1; };\n");
	ck_assert_msg(strstr(e, "status.port"), "%s", e);
	free(e);
}
END_TEST

START_TEST(missing_file)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = tp_config_load_file("/nonexistent.conf", false, &errs);

	ck_assert_ptr_null(cfg);
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_msg(strstr(errs.lines[0], "/nonexistent.conf") &&
	    strstr(errs.lines[0], "No such file"), "%s", errs.lines[0]);
	tp_config_errors_free(&errs);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, defaults);
	tcase_add_test(tc, full);
	tcase_add_test(tc, syntax_error_has_line);
	tcase_add_test(tc, unknown_key);
	tcase_add_test(tc, bad_values);
	tcase_add_test(tc, bad_activities);
	tcase_add_test(tc, inline_setting);
	tcase_add_test(tc, several_errors_reported);
	tcase_add_test(tc, env_overrides);
	tcase_add_test(tc, api_key_file_mode);
	tcase_add_test(tc, journal_settings);
	tcase_add_test(tc, status_listen);
	tcase_add_test(tc, missing_file);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
