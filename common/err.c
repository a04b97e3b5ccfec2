/* Error codes and messages. */
#include "cm.h"

#include <stdlib.h>

const char *cm_err_str(int code)
{
	switch (code) {
	case CM_OK:
		return "success";
#define CM__ERR_CASE(name, c, text) \
	case CM_E##name:            \
		return text;
		CM_ERR_MAP(CM__ERR_CASE)
#undef CM__ERR_CASE
	}
	return "unknown error";
}

int cm_err_set(struct cm_err *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	err->code = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	/* keep the message to one line */
	for (char *p = err->msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	return code;
}

_Noreturn void cm__assert_fail(const char *expr, const char *file, int line)
{
	fprintf(stderr, "tandem: assertion failed: %s (%s:%d)\n", expr, file, line);
	abort();
}
