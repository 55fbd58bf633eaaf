"""The embedded store's command line: its volume limit is the setting, not weed's disk-based guess (every bucket
takes volumes of its own; the guess ran out at 74 volumes on a long-lived test host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, host_config
from appliance.objectstore.seaweed import weed_argv


def test_the_volume_limit_comes_from_the_setting() -> None:
    default = weed_argv(host_config("@local", {"tenants": {"acme": {"slot": 1}}}), Path("/bin/weed"))
    assert "-volume.max=2000" in default
    bigger = host_config("@local", {"objectstore": {"max_volumes": 5000}, "tenants": {"acme": {"slot": 1}}})
    assert "-volume.max=5000" in weed_argv(bigger, Path("/bin/weed"))
    with pytest.raises(ConfigError, match="max_volumes"):
        host_config("@local", {"objectstore": {"max_volumes": 0}, "tenants": {"acme": {"slot": 1}}})
