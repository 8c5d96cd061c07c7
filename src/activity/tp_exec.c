/* tp_exec: run one activity as an external command on a libevent base (see tp_exec.h).
 *
 * Life of one command:
 *   start   pipes (stdin, stdout, stderr, records, exec-error), fork with every signal blocked, the
 *           child prepares its process and execs; the parent waits on the exec-error pipe (it returns
 *           at exec or at failure), opens a pidfd and watches the pipes and the pidfd.
 *   run     stdin is fed without blocking, stdout is collected up to the cap, stderr and fd 3 are split
 *           into lines and handed to the callbacks.
 *   exit    the pidfd turns readable (or, without pidfds, a polling timer sees it): the status is read
 *           with WNOWAIT, so the leader stays a zombie.
 *   finish  once the pipes reached EOF (or kill_grace after the exit, when something else holds them):
 *           SIGKILL the group, reap the leader, call done, free.
 *
 * Why the leader stays unreaped until finish: a pid, and so a pgid, cannot be handed out again while
 * the zombie exists, and, after it is reaped, while any member of its group is alive (the members keep
 * the group's pid in use). Keeping the zombie until after the last kill(-pgid) means no kill of this
 * module can ever reach an unrelated process group that reused the number. The owning process must not
 * reap children with waitpid(-1) / wait() (the worker observes only its own children through pidfds).
 */
#include "activity/tp_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/tp_buf.h"
#include "core/tp_util.h"

#define TP_EXEC_STDOUT_CAP      (2u * 1024 * 1024)
#define TP_EXEC_LINE_MAX        4096
#define TP_EXEC_GRACE_MS        5000
#define TP_EXEC_RECORD_MAX      (2u * 1024 * 1024)   /* one fd 3 record line */
#define TP_EXEC_READ_CHUNK      65536
#define TP_EXEC_DRAIN_READS     32                   /* per stream at finish: bounded */
#define TP_EXEC_POLL_MIN_MS     5                    /* exit polling without pidfds */
#define TP_EXEC_POLL_MAX_MS     200
#define TP_EXEC_DEFAULT_PATH    "/usr/local/bin:/usr/bin:/bin"
#define TP_EXEC_CUT_MARK        "..."

/* Parent-side streams; the child gets them as fds 0..3 in this order. */
enum { ST_IN, ST_OUT, ST_ERR, ST_REC, ST_N };

/* Steps of the child that can fail; the index travels through the exec-error pipe. */
enum { STEP_SETPGID, STEP_FDS, STEP_CLOSE, STEP_RLIMIT, STEP_CHDIR, STEP_EXEC, STEP_N };
static const char *const step_names[STEP_N] = {
	"setpgid", "dup2", "close_range", "setrlimit", "chdir", "execve"
};

struct spawn_err {
	int step;
	int err;
};

/* Everything the child needs, prepared before fork: the child may not allocate. */
struct spawn_plan {
	struct tp_exec              *owner;   /* keeps the object reachable for leak checkers in a child
	                                       * that fails before exec */
	char *const                 *argv;
	char *const                 *envp;
	char                       **paths;   /* execve candidates, NULL-terminated (owned) */
	const char                  *cwd;
	const struct tp_exec_rlimit *rl;
	size_t                       nrl;
	int                          fd[ST_N]; /* child ends, become 0..3 */
	int                          errfd;    /* write end of the CLOEXEC exec-error pipe */
};

/* A line splitter for stderr and fd 3. */
struct tp_lines {
	struct tp_buf buf;
	size_t        max;       /* longest line kept */
	bool          dropping;  /* the current line was over max: skip to its newline */
};

struct tp_stream {
	struct tp_exec *x;
	int             idx;     /* ST_* */
	int             fd;      /* parent end; -1 once closed */
	struct event   *ev;
};

