/* scheduler: the cost model against hand-computed figures (algorithms.md §0.2,
 * §6.3), placement under KV limits and on heterogeneous workers, re-placement,
 * exact-cost refinement, the baselines, the metrics and the plan simulator. */
#include "scheduler/sched.h"

#include <criterion/criterion.h>
#include <string.h>

/* d 4, d_ff 8, L 2, n_h 2, n_kv 1, d_h 2, V 10: per token and layer F_q 32,
 * F_kv 32, F_o 32, F_mlp 192 (F_lin 288), F_att(c) 16 c, F_head 80; weights 144
 * per layer and 40 in the head; KV 8 bytes per token and layer at b = 2. */
static const struct md_config tiny = {.hidden = 4,
				      .intermediate = 8,
				      .n_layer = 2,
				      .n_head = 2,
				      .n_kv_head = 1,
				      .head_dim = 2,
				      .vocab = 10};

static struct sched_params params(void)
{
	struct sched_params p = sched_default_params();
	p.batch = 1;
	p.chunk = 4;
	return p;
}

static struct sched_estimate estimate(const struct md_config *cfg, const struct sched_req *r)
{
	struct sched_params p = params();
	struct sched_estimate e;
	struct cm_err err = {0};
	cr_assert_eq(sched_req_estimate(cfg, &p, r, &e, &err), CM_OK, "%s", err.msg);
	return e;
}

#define EQ(a, b) cr_assert_float_eq((a), (b), 1e-9 * (1 + (b)), "%s = %.17g, want %.17g", #a, \
				     (double)(a), (double)(b))

Test(sched_cost, dense_request_matches_the_formulas)
{
	struct sched_req r = {.source = 6, .gen = 3};
	struct sched_estimate e = estimate(&tiny, &r);
	const struct sched_cost *en = &e.phase[SCHED_ENCODE], *de = &e.phase[SCHED_DECODE];
	/* encode: L (S F_lin + F_att(1..S)) = 2 (6 * 288 + 16 * 21) */
	EQ(en->flops, 4128);
	EQ(en->kv_write_bytes, 6 * 8 * 2);
	EQ(en->kv_read_bytes, (4 + 6) * 8 * 2); /* chunks of 4 end at 4 and 6 */
	EQ(en->weight_bytes, 2 * 144 * 2 * 2);	/* 2 steps, 2 layers, 2 bytes */
	EQ(en->kv_hold_bytes, 96);
	EQ(en->link_bytes, 96); /* |u| * 2 * L * n_kv * d_h * b */
	/* decode: L sum_t (F_lin + F_att(S + t + 1)) + T F_head = 2 (864 + 16 * 24) + 240 */
	EQ(de->flops, 2736);
	EQ(de->kv_read_bytes, 24 * 8 * 2);
	EQ(de->kv_write_bytes, 3 * 2 * 8);
	EQ(de->weight_bytes, 3 * (2 * 144 + 40) * 2);
	EQ(de->kv_hold_bytes, 96 + 3 * 16);
	EQ(de->link_bytes, 0);
	const struct sched_cost *bo = &e.phase[SCHED_BOTH];
	EQ(bo->flops, 4128 + 2736);
	EQ(bo->kv_hold_bytes, 144);
	EQ(bo->link_bytes, 0);
	struct sched_params p = params();
	EQ(sched_kv_token_bytes(&tiny, &p), 16);
}

Test(sched_cost, streaming_tokens_see_the_source_read_so_far)
{
	/* T 3, 2 while reading: token 0 sees 3 source keys, token 1 all 6, token 2
	 * too; plus 1, 2, 3 generated keys: 21 keys per layer */
	struct sched_req r = {.source = 6, .gen = 3, .gen_stream = 2};
	EQ(estimate(&tiny, &r).phase[SCHED_DECODE].flops, 2 * (3 * 288 + 16 * 21) + 240);
}

