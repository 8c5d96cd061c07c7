/* tprefork: options, configuration check, and hand-off to the worker loop. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "core/tp_config.h"
#include "core/tp_log.h"
#include "core/tp_util.h"
#include "worker/tp_worker.h"

#define DEFAULT_CONFIG TP_SYSCONFDIR "/tprefork/tprefork.conf"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: tprefork [-c FILE] [-n N] [-t] [-v] [-h] [-V]\n"
	    "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
	    "  -n N     number of worker children (overrides workers.count)\n"
	    "  -t       check the configuration and exit (0: valid, 1: invalid)\n"
	    "  -v       verbose: log at debug level\n"
	    "  -h       this help\n"
	    "  -V       print the version\n");
}

struct options {
	const char *config;
	long        count;   /* -1: from the configuration */
	bool        test;
	bool        verbose;
};

static void
parse_options(int argc, char **argv, struct options *o)
{
	int ch;

	o->config = DEFAULT_CONFIG;
	o->count = -1;
	while ((ch = getopt(argc, argv, "c:n:tvhV")) != -1) {
		switch (ch) {
		case 'c':
			o->config = optarg;
			break;
		case 'n':
			if (tp_parse_long(optarg, 1, 1024, &o->count) != 0) {
				fprintf(stderr, "tprefork: -n needs a number from 1 to 1024 (got \"%s\")\n",
				    optarg);
				exit(1);
			}
			break;
		case 't':
			o->test = true;
			break;
		case 'v':
			o->verbose = true;
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
}

static struct tp_config *
load_config(const struct options *o)
{
	struct tp_config_errors errs;
	struct tp_config *cfg = tp_config_load_file(o->config, true, &errs);

	if (cfg == NULL) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.lines[i]);
		tp_config_errors_free(&errs);
		return NULL;
	}
	if (o->count > 0)
		cfg->count = (int)o->count;
	return cfg;
}

int
main(int argc, char **argv)
{
	struct options o;
	struct tp_config *cfg;
	struct tp_worker_opts wo;
	int status;

	memset(&o, 0, sizeof(o));
	parse_options(argc, argv, &o);
	cfg = load_config(&o);
	if (cfg == NULL)
		return 1;
	if (o.test) {
		printf("%s: configuration ok (%zu activit%s, %d worker%s)\n", o.config,
		    cfg->nactivities, cfg->nactivities == 1 ? "y" : "ies", cfg->count,
		    cfg->count == 1 ? "" : "s");
		tp_config_free(cfg);
		return 0;
	}
	if (tp_log_init("worker 0", cfg->log_file,
	        o.verbose ? TP_LOG_DEBUG : (enum tp_log_level)cfg->log_level) != 0) {
		fprintf(stderr, "tprefork: cannot open log file %s: %m\n", cfg->log_file);
		tp_config_free(cfg);
		return 1;
	}
	memset(&wo, 0, sizeof(wo));
	wo.cfg = cfg;
	wo.channel_fd = -1;
	wo.standalone = true;
	status = tp_worker_run(&wo);
	tp_config_free(cfg);
	return status;
}