struct tp_exec {
	struct event_base        *base;
	struct tp_exec_callbacks  cb;
	pid_t                     pid;
	int                       pidfd;      /* -1: no pidfds here, ev_pid polls */
	int                       poll_ms;
	struct event             *ev_pid;
	struct event             *ev_timer;   /* SIGKILL after cancel; pipe grace after the exit */
	struct tp_stream          st[ST_N];
	uint8_t                  *input;      /* owned copy, freed once written */
	size_t                    input_len, input_off;
	struct tp_buf             out;
	struct tp_lines           errl, recl;
	size_t                    line_max;
	int                       grace_ms;
	json_t                   *error;      /* owned: the last error record */
	int64_t                   start_ms;
	bool                      leader_exited;
	bool                      reaped;     /* the status is gone (reaped elsewhere): never kill the pgid */
	bool                      finished;
	struct tp_exec_result     res;
	uint8_t                   rbuf[TP_EXEC_READ_CHUNK];
};

static void finish(struct tp_exec *x);

static void
set_err(char *err, size_t errlen, const char *what, int e)
{
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s: %s", what, e ? strerror(e) : "failed");
}

static void
close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* ---- the child: async-signal-safe calls only from fork to execve ------------------------------- */

static void __attribute__((noreturn))
child_fail(int errfd, int step)
{
	struct spawn_err e = { step, errno };
	ssize_t n;

	do
		n = write(errfd, &e, sizeof e);
	while (n < 0 && errno == EINTR);
	_exit(127);
}

/* Lift fd above 3 so that no dup2 onto 0..3 can overwrite it before it is used. */
static int
child_lift(int *fd)
{
	int nfd;

	if (*fd > 3)
		return 0;
	nfd = fcntl(*fd, F_DUPFD_CLOEXEC, 4);
	if (nfd < 0)
		return -1;
	*fd = nfd;
	return 0;
}

static void
child_setup_fds(struct spawn_plan *p)
{
	if (child_lift(&p->errfd) < 0)
		_exit(127);  /* no way to report */
	for (int i = 0; i < ST_N; i++)
		if (child_lift(&p->fd[i]) < 0)
			child_fail(p->errfd, STEP_FDS);
	for (int i = 0; i < ST_N; i++)
		if (dup2(p->fd[i], i) < 0)  /* the copy at i is not CLOEXEC */
			child_fail(p->errfd, STEP_FDS);
}

static int
sys_close_range(unsigned first, unsigned last)
{
#ifdef SYS_close_range
	return (int)syscall(SYS_close_range, first, last, 0u);
#else
	(void)first;
	(void)last;
	errno = ENOSYS;
	return -1;
#endif
}

struct tp_dirent64 {
	uint64_t       d_ino;
	int64_t        d_off;
	unsigned short d_reclen;
	unsigned char  d_type;
	char           d_name[];
};

static int
parse_fd_name(const char *s)
{
	int v = 0;

	if (*s == '\0')
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (INT_MAX - 9) / 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

/* Fallback for kernels without close_range: walk /proc/self/fd with getdents64 (no allocation). */
static int
child_close_walk(int keep)
{
	char buf[4096] __attribute__((aligned(8)));
	long n;
	int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd < 0)
		return -1;
	while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
		for (long off = 0; off < n;) {
			struct tp_dirent64 *d = (struct tp_dirent64 *)(void *)(buf + off);
			int fd = parse_fd_name(d->d_name);

			if (fd > 3 && fd != keep && fd != dfd)
				close(fd);
			off += d->d_reclen;
		}
	}
	close(dfd);
	return n < 0 ? -1 : 0;
}

/* Close every fd above 3 except keep (the exec-error pipe, CLOEXEC, keep > 3). */
static void
child_close_rest(int keep)
{
	if ((keep == 4 || sys_close_range(4, (unsigned)keep - 1) == 0) &&
	    sys_close_range((unsigned)keep + 1, ~0u) == 0)
		return;
	if (child_close_walk(keep) < 0)
		child_fail(keep, STEP_CLOSE);  /* fail closed: never run with unknown fds */
}

