#!/usr/bin/env bash
# The Debian package, end to end, on this machine (scripts/test.sh runs it
# after ctest; root only, since it installs the package):
#
#   build it (scripts/package.sh: mosquitto-im and the client library's
#   libmosquitto-im-client1 and libmosquitto-im-client-dev), lintian (no
#   errors, no warnings) on each, apt-get install them,
#   enable the conf.d snippet (a copy with '#' removed from its "#plugin"
#   lines) plus a listener on a free 127.0.0.1 port, start Debian's
#   `mosquitto -c /etc/mosquitto/mosquitto.conf` (it drops to user
#   mosquitto), bob subscribes, goes offline, alice writes to him with
#   mosquitto_pub, bob's mosquitto_sub gets the frame and /usr/bin/imcat
#   prints it; a program outside the tree is compiled against the installed
#   library with `pkg-config --cflags --libs mosquitto-im-client` (and
#   statically, --static) and sends alice's message to bob, who receives it
#   through the library; stop the broker by its PID, purge the packages, check that
#   nothing it installed and nothing this script started is left.
#
# It leaves a system mosquitto alone: if one is running (its pid file names
# a live process, or a process runs /etc/mosquitto/mosquitto.conf) the test
# is skipped, as it is when mosquitto-im is already installed. The broker
# it starts writes Debian's persistence file and log; the persistence file
# is put back as it was, the log removed if it was not there before (else
# it keeps the test broker's lines).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "package test: skipped (it installs the package: run as root)"
  exit 0
fi
# Installed, or removed with its conffile left: either way an admin's, and
# the purge at the end would delete their store and configuration.
status=$(dpkg-query -W -f='${db:Status-Status}' mosquitto-im 2>/dev/null || true)
if [ -n "$status" ] && [ "$status" != not-installed ]; then
  echo "package test: skipped (mosquitto-im is $status here; not touching it)"
  exit 0
fi
sys_pid=$(cat /run/mosquitto/mosquitto.pid 2>/dev/null || true)
if { [ -n "$sys_pid" ] && kill -0 "$sys_pid" 2>/dev/null; } ||
   pgrep -f -- '-c /etc/mosquitto/mosquitto.conf' >/dev/null; then
  echo "package test: skipped (a mosquitto with /etc/mosquitto/mosquitto.conf is running)"
  exit 0
fi

deadline=$((SECONDS + ${IM_PACKAGE_TEST_TIMEOUT:-120}))
plugin=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/mosquitto-im/mosquitto_im.so
snippet=/etc/mosquitto/conf.d/mosquitto-im.conf
testconf=/etc/mosquitto/conf.d/zz-mosquitto-im-package-test.conf
persist=/var/lib/mosquitto/mosquitto.db
syslog=/var/log/mosquitto/mosquitto.log
tmp=$(mktemp -d)
pids=()            # every process started in the background here
installed=0
made_run_dir=0
cp -p "$persist" "$tmp/persist.db" 2>/dev/null || true
had_log=0; [ -e "$syslog" ] && had_log=1

fail() { echo "package test: FAILED: $*" >&2; exit 1; }
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$testconf"
  [ "$installed" = 1 ] && dpkg --purge mosquitto-im libmosquitto-im-client-dev libmosquitto-im-client1 >/dev/null 2>&1
  if [ -f "$tmp/persist.db" ]; then cp -p "$tmp/persist.db" "$persist"; else rm -f "$persist"; fi
  [ "$had_log" = 1 ] || rm -f "$syslog"
  if [ "$made_run_dir" = 1 ]; then rm -f /run/mosquitto/mosquitto.pid; rmdir /run/mosquitto 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
# until CMD...: runs CMD every 0.1 s until it succeeds; fails at the deadline.
until_ok() {
  local what=$1; shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}

# 1. Build and check the package.
deb=$(scripts/package.sh | tail -n 1)
[ -f "$deb" ] || fail "scripts/package.sh made no .deb"
deb=$(realpath "$deb")
version=$(dpkg-deb -f "$deb" Version)
arch=$(dpkg-deb -f "$deb" Architecture)
libdeb=$(dirname "$deb")/libmosquitto-im-client1_${version}_${arch}.deb
devdeb=$(dirname "$deb")/libmosquitto-im-client-dev_${version}_${arch}.deb
[ -f "$libdeb" ] && [ -f "$devdeb" ] || fail "no $libdeb or $devdeb next to $deb"
debs=("$deb" "$libdeb" "$devdeb")
for d in "${debs[@]}"; do
  lintian --fail-on error,warning "$d" >"$tmp/lintian.txt" 2>&1 ||
    { cat "$tmp/lintian.txt" >&2; fail "lintian reports errors or warnings in $d"; }
  grep -v "running with root privileges" "$tmp/lintian.txt" | sed 's/^/  /' || true
  echo "package test: $(basename "$d"): lintian $(grep -c '^E:' "$tmp/lintian.txt") errors," \
    "$(grep -c '^W:' "$tmp/lintian.txt") warnings"
