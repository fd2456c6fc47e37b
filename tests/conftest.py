"""Shared fixtures: small real models for mechanics; the zoo's trained tasks for end-to-end runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.core.targets import Target, load_target


@pytest.fixture(scope="session", autouse=True)
def hermetic_environment(tmp_path_factory: pytest.TempPathFactory):
    """No test writes into (or reads from) the repository's profiles/: the default profile store is an empty
    temporary folder (tests that share a store set $EDGEPRUNE_PROFILES themselves). A user's $EDGEPRUNE_TARGETS is
    ignored, so target names resolve to the shipped files (the repository has no ./targets of its own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPRUNE_PROFILES", str(tmp_path_factory.mktemp("default-profile-store")))
        patch.delenv("EDGEPRUNE_TARGETS", raising=False)
        yield


class TwoPart(nn.Module):
    """An encoder–decoder CNN: the bottleneck conv's output is the interface between the two components."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 16, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(16, 48, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(48, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@pytest.fixture
def two_part() -> TwoPart:
    torch.manual_seed(0)
    model = TwoPart()
    with torch.no_grad():  # non-trivial BN statistics, so pruning BN matters numerically
        model.encoder[1].running_mean.uniform_(-0.5, 0.5)
        model.encoder[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def image() -> tuple[torch.Tensor, ...]:
    return (torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1)),)


@pytest.fixture
def fast_target() -> Target:
    """The shipped CPU target with fewer timed runs, so mechanics tests stay quick."""
    cpu = load_target("cpu")
    return cpu.model_copy(update={"measure": cpu.measure.model_copy(update={"runs": 100, "warmup": 10, "repeats": 3,
                                                                             "profile_runs": 20})})
