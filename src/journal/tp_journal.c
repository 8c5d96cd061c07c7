#include "journal/tp_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_BUSY_TIMEOUT_MS 5000
/* WAL frames before an automatic checkpoint (about 1 MiB of 4 KiB pages), and the size the WAL is
 * cut back to after one: the journal holds few rows, a large WAL is only wasted space. */
#define WAL_AUTOCHECKPOINT_PAGES 256
#define WAL_SIZE_LIMIT (1024 * 1024)

enum stmt_id {
	S_BEGIN, S_COMMIT, S_ROLLBACK,
	S_IF_PUT, S_IF_DEL, S_IF_ALL,
	S_OB_PUT, S_OB_TOUCH, S_OB_DEL, S_OB_ALL,
	S_COUNT, S_PROBE,
	NSTMT
};

static const char *const stmt_sql[NSTMT] = {
	[S_BEGIN] = "BEGIN IMMEDIATE",
	[S_COMMIT] = "COMMIT",
	[S_ROLLBACK] = "ROLLBACK",
	[S_IF_PUT] = "INSERT OR REPLACE INTO inflight (task_token, child_pid, generation, activity_id,"
	    " activity_type, workflow_id, run_id, attempt, started_ms, deadline_ms)"
	    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	[S_IF_DEL] = "DELETE FROM inflight WHERE task_token = ?1",
	[S_IF_ALL] = "SELECT task_token, child_pid, generation, activity_id, activity_type, workflow_id,"
	    " run_id, attempt, started_ms, deadline_ms FROM inflight ORDER BY started_ms",
	[S_OB_PUT] = "INSERT OR REPLACE INTO outbox (task_token, kind, request, attempts, next_try_ms,"
	    " created_ms, label) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[S_OB_TOUCH] = "UPDATE outbox SET attempts = ?2, next_try_ms = ?3 WHERE task_token = ?1",
	[S_OB_DEL] = "DELETE FROM outbox WHERE task_token = ?1",
	[S_OB_ALL] = "SELECT task_token, kind, request, attempts, next_try_ms, created_ms, label"
	    " FROM outbox ORDER BY id",
	[S_COUNT] = "SELECT (SELECT count(*) FROM inflight), (SELECT count(*) FROM outbox)",
	[S_PROBE] = "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_probe_ms', ?1)",
};

static const char schema_sql[] =
    "CREATE TABLE schema_version ("
    "  version    INTEGER PRIMARY KEY,"
    "  applied_ms INTEGER NOT NULL);"
    "CREATE TABLE inflight ("
    "  task_token    BLOB PRIMARY KEY,"
    "  child_pid     INTEGER NOT NULL,"
    "  generation    INTEGER NOT NULL,"
    "  activity_id   TEXT NOT NULL,"
    "  activity_type TEXT NOT NULL,"
    "  workflow_id   TEXT NOT NULL,"
    "  run_id        TEXT NOT NULL,"
    "  attempt       INTEGER NOT NULL,"
    "  started_ms    INTEGER NOT NULL,"
    "  deadline_ms   INTEGER NOT NULL) WITHOUT ROWID;"
    /* Requests may be megabytes: a rowid table, with the token as a unique key. */
    "CREATE TABLE outbox ("
    "  id          INTEGER PRIMARY KEY,"
    "  task_token  BLOB NOT NULL UNIQUE,"
    "  kind        INTEGER NOT NULL CHECK (kind BETWEEN 1 AND 3),"
    "  request     BLOB NOT NULL,"
    "  attempts    INTEGER NOT NULL,"
    "  next_try_ms INTEGER NOT NULL,"
    "  created_ms  INTEGER NOT NULL,"
    "  label       TEXT NOT NULL);"
    "CREATE TABLE meta ("
    "  key   TEXT PRIMARY KEY,"
    "  value INTEGER NOT NULL) WITHOUT ROWID;";

