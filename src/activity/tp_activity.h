/* tp_activity: run one activity through its configured handler and turn what the handler did into
 * an outcome the worker reports. The exec handler is tp_exec; the plugin handler is tp_plugin.
 *
 * Failure types the handlers produce (all ApplicationFailure):
 *   ExecFailed       the command exited non-zero without an error record (retryable unless the exit
 *                    code is in non_retryable_exit_codes); message names the status and the last
 *                    stderr line
 *   ExecSignaled     the command was killed by a signal (retryable)
 *   ExecSpawnFailed  the command could not be started (retryable: the operator may fix it)
 *   OutputTooLarge   stdout exceeded stdout_cap (non-retryable: the result cannot be delivered)
 *   <type>           from the command's {"error": {...}} record on fd 3
 * and for plugins (tp_plugin):
 *   <type>           from tp_activity_set_failure (default PluginFailed)
 *   Cancelled        the function returned without an outcome after a cancellation
 *
 * stderr lines of a command and log lines of a plugin go to the log callback rate-limited: a burst of
 * TP_ACTIVITY_LOG_BURST lines, then TP_ACTIVITY_LOG_RATE lines per second; the lines left out are
 * counted and reported in one line when the activity ends.
 * Lower layer: never logs; stderr lines are handed to a callback. */
#ifndef TP_ACTIVITY_H
#define TP_ACTIVITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tprefork/activity.h"

struct event_base;
struct tp_activity_conf;

#define TP_ACTIVITY_LOG_BURST 20
#define TP_ACTIVITY_LOG_RATE  5

/* What a handler knows of the task it runs. Strings are borrowed for the call to start only. */
struct tp_activity_info {
	const char *type;
	const char *activity_id;
	const char *workflow_id;        /* "" for standalone activities */
	const char *run_id;
	const char *workflow_type;
	const char *task_queue;
	const char *namespace_;
	int         attempt;
	int64_t     deadline_ms;        /* wall clock (Unix ms) the activity must finish by; 0: none */
	int64_t     heartbeat_timeout_ms;
	const char *heartbeat_details;  /* JSON of the last recorded details, or NULL */
	const char *input;              /* the arguments as one JSON array; NULL: an argument has no
	                                 * JSON form (plugins then read the payloads) */
	size_t      input_len;
	const struct tp_activity_payload *payloads; /* the raw arguments (plugin handlers); may be NULL */
	size_t      npayloads;
};

enum tp_outcome_kind { TP_OUTCOME_COMPLETED = 1, TP_OUTCOME_FAILED = 2 };

struct tp_activity_outcome {
	enum tp_outcome_kind kind;
	/* completed */
	const char *result;             /* JSON text, or NULL / empty: no result */
	size_t      result_len;
	/* failed */
	const char *type;
	const char *message;
	bool        non_retryable;
	json_t     *details;            /* borrowed; may be NULL */
	bool        cancelled;          /* the handler was stopped by tp_activity_cancel/kill */
};

struct tp_activity_callbacks {
	void (*heartbeat)(void *arg, json_t *details);           /* borrowed */
	void (*log)(void *arg, const char *line, size_t len);    /* a stderr line or a bad record */
	void (*done)(void *arg, const struct tp_activity_outcome *o); /* exactly once */
	void  *arg;
};

struct tp_activity_run;

/* Start the handler of ac for the task. Returns NULL with err filled if it cannot start. */
struct tp_activity_run *tp_activity_start(struct event_base *base,
    const struct tp_activity_conf *ac, const struct tp_activity_info *info,
    const struct tp_activity_callbacks *cb, char *err, size_t errlen);
/* Ask the handler to stop (SIGTERM then SIGKILL after kill_grace; plugins: the cancel flag). */
void tp_activity_cancel(struct tp_activity_run *r);
/* Stop now (SIGKILL; plugins: the cancel flag, as a thread cannot be stopped: done runs when the
 * function returns). */
void tp_activity_kill(struct tp_activity_run *r);
/* Pid of the command (0 for plugins). */
int  tp_activity_pid(const struct tp_activity_run *r);

/* Build the command's environment: the allowlisted variables of the current environment, the
 * activity info, then the configured additions. NULL-terminated, malloc'd; free with
 * tp_activity_env_free. */
char **tp_activity_env(const struct tp_activity_conf *ac, const struct tp_activity_info *info);
void   tp_activity_env_free(char **env);

#endif
