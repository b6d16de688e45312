/* A throwaway PostgreSQL server for unit tests: initdb into a temporary
 * folder, start it on a free 127.0.0.1 port, stop it by its data folder.
 * As root, the server runs as the `postgres` user (runuser). Waits are on
 * conditions with a deadline, never fixed sleeps. */
#ifndef PG_HARNESS_H
#define PG_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

struct pg_server {
	char dir[400];          /* the data folder */
	int port;
	bool running;
};

static char pgh_bin[512];
static char pgh_root[256];  /* the temporary folder holding every server */

static long long pgh_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls cond every few ms until it holds or timeout_ms passed. */
static bool pgh_wait(bool (*cond)(void *), void *ctx, int timeout_ms)
{
	long long until = pgh_now_ms() + timeout_ms;
	struct timespec nap = {0, 5 * 1000000L};

	for(;;){
		if(cond(ctx)) return true;
		if(pgh_now_ms() > until) return false;
		nanosleep(&nap, NULL);
	}
}

/* Runs argv (a PostgreSQL program from pgh_bin), as postgres when root.
 * Output goes to <root>/cmd.log. Returns the exit status. */
static int pgh_run(const char *const *argv)
{
	const char *full[32];
	char prog[640], logp[300];
	int n = 0, i, status, fd;
	pid_t pid;

	if(geteuid() == 0){
		full[n++] = "runuser";
		full[n++] = "-u";
		full[n++] = "postgres";
		full[n++] = "--";
	}
	snprintf(prog, sizeof(prog), "%s/%s", pgh_bin, argv[0]);
	full[n++] = prog;
	for(i = 1; argv[i] && n < 31; i++) full[n++] = argv[i];
	full[n] = NULL;
	snprintf(logp, sizeof(logp), "%s/cmd.log", pgh_root);
	pid = fork();
	if(pid == 0){
		fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0666);
		if(fd >= 0){
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp(full[0], (char *const *)full);
		_exit(127);
	}
	if(pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int pgh_free_port(void)
{
	struct sockaddr_in a = {0};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0){
		port = ntohs(a.sin_port);
	}
	if(fd >= 0) close(fd);
	return port;
}

static void pgh_chown(const char *path)
{
	struct passwd *pw;

	if(geteuid() != 0) return;
	pw = getpwnam("postgres");
	if(pw && chown(path, pw->pw_uid, pw->pw_gid) != 0) perror(path);
}

static bool pgh_ping(void *ctx)
{
	struct pg_server *s = ctx;
	char ci[128];

	snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=2", s->port);
	return PQping(ci) == PQPING_OK;
}

/* The folder that holds the servers, and where the programs are. */
static bool pgh_setup(void)
{
	const char *bin = getenv("IM_PG_BIN");
	char probe[600];

	snprintf(pgh_bin, sizeof(pgh_bin), "%s", bin && bin[0] ? bin : "/usr/lib/postgresql/15/bin");
	snprintf(probe, sizeof(probe), "%s/pg_ctl", pgh_bin);
	if(access(probe, X_OK) != 0) return false;
	snprintf(pgh_root, sizeof(pgh_root), "%s/im-pg-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if(mkdtemp(pgh_root) == NULL) return false;
	chmod(pgh_root, 0755);
	pgh_chown(pgh_root);
	return true;
}

static bool pgh_start(struct pg_server *s)
{
	char opts[512], logf[420];
	const char *start[] = {"pg_ctl", "-D", s->dir, "-o", opts, "-l", logf, "-w", "-t", "60", "start", NULL};
	int tries;

	snprintf(logf, sizeof(logf), "%s.log", s->dir);
	for(tries = 0; tries < 5; tries++){
		if(s->port == 0) s->port = pgh_free_port();
		snprintf(opts, sizeof(opts), "-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=40", s->port, pgh_root);
		if(pgh_run(start) == 0 && pgh_wait(pgh_ping, s, 30000)){
			s->running = true;
			return true;
		}
		s->port = 0; /* taken meanwhile: another one */
	}
	return false;
}

/* A new primary in <root>/<name>. */
static bool pgh_init(struct pg_server *s, const char *name)
{
	const char *initdb[] = {"initdb", "-D", s->dir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", NULL};

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "%s/%s", pgh_root, name);
	return pgh_run(initdb) == 0 && pgh_start(s);
}

/* A streaming standby of primary in <root>/<name>. */
static __attribute__((unused)) bool pgh_standby(struct pg_server *s, const struct pg_server *primary, const char *name)
{
	char port[16];
	const char *bb[] = {"pg_basebackup", "-D", s->dir, "-R", "-X", "stream", "-h", "127.0.0.1", "-p", port,
		"-U", "postgres", "-c", "fast", "--no-sync", NULL};

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "%s/%s", pgh_root, name);
	snprintf(port, sizeof(port), "%d", primary->port);
	return pgh_run(bb) == 0 && pgh_start(s);
}

static void pgh_stop(struct pg_server *s, const char *mode)
{
	const char *stop[] = {"pg_ctl", "-D", s->dir, "-m", mode, "-w", "-t", "60", "stop", NULL};

	if(!s->running) return;
	pgh_run(stop);
	s->running = false;
}

static __attribute__((unused)) bool pgh_promote(struct pg_server *s)
{
	const char *promote[] = {"pg_ctl", "-D", s->dir, "-w", "-t", "60", "promote", NULL};

	return pgh_run(promote) == 0;
}

static void pgh_remove_root(void)
{
	char cmd[400];

	if(pgh_root[0] == '\0' || getenv("IM_PG_KEEP")) return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", pgh_root);
	if(system(cmd) != 0) fprintf(stderr, "could not remove %s\n", pgh_root);
}

/* "postgresql://postgres@127.0.0.1:PORT/postgres" */
static void pgh_uri(const struct pg_server *s, char *out, size_t cap)
{
	snprintf(out, cap, "postgresql://postgres@127.0.0.1:%d/postgres", s->port);
}

#endif