Test(sched_cost, done_tokens_leave_the_estimate)
{
	struct sched_req r = {.source = 6, .gen = 3, .source_done = 2, .gen_done = 1};
	struct sched_estimate e = estimate(&tiny, &r);
	/* source tokens 2..5 see 3..6 keys: 2 (4 * 288 + 16 * 18) */
	EQ(e.phase[SCHED_ENCODE].flops, 2880);
	/* generated 1..2 see 6 + 2 and 6 + 3 keys */
	EQ(e.phase[SCHED_DECODE].flops, 2 * (2 * 288 + 16 * 17) + 2 * 80);
	/* the held KV is the whole request's; the link ships what is left to encode */
	EQ(e.phase[SCHED_DECODE].kv_hold_bytes, 144);
	EQ(e.phase[SCHED_ENCODE].link_bytes, 4 * 2 * 8);
}

Test(sched_cost, skipgpt_rates_skip_q_o_attention_and_mlp_but_not_kv)
{
	double ra[2] = {1, 0.5}, rm[2] = {0.5, 1};
	struct sched_req r = {.source = 6, .gen = 3, .rho_attn = ra, .rho_mlp = rm};
	struct sched_estimate e = estimate(&tiny, &r);
	/* layer 0: 6 (32 + 64 + 96) + 336; layer 1: 6 (32 + 32 + 192) + 168 */
	EQ(e.phase[SCHED_ENCODE].flops, 1488 + 1704);
	EQ(e.phase[SCHED_ENCODE].kv_write_bytes, 96);
	/* attention reads half the keys in layer 1 */
	EQ(e.phase[SCHED_ENCODE].kv_read_bytes, 10 * 8 + 10 * 8 * 0.5);

	/* routers (d / 4 hidden): 2 routers * 2 * (4 * 1 + 1 * 2) = 24 per token and layer */
	struct md_config c = tiny;
	c.has_routers = true;
	c.router_hidden = 1;
	struct sched_req dense = {.source = 6, .gen = 3};
	EQ(estimate(&c, &dense).phase[SCHED_ENCODE].flops, 4128 + 2 * 6 * 24);
}

Test(sched_cost, skipgpt_example_of_algorithms_md)
{
	/* LLaMA-2-7B, one layer, one token at c = 2048: dense 438.4 M; with MLP
	 * routers and rho 0.75, about 362 M (algorithms.md §6.3) */
	struct md_config c = {.hidden = 4096,
			      .intermediate = 11008,
			      .n_layer = 1,
			      .n_head = 32,
			      .n_kv_head = 32,
			      .head_dim = 128,
			      .vocab = 32000};
	double head = 2.0 * 4096 * 32000, rho = 0.75;
	struct sched_req r = {.source = 2047, .gen = 1};
	double dense = estimate(&c, &r).phase[SCHED_DECODE].flops - head;
	cr_assert_float_eq(dense / 1e6, 438.4, 0.1, "dense %.1f M", dense / 1e6);
	c.has_routers = true;
	c.router_hidden = 1024;
	r.rho_attn = r.rho_mlp = &rho;
	double skip = estimate(&c, &r).phase[SCHED_DECODE].flops - head;
	cr_assert_float_eq(skip / 1e6, 362.0, 0.5, "skipgpt %.1f M", skip / 1e6);
}

Test(sched_cost, vision_keep_ratio_shortens_the_deep_layers)
{
	/* 4 of 6 source tokens are vision; layer 1 keeps half: n = 6, then 4 */
	double keep[2] = {1, 0.5};
	struct sched_req r = {.source = 6, .vision = 4, .gen = 3, .keep = keep};
	struct sched_estimate e = estimate(&tiny, &r);
	EQ(e.phase[SCHED_ENCODE].flops, 2064 + (4 * 288 + 16 * 10));
	EQ(e.phase[SCHED_ENCODE].kv_hold_bytes, (6 + 4) * 8);
	EQ(e.phase[SCHED_ENCODE].link_bytes, 80); /* the transfer shrinks alike */
	/* decode per token: F_lin + F_att(n_l + generated so far) */
	EQ(e.phase[SCHED_DECODE].flops, (864 + 16 * 24) + (864 + 16 * 18) + 240);
	EQ(e.phase[SCHED_DECODE].kv_hold_bytes, 80 + 48);
}

