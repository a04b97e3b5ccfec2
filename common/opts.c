/* The config table mechanism: one row per option drives flags, environment
 * variables, --help and the Markdown reference. getenv() is called only here. */
#include "cm.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool opt_for(const struct cm_opt *o, uint32_t cmd)
{
	return (o->cmds & cmd) != 0;
}

static bool choice_ok(const char *choices, const char *v)
{
	size_t vl = strlen(v);
	const char *p = choices;
	while (*p) {
		const char *bar = strchr(p, '|');
		size_t l = bar ? (size_t)(bar - p) : strlen(p);
		if (l == vl && memcmp(p, v, l) == 0)
			return true;
		if (!bar)
			break;
		p = bar + 1;
	}
	return false;
}

/* Stores text value v into the row's slot; src names where v came from. */
static int opt_set(const struct cm_opt *o, void *out, const char *v, const char *src,
		   struct cm_err *err)
{
	char *slot = (char *)out + o->offset;
	char *end;
	switch (o->type) {
	case CM_OPT_BOOL:
		if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
			*(bool *)slot = true;
		else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") ||
			 !strcmp(v, "off"))
			*(bool *)slot = false;
		else
			return cm_err_set(err, CM_EINVAL, "%s: '%s' is not a boolean", src, v);
		return CM_OK;
	case CM_OPT_INT: {
		errno = 0;
		long long x = strtoll(v, &end, 0);
		if (errno || end == v || *end)
			return cm_err_set(err, CM_EINVAL, "%s: '%s' is not an integer", src, v);
		if ((double)x < o->min || (double)x > o->max)
			return cm_err_set(err, CM_EINVAL, "%s: %lld is outside [%.17g, %.17g]", src,
					  x, o->min, o->max);
		*(int64_t *)slot = x;
		return CM_OK;
	}
	case CM_OPT_FLOAT: {
		errno = 0;
		double x = strtod(v, &end);
		if (errno || end == v || *end || !isfinite(x))
			return cm_err_set(err, CM_EINVAL, "%s: '%s' is not a number", src, v);
		if (x < o->min || x > o->max)
			return cm_err_set(err, CM_EINVAL, "%s: %g is outside [%g, %g]", src, x,
					  o->min, o->max);
		*(double *)slot = x;
		return CM_OK;
	}
	case CM_OPT_ENUM:
		if (!choice_ok(o->choices, v))
			return cm_err_set(err, CM_EINVAL, "%s: '%s' is not one of %s", src, v,
					  o->choices);
		*(const char **)slot = v;
		return CM_OK;
	case CM_OPT_STRING:
		*(const char **)slot = v;
		return CM_OK;
	}
	return cm_err_set(err, CM_EINTERNAL, "%s: bad option type", src);
}

static const struct cm_opt *opt_find(const struct cm_opt *tab, size_t n, uint32_t cmd,
				     const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (opt_for(&tab[i], cmd) && strlen(tab[i].name) == len &&
		    memcmp(tab[i].name, name, len) == 0)
			return &tab[i];
	return NULL;
}

