/* Unit tests for tp_exec: every test runs real commands on its own event_base until done. */
#include <check.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "activity/tp_exec.h"
#include "core/tp_util.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define SOFT_TIMEOUT_S 20   /* the command is killed and the test fails */
#define HARD_TIMEOUT_S 25   /* the loop is broken off */
#define MAX_LINES      32

static char *const default_env[] = { "PATH=/usr/bin:/bin", NULL };

struct run {
	struct event_base    *base;
	struct tp_exec       *x;
	pid_t                 pid;
	int                   ndone;
	bool                  timed_out;
	struct tp_exec_result res;         /* copied in done; pointers cleared */
	char                 *out;
	size_t                out_len;
	json_t               *error;
	int                   heartbeats;
	json_t               *last_hb;
	int                   bad;
	char                 *first_bad;
	size_t                first_bad_len;
	char                 *lines[MAX_LINES];
	size_t                line_len[MAX_LINES];
	int                   nlines;
	int                   action_ms;   /* > 0: cancel or kill after this long */
	bool                  action_kill;
	int64_t               t_start, t_action, t_done;
	struct event         *ev_action, *ev_soft, *ev_hard;
};

static void
on_heartbeat(void *arg, json_t *details)
{
	struct run *r = arg;

	r->heartbeats++;
	json_decref(r->last_hb);
	r->last_hb = json_incref(details);
}

static void
on_stderr_line(void *arg, const char *line, size_t len)
{
	struct run *r = arg;

	ck_assert_int_lt(r->nlines, MAX_LINES);
	r->lines[r->nlines] = strndup(line, len);
	r->line_len[r->nlines] = len;
	r->nlines++;
}

static void
on_bad_record(void *arg, const char *line, size_t len)
{
	struct run *r = arg;

	if (r->bad++ == 0) {
		r->first_bad = strndup(line, len);
		r->first_bad_len = len;
	}
}

static void
on_done(void *arg, const struct tp_exec_result *res)
{
	struct run *r = arg;

	r->ndone++;
	r->t_done = tp_now_mono_ms();
	r->res = *res;
	r->out = malloc(res->out_len + 1);
	memcpy(r->out, res->out, res->out_len + 1);  /* NUL-terminated */
	r->out_len = res->out_len;
	r->error = res->error ? json_incref(res->error) : NULL;
	r->res.out = NULL;
	r->res.error = NULL;
	r->x = NULL;
	event_base_loopbreak(r->base);
}

static void
on_action(evutil_socket_t fd, short what, void *arg)
{
	struct run *r = arg;

	r->t_action = tp_now_mono_ms();
	if (r->action_kill)
		tp_exec_kill(r->x);
	else
		tp_exec_cancel(r->x);
}

static void
on_soft_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct run *r = arg;

	r->timed_out = true;
	tp_exec_kill(r->x);
}

static void
on_hard_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct run *r = arg;

	event_base_loopbreak(r->base);
}

static void
add_timer(struct run *r, struct event **ev, event_callback_fn fn, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	*ev = evtimer_new(r->base, fn, r);
	ck_assert_ptr_nonnull(*ev);
	ck_assert_int_eq(evtimer_add(*ev, &tv), 0);
}

/* Run spec until done. Fails the test on a start error or a timeout. */
static void
run_spec(struct run *r, struct tp_exec_spec *spec)
{
	struct tp_exec_callbacks cb = { on_heartbeat, on_stderr_line, on_bad_record, on_done, r };
	char err[256] = "";

	memset(r->lines, 0, sizeof r->lines);
	r->base = event_base_new();
	ck_assert_ptr_nonnull(r->base);
	if (spec->envp == NULL)
		spec->envp = default_env;
	r->t_start = tp_now_mono_ms();
	r->x = tp_exec_start(r->base, spec, &cb, err, sizeof err);
	ck_assert_msg(r->x != NULL, "tp_exec_start: %s", err);
	r->pid = tp_exec_pid(r->x);
	ck_assert_int_gt(r->pid, 0);
	if (r->action_ms > 0)
		add_timer(r, &r->ev_action, on_action, r->action_ms);
	add_timer(r, &r->ev_soft, on_soft_timeout, SOFT_TIMEOUT_S * 1000);
	add_timer(r, &r->ev_hard, on_hard_timeout, HARD_TIMEOUT_S * 1000);
	event_base_dispatch(r->base);
	ck_assert_msg(!r->timed_out, "the command did not finish within %d s", SOFT_TIMEOUT_S);
	ck_assert_int_eq(r->ndone, 1);
	if (r->ev_action)
		event_free(r->ev_action);
	event_free(r->ev_soft);
	event_free(r->ev_hard);
	r->ev_action = r->ev_soft = r->ev_hard = NULL;
	/* tp_exec left nothing behind on the base, and nothing of it fires any more. */
	ck_assert_int_eq(event_base_get_num_events(r->base, EVENT_BASE_COUNT_ADDED | EVENT_BASE_COUNT_ACTIVE), 0);
	ck_assert_int_eq(event_base_loop(r->base, EVLOOP_NONBLOCK), 1);
	ck_assert_int_eq(r->ndone, 1);
}

