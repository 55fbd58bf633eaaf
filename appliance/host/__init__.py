"""Work done on the host itself (as root), called by the deploy and by `appliance` commands."""
