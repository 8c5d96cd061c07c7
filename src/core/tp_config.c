#include "core/tp_config.h"

#include <errno.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tp_log.h"
#include "core/tp_mem.h"

#define DEFAULT_STATE_DIR TP_LOCALSTATEDIR "/lib/tprefork"

/* A parse in progress: the source name for error lines and the error list. */
struct ctx {
	const char              *name;
	struct tp_config_errors *errs;
	struct tp_config        *cfg;
};

static void errf(struct ctx *c, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
errf(struct ctx *c, int line, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	c->errs->lines = tp_xrealloc(c->errs->lines, (c->errs->n + 1) * sizeof(char *));
	c->errs->lines[c->errs->n++] = tp_xasprintf("%s:%d: %s", c->name, line, msg);
}

static int
line_of(const config_setting_t *s)
{
	int l = s ? config_setting_source_line(s) : 0;
	return l > 0 ? l : 1;
}

/* ---- key checks ----------------------------------------------------------------------------- */

static bool
name_in(const char *name, const char *const *allowed)
{
	for (; *allowed; allowed++)
		if (strcmp(name, *allowed) == 0)
			return true;
	return false;
}

/* Unknown keys are errors: a typo must not silently fall back to a default. */
static void
check_keys(struct ctx *c, const config_setting_t *group, const char *where,
    const char *const *allowed)
{
	int i, n = config_setting_length(group);

	for (i = 0; i < n; i++) {
		const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
		const char *nm = config_setting_name(s);
		if (nm && !name_in(nm, allowed))
			errf(c, line_of(s), "unknown setting '%s%s%s'", where, *where ? "." : "", nm);
	}
}

/* ---- typed getters: absent keeps the default; a wrong type is an error ---------------------- */

static const config_setting_t *
member(const config_setting_t *g, const char *name)
{
	return g ? config_setting_get_member(g, name) : NULL;
}

static void
get_str(struct ctx *c, const config_setting_t *g, const char *name, char **out)
{
	const config_setting_t *s = member(g, name);
	const char *v;

	if (s == NULL)
		return;
	v = config_setting_get_string(s);
	if (v == NULL) {
		errf(c, line_of(s), "'%s' must be a string", name);
		return;
	}
	free(*out);
	*out = tp_xstrdup(v);
}

static void
get_int(struct ctx *c, const config_setting_t *g, const char *name, long min, long max,
    long *out)
{
	const config_setting_t *s = member(g, name);
	long long v;

	if (s == NULL)
		return;
	if (config_setting_type(s) != CONFIG_TYPE_INT && config_setting_type(s) != CONFIG_TYPE_INT64) {
		errf(c, line_of(s), "'%s' must be an integer", name);
		return;
	}
	v = config_setting_get_int64(s);
	if (v < min || v > max) {
		errf(c, line_of(s), "'%s' must be between %ld and %ld (got %lld)", name, min, max, v);
		return;
	}
	*out = (long)v;
}

static void
get_int_field(struct ctx *c, const config_setting_t *g, const char *name, long min, long max,
    int *out, int scale)
{
	long v = *out / scale;
	get_int(c, g, name, min, max, &v);
	*out = (int)(v * scale);
}

static void
get_bool(struct ctx *c, const config_setting_t *g, const char *name, bool *out)
{
	const config_setting_t *s = member(g, name);

	if (s == NULL)
		return;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
		errf(c, line_of(s), "'%s' must be true or false", name);
		return;
	}
	*out = config_setting_get_bool(s) != 0;
}

