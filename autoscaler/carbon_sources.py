"""Grid carbon-intensity sources: bundled Electricity Maps traces, live APIs, a constant.

`CarbonSource` contract: `intensity(t)` → gCO2e/kWh at time t (UTC datetime); `forecast(t, hours)`
→ hourly values from t. Failure semantics:
- Bad *data* at load time (a trace with a malformed row) raises `CarbonDataError` naming the
  file and row: refuse to start on bad input.
- A *service* failing at run time (timeout, HTTP error, junk JSON) never raises out of
  `ResilientSource`: it answers the last known value, else the fallback trace, and warns.
"""

from __future__ import annotations

import csv
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Protocol, Sequence

import httpx

logger = logging.getLogger("greencache.carbon")

DATA_DIR = Path(__file__).parent / "data" / "carbon_intensity"
GRIDS = ("FR", "DE", "US-CAL-CISO", "US-MIDA-PJM", "US-TEX-ERCO", "IN-WE")
LB_PER_MWH_TO_G_PER_KWH = 0.45359237  # 1 lb/MWh = 453.59237 g / 1000 kWh


class CarbonDataError(ValueError):
    """Malformed carbon-intensity data; the message names the file and row."""


class CarbonSource(Protocol):
    name: str

    def intensity(self, t: datetime) -> float: ...
    def forecast(self, t: datetime, hours: int) -> list[float]: ...


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _hour(t: datetime) -> datetime:
    return _utc(t).replace(minute=0, second=0, microsecond=0)


class ConstantSource:
    def __init__(self, g_per_kwh: float) -> None:
        self.name = f"constant-{g_per_kwh:g}"
        self.value = float(g_per_kwh)

    def intensity(self, t: datetime) -> float:
        return self.value

    def forecast(self, t: datetime, hours: int) -> list[float]:
        return [self.value] * hours


def source_status(source) -> dict:
    """What the decision log records about the source a cycle used."""
    status = getattr(source, "status", None)
    return status() if callable(status) else {"name": source.name, "healthy": True, "failures": 0}


