"""Where tests find the repository, and the `appliance` command of the venv that runs them."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APPLIANCE_BIN = Path(sys.executable).parent / "appliance"
