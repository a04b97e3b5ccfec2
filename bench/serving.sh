#!/bin/sh
# Colocated versus disaggregated serving at the same total cores (docs/performance.md,
# "Serving: colocated vs disaggregated").
#
#   bench/serving.sh [OUT_DIR]
#
# For each layout it starts a local cluster with `tandem up`, waits until it is up,
# runs a short warm-up, then `tandem bench serving --json` at every concurrency in
# CONCURRENCY, and stops the cluster. Layouts (same cores in all):
#   colocated      1 worker, role both, THREADS threads
#   disaggregated  1 encode + 1 decode worker, THREADS/2 threads each
#   both-x2        2 workers, role both, THREADS/2 threads each (data parallel; the
#                  control that tells "two processes" from "two roles")
# A layout whose flags this `tandem up` does not know is skipped with a note.
# Results: OUT_DIR/LAYOUT-cN.json and a table on stdout (needs jq).
#
# Environment (defaults in brackets):
#   TANDEM       the binary [build/tools/tandem]
#   MODEL        model folder [OUT_DIR/qwen3-0.6b-rand, written by gen-model 0.6b]
#   THREADS      total compute threads [2]
#   CONCURRENCY  concurrencies to run ["1 4"]
#   REQUESTS     requests per run [8]
#   READ_RATE    input tokens per second per stream [20]
#   UNIT_BUDGET, FINAL_BUDGET  reasoning budgets [16, 64]
#   LAYOUTS      which layouts ["colocated disaggregated both-x2"]
#   PORT         first of three consecutive ports [52051]
#   UP_FLAGS     more `tandem up` flags for every layout, e.g. "--activations bf16" [none]
set -eu

OUT=${1:-bench-serving-out}
TANDEM=${TANDEM:-build/tools/tandem}
THREADS=${THREADS:-2}
CONCURRENCY=${CONCURRENCY:-"1 4"}
REQUESTS=${REQUESTS:-8}
READ_RATE=${READ_RATE:-20}
UNIT_BUDGET=${UNIT_BUDGET:-16}
FINAL_BUDGET=${FINAL_BUDGET:-64}
LAYOUTS=${LAYOUTS:-"colocated disaggregated both-x2"}
PORT=${PORT:-52051}
UP_FLAGS=${UP_FLAGS:-}
HALF=$((THREADS / 2 > 0 ? THREADS / 2 : 1))

mkdir -p "$OUT"
MODEL=${MODEL:-$OUT/qwen3-0.6b-rand}
if [ ! -f "$MODEL/config.json" ]; then
	echo "serving.sh: writing the 0.6b random model to $MODEL" >&2
	"$TANDEM" gen-model --variant 0.6b --seed 1 --out "$MODEL" >&2
fi

layout_flags() {
	case $1 in
	colocated) echo "--workers 1 --threads $THREADS" ;;
	disaggregated) echo "--encode-workers 1 --decode-workers 1 --threads $HALF" ;;
	both-x2) echo "--workers 2 --threads $HALF" ;;
	*) echo "serving.sh: unknown layout $1" >&2; return 1 ;;
	esac
}

UP_PID=
stop_up() {
	if [ -n "$UP_PID" ]; then
		kill -INT "$UP_PID" 2>/dev/null || true
		wait "$UP_PID" 2>/dev/null || true
		UP_PID=
	fi
}
trap stop_up EXIT
trap 'stop_up; exit 130' INT TERM

run_layout() {
	name=$1
	flags=$(layout_flags "$name")
	first=${flags%% *}
	if ! "$TANDEM" up --help | grep -q -- "$first "; then
		echo "serving.sh: $name skipped: this tandem up has no $first" >&2
		return 0
	fi
	log=$OUT/$name.up.log
	# shellcheck disable=SC2086 # flags are words
	"$TANDEM" up --model "$MODEL" --grpc-port "$PORT" --http-port $((PORT + 1)) \
		--worker-port $((PORT + 2)) $flags $UP_FLAGS >"$log" 2>&1 &
	UP_PID=$!
	i=0
	until grep -q "Tandem is up" "$log"; do
		i=$((i + 1))
		if [ $i -gt 600 ] || ! kill -0 "$UP_PID" 2>/dev/null; then
			echo "serving.sh: $name did not come up (see $log)" >&2
			stop_up
			return 1
		fi
		sleep 0.5
	done
	target=127.0.0.1:$PORT
	common="--target $target --unit-budget $UNIT_BUDGET --final-budget $FINAL_BUDGET"
	echo "serving.sh: $name: warm-up" >&2
	# shellcheck disable=SC2086
	"$TANDEM" bench serving $common --requests 1 --read-rate 100 >/dev/null 2>&1 ||
		echo "serving.sh: $name: the warm-up failed" >&2
	for c in $CONCURRENCY; do
		echo "serving.sh: $name: concurrency $c, $REQUESTS requests at $READ_RATE tok/s" >&2
		# shellcheck disable=SC2086
		"$TANDEM" bench serving $common --requests "$REQUESTS" --concurrency "$c" \
			--read-rate "$READ_RATE" --json >"$OUT/$name-c$c.json" ||
			echo "serving.sh: $name: some requests failed (see the JSON)" >&2
	done
	stop_up
}

for l in $LAYOUTS; do
	run_layout "$l" || true
done

if ! command -v jq >/dev/null; then
	echo "serving.sh: results in $OUT/*.json (install jq for the table)"
	exit 0
fi
printf '%-14s %4s %5s %8s %8s %8s %8s %8s %9s %9s %8s\n' layout conc errs tok/s \
	ttft50 ttft99 itl50 itl99 first50 final50 final99
for l in $LAYOUTS; do
	for c in $CONCURRENCY; do
		f=$OUT/$l-c$c.json
		[ -f "$f" ] || continue
		jq -r --arg l "$l" '[$l, .concurrency, .errors, .output_tok_s, .ttft_ms_p50,
			.ttft_ms_p99, .itl_ms_p50, .itl_ms_p99, .first_answer_ms_p50,
			.final_answer_ms_p50, .final_answer_ms_p99] | @tsv' "$f" |
			awk -F'\t' '{ printf "%-14s %4d %5d %8.1f %8.0f %8.0f %8.1f %8.1f %9.0f %9.0f %8.0f\n",
				$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
	done
done
echo "(ms; tok/s is output tokens per second over the run; files in $OUT)"
