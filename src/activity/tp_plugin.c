/* tp_plugin: the plugin handler (see tp_plugin.h).
 *
 * Threads and ownership:
 *   loop thread   (the thread that runs the event loops and calls tp_plugin_*) owns the registry,
 *                 active_runs, the notifiers (one per event_base: an eventfd and its persistent
 *                 event, the inline event and list, plus the count of the base's unfinished runs)
 *                 and a run's loop side (base, callbacks, `done`). It creates a run, hands it to the
 *                 pool, calls the callbacks, and frees the run once its function has returned. It
 *                 joins pool threads. It calls the functions of inline runs itself.
 *   pool thread   calls one run's function at a time; through the handle it reads the run's immutable
 *                 copies (task, payloads) and writes the run's shared part under `mu`. Between runs
 *                 it waits on its own semaphore; it exits after idle_timeout_ms without work.
 *   shared        pool.mu: the idle and exited lists, each thread's `run`, `quit` and deadline,
 *                 pool.epoch, the idle timeout. notifier.mu: the notifier's ready list (runs with news
 *                 for the loop, linked through `ready_next`). run.mu: the newest heartbeat details,
 *                 the log queue, the outcome, `returned`, `queued`, `cancelled` (mirrored in the atomic
 *                 `cancel_flag` for a lock-free poll).
 *   Nobody holds two of these mutexes at once.
 *
 * Wake-ups. A run with news (details, a log line, "returned") sets `queued` under run.mu; if it was
 * not set already, it appends itself to its notifier's ready list and, when the list was empty,
 * writes the eventfd, both under notifier.mu. The loop reads the eventfd before it takes the whole
 * list, so a run appended after the take finds the list empty and writes again: no wake-up is lost,
 * and the eventfd is written once per loop wake-up however many runs have news. The loop clears
 * `queued` when it takes a run's state under run.mu. As the write happens under notifier.mu, the
 * loop cannot take a run (and free it, or its notifier) before its thread has let go of both.
 *
 * The pool. A run goes to the most recently idle thread (so that spare threads age out), or to a new
 * one when none is idle; a new thread starts with every signal blocked. A thread that ends a run puts
 * itself back on the idle list before it reports the end, so a run started from the done callback
 * finds it there. A thread idle too long moves itself to the exited list; the loop joins it at the
 * next start or when the pool stops. pool_stop (tp_plugin_close, tp_plugin_unload_all) joins the
 * idle threads, before any dlclose: a thread that ran a plugin's function may run its code once more
 * when it exits (thread-specific data destructors). A thread busy then (an abandoned run) is not
 * waited for: the epoch changed, so when its function returns it reports the run, detaches itself
 * and exits.
 *
 * Inline runs never meet the pool, the eventfd or the ready list. The loop thread queues one on its
 * notifier's inline list and makes the inline event active (event_active: no system call, and
 * libevent runs the callback in the current or, from outside a loop, the next loop iteration). The
 * callback takes the whole list, calls each function, then hands what it left (taken under run.mu as
 * for a pool run, though nobody else writes it) to the callbacks, done last. The handle's functions
 * see that the run is inline: they never queue it (the callback takes everything once the function
 * has returned), and tp_activity_sleep refuses to block the loop.
 */
#include "activity/tp_plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/tp_buf.h"
#include "core/tp_config.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"

#define LOG_LINE_MAX          4096
#define TABLE_MAX             100000   /* entries: a table without its terminator is refused */
#define DEFAULT_FAILURE_TYPE  "PluginFailed"

struct tp_plugin_lib {
	char                   *path;
	void                   *dl;
	const struct tp_plugin *desc;
};

enum outcome { OUT_NONE, OUT_RESULT, OUT_FAILURE };

struct notifier;

struct tp_plugin_run {
	struct tp_activity_handle     h;           /* first: the plugin's handle */
	/* immutable while the function runs */
	struct tp_activity_task       task;
	char                         *strs[9];     /* owned copies behind task's strings */
	struct tp_activity_payload   *inputs;      /* owned, with the data and encodings */
	size_t                        ninputs;
	tp_activity_fn               *fn;
	struct notifier              *n;           /* of base */
	bool                          inline_run;  /* called on the loop thread (TP_PLUGIN_RUN_INLINE) */
	/* loop side */
	struct tp_activity_callbacks  cb;
	bool                          done;        /* done ran (or is running) */
	struct tp_plugin_run         *inline_next; /* on the notifier's inline list */
	/* shared, under n->mu */
	struct tp_plugin_run         *ready_next;
	/* shared, under mu */
	pthread_mutex_t               mu;
	pthread_cond_t                cv;          /* signalled on cancel (tp_activity_sleep) */
	bool                          cancelled;
	atomic_bool                   cancel_flag;
	bool                          queued;      /* on the ready list, or taken and not yet looked at */
	bool                          returned;    /* the function has returned */
	json_t                       *hb;          /* newest heartbeat details not yet taken (owned) */
	char                         *logq[TP_PLUGIN_LOG_QUEUE];
	int                           nlog;
	unsigned long                 log_dropped;
	enum outcome                  outcome;
	char                         *result;      /* JSON text, NULL: no result */
	char                         *f_type, *f_message;
	bool                          f_non_retryable;
	json_t                       *f_details;
};

/* How the runs of one event_base reach its loop: made when the first run starts on the base, kept
 * (registered) until tp_plugin_release_base. */
struct notifier {
	struct event_base            *base;
	struct event                 *ev;          /* EV_READ | EV_PERSIST on efd */
	int                           efd;
	int                           nruns;       /* runs of base started and not finished (loop) */
	struct notifier              *next;        /* loop thread */
	/* inline runs (loop thread) */
	struct event                 *inline_ev;   /* fd -1, made active by inline_queue; NULL: released */
	struct tp_plugin_run         *inl, *inl_tail;  /* queued, their functions not called yet */
	pthread_mutex_t               mu;
	struct tp_plugin_run         *ready, *ready_tail;  /* runs with news for the loop (mu) */
};

