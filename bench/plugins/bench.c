/* The benchmark's plugin: "noop" does nothing (the activity completes with no result); "sleep" waits
 * for its argument in milliseconds (default 2000), or until the activity is cancelled.
 *
 *     cc -std=c11 -O2 -fPIC -shared -I include -o bench.so bench/plugins/bench.c
 */
#include <stdlib.h>

#include <tprefork/activity.h>

static void
noop(tp_activity_handle *h)
{
	(void)h;
}

static void
sleep_ms(tp_activity_handle *h)
{
	const struct tp_activity_task *t = tp_activity_task(h);
	long ms = 0;

	if (t->input_json && t->input_json[0] == '[')
		ms = strtol(t->input_json + 1, NULL, 10);
	tp_activity_sleep(h, ms > 0 ? ms : 2000);
}

static const struct tp_plugin_activity activities[] = {
	{ "noop", noop },
	{ "sleep", sleep_ms },
	{ NULL, NULL }
};

TP_PLUGIN_DEFINE("bench", "1", activities);
