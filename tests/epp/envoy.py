"""The Envoy the endpoint-picker tests run: loadtest/envoy.py (shared with the demo,
`make envoy-demo`)."""

from loadtest.envoy import VENV_ENVOY, Envoy, config, find_envoy, version

__all__ = ["VENV_ENVOY", "Envoy", "config", "find_envoy", "version"]