/* One thread of the pool. */
struct pool_thread {
	pthread_t                     tid;
	sem_t                         wake;        /* posted: a run was handed over, or quit */
	/* under pool.mu */
	struct tp_plugin_run         *run;         /* handed over, not started yet */
	bool                          quit;        /* the pool stops: exit (the stopper joins) */
	unsigned                      epoch;       /* pool.epoch when created */
	struct timespec               until;       /* idle: exit at this time (CLOCK_MONOTONIC) */
	struct pool_thread           *next;        /* on the idle or the exited list */
};

/* The process's pool of plugin threads. */
static struct {
	pthread_mutex_t               mu;
	struct pool_thread           *idle;        /* waiting for a run, most recently idle first */
	struct pool_thread           *exited;      /* idle too long and gone: to be joined */
	unsigned                      epoch;       /* incremented by pool_stop */
	int                           idle_timeout_ms;
} pool = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL, 0, TP_PLUGIN_IDLE_TIMEOUT_MS };

static struct notifier *notifiers;  /* loop thread */
static struct notifier *orphans;    /* released with a run still active: never freed */

static void pool_stop(void);

/* The worker's registry of open plugins (loop thread only). */
static struct tp_plugin_lib **registry;
static size_t                 nregistry;
static int                    active_runs;

static void add_err(struct tp_config_errors *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
add_err(struct tp_config_errors *e, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	e->lines = tp_xrealloc(e->lines, (e->n + 1) * sizeof(char *));
	e->lines[e->n++] = tp_xstrdup(msg);
}

/* ---- libraries ----------------------------------------------------------------------------------------- */

static bool
table_ok(const struct tp_plugin *d, char *err, size_t errlen)
{
	const struct tp_plugin_activity *a;
	size_t n = 0;

	if (d->activities == NULL) {
		snprintf(err, errlen, "the descriptor has no table of activities");
		return false;
	}
	for (a = d->activities; a->name != NULL && n < TABLE_MAX; a++, n++) {
		if (a->fn == NULL) {
			snprintf(err, errlen, "the table's entry '%.100s' has no function", a->name);
			return false;
		}
		for (const struct tp_plugin_activity *b = d->activities; b < a; b++)
			if (strcmp(a->name, b->name) == 0) {
				snprintf(err, errlen, "the table names '%.100s' twice", a->name);
				return false;
			}
	}
	if (n == 0 || n == TABLE_MAX) {
		snprintf(err, errlen, "the table of activities is %s", n ? "not terminated" : "empty");
		return false;
	}
	return true;
}

static bool
descriptor_ok(const struct tp_plugin *d, char *err, size_t errlen)
{
	if (d->abi_version != TP_ACTIVITY_ABI_VERSION) {
		snprintf(err, errlen, "built for plugin ABI version %u; this tprefork supports version %d",
		    d->abi_version, TP_ACTIVITY_ABI_VERSION);
		return false;
	}
	if (d->size < offsetof(struct tp_plugin, reserved)) {
		snprintf(err, errlen, "the descriptor is too small (%u bytes)", d->size);
		return false;
	}
	if (d->signature == NULL || strcmp(d->signature, TP_ACTIVITY_SIGNATURE) != 0) {
		snprintf(err, errlen, "build signature \"%.200s\" differs from tprefork's \"%s\"",
		    d->signature ? d->signature : "(none)", TP_ACTIVITY_SIGNATURE);
		return false;
	}
	return table_ok(d, err, errlen);
}

struct tp_plugin_lib *
tp_plugin_open(const char *path, char *err, size_t errlen)
{
	struct tp_plugin_lib *lib;
	const struct tp_plugin *desc;
	const char *e;
	void *dl;

	(void)dlerror();
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (dl == NULL) {
		e = dlerror();
		snprintf(err, errlen, "cannot load: %s", e ? e : "dlopen failed");
		return NULL;
	}
	(void)dlerror();
	desc = dlsym(dl, TP_PLUGIN_SYMBOL);
	if (desc == NULL) {
		snprintf(err, errlen, "no symbol '%s': not a tprefork plugin (define it with "
		    "TP_PLUGIN_DEFINE from <tprefork/activity.h>)", TP_PLUGIN_SYMBOL);
		dlclose(dl);
		return NULL;
	}
	if (!descriptor_ok(desc, err, errlen)) {
		dlclose(dl);
		return NULL;
	}
	lib = tp_xcalloc(1, sizeof *lib);
	lib->path = tp_xstrdup(path);
	lib->dl = dl;
	lib->desc = desc;
	return lib;
}

tp_activity_fn *
tp_plugin_find(const struct tp_plugin_lib *lib, const char *name)
{
	for (const struct tp_plugin_activity *a = lib->desc->activities; a->name; a++)
		if (strcmp(a->name, name) == 0)
			return a->fn;
	return NULL;
}

void
tp_plugin_names(const struct tp_plugin_lib *lib, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (const struct tp_plugin_activity *a = lib->desc->activities; a->name && n < len; a++) {
		int w = snprintf(buf + n, len - n, "%s%s", n ? ", " : "", a->name);
		if (w < 0)
			break;
		n += (size_t)w;
	}
}

const struct tp_plugin *
tp_plugin_descriptor(const struct tp_plugin_lib *lib)
{
	return lib->desc;
}

void
tp_plugin_close(struct tp_plugin_lib *lib)
{
	if (lib == NULL)
		return;
	pool_stop();  /* a thread that ran lib's functions may run its code again when it exits */
	dlclose(lib->dl);
	free(lib->path);
	free(lib);
}

/* ---- the registry ------------------------------------------------------------------------------------ */

static struct tp_plugin_lib *
registry_get(const char *path, char *err, size_t errlen)
{
	struct tp_plugin_lib *lib;

	for (size_t i = 0; i < nregistry; i++)
		if (strcmp(registry[i]->path, path) == 0)
			return registry[i];
	lib = tp_plugin_open(path, err, errlen);
	if (lib == NULL)
		return NULL;
	registry = tp_xrealloc(registry, (nregistry + 1) * sizeof *registry);
	registry[nregistry++] = lib;
	return lib;
}

int
tp_plugin_unload_all(void)
{
	pool_stop();
	if (active_runs > 0)
		return -1;
	for (size_t i = 0; i < nregistry; i++)
		tp_plugin_close(registry[i]);
	free(registry);
	registry = NULL;
	nregistry = 0;
	return 0;
}

int
tp_plugin_active(void)
{
	return active_runs;
}

/* ---- configuration checks -------------------------------------------------------------------------- */

/* Open plugin i of cfg (through the registry, or on its own); a problem becomes a line in errs. */
static struct tp_plugin_lib *
open_nth(const struct tp_config *cfg, size_t i, bool use_registry, struct tp_config_errors *errs)
{
	struct tp_plugin_lib *lib;
	char err[1024];

	lib = use_registry ? registry_get(cfg->plugins[i], err, sizeof err)
	                   : tp_plugin_open(cfg->plugins[i], err, sizeof err);
	if (lib == NULL)
		add_err(errs, "%s:%d: plugin '%s' refused: %s", cfg->path, cfg->plugins_line,
		    cfg->plugins[i], err);
	return lib;
}

/* Every plugin activity's function must be in the table of its plugin (libs[i] is plugin i, NULL
 * when it did not load: its activities are not checked again). */
static void
check_functions(const struct tp_config *cfg, struct tp_plugin_lib **libs,
    struct tp_config_errors *errs)
{
	char names[512];

	for (size_t a = 0; a < cfg->nactivities; a++) {
		const struct tp_activity_conf *ac = &cfg->activities[a];
		struct tp_plugin_lib *lib = NULL;

		if (ac->kind != TP_HANDLER_PLUGIN || ac->plugin_path == NULL)
			continue;
		for (size_t i = 0; i < cfg->nplugins; i++)
			if (strcmp(cfg->plugins[i], ac->plugin_path) == 0)
				lib = libs[i];
		if (lib == NULL || tp_plugin_find(lib, ac->function) != NULL)
			continue;
		tp_plugin_names(lib, names, sizeof names);
		add_err(errs, "%s:%d: activity '%s': plugin '%s' has no function '%s' (it has: %s)",
		    cfg->path, ac->function_line, ac->type, ac->plugin, ac->function, names);
	}
}

int
tp_plugin_load_config(const struct tp_config *cfg, struct tp_config_errors *errs)
{
	struct tp_plugin_lib **libs = tp_xcalloc(cfg->nplugins + 1, sizeof *libs);
	size_t before = errs->n;

	for (size_t i = 0; i < cfg->nplugins; i++)
		libs[i] = open_nth(cfg, i, true, errs);
	check_functions(cfg, libs, errs);
	free(libs);
	return (int)(errs->n - before);
}

/* The check process's report, one record per line: "L<i>" plugin i is being opened, "E<line>" a
 * problem, "D" finished. */
static void
report_write(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(2);
		s += w;
		n -= (size_t)w;
	}
}

