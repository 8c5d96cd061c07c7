/* tp_master: the prefork master. It forks N children (each a tp_worker), supervises them, and turns
 * signals into a lifecycle that loses no work (design.md "Signals", "Graceful stop", "Reload"):
 *
 *   TERM, INT        graceful stop: USR1 to every child, join them; at deadline - cancel_grace a
 *                    second USR1 (children cancel and report WorkerShutdown); at the deadline SIGKILL
 *                    the stragglers and their activity process groups, fail their tasks through the
 *                    master's own Temporal client; close it; remove the pid file; exit 0
 *   2nd TERM/INT, QUIT  fast stop: cancel now, exit within cancel_grace
 *   HUP              reload: a valid configuration starts a new generation, then the old one drains
 *   TTIN / TTOU      one child more / fewer
 *   USR2             reopen log files (and tell the children)
 *   CHLD             reap; an unexpected exit fails the child's tasks (WorkerCrashed) at once and
 *                    the child is respawned with exponential backoff
 */
#ifndef TP_MASTER_H
#define TP_MASTER_H

#include <stdbool.h>

struct tp_config;

struct tp_master_opts {
	struct tp_config *cfg;         /* taken over by the master */
	const char       *config_path; /* re-read on SIGHUP */
	long              count_override; /* -n, or -1 */
	bool              daemonize;   /* -d */
	const char       *pidfile;     /* -p, or NULL for cfg->pidfile */
};

/* Run the master until it stops. Returns the exit status. */
int tp_master_run(const struct tp_master_opts *o);

#endif