Test(sched_cost, bad_requests_are_errors)
{
	struct sched_params p = params();
	struct sched_estimate e;
	struct cm_err err = {0};
	double bad = 1.5;
	struct sched_req reqs[] = {
		{.source = -1},
		{.source = 3, .vision = 4},
		{.source = 3, .gen = 2, .gen_done = 3},
		{.source = 3, .rho_attn = (double[]){1, 1.5}},
		{.source = 3, .keep = &bad},
	};
	for (size_t i = 0; i < CM_ARRAY_LEN(reqs); i++) {
		cr_assert_eq(sched_req_estimate(&tiny, &p, &reqs[i], &e, &err), CM_EINVAL, "%zu", i);
		cr_assert(strstr(err.msg, "scheduler:"), "%s", err.msg);
	}
	struct md_config c = tiny;
	c.n_layer = 0;
	cr_assert_eq(sched_req_estimate(&c, &p, &reqs[1], &e, &err), CM_EINVAL);
	p.batch = 0;
	cr_assert_eq(sched_req_estimate(&tiny, &p, &(struct sched_req){.source = 1}, &e, &err),
		     CM_EINVAL);
}

Test(sched_cost, expected_tokens_and_roofline)
{
	cr_assert_eq(sched_gen_tokens(4, 32, 256, 0), 4 * 32 + 256);
	cr_assert_eq(sched_gen_tokens(4, 0, 0, 0), 4 * 64 + 256, "the engine's defaults");
	cr_assert_eq(sched_gen_tokens(4, 32, 256, 100), 100);
	struct sched_cost c = {.flops = 1000, .weight_bytes = 300, .kv_read_bytes = 150,
			       .kv_write_bytes = 50};
	EQ(sched_cost_seconds(&c, &(struct sched_capacity){100, 100, 0}), 10);
	EQ(sched_cost_seconds(&c, &(struct sched_capacity){1000, 10, 0}), 50);
	EQ(sched_cost_seconds(&c, &(struct sched_capacity){0, 100, 0}), 5);
	EQ(sched_cost_seconds(&c, &(struct sched_capacity){0, 0, 0}), 1000);
}

/* ---- placement ----------------------------------------------------------------- */

/* An estimate given directly: FLOPs and KV per side (bytes zero: compute-bound). */
static struct sched_estimate est_of(double fe, double fd, double kv_src, double kv_dec)
{
	struct sched_estimate e = {0};
	e.phase[SCHED_ENCODE] = (struct sched_cost){.flops = fe, .kv_hold_bytes = kv_src};
	e.phase[SCHED_DECODE] = (struct sched_cost){.flops = fd, .kv_hold_bytes = kv_dec};
	e.phase[SCHED_BOTH] = (struct sched_cost){.flops = fe + fd, .kv_hold_bytes = kv_dec};
	return e;
}

static struct sched_worker worker(enum sched_role role, double rate, double kv)
{
	return (struct sched_worker){.live = true, .role = role, .cap = {rate, 0, kv}};
}

