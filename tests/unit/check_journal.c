/* Unit tests of tp_journal: creation (modes, WAL, schema version), rows and their listing after a
 * reopen or a crash of the writer, transactions, injected and real write failures (a step hook, a
 * file-size limit), a busy database, files that are not a journal, and the sync of each commit
 * (a VFS shim that counts the xSync calls SQLite makes). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "journal/tp_journal.h"

static char dir[64];
static char path[128];

/* ---- a VFS shim: the default VFS, counting the syncs and writes of its files ---------------- */

enum { F_DB, F_WAL, F_OTHER, NFKIND };

struct cfile {
	sqlite3_file  base;
	int           kind;
	sqlite3_file *real;         /* the default VFS's file, right after this struct */
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs count_vfs;
static int n_sync[NFKIND], n_write[NFKIND];
static int fail_syncs;          /* fail this many WAL syncs (SQLITE_IOERR_FSYNC) */
static int wal_writes_at_sync;  /* WAL writes made before its last sync */

#define REAL(f) (((struct cfile *)(f))->real)

static int
c_close(sqlite3_file *f)
{
	return REAL(f)->pMethods->xClose(REAL(f));
}

static int
c_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
	return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int
c_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
	n_write[((struct cfile *)f)->kind]++;
	return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}

static int
c_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int
c_sync(sqlite3_file *f, int flags)
{
	int kind = ((struct cfile *)f)->kind;

	n_sync[kind]++;
	if (kind == F_WAL)
		wal_writes_at_sync = n_write[F_WAL];
	if (kind == F_WAL && fail_syncs > 0) {
		fail_syncs--;
		return SQLITE_IOERR_FSYNC;
	}
	return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int
c_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int
c_lock(sqlite3_file *f, int level)
{
	return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int
c_unlock(sqlite3_file *f, int level)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int
c_check_reserved(sqlite3_file *f, int *out)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int
c_file_control(sqlite3_file *f, int op, void *arg)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int
c_sector_size(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int
c_device(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int
c_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **p)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), region, size, extend, p);
}

static int
c_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void
c_shm_barrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int
c_shm_unmap(sqlite3_file *f, int del)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int
c_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **p)
{
	return REAL(f)->pMethods->xFetch(REAL(f), off, n, p);
}

static int
c_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
	return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods count_io = {
	3, c_close, c_read, c_write, c_truncate, c_sync, c_file_size, c_lock, c_unlock,
	c_check_reserved, c_file_control, c_sector_size, c_device, c_shm_map, c_shm_lock,
	c_shm_barrier, c_shm_unmap, c_fetch, c_unfetch
};

static int
c_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags, int *out_flags)
{
	struct cfile *c = (struct cfile *)f;
	int rc;

	c->real = (sqlite3_file *)(c + 1);
	c->kind = (flags & SQLITE_OPEN_MAIN_DB) ? F_DB : (flags & SQLITE_OPEN_WAL) ? F_WAL : F_OTHER;
	rc = real_vfs->xOpen(real_vfs, name, c->real, flags, out_flags);
	/* SQLite calls xClose only on a file whose pMethods is set. */
	c->base.pMethods = rc == SQLITE_OK && c->real->pMethods ? &count_io : NULL;
	return rc;
}

/* Make the shim the default VFS (tp_journal_open uses the default), counters at zero. */
static void
count_vfs_install(void)
{
	if (real_vfs == NULL) {
		real_vfs = sqlite3_vfs_find(NULL);
		ck_assert_ptr_nonnull(real_vfs);
		ck_assert_int_ge(real_vfs->iVersion, 3);
		count_vfs = *real_vfs;
		count_vfs.pNext = NULL;
		count_vfs.zName = "tp-count";
		count_vfs.szOsFile = (int)sizeof(struct cfile) + real_vfs->szOsFile;
		count_vfs.xOpen = c_open;
	}
	ck_assert_int_eq(sqlite3_vfs_register(&count_vfs, 1), SQLITE_OK);
	memset(n_sync, 0, sizeof(n_sync));
	memset(n_write, 0, sizeof(n_write));
	fail_syncs = 0;
}

static void
count_vfs_remove(void)
{
	if (real_vfs) {
		sqlite3_vfs_unregister(&count_vfs);
		sqlite3_vfs_register(real_vfs, 1);
	}
}

