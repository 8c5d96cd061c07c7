/* tp_exec: run one activity as an external command, asynchronously on a libevent base.
 *
 * The command is started without a shell (argv), in its own process group, with exactly the
 * environment given, with only fds 0 (stdin: the input bytes), 1 (stdout: the result), 2 (stderr: for
 * the log) and 3 (the record channel: newline-delimited JSON written by the command) open, optional
 * rlimits and working directory. Exit is observed through a pidfd (no global SIGCHLD handling).
 *
 * The done callback runs exactly once, from the event loop, after the command's leader has exited and
 * stdout and fd 3 reached EOF, or after the leader exited and its pipes stayed open for kill_grace
 * (a background grandchild holds them): then the whole process group is SIGKILLed. When done runs, no
 * process of the group is left that tp_exec knows of (the group is SIGKILLed after the leader exits).
 *
 * The leader is reaped only when done is about to run, after the last kill of its group: until then
 * the zombie keeps its pid, and so the pgid, from being reused. The process using tp_exec must
 * therefore not reap children it does not know (no waitpid(-1) / wait(), no SIGCHLD set to SIG_IGN).
 *
 * Lower layer: never logs, never exits; stderr lines and records are handed to callbacks.
 */
#ifndef TP_EXEC_H
#define TP_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

struct event_base;

struct tp_exec_rlimit {
	int           resource;  /* RLIMIT_* */
	unsigned long soft, hard;
};

struct tp_exec_spec {
	char *const   *argv;         /* argv[0] is the path (absolute, or found through PATH in envp) */
	char *const   *envp;         /* the complete environment of the command */
	const char    *cwd;          /* NULL: inherit */
	const uint8_t *input;        /* written to stdin, then stdin is closed (copied by tp_exec_start) */
	size_t         input_len;
	size_t         stdout_cap;   /* 0: 2 MiB; more output sets stdout_overflow and kills the group */
	size_t         stderr_line_max; /* 0: 4096; longer lines are cut and marked */
	int            kill_grace_ms;   /* 0: 5000; SIGTERM -> SIGKILL delay, and the pipe-EOF grace */
	const struct tp_exec_rlimit *rlimits;
	size_t         nrlimits;
};

/* Neither exited nor signaled: the leader's status was taken by a wait() elsewhere in the process. */
struct tp_exec_result {
	bool           exited;          /* leader exited normally: exit_code is valid */
	int            exit_code;
	bool           signaled;        /* leader was killed by a signal: signo is valid */
	int            signo;
	bool           stdout_overflow; /* more than stdout_cap bytes: out is not usable */
	bool           cancelled;       /* tp_exec_cancel was called before the leader exited */
	bool           spawn_failed;    /* exec failed in the child (errno in spawn_errno), exit_code 127 */
	int            spawn_errno;
	const char    *spawn_step;      /* with spawn_failed: "execve", "chdir", "setrlimit", ... (static) */
	const uint8_t *out;             /* stdout bytes (NUL-terminated), valid during the callback */
	size_t         out_len;
	json_t        *error;           /* the last {"error": {...}} record's object, or NULL (borrowed) */
	int64_t        duration_ms;
};

struct tp_exec_callbacks {
	/* {"heartbeat": DETAILS} records: details is borrowed (json_incref to keep it). */
	void (*heartbeat)(void *arg, json_t *details);
	/* One line of stderr (without the newline), possibly cut at stderr_line_max. */
	void (*stderr_line)(void *arg, const char *line, size_t len);
	/* A record on fd 3 that is not valid JSON or not a known record (or an error record whose type,
	 * message or non_retryable has the wrong JSON type, or a line over 2 MiB); at most the first
	 * stderr_line_max bytes of the line are given. Blank lines are skipped. */
	void (*bad_record)(void *arg, const char *line, size_t len);
	/* Exactly once; the tp_exec object is freed after it returns. */
	void (*done)(void *arg, const struct tp_exec_result *res);
	void  *arg;
};

struct tp_exec;

/* Start the command. Returns NULL with err filled when fork/pipe/pidfd fail (exec failure in the
 * child is reported through done with spawn_failed). */
struct tp_exec *tp_exec_start(struct event_base *base, const struct tp_exec_spec *spec,
    const struct tp_exec_callbacks *cb, char *err, size_t errlen);

/* Ask the command to stop: SIGTERM to its process group, SIGKILL after kill_grace_ms.
 * Idempotent; done still runs once. After the leader exited it only sends SIGTERM to what is left
 * of the group (the result is known; cancelled stays false). No-op from within done. */
void tp_exec_cancel(struct tp_exec *x);

/* SIGKILL the process group now (done still runs once; cancelled is not set). */
void tp_exec_kill(struct tp_exec *x);

pid_t tp_exec_pid(const struct tp_exec *x);

#endif
