/* tp_durable: the master's durable state (design.md "Journal"; docs/journal.md).
 *
 * Two sets of rows, kept in memory and mirrored into the journal (tp_journal):
 *   in flight  the tasks the children hold (from their TaskStarted / TaskDone messages);
 *   outbox     reports not delivered yet: a child's report it could not deliver after its retries
 *              (Undelivered), and the master's own retryable failures for the tasks of a dead child
 *              or of a previous run. Each is a serialized Respond*Request, sent through the master's
 *              Temporal client with backoff until the server takes it or answers NOT_FOUND.
 *
 * Group commit: changes are marked dirty and written together, in one transaction. A result (an
 * outbox row) is written at the end of the loop turn that brought it (an event made active on the
 * first change runs after the turn's other callbacks), with every other change pending. Changes to
 * in-flight rows alone wait up to commit_delay ms (write-behind): the rows of several turns share a
 * transaction, and a task that starts and ends within the delay is never written at all. A crash of
 * the whole tree within that window leaves the task to its Temporal timeout (docs/journal.md).
 * When a write fails (disk full, I/O error), the changes stay in memory, the backpressure hook asks
 * the children to stop polling, and the write is retried every second (after a WAL checkpoint that
 * may free space) until it succeeds; then the children resume. Undelivered reports are held in memory
 * up to a cap; delivery goes on meanwhile (it does not need the journal).
 *
 * On start, tp_durable_recover reads what a previous run left: its in-flight rows become retryable
 * WorkerCrashed failures in the outbox (so Temporal retries them at once), its outbox rows are
 * delivered.
 *
 * This module belongs to the master and logs what it does.
 */
#ifndef TP_DURABLE_H
#define TP_DURABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "tprefork/channel/v1/channel.pb-c.h"

struct event_base;
struct tp_journal;
struct tp_temporal;

struct tp_durable_hooks {
	/* The journal became unwritable (pause true) or writable again (false). */
	void (*backpressure)(void *arg, bool pause);
	/* A delivery attempt ended (the stop waits for them). */
	void (*delivery_done)(void *arg);
	void  *arg;
};

struct tp_durable_opts {
	struct event_base       *base;
	struct tp_temporal      *tc;          /* the master's client (not owned) */
	struct tp_journal       *jr;          /* NULL: no journal, memory only (not owned) */
	size_t                   memory_cap;  /* bytes of outbox requests held in memory */
	struct tp_durable_hooks  hooks;
	int                      commit_delay_ms; /* in-flight rows only; 0: end of the loop turn */
};

struct tp_durable;

struct tp_durable *tp_durable_new(const struct tp_durable_opts *o);
/* Write what is pending, delayed rows too (last try), cancel the deliveries in flight and free.
 * The journal stays open (the caller closes it). NULL is accepted. */
void tp_durable_free(struct tp_durable *d);

/* Recover the rows of a previous run (see above) and start delivering. Returns the number of
 * rows found. */
int tp_durable_recover(struct tp_durable *d);

/* A child's TaskStarted; pid and generation are the child's. */
void tp_durable_task_started(struct tp_durable *d, const Tprefork__Channel__V1__TaskStarted *s,
    pid_t pid, int generation);
/* The task is over for its child (TaskDone, or the master failed it). */
void tp_durable_task_done(struct tp_durable *d, const ProtobufCBinaryData *token);
/* A child's undelivered report: into the outbox, delivery starts now. Returns -1 for a malformed
 * message (unknown kind, empty token or request). */
int tp_durable_undelivered(struct tp_durable *d, const Tprefork__Channel__V1__Undelivered *u);
/* Fail the task of token through the outbox with a retryable ApplicationFailure of type (e.g.
 * "WorkerCrashed"). Does nothing and returns false when the outbox already holds a report for it
 * (the child's own result wins). */
bool tp_durable_fail_task(struct tp_durable *d, const ProtobufCBinaryData *token, const char *type,
    const char *message);
/* Whether the task of token is in flight (known from a TaskStarted, not done yet). */
bool tp_durable_has_task(const struct tp_durable *d, const ProtobufCBinaryData *token);

/* Periodic work (call every few hundred ms): deliveries that are due, the retry of a failed
 * journal write. */
void tp_durable_tick(struct tp_durable *d);
/* The stop: try every outbox row once more, now, whatever its backoff. */
void tp_durable_deliver_now(struct tp_durable *d);
/* Write what is pending now, delayed rows too. Returns true if nothing is left to write. */
bool tp_durable_flush(struct tp_durable *d);

int    tp_durable_deliveries(const struct tp_durable *d);   /* delivery calls in flight */
size_t tp_durable_outbox_len(const struct tp_durable *d);
size_t tp_durable_inflight_len(const struct tp_durable *d);
bool   tp_durable_paused(const struct tp_durable *d);       /* the journal is unwritable */

#endif
