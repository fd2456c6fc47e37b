"""Loop: the tune settings, the step-by-step loop, and the bundle it publishes."""

from edgeprune.loop.bundle import load_pruned
from edgeprune.loop.settings import RunFolderError, TuneSettings, target_inputs
from edgeprune.loop.tune import TuneResult, tune

__all__ = ["RunFolderError", "TuneResult", "TuneSettings", "load_pruned", "target_inputs", "tune"]