/* A list/array of strings into a NULL-terminated vector. */
static char **
get_strv(struct ctx *c, const config_setting_t *s, const char *name, size_t *count)
{
	int i, n;
	char **v;

	if (!config_setting_is_aggregate(s) || config_setting_is_group(s)) {
		errf(c, line_of(s), "'%s' must be a list of strings, e.g. [ \"a\", \"b\" ]", name);
		return NULL;
	}
	n = config_setting_length(s);
	v = tp_xcalloc((size_t)n + 1, sizeof(char *));
	for (i = 0; i < n; i++) {
		const char *e = config_setting_get_string_elem(s, i);
		if (e == NULL) {
			errf(c, line_of(s), "'%s' element %d must be a string", name, i + 1);
			e = "";
		}
		v[i] = tp_xstrdup(e);
	}
	*count = (size_t)n;
	return v;
}

static void
strv_free(char **v)
{
	if (v == NULL)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* ---- sections ------------------------------------------------------------------------------- */

static int
split_address(struct ctx *c, int line, const char *addr)
{
	struct tp_config *cfg = c->cfg;
	const char *colon;

	free(cfg->host);
	free(cfg->port);
	cfg->host = cfg->port = NULL;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (rb == NULL || rb[1] != ':')
			goto bad;
		cfg->host = tp_xstrndup(addr + 1, (size_t)(rb - addr - 1));
		colon = rb + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL || colon == addr)
			goto bad;
		cfg->host = tp_xstrndup(addr, (size_t)(colon - addr));
	}
	long port;
	char pbuf[16];
	snprintf(pbuf, sizeof(pbuf), "%s", colon + 1);
	char *end;
	errno = 0;
	port = strtol(pbuf, &end, 10);
	if (errno || *end || port < 1 || port > 65535)
		goto bad;
	cfg->port = tp_xstrdup(colon + 1);
	return 0;
bad:
	errf(c, line, "temporal.address must be host:port (got \"%s\")", addr);
	return -1;
}

static void
parse_tls(struct ctx *c, const config_setting_t *t)
{
	static const char *const keys[] = { "enabled", "ca", "cert", "key", "server_name",
		"insecure_skip_verify", NULL };
	struct tp_config *cfg = c->cfg;

	if (t == NULL)
		return;
	if (!config_setting_is_group(t)) {
		errf(c, line_of(t), "'temporal.tls' must be a group { ... }");
		return;
	}
	check_keys(c, t, "temporal.tls", keys);
	cfg->tls = true; /* a tls group turns TLS on unless enabled = false */
	get_bool(c, t, "enabled", &cfg->tls);
	get_str(c, t, "ca", &cfg->tls_ca);
	get_str(c, t, "cert", &cfg->tls_cert);
	get_str(c, t, "key", &cfg->tls_key);
	get_str(c, t, "server_name", &cfg->tls_server_name);
	get_bool(c, t, "insecure_skip_verify", &cfg->tls_skip_verify);
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		errf(c, line_of(t), "temporal.tls: 'cert' and 'key' go together");
}

static void
parse_temporal(struct ctx *c, const config_setting_t *t)
{
	static const char *const keys[] = { "address", "namespace", "task_queue", "identity",
		"api_key_file", "tls", NULL };
	struct tp_config *cfg = c->cfg;

	if (t == NULL)
		return;
	if (!config_setting_is_group(t)) {
		errf(c, line_of(t), "'temporal' must be a group { ... }");
		return;
	}
	check_keys(c, t, "temporal", keys);
	get_str(c, t, "address", &cfg->address);
	get_str(c, t, "namespace", &cfg->namespace_);
	get_str(c, t, "task_queue", &cfg->task_queue);
	get_str(c, t, "identity", &cfg->identity);
	get_str(c, t, "api_key_file", &cfg->api_key_file);
	parse_tls(c, member(t, "tls"));
}

