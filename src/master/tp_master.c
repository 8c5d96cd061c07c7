#include "master/tp_master.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "activity/tp_plugin.h"
#include "channel/tp_channel.h"
#include "core/tp_config.h"
#include "core/tp_log.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"
#include "journal/tp_journal.h"
#include "master/tp_durable.h"
#include "master/tp_pidfile.h"
#include "master/tp_proc.h"
#include "master/tp_status.h"
#include "temporal/tp_pb.h"
#include "temporal/tp_temporal.h"
#include "transport/tp_grpc.h"

#define TICK_MS 250
#define RESPAWN_MIN_MS 100
#define RESPAWN_MAX_MS 30000
/* A child that lived this long resets its slot's crash streak. */
#define RESPAWN_STABLE_MS 30000
/* How long the stop waits for the master's own failure reports before closing its client. */
#define STOP_REPORT_WAIT_MS 5000
/* A busy child's channel is read this often, not on every message (each TaskStarted would wake the
 * master once per activity). Nothing the master does with a message is urgent to the millisecond:
 * what a child wrote before dying is still in the socket and is read at its exit (child_exited),
 * and the journal's in-flight rows wait journal.commit_delay anyway. An idle channel wakes the
 * master on its first byte. */
#define CHILD_READ_BATCH_MS 50
/* None of the master's timers needs to be precise to the millisecond; with this much timer slack
 * the kernel fires the ones due close together in one wake-up (the channels' batched reads, the
 * journal's commit, the tick). */
#define MASTER_TIMER_SLACK_MS 25

enum master_state { M_RUNNING = 1, M_STOPPING, M_CLOSING };

struct slot {
	int     crashes;        /* consecutive unexpected exits */
	int64_t not_before_ms;  /* respawn backoff (monotonic) */
};

struct master {
	struct event_base  *base;
	struct tp_config   *cfg;
	const char         *config_path;
	long                count_override;
	enum master_state   state;
	bool                fast;              /* fast stop */
	int                 generation;
	int                 count;             /* children wanted in the current generation */
	struct slot        *slots;
	int                 nslots;
	struct tp_child    *children;
	int                 nchildren;
	int                 peak_children;
	bool                reloading;         /* a new generation is starting */
	bool                announced_ready;
	struct tp_pidfile  *pidfile;
	struct tp_temporal *tc;                /* the master's own client, for failing tasks */
	struct tp_journal  *jr;                /* NULL when journal.enabled is false */
	struct tp_durable  *dur;               /* in-flight tasks and the outbox, mirrored in jr */
	bool                outbox_retried;    /* the stop's last try of the outbox is under way */
	int64_t             stop_started_ms;
	int64_t             closing_since_ms;
	struct event       *tick_ev;
	struct event       *cancel_ev;         /* deadline - cancel_grace */
	struct event       *kill_ev;           /* deadline */
	struct event       *sigs[10];
	int                 nsigs;
	int                 exit_status;
	struct tp_status   *status;            /* the /status and /metrics endpoint, or NULL */
	uint64_t            done_completed;    /* counters of children that have exited */
	uint64_t            done_failed;
	uint64_t            done_cancelled;
	uint64_t            child_restarts;
	uint64_t            tasks_failed_by_master;
};

static void reconcile(struct master *m);
static void maybe_finish_stop(struct master *m);

static void
notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
	sd_notify(0, state);
#else
	(void)state;
#endif
}

/* ---- failing tasks through the master's own client ----------------------------------------- */

/* Fail every task the child still held, retryable, so Temporal retries them at once instead of
 * waiting for their start-to-close timeout. The failures go through the outbox (journaled, retried
 * until the server takes them); a task whose own report the child handed over keeps that report. */
static void
fail_child_tasks(struct master *m, struct tp_child *c, const char *type, const char *why)
{
	while (c->tasks) {
		struct tp_task_rec *r = c->tasks;
		char msg[512];

		snprintf(msg, sizeof(msg), "%s; activity %s (id %s, attempt %d) will be retried", why,
		    r->activity_type, r->activity_id, r->attempt);
		m->tasks_failed_by_master++;
		if (tp_durable_fail_task(m->dur, &r->token, type, msg))
			tp_log_warnx("failing task of worker %d (pid %ld): %s %s attempt %d: %s", c->index,
			    (long)c->pid, r->activity_type, r->activity_id, r->attempt, type);
		else
			tp_log_info("task of worker %d (pid %ld): %s %s attempt %d: its report is in the "
			    "outbox", c->index, (long)c->pid, r->activity_type, r->activity_id, r->attempt);
		tp_durable_task_done(m->dur, &r->token);
		c->tasks = r->next;
		tp_task_rec_free(r);
		c->ntasks--;
	}
}

