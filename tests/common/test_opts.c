/* The config table: defaults, environment, flags, bounds, --help. */
#include "common/cm.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

struct o {
	int64_t n;
	double x;
	const char *s;
	const char *e;
	bool b;
};

enum { A = 1, B = 2 };

static const struct cm_opt tab[] = {
	{ "num", CM_OPT_INT, A | B, offsetof(struct o, n), "4", 1, 8, NULL, "TEST_OPTS_NUM", "N", "A number." },
	{ "ratio", CM_OPT_FLOAT, A, offsetof(struct o, x), "0.5", 0, 1, NULL, NULL, NULL, "A ratio." },
	{ "name", CM_OPT_STRING, A, offsetof(struct o, s), NULL, 0, 0, NULL, NULL, "S", "A name." },
	{ "mode", CM_OPT_ENUM, B, offsetof(struct o, e), "fast", 0, 0, "fast|slow", NULL, NULL, "A mode." },
	{ "flag", CM_OPT_BOOL, A, offsetof(struct o, b), "false", 0, 0, NULL, NULL, NULL, "A flag." },
};

static int parse(uint32_t cmd, struct o *out, int argc, char **argv, int *n_pos,
		 struct cm_err *err)
{
	bool help;
	memset(out, 0, sizeof(*out));
	return cm_opts_parse(tab, CM_ARRAY_LEN(tab), cmd, out, argc, argv, n_pos, &help, err);
}

Test(opts, defaults_env_then_flags)
{
	struct o o;
	struct cm_err e = { 0 };
	int n_pos;
	unsetenv("TEST_OPTS_NUM");
	char *a0[] = { "pos1" };
	cr_assert_eq(parse(A, &o, 1, a0, &n_pos, &e), CM_OK);
	cr_assert_eq(o.n, 4);
	cr_assert_float_eq(o.x, 0.5, 1e-12);
	cr_assert_null(o.s);
	cr_assert_eq(o.b, false);
	cr_assert_eq(n_pos, 1);

	setenv("TEST_OPTS_NUM", "6", 1);
	cr_assert_eq(parse(A, &o, 0, a0, &n_pos, &e), CM_OK);
	cr_assert_eq(o.n, 6);

	char *a1[] = { "--num", "7", "x", "--ratio=0.25", "--flag", "--name", "bob", "--", "--y" };
	cr_assert_eq(parse(A, &o, 9, a1, &n_pos, &e), CM_OK);
	cr_assert_eq(o.n, 7);
	cr_assert_float_eq(o.x, 0.25, 1e-12);
	cr_assert(o.b);
	cr_assert_str_eq(o.s, "bob");
	cr_assert_eq(n_pos, 2);
	cr_assert_str_eq(a1[0], "x");
	cr_assert_str_eq(a1[1], "--y");
	unsetenv("TEST_OPTS_NUM");
}

Test(opts, errors_name_the_flag_or_variable)
{
	struct o o;
	struct cm_err e = { 0 };
	int n_pos;
	char *a[] = { "--num", "9" };
	cr_assert_eq(parse(A, &o, 2, a, &n_pos, &e), CM_EINVAL);
	cr_assert(strstr(e.msg, "--num") && strstr(e.msg, "outside"), "%s", e.msg);

	char *b[] = { "--mode", "slow" };  /* mode is not an option of command A */
	cr_assert_eq(parse(A, &o, 2, b, &n_pos, &e), CM_EINVAL);
	cr_assert(strstr(e.msg, "unknown flag '--mode'"), "%s", e.msg);

	char *c[] = { "--mode", "medium" };
	cr_assert_eq(parse(B, &o, 2, c, &n_pos, &e), CM_EINVAL);
	cr_assert(strstr(e.msg, "fast|slow"), "%s", e.msg);

	char *d[] = { "--num" };
	cr_assert_eq(parse(B, &o, 1, d, &n_pos, &e), CM_EINVAL);
	cr_assert(strstr(e.msg, "needs a value"), "%s", e.msg);

	char *f[] = { "--ratio", "abc" };
	cr_assert_eq(parse(A, &o, 2, f, &n_pos, &e), CM_EINVAL);

	setenv("TEST_OPTS_NUM", "zero", 1);
	cr_assert_eq(parse(B, &o, 0, d, &n_pos, &e), CM_EINVAL);
	cr_assert(strstr(e.msg, "TEST_OPTS_NUM"), "%s", e.msg);
	unsetenv("TEST_OPTS_NUM");

	char *g[] = { "-x" };
	cr_assert_eq(parse(A, &o, 1, g, &n_pos, &e), CM_EINVAL);
}

Test(opts, help_lists_only_the_commands_options)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	cm_opts_help(f, tab, CM_ARRAY_LEN(tab), B);
	fclose(f);
	cr_assert(strstr(buf, "--num N") && strstr(buf, "TEST_OPTS_NUM"), "%s", buf);
	cr_assert(strstr(buf, "--mode fast|slow") && strstr(buf, "[default: fast]"), "%s", buf);
	cr_assert_null(strstr(buf, "--ratio"));
	free(buf);
}
