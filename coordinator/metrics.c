/* Prometheus text exposition (format 0.0.4) of the coordinator's metrics:
 * tandem_<noun>_<unit>, histograms for per-request latencies, gauges for state,
 * counters (_total) for totals; every series is labelled with model_name, and
 * per-worker series with worker and role. */
#include "coord-impl.h"

#include <math.h>
#include <string.h>

static const double lat_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
				    2.5,   5,	 10,	20,   40,  80,	 160};
static const double tok_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};

void coord_hist_init(struct coord_hist *h, const double *bounds, int n)
{
	memset(h, 0, sizeof(*h));
	h->bounds = bounds;
	h->n = CM_MIN(n, COORD_HIST_MAX);
}

void coord_hist_add(struct coord_hist *h, double v)
{
	if (!isfinite(v))
		return;
	int i = 0;
	while (i < h->n && v > h->bounds[i])
		i++;
	if (i < h->n)
		h->counts[i]++;
	h->count++;
	h->sum += v;
}

void coord_metrics_init(struct coord_metrics *m)
{
	memset(m, 0, sizeof(*m));
	int nl = (int)CM_ARRAY_LEN(lat_bounds), nt = (int)CM_ARRAY_LEN(tok_bounds);
	coord_hist_init(&m->ttft, lat_bounds, nl);
	coord_hist_init(&m->first_answer, lat_bounds, nl);
	coord_hist_init(&m->final_answer, lat_bounds, nl);
	coord_hist_init(&m->e2e, lat_bounds, nl);
	coord_hist_init(&m->queue, lat_bounds, nl);
	coord_hist_init(&m->waited, tok_bounds, nt);
}

static void header(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist(FILE *f, const char *model, const char *name, const char *help,
		 const struct coord_hist *h)
{
	header(f, name, "histogram", help);
	uint64_t cum = 0;
	for (int i = 0; i < h->n; i++) {
		cum += h->counts[i];
		fprintf(f, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", name, model,
			h->bounds[i], (unsigned long long)cum);
	}
	fprintf(f, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", name, model,
		(unsigned long long)h->count);
	fprintf(f, "%s_sum{model_name=\"%s\"} %.9g\n", name, model, h->sum);
	fprintf(f, "%s_count{model_name=\"%s\"} %llu\n", name, model, (unsigned long long)h->count);
}

static void one(FILE *f, const char *model, const char *name, const char *type, const char *help,
		double v)
{
	header(f, name, type, help);
	fprintf(f, "%s{model_name=\"%s\"} %.17g\n", name, model, v);
}

static const char *role_name(int32_t r)
{
	return r == tandem_internal_v1_Role_ROLE_ENCODE	  ? "encode"
	       : r == tandem_internal_v1_Role_ROLE_DECODE ? "decode"
							  : "both";
}

static void per_worker(struct coord *c, FILE *f, const char *name, const char *type,
		       const char *help, int which)
{
	header(f, name, type, help);
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		const struct coord_worker *w = &c->workers[i];
		if (!w->used)
			continue;
		double v = 0;
		switch (which) {
		case 0:
			v = w->hb.kv_blocks_total
				    ? (double)w->hb.kv_blocks_used / w->hb.kv_blocks_total
				    : 0;
			break;
		case 1:
			v = w->hb.running;
			break;
		case 2:
			v = c->sw[i].outstanding_flops;
			break;
		case 3:
			v = (double)w->hb.tokens_decoded;
			break;
		case 4:
			v = (double)w->hb.tokens_prefilled;
			break;
		case 5:
			v = (double)w->hb.kv_bytes_sent;
			break;
		case 6:
			v = (double)w->hb.kv_bytes_received;
			break;
		case 7:
			v = (double)w->hb.kv_stalls;
			break;
		case 8:
			v = w->hb.flops;
			break;
		}
		fprintf(f, "%s{model_name=\"%s\",worker=\"%s\",role=\"%s\"} %.17g\n", name,
			c->model_name, w->id, role_name(w->role), v);
	}
}

/* Source tokens over the KV link, by direction (resends included in "sent"). */
static void kv_link_tokens(struct coord *c, FILE *f)
{
	const char *name = "tandem_worker_kv_link_tokens_total";
	header(f, name, "counter",
	       "Source tokens a worker shipped (sent, resends included) or handed to its engine "
	       "(received) over the KV link.");
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		const struct coord_worker *w = &c->workers[i];
		if (!w->used)
			continue;
		fprintf(f,
			"%s{model_name=\"%s\",worker=\"%s\",role=\"%s\",direction=\"sent\"} "
			"%lld\n",
			name, c->model_name, w->id, role_name(w->role),
			(long long)w->hb.kv_tokens_sent);
		fprintf(f,
			"%s{model_name=\"%s\",worker=\"%s\",role=\"%s\",direction=\"received\"} "
			"%lld\n",
			name, c->model_name, w->id, role_name(w->role),
			(long long)w->hb.kv_tokens_received);
	}
}

/* The scheduler's own per-worker series (scheduler/sched.h). */
static void sched_metrics(struct coord *c, FILE *f)
{
	for (int k = 0; k < SCHED_N_METRICS; k++) {
		const struct sched_metric *m = sched_metric(k);
		if (!m)
			continue;
		header(f, m->name, m->type, m->help);
		for (int i = 0; i < COORD_MAX_WORKERS; i++) {
			const struct coord_worker *w = &c->workers[i];
			if (w->used)
				fprintf(f, "%s{model_name=\"%s\",worker=\"%s\",role=\"%s\"} %.17g\n",
					m->name, c->model_name, w->id, role_name(w->role),
					sched_metric_value(&c->sw[i], k));
		}
	}
}