static void
counters_zero(void)
{
	memset(n_sync, 0, sizeof(n_sync));
	memset(n_write, 0, sizeof(n_write));
}

static int
syncs(void)
{
	return n_sync[F_DB] + n_sync[F_WAL] + n_sync[F_OTHER];
}

static void
setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/check-journal-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/state/sub/journal.db", dir);
	tp_journal_set_step_hook(NULL);
}

static void
teardown(void)
{
	char cmd[160];

	tp_journal_set_step_hook(NULL);
	count_vfs_remove();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

static struct tp_journal *open_j(enum tp_journal_sync sync);
static struct tp_journal_inflight task(const char *token, int attempt, int64_t started);
static struct tp_journal_outbox report(const char *token, const uint8_t *req, size_t len);

static struct tp_journal *
open_j(enum tp_journal_sync sync)
{
	struct tp_journal_opts o = { path, sync, 200 };
	struct tp_journal *j = NULL;
	char err[256] = "";
	int rc = tp_journal_open(&o, &j, err, sizeof(err));

	ck_assert_msg(rc == TP_JOURNAL_OK, "open: %d %s", rc, err);
	return j;
}

static struct tp_journal_inflight
task(const char *token, int attempt, int64_t started)
{
	struct tp_journal_inflight r = { (const uint8_t *)token, strlen(token), 4242, 3, "act-1",
		"Resize", "wf-1", "run-1", attempt, started, started + 60000 };
	return r;
}

static struct tp_journal_outbox
report(const char *token, const uint8_t *req, size_t len)
{
	struct tp_journal_outbox r = { (const uint8_t *)token, strlen(token), TP_JOURNAL_COMPLETED,
		req, len, 0, 1000, 900, "Resize id=act-1 attempt=1" };
	return r;
}

/* Listing helpers: the rows seen, their tokens joined by ','. */
struct seen {
	char    tokens[512];
	int     n;
	int64_t attempts_sum;
	size_t  req_bytes;
	int64_t last_pid;
	char    last_label[128];
};

static void
seen_add(struct seen *s, const uint8_t *tok, size_t len)
{
	size_t at = strlen(s->tokens);
	snprintf(s->tokens + at, sizeof(s->tokens) - at, "%s%.*s", s->n ? "," : "", (int)len,
	    (const char *)tok);
	s->n++;
}

static int
on_inflight(void *arg, const struct tp_journal_inflight *r)
{
	struct seen *s = arg;

	seen_add(s, r->token, r->token_len);
	s->last_pid = r->child_pid;
	ck_assert_str_eq(r->activity_type, "Resize");
	ck_assert_str_eq(r->run_id, "run-1");
	ck_assert_int_eq(r->deadline_ms, r->started_ms + 60000);
	return 0;
}

static int
on_outbox(void *arg, const struct tp_journal_outbox *r)
{
	struct seen *s = arg;

	seen_add(s, r->token, r->token_len);
	s->attempts_sum += r->attempts;
	s->req_bytes += r->request_len;
	snprintf(s->last_label, sizeof(s->last_label), "%s", r->label);
	for (size_t i = 0; i < r->request_len; i++)
		if (r->request[i] != (uint8_t)(i * 7))
			ck_abort_msg("request byte %zu differs", i);
	return 0;
}

static struct seen
list_inflight(struct tp_journal *j)
{
	struct seen s;

	memset(&s, 0, sizeof(s));
	ck_assert_int_eq(tp_journal_inflight_each(j, on_inflight, &s), TP_JOURNAL_OK);
	return s;
}

static struct seen
list_outbox(struct tp_journal *j)
{
	struct seen s;

	memset(&s, 0, sizeof(s));
	ck_assert_int_eq(tp_journal_outbox_each(j, on_outbox, &s), TP_JOURNAL_OK);
	return s;
}

static uint8_t *
pattern(size_t len)
{
	uint8_t *p = malloc(len);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 7);
	return p;
}

static void
assert_integrity(struct tp_journal *j)
{
	char out[128];

	ck_assert_int_eq(tp_journal_integrity(j, out, sizeof(out)), TP_JOURNAL_OK);
	ck_assert_str_eq(out, "ok");
}