static void
parse_workers(struct ctx *c, const config_setting_t *w)
{
	static const char *const keys[] = { "count", "max_concurrent_activities", "pollers",
		"shutdown_timeout", "cancel_grace", "poll_timeout", "poll_drain_wait", "child_timeout",
		"report_retry", NULL };
	struct tp_config *cfg = c->cfg;

	if (w == NULL)
		return;
	if (!config_setting_is_group(w)) {
		errf(c, line_of(w), "'workers' must be a group { ... }");
		return;
	}
	check_keys(c, w, "workers", keys);
	get_int_field(c, w, "count", 1, 1024, &cfg->count, 1);
	get_int_field(c, w, "max_concurrent_activities", 1, 100000, &cfg->max_concurrent, 1);
	get_int_field(c, w, "pollers", 1, 1000, &cfg->pollers, 1);
	get_int_field(c, w, "shutdown_timeout", 1, 86400, &cfg->shutdown_timeout_ms, 1000);
	get_int_field(c, w, "cancel_grace", 0, 3600, &cfg->cancel_grace_ms, 1000);
	/* The server rejects poll deadlines under 2 s and warns under 10 s. */
	get_int_field(c, w, "poll_timeout", 2, 600, &cfg->poll_timeout_ms, 1000);
	get_int_field(c, w, "poll_drain_wait", 0, 3600, &cfg->poll_drain_wait_ms, 1000);
	get_int_field(c, w, "child_timeout", 1, 3600, &cfg->child_timeout_ms, 1000);
	get_int_field(c, w, "report_retry", 1, 86400, &cfg->report_retry_ms, 1000);
}

static void
parse_log(struct ctx *c, const config_setting_t *l)
{
	static const char *const keys[] = { "level", "file", NULL };
	static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
	char *level = NULL;

	if (l == NULL)
		return;
	if (!config_setting_is_group(l)) {
		errf(c, line_of(l), "'log' must be a group { ... }");
		return;
	}
	check_keys(c, l, "log", keys);
	get_str(c, l, "file", &c->cfg->log_file);
	get_str(c, l, "level", &level);
	if (level) {
		int i;
		for (i = 0; levels[i] && strcmp(levels[i], level) != 0; i++)
			;
		if (levels[i] == NULL)
			errf(c, line_of(member(l, "level")),
			    "log.level must be one of error, warn, info, debug (got \"%s\")", level);
		else
			c->cfg->log_level = i;
		free(level);
	}
}

static void
parse_journal(struct ctx *c, const config_setting_t *j)
{
	static const char *const keys[] = { "path", "enabled", "synchronous", "memory_cap",
		"commit_delay", NULL };
	static const char *const syncs[] = { "off", "normal", "full", NULL };
	struct tp_config *cfg = c->cfg;
	char *sync = NULL;
	long cap;

	if (j == NULL)
		return;
	if (!config_setting_is_group(j)) {
		errf(c, line_of(j), "'journal' must be a group { path = ...; }");
		return;
	}
	check_keys(c, j, "journal", keys);
	get_str(c, j, "path", &cfg->journal_path);
	get_bool(c, j, "enabled", &cfg->journal_enabled);
	get_str(c, j, "synchronous", &sync);
	if (sync) {
		int i;
		for (i = 0; syncs[i] && strcmp(syncs[i], sync) != 0; i++)
			;
		if (syncs[i] == NULL)
			errf(c, line_of(member(j, "synchronous")),
			    "journal.synchronous must be one of full, normal, off (got \"%s\")", sync);
		else
			cfg->journal_sync = i;
		free(sync);
	}
	/* In MiB. */
	cap = cfg->journal_memory_cap / (1024 * 1024);
	get_int(c, j, "memory_cap", 1, 1024 * 1024, &cap);
	cfg->journal_memory_cap = cap * 1024 * 1024;
	/* In ms. Up to 1 s: longer only widens the window of a crash for no further gain. */
	get_int_field(c, j, "commit_delay", 0, 1000, &cfg->journal_commit_delay_ms, 1);
}

