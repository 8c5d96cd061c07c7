#include "core/tp_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct {
	char              role[64];
	char             *file;    /* NULL: stderr */
	int               fd;
	enum tp_log_level level;
} lg = { "tprefork", NULL, STDERR_FILENO, TP_LOG_INFO };

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int
tp_log_init(const char *role, const char *file, enum tp_log_level level)
{
	tp_log_set_role(role);
	lg.level = level;
	free(lg.file);
	lg.file = NULL;
	lg.fd = STDERR_FILENO;
	if (file != NULL) {
		lg.file = strdup(file);
		if (lg.file == NULL)
			return -1;
		return tp_log_reopen();
	}
	return 0;
}

void
tp_log_set_role(const char *role)
{
	snprintf(lg.role, sizeof(lg.role), "%s", role ? role : "tprefork");
}

void tp_log_set_level(enum tp_log_level level) { lg.level = level; }
enum tp_log_level tp_log_get_level(void) { return lg.level; }

int
tp_log_reopen(void)
{
	int fd;

	if (lg.file == NULL)
		return 0;
	fd = open(lg.file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd == -1)
		return -1;
	if (lg.fd != STDERR_FILENO)
		close(lg.fd);
	lg.fd = fd;
	return 0;
}

static void
vlog(enum tp_log_level level, int errnum, const char *fmt, va_list ap)
{
	char line[8192];
	struct timeval tv;
	struct tm tm;
	size_t n;
	int r;

	if (level > lg.level)
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	r = snprintf(line + n, sizeof(line) - n, ".%03ldZ tprefork[%ld] %s: %s: ",
	    (long)(tv.tv_usec / 1000), (long)getpid(), level_names[level], lg.role);
	if (r > 0)
		n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
	r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	if (r > 0)
		n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
	if (errnum != 0 && n < sizeof(line) - 1) {
		r = snprintf(line + n, sizeof(line) - n, ": %s", strerror(errnum));
		if (r > 0)
			n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
	}
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line so concurrent processes sharing the fd never interleave within a line. */
	(void)!write(lg.fd, line, n);
}

#define TP_LOG_FN(name, level, with_errno)                     \
	void name(const char *fmt, ...)                        \
	{                                                      \
		int saved = errno;                             \
		va_list ap;                                    \
		va_start(ap, fmt);                             \
		vlog(level, (with_errno) ? saved : 0, fmt, ap); \
		va_end(ap);                                    \
		errno = saved;                                 \
	}

TP_LOG_FN(tp_log_error, TP_LOG_ERROR, 0)
TP_LOG_FN(tp_log_warn, TP_LOG_WARN, 1)
TP_LOG_FN(tp_log_warnx, TP_LOG_WARN, 0)
TP_LOG_FN(tp_log_info, TP_LOG_INFO, 0)
TP_LOG_FN(tp_log_debug, TP_LOG_DEBUG, 0)

void
tp_fatal(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	vlog(TP_LOG_ERROR, saved, fmt, ap);
	va_end(ap);
	exit(1);
}

void
tp_fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(TP_LOG_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(1);
}