static void
run_free(struct run *r)
{
	for (int i = 0; i < r->nlines; i++)
		free(r->lines[i]);
	free(r->out);
	free(r->first_bad);
	json_decref(r->error);
	json_decref(r->last_hb);
	if (r->base)
		event_base_free(r->base);
	memset(r, 0, sizeof *r);
}

/* Run "sh -c script". */
static void
run_sh(struct run *r, struct tp_exec_spec *spec, const char *script)
{
	char *argv[] = { "/bin/sh", "-c", (char *)script, NULL };

	spec->argv = argv;
	run_spec(r, spec);
}

/* Orphans of the commands are re-parented to this process (a subreaper), so that a killed one can be
 * reaped here and the group check below does not depend on the host's init. */
static void
become_subreaper(void)
{
	ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
}

/* True once no process of group pgid is left (waits up to 5 s for SIGKILLed members to go). */
static bool
group_gone(pid_t pgid)
{
	for (int i = 0; i < 500; i++) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (kill(-pgid, 0) < 0 && errno == ESRCH)
			return true;
		nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
	}
	return false;
}

/* ---- tests ------------------------------------------------------------------------------------- */

START_TEST(test_cat_1mib)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/bin/cat", NULL };
	size_t n = 1024 * 1024;
	uint8_t *in = malloc(n);

	for (size_t i = 0; i < n; i++)
		in[i] = (uint8_t)(i * 7 % 251);
	spec.argv = argv;
	spec.input = in;
	spec.input_len = n;
	run_spec(&r, &spec);
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 0);
	ck_assert(!r.res.stdout_overflow);
	ck_assert_uint_eq(r.out_len, n);
	ck_assert(memcmp(r.out, in, n) == 0);
	free(in);
	run_free(&r);
}
END_TEST

START_TEST(test_stdin_not_read)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/bin/true", NULL };
	size_t n = 1024 * 1024;
	uint8_t *in = calloc(1, n);

	/* SIGPIPE has its default disposition here: the EPIPE must not kill this process. */
	spec.argv = argv;
	spec.input = in;
	spec.input_len = n;
	run_spec(&r, &spec);
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 0);
	ck_assert_uint_eq(r.out_len, 0);
	ck_assert_str_eq(r.out, "");
	free(in);
	run_free(&r);
}
END_TEST

START_TEST(test_exit_status)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };

	run_sh(&r, &spec, "echo -n out; exit 3");
	ck_assert(r.res.exited);
	ck_assert(!r.res.signaled);
	ck_assert_int_eq(r.res.exit_code, 3);
	ck_assert(!r.res.cancelled);
	ck_assert(!r.res.spawn_failed);
	ck_assert_str_eq(r.out, "out");
	ck_assert_ptr_null(r.error);
	ck_assert_int_ge(r.res.duration_ms, 0);
	run_free(&r);
}
END_TEST

START_TEST(test_signaled)
{
	struct tp_exec_rlimit nocore = { RLIMIT_CORE, 0, 0 };
	static const struct { const char *script; int sig; } cases[] = {
		{ "kill -SEGV $$", SIGSEGV },
		{ "kill -KILL $$", SIGKILL },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct run r = { 0 };
		struct tp_exec_spec spec = { 0 };

		spec.rlimits = &nocore;
		spec.nrlimits = 1;
		run_sh(&r, &spec, cases[i].script);
		ck_assert(!r.res.exited);
		ck_assert(r.res.signaled);
		ck_assert_int_eq(r.res.signo, cases[i].sig);
		run_free(&r);
	}
}
END_TEST