/* ---- backpressure --------------------------------------------------------------------------- */

static void
send_backpressure(struct tp_child *c, bool pause)
{
	Tprefork__Channel__V1__Backpressure b = TPREFORK__CHANNEL__V1__BACKPRESSURE__INIT;
	tp_envelope env = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;

	b.pause = pause;
	env.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_BACKPRESSURE;
	env.backpressure = &b;
	tp_channel_send(c->ch, &env);
}

/* The journal became unwritable (or writable again): children stop (resume) polling. */
static void
on_backpressure(void *arg, bool pause)
{
	struct master *m = arg;

	for (struct tp_child *c = m->children; c; c = c->next)
		send_backpressure(c, pause);
}

static void
on_delivery_done(void *arg)
{
	maybe_finish_stop(arg);
}

/* ---- the process table ---------------------------------------------------------------------- */

static struct tp_child *
find_child(struct master *m, pid_t pid)
{
	for (struct tp_child *c = m->children; c; c = c->next)
		if (c->pid == pid)
			return c;
	return NULL;
}

static void
child_unlink(struct master *m, struct tp_child *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		m->children = c->next;
	if (c->next)
		c->next->prev = c->prev;
	m->nchildren--;
	m->done_completed += c->stats.completed;
	m->done_failed += c->stats.failed;
	m->done_cancelled += c->stats.cancelled;
	tp_channel_free(c->ch);
	free(c->ref);
	while (c->tasks) {
		struct tp_task_rec *r = c->tasks;
		c->tasks = r->next;
		tp_task_rec_free(r);
	}
	free(c);
}

static void
signal_child(struct tp_child *c, int sig)
{
	if (kill(c->pid, sig) != 0 && errno != ESRCH)
		tp_log_warn("kill(%ld, %d)", (long)c->pid, sig);
}

/* Level 1: drain (SIGUSR1). Level 2: also cancel running activities, by a Stop message: a second
 * SIGUSR1 sent right after the first may be merged with it by the kernel. */
static void
drain_child(struct tp_child *c, int level)
{
	if (c->usr1_sent < 1 && level >= 1) {
		c->usr1_sent = 1;
		c->state = TP_CHILD_DRAINING;
		signal_child(c, SIGUSR1);
	}
	if (c->usr1_sent < 2 && level >= 2) {
		Tprefork__Channel__V1__Stop st = TPREFORK__CHANNEL__V1__STOP__INIT;
		tp_envelope env = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;

		c->usr1_sent = 2;
		st.cancel = 1;
		env.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_STOP;
		env.stop = &st;
		if (tp_channel_send(c->ch, &env) != 0)
			signal_child(c, SIGUSR1);
	}
}

static void
kill_child(struct tp_child *c)
{
	if (c->killed)
		return;
	c->killed = true;
	tp_child_kill_activity_groups(c);
	signal_child(c, SIGKILL);
}

/* ---- messages from children ----------------------------------------------------------------- */

/* Channel callbacks get the child itself: its channel is freed with it, so no callback can
 * outlive it. */
struct child_ref {
	struct master   *m;
	struct tp_child *c;
};

static void
all_ready_check(struct master *m)
{
	int ready = 0;

	for (struct tp_child *c = m->children; c; c = c->next)
		if (c->generation == m->generation && c->state == TP_CHILD_READY)
			ready++;
	if (ready < m->count)
		return;
	if (m->reloading) {
		/* The new generation serves: drain the old one (no activity is interrupted). */
		m->reloading = false;
		for (struct tp_child *c = m->children; c; c = c->next)
			if (c->generation != m->generation && c->usr1_sent == 0) {
				c->recycle = true;
				drain_child(c, 1);
			}
		tp_log_info("reload: generation %d ready; draining the previous one", m->generation);
		notify("READY=1\nSTATUS=serving");
	} else if (!m->announced_ready) {
		m->announced_ready = true;
		tp_log_info("master ready: %d worker%s, generation %d", m->count,
		    m->count == 1 ? "" : "s", m->generation);
		notify("READY=1\nSTATUS=serving");
	}
}

