/* tp_mem: allocation for daemon code. The x* functions never return NULL: on exhaustion they log
 * and abort the process (OpenBSD/h2o policy); a child that cannot allocate is respawned by its master.
 * Reusable lower layers that must survive allocation failure use plain malloc and return an error. */
#ifndef TP_MEM_H
#define TP_MEM_H

#include <stddef.h>

void *tp_xmalloc(size_t n);
void *tp_xcalloc(size_t nmemb, size_t size);
void *tp_xrealloc(void *p, size_t n);
char *tp_xstrdup(const char *s);
char *tp_xstrndup(const char *s, size_t n);
/* printf into a fresh heap string; never NULL. */
char *tp_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Free *pp and set it to NULL. */
#define TP_FREE(pp) do { free(*(pp)); *(pp) = NULL; } while (0)

#endif
