"""Access to `roles/`: the settings defaults and templates that pyinfra deploys and Ansible roles share."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jinja2

# roles/ sits beside the package in the source tree; the host installs that tree as is (editable), so this
# holds on the controller, on the host and in tests alike.
ROLES_DIR = Path(__file__).resolve().parent.parent / "roles"


@functools.cache
def role_defaults(role: str) -> dict[str, Any]:
    """The settings of one role as `roles/<role>/defaults/main.yml` gives them (prefixed names)."""
    path = ROLES_DIR / role / "defaults" / "main.yml"
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return data


@functools.cache
def _environment() -> jinja2.Environment:
    # Imported here: only deploys render templates, and every service imports this module for its defaults
    # (jinja2 is ~9 MB of RSS in each of a tenant's Python processes).
    import jinja2

    # trim_blocks/lstrip_blocks keep rendered config files free of the blank lines that block tags leave;
    # StrictUndefined turns a typo in a template into an error at deploy time instead of an empty setting.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROLES_DIR)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render(role: str, template: str, **context: Any) -> str:
    """Render `roles/<role>/templates/<template>` with the shared Jinja settings."""
    return _environment().get_template(f"{role}/templates/{template}").render(**context)


def role_file(role: str, name: str) -> Path:
    """A static file shipped with a role (`roles/<role>/files/<name>`)."""
    return ROLES_DIR / role / "files" / name


def role_files(role: str) -> list[str]:
    """Every static file a role ships (`roles/<role>/files/**`), as paths relative to that directory; never a
    node_modules a developer's npm run left there (the host installs its own from the lock file)."""
    base = ROLES_DIR / role / "files"
    return sorted(str(path.relative_to(base)) for path in base.rglob("*")
                  if path.is_file() and "node_modules" not in path.relative_to(base).parts)
