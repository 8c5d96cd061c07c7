/* tp_worker: one activity worker's event loop (a child of the master, or the whole process when
 * run standalone). It connects to Temporal, keeps `pollers` polls open while it has free slots,
 * runs each task through its handler, heartbeats, enforces the local deadline, reports results, and
 * drains gracefully: stop polling, ShutdownWorker, let open polls complete (server capability
 * worker_poll_complete_on_shutdown) or cancel them (without it), finish the tasks in flight, report
 * them, GOAWAY, exit 0.
 *
 * Signals (evsignal events, no work in signal context):
 *   child mode:      USR1 drain; a second USR1 cancels running activities (reported as retryable
 *                    WorkerShutdown failures); TERM, INT, HUP ignored
 *   standalone mode: TERM/INT drain, a second one (or QUIT) cancels running activities
 */
#ifndef TP_WORKER_H
#define TP_WORKER_H

#include <stdbool.h>

struct tp_config;

struct tp_worker_opts {
	const struct tp_config *cfg;
	int  index;          /* child number, for logs and the process title */
	int  generation;
	int  channel_fd;     /* socketpair to the master, or -1 when standalone */
	bool standalone;     /* true: handles TERM/INT/QUIT itself */
};

/* Run until drained. Returns the process exit status (0 after a graceful drain). */
int tp_worker_run(const struct tp_worker_opts *o);

#endif