static void
on_child_msg(void *arg, const tp_envelope *msg)
{
	struct child_ref *ref = arg;
	struct master *m = ref->m;
	struct tp_child *c = ref->c;

	c->last_seen_ms = tp_now_mono_ms();
	switch (msg->msg_case) {
	case TPREFORK__CHANNEL__V1__ENVELOPE__MSG_READY:
		if (c->state == TP_CHILD_STARTING)
			c->state = TP_CHILD_READY;
		tp_log_info("worker %d gen %d (pid %ld) ready", c->index, c->generation, (long)c->pid);
		all_ready_check(m);
		break;
	case TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_STARTED: {
		struct tp_task_rec *r = tp_task_rec_new(msg->task_started);
		r->next = c->tasks;
		c->tasks = r;
		c->ntasks++;
		tp_durable_task_started(m->dur, msg->task_started, c->pid, c->generation);
		break;
	}
	case TPREFORK__CHANNEL__V1__ENVELOPE__MSG_TASK_DONE:
		tp_child_task_done(c, &msg->task_done->task_token);
		tp_durable_task_done(m->dur, &msg->task_done->task_token);
		break;
	case TPREFORK__CHANNEL__V1__ENVELOPE__MSG_UNDELIVERED:
		if (tp_durable_undelivered(m->dur, msg->undelivered) != 0) {
			tp_log_error("worker %d (pid %ld): malformed Undelivered message; killing it",
			    c->index, (long)c->pid);
			kill_child(c);
		}
		break;
	case TPREFORK__CHANNEL__V1__ENVELOPE__MSG_STATS:
		c->stats.polls_open = msg->stats->polls_open;
		c->stats.tasks = msg->stats->tasks;
		c->stats.completed = msg->stats->completed;
		c->stats.failed = msg->stats->failed;
		c->stats.cancelled = msg->stats->cancelled;
		break;
	default:
		break;
	}
}

static void
on_child_channel_error(void *arg, const char *why)
{
	struct child_ref *ref = arg;
	struct tp_child *c = ref->c;

	/* EOF is the child exiting (SIGCHLD follows); anything else is a broken peer. */
	if (c && strcmp(why, "closed") != 0) {
		tp_log_error("worker %d (pid %ld): %s on its channel; killing it", c->index,
		    (long)c->pid, why);
		kill_child(c);
	}
}

/* ---- spawning ------------------------------------------------------------------------------- */

static int
send_config(struct master *m, struct tp_child *c)
{
	Tprefork__Channel__V1__Config cf = TPREFORK__CHANNEL__V1__CONFIG__INIT;
	tp_envelope env = TPREFORK__CHANNEL__V1__ENVELOPE__INIT;

	cf.path = m->cfg->path;
	cf.text = m->cfg->text;
	cf.index = c->index;
	cf.generation = c->generation;
	cf.count = m->count;
	cf.user = m->cfg->user ? m->cfg->user : "";
	cf.group = m->cfg->group ? m->cfg->group : "";
	cf.master_pid = (int32_t)getpid();
	env.msg_case = TPREFORK__CHANNEL__V1__ENVELOPE__MSG_CONFIG;
	env.config = &cf;
	return tp_channel_send(c->ch, &env);
}

static void
spawn(struct master *m, int index)
{
	struct tp_child *c;
	struct child_ref *ref;
	char err[256];
	int fd;
	pid_t pid = tp_proc_spawn(index, m->generation, &fd, err, sizeof(err));

	if (pid == -1) {
		tp_log_error("cannot spawn worker %d: %s", index, err);
		m->slots[index].not_before_ms = tp_now_mono_ms() + 1000;
		return;
	}
	c = tp_xcalloc(1, sizeof(*c));
	c->pid = pid;
	c->index = index;
	c->generation = m->generation;
	c->state = TP_CHILD_STARTING;
	c->started_ms = c->last_seen_ms = tp_now_mono_ms();
	ref = tp_xcalloc(1, sizeof(*ref));
	ref->m = m;
	ref->c = c;
	c->ref = ref;
	{
		struct tp_channel_callbacks cb = { on_child_msg, on_child_channel_error, ref };
		c->ch = tp_channel_new(m->base, fd, &cb);
	}
	if (c->ch)
		tp_channel_batch_reads(c->ch, CHILD_READ_BATCH_MS);
	c->next = m->children;
	if (m->children)
		m->children->prev = c;
	m->children = c;
	m->nchildren++;
	if (m->nchildren > m->peak_children)
		m->peak_children = m->nchildren;
	if (c->ch == NULL || send_config(m, c) != 0) {
		tp_log_error("cannot send the configuration to worker %d (pid %ld)", index, (long)pid);
		kill_child(c);
	} else if (tp_durable_paused(m->dur)) {
		send_backpressure(c, true);
	}
	tp_log_info("spawned worker %d gen %d (pid %ld)", index, m->generation, (long)pid);
}

