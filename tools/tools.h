/* tools: the `tandem` command line. One options table (tools/options.c) drives
 * every subcommand's flags, environment variables and --help; each subcommand is
 * a function taking the parsed options and its positional arguments.
 * Exit codes: 0 success, 1 a failure the user caused or can fix (bad input,
 * bad files, bad flags), 2 an internal error. */
#ifndef TANDEM_TOOLS_H
#define TANDEM_TOOLS_H

#include "common/cm.h"

#include <signal.h>

/* Command bits for struct cm_opt.cmds. */
enum {
	CMD_GEN_MODEL = 1u << 0,
	CMD_TOKENIZE = 1u << 1,
	CMD_GENERATE = 1u << 2,
	CMD_CONFIG = 1u << 3,
	CMD_BENCH = 1u << 4,
	CMD_SERVE = 1u << 5,
	CMD_WORKER = 1u << 6,
	CMD_UP = 1u << 7,
	CMD_THINK = 1u << 8,
	CMD_ALL = 0xffffffffu,
};

struct tandem_opts {
	const char *log_level;
	/* model selection */
	const char *model;        /* model folder */
	/* gen-model */
	const char *variant;
	int64_t seed;
	const char *out;
	bool routers;
	/* tokenize */
	const char *decode;
	/* generate */
	const char *prompt;
	const char *tokens;
	bool chat;
	int64_t max_tokens;
	double temperature;
	double top_p;
	int64_t top_k;
	double min_p;
	double repetition_penalty;
	int64_t threads;
	bool ids;
	const char *dump_logits;
	/* generate and bench: how the weights are held */
	const char *quantize;     /* none|q8 */
	bool mmap_weights;        /* keep the matrices in the file mapping */
	const char *activations;  /* f32|bf16 */
	/* bench */
	int64_t prompt_tokens;
	int64_t gen_tokens;
	int64_t batch;
	int64_t runs;
	bool json;
	/* serve, worker, up, think (the cluster) */
	const char *host;
	int64_t grpc_port, http_port, worker_port;
	const char *port_file;
	int64_t max_requests, max_input_tokens, default_max_tokens;
	int64_t unit_budget, final_budget;
	int64_t heartbeat_timeout_ms;
	const char *coordinator;
	const char *role;
	const char *device;
	const char *worker_id;
	int64_t max_seqs, kv_tokens;
	int64_t heartbeat_ms, coordinator_timeout_ms;
	int64_t workers;
	const char *cache_dir;
	int64_t start_timeout;
	const char *addr;
	const char *file;
	double rate;
	const char *mode;
	const char *system;
	int64_t depth;
	int64_t think_max_tokens;
	double timeout;
	/* generate and bench streaming: streaming thinking */
	const char *source_units, *target_units;
	int64_t phi;
	bool think;
	int64_t answer_budget;
	const char *template_file;
	const char *input;
	double read_rate;
	/* bench serving */
	const char *target;
	int64_t requests, concurrency;
	/* disaggregation: worker and up */
	const char *kv_listen;
	double peak_gflops, read_gbps;
	int64_t encode_workers, decode_workers;
	/* bench scheduler */
	int64_t sched_requests;
	double sched_load;
	const char *sched_cluster;
};

extern const struct cm_opt tandem_opt_table[];
extern const size_t tandem_opt_count;
extern const char *const tandem_cmd_names[];
extern const size_t tandem_cmd_count;

int tool_gen_model(const struct tandem_opts *o, int argc, char **argv);
int tool_tokenize(const struct tandem_opts *o, int argc, char **argv);
int tool_generate(const struct tandem_opts *o, int argc, char **argv);
int tool_config(const struct tandem_opts *o, int argc, char **argv);
/* tandem bench [MODE]: MODE picks a row of the table in tools/bench.c (default
 * "engine"); the rest of argv goes to it. */
int tool_bench(const struct tandem_opts *o, int argc, char **argv);
struct wk_model;
/* Where --quantize and --mmap put the weight matrices (wk_model_convert). */
enum wk_weights tool_weights(const struct tandem_opts *o);
/* Places m's weights as --quantize and --mmap ask (wk_model_convert); errors as
 * wk_model_convert's. */
int tool_model_weights(const struct tandem_opts *o, struct wk_model *m, struct cm_err *err);
/* *bf16 = whether --activations asks for bf16 dot products: bf16, or auto where
 * auto_bf16 and the CPU has AVX512_BF16. CM_EUNSUPPORTED for bf16 on a CPU
 * without it. */
int tool_activations(const struct tandem_opts *o, bool auto_bf16, bool *bf16, struct cm_err *err);
/* tandem bench streaming (tools/bench_streaming.c): streaming vs batch thinking. */
int tool_bench_streaming(const struct tandem_opts *o, int argc, char **argv);
/* tandem bench serving (tools/bench_serving.c): latency of a running cluster under load. */
int tool_bench_serving(const struct tandem_opts *o, int argc, char **argv);
/* tandem bench scheduler (tools/bench_sched.c): the plan simulator, the scheduler
 * against round robin and least requests. */
int tool_bench_sched(const struct tandem_opts *o, int argc, char **argv);
/* The StreamingThinker template of --template FILE (else the defaults), with
 * --depth applied; free with md_seg_template_fini(). */
struct md_seg_template;
int tool_think_template(const struct tandem_opts *o, struct md_seg_template *t,
			struct cm_err *err);
/* The cluster: tools/serve.c (serve, worker), tools/up.c, tools/think.c. */
int tool_serve(const struct tandem_opts *o, int argc, char **argv);
int tool_worker(const struct tandem_opts *o, int argc, char **argv);
int tool_up(const struct tandem_opts *o, int argc, char **argv);
int tool_think(const struct tandem_opts *o, int argc, char **argv);
/* Stops on SIGINT / SIGTERM: *flag becomes non-zero; SIGPIPE is ignored. */
void tool_signals_init(volatile sig_atomic_t **flag);
/* Parses "1,2,3" into a malloc'd array; CM_EINVAL with a message on bad input. */
int tool_parse_ids(const char *s, int32_t **ids, size_t *n, struct cm_err *err);

/* Embedded Qwen3 tokenizer files (third_party/qwen3-tokenizer), see assets.S. */
extern const char tandem_asset_tokenizer_json[];
extern const char tandem_asset_tokenizer_json_end[];
extern const char tandem_asset_tokenizer_config_json[];
extern const char tandem_asset_tokenizer_config_json_end[];

#endif
