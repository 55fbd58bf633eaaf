"""The guard of issue 15: no value in tests/ that depends on the moment is fixed when pytest imports a module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.import_time import findings_in_source, findings_in_tree

TESTS = Path(__file__).resolve().parents[1]

# The form that failed on a fresh machine: instants computed at collection, stale by the time the test ran.
OLD_INVALID_CLAIMS = '''
import time
import pytest

@pytest.mark.parametrize("overrides", [
    {"exp": int(time.time()) - 60},
    {"nbf": int(time.time()) + 600},
    {"aud": "globex"},
])
def test_invalid_claims_are_refused(stack, overrides):
    assert_refused(call_me(stack, signed(stack, claims(stack, **overrides))))
'''

NEW_INVALID_CLAIMS = '''
import time
import pytest

@pytest.mark.parametrize(("claim", "seconds_from_now"), [("exp", -60), ("nbf", 600)])
def test_tokens_outside_their_time_window_are_refused(stack, claim, seconds_from_now):
    instant = int(time.time()) + seconds_from_now
    assert_refused(call_me(stack, signed(stack, claims(stack, **{claim: instant}))))
'''


def test_no_test_module_fixes_a_moment_dependent_value_at_import() -> None:
    findings = findings_in_tree(TESTS)
    assert not findings, "\n".join(map(str, findings))


def test_the_old_form_of_the_invalid_claims_test_is_caught() -> None:
    found = findings_in_source(OLD_INVALID_CLAIMS, Path("old.py"))
    assert [(f.line, f.call) for f in found] == [(6, "time.time"), (7, "time.time")]


def test_the_new_form_of_the_invalid_claims_test_passes() -> None:
    assert findings_in_source(NEW_INVALID_CLAIMS, Path("new.py")) == []


@pytest.mark.parametrize("source", [
    "from time import time\nDEADLINE = time() + 5\n",
    "import datetime as dt\nTODAY = dt.date.today()\n",
    "from datetime import datetime\nclass Fixture:\n    started = datetime.now()\n",
    "import uuid\ndef make(house=uuid.uuid4()):\n    return house\n",
    "import random\nPORT = random.randint(20000, 30000)\n",
    "from tests.support.ports import free_port\nPORT = free_port()\n",
    "import os\nTENANT = f'bench{os.getpid()}'\n",
    "import secrets\nTOKEN = secrets.token_hex(8)\n",
    "import time\nimport pytest\n@pytest.fixture(params=[time.monotonic()])\ndef moment(request):\n    pass\n",
])
def test_every_import_time_form_is_caught(source: str) -> None:
    assert findings_in_source(source, Path("case.py")), source


@pytest.mark.parametrize("source", [
    "import time\ndef deadline():\n    return time.time() + 5\n",
    "import time\nDEADLINE = lambda: time.time() + 5\n",
    "import random\nNOISE = random.Random(7).randbytes(10)\n",
    "import time\nclass Clock:\n    def now(self):\n        return time.time()\n",
])
def test_values_computed_when_a_test_runs_are_allowed(source: str) -> None:
    assert findings_in_source(source, Path("case.py")) == []
