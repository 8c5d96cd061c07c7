#include "activity/tp_activity.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "activity/tp_exec.h"
#include "activity/tp_plugin.h"
#include "core/tp_config.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"

/* Variables of the worker's environment a command may see. Everything else is withheld (secrets
 * such as TEMPORAL_API_KEY live in the worker's environment). */
static const char *const env_allow[] = { "PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
	"LC_NUMERIC", "LC_MESSAGES", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", NULL };

struct tp_activity_run {
	struct tp_exec               *exec;     /* one of exec and plugin */
	struct tp_plugin_run         *plugin;
	struct tp_activity_callbacks  cb;
	const struct tp_activity_conf *ac;
	char                          last_stderr[512];
	bool                          cancelled;
	/* log lines: a token bucket (TP_ACTIVITY_LOG_BURST, refilled at TP_ACTIVITY_LOG_RATE/s) */
	double                        log_tokens;
	int64_t                       log_last_ms;
	unsigned long                 log_dropped;
};

/* ---- log lines, rate-limited ---------------------------------------------------------------- */

static struct tp_activity_run *
run_new(const struct tp_activity_conf *ac, const struct tp_activity_callbacks *cb)
{
	struct tp_activity_run *r = tp_xcalloc(1, sizeof(*r));

	r->cb = *cb;
	r->ac = ac;
	r->log_tokens = TP_ACTIVITY_LOG_BURST;
	r->log_last_ms = tp_now_mono_ms();
	return r;
}

static void
log_line(struct tp_activity_run *r, const char *line, size_t len)
{
	int64_t now = tp_now_mono_ms();

	r->log_tokens += (double)(now - r->log_last_ms) * TP_ACTIVITY_LOG_RATE / 1000.0;
	if (r->log_tokens > TP_ACTIVITY_LOG_BURST)
		r->log_tokens = TP_ACTIVITY_LOG_BURST;
	r->log_last_ms = now;
	if (r->log_tokens < 1.0) {
		r->log_dropped++;
		return;
	}
	r->log_tokens -= 1.0;
	if (r->cb.log)
		r->cb.log(r->cb.arg, line, len);
}

/* Before done: say how many lines the rate limit left out. */
static void
log_summary(struct tp_activity_run *r)
{
	char buf[160];
	int n;

	if (r->log_dropped == 0 || r->cb.log == NULL)
		return;
	n = snprintf(buf, sizeof(buf), "%lu line(s) of output not logged (rate limit: %d lines, "
	    "then %d per second)", r->log_dropped, TP_ACTIVITY_LOG_BURST, TP_ACTIVITY_LOG_RATE);
	r->cb.log(r->cb.arg, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void
env_add(char ***env, size_t *n, char *kv)
{
	*env = tp_xrealloc(*env, (*n + 2) * sizeof(char *));
	(*env)[(*n)++] = kv;
	(*env)[*n] = NULL;
}

char **
tp_activity_env(const struct tp_activity_conf *ac, const struct tp_activity_info *info)
{
	char **env = tp_xcalloc(1, sizeof(char *));
	size_t n = 0;

	for (const char *const *k = env_allow; *k; k++) {
		const char *v = getenv(*k);
		if (v)
			env_add(&env, &n, tp_xasprintf("%s=%s", *k, v));
	}
	if (getenv("PATH") == NULL)
		env_add(&env, &n, tp_xstrdup("PATH=/usr/local/bin:/usr/bin:/bin"));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_ACTIVITY_TYPE=%s", info->type));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_ACTIVITY_ID=%s", info->activity_id));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_WORKFLOW_ID=%s", info->workflow_id));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_RUN_ID=%s", info->run_id));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_WORKFLOW_TYPE=%s", info->workflow_type));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_ATTEMPT=%d", info->attempt));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_TASK_QUEUE=%s", info->task_queue));
	env_add(&env, &n, tp_xasprintf("TEMPORAL_NAMESPACE=%s", info->namespace_));
	if (info->deadline_ms > 0)
		env_add(&env, &n, tp_xasprintf("TEMPORAL_DEADLINE=%.3f", info->deadline_ms / 1000.0));
	if (info->heartbeat_timeout_ms > 0)
		env_add(&env, &n, tp_xasprintf("TEMPORAL_HEARTBEAT_TIMEOUT=%.3f",
		    info->heartbeat_timeout_ms / 1000.0));
	if (info->heartbeat_details)
		env_add(&env, &n, tp_xasprintf("TEMPORAL_HEARTBEAT_DETAILS=%s", info->heartbeat_details));
	for (size_t i = 0; i < ac->nenv; i++)
		env_add(&env, &n, tp_xstrdup(ac->env[i]));
	return env;
}

