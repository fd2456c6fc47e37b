"""Training of the shipped ``pendulum-agent`` checkpoint: ``python -m edgeprune.zoo.train pendulum-agent --seed 0``.

Kept apart from the task module so that loading the task never imports the training loop.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from edgeprune.zoo import single_thread
from edgeprune.zoo.pendulum import (
    ACTION_DIM,
    CANDIDATES,
    ENV_ID,
    EPISODE_STEPS,
    HIDDEN,
    HORIZON,
    LATENT,
    MAX_ACTION,
    OBS_DIM,
    PendulumAgent,
    Replay,
    agent_loss,
    evaluate,
)


@dataclass(frozen=True)
class TrainConfig:
    """TD-MPC-lite: policy-driven data collection, one update per env step, EMA targets."""

    env_steps: int = 15_000
    seed_steps: int = 1_000
    batch: int = 256
    lr: float = 1e-3
    tau: float = 0.01
    exploration_std: float = 0.2
    grad_clip: float = 10.0


def train_agent(seed: int, out: Path, config: TrainConfig | None = None) -> dict[str, object]:
    """Train from scratch with ``seed``; write ``pendulum-agent.pt`` and ``pendulum-agent.json`` into ``out``."""
    cfg = config or TrainConfig()
    with single_thread():
        model, train_time = _train(seed, cfg)
    eval_start = time.perf_counter()
    metrics = evaluate(model)
    eval_time = time.perf_counter() - eval_start
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "pendulum-agent.pt")
    summary: dict[str, object] = {
        "seed": seed,
        "env": ENV_ID,
        "env_steps": cfg.env_steps,
        "updates": cfg.env_steps - cfg.seed_steps,
        "train_wall_s": round(train_time, 1),
        "eval_wall_s": round(eval_time, 1),
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "config": asdict(cfg),
        "architecture": {"latent": LATENT, "hidden": HIDDEN, "horizon": HORIZON, "candidates": CANDIDATES},
        **{f"final_{k}": round(v, 2) for k, v in metrics.items()},
    }
    (out / "pendulum-agent.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train(seed: int, cfg: TrainConfig) -> tuple[PendulumAgent, float]:
    """The training loop proper; returns the trained model (eval mode) and its wall time in seconds."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PendulumAgent()
    target = copy.deepcopy(model).requires_grad_(False)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    env = gym.make(ENV_ID)
    episodes = cfg.env_steps // EPISODE_STEPS
    obs = np.zeros((episodes, EPISODE_STEPS + 1, OBS_DIM), dtype=np.float32)
    actions = np.zeros((episodes, EPISODE_STEPS, ACTION_DIM), dtype=np.float32)
    rewards = np.zeros((episodes, EPISODE_STEPS), dtype=np.float32)
    step = 0
    for ep in range(episodes):
        obs[ep, 0] = env.reset(seed=seed * 100_000 + ep)[0]
        for t in range(EPISODE_STEPS):
            if step < cfg.seed_steps:
                action = rng.uniform(-MAX_ACTION, MAX_ACTION, ACTION_DIM)
            else:
                with torch.inference_mode():
                    mu = model.pi(model.encoder(torch.as_tensor(obs[ep, t][None]))).numpy()[0]
                action = np.clip(mu + cfg.exploration_std * rng.standard_normal(ACTION_DIM), -MAX_ACTION, MAX_ACTION)
            actions[ep, t] = action
            obs[ep, t + 1], rewards[ep, t], *_ = env.step(actions[ep, t])
            step += 1
            if step <= cfg.seed_steps or ep == 0:
                continue
            replay = Replay(obs[:ep], actions[:ep], rewards[:ep])  # finished episodes only
            loss = agent_loss(model, target, replay.sample(rng, cfg.batch))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optim.step()
            with torch.no_grad():
                for p_t, p in zip(target.parameters(), model.parameters(), strict=True):
                    p_t.lerp_(p, cfg.tau)
        if (ep + 1) % 10 == 0:
            print(f"episode {ep + 1}: return {rewards[ep].sum():.1f}, {time.perf_counter() - start:.0f} s", flush=True)
    env.close()
    return model.eval(), time.perf_counter() - start
