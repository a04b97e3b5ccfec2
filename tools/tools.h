/* tools: the `tandem` command line. One options table (tools/options.c) drives
 * every subcommand's flags, environment variables and --help; each subcommand is
 * a function taking the parsed options and its positional arguments.
 * Exit codes: 0 success, 1 a failure the user caused or can fix (bad input,
 * bad files, bad flags), 2 an internal error. */
#ifndef TANDEM_TOOLS_H
#define TANDEM_TOOLS_H

#include "common/cm.h"

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
};

extern const struct cm_opt tandem_opt_table[];
extern const size_t tandem_opt_count;
extern const char *const tandem_cmd_names[];
extern const size_t tandem_cmd_count;

int tool_gen_model(const struct tandem_opts *o, int argc, char **argv);
int tool_tokenize(const struct tandem_opts *o, int argc, char **argv);
int tool_generate(const struct tandem_opts *o, int argc, char **argv);
int tool_config(const struct tandem_opts *o, int argc, char **argv);
/* Parses "1,2,3" into a malloc'd array; CM_EINVAL with a message on bad input. */
int tool_parse_ids(const char *s, int32_t **ids, size_t *n, struct cm_err *err);

/* Embedded Qwen3 tokenizer files (third_party/qwen3-tokenizer), see assets.S. */
extern const char tandem_asset_tokenizer_json[];
extern const char tandem_asset_tokenizer_json_end[];
extern const char tandem_asset_tokenizer_config_json[];
extern const char tandem_asset_tokenizer_config_json_end[];

#endif
