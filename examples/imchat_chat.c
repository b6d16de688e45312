/*
 * imchat with no command: a chat on the client library (clients/c).
 *
 * It prints the conversation list, reads lines (with libedit on a
 * terminal, plain lines from a pipe), and runs one device meanwhile.
 * /open picks the conversation a typed line is sent to; see below for
 * what is shown where and what is marked read.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <mosquitto-im/client.h>

#include "im_print.h"
#include "imchat.h"

/* ---- chat: the interactive mode ----
 *
 * One device of its own ("imchat-USER@HOST-chat", its own state file), so
 * that it runs beside a `listen`. It follows the inbox and the groups;
 * each message belongs to a conversation: u/<peer> (a direct message to
 * or from peer, in my inbox u/<me>) or g/<group>. The open conversation's
 * messages are printed and marked read; the others' are printed with the
 * conversation in brackets once caught up, and kept (the latest
 * CONV_KEEP) to be shown again, and read, when it is opened. The read
 * mark of the inbox stops below the first message of another
 * conversation not shown yet: a mark says "read up to here", for every
 * peer. */

#define CONV_KEEP 20       /* lines kept per conversation until it is opened */
#define MINE_KEEP 64       /* my latest messages per conversation, for read marks */
#define CONVS_SHOWN 20     /* the conversation list's length */
#define TYPING_EVERY_MS 4000   /* "typing" again while the user types (PROTOCOL.md 11.4: every few seconds) */
#define TYPING_IDLE_MS 5000    /* no key for this long: "stopped" */

struct conv {
	char tl[IM_TL_MAX + 1];         /* u/<peer>, g/<group>: where I send */
	char *lines[CONV_KEEP];         /* a ring of lines not shown in the open conversation */
	size_t n_lines, next;
	unsigned long dropped;          /* older lines not kept */
	uint64_t first_unseen;          /* the seq (in u/<me> or the group) of the first message to me not shown; 0 none */
	struct { uint64_t seq, peer_seq; } mine[MINE_KEEP];   /* inbox seq, seq in u/<peer> */
	size_t n_mine, next_mine;
};

static struct {
	struct mim_client *c;
	char me[IM_TL_MAX + 1];
	struct conv **convs;
	size_t n_convs;
	struct conv *open;
	bool listed, caught_up, quit;
	bool reconnected;               /* lost the connection once: marks learned on connect are news */
	bool tty;                       /* a terminal: libedit edits the line, typing is signalled */
	bool in_line;                   /* in libedit's line callback: nothing drawn there */
	bool in_line_done;              /* a line came: the handler is installed again */
	char prompt[IM_TL_MAX + 4];
	bool typing;                    /* "typing" signalled in typing_tl, "stopped" not yet */
	char typing_tl[IM_TL_MAX + 1];
	int64_t typing_sent, last_key;
	size_t line_keys;               /* keys in the line being typed (typing_key) */
	bool command;                   /* it starts with '/' */
	int esc;                        /* keys of an escape sequence still to come */
	bool convs_out;                 /* a conversation list asked, not answered */
	int64_t convs_asked;
	char inbuf[8192];
	size_t inlen;
} chat;

static struct conv *conv_get(const char *tl)
{
	struct conv *v, **grown;
	size_t i;

	for(i = 0; i < chat.n_convs; i++){
		if(!strcmp(chat.convs[i]->tl, tl)) return chat.convs[i];
	}
	v = calloc(1, sizeof(*v));
	grown = realloc(chat.convs, (chat.n_convs + 1) * sizeof(*grown));
	if(v == NULL || grown == NULL) die("out of memory");
	chat.convs = grown;
	snprintf(v->tl, sizeof(v->tl), "%s", tl);
	chat.convs[chat.n_convs++] = v;
	return v;
}

/* The conversation of a message or an event's timeline: a group's is the
 * group; in my inbox, my copy's is its addressee, another's its sender. */
static struct conv *conv_of(const struct mim_message *m)
{
	char tl[IM_TL_MAX + 1];

