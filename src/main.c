/* tprefork: options, configuration check, signalling a running master, and hand-off to the master
 * or (after the master's re-exec) to a child's worker loop. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "activity/tp_plugin.h"
#include "channel/tp_channel.h"
#include "core/tp_config.h"
#include "core/tp_log.h"
#include "core/tp_mem.h"
#include "core/tp_util.h"
#include "master/tp_master.h"
#include "master/tp_pidfile.h"
#include "worker/tp_worker.h"

#define DEFAULT_CONFIG TP_SYSCONFDIR "/tprefork/tprefork.conf"
/* How long a child waits for its configuration from the master. */
#define CHILD_CONFIG_TIMEOUT_MS 10000

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: tprefork [-c FILE] [-n N] [-t] [-s stop|quit|reload|reopen] [-p PIDFILE] [-d] [-v]\n"
	    "                [-h] [-V]\n"
	    "  -c FILE    configuration file (default " DEFAULT_CONFIG ")\n"
	    "  -n N       number of worker children (overrides workers.count)\n"
	    "  -t         check the configuration and exit (0: valid, 1: invalid)\n"
	    "  -s SIGNAL  signal the running master: stop (TERM), quit (QUIT), reload (HUP),\n"
	    "             reopen (USR2)\n"
	    "  -p FILE    pid file (overrides pidfile)\n"
	    "  -d         run in the background (daemonize)\n"
	    "  -v         verbose: log at debug level\n"
	    "  -h         this help\n"
	    "  -V         print the version\n");
}

struct options {
	const char *config;
	long        count;     /* -1: from the configuration */
	bool        test;
	bool        verbose;
	bool        daemonize;
	const char *signal;
	const char *pidfile;
	long        child_fd;  /* -X: a child re-executed by the master */
};

static char *
absolute_copy(const char *path)
{
	char cwd[4096];

	if (path[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
		return tp_xstrdup(path);
	return tp_xasprintf("%s/%s", cwd, path);
}

static void
parse_options(int argc, char **argv, struct options *o)
{
	int ch;

	o->config = DEFAULT_CONFIG;
	o->count = -1;
	o->child_fd = -1;
	while ((ch = getopt(argc, argv, "c:n:ts:p:dvhVX:")) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 't': o->test = true; break;
		case 's': o->signal = optarg; break;
		case 'p': o->pidfile = optarg; break;
		case 'd': o->daemonize = true; break;
		case 'v': o->verbose = true; break;
		case 'n':
			if (tp_parse_long(optarg, 1, 1024, &o->count) != 0) {
				fprintf(stderr, "tprefork: -n needs a number from 1 to 1024 (got \"%s\")\n",
				    optarg);
				exit(1);
			}
			break;
		case 'X':
			if (tp_parse_long(optarg, 0, 1024, &o->child_fd) != 0)
				exit(1);
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			printf("tprefork %s\n", PACKAGE_VERSION);
			exit(0);
		default:
			usage(stderr);
			exit(1);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tprefork: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		exit(1);
	}
	/* argv's memory becomes the process title; and a reload (or -d, which changes to /) must
	 * find the same files: keep absolute copies. */
	o->config = absolute_copy(o->config);
	if (o->pidfile)
		o->pidfile = absolute_copy(o->pidfile);
	if (o->signal)
		o->signal = tp_xstrdup(o->signal);
}

static void
print_errors(struct tp_config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		fprintf(stderr, "%s\n", errs->lines[i]);
	tp_config_errors_free(errs);
}

static struct tp_config *
load_config(const struct options *o)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = tp_config_load_file(o->config, true, &errs);

	if (cfg == NULL) {
		print_errors(&errs);
		return NULL;
	}
	if (o->count > 0)
		cfg->count = (int)o->count;
	return cfg;
}

/* Plugins are loaded and checked in a throwaway process: a bad one cannot crash this one. */
static int
check_plugins(const struct tp_config *cfg)
{
	struct tp_config_errors errs = { NULL, 0 };

	if (tp_plugin_check_config(cfg, 0, &errs) == 0)
		return 0;
	print_errors(&errs);
	return -1;
}

/* -s: signal the master named by the pid file. */
static int
send_signal(const struct options *o)
{
	static const struct { const char *name; int sig; } names[] = {
		{ "stop", SIGTERM }, { "quit", SIGQUIT }, { "reload", SIGHUP }, { "reopen", SIGUSR2 } };
	struct tp_config *cfg;
	const char *path = o->pidfile;
	char err[512];
	int sig = 0;
	pid_t pid;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(o->signal, names[i].name) == 0)
			sig = names[i].sig;
	if (sig == 0) {
		fprintf(stderr, "tprefork: -s takes stop, quit, reload or reopen (got \"%s\")\n",
		    o->signal);
		return 1;
	}
	cfg = NULL;
	if (path == NULL) {
		cfg = load_config(o);
		if (cfg == NULL)
			return 1;
		path = cfg->pidfile;
	}
	pid = tp_pidfile_read_running(path, err, sizeof(err));
	if (pid > 0 && kill(pid, sig) != 0)
		snprintf(err, sizeof(err), "kill(%ld): %s", (long)pid, strerror(errno));
	else if (pid > 0)
		err[0] = '\0';
	tp_config_free(cfg);
	if (err[0]) {
		fprintf(stderr, "tprefork: %s\n", err);
		return pid > 0 ? 1 : 3;   /* 3: not running (LSB) */
	}
	return 0;
}