static void
child_rlimits(const struct spawn_plan *p)
{
	for (size_t i = 0; i < p->nrl; i++) {
		struct rlimit r;

		r.rlim_cur = p->rl[i].soft == ULONG_MAX ? RLIM_INFINITY : (rlim_t)p->rl[i].soft;
		r.rlim_max = p->rl[i].hard == ULONG_MAX ? RLIM_INFINITY : (rlim_t)p->rl[i].hard;
		if (setrlimit(p->rl[i].resource, &r) < 0)
			child_fail(p->errfd, STEP_RLIMIT);
	}
}

/* Try every candidate like execvpe: remember EACCES, go on for "not here" errors, stop at others. */
static void
child_exec(const struct spawn_plan *p)
{
	bool eacces = false;

	for (char **path = p->paths; *path != NULL; path++) {
		execve(*path, p->argv, p->envp);
		if (errno == EACCES)
			eacces = true;
		else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
		    errno != ETIMEDOUT)
			return;
	}
	if (eacces)
		errno = EACCES;
}

static void __attribute__((noreturn))
child_run(struct spawn_plan *p)
{
	if (setpgid(0, 0) < 0)
		child_fail(p->errfd, STEP_SETPGID);
	tp_sig_reset_after_fork(0);  /* the parent blocked everything around fork */
	child_setup_fds(p);
	child_close_rest(p->errfd);
	child_rlimits(p);
	if (p->cwd != NULL && chdir(p->cwd) < 0)
		child_fail(p->errfd, STEP_CHDIR);
	child_exec(p);
	child_fail(p->errfd, STEP_EXEC);
}

/* ---- the plan (parent, before fork) ------------------------------------------------------------ */

static const char *
env_path(char *const *envp)
{
	for (; envp != NULL && *envp != NULL; envp++)
		if (strncmp(*envp, "PATH=", 5) == 0)
			return *envp + 5;
	return TP_EXEC_DEFAULT_PATH;
}

static void
paths_free(char **v)
{
	for (size_t i = 0; v != NULL && v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

/* One candidate per PATH element ("" means the working directory, as execvp does). Returns a
 * NULL-terminated array, or NULL when out of memory. */
static char **
search_paths(const char *name, const char *path)
{
	size_t n = 1, i = 0, nlen = strlen(name);
	char **v;

	for (const char *s = path; *s; s++)
		n += *s == ':';
	v = calloc(n + 1, sizeof *v);
	if (v == NULL)
		return NULL;
	for (const char *s = path; i < n; i++) {
		const char *e = strchr(s, ':');
		size_t dlen = e ? (size_t)(e - s) : strlen(s);

		v[i] = malloc(dlen + nlen + 2);
		if (v[i] == NULL) {
			paths_free(v);
			return NULL;
		}
		snprintf(v[i], dlen + nlen + 2, "%.*s%s%s", (int)dlen, s, dlen ? "/" : "", name);
		s = e ? e + 1 : s + dlen;
	}
	return v;
}

static int
plan_init(struct spawn_plan *p, struct tp_exec *x, const struct tp_exec_spec *spec)
{
	static char *const no_env[] = { NULL };
	const char *name = spec->argv[0];

	memset(p, 0, sizeof *p);
	p->owner = x;
	p->argv = spec->argv;
	p->envp = spec->envp ? spec->envp : no_env;
	p->cwd = spec->cwd;
	p->rl = spec->rlimits;
	p->nrl = spec->rlimits ? spec->nrlimits : 0;
	p->errfd = -1;
	for (int i = 0; i < ST_N; i++)
		p->fd[i] = -1;
	if (strchr(name, '/') != NULL || *name == '\0') {
		p->paths = calloc(2, sizeof *p->paths);
		if (p->paths == NULL)
			return -1;
		p->paths[0] = strdup(name);  /* as is; "" fails with ENOENT */
		return p->paths[0] ? 0 : -1;
	}
	p->paths = search_paths(name, env_path(p->envp));
	return p->paths ? 0 : -1;
}

static void
plan_close(struct spawn_plan *p)
{
	for (int i = 0; i < ST_N; i++)
		close_fd(&p->fd[i]);
	close_fd(&p->errfd);
	paths_free(p->paths);
	p->paths = NULL;
}

/* ---- the parent: pipes, fork, exec report -------------------------------------------------------- */

/* All CLOEXEC; the parent ends are non-blocking, the child ends stay blocking. */
static int
open_pipes(struct tp_exec *x, struct spawn_plan *p, int *errpipe_r)
{
	int fds[2];

	for (int i = 0; i < ST_N; i++) {
		if (pipe2(fds, O_CLOEXEC) < 0)
			return -1;
		x->st[i].fd = fds[i == ST_IN ? 1 : 0];
		p->fd[i] = fds[i == ST_IN ? 0 : 1];
		if (tp_fd_set_nonblock(x->st[i].fd) < 0)
			return -1;
	}
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -1;
	*errpipe_r = fds[0];
	p->errfd = fds[1];
	return 0;
}

/* Blocks until the child execs (EOF) or reports a failure: both happen right away. */
static void
read_spawn_report(struct tp_exec *x, int fd)
{
	struct spawn_err e;
	ssize_t n;

	do
		n = read(fd, &e, sizeof e);
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof e) {
		x->res.spawn_failed = true;
		x->res.spawn_errno = e.err;
		x->res.spawn_step = e.step >= 0 && e.step < STEP_N ? step_names[e.step] : "spawn";
	}
}

/* Every signal is blocked across fork so that no handler of this process (libevent's signal
 * socketpair among them) runs in the child before its dispositions are reset. */
static int
spawn(struct tp_exec *x, struct spawn_plan *p, int errpipe_r)
{
	sigset_t all, old;
	pid_t pid;
	int e;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pid = fork();
	if (pid == 0)
		child_run(p);
	e = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0) {
		errno = e;
		return -1;
	}
	x->pid = pid;
	plan_close(p);
	read_spawn_report(x, errpipe_r);
	(void)setpgid(pid, pid);  /* the child did it already; EACCES after exec is fine */
	return 0;
}

