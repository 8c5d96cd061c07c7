/* tp_journal: the master's SQLite journal (design.md "Journal"; reliability.md §3).
 *
 * One database file, written by one process only: the master (design invariant 5; several writing
 * processes are exposed to the WAL-reset corruption bug of SQLite < 3.51.3). It is opened by the
 * master and never carried across fork: children re-execute the binary. An exclusive flock on
 * <path>.lock, held while it is open, refuses a second writer.
 *
 * Settings: WAL, a busy timeout, temporary storage in memory, no mmap, a bounded WAL
 * (auto-checkpoint, journal_size_limit). The file is created 0600 (its -wal and -shm files inherit
 * the mode) in a directory created 0700 when missing.
 *
 * Sync per transaction (docs/journal.md "Commits: when, and with which sync"): the connection runs
 * at synchronous=NORMAL (OFF when configured OFF), durable across any crash or kill -9 of the
 * process; only a power loss or an OS crash may take the newest commits. That is all an in-flight
 * row, an outbox delete or touch, or the probe needs. A transaction that put an outbox row (a
 * result: its only copy) is, when FULL is configured, made durable before tp_journal_commit
 * returns: the WAL is fsync'ed right after COMMIT, which is what synchronous=FULL does at a WAL
 * commit (and the fsync covers every earlier frame). The pragma cannot be raised for one COMMIT
 * instead: SQLite refuses to change it inside a transaction.
 *
 * Schema (version TP_JOURNAL_SCHEMA_VERSION, recorded in the table schema_version):
 *   inflight(task_token PK, child_pid, generation, activity_id, activity_type, workflow_id, run_id,
 *            attempt, started_ms, deadline_ms)          a task a child holds
 *   outbox(id, task_token UNIQUE, kind, request, attempts, next_try_ms, created_ms, label)
 *                                                       a report not delivered yet: the serialized
 *                                                       Respond* request
 *   meta(key PK, value)                                 last_probe_ms: see tp_journal_probe
 *
 * Writes happen inside an explicit transaction (tp_journal_begin ... tp_journal_commit), BEGIN
 * IMMEDIATE. A failed statement or commit leaves the transaction to the caller, who must call
 * tp_journal_rollback (which is always safe, whatever SQLite already rolled back).
 *
 * Lower layer: returns codes (0 or a negative TP_JOURNAL_ERR_*), never logs, never exits. The text
 * of the last SQLite error is available from tp_journal_errmsg.
 */
#ifndef TP_JOURNAL_H
#define TP_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sqlite3_stmt;

#define TP_JOURNAL_SCHEMA_VERSION 1

enum tp_journal_sync {
	TP_JOURNAL_SYNC_OFF = 0,
	TP_JOURNAL_SYNC_NORMAL = 1,
	TP_JOURNAL_SYNC_FULL = 2
};

enum tp_journal_err {
	TP_JOURNAL_OK = 0,
	TP_JOURNAL_ERR_FULL = -1,       /* disk or quota full (SQLITE_FULL) */
	TP_JOURNAL_ERR_IO = -2,         /* I/O error (SQLITE_IOERR*) */
	TP_JOURNAL_ERR_BUSY = -3,       /* locked beyond the busy timeout */
	TP_JOURNAL_ERR_NOMEM = -4,
	TP_JOURNAL_ERR_READONLY = -5,   /* the file or its directory became read-only */
	TP_JOURNAL_ERR_CORRUPT = -6,    /* not a database, or a damaged one */
	TP_JOURNAL_ERR_SCHEMA = -7,     /* written by a newer tprefork (unknown schema version) */
	TP_JOURNAL_ERR_OPEN = -8,       /* cannot create the directory or open the file */
	TP_JOURNAL_ERR_STATE = -9,      /* misuse: no transaction open, or one already open */
	TP_JOURNAL_ERR_INTERNAL = -10   /* any other SQLite error */
};

/* The kinds of a report in the outbox (the Respond* method it is a request of). */
enum tp_journal_kind {
	TP_JOURNAL_COMPLETED = 1,
	TP_JOURNAL_FAILED = 2,
	TP_JOURNAL_CANCELED = 3
};

struct tp_journal_opts {
	const char          *path;            /* the database file; its directory is created if missing */
	enum tp_journal_sync synchronous;
	int                  busy_timeout_ms; /* 0: 5000 */
};

/* A row of `inflight`. Strings are NUL-terminated; NULL is stored as "". */
struct tp_journal_inflight {
	const uint8_t *token;
	size_t         token_len;
	int64_t        child_pid;
	int64_t        generation;
	const char    *activity_id;
	const char    *activity_type;
	const char    *workflow_id;
	const char    *run_id;
	int64_t        attempt;
	int64_t        started_ms;       /* Unix ms */
	int64_t        deadline_ms;      /* Unix ms; 0: none */
};

