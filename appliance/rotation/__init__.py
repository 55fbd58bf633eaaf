"""Rotation of a tenant's secrets (`appliance secret rotate`): what replacing each one involves, and doing it.

`plan` says, per secret, which components read it (they restart, and only they) and whether it can be replaced
in place; `steps` does the replacing: the new value goes where it is checked (a Postgres role's verifier, the
store's identities, the secrets table re-encrypted) and into the secret file at once, then the readers restart in
the order that keeps requests working. Values are never printed or logged; the audit trail records the name.
"""
