"""Tests of the Python package against a real broker with the plugin
(tests/integration/imtest.py: IM_PLUGIN names the plugin to load)."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)
ROOT = os.path.normpath(os.path.join(PKG, "..", ".."))
sys.path.insert(0, os.path.join(PKG, "src"))            # the package as it is in the tree
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import imtest  # noqa: E402

# Every wait is a condition with this deadline, never a sleep.
WAIT = float(os.environ.get("IM_TEST_WAIT", "60"))


@pytest.fixture
def make_broker():
    made = []

    def make(opts=None, **kw):
        b = imtest.Broker(opts=opts, **kw)
        made.append(b)
        b.start()
        return b

    yield make
    for b in made:
        b.cleanup()


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def clients():
    """Clients made by a test, closed at its end."""
    made = []
    yield made
    for c in made:
        try:
            c.close()
        except Exception:
            pass
