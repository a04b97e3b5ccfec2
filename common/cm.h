/* common: the pieces every Tandem module shares.
 *
 * - errors: one negative error enum (CM_OK = 0) from an X-macro, cm_err_str(), and
 *   struct cm_err, which carries a code plus one human-readable line to the caller;
 * - logging: levelled, to a settable sink (stderr by default), safe from any thread;
 * - arenas: bump allocators for request- and step-lifetime memory, freed whole;
 * - options: the config table mechanism (cm_opt rows) that drives flag parsing,
 *   environment variables, --help and docs/config.md for every subcommand;
 * - time: a monotonic clock in microseconds.
 *
 * Threads: everything here is reentrant. The log sink and level are set once at
 * start-up, before other threads exist.
 *
 *     struct cm_err err = {0};
 *     if (md_config_load(dir, &cfg, &err) < 0)
 *             CM_LOG_ERROR("%s", err.msg);
 */
#ifndef TANDEM_CM_H
#define TANDEM_CM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- errors ------------------------------------------------------------ */

#define CM_ERR_MAP(X)                                                    \
	X(INVAL, -1, "invalid argument")                                 \
	X(NOMEM, -2, "out of memory")                                    \
	X(IO, -3, "input/output error")                                  \
	X(NOENT, -4, "no such file or entry")                            \
	X(CORRUPT, -5, "corrupt or truncated data")                      \
	X(FORMAT, -6, "malformed input")                                 \
	X(UTF8, -7, "invalid UTF-8")                                     \
	X(UNSUPPORTED, -8, "unsupported")                                \
	X(RANGE, -9, "value out of range")                               \
	X(SHAPE, -10, "tensor shape mismatch")                           \
	X(FULL, -11, "capacity exhausted")                               \
	X(TIMEOUT, -12, "timed out")                                     \
	X(PEER, -13, "peer failed or disconnected")                      \
	X(PROTO, -14, "protocol error")                                  \
	X(CANCELLED, -15, "cancelled")                                   \
	X(AGAIN, -16, "try again")                                       \
	X(INTERNAL, -17, "internal error")

enum cm_errno {
	CM_OK = 0,
#define CM__ERR_ENUM(name, code, text) CM_E##name = (code),
	CM_ERR_MAP(CM__ERR_ENUM)
#undef CM__ERR_ENUM
};

/* Returns a static string for an error code (CM_OK included); never NULL. */
const char *cm_err_str(int code);

#define CM_ERR_MSG_MAX 512

/* An error with its one-line explanation, filled by the callee. */
struct cm_err {
	int code;                  /* CM_OK or a negative enum cm_errno */
	char msg[CM_ERR_MSG_MAX];  /* one line, no trailing newline */
};

/* Records code and a printf-style message in err (which may be NULL) and returns
 * code, so a failing path can `return cm_err_set(err, CM_EIO, "...", ...)`. */