/* Children run as the configured user and group (when the master runs as root). */
static int
drop_privileges(const char *user, const char *group)
{
	struct passwd *pw;
	struct group *gr;
	gid_t gid;

	if (user == NULL || *user == '\0' || geteuid() != 0)
		return 0;
	pw = getpwnam(user);
	if (pw == NULL) {
		tp_log_error("unknown user \"%s\"", user);
		return -1;
	}
	gid = pw->pw_gid;
	if (group && *group) {
		gr = getgrnam(group);
		if (gr == NULL) {
			tp_log_error("unknown group \"%s\"", group);
			return -1;
		}
		gid = gr->gr_gid;
	}
	if (initgroups(pw->pw_name, gid) != 0 || setgid(gid) != 0 || setuid(pw->pw_uid) != 0) {
		tp_log_warn("cannot switch to user %s", user);
		return -1;
	}
	if (setuid(0) == 0) {
		tp_log_error("privileges could be regained after dropping them");
		return -1;
	}
	return 0;
}

/* The open fds of this process, e.g. "0 1 2 3" (what a child inherited across the exec). */
static void
list_fds(char *out, size_t len)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	size_t n = 0;
	int self;

	out[0] = '\0';
	if (d == NULL)
		return;
	self = dirfd(d);
	while ((e = readdir(d)) != NULL && n < len) {
		long v;
		if (tp_parse_long(e->d_name, 0, 1 << 30, &v) != 0 || v == self)
			continue;
		int w = snprintf(out + n, len - n, "%s%ld", n ? " " : "", v);
		if (w < 0)
			break;
		n += (size_t)w;
	}
	closedir(d);
}

/* A child re-executed by the master: read the validated configuration, then run the worker. */
static int
child_main(int fd, bool verbose)
{
	struct tp_config_errors errs;
	struct tp_worker_opts wo;
	struct tp_config *cfg;
	tp_envelope *m;
	char why[256], role[64], fds[256];
	int status;

	list_fds(fds, sizeof(fds));
	m = tp_channel_read_sync(fd, CHILD_CONFIG_TIMEOUT_MS, why, sizeof(why));
	if (m == NULL || m->msg_case != TPREFORK__CHANNEL__V1__ENVELOPE__MSG_CONFIG) {
		fprintf(stderr, "tprefork worker: no configuration from the master: %s\n",
		    m ? "unexpected message" : why);
		return 1;
	}
	snprintf(role, sizeof(role), "worker %d gen %d", m->config->index, m->config->generation);
	cfg = tp_config_load_string(m->config->text, m->config->path, true, &errs);
	if (cfg == NULL) {
		print_errors(&errs);
		tprefork__channel__v1__envelope__free_unpacked(m, NULL);
		return 1;
	}
	cfg->count = m->config->count;
	tp_proctitle_set("tprefork: %s", role);
	if (tp_log_init(role, cfg->log_file, verbose ? TP_LOG_DEBUG
	        : (enum tp_log_level)cfg->log_level) != 0)
		fprintf(stderr, "tprefork %s: cannot open log file %s: %s\n", role, cfg->log_file,
		    strerror(errno));
	tp_log_debug("inherited fds: %s", fds);
	if (drop_privileges(m->config->user, m->config->group) != 0) {
		tprefork__channel__v1__envelope__free_unpacked(m, NULL);
		tp_config_free(cfg);
		return 1;
	}
	memset(&wo, 0, sizeof(wo));
	wo.cfg = cfg;
	wo.index = m->config->index;
	wo.generation = m->config->generation;
	wo.channel_fd = fd;
	tprefork__channel__v1__envelope__free_unpacked(m, NULL);
	/* Loaded here, after the privileges are dropped; the master checked them already, so a
	 * problem now means a file changed since: its activities fail (retryably) until it is fixed. */
	tp_plugin_load_config(cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		tp_log_error("%s", errs.lines[i]);
	tp_config_errors_free(&errs);
	status = tp_worker_run(&wo);
	(void)tp_plugin_unload_all();  /* not while a plugin thread still runs */
	tp_config_free(cfg);
	return status;
}

/* Everything after option parsing; returns the exit status. */
static int
run(const struct options *o)
{
	struct tp_master_opts mo;
	struct tp_config *cfg;

	if (o->child_fd >= 0)
		return child_main((int)o->child_fd, o->verbose);
	if (o->signal)
		return send_signal(o);
	cfg = load_config(o);
	if (cfg == NULL)
		return 1;
	if (check_plugins(cfg) != 0) {
		tp_config_free(cfg);
		return 1;
	}
	if (o->test) {
		printf("%s: configuration ok (%zu activit%s, %d worker%s)\n", o->config,
		    cfg->nactivities, cfg->nactivities == 1 ? "y" : "ies", cfg->count,
		    cfg->count == 1 ? "" : "s");
		tp_config_free(cfg);
		return 0;
	}
	if (tp_log_init("master", cfg->log_file,
	        o->verbose ? TP_LOG_DEBUG : (enum tp_log_level)cfg->log_level) != 0) {
		fprintf(stderr, "tprefork: cannot open log file %s: %s\n", cfg->log_file,
		    strerror(errno));
		tp_config_free(cfg);
		return 1;
	}
	memset(&mo, 0, sizeof(mo));
	mo.cfg = cfg;
	mo.config_path = o->config;
	mo.count_override = o->count;
	mo.daemonize = o->daemonize;
	mo.pidfile = o->pidfile;
	return tp_master_run(&mo);
}

int
main(int argc, char **argv)
{
	struct options o;
	int status;

	tp_proctitle_init(argc, argv);
	memset(&o, 0, sizeof(o));
	parse_options(argc, argv, &o);
	status = run(&o);
	free((char *)o.config);
	free((char *)o.pidfile);
	free((char *)o.signal);
	return status;
}
