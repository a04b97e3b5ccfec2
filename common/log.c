/* Levelled logging to a settable sink. */
#include "cm.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

static enum cm_log_level log_level = CM_LOG_WARN;
static cm_log_sink_fn log_sink;
static void *log_sink_ud;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = { "error", "warn", "info", "debug", "trace" };

void cm_log_set_level(enum cm_log_level level)
{
	log_level = level;
}

enum cm_log_level cm_log_get_level(void)
{
	return log_level;
}

void cm_log_set_sink(cm_log_sink_fn fn, void *ud)
{
	pthread_mutex_lock(&log_lock);
	log_sink = fn;
	log_sink_ud = ud;
	pthread_mutex_unlock(&log_lock);
}

int cm_log_level_parse(const char *s, enum cm_log_level *out)
{
	for (size_t i = 0; i < CM_ARRAY_LEN(level_names); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum cm_log_level)i;
			return CM_OK;
		}
	}
	return CM_EINVAL;
}

void cm_log(enum cm_log_level level, const char *file, int line, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	pthread_mutex_lock(&log_lock);
	if (log_sink) {
		log_sink(log_sink_ud, level, msg);
	} else {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		const char *base = strrchr(file, '/');
		fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s %s:%d: %s\n", tm.tm_hour, tm.tm_min,
			tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], base ? base + 1 : file,
			line, msg);
	}
	pthread_mutex_unlock(&log_lock);
}
