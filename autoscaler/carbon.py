"""Carbon accounting: operational (energy × grid intensity × PUE) and embodied (amortised).

Defaults and their sources (DESIGN.md):
- H100 power prefill / decode / idle 700 / 380 / 75 W; A100 400 / 250 / 63 W: Splitwise (ISCA'24)
  simulator configs.
- SSD 0.110 kgCO2e/GB, DRAM 0.29 kgCO2e/GB, 4-year life; H100 ~150 kg per GPU; host share
  ~135 kg per GPU (1,084 kg per 8-GPU host): EcoServe artifact (S4AI-CornellTech/EServe).
  SSD sensitivity range 0.01–0.16 kg/GB (ACT; Tannu & Nair).
- PUE 1.2: common datacenter figure.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

HOURS_PER_YEAR = 365 * 24


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

    gpu: Literal["H100", "A100"] = Field("H100", description="GPU type (selects default power).")
    gpus_per_replica: int = Field(1, ge=1, description="GPUs per replica (e.g. 4 for Llama-3-70B TP=4).")
    pue: float = Field(1.2, ge=1.0, description="Datacenter power usage effectiveness (dimensionless).")
    gpu_embodied_kg: float = Field(150.0, ge=0, description="Embodied carbon per GPU (kgCO2e), EcoServe.")
    host_embodied_kg_per_gpu: float = Field(135.0, ge=0, description="Host share per GPU (kgCO2e), EcoServe.")
    server_life_years: float = Field(4.0, gt=0, description="Amortisation life of GPUs and hosts (years).")
    ssd_embodied_kg_per_gb: float = Field(0.110, ge=0, description="SSD embodied (kgCO2e/GB), EcoServe; range 0.01-0.16.")
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

    # ---- operational --------------------------------------------------------------------
    def operational_g(self, energy_kwh: float, intensity_g_per_kwh: float) -> float:
        """Grams CO2e for `energy_kwh` of IT energy at a grid intensity (PUE applied)."""
        return energy_kwh * self.pue * intensity_g_per_kwh