struct tp_journal {
	int           lock_fd;     /* <path>.lock, flock'ed: one writer process */
	sqlite3      *db;
	sqlite3_stmt *st[NSTMT];
	enum tp_journal_sync sync; /* the configured level; the connection runs at NORMAL at most */
	bool          in_txn;
	bool          txn_result;  /* the open transaction put an outbox row */
	char          errmsg[256];
};

static tp_journal_step_hook step_hook;

void
tp_journal_set_step_hook(tp_journal_step_hook hook)
{
	step_hook = hook;
}

int
tp_journal_step_real(struct sqlite3_stmt *stmt)
{
	return sqlite3_step(stmt);
}

/* ---- errors --------------------------------------------------------------------------------- */

static int
map_rc(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK: case SQLITE_DONE: case SQLITE_ROW: return TP_JOURNAL_OK;
	case SQLITE_FULL: return TP_JOURNAL_ERR_FULL;
	case SQLITE_IOERR: return TP_JOURNAL_ERR_IO;
	case SQLITE_BUSY: case SQLITE_LOCKED: return TP_JOURNAL_ERR_BUSY;
	case SQLITE_NOMEM: return TP_JOURNAL_ERR_NOMEM;
	case SQLITE_READONLY: case SQLITE_PERM: return TP_JOURNAL_ERR_READONLY;
	case SQLITE_CORRUPT: case SQLITE_NOTADB: return TP_JOURNAL_ERR_CORRUPT;
	case SQLITE_CANTOPEN: return TP_JOURNAL_ERR_OPEN;
	default: return TP_JOURNAL_ERR_INTERNAL;
	}
}

const char *
tp_journal_strerror(int code)
{
	switch (code) {
	case TP_JOURNAL_OK: return "success";
	case TP_JOURNAL_ERR_FULL: return "disk full";
	case TP_JOURNAL_ERR_IO: return "I/O error";
	case TP_JOURNAL_ERR_BUSY: return "database locked";
	case TP_JOURNAL_ERR_NOMEM: return "out of memory";
	case TP_JOURNAL_ERR_READONLY: return "read-only";
	case TP_JOURNAL_ERR_CORRUPT: return "not a journal, or a damaged one";
	case TP_JOURNAL_ERR_SCHEMA: return "written by a newer version";
	case TP_JOURNAL_ERR_OPEN: return "cannot open";
	case TP_JOURNAL_ERR_STATE: return "transaction misuse";
	default: return "SQLite error";
	}
}

bool
tp_journal_is_transient(int code)
{
	return code == TP_JOURNAL_ERR_FULL || code == TP_JOURNAL_ERR_IO ||
	    code == TP_JOURNAL_ERR_BUSY || code == TP_JOURNAL_ERR_NOMEM ||
	    code == TP_JOURNAL_ERR_READONLY;
}

const char *
tp_journal_errmsg(const struct tp_journal *j)
{
	return j ? j->errmsg : "";
}

/* Remember SQLite's words for rc: the connection's message when it is about rc (a fault-injection
 * hook may return a code SQLite never set), else the generic text of the code. */
static int
fail(struct tp_journal *j, int rc)
{
	const char *msg = sqlite3_errcode(j->db) == rc ? sqlite3_errmsg(j->db) : sqlite3_errstr(rc);

	snprintf(j->errmsg, sizeof(j->errmsg), "%s (%d)", msg, rc);
	return map_rc(rc);
}