/* Resolve a command to an absolute, executable path (PATH search for a bare name). */
static char *
resolve_command(const char *cmd)
{
	const char *path;
	char *dup, *p, *save = NULL;

	if (strchr(cmd, '/'))
		return access(cmd, X_OK) == 0 ? realpath(cmd, NULL) : NULL;
	path = getenv("PATH");
	if (path == NULL || *path == '\0')
		path = "/usr/local/bin:/usr/bin:/bin";
	dup = tp_xstrdup(path);
	for (p = strtok_r(dup, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
		char *cand = tp_xasprintf("%s/%s", p, cmd);
		struct stat st;
		if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
			free(dup);
			return cand;
		}
		free(cand);
	}
	free(dup);
	return NULL;
}

static void
parse_exec(struct ctx *c, const config_setting_t *a, struct tp_activity_conf *ac)
{
	const config_setting_t *s = member(a, "exec");
	char *abs;

	ac->kind = TP_HANDLER_EXEC;
	ac->argv = get_strv(c, s, "exec", &ac->argc);
	if (ac->argv == NULL)
		return;
	if (ac->argc == 0) {
		errf(c, line_of(s), "activity '%s': 'exec' needs at least the command", ac->type);
		return;
	}
	abs = resolve_command(ac->argv[0]);
	if (abs == NULL) {
		errf(c, line_of(s), "activity '%s': command '%s' not found or not executable",
		    ac->type, ac->argv[0]);
		return;
	}
	free(ac->argv[0]);
	ac->argv[0] = abs;
}

static void
parse_exec_options(struct ctx *c, const config_setting_t *a, struct tp_activity_conf *ac)
{
	const config_setting_t *s;
	long v;

	s = member(a, "env");
	if (s) {
		ac->env = get_strv(c, s, "env", &ac->nenv);
		for (size_t i = 0; ac->env && i < ac->nenv; i++)
			if (strchr(ac->env[i], '=') == NULL || ac->env[i][0] == '=')
				errf(c, line_of(s), "activity '%s': env entry \"%s\" is not NAME=VALUE",
				    ac->type, ac->env[i]);
	}
	get_str(c, a, "cwd", &ac->cwd);
	get_int_field(c, a, "kill_grace", 0, 3600, &ac->kill_grace_ms, 1000);
	v = (long)ac->stdout_cap;
	get_int(c, a, "stdout_cap", 1, 128L * 1024 * 1024, &v);
	ac->stdout_cap = (size_t)v;
	get_int(c, a, "rlimit_cpu", 1, 1L << 40, &ac->rlimit_cpu);
	get_int(c, a, "rlimit_as", 1L << 20, 1L << 50, &ac->rlimit_as);
	get_int(c, a, "rlimit_nofile", 4, 1L << 20, &ac->rlimit_nofile);
	s = member(a, "non_retryable_exit_codes");
	if (s) {
		int n = config_setting_length(s);
		if (!config_setting_is_array(s) && !config_setting_is_list(s)) {
			errf(c, line_of(s), "'non_retryable_exit_codes' must be a list of integers");
			return;
		}
		ac->nonretry_codes = tp_xcalloc((size_t)n + 1, sizeof(int));
		for (int i = 0; i < n; i++) {
			const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
			if (config_setting_type(e) != CONFIG_TYPE_INT ||
			    config_setting_get_int(e) < 1 || config_setting_get_int(e) > 255)
				errf(c, line_of(s), "non_retryable_exit_codes: element %d must be 1..255",
				    i + 1);
			else
				ac->nonretry_codes[ac->n_nonretry++] = config_setting_get_int(e);
		}
	}
}

