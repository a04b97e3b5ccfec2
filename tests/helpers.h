/* Shared test helpers: scratch folders, generated models, fixture JSON. */
#ifndef TANDEM_TEST_HELPERS_H
#define TANDEM_TEST_HELPERS_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fresh folder under $TANDEM_TEST_TMP named tag-pid. */
static inline void th_tmpdir(char *out, size_t cap, const char *tag)
{
	const char *base = getenv("TANDEM_TEST_TMP");
	cr_assert_not_null(base, "TANDEM_TEST_TMP not set");
	snprintf(out, cap, "%s/%s-%d", base, tag, (int)getpid());
	char *cmd;
	cr_assert_geq(asprintf(&cmd, "rm -rf '%s' && mkdir -p '%s'", out, out), 0);
	cr_assert_eq(system(cmd), 0);
	free(cmd);
}

/* Runs a shell command line; returns its exit status. */
static inline int th_sh(const char *cmd)
{
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Everything left in f, NUL-terminated (malloc'd). */
static inline char *th_read_all(FILE *f)
{
	size_t cap = 1 << 16, n = 0, r;
	char *buf = malloc(cap);
	cr_assert_not_null(buf);
	while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
		n += r;
		if (n + 1 == cap)
			cr_assert_not_null(buf = realloc(buf, cap *= 2));
	}
	buf[n] = 0;
	return buf;
}

/* Runs a shell command line; returns its exit status, its stdout in *out (malloc'd). */
static inline int th_capture(const char *cmd, char **out)
{
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	*out = th_read_all(p);
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Whether the file at path contains needle; false if it cannot be read. */
static inline bool th_file_has(const char *path, const char *needle)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return false;
	char *text = th_read_all(f);
	fclose(f);
	bool yes = strstr(text, needle) != NULL;
	free(text);
	return yes;
}

/* Writes a tandem-rand-v1 model with `tandem gen-model` into a fresh folder. */
static inline void th_gen_model(char *dir, size_t cap, const char *variant, int seed, bool routers)
{
	char tag[64];
	snprintf(tag, sizeof(tag), "model-%s-%d", variant, seed);
	th_tmpdir(dir, cap, tag);
	char *cmd;
	cr_assert_geq(asprintf(&cmd, "'%s' gen-model --variant %s --seed %d %s --out '%s' 2>/dev/null",
			       getenv("TANDEM_BIN"), variant, seed, routers ? "--routers" : "", dir),
		      0);
	cr_assert_eq(th_sh(cmd), 0, "gen-model failed: %s", cmd);
	free(cmd);
}

static inline json_t *th_fixture(const char *name)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", getenv("TANDEM_TEST_DATA"), name);
	json_error_t je;
	json_t *j = json_load_file(path, 0, &je);
	cr_assert_not_null(j, "%s: %s", path, je.text);
	return j;
}

static inline void th_rmdir(const char *dir)
{
	char *cmd;
	if (asprintf(&cmd, "rm -rf '%s'", dir) >= 0) {
		th_sh(cmd);
		free(cmd);
	}
}

#endif
