/*
 * imchat's parts shared by its files: imchat.c (the options, the one-shot
 * commands, listen, main) and imchat_chat.c (the interactive chat).
 */
#ifndef IMCHAT_H
#define IMCHAT_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <mosquitto-im/client.h>

#define IM_NAME_MAX 64                 /* PROTOCOL.md 1 */
#define IM_TL_MAX (IM_NAME_MAX + 2)    /* u/<name>, g/<name> */

struct imchat_opt {
	const char *user, *password, *host, *cafile, *client_id, *state, *group, *cmid;
	int port;
	int reply_ms;      /* how long a request may wait for the plugin's reply */
	int retry_s;       /* send: keep trying to connect this long (0: fail at once) */
	long max_msgs;     /* listen -n */
	int idle_s;        /* listen -t */
	long last_n;       /* history --last */
	long limit;        /* conversations --limit */
	long long after;   /* history --after */
	int verbose;
};
extern struct imchat_opt opt;

/* SIGINT, SIGTERM: on_signal sets g_stop. */
extern volatile sig_atomic_t g_stop;
void on_signal(int sig);

/* "imchat: ..." on stderr, exit 1. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
int64_t now_ms(void);

/* Local time of ms since the epoch (0: now): HH:MM:SS, with the date before it. */
void put_time(FILE *out, int64_t ms, bool date);
void print_time(int64_t ms, bool date);
/* A body on one line: control characters shown as '?'. */
void put_body(FILE *out, const struct mim_message *h);
/* A line of the conversation list (imchat conversations). */
void print_conv(const struct mim_conversation *c);

/* Where to send: "-g GROUP" (group), "u/USER", "g/GROUP" or a bare user
 * name. Fills tl and returns NULL, or returns what is wrong (static). */
const char *parse_target(const char *arg, const char *group, char tl[IM_TL_MAX + 1]);

/* The state file of a device of this user on this machine: -s, else
 * ~/.imchat/USER@HOST:PORT<kind>.state (static storage). */
char *state_path(const char *kind);

/* The options every client gets (host, login, TLS, errors to stderr). */
void base_options(struct mim_options *o);
/* Connected (catching up or caught up). */
bool online(const struct mim_client *c);
/* A device of this user on this machine (client id "imchat-USER@HOST"
 * plus suffix, the state file ~/.imchat/USER@HOST:PORT<suffix>.state, or
 * -i and -s), connected; idbuf holds the client id. Dies on failure. */
struct mim_client *device(struct mim_options *o, const char *suffix, char *idbuf, size_t cap);
/* Die saying the plugin did not answer on `where`, or that the login was refused. */
void no_plugin(const char *where) __attribute__((noreturn));
void login_refused(void) __attribute__((noreturn));

/* imchat with no command (imchat_chat.c). */
int cmd_chat(void);

#endif