	if(m->timeline && !strncmp(m->timeline, "g/", 2)) return conv_get(m->timeline);
	if(m->outgoing && m->to) return conv_get(m->to);
	snprintf(tl, sizeof(tl), "u/%s", m->sender ? m->sender : "?");
	return conv_get(tl);
}

/* On a terminal, lines printed while the user types go above the line
 * being edited: the line is cleared, the output printed, and libedit
 * draws the prompt and what was typed so far again. */
static void out_begin(void)
{
	if(chat.tty) fputs("\r\033[K", stdout);
}

static void out_end(void)
{
	fflush(stdout);
	if(chat.tty && !chat.in_line) rl_forced_update_display();
}

static void chat_prompt(void)
{
	if(!chat.tty) return;
	snprintf(chat.prompt, sizeof(chat.prompt), "%s> ", chat.open ? chat.open->tl : "");
	if(!chat.in_line) rl_set_prompt(chat.prompt);
}

/* Typing (PROTOCOL.md 11.4), on a terminal only: a key in the open
 * conversation says "typing" (again every few seconds while keys come);
 * a line sent, another conversation opened or a pause says "stopped". */
static void typing_stop(void)
{
	if(!chat.typing) return;
	chat.typing = false;
	mim_typing(chat.c, chat.typing_tl, false, NULL, NULL);
}

/* Keys of a message, not of a command ("/open ...") nor of a cursor key
 * (ESC [ A): a line's first key and its length, roughly (the keys that
 * move the cursor inside the line are not followed). */
static bool message_key(int key)
{
	if(chat.esc){
		chat.esc--;
		return false;
	}
	if(key == 0x1b){
		chat.esc = 2;
		return false;
	}
	if(key == '\n' || key == '\r'){
		chat.line_keys = 0;
		chat.command = false;
		return false;
	}
	if(key == 0x7f || key == 0x08){
		if(chat.line_keys && --chat.line_keys == 0) chat.command = false;
		return false;
	}
	if(key < 0x20) return false;
	if(chat.line_keys++ == 0) chat.command = key == '/';
	return !chat.command;
}

static void typing_key(int key)
{
	int64_t now = now_ms();

	if(!message_key(key) || chat.open == NULL) return;
	chat.last_key = now;
	if(chat.typing && !strcmp(chat.typing_tl, chat.open->tl) && now - chat.typing_sent < TYPING_EVERY_MS) return;
	typing_stop();
	if(mim_typing(chat.c, chat.open->tl, true, NULL, NULL) != MIM_OK) return;
	chat.typing = true;
	chat.typing_sent = now;
	snprintf(chat.typing_tl, sizeof(chat.typing_tl), "%s", chat.open->tl);
}

/* libedit reads each key through this: it sees the keys first. */
static int chat_getc(FILE *f)
{
	unsigned char b;
	ssize_t n;

	(void)f;
	do{
		n = read(0, &b, 1);
	}while(n < 0 && errno == EINTR);
	if(n != 1) return EOF;
	typing_key(b);
	return b;
}

/* The read marks this device may move: a group that is open, up to what
 * was delivered; the inbox up to the first message not shown. */
/* How far timeline tl (u/<me> or g/<group>) was shown, given that `last`
 * was delivered: below the first message to me not shown there (in my
 * inbox, of any conversation). */
static uint64_t shown_upto(const char *tl, uint64_t last)
{
	uint64_t first = 0;
	size_t i;

	for(i = 0; i < chat.n_convs; i++){
		const struct conv *v = chat.convs[i];
		bool here = tl[0] == 'u' ? v->tl[0] == 'u' : !strcmp(v->tl, tl);

		if(here && v->first_unseen && (first == 0 || v->first_unseen < first)) first = v->first_unseen;
	}
	return first && first - 1 < last ? first - 1 : last;
}

/* The read marks (acks) follow what was shown: my inbox, and each group. */
static void chat_ack(void)
{
	const char *tl;
	uint64_t upto;
	size_t i;

	for(i = 0; (tl = mim_timeline(chat.c, i)) != NULL; i++){
		upto = shown_upto(tl, mim_last(chat.c, tl));
		if(upto) mim_ack(chat.c, tl, upto);
	}
}