/* Kill and reap a child that will never be watched (start failed after fork). */
static void
abandon_child(struct tp_exec *x)
{
	siginfo_t si;

	kill(-x->pid, SIGKILL);
	kill(x->pid, SIGKILL);
	while (waitid(P_PID, (id_t)x->pid, &si, WEXITED) < 0 && errno == EINTR)
		;
}

/* ---- signals to the group ------------------------------------------------------------------------- */

static void
kill_group(struct tp_exec *x, int sig)
{
	if (!x->reaped)
		(void)kill(-x->pid, sig);
}

static void
arm_timer(struct tp_exec *x)
{
	struct timeval tv;

	if (evtimer_pending(x->ev_timer, NULL))
		return;  /* keep the earlier deadline */
	tv.tv_sec = x->grace_ms / 1000;
	tv.tv_usec = (x->grace_ms % 1000) * 1000;
	evtimer_add(x->ev_timer, &tv);
}

/* ---- stream plumbing ------------------------------------------------------------------------------- */

static bool
streams_closed(const struct tp_exec *x)
{
	return x->st[ST_OUT].fd < 0 && x->st[ST_ERR].fd < 0 && x->st[ST_REC].fd < 0;
}

static void
maybe_finish(struct tp_exec *x)
{
	if (x->leader_exited && streams_closed(x))
		finish(x);
}

static void
lines_emit_stderr(struct tp_exec *x, const char *line, size_t len)
{
	if (x->cb.stderr_line)
		x->cb.stderr_line(x->cb.arg, line, len);
}

static void
bad_record(struct tp_exec *x, const char *line, size_t len)
{
	if (x->cb.bad_record)
		x->cb.bad_record(x->cb.arg, line, len > x->line_max ? x->line_max : len);
}

