/* Checks engine logits against a reference fixture run with the tolerances of
 * the fixtures' README (tests/data): top-20 and ids 0..31 within tol, max logit
 * <= ref top-1 + tol, sum and sumsq, argmax where the margin allows. */
#ifndef TANDEM_FIXTURE_CHECK_H
#define TANDEM_FIXTURE_CHECK_H

#include "../helpers.h"

#include <math.h>

/* logits: [n_positions][vocab] in logit_indices order. Returns the max |diff| seen
 * at the reference ids. */
static inline double fx_check_logits(json_t *run, const float *logits, int vocab, double tol,
				     const char *what)
{
	json_t *pp = json_object_get(run, "per_position");
	size_t k;
	json_t *p;
	double worst = 0;
	json_array_foreach(pp, k, p) {
		const float *row = logits + k * (size_t)vocab;
		json_t *top = json_object_get(p, "top20");
		double ref_top1 = json_real_value(json_array_get(json_array_get(top, 0), 1));
		double margin = json_number_value(json_object_get(p, "margin"));
		size_t i;
		json_t *e;
		json_array_foreach(top, i, e) {
			int id = (int)json_integer_value(json_array_get(e, 0));
			double d = fabs(row[id] - json_number_value(json_array_get(e, 1)));
			worst = fmax(worst, d);
			cr_assert_leq(d, tol, "%s pos %zu id %d: |%g| > %g", what, k, id, d, tol);
		}
		json_t *f32 = json_object_get(p, "first32");
		json_array_foreach(f32, i, e) {
			double d = fabs(row[i] - json_number_value(e));
			worst = fmax(worst, d);
			cr_assert_leq(d, tol, "%s pos %zu id %zu: |%g| > %g", what, k, i, d, tol);
		}
		double sum = 0, sumsq = 0;
		int arg = 0;
		for (int v = 0; v < vocab; v++) {
			sum += row[v];
			sumsq += (double)row[v] * row[v];
			if (row[v] > row[arg])
				arg = v;
		}
		cr_assert_leq(row[arg], ref_top1 + tol, "%s pos %zu: max logit %g > ref %g", what,
			      k, row[arg], ref_top1);
		double rsum = json_number_value(json_object_get(p, "sum"));
		double rsq = json_number_value(json_object_get(p, "sumsq"));
		cr_assert_leq(fabs(sum - rsum), 3 + 0.002 * fabs(rsum), "%s pos %zu: sum %g vs %g",
			      what, k, sum, rsum);
		cr_assert_leq(fabs(sumsq - rsq) / rsq, 0.003, "%s pos %zu: sumsq %g vs %g", what, k,
			      sumsq, rsq);
		int ref_arg = (int)json_integer_value(json_array_get(json_array_get(top, 0), 0));
		if (margin > 0.05) {
			cr_assert_eq(arg, ref_arg, "%s pos %zu: argmax %d vs %d (margin %g)", what, k,
				     arg, ref_arg, margin);
		} else {
			bool ok = false;
			json_array_foreach(top, i, e)
				if (json_integer_value(json_array_get(e, 0)) == arg &&
				    json_number_value(json_array_get(e, 1)) >= ref_top1 - 0.05)
					ok = true;
			cr_assert(ok, "%s pos %zu: argmax %d not a near-top reference id", what, k,
				  arg);
		}
	}
	return worst;
}

/* Greedy ids equal up to the first step whose reference margin is <= 0.05. */
static inline void fx_check_greedy(json_t *run, const int32_t *ids, int n, const char *what)
{
	json_t *g = json_object_get(run, "greedy");
	json_t *gids = json_object_get(g, "ids"), *margins = json_object_get(g, "margins");
	cr_assert_geq(n, (int)json_array_size(gids), "%s: only %d greedy ids", what, n);
	for (size_t i = 0; i < json_array_size(gids); i++) {
		cr_assert_eq(ids[i], json_integer_value(json_array_get(gids, i)),
			     "%s: greedy step %zu: %d vs %lld", what, i, ids[i],
			     (long long)json_integer_value(json_array_get(gids, i)));
		if (json_number_value(json_array_get(margins, i)) <= 0.05)
			break;
	}
}

/* The run's input ids as an array (caller frees). */
static inline int32_t *fx_input_ids(json_t *run, int *n)
{
	json_t *a = json_object_get(run, "input_ids");
	*n = (int)json_array_size(a);
	int32_t *ids = malloc((size_t)*n * sizeof(int32_t));
	for (int i = 0; i < *n; i++)
		ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
	return ids;
}

#endif