/* ---- creation ------------------------------------------------------------------------------- */

START_TEST(open_creates_private_files_wal_and_schema)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	struct tp_journal_inflight r = task("tok-a", 1, 100);
	char sub[160], wal[160];
	struct stat st;
	sqlite3 *db;
	sqlite3_stmt *s;

	snprintf(sub, sizeof(sub), "%s/state/sub", dir);
	ck_assert_int_eq(stat(sub, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &r), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	ck_assert_int_eq(stat(wal, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	/* Another (read-only) connection sees WAL mode and the schema version. */
	ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &s, NULL),
	    SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(s, 0), TP_JOURNAL_SCHEMA_VERSION);
	sqlite3_finalize(s);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "wal");
	sqlite3_finalize(s);
	sqlite3_close(db);
	ck_assert_int_eq(tp_journal_close(j), TP_JOURNAL_OK);
	/* Closing checkpoints and truncates the WAL. */
	ck_assert(stat(wal, &st) != 0 || st.st_size == 0);
}
END_TEST

START_TEST(existing_file_narrowed_to_0600)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_NORMAL);
	struct stat st;

	tp_journal_close(j);
	ck_assert_int_eq(chmod(path, 0644), 0);
	j = open_j(TP_JOURNAL_SYNC_OFF);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	tp_journal_close(j);
}
END_TEST

/* ---- rows ----------------------------------------------------------------------------------- */

START_TEST(rows_survive_reopen_and_list_in_order)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	struct tp_journal_inflight a = task("tok-a", 1, 300), b = task("tok-b", 2, 100),
	    c = task("tok-c", 1, 200);
	uint8_t *big = pattern(1 << 20);
	struct tp_journal_outbox o1 = report("tok-x", big, 1 << 20), o2 = report("tok-y", big, 10);
	int64_t nin, nout;
	struct seen s;

	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert(tp_journal_in_transaction(j));
	ck_assert_int_eq(tp_journal_inflight_put(j, &a), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &b), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &c), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &c), TP_JOURNAL_OK);   /* replace, not duplicate */
	ck_assert_int_eq(tp_journal_outbox_put(j, &o1), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o2), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	ck_assert(!tp_journal_in_transaction(j));
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_del(j, (const uint8_t *)"tok-c", 5), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_del(j, (const uint8_t *)"nope", 4), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_touch(j, (const uint8_t *)"tok-y", 5, 3, 5000),
	    TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_close(j), TP_JOURNAL_OK);

	j = open_j(TP_JOURNAL_SYNC_FULL);
	s = list_inflight(j);
	ck_assert_str_eq(s.tokens, "tok-b,tok-a");     /* by start time */
	ck_assert_int_eq(s.last_pid, 4242);
	s = list_outbox(j);
	ck_assert_str_eq(s.tokens, "tok-x,tok-y");     /* oldest first */
	ck_assert_int_eq(s.attempts_sum, 3);
	ck_assert_uint_eq(s.req_bytes, (1 << 20) + 10);
	ck_assert_str_eq(s.last_label, "Resize id=act-1 attempt=1");
	ck_assert_int_eq(tp_journal_count(j, &nin, &nout), TP_JOURNAL_OK);
	ck_assert_int_eq(nin, 2);
	ck_assert_int_eq(nout, 2);
	assert_integrity(j);
	tp_journal_close(j);
	free(big);
}
END_TEST

START_TEST(rollback_discards_and_misuse_is_reported)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	struct tp_journal_inflight a = task("tok-a", 1, 1);
	int64_t nin, nout;

	ck_assert_int_eq(tp_journal_inflight_put(j, &a), TP_JOURNAL_ERR_STATE);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_ERR_STATE);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_ERR_STATE);
	ck_assert_int_eq(tp_journal_checkpoint(j, true), TP_JOURNAL_ERR_STATE);
	ck_assert_int_eq(tp_journal_inflight_put(j, &a), TP_JOURNAL_OK);
	tp_journal_rollback(j);
	tp_journal_rollback(j);   /* harmless twice */
	ck_assert_int_eq(tp_journal_count(j, &nin, &nout), TP_JOURNAL_OK);
	ck_assert_int_eq(nin, 0);
	ck_assert_int_eq(tp_journal_checkpoint(j, false), TP_JOURNAL_OK);
	tp_journal_close(j);
}
END_TEST