START_TEST(test_stdout_overflow)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/usr/bin/yes", NULL };

	become_subreaper();
	spec.argv = argv;
	spec.stdout_cap = 1000;
	run_spec(&r, &spec);
	ck_assert(r.res.stdout_overflow);
	ck_assert(r.res.signaled);
	ck_assert_int_eq(r.res.signo, SIGKILL);
	ck_assert_uint_le(r.out_len, 1000);
	ck_assert(group_gone(r.pid));
	run_free(&r);
}
END_TEST

START_TEST(test_records)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	json_t *v;

	run_sh(&r, &spec,
	    "printf '%s\\n' '{\"heartbeat\": 1}' '{\"heartbeat\": {\"n\": 2}}' 'not json' '' "
	    "'{\"error\": {\"type\": \"BadInput\", \"message\": \"no good\", \"non_retryable\": true, "
	    "\"details\": [1, 2]}}' '{\"other\": 1}' >&3; exit 1");
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 1);
	ck_assert_int_eq(r.heartbeats, 2);
	ck_assert_int_eq(json_integer_value(json_object_get(r.last_hb, "n")), 2);
	ck_assert_int_eq(r.bad, 2);
	ck_assert_str_eq(r.first_bad, "not json");
	ck_assert_ptr_nonnull(r.error);
	ck_assert_str_eq(json_string_value(json_object_get(r.error, "type")), "BadInput");
	ck_assert_str_eq(json_string_value(json_object_get(r.error, "message")), "no good");
	ck_assert(json_is_true(json_object_get(r.error, "non_retryable")));
	v = json_object_get(r.error, "details");
	ck_assert(json_is_array(v));
	ck_assert_uint_eq(json_array_size(v), 2);
	run_free(&r);
}
END_TEST

START_TEST(test_record_too_long)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };

	run_sh(&r, &spec,
	    "{ head -c 3000000 /dev/zero | tr '\\0' a; printf '\\n{\"heartbeat\": 7}\\n'; } >&3; "
	    "echo '{\"error\": {\"type\": \"T\", \"message\": 5}}' >&3");
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 0);
	ck_assert_int_eq(r.bad, 2);  /* the long line, and the error record with a numeric message */
	ck_assert_uint_eq(r.first_bad_len, 4096);
	ck_assert_int_eq(r.heartbeats, 1);
	ck_assert_int_eq(json_integer_value(r.last_hb), 7);
	ck_assert_ptr_null(r.error);
	run_free(&r);
}
END_TEST

START_TEST(test_stderr_lines)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };

	spec.stderr_line_max = 16;
	run_sh(&r, &spec,
	    "printf 'one\\ntwo\\n0123456789abcdefXYZ\\n0123456789abcdef\\n\\nlast' >&2");
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.nlines, 6);
	ck_assert_str_eq(r.lines[0], "one");
	ck_assert_str_eq(r.lines[1], "two");
	ck_assert_str_eq(r.lines[2], "0123456789abcdef...");
	ck_assert_uint_eq(r.line_len[2], 19);
	ck_assert_str_eq(r.lines[3], "0123456789abcdef");
	ck_assert_str_eq(r.lines[4], "");
	ck_assert_str_eq(r.lines[5], "last");
	run_free(&r);
}
END_TEST

START_TEST(test_cancel_trapping_term)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	int64_t waited;

	become_subreaper();
	spec.kill_grace_ms = 500;
	r.action_ms = 300;  /* time for the shell to set its trap */
	run_sh(&r, &spec, "trap '' TERM; sleep 30");
	waited = r.t_done - r.t_action;
	ck_assert_int_ge(waited, 450);
	ck_assert_int_lt(waited, 500 + 2000);
	ck_assert(r.res.cancelled);
	ck_assert(r.res.signaled);
	ck_assert_int_eq(r.res.signo, SIGKILL);
	ck_assert(group_gone(r.pid));
	run_free(&r);
}
END_TEST

START_TEST(test_cancel_sleep)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/bin/sleep", "30", NULL };

	spec.argv = argv;
	r.action_ms = 100;
	run_spec(&r, &spec);
	ck_assert(r.res.cancelled);
	ck_assert(r.res.signaled);
	ck_assert_int_eq(r.res.signo, SIGTERM);
	ck_assert_int_lt(r.t_done - r.t_action, 2000);  /* well below the 5 s default grace */
	run_free(&r);
}
END_TEST

