/* tp_log: the daemon's logging (OpenBSD log.h style). Only owning layers log; lower layers return codes.
 *
 * Line format (stable; tests and operators grep it):
 *   2026-11-26T07:30:00.123Z tprefork[1234] info: <role>: message key=value ...
 * Output goes to stderr (journald) or to a file reopened by tp_log_reopen(). Never log a secret. */
#ifndef TP_LOG_H
#define TP_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum tp_log_level { TP_LOG_ERROR = 0, TP_LOG_WARN = 1, TP_LOG_INFO = 2, TP_LOG_DEBUG = 3 };

/* role is a short process label ("master", "worker 2"); file NULL: stderr. Returns 0 or -1 (errno). */
int  tp_log_init(const char *role, const char *file, enum tp_log_level level);
void tp_log_set_role(const char *role);
void tp_log_set_level(enum tp_log_level level);
enum tp_log_level tp_log_get_level(void);
/* Reopen the log file (SIGUSR2); no-op for stderr. Returns 0 or -1 (errno). */
int  tp_log_reopen(void);

void tp_log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tp_log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  /* appends strerror(errno) */
void tp_log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tp_log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tp_log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Log and exit(1); fatal appends strerror(errno). */
void tp_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void tp_fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
