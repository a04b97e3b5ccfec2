/* tandem up: a local cluster in one command. Starts `tandem serve` and N
 * `tandem worker` processes (children of this one) on a model folder (by default
 * the embedded tiny model, generated into the cache on first use), waits until
 * a worker is ready, prints where to connect, and stops them all on Ctrl-C or
 * when one of them exits. */
#include "tools.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define UP_MAX_CHILDREN 65

struct up {
	const struct tandem_opts *o;
	char exe[PATH_MAX];
	char model[PATH_MAX];
	pid_t pid[UP_MAX_CHILDREN];
	int n;
	volatile sig_atomic_t *stop;
};

static pid_t spawn(struct up *u, char *const argv[])
{
	pid_t pid = fork();
	if (pid == 0) {
		execv(u->exe, argv);
		fprintf(stderr, "tandem up: cannot run %s: %s\n", u->exe, strerror(errno));
		_exit(127);
	}
	if (pid > 0)
		u->pid[u->n++] = pid;
	return pid;
}

/* "~/x" -> "$HOME/x" through the password database (no getenv outside options). */
static void expand_home(const char *in, char *out, size_t cap)
{
	if (in[0] == '~' && (in[1] == '/' || !in[1])) {
		struct passwd *pw = getpwuid(getuid());
		snprintf(out, cap, "%s%s", pw ? pw->pw_dir : "/tmp", in + 1);
	} else {
		snprintf(out, cap, "%s", in);
	}
}

static int wait_child(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* The model folder: --model, or the default one in the cache (written on first use). */
static int resolve_model(struct up *u)
{
	if (u->o->model) {
		snprintf(u->model, sizeof(u->model), "%s", u->o->model);
		return 0;
	}
	char cache[PATH_MAX - 16];
	expand_home(u->o->cache_dir, cache, sizeof(cache));
	snprintf(u->model, sizeof(u->model), "%s/tiny-s1", cache);
	char probe[PATH_MAX + 32];
	snprintf(probe, sizeof(probe), "%s/model.safetensors", u->model);
	struct stat st;
	if (stat(probe, &st) == 0)
		return 0;
	fprintf(stderr,
		"tandem up: writing the default model (Qwen3 tiny, random weights, "
		"seed 1) to %s ...\n",
		u->model);
	char *argv[] = {u->exe, "gen-model", "--variant", "tiny", "--seed",
			"1",	"--out",     u->model,	  NULL};
	pid_t pid = spawn(u, argv);
	u->n = 0;
	if (pid < 0 || wait_child(pid) != 0) {
		fprintf(stderr, "tandem up: writing the default model failed\n");
		return 1;
	}
	return 0;
}

/* GET /readyz on the coordinator's HTTP plane: true on 200. */
static bool ready(const char *host, int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return false;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	bool ok = false;
	if (inet_pton(AF_INET, host, &sa.sin_addr) == 1 &&
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		const char req[] = "GET /readyz HTTP/1.0\r\n\r\n";
		char buf[64] = {0};
		if (write(fd, req, sizeof(req) - 1) == (ssize_t)sizeof(req) - 1 &&
		    read(fd, buf, sizeof(buf) - 1) > 12)
			ok = !strncmp(buf + 9, "200", 3);
	}
	close(fd);
	return ok;
}

static void stop_all(struct up *u)
{
	for (int i = 0; i < u->n; i++)
		if (u->pid[i] > 0)
			kill(u->pid[i], SIGTERM);
	int64_t until = cm_time_us() + 5000000;
	for (int i = 0; i < u->n; i++) {
		while (u->pid[i] > 0) {
			int st;
			pid_t r = waitpid(u->pid[i], &st, WNOHANG);
			if (r == u->pid[i] || (r < 0 && errno != EINTR)) {
				u->pid[i] = 0;
			} else if (cm_time_us() > until) {
				kill(u->pid[i], SIGKILL);
				waitpid(u->pid[i], &st, 0);
				u->pid[i] = 0;
			} else {
				usleep(20000);
			}
		}
	}
}

/* Index of a child that exited, or -1. */
static int exited(struct up *u)
{
	for (int i = 0; i < u->n; i++) {
		int st;
		if (u->pid[i] > 0 && waitpid(u->pid[i], &st, WNOHANG) == u->pid[i]) {
			u->pid[i] = 0;
			return i;
		}
	}
	return -1;
}

static void start_all(struct up *u)
{
	const struct tandem_opts *o = u->o;
	char g[16], h[16], w[16], coord[300], threads[16];
	snprintf(g, sizeof(g), "%d", (int)o->grpc_port);
	snprintf(h, sizeof(h), "%d", (int)o->http_port);
	snprintf(w, sizeof(w), "%d", (int)o->worker_port);
	snprintf(coord, sizeof(coord), "tcp://%s:%d", o->host, (int)o->worker_port);
	snprintf(threads, sizeof(threads), "%d", (int)o->threads);
	char *serve[] = {u->exe,
			 "serve",
			 "--model",
			 u->model,
			 "--host",
			 (char *)o->host,
			 "--grpc-port",
			 g,
			 "--http-port",
			 h,
			 "--worker-port",
			 w,
			 "--log-level",
			 (char *)o->log_level,
			 NULL};
	spawn(u, serve);
	for (int i = 0; i < o->workers; i++) {
		char *worker[] = {u->exe,  "worker",	  "--coordinator",	coord, "--threads",
				  threads, "--log-level", (char *)o->log_level, NULL};
		spawn(u, worker);
	}
}

static int watch(struct up *u)
{
	const struct tandem_opts *o = u->o;
	int64_t deadline = cm_time_us() + (int64_t)o->start_timeout * 1000000;
	bool up = false;
	while (!*u->stop) {
		int i = exited(u);
		if (i >= 0) {
			fprintf(stderr, "tandem up: %s exited%s; stopping everything\n",
				i == 0 ? "the coordinator" : "a worker",
				up ? "" : " while starting");
			return 1;
		}
		if (!up && ready(o->host, (int)o->http_port)) {
			up = true;
			printf("Tandem is up: model %s, %d worker(s)\n"
			       "  gRPC     %s:%d\n"
			       "  HTTP     http://%s:%d  (/healthz /readyz /metrics)\n"
			       "Try:  tandem think --addr %s:%d --file FILE     Ctrl-C stops "
			       "everything.\n",
			       u->model, (int)o->workers, o->host, (int)o->grpc_port, o->host,
			       (int)o->http_port, o->host, (int)o->grpc_port);
			fflush(stdout);
		}
		if (!up && cm_time_us() > deadline) {
			fprintf(stderr,
				"tandem up: no worker ready after %d s; stopping everything\n",
				(int)o->start_timeout);
			return 1;
		}
		usleep(100000);
	}
	return 0;
}

int tool_up(const struct tandem_opts *o, int argc, char **argv)
{
	(void)argv;
	if (argc) {
		fprintf(stderr, "tandem up: takes no positional arguments\n");
		return 1;
	}
	struct up u = {.o = o};
	ssize_t n = readlink("/proc/self/exe", u.exe, sizeof(u.exe) - 1);
	if (n <= 0) {
		fprintf(stderr, "tandem up: cannot find this program's path\n");
		return 2;
	}
	u.exe[n] = 0;
	tool_signals_init(&u.stop);
	if (resolve_model(&u))
		return 1;
	start_all(&u);
	int rc = watch(&u);
	stop_all(&u);
	if (!rc)
		fprintf(stderr, "tandem up: stopped\n");
	return rc;
}