static void
report_lines(int fd, struct tp_config_errors *errs, size_t *sent)
{
	for (; *sent < errs->n; (*sent)++) {
		char *line = errs->lines[*sent];
		for (char *p = line; *p; p++)
			if ((unsigned char)*p < 0x20)
				*p = ' ';  /* one problem, one line */
		report_write(fd, "E", 1);
		report_write(fd, line, strlen(line));
		report_write(fd, "\n", 1);
	}
}

/* Close every descriptor above 2 but keep (best effort: without close_range they stay open, and
 * CLOEXEC ones close at no exec anyway). The caller's sockets and files are none of a plugin's
 * business, and a constructor must not write into them. */
static void
child_close_fds(int keep)
{
#ifdef SYS_close_range
	if (keep > 3)
		(void)syscall(SYS_close_range, 3u, (unsigned)keep - 1, 0u);
	(void)syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u);
#else
	(void)keep;
#endif
}

/* The throwaway check process: the caller's signal handlers must not run here, and it must not
 * outlive its parent. It exits with _exit: nothing of the parent's (stdio buffers, atexit) runs. */
static void __attribute__((noreturn))
check_child(const struct tp_config *cfg, int fd)
{
	struct tp_config_errors errs = { NULL, 0 };
	struct tp_plugin_lib **libs;
	size_t sent = 0;
	char rec[32];

	tp_sig_reset_after_fork(0);
	(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1)
		_exit(3);  /* the parent died before PDEATHSIG was set */
	child_close_fds(fd);
	libs = tp_xcalloc(cfg->nplugins + 1, sizeof *libs);
	for (size_t i = 0; i < cfg->nplugins; i++) {
		int n = snprintf(rec, sizeof rec, "L%zu\n", i);
		report_write(fd, rec, (size_t)n);
		libs[i] = open_nth(cfg, i, false, &errs);
		report_lines(fd, &errs, &sent);
	}
	check_functions(cfg, libs, &errs);
	report_lines(fd, &errs, &sent);
	report_write(fd, "D\n", 2);
	_exit(0);
}

/* Has the report's last line, "D", arrived? (A process a constructor started may keep the pipe
 * open after the check process has finished.) */
static bool
report_finished(const struct tp_buf *b)
{
	const char *d = (const char *)b->data;

	return b->len >= 2 && d[b->len - 2] == 'D' && d[b->len - 1] == '\n' &&
	    (b->len == 2 || d[b->len - 3] == '\n');
}

