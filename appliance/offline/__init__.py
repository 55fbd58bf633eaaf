"""The air-gapped install: one signed archive (a "bundle") holding everything a tenant host and a vault host
install, built where there is internet and verified on the host before anything is installed from it.

- `signing.py`: the operator's Ed25519 key pair (PEM) and signatures.
- `manifest.py`: what a bundle holds (`manifest.json`, every file's SHA-256 and size), its layout, and the
  controller-side verification of an archive.
- `wheels.py`, `node.py`, `debs.py`: the Python wheels, the Node programs' `node_modules`, the Debian packages
  (a local apt repository), each fetched on the build machine.
- `build.py`: `appliance bundle build`.
- `install.py`: the host side as shell commands needing only a stock Debian 12 (openssl, sha256sum, tar, apt),
  run by pyinfra (`appliance/deploys/bundle.py`) and, next, by Ansible.
"""