static void
parse_activity(struct ctx *c, const config_setting_t *a, struct tp_activity_conf *ac)
{
	static const char *const keys[] = { "type", "exec", "plugin", "function", "env", "cwd",
		"kill_grace", "non_retryable_exit_codes", "stdout_cap", "rlimit_cpu", "rlimit_as",
		"rlimit_nofile", "inline", NULL };
	bool has_exec, has_plugin;

	ac->line = line_of(a);
	ac->kill_grace_ms = 5000;
	ac->stdout_cap = 2u * 1024 * 1024;
	ac->rlimit_cpu = ac->rlimit_as = ac->rlimit_nofile = -1;
	if (!config_setting_is_group(a)) {
		errf(c, ac->line, "each entry of 'activities' must be a group { type = ...; ... }");
		return;
	}
	check_keys(c, a, "activities", keys);
	get_str(c, a, "type", &ac->type);
	if (ac->type == NULL || ac->type[0] == '\0') {
		errf(c, ac->line, "activity without a 'type'");
		free(ac->type);
		ac->type = tp_xstrdup("");
		return;
	}
	has_exec = member(a, "exec") != NULL;
	has_plugin = member(a, "plugin") != NULL;
	if (has_exec == has_plugin) {
		errf(c, ac->line, "activity '%s' needs exactly one of 'exec' or 'plugin'", ac->type);
		return;
	}
	if (has_exec) {
		/* A command always runs in its own process: there is nothing to run inline. */
		if (member(a, "inline"))
			errf(c, line_of(member(a, "inline")), "activity '%s': 'inline' applies to plugin "
			    "activities only", ac->type);
		parse_exec(c, a, ac);
		parse_exec_options(c, a, ac);
	} else {
		static const char *const exec_only[] = { "env", "cwd", "kill_grace",
			"non_retryable_exit_codes", "stdout_cap", "rlimit_cpu", "rlimit_as",
			"rlimit_nofile", NULL };
		ac->kind = TP_HANDLER_PLUGIN;
		for (const char *const *k = exec_only; *k; k++)
			if (member(a, *k))
				errf(c, line_of(member(a, *k)), "activity '%s': '%s' applies to exec "
				    "activities only", ac->type, *k);
		get_str(c, a, "plugin", &ac->plugin);
		get_str(c, a, "function", &ac->function);
		ac->function_line = member(a, "function") ? line_of(member(a, "function")) : ac->line;
		if (ac->function == NULL)
			ac->function = tp_xstrdup(ac->type);
		get_bool(c, a, "inline", &ac->inline_run);
	}
}

static void
parse_activities(struct ctx *c, const config_setting_t *l)
{
	struct tp_config *cfg = c->cfg;
	int i, n;

	if (l == NULL)
		return;
	if (!config_setting_is_list(l)) {
		errf(c, line_of(l), "'activities' must be a list ( { ... }, { ... } )");
		return;
	}
	n = config_setting_length(l);
	cfg->activities = tp_xcalloc((size_t)n + 1, sizeof(*cfg->activities));
	for (i = 0; i < n; i++) {
		struct tp_activity_conf *ac = &cfg->activities[cfg->nactivities++];
		parse_activity(c, config_setting_get_elem(l, (unsigned)i), ac);
		for (size_t j = 0; ac->type && j + 1 < cfg->nactivities; j++)
			if (cfg->activities[j].type && strcmp(cfg->activities[j].type, ac->type) == 0)
				errf(c, ac->line, "activity type '%s' defined twice (first at line %d)",
				    ac->type, cfg->activities[j].line);
	}
}

/* The file name of a plugin path without a trailing ".so". */
static size_t
plugin_stem(const char *path, const char **stem)
{
	const char *base = strrchr(path, '/');
	size_t n;

	base = base ? base + 1 : path;
	n = strlen(base);
	if (n > 3 && strcmp(base + n - 3, ".so") == 0)
		n -= 3;
	*stem = base;
	return n;
}

/* plugins = ( "PATH", ... ): each resolved to an absolute path of an existing regular file; no two
 * with the same name (an activity's `plugin` names one by its file name). Whether a file is a valid
 * plugin is checked later, by loading it in a throwaway process (tp_plugin). */
