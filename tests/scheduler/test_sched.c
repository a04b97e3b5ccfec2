/* scheduler: least-outstanding-work placement and the dense cost model. */
#include "scheduler/sched.h"

#include <criterion/criterion.h>

Test(sched, places_on_the_least_loaded_live_worker)
{
	struct sched_worker w[4] = {
		{.live = true, .requests = 3, .outstanding_flops = 3e9},
		{.live = false, .requests = 0, .outstanding_flops = 0},
		{.live = true, .requests = 5, .outstanding_flops = 1e9},
		{.live = true, .requests = 1, .outstanding_flops = 1e9},
	};
	cr_assert_eq(sched_req_place(w, 4), 3, "least work, then fewer requests");
	w[3].live = false;
	cr_assert_eq(sched_req_place(w, 4), 2);
	w[0].live = w[2].live = false;
	cr_assert_eq(sched_req_place(w, 4), -1, "no live worker");
	cr_assert_eq(sched_req_place(w, 0), -1);
}

Test(sched, ties_go_to_the_lowest_index)
{
	struct sched_worker w[3] = {{.live = true}, {.live = true}, {.live = true}};
	cr_assert_eq(sched_req_place(w, 3), 0);
}

Test(sched, cost_counts_every_matmul_weight_twice)
{
	struct md_config cfg = {.hidden = 4,
				.intermediate = 8,
				.n_layer = 2,
				.n_head = 2,
				.n_kv_head = 1,
				.head_dim = 2,
				.vocab = 10};
	/* per layer: q 4x4, k 4x2, v 4x2, o 4x4, mlp 3 x 4x8 = 16+8+8+16+96 = 144 */
	double per_token = 2.0 * (2 * 144 + 10 * 4);
	cr_assert_float_eq(sched_flops_per_token(&cfg), per_token, 1e-9);
	cr_assert_float_eq(sched_req_cost(&cfg, 5, 3), 8 * per_token, 1e-9);
	cr_assert_float_eq(sched_req_cost(&cfg, -5, 0), 0, 1e-9);
}
