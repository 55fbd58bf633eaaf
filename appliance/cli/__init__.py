"""`appliance`: the operator's command line (and the deploy's host-side helpers under `appliance host`)."""

from __future__ import annotations

import sys

import click

from appliance import __version__
from appliance.config import ConfigError


class _Group(click.Group):
    """Turns configuration errors into one clear line and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        import subprocess

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except subprocess.CalledProcessError as exc:
            # Name the command that failed and what it said; the full traceback helps nobody operating a host.
            command = " ".join(str(a) for a in exc.cmd) if isinstance(exc.cmd, list | tuple) else str(exc.cmd)
            said = (exc.stderr or exc.stdout or b"")
            said = said.decode(errors="replace") if isinstance(said, bytes) else said
            click.echo(f"error: `{command}` exited {exc.returncode}", err=True)
            for line in said.strip().splitlines()[-15:]:
                click.echo(f"  {line}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
def main() -> None:
    """Operate the sovereign tenant appliance on this host.

    Deploy with pyinfra (`pyinfra -y inventory/local.py deploy.py`); then use these commands on the host,
    as root, to see and operate what runs.
    """


def _register() -> None:
    from appliance.cli import host, inventory, status, tenant

    main.add_command(status.status)
    main.add_command(tenant.tenant)
    main.add_command(inventory.inventory)
    main.add_command(host.host)
    main.commands.update(__import__("appliance.cli.backup", fromlist=["COMMANDS"]).COMMANDS)  # backup, restore, drill
    main.add_command(__import__("appliance.cli.token", fromlist=["token"]).token)
    main.add_command(__import__("appliance.cli.gateway", fromlist=["gateway"]).gateway)
    main.add_command(__import__("appliance.cli.sync", fromlist=["sync"]).sync)
    main.add_command(__import__("appliance.cli.agents", fromlist=["agents"]).agents)
    main.add_command(__import__("appliance.cli.audit", fromlist=["audit"]).audit)
    main.add_command(__import__("appliance.cli.frontdoor", fromlist=["frontdoor"]).frontdoor)
    main.add_command(__import__("appliance.cli.identity", fromlist=["identity"]).identity)
    main.add_command(__import__("appliance.cli.user", fromlist=["user"]).user)
    main.add_command(__import__("appliance.cli.bundle", fromlist=["bundle"]).bundle)
    main.add_command(__import__("appliance.cli.secret", fromlist=["secret"]).secret)


_register()