/* Read the report until it is finished, EOF or the deadline. Returns 0, or -1 at the deadline. */
static int
report_read(int fd, int timeout_ms, struct tp_buf *out)
{
	int64_t deadline = tp_now_mono_ms() + timeout_ms;
	char buf[4096];

	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		int64_t left = deadline - tp_now_mono_ms();
		ssize_t n;
		int rc;

		if (left <= 0)
			return -1;
		rc = poll(&p, 1, (int)left);
		if (rc < 0 && errno != EINTR)
			return -1;
		if (rc <= 0)
			continue;
		n = read(fd, buf, sizeof buf);
		if (n == 0)
			return 0;
		if (n < 0 && errno != EINTR && errno != EAGAIN)
			return 0;
		if (n > 0 && tp_buf_append(out, buf, (size_t)n) == 0 && report_finished(out))
			return 0;
	}
}

/* Turn the report into lines of errs; returns the plugin being opened when it stopped (-1: none)
 * and whether it finished. */
static long
report_parse(char *text, struct tp_config_errors *errs, bool *finished)
{
	long current = -1;
	char *save = NULL;

	*finished = false;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == 'E')
			add_err(errs, "%s", line + 1);
		else if (line[0] == 'L')
			current = strtol(line + 1, NULL, 10);
		else if (line[0] == 'D')
			*finished = true;
	}
	return current;
}

static void
report_abnormal(const struct tp_config *cfg, long current, bool timed_out, int status, int timeout_ms,
    struct tp_config_errors *errs)
{
	const char *path = current >= 0 && (size_t)current < cfg->nplugins ? cfg->plugins[current] : "?";
	char why[128];