/* Run a statement to completion (rows are ignored) and reset it. */
static int
run(struct tp_journal *j, sqlite3_stmt *s)
{
	int rc;

	do
		rc = step_hook ? step_hook(s) : sqlite3_step(s);
	while (rc == SQLITE_ROW);
	if (rc != SQLITE_DONE) {
		int code = fail(j, rc);
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
		return code;
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return TP_JOURNAL_OK;
}

static int
exec_sql(struct tp_journal *j, const char *sql)
{
	sqlite3_stmt *s;
	const char *tail = sql;
	int rc;

	while (*tail) {
		rc = sqlite3_prepare_v2(j->db, tail, -1, &s, &tail);
		if (rc != SQLITE_OK)
			return fail(j, rc);
		if (s == NULL)
			break;
		rc = run(j, s);
		sqlite3_finalize(s);
		if (rc != TP_JOURNAL_OK)
			return rc;
	}
	return TP_JOURNAL_OK;
}

/* ---- opening -------------------------------------------------------------------------------- */

/* Create the directories leading to path: the journal's own one 0700, missing parents 0755. */
static int
make_dirs(const char *path, char *err, size_t errlen)
{
	char *dir = strdup(path);
	char *slash;

	if (dir == NULL) {
		snprintf(err, errlen, "out of memory");
		return TP_JOURNAL_ERR_NOMEM;
	}
	slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir) {
		free(dir);
		return TP_JOURNAL_OK;
	}
	*slash = '\0';
	for (char *p = dir + 1; ; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(dir, c == '\0' ? 0700 : 0755) != 0 && errno != EEXIST) {
			snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
			free(dir);
			return TP_JOURNAL_ERR_OPEN;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	free(dir);
	return TP_JOURNAL_OK;
}

/* The database file is created 0600 before SQLite opens it (its -wal and -shm files take its mode);
 * an existing one readable by others is narrowed. Nothing else opens the file while SQLite has it:
 * closing any descriptor of it would drop SQLite's locks. */
static int
prepare_file(const char *path, char *err, size_t errlen)
{
	static const char *const suffixes[] = { "", "-wal", "-shm" };
	struct stat st;
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd >= 0) {
		close(fd);
		return TP_JOURNAL_OK;
	}
	if (errno != EEXIST) {
		snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
		return TP_JOURNAL_ERR_OPEN;
	}
	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		char name[PATH_MAX];
		snprintf(name, sizeof(name), "%s%s", path, suffixes[i]);
		if (lstat(name, &st) != 0)
			continue;
		if (i == 0 && !S_ISREG(st.st_mode)) {
			snprintf(err, errlen, "%s is not a regular file", path);
			return TP_JOURNAL_ERR_OPEN;
		}
		if ((st.st_mode & 0077) && S_ISREG(st.st_mode) && chmod(name, 0600) != 0) {
			snprintf(err, errlen, "cannot chmod 600 %s: %s", name, strerror(errno));
			return TP_JOURNAL_ERR_OPEN;
		}
	}
	return TP_JOURNAL_OK;
}

static int
set_pragmas(struct tp_journal *j, enum tp_journal_sync sync)
{
	char sql[256];
	sqlite3_stmt *s;
	int rc, code;

	/* WAL must really be on: the answer is the mode now in effect. */
	rc = sqlite3_prepare_v2(j->db, "PRAGMA journal_mode=WAL", -1, &s, NULL);
	if (rc != SQLITE_OK)
		return fail(j, rc);
	rc = step_hook ? step_hook(s) : sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		code = fail(j, rc);
		sqlite3_finalize(s);
		return code;
	}
	if (sqlite3_stricmp((const char *)sqlite3_column_text(s, 0), "wal") != 0) {
		snprintf(j->errmsg, sizeof(j->errmsg), "cannot switch to WAL (mode is %s)",
		    (const char *)sqlite3_column_text(s, 0));
		sqlite3_finalize(s);
		return TP_JOURNAL_ERR_INTERNAL;
	}
	sqlite3_finalize(s);
	/* NORMAL at most: a commit that needs more syncs the WAL itself (tp_journal_commit). */
	snprintf(sql, sizeof(sql), "PRAGMA synchronous=%s; PRAGMA temp_store=MEMORY; "
	    "PRAGMA mmap_size=0; PRAGMA wal_autocheckpoint=%d; PRAGMA journal_size_limit=%d;",
	    sync == TP_JOURNAL_SYNC_OFF ? "OFF" : "NORMAL", WAL_AUTOCHECKPOINT_PAGES, WAL_SIZE_LIMIT);
	return exec_sql(j, sql);
}