/* Make the current generation have one live, non-draining child per slot, within 2N children. */
static void
reconcile(struct master *m)
{
	int64_t now = tp_now_mono_ms();

	if (m->state != M_RUNNING)
		return;
	for (int i = 0; i < m->count; i++) {
		bool have = false;
		for (struct tp_child *c = m->children; c; c = c->next)
			if (c->index == i && c->generation == m->generation &&
			    c->state != TP_CHILD_DRAINING)
				have = true;
		if (have || now < m->slots[i].not_before_ms || m->nchildren >= 2 * m->count)
			continue;
		spawn(m, i);
	}
}

/* ---- reaping -------------------------------------------------------------------------------- */

static void
describe_status(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "ended (status 0x%x)", status);
}

static void
schedule_respawn(struct master *m, struct tp_child *c)
{
	struct slot *s;
	int64_t delay;

	if (c->index >= m->nslots)
		return;
	s = &m->slots[c->index];
	if (tp_now_mono_ms() - c->started_ms >= RESPAWN_STABLE_MS)
		s->crashes = 0;
	s->crashes++;
	delay = RESPAWN_MIN_MS;
	for (int i = 1; i < s->crashes && delay < RESPAWN_MAX_MS; i++)
		delay *= 2;
	if (delay > RESPAWN_MAX_MS)
		delay = RESPAWN_MAX_MS;
	s->not_before_ms = tp_now_mono_ms() + delay;
	if (s->crashes > 1)
		tp_log_warnx("worker %d crashed %d times in a row; respawning in %lld ms", c->index,
		    s->crashes, (long long)delay);
}

static void
child_exited(struct master *m, struct tp_child *c, int status)
{
	char how[128], why[256];
	bool expected = c->usr1_sent > 0 || c->killed || m->state != M_RUNNING;
	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;

	describe_status(status, how, sizeof(how));
	/* Its last messages (a TaskDone, an undelivered report) may still be in the socket. */
	tp_channel_read_now(c->ch);
	if (clean && expected)
		tp_log_info("worker %d gen %d (pid %ld) exited", c->index, c->generation, (long)c->pid);
	else
		tp_log_error("worker %d gen %d (pid %ld) %s%s", c->index, c->generation, (long)c->pid,
		    how, expected ? "" : " unexpectedly");
	if (c->tasks) {
		tp_child_kill_activity_groups(c);
		snprintf(why, sizeof(why), "tprefork worker pid %ld %s", (long)c->pid, how);
		fail_child_tasks(m, c, c->killed && m->state != M_RUNNING ? "WorkerShutdown"
		    : "WorkerCrashed", why);
	}
	if (!expected)
		m->child_restarts++;
	if (!expected || (!clean && !c->recycle))
		schedule_respawn(m, c);
	child_unlink(m, c);
}

static void
on_sigchld(evutil_socket_t sig, short what, void *arg)
{
	struct master *m = arg;
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct tp_child *c = find_child(m, pid);
		/* Unknown pids are orphaned activity processes handed to us as subreaper. */
		if (c)
			child_exited(m, c, status);
	}
	reconcile(m);
	all_ready_check(m);
	maybe_finish_stop(m);
}

/* ---- stopping ------------------------------------------------------------------------------- */

static void
on_closed(void *arg)
{
	struct master *m = arg;
	event_base_loopbreak(m->base);
}

/* Steps 6-8: once every child is gone and the reports are out, close the client and leave. */
static void
maybe_finish_stop(struct master *m)
{
	if (m->state != M_STOPPING || m->nchildren > 0)
		return;
	if (!m->outbox_retried) {
		/* Step 6: the outbox once more, within the deadline; what is left stays journaled. */
		m->outbox_retried = true;
		if (tp_durable_outbox_len(m->dur) > 0) {
			tp_log_info("stop: trying the %zu undelivered report(s) once more",
			    tp_durable_outbox_len(m->dur));
			tp_durable_deliver_now(m->dur);
		}
	}
	if (tp_durable_deliveries(m->dur) > 0 &&
	    tp_now_mono_ms() - m->stop_started_ms < m->cfg->shutdown_timeout_ms + STOP_REPORT_WAIT_MS)
		return;
	tp_durable_flush(m->dur);
	m->state = M_CLOSING;
	m->closing_since_ms = tp_now_mono_ms();
	tp_log_info("all workers stopped (peak %d children); closing the Temporal client",
	    m->peak_children);
	tp_temporal_close(m->tc, on_closed, m);
}