int cm_err_set(struct cm_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- logging ----------------------------------------------------------- */

enum cm_log_level {
	CM_LOG_ERROR = 0,
	CM_LOG_WARN,
	CM_LOG_INFO,
	CM_LOG_DEBUG,
	CM_LOG_TRACE,
};

/* A sink receives one formatted line (no trailing newline). */
typedef void (*cm_log_sink_fn)(void *ud, enum cm_log_level level, const char *line);

void cm_log_set_level(enum cm_log_level level);
enum cm_log_level cm_log_get_level(void);
/* Replaces the sink; NULL restores the default (stderr). Call at start-up. */
void cm_log_set_sink(cm_log_sink_fn fn, void *ud);
/* Parses "error", "warn", "info", "debug", "trace"; returns CM_EINVAL otherwise. */
int cm_log_level_parse(const char *s, enum cm_log_level *out);
void cm_log(enum cm_log_level level, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#define CM__LOG(lvl, ...)                                                \
	do {                                                             \
		if ((lvl) <= cm_log_get_level())                         \
			cm_log((lvl), __FILE__, __LINE__, __VA_ARGS__);  \
	} while (0)
#define CM_LOG_ERROR(...) CM__LOG(CM_LOG_ERROR, __VA_ARGS__)
#define CM_LOG_WARN(...) CM__LOG(CM_LOG_WARN, __VA_ARGS__)
#define CM_LOG_INFO(...) CM__LOG(CM_LOG_INFO, __VA_ARGS__)
#define CM_LOG_DEBUG(...) CM__LOG(CM_LOG_DEBUG, __VA_ARGS__)
#define CM_LOG_TRACE(...) CM__LOG(CM_LOG_TRACE, __VA_ARGS__)

/* Programmer errors only: never for bad input from a user, file or peer. */
#define CM_ASSERT(cond)                                                        \
	do {                                                                   \
		if (!(cond))                                                   \
			cm__assert_fail(#cond, __FILE__, __LINE__);            \
	} while (0)
_Noreturn void cm__assert_fail(const char *expr, const char *file, int line);

/* ---- arenas ------------------------------------------------------------ */

/* A chain of blocks; allocations live until cm_arena_reset() or cm_arena_fini(). */
struct cm_arena {
	struct cm_arena_block *head;  /* newest block first */
	size_t block_size;            /* bytes; default size of a new block */
	size_t used;                  /* bytes handed out since the last reset */
};

void cm_arena_init(struct cm_arena *a, size_t block_size);
void cm_arena_fini(struct cm_arena *a);
/* Frees every block but the first and rewinds it, so a steady-state user
 * (one step, one request) allocates nothing after warm-up. */
void cm_arena_reset(struct cm_arena *a);
/* Zeroed memory aligned to align (a power of two, <= 4096); NULL when out of memory. */
void *cm_arena_alloc(struct cm_arena *a, size_t size, size_t align);
char *cm_arena_strndup(struct cm_arena *a, const char *s, size_t n);

/* ---- options (the config table) --------------------------------------- */

enum cm_opt_type {
	CM_OPT_BOOL,    /* flag without a value; "--x=false" also accepted */
	CM_OPT_INT,     /* int64_t */
	CM_OPT_FLOAT,   /* double */
	CM_OPT_STRING,  /* const char * (points into argv, env or the default) */
	CM_OPT_ENUM,    /* const char *, one of choices */
};

/* One configuration option. A program keeps one table of these; each row says
 * which commands accept it (cmds, a bit mask of the program's own choosing). */
struct cm_opt {
	const char *name;     /* flag name without "--" */
	enum cm_opt_type type;
	uint32_t cmds;        /* bit mask of commands that accept the option */
	size_t offset;        /* where the value lives in the program's options struct */
	const char *def;      /* default as text, NULL for none (string/enum: NULL value) */
	double min, max;      /* bounds for INT and FLOAT (inclusive) */
	const char *choices;  /* ENUM: "a|b|c" */
	const char *env;      /* environment variable or NULL */
	const char *meta;     /* value placeholder in --help, e.g. "DIR" */
	const char *help;     /* one sentence */
};

/* Fills out from the rows that accept cmd: defaults, then environment
 * variables, then "--name value" / "--name=value" flags in argv. Positional
 * arguments are moved to the front of argv and counted in *n_pos. Stops at
 * "--" (the rest is positional). Returns CM_OK, or CM_EINVAL with a message
 * naming the flag or variable. "--help" sets *want_help. */
int cm_opts_parse(const struct cm_opt *tab, size_t n, uint32_t cmd, void *out, int argc,
		  char **argv, int *n_pos, bool *want_help, struct cm_err *err);

/* Writes the option list of cmd, one aligned block per option, to f. */
void cm_opts_help(FILE *f, const struct cm_opt *tab, size_t n, uint32_t cmd);

/* Writes a Markdown table of every row (for docs/config.md). */
void cm_opts_markdown(FILE *f, const struct cm_opt *tab, size_t n, const char *const *cmd_names,
		      size_t n_cmds);

/* ---- thread pool ------------------------------------------------------- */

/* A fixed set of worker threads that run one parallel job at a time: the
 * caller is thread 0 and takes part; cm_pool_run returns when every thread
 * has finished. Workers spin briefly between jobs, then sleep, so a decode
 * step pays microseconds, not a futex round trip, to start a job.
 * One thread (the owner) calls cm_pool_run; jobs never nest. */
struct cm_pool;
typedef void (*cm_pool_fn)(void *ctx, int ith, int nth);

/* n_threads >= 1 counts the caller; NULL when threads cannot be created. */
struct cm_pool *cm_pool_new(int n_threads);
void cm_pool_free(struct cm_pool *pool);
int cm_pool_size(const struct cm_pool *pool);
/* Runs fn(ctx, ith, nth) for ith = 0..nth-1 on the pool's threads and waits. */
void cm_pool_run(struct cm_pool *pool, cm_pool_fn fn, void *ctx);
/* Number of online CPUs (>= 1). */
int cm_cpu_count(void);

/* ---- time -------------------------------------------------------------- */

/* Monotonic clock, µs. */
int64_t cm_time_us(void);

/* ---- statistics (benchmarks) ---------------------------------------------- */

/* Sorts v[0..n) ascending. */
void cm_sort_doubles(double *v, size_t n);
/* The median of v[0..n) (n > 0), which it sorts. */
double cm_median(double *v, size_t n);

/* ---- small helpers ----------------------------------------------------- */

#define CM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Reads a whole file into a malloc'd NUL-terminated buffer. */
int cm_file_read(const char *path, char **data, size_t *len, struct cm_err *err);
/* Writes a whole file (created 0644, replaced atomically through path.tmp). */
int cm_file_write(const char *path, const void *data, size_t len, struct cm_err *err);

#endif
