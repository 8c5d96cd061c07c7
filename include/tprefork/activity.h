/* <tprefork/activity.h>: the C plugin API of tprefork (ABI version 1).
 *
 * A plugin is a shared object that tprefork's worker children load with dlopen(RTLD_NOW | RTLD_LOCAL)
 * after they start. It exports exactly one symbol, `tprefork_plugin` (TP_PLUGIN_SYMBOL): a const
 * struct tp_plugin that names the ABI version it was built for, a build signature, and a table of
 * activity functions. The loader checks the ABI version and the signature before it calls anything;
 * a plugin built for another ABI is refused by `tprefork -t`, at start and at reload, with one error
 * line.
 *
 *     #include <tprefork/activity.h>
 *
 *     static void
 *     echo(tp_activity_handle *h)
 *     {
 *             const struct tp_activity_task *t = tp_activity_task(h);
 *             tp_activity_set_result(h, t->input_json ? t->input_json : "null");
 *     }
 *
 *     static const struct tp_plugin_activity activities[] = {
 *             { "echo", echo },
 *             { NULL, NULL }
 *     };
 *     TP_PLUGIN_DEFINE("example", "1.0", activities);
 *
 * Build it with `cc -std=c11 -fPIC -shared -o example.so example.c` (no library to link: every
 * function below is an inline wrapper over a table of host functions that the handle carries). The
 * configuration names the file and maps Temporal activity types to table entries:
 *
 *     plugins = ( "/usr/lib/tprefork/example.so" );
 *     activities = ( { type = "Echo"; plugin = "example"; function = "echo"; } );
 *
 * (`plugin` is the file name without ".so", or the path as written in `plugins`; `function` defaults
 * to the activity type.)
 *
 * Threads. Each activity runs its function on one of the worker child's pool threads, so the
 * worker's event loop keeps polling, heartbeating and running other activities meanwhile. Every pool
 * thread starts with all signals blocked. Threads are reused between activities: what a function
 * leaves in its thread (thread-local variables, thread-specific data, the signal mask) is still there
 * for later activities on that thread, so do not rely on a fresh thread; destructors of thread-local
 * data run when the thread exits (after 30 s idle, or with the worker), not when the activity ends.
 * Several activities, of one function or of several, may run at the same time: functions must be
 * thread-safe (no unguarded global state).
 * An activity configured `inline = true` runs its function on the worker's event-loop thread instead
 * (with that thread's signal mask), in the loop iteration that received the task: no thread hand-over
 * and no wake-ups, but while it runs the worker does nothing else (no polls, no heartbeats, no other
 * activity's events), so it is only for functions that return within about a millisecond and never
 * block. There tp_activity_sleep returns TP_ACTIVITY_ESTATE at once, and heartbeat details and log
 * lines reach the worker when the function returns (the newest details; at most 64 lines).
 * The functions below may be called only from the thread that runs the activity, while its function
 * has not returned; the handle and everything it points to is invalid after the function returns.
 *
 * Outcome. The function reports by calling tp_activity_set_result (completed, with a result) or
 * tp_activity_set_failure (failed), at most one of them, once, and then returning. Returning without
 * either completes the activity with no result, unless it was cancelled: then it is reported as
 * cancelled. A failure set after a cancellation is reported as the cancellation too (as for the
 * exec handler); a result set after a cancellation is reported as completed.
 *
 * Cancellation. tprefork cannot stop a thread. When the activity is cancelled (the workflow asked for
 * it; the server no longer knows the task; the activity was paused or reset; the start-to-close
 * deadline passed; the worker is shutting down) it sets a flag, which the function must poll with
 * tp_activity_is_cancelled (or learn from tp_activity_heartbeat or tp_activity_sleep returning
 * TP_ACTIVITY_ECANCELLED) and then return soon. A function that ignores the flag keeps its slot until it
 * returns; nothing is reported for it after the local deadline (the server times the attempt out),
 * and at shutdown the worker process is killed at the shutdown deadline with the thread in it. As with
 * the SDKs, cancellation reaches an activity only through heartbeats: an activity that never
 * heartbeats learns of a workflow's cancellation request only at its deadline.
 *
 * Crashes. A plugin runs inside the worker process: a crash (SIGSEGV, abort) kills that child and
 * every activity it runs; the master fails them at once as retryable WorkerCrashed failures and starts
 * a new child.
 *
 * Stability. The names in this header are stable. Within one ABI version, structures only grow at
 * their end (into their reserved fields) and the host function table only gains entries; a plugin
 * built against an older header of the same ABI version keeps working. An incompatible change
 * increments TP_ACTIVITY_ABI_VERSION.
 */
#ifndef TPREFORK_ACTIVITY_H
#define TPREFORK_ACTIVITY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versioning ------------------------------------------------------------------------------------ */

/* The ABI this header describes. */
#define TP_ACTIVITY_ABI_VERSION 1