static void
on_cancel_timer(evutil_socket_t fd, short what, void *arg)
{
	struct master *m = arg;
	int n = 0;

	for (struct tp_child *c = m->children; c; c = c->next) {
		if (c->usr1_sent < 2 && c->ntasks > 0)
			n++;
		drain_child(c, 2);
	}
	if (n)
		tp_log_warnx("%d worker(s) still busy %d s before the deadline: cancelling their "
		    "activities", n, m->cfg->cancel_grace_ms / 1000);
}

static void
on_kill_timer(evutil_socket_t fd, short what, void *arg)
{
	struct master *m = arg;

	for (struct tp_child *c = m->children; c; c = c->next) {
		tp_log_error("worker %d (pid %ld) outlived the shutdown deadline; killing it and its "
		    "%d activit%s", c->index, (long)c->pid, c->ntasks, c->ntasks == 1 ? "y" : "ies");
		kill_child(c);
	}
}

static void
begin_stop(struct master *m, bool fast)
{
	int64_t deadline, cancel_at;

	if (m->state == M_STOPPING && (m->fast || !fast))
		return;
	if (m->state == M_CLOSING)
		return;
	if (m->state != M_STOPPING) {
		m->state = M_STOPPING;
		m->stop_started_ms = tp_now_mono_ms();
		notify("STOPPING=1");
	}
	m->fast = fast;
	deadline = fast ? m->cfg->cancel_grace_ms : m->cfg->shutdown_timeout_ms;
	cancel_at = fast ? 0 : deadline - m->cfg->cancel_grace_ms;
	tp_log_info("%s stop: %d worker(s), deadline %lld ms", fast ? "fast" : "graceful",
	    m->nchildren, (long long)deadline);
	for (struct tp_child *c = m->children; c; c = c->next)
		drain_child(c, fast ? 2 : 1);
	if (!fast)
		tp_timer_in(m->cancel_ev, cancel_at);
	else
		evtimer_del(m->cancel_ev);
	tp_timer_in(m->kill_ev, deadline);
	maybe_finish_stop(m);
}

static void
on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	struct master *m = arg;

	/* A second TERM or INT during a graceful stop makes it fast. */
	begin_stop(m, m->state == M_STOPPING);
}

static void
on_quit_signal(evutil_socket_t sig, short what, void *arg)
{
	begin_stop(arg, true);
}

/* ---- reload and scaling --------------------------------------------------------------------- */

/* Settings that need a restart keep their running values. */
static void
keep_restart_settings(struct tp_config *old, struct tp_config *nw)
{
	char **fields_old[] = { &old->pidfile, &old->user, &old->group, &old->journal_path };
	char **fields_new[] = { &nw->pidfile, &nw->user, &nw->group, &nw->journal_path };
	static const char *const names[] = { "pidfile", "user", "group", "journal.path" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *a = *fields_old[i] ? *fields_old[i] : "";
		const char *b = *fields_new[i] ? *fields_new[i] : "";
		if (strcmp(a, b) != 0) {
			tp_log_warnx("reload: '%s' changes only with a restart; keeping \"%s\"", names[i], a);
			free(*fields_new[i]);
			*fields_new[i] = *fields_old[i] ? tp_xstrdup(*fields_old[i]) : NULL;
		}
	}
	if (old->journal_enabled != nw->journal_enabled || old->journal_sync != nw->journal_sync ||
	    old->journal_memory_cap != nw->journal_memory_cap ||
	    old->journal_commit_delay_ms != nw->journal_commit_delay_ms)
		tp_log_warnx("reload: 'journal.enabled', 'journal.synchronous', 'journal.memory_cap' and "
		    "'journal.commit_delay' change only with a restart; keeping them");
	nw->journal_enabled = old->journal_enabled;
	nw->journal_sync = old->journal_sync;
	nw->journal_memory_cap = old->journal_memory_cap;
	nw->journal_commit_delay_ms = old->journal_commit_delay_ms;
}

static void
resize_slots(struct master *m, int count)
{
	if (count > m->nslots) {
		m->slots = tp_xrealloc(m->slots, (size_t)count * sizeof(*m->slots));
		memset(m->slots + m->nslots, 0, (size_t)(count - m->nslots) * sizeof(*m->slots));
		m->nslots = count;
	}
	m->count = count;
}