	if (timed_out)
		snprintf(why, sizeof why, "did not finish loading within %d ms (killed)", timeout_ms);
	else if (WIFSIGNALED(status))
		snprintf(why, sizeof why, "crashed while loading: signal %d (%s)", WTERMSIG(status),
		    strsignal(WTERMSIG(status)));
	else
		snprintf(why, sizeof why, "ended the process while loading (exit status %d)",
		    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	add_err(errs, "%s:%d: plugin '%s' refused: %s", cfg->path, cfg->plugins_line, path, why);
}

int
tp_plugin_check_config(const struct tp_config *cfg, int timeout_ms, struct tp_config_errors *errs)
{
	struct tp_buf out = TP_BUF_INIT(1024 * 1024);
	sigset_t all, old;
	size_t before = errs->n;
	int fds[2], status = 0, rc, e;
	bool finished;
	long current;
	pid_t pid;

	if (cfg->nplugins == 0)
		return 0;
	if (timeout_ms <= 0)
		timeout_ms = TP_PLUGIN_CHECK_TIMEOUT_MS;
	if (pipe2(fds, O_CLOEXEC) < 0) {
		add_err(errs, "%s:%d: cannot check the plugins: pipe: %s", cfg->path, cfg->plugins_line,
		    strerror(errno));
		return -1;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);  /* no handler of ours may run in the child */
	pid = fork();
	if (pid == 0) {
		close(fds[0]);
		check_child(cfg, fds[1]);
	}
	e = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	close(fds[1]);
	if (pid < 0) {
		close(fds[0]);
		add_err(errs, "%s:%d: cannot check the plugins: fork: %s", cfg->path, cfg->plugins_line,
		    strerror(e));
		return -1;
	}
	rc = report_read(fds[0], timeout_ms, &out);
	close(fds[0]);
	if (rc < 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	current = report_parse(out.data ? (char *)out.data : (char *)"", errs, &finished);
	tp_buf_free(&out);
	if (!finished)
		report_abnormal(cfg, current, rc < 0, status, timeout_ms, errs);
	return (int)(errs->n - before);
}

/* ---- the handle's functions (plugin thread) ------------------------------------------------------- */

static struct tp_plugin_run *
run_of(tp_activity_handle *h)
{
	return (struct tp_plugin_run *)(void *)h;  /* h is the run's first member */
}

/* Called with r->mu held, after a change the loop must see: must r go on the ready list? */
static bool
need_queue(struct tp_plugin_run *r)
{
	if (r->inline_run)
		return false;  /* the loop takes everything when the function has returned */
	if (r->queued)
		return false;  /* on the list, or taken and not looked at yet: the loop will see it */
	r->queued = true;
	return true;
}

/* Append r to its notifier's ready list (need_queue said so), and wake the loop when the list was
 * empty. Once the mutex is released the loop may take r: after the call that reports "returned", the
 * caller touches neither r nor the notifier. */
static void
ready_push(struct tp_plugin_run *r)
{
	struct notifier *n = r->n;
	uint64_t one = 1;

	pthread_mutex_lock(&n->mu);
	r->ready_next = NULL;
	if (n->ready_tail != NULL) {
		n->ready_tail->ready_next = r;  /* the loop has not taken the list yet: no write needed */
	} else {
		n->ready = r;
		while (write(n->efd, &one, sizeof one) < 0 && errno == EINTR)
			;
		/* EAGAIN: the counter is saturated, so the loop is woken already. */
	}
	n->ready_tail = r;
	pthread_mutex_unlock(&n->mu);
}

static const struct tp_activity_task *
h_task(tp_activity_handle *h)
{
	return &run_of(h)->task;
}

static size_t
h_input_count(tp_activity_handle *h)
{
	return run_of(h)->ninputs;
}

static const struct tp_activity_payload *
h_input(tp_activity_handle *h, size_t i)
{
	struct tp_plugin_run *r = run_of(h);

	return i < r->ninputs ? &r->inputs[i] : NULL;
}

static int
h_is_cancelled(tp_activity_handle *h)
{
	return atomic_load(&run_of(h)->cancel_flag) ? 1 : 0;
}

/* Parse one JSON document (NULL: JSON null). Returns NULL when text is not JSON. */
static json_t *
parse_json(const char *text)
{
	json_error_t jerr;

	if (text == NULL)
		return json_null();
	return json_loads(text, JSON_DECODE_ANY, &jerr);
}

static int
h_heartbeat(tp_activity_handle *h, const char *details_json)
{
	struct tp_plugin_run *r = run_of(h);
	json_t *v = parse_json(details_json), *old;
	bool w, c;

	if (v == NULL)
		return TP_ACTIVITY_EINVAL;
	pthread_mutex_lock(&r->mu);
	old = r->hb;
	r->hb = v;
	w = need_queue(r);
	c = r->cancelled;
	pthread_mutex_unlock(&r->mu);
	json_decref(old);
	if (w)
		ready_push(r);
	return c ? TP_ACTIVITY_ECANCELLED : TP_ACTIVITY_OK;
}

static int
h_sleep(tp_activity_handle *h, int64_t ms)
{
	struct tp_plugin_run *r = run_of(h);
	struct timespec until;
	bool c;

	if (r->inline_run)
		return TP_ACTIVITY_ESTATE;  /* it would stop the loop: no polls, heartbeats or cancels */
	clock_gettime(CLOCK_MONOTONIC, &until);
	if (ms < 0)
		ms = 0;
	until.tv_sec += (time_t)(ms / 1000);
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&r->mu);
	while (!r->cancelled && pthread_cond_timedwait(&r->cv, &r->mu, &until) != ETIMEDOUT)
		;
	c = r->cancelled;
	pthread_mutex_unlock(&r->mu);
	return c ? TP_ACTIVITY_ECANCELLED : TP_ACTIVITY_OK;
}

static int
h_set_result(tp_activity_handle *h, const char *result_json)
{
	struct tp_plugin_run *r = run_of(h);
	json_t *check = parse_json(result_json);
	char *copy = NULL;
	int rc = TP_ACTIVITY_OK;

	if (check == NULL)
		return TP_ACTIVITY_EINVAL;
	json_decref(check);
	if (result_json != NULL && (copy = strdup(result_json)) == NULL)
		return TP_ACTIVITY_ENOMEM;
	pthread_mutex_lock(&r->mu);
	if (r->outcome != OUT_NONE) {
		rc = TP_ACTIVITY_ESTATE;
	} else {
		r->outcome = OUT_RESULT;
		r->result = copy;
		copy = NULL;
	}
	pthread_mutex_unlock(&r->mu);
	free(copy);
	return rc;
}

static int
h_set_failure(tp_activity_handle *h, const char *type, const char *message, int non_retryable,
    const char *details_json)
{
	struct tp_plugin_run *r = run_of(h);
	json_t *details = details_json ? parse_json(details_json) : NULL;
	char *t, *m;
	int rc = TP_ACTIVITY_OK;

	if (details_json != NULL && details == NULL)
		return TP_ACTIVITY_EINVAL;
	t = strdup(type && *type ? type : DEFAULT_FAILURE_TYPE);
	m = strdup(message ? message : "");
	if (t == NULL || m == NULL) {
		rc = TP_ACTIVITY_ENOMEM;
		goto out;
	}
	pthread_mutex_lock(&r->mu);
	if (r->outcome != OUT_NONE) {
		rc = TP_ACTIVITY_ESTATE;
	} else {
		r->outcome = OUT_FAILURE;
		r->f_type = t;
		r->f_message = m;
		r->f_non_retryable = non_retryable != 0;
		r->f_details = details;
		t = m = NULL;
		details = NULL;
	}
	pthread_mutex_unlock(&r->mu);
out:
	free(t);
	free(m);
	json_decref(details);
	return rc;
}

static void
h_log(tp_activity_handle *h, const char *message)
{
	struct tp_plugin_run *r = run_of(h);
	char *line = strndup(message ? message : "", LOG_LINE_MAX);
	bool w = false;

	pthread_mutex_lock(&r->mu);
	if (line != NULL && r->nlog < TP_PLUGIN_LOG_QUEUE) {
		r->logq[r->nlog++] = line;
		line = NULL;
		w = need_queue(r);
	} else {
		r->log_dropped++;
	}
	pthread_mutex_unlock(&r->mu);
	free(line);
	if (w)
		ready_push(r);
}

static const struct tp_activity_host host_v1 = {
	TP_ACTIVITY_ABI_VERSION, (uint32_t)sizeof(struct tp_activity_host),
	h_task, h_input_count, h_input, h_heartbeat, h_is_cancelled, h_sleep, h_set_result,
	h_set_failure, h_log, { NULL }
};

/* ---- the pool (pool threads, and the loop's side of it) ------------------------------------------- */

/* With pool.mu held: t starts waiting for a run, until the idle timeout. */
static void
idle_push(struct pool_thread *t)
{
	clock_gettime(CLOCK_MONOTONIC, &t->until);
	t->until.tv_sec += pool.idle_timeout_ms / 1000;
	t->until.tv_nsec += (long)(pool.idle_timeout_ms % 1000) * 1000000L;
	if (t->until.tv_nsec >= 1000000000L) {
		t->until.tv_sec++;
		t->until.tv_nsec -= 1000000000L;
	}
	t->next = pool.idle;
	pool.idle = t;
}

/* With pool.mu held. */
static void
idle_unlink(struct pool_thread *t)
{
	for (struct pool_thread **pp = &pool.idle; *pp != NULL; pp = &(*pp)->next)
		if (*pp == t) {
			*pp = t->next;
			return;
		}
}

/* Without pool.mu: wait for t's semaphore until t->until (which only t sets). Returns 0 or
 * ETIMEDOUT. A semaphore rather than a condition variable: waking from one re-takes pool.mu marked
 * contended, so that its next unlock makes a futex call every run for nobody. */
static int
idle_wait(struct pool_thread *t)
{
	while (sem_clockwait(&t->wake, CLOCK_MONOTONIC, &t->until) != 0)
		if (errno != EINTR)
			return errno;
	return 0;
}

static void *
pool_main(void *arg)
{
	struct pool_thread *t = arg;
	struct tp_plugin_run *r;
	bool w, stay;
	int rc;

	pthread_mutex_lock(&pool.mu);
	for (;;) {
		rc = 0;
		while (t->run == NULL && !t->quit && rc != ETIMEDOUT) {
			/* A post meant for a wait that found its run already is taken here, and this
			 * loop waits again. */
			pthread_mutex_unlock(&pool.mu);
			rc = idle_wait(t);
			pthread_mutex_lock(&pool.mu);
		}
		if (t->run == NULL) {
			if (!t->quit) {  /* idle too long; with quit, pool_stop unlinked it and joins it */
				idle_unlink(t);
				t->next = pool.exited;
				pool.exited = t;
			}
			pthread_mutex_unlock(&pool.mu);
			return NULL;
		}
		r = t->run;
		t->run = NULL;
		pthread_mutex_unlock(&pool.mu);

		r->fn(&r->h);

		/* Idle again before the loop can learn that r returned: a run it starts from done (or
		 * the next one in sequence) reuses this thread, and pool_stop finds it on the list. A
		 * run handed over, or quit, before this thread waits is in t->run or t->quit. */
		pthread_mutex_lock(&pool.mu);
		stay = t->epoch == pool.epoch;
		if (stay)
			idle_push(t);
		pthread_mutex_unlock(&pool.mu);
		pthread_mutex_lock(&r->mu);
		r->returned = true;
		w = need_queue(r);
		pthread_mutex_unlock(&r->mu);
		if (w)
			ready_push(r);  /* r is the loop's now, it may be freed already */
		if (!stay) {
			/* The pool stopped while the function ran, and nobody will join this thread. */
			pthread_detach(pthread_self());
			sem_destroy(&t->wake);
			free(t);
			return NULL;
		}
		pthread_mutex_lock(&pool.mu);
	}
}

static void
join_all(struct pool_thread *list)
{
	struct pool_thread *t, *next;

	for (t = list; t != NULL; t = next) {
		next = t->next;
		pthread_join(t->tid, NULL);
		sem_destroy(&t->wake);
		free(t);
	}
}

/* A new thread for r, with every signal blocked: signals are the loop's business. Returns 0 or the
 * error of pthread_create. */
static int
pool_spawn(struct tp_plugin_run *r)
{
	struct pool_thread *t = tp_xcalloc(1, sizeof *t);
	sigset_t all, old;
	int rc;

	sem_init(&t->wake, 0, 0);
	t->run = r;
	pthread_mutex_lock(&pool.mu);
	t->epoch = pool.epoch;
	pthread_mutex_unlock(&pool.mu);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&t->tid, NULL, pool_main, t);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		sem_destroy(&t->wake);
		free(t);
	}
	return rc;
}