/* The writer dies (like kill -9) right after a commit, without closing: the rows are there. */
START_TEST(recovery_listing_after_writer_crash)
{
	pid_t pid = fork();
	int status;
	struct tp_journal *j;
	struct seen s;

	ck_assert_int_ne(pid, -1);
	if (pid == 0) {
		struct tp_journal *cj = open_j(TP_JOURNAL_SYNC_FULL);
		struct tp_journal_inflight a = task("tok-crash", 1, 10);
		uint8_t *req = pattern(100);
		struct tp_journal_outbox o = report("tok-out", req, 100);

		if (tp_journal_begin(cj) != 0 || tp_journal_inflight_put(cj, &a) != 0 ||
		    tp_journal_outbox_put(cj, &o) != 0 || tp_journal_commit(cj) != 0)
			_exit(2);
		/* And a transaction that never commits. */
		a = task("tok-uncommitted", 1, 20);
		if (tp_journal_begin(cj) != 0 || tp_journal_inflight_put(cj, &a) != 0)
			_exit(3);
		kill(getpid(), SIGKILL);
		_exit(4);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	j = open_j(TP_JOURNAL_SYNC_FULL);
	s = list_inflight(j);
	ck_assert_str_eq(s.tokens, "tok-crash");
	s = list_outbox(j);
	ck_assert_str_eq(s.tokens, "tok-out");
	assert_integrity(j);
	tp_journal_close(j);
}
END_TEST

/* ---- failures ------------------------------------------------------------------------------- */

static int fail_code;
static const char *fail_sql;
static int fail_count;

/* Fail statements whose SQL starts with fail_sql, with fail_code, fail_count times. */
static int
failing_step(struct sqlite3_stmt *stmt)
{
	const char *sql = sqlite3_sql((sqlite3_stmt *)stmt);

	if (fail_count > 0 && sql && strncmp(sql, fail_sql, strlen(fail_sql)) == 0) {
		fail_count--;
		return fail_code;
	}
	return tp_journal_step_real(stmt);
}

START_TEST(injected_commit_failure_then_recovery)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	struct tp_journal_inflight a = task("tok-a", 1, 1), b = task("tok-b", 1, 2);
	int64_t nin, nout;
	int rc;

	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &a), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);

	fail_sql = "COMMIT";
	fail_code = SQLITE_FULL;
	fail_count = 1;
	tp_journal_set_step_hook(failing_step);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &b), TP_JOURNAL_OK);
	rc = tp_journal_commit(j);
	ck_assert_int_eq(rc, TP_JOURNAL_ERR_FULL);
	ck_assert(tp_journal_is_transient(rc));
	ck_assert_msg(strstr(tp_journal_errmsg(j), "full") != NULL, "%s", tp_journal_errmsg(j));
	tp_journal_rollback(j);
	ck_assert(!tp_journal_in_transaction(j));
	ck_assert_int_eq(tp_journal_count(j, &nin, &nout), TP_JOURNAL_OK);
	ck_assert_int_eq(nin, 1);

	/* An I/O error on a row's INSERT. */
	fail_sql = "INSERT OR REPLACE INTO inflight";
	fail_code = SQLITE_IOERR_WRITE;
	fail_count = 1;
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	rc = tp_journal_inflight_put(j, &b);
	ck_assert_int_eq(rc, TP_JOURNAL_ERR_IO);
	ck_assert(tp_journal_is_transient(rc));
	tp_journal_rollback(j);

	/* Space is back: the same write succeeds. */
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &b), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	tp_journal_set_step_hook(NULL);
	ck_assert_str_eq(list_inflight(j).tokens, "tok-a,tok-b");
	assert_integrity(j);
	tp_journal_close(j);
}
END_TEST

/* A real write failure: the file size limit stops the WAL from growing (EFBIG: an I/O error, as
 * ENOSPC gives SQLITE_FULL). Nothing is half-written and the journal recovers. */
