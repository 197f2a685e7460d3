"""Carbon per request: every response's usage carries the request's share of the autoscaler's
carbon for the slot it ran in, the ingress counts it in `greencache_carbon_grams_total`, and the
shares add up to the autoscaler's ledger. Also: the operator's Grafana dashboard only queries
metrics a running deployment exports."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from autoscaler.carbon import CarbonConfig, RequestCarbonRate
from conftest import free_port, hold_ray, release_ray

DASHBOARD = Path(__file__).resolve().parents[1] / "deployments" / "grafana" / "greencache.json"
INTERVAL_S = 6.0


def test_a_slots_requests_add_up_to_its_footprint_and_pay_by_size():
    fp = CarbonConfig().footprint(intensity_g_per_kwh=300.0, replica_hours=2 * INTERVAL_S / 3600,
                                  busy_wh=40.0 * INTERVAL_S / 3600, ssd_gb_hours=1.0 * INTERVAL_S / 3600)
    rate = RequestCarbonRate.for_slot(fp, expected_requests=4, prefill_s=0.3, decode_s=0.5, hit_ratio=0.5,
                                      mean_uncached_tokens=300, mean_output_tokens=50, intensity_g_per_kwh=300.0,
                                      basis="test")
    # four requests whose uncached prompt and output tokens average 300 and 50
    mix = [(600, 200, 20), (400, 200, 80), (300, 0, 50), (400, 100, 50)]
    est = [rate.estimate(p, c, o) for p, c, o in mix]
    assert sum(e["operational_g_co2e"] for e in est) == pytest.approx(fp.operational_g)
    assert sum(e["embodied_g_co2e"] for e in est) == pytest.approx(fp.embodied_g)
    # a prompt served from cache pays for its decode only; more output costs more
    assert rate.estimate(500, 500, 50)["total_g_co2e"] < rate.estimate(500, 0, 50)["total_g_co2e"]
    assert rate.estimate(500, 0, 80)["total_g_co2e"] > rate.estimate(500, 0, 50)["total_g_co2e"]
    assert all(e["estimate"] is True and e["basis"] == "test" for e in est)
    assert RequestCarbonRate.from_json(rate.to_json()) == rate
    assert RequestCarbonRate.from_json({"operational_g": 1.0}) is None  # a partial record is no price


@pytest.fixture(scope="module")
def priced(demo_model, tmp_path_factory):
    """One replica, the autoscaler on real time (no trace speed-up), a short interval."""
    from autoscaler.config import AutoscalerConfig
    from deployments.app import autoscaler_handle
    from deployments.config import ServeConfig
    from deployments.launch import start_serve, stop_all

    hold_ray("carbon-priced", stop_all)
    config = ServeConfig(
        model=str(demo_model), served_model_name="demo", port=free_port(), num_replicas=1, max_model_len=1024,
        home=tmp_path_factory.mktemp("carbon-home"),
        autoscaler=AutoscalerConfig(enabled=True, grid="FR", min_replicas=1, max_replicas=1, interval_s=INTERVAL_S,
                                    trace_hours_per_interval=0.0, horizon_slots=4))
    url = start_serve(config)
    try:
        yield url, autoscaler_handle()
    finally:
        stop_all()
        release_ray("carbon-priced")


class SteadyLoad:
    """Two clients, each sending one request a second on a fixed schedule (half of them
    streamed), cycling through three sizes, keeping the `usage.carbon` of each answer.

    Paced, not back to back: a slot's price spreads its footprint over the requests the
    previous slot saw, so the sum over a slot matches its footprint as far as the two slots'
    counts and mixes agree. Closed-loop clients on a busy machine vary both by a third from
    one six-second slot to the next; a fixed schedule holds them (twelve requests, four of each
    size, per slot), which is the steady load this accounting is claimed for."""

    SIZES = ((64, 32), (300, 16), (600, 4))  # (prompt tokens, max tokens)
    EVERY_S = 1.0

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.usages, self.errors = url, threading.Event(), [], []
        self.late = 0  # requests that could not start on time (the previous one ran over)
        t0 = time.monotonic() + 0.5
        self.threads = [threading.Thread(target=self._client, args=(k, t0 + k * self.EVERY_S / 2), daemon=True)
                        for k in range(2)]
        for t in self.threads:
            t.start()

    def _client(self, k: int, t0: float) -> None:
        import random

        rng = random.Random(k)
        with httpx.Client(timeout=120) as c:
            i = 0
            while not self.stop.is_set():
                wait = t0 + i * self.EVERY_S - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    self.late += 1
                n, max_tokens = self.SIZES[i % len(self.SIZES)]
                i += 1
                body = {"model": "demo", "prompt": [rng.randrange(10, 250) for _ in range(n)],
                        "max_tokens": max_tokens, "ignore_eos": True}
                if i % 2:
                    body.update(stream=True, stream_options={"include_usage": True})
                    usage = None
                    with c.stream("POST", self.url + "/v1/completions", json=body) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: {"):
                                usage = json.loads(line[6:]).get("usage") or usage
                else:
                    r = c.post(self.url + "/v1/completions", json=body)
                    usage = r.json().get("usage") if r.status_code == 200 else None
                if usage is None:
                    self.errors.append(i)
                else:
                    self.usages.append(usage)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def _carbon_counters(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {"operational": 0.0, "embodied": 0.0}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "greencache_carbon_grams_total":
                out[s.labels["kind"]] += s.value
    return out


def test_per_request_estimates_add_up_to_the_ledger(priced):
    url, actor = priced
    load = SteadyLoad(url)
    try:
        deadline = time.monotonic() + 120
        while not any("carbon" in u for u in load.usages):  # the ingress has the autoscaler's price
            assert time.monotonic() < deadline, "no response carried usage.carbon"
            time.sleep(0.5)
        status = lambda: actor.status.remote().result(timeout_s=30)  # noqa: E731
        # The price follows the rate observed over the previous interval: measure once two
        # cycles in a row have seen this load (at its onset a slot expects no request, and
        # its first requests carry the whole slot).
        while not (st := status())["last"] or not st["last"]["inputs"]["observed_rps"]:
            assert time.monotonic() < deadline, "the autoscaler never observed the load"
            time.sleep(0.2)
        c0 = st["last"]["cycle"] + 2
        ledger: dict[int, dict] = {}
        counters: dict[int, dict] = {}
        while len(counters) < 7:  # cycle c0 - 1, then five whole slots
            st = status()
            c = st["last"]["cycle"]  # (`cycles` counts a cycle before its record is the last one)
            if c >= c0 - 1 and c not in ledger:
                counters[c] = _carbon_counters(url)
                ledger[c] = st["last"]["carbon_so_far_g"]
            time.sleep(0.1)
            assert time.monotonic() < deadline + 120, f"planning stalled at cycle {c}"
    finally:
        load.close()
    first, last = min(counters) + 1, max(counters)
    assert sorted(counters) == list(range(first - 1, last + 1)), "a planning cycle was missed while measuring"
    for kind in ("operational", "embodied"):
        # requests finished between cycles `first` and `last` ran in slots first .. last-1,
        # whose footprints the ledger charged at cycles first .. last-1
        per_request = counters[last][kind] - counters[first][kind]
        charged = ledger[last - 1][kind] - ledger[first - 1][kind]
        assert per_request > 0 and charged > 0
        print(f"{kind}: per-request sum {per_request:.4g} g, ledger {charged:.4g} g, "
              f"ratio {per_request / charged:.3f}; late starts {load.late}")
        assert per_request == pytest.approx(charged, rel=0.10), (kind, per_request, charged, load.late)
    assert not load.errors
    assert all(u["carbon"]["estimate"] is True for u in load.usages[-20:])


def test_the_openai_sdk_reads_carbon_in_usage(priced):
    url, _ = priced
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    chat = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello there"}],
                                          max_tokens=8)
    carbon = chat.usage.model_extra["carbon"]
    assert carbon["estimate"] is True and "H100" in carbon["basis"]
    assert carbon["total_g_co2e"] == pytest.approx(carbon["operational_g_co2e"] + carbon["embodied_g_co2e"])
    assert carbon["operational_g_co2e"] > 0 and carbon["embodied_g_co2e"] > 0
    last = None
    for chunk in client.completions.create(model="demo", prompt="a story about", max_tokens=32, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
        last = chunk
    assert last.usage is not None and last.usage.completion_tokens == 32
    long_answer = last.usage.model_extra["carbon"]
    short = client.completions.create(model="demo", prompt="a poem about", max_tokens=2,
                                      extra_body={"ignore_eos": True})
    assert short.usage.model_extra["carbon"]["total_g_co2e"] < long_answer["total_g_co2e"]


def test_the_dashboard_queries_only_exported_metrics(priced):
    url, _ = priced
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = {p["title"] for p in dash["panels"]}
    for want in ("Time to first token", "Inter-token latency", "Requests by status", "Prefix hit ratio", "Replicas",
                 "Cache capacity per tier", "Grid carbon intensity", "Carbon per 1k tokens (estimate)",
                 "Planner decisions"):
        assert want in titles
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dash["panels"])
    names = {m for e in exprs for m in re.findall(r"\b(greencache_[a-z0-9_]+)", e)}
    assert len(names) >= 12
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 60
    while True:  # store telemetry and the autoscaler's summary reach /metrics within seconds
        text = httpx.get(url + "/metrics", timeout=10).text
        exported = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
        missing = names - exported
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"the dashboard queries metrics /metrics does not export: {sorted(missing)}"