/* A row of `outbox`. */
struct tp_journal_outbox {
	const uint8_t       *token;
	size_t               token_len;
	enum tp_journal_kind kind;
	const uint8_t       *request;    /* the serialized Respond*Request */
	size_t               request_len;
	int64_t              attempts;   /* delivery attempts made */
	int64_t              next_try_ms; /* Unix ms */
	int64_t              created_ms; /* Unix ms */
	const char          *label;      /* for log lines, e.g. "Resize id=7 attempt=1"; NULL: "" */
};

struct tp_journal;

/* Open (creating if needed) the journal at o->path. Returns 0 with *out set, or a negative code
 * with err filled (the path and the reason): ERR_BUSY when another process holds it. */
int tp_journal_open(const struct tp_journal_opts *o, struct tp_journal **out, char *err,
    size_t errlen);
/* Roll back an open transaction, checkpoint (TRUNCATE) and close. NULL is accepted. Returns 0 or
 * the code of a failed checkpoint (the file is closed either way). */
int tp_journal_close(struct tp_journal *j);

const char *tp_journal_strerror(int code);
/* SQLite's text for the last failure on j ("" if none). Valid until the next call on j. */
const char *tp_journal_errmsg(const struct tp_journal *j);
/* Whether code may clear by itself (space freed, lock released): FULL, IO, BUSY, NOMEM, READONLY. */
bool tp_journal_is_transient(int code);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK. begin fails with ERR_STATE if a transaction is open, commit
 * if none is. rollback is a no-op without a transaction. commit returns 0 only once the transaction
 * is as durable as its content needs (above); if the WAL cannot be synced after a COMMIT of an
 * outbox row, it returns ERR_IO although the rows are committed: the caller writes them again. */
int  tp_journal_begin(struct tp_journal *j);
int  tp_journal_commit(struct tp_journal *j);
void tp_journal_rollback(struct tp_journal *j);
bool tp_journal_in_transaction(const struct tp_journal *j);

/* Insert or replace the row of r->token. */
int tp_journal_inflight_put(struct tp_journal *j, const struct tp_journal_inflight *r);
/* Delete the row of token (absent: 0). */
int tp_journal_inflight_del(struct tp_journal *j, const uint8_t *token, size_t len);

/* Insert or replace the row of r->token. The transaction then commits at the configured
 * synchronous level. */
int tp_journal_outbox_put(struct tp_journal *j, const struct tp_journal_outbox *r);
/* Record a delivery attempt: attempts and next_try_ms of the row of token (absent: 0). */
int tp_journal_outbox_touch(struct tp_journal *j, const uint8_t *token, size_t len,
    int64_t attempts, int64_t next_try_ms);
int tp_journal_outbox_del(struct tp_journal *j, const uint8_t *token, size_t len);
/* Write a row of meta (last_probe_ms = now_ms): a write that needs space even when nothing else
 * is pending, to learn whether the file can be written again. */
int tp_journal_probe(struct tp_journal *j, int64_t now_ms);

/* Visit every row, oldest first. The row's pointers are valid during the call only. A non-zero
 * return from fn stops the walk and is returned. Otherwise returns 0 or a negative code. */
typedef int (*tp_journal_inflight_fn)(void *arg, const struct tp_journal_inflight *r);
typedef int (*tp_journal_outbox_fn)(void *arg, const struct tp_journal_outbox *r);
int tp_journal_inflight_each(struct tp_journal *j, tp_journal_inflight_fn fn, void *arg);
int tp_journal_outbox_each(struct tp_journal *j, tp_journal_outbox_fn fn, void *arg);

/* Row counts of both tables. */
int tp_journal_count(struct tp_journal *j, int64_t *inflight, int64_t *outbox);

/* Checkpoint the WAL into the database; truncate: also shrink the WAL file to zero bytes (frees
 * space on a full disk). Not inside a transaction. */
int tp_journal_checkpoint(struct tp_journal *j, bool truncate);

/* PRAGMA integrity_check: 0 with "ok" in out, or 0 with the first problem in out, or a code. */
int tp_journal_integrity(struct tp_journal *j, char *out, size_t outlen);

/* Fault injection for tests: every statement the module runs goes through hook instead of
 * sqlite3_step (NULL restores sqlite3_step). The hook may call tp_journal_step_real. */
typedef int (*tp_journal_step_hook)(struct sqlite3_stmt *stmt);
void tp_journal_set_step_hook(tp_journal_step_hook hook);
int  tp_journal_step_real(struct sqlite3_stmt *stmt);

#endif
