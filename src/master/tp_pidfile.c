#include "master/tp_pidfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tp_mem.h"

struct tp_pidfile {
	char *path;
	int   fd;       /* holds the lock */
	dev_t dev;
	ino_t ino;
};

static pid_t
read_pid(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	char *end;
	long v;

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	v = strtol(buf, &end, 10);
	return (v > 0 && (*end == '\n' || *end == '\0')) ? (pid_t)v : 0;
}

/* Write a new file next to path, lock it, and rename it into place: readers never see a partial
 * pid, and the lock travels with the file. */
static int
write_locked(struct tp_pidfile *pf, char *err, size_t errlen)
{
	char *tmp = tp_xasprintf("%s.%ld.tmp", pf->path, (long)getpid());
	char line[32];
	struct stat st;
	int fd, n;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1) {
		snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
		free(tmp);
		return -1;
	}
	n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	if (flock(fd, LOCK_EX | LOCK_NB) != 0 || write(fd, line, (size_t)n) != n ||
	    fstat(fd, &st) != 0 || rename(tmp, pf->path) != 0) {
		snprintf(err, errlen, "cannot write %s: %s", pf->path, strerror(errno));
		close(fd);
		unlink(tmp);
		free(tmp);
		return -1;
	}
	free(tmp);
	pf->fd = fd;
	pf->dev = st.st_dev;
	pf->ino = st.st_ino;
	return 0;
}

struct tp_pidfile *
tp_pidfile_create(const char *path, pid_t *running_pid, char *err, size_t errlen)
{
	struct tp_pidfile *pf;
	struct stat fst, pst;
	int fd;

	*running_pid = 0;
	for (;;) {
		fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (fd == -1) {
			snprintf(err, errlen, "cannot open pid file %s: %s", path, strerror(errno));
			return NULL;
		}
		/* Whoever holds this lock is a live master (a dead one's lock is gone with it). */
		if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
			*running_pid = read_pid(fd);
			snprintf(err, errlen, "another tprefork is running (pid %ld, pid file %s)",
			    (long)*running_pid, path);
			close(fd);
			return NULL;
		}
		/* A master that started at the same moment may have renamed its file over this one
		 * after we opened it: then our lock is on a dead inode; look again. */
		if (fstat(fd, &fst) == 0 && stat(path, &pst) == 0 && fst.st_ino == pst.st_ino &&
		    fst.st_dev == pst.st_dev)
			break;
		close(fd);
	}
	pf = tp_xcalloc(1, sizeof(*pf));
	pf->path = tp_xstrdup(path);
	if (write_locked(pf, err, errlen) != 0) {
		close(fd);
		free(pf->path);
		free(pf);
		return NULL;
	}
	/* The old inode (stale or just created) is replaced; its lock is dropped with it. */
	close(fd);
	return pf;
}

void
tp_pidfile_remove(struct tp_pidfile *pf)
{
	struct stat st;

	if (pf == NULL)
		return;
	if (stat(pf->path, &st) == 0 && st.st_dev == pf->dev && st.st_ino == pf->ino)
		unlink(pf->path);
	tp_pidfile_close(pf);
}

void
tp_pidfile_close(struct tp_pidfile *pf)
{
	if (pf == NULL)
		return;
	close(pf->fd);
	free(pf->path);
	free(pf);
}

pid_t
tp_pidfile_read_running(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	pid_t pid;

	if (fd == -1) {
		snprintf(err, errlen, "cannot open pid file %s: %s (is tprefork running?)", path,
		    strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
		snprintf(err, errlen, "pid file %s is stale: no tprefork holds it", path);
		close(fd);
		return -1;
	}
	pid = read_pid(fd);
	close(fd);
	if (pid <= 0) {
		snprintf(err, errlen, "pid file %s does not hold a pid", path);
		return -1;
	}
	return pid;
}