/* The schema version in the file: 0 when the file is new. */
static int
read_version(struct tp_journal *j, int64_t *version)
{
	sqlite3_stmt *s;
	int rc;

	*version = 0;
	rc = sqlite3_prepare_v2(j->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
	    "name = 'schema_version'", -1, &s, NULL);
	if (rc != SQLITE_OK)
		return fail(j, rc);
	rc = step_hook ? step_hook(s) : sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		int code = fail(j, rc);
		sqlite3_finalize(s);
		return code;
	}
	bool have = sqlite3_column_int64(s, 0) > 0;
	sqlite3_finalize(s);
	if (!have)
		return TP_JOURNAL_OK;
	rc = sqlite3_prepare_v2(j->db, "SELECT coalesce(max(version), 0) FROM schema_version", -1, &s,
	    NULL);
	if (rc != SQLITE_OK)
		return fail(j, rc);
	rc = step_hook ? step_hook(s) : sqlite3_step(s);
	if (rc != SQLITE_ROW) {
		int code = fail(j, rc);
		sqlite3_finalize(s);
		return code;
	}
	*version = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return TP_JOURNAL_OK;
}

static int
ensure_schema(struct tp_journal *j)
{
	int64_t version;
	char sql[128];
	int rc;

	rc = exec_sql(j, "BEGIN IMMEDIATE");
	if (rc != TP_JOURNAL_OK)
		return rc;
	rc = read_version(j, &version);
	if (rc == TP_JOURNAL_OK && version > TP_JOURNAL_SCHEMA_VERSION) {
		snprintf(j->errmsg, sizeof(j->errmsg), "schema version %lld, this tprefork knows %d",
		    (long long)version, TP_JOURNAL_SCHEMA_VERSION);
		rc = TP_JOURNAL_ERR_SCHEMA;
	}
	if (rc == TP_JOURNAL_OK && version == 0) {
		rc = exec_sql(j, schema_sql);
		if (rc == TP_JOURNAL_OK) {
			snprintf(sql, sizeof(sql), "INSERT INTO schema_version VALUES (%d, "
			    "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
			    TP_JOURNAL_SCHEMA_VERSION);
			rc = exec_sql(j, sql);
		}
	}
	/* Later versions migrate here, one step per version, inside this transaction. */
	if (rc == TP_JOURNAL_OK)
		rc = exec_sql(j, "COMMIT");
	if (rc != TP_JOURNAL_OK && !sqlite3_get_autocommit(j->db))
		sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

/* One process writes the journal (design invariant 5): an exclusive flock on a file beside it
 * (never on the database itself, whose POSIX locks belong to SQLite) keeps a second master away,
 * whatever pid file it uses. */
static int
lock_journal(struct tp_journal *j, const char *path, char *err, size_t errlen)
{
	char name[PATH_MAX];

	snprintf(name, sizeof(name), "%s.lock", path);
	j->lock_fd = open(name, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->lock_fd < 0) {
		snprintf(err, errlen, "cannot open %s: %s", name, strerror(errno));
		return TP_JOURNAL_ERR_OPEN;
	}
	if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		int e = errno;
		snprintf(err, errlen, "%s is in use by another process (%s held)", path, name);
		return e == EWOULDBLOCK ? TP_JOURNAL_ERR_BUSY : TP_JOURNAL_ERR_OPEN;
	}
	return TP_JOURNAL_OK;
}

static void
journal_free(struct tp_journal *j)
{
	for (int i = 0; i < NSTMT; i++)
		sqlite3_finalize(j->st[i]);
	sqlite3_close(j->db);
	if (j->lock_fd >= 0)
		close(j->lock_fd);
	free(j);
}