START_TEST(test_kill)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/bin/sleep", "30", NULL };

	spec.argv = argv;
	r.action_ms = 100;
	r.action_kill = true;
	run_spec(&r, &spec);
	ck_assert(!r.res.cancelled);
	ck_assert(r.res.signaled);
	ck_assert_int_eq(r.res.signo, SIGKILL);
	run_free(&r);
}
END_TEST

START_TEST(test_grandchild_holds_pipes)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };

	become_subreaper();
	spec.kill_grace_ms = 500;
	run_sh(&r, &spec, "sleep 30 & echo '{}'");
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 0);
	ck_assert(!r.res.cancelled);
	ck_assert_str_eq(r.out, "{}\n");
	ck_assert_int_ge(r.t_done - r.t_start, 450);
	ck_assert_int_lt(r.t_done - r.t_start, 500 + 2000);
	ck_assert(group_gone(r.pid));
	run_free(&r);
}
END_TEST

START_TEST(test_only_fds_0_to_3)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	int extra = open("/dev/null", O_RDONLY);  /* not CLOEXEC: must not reach the command */

	ck_assert_int_ge(extra, 0);
	ck_assert_int_eq(dup2(extra, 40), 40);
	/* ls runs as a child of the shell and lists the shell's fds ("; exit" keeps dash from exec'ing
	 * ls in its place, which would show the directory fd of ls itself). */
	run_sh(&r, &spec, "ls /proc/$$/fd; exit $?");
	close(40);
	close(extra);
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 0);
	ck_assert_str_eq(r.out, "0\n1\n2\n3\n");
	run_free(&r);
}
END_TEST

START_TEST(test_env_exact)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/usr/bin/env", NULL };
	char *envp[] = { "A=1", "B=two words", NULL };

	spec.argv = argv;
	spec.envp = envp;
	run_spec(&r, &spec);
	ck_assert(r.res.exited);
	ck_assert_str_eq(r.out, "A=1\nB=two words\n");
	run_free(&r);
}
END_TEST

START_TEST(test_spawn_enoent)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/nonexistent/command", NULL };

	spec.argv = argv;
	run_spec(&r, &spec);
	ck_assert(r.res.spawn_failed);
	ck_assert_int_eq(r.res.spawn_errno, ENOENT);
	ck_assert_str_eq(r.res.spawn_step, "execve");
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 127);
	run_free(&r);
}
END_TEST

START_TEST(test_path_search)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "printenv", "X", NULL };
	char *envp[] = { "PATH=/nonexistent:/usr/bin:/bin", "X=found", NULL };
	char *argv2[] = { "env", NULL };
	char *envp2[] = { "Q=1", NULL };
	char *argv3[] = { "no-such-command-anywhere", NULL };

	spec.argv = argv;
	spec.envp = envp;
	run_spec(&r, &spec);
	ck_assert(!r.res.spawn_failed);
	ck_assert_str_eq(r.out, "found\n");
	run_free(&r);

	/* no PATH in envp: the default one */
	spec.argv = argv2;
	spec.envp = envp2;
	run_spec(&r, &spec);
	ck_assert(!r.res.spawn_failed);
	ck_assert_str_eq(r.out, "Q=1\n");
	run_free(&r);

	spec.argv = argv3;
	spec.envp = envp;
	run_spec(&r, &spec);
	ck_assert(r.res.spawn_failed);
	ck_assert_int_eq(r.res.spawn_errno, ENOENT);
	run_free(&r);
}
END_TEST

START_TEST(test_rlimits)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	struct tp_exec_rlimit rl[] = {
		{ RLIMIT_CORE, 0, 0 }, { RLIMIT_FSIZE, 1 << 20, 1 << 20 }, { RLIMIT_NOFILE, 64, 64 },
	};

	spec.rlimits = rl;
	spec.nrlimits = 3;
	/* valgrind emulates RLIMIT_NOFILE inside the process and refuses to change its hard limit, so
	 * the fork child (still under valgrind until execve) cannot set it there. */
	if (RUNNING_ON_VALGRIND)
		spec.nrlimits = 2;
	run_sh(&r, &spec, "ulimit -c; ulimit -f; ulimit -n");
	ck_assert(r.res.exited);
	ck_assert_int_eq(r.res.exit_code, 0);
	if (RUNNING_ON_VALGRIND)
		ck_assert_int_eq(strncmp(r.out, "0\n2048\n", 7), 0);  /* dash: 512-byte blocks */
	else
		ck_assert_str_eq(r.out, "0\n2048\n64\n");
	run_free(&r);
}
END_TEST