#define TP_ACTIVITY_STR_(x) #x
#define TP_ACTIVITY_STR(x) TP_ACTIVITY_STR_(x)
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define TP_ACTIVITY_SIG_ENDIAN "be"
#else
#define TP_ACTIVITY_SIG_ENDIAN "le"
#endif
/* The build signature: what else must agree between tprefork and a plugin for the ABI to hold (the
 * ABI version, the width of pointers, size_t and int64_t alignment, the byte order). The loader
 * compares it with its own, byte for byte. */
#define TP_ACTIVITY_SIGNATURE                                                                   \
	"tprefork-activity/" TP_ACTIVITY_STR(TP_ACTIVITY_ABI_VERSION) " ptr="                   \
	TP_ACTIVITY_STR(__SIZEOF_POINTER__) " size_t=" TP_ACTIVITY_STR(__SIZEOF_SIZE_T__)       \
	" long=" TP_ACTIVITY_STR(__SIZEOF_LONG__) " " TP_ACTIVITY_SIG_ENDIAN

/* The name of the one symbol a plugin exports. */
#define TP_PLUGIN_SYMBOL "tprefork_plugin"

/* ---- return codes ------------------------------------------------------------------------------------ */

#define TP_ACTIVITY_OK          0
#define TP_ACTIVITY_ECANCELLED (-1)  /* the activity has been cancelled (the call still did its work) */
#define TP_ACTIVITY_EINVAL     (-2)  /* a bad argument: NULL where text is needed, text that is not JSON */
#define TP_ACTIVITY_ESTATE     (-3)  /* a result or a failure was set already; a sleep in an inline
                                      * function */
#define TP_ACTIVITY_ENOMEM     (-4)  /* out of memory */

/* ---- the handle -------------------------------------------------------------------------------------- */

typedef struct tp_activity_handle tp_activity_handle;

/* An activity function. It runs on a pool thread (reused between activities), or on the worker's
 * loop thread when its activity is configured `inline`; h is valid until it returns. */
typedef void tp_activity_fn(tp_activity_handle *h);

/* One input payload, as Temporal delivered it (one per workflow-side argument). */
struct tp_activity_payload {
	const void *data;       /* the payload's bytes (not NUL-terminated in general) */
	size_t      len;
	const char *encoding;   /* its "encoding" metadata: "json/plain", "binary/null", "binary/plain",
	                         * "json/protobuf", ...; "" when absent */
};

/* What the task says about the activity. Strings are NUL-terminated and never NULL unless noted. */
struct tp_activity_task {
	const char *activity_type;
	const char *activity_id;
	const char *workflow_id;        /* "" for a standalone activity */
	const char *workflow_run_id;    /* the workflow's run id (a standalone activity's run id) */
	const char *workflow_type;      /* "" for a standalone activity */
	const char *task_queue;
	const char *namespace_name;
	int32_t     attempt;            /* 1 for the first attempt */
	int32_t     reserved0;
	int64_t     deadline_ms;        /* Unix time (ms) by which this attempt must finish; 0: none */
	int64_t     heartbeat_timeout_ms; /* 0: none */
	/* JSON of the heartbeat details the previous attempt recorded last, or NULL when there are none:
	 * resume from there. One details payload gives its JSON; several give a JSON array of them. */
	const char *heartbeat_details;
	/* The arguments as one JSON array text (json/plain and json/protobuf payloads verbatim,
	 * binary/null as null), or NULL when an argument has no JSON form (then read the payloads). */
	const char *input_json;
	void       *reserved[8];        /* zero */
};

/* The host's functions (the ABI's function table; entries are only ever added at the end). Call them
 * through the inline wrappers below. */
struct tp_activity_host {
	uint32_t abi_version;           /* TP_ACTIVITY_ABI_VERSION of the host */
	uint32_t size;                  /* sizeof(struct tp_activity_host) of the host */
	const struct tp_activity_task *(*task)(tp_activity_handle *h);
	size_t (*input_count)(tp_activity_handle *h);
	const struct tp_activity_payload *(*input)(tp_activity_handle *h, size_t i);
	int  (*heartbeat)(tp_activity_handle *h, const char *details_json);
	int  (*is_cancelled)(tp_activity_handle *h);
	int  (*sleep)(tp_activity_handle *h, int64_t ms);
	int  (*set_result)(tp_activity_handle *h, const char *result_json);
	int  (*set_failure)(tp_activity_handle *h, const char *type, const char *message,
	    int non_retryable, const char *details_json);
	void (*log)(tp_activity_handle *h, const char *message);
	void *reserved[8];
};

/* The handle: opaque but for its first member (the host's table). */
struct tp_activity_handle {
	const struct tp_activity_host *host;
};

/* ---- the API ------------------------------------------------------------------------------------------ */

/* The task's information (valid until the function returns). */
static inline const struct tp_activity_task *
tp_activity_task(tp_activity_handle *h)
{
	return h->host->task(h);
}

/* How many input payloads there are (the number of arguments the workflow passed). */
static inline size_t
tp_activity_input_count(tp_activity_handle *h)
{
	return h->host->input_count(h);
}