int
tp_journal_open(const struct tp_journal_opts *o, struct tp_journal **out, char *err,
    size_t errlen)
{
	struct tp_journal *j;
	int rc;

	*out = NULL;
	if (o->path == NULL || o->path[0] == '\0') {
		snprintf(err, errlen, "no journal path");
		return TP_JOURNAL_ERR_OPEN;
	}
	rc = make_dirs(o->path, err, errlen);
	if (rc == TP_JOURNAL_OK)
		rc = prepare_file(o->path, err, errlen);
	if (rc != TP_JOURNAL_OK)
		return rc;
	j = calloc(1, sizeof(*j));
	if (j == NULL) {
		snprintf(err, errlen, "out of memory");
		return TP_JOURNAL_ERR_NOMEM;
	}
	j->lock_fd = -1;
	j->sync = (unsigned)o->synchronous > TP_JOURNAL_SYNC_FULL ? TP_JOURNAL_SYNC_FULL
	                                                          : o->synchronous;
	rc = lock_journal(j, o->path, err, errlen);
	if (rc != TP_JOURNAL_OK) {
		journal_free(j);
		return rc;
	}
	rc = sqlite3_open_v2(o->path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", o->path, j->db ? sqlite3_errmsg(j->db) : sqlite3_errstr(rc));
		journal_free(j);
		return map_rc(rc);
	}
	sqlite3_extended_result_codes(j->db, 1);
	sqlite3_busy_timeout(j->db, o->busy_timeout_ms > 0 ? o->busy_timeout_ms
	                                                   : DEFAULT_BUSY_TIMEOUT_MS);
	rc = set_pragmas(j, j->sync);
	if (rc == TP_JOURNAL_OK)
		rc = ensure_schema(j);
	for (int i = 0; i < NSTMT && rc == TP_JOURNAL_OK; i++) {
		int src = sqlite3_prepare_v3(j->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &j->st[i],
		    NULL);
		if (src != SQLITE_OK)
			rc = fail(j, src);
	}
	if (rc != TP_JOURNAL_OK) {
		snprintf(err, errlen, "%s: %s", o->path, j->errmsg);
		journal_free(j);
		return rc;
	}
	*out = j;
	return TP_JOURNAL_OK;
}

int
tp_journal_close(struct tp_journal *j)
{
	int rc;

	if (j == NULL)
		return TP_JOURNAL_OK;
	tp_journal_rollback(j);
	rc = tp_journal_checkpoint(j, true);
	journal_free(j);
	return rc;
}

/* ---- transactions --------------------------------------------------------------------------- */

int
tp_journal_begin(struct tp_journal *j)
{
	int rc;

	if (j->in_txn) {
		snprintf(j->errmsg, sizeof(j->errmsg), "a transaction is already open");
		return TP_JOURNAL_ERR_STATE;
	}
	/* A ROLLBACK that failed earlier may have left SQLite inside a transaction. */
	if (!sqlite3_get_autocommit(j->db))
		run(j, j->st[S_ROLLBACK]);
	rc = run(j, j->st[S_BEGIN]);
	if (rc == TP_JOURNAL_OK)
		j->in_txn = true;
	j->txn_result = false;
	return rc;
}

/* What synchronous=FULL does at a commit in WAL mode (wal.c, sqlite3WalFrames): fsync the WAL,
 * which holds the commit frame and every frame before it, so earlier NORMAL commits become durable
 * too. The pragma itself cannot be raised for this one COMMIT: inside a transaction SQLite refuses
 * it ("Safety level may not be changed inside a transaction", pragma.c), and before BEGIN nobody
 * knows yet whether a result will be put. The WAL's file object is the one SQLite writes through
 * (its VFS, the same descriptor). */