void coord__metrics_write(struct coord *c, FILE *f)
{
	const struct coord_metrics *m = &c->m;
	const char *mn = c->model_name;
	hist(f, mn, "tandem_time_to_first_token_seconds",
	     "Seconds from a request's arrival to its first generated token.", &m->ttft);
	hist(f, mn, "tandem_input_tokens_waited",
	     "Input tokens received before a Think request's first thought token.", &m->waited);
	hist(f, mn, "tandem_first_answer_latency_seconds",
	     "Seconds from the end of input to the first answer token.", &m->first_answer);
	hist(f, mn, "tandem_final_answer_latency_seconds",
	     "Seconds from the end of input to the last answer token.", &m->final_answer);
	hist(f, mn, "tandem_e2e_request_latency_seconds",
	     "Seconds from a request's arrival to its end.", &m->e2e);
	hist(f, mn, "tandem_request_queue_time_seconds",
	     "Seconds from a request's arrival to its placement on a worker.", &m->queue);

	int running = 0, waiting = 0;
	for (struct coord_req *r = c->reqs; r; r = r->next) {
		if (r->worker >= 0)
			running++;
		else
			waiting++;
	}
	one(f, mn, "tandem_requests_running", "gauge", "Requests placed on a worker.", running);
	one(f, mn, "tandem_requests_waiting", "gauge", "Open requests not placed on a worker.",
	    waiting);
	one(f, mn, "tandem_workers_ready", "gauge", "Workers registered with their model loaded.",
	    coord__ready_workers(c));

	header(f, "tandem_requests_finished_total", "counter",
	       "Requests that ended with a Done event, by finish reason.");
	static const char *const reasons[] = {"unspecified", "stop",  "length", "eos",
					      "stop_string", "abort", "context"};
	for (size_t i = 0; i < CM_ARRAY_LEN(reasons); i++)
		fprintf(f,
			"tandem_requests_finished_total{model_name=\"%s\",finish_reason=\"%s\"} "
			"%llu\n",
			mn, reasons[i], (unsigned long long)m->finished[i]);
	one(f, mn, "tandem_requests_failed_total", "counter",
	    "Requests that ended with an error status.", (double)m->failed);
	one(f, mn, "tandem_requests_cancelled_total", "counter",
	    "Requests whose client cancelled or whose deadline passed.", (double)m->cancelled);
	one(f, mn, "tandem_requests_replaced_total", "counter",
	    "Requests restarted on another worker after a worker was lost.", (double)m->replaced);
	one(f, mn, "tandem_requests_retargeted_total", "counter",
	    "Split requests whose decode side moved after its worker was lost; the encode "
	    "worker shipped its kept KV again (no re-encoding).",
	    (double)m->retargeted);
	one(f, mn, "tandem_workers_lost_total", "counter",
	    "Workers removed after missing their heartbeats.", (double)m->workers_lost);

	header(f, "tandem_tokens_generated_total", "counter", "Generated tokens, by kind.");
	fprintf(f, "tandem_tokens_generated_total{model_name=\"%s\",kind=\"thought\"} %llu\n", mn,
		(unsigned long long)m->thought_tokens);
	fprintf(f, "tandem_tokens_generated_total{model_name=\"%s\",kind=\"answer\"} %llu\n", mn,
		(unsigned long long)m->answer_tokens);
	one(f, mn, "tandem_input_tokens_total", "counter",
	    "Input tokens of finished requests, as the client sent them.", (double)m->input_tokens);
	one(f, mn, "tandem_prompt_tokens_total", "counter",
	    "Tokens the model read for finished requests, template included.",
	    (double)m->prompt_tokens);

	per_worker(c, f, "tandem_worker_kv_usage_ratio", "gauge",
		   "Share of a worker's KV cache blocks in use.", 0);
	per_worker(c, f, "tandem_worker_running_sequences", "gauge",
		   "Sequences a worker runs at its last heartbeat.", 1);
	per_worker(c, f, "tandem_worker_scheduled_flops", "gauge",
		   "Estimated FLOPs of the work placed on a worker and not finished.", 2);
	per_worker(c, f, "tandem_worker_decoded_tokens_total", "counter",
		   "Tokens a worker has decoded since it started (its last heartbeat).", 3);
	per_worker(c, f, "tandem_worker_prefilled_tokens_total", "counter",
		   "Tokens a worker has prefilled since it started (an encode worker: the source "
		   "it encoded).",
		   4);
	kv_link_tokens(c, f);
	per_worker(c, f, "tandem_worker_kv_link_sent_bytes_total", "counter",
		   "Source KV bytes a worker shipped over the KV link.", 5);
	per_worker(c, f, "tandem_worker_kv_link_received_bytes_total", "counter",
		   "Source KV bytes a worker received over the KV link.", 6);
	per_worker(c, f, "tandem_worker_kv_link_stalls_total", "counter",
		   "KV link sends refused because the decode side held its acks (back-pressure).",
		   7);
	per_worker(c, f, "tandem_worker_flops_total", "counter",
		   "Forward FLOPs a worker has done since it started (its engine's accounting).", 8);
	sched_metrics(c, f);
}
