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

static bool file_has(const char *path, const char *needle)
{
	char *text;
	size_t len;
	struct cm_err err = {0};
	if (cm_file_read(path, &text, &len, &err) < 0)
		return false;
	bool yes = strstr(text, needle) != NULL;
	free(text);
	return yes;
}

Test(up, up_then_think_then_ctrl_c, .timeout = 240)
{
	char dir[1024], out[1200], in[1200], cmd[4000];
	th_tmpdir(dir, sizeof(dir), "up");
	snprintf(out, sizeof(out), "%s/up.out", dir);
	snprintf(in, sizeof(in), "%s/input.txt", dir);
	FILE *f = fopen(in, "w");
	fputs("The train leaves at nine. It takes two hours. When does it arrive?\n", f);
	fclose(f);
	int base = 20000 + (getpid() % 10000) * 3;
	char g[16], h[16], w[16];
	snprintf(g, sizeof(g), "%d", base);
	snprintf(h, sizeof(h), "%d", base + 1);
	snprintf(w, sizeof(w), "%d", base + 2);
	char *argv[] = {getenv("TANDEM_BIN"), "up", "--cache-dir", dir, "--workers",	 "2",
			"--grpc-port",	      g,    "--http-port", h,	"--worker-port", w,
			"--threads",	      "1",  NULL};
	pid_t up = spawn_up(argv, out);
	for (int i = 0; i < 1200 && !file_has(out, "Tandem is up"); i++) {
		cr_assert_eq(wait_ms(up, 100), -1, "tandem up exited early");
	}
	cr_assert(file_has(out, "Tandem is up"), "no start-up line");
	cr_assert(file_has(out, "writing the default model"), "the default model was generated");
	char want[64];
	snprintf(want, sizeof(want), "gRPC     127.0.0.1:%d", base);
	cr_assert(file_has(out, want), "prints where to connect");

	snprintf(cmd, sizeof(cmd),
		 "'%s' think --addr 127.0.0.1:%d --file '%s' --rate 400 --think-max-tokens 24 "
		 "--unit-budget 4 --final-budget 8 > '%s/think.out' 2>&1",
		 getenv("TANDEM_BIN"), base, in, dir);
	cr_assert_eq(th_sh(cmd), 0, "tandem think failed");
	snprintf(cmd, sizeof(cmd), "%s/think.out", dir);
	cr_assert(file_has(cmd, "finish: "), "latency summary");
	cr_assert(file_has(cmd, "input tokens waited before the first thought: "));
	cr_assert(file_has(cmd, "time to first token: "));

	/* a second run of batch mode, reading stdin */
	snprintf(cmd, sizeof(cmd),
		 "'%s' think --addr 127.0.0.1:%d --mode batch --rate 0 --think-max-tokens 8 - "
		 "< '%s' > /dev/null 2>&1",
		 getenv("TANDEM_BIN"), base, in);
	cr_assert_eq(th_sh(cmd), 0, "tandem think (batch, stdin) failed");

	kill(up, SIGINT);
	cr_assert_eq(wait_ms(up, 20000), 0, "tandem up stops cleanly on Ctrl-C");
	cr_assert(!port_open(base), "the coordinator is gone");
	th_rmdir(dir);
}

/* The split layout (docs/disaggregation.md) through the same user path. */
Test(up, encode_and_decode_workers_then_think, .timeout = 240)
{
	char dir[1024], out[1200], in[1200], cmd[4000];
	th_tmpdir(dir, sizeof(dir), "up-split");
	snprintf(out, sizeof(out), "%s/up.out", dir);
	snprintf(in, sizeof(in), "%s/input.txt", dir);
	FILE *f = fopen(in, "w");
	fputs("The train leaves at nine. It takes two hours. When does it arrive?\n", f);
	fclose(f);
	int base = 20000 + (getpid() % 10000) * 3;
	char g[16], h[16], w[16];
	snprintf(g, sizeof(g), "%d", base);
	snprintf(h, sizeof(h), "%d", base + 1);
	snprintf(w, sizeof(w), "%d", base + 2);
	char *argv[] = {getenv("TANDEM_BIN"), "up",	       "--cache-dir",	 dir,
			"--encode-workers",   "1",	       "--decode-workers", "1",
			"--grpc-port",	      g,	       "--http-port",	 h,
			"--worker-port",      w,	       NULL};
	pid_t up = spawn_up(argv, out);
	for (int i = 0; i < 1200 && !file_has(out, "Tandem is up"); i++)
		cr_assert_eq(wait_ms(up, 100), -1, "tandem up exited early");
	cr_assert(file_has(out, "1 encode + 1 decode workers"), "the split layout is up");
	snprintf(cmd, sizeof(cmd),
		 "'%s' think --addr 127.0.0.1:%d --file '%s' --rate 400 --think-max-tokens 24 "
		 "--unit-budget 4 --final-budget 8 > '%s/think.out' 2>&1",
		 getenv("TANDEM_BIN"), base, in, dir);
	cr_assert_eq(th_sh(cmd), 0, "tandem think failed");
	snprintf(cmd, sizeof(cmd), "%s/think.out", dir);
	cr_assert(file_has(cmd, "finish: "), "latency summary");
	kill(up, SIGINT);
	cr_assert_eq(wait_ms(up, 20000), 0, "tandem up stops cleanly on Ctrl-C");
	th_rmdir(dir);
}

Test(up, stops_everything_when_a_child_fails_to_start, .timeout = 60)
{
	char dir[1024], out[1200];
	th_tmpdir(dir, sizeof(dir), "up-fail");
	snprintf(out, sizeof(out), "%s/up.out", dir);
	int base = 20000 + (getpid() % 10000) * 3;
	char g[16], h[16], w[16];
	snprintf(g, sizeof(g), "%d", base);
	snprintf(h, sizeof(h), "%d", base + 1);
	snprintf(w, sizeof(w), "%d", base + 2);
	char *argv[] = {getenv("TANDEM_BIN"), "up", "--model",	   "/nonexistent/model",
			"--grpc-port",	      g,    "--http-port", h,
			"--worker-port",      w,    NULL};
	pid_t up = spawn_up(argv, out);
	int rc = wait_ms(up, 30000);
	cr_assert_eq(rc, 1, "tandem up fails (%d)", rc);
	cr_assert(file_has(out, "coordinator exited"), "says which process failed");
	cr_assert(!port_open(base + 2));
	th_rmdir(dir);
}