static int
sync_wal(struct tp_journal *j)
{
	sqlite3_file *f = NULL;
	int rc = sqlite3_file_control(j->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &f);

	if (rc != SQLITE_OK || f == NULL || f->pMethods == NULL) {
		snprintf(j->errmsg, sizeof(j->errmsg), "cannot reach the WAL file to sync it (%d)", rc);
		return TP_JOURNAL_ERR_INTERNAL;
	}
	rc = f->pMethods->xSync(f, SQLITE_SYNC_NORMAL);
	if (rc != SQLITE_OK) {
		snprintf(j->errmsg, sizeof(j->errmsg), "cannot sync the WAL after a commit: %s (%d)",
		    sqlite3_errstr(rc), rc);
		return map_rc(rc);
	}
	return TP_JOURNAL_OK;
}

int
tp_journal_commit(struct tp_journal *j)
{
	bool result = j->txn_result;
	int rc;

	if (!j->in_txn) {
		snprintf(j->errmsg, sizeof(j->errmsg), "no transaction is open");
		return TP_JOURNAL_ERR_STATE;
	}
	rc = run(j, j->st[S_COMMIT]);
	/* A failed COMMIT may or may not have rolled back (SQLite's lang_transaction §3): the
	 * transaction is over only if SQLite is back in autocommit; the caller's rollback settles it. */
	if (rc == TP_JOURNAL_OK || sqlite3_get_autocommit(j->db)) {
		j->in_txn = false;
		j->txn_result = false;
	}
	/* A result is the only copy there is: on disk before the caller relies on it. */
	if (rc == TP_JOURNAL_OK && result && j->sync == TP_JOURNAL_SYNC_FULL)
		rc = sync_wal(j);
	return rc;
}

void
tp_journal_rollback(struct tp_journal *j)
{
	if (j == NULL)
		return;
	if (!sqlite3_get_autocommit(j->db)) {
		char keep[sizeof(j->errmsg)];
		/* Keep the message of the failure that led here. */
		memcpy(keep, j->errmsg, sizeof(keep));
		run(j, j->st[S_ROLLBACK]);
		memcpy(j->errmsg, keep, sizeof(keep));
	}
	j->in_txn = false;
	j->txn_result = false;
}

bool
tp_journal_in_transaction(const struct tp_journal *j)
{
	return j->in_txn;
}

/* ---- rows ----------------------------------------------------------------------------------- */

static int
bind_blob(struct tp_journal *j, sqlite3_stmt *s, int i, const void *p, size_t len)
{
	int rc = sqlite3_bind_blob64(s, i, len ? p : "", (sqlite3_uint64)len, SQLITE_STATIC);
	return rc == SQLITE_OK ? TP_JOURNAL_OK : fail(j, rc);
}

static int
bind_text(struct tp_journal *j, sqlite3_stmt *s, int i, const char *t)
{
	int rc = sqlite3_bind_text(s, i, t ? t : "", -1, SQLITE_STATIC);
	return rc == SQLITE_OK ? TP_JOURNAL_OK : fail(j, rc);
}

static int
bind_int(struct tp_journal *j, sqlite3_stmt *s, int i, int64_t v)
{
	int rc = sqlite3_bind_int64(s, i, v);
	return rc == SQLITE_OK ? TP_JOURNAL_OK : fail(j, rc);
}

static int
need_txn(struct tp_journal *j)
{
	if (j->in_txn)
		return TP_JOURNAL_OK;
	snprintf(j->errmsg, sizeof(j->errmsg), "write outside a transaction");
	return TP_JOURNAL_ERR_STATE;
}

