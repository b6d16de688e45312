"""The package itself: the generated protobuf module matches proto/im.proto,
pip installs it offline, frames and the state file round-trip."""
import json
import os
import shutil
import subprocess
import sys
import zlib

import pytest

from conftest import PKG
from mosquitto_im import FrameError, JsonFileStore, MemoryStore, PendingSend, State, StoreError, decode_frame
from mosquitto_im import im_pb2 as pb

sys.path.insert(0, PKG)
import gen_pb2  # noqa: E402


def test_im_pb2_matches_proto():
    """src/mosquitto_im/im_pb2.py is committed; it must say what proto/im.proto says."""
    if shutil.which("protoc") is None:
        pytest.skip("protoc not installed (protobuf-compiler)")
    assert gen_pb2.check() is None, gen_pb2.check()


def test_im_pb2_uses_its_own_pool():
    """Another im.proto in protobuf's default pool (a test harness, the
    application's own generated code) does not clash with ours."""
    from google.protobuf import descriptor_pool
    assert pb.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert pb.Header.__module__ == "mosquitto_im.im_pb2"


def test_pip_install_offline(tmp_path):
    """pip builds and installs it with nothing but Debian's packages: no
    index, no build isolation. From a copy: pip builds in the source folder."""
    src = tmp_path / "src"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "*.egg-info"))
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--no-cache-dir"]
    # --target installs into an empty environment of its own: it does not
    # see paho-mqtt and protobuf installed by Debian, so the dependencies
    # are resolved on their own, against the system (--dry-run --report
    # skips PEP 668's "externally managed" refusal, and installs nothing).
    r = subprocess.run(pip + ["--no-deps", "--target", str(target), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    report = tmp_path / "report.json"
    r = subprocess.run(pip + ["--dry-run", "--report", str(report), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]] == ["mosquitto-im"]
    for f in ("__init__.py", "client.py", "im_pb2.py", "py.typed"):
        assert (target / "mosquitto_im" / f).is_file(), f
    code = ("import sys; sys.path.insert(0, %r); import mosquitto_im, mosquitto_im.im_pb2 as pb; "
            "assert mosquitto_im.__file__.startswith(%r), mosquitto_im.__file__; "
            "assert pb.Event.MEMBERSHIP == 3; print(mosquitto_im.__version__)" % (str(target), str(target)))
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.1.0"


def frame(header, body=b""):
    h = header.SerializeToString()
    return b"IM\x01" + len(h).to_bytes(2, "big") + h + body


def test_frame_decode():
    raw = b"lorem ipsum " * 100
    m, h = decode_frame(frame(pb.Header(timeline="u/bob", seq=7, sender="alice", flags=2 | 16,
                                        raw_len=len(raw), store_id=2**64 - 1, peer_seq=3), zlib.compress(raw)))
    assert (m.timeline, m.seq, m.sender, m.body, m.flags, m.store_id) == ("u/bob", 7, "alice", raw, 16, 2**64 - 1)
    assert m.edited and not m.recalled
    for bad in (b"", b"IM", b"XX\x01\x00\x00", b"IM\x02\x00\x00", b"IM\x01\x00\x09abc"):
        with pytest.raises(FrameError):
            decode_frame(bad)
    with pytest.raises(FrameError):          # raw_len a lie
        decode_frame(frame(pb.Header(seq=1, flags=2, raw_len=5), zlib.compress(raw)))


def test_json_store_round_trip_and_lock(tmp_path):
    path = str(tmp_path / "dev.json")
    s = JsonFileStore(path)
    assert s.load() == State()
    st = State(client_id="bob-1", store_id=2**63 + 5, cursors={"u/bob": 4, "g/x": 9},
               pending={"c1": PendingSend(cmid="c1", timeline="u/al", body=b"\x00\xff", kind="edit",
                                          ref_seq=3, content_type="x/y", expiry=60, created_ms=1)})
    s.save(st)
    assert s.load() == st
    assert not os.path.exists(path + ".tmp")
    with pytest.raises(StoreError):
        JsonFileStore(path)                  # one process per device
    s.close()
    s2 = JsonFileStore(path, fsync=True)
    assert s2.load() == st
    s2.save(State())
    assert s2.load() == State()
    s2.close()
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(StoreError):
        JsonFileStore(path).load()
    m = MemoryStore()
    m.save(st)
    st.cursors["u/bob"] = 99                 # the store keeps its own copy
    assert m.load().cursors["u/bob"] == 4