void
tp_activity_env_free(char **env)
{
	if (env == NULL)
		return;
	for (char **p = env; *p; p++)
		free(*p);
	free(env);
}

/* ---- exec results -> outcomes --------------------------------------------------------------- */

static bool
code_is_nonretryable(const struct tp_activity_conf *ac, int code)
{
	for (size_t i = 0; i < ac->n_nonretry; i++)
		if (ac->nonretry_codes[i] == code)
			return true;
	return false;
}

static void
outcome_from_error_record(struct tp_activity_outcome *o, json_t *rec)
{
	json_t *t = json_object_get(rec, "type");
	json_t *m = json_object_get(rec, "message");
	json_t *nr = json_object_get(rec, "non_retryable");

	o->type = json_is_string(t) ? json_string_value(t) : "ExecFailed";
	o->message = json_is_string(m) ? json_string_value(m) : "";
	o->non_retryable = json_is_true(nr);
	o->details = json_object_get(rec, "details");
}

static void
on_exec_done(void *arg, const struct tp_exec_result *res)
{
	struct tp_activity_run *r = arg;
	struct tp_activity_outcome o;
	char msg[1024];

	memset(&o, 0, sizeof(o));
	o.kind = TP_OUTCOME_FAILED;
	o.cancelled = r->cancelled || res->cancelled;
	o.message = msg;
	if (res->stdout_overflow) {
		o.type = "OutputTooLarge";
		snprintf(msg, sizeof(msg), "the command wrote more than %zu bytes to stdout",
		    r->ac->stdout_cap);
		o.non_retryable = true;
	} else if (res->spawn_failed) {
		o.type = "ExecSpawnFailed";
		snprintf(msg, sizeof(msg), "cannot execute %s: %s%s%s", r->ac->argv[0],
		    res->spawn_step && strcmp(res->spawn_step, "execve") != 0 ? res->spawn_step : "",
		    res->spawn_step && strcmp(res->spawn_step, "execve") != 0 ? ": " : "",
		    strerror(res->spawn_errno));
	} else if (res->exited && res->exit_code == 0) {
		o.kind = TP_OUTCOME_COMPLETED;
		o.result = (const char *)res->out;
		o.result_len = res->out_len;
	} else if (res->exited && res->error) {
		outcome_from_error_record(&o, res->error);
	} else if (res->exited) {
		o.type = "ExecFailed";
		snprintf(msg, sizeof(msg), "command exited with status %d%s%s", res->exit_code,
		    r->last_stderr[0] ? ": " : "", r->last_stderr);
		o.non_retryable = code_is_nonretryable(r->ac, res->exit_code);
	} else {
		o.type = "ExecSignaled";
		snprintf(msg, sizeof(msg), "command killed by signal %d (%s)%s%s", res->signo,
		    strsignal(res->signo), r->last_stderr[0] ? ": " : "", r->last_stderr);
	}
	log_summary(r);
	r->cb.done(r->cb.arg, &o);
	free(r);
}

static void
on_exec_heartbeat(void *arg, json_t *details)
{
	struct tp_activity_run *r = arg;
	if (r->cb.heartbeat)
		r->cb.heartbeat(r->cb.arg, details);
}

static void
on_exec_stderr(void *arg, const char *line, size_t len)
{
	struct tp_activity_run *r = arg;
	size_t n = len < sizeof(r->last_stderr) - 1 ? len : sizeof(r->last_stderr) - 1;

	if (len > 0) {
		memcpy(r->last_stderr, line, n);
		r->last_stderr[n] = '\0';
	}
	log_line(r, line, len);
}

