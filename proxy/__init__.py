"""docker-heal-proxy: a Docker Engine API proxy that heals pruned images."""

__version__ = "0.1.0"