static bool
is_blank(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/* An error record: an object whose known members have the documented types. */
static bool
valid_error(json_t *e)
{
	json_t *v;

	if (!json_is_object(e))
		return false;
	v = json_object_get(e, "type");
	if (v != NULL && !json_is_string(v))
		return false;
	v = json_object_get(e, "message");
	if (v != NULL && !json_is_string(v))
		return false;
	v = json_object_get(e, "non_retryable");
	return v == NULL || json_is_boolean(v);
}

static bool
record_dispatch(struct tp_exec *x, json_t *rec)
{
	json_t *v;

	if (!json_is_object(rec) || json_object_size(rec) != 1)
		return false;
	v = json_object_get(rec, "heartbeat");
	if (v != NULL) {
		if (x->cb.heartbeat)
			x->cb.heartbeat(x->cb.arg, v);
		return true;
	}
	v = json_object_get(rec, "error");
	if (v == NULL || !valid_error(v))
		return false;
	json_decref(x->error);
	x->error = json_incref(v);
	return true;
}

static void
lines_emit_record(struct tp_exec *x, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *rec;

	if (is_blank(line, len))
		return;
	rec = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (rec == NULL || !record_dispatch(x, rec))
		bad_record(x, line, len);
	json_decref(rec);
}

static void
lines_emit(struct tp_exec *x, struct tp_lines *l, bool cut)
{
	const char *s = (const char *)(l->buf.data ? l->buf.data : (uint8_t *)"");

	if (l == &x->errl) {
		if (cut && tp_buf_append(&l->buf, TP_EXEC_CUT_MARK, strlen(TP_EXEC_CUT_MARK)) == 0)
			s = (const char *)l->buf.data;
		lines_emit_stderr(x, s, l->buf.len);
	} else if (cut) {
		bad_record(x, s, l->buf.len);
	} else {
		lines_emit_record(x, s, l->buf.len);
	}
	tp_buf_reset(&l->buf);
}

/* Add one segment (no newline inside) to the current line; cut it once it passes max. */
static void
lines_add(struct tp_exec *x, struct tp_lines *l, const uint8_t *p, size_t n)
{
	size_t room = l->max - l->buf.len;

	if (l->dropping || n == 0)
		return;
	if (tp_buf_append(&l->buf, p, n < room ? n : room) < 0 || n > room) {
		lines_emit(x, l, true);
		l->dropping = true;
	}
}

static void
lines_feed(struct tp_exec *x, struct tp_lines *l, const uint8_t *p, size_t n)
{
	while (n > 0) {
		const uint8_t *nl = memchr(p, '\n', n);
		size_t seg = nl ? (size_t)(nl - p) : n;

		lines_add(x, l, p, seg);
		if (nl == NULL)
			return;
		if (!l->dropping)
			lines_emit(x, l, false);
		l->dropping = false;
		p += seg + 1;
		n -= seg + 1;
	}
}

static void
lines_flush(struct tp_exec *x, struct tp_lines *l)
{
	if (!l->dropping && l->buf.len > 0)
		lines_emit(x, l, false);
	l->dropping = false;
	tp_buf_reset(&l->buf);
}

static void
stream_close(struct tp_stream *st)
{
	if (st->ev != NULL) {
		event_free(st->ev);
		st->ev = NULL;
	}
	close_fd(&st->fd);
	if (st->idx == ST_ERR)
		lines_flush(st->x, &st->x->errl);
	else if (st->idx == ST_REC)
		lines_flush(st->x, &st->x->recl);
	else if (st->idx == ST_IN) {
		free(st->x->input);
		st->x->input = NULL;
	}
}

static void
stdout_feed(struct tp_exec *x, const uint8_t *p, size_t n)
{
	if (tp_buf_append(&x->out, p, n) == 0)
		return;
	/* Over the cap (or out of memory): the result cannot be delivered, stop the command. */
	x->res.stdout_overflow = true;
	kill_group(x, SIGKILL);
	stream_close(&x->st[ST_OUT]);
}

static void
stream_feed(struct tp_stream *st, const uint8_t *p, size_t n)
{
	struct tp_exec *x = st->x;

	if (st->idx == ST_OUT)
		stdout_feed(x, p, n);
	else if (st->idx == ST_ERR)
		lines_feed(x, &x->errl, p, n);
	else
		lines_feed(x, &x->recl, p, n);
}

/* One read. Returns 1 when data was handled, 0 at EOF or error (the stream is closed), -1 when
 * nothing is there now. */
static int
stream_read(struct tp_stream *st)
{
	ssize_t n;

	do
		n = read(st->fd, st->x->rbuf, sizeof st->x->rbuf);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		stream_feed(st, st->x->rbuf, (size_t)n);
		return 1;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -1;
	stream_close(st);
	return 0;
}

static void
on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct tp_stream *st = arg;

	(void)fd;
	(void)what;
	(void)stream_read(st);
	maybe_finish(st->x);  /* a stream may have closed (EOF, or stdout over its cap) */
}

