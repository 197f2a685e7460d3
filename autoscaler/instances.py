"""Seeded random planner instances (tests, `greencache bench planner`)."""

from __future__ import annotations

import numpy as np

from autoscaler.carbon import CarbonConfig
from autoscaler.planner import CacheOption, PlanProblem


def random_problem(seed: int, slots: int = 24, n_cache: int = 16, n_replica: int = 8, **overrides) -> PlanProblem:
    rng = np.random.default_rng(seed)
    caps = np.sort(rng.uniform(0, 2000, n_cache))
    caps[0] = 0.0
    # concave hit-ratio curve in capacity, as LRU curves are
    hit = 0.75 * (1 - np.exp(-caps / rng.uniform(300, 900)))
    caches = [CacheOption(name=f"c{i}", capacity_gb=float(caps[i]), hit_ratio=float(hit[i])) for i in range(n_cache)]
    lam = rng.uniform(0.5, 8.0) * (1 + 0.6 * np.sin(np.linspace(0, 2 * np.pi * slots / 24, slots))) + rng.uniform(0, 1, slots)
    ci = rng.uniform(20, 600) * (1 + 0.4 * np.cos(np.linspace(0, 2 * np.pi * slots / 24, slots) + rng.uniform(0, 6)))
    options = sorted(set(int(x) for x in np.linspace(1, max(2, 2 * n_replica), n_replica)))
    prefill_s, decode_s = float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.5, 2.0))
    work = prefill_s * (1 - hit) + decode_s
    # replicas needed: keep utilisation under ~70% (a simple queueing SLO proxy)
    rmin = np.ceil(lam[:, None] * work[None, :] / 0.7).astype(int)
    rmin = np.minimum(rmin, max(options))
    kw = dict(slot_hours=1.0, arrival_rps=lam.tolist(), intensity=ci.tolist(), replica_options=options, caches=caches,
              rmin=rmin, prefill_s=prefill_s, decode_s=decode_s, carbon=CarbonConfig(), alpha_g_per_replica=float(rng.uniform(0, 50)),
              beta_g_per_gb=float(rng.uniform(0, 0.5)), initial_replicas=options[len(options) // 2],
              initial_capacity_gb=float(caps[len(caps) // 2]))
    kw.update(overrides)
    return PlanProblem(**kw)


def random_fleet_problem(seed: int, slots: int = 24, n_cache: int = 16, counts: tuple[int, ...] = (7, 7), **overrides):
    """Two GPU generations (a newer, faster, hungrier one with fresh embodied carbon, and an older
    one at a third of the speed, sometimes past its lifetime) on the same random load, carbon
    and cache curve as `random_problem`. `counts` are the replicas of each type available, so
    (7, 7) gives 8 × 8 count pairs."""
    from autoscaler.fleet import FleetProblem, FleetType

    rng = np.random.default_rng(seed)
    caps = np.sort(rng.uniform(0, 2000, n_cache))
    caps[0] = 0.0
    hit = 0.75 * (1 - np.exp(-caps / rng.uniform(300, 900)))
    caches = [CacheOption(name=f"c{i}", capacity_gb=float(caps[i]), hit_ratio=float(hit[i])) for i in range(n_cache)]
    prefill_s, decode_s = float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.5, 2.0))
    specs = [("new", CarbonConfig(gpu="H100"), 1.0, 1.0), ("old", CarbonConfig(gpu="A100", gpu_embodied_kg=112.0),
                                                          float(rng.uniform(2.0, 3.5)), float(rng.choice([0.0, 1.0])))]
    types = []
    for (name, carbon, slow, scale), n in zip(specs, counts):
        work = slow * (prefill_s * (1 - hit) + decode_s)
        types.append(FleetType(name=name, max_count=int(n), carbon=carbon, work_s=work, rate_rps=0.7 / work,
                               embodied_scale=scale, alpha_g_per_replica=float(rng.uniform(0, 50))))
    most = sum(k.rate_rps[-1] * k.max_count for k in types)
    shape = 0.5 + 0.35 * np.sin(np.linspace(0, 2 * np.pi * slots / 24, slots) + rng.uniform(0, 6))
    lam = most * np.clip(shape * rng.uniform(0.6, 1.0) + rng.uniform(-0.05, 0.05, slots), 0.02, 0.9)
    ci = rng.uniform(20, 600) * (1 + 0.4 * np.cos(np.linspace(0, 2 * np.pi * slots / 24, slots) + rng.uniform(0, 6)))
    kw = dict(slot_hours=1.0, arrival_rps=lam.tolist(), intensity=ci.tolist(), types=types, caches=caches,
              beta_g_per_gb=float(rng.uniform(0, 0.5)), initial_counts=[n // 2 for n in counts],
              initial_capacity_gb=float(caps[len(caps) // 2]))
    kw.update(overrides)
    return FleetProblem(**kw)
