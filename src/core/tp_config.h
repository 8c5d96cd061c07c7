/* tp_config: the configuration contract (libconfig syntax), its defaults and its validation.
 *
 * A configuration is parsed into a new, immutable struct tp_config; a reload builds another one and
 * swaps it in only when it is valid (nginx's cycle idea). Temporal's standard environment variables
 * (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*) override the file.
 *
 * Errors are reported as lines "FILE:LINE: message" (one per problem), never logged here.
 */
#ifndef TP_CONFIG_H
#define TP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

enum tp_handler_kind { TP_HANDLER_EXEC = 1, TP_HANDLER_PLUGIN = 2 };

struct tp_activity_conf {
	char  *type;                 /* Temporal activity type name */
	enum tp_handler_kind kind;
	int    line;                 /* where it was defined */
	/* exec */
	char **argv;                 /* NULL-terminated; argv[0] resolved to an absolute path */
	size_t argc;
	char **env;                  /* NULL-terminated "K=V" additions to the allowlisted environment */
	size_t nenv;
	char  *cwd;                  /* NULL: the worker's */
	int    kill_grace_ms;        /* SIGTERM -> SIGKILL */
	int   *nonretry_codes;       /* exit codes that fail without retry */
	size_t n_nonretry;
	size_t stdout_cap;           /* bytes */
	long   rlimit_cpu;           /* seconds, -1: unset */
	long   rlimit_as;            /* bytes, -1: unset */
	long   rlimit_nofile;        /* -1: unset */
	/* plugin */
	char  *plugin;               /* plugin name (file name without .so, or a path of `plugins`) */
	char  *function;             /* the name in the plugin's table of functions */
	char  *plugin_path;          /* the entry of tp_config.plugins that `plugin` names */
	int    function_line;        /* where `function` was defined (else the activity's line) */
	bool   inline_run;           /* `inline`: the function runs on the loop thread, not a pool
	                              * thread (for functions that return at once and never block) */
};

struct tp_config {
	char  *path;                 /* the file it was read from ("-" or a name for strings) */
	char  *text;                 /* the exact text that was parsed (handed to children) */

	/* temporal */
	char  *address;              /* host:port as written */
	char  *host;
	char  *port;
	char  *namespace_;
	char  *task_queue;
	char  *identity;             /* NULL: "<pid>@<hostname>@tprefork" per process */
	char  *api_key_file;
	char  *api_key;              /* read from api_key_file or TEMPORAL_API_KEY; never logged */
	bool   tls;
	char  *tls_ca;
	char  *tls_cert;
	char  *tls_key;
	char  *tls_server_name;
	bool   tls_skip_verify;

	/* workers */
	int    count;                /* children */
	int    max_concurrent;       /* slots per child */
	int    pollers;              /* open polls per child */
	int    shutdown_timeout_ms;
	int    cancel_grace_ms;
	int    poll_timeout_ms;      /* grpc-timeout of a poll */
	int    poll_drain_wait_ms;   /* without the server capability: how long a drain waits for open
	                              * polls before cancelling them (default: shutdown - cancel_grace) */
	int    child_timeout_ms;     /* a child silent for longer is replaced */
	int    report_retry_ms;      /* a child retries a report this long, then hands it to the master */

	/* log */
	char  *log_file;             /* NULL: stderr */
	int    log_level;            /* enum tp_log_level */

	char  *journal_path;
	bool   journal_enabled;      /* false: no journal (nothing survives a crash; for measurements) */
	int    journal_sync;         /* synchronous: 0 off, 1 normal, 2 full (tp_journal_sync) */
	long   journal_memory_cap;   /* bytes of undelivered reports the master holds in memory */
	int    journal_commit_delay_ms; /* in-flight rows wait this long for their commit (0..1000) */
	char  *pidfile;
	char  *status_listen;        /* status endpoint "host:port"; NULL: none */
	char  *user;
	char  *group;

	char **plugins;              /* NULL-terminated absolute paths (resolved at load) */
	size_t nplugins;
	int    plugins_line;         /* where 'plugins' was defined (0: absent) */

	struct tp_activity_conf *activities;
	size_t nactivities;
};

/* Problems found while loading: one "FILE:LINE: message" line each. */
struct tp_config_errors {
	char  **lines;
	size_t  n;
};

/* Parse and validate the file at path. Returns the configuration, or NULL with errs filled
 * (the caller frees errs with tp_config_errors_free). Environment overrides are applied when
 * use_env is true. */
struct tp_config *tp_config_load_file(const char *path, bool use_env,
    struct tp_config_errors *errs);

/* The same from text already read; name is used in error lines. */
struct tp_config *tp_config_load_string(const char *text, const char *name, bool use_env,
    struct tp_config_errors *errs);

void tp_config_free(struct tp_config *cfg);
void tp_config_errors_free(struct tp_config_errors *errs);

/* The path in cfg->plugins that a plugin activity's `plugin` names, or NULL: name is either an entry
 * of `plugins` as resolved, or the file name of one without its ".so" suffix (or with it). */
const char *tp_config_plugin_path(const struct tp_config *cfg, const char *name);

/* The activity configured for type, or NULL. */
const struct tp_activity_conf *tp_config_find_activity(const struct tp_config *cfg,
    const char *type);

#endif
