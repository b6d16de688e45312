import pytest

from imtest import Broker
import pgserver


@pytest.fixture
def make_broker():
    """Starts brokers on demand; all are stopped (and sanitizer-checked) at the end."""
    made = []

    def make(opts=None, extra_conf="", start=True, **kw):
        b = Broker(opts=opts, extra_conf=extra_conf, **kw)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    errors = []
    for b in made:
        try:
            b.cleanup()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def broker(make_broker):
    return make_broker({"nonim_acl": "allow"})


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server for the session (initdb in a temporary folder,
    a free 127.0.0.1 port); skipped where its programs are missing."""
    if not pgserver.available():
        pytest.skip("PostgreSQL server programs not found (scripts/deps.sh installs them)")
    srv = pgserver.shared()
    yield srv
    srv.cleanup()
