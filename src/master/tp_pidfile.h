/* tp_pidfile: the master's pid file, locked for the master's lifetime (flock), written
 * atomically (a locked temporary file renamed into place). A file whose lock nobody holds is stale
 * and is replaced; a locked one means another master runs and this one refuses to start.
 * Lower layer: returns codes and messages, never logs. */
#ifndef TP_PIDFILE_H
#define TP_PIDFILE_H

#include <stddef.h>
#include <sys/types.h>

struct tp_pidfile;

/* Create and lock path for the current process. Returns NULL with err filled; *running_pid is set
 * when another live master holds it (else 0). */
struct tp_pidfile *tp_pidfile_create(const char *path, pid_t *running_pid, char *err,
    size_t errlen);
/* Remove the file (if it is still ours) and release the lock. NULL is accepted. */
void tp_pidfile_remove(struct tp_pidfile *pf);
/* Forget the file without removing it (a forked process that must not touch it). */
void tp_pidfile_close(struct tp_pidfile *pf);

/* The pid of the master holding path's lock, or -1 with err filled (no file, stale, unreadable). */
pid_t tp_pidfile_read_running(const char *path, char *err, size_t errlen);

#endif
