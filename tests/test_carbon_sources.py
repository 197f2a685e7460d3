"""Carbon-intensity sources: bundled traces, API clients against a local fake server, failures."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoscaler.carbon import CarbonConfig
from autoscaler.carbon_sources import (
    GRIDS, CarbonDataError, ConstantSource, ElectricityMapsSource, ResilientSource, TraceSource, WattTimeSource,
    seasonal_naive,
)

T0 = datetime(2023, 6, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize("zone", GRIDS)
def test_bundled_grids_load(zone):
    src = TraceSource.grid(zone)
    assert len(src.values) == 8760
    assert 0 < src.intensity(T0) < 1000
    assert len(src.forecast(T0, 48)) == 48


def test_trace_values_and_year_wrap():
    fr = TraceSource.grid("FR")
    assert fr.intensity(datetime(2023, 1, 1, 0, 30)) == pytest.approx(35.34)  # first row of the file
    assert fr.intensity(datetime(2025, 1, 1, 0)) == pytest.approx(35.34)  # other years wrap onto 2023
    assert fr.forecast(datetime(2023, 1, 1, 1), 1) == [pytest.approx(36.53)]
    naive = TraceSource.grid("FR", forecast_method="seasonal-naive")
    assert naive.forecast(datetime(2023, 1, 2, 1), 1) == [pytest.approx(36.53)]  # one day earlier


def test_crlf_trace_reads():
    ercot = TraceSource.grid("US-TEX-ERCO")
    assert all(isinstance(v, float) for v in ercot.values[:10])


@pytest.mark.parametrize(
    "body,match",
    [
        ("Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)\n2023-01-01 00:00:00,12\n2023-01-01 01:00:00,abc\n",
         r"row 3: bad carbon intensity 'abc'"),
        ("Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)\n01/01/2023 00:00,12\n", r"row 2: bad timestamp"),
        ("Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)\n2023-01-01 00:00:00,-5\n", r"row 2: .* out of range"),
        ("time,value\n2023-01-01 00:00:00,5\n", r"header must have"),
        ("Datetime (UTC),Carbon Intensity gCO₂eq/kWh (direct)\n", r"no rows"),
    ],
)
def test_bad_trace_names_file_and_row(tmp_path, body, match):
    f = tmp_path / "bad.csv"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(CarbonDataError, match=match) as e:
        TraceSource(f)
    assert str(f) in str(e.value)


def test_missing_trace_is_clear(tmp_path):
    with pytest.raises(CarbonDataError, match="no such carbon-intensity file"):
        TraceSource(tmp_path / "nope.csv")


class _Fake(BaseHTTPRequestHandler):
    mode = {"em": "ok", "wt": "ok"}
    logins = 0

    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/v3/carbon-intensity"):
            if self.headers.get("auth-token") != "tok":
                return self._send(401, {"error": "bad token"})
            if self.mode["em"] == "down":
                return self._send(503, {"error": "down"})
            if self.mode["em"] == "junk":
                return self._send(200, b"<html>not json")
            if "latest" in self.path:
                return self._send(200, {"zone": "FR", "carbonIntensity": 42, "datetime": "2023-06-01T12:00:00Z"})
            return self._send(200, {"zone": "FR", "forecast": [{"carbonIntensity": 40 + i, "datetime": "x"} for i in range(24)]})
        if self.path == "/login":
            type(self).logins += 1
            return self._send(200, {"token": "wt-token"}) if self.headers.get("Authorization", "").startswith("Basic ") \
                else self._send(401, {})
        if self.path.startswith("/v3/forecast"):
            if self.headers.get("Authorization") != "Bearer wt-token":
                return self._send(401, {})
            if self.mode["wt"] == "down":
                return self._send(500, {})
            return self._send(200, {"data": [{"point_time": "x", "value": 1000.0 + i} for i in range(288)]})
        self._send(404, {})


@pytest.fixture
def fake_api():
    _Fake.mode = {"em": "ok", "wt": "ok"}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_electricity_maps_client(fake_api):
    src = ElectricityMapsSource("FR", "tok", base_url=fake_api + "/v3")
    assert src.intensity(T0) == 42
    assert src.forecast(T0, 30) == [40 + i for i in range(24)] + [63] * 6


def test_watttime_client_converts_lb_per_mwh(fake_api):
    src = WattTimeSource("CAISO_NORTH", "u", "p", base_url=fake_api)
    assert src.intensity(T0) == pytest.approx(1000 * 0.45359237)
    fc = src.forecast(T0, 24)
    assert len(fc) == 24 and fc[1] == pytest.approx(1012 * 0.45359237)  # hourly from 5-minute points


def test_failing_source_degrades_to_last_value_then_fallback(fake_api, caplog):
    fallback = TraceSource.grid("FR")
    src = ResilientSource(ElectricityMapsSource("FR", "tok", base_url=fake_api + "/v3", timeout_s=1), fallback)
    assert src.intensity(T0) == 42
    _Fake.mode["em"] = "down"
    assert src.intensity(T0) == 42  # last known value
    assert src.forecast(T0, 5) == fallback.forecast(T0, 5)  # forecast from the trace
    assert any("failed" in r.message for r in caplog.records)
    _Fake.mode["em"] = "junk"
    fresh = ResilientSource(ElectricityMapsSource("FR", "tok", base_url=fake_api + "/v3", timeout_s=1), fallback)
    assert fresh.intensity(T0) == fallback.intensity(T0)  # no last value yet: the trace
    assert fresh.failures == 1


def test_unreachable_source_never_crashes():
    src = ResilientSource(ElectricityMapsSource("FR", "tok", base_url="http://127.0.0.1:9/v3", timeout_s=0.5),
                          ConstantSource(123.0))
    assert src.intensity(T0) == 123.0
    assert src.forecast(T0, 3) == [123.0] * 3


def test_seasonal_naive():
    hist = list(range(48))
    assert seasonal_naive(hist, 3) == [24, 25, 26]
    assert seasonal_naive([5.0], 2) == [5.0, 5.0]


def test_carbon_config_defaults_and_units():
    c = CarbonConfig()
    assert c.replica_embodied_g_per_h() == pytest.approx((150 + 135) * 1000 / (4 * 8760))
    assert c.storage_embodied_g_per_h(1000, 0) == pytest.approx(110 * 1000 / (4 * 8760))
    assert CarbonConfig(gpus_per_replica=4).replica_idle_w() == 4 * 75


def test_footprint_prices_each_amount():
    c = CarbonConfig()
    busy = c.footprint(intensity_g_per_kwh=100, busy_wh=1000)
    assert busy.operational_g == pytest.approx(120) and busy.embodied_g == 0  # 1 kWh × PUE 1.2 × 100 g/kWh
    idle = c.footprint(intensity_g_per_kwh=100, replica_hours=2)
    assert idle.energy_kwh == pytest.approx(2 * 75 / 1000)
    assert idle.embodied_g == pytest.approx(2 * c.replica_embodied_g_per_h())
    ssd = c.footprint(intensity_g_per_kwh=100, ssd_gb_hours=1000)
    assert ssd.energy_kwh == pytest.approx(5 / 1000)  # 1 TB at 5 W/TB for an hour
    assert ssd.embodied_g == pytest.approx(0.110 * 1000 * 1000 / (4 * 8760))
    dram = c.footprint(intensity_g_per_kwh=0, dram_gb_hours=8)
    assert dram.operational_g == 0 and dram.embodied_g == pytest.approx(0.29 * 8 * 1000 / (4 * 8760))
    # linear and broadcasting, as the planner and the simulator use it
    import numpy as np

    arr = c.footprint(intensity_g_per_kwh=np.array([100.0, 200.0]), replica_hours=np.array([1.0, 1.0]))
    assert arr.operational_g[1] == pytest.approx(2 * arr.operational_g[0])


def test_the_autoscaler_keeps_planning_when_its_carbon_api_fails(fake_api, tmp_path):
    """A live carbon API that answers 503, then garbage: every cycle still decides, on the last
    known value and then the bundled trace; when the API recovers its values are used again."""
    import asyncio
    import os

    from autoscaler.actor import CarbonAutoscaler
    from autoscaler.config import AutoscalerConfig, CarbonAPIConfig

    os.environ["TEST_EM_TOKEN"] = "tok"
    cfg = AutoscalerConfig(interval_s=3600, horizon_slots=4, carbon_api=CarbonAPIConfig(
        provider="electricitymaps", zone="FR", base_url=fake_api + "/v3", token_env="TEST_EM_TOKEN", timeout_s=2))
    actor = CarbonAutoscaler(cfg.model_dump(), tmp_path, "api-test")
    try:
        seen, healthy = [], []
        for mode in ("ok", "down", "junk", "ok"):
            _Fake.mode["em"] = mode
            rec = asyncio.run(actor.step())
            seen.append(rec["inputs"]["forecast_g_per_kwh"][0])
            healthy.append(rec["inputs"]["carbon_source"]["healthy"])
            assert rec["decision"]["replicas"] >= 1
        assert seen[0] == 40 and seen[3] == 40  # the service's forecast
        assert seen[1] != 40 and seen[2] != 40  # the fallback trace, not a stale or junk value
        assert healthy == [True, False, False, True]  # the decision log says which values were live
    finally:
        asyncio.run(actor.stop())


def test_serve_flags_select_a_carbon_api(capsys):
    """`greencache serve --carbon-api PROVIDER:ZONE [--carbon-api-url URL]` configures the live
    source; a malformed value is refused before anything starts."""
    import argparse

    from greencache import cli

    p = argparse.ArgumentParser()
    cli._add_serve_args(p)
    cfg = cli._serve_config(p.parse_args(["--carbon-api", "watttime:CAISO_NORTH", "--carbon-api-url", "http://x"]))
    api = cfg.autoscaler.carbon_api
    assert (api.provider, api.zone, api.base_url) == ("watttime", "CAISO_NORTH", "http://x")
    assert cli._serve_config(p.parse_args([])).autoscaler.carbon_api is None
    for bad in (["--carbon-api", "FR"], ["--carbon-api", "nosuchservice:FR"], ["--carbon-api-url", "http://x"]):
        with pytest.raises(ValueError):
            cli._serve_config(p.parse_args(bad))
    assert cli.main(["serve", "--carbon-api", "FR"]) == 2
    assert "PROVIDER:ZONE" in capsys.readouterr().err
