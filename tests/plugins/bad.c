/* Plugins the loader must refuse, one per macro:
 *   BAD_ABI        a descriptor for ABI version 999
 *   BAD_SIGNATURE  the right ABI version but another build signature
 *   NO_SYMBOL      no tprefork_plugin symbol at all
 *   NO_TABLE       a descriptor without a table of activities
 *   CRASH_ON_LOAD  a constructor that crashes (SIGSEGV) when the file is loaded
 *   HANG_ON_LOAD   a constructor that never returns */
#include <signal.h>
#include <stddef.h>
#include <unistd.h>

#include <tprefork/activity.h>

static void
nothing(tp_activity_handle *h)
{
	(void)h;
}

static const struct tp_plugin_activity table[] __attribute__((unused)) = {
	{ "nothing", nothing },
	{ NULL, NULL }
};

#if defined(BAD_ABI)
extern __attribute__((visibility("default"))) const struct tp_plugin tprefork_plugin;
__attribute__((visibility("default"))) const struct tp_plugin tprefork_plugin = {
	999, sizeof(struct tp_plugin), TP_ACTIVITY_SIGNATURE, "bad_abi", "1", table, { 0 }
};
#elif defined(BAD_SIGNATURE)
extern __attribute__((visibility("default"))) const struct tp_plugin tprefork_plugin;
__attribute__((visibility("default"))) const struct tp_plugin tprefork_plugin = {
	TP_ACTIVITY_ABI_VERSION, sizeof(struct tp_plugin), "tprefork-activity/1 ptr=4 size_t=4 long=4 le",
	"bad_signature", "1", table, { 0 }
};
#elif defined(NO_SYMBOL)
extern __attribute__((visibility("default"))) const struct tp_plugin_activity *not_the_descriptor;
__attribute__((visibility("default"))) const struct tp_plugin_activity *not_the_descriptor = table;
#elif defined(NO_TABLE)
extern __attribute__((visibility("default"))) const struct tp_plugin tprefork_plugin;
__attribute__((visibility("default"))) const struct tp_plugin tprefork_plugin = {
	TP_ACTIVITY_ABI_VERSION, sizeof(struct tp_plugin), TP_ACTIVITY_SIGNATURE, "no_table", "1", NULL,
	{ 0 }
};
#elif defined(CRASH_ON_LOAD) || defined(HANG_ON_LOAD)
TP_PLUGIN_DEFINE("on_load", "1", table);

static void __attribute__((constructor))
on_load(void)
{
#if defined(CRASH_ON_LOAD)
	raise(SIGSEGV);
#else
	for (;;)
		pause();
#endif
}
#endif
