"""Configuration of the carbon autoscaler (the live actor; the simulator builds the same model).

Importing this module imports no Ray and no other part of GreenCache.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler.carbon import CarbonConfig
from autoscaler.perf_model import SLO

DEFAULT_CAPACITIES_GB = (0.0, 50, 100, 200, 400, 800, 1600)


class CarbonAPIConfig(BaseModel):
    """A live carbon-intensity service; the bundled trace of `grid` stays the fallback."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["electricitymaps", "watttime"] = Field(description="Which service.")
    zone: str = Field(description="Electricity Maps zone or WattTime region, e.g. FR or CAISO_NORTH.")
    base_url: Optional[str] = Field(None, description="Service URL; default: the provider's public API.")
    token_env: str = Field("GREENCACHE_CARBON_API_TOKEN", description="Environment variable with the Electricity "
                           "Maps token, or WattTime's 'user:password', on the node where the autoscaler runs.")
    timeout_s: float = Field(5.0, gt=0, description="Deadline of one call (s).")


class AutoscalerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the carbon autoscaler beside the Serve app.")
    grid: str = Field("FR", description="Bundled Electricity Maps grid for carbon intensity.")
    trace_start: str = Field("2023-06-01T00:00", description="Trace time the autoscaler starts at (UTC, ISO).")
    interval_s: float = Field(30.0, gt=0, description="Seconds between planning cycles.")
    trace_hours_per_interval: float = Field(
        0.0, ge=0, description="Demo speed-up: trace hours the clock advances per interval; 0 = real time.")
    horizon_slots: int = Field(12, ge=1, description="Planning horizon (hourly slots).")
    min_replicas: int = Field(1, ge=1, description="Fewest LLM replicas.")
    max_replicas: int = Field(2, ge=1, description="Most LLM replicas.")
    capacities_gb: list[float] = Field(default_factory=lambda: list(DEFAULT_CAPACITIES_GB),
                                       description="Disk-tier capacity options the planner chooses from (GB).")
    solver_time_limit_s: float = Field(2.0, gt=0, description="MILP time limit per cycle (s).")
    profile_path: str = Field("", description="Performance profile from `greencache profile`; empty = stated defaults.")
    slo: SLO = Field(default_factory=SLO, description="TTFT/TPOT targets and the utilisation ceiling the plan keeps.")
    prompt_tokens: float = Field(2048, gt=0, description="Mean prompt length the plan assumes (tokens), with a profile.")
    output_tokens: float = Field(256, gt=0, description="Mean output length the plan assumes (tokens), with a profile.")
    carbon: CarbonConfig = Field(default_factory=CarbonConfig, description="Power and embodied-carbon factors.")
    carbon_api: Optional[CarbonAPIConfig] = Field(None, description="Live carbon-intensity service (else the "
                                                  "bundled trace); on failure the last value, then the trace.")
    fleet: str = Field("", description="Mixed GPU fleet, e.g. 'h100:2,a100:4:reuse' (types from "
                       "autoscaler/data/profiles/gpu_types.json, count of replicas each, ':reuse[=f]' past lifetime): "
                       "one LLM deployment per type, sized by the plan; empty = one type, min/max_replicas.")
    fleet_model: Literal["llama3-8b", "llama3-70b"] = Field(
        "llama3-8b", description="Which model's GPU profiles price the fleet (the catalogue has these two).")

    @model_validator(mode="after")
    def _fleet_parses(self) -> "AutoscalerConfig":
        if self.fleet.strip():
            types = self.fleet_types()  # a misspelt type or count is an error at startup, with the fix
            if sum(t.count for t in types) < self.min_replicas:
                raise ValueError(f"fleet {self.fleet!r} has fewer replicas in all than min_replicas "
                                 f"({self.min_replicas}); add replicas to the fleet or lower min_replicas")
        return self

    def fleet_types(self) -> list:
        """The fleet's `GPUType`s (autoscaler/gpu_types.py), in the order given; [] without a fleet."""
        if not self.fleet.strip():
            return []
        from autoscaler.gpu_types import parse_fleet

        return parse_fleet(self.fleet, self.fleet_model)
