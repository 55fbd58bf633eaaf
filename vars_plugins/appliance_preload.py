"""Ansible vars plugin that adds no variables: it imports the appliance's controller-side code once, in
Ansible's main process, so that every forked worker running an appliance action inherits it instead of
importing it (pydantic models, the config, the desired state) at every task of the run."""

from __future__ import annotations

from typing import Any

from ansible.plugins.vars import BaseVarsPlugin

import appliance.playbook  # noqa: F401  (the preload is the point)


class VarsModule(BaseVarsPlugin):
    REQUIRES_ENABLED = True

    def get_vars(self, loader: Any, path: str, entities: Any, cache: bool = True) -> dict[str, Any]:
        return {}