/* write() that never raises SIGPIPE, whatever this process's disposition: SIGPIPE is blocked in
 * this thread around the call and a SIGPIPE the call caused is taken off the pending set. */
static ssize_t
write_nosigpipe(int fd, const void *p, size_t n)
{
	sigset_t pipe_set, old, pending;
	struct timespec zero = { 0, 0 };
	bool was_pending;
	ssize_t r;
	int e;

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigpending(&pending);
	was_pending = sigismember(&pending, SIGPIPE) == 1;
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	r = write(fd, p, n);
	e = errno;
	if (r < 0 && e == EPIPE && !was_pending)
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return r;
}

static void
on_writable(evutil_socket_t fd, short what, void *arg)
{
	struct tp_stream *st = arg;
	struct tp_exec *x = st->x;
	ssize_t n;

	(void)what;
	n = write_nosigpipe(fd, x->input + x->input_off, x->input_len - x->input_off);
	if (n > 0) {
		x->input_off += (size_t)n;
		if (x->input_off == x->input_len)
			stream_close(st);  /* EOF for the command */
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	stream_close(st);  /* EPIPE: the command closed stdin or exited; not an error */
}

/* ---- exit and finish --------------------------------------------------------------------------------- */

static void
leader_status(struct tp_exec *x, const siginfo_t *si)
{
	x->res.exited = si->si_code == CLD_EXITED;
	x->res.signaled = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
	if (x->res.exited)
		x->res.exit_code = si->si_status;
	if (x->res.signaled)
		x->res.signo = si->si_status;
}

/* Has the leader exited? Its status is read but the zombie is kept (see the top of this file). */
static bool
leader_check(struct tp_exec *x)
{
	siginfo_t si;
	int r;

	memset(&si, 0, sizeof si);
	do
		r = waitid(P_PID, (id_t)x->pid, &si, WEXITED | WNOWAIT | WNOHANG);
	while (r < 0 && errno == EINTR);
	if (r == 0 && si.si_pid == 0)
		return false;
	if (r < 0)
		x->reaped = true;  /* someone else took the status: neither exited nor signaled */
	else
		leader_status(x, &si);
	x->leader_exited = true;
	return true;
}

static void
leader_gone(struct tp_exec *x)
{
	if (streams_closed(x))
		finish(x);
	else
		arm_timer(x);  /* something else holds the pipes: give it kill_grace */
}

/* The pidfd turns readable when the leader exits. */
static void
on_pidfd(evutil_socket_t fd, short what, void *arg)
{
	struct tp_exec *x = arg;

	(void)fd;
	(void)what;
	if (!leader_check(x))
		return;
	event_del(x->ev_pid);
	leader_gone(x);
}

/* Without pidfds (kernels before 5.3, or an emulator such as valgrind that lacks pidfd_open) the
 * exit is polled with WNOHANG, backing off to TP_EXEC_POLL_MAX_MS. Still no SIGCHLD handling. */
static void
on_poll_leader(evutil_socket_t fd, short what, void *arg)
{
	struct tp_exec *x = arg;

	(void)fd;
	(void)what;
	if (leader_check(x)) {
		leader_gone(x);
		return;
	}
	if (x->poll_ms < TP_EXEC_POLL_MAX_MS)
		x->poll_ms *= 2;
	tp_timer_in(x->ev_pid, x->poll_ms);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct tp_exec *x = arg;

	(void)fd;
	(void)what;
	kill_group(x, SIGKILL);
	if (x->leader_exited)
		finish(x);
	/* else: the pidfd reports the exit of the killed leader */
}

static void
drain(struct tp_stream *st)
{
	for (int i = 0; i < TP_EXEC_DRAIN_READS && st->fd >= 0; i++)
		if (stream_read(st) < 0)
			break;
}

static void
reap(struct tp_exec *x)
{
	siginfo_t si;

	if (x->reaped)
		return;
	while (waitid(P_PID, (id_t)x->pid, &si, WEXITED) < 0 && errno == EINTR)
		;
	x->reaped = true;
}

static void
exec_free(struct tp_exec *x)
{
	for (int i = 0; i < ST_N; i++) {
		if (x->st[i].ev != NULL)
			event_free(x->st[i].ev);
		close_fd(&x->st[i].fd);
	}
	if (x->ev_pid != NULL)
		event_free(x->ev_pid);
	if (x->ev_timer != NULL)
		event_free(x->ev_timer);
	close_fd(&x->pidfd);
	free(x->input);
	tp_buf_free(&x->out);
	tp_buf_free(&x->errl.buf);
	tp_buf_free(&x->recl.buf);
	json_decref(x->error);
	free(x);
}

/* The leader has exited. The group is killed while the zombie still pins its pgid, what is left in
 * the pipes is read, every event is freed (nothing fires after done), then done runs and x is freed. */
static void
finish(struct tp_exec *x)
{
	x->finished = true;
	kill_group(x, SIGKILL);
	for (int i = ST_OUT; i < ST_N; i++)
		drain(&x->st[i]);
	for (int i = 0; i < ST_N; i++)
		stream_close(&x->st[i]);
	reap(x);
	event_free(x->ev_pid);
	x->ev_pid = NULL;
	event_free(x->ev_timer);
	x->ev_timer = NULL;
	x->res.out = x->out.data ? x->out.data : (const uint8_t *)"";
	x->res.out_len = x->out.len;
	x->res.error = x->error;
	x->res.duration_ms = tp_now_mono_ms() - x->start_ms;
	x->cb.done(x->cb.arg, &x->res);
	exec_free(x);
}

/* ---- start ---------------------------------------------------------------------------------------------- */

static struct tp_exec *
exec_new(struct event_base *base, const struct tp_exec_spec *spec, const struct tp_exec_callbacks *cb)
{
	struct tp_exec *x = calloc(1, sizeof *x);

	if (x == NULL)
		return NULL;
	x->base = base;
	x->cb = *cb;
	x->pidfd = -1;
	x->line_max = spec->stderr_line_max ? spec->stderr_line_max : TP_EXEC_LINE_MAX;
	x->grace_ms = spec->kill_grace_ms > 0 ? spec->kill_grace_ms : TP_EXEC_GRACE_MS;
	x->out = (struct tp_buf)TP_BUF_INIT(spec->stdout_cap ? spec->stdout_cap : TP_EXEC_STDOUT_CAP);
	x->errl.max = x->line_max;
	x->recl.max = TP_EXEC_RECORD_MAX;
	for (int i = 0; i < ST_N; i++) {
		x->st[i].x = x;
		x->st[i].idx = i;
		x->st[i].fd = -1;
	}
	x->input_len = spec->input ? spec->input_len : 0;
	if (x->input_len > 0) {
		x->input = malloc(x->input_len);
		if (x->input == NULL) {
			free(x);
			return NULL;
		}
		memcpy(x->input, spec->input, x->input_len);
	}
	return x;
}

static int
make_events(struct tp_exec *x)
{
	for (int i = 0; i < ST_N; i++) {
		if (i == ST_IN && x->input_len == 0)
			continue;
		x->st[i].ev = event_new(x->base, x->st[i].fd, (i == ST_IN ? EV_WRITE : EV_READ) | EV_PERSIST,
		    i == ST_IN ? on_writable : on_readable, &x->st[i]);
		if (x->st[i].ev == NULL)
			return -1;
	}
	x->ev_timer = evtimer_new(x->base, on_timer, x);
	return x->ev_timer ? 0 : -1;
}

/* After fork: the pidfd (or the polling timer) and the events. Returns 0, -1 when pidfd_open failed
 * (errno set), -2 when libevent failed. */
static int
watch(struct tp_exec *x)
{
	x->pidfd = (int)syscall(SYS_pidfd_open, x->pid, 0u);
	if (x->pidfd < 0 && errno != ENOSYS)
		return -1;
	if (x->pidfd >= 0) {
		x->ev_pid = event_new(x->base, x->pidfd, EV_READ | EV_PERSIST, on_pidfd, x);
		if (x->ev_pid == NULL || event_add(x->ev_pid, NULL) < 0)
			return -2;
	} else {
		x->ev_pid = evtimer_new(x->base, on_poll_leader, x);
		if (x->ev_pid == NULL)
			return -2;
		x->poll_ms = TP_EXEC_POLL_MIN_MS;
		tp_timer_in(x->ev_pid, x->poll_ms);
	}
	if (x->input_len == 0)
		close_fd(&x->st[ST_IN].fd);
	for (int i = 0; i < ST_N; i++)
		if (x->st[i].ev != NULL && event_add(x->st[i].ev, NULL) < 0)
			return -2;
	return 0;
}

struct tp_exec *
tp_exec_start(struct event_base *base, const struct tp_exec_spec *spec,
    const struct tp_exec_callbacks *cb, char *err, size_t errlen)
{
	struct spawn_plan plan;
	struct tp_exec *x;
	int errpipe_r = -1, rc;

	if (spec->argv == NULL || spec->argv[0] == NULL || cb->done == NULL) {
		set_err(err, errlen, "exec", EINVAL);
		return NULL;
	}
	x = exec_new(base, spec, cb);
	if (x == NULL) {
		set_err(err, errlen, "exec", ENOMEM);
		return NULL;
	}
	if (plan_init(&plan, x, spec) < 0) {
		set_err(err, errlen, "exec", ENOMEM);
		goto fail_plan;
	}
	if (open_pipes(x, &plan, &errpipe_r) < 0) {
		set_err(err, errlen, "pipe", errno);
		goto fail_plan;
	}
	if (make_events(x) < 0) {
		set_err(err, errlen, "event_new", 0);
		goto fail_plan;
	}
	x->start_ms = tp_now_mono_ms();
	if (spawn(x, &plan, errpipe_r) < 0) {
		set_err(err, errlen, "fork", errno);
		goto fail_plan;
	}
	close_fd(&errpipe_r);
	rc = watch(x);
	if (rc < 0) {
		set_err(err, errlen, rc == -1 ? "pidfd_open" : "event_add", rc == -1 ? errno : 0);
		goto fail_child;
	}
	return x;

fail_child:
	abandon_child(x);
fail_plan:
	plan_close(&plan);
	close_fd(&errpipe_r);
	exec_free(x);
	return NULL;
}

void
tp_exec_cancel(struct tp_exec *x)
{
	if (x == NULL || x->finished)
		return;
	if (x->leader_exited) {
		kill_group(x, SIGTERM);  /* the result is known; the pipe grace timer is running */
		return;
	}
	if (x->res.cancelled)
		return;
	x->res.cancelled = true;
	kill_group(x, SIGTERM);
	arm_timer(x);
}

void
tp_exec_kill(struct tp_exec *x)
{
	if (x == NULL || x->finished)
		return;
	kill_group(x, SIGKILL);
}

pid_t
tp_exec_pid(const struct tp_exec *x)
{
	return x->pid;
}