static void
on_reload_signal(evutil_socket_t sig, short what, void *arg)
{
	struct master *m = arg;
	struct tp_config_errors errs;
	struct tp_config *nw;

	if (m->state != M_RUNNING)
		return;
	notify("RELOADING=1");
	nw = tp_config_load_file(m->config_path, true, &errs);
	if (nw != NULL && tp_plugin_check_config(nw, 0, &errs) != 0) {
		tp_config_free(nw);  /* plugins are loaded in a throwaway child, never here */
		nw = NULL;
	}
	if (nw == NULL) {
		for (size_t i = 0; i < errs.n; i++)
			tp_log_error("reload: %s", errs.lines[i]);
		tp_log_error("reload: configuration invalid; still running generation %d unchanged",
		    m->generation);
		tp_config_errors_free(&errs);
		notify("READY=1\nSTATUS=serving (last reload failed)");
		return;
	}
	if (m->count_override > 0)
		nw->count = (int)m->count_override;
	keep_restart_settings(m->cfg, nw);
	/* A generation still starting from an earlier reload is dropped (it holds few or no
	 * tasks; draining loses none); the running one drains once the new one is ready. */
	for (struct tp_child *c = m->children; c; c = c->next)
		if (c->generation == m->generation && m->reloading) {
			c->recycle = true;
			drain_child(c, 1);
		}
	tp_config_free(m->cfg);
	m->cfg = nw;
	tp_log_set_level(m->cfg->log_level);
	m->generation++;
	m->reloading = true;
	resize_slots(m, nw->count);
	for (int i = 0; i < m->nslots; i++)
		m->slots[i].not_before_ms = 0;
	tp_log_info("reload: configuration valid; starting generation %d with %d worker(s)",
	    m->generation, m->count);
	reconcile(m);
}

static void
on_scale_signal(evutil_socket_t sig, short what, void *arg)
{
	struct master *m = arg;

	if (m->state != M_RUNNING)
		return;
	if (sig == SIGTTIN) {
		resize_slots(m, m->count + 1);
		tp_log_info("TTIN: %d worker(s)", m->count);
		reconcile(m);
		return;
	}
	if (m->count <= 1) {
		tp_log_warnx("TTOU: already at one worker");
		return;
	}
	m->count--;
	tp_log_info("TTOU: %d worker(s); draining worker %d", m->count, m->count);
	for (struct tp_child *c = m->children; c; c = c->next)
		if (c->index >= m->count && c->usr1_sent == 0) {
			c->recycle = true;
			drain_child(c, 1);
		}
}

static void
on_reopen_signal(evutil_socket_t sig, short what, void *arg)
{
	struct master *m = arg;

	if (tp_log_reopen() != 0)
		tp_log_warn("cannot reopen the log file");
	for (struct tp_child *c = m->children; c; c = c->next)
		signal_child(c, SIGUSR2);
}

/* ---- periodic supervision ------------------------------------------------------------------- */

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct master *m = arg;
	int64_t now = tp_now_mono_ms();

	for (struct tp_child *c = m->children; c; c = c->next) {
		if (c->killed || now - c->last_seen_ms <= m->cfg->child_timeout_ms)
			continue;
		tp_log_error("worker %d (pid %ld) has not answered for %lld ms; killing it", c->index,
		    (long)c->pid, (long long)(now - c->last_seen_ms));
		kill_child(c);
	}
	if (m->state == M_CLOSING && now - m->closing_since_ms > STOP_REPORT_WAIT_MS)
		event_base_loopbreak(m->base);
	if (m->state != M_CLOSING)
		tp_durable_tick(m->dur);
	maybe_finish_stop(m);
	reconcile(m);
	tp_timer_in(m->tick_ev, TICK_MS);
}

/* ---- set-up --------------------------------------------------------------------------------- */

static void
add_signal(struct master *m, int sig, event_callback_fn fn)
{
	struct event *ev = evsignal_new(m->base, sig, fn, m);
	evsignal_add(ev, NULL);
	m->sigs[m->nsigs++] = ev;
}

static void
setup_signals(struct master *m)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	add_signal(m, SIGTERM, on_stop_signal);
	add_signal(m, SIGINT, on_stop_signal);
	add_signal(m, SIGQUIT, on_quit_signal);
	add_signal(m, SIGHUP, on_reload_signal);
	add_signal(m, SIGTTIN, on_scale_signal);
	add_signal(m, SIGTTOU, on_scale_signal);
	add_signal(m, SIGUSR2, on_reopen_signal);
	add_signal(m, SIGCHLD, on_sigchld);
}