Test(sched_place, kv_room_is_required_and_none_is_an_error)
{
	struct sched_worker w[3] = {worker(SCHED_ROLE_BOTH, 4e12, 100),
				    worker(SCHED_ROLE_BOTH, 2e12, 1000),
				    worker(SCHED_ROLE_BOTH, 1e12, 1000)};
	w[1].kv_used = 950;
	struct sched_estimate e = est_of(1e12, 1e12, 80, 200);
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	cr_assert_eq(sched_place(w, 3, &e, &pol, &t, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(t.worker[0], 2, "the fast workers have no room");
	cr_assert_eq(t.worker[1], 2);
	EQ(w[2].kv_used, 200);
	cr_assert_eq(w[2].requests, 1);
	EQ(w[2].load_s, 2.0);

	struct sched_worker before[3];
	memcpy(before, w, sizeof(w));
	struct sched_estimate big = est_of(1, 1, 80, 900);
	struct sched_ticket t2 = {.worker = {7, 7}};
	cr_assert_eq(sched_place(w, 3, &big, &pol, &t2, &err), CM_EFULL);
	cr_assert(strstr(err.msg, "room"), "%s", err.msg);
	cr_assert_eq(memcmp(before, w, sizeof(w)), 0, "workers unchanged on error");
	cr_assert_eq(t2.worker[0], 7, "ticket unchanged on error");
	for (int i = 0; i < 3; i++)
		w[i].live = false;
	cr_assert_eq(sched_place(w, 3, &e, &pol, &t2, &err), CM_EAGAIN);
	cr_assert(strstr(err.msg, "no live"), "%s", err.msg);
	cr_assert_eq(sched_place(w, 0, &e, &pol, &t2, &err), CM_EAGAIN);
}

Test(sched_place, split_side_needs_its_own_kv_room)
{
	/* the decode side holds source + reasoning KV, the encode side the source */
	struct sched_worker w[4] = {worker(SCHED_ROLE_ENCODE, 4e12, 50),
				    worker(SCHED_ROLE_ENCODE, 1e12, 100),
				    worker(SCHED_ROLE_DECODE, 4e12, 150),
				    worker(SCHED_ROLE_DECODE, 1e12, 250)};
	struct sched_estimate e = est_of(1e12, 1e12, 80, 200);
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	cr_assert_eq(sched_place(w, 4, &e, &pol, &t, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(t.worker[SCHED_ENCODE], 1);
	cr_assert_eq(t.worker[SCHED_DECODE], 3);
	EQ(w[1].kv_used, 80);
	EQ(w[3].kv_used, 200);
	cr_assert_eq(sched_place(w, 4, &e, &pol, &t, &err), CM_EFULL);
}

Test(sched_place, split_puts_the_heavier_phase_on_the_faster_worker)
{
	/* an encode worker, a fast `both` worker, a decode worker */
	struct sched_worker w0[3] = {worker(SCHED_ROLE_ENCODE, 1e12, 0),
				     worker(SCHED_ROLE_BOTH, 4e12, 0),
				     worker(SCHED_ROLE_DECODE, 1e12, 0)};
	struct sched_worker w[3];
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	memcpy(w, w0, sizeof(w));
	struct sched_estimate think = est_of(1e12, 100e12, 0, 0); /* long reasoning */
	cr_assert_eq(sched_place(w, 3, &think, &pol, &t, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(t.worker[SCHED_ENCODE], 0);
	cr_assert_eq(t.worker[SCHED_DECODE], 1);
	EQ(w[1].load_s, 25);
	memcpy(w, w0, sizeof(w));
	struct sched_estimate read = est_of(100e12, 1e12, 0, 0); /* long input */
	cr_assert_eq(sched_place(w, 3, &read, &pol, &t, &err), CM_OK);
	cr_assert_eq(t.worker[SCHED_ENCODE], 1);
	cr_assert_eq(t.worker[SCHED_DECODE], 2);
	/* bandwidth counts too: a memory-bound decode goes to the wider memory */
	struct sched_worker m[3] = {worker(SCHED_ROLE_ENCODE, 1e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0)};
	m[1].cap.bandwidth = 1e11;
	m[2].cap.bandwidth = 3e11;
	struct sched_estimate mb = est_of(1e9, 1e9, 0, 0);
	mb.phase[SCHED_DECODE].weight_bytes = 1e12;
	cr_assert_eq(sched_place(m, 3, &mb, &pol, &t, &err), CM_OK);
	cr_assert_eq(t.worker[SCHED_DECODE], 2);
}

Test(sched_place, both_layout_places_whole_and_balances_seconds)
{
	/* capacities 1, 1, 0.5, 2: equal requests go where they finish first (ties:
	 * fewer requests, then the lower index) */
	struct sched_worker w[4] = {worker(SCHED_ROLE_BOTH, 1e12, 0), worker(SCHED_ROLE_BOTH, 1e12, 0),
				    worker(SCHED_ROLE_BOTH, 0.5e12, 0),
				    worker(SCHED_ROLE_BOTH, 2e12, 0)};
	struct sched_estimate e = est_of(0.5e12, 0.5e12, 0, 0);
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	int got[9], want[9] = {3, 0, 1, 3, 3, 2, 0, 1, 3};
	for (int k = 0; k < 9; k++) {
		cr_assert_eq(sched_place(w, 4, &e, &pol, &t, &err), CM_OK);
		cr_assert_eq(t.worker[0], t.worker[1], "whole");
		got[k] = t.worker[0];
	}
	for (int k = 0; k < 9; k++)
		cr_assert_eq(got[k], want[k], "placement %d: %d, want %d", k, got[k], want[k]);
	EQ(w[3].load_s, 2);
	EQ(w[2].load_s, 2);
	EQ(w[0].load_s, 2);
}

Test(sched_place, deterministic_with_ties_to_the_lowest_index)
{
	struct sched_worker a[6], b[6];
	for (int i = 0; i < 6; i++)
		a[i] = worker(i < 2 ? SCHED_ROLE_ENCODE : SCHED_ROLE_DECODE, 1e12, 0);
	memcpy(b, a, sizeof(a));
	struct sched_policy pa = {.kind = SCHED_POLICY_COST}, pb = pa;
	struct sched_ticket t;
	struct cm_err err = {0};
	cr_assert_eq(sched_place(a, 6, &(struct sched_estimate){0}, &pa, &t, &err), CM_OK);
	cr_assert_eq(t.worker[0], 0);
	cr_assert_eq(t.worker[1], 2);
	sched_ticket_finish(a, 6, &t);
	for (int k = 0; k < 200; k++) {
		struct sched_estimate e = est_of(1e9 * (k % 7 + 1), 1e10 * (k % 5 + 1), 0, 0);
		struct sched_ticket ta, tb;
		cr_assert_eq(sched_place(a, 6, &e, &pa, &ta, &err), CM_OK);
		cr_assert_eq(sched_place(b, 6, &e, &pb, &tb, &err), CM_OK);
		cr_assert_eq(memcmp(&ta, &tb, sizeof(ta)), 0);
		if (k % 3 == 0) {
			sched_ticket_finish(a, 6, &ta);
			sched_ticket_finish(b, 6, &tb);
		}
	}
	cr_assert_eq(memcmp(a, b, sizeof(a)), 0);
}

Test(sched_place, baselines_round_robin_and_least_requests)
{
	struct sched_worker w[5] = {worker(SCHED_ROLE_ENCODE, 1e12, 0),
				    worker(SCHED_ROLE_ENCODE, 9e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0),
				    worker(SCHED_ROLE_DECODE, 9e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0)};
	struct sched_estimate e = est_of(1e12, 1e12, 0, 0);
	struct sched_policy rr = {.kind = SCHED_POLICY_ROUND_ROBIN};
	struct sched_ticket t;
	struct cm_err err = {0};
	int enc[6] = {0, 1, 0, 1, 0, 1}, dec[6] = {2, 3, 4, 2, 3, 4};
	for (int k = 0; k < 6; k++) {
		cr_assert_eq(sched_place(w, 5, &e, &rr, &t, &err), CM_OK);
		cr_assert_eq(t.worker[0], enc[k]);
		cr_assert_eq(t.worker[1], dec[k]);
	}
	struct sched_policy lr = {.kind = SCHED_POLICY_LEAST_REQUESTS};
	w[2].requests = 5;
	w[3].requests = 3;
	w[4].requests = 3;
	w[0].requests = 4;
	w[1].requests = 4;
	cr_assert_eq(sched_place(w, 5, &e, &lr, &t, &err), CM_OK);
	cr_assert_eq(t.worker[0], 0, "tie: lower index");
	cr_assert_eq(t.worker[1], 3);
	cr_assert_str_eq(sched_policy_name(SCHED_POLICY_LEAST_REQUESTS), "least-requests");
}

Test(sched_place, replacement_moves_only_the_dead_side)
{
	struct sched_worker w[5] = {worker(SCHED_ROLE_ENCODE, 2e12, 0),
				    worker(SCHED_ROLE_ENCODE, 1e12, 0),
				    worker(SCHED_ROLE_DECODE, 2e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0)};
	struct sched_estimate e = est_of(2e12, 4e12, 10, 30);
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	cr_assert_eq(sched_place(w, 5, &e, &pol, &t, &err), CM_OK);
	cr_assert_eq(t.worker[0], 0);
	cr_assert_eq(t.worker[1], 2);
	cr_assert_eq(sched_replace(w, 5, &e, &pol, &t, &err), CM_OK, "nothing dead");
	cr_assert_eq(t.worker[1], 2);

	/* the decode worker dies: a new decode worker, the same encode worker */
	w[2].live = false;
	struct sched_estimate again = est_of(0, 4e12, 10, 30); /* encoded; decode restarts */
	cr_assert_eq(sched_replace(w, 5, &again, &pol, &t, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(t.worker[0], 0);
	cr_assert_eq(t.worker[1], 3);
	EQ(w[0].load_s, 0);
	EQ(w[0].kv_used, 10);
	EQ(w[3].load_s, 4);
	cr_assert_eq(w[0].requests, 1);
	cr_assert_eq(w[2].requests, 0);

	/* the encode worker dies: re-encoded elsewhere, never on a dead worker */
	w[0].live = false;
	cr_assert_eq(sched_replace(w, 5, &e, &pol, &t, &err), CM_OK);
	cr_assert_eq(t.worker[0], 1);
	cr_assert_eq(t.worker[1], 3);
	EQ(w[1].load_s, 2);
	for (int k = 0; k < 10; k++) {
		w[t.worker[1]].live = false;
		int rc = sched_replace(w, 5, &e, &pol, &t, &err);
		if (rc < 0) {
			cr_assert_eq(rc, CM_EAGAIN, "%s", err.msg);
			cr_assert_eq(t.worker[1], 4, "kept on error");
			break;
		}
		cr_assert(w[t.worker[1]].live);
	}
	cr_assert_not(w[4].live);
}

Test(sched_place, whole_replacement_and_finish_clear_the_charges)
{
	struct sched_worker w[2] = {worker(SCHED_ROLE_BOTH, 1e12, 0),
				    worker(SCHED_ROLE_BOTH, 1e12, 0)};
	struct sched_estimate e = est_of(1e12, 1e12, 10, 30);
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	cr_assert_eq(sched_place(w, 2, &e, &pol, &t, &err), CM_OK);
	cr_assert_eq(t.worker[0], 0);
	EQ(w[0].kv_used, 30); /* the source counted once */
	w[0].live = false;
	cr_assert_eq(sched_replace(w, 2, &e, &pol, &t, &err), CM_OK);
	cr_assert_eq(t.worker[0], 1);
	cr_assert_eq(t.worker[1], 1);
	EQ(w[1].load_s, 2);
	sched_ticket_finish(w, 2, &t);
	cr_assert_eq(t.worker[0], -1);
	EQ(w[1].load_s, 0);
	EQ(w[1].kv_used, 0);
	cr_assert_eq(w[1].requests, 0);
}

Test(sched_place, exact_costs_replace_estimates)
{
	struct sched_worker w[2] = {worker(SCHED_ROLE_ENCODE, 1e12, 0),
				    worker(SCHED_ROLE_DECODE, 1e12, 0)};
	w[1].cap.bandwidth = 1e11;
	struct sched_estimate e = est_of(2e12, 8e12, 10, 30);
	struct sched_policy pol = {.kind = SCHED_POLICY_COST};
	struct sched_ticket t;
	struct cm_err err = {0};
	cr_assert_eq(sched_place(w, 2, &e, &pol, &t, &err), CM_OK);
	EQ(w[1].outstanding_flops, 8e12);
	/* progress: 3e12 done; without a new estimate the charge shrinks by it */
	struct sched_cost done = {.flops = 3e12};
	cr_assert_eq(sched_ticket_update(w, 2, &t, SCHED_DECODE, &done, NULL), CM_OK);
	EQ(w[1].outstanding_flops, 5e12);
	EQ(w[1].load_s, 5);
	EQ(w[1].done_flops, 3e12);
	/* exact figures: 1e12 more done, and 1e12 FLOPs + 5e11 bytes left */
	struct sched_cost more = {.flops = 1e12};
	struct sched_cost left = {.flops = 1e12, .weight_bytes = 5e11, .kv_hold_bytes = 20};
	cr_assert_eq(sched_ticket_update(w, 2, &t, SCHED_DECODE, &more, &left), CM_OK);
	EQ(w[1].outstanding_flops, 1e12);
	EQ(w[1].outstanding_bytes, 5e11);
	EQ(w[1].load_s, 5); /* memory-bound now: 5e11 B at 1e11 B/s */
	EQ(w[1].done_flops, 4e12);
	EQ(w[1].kv_used, 20);
	EQ(w[0].outstanding_flops, 2e12);
	cr_assert_eq(sched_ticket_update(w, 2, &t, SCHED_BOTH, &more, NULL), CM_EINVAL);
	sched_ticket_finish(w, 2, &t);
	EQ(w[0].outstanding_flops + w[1].outstanding_flops + w[1].load_s, 0);
	EQ(w[1].done_flops, 4e12);
}

Test(sched_metrics, names_and_values)
{
	struct sched_worker w = worker(SCHED_ROLE_DECODE, 3e12, 1e9);
	w.load_s = 1.5;
	w.kv_used = 2e8;
	cr_assert_str_eq(sched_metric(0)->name, "tandem_scheduler_projected_load_seconds");
	EQ(sched_metric_value(&w, 0), 1.5);
	cr_assert_null(sched_metric(SCHED_N_METRICS));
	bool kv = false, rate = false;
	for (int i = 0; i < SCHED_N_METRICS; i++) {
		const struct sched_metric *m = sched_metric(i);
		cr_assert(!strncmp(m->name, "tandem_scheduler_", 17), "%s", m->name);
		cr_assert(!strcmp(m->type, "gauge") || !strcmp(m->type, "counter"));
		cr_assert(m->help[0]);
		if (!strcmp(m->name, "tandem_scheduler_kv_reserved_bytes"))
			kv = sched_metric_value(&w, i) == 2e8;
		if (!strcmp(m->name, "tandem_scheduler_capacity_flops_per_second"))
			rate = sched_metric_value(&w, i) == 3e12;
	}
	cr_assert(kv && rate);
}

/* ---- plan simulator --------------------------------------------------------------- */

/* Qwen3-1.7B's shape (algorithms.md §0.2). */
static const struct md_config qwen17 = {.hidden = 2048,
					.intermediate = 6144,
					.n_layer = 28,
					.n_head = 16,
					.n_kv_head = 8,
					.head_dim = 128,
					.vocab = 151936};

static struct sched_sim_params sim_params(const struct sched_sim_worker *w, int n)
{
	struct sched_sim_params p = sched_sim_default_params();
	p.cfg = &qwen17;
	p.workers = w;
	p.n_workers = n;
	p.n_requests = 1000;
	return p;
}

Test(sched_sim, deterministic_and_better_balanced_than_the_baselines)
{
	const double speed[4] = {1, 1, 0.5, 2};
	struct sched_sim_worker w[4];
	for (int i = 0; i < 4; i++)
		w[i] = (struct sched_sim_worker){
			.role = SCHED_ROLE_BOTH,
			.cap = {100e12 * speed[i], 2e12 * speed[i], 16e9 * speed[i]}};
	struct sched_sim_params p = sim_params(w, 4);
	struct sched_sim_result r[3], again;
	struct cm_err err = {0};
	for (int k = 0; k < 3; k++)
		cr_assert_eq(sched_sim_run(&p, (enum sched_policy_kind)k, &r[k], &err), CM_OK, "%s",
			     err.msg);
	cr_assert_eq(sched_sim_run(&p, SCHED_POLICY_COST, &again, &err), CM_OK);
	cr_assert_eq(memcmp(&r[0], &again, sizeof(again)), 0, "same seed, same run");
	cr_assert_eq(r[0].n_requests, 1000);
	cr_assert_float_eq(r[0].rate, r[1].rate, 0, "same workload for every policy");
	for (int k = 1; k < 3; k++)
		cr_assert_lt(r[0].imbalance, r[k].imbalance, "cost %.3f vs %s %.3f", r[0].imbalance,
			     sched_policy_name((enum sched_policy_kind)k), r[k].imbalance);
	cr_assert_gt(r[0].imbalance, 1);
	cr_assert_gt(r[0].finish_p99, r[0].finish_p50);
	p.seed = 2;
	cr_assert_eq(sched_sim_run(&p, SCHED_POLICY_COST, &again, &err), CM_OK);
	cr_assert_neq(again.finish_mean, r[0].finish_mean, "another seed, another workload");
}

Test(sched_sim, split_layout_runs_and_bad_params_are_errors)
{
	struct sched_sim_worker w[4] = {
		{SCHED_ROLE_ENCODE, {100e12, 2e12, 16e9}},
		{SCHED_ROLE_DECODE, {100e12, 2e12, 16e9}},
		{SCHED_ROLE_DECODE, {50e12, 1e12, 8e9}},
		{SCHED_ROLE_DECODE, {200e12, 4e12, 32e9}},
	};
	struct sched_sim_params p = sim_params(w, 4);
	struct sched_sim_result r;
	struct cm_err err = {0};
	cr_assert_eq(sched_sim_run(&p, SCHED_POLICY_COST, &r, &err), CM_OK, "%s", err.msg);
	cr_assert_eq(r.sides[0], 1000, "every request encodes on the one encode worker");
	cr_assert_eq(r.sides[1] + r.sides[2] + r.sides[3], 1000);
	cr_assert_gt(r.sides[3], r.sides[2], "the fast decode worker takes more");
	p.n_workers = 1; /* encode only */
	cr_assert_eq(sched_sim_run(&p, SCHED_POLICY_COST, &r, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "no decode worker"), "%s", err.msg);
	p = sim_params(w, 4);
	p.load = 0;
	cr_assert_eq(sched_sim_run(&p, SCHED_POLICY_COST, &r, &err), CM_EINVAL);
	p = sim_params(w, 4);
	w[1].cap.kv_bytes = 1; /* smaller than any request: waits forever */
	w[2].cap.kv_bytes = 1;
	w[3].cap.kv_bytes = 1;
	cr_assert_eq(sched_sim_run(&p, SCHED_POLICY_COST, &r, &err), CM_EINVAL);
	cr_assert(strstr(err.msg, "KV"), "%s", err.msg);
}