START_TEST(real_write_failure_file_size_limit)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	struct tp_journal_inflight a = task("tok-a", 1, 1);
	uint8_t *big = pattern(512 * 1024);
	struct tp_journal_outbox o = report("tok-big", big, 512 * 1024);
	struct rlimit lim, old;
	struct sigaction sa;
	char wal[160];
	struct stat st;
	int rc;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGXFSZ, &sa, NULL);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &a), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	snprintf(wal, sizeof(wal), "%s-wal", path);
	ck_assert_int_eq(stat(wal, &st), 0);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = (rlim_t)st.st_size + 64 * 1024;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

	rc = tp_journal_begin(j);
	if (rc == TP_JOURNAL_OK)
		rc = tp_journal_outbox_put(j, &o);
	if (rc == TP_JOURNAL_OK)
		rc = tp_journal_commit(j);
	ck_assert_msg(rc == TP_JOURNAL_ERR_IO || rc == TP_JOURNAL_ERR_FULL, "rc %d: %s", rc,
	    tp_journal_errmsg(j));
	ck_assert(tp_journal_is_transient(rc));
	tp_journal_rollback(j);
	ck_assert_int_eq(list_outbox(j).n, 0);
	assert_integrity(j);

	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	tp_journal_close(j);
	j = open_j(TP_JOURNAL_SYNC_FULL);
	ck_assert_str_eq(list_outbox(j).tokens, "tok-big");
	ck_assert_str_eq(list_inflight(j).tokens, "tok-a");
	assert_integrity(j);
	tp_journal_close(j);
	free(big);
}
END_TEST

/* Another connection holds the write lock: BEGIN IMMEDIATE waits the busy timeout, then says so. */
START_TEST(busy_is_transient)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	sqlite3 *other;
	int rc;

	ck_assert_int_eq(sqlite3_open(path, &other), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	rc = tp_journal_begin(j);
	ck_assert_int_eq(rc, TP_JOURNAL_ERR_BUSY);
	ck_assert(tp_journal_is_transient(rc));
	ck_assert(!tp_journal_in_transaction(j));
	sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(other);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	tp_journal_close(j);
}
END_TEST

START_TEST(not_a_journal_and_newer_schema_refused)
{
	struct tp_journal_opts o = { path, TP_JOURNAL_SYNC_FULL, 100 };
	struct tp_journal *j = NULL;
	char err[256];
	sqlite3 *db;
	FILE *f;
	int rc;

	/* Make the directories, then put garbage where the journal goes. */
	tp_journal_close(open_j(TP_JOURNAL_SYNC_FULL));
	unlink(path);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < 1000; i++)
		fputs("this is not a database ", f);
	fclose(f);
	rc = tp_journal_open(&o, &j, err, sizeof(err));
	ck_assert_int_eq(rc, TP_JOURNAL_ERR_CORRUPT);
	ck_assert_ptr_null(j);
	ck_assert_msg(strstr(err, path) != NULL, "%s", err);
	ck_assert(!tp_journal_is_transient(rc));

	unlink(path);
	ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
	    " applied_ms INTEGER NOT NULL); INSERT INTO schema_version VALUES (99, 0);", NULL, NULL,
	    NULL), SQLITE_OK);
	sqlite3_close(db);
	rc = tp_journal_open(&o, &j, err, sizeof(err));
	ck_assert_int_eq(rc, TP_JOURNAL_ERR_SCHEMA);
	ck_assert_msg(strstr(err, "99") != NULL, "%s", err);
}
END_TEST