/* Hand r to an idle thread, or to a new one. Joins the threads that have exited since. Returns 0 or
 * the error of pthread_create. */
static int
pool_submit(struct tp_plugin_run *r)
{
	struct pool_thread *t, *exited;

	pthread_mutex_lock(&pool.mu);
	exited = pool.exited;
	pool.exited = NULL;
	t = pool.idle;
	if (t != NULL) {
		pool.idle = t->next;
		t->run = r;
	}
	pthread_mutex_unlock(&pool.mu);
	join_all(exited);
	if (t == NULL)
		return pool_spawn(r);
	sem_post(&t->wake);  /* t is busy now: only this thread could free it */
	return 0;
}

/* Join every idle (and exited) thread. A thread running a function now is not waited for: the epoch
 * tells it, when the function returns, to detach itself and exit. */
static void
pool_stop(void)
{
	struct pool_thread *idle, *exited;

	pthread_mutex_lock(&pool.mu);
	pool.epoch++;
	idle = pool.idle;
	exited = pool.exited;
	pool.idle = pool.exited = NULL;
	for (struct pool_thread *t = idle; t != NULL; t = t->next) {
		t->quit = true;
		sem_post(&t->wake);
	}
	pthread_mutex_unlock(&pool.mu);
	join_all(idle);
	join_all(exited);
}

void
tp_plugin_set_idle_timeout(int ms)
{
	pthread_mutex_lock(&pool.mu);
	pool.idle_timeout_ms = ms > 0 ? ms : TP_PLUGIN_IDLE_TIMEOUT_MS;
	pthread_mutex_unlock(&pool.mu);
}

/* ---- the loop's side ------------------------------------------------------------------------------- */