static void
parse_plugins(struct ctx *c, const config_setting_t *s)
{
	struct tp_config *cfg = c->cfg;
	struct stat st;

	cfg->plugins_line = line_of(s);
	cfg->plugins = get_strv(c, s, "plugins", &cfg->nplugins);
	for (size_t i = 0; cfg->plugins && i < cfg->nplugins; i++) {
		char *abs = realpath(cfg->plugins[i], NULL);
		const char *a, *b;
		size_t na;

		if (abs == NULL || stat(abs, &st) != 0 || !S_ISREG(st.st_mode)) {
			errf(c, line_of(s), "plugin '%s': %s", cfg->plugins[i],
			    abs ? "not a regular file" : strerror(errno));
			free(abs);
			continue;
		}
		free(cfg->plugins[i]);
		cfg->plugins[i] = abs;
		na = plugin_stem(abs, &a);
		for (size_t j = 0; j < i; j++)
			if (plugin_stem(cfg->plugins[j], &b) == na && strncmp(a, b, na) == 0)
				errf(c, line_of(s), "plugins '%s' and '%s' have the same name '%.*s'",
				    cfg->plugins[j], abs, (int)na, a);
	}
}

const char *
tp_config_plugin_path(const struct tp_config *cfg, const char *name)
{
	char *abs = strchr(name, '/') ? realpath(name, NULL) : NULL;
	const char *found = NULL;

	for (size_t i = 0; found == NULL && i < cfg->nplugins; i++) {
		const char *stem, *base;
		size_t n = plugin_stem(cfg->plugins[i], &stem);

		base = strrchr(cfg->plugins[i], '/');
		base = base ? base + 1 : cfg->plugins[i];
		if (strcmp(name, cfg->plugins[i]) == 0 || (abs && strcmp(abs, cfg->plugins[i]) == 0) ||
		    strcmp(name, base) == 0 || (strlen(name) == n && strncmp(name, stem, n) == 0))
			found = cfg->plugins[i];
	}
	free(abs);
	return found;
}

static void
parse_root(struct ctx *c, const config_setting_t *root)
{
	static const char *const keys[] = { "temporal", "workers", "log", "journal", "pidfile",
		"user", "group", "plugins", "activities", "status", NULL };
	struct tp_config *cfg = c->cfg;
	const config_setting_t *s;

	check_keys(c, root, "", keys);
	s = member(root, "status");
	if (s && config_setting_is_group(s)) {
		static const char *const skeys[] = { "listen", NULL };
		check_keys(c, s, "status", skeys);
		get_str(c, s, "listen", &cfg->status_listen);
	} else if (s) {
		errf(c, line_of(s), "'status' must be a group { listen = \"127.0.0.1:9233\"; }");
	}
	parse_temporal(c, member(root, "temporal"));
	parse_workers(c, member(root, "workers"));
	parse_log(c, member(root, "log"));
	parse_journal(c, member(root, "journal"));
	get_str(c, root, "pidfile", &cfg->pidfile);
	get_str(c, root, "user", &cfg->user);
	get_str(c, root, "group", &cfg->group);
	s = member(root, "plugins");
	if (s)
		parse_plugins(c, s);
	parse_activities(c, member(root, "activities"));
}

/* ---- defaults, environment, cross-field validation ------------------------------------------ */

static void
set_defaults(struct tp_config *cfg)
{
	cfg->address = tp_xstrdup("127.0.0.1:7233");
	cfg->namespace_ = tp_xstrdup("default");
	cfg->task_queue = tp_xstrdup("tprefork");
	cfg->count = 4;
	cfg->max_concurrent = 8;
	cfg->pollers = 2;
	cfg->shutdown_timeout_ms = 30000;
	cfg->cancel_grace_ms = 5000;
	cfg->poll_timeout_ms = 70000;
	cfg->poll_drain_wait_ms = -1000;   /* unset: until the cancel phase (see validate) */
	cfg->child_timeout_ms = 60000;
	cfg->log_level = TP_LOG_INFO;
	cfg->report_retry_ms = 60000;
	cfg->journal_path = tp_xstrdup(DEFAULT_STATE_DIR "/journal.db");
	cfg->journal_enabled = true;
	cfg->journal_sync = 2;
	cfg->journal_memory_cap = 256L * 1024 * 1024;
	cfg->journal_commit_delay_ms = 100;
	cfg->pidfile = tp_xstrdup(TP_LOCALSTATEDIR "/run/tprefork.pid");
}