class TraceSource:
    """An Electricity Maps hourly CSV (`Datetime (UTC)`, `Carbon Intensity gCO₂eq/kWh (direct)`).

    Times outside the trace wrap around by whole years, so a 2023 trace drives any date.
    `forecast_method`: "trace" (the recorded values: perfect foresight, for experiments) or
    "seasonal-naive" (each hour's value one day earlier, what a real forecaster would beat).
    """

    COLUMN = {"direct": "Carbon Intensity gCO₂eq/kWh (direct)", "lca": "Carbon Intensity gCO₂eq/kWh (LCA)"}

    def __init__(self, path: str | Path, *, basis: str = "direct", forecast_method: str = "trace") -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.forecast_method = forecast_method
        if basis not in self.COLUMN:
            raise ValueError(f"basis must be 'direct' or 'lca', got {basis!r}")
        col = self.COLUMN[basis]
        values: dict[datetime, float] = {}
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "Datetime (UTC)" not in reader.fieldnames or col not in reader.fieldnames:
                    raise CarbonDataError(f"{self.path}: header must have 'Datetime (UTC)' and '{col}', "
                                          f"found {reader.fieldnames}")
                for row_no, row in enumerate(reader, start=2):
                    ts, raw = (row.get("Datetime (UTC)") or "").strip(), (row.get(col) or "").strip()
                    try:
                        t = datetime.strptime(ts, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
                    except ValueError:
                        raise CarbonDataError(f"{self.path}, row {row_no}: bad timestamp {ts!r} "
                                              "(expected YYYY-MM-DD HH:MM:SS)") from None
                    try:
                        v = float(raw)
                    except ValueError:
                        raise CarbonDataError(f"{self.path}, row {row_no}: bad carbon intensity {raw!r}") from None
                    if not (0 <= v < 5000):
                        raise CarbonDataError(f"{self.path}, row {row_no}: carbon intensity {v} g/kWh out of range")
                    values[t] = v
        except FileNotFoundError:
            raise CarbonDataError(f"{self.path}: no such carbon-intensity file") from None
        except UnicodeDecodeError as e:
            raise CarbonDataError(f"{self.path}: not UTF-8 text ({e})") from None
        if not values:
            raise CarbonDataError(f"{self.path}: no rows")
        self.times = sorted(values)
        self.values = [values[t] for t in self.times]
        self._index = {t: i for i, t in enumerate(self.times)}
        self.start, self.end = self.times[0], self.times[-1]

    @classmethod
    def grid(cls, zone: str, **kwargs) -> "TraceSource":
        if zone not in GRIDS:
            raise ValueError(f"unknown grid {zone!r}; bundled: {', '.join(GRIDS)}")
        return cls(DATA_DIR / f"{zone}_2023_hourly.csv", **kwargs)

    def _lookup(self, t: datetime) -> float:
        h = _hour(t)
        if h < self.start or h > self.end:  # wrap by whole years into the trace
            h = h.replace(year=self.start.year) if not (h.month == 2 and h.day == 29) else h.replace(year=self.start.year, day=28)
        i = self._index.get(h)
        if i is None:  # a gap: nearest earlier hour
            import bisect

            i = max(0, bisect.bisect_right(self.times, h) - 1)
        return self.values[i]

    def intensity(self, t: datetime) -> float:
        return self._lookup(t)

    def forecast(self, t: datetime, hours: int) -> list[float]:
        t = _hour(t)
        if self.forecast_method == "seasonal-naive":
            return [self._lookup(t + timedelta(hours=h) - timedelta(days=1)) for h in range(hours)]
        return [self._lookup(t + timedelta(hours=h)) for h in range(hours)]


class ElectricityMapsSource:
    """Electricity Maps API v3: `/carbon-intensity/latest` and `/carbon-intensity/forecast`."""

    def __init__(self, zone: str, token: str, *, base_url: str = "https://api.electricitymap.org/v3",
                 timeout_s: float = 5.0) -> None:
        self.name = f"electricitymaps-{zone}"
        self.zone = zone
        self.client = httpx.Client(base_url=base_url, timeout=timeout_s, headers={"auth-token": token})

    def intensity(self, t: datetime) -> float:
        r = self.client.get("/carbon-intensity/latest", params={"zone": self.zone})
        r.raise_for_status()
        return float(r.json()["carbonIntensity"])

    def forecast(self, t: datetime, hours: int) -> list[float]:
        r = self.client.get("/carbon-intensity/forecast", params={"zone": self.zone})
        r.raise_for_status()
        points = [float(p["carbonIntensity"]) for p in r.json()["forecast"]]
        if not points:
            raise ValueError("empty forecast")
        return (points + [points[-1]] * hours)[:hours]


class WattTimeSource:
    """WattTime API v3 (marginal CO2, `co2_moer`, lb/MWh → g/kWh); logs in for a bearer token."""

    def __init__(self, region: str, username: str, password: str, *, base_url: str = "https://api.watttime.org",
                 timeout_s: float = 5.0) -> None:
        self.name = f"watttime-{region}"
        self.region = region
        self.client = httpx.Client(base_url=base_url, timeout=timeout_s)
        self._auth = (username, password)
        self._token: Optional[str] = None

    def _get(self, path: str, params: dict) -> dict:
        if self._token is None:
            r = self.client.get("/login", auth=self._auth)
            r.raise_for_status()
            self._token = r.json()["token"]
        r = self.client.get(path, params=params, headers={"Authorization": f"Bearer {self._token}"})
        if r.status_code == 401:  # token expired: log in again once
            self._token = None
            return self._get(path, params)
        r.raise_for_status()
        return r.json()

    def _series(self) -> list[float]:
        data = self._get("/v3/forecast", {"region": self.region, "signal_type": "co2_moer"})["data"]
        return [float(p["value"]) * LB_PER_MWH_TO_G_PER_KWH for p in data]

    def intensity(self, t: datetime) -> float:
        return self._series()[0]

    def forecast(self, t: datetime, hours: int) -> list[float]:
        series = self._series()  # 5-minute points: take one per hour
        hourly = series[::12] or series
        return (hourly + [hourly[-1]] * hours)[:hours]


class ResilientSource:
    """Wrap a live source: on any failure answer the last known value, else `fallback`; warn once per outage."""

    def __init__(self, primary, fallback=None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.last: Optional[float] = None
        self.failures = 0
        self._failing = False

    @property
    def healthy(self) -> bool:
        """False while the live service is failing (answers come from the last value or the fallback)."""
        return not self._failing

    def status(self) -> dict:
        return {"name": self.name, "healthy": self.healthy, "failures": self.failures}

    def _failed(self, e: Exception) -> None:
        self.failures += 1
        if not self._failing:
            logger.warning("carbon source %s failed (%s: %s); using %s", self.primary.name, type(e).__name__, e,
                           "last known value" if self.last is not None else "fallback")
        self._failing = True

    def intensity(self, t: datetime) -> float:
        try:
            v = float(self.primary.intensity(t))
            if not (0 <= v < 5000):
                raise ValueError(f"implausible intensity {v}")
            self.last, self._failing = v, False
            return v
        except Exception as e:  # network, HTTP, JSON, value errors: degrade, never crash
            self._failed(e)
            if self.last is not None:
                return self.last
            if self.fallback is not None:
                return self.fallback.intensity(t)
            raise RuntimeError(f"carbon source {self.name} failed and has no fallback") from e

    def forecast(self, t: datetime, hours: int) -> list[float]:
        try:
            values = [float(v) for v in self.primary.forecast(t, hours)]
            if len(values) != hours or any(not (0 <= v < 5000) for v in values):
                raise ValueError("malformed forecast")
            self._failing = False
            return values
        except Exception as e:
            self._failed(e)
            if self.fallback is not None:
                return self.fallback.forecast(t, hours)
            return [self.intensity(t)] * hours


def seasonal_naive(history: Sequence[float], hours: int, season: int = 24) -> list[float]:
    """Forecast `hours` values repeating the last `season` of `history` (needs >= 1 value)."""
    if not history:
        raise ValueError("seasonal_naive needs history")
    last = list(history[-season:])
    return [last[(len(last) - season + h) % len(last)] if len(last) >= season else last[-1] for h in range(hours)]


def source_for(grid: str, api=None):
    """The autoscaler's carbon source: the bundled trace of `grid`, or a live service (an
    `autoscaler.config.CarbonAPIConfig`) that falls back to its last value, then to that trace."""
    import os

    trace = TraceSource.grid(grid)
    if api is None:
        return trace
    secret = os.environ.get(api.token_env, "")
    if api.provider == "electricitymaps":
        primary = ElectricityMapsSource(api.zone, secret, timeout_s=api.timeout_s,
                                        **({"base_url": api.base_url} if api.base_url else {}))
    else:
        user, _, password = secret.partition(":")
        primary = WattTimeSource(api.zone, user, password, timeout_s=api.timeout_s,
                                 **({"base_url": api.base_url} if api.base_url else {}))
    return ResilientSource(primary, fallback=trace)
