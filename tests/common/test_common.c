/* common: errors, logging sink, arenas, whole-file helpers. */
#include "common/cm.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

Test(err, every_code_has_a_distinct_message)
{
	int codes[] = {
#define X(name, code, text) code,
		CM_ERR_MAP(X)
#undef X
	};
	cr_assert_str_eq(cm_err_str(CM_OK), "success");
	for (size_t i = 0; i < CM_ARRAY_LEN(codes); i++) {
		cr_assert(codes[i] < 0);
		for (size_t j = 0; j < i; j++) {
			cr_assert_neq(codes[i], codes[j]);
			cr_assert_str_neq(cm_err_str(codes[i]), cm_err_str(codes[j]));
		}
	}
	cr_assert_str_eq(cm_err_str(12345), "unknown error");
}

Test(err, set_returns_code_and_keeps_one_line)
{
	struct cm_err e = { 0 };
	cr_assert_eq(cm_err_set(&e, CM_ECORRUPT, "file %s\nline two", "x"), CM_ECORRUPT);
	cr_assert_eq(e.code, CM_ECORRUPT);
	cr_assert_str_eq(e.msg, "file x line two");
	cr_assert_eq(cm_err_set(NULL, CM_EIO, "nothing"), CM_EIO);
}

struct captured {
	int n;
	enum cm_log_level level;
	char line[256];
};

static void capture(void *ud, enum cm_log_level level, const char *line)
{
	struct captured *c = ud;
	c->n++;
	c->level = level;
	snprintf(c->line, sizeof(c->line), "%s", line);
}

Test(log, sink_receives_lines_at_or_above_level)
{
	struct captured c = { 0 };
	cm_log_set_sink(capture, &c);
	cm_log_set_level(CM_LOG_INFO);
	CM_LOG_DEBUG("hidden %d", 1);
	cr_assert_eq(c.n, 0);
	CM_LOG_WARN("shown %d", 2);
	cr_assert_eq(c.n, 1);
	cr_assert_eq(c.level, CM_LOG_WARN);
	cr_assert_str_eq(c.line, "shown 2");
	cm_log_set_sink(NULL, NULL);

	enum cm_log_level l;
	cr_assert_eq(cm_log_level_parse("trace", &l), CM_OK);
	cr_assert_eq(l, CM_LOG_TRACE);
	cr_assert_eq(cm_log_level_parse("loud", &l), CM_EINVAL);
}

Test(arena, aligned_zeroed_and_reusable_after_reset)
{
	struct cm_arena a;
	cm_arena_init(&a, 256);
	unsigned char *p = cm_arena_alloc(&a, 10, 1);
	memset(p, 0xff, 10);
	double *d = cm_arena_alloc(&a, 3 * sizeof(double), 64);
	cr_assert_eq((uintptr_t)d % 64, 0);
	cr_assert_eq(d[0], 0.0);
	/* larger than a block: gets its own */
	char *big = cm_arena_alloc(&a, 10000, 16);
	cr_assert_not_null(big);
	cr_assert_eq(big[9999], 0);
	char *s = cm_arena_strndup(&a, "hello world", 5);
	cr_assert_str_eq(s, "hello");
	cm_arena_reset(&a);
	cr_assert_eq(a.used, 0);
	unsigned char *q = cm_arena_alloc(&a, 10, 1);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(q[i], 0);
	cm_arena_fini(&a);
}

Test(file, write_then_read_round_trips_and_missing_is_noent)
{
	const char *dir = getenv("TANDEM_TEST_TMP");
	cr_assert_not_null(dir);
	char cmd[512], path[512];
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", dir);
	cr_assert_eq(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/cm_file_%d.bin", dir, (int)getpid());
	struct cm_err e = { 0 };
	cr_assert_eq(cm_file_write(path, "abc\0def", 7, &e), CM_OK);
	char *data;
	size_t len;
	cr_assert_eq(cm_file_read(path, &data, &len, &e), CM_OK);
	cr_assert_eq(len, 7);
	cr_assert_eq(memcmp(data, "abc\0def", 7), 0);
	cr_assert_eq(data[7], '\0');
	free(data);
	unlink(path);
	cr_assert_eq(cm_file_read(path, &data, &len, &e), CM_ENOENT);
	cr_assert(strstr(e.msg, path) != NULL);
}

Test(time, monotonic)
{
	int64_t a = cm_time_us(), b = cm_time_us();
	cr_assert_geq(b, a);
}

Test(stats, median_of_odd_and_even_counts_sorts_in_place)
{
	double odd[] = {3, -1, 2, 9, 0.5};
	cr_assert_float_eq(cm_median(odd, 5), 2.0, 0);
	for (int i = 1; i < 5; i++)
		cr_assert_leq(odd[i - 1], odd[i]);
	double even[] = {4, 1, 3, 2};
	cr_assert_float_eq(cm_median(even, 4), 2.5, 0);
	double one[] = {7};
	cr_assert_float_eq(cm_median(one, 1), 7.0, 0);
}
