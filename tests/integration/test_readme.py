"""The README's stock-tool examples, run as written: every mosquitto_pub
and mosquitto_rr line of its chat, group and conversation sections, in
order, against a broker with the plugin (only -h/-p added, and imcat's
path). What the README says they print is checked where it says it."""
import os
import re
import subprocess

import pytest

from imtest import IMCAT, ROOT

SECTIONS = ("## Chat with the stock command-line tools", "## Groups",
            "## Read receipts, typing, edit and recall, the conversation list")


def readme_commands():
    """The shell lines of the sections' ```sh blocks, continuations joined."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    out = []
    for title in SECTIONS:
        start = text.index(title + "\n")
        end = text.find("\n## ", start + 1)
        body = text[start:end if end > 0 else len(text)]
        for block in re.findall(r"```sh\n(.*?)```", body, re.S):
            for cmd in block.replace("\\\n", " ").splitlines():
                cmd = cmd.strip()
                if cmd.startswith(("mosquitto_pub", "mosquitto_rr", "mosquitto_sub")):
                    out.append((title, cmd))
    return out


def runnable(cmd, port):
    """The command as run here: our broker, our imcat, a deadline for rr."""
    prog = cmd.split()[0]
    extra = " -h 127.0.0.1 -p %d" % port
    if prog == "mosquitto_rr":
        extra += " -W 10"
    return prog + extra + cmd[len(prog):].replace("build/examples/imcat", IMCAT)


def test_readme_has_the_examples():
    cmds = [c for _, c in readme_commands()]
    assert sum(c.startswith("mosquitto_pub") for c in cmds) >= 6
    assert sum(c.startswith("mosquitto_rr") for c in cmds) >= 6


def test_readme_examples_run_as_written(broker):
    outputs = []
    for title, cmd in readme_commands():
        if cmd.startswith("mosquitto_sub"):
            continue                    # they wait for ever; the syncs below show what they would
        r = subprocess.run(["bash", "-o", "pipefail", "-c", runnable(cmd, broker.port)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, "%s\n%s\nexit %d: %s" % (title, cmd, r.returncode, r.stderr)
        if "imcat" in cmd:
            assert r.stdout.strip(), "%s: imcat printed nothing" % cmd
            assert "BAD_REQUEST" not in r.stdout and "FORBIDDEN" not in r.stdout, (cmd, r.stdout)
        outputs.append((cmd, r.stdout))
    sync = [out for cmd, out in outputs if "im/v1/sync" in cmd][0]
    # "hi" and "hi again" once: the second copy with the same cmid was dropped.
    assert "sync u/bob: OK, 2 frames, head 2" in sync, sync
    assert "alice: hi" in sync and "alice [m1]: hi again" in sync, sync
    ack = [out for cmd, out in outputs if "im/v1/ack" in cmd][0]
    assert "ack u/bob: cursor 2, head 2" in ack, ack
    group = [out for cmd, out in outputs if "op create" in cmd][0]
    assert group.startswith("group create team: OK, seq 1"), group
    mine = [out for cmd, out in outputs if "op list" in cmd][0]
    assert "group list: OK, 1 group\n  team: head 2, cursor 0, unread 2" in mine, mine
    convs = [out for cmd, out in outputs if "im/v1/conversations" in cmd][0]
    assert "u/bob" in convs, convs