done

# 2. Install it.
installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${debs[@]}" >"$tmp/apt.txt" 2>&1 ||
  { cat "$tmp/apt.txt" >&2; fail "apt-get install ${debs[*]}"; }
libdir=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir_rel=${libdir#/usr}
for f in "$libdir/libmosquitto-im-client.so.1" "$libdir/libmosquitto-im-client.so" "$libdir/libmosquitto-im-client.a" \
         "$libdir/pkgconfig/mosquitto-im-client.pc" /usr/include/mosquitto-im/client.h; do
  [ -e "$f" ] || fail "$f is not installed"
done
for f in "$plugin" "$snippet" /usr/bin/imcat /usr/bin/imchat /usr/bin/imstore /usr/bin/imtoken \
         /usr/share/doc/mosquitto-im/copyright /usr/share/doc/mosquitto-im/changelog.gz \
         /usr/share/man/man1/imchat.1.gz /usr/share/man/man1/imcat.1.gz; do
  [ -e "$f" ] || fail "$f is not installed"
done
dpkg-query -W -f='${Conffiles}\n' mosquitto-im | grep -q " $snippet " || fail "$snippet is not a conffile"
[ "$(stat -c %U /var/lib/mosquitto-im)" = mosquitto ] || fail "/var/lib/mosquitto-im is not owned by mosquitto"
# As shipped the snippet changes nothing: every setting is commented out.
! grep -v '^#' "$snippet" | grep -q . || fail "$snippet has active lines"

# 3. Enable it (a copy, "#plugin" lines uncommented) with a test listener.
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
{
  echo "# mosquitto-im package test (tests/package/run.sh); removed when it ends"
  echo "listener $port 127.0.0.1"
  echo "allow_anonymous true"
  echo "log_dest stderr"
  sed 's/^#plugin/plugin/' "$snippet"
} >"$testconf"
grep -q "^plugin $plugin\$" "$testconf" || fail "the snippet does not name $plugin"
if [ ! -d /run/mosquitto ]; then      # made by systemd or the init script
  install -d -o mosquitto -g mosquitto /run/mosquitto
  made_run_dir=1
fi

# 4. Start Debian's broker on Debian's configuration.
/usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf >"$tmp/broker.log" 2>&1 &
broker=$!
pids+=("$broker")
listening() {
  kill -0 "$broker" 2>/dev/null || { cat "$tmp/broker.log" >&2; fail "the broker exited"; }
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}
until_ok "the broker to listen on $port" listening
grep -q "Loading plugin: $plugin" "$tmp/broker.log" || { cat "$tmp/broker.log" >&2; fail "the broker did not load $plugin"; }

# 5. Chat. bob's persistent session subscribes (-E: exit on SUBACK), alice
# writes while he is offline, bob comes back and gets the frame.
left() { echo $((deadline - SECONDS > 1 ? deadline - SECONDS : 1)); }
sub=(mosquitto_sub -h 127.0.0.1 -p "$port" -u bob -i pkgtest-bob -c -q 1 -t im/u/bob)
timeout "$(left)" "${sub[@]}" -E || fail "bob could not subscribe"
timeout "$(left)" mosquitto_pub -h 127.0.0.1 -p "$port" -u alice -q 1 -t im/u/bob \
  -m "hello from the package test" || fail "alice could not publish"
timeout "$(left)" "${sub[@]}" -C 1 -F %x | /usr/bin/imcat >"$tmp/chat.txt" || { cat "$tmp/broker.log" >&2; fail "bob got no frame"; }
echo "package test: bob got: $(cat "$tmp/chat.txt")"
grep -q "^u/bob #1 .* alice: hello from the package test\$" "$tmp/chat.txt" || fail "imcat printed something else"
[ "$(stat -c %U /var/lib/mosquitto-im/im.db)" = mosquitto ] || fail "the store is not /var/lib/mosquitto-im/im.db of user mosquitto"

# 5b. A program outside the tree, built against the installed library as
# its README says (pkg-config), shared and static: alice sends, bob's
# device receives through the library, each waiting on a deadline.
mkdir "$tmp/app"
cat >"$tmp/app/app.c" <<'APP'
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <mosquitto-im/client.h>

static int got, receipt = -1;
static void on_msg(void *ud, const struct mim_message *m)
{
	(void)ud;
	if(m->outgoing) return;
	printf("%s #%llu %s: %.*s\n", m->timeline, (unsigned long long)m->seq, m->sender, (int)m->len, (const char *)m->body);
	got = 1;
}
static void on_receipt(void *ud, const struct mim_receipt *r) { (void)ud; receipt = r->status; }
static struct mim_client *open_user(const char *user, int port)
{
	struct mim_options o;

	mim_options_init(&o);
	o.port = port;
	o.user = user;
	o.cb.on_message = on_msg;
	return mim_new(&o, NULL);
}
int main(int argc, char **argv)
{
	int port = atoi(argv[1]);
	struct mim_client *bob = open_user("bob", port), *alice = open_user("alice", port);
	time_t end = time(NULL) + 30;

	if(!bob || !alice || mim_version(NULL, NULL, NULL) != MOSQUITTO_IM_CLIENT_VERSION) return 2;
	mim_connect(bob);
	mim_connect(alice);
	mim_send(alice, "bob", "hello through the library", 25, NULL, on_receipt, NULL, NULL);
	while((!got || receipt != MIM_OK) && time(NULL) < end){
		mim_loop(alice, 20);
		mim_loop(bob, 20);
	}
	mim_destroy(alice);
	mim_destroy(bob);
	return got && receipt == MIM_OK ? 0 : 1;
}
APP
sed -i 's/#include <string.h>/#include <string.h>\n#include <stdlib.h>/' "$tmp/app/app.c"
# shellcheck disable=SC2046
cc -Wall -o "$tmp/app/app" "$tmp/app/app.c" $(pkg-config --cflags --libs mosquitto-im-client) ||
  fail "the outside program does not compile against the installed library"
linked=$(ldd "$tmp/app/app")     # (not piped into grep -q: pipefail and SIGPIPE)
grep -Eq "libmosquitto-im-client\.so\.1 => (/usr)?$libdir_rel/libmosquitto-im-client\.so\.1 " <<<"$linked" ||
  fail "the program does not use the installed library: $linked"
# shellcheck disable=SC2046
cc -Wall -o "$tmp/app/app-static" "$tmp/app/app.c" $(pkg-config --cflags mosquitto-im-client) \
  "$libdir/libmosquitto-im-client.a" $(pkg-config --libs --static mosquitto-im-client | sed 's/-lmosquitto-im-client//') ||
  fail "the outside program does not link the static library"
timeout "$(left)" "$tmp/app/app" "$port" >"$tmp/app.txt" || { cat "$tmp/broker.log" >&2; fail "the outside program failed"; }
grep -q "^u/bob #[0-9]* alice: hello through the library\$" "$tmp/app.txt" || fail "the program printed: $(cat "$tmp/app.txt")"
timeout "$(left)" "$tmp/app/app-static" "$port" >/dev/null || fail "the statically linked program failed"
echo "package test: a program built with pkg-config mosquitto-im-client: $(cat "$tmp/app.txt")"

# 6. Stop the broker by its PID.
kill -TERM "$broker"
stopped() { ! kill -0 "$broker" 2>/dev/null; }
until_ok "the broker to stop" stopped
wait "$broker" || true

# 7. Purge; nothing of the package, nothing started here, is left.
dpkg --purge mosquitto-im libmosquitto-im-client-dev libmosquitto-im-client1 >"$tmp/purge.txt" 2>&1 ||
  { cat "$tmp/purge.txt" >&2; fail "dpkg --purge"; }
installed=0
for f in "$plugin" "$snippet" /usr/bin/imcat /var/lib/mosquitto-im "$libdir/libmosquitto-im-client.so.1" \
         /usr/include/mosquitto-im; do
  [ ! -e "$f" ] || fail "$f is left after purge"
done
for p in "${pids[@]}"; do
  ! kill -0 "$p" 2>/dev/null || fail "process $p is still running"
done
jobs -pr >"$tmp/jobs"
[ ! -s "$tmp/jobs" ] || fail "background jobs left: $(tr '\n' ' ' <"$tmp/jobs")"
echo "package test: passed (installed 3 packages, chatted through $plugin and the client library, purged)"