int
tp_journal_inflight_put(struct tp_journal *j, const struct tp_journal_inflight *r)
{
	sqlite3_stmt *s = j->st[S_IF_PUT];
	int rc = need_txn(j);

	if (rc == TP_JOURNAL_OK)
		rc = bind_blob(j, s, 1, r->token, r->token_len);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 2, r->child_pid);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 3, r->generation);
	if (rc == TP_JOURNAL_OK)
		rc = bind_text(j, s, 4, r->activity_id);
	if (rc == TP_JOURNAL_OK)
		rc = bind_text(j, s, 5, r->activity_type);
	if (rc == TP_JOURNAL_OK)
		rc = bind_text(j, s, 6, r->workflow_id);
	if (rc == TP_JOURNAL_OK)
		rc = bind_text(j, s, 7, r->run_id);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 8, r->attempt);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 9, r->started_ms);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 10, r->deadline_ms);
	if (rc == TP_JOURNAL_OK)
		return run(j, s);
	sqlite3_clear_bindings(s);
	return rc;
}

static int
del_token(struct tp_journal *j, enum stmt_id id, const uint8_t *token, size_t len)
{
	int rc = need_txn(j);

	if (rc == TP_JOURNAL_OK)
		rc = bind_blob(j, j->st[id], 1, token, len);
	return rc == TP_JOURNAL_OK ? run(j, j->st[id]) : rc;
}

int
tp_journal_inflight_del(struct tp_journal *j, const uint8_t *token, size_t len)
{
	return del_token(j, S_IF_DEL, token, len);
}

int
tp_journal_outbox_put(struct tp_journal *j, const struct tp_journal_outbox *r)
{
	sqlite3_stmt *s = j->st[S_OB_PUT];
	int rc = need_txn(j);

	if (rc == TP_JOURNAL_OK)
		rc = bind_blob(j, s, 1, r->token, r->token_len);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 2, r->kind);
	if (rc == TP_JOURNAL_OK)
		rc = bind_blob(j, s, 3, r->request, r->request_len);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 4, r->attempts);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 5, r->next_try_ms);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 6, r->created_ms);
	if (rc == TP_JOURNAL_OK)
		rc = bind_text(j, s, 7, r->label);
	if (rc == TP_JOURNAL_OK)
		rc = run(j, s);
	else
		sqlite3_clear_bindings(s);
	if (rc == TP_JOURNAL_OK)
		j->txn_result = true;
	return rc;
}

int
tp_journal_outbox_touch(struct tp_journal *j, const uint8_t *token, size_t len, int64_t attempts,
    int64_t next_try_ms)
{
	sqlite3_stmt *s = j->st[S_OB_TOUCH];
	int rc = need_txn(j);

	if (rc == TP_JOURNAL_OK)
		rc = bind_blob(j, s, 1, token, len);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 2, attempts);
	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, s, 3, next_try_ms);
	if (rc == TP_JOURNAL_OK)
		return run(j, s);
	sqlite3_clear_bindings(s);
	return rc;
}

int
tp_journal_outbox_del(struct tp_journal *j, const uint8_t *token, size_t len)
{
	return del_token(j, S_OB_DEL, token, len);
}

int
tp_journal_probe(struct tp_journal *j, int64_t now_ms)
{
	int rc = need_txn(j);

	if (rc == TP_JOURNAL_OK)
		rc = bind_int(j, j->st[S_PROBE], 1, now_ms);
	return rc == TP_JOURNAL_OK ? run(j, j->st[S_PROBE]) : rc;
}

/* ---- reading -------------------------------------------------------------------------------- */

static const char *
col_text(sqlite3_stmt *s, int i)
{
	const unsigned char *t = sqlite3_column_text(s, i);
	return t ? (const char *)t : "";
}

/* Step a SELECT; returns 1 for a row, 0 at the end, or a negative code (the statement is reset). */
static int
next_row(struct tp_journal *j, sqlite3_stmt *s)
{
	int rc = step_hook ? step_hook(s) : sqlite3_step(s);

	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE) {
		sqlite3_reset(s);
		return 0;
	}
	rc = fail(j, rc);
	sqlite3_reset(s);
	return rc;
}