int cm_opts_parse(const struct cm_opt *tab, size_t n, uint32_t cmd, void *out, int argc,
		  char **argv, int *n_pos, bool *want_help, struct cm_err *err)
{
	char src[160];
	int rc;
	*n_pos = 0;
	*want_help = false;

	for (size_t i = 0; i < n; i++) {
		const struct cm_opt *o = &tab[i];
		if (!opt_for(o, cmd))
			continue;
		if (o->def) {
			snprintf(src, sizeof(src), "default of --%s", o->name);
			if ((rc = opt_set(o, out, o->def, src, err)) < 0)
				return rc;
		}
	}
	for (size_t i = 0; i < n; i++) {
		const struct cm_opt *o = &tab[i];
		const char *v = o->env && opt_for(o, cmd) ? getenv(o->env) : NULL;
		if (v && *v) {
			snprintf(src, sizeof(src), "environment variable %s", o->env);
			if ((rc = opt_set(o, out, v, src, err)) < 0)
				return rc;
		}
	}
	bool only_pos = false;
	for (int i = 0; i < argc; i++) {
		char *a = argv[i];
		if (only_pos || a[0] != '-' || a[1] != '-') {
			if (!only_pos && a[0] == '-' && a[1] != '\0')
				return cm_err_set(err, CM_EINVAL,
						  "unknown flag '%s' (flags are written --name)", a);
			argv[(*n_pos)++] = a;
			continue;
		}
		if (a[2] == '\0') {
			only_pos = true;
			continue;
		}
		const char *name = a + 2;
		const char *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		if (len == 4 && !memcmp(name, "help", 4)) {
			*want_help = true;
			continue;
		}
		const struct cm_opt *o = opt_find(tab, n, cmd, name, len);
		if (!o)
			return cm_err_set(err, CM_EINVAL, "unknown flag '--%.*s' (see --help)",
					  (int)len, name);
		const char *v;
		if (eq) {
			v = eq + 1;
		} else if (o->type == CM_OPT_BOOL) {
			v = "true";
		} else {
			if (i + 1 >= argc)
				return cm_err_set(err, CM_EINVAL, "flag --%s needs a value", o->name);
			v = argv[++i];
		}
		snprintf(src, sizeof(src), "--%s", o->name);
		if ((rc = opt_set(o, out, v, src, err)) < 0)
			return rc;
	}
	return CM_OK;
}

static const char *type_meta(const struct cm_opt *o)
{
	if (o->meta)
		return o->meta;
	switch (o->type) {
	case CM_OPT_INT:
		return "N";
	case CM_OPT_FLOAT:
		return "X";
	case CM_OPT_ENUM:
		return o->choices;
	default:
		return "VALUE";
	}
}

void cm_opts_help(FILE *f, const struct cm_opt *tab, size_t n, uint32_t cmd)
{
	for (size_t i = 0; i < n; i++) {
		const struct cm_opt *o = &tab[i];
		if (!opt_for(o, cmd))
			continue;
		char flag[96];
		if (o->type == CM_OPT_BOOL)
			snprintf(flag, sizeof(flag), "--%s", o->name);
		else
			snprintf(flag, sizeof(flag), "--%s %s", o->name, type_meta(o));
		fprintf(f, "  %-28s %s", flag, o->help);
		if (o->def && o->type != CM_OPT_BOOL)
			fprintf(f, " [default: %s]", o->def);
		if (o->env)
			fprintf(f, " [env: %s]", o->env);
		fputc('\n', f);
	}
}

void cm_opts_markdown(FILE *f, const struct cm_opt *tab, size_t n, const char *const *cmd_names,
		      size_t n_cmds)
{
	static const char *const type_names[] = { "bool", "int", "float", "string", "enum" };
	fprintf(f, "| option | type | default | bounds or choices | environment | commands | "
		   "meaning |\n|---|---|---|---|---|---|---|\n");
	for (size_t i = 0; i < n; i++) {
		const struct cm_opt *o = &tab[i];
		fprintf(f, "| `--%s` | %s | %s | ", o->name, type_names[o->type],
			o->def ? o->def : "");
		if (o->type == CM_OPT_INT || o->type == CM_OPT_FLOAT)
			fprintf(f, "%.17g .. %.17g", o->min, o->max);
		else if (o->type == CM_OPT_ENUM)
			for (const char *p = o->choices; *p; p++)
				fputs(*p == '|' ? ", " : (char[]){ *p, 0 }, f);
		fprintf(f, " | %s | ", o->env ? o->env : "");
		bool first = true;
		for (size_t c = 0; c < n_cmds; c++) {
			if (o->cmds & (1u << c)) {
				fprintf(f, "%s%s", first ? "" : ", ", cmd_names[c]);
				first = false;
			}
		}
		fprintf(f, " | %s |\n", o->help);
	}
}
