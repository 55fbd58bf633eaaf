"""The embedded object store's supervised process: `weed mini` as the store's own user (rendered by the deploy
like every other ServiceSpec)."""

from __future__ import annotations

from pathlib import Path

from appliance.config import HostConfig
from appliance.objectstore.seaweed import weed_argv, weed_binary, weed_environment
from appliance.servicespec import OBJECTSTORE_SERVICE, ServiceSpec, venv_bin


def objectstore_service(host: HostConfig) -> ServiceSpec:
    weed = Path(venv_bin(host, weed_binary().name))
    # Exactly this environment and nothing inherited: AWS_* in weed's environment would add an admin identity
    # and WEED_* would override security.toml.
    clean_env = ["env", "-i", *(f"{k}={v}" for k, v in weed_environment(host).items())]
    return ServiceSpec(
        name=OBJECTSTORE_SERVICE,
        component="objectstore",
        command=(*clean_env, *weed_argv(host, weed)),
        user=host.objectstore_user,
        # weed reads security.toml (the JWT keys) from its working directory.
        working_dir=host.objectstore_conf_dir,
        log_file=host.objectstore_root / "objectstore.log",
        port=host.objectstore.s3_port,
        probe="s3",
        # weed mini puts its gRPC unix sockets in /tmp whatever TMPDIR says; another local user could
        # otherwise claim those paths before the store starts.
        private_tmp=True,
        writable=(host.objectstore_root,),
        memory_max=host.objectstore.memory_max,
    )
