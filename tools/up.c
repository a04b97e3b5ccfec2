/* tandem up: a local cluster in one command. Starts `tandem serve` and N
 * `tandem worker` processes (children of this one) on a model folder (by default
 * the embedded tiny model, generated into the cache on first use), waits until
 * every worker is ready, prints where to connect, and stops them all on Ctrl-C
 * or when one of them exits. With --encode-workers and --decode-workers it
 * starts the split layout (docs/disaggregation.md), dividing the cores. */
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

/* GET path on the coordinator's HTTP plane into buf[cap] (NUL-terminated);
 * the bytes read, or -1. */
static ssize_t http_get(const char *host, int port, const char *path, char *buf, size_t cap)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	ssize_t len = -1;
	char req[128];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
	if (inet_pton(AF_INET, host, &sa.sin_addr) == 1 &&
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && write(fd, req, (size_t)n) == n) {
		ssize_t r;
		len = 0;
		while ((size_t)len < cap - 1 && (r = read(fd, buf + len, cap - 1 - (size_t)len)) > 0)
			len += r;
		buf[len] = 0;
	}
	close(fd);
	return len;
}

/* True once every worker started is registered with its model loaded
 * (tandem_workers_ready on /metrics) and the coordinator is ready. */
static bool ready(const char *host, int port, int want)
{
	static const char key[] = "\ntandem_workers_ready{";
	size_t cap = (size_t)1 << 20;
	char *buf = malloc(cap);
	bool ok = false;
	if (buf && http_get(host, port, "/readyz", buf, cap) > 12 && !strncmp(buf + 9, "200", 3) &&
	    http_get(host, port, "/metrics", buf, cap) > 0) {
		const char *p = strstr(buf, key);
		p = p ? strchr(p + 1, '}') : NULL;
		ok = p && atoi(p + 1) >= want;
	}
	free(buf);
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

static bool split(const struct tandem_opts *o)
{
	return o->encode_workers > 0 || o->decode_workers > 0;
}

static int n_workers(const struct tandem_opts *o)
{
	return split(o) ? (int)(o->encode_workers + o->decode_workers) : (int)o->workers;
}

/* Starts the workers of one role; split layouts divide the cores among all. */
static void start_workers(struct up *u, const char *coord, const char *role, int n)
{
	const struct tandem_opts *o = u->o;
	char threads[16], kv[300];
	int t = (int)o->threads;
	if (!t && split(o)) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);
		t = (int)CM_MAX(1, cpus / n_workers(o));
	}
	snprintf(threads, sizeof(threads), "%d", t);
	snprintf(kv, sizeof(kv), "tcp://%s:0", o->host);
	for (int i = 0; i < n; i++) {
		char *worker[] = {u->exe,
				  "worker",
				  "--coordinator",
				  (char *)coord,
				  "--threads",
				  threads,
				  "--role",
				  (char *)role,
				  "--kv-listen",
				  kv,
				  "--log-level",
				  (char *)o->log_level,
				  "--activations",
				  (char *)o->activations,
				  "--quantize",
				  (char *)o->quantize,
				  o->mmap_weights ? "--mmap" : NULL,
				  NULL};
		spawn(u, worker);
	}
}

static void start_all(struct up *u)
{
	const struct tandem_opts *o = u->o;
	char g[16], h[16], w[16], coord[300];
	snprintf(g, sizeof(g), "%d", (int)o->grpc_port);
	snprintf(h, sizeof(h), "%d", (int)o->http_port);
	snprintf(w, sizeof(w), "%d", (int)o->worker_port);
	snprintf(coord, sizeof(coord), "tcp://%s:%d", o->host, (int)o->worker_port);
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
	if (split(o)) {
		start_workers(u, coord, "encode", (int)o->encode_workers);
		start_workers(u, coord, "decode", (int)o->decode_workers);
	} else {
		start_workers(u, coord, "both", (int)o->workers);
	}
}

static void print_up(struct up *u)
{
	const struct tandem_opts *o = u->o;
	char layout[96];
	if (split(o))
		snprintf(layout, sizeof(layout), "%d encode + %d decode workers",
			 (int)o->encode_workers, (int)o->decode_workers);
	else
		snprintf(layout, sizeof(layout), "%d worker(s)", (int)o->workers);
	printf("Tandem is up: model %s, %s\n"
	       "  gRPC     %s:%d\n"
	       "  HTTP     http://%s:%d  (/healthz /readyz /metrics)\n"
	       "Try:  tandem think --addr %s:%d --file FILE     Ctrl-C stops everything.\n",
	       u->model, layout, o->host, (int)o->grpc_port, o->host, (int)o->http_port, o->host,
	       (int)o->grpc_port);
	fflush(stdout);
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
		if (!up && ready(o->host, (int)o->http_port, n_workers(o))) {
			up = true;
			print_up(u);
		}
		if (!up && cm_time_us() > deadline) {
			fprintf(stderr,
				"tandem up: workers not ready after %d s; stopping everything\n",
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
	if (split(o) && (o->encode_workers < 1 || o->decode_workers < 1)) {
		fprintf(stderr, "tandem up: the split layout needs --encode-workers and "
				"--decode-workers of 1 or more\n");
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
