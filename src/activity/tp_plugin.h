/* tp_plugin: the plugin handler. C functions from shared objects (<tprefork/activity.h>), each
 * activity on one of the process's pool threads, reporting back to the event loop that started it.
 *
 * Loading. tp_plugin_open dlopens a file with RTLD_NOW | RTLD_LOCAL, finds the descriptor symbol
 * TP_PLUGIN_SYMBOL and checks, before anything of the plugin is called: the ABI version, the
 * descriptor's size, the build signature (byte for byte), and a well-formed table (names set and
 * unique, functions set). A worker child keeps one registry of open plugins (tp_plugin_load_config
 * fills it after the child starts; tp_plugin_start opens a plugin it does not hold yet).
 *
 * Checking. tp_plugin_check_config does the same for every plugin of a configuration, and checks that
 * each plugin activity's function is in its plugin's table, in a throwaway child process: a plugin
 * whose constructor crashes or hangs cannot take the caller (the master, at start and at reload; or
 * `tprefork -t`) down with it.
 *
 * Running. tp_plugin_start copies the task's information and payloads and hands the run to a pool
 * thread, which calls the function with a handle. The pool is per process: a thread is created only
 * when none is idle (with every signal blocked), is reused for later runs, and exits after
 * TP_PLUGIN_IDLE_TIMEOUT_MS without work. Whatever crosses from the thread to the loop goes through
 * one mutex-protected record per run: the newest heartbeat details (older ones are replaced, so a
 * plugin may heartbeat in a tight loop), queued log lines, and the outcome. A run with news puts
 * itself on the ready list of its base's notifier, one eventfd with one persistent event per
 * event_base (made on the base's first run), written only when the list was empty; one wake-up of
 * the loop takes the whole list and calls the callbacks of every run on it. The cancel flag goes the
 * other way (an atomic flag plus a condition variable for tp_activity_sleep). When the function has
 * returned, the loop calls done and frees the run; the thread is idle again by then.
 *
 * A thread cannot be stopped: tp_plugin_cancel only sets the flag, and done runs when the function
 * returns, however late. At shutdown the worker process is killed with the thread in it.
 *
 * Inline runs (an activity configured `inline`, or TP_PLUGIN_RUN_INLINE). For functions that return
 * in microseconds and never block, the thread hop costs more than the call: two wake-ups per run,
 * and the outcome a loop turn late. An inline run is the same run (same copies, same handle) but
 * skips the pool: tp_plugin_start appends it to its notifier's inline list and makes the notifier's
 * second event (fd -1) active with event_active, which costs no system call. libevent runs that
 * event's callback later in the same loop iteration; it calls the function of every queued run on
 * the loop thread and then ends each run as a pool run ends (its log lines, its newest heartbeat
 * details, then done), in that same iteration. done is never called from tp_plugin_start: the caller
 * stores the run first. While an inline function runs, the loop does nothing else, so
 * tp_activity_sleep returns TP_ACTIVITY_ESTATE at once instead of blocking it.
 *
 * Lower layer: never logs; log lines and problems are handed back.
 */
#ifndef TP_PLUGIN_H
#define TP_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>

#include "activity/tp_activity.h"
#include "tprefork/activity.h"

struct event_base;
struct tp_config;
struct tp_config_errors;
struct tp_plugin_lib;
struct tp_plugin_run;

/* How long a throwaway check process may take before it is killed (the plugin counts as hanging). */
#define TP_PLUGIN_CHECK_TIMEOUT_MS 10000
/* Log lines a plugin may queue before the loop takes them; more are counted and dropped. */
#define TP_PLUGIN_LOG_QUEUE 64
/* A pool thread without work for this long exits (an idle child gives its memory back). */
#define TP_PLUGIN_IDLE_TIMEOUT_MS 30000

/* ---- libraries ------------------------------------------------------------------------------------ */

