"""siefpn-deploy: Dual SIE-FPN detectors from training to deployable artifacts."""

__version__ = "0.1.0"
