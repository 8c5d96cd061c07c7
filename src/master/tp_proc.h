/* tp_proc: the master's process table entries and the spawning of a child.
 *
 * A child is forked and at once re-executes the tprefork binary (/proc/self/exe, as OpenBSD's smtpd
 * does), so nothing the master created (event base, TLS, SQLite, sockets) crosses into it. Only
 * fds 0, 1, 2 and the channel (fd 3) survive the exec; the child receives its validated
 * configuration over the channel. */
#ifndef TP_PROC_H
#define TP_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "tprefork/channel/v1/channel.pb-c.h"

/* The fd number of the channel in a child. */
#define TP_PROC_CHANNEL_FD 3

/* One task a child holds, as the master knows it (from TaskStarted). */
struct tp_task_rec {
	struct tp_task_rec  *next;
	ProtobufCBinaryData  token;          /* owned */
	char                *activity_type;
	char                *activity_id;
	char                *workflow_id;
	int                  attempt;
	int                  pgid;           /* the command's process group, 0: none */
	int64_t              started_ms;
};

enum tp_child_state {
	TP_CHILD_STARTING = 1,   /* spawned, not ready yet */
	TP_CHILD_READY,          /* polling */
	TP_CHILD_DRAINING        /* told to drain (SIGUSR1) */
};

struct tp_child {
	struct tp_child     *next, *prev;
	pid_t                pid;
	int                  index;
	int                  generation;
	enum tp_child_state  state;
	struct tp_channel   *ch;
	void                *ref;           /* the channel callbacks' argument (owned) */
	int64_t              started_ms;     /* monotonic */
	int64_t              last_seen_ms;   /* monotonic; any message */
	int                  usr1_sent;      /* 1: draining, 2: cancelling */
	bool                 killed;         /* SIGKILLed by the master */
	bool                 recycle;        /* drained to be replaced (reload, scale down) */
	struct tp_task_rec  *tasks;
	int                  ntasks;
	Tprefork__Channel__V1__Stats stats;  /* the last counters received */
};

/* Resolve the path of the running binary. Children execute that path (so a tool that wraps the
 * process, such as valgrind, follows them), and /proc/self/exe when it is gone (a deleted or
 * replaced file shows as "path (deleted)"). Call once at start. */
void tp_proc_init(void);

/* Fork and re-exec a child for slot index of generation gen. Returns the pid and the master's end
 * of the channel in *fd, or -1 with err filled. */
pid_t tp_proc_spawn(int index, int gen, int *fd, char *err, size_t errlen);

struct tp_task_rec *tp_task_rec_new(const Tprefork__Channel__V1__TaskStarted *s);
void tp_task_rec_free(struct tp_task_rec *r);
/* Remove and free the record of token from c; false if unknown. */
bool tp_child_task_done(struct tp_child *c, const ProtobufCBinaryData *token);
/* SIGKILL the process groups of the child's running commands. */
void tp_child_kill_activity_groups(const struct tp_child *c);

#endif