static void
on_exec_bad_record(void *arg, const char *line, size_t len)
{
	struct tp_activity_run *r = arg;
	char buf[600];
	int n = snprintf(buf, sizeof(buf), "ignored a bad record on fd 3: %.*s",
	    (int)(len > 400 ? 400 : len), line);
	if (n > 0)
		log_line(r, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static size_t
exec_rlimits(const struct tp_activity_conf *ac, struct tp_exec_rlimit *rl)
{
	size_t n = 0;

	if (ac->rlimit_cpu > 0)
		rl[n++] = (struct tp_exec_rlimit){ RLIMIT_CPU, (unsigned long)ac->rlimit_cpu,
			(unsigned long)ac->rlimit_cpu + 5 };
	if (ac->rlimit_as > 0)
		rl[n++] = (struct tp_exec_rlimit){ RLIMIT_AS, (unsigned long)ac->rlimit_as,
			(unsigned long)ac->rlimit_as };
	if (ac->rlimit_nofile > 0)
		rl[n++] = (struct tp_exec_rlimit){ RLIMIT_NOFILE, (unsigned long)ac->rlimit_nofile,
			(unsigned long)ac->rlimit_nofile };
	return n;
}

static struct tp_activity_run *
start_exec(struct event_base *base, const struct tp_activity_conf *ac,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen)
{
	struct tp_activity_run *r = run_new(ac, cb);
	struct tp_exec_callbacks xcb = { on_exec_heartbeat, on_exec_stderr, on_exec_bad_record,
		on_exec_done, r };
	struct tp_exec_rlimit rl[3];
	struct tp_exec_spec spec;
	char **env = tp_activity_env(ac, info);

	memset(&spec, 0, sizeof(spec));
	spec.argv = ac->argv;
	spec.envp = env;
	spec.cwd = ac->cwd;
	spec.input = (const uint8_t *)info->input;
	spec.input_len = info->input_len;
	spec.stdout_cap = ac->stdout_cap;
	spec.kill_grace_ms = ac->kill_grace_ms > 0 ? ac->kill_grace_ms : 1;
	spec.rlimits = rl;
	spec.nrlimits = exec_rlimits(ac, rl);
	if (info->input == NULL) {
		snprintf(err, errlen, "an argument has no JSON form");
		free(r);
		tp_activity_env_free(env);
		return NULL;
	}
	r->exec = tp_exec_start(base, &spec, &xcb, err, errlen);
	tp_activity_env_free(env);
	if (r->exec == NULL) {
		free(r);
		return NULL;
	}
	return r;
}

/* ---- plugins -------------------------------------------------------------------------------- */

static void
on_plugin_heartbeat(void *arg, json_t *details)
{
	struct tp_activity_run *r = arg;

	if (r->cb.heartbeat)
		r->cb.heartbeat(r->cb.arg, details);
}

static void
on_plugin_log(void *arg, const char *line, size_t len)
{
	log_line(arg, line, len);
}

static void
on_plugin_done(void *arg, const struct tp_activity_outcome *o)
{
	struct tp_activity_run *r = arg;
	struct tp_activity_outcome out = *o;

	out.cancelled = o->cancelled || r->cancelled;
	log_summary(r);
	r->cb.done(r->cb.arg, &out);
	free(r);
}

static struct tp_activity_run *
start_plugin(struct event_base *base, const struct tp_activity_conf *ac,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen)
{
	struct tp_activity_run *r = run_new(ac, cb);
	struct tp_activity_callbacks pcb = { on_plugin_heartbeat, on_plugin_log, on_plugin_done, r };

	r->plugin = tp_plugin_start(base, ac, info, &pcb, err, errlen);
	if (r->plugin == NULL) {
		free(r);
		return NULL;
	}
	return r;
}

struct tp_activity_run *
tp_activity_start(struct event_base *base, const struct tp_activity_conf *ac,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen)
{
	switch (ac->kind) {
	case TP_HANDLER_EXEC:
		return start_exec(base, ac, info, cb, err, errlen);
	case TP_HANDLER_PLUGIN:
		return start_plugin(base, ac, info, cb, err, errlen);
	default:
		snprintf(err, errlen, "unknown handler kind %d", (int)ac->kind);
		return NULL;
	}
}

void
tp_activity_cancel(struct tp_activity_run *r)
{
	r->cancelled = true;
	if (r->exec)
		tp_exec_cancel(r->exec);
	if (r->plugin)
		tp_plugin_cancel(r->plugin);
}

void
tp_activity_kill(struct tp_activity_run *r)
{
	r->cancelled = true;
	if (r->exec)
		tp_exec_kill(r->exec);
	if (r->plugin)
		tp_plugin_cancel(r->plugin);  /* a thread cannot be stopped: done comes when it returns */
}

int
tp_activity_pid(const struct tp_activity_run *r)
{
	return r->exec ? (int)tp_exec_pid(r->exec) : 0;
}