static void
run_free(struct tp_plugin_run *r)
{
	for (size_t i = 0; i < sizeof r->strs / sizeof r->strs[0]; i++)
		free(r->strs[i]);
	free(r->inputs);  /* one block with the data */
	json_decref(r->hb);
	for (int i = 0; i < r->nlog; i++)
		free(r->logq[i]);
	free(r->result);
	free(r->f_type);
	free(r->f_message);
	json_decref(r->f_details);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

/* The function has returned: report, free. */
static void
finish(struct tp_plugin_run *r)
{
	struct tp_activity_outcome o;

	r->done = true;
	active_runs--;
	r->n->nruns--;
	memset(&o, 0, sizeof o);
	o.cancelled = r->cancelled;
	if (r->outcome == OUT_RESULT || (r->outcome == OUT_NONE && !r->cancelled)) {
		o.kind = TP_OUTCOME_COMPLETED;
		o.result = r->result;
		o.result_len = r->result ? strlen(r->result) : 0;
	} else if (r->outcome == OUT_FAILURE) {
		o.kind = TP_OUTCOME_FAILED;
		o.type = r->f_type;
		o.message = r->f_message;
		o.non_retryable = r->f_non_retryable;
		o.details = r->f_details;
	} else {
		o.kind = TP_OUTCOME_FAILED;
		o.type = "Cancelled";
		o.message = "the activity was cancelled";
	}
	r->cb.done(r->cb.arg, &o);
	run_free(r);
}

static void
deliver_logs(struct tp_plugin_run *r, char **lines, int n, unsigned long dropped)
{
	char msg[128];

	for (int i = 0; i < n; i++) {
		if (r->cb.log)
			r->cb.log(r->cb.arg, lines[i], strlen(lines[i]));
		free(lines[i]);
	}
	if (dropped > 0 && r->cb.log) {
		int len = snprintf(msg, sizeof msg, "%lu log line(s) dropped: the plugin logged faster "
		    "than the loop took them", dropped);
		r->cb.log(r->cb.arg, msg, (size_t)len);
	}
}

/* Take what r has for the loop and hand it to the callbacks. */
static void
run_wake(struct tp_plugin_run *r)
{
	char *lines[TP_PLUGIN_LOG_QUEUE];
	unsigned long dropped;
	json_t *hb;
	bool returned;
	int n;

	pthread_mutex_lock(&r->mu);
	r->queued = false;  /* from here on, news puts r on the list again */
	hb = r->hb;
	r->hb = NULL;
	n = r->nlog;
	memcpy(lines, r->logq, (size_t)n * sizeof lines[0]);
	r->nlog = 0;
	dropped = r->log_dropped;
	r->log_dropped = 0;
	returned = r->returned;
	pthread_mutex_unlock(&r->mu);
	deliver_logs(r, lines, n, dropped);
	if (hb != NULL && r->cb.heartbeat)
		r->cb.heartbeat(r->cb.arg, hb);
	json_decref(hb);
	if (returned)
		finish(r);
}

/* One wake-up for every run of the base with news. */
static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
	struct notifier *n = arg;
	struct tp_plugin_run *r, *next;
	uint64_t count;

	(void)what;
	(void)!read(fd, &count, sizeof count);  /* first: EAGAIN is a spurious wake-up, nothing lost */
	pthread_mutex_lock(&n->mu);
	r = n->ready;
	n->ready = n->ready_tail = NULL;
	pthread_mutex_unlock(&n->mu);
	/* The callbacks may start runs (they go on a new list) or release the base (n stays while
	 * these runs are unfinished); each run of this list is ours until finish frees it. */
	for (; r != NULL; r = next) {
		next = r->ready_next;
		run_wake(r);
	}
}

static void
notifier_free(struct notifier *n)
{
	if (n->inline_ev != NULL)
		event_free(n->inline_ev);
	if (n->ev != NULL)
		event_free(n->ev);
	if (n->efd >= 0)
		close(n->efd);
	pthread_mutex_destroy(&n->mu);
	free(n);
}

/* Free r, which was queued inline and whose function was never called: its base is going away. */
static void
inline_drop(struct tp_plugin_run *r)
{
	struct notifier *n = r->n, **pp;

	active_runs--;
	n->nruns--;
	run_free(r);
	if (n->inline_ev != NULL || n->nruns > 0)
		return;
	/* n was released by a callback of on_inline, and r was its last run: no thread holds n. */
	for (pp = &orphans; *pp != NULL && *pp != n; pp = &(*pp)->next)
		;
	if (*pp != NULL)
		*pp = n->next;
	notifier_free(n);
}

/* Queue r to be called on the loop. event_active on an active event only merges the flags, so the
 * event runs once for every run queued meanwhile. */
static void
inline_queue(struct tp_plugin_run *r)
{
	struct notifier *n = r->n;

	r->inline_next = NULL;
	if (n->inl_tail != NULL)
		n->inl_tail->inline_next = r;
	else
		n->inl = r;
	n->inl_tail = r;
	event_active(n->inline_ev, EV_TIMEOUT, 0);
}

/* The inline event: call the function of every queued run, each reported as soon as it returns. */
static void
on_inline(evutil_socket_t fd, short what, void *arg)
{
	struct notifier *n = arg;
	struct tp_plugin_run *r, *next;

	(void)fd;
	(void)what;
	r = n->inl;
	n->inl = n->inl_tail = NULL;
	/* Runs the callbacks start go on a new list (and make the event active again). Each run of
	 * this list counts in n->nruns until it is finished or dropped, so n stays while one is left,
	 * even if a callback releases the base: the rest is then dropped, as a release drops queued
	 * runs. */
	for (; r != NULL; r = next) {
		next = r->inline_next;
		if (n->inline_ev == NULL) {
			inline_drop(r);
			continue;
		}
		r->fn(&r->h);
		pthread_mutex_lock(&r->mu);
		r->returned = true;
		pthread_mutex_unlock(&r->mu);
		run_wake(r);  /* logs, the newest details, then done; frees r */
	}
}

/* base's notifier, made on first use: one eventfd and one persistent event for all its runs. */
static struct notifier *
notifier_get(struct event_base *base, char *err, size_t errlen)
{
	struct notifier *n;

	for (n = notifiers; n != NULL; n = n->next)
		if (n->base == base)
			return n;
	n = tp_xcalloc(1, sizeof *n);
	n->base = base;
	pthread_mutex_init(&n->mu, NULL);
	n->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (n->efd < 0) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		notifier_free(n);
		return NULL;
	}
	n->ev = event_new(base, n->efd, EV_READ | EV_PERSIST, on_wake, n);
	n->inline_ev = event_new(base, -1, 0, on_inline, n);
	if (n->ev == NULL || n->inline_ev == NULL || event_add(n->ev, NULL) < 0) {
		snprintf(err, errlen, "event_new: failed");
		notifier_free(n);
		return NULL;
	}
	n->next = notifiers;
	notifiers = n;
	return n;
}

void
tp_plugin_release_base(struct event_base *base)
{
	struct notifier **pp, *n;

	for (pp = &notifiers; *pp != NULL && (*pp)->base != base; pp = &(*pp)->next)
		;
	if ((n = *pp) == NULL)
		return;
	*pp = n->next;
	/* Queued inline runs have not started, and nothing will call them now. */
	for (struct tp_plugin_run *r = n->inl, *next; r != NULL; r = next) {
		next = r->inline_next;
		inline_drop(r);
	}
	n->inl = n->inl_tail = NULL;
	if (n->nruns == 0) {
		notifier_free(n);
		return;
	}
	/* A run is abandoned (its function has not returned and the loop is going away): its thread
	 * will still append it to the list and write the eventfd, so both stay; nobody reads them.
	 * (Or the release comes from a callback of on_inline, whose remaining runs it then drops.) */
	event_free(n->ev);
	n->ev = NULL;
	event_free(n->inline_ev);
	n->inline_ev = NULL;
	n->next = orphans;
	orphans = n;
}