/* Open and check the plugin at path. Returns it, or NULL with err filled (one line, without the path):
 * "cannot load: <dlerror>", "no symbol 'tprefork_plugin' (not a tprefork plugin)", "built for ABI
 * version N; this tprefork supports 1", "build signature ... differs from ...", "descriptor ...". */
struct tp_plugin_lib *tp_plugin_open(const char *path, char *err, size_t errlen);

/* The function called name in lib's table, or NULL. */
tp_activity_fn *tp_plugin_find(const struct tp_plugin_lib *lib, const char *name);

/* The names of lib's table as "a, b, c" into buf (cut to fit). */
void tp_plugin_names(const struct tp_plugin_lib *lib, char *buf, size_t len);

const struct tp_plugin *tp_plugin_descriptor(const struct tp_plugin_lib *lib);

/* Stop the pool (its idle threads are joined: one may run lib's code at its exit, destructors of
 * thread-specific data), then dlclose and free (NULL: nothing). No activity of lib may be running. */
void tp_plugin_close(struct tp_plugin_lib *lib);

/* ---- configuration ----------------------------------------------------------------------------------- */

/* In a throwaway child process: open every plugin of cfg and check that every plugin activity's
 * function exists. One "FILE:LINE: message" line per problem is appended to errs (a plugin that
 * crashes or hangs the check is one problem). Returns the number of problems (0: valid), or -1 when
 * the check process could not be run (a line says why). Blocks up to timeout_ms (0: the default). */
int tp_plugin_check_config(const struct tp_config *cfg, int timeout_ms, struct tp_config_errors *errs);

/* In this process (a worker child): open every plugin of cfg into the registry and check the
 * functions, as tp_plugin_check_config does. Returns the number of problems (lines in errs); the
 * plugins that loaded stay usable. */
int tp_plugin_load_config(const struct tp_config *cfg, struct tp_config_errors *errs);

/* Stop the pool, then close every plugin of the registry. Returns 0, or -1 (nothing closed) while a
 * run is active; its thread, not waited for, exits when the function returns. */
int tp_plugin_unload_all(void);

/* ---- runs -------------------------------------------------------------------------------------------- */

/* tp_plugin_start_fn's flags. */
#define TP_PLUGIN_RUN_INLINE 0x1u  /* call the function on base's loop thread, not on a pool thread */

/* Start the function of ac (a plugin activity) for the task on a pool thread, or inline on base's
 * loop when ac->inline_run. info is copied. The callbacks run on base's loop: heartbeat with the
 * newest details, log with each line the plugin logged, done exactly once after the function
 * returned (the run is freed after done returns), never from within this call. Returns NULL with err
 * filled when the plugin cannot be opened, has no such function, base's notifier cannot be made
 * (eventfd, events), or no thread is idle and a new one cannot be started. */
struct tp_plugin_run *tp_plugin_start(struct event_base *base, const struct tp_activity_conf *ac,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen);

/* The same with the function given (tests); flags: 0 or TP_PLUGIN_RUN_INLINE. */
struct tp_plugin_run *tp_plugin_start_fn(struct event_base *base, tp_activity_fn *fn, unsigned flags,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen);

/* Set the cancel flag (idempotent; no-op once done ran). */
void tp_plugin_cancel(struct tp_plugin_run *r);

/* Runs started and not yet done in this process. */
int tp_plugin_active(void);

/* base is about to be freed: unregister and free its notifier (the eventfd and events its runs wake
 * the loop through). Call it before event_base_free for every base runs were started on; a later
 * base at the same address would otherwise find a notifier of the freed one. A run of base still
 * active (abandoned: the loop is going away) keeps the eventfd open for its thread; it is never
 * reported. An inline run whose function has not been called yet is dropped: freed, never called,
 * never reported (its pointer is invalid from here on). No-op for a base without runs. */
void tp_plugin_release_base(struct event_base *base);

/* Tests: the idle timeout of pool threads, in ms (<= 0: TP_PLUGIN_IDLE_TIMEOUT_MS). It applies from
 * the next time a thread becomes idle. */
void tp_plugin_set_idle_timeout(int ms);

#endif
