"""Carbon accounting: operational (energy × grid intensity × PUE) and embodied (amortised).

`CarbonConfig.footprint` is the one carbon-cost function of GreenCache: the planner's objective,
the live actor's ledger, the simulator's totals and the store's embodied-carbon metric all
price their amounts through it (replica-hours, energy above idle, provisioned GB-hours):

    energy_kWh   = (replica_h·P_idle + busy_Wh + ssd_GB_h·P_ssd/1000 + dram_GB_h·P_dram) / 1000
    operational  = energy_kWh · PUE · CI                                  (g)
    embodied     = replica_h·e_replica + ssd_GB_h·e_ssd + dram_GB_h·e_dram  (g, amortised per hour)

It is linear in every amount, so the MILP can take its coefficients from it, and it broadcasts
over numpy arrays, so the planner's cost tensor and the simulator's hourly totals use it as is.

Per request (`RequestCarbonRate`): each planning cycle the actor spreads the slot's footprint (the
amount its ledger charges) over the requests it expects in the slot, weighted by the GPU work
each one causes, so that the per-request estimates the API returns add up to the ledger:

    expected   N  = max(1, λ·Δ)               (λ: observed request rate, Δ: the interval in seconds)
    weight     w  = a·u/ū + (1 − a)·o/ō       (u, o: a request's uncached prompt and output tokens;
                                               ū, ō: their observed means; a: prefill's share of a
                                               mean request's GPU work W = prefill·(1 − h) + decode)
    request    g  = w · footprint / N         (operational and embodied alike)

A mean request has w = 1; one served wholly from cache pays only for its decode share. An
estimate prices the configured hardware profile (GPU type, PUE, embodied factors), not
measured power.

Defaults and their sources (DESIGN.md):
- H100 power prefill / decode / idle 700 / 380 / 75 W; A100 400 / 250 / 63 W: Splitwise (ISCA'24)
  simulator configs.
- SSD 0.110 kgCO2e/GB, DRAM 0.29 kgCO2e/GB, 4-year life; H100 ~150 kg per GPU; host share
  ~135 kg per GPU (1,084 kg per 8-GPU host): EcoServe artifact (S4AI-CornellTech/EServe).
  SSD sensitivity range 0.01–0.16 kg/GB (ACT; Tannu & Nair).
- PUE 1.2: common datacenter figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

HOURS_PER_YEAR = 365 * 24
# EcoServe artifact (S4AI-CornellTech/EServe); the sensitivity range 0.01-0.16 is ACT's.
SSD_EMBODIED_KG_PER_GB = 0.110


@dataclass(frozen=True)
class Footprint:
    """Grams CO2e (floats or numpy arrays of one shape) and the IT energy behind them."""

    operational_g: Any
    embodied_g: Any
    energy_kwh: Any  # IT energy, before PUE

    @property
    def total_g(self) -> Any:
        return self.operational_g + self.embodied_g


class GPUPower(BaseModel):
    prefill_w: float = Field(description="Power while prefilling (W).")
    decode_w: float = Field(description="Power while decoding (W).")
    idle_w: float = Field(description="Power when idle (W).")


GPU_POWER = {
    "H100": GPUPower(prefill_w=700, decode_w=380, idle_w=75),  # Splitwise simulator configs
    "A100": GPUPower(prefill_w=400, decode_w=250, idle_w=63),  # Splitwise simulator configs
}


class CarbonConfig(BaseModel):
    """Every factor the planner prices carbon with; all overridable."""

    model_config = ConfigDict(extra="forbid")

    gpu: Literal["H100", "A100"] = Field("H100", description="GPU type (selects default power).")
    gpus_per_replica: int = Field(1, ge=1, description="GPUs per replica (e.g. 4 for Llama-3-70B TP=4).")
    pue: float = Field(1.2, ge=1.0, description="Datacenter power usage effectiveness (dimensionless).")
    gpu_embodied_kg: float = Field(150.0, ge=0, description="Embodied carbon per GPU (kgCO2e), EcoServe.")
    host_embodied_kg_per_gpu: float = Field(135.0, ge=0, description="Host share per GPU (kgCO2e), EcoServe.")
    server_life_years: float = Field(4.0, gt=0, description="Amortisation life of GPUs and hosts (years).")
    ssd_embodied_kg_per_gb: float = Field(SSD_EMBODIED_KG_PER_GB, ge=0,
                                          description="SSD embodied (kgCO2e/GB), EcoServe; range 0.01-0.16.")
    dram_embodied_kg_per_gb: float = Field(0.29, ge=0, description="DRAM embodied (kgCO2e/GB), EcoServe.")
    storage_life_years: float = Field(4.0, gt=0, description="Amortisation life of SSD and DRAM (years).")
    ssd_power_w_per_tb: float = Field(5.0, ge=0, description="SSD active power per TB provisioned (W/TB).")
    dram_power_w_per_gb: float = Field(0.375, ge=0, description="DRAM power per GB (W/GB), ~3 W per 8 GB DIMM.")
    gpu_idle_w: Optional[float] = Field(None, ge=0, description="Override the GPU's idle power (W). An H100 holding "
                                        "a CUDA context and weights measured 120 W, not 75 (benchmarks/results/gpu).")

    @property
    def power(self) -> GPUPower:
        p = GPU_POWER[self.gpu]
        return p if self.gpu_idle_w is None else p.model_copy(update={"idle_w": self.gpu_idle_w})

    # ---- embodied, grams per hour -------------------------------------------------------
    def replica_embodied_g_per_h(self) -> float:
        kg = self.gpus_per_replica * (self.gpu_embodied_kg + self.host_embodied_kg_per_gpu)
        return kg * 1000 / (self.server_life_years * HOURS_PER_YEAR)

    def storage_embodied_g_per_h(self, ssd_gb: float, dram_gb: float) -> float:
        kg = ssd_gb * self.ssd_embodied_kg_per_gb + dram_gb * self.dram_embodied_kg_per_gb
        return kg * 1000 / (self.storage_life_years * HOURS_PER_YEAR)

    # ---- power, watts -------------------------------------------------------------------
    def replica_idle_w(self) -> float:
        return self.gpus_per_replica * self.power.idle_w

    def replica_busy_w(self, prefill_fraction: float = 0.5) -> float:
        p = self.power
        return self.gpus_per_replica * (prefill_fraction * p.prefill_w + (1 - prefill_fraction) * p.decode_w)

    def storage_w(self, ssd_gb: float, dram_gb: float) -> float:
        return ssd_gb / 1000 * self.ssd_power_w_per_tb + dram_gb * self.dram_power_w_per_gb

    def basis(self) -> str:
        """The hardware profile an estimate prices, in words."""
        return (f"estimate for {self.gpus_per_replica}x {self.gpu} per replica (Splitwise power model), "
                f"PUE {self.pue:g}, embodied amortised over {self.server_life_years:g} years (EcoServe)")

    def busy_extra_w(self) -> float:
        """Power a busy replica draws above idle (W): busy replica-hours × this = busy Wh."""
        return self.replica_busy_w() - self.replica_idle_w()

    # ---- the carbon-cost function ---------------------------------------------------------
    def footprint(self, *, intensity_g_per_kwh: Any, replica_hours: Any = 0.0, busy_wh: Any = 0.0,
                  ssd_gb_hours: Any = 0.0, dram_gb_hours: Any = 0.0) -> Footprint:
        """Carbon of running `replica_hours` of replicas (idle power and embodied), `busy_wh` of
        GPU energy above idle, and storage provisioned for `ssd_gb_hours` / `dram_gb_hours`, at
        grid intensity `intensity_g_per_kwh`. Arguments broadcast as numpy arrays do."""
        energy_kwh = (replica_hours * self.replica_idle_w() + busy_wh
                      + ssd_gb_hours * self.ssd_power_w_per_tb / 1000 + dram_gb_hours * self.dram_power_w_per_gb) / 1000
        embodied = (replica_hours * self.replica_embodied_g_per_h()
                    + self.storage_embodied_g_per_h(1.0, 0.0) * ssd_gb_hours
                    + self.storage_embodied_g_per_h(0.0, 1.0) * dram_gb_hours)
        return Footprint(operational_g=energy_kwh * self.pue * intensity_g_per_kwh, embodied_g=embodied,
                         energy_kwh=energy_kwh)


@dataclass(frozen=True)
class RequestCarbonRate:
    """What one request of the slot's mean mix costs (grams), and the mix that defines "mean"."""

    operational_g: float
    embodied_g: float
    prefill_share: float
    mean_uncached_tokens: float
    mean_output_tokens: float
    intensity_g_per_kwh: float
    basis: str  # the hardware profile the estimate prices, for clients to read

    @classmethod
    def for_slot(cls, fp: Footprint, *, expected_requests: float, prefill_s: float, decode_s: float,
                 hit_ratio: float, mean_uncached_tokens: float, mean_output_tokens: float,
                 intensity_g_per_kwh: float, basis: str) -> "RequestCarbonRate":
        n = max(1.0, float(expected_requests))
        prefill = max(0.0, float(prefill_s) * (1 - float(hit_ratio)))
        work = prefill + max(0.0, float(decode_s))
        return cls(operational_g=float(fp.operational_g) / n, embodied_g=float(fp.embodied_g) / n,
                   prefill_share=prefill / work if work > 0 else 0.0,
                   mean_uncached_tokens=max(0.0, float(mean_uncached_tokens)),
                   mean_output_tokens=max(0.0, float(mean_output_tokens)),
                   intensity_g_per_kwh=float(intensity_g_per_kwh), basis=basis)

    def weight(self, prompt_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        a = self.prefill_share
        u = max(0, prompt_tokens - cached_tokens) / self.mean_uncached_tokens if self.mean_uncached_tokens else 1.0
        o = output_tokens / self.mean_output_tokens if self.mean_output_tokens else 1.0
        return a * u + (1 - a) * o

    def estimate(self, prompt_tokens: int, cached_tokens: int, output_tokens: int) -> dict:
        """The `usage.carbon` object of a response."""
        w = self.weight(prompt_tokens, cached_tokens, output_tokens)
        op, emb = w * self.operational_g, w * self.embodied_g
        return {"operational_g_co2e": op, "embodied_g_co2e": emb, "total_g_co2e": op + emb,
                "grid_intensity_g_per_kwh": self.intensity_g_per_kwh, "estimate": True, "basis": self.basis}

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: Optional[dict]) -> Optional["RequestCarbonRate"]:
        if not d:
            return None
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


class CarbonLedger:
    """Running totals of carbon charged so far (grams), by kind."""

    def __init__(self, operational_g: float = 0.0, embodied_g: float = 0.0) -> None:
        self.operational_g = float(operational_g)
        self.embodied_g = float(embodied_g)

    def charge(self, fp: Footprint) -> None:
        self.operational_g += float(fp.operational_g)
        self.embodied_g += float(fp.embodied_g)

    def totals(self) -> dict:
        return {"operational": self.operational_g, "embodied": self.embodied_g}

    @classmethod
    def from_totals(cls, totals: Optional[dict]) -> "CarbonLedger":
        totals = totals or {}
        return cls(totals.get("operational", 0.0), totals.get("embodied", 0.0))
