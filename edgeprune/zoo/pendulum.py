"""Built-in task ``pendulum-agent``: a TD-MPC-style control agent for gymnasium's Pendulum-v1.

The agent has six components that meet at one latent (the inter-component flow the seed papers prune):
``encoder`` (obs -> z), ``dynamics`` ((z, a) -> z'), ``reward`` ((z, a) -> r), ``policy`` (z -> a) and two
critics ``q1``/``q2`` ((z, a) -> Q). Its forward is the deployed planning computation: score N candidate action
sequences of horizon H by a latent rollout, so the latent passes through ``dynamics`` H times and every
component sits on the traced path. ``evaluate`` plans with MPPI on top of that forward.

Train the shipped checkpoint with ``python -m edgeprune.zoo.train pendulum-agent --seed 0``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from edgeprune.core.modes import evaluating
from edgeprune.core.task import Task
from edgeprune.zoo import CHECKPOINTS, single_thread

ENV_ID = "Pendulum-v1"
OBS_DIM = 3
ACTION_DIM = 1
MAX_ACTION = 2.0
LATENT = 64
HIDDEN = 128
HORIZON = 3
CANDIDATES = 64
GAMMA = 0.99
EPISODE_STEPS = 200
EVAL_SEEDS = tuple(range(10))
CHECKPOINT = CHECKPOINTS / "pendulum-agent.pt"

# loss weights (TD-MPC's, with its temporal discount rho): the latent consistency term keeps the rollout honest
CONSISTENCY_W, REWARD_W, VALUE_W, POLICY_W, RHO = 2.0, 0.5, 0.1, 0.1, 0.5
BC_ALPHA = 2.5  # TD3+BC's weight of the normalised critic term against behaviour cloning, when fine-tuning


def _mlp(inp: int, out: int, hidden: int = HIDDEN) -> nn.Sequential:
    """Linear-LayerNorm-ELU x2, then a Linear head: indices 0, 3 and 6 are the Linear layers."""
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.LayerNorm(hidden), nn.ELU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ELU(),
        nn.Linear(hidden, out),
    )


class PendulumAgent(nn.Module):
    """A TD-MPC-style world model + actor-critic whose top-level children are exactly its components."""

    def __init__(self, latent: int = LATENT, hidden: int = HIDDEN, gamma: float = GAMMA) -> None:
        super().__init__()
        self.gamma = gamma
        self.encoder = _mlp(OBS_DIM, latent, hidden)
        self.dynamics = _mlp(latent + ACTION_DIM, latent, hidden)
        self.reward = _mlp(latent + ACTION_DIM, 1, hidden)
        self.policy = _mlp(latent, ACTION_DIM, hidden)
        self.q1 = _mlp(latent + ACTION_DIM, 1, hidden)
        self.q2 = _mlp(latent + ACTION_DIM, 1, hidden)

    def pi(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic policy action in [-2, 2]."""
        return MAX_ACTION * torch.tanh(self.policy(z))

    def q_min(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Pessimistic value min(q1, q2), as in TD3 / TD-MPC."""
        za = torch.cat([z, a], dim=-1)
        return torch.minimum(self.q1(za), self.q2(za))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Score candidate action sequences: ``obs [N, 3]``, ``actions [N, H, 1]`` -> ``[N, 2]``.

        Column 0 is the planning value ``sum_t gamma^t r(z_t, a_t) + gamma^H min(q1, q2)(z_H, pi(z_H))``
        along the latent rollout ``z_{t+1} = dynamics(z_t, a_t)``; column 1 is the policy's action
        ``pi(z_0)`` (what the agent does when it does not plan). H >= 1.
        """
        z = self.encoder(obs)
        first_action = self.pi(z)
        value = torch.zeros_like(first_action)
        discount = 1.0
        for t in range(actions.shape[1]):
            za = torch.cat([z, actions[:, t]], dim=-1)
            value = value + discount * self.reward(za)
            z = self.dynamics(za)
            discount *= self.gamma
        value = value + discount * self.q_min(z, self.pi(z))
        return torch.cat([value, first_action], dim=-1)


def build_agent() -> PendulumAgent:
    """The dense agent with the shipped weights, in eval mode (a fresh object on every call)."""
    model = PendulumAgent()
    model.load_state_dict(torch.load(CHECKPOINT, map_location="cpu", weights_only=True))
    return model.eval()


def example_inputs(n: int = CANDIDATES, horizon: int = HORIZON) -> tuple[torch.Tensor, torch.Tensor]:
    """One pendulum state repeated over N candidate action sequences of horizon H (the deployed shape)."""
    generator = torch.Generator().manual_seed(0)
    theta, theta_dot = 0.5, -0.3
    obs = torch.tensor([[np.cos(theta), np.sin(theta), theta_dot]], dtype=torch.float32).expand(n, OBS_DIM)
    actions = (torch.rand(n, horizon, ACTION_DIM, generator=generator) * 2 - 1) * MAX_ACTION
    return obs.contiguous(), actions


# --------------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannerConfig:
    """MPPI in the style of TD-MPC, sized so 10 episodes plan in about 5 s on one core."""

    candidates: int = CANDIDATES
    horizon: int = HORIZON
    policy_proposals: int = 8
    iterations: int = 4
    elites: int = 16
    temperature: float = 0.5
    min_std: float = 0.05
    init_std: float = 1.0
    proposal_std: float = 0.3


def _policy_proposals(model: PendulumAgent, z: torch.Tensor, cfg: PlannerConfig, gen: torch.Generator) -> torch.Tensor:
    """Action sequences from rolling the policy through the latent dynamics: ``[E, P, H, 1]``.

    Proposal 0 is the noiseless policy; the others add Gaussian noise, so the planner can refine around it.
    """
    e, p = z.shape[0], cfg.policy_proposals
    z = z.repeat_interleave(p, dim=0)
    noise = torch.randn(e, p, cfg.horizon, ACTION_DIM, generator=gen) * cfg.proposal_std
    noise[:, 0] = 0.0
    noise = noise.reshape(e * p, cfg.horizon, ACTION_DIM)
    steps = []
    for t in range(cfg.horizon):
        a = (model.pi(z) + noise[:, t]).clamp(-MAX_ACTION, MAX_ACTION)
        steps.append(a)
        z = model.dynamics(torch.cat([z, a], dim=-1))
    return torch.stack(steps, dim=1).reshape(e, p, cfg.horizon, ACTION_DIM)


def _plan(
    model: PendulumAgent, obs: torch.Tensor, mean: torch.Tensor, cfg: PlannerConfig, gen: torch.Generator
) -> torch.Tensor:
    """One MPPI solve for E states at once; returns the refined mean sequence ``[E, H, 1]``."""
    e, n, h = obs.shape[0], cfg.candidates, cfg.horizon
    proposals = _policy_proposals(model, model.encoder(obs), cfg, gen)
    obs_rep = obs.repeat_interleave(n, dim=0)
    std = torch.full_like(mean, cfg.init_std)
    for _ in range(cfg.iterations):
        noise = torch.randn(e, n - cfg.policy_proposals, h, ACTION_DIM, generator=gen)
        samples = (mean[:, None] + std[:, None] * noise).clamp(-MAX_ACTION, MAX_ACTION)
        candidates = torch.cat([proposals, samples], dim=1)  # [E, N, H, 1]
        value = model(obs_rep, candidates.reshape(e * n, h, ACTION_DIM))[:, 0].reshape(e, n)
        value = torch.nan_to_num(value, nan=-1e9)
        elite_value, idx = value.topk(cfg.elites, dim=1)
        elite = torch.gather(candidates, 1, idx[:, :, None, None].expand(-1, -1, h, ACTION_DIM))
        weight = torch.softmax(cfg.temperature * (elite_value - elite_value[:, :1]), dim=1)[:, :, None, None]
        mean = (weight * elite).sum(1)
        std = ((weight * (elite - mean[:, None]) ** 2).sum(1)).sqrt().clamp(cfg.min_std, MAX_ACTION)
    return mean


def _run_episodes(model: PendulumAgent, seeds: tuple[int, ...], *, plan: bool, cfg: PlannerConfig) -> np.ndarray:
    """Episode returns of E environments stepped in lockstep (one batched model call per step)."""
    envs = [gym.make(ENV_ID) for _ in seeds]
    obs = np.stack([env.reset(seed=seed)[0] for env, seed in zip(envs, seeds, strict=True)])
    returns = np.zeros(len(seeds))
    gen = torch.Generator().manual_seed(12345)
    mean = torch.zeros(len(seeds), cfg.horizon, ACTION_DIM)
    for _ in range(EPISODE_STEPS):
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        if plan:
            mean = _plan(model, obs_t, mean, cfg, gen)
            action = mean[:, 0]
            mean = torch.cat([mean[:, 1:], mean[:, -1:]], dim=1)  # warm start: shift by one step
        else:
            action = model.pi(model.encoder(obs_t))
        action = torch.nan_to_num(action).clamp(-MAX_ACTION, MAX_ACTION).numpy().astype(np.float32)
        for i, env in enumerate(envs):
            obs[i], reward, *_ = env.step(action[i])
            returns[i] += float(reward)
    for env in envs:
        env.close()
    return returns


def evaluate(model: nn.Module, seeds: tuple[int, ...] = EVAL_SEEDS) -> dict[str, float]:
    """Mean return of MPPI planning with ``model``'s forward over fixed env seeds (deterministic).

    Also reports the policy alone (``policy_return``): a cheap diagnostic of which component pruning hurt.
    """
    if not isinstance(model, PendulumAgent):  # the planner also calls encoder, dynamics and pi directly
        raise TypeError(f"pendulum-agent's evaluate needs a PendulumAgent, got {type(model).__name__}")
    cfg = PlannerConfig()
    with evaluating(model), single_thread(), torch.inference_mode():
        planned = _run_episodes(model, seeds, plan=True, cfg=cfg)
        policy = _run_episodes(model, seeds, plan=False, cfg=cfg)
    return {
        "return": float(planned.mean()),
        "return_min": float(planned.min()),
        "policy_return": float(policy.mean()),
    }


# ------------------------------------------------------------------------------------------------ objectives


@dataclass(frozen=True)
class Batch:
    """Sub-trajectories of length H: ``obs [B, H+1, 3]``, ``actions [B, H, 1]``, ``rewards [B, H]``.

    Fine-tuning batches also carry the dense agent's targets, recorded when the dataset was collected:
    ``td_targets [B, H]`` (r + gamma min-Q at pi of the next state) and ``policy_actions [B, H, 1]``.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    td_targets: torch.Tensor | None = None
    policy_actions: torch.Tensor | None = None


def _frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its parameters detached, so a policy gradient flows to the action, not the critic."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, (x,))


def _objective(
    model: PendulumAgent, batch: Batch, z_next: torch.Tensor, td: torch.Tensor, bc: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """TD-MPC's weighted terms over an H-step latent rollout: consistency, reward, TD (q1, q2) and policy.

    ``z_next [B, H, L]`` and ``td [B, H, 1]`` are gradient-free targets. With ``bc`` (target actions) the policy
    term is TD3+BC's (stay near them, improve on the frozen critics only as far as a normalised advantage says);
    without, TD-MPC's (maximise frozen min(q1, q2) at detached latents). The critic part is written as an
    advantage over the batch's actions, so its value stays near zero (its gradient is that of -Q).
    """
    z = model.encoder(batch.obs[:, 0])
    consistency = reward = value = policy = torch.zeros(())
    for t in range(batch.actions.shape[1]):
        weight = RHO**t
        za = torch.cat([z, batch.actions[:, t]], dim=-1)
        reward = reward + weight * (model.reward(za) - batch.rewards[:, t, None]).pow(2).mean()
        q1, q2 = model.q1(za), model.q2(za)
        value = value + weight * ((q1 - td[:, t]).pow(2).mean() + (q2 - td[:, t]).pow(2).mean())
        zd = z.detach()
        a_pi = model.pi(zd)
        za_pi = torch.cat([zd, a_pi], dim=-1)
        q_pi = torch.minimum(_frozen(model.q1, za_pi), _frozen(model.q2, za_pi))
        advantage = torch.minimum(q1, q2).detach() - q_pi
        if bc is None:
            policy = policy + weight * advantage.mean()
        else:
            scale = q_pi.detach().abs().mean() + 1.0
            policy = policy + weight * (BC_ALPHA * advantage.mean() / scale + (a_pi - bc[:, t]).pow(2).mean())
        z = model.dynamics(za)
        consistency = consistency + weight * (z - z_next[:, t]).pow(2).mean()
    return {"consistency": CONSISTENCY_W * consistency, "reward": REWARD_W * reward, "value": VALUE_W * value,
            "policy": POLICY_W * policy}


def agent_loss(model: PendulumAgent, target: PendulumAgent, batch: Batch) -> torch.Tensor:
    """The training objective (online, TD-MPC): ``target``, an EMA copy, gives consistency and TD targets."""
    with torch.no_grad():
        z_next = target.encoder(batch.obs[:, 1:])  # [B, H, L]
        td = batch.rewards[..., None] + target.gamma * target.q_min(z_next, target.pi(z_next))  # [B, H, 1]
    return sum(_objective(model, batch, z_next, td, None).values(), torch.zeros(()))


def task_terms(model: nn.Module, batch: object) -> dict[str, torch.Tensor]:
    """The fine-tuning surrogate's weighted terms (offline, on a fixed dataset): every component is trained.

    The model is its own consistency target (its latent width may have been pruned), while the critics regress
    on the dense agent's recorded TD targets and the policy on its recorded actions (a frozen target network
    and TD3+BC): bootstrapping on a fixed dataset from a damaged model's own critics drifts.
    """
    assert isinstance(model, PendulumAgent) and isinstance(batch, Batch)
    assert batch.td_targets is not None and batch.policy_actions is not None, "a batch from batches(seed)"
    with torch.no_grad():
        z_next = model.encoder(batch.obs[:, 1:])
    return _objective(model, batch, z_next, batch.td_targets[..., None], batch.policy_actions)


def task_loss(model: nn.Module, batch: object) -> torch.Tensor:
    """The fine-tuning surrogate: the sum of :func:`task_terms`."""
    return sum(task_terms(model, batch).values(), torch.zeros(()))


class Replay:
    """Whole episodes (Pendulum never terminates early), sampled as H-step sub-trajectories.

    Arrays: ``obs [E, T+1, 3]``, ``actions [E, T, 1]``, ``rewards [E, T]``; optionally the dense agent's
    ``td_targets [E, T]`` and ``policy_actions [E, T, 1]``.
    """

    def __init__(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                 td_targets: np.ndarray | None = None, policy_actions: np.ndarray | None = None) -> None:
        self.obs, self.actions, self.rewards = obs, actions, rewards
        self.td_targets, self.policy_actions = td_targets, policy_actions

    def sample(self, rng: np.random.Generator, size: int, horizon: int = HORIZON) -> Batch:
        episode = rng.integers(0, len(self.obs), size)[:, None]
        start = rng.integers(0, self.actions.shape[1] - horizon + 1, size)
        steps = start[:, None] + np.arange(horizon + 1)

        def take(array: np.ndarray | None, idx: np.ndarray) -> torch.Tensor | None:
            return None if array is None else torch.as_tensor(array[episode, idx], dtype=torch.float32)

        return Batch(
            obs=torch.as_tensor(self.obs[episode, steps], dtype=torch.float32),
            actions=torch.as_tensor(self.actions[episode, steps[:, :-1]], dtype=torch.float32),
            rewards=torch.as_tensor(self.rewards[episode, steps[:, :-1]], dtype=torch.float32),
            td_targets=take(self.td_targets, steps[:, :-1]),
            policy_actions=take(self.policy_actions, steps[:, :-1]),
        )


def _collect(model: PendulumAgent, seeds: list[int], noise: list[float], rng: np.random.Generator) -> Replay:
    """Episodes of ``model``'s policy plus Gaussian action noise (one std per episode), envs in lockstep.

    Records the model's own action and TD target at every step, as targets for fine-tuning pruned copies.
    """
    envs = [gym.make(ENV_ID) for _ in seeds]
    obs = np.zeros((len(seeds), EPISODE_STEPS + 1, OBS_DIM), dtype=np.float32)
    actions = np.zeros((len(seeds), EPISODE_STEPS, ACTION_DIM), dtype=np.float32)
    policy_actions = np.zeros_like(actions)
    rewards = np.zeros((len(seeds), EPISODE_STEPS), dtype=np.float32)
    obs[:, 0] = [env.reset(seed=seed)[0] for env, seed in zip(envs, seeds, strict=True)]
    std = np.asarray(noise, dtype=np.float32)[:, None]
    for t in range(EPISODE_STEPS):
        with torch.inference_mode():
            policy_actions[:, t] = model.pi(model.encoder(torch.as_tensor(obs[:, t]))).numpy()
        actions[:, t] = np.clip(policy_actions[:, t] + std * rng.standard_normal((len(seeds), 1)), -MAX_ACTION, MAX_ACTION)
        for i, env in enumerate(envs):
            obs[i, t + 1], rewards[i, t], *_ = env.step(actions[i, t])
    for env in envs:
        env.close()
    with torch.inference_mode():
        z_next = model.encoder(torch.as_tensor(obs[:, 1:]))
        bootstrap = model.q_min(z_next, model.pi(z_next))[..., 0].numpy()
    return Replay(obs, actions, rewards, rewards + model.gamma * bootstrap, policy_actions)


@functools.cache
def _finetune_data() -> Replay:
    """A fixed dataset for fine-tuning: 24 episodes of the shipped policy with noise from 0.1 to 1.5 (~1 s).

    The spread of noise covers the states a degraded (pruned) agent visits, not only the expert's path.
    """
    seeds = list(range(1000, 1024))
    noise = list(np.linspace(0.1, 1.5, len(seeds)))
    with single_thread():
        return _collect(build_agent(), seeds, noise, np.random.default_rng(0))


def batches(seed: int, size: int = 256) -> Iterator[object]:
    """An endless, seeded stream of H-step batches from the fixed fine-tuning dataset."""
    data = _finetune_data()
    rng = np.random.default_rng(seed)
    while True:
        yield data.sample(rng, size)


def finetune(model: nn.Module, steps: int, lr: float = 3e-4, seed: int = 0) -> None:
    """Adam on :func:`task_loss` for ``steps`` steps (deterministic); leaves the model in eval mode."""
    stream = batches(seed)
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    with single_thread():
        for _ in range(steps):
            loss = task_loss(model, next(stream))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optim.step()
    model.eval()


# ------------------------------------------------------------------------------------------------------ task


def pendulum_agent() -> Task:
    """The ``pendulum-agent`` task; nothing is loaded until a callable is used."""
    return Task(
        name="pendulum-agent",
        build=build_agent,
        example_inputs=example_inputs,
        evaluate=evaluate,
        metric="return",
        default_metric_budget="return>=-200",
        output_layers=("reward.6", "policy.6", "q1.6", "q2.6"),
        components=None,
        finetune=finetune,
        loss=task_loss,
        loss_terms=task_terms,
        batches=batches,
        description=(
            "TD-MPC-style agent for Pendulum-v1 (encoder, dynamics, reward, policy, twin critics over a 64-d "
            f"latent); forward scores {CANDIDATES} action sequences of horizon {HORIZON}; metric: mean MPPI return "
            f"over {len(EVAL_SEEDS)} episodes"
        ),
    )
