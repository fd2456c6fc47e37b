"""edgeprune: prune trained PyTorch models until a measured latency budget and an application-metric budget hold."""

__version__ = "0.1.0"
