"""GPU types: the catalogue of GPU generations the planner can mix (`data/profiles/gpu_types.json`,
written by scripts/derive_gpu_profiles.py) and the `--fleet` / `autoscaler.fleet` spec that picks
from it. Plain data (pydantic, JSON): configuration can import it; the planner over these types
is autoscaler/fleet.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.carbon import CarbonConfig

PROFILES = Path(__file__).parent / "data" / "profiles"
CATALOGUE = PROFILES / "gpu_types.json"


class GPUType(BaseModel):
    """One GPU generation as the planner prices and sizes it, for one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short name used on the command line and as the Ray resource, e.g. h100.")
    label: str = Field("", description="Full name, e.g. H100-80GB.")
    count: int = Field(8, ge=0, description="Replicas of this type the operator has.")
    memory_gb: float = Field(80.0, gt=0, description="Memory per GPU (GB).")
    profile: str = Field(description="PerfModel profile (JSON) of the model on one replica of this type.")
    carbon: CarbonConfig = Field(description="Power, GPUs per replica, embodied carbon and lifetime.")
    past_lifetime: bool = Field(False, description="The GPUs are past their planned lifetime (reuse).")
    reuse_embodied_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of the amortised embodied carbon still charged per hour when "
        "past_lifetime (0: fully paid for by its first life; EcoServe's reuse case).")

    def embodied_scale(self) -> float:
        return self.reuse_embodied_fraction if self.past_lifetime else 1.0

    def perf(self):
        from autoscaler.perf_model import PerfModel

        path = Path(self.profile)
        return PerfModel.load(path if path.is_absolute() else PROFILES / path)


def load_catalogue(model: str = "llama3-8b", path: Path = CATALOGUE) -> dict[str, GPUType]:
    """The GPU types the repository ships profiles for, for `model` (llama3-8b or llama3-70b)."""
    data = json.loads(Path(path).read_text())
    out = {}
    for name, t in data["types"].items():
        if model not in t["profiles"]:
            continue
        gpus = int(t["gpus_per_replica"][model])
        carbon = CarbonConfig(gpu=t["power_key"], gpus_per_replica=gpus, gpu_embodied_kg=t["gpu_embodied_kg"],
                              host_embodied_kg_per_gpu=t["host_embodied_kg_per_gpu"],
                              server_life_years=t["lifetime_years"])
        out[name] = GPUType(name=name, label=t["label"], memory_gb=t["memory_gb"], profile=t["profiles"][model],
                            carbon=carbon)
    return out


def parse_fleet(spec: str, model: str = "llama3-8b") -> list[GPUType]:
    """`h100:8,a100:8` (add `:reuse` or `:reuse=0.25` to mark a type past its lifetime) → types."""
    cat = load_catalogue(model)
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, *rest = part.split(":")
        if any(t.name == name for t in out):
            raise ValueError(f"--fleet names {name!r} twice; give each GPU type once with its count")
        if name not in cat:
            raise ValueError(f"unknown GPU type {name!r} in --fleet; known: {', '.join(sorted(cat))}")
        if not rest or not rest[0].isdigit():
            raise ValueError(f"--fleet entry {part!r} needs a count, e.g. {name}:8")
        upd: dict = {"count": int(rest[0])}
        for flag in rest[1:]:
            key, _, val = flag.partition("=")
            if key != "reuse":
                raise ValueError(f"unknown --fleet flag {flag!r} (only reuse[=fraction])")
            upd.update(past_lifetime=True, reuse_embodied_fraction=float(val) if val else 0.0)
        out.append(cat[name].model_copy(update=upd))
    if not out:
        raise ValueError("--fleet names no GPU type")
    return out