static void
env_str(const char *var, char **out)
{
	const char *v = getenv(var);
	if (v && *v) {
		free(*out);
		*out = tp_xstrdup(v);
	}
}

static void
apply_env(struct tp_config *cfg)
{
	env_str("TEMPORAL_ADDRESS", &cfg->address);
	env_str("TEMPORAL_NAMESPACE", &cfg->namespace_);
	env_str("TEMPORAL_API_KEY", &cfg->api_key);
	env_str("TEMPORAL_TLS_CA", &cfg->tls_ca);
	env_str("TEMPORAL_TLS_CERT", &cfg->tls_cert);
	env_str("TEMPORAL_TLS_KEY", &cfg->tls_key);
	env_str("TEMPORAL_TLS_SERVER_NAME", &cfg->tls_server_name);
	if (getenv("TEMPORAL_TLS") && strcmp(getenv("TEMPORAL_TLS"), "true") == 0)
		cfg->tls = true;
	if (cfg->tls_ca || cfg->tls_cert)
		cfg->tls = true;
}

static void
read_api_key(struct ctx *c)
{
	struct tp_config *cfg = c->cfg;
	struct stat st;
	char buf[8192];
	FILE *f;
	size_t n;

	if (cfg->api_key_file == NULL || cfg->api_key != NULL)
		return;
	f = fopen(cfg->api_key_file, "re");
	if (f == NULL) {
		errf(c, 1, "temporal.api_key_file '%s': %s", cfg->api_key_file, strerror(errno));
		return;
	}
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0077))
		errf(c, 1, "temporal.api_key_file '%s' is readable by group or others (chmod 600)",
		    cfg->api_key_file);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	if (n == 0)
		errf(c, 1, "temporal.api_key_file '%s' is empty", cfg->api_key_file);
	else
		cfg->api_key = tp_xstrdup(buf);
	explicit_bzero(buf, sizeof(buf));
}

static void
validate(struct ctx *c)
{
	struct tp_config *cfg = c->cfg;

	/* Without the server's poll completion, open polls are waited for until the drain's cancel
	 * phase by default, so a task handed over at the stop is still run. */
	if (cfg->poll_drain_wait_ms < 0)
		cfg->poll_drain_wait_ms = cfg->shutdown_timeout_ms > cfg->cancel_grace_ms
		    ? cfg->shutdown_timeout_ms - cfg->cancel_grace_ms : 0;

	split_address(c, 1, cfg->address);
	if (cfg->namespace_[0] == '\0')
		errf(c, 1, "temporal.namespace must not be empty");
	if (cfg->task_queue[0] == '\0')
		errf(c, 1, "temporal.task_queue must not be empty");
	if (cfg->pollers > cfg->max_concurrent)
		errf(c, 1, "workers.pollers (%d) must not exceed workers.max_concurrent_activities (%d):"
		    " a poll needs a free slot", cfg->pollers, cfg->max_concurrent);
	if (cfg->cancel_grace_ms >= cfg->shutdown_timeout_ms)
		errf(c, 1, "workers.cancel_grace (%d s) must be less than workers.shutdown_timeout (%d s)",
		    cfg->cancel_grace_ms / 1000, cfg->shutdown_timeout_ms / 1000);
	if (cfg->nactivities == 0)
		errf(c, 1, "no 'activities' configured: nothing to run");
	for (size_t i = 0; i < cfg->nactivities; i++) {
		struct tp_activity_conf *ac = &cfg->activities[i];
		const char *path;

		if (ac->kind != TP_HANDLER_PLUGIN || ac->plugin == NULL)
			continue;
		path = tp_config_plugin_path(cfg, ac->plugin);
		if (path == NULL)
			errf(c, ac->line, "activity '%s': plugin '%s' is not one of 'plugins'", ac->type,
			    ac->plugin);
		else
			ac->plugin_path = tp_xstrdup(path);
	}
	read_api_key(c);
}