/* The state file keeps, per timeline, what was shown rather than what was
 * delivered (PROTOCOL.md 7: `last` is persisted with the messages shown):
 * a message kept for a conversation never opened comes again on the next
 * start, to be shown there, instead of being taken as read. */
static struct mim_persist chat_file;

static int chat_load(void *ctx, struct mim_loader *l)
{
	(void)ctx;
	return chat_file.load(chat_file.ctx, l);
}

static int chat_save(void *ctx, const struct mim_saved *s)
{
	struct mim_saved shown = *s;
	struct mim_cursor *cu = calloc(s->n_cursors ? s->n_cursors : 1, sizeof(*cu));
	size_t i;
	int rc;

	(void)ctx;
	if(cu == NULL) return MIM_ERR_NOMEM;
	for(i = 0; i < s->n_cursors; i++){
		cu[i] = s->cursors[i];
		cu[i].last = shown_upto(cu[i].timeline, cu[i].last);
	}
	shown.cursors = cu;
	rc = chat_file.save(chat_file.ctx, &shown);
	free(cu);
	return rc;
}

static void chat_close(void *ctx)
{
	(void)ctx;
	if(chat_file.close) chat_file.close(chat_file.ctx);
}

/* "HH:MM:SS #12 bob: text", "HH:MM:SS #13 alice (edit of #12): text" */
static char *format_msg(const struct mim_message *m)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if(f == NULL) die("out of memory");
	put_time(f, m->ts_ms, false);
	fprintf(f, " #%" PRIu64 " %s", m->seq, m->sender ? m->sender : "?");
	if(m->flags & MIM_FLAG_SYSTEM) fputs(" (system)", f);
	im_fprint_change(f, m->flags, m->ref_seq);
	fputs(": ", f);
	put_body(f, m);
	if(fclose(f) != 0 || buf == NULL) die("out of memory");
	return buf;
}

static void keep_line(struct conv *v, char *line)
{
	if(v->n_lines < CONV_KEEP){
		v->lines[(v->next + v->n_lines++) % CONV_KEEP] = line;
		return;
	}
	free(v->lines[v->next]);
	v->lines[v->next] = line;
	v->next = (v->next + 1) % CONV_KEEP;
	v->dropped++;
}

static void chat_message(void *ud, const struct mim_message *m)
{
	struct conv *v = conv_of(m);
	char *line = format_msg(m);
	bool inbox = m->timeline && !strcmp(m->timeline, chat.me);

	(void)ud;
	if(inbox && m->outgoing && m->peer_seq){
		v->mine[v->next_mine].seq = m->seq;
		v->mine[v->next_mine].peer_seq = m->peer_seq;
		v->next_mine = (v->next_mine + 1) % MINE_KEEP;
		if(v->n_mine < MINE_KEEP) v->n_mine++;
	}
	if(v == chat.open){
		out_begin();
		printf("%s\n", line);
		out_end();
		free(line);
		chat_ack();
		return;
	}
	/* not shown in its conversation: kept for /open, and not read */
	if(!m->outgoing && v->first_unseen == 0) v->first_unseen = m->seq;
	if(chat.caught_up){
		out_begin();
		printf("[%s] %s\n", v->tl, line);
		out_end();
	}
	keep_line(v, line);
}

static void chat_change(void *ud, const struct mim_message *m, const struct mim_message *orig)
{
	(void)orig;
	chat_message(ud, m);
}

