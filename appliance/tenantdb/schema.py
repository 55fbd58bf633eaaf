"""Facts about the product schema that Python needs: which tables are synced and which columns a shape carries.

The tables themselves are defined by the SQL migrations (appliance/tenantdb/migrations/); tests check the two agree.
"""

from __future__ import annotations

from typing import Final

# Tables served as shapes, with the columns each shape carries (primary key first). Every one has house_id
# and deleted_at; secrets, invites and api_keys are never synced.
SYNCED_TABLES: Final[dict[str, tuple[str, ...]]] = {
    "houses": ("id", "house_id", "name", "created_by", "created_at", "updated_at", "deleted_at"),
    "members": (
        "id", "house_id", "principal_id", "principal_kind", "role", "created_by", "created_at", "updated_at",
        "deleted_at",
    ),
    "environments": ("id", "house_id", "name", "description", "created_by", "created_at", "updated_at", "deleted_at"),
    "agents": (
        "id", "house_id", "name", "handler", "environment_id", "config", "created_by", "created_at", "updated_at",
        "deleted_at",
    ),
    "threads": ("id", "house_id", "title", "created_by", "created_at", "updated_at", "deleted_at"),
    "configs": (
        "id", "house_id", "environment_id", "key", "value", "created_by", "created_at", "updated_at", "deleted_at",
    ),
}

PRODUCT_TABLES: Final = (*SYNCED_TABLES, "secrets", "invites", "api_keys")

ROLES: Final = ("owner", "admin", "member")
ROLE_RANK: Final = {"member": 1, "admin": 2, "owner": 3}
