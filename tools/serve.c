/* tandem serve (the coordinator) and tandem worker: thin wrappers that map the
 * options onto coord_params / wk_worker_params and stop on SIGINT or SIGTERM. */
#include "coordinator/coord.h"
#include "tools.h"
#include "worker/worker.h"

#include <signal.h>
#include <string.h>

/* Set by the signal handler: the one piece of process-wide mutable state. */
static volatile sig_atomic_t tool_stop;

static void on_signal(int sig)
{
	(void)sig;
	tool_stop = 1;
}

void tool_signals_init(volatile sig_atomic_t **flag)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	*flag = &tool_stop;
}

int tool_serve(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	if (argc || !o->model) {
		fprintf(stderr, "tandem serve: give --model DIR (and no positional arguments)\n");
		return 1;
	}
	struct coord_params p = coord_default_params();
	p.model = o->model;
	p.host = o->host;
	p.grpc_port = (int)o->grpc_port;
	p.http_port = (int)o->http_port;
	p.worker_port = (int)o->worker_port;
	p.port_file = o->port_file;
	p.max_requests = (int)o->max_requests;
	p.max_input_tokens = (int)o->max_input_tokens;
	p.default_max_tokens = (int)o->default_max_tokens;
	p.unit_budget = (int)o->unit_budget;
	p.final_budget = (int)o->final_budget;
	p.heartbeat_timeout_ms = o->heartbeat_timeout_ms;
	tool_signals_init(&p.stop);
	struct cm_err err = {0};
	if (coord_serve(&p, &err) < 0) {
		fprintf(stderr, "tandem serve: %s\n", err.msg);
		return err.code == CM_EINTERNAL || err.code == CM_ENOMEM ? 2 : 1;
	}
	return 0;
}

int tool_worker(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	if (argc || !o->coordinator) {
		fprintf(stderr, "tandem worker: give --coordinator ADDR (and no positional "
				"arguments)\n");
		return 1;
	}
	struct wk_worker_params p = wk_worker_default_params();
	p.coordinator = o->coordinator;
	p.model = o->model;
	p.role = o->role;
	p.kv_listen = o->kv_listen;
	p.peak_gflops = o->peak_gflops;
	p.read_gbps = o->read_gbps;
	p.device = o->device;
	p.id = o->worker_id;
	p.threads = (int)o->threads;
	p.weights = tool_weights(o);
	p.max_seqs = (int)o->max_seqs;
	p.kv_tokens = (int)o->kv_tokens;
	p.heartbeat_ms = o->heartbeat_ms;
	p.coordinator_timeout_ms = o->coordinator_timeout_ms;
	tool_signals_init(&p.stop);
	struct cm_err err = {0};
	if (tool_activations(o, false, &p.bf16_activations, &err) < 0 ||
	    wk_worker_run(&p, &err) < 0) {
		fprintf(stderr, "tandem worker: %s\n", err.msg);
		return err.code == CM_EINTERNAL || err.code == CM_ENOMEM ? 2 : 1;
	}
	return 0;
}
