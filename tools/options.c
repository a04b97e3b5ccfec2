/* The one configuration table of the `tandem` binary. */
#include "tools.h"

#include <float.h>
#include <stddef.h>

#define OFF(f) offsetof(struct tandem_opts, f)

/* in the order of the CMD_ bits */
const char *const tandem_cmd_names[] = { "gen-model", "tokenize", "generate", "config", "bench",
					 "serve",     "worker",   "up",       "think" };
const size_t tandem_cmd_count = CM_ARRAY_LEN(tandem_cmd_names);

/* clang-format off */
const struct cm_opt tandem_opt_table[] = {
	{ "log-level", CM_OPT_ENUM, CMD_ALL, OFF(log_level), "warn", 0, 0,
	  "error|warn|info|debug|trace", "TANDEM_LOG_LEVEL", "LEVEL", "How much to log to stderr." },
	{ "model", CM_OPT_STRING, CMD_TOKENIZE | CMD_GENERATE, OFF(model), NULL, 0, 0, NULL,
	  "TANDEM_MODEL", "DIR",
	  "Model folder in the Hugging Face layout (config.json, *.safetensors, tokenizer.json)." },
	{ "variant", CM_OPT_ENUM, CMD_GEN_MODEL, OFF(variant), "tiny", 0, 0, "tiny|0.6b", NULL,
	  NULL, "Shape of the random model (tandem-rand-v1)." },
	{ "seed", CM_OPT_INT, CMD_GEN_MODEL | CMD_GENERATE, OFF(seed), "1", 0, 9007199254740991.0,
	  NULL, NULL, "S", "Random seed (gen-model: weights; generate: sampling)." },
	{ "out", CM_OPT_STRING, CMD_GEN_MODEL, OFF(out), NULL, 0, 0, NULL, NULL, "DIR",
	  "Folder to write the model into (created if missing)." },
	{ "routers", CM_OPT_BOOL, CMD_GEN_MODEL, OFF(routers), "false", 0, 0, NULL, NULL, NULL,
	  "Also write SkipGPT router tensors and the tandem_skipgpt config block." },
	{ "decode", CM_OPT_STRING, CMD_TOKENIZE, OFF(decode), NULL, 0, 0, NULL, NULL, "ID,ID,...",
	  "Decode these token ids to text instead of encoding text." },
	{ "prompt", CM_OPT_STRING, CMD_GENERATE, OFF(prompt), NULL, 0, 0, NULL, NULL, "TEXT",
	  "Prompt text." },
	{ "tokens", CM_OPT_STRING, CMD_GENERATE, OFF(tokens), NULL, 0, 0, NULL, NULL, "ID,ID,...",
	  "Prompt as token ids instead of text." },
	{ "chat", CM_OPT_BOOL, CMD_GENERATE, OFF(chat), "false", 0, 0, NULL, NULL, NULL,
	  "Wrap the prompt in the model's chat template (Qwen3 ChatML)." },
	{ "max-tokens", CM_OPT_INT, CMD_GENERATE, OFF(max_tokens), "64", 0, 1 << 20, NULL, NULL, "N",
	  "Stop after this many generated tokens." },
	{ "temperature", CM_OPT_FLOAT, CMD_GENERATE, OFF(temperature), "0", 0, 100, NULL, NULL, "T",
	  "Sampling temperature; 0 is greedy." },
	{ "top-p", CM_OPT_FLOAT, CMD_GENERATE, OFF(top_p), "1", 0, 1, NULL, NULL, "P",
	  "Nucleus sampling: keep the smallest set of tokens whose probability reaches P." },
	{ "top-k", CM_OPT_INT, CMD_GENERATE, OFF(top_k), "0", 0, 1 << 20, NULL, NULL, "K",
	  "Keep only the K most likely tokens; 0 keeps all." },
	{ "min-p", CM_OPT_FLOAT, CMD_GENERATE, OFF(min_p), "0", 0, 1, NULL, NULL, "P",
	  "Drop tokens less likely than P times the most likely one." },
	{ "repetition-penalty", CM_OPT_FLOAT, CMD_GENERATE, OFF(repetition_penalty), "1", 0.01, 100,
	  NULL, NULL, "R", "Divide positive (multiply negative) logits of tokens already seen by R." },
	{ "threads", CM_OPT_INT, CMD_GENERATE, OFF(threads), "0", 0, 1024, NULL, "TANDEM_THREADS",
	  "N", "Compute threads; 0 uses every online CPU." },
	{ "ids", CM_OPT_BOOL, CMD_GENERATE, OFF(ids), "false", 0, 0, NULL, NULL, NULL,
	  "Print generated token ids, comma-separated, instead of text." },
	{ "dump-logits", CM_OPT_STRING, CMD_GENERATE, OFF(dump_logits), NULL, 0, 0, NULL, NULL,
	  "FILE",
	  "Write the logits of every prompt position as little-endian float32 [n_prompt][vocab]." },
};
/* clang-format on */

const size_t tandem_opt_count = CM_ARRAY_LEN(tandem_opt_table);
