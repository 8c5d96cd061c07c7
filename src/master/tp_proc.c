#include "master/tp_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/tp_mem.h"
#include "core/tp_util.h"

/* The binary the master runs, resolved once at start (see tp_proc_init). */
static char exe_path[4096];

void
tp_proc_init(void)
{
	ssize_t n = readlink("/proc/self/exe", exe_path, sizeof(exe_path) - 1);
	exe_path[n > 0 ? n : 0] = '\0';
}

#define TP_PROC_CHILD_TIMER_SLACK_NS 50000UL

/* In the forked child: only async-signal-safe calls until execv. */
static void __attribute__((noreturn))
child_exec(int fd, int index, int gen)
{
	char title[64], fdarg[16];
	char *argv[4];

	/* The master's death reaches the child as a drain request. */
	prctl(PR_SET_PDEATHSIG, SIGUSR1);
	/* Not the master's coarse timer slack (inherited across fork and exec): the kernel's default. */
	prctl(PR_SET_TIMERSLACK, TP_PROC_CHILD_TIMER_SLACK_NS);
	if (fd != TP_PROC_CHANNEL_FD) {
		if (dup2(fd, TP_PROC_CHANNEL_FD) == -1)
			_exit(126);
	} else {
		int fl = fcntl(fd, F_GETFD);
		fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
	}
	syscall(SYS_close_range, TP_PROC_CHANNEL_FD + 1, ~0U, 0);
	tp_sig_reset_after_fork(SIGPIPE);
	snprintf(title, sizeof(title), "tprefork: worker %d gen %d", index, gen);
	snprintf(fdarg, sizeof(fdarg), "%d", TP_PROC_CHANNEL_FD);
	argv[0] = title;
	argv[1] = "-X";
	argv[2] = fdarg;
	argv[3] = NULL;
	if (exe_path[0])
		execv(exe_path, argv);
	execv("/proc/self/exe", argv);
	_exit(127);
}

pid_t
tp_proc_spawn(int index, int gen, int *fd, char *err, size_t errlen)
{
	int sv[2];
	pid_t pid;
	sigset_t all, old;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		return -1;
	}
	/* No signal handler of the master may run in the child between fork and exec. */
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	pid = fork();
	if (pid == 0)
		child_exec(sv[1], index, gen);
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (pid == -1) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	close(sv[1]);
	*fd = sv[0];
	return pid;
}

struct tp_task_rec *
tp_task_rec_new(const Tprefork__Channel__V1__TaskStarted *s)
{
	struct tp_task_rec *r = tp_xcalloc(1, sizeof(*r));

	r->token.len = s->task_token.len;
	r->token.data = tp_xmalloc(s->task_token.len ? s->task_token.len : 1);
	memcpy(r->token.data, s->task_token.data, s->task_token.len);
	r->activity_type = tp_xstrdup(s->activity_type);
	r->activity_id = tp_xstrdup(s->activity_id);
	r->workflow_id = tp_xstrdup(s->workflow_id);
	r->attempt = s->attempt;
	r->pgid = s->pgid;
	r->started_ms = s->started_ms;
	return r;
}

void
tp_task_rec_free(struct tp_task_rec *r)
{
	if (r == NULL)
		return;
	free(r->token.data);
	free(r->activity_type);
	free(r->activity_id);
	free(r->workflow_id);
	free(r);
}

bool
tp_child_task_done(struct tp_child *c, const ProtobufCBinaryData *token)
{
	for (struct tp_task_rec **p = &c->tasks; *p; p = &(*p)->next) {
		struct tp_task_rec *r = *p;
		if (r->token.len == token->len && memcmp(r->token.data, token->data, token->len) == 0) {
			*p = r->next;
			tp_task_rec_free(r);
			c->ntasks--;
			return true;
		}
	}
	return false;
}

void
tp_child_kill_activity_groups(const struct tp_child *c)
{
	/* The command's leader is the worker's (unreaped) child, so its group id cannot have been
	 * reused while the worker lived; after the worker's death the group may outlive it. */
	for (const struct tp_task_rec *r = c->tasks; r; r = r->next)
		if (r->pgid > 1)
			kill(-r->pgid, SIGKILL);
}
