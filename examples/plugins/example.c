/* example.so: the example activities of tprefork's plugin API (<tprefork/activity.h>).
 *
 *   echo      returns its first argument unchanged (null without one)
 *   progress  [steps, step_ms]: a long activity; sleeps step_ms per step and heartbeats
 *             {"done": N} after each; a retried attempt resumes from the details its previous attempt
 *             recorded last; stops early when cancelled. Result:
 *             {"steps": steps, "resumed_from": N, "attempt": A}
 *   primes    [limit]: counts the primes below limit (CPU-bound, trial division); polls the cancel
 *             flag and heartbeats {"checked": n} as it goes. Result: the count
 *   fail      [message, non_retryable]: fails with an ApplicationFailure of type "ExampleError" and
 *             the details [{"input": <the arguments>}]
 *
 * Configuration:
 *     plugins = ( "/usr/lib/tprefork/example.so" );
 *     activities = (
 *       { type = "PluginEcho";     plugin = "example"; function = "echo"; },
 *       { type = "PluginProgress"; plugin = "example"; function = "progress"; },
 *       { type = "PluginPrimes";   plugin = "example"; function = "primes"; },
 *       { type = "PluginFail";     plugin = "example"; function = "fail"; }
 *     );
 *
 * The arguments arrive as one JSON array (tp_activity_task(h)->input_json); this example parses them
 * with jansson, but any JSON parser (or the raw payloads of tp_activity_input) will do.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>
#include <tprefork/activity.h>

/* The arguments as a JSON array; NULL (with a failure set) when they are not one. */
static json_t *
arguments(tp_activity_handle *h)
{
	const char *in = tp_activity_task(h)->input_json;
	json_t *args = in ? json_loads(in, 0, NULL) : NULL;

	if (!json_is_array(args)) {
		json_decref(args);
		tp_activity_set_failure(h, "BadInput", "the arguments are not JSON", 1, NULL);
		return NULL;
	}
	return args;
}

/* Set a JSON value as the result (and release it). */
static void
set_result_json(tp_activity_handle *h, json_t *v)
{
	char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

	if (text == NULL)
		tp_activity_set_failure(h, "OutOfMemory", "cannot encode the result", 0, NULL);
	else
		tp_activity_set_result(h, text);
	free(text);
	json_decref(v);
}

static void
echo(tp_activity_handle *h)
{
	json_t *args = arguments(h);

	if (args == NULL)
		return;
	set_result_json(h, json_incref(json_array_size(args) > 0 ? json_array_get(args, 0)
	                                                          : json_null()));
	json_decref(args);
}

/* Where the previous attempt got to: {"done": N} from its last heartbeat details, else 0. */
static json_int_t
resume_point(tp_activity_handle *h)
{
	const char *hb = tp_activity_task(h)->heartbeat_details;
	json_t *d = hb ? json_loads(hb, JSON_DECODE_ANY, NULL) : NULL;
	json_int_t done = json_integer_value(json_object_get(d, "done"));

	json_decref(d);
	return done > 0 ? done : 0;
}

static void
progress(tp_activity_handle *h)
{
	json_t *args = arguments(h);
	json_int_t steps, step_ms, from, done;
	char details[64];

	if (args == NULL)
		return;
	steps = json_integer_value(json_array_get(args, 0));
	step_ms = json_integer_value(json_array_get(args, 1));
	json_decref(args);
	from = resume_point(h);
	for (done = from; done < steps; done++) {
		if (tp_activity_sleep(h, step_ms) == TP_ACTIVITY_ECANCELLED)
			return;  /* no outcome after a cancellation: reported as cancelled */
		snprintf(details, sizeof details, "{\"done\":%lld}", (long long)done + 1);
		tp_activity_heartbeat(h, details);
	}
	set_result_json(h, json_pack("{sIsIsi}", "steps", steps, "resumed_from", from,
	    "attempt", (int)tp_activity_task(h)->attempt));
}

static bool
is_prime(uint64_t n)
{
	if (n < 2)
		return false;
	for (uint64_t d = 2; d * d <= n; d++)
		if (n % d == 0)
			return false;
	return true;
}

static void
primes(tp_activity_handle *h)
{
	json_t *args = arguments(h);
	json_int_t limit;
	uint64_t count = 0;
	char details[64];

	if (args == NULL)
		return;
	limit = json_integer_value(json_array_get(args, 0));
	json_decref(args);
	for (json_int_t n = 0; n < limit; n++) {
		if ((n & 0xffff) == 0 && n > 0) {
			if (tp_activity_is_cancelled(h))
				return;
			snprintf(details, sizeof details, "{\"checked\":%lld}", (long long)n);
			tp_activity_heartbeat(h, details);
		}
		count += is_prime((uint64_t)n);
	}
	set_result_json(h, json_integer((json_int_t)count));
}

static void
fail(tp_activity_handle *h)
{
	json_t *args = arguments(h), *details;
	const char *message;
	char *text;

	if (args == NULL)
		return;
	message = json_string_value(json_array_get(args, 0));
	details = json_pack("[{sO}]", "input", args);
	text = json_dumps(details, JSON_COMPACT);
	tp_activity_set_failure(h, "ExampleError", message ? message : "the example failed",
	    json_is_true(json_array_get(args, 1)), text);
	free(text);
	json_decref(details);
	json_decref(args);
}

static const struct tp_plugin_activity activities[] = {
	{ "echo", echo },
	{ "progress", progress },
	{ "primes", primes },
	{ "fail", fail },
	{ NULL, NULL }
};

TP_PLUGIN_DEFINE("example", "1.0", activities);
