"""Bring checkpoints from elsewhere into the project's format (`siefpn-deploy convert`)."""