int
tp_journal_inflight_each(struct tp_journal *j, tp_journal_inflight_fn fn, void *arg)
{
	sqlite3_stmt *s = j->st[S_IF_ALL];
	int rc;

	while ((rc = next_row(j, s)) == 1) {
		struct tp_journal_inflight r;
		int stop;

		r.token = sqlite3_column_blob(s, 0);
		r.token_len = (size_t)sqlite3_column_bytes(s, 0);
		r.child_pid = sqlite3_column_int64(s, 1);
		r.generation = sqlite3_column_int64(s, 2);
		r.activity_id = col_text(s, 3);
		r.activity_type = col_text(s, 4);
		r.workflow_id = col_text(s, 5);
		r.run_id = col_text(s, 6);
		r.attempt = sqlite3_column_int64(s, 7);
		r.started_ms = sqlite3_column_int64(s, 8);
		r.deadline_ms = sqlite3_column_int64(s, 9);
		stop = fn(arg, &r);
		if (stop != 0) {
			sqlite3_reset(s);
			return stop;
		}
	}
	return rc;
}

int
tp_journal_outbox_each(struct tp_journal *j, tp_journal_outbox_fn fn, void *arg)
{
	sqlite3_stmt *s = j->st[S_OB_ALL];
	int rc;

	while ((rc = next_row(j, s)) == 1) {
		struct tp_journal_outbox r;
		int stop;

		r.token = sqlite3_column_blob(s, 0);
		r.token_len = (size_t)sqlite3_column_bytes(s, 0);
		r.kind = (enum tp_journal_kind)sqlite3_column_int(s, 1);
		r.request = sqlite3_column_blob(s, 2);
		r.request_len = (size_t)sqlite3_column_bytes(s, 2);
		r.attempts = sqlite3_column_int64(s, 3);
		r.next_try_ms = sqlite3_column_int64(s, 4);
		r.created_ms = sqlite3_column_int64(s, 5);
		r.label = col_text(s, 6);
		stop = fn(arg, &r);
		if (stop != 0) {
			sqlite3_reset(s);
			return stop;
		}
	}
	return rc;
}

int
tp_journal_count(struct tp_journal *j, int64_t *inflight, int64_t *outbox)
{
	sqlite3_stmt *s = j->st[S_COUNT];
	int rc = next_row(j, s);

	if (rc < 0)
		return rc;
	if (rc == 0) {
		snprintf(j->errmsg, sizeof(j->errmsg), "no row from a count");
		return TP_JOURNAL_ERR_INTERNAL;
	}
	*inflight = sqlite3_column_int64(s, 0);
	*outbox = sqlite3_column_int64(s, 1);
	sqlite3_reset(s);
	return TP_JOURNAL_OK;
}

/* ---- maintenance ---------------------------------------------------------------------------- */

int
tp_journal_checkpoint(struct tp_journal *j, bool truncate)
{
	int rc;

	if (j->in_txn) {
		snprintf(j->errmsg, sizeof(j->errmsg), "checkpoint inside a transaction");
		return TP_JOURNAL_ERR_STATE;
	}
	rc = sqlite3_wal_checkpoint_v2(j->db, NULL, truncate ? SQLITE_CHECKPOINT_TRUNCATE
	                                                     : SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return rc == SQLITE_OK ? TP_JOURNAL_OK : fail(j, rc);
}

int
tp_journal_integrity(struct tp_journal *j, char *out, size_t outlen)
{
	sqlite3_stmt *s;
	int rc = sqlite3_prepare_v2(j->db, "PRAGMA integrity_check", -1, &s, NULL);

	if (rc != SQLITE_OK)
		return fail(j, rc);
	rc = next_row(j, s);
	if (rc == 1)
		snprintf(out, outlen, "%s", col_text(s, 0));
	else if (rc == 0)
		snprintf(out, outlen, "no answer");
	sqlite3_finalize(s);
	return rc < 0 ? rc : TP_JOURNAL_OK;
}