/* A line about a conversation: bare in the open one, else "[u/bob] ...". */
static void chat_event(const char *tl, int64_t ts_ms, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void chat_event(const char *tl, int64_t ts_ms, const char *fmt, ...)
{
	va_list ap;

	out_begin();
	if(!chat.open || strcmp(chat.open->tl, tl)) printf("[%s] ", tl);
	print_time(ts_ms, false);
	putchar(' ');
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	out_end();
}

/* bob read my messages: in a group, up to the group's seq; in a direct
 * conversation up to a seq of his inbox, shown as my own copy's seq (the
 * one printed beside my message) when this device saw it. */
static void chat_read(void *ud, const struct mim_read *r)
{
	struct conv *v;
	uint64_t mine = 0;
	size_t i;

	(void)ud;
	if(r->user == NULL || !strcmp(r->user, opt.user)) return;
	/* learned on the first connect: the conversation list says it */
	if(r->ts_ms == 0 && !chat.reconnected) return;
	v = conv_get(r->timeline);
	if(r->timeline[0] == 'g'){
		chat_event(v->tl, r->ts_ms, "%s read up to #%" PRIu64, r->user, r->seq);
		return;
	}
	for(i = 0; i < v->n_mine; i++){
		if(v->mine[i].peer_seq <= r->seq && v->mine[i].seq > mine) mine = v->mine[i].seq;
	}
	if(mine) chat_event(v->tl, r->ts_ms, "%s read up to #%" PRIu64, r->user, mine);
	else chat_event(v->tl, r->ts_ms, "%s read up to #%" PRIu64 " of %s", r->user, r->seq, r->timeline);
}

static void chat_typing(void *ud, const struct mim_typing *t)
{
	(void)ud;
	if(!strcmp(t->user, opt.user)) return;
	chat_event(conv_get(t->timeline)->tl, t->ts_ms, "%s %s", t->user, t->typing ? "is typing" : "stopped typing");
}

static void chat_membership(void *ud, const char *group, bool member, uint64_t seq)
{
	char tl[IM_TL_MAX + 1];

	(void)ud;
	(void)seq;
	if(!chat.caught_up) return;   /* the groups followed at start: the conversation list names them */
	snprintf(tl, sizeof(tl), "g/%s", group);
	chat_event(tl, 0, "-- %s g/%s --", member ? "you are a member of" : "you left", group);
}

static void chat_reset(void *ud, uint64_t old_id, uint64_t new_id)
{
	size_t i, j;

	(void)ud;
	(void)old_id;
	(void)new_id;
	for(i = 0; i < chat.n_convs; i++){
		struct conv *v = chat.convs[i];

		for(j = 0; j < v->n_lines; j++) free(v->lines[(v->next + j) % CONV_KEEP]);
		v->n_lines = v->next = v->n_mine = v->next_mine = 0;
		v->dropped = 0;
		v->first_unseen = 0;
	}
	out_begin();
	printf("-- the server's message store was replaced: starting over --\n");
	out_end();
}

static void on_convs_shown(void *ud, const struct mim_reply *r)
{
	size_t i;

	(void)ud;
	chat.convs_out = false;
	out_begin();
	if(r->status == MIM_ERR_TIMEOUT && !chat.listed) no_plugin("$CONTROL/im/v1/conversations");
	if(r->status != MIM_OK){
		printf("-- no conversation list: %s%s%s --\n", mim_strerror(r->status), r->reason ? ": " : "",
				r->reason ? r->reason : "");
	}else{
		printf("conversations:%s\n", r->n_conversations ? "" : " none yet");
		for(i = 0; i < r->n_conversations; i++){
			fputs("  ", stdout);
			print_conv(&r->conversations[i]);
		}
	}
	chat.listed = true;
	out_end();
}

static void ask_convs(void)
{
	int rc = mim_conversations(chat.c, CONVS_SHOWN, 0, NULL, on_convs_shown, NULL);

	if(rc != MIM_OK){
		out_begin();
		printf("-- no conversation list: %s --\n", mim_strerror(rc));
		out_end();
		chat.listed = true;
		return;
	}
	chat.convs_out = true;
	chat.convs_asked = now_ms();
}

static void chat_state(void *ud, enum mim_state s)
{
	(void)ud;
	if(s == MIM_STATE_ONLINE && !chat.caught_up){
		chat.caught_up = true;
		return;
	}
	if(s == MIM_STATE_OFFLINE) chat.reconnected = true;
	if(s == MIM_STATE_OFFLINE && chat.caught_up){
		out_begin();
		printf("-- offline: connecting again --\n");
		out_end();
	}
}

static void chat_open(const char *arg)
{
	char tl[IM_TL_MAX + 1], group[IM_NAME_MAX + 2];
	const char *why;
	struct conv *v;
	size_t i;

	/* "/open bob", "/open u/bob", "/open g/team", "/open -g team" */
	if(!strncmp(arg, "-g ", 3)){
		snprintf(group, sizeof(group), "%s", arg + 3);
		why = parse_target(NULL, group, tl);
	}else{
		why = parse_target(arg, NULL, tl);
	}
	out_begin();
	if(why){
		printf("-- %s: /open USER, /open g/GROUP --\n", why);
		out_end();
		return;
	}
	if(chat.open == NULL || strcmp(chat.open->tl, tl)) typing_stop();
	v = chat.open = conv_get(tl);
	chat_prompt();
	printf("-- %s --\n", v->tl);
	if(v->dropped) printf("(%lu earlier not shown)\n", v->dropped);
	for(i = 0; i < v->n_lines; i++){
		char **l = &v->lines[(v->next + i) % CONV_KEEP];

		printf("%s\n", *l);
		free(*l);
		*l = NULL;
	}
	v->n_lines = v->next = 0;
	v->dropped = 0;
	v->first_unseen = 0;
	out_end();
	chat_ack();
}

static void on_chat_sent(void *ud, const struct mim_receipt *r)
{
	(void)ud;
	if(r->status == MIM_OK || r->status == MIM_ERR_CLOSED) return;   /* the stored message comes as a line */
	out_begin();
	printf("-- not sent to %s: %s%s%s --\n", r->timeline ? r->timeline : "?", mim_strerror(r->status),
			r->reason ? ": " : "", r->reason ? r->reason : "");
	out_end();
}

static void chat_help(void)
{
	out_begin();
	printf("/open USER | /open g/GROUP   talk there: what you type is sent, its messages are marked read\n"
			"/convs                       your conversations, latest first, with unread counts\n"
			"/quit                        leave (unsent messages go on the next start)\n"
			"//text                       send a line that starts with /\n");
	out_end();
}

static void chat_line(char *line)
{
	size_t n = strlen(line);
	int rc;

	while(n && (line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = '\0';
	if(n == 0) return;
	if(line[0] == '/' && line[1] != '/'){
		if(!strcmp(line, "/quit") || !strcmp(line, "/exit")) chat.quit = true;
		else if(!strcmp(line, "/help")) chat_help();
		else if(!strcmp(line, "/convs")) ask_convs();
		else if(!strncmp(line, "/open ", 6)) chat_open(line + 6);
		else{
			out_begin();
			printf("-- unknown command %s: /help --\n", line);
			out_end();
		}
		return;
	}
	if(line[0] == '/') line++;
	if(chat.open == NULL){
		out_begin();
		printf("-- no conversation open: /open USER or /open g/GROUP first --\n");
		out_end();
		return;
	}
	typing_stop();
	rc = mim_send(chat.c, chat.open->tl, line, strlen(line), NULL, on_chat_sent, NULL, NULL);
	if(rc != MIM_OK){
		out_begin();
		printf("-- not sent: %s --\n", mim_strerror(rc));
		out_end();
	}
}

/* Lines from stdin (a terminal, a pipe): false at its end. */
static bool chat_read_input(void)
{
	ssize_t got = read(0, chat.inbuf + chat.inlen, sizeof(chat.inbuf) - 1 - chat.inlen);
	char *start, *nl;

	if(got < 0) return errno == EINTR || errno == EAGAIN;
	if(got == 0){
		if(chat.inlen){
			chat.inbuf[chat.inlen] = '\0';
			chat_line(chat.inbuf);
			chat.inlen = 0;
		}
		return false;
	}
	chat.inlen += (size_t)got;
	chat.inbuf[chat.inlen] = '\0';
	start = chat.inbuf;
	while(!chat.quit && (nl = strchr(start, '\n')) != NULL){
		*nl = '\0';
		chat_line(start);
		start = nl + 1;
	}
	chat.inlen -= (size_t)(start - chat.inbuf);
	memmove(chat.inbuf, start, chat.inlen);
	if(chat.inlen == sizeof(chat.inbuf) - 1){    /* a line longer than the buffer: sent as it is */
		chat_line(chat.inbuf);
		chat.inlen = 0;
	}
	return true;
}

/* A line from libedit (NULL: the end of the input, Ctrl-D). */
static void on_edited_line(char *line)
{
	if(line == NULL){
		chat.quit = true;
		return;
	}
	if(*line) add_history(line);
	chat.in_line = true;
	chat_line(line);
	chat.in_line = false;
	chat.in_line_done = true;
	free(line);
}

int cmd_chat(void)
{
	struct mim_options o;
	struct mim_persist persist;
	char idbuf[160];
	bool input = true;
	int64_t until;
	size_t i;
	int rc = MIM_OK;

	chat.tty = isatty(0) && isatty(1);
	setvbuf(stdout, NULL, _IOLBF, 0);
	snprintf(chat.me, sizeof(chat.me), "u/%s", opt.user);
	base_options(&o);
	o.auto_ack = false;          /* what is shown in the open conversation: chat_ack */
	o.cb.on_message = chat_message;
	o.cb.on_edit = chat_change;
	o.cb.on_recall = chat_change;
	o.cb.on_read = chat_read;
	o.cb.on_typing = chat_typing;
	o.cb.on_membership = chat_membership;
	o.cb.on_reset = chat_reset;
	o.cb.on_state = chat_state;
	rc = mim_persist_file(&chat_file, state_path("-chat"), false);
	if(rc != MIM_OK) die("cannot use the state file %s: %s", state_path("-chat"), mim_strerror(rc));
	mim_persist_init(&persist);
	persist.load = chat_load;
	persist.save = chat_save;
	persist.close = chat_close;
	o.persist = &persist;
	chat.c = device(&o, "-chat", idbuf, sizeof(idbuf));
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	ask_convs();
	if(chat.tty){
		printf("-- %s on %s:%d; /help for commands --\n", opt.user, opt.host, opt.port);
		rl_getc_function = chat_getc;
		chat_prompt();
		rl_callback_handler_install(chat.prompt, on_edited_line);
	}
	while(!g_stop && !chat.quit){
		struct pollfd p[2] = {{0, POLLIN, 0}, {mim_socket(chat.c), POLLIN, 0}};

		/* the conversation list first: what is typed waits until it is shown */
		if(!input || !chat.listed) p[0].fd = -1;
		if(poll(p, p[1].fd >= 0 ? 2 : 1, 100) > 0 && (p[0].revents & (POLLIN | POLLHUP))){
			if(chat.tty){
				rl_callback_read_char();
				/* libedit (unlike readline) leaves the terminal line-buffered
				 * after a line: installing the handler again makes it read
				 * key by key, with the prompt (it may have changed) */
				if(chat.in_line_done){
					chat.in_line_done = false;
					rl_callback_handler_install(chat.prompt, on_edited_line);
				}
			}else{
				input = chat_read_input();
				if(!input) chat.quit = true;   /* the end of the input: leave as with /quit */
			}
		}
		if(chat.typing && now_ms() - chat.last_key > TYPING_IDLE_MS) typing_stop();
		rc = mim_loop(chat.c, 0);
		if(rc == MIM_ERR_LOGIN) login_refused();
		if(chat.convs_out && !chat.listed && now_ms() - chat.convs_asked > opt.reply_ms){
			no_plugin("$CONTROL/im/v1/conversations");
		}
	}
	if(chat.tty) rl_callback_handler_remove();
	typing_stop();
	/* what was typed goes out before we leave, if the broker is there */
	until = now_ms() + opt.reply_ms;
	while(mim_pending_count(chat.c) && online(chat.c) && now_ms() < until && !g_stop) mim_loop(chat.c, 50);
	if(chat.tty) putchar('\n');
	mim_destroy(chat.c);
	for(i = 0; i < chat.n_convs; i++){
		while(chat.convs[i]->n_lines){
			chat.convs[i]->n_lines--;
			free(chat.convs[i]->lines[(chat.convs[i]->next + chat.convs[i]->n_lines) % CONV_KEEP]);
		}
		free(chat.convs[i]);
	}
	free(chat.convs);
	return rc == MIM_OK ? 0 : 1;
}