/* Detach from the terminal and the caller. stdout goes to /dev/null; stderr too when the log
 * goes to a file (otherwise it stays the log's destination). */
static int
daemonize(bool log_to_file)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (chdir("/") != 0)
		return -1;
	fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		return -1;
	dup2(fd, STDIN_FILENO);
	dup2(fd, STDOUT_FILENO);
	if (log_to_file || isatty(STDERR_FILENO))
		dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
	return 0;
}

/* ---- the status endpoint's snapshot --------------------------------------------------------- */

static const char *
child_state_name(enum tp_child_state st)
{
	switch (st) {
	case TP_CHILD_STARTING: return "starting";
	case TP_CHILD_READY:    return "ready";
	default:                return "draining";
	}
}

static void
status_fill_child(struct tp_status_child *sc, const struct tp_child *c)
{
	struct tp_status_task *tasks = tp_xcalloc((size_t)c->ntasks + 1, sizeof(*tasks));
	size_t n = 0;

	for (const struct tp_task_rec *r = c->tasks; r && n < (size_t)c->ntasks; r = r->next, n++)
		tasks[n] = (struct tp_status_task){ r->activity_type, r->activity_id, r->workflow_id,
			r->attempt, r->started_ms };
	*sc = (struct tp_status_child){ (long)c->pid, c->index, c->generation,
		child_state_name(c->state), c->stats.polls_open, c->ntasks, c->stats.completed,
		c->stats.failed, c->stats.cancelled, tasks, n };
}

static void
status_fill(void *arg, struct tp_status_snapshot *s)
{
	struct master *m = arg;
	struct tp_status_child *children = tp_xcalloc((size_t)m->nchildren + 1, sizeof(*children));
	size_t n = 0;

	s->state = m->state == M_RUNNING ? "running" : m->state == M_STOPPING ? "stopping" : "closing";
	s->generation = m->generation;
	s->workers_wanted = m->count;
	s->slots_per_worker = m->cfg->max_concurrent;
	s->task_queue = m->cfg->task_queue;
	s->namespace_ = m->cfg->namespace_;
	s->completed = m->done_completed;
	s->failed = m->done_failed;
	s->cancelled = m->done_cancelled;
	s->child_restarts = m->child_restarts;
	s->tasks_failed_by_master = m->tasks_failed_by_master;
	s->journal_paused = tp_durable_paused(m->dur);
	/* What the children wrote since the last batched read (the callbacks do not unlink any). */
	for (struct tp_child *c = m->children; c; c = c->next)
		tp_channel_read_now(c->ch);
	s->journal_inflight = tp_durable_inflight_len(m->dur);
	s->journal_outbox = tp_durable_outbox_len(m->dur);
	for (const struct tp_child *c = m->children; c && n < (size_t)m->nchildren; c = c->next) {
		status_fill_child(&children[n], c);
		s->completed += c->stats.completed;
		s->failed += c->stats.failed;
		s->cancelled += c->stats.cancelled;
		n++;
	}
	s->children = children;
	s->nchildren = n;
}

static void
status_done(void *arg, struct tp_status_snapshot *s)
{
	for (size_t i = 0; i < s->nchildren; i++)
		free((void *)s->children[i].inflight);
	free((void *)s->children);
}

static void
master_free(struct master *m)
{
	int rc;

	while (m->children)
		child_unlink(m, m->children);
	tp_status_free(m->status);
	tp_durable_free(m->dur);
	tp_temporal_free(m->tc);
	/* Step 8: the journal last, checkpointed. */
	rc = tp_journal_close(m->jr);
	if (rc != TP_JOURNAL_OK)
		tp_log_warnx("journal: final checkpoint failed: %s", tp_journal_strerror(rc));
	for (int i = 0; i < m->nsigs; i++)
		event_free(m->sigs[i]);
	/* NULL when the start failed before they were made. */
	if (m->tick_ev)
		event_free(m->tick_ev);
	if (m->cancel_ev)
		event_free(m->cancel_ev);
	if (m->kill_ev)
		event_free(m->kill_ev);
	event_base_free(m->base);
	free(m->slots);
	tp_config_free(m->cfg);
}

/* Open the journal (after the pid file: a second instance never touches it), check it, and
 * recover what a previous run left. */
