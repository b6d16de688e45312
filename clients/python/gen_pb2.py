#!/usr/bin/python3
"""Generates src/mosquitto_im/im_pb2.py from the project's proto/im.proto.

    /usr/bin/python3 clients/python/gen_pb2.py            # write it
    /usr/bin/python3 clients/python/gen_pb2.py --check    # exit 1 if it is stale

The output is protoc's own Python code with two changes: the file goes into
a descriptor pool of its own instead of protobuf's default pool, and the
classes name the module mosquitto_im.im_pb2. The default pool refuses a
second, different file named "im.proto" (TypeError at import), and an
application, a test harness or another version of this package may well
load the project's proto itself.

The generated file is committed, so that `pip install` needs neither protoc
nor the rest of the tree; tests/test_pb2.py runs --check, comparing the
descriptor (not the text: another protoc writes other text for the same
proto).
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
OUT = os.path.join(HERE, "src", "mosquitto_im", "im_pb2.py")


def protoc(args):
    subprocess.run(["protoc", "-I", PROTO_DIR] + args + [os.path.join(PROTO_DIR, "im.proto")], check=True)


def generate():
    """protoc's output, rewritten to a private pool: the module's text."""
    with tempfile.TemporaryDirectory() as d:
        protoc(["--python_out", d])
        with open(os.path.join(d, "im_pb2.py")) as f:
            text = f.read()
    for old, new in (("_descriptor_pool.Default().AddSerializedFile(",
                      "_descriptor_pool.DescriptorPool().AddSerializedFile("),
                     ("BuildTopDescriptorsAndMessages(DESCRIPTOR, 'im_pb2',",
                      "BuildTopDescriptorsAndMessages(DESCRIPTOR, 'mosquitto_im.im_pb2',")):
        if text.count(old) != 1:
            raise SystemExit("gen_pb2: protoc's output changed shape (%r not found once): "
                             "adapt gen_pb2.py" % old)
        text = text.replace(old, new)
    head = ("# Generated from proto/im.proto by clients/python/gen_pb2.py (protoc, then a\n"
            "# private descriptor pool). DO NOT EDIT: run gen_pb2.py again.\n")
    return head + text


def descriptor_now():
    """The FileDescriptorProto of proto/im.proto as protoc reads it today."""
    from google.protobuf import descriptor_pb2
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "im.pb")
        protoc(["--descriptor_set_out", out])
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    return _canonical(fds.file[0])


def _canonical(fdp):
    """Without json_name: descriptor sets carry it, generated code does not
    (protoc derives it from the field name either way)."""
    def strip(msgs):
        for m in msgs:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)
    strip(fdp.message_type)
    return fdp


def descriptor_shipped(path=OUT):
    """The FileDescriptorProto the committed im_pb2.py carries."""
    import importlib.util
    from google.protobuf import descriptor_pb2
    spec = importlib.util.spec_from_file_location("_im_pb2_shipped", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.ParseFromString(mod.DESCRIPTOR.serialized_pb)
    return _canonical(fdp)


def check():
    """None if the shipped module matches proto/im.proto, else why not."""
    now, shipped = descriptor_now(), descriptor_shipped()
    if now == shipped:
        return None
    return ("src/mosquitto_im/im_pb2.py does not match proto/im.proto: "
            "run /usr/bin/python3 clients/python/gen_pb2.py")


def main(argv):
    if "--check" in argv:
        why = check()
        if why:
            print(why, file=sys.stderr)
            return 1
        return 0
    with open(OUT + ".tmp", "w") as f:
        f.write(generate())
    os.replace(OUT + ".tmp", OUT)
    print("wrote", os.path.relpath(OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
