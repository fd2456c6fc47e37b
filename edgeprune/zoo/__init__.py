"""Built-in tasks with shipped checkpoints (see ``edgeprune tasks``) and the scripts that trained them."""

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