static char *
dup_or_null(const char *s)
{
	return s ? tp_xstrdup(s) : NULL;
}

/* Immutable copies of what the task says, for the thread. */
static void
copy_task(struct tp_plugin_run *r, const struct tp_activity_info *info)
{
	const char *src[8] = { info->type, info->activity_id, info->workflow_id, info->run_id,
		info->workflow_type, info->task_queue, info->namespace_, info->heartbeat_details };

	for (int i = 0; i < 8; i++)
		r->strs[i] = i < 7 ? tp_xstrdup(src[i] ? src[i] : "") : dup_or_null(src[i]);
	r->strs[8] = info->input ? tp_xstrndup(info->input, info->input_len) : NULL;
	r->task.activity_type = r->strs[0];
	r->task.activity_id = r->strs[1];
	r->task.workflow_id = r->strs[2];
	r->task.workflow_run_id = r->strs[3];
	r->task.workflow_type = r->strs[4];
	r->task.task_queue = r->strs[5];
	r->task.namespace_name = r->strs[6];
	r->task.heartbeat_details = r->strs[7];
	r->task.input_json = r->strs[8];
	r->task.attempt = info->attempt;
	r->task.deadline_ms = info->deadline_ms;
	r->task.heartbeat_timeout_ms = info->heartbeat_timeout_ms;
}

/* The payloads, their data and their encodings in one block. */
static void
copy_inputs(struct tp_plugin_run *r, const struct tp_activity_info *info)
{
	size_t n = info->payloads ? info->npayloads : 0, bytes = n * sizeof *r->inputs;
	char *p;

	for (size_t i = 0; i < n; i++)
		bytes += info->payloads[i].len + 1 + strlen(info->payloads[i].encoding ?
		    info->payloads[i].encoding : "") + 1;
	r->inputs = tp_xmalloc(bytes ? bytes : 1);
	r->ninputs = n;
	p = (char *)(r->inputs + n);
	for (size_t i = 0; i < n; i++) {
		const struct tp_activity_payload *src = &info->payloads[i];
		const char *enc = src->encoding ? src->encoding : "";

		if (src->len > 0)
			memcpy(p, src->data, src->len);
		p[src->len] = '\0';  /* for the plugin's convenience; not counted in len */
		r->inputs[i].data = p;
		r->inputs[i].len = src->len;
		p += src->len + 1;
		memcpy(p, enc, strlen(enc) + 1);
		r->inputs[i].encoding = p;
		p += strlen(enc) + 1;
	}
}

static struct tp_plugin_run *
run_new(struct notifier *n, tp_activity_fn *fn, const struct tp_activity_info *info,
    const struct tp_activity_callbacks *cb)
{
	struct tp_plugin_run *r = tp_xcalloc(1, sizeof *r);
	pthread_condattr_t ca;

	r->h.host = &host_v1;
	r->fn = fn;
	r->n = n;
	r->cb = *cb;
	atomic_init(&r->cancel_flag, false);
	pthread_mutex_init(&r->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cv, &ca);
	pthread_condattr_destroy(&ca);
	copy_task(r, info);
	copy_inputs(r, info);
	return r;
}

struct tp_plugin_run *
tp_plugin_start_fn(struct event_base *base, tp_activity_fn *fn, unsigned flags,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen)
{
	struct tp_plugin_run *r;
	struct notifier *n;
	int rc;

	if (fn == NULL || cb->done == NULL) {
		snprintf(err, errlen, "plugin: no function or no done callback");
		return NULL;
	}
	n = notifier_get(base, err, errlen);
	if (n == NULL)
		return NULL;
	r = run_new(n, fn, info, cb);
	if (flags & TP_PLUGIN_RUN_INLINE) {
		r->inline_run = true;
		inline_queue(r);  /* called later: the caller stores r before its done can run */
		active_runs++;
		n->nruns++;
		return r;
	}
	rc = pool_submit(r);
	if (rc != 0) {
		snprintf(err, errlen, "pthread_create: %s", strerror(rc));
		run_free(r);
		return NULL;
	}
	active_runs++;
	n->nruns++;
	return r;
}

struct tp_plugin_run *
tp_plugin_start(struct event_base *base, const struct tp_activity_conf *ac,
    const struct tp_activity_info *info, const struct tp_activity_callbacks *cb,
    char *err, size_t errlen)
{
	struct tp_plugin_lib *lib;
	tp_activity_fn *fn;
	char why[1024];

	if (ac->plugin_path == NULL) {
		snprintf(err, errlen, "plugin '%s' is not configured", ac->plugin ? ac->plugin : "");
		return NULL;
	}
	lib = registry_get(ac->plugin_path, why, sizeof why);
	if (lib == NULL) {
		snprintf(err, errlen, "plugin '%s' refused: %s", ac->plugin_path, why);
		return NULL;
	}
	fn = tp_plugin_find(lib, ac->function);
	if (fn == NULL) {
		snprintf(err, errlen, "plugin '%s' has no function '%s'", ac->plugin_path, ac->function);
		return NULL;
	}
	return tp_plugin_start_fn(base, fn, ac->inline_run ? TP_PLUGIN_RUN_INLINE : 0, info, cb, err,
	    errlen);
}

void
tp_plugin_cancel(struct tp_plugin_run *r)
{
	if (r == NULL || r->done)
		return;
	pthread_mutex_lock(&r->mu);
	r->cancelled = true;
	atomic_store(&r->cancel_flag, true);
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}