/* Input payload i (0-based), or NULL when i >= tp_activity_input_count(h). */
static inline const struct tp_activity_payload *
tp_activity_input(tp_activity_handle *h, size_t i)
{
	return h->host->input(h, i);
}

/* Record progress: details_json is one JSON document (NULL: no details, sent as JSON null). The call
 * only stores the details and wakes the worker's loop; it never blocks on the network. The worker
 * sends heartbeats as the SDKs do: the first at once, later ones at most once per throttle interval
 * (0.8 x the heartbeat timeout, or 30 s without one, at most 60 s), each carrying the newest details;
 * call it as often as convenient. The last recorded details go with a failure report and are given
 * to the next attempt (struct tp_activity_task.heartbeat_details).
 * Returns TP_ACTIVITY_OK, TP_ACTIVITY_ECANCELLED (recorded; the activity is cancelled: return soon),
 * TP_ACTIVITY_EINVAL (not one JSON document: nothing recorded) or TP_ACTIVITY_ENOMEM. */
static inline int
tp_activity_heartbeat(tp_activity_handle *h, const char *details_json)
{
	return h->host->heartbeat(h, details_json);
}

/* Non-zero once the activity has been cancelled. Cheap: poll it in loops. */
static inline int
tp_activity_is_cancelled(tp_activity_handle *h)
{
	return h->host->is_cancelled(h);
}

/* Sleep ms milliseconds, or less when the activity is cancelled meanwhile.
 * Returns TP_ACTIVITY_OK (slept the whole time) or TP_ACTIVITY_ECANCELLED; in an inline function
 * (configured `inline = true`) TP_ACTIVITY_ESTATE at once, without sleeping: it would stop the
 * worker's loop. */
static inline int
tp_activity_sleep(tp_activity_handle *h, int64_t ms)
{
	return h->host->sleep(h, ms);
}

/* Complete with a result: result_json is one JSON document (copied), sent as one json/plain payload;
 * NULL: no result (the workflow sees None/null).
 * Returns TP_ACTIVITY_OK, TP_ACTIVITY_EINVAL (not JSON: nothing set), TP_ACTIVITY_ESTATE (an outcome
 * was set already) or TP_ACTIVITY_ENOMEM. */
static inline int
tp_activity_set_result(tp_activity_handle *h, const char *result_json)
{
	return h->host->set_result(h, result_json);
}

/* Fail with an ApplicationFailure: type (NULL or "": "PluginFailed"), message (NULL: ""),
 * non_retryable (non-zero: Temporal does not retry), details_json (NULL: none; a JSON array gives one
 * details payload per element, any other JSON value one payload). All copied.
 * Returns TP_ACTIVITY_OK, TP_ACTIVITY_EINVAL (details_json not JSON: nothing set), TP_ACTIVITY_ESTATE
 * or TP_ACTIVITY_ENOMEM. */
static inline int
tp_activity_set_failure(tp_activity_handle *h, const char *type, const char *message,
    int non_retryable, const char *details_json)
{
	return h->host->set_failure(h, type, message, non_retryable, details_json);
}

/* One line for the worker's log, prefixed with the activity (as a command's stderr is). Lines are
 * rate-limited like a command's stderr; a message is cut at 4096 bytes. */
static inline void
tp_activity_log(tp_activity_handle *h, const char *message)
{
	h->host->log(h, message);
}

/* ---- the descriptor ------------------------------------------------------------------------------------ */

/* One entry of a plugin's table: `function = "NAME"` in the configuration selects it. */
struct tp_plugin_activity {
	const char     *name;
	tp_activity_fn *fn;
};

/* The exported descriptor. Members up to `activities` are the ABI's fixed prefix. */
struct tp_plugin {
	uint32_t    abi_version;        /* TP_ACTIVITY_ABI_VERSION the plugin was built for */
	uint32_t    size;               /* sizeof(struct tp_plugin) as the plugin saw it */
	const char *signature;          /* TP_ACTIVITY_SIGNATURE as the plugin saw it */
	const char *name;               /* the plugin's name, for logs */
	const char *version;            /* the plugin's own version, for logs (may be NULL) */
	const struct tp_plugin_activity *activities; /* ends with an entry whose name is NULL */
	void       *reserved[8];        /* zero */
};

#ifdef __cplusplus
#define TP_PLUGIN_EXTERN extern "C"
#else
#define TP_PLUGIN_EXTERN extern
#endif

/* Define the descriptor: TP_PLUGIN_DEFINE("name", "version", table); at file scope, once. The symbol
 * is exported even when the plugin is built with -fvisibility=hidden. */
#define TP_PLUGIN_DEFINE(name_, version_, table_)                                               \
	TP_PLUGIN_EXTERN __attribute__((visibility("default")))                                  \
	const struct tp_plugin tprefork_plugin;                                                  \
	const struct tp_plugin tprefork_plugin = {                                               \
		TP_ACTIVITY_ABI_VERSION, (uint32_t)sizeof(struct tp_plugin), TP_ACTIVITY_SIGNATURE, \
		(name_), (version_), (table_), { 0 }                                             \
	}

#ifdef __cplusplus
}
#endif

#endif