static int
open_journal(struct master *m)
{
	struct tp_journal_opts jo = { m->cfg->journal_path, (enum tp_journal_sync)m->cfg->journal_sync,
		0 };
	struct tp_durable_opts d = { m->base, m->tc, NULL, (size_t)m->cfg->journal_memory_cap,
		{ on_backpressure, on_delivery_done, m }, m->cfg->journal_commit_delay_ms };
	char err[512], check[256];
	int64_t nin = 0, nout = 0;
	int rc;

	if (m->cfg->journal_enabled) {
		rc = tp_journal_open(&jo, &m->jr, err, sizeof(err));
		if (rc != TP_JOURNAL_OK) {
			tp_log_error("cannot open the journal: %s", err);
			return -1;
		}
		rc = tp_journal_integrity(m->jr, check, sizeof(check));
		if (rc == TP_JOURNAL_OK)
			rc = tp_journal_count(m->jr, &nin, &nout);
		if (rc != TP_JOURNAL_OK || strcmp(check, "ok") != 0) {
			tp_log_error("journal %s fails its integrity check: %s", m->cfg->journal_path,
			    rc != TP_JOURNAL_OK ? tp_journal_errmsg(m->jr) : check);
			return -1;
		}
		tp_log_info("journal %s: integrity ok; %lld task(s) in flight and %lld undelivered "
		    "report(s) from a previous run", m->cfg->journal_path, (long long)nin,
		    (long long)nout);
	} else {
		tp_log_warnx("journal disabled (journal.enabled = false): tasks in flight and "
		    "undelivered reports do not survive a crash");
	}
	d.jr = m->jr;
	m->dur = tp_durable_new(&d);
	tp_durable_recover(m->dur);
	return 0;
}

static int
master_init(struct master *m, const struct tp_master_opts *o)
{
	char err[512], identity[300], host[256];
	pid_t other;

	m->cfg = o->cfg;
	m->config_path = o->config_path;
	m->count_override = o->count_override;
	m->state = M_RUNNING;
	m->generation = 1;
	if (o->daemonize && daemonize(m->cfg->log_file != NULL) != 0) {
		tp_log_warn("cannot daemonize");
		return -1;
	}
	m->pidfile = tp_pidfile_create(o->pidfile ? o->pidfile : m->cfg->pidfile, &other, err,
	    sizeof(err));
	if (m->pidfile == NULL) {
		tp_log_error("%s", err);
		return -1;
	}
	/* Orphaned activity processes of a killed worker come to us, so their process groups stay
	 * pinned until we have killed them. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	prctl(PR_SET_TIMERSLACK, MASTER_TIMER_SLACK_MS * 1000000UL);
	tp_proc_init();
	m->base = event_base_new();
	if (m->base == NULL) {
		tp_log_error("cannot create an event base");
		return -1;
	}
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	snprintf(identity, sizeof(identity), "%ld@%s@tprefork-master", (long)getpid(), host);
	m->tc = tp_temporal_new(m->base, m->cfg, identity, err, sizeof(err));
	if (m->tc == NULL) {
		tp_log_error("cannot set up the Temporal client: %s", err);
		return -1;
	}
	if (open_journal(m) != 0)
		return -1;
	if (m->cfg->status_listen) {
		struct tp_status_source src = { status_fill, status_done, m };
		m->status = tp_status_new(m->base, m->cfg->status_listen, &src, err, sizeof(err));
		if (m->status == NULL) {
			tp_log_error("status endpoint: %s", err);
			return -1;
		}
		tp_log_info("status endpoint on http://%s/status and /metrics", m->cfg->status_listen);
	}
	resize_slots(m, m->cfg->count);
	m->tick_ev = evtimer_new(m->base, on_tick, m);
	m->cancel_ev = evtimer_new(m->base, on_cancel_timer, m);
	m->kill_ev = evtimer_new(m->base, on_kill_timer, m);
	setup_signals(m);
	return 0;
}

int
tp_master_run(const struct tp_master_opts *o)
{
	struct master m;

	memset(&m, 0, sizeof(m));
	tp_proctitle_set("tprefork: master");
	if (master_init(&m, o) != 0) {
		tp_pidfile_remove(m.pidfile);
		if (m.base)
			master_free(&m);
		else
			tp_config_free(m.cfg);
		return 1;
	}
	tp_log_info("master starting: %d worker(s), task queue %s at %s", m.count,
	    m.cfg->task_queue, m.cfg->address);
	reconcile(&m);
	tp_timer_in(m.tick_ev, TICK_MS);
	event_base_dispatch(m.base);
	tp_log_info("master exiting");
	tp_pidfile_remove(m.pidfile);
	master_free(&m);
	return m.exit_status;
}