START_TEST(second_writer_refused)
{
	struct tp_journal *j = open_j(TP_JOURNAL_SYNC_FULL);
	struct tp_journal_opts o = { path, TP_JOURNAL_SYNC_FULL, 100 };
	struct tp_journal *j2 = NULL;
	char err[256];
	struct stat st;
	char lock[160];

	ck_assert_int_eq(tp_journal_open(&o, &j2, err, sizeof(err)), TP_JOURNAL_ERR_BUSY);
	ck_assert_ptr_null(j2);
	ck_assert_msg(strstr(err, "in use by another process") != NULL, "%s", err);
	snprintf(lock, sizeof(lock), "%s.lock", path);
	ck_assert_int_eq(stat(lock, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	tp_journal_close(j);
	ck_assert_int_eq(tp_journal_open(&o, &j2, err, sizeof(err)), TP_JOURNAL_OK);
	tp_journal_close(j2);
}
END_TEST

START_TEST(uncreatable_directory)
{
	struct tp_journal_opts o = { NULL, TP_JOURNAL_SYNC_FULL, 100 };
	struct tp_journal *j = NULL;
	char blocker[128], p[192], err[256];
	FILE *f;

	/* A file where a directory should be. */
	snprintf(blocker, sizeof(blocker), "%s/blocker", dir);
	f = fopen(blocker, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	snprintf(p, sizeof(p), "%s/sub/journal.db", blocker);
	o.path = p;
	ck_assert_int_eq(tp_journal_open(&o, &j, err, sizeof(err)), TP_JOURNAL_ERR_OPEN);
	ck_assert_msg(strstr(err, "cannot create directory") != NULL, "%s", err);
	o.path = "";
	ck_assert_int_eq(tp_journal_open(&o, &j, err, sizeof(err)), TP_JOURNAL_ERR_OPEN);
	ck_assert_str_eq(tp_journal_strerror(TP_JOURNAL_ERR_FULL), "disk full");
	ck_assert_str_eq(tp_journal_strerror(12345), "SQLite error");
}
END_TEST

/* ---- sync per transaction ------------------------------------------------------------------- */

/* The syncs of commits of each kind, through the counting VFS. */
struct sync_counts {
	int inflight;      /* in-flight put and delete, outbox touch, probe */
	int result;        /* an in-flight put and an outbox put */
	int result_wal;    /* of which on the WAL */
	int after;         /* an outbox delete and an in-flight delete, after the result */
	int rolled_back;   /* an outbox put rolled back, then an in-flight commit */
	bool result_covered; /* the WAL sync came after the last WAL write of the result's commit */
	int wal_writes;    /* WAL writes of the in-flight commit (it did write) */
};

static struct sync_counts
measure_syncs(enum tp_journal_sync sync)
{
	struct tp_journal *j;
	struct tp_journal_inflight a = task("tok-a", 1, 1), b = task("tok-b", 1, 2),
	    c = task("tok-c", 1, 3);
	uint8_t req[64];
	struct tp_journal_outbox o1 = report("tok-o1", req, sizeof(req)),
	    o2 = report("tok-o2", req, sizeof(req)), o3 = report("tok-o3", req, sizeof(req));
	struct sync_counts n;
	int64_t nin, nout;

	memset(&n, 0, sizeof(n));
	for (size_t i = 0; i < sizeof(req); i++)
		req[i] = (uint8_t)(i * 7);
	count_vfs_install();
	j = open_j(sync);
	/* Warm up: the first commit into a new WAL writes and syncs its header, at any level. */
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &a), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o1), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);

	counters_zero();
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &b), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_del(j, a.token, a.token_len), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_touch(j, o1.token, o1.token_len, 2, 5000), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_probe(j, 1234), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	n.inflight = syncs();
	n.wal_writes = n_write[F_WAL];

	counters_zero();
	wal_writes_at_sync = -1;
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &c), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o2), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	n.result = syncs();
	n.result_wal = n_sync[F_WAL];
	n.result_covered = n_write[F_WAL] > 0 && wal_writes_at_sync == n_write[F_WAL];

	counters_zero();
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_del(j, o1.token, o1.token_len), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_del(j, b.token, b.token_len), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	n.after = syncs();

	/* A result rolled back does not make the next transaction sync. */
	counters_zero();
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o3), TP_JOURNAL_OK);
	tp_journal_rollback(j);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_inflight_put(j, &b), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	n.rolled_back = syncs();

	ck_assert_int_eq(tp_journal_count(j, &nin, &nout), TP_JOURNAL_OK);
	ck_assert_int_eq(nin, 2);     /* tok-b, tok-c */
	ck_assert_int_eq(nout, 1);    /* tok-o2 */
	assert_integrity(j);
	tp_journal_close(j);
	count_vfs_remove();
	return n;
}

/* FULL: a transaction of in-flight rows (and outbox bookkeeping, the probe) commits without a sync;
 * one that puts a result syncs the WAL after its last write; the next goes back to none. */
