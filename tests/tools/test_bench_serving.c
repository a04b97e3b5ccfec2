/* `tandem bench serving` against a real tiny-model cluster (one `both` worker):
 * the JSON report has its keys, its counts add up, every latency is positive with
 * p99 >= p90 >= p50, no request fails, and greedy requests on the random model
 * spend exactly their budgets (the bench sizes max_tokens from its own unit count,
 * so this also checks that it counts units as the server does). A target with no
 * server is an error, not a hang. Speed is never asserted. */
#include "../integration/cluster.h"

#include <math.h>

#define UNIT_BUDGET  4
#define FINAL_BUDGET 8

static double num(json_t *j, const char *key)
{
	json_t *v = json_object_get(j, key);
	cr_assert(json_is_number(v), "key %s missing or not a number", key);
	double x = json_number_value(v);
	cr_assert(isfinite(x), "%s = %g", key, x);
	return x;
}

/* mean, p50, p90, p99 of a latency: positive and ordered. */
static void check_latency(json_t *j, const char *name)
{
	char k[4][64];
	const char *sfx[] = {"mean", "p50", "p90", "p99"};
	for (int i = 0; i < 4; i++) {
		snprintf(k[i], sizeof(k[i]), "%s_%s", name, sfx[i]);
		cr_assert_gt(num(j, k[i]), 0, "%s", k[i]);
	}
	cr_assert_geq(num(j, k[2]), num(j, k[1]), "%s: p90 < p50", name);
	cr_assert_geq(num(j, k[3]), num(j, k[2]), "%s: p99 < p90", name);
}

static void check_request(json_t *r)
{
	cr_assert_str_eq(json_string_value(json_object_get(r, "status")), "OK");
	int units = (int)num(r, "units");
	cr_assert_gt(units, 0);
	cr_assert_gt(num(r, "input_tokens"), 0);
	cr_assert_geq(num(r, "input_tokens"), num(r, "input_tokens_waited"));
	/* the random model never ends a phase itself: every budget is spent */
	cr_assert_eq((int)num(r, "answer_tokens"), FINAL_BUDGET / 4);
	cr_assert_eq((int)num(r, "thought_tokens"),
		     units * UNIT_BUDGET + FINAL_BUDGET - FINAL_BUDGET / 4);
	cr_assert_eq((int)num(r, "restarts"), 0);
	double ttft = num(r, "ttft_ms"), e2el = num(r, "e2el_ms");
	cr_assert(ttft > 0 && e2el > ttft, "ttft %g, e2el %g", ttft, e2el);
	cr_assert_geq(num(r, "final_answer_ms"), num(r, "first_answer_ms"));
	cr_assert_geq(num(r, "itl_ms_p99"), num(r, "itl_ms_p50"));
}

Test(bench_serving, tiny_cluster_json, .timeout = 280)
{
	struct cluster c;
	cl_start(&c, 1, "bench-serving", "5000");
	char cmd[2048], *out;
	snprintf(cmd, sizeof(cmd),
		 "'%s' bench serving --target %s --requests 2 --concurrency 2 --read-rate 400 "
		 "--unit-budget %d --final-budget %d --json",
		 getenv("TANDEM_BIN"), c.addr, UNIT_BUDGET, FINAL_BUDGET);
	int rc = th_capture(cmd, &out);
	cl_stop(&c);
	cr_assert_eq(rc, 0, "%s\n%s", cmd, out);
	json_error_t je;
	json_t *j = json_loads(out, 0, &je);
	cr_assert_not_null(j, "not JSON (%s): %s", je.text, out);
	free(out);

	cr_assert_str_eq(json_string_value(json_object_get(j, "mode")), "serving");
	cr_assert_str_eq(json_string_value(json_object_get(j, "layout")), "colocated");
	cr_assert_str_eq(json_string_value(json_object_get(j, "sampling")), "greedy");
	json_t *w = json_object_get(j, "workers");
	cr_assert_eq(json_array_size(w), 1);
	cr_assert_str_eq(json_string_value(json_object_get(json_array_get(w, 0), "role")), "both");
	cr_assert_eq((int)num(j, "requests"), 2);
	cr_assert_eq((int)num(j, "concurrency"), 2);
	cr_assert_eq((int)num(j, "completed"), 2);
	cr_assert_eq((int)num(j, "errors"), 0);
	cr_assert_eq((int)num(j, "restarts"), 0);
	cr_assert_gt(num(j, "duration_s"), 0);
	cr_assert_gt(num(j, "output_tok_s"), 0);
	cr_assert_gt(num(j, "request_throughput"), 0);
	const char *lat[] = {"ttft_ms",		"itl_ms",	   "itl_all_ms",
			     "first_answer_ms", "final_answer_ms", "e2el_ms"};
	for (size_t i = 0; i < CM_ARRAY_LEN(lat); i++)
		check_latency(j, lat[i]);

	json_t *reqs = json_object_get(j, "per_request");
	cr_assert_eq(json_array_size(reqs), 2);
	double thought = 0, answer = 0, input = 0;
	for (size_t i = 0; i < 2; i++) {
		json_t *r = json_array_get(reqs, i);
		check_request(r);
		thought += num(r, "thought_tokens");
		answer += num(r, "answer_tokens");
		input += num(r, "input_tokens");
	}
	cr_assert_eq(num(j, "total_thought_tokens"), thought);
	cr_assert_eq(num(j, "total_answer_tokens"), answer);
	cr_assert_eq(num(j, "total_output_tokens"), thought + answer);
	cr_assert_eq(num(j, "total_input_tokens"), input);
	/* two requests, the first two of a seeded shuffle: two different workloads */
	cr_assert_str_neq(json_string_value(json_object_get(json_array_get(reqs, 0), "workload")),
			  json_string_value(json_object_get(json_array_get(reqs, 1), "workload")));
	json_decref(j);
}

Test(bench_serving, no_server_is_an_error)
{
	char cmd[1200], *out;
	/* port 1 on loopback: nothing listens there */
	snprintf(cmd, sizeof(cmd),
		 "'%s' bench serving --target 127.0.0.1:1 --requests 1 --start-timeout 1 2>&1",
		 getenv("TANDEM_BIN"));
	cr_assert_eq(th_capture(cmd, &out), 1, "%s", out);
	cr_assert(strstr(out, "127.0.0.1:1") && strstr(out, "UNAVAILABLE"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' bench serving --requests 0 2>&1", getenv("TANDEM_BIN"));
	cr_assert_eq(th_capture(cmd, &out), 1, "%s", out);
	free(out);
}