struct tp_config *
tp_config_load_string(const char *text, const char *name, bool use_env,
    struct tp_config_errors *errs)
{
	struct tp_config *cfg = tp_xcalloc(1, sizeof(*cfg));
	struct ctx c = { name, errs, cfg };
	config_t cf;

	errs->lines = NULL;
	errs->n = 0;
	cfg->path = tp_xstrdup(name);
	cfg->text = tp_xstrdup(text);
	set_defaults(cfg);
	config_init(&cf);
	if (config_read_string(&cf, text) != CONFIG_TRUE) {
		errf(&c, config_error_line(&cf), "%s", config_error_text(&cf));
		config_destroy(&cf);
		tp_config_free(cfg);
		return NULL;
	}
	parse_root(&c, config_root_setting(&cf));
	config_destroy(&cf);
	if (use_env)
		apply_env(cfg);
	validate(&c);
	if (errs->n > 0) {
		tp_config_free(cfg);
		return NULL;
	}
	return cfg;
}

struct tp_config *
tp_config_load_file(const char *path, bool use_env, struct tp_config_errors *errs)
{
	struct ctx c = { path, errs, NULL };
	struct tp_config *cfg;
	char *text = NULL;
	size_t len = 0;
	FILE *f, *mem;
	char buf[65536];
	size_t n;

	errs->lines = NULL;
	errs->n = 0;
	f = fopen(path, "re");
	if (f == NULL) {
		errf(&c, 0, "cannot open: %s", strerror(errno));
		return NULL;
	}
	mem = open_memstream(&text, &len);
	if (mem == NULL) {
		fclose(f);
		errf(&c, 0, "cannot read: %s", strerror(errno));
		return NULL;
	}
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, mem);
	if (ferror(f)) {
		fclose(f);
		fclose(mem);
		free(text);
		errf(&c, 0, "cannot read: %s", strerror(errno));
		return NULL;
	}
	fclose(f);
	fclose(mem);
	if (strlen(text) != len) {
		free(text);
		errf(&c, 1, "the file contains a NUL byte");
		return NULL;
	}
	cfg = tp_config_load_string(text, path, use_env, errs);
	free(text);
	return cfg;
}

static void
activity_free(struct tp_activity_conf *ac)
{
	free(ac->type);
	strv_free(ac->argv);
	strv_free(ac->env);
	free(ac->cwd);
	free(ac->nonretry_codes);
	free(ac->plugin);
	free(ac->function);
	free(ac->plugin_path);
}

void
tp_config_free(struct tp_config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->nactivities; i++)
		activity_free(&cfg->activities[i]);
	free(cfg->activities);
	strv_free(cfg->plugins);
	if (cfg->api_key)
		explicit_bzero(cfg->api_key, strlen(cfg->api_key));
	free(cfg->api_key);
	free(cfg->path);
	free(cfg->text);
	free(cfg->address);
	free(cfg->host);
	free(cfg->port);
	free(cfg->namespace_);
	free(cfg->task_queue);
	free(cfg->identity);
	free(cfg->api_key_file);
	free(cfg->tls_ca);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_server_name);
	free(cfg->log_file);
	free(cfg->journal_path);
	free(cfg->pidfile);
	free(cfg->status_listen);
	free(cfg->user);
	free(cfg->group);
	free(cfg);
}

void
tp_config_errors_free(struct tp_config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		free(errs->lines[i]);
	free(errs->lines);
	errs->lines = NULL;
	errs->n = 0;
}

const struct tp_activity_conf *
tp_config_find_activity(const struct tp_config *cfg, const char *type)
{
	for (size_t i = 0; i < cfg->nactivities; i++)
		if (strcmp(cfg->activities[i].type, type) == 0)
			return &cfg->activities[i];
	return NULL;
}
