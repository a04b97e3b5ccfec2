/* `tandem up` then `tandem think`, as the README tells a user to run them: the
 * default model is written into the cache on first use, the cluster prints where
 * to connect, think streams a file and prints the latency summary, Ctrl-C stops
 * every process. */
#include "../helpers.h"
#include "common/cm.h"

#include <arpa/inet.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

static bool port_open(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

static pid_t spawn_up(char *const argv[], const char *out)
{
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (!freopen(out, "w", stdout) || dup2(fileno(stdout), 2) < 0)
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

/* Waits for pid at most ms; its exit code, or -1 when still running. */
static int wait_ms(pid_t pid, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
		usleep(10000);
	}
	return -1;
}

/* A test's scratch: its directory, where tandem up's output goes, an input text
 * for tandem think, and three free ports from base (gRPC, HTTP, the workers'). */
struct up_run {
	char dir[1024], out[1200], in[1200];
	int base;
	char g[16], h[16], w[16];
};

static void up_run_init(struct up_run *u, const char *name)
{
	th_tmpdir(u->dir, sizeof(u->dir), name);
	snprintf(u->out, sizeof(u->out), "%s/up.out", u->dir);
	snprintf(u->in, sizeof(u->in), "%s/input.txt", u->dir);
	FILE *f = fopen(u->in, "w");
	cr_assert_not_null(f);
	fputs("The train leaves at nine. It takes two hours. When does it arrive?\n", f);
	fclose(f);
	u->base = 20000 + (getpid() % 10000) * 3;
	snprintf(u->g, sizeof(u->g), "%d", u->base);
	snprintf(u->h, sizeof(u->h), "%d", u->base + 1);
	snprintf(u->w, sizeof(u->w), "%d", u->base + 2);
}

/* Waits (two minutes at most) for tandem up's start-up line. */
static void up_wait_ready(const struct up_run *u, pid_t up)
{
	for (int i = 0; i < 1200 && !th_file_has(u->out, "Tandem is up"); i++)
		cr_assert_eq(wait_ms(up, 100), -1, "tandem up exited early");
	cr_assert(th_file_has(u->out, "Tandem is up"), "no start-up line");
}

/* tandem think streams the input through the cluster into dir/think.out, which
 * ends with the latency summary. */
static void up_think(const struct up_run *u)
{
	char cmd[4000];
	snprintf(cmd, sizeof(cmd),
		 "'%s' think --addr 127.0.0.1:%d --file '%s' --rate 400 --think-max-tokens 24 "
		 "--unit-budget 4 --final-budget 8 > '%s/think.out' 2>&1",
		 getenv("TANDEM_BIN"), u->base, u->in, u->dir);
	cr_assert_eq(th_sh(cmd), 0, "tandem think failed");
	snprintf(cmd, sizeof(cmd), "%s/think.out", u->dir);
	cr_assert(th_file_has(cmd, "finish: "), "latency summary");
}

Test(up, up_then_think_then_ctrl_c, .timeout = 240)
{
	struct up_run u;
	char cmd[4000];
	up_run_init(&u, "up");
	char *argv[] = {getenv("TANDEM_BIN"), "up", "--cache-dir", u.dir, "--workers",	   "2",
			"--grpc-port",	      u.g,  "--http-port", u.h,	  "--worker-port", u.w,
			"--threads",	      "1",  NULL};
	pid_t up = spawn_up(argv, u.out);
	up_wait_ready(&u, up);
	cr_assert(th_file_has(u.out, "writing the default model"),
		  "the default model was generated");
	char want[64];
	snprintf(want, sizeof(want), "gRPC     127.0.0.1:%d", u.base);
	cr_assert(th_file_has(u.out, want), "prints where to connect");

	up_think(&u);
	snprintf(cmd, sizeof(cmd), "%s/think.out", u.dir);
	cr_assert(th_file_has(cmd, "input tokens waited before the first thought: "));
	cr_assert(th_file_has(cmd, "time to first token: "));

	/* a second run of batch mode, reading stdin */
	snprintf(cmd, sizeof(cmd),
		 "'%s' think --addr 127.0.0.1:%d --mode batch --rate 0 --think-max-tokens 8 - "
		 "< '%s' > /dev/null 2>&1",
		 getenv("TANDEM_BIN"), u.base, u.in);
	cr_assert_eq(th_sh(cmd), 0, "tandem think (batch, stdin) failed");

	kill(up, SIGINT);
	cr_assert_eq(wait_ms(up, 20000), 0, "tandem up stops cleanly on Ctrl-C");
	cr_assert(!port_open(u.base), "the coordinator is gone");
	th_rmdir(u.dir);
}

/* The split layout (docs/disaggregation.md) through the same user path. */
Test(up, encode_and_decode_workers_then_think, .timeout = 240)
{
	struct up_run u;
	up_run_init(&u, "up-split");
	char *argv[] = {getenv("TANDEM_BIN"), "up", "--cache-dir", u.dir, "--encode-workers", "1",
			"--decode-workers",   "1",  "--grpc-port", u.g,	  "--http-port",      u.h,
			"--worker-port",      u.w,  NULL};
	pid_t up = spawn_up(argv, u.out);
	up_wait_ready(&u, up);
	cr_assert(th_file_has(u.out, "1 encode + 1 decode workers"), "the split layout is up");
	up_think(&u);
	kill(up, SIGINT);
	cr_assert_eq(wait_ms(up, 20000), 0, "tandem up stops cleanly on Ctrl-C");
	th_rmdir(u.dir);
}

Test(up, stops_everything_when_a_child_fails_to_start, .timeout = 60)
{
	struct up_run u;
	up_run_init(&u, "up-fail");
	char *argv[] = {getenv("TANDEM_BIN"), "up", "--model",	   "/nonexistent/model",
			"--grpc-port",	      u.g,  "--http-port", u.h,
			"--worker-port",      u.w,  NULL};
	pid_t up = spawn_up(argv, u.out);
	int rc = wait_ms(up, 30000);
	cr_assert_eq(rc, 1, "tandem up fails (%d)", rc);
	cr_assert(th_file_has(u.out, "coordinator exited"), "says which process failed");
	cr_assert(!port_open(u.base + 2));
	th_rmdir(u.dir);
}