START_TEST(test_cwd)
{
	struct run r = { 0 };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { "/bin/pwd", NULL };
	char dir[] = "/tmp/check_exec.XXXXXX";
	char real[PATH_MAX + 1];

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_ptr_nonnull(realpath(dir, real));
	snprintf(real + strlen(real), sizeof real - strlen(real), "\n");
	spec.argv = argv;
	spec.cwd = dir;
	run_spec(&r, &spec);
	ck_assert(r.res.exited);
	ck_assert_str_eq(r.out, real);
	run_free(&r);

	ck_assert_int_eq(rmdir(dir), 0);
	spec.cwd = dir;  /* gone now */
	run_spec(&r, &spec);
	ck_assert(r.res.spawn_failed);
	ck_assert_int_eq(r.res.spawn_errno, ENOENT);
	ck_assert_str_eq(r.res.spawn_step, "chdir");
	run_free(&r);
}
END_TEST

/* A worker ignores SIGPIPE and SIGTERM and may block signals: none of it reaches the command. */
START_TEST(test_signal_state_not_inherited)
{
	struct sigaction ign, old_term, old_pipe;
	sigset_t usr1, old_mask;
	static const struct { const char *script; int sig; } cases[] = {
		{ "kill -TERM $$; exit 0", SIGTERM },
		{ "kill -PIPE $$; exit 0", SIGPIPE },
		{ "kill -USR1 $$; exit 0", SIGUSR1 },
	};

	memset(&ign, 0, sizeof ign);
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	ck_assert_int_eq(sigaction(SIGTERM, &ign, &old_term), 0);
	ck_assert_int_eq(sigaction(SIGPIPE, &ign, &old_pipe), 0);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	ck_assert_int_eq(sigprocmask(SIG_BLOCK, &usr1, &old_mask), 0);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct run r = { 0 };
		struct tp_exec_spec spec = { 0 };

		run_sh(&r, &spec, cases[i].script);
		ck_assert_msg(r.res.signaled, "%s: not killed", cases[i].script);
		ck_assert_int_eq(r.res.signo, cases[i].sig);
		run_free(&r);
	}
	sigprocmask(SIG_SETMASK, &old_mask, NULL);
	sigaction(SIGPIPE, &old_pipe, NULL);
	sigaction(SIGTERM, &old_term, NULL);
}
END_TEST

START_TEST(test_bad_arguments)
{
	struct event_base *base = event_base_new();
	struct tp_exec_callbacks cb = { NULL, NULL, NULL, on_done, NULL };
	struct tp_exec_spec spec = { 0 };
	char *argv[] = { NULL };
	char err[128] = "";

	spec.argv = argv;
	ck_assert_ptr_null(tp_exec_start(base, &spec, &cb, err, sizeof err));
	ck_assert_str_ne(err, "");
	event_base_free(base);
}
END_TEST

static Suite *
exec_suite(void)
{
	Suite *s = suite_create("exec");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_cat_1mib);
	tcase_add_test(tc, test_stdin_not_read);
	tcase_add_test(tc, test_exit_status);
	tcase_add_test(tc, test_signaled);
	tcase_add_test(tc, test_stdout_overflow);
	tcase_add_test(tc, test_records);
	tcase_add_test(tc, test_record_too_long);
	tcase_add_test(tc, test_stderr_lines);
	tcase_add_test(tc, test_cancel_trapping_term);
	tcase_add_test(tc, test_cancel_sleep);
	tcase_add_test(tc, test_kill);
	tcase_add_test(tc, test_grandchild_holds_pipes);
	tcase_add_test(tc, test_only_fds_0_to_3);
	tcase_add_test(tc, test_env_exact);
	tcase_add_test(tc, test_spawn_enoent);
	tcase_add_test(tc, test_path_search);
	tcase_add_test(tc, test_rlimits);
	tcase_add_test(tc, test_cwd);
	tcase_add_test(tc, test_signal_state_not_inherited);
	tcase_add_test(tc, test_bad_arguments);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(exec_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