START_TEST(sync_full_only_for_results)
{
	struct sync_counts n = measure_syncs(TP_JOURNAL_SYNC_FULL);

	ck_assert_int_gt(n.wal_writes, 0);
	ck_assert_int_eq(n.inflight, 0);
	ck_assert_int_ge(n.result, 1);
	ck_assert_int_ge(n.result_wal, 1);
	ck_assert_msg(n.result_covered, "the WAL sync did not follow the commit's last write");
	ck_assert_int_eq(n.after, 0);
	ck_assert_int_eq(n.rolled_back, 0);
}
END_TEST

/* NORMAL and OFF: no commit syncs, results included (what was configured). */
START_TEST(sync_normal_and_off_never_at_commit)
{
	struct sync_counts n = measure_syncs(TP_JOURNAL_SYNC_NORMAL);

	ck_assert_int_gt(n.wal_writes, 0);
	ck_assert_int_eq(n.inflight + n.result + n.after + n.rolled_back, 0);
	teardown();
	setup();
	n = measure_syncs(TP_JOURNAL_SYNC_OFF);
	ck_assert_int_gt(n.wal_writes, 0);
	ck_assert_int_eq(n.inflight + n.result + n.after + n.rolled_back, 0);
}
END_TEST

/* The WAL cannot be synced after a result's COMMIT: a transient error, no transaction left open,
 * and writing the same rows again succeeds (the row was committed, so it is not duplicated). */
START_TEST(result_sync_failure_is_transient)
{
	struct tp_journal *j;
	uint8_t *req = pattern(100);
	struct tp_journal_outbox o = report("tok-o", req, 100);
	int64_t nin, nout;
	int rc;

	count_vfs_install();
	j = open_j(TP_JOURNAL_SYNC_FULL);
	fail_syncs = 1;
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o), TP_JOURNAL_OK);
	rc = tp_journal_commit(j);
	ck_assert_int_eq(rc, TP_JOURNAL_ERR_IO);
	ck_assert(tp_journal_is_transient(rc));
	ck_assert_msg(strstr(tp_journal_errmsg(j), "sync") != NULL, "%s", tp_journal_errmsg(j));
	ck_assert(!tp_journal_in_transaction(j));
	tp_journal_rollback(j);
	ck_assert_int_eq(fail_syncs, 0);
	ck_assert_int_eq(tp_journal_begin(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_outbox_put(j, &o), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_commit(j), TP_JOURNAL_OK);
	ck_assert_int_eq(tp_journal_count(j, &nin, &nout), TP_JOURNAL_OK);
	ck_assert_int_eq(nout, 1);
	assert_integrity(j);
	tp_journal_close(j);
	count_vfs_remove();
	free(req);
}
END_TEST

/* Why the level is not raised for one COMMIT: SQLite refuses the pragma inside a transaction. */
START_TEST(sqlite_refuses_sync_change_in_transaction)
{
	sqlite3 *db;
	char *err = NULL;

	tp_journal_close(open_j(TP_JOURNAL_SYNC_FULL));
	ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA synchronous=FULL", NULL, NULL, &err), SQLITE_ERROR);
	ck_assert_ptr_nonnull(err);
	ck_assert_msg(strstr(err, "inside a transaction") != NULL, "%s", err);
	sqlite3_free(err);
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(db);
}
END_TEST

static Suite *
journal_suite(void)
{
	Suite *s = suite_create("journal");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, open_creates_private_files_wal_and_schema);
	tcase_add_test(tc, existing_file_narrowed_to_0600);
	tcase_add_test(tc, rows_survive_reopen_and_list_in_order);
	tcase_add_test(tc, rollback_discards_and_misuse_is_reported);
	tcase_add_test(tc, recovery_listing_after_writer_crash);
	tcase_add_test(tc, injected_commit_failure_then_recovery);
	tcase_add_test(tc, real_write_failure_file_size_limit);
	tcase_add_test(tc, busy_is_transient);
	tcase_add_test(tc, not_a_journal_and_newer_schema_refused);
	tcase_add_test(tc, second_writer_refused);
	tcase_add_test(tc, uncreatable_directory);
	tcase_add_test(tc, sync_full_only_for_results);
	tcase_add_test(tc, sync_normal_and_off_never_at_commit);
	tcase_add_test(tc, result_sync_failure_is_transient);
	tcase_add_test(tc, sqlite_refuses_sync_change_in_transaction);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(journal_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
