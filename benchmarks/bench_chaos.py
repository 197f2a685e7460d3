"""`greencache bench chaos`: one fault at a time under steady load; does anything break?

A local deployment (two LLM replicas, the demo model, a disk tier and a Redis tier, the carbon
autoscaler fed by a carbon-intensity API that a local HTTP server fakes) serves `--clients`
closed-loop clients. Every request is greedy, over a pool of 2-chunk prompts whose outputs were
recorded before the first fault, so a wrong output is caught. vLLM's own prefix cache is off and
the disk tier is smaller than the pool (the autoscaler's only capacity option), so most requests
load their KV from Redis and promote it to disk: both tiers are on every request's path.

Faults, one at a time, each followed by a wait for recovery:
  redis-kill        Redis SIGKILLed, restarted (empty) after --fault-s
  redis-stop        Redis SIGSTOPped for --redis-stop-s (alive, answering nothing), then SIGCONT
  disk-corrupt, disk-truncate, disk-forged
                    one stored chunk on the disk tier flipped, cut to a third, or re-MAC'd
                    without the secret (well-formed, other KV); the chunk's prompt is then asked
  redis-corrupt, redis-truncate, redis-forged
                    the same in Redis (the prompt's disk copies dropped so Redis is read)
  replica-kill      one LLM replica process SIGKILLed mid-stream
  autoscaler-kill   the autoscaler's actor killed (Serve starts another)
  carbon-api-500, carbon-api-garbage
                    the carbon API answers 500, or 200 with a body that is not JSON, for --fault-s
  disk-full         the disk tier's filesystem (a small tmpfs; needs root) filled for --fault-s

Per fault, over the requests that overlap its window (from the injection until the part is back,
at least 5 s; requests in flight when it struck included): `requests`, `failed`,
`wrong_outputs`, `p99_latency_s`, `throughput_rps`, and that rate against the no-fault row `none`
(`throughput_vs_baseline`) and against the steady state of the few seconds just before the fault
(`throughput_vs_before`: the machine's speed drifts over a run), then the same for a window after
recovery (`after_vs_*`). `part_back_s`: from the end of the fault (its injection, for instantaneous
ones) until the faulty part is in use again, as `part_back_when` says. `recovery_s`: until
service is whole: the part is back and no request fails any more; for a killed replica, until
no request fails (the other replica carries the load; its replacement is `part_back_s`).
`exercised` and `evidence`: proof that the fault was really on the request path (e.g. the
store's invalid-chunk counter rose). Targets: wrong_outputs 0 everywhere; failed 0 for store
and carbon-source faults, at most the requests in flight for a process kill; recovery_s <= 30.
Process kills run last: a replacement engine starting beside a busy one on a small machine is
slow, and would change the replica set the others are compared against.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

import httpx

from benchmarks.loadgen import percentile, random_token_prompts, stream_completion

MODEL = "demo"
CHUNK = 256  # the deployment's store chunk (set in its KVStoreConfig below), to find a prompt's chunk keys
API_VALUE = 123.0  # what the fake carbon API answers; the bundled FR trace never has exactly this
STORE_FAULTS = ("redis-kill", "redis-stop", "disk-corrupt", "disk-truncate", "disk-forged", "redis-corrupt",
                "redis-truncate", "redis-forged", "disk-full")
PROCESS_FAULTS = ("autoscaler-kill", "replica-kill")
CARBON_FAULTS = ("carbon-api-500", "carbon-api-garbage")
# Process kills last: a replacement replica starts slowly next to a busy engine on a small machine.
FAULTS = STORE_FAULTS + CARBON_FAULTS + PROCESS_FAULTS


# ---- the fake carbon-intensity service --------------------------------------------------------

class FakeCarbonAPI:
    """Electricity Maps v3's two endpoints on 127.0.0.1; `mode` "ok", "500" or "garbage"."""

    def __init__(self) -> None:
        api = self
        self.mode = "ok"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if api.mode == "500":
                    return self._send(500, b'{"error": "internal"}')
                if api.mode == "garbage":
                    return self._send(200, b"<html>\x00\xff not json")
                if "latest" in self.path:
                    return self._send(200, json.dumps({"zone": "FR", "carbonIntensity": API_VALUE}).encode())
                points = [{"carbonIntensity": API_VALUE, "datetime": f"h{i}"} for i in range(48)]
                return self._send(200, json.dumps({"zone": "FR", "forecast": points}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v3"

    def close(self) -> None:
        self.server.shutdown()


# ---- a tmpfs for the disk tier, in a mount namespace of our own ------------------------------

def private_tmpfs(path: Path, size_bytes: int) -> Optional[str]:
    """Mount a `size_bytes` tmpfs at `path`, visible only to this process and its children (a
    private mount namespace, so nothing is left mounted if we die). Must run before any thread
    starts. Returns None on success, else why it could not."""
    if os.geteuid() != 0:
        return "needs root to mount a small filesystem (tmpfs) to fill"
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, ms_rec, ms_private = 0x00020000, 0x4000, 0x40000
    if libc.unshare(clone_newns) != 0:
        return f"unshare(CLONE_NEWNS) failed: {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
        return f"making mounts private failed: {os.strerror(ctypes.get_errno())}"
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount tmpfs failed: {r.stderr.strip()}"


# ---- steady load ------------------------------------------------------------------------------

@dataclass
class Record:
    start: float
    end: float
    prompt: int
    outcome: str  # ok | wrong | failed
    error: str = ""
    replica: str = ""


@dataclass
class Load:
    """`clients` closed-loop clients cycling through `prompts`, checking every output."""

    url: str
    prompts: list[list[int]]
    expected: list[str]
    clients: int
    max_tokens: int
    records: list[Record] = field(default_factory=list)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    async def _one(self, client: httpx.AsyncClient, i: int) -> Record:
        with self._lock:
            self.in_flight += 1
        t0 = time.monotonic()
        try:
            res = await stream_completion(client, self.url, MODEL, self.prompts[i], self.max_tokens)
        finally:
            with self._lock:
                self.in_flight -= 1
        if not res.ok:
            rec = Record(t0, time.monotonic(), i, "failed", res.error[:200], res.replica)
        else:
            right = res.text == self.expected[i]
            rec = Record(t0, time.monotonic(), i, "ok" if right else "wrong", "" if right else f"got {res.text!r}",
                         res.replica)
        self.records.append(rec)
        return rec

    async def _clients(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            async def worker(k: int) -> None:
                i = k
                while not self._stop.is_set():
                    await self._one(client, i % len(self.prompts))
                    i += self.clients
            await asyncio.gather(*(worker(k) for k in range(self.clients)))

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._clients()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(180)

    def ask(self, i: int) -> Record:
        """One more request for prompt `i`, now, from the calling thread (counted like the rest)."""
        async def go():
            async with httpx.AsyncClient(timeout=120) as client:
                return await self._one(client, i)
        return asyncio.run(go())

    def between(self, t0: float, t1: float) -> list[Record]:
        return [r for r in list(self.records) if t0 <= r.start <= t1]


# ---- the deployment under test ----------------------------------------------------------------

class Rig:
    """The deployment, its Redis, its disk tier directory and the handles the faults need."""

    def __init__(self, args, root: Path, disk: Path, api: FakeCarbonAPI) -> None:
        from autoscaler.config import AutoscalerConfig, CarbonAPIConfig
        from cache_store.config import KVStoreConfig
        from cache_store.local import free_port
        from cache_store.redis_server import RedisServer
        from deployments.config import RoutingConfig, ServeConfig
        from deployments.launch import start_serve

        self.root, self.disk, self.api = root, disk, api
        self.redis = RedisServer(password=True, secrets_dir=root / "secrets")
        os.environ["GREENCACHE_BENCH_CARBON_TOKEN"] = "unused"
        disk_gb = args.disk_mb * 1e6 / 1e9
        self.config = ServeConfig(
            model=args.model, served_model_name=MODEL, port=free_port(), num_replicas=2, home=root / "home",
            max_model_len=1024, routing=RoutingConfig(prefix_affinity=False),
            engine_kwargs={"enable_prefix_caching": False},
            kv_store=KVStoreConfig(redis_url=self.redis.url, redis_password_file=self.redis.password_file,
                                   disk_path=disk, disk_capacity_bytes=int(disk_gb * 1e9), chunk_tokens=CHUNK),
            autoscaler=AutoscalerConfig(
                min_replicas=2, max_replicas=2, capacities_gb=[disk_gb], interval_s=1.0,
                carbon_api=CarbonAPIConfig(provider="electricitymaps", zone="FR", base_url=api.url, timeout_s=1.0,
                                           token_env="GREENCACHE_BENCH_CARBON_TOKEN")))
        self.url = start_serve(self.config)
        self.mac_key_file = self.config.home / "secrets" / "kv-mac.key"

    # -- observation
    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one Prometheus series on the ingress's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in (name, name + "_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def replicas(self) -> dict[str, dict]:
        from benchmarks.local_cluster import replica_actors

        return replica_actors()

    def replica_pid(self, name: str) -> int:
        from ray._private import state

        for info in state.actors(actor_state_name="ALIVE").values():
            if info.get("Name") == name:
                return int(info["Pid"])
        raise LookupError(name)

    def autoscaler_status(self) -> Optional[dict]:
        from deployments.app import autoscaler_handle

        try:
            return autoscaler_handle().status.remote().result(timeout_s=5)
        except Exception as e:
            if not getattr(self, "_status_error_shown", False):
                self._status_error_shown = True
                print(f"[chaos] the autoscaler's status is unavailable ({type(e).__name__}: {e})", file=sys.stderr)
            return None

    # -- the store, as an operator (or an attacker with write access) sees it
    def ns(self) -> str:
        r = self.redis.client()
        for k in r.scan_iter(count=1000):
            if b":" in k and not k.startswith(b"gc:"):
                return k.decode().split(":")[0]
        raise LookupError("no chunk in Redis yet")

    def keys(self, prompt: list[int]) -> list[str]:
        from cache_store.format import chunk_keys_in

        return chunk_keys_in(self.ns(), CHUNK, prompt)

    def disk_file(self, key: str) -> Path:
        from cache_store.tiers.disk import _filename

        return self.disk / _filename(key)

    def drop_from_disk(self, keys: list[str]) -> None:
        from cache_store.tiers import DiskTier

        t = DiskTier(self.disk, None)
        try:
            t.delete_many(keys)
        finally:
            t.close()

    def close(self) -> None:
        from deployments.launch import stop_all

        stop_all()
        self.redis.stop()


def damage(value: bytes, how: str) -> bytes:
    """A damaged copy of a stored chunk: a flipped byte, a cut, or a forgery (payload changed,
    MAC recomputed with a guessed key: well-formed, passes every check but the MAC)."""
    from cache_store.format import MAC_BYTES, PREFIX_BYTES, chunk_mac

    if how == "corrupt":
        b = bytearray(value)
        b[len(b) // 2] ^= 0xFF
        return bytes(b)
    if how == "truncate":
        return value[: len(value) // 3]
    assert how == "forged", how
    ndim = value[7]
    body_at = PREFIX_BYTES + MAC_BYTES
    shape = value[body_at:body_at + 4 * ndim]
    payload = bytes(b ^ 0x55 for b in value[body_at + 4 * ndim:])
    mac = chunk_mac(b"an attacker's guess at the key!!", value[:PREFIX_BYTES], shape, payload)
    return value[:PREFIX_BYTES] + mac + shape + payload


FILLER = """
import os, sys, time
tier, own = sys.argv[1], sys.argv[2]
os.makedirs(own, exist_ok=True)
fd = os.open(os.path.join(own, "fill"), os.O_WRONLY | os.O_CREAT, 0o600)
block, pinned = bytes(64 << 10), set()
while True:
    try:
        os.write(fd, block)
        continue
    except OSError:
        pass
    # Full. Hard-link every file the tier has, so that its evictions free no space (the
    # unlinked chunk lives on under our name) and every write it tries fails.
    for d, dirs, files in os.walk(tier):
        dirs[:] = [x for x in dirs if os.path.join(d, x) != own]
        for name in files:
            src = os.path.join(d, name)
            if src not in pinned:
                try:
                    os.link(src, os.path.join(own, str(len(pinned))))
                    pinned.add(src)
                except OSError:
                    pass
    time.sleep(0.005)
"""

# ---- faults -----------------------------------------------------------------------------------

@dataclass
class Fault:
    """inject() → (restore() after the fault's duration) → wait for recovered()."""

    name: str
    inject: Callable[[], None]
    restore: Optional[Callable[[], None]] = None
    recovered: Callable[[], bool] = lambda: True
    recovered_when: str = ""  # what "the part is back" means for this fault
    exercised: Callable[[], str] = lambda: ""  # evidence the fault was on the path, "" if none
    duration_s: float = 0.0
    extra: Callable[[], dict] = dict  # more fields for the report
    # True for a killed replica: serving recovers when requests stop failing (the others take
    # the load); the part, a replacement replica, comes back later (`part_back_s`).
    part_is_capacity: bool = False


def _until(pred: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(every_s)
    return False


class Faults:
    """The fault catalogue against one rig and its load."""

    def __init__(self, rig: Rig, load: Load, args) -> None:
        self.rig, self.load, self.args = rig, load, args
        self.mark: dict = {}

    def _counter_rose(self, name: str, **labels) -> Callable[[], bool]:
        """A check that the metric rose above the value it has now."""
        before = self.rig.metric(name, **labels)
        return lambda: self.rig.metric(name, **labels) > before

    # -- Redis
    def redis_kill(self) -> Fault:
        def inject():
            self.rig.redis.proc.kill()
            self.rig.redis.proc.wait(5)

        def restore():
            self.rig.redis.start()  # same port and password, empty
            self.mark["hits"] = self._counter_rose("greencache_kv_tier_hits", tier="redis")

        return Fault("redis-kill", inject, restore, lambda: self.mark["hits"](),
                     "the restarted Redis serves hits again", lambda: "Redis process gone", self.args.fault_s)

    def redis_stop(self) -> Fault:
        def inject():
            self.mark["opens"] = self._counter_rose("greencache_kv_tier_errors", tier="redis")
            os.kill(self.rig.redis.proc.pid, signal.SIGSTOP)

        def restore():
            os.kill(self.rig.redis.proc.pid, signal.SIGCONT)
            self.mark["hits"] = self._counter_rose("greencache_kv_tier_hits", tier="redis")

        def exercised():
            return "Redis tier errors rose while it was stopped" if self.mark["opens"]() else ""

        return Fault("redis-stop", inject, restore, lambda: self.mark["hits"](), "Redis serves hits again",
                     exercised, self.args.redis_stop_s)

    # -- damaged chunks
    def _damage(self, name: str) -> Fault:
        tier, how = name.split("-")
        def on_disk(keys):
            return all(self.rig.disk_file(k).exists() for k in keys)

        def newest_on_disk() -> int:
            """The prompt whose chunks were written last: the small disk tier evicts the least
            recently used chunks within seconds under load, and the probe must find its chunk."""
            def age(i: int) -> float:
                keys = self.rig.keys(self.load.prompts[i])
                try:
                    return -min(self.rig.disk_file(k).stat().st_mtime for k in keys)
                except FileNotFoundError:
                    return float("inf")
            return min(range(len(self.load.prompts)), key=age)

        def inject():
            self.mark["invalid"] = self._counter_rose("greencache_kv_invalid_chunks")
            r = self.rig.redis.client()
            for attempt in range(50):  # a prompt whose chunks are there now (the disk tier churns)
                i = newest_on_disk() if tier == "disk" and attempt < 25 else \
                    int(time.monotonic() * 1000) % len(self.load.prompts)
                keys = self.rig.keys(self.load.prompts[i])
                key = keys[-1]
                try:
                    if tier == "disk" and on_disk(keys):
                        f = self.rig.disk_file(key)
                        bad = damage(f.read_bytes(), how)  # noqa: B023
                        f.write_bytes(bad)
                        self.mark["still_bad"] = lambda: f.exists() and f.read_bytes() == bad
                        break
                    if tier == "redis" and r.exists(key):
                        bad = damage(r.get(key), how)
                        r.set(key, bad)
                        self.rig.drop_from_disk(keys)
                        self.mark["still_bad"] = lambda: r.get(key) == bad
                        break
                except (FileNotFoundError, TypeError):  # evicted while we looked
                    continue
                time.sleep(0.05)
            else:
                raise RuntimeError(f"no chunk to damage in the {tier} tier")
            self.mark["probe"] = self.load.ask(i)  # the damaged chunk's prompt, now

        def exercised():
            return "the store's invalid-chunk counter rose" if self.mark["invalid"]() else ""

        return Fault(name, inject, None,
                     lambda: not self.mark["still_bad"](), "the bad value was deleted or rewritten", exercised)

    # -- processes
    def replica_kill(self) -> Fault:
        def inject():
            reps = self.rig.replicas()
            self.mark["before"] = {name.split("#")[-1] for name in (a["name"] for a in reps.values())}
            self.mark["in_flight"] = self.load.in_flight
            victim = sorted(reps.values(), key=lambda a: a["name"])[0]["name"]
            self.mark["victim"] = victim.split("#")[-1]
            os.kill(self.rig.replica_pid(victim), signal.SIGKILL)
            self.mark["t"] = time.monotonic()

        def recovered():
            new = {r.replica for r in list(self.load.records) if r.start > self.mark["t"] and r.outcome == "ok"}
            return bool(new - self.mark["before"])

        def in_flight() -> dict:
            t = self.mark["t"]
            live = [r for r in list(self.load.records) if r.start <= t <= r.end]
            return {"in_flight_at_kill": len(live), "in_flight_that_failed": sum(r.outcome != "ok" for r in live)}

        return Fault("replica-kill", inject, None, recovered, "a replacement replica answered a request",
                     lambda: f"killed replica {self.mark['victim']} with {in_flight()['in_flight_at_kill']} requests "
                             f"in flight", extra=in_flight, part_is_capacity=True)

    def autoscaler_kill(self) -> Fault:
        import ray

        from benchmarks.local_cluster import replica_actors

        def inject():
            alive = replica_actors(deployment="CarbonAutoscaler")
            self.mark["t"] = time.time()
            ray.kill(ray.get_actor(next(iter(alive.values()))["name"], namespace="serve"), no_restart=True)

        def recovered():
            st = self.rig.autoscaler_status()
            return bool(st and st["last"] and st["last"]["time"] > self.mark["t"])

        return Fault("autoscaler-kill", inject, None, recovered, "a new autoscaler recorded a decision",
                     lambda: "actor killed")

    # -- carbon API
    def carbon(self, mode: str) -> Fault:
        def inject():
            self.mark["t0"] = time.time()
            self.rig.api.mode = mode

        def restore():
            # The fault lasts until a planning cycle has started and finished inside it (a cycle
            # on a busy machine can outlast a short fault window).
            _until(lambda: ((self.rig.autoscaler_status() or {}).get("last") or {}).get("time", 0) > self.mark["t0"],
                   60, every_s=0.25)
            self.mark["t1"] = time.time()
            self.mark["during"] = self.rig.autoscaler_status()
            self.rig.api.mode = "ok"

        def recovered():
            last = (self.rig.autoscaler_status() or {}).get("last") or {}
            return last.get("time", 0) > self.mark["t1"] and last["inputs"]["carbon_source"]["healthy"] \
                and last["inputs"]["carbon_intensity_g_per_kwh"] == API_VALUE

        def exercised():
            last = (self.mark.get("during") or {}).get("last") or {}
            if last.get("time", 0) > self.mark["t0"] and not last["inputs"]["carbon_source"]["healthy"]:
                return (f"the autoscaler kept planning on the fallback trace "
                        f"({last['inputs']['carbon_intensity_g_per_kwh']:.0f} g/kWh)")
            return ""

        return Fault(f"carbon-api-{mode}", inject, restore, recovered,
                     "a decision uses the API's value again", exercised, self.args.fault_s)

    # -- disk full
    def disk_full(self) -> Fault:
        """Another process on the node fills the filesystem and holds on to it: it hard-links
        the tier's files, so that the tier's evictions free nothing (a tier at its capacity
        evicts before it writes, so a disk that is merely full would take the same-sized chunk
        back, and a writer that only races for freed space loses that race to the tier)."""
        filler = self.rig.disk / "filler"

        def inject():
            self.mark["errors"] = self._counter_rose("greencache_kv_tier_errors", tier="disk")
            self.mark["filler"] = subprocess.Popen([sys.executable, "-c", FILLER, str(self.rig.disk), str(filler)])

        def restore():
            self.mark["filler"].kill()
            self.mark["filler"].wait()
            shutil.rmtree(filler)
            self.mark["written"] = self._counter_rose("greencache_kv_tier_written_bytes", tier="disk")

        def exercised():
            return "the disk tier's write errors rose" if self.mark["errors"]() else ""

        return Fault("disk-full", inject, restore, lambda: self.mark["written"](),
                     "the disk tier stores chunks again", exercised, self.args.fault_s)

    def get(self, name: str) -> Fault:
        if name in ("redis-kill", "redis-stop", "replica-kill", "autoscaler-kill", "disk-full"):
            return getattr(self, name.replace("-", "_"))()
        if name.startswith("carbon-api-"):
            return self.carbon(name[len("carbon-api-"):])
        return self._damage(name)


EVIDENCE_WAIT_S = 15.0


def run_fault(fault: Fault, load: Load, baseline_rps: float, args) -> dict:
    """Inject, restore, wait for recovery; judge the requests that overlap the fault's window
    (from the injection until the part recovered, at least MIN_WINDOW_S), including those in
    flight when it struck."""
    t0 = time.monotonic()
    lookback = args.settle_s + args.after_s or 5.0  # the steady state just before, as the reference
    before = sum(r.outcome == "ok" for r in load.records if t0 - lookback <= r.end <= t0) / lookback
    fault.inject()
    if fault.restore is not None:
        time.sleep(fault.duration_s)
        fault.restore()
    t_end = time.monotonic()
    ok = _until(fault.recovered, args.recovery_timeout_s)
    t_part = time.monotonic()
    t_win = max(t_part, t0 + args.min_window_s)
    settle_s, after_s = args.settle_s, args.after_s
    time.sleep(max(0.0, t_win - time.monotonic()) + settle_s + after_s)
    after = sum(r.outcome == "ok" for r in load.records if t_win + settle_s <= r.end <= t_win + settle_s + after_s)
    window = [r for r in list(load.records) if r.end >= t0 and r.start <= t_win]
    failures = [r.end for r in window if r.outcome != "ok"]
    done = sum(r.outcome == "ok" and r.end <= t_win for r in window)
    lat = sorted(r.end - r.start for r in window)
    found: list[str] = []  # counters reach /metrics a few seconds late (replicas publish every 2 s)
    _until(lambda: bool(found.append(fault.exercised()) or found[-1]), EVIDENCE_WAIT_S, every_s=0.5)
    evidence = found[-1] if found else ""
    part_s = t_part - t_end if ok else None
    if fault.part_is_capacity:  # the service recovers when requests stop failing; the part later
        recovery = (max(failures) - t_end if failures else 0.0)
    else:
        recovery = None if part_s is None else max([part_s] + [f - t_end for f in failures])
    return {"fault": fault.name, "requests": len(window), "failed": sum(r.outcome == "failed" for r in window),
            "wrong_outputs": sum(r.outcome == "wrong" for r in window),
            "p99_latency_s": percentile(lat, 99) if lat else None,
            "throughput_rps": done / (t_win - t0), "throughput_vs_baseline": done / (t_win - t0) / baseline_rps,
            "after_vs_baseline": after / after_s / baseline_rps if after_s else None,
            "throughput_vs_before": done / (t_win - t0) / before if before else None,
            "after_vs_before": after / after_s / before if after_s and before else None,
            "recovery_s": recovery, "part_back_s": part_s, "part_back_when": fault.recovered_when,
            "exercised": bool(evidence), "evidence": evidence, "duration_s": fault.duration_s, **fault.extra(),
            "errors": sorted({r.error for r in window if r.outcome != "ok"})[:3]}


# ---- main -------------------------------------------------------------------------------------

def _expected(url: str, prompts: list[list[int]], max_tokens: int) -> list[str]:
    async def go():
        async with httpx.AsyncClient(timeout=300) as client:
            out = []
            for p in prompts:
                res = await stream_completion(client, url, MODEL, p, max_tokens)
                if not res.ok:
                    raise RuntimeError(res.error)
                out.append(res.text)
            return out
    return asyncio.run(go())


def run(args) -> dict:
    from cache_store.local import private_dir

    root = private_dir(tempfile.mkdtemp(prefix="greencache-chaos-"))
    disk = root / "kv-disk"
    no_tmpfs = private_tmpfs(disk, args.tmpfs_mb << 20) if "disk-full" in args.faults else "not asked for"
    faults_wanted = [f for f in args.faults if not (f == "disk-full" and no_tmpfs)]
    api = FakeCarbonAPI()
    rig = load = None
    results: list[dict] = []
    try:
        rig = Rig(args, root, disk, api)
        prompts = random_token_prompts(args.prompts, 2 * CHUNK + 8, 2000, seed=7)
        expected = _expected(rig.url, prompts, args.max_tokens)  # cold: nothing stored yet
        load = Load(rig.url, prompts, expected, args.clients, args.max_tokens)
        load.start()
        time.sleep(args.warmup_s)
        t0 = time.monotonic()
        time.sleep(args.baseline_s)
        base = load.between(t0, time.monotonic())
        baseline_rps = sum(r.outcome == "ok" for r in base) / (time.monotonic() - t0)
        lat = sorted(r.end - r.start for r in base)
        results.append({"fault": "none", "requests": len(base), "failed": sum(r.outcome == "failed" for r in base),
                        "wrong_outputs": sum(r.outcome == "wrong" for r in base),
                        "p99_latency_s": percentile(lat, 99), "throughput_rps": baseline_rps,
                        "throughput_vs_baseline": 1.0, "after_vs_baseline": None, "recovery_s": 0.0,
                        "part_back_s": None})
        catalogue = Faults(rig, load, args)
        for name in faults_wanted:
            print(f"[bench chaos] {name} ...", file=sys.stderr, flush=True)
            res = run_fault(catalogue.get(name), load, baseline_rps, args)
            print(f"[bench chaos] {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
            results.append(res)
        load.stop()
    finally:
        if load is not None:
            load.stop()
        if rig is not None:
            rig.close()
        api.close()
    if "disk-full" in args.faults and no_tmpfs:
        results.append({"fault": "disk-full", "skipped": no_tmpfs})
    return {"faults": results, "clients": args.clients, "prompts": args.prompts, "max_tokens": args.max_tokens,
            "disk_tier_mb": args.disk_mb, "fault_s": args.fault_s, "redis_stop_s": args.redis_stop_s,
            "targets": {"wrong_outputs": 0, "failed_store_and_carbon": 0,
                        "failed_process_kill": "<= requests in flight", "recovery_s_max": 30.0}}


def _table(out: dict) -> str:
    from benchmarks.report import table

    rows = [("fault", "requests", "failed", "wrong", "p99 s", "rps vs before", "after", "recovery s", "part back s",
             "exercised")]
    for f in out["faults"]:
        if "skipped" in f:
            rows.append((f["fault"], "-", "-", "-", "-", "-", "-", "-", "-", "skipped: " + f["skipped"]))
            continue
        rec = f["recovery_s"]
        rows.append((f["fault"], str(f["requests"]), str(f["failed"]), str(f["wrong_outputs"]),
                     f"{f['p99_latency_s']:.2f}" if f["p99_latency_s"] is not None else "-",
                     "-" if f.get("throughput_vs_before") is None else f"{f['throughput_vs_before']:.2f}",
                     "-" if f.get("after_vs_before") is None else f"{f['after_vs_before']:.2f}",
                     "never" if rec is None else f"{rec:.1f}",
                     "-" if f.get("part_back_s") is None else f"{f['part_back_s']:.1f}",
                     f.get("evidence", "") or ("-" if f["fault"] == "none" else "NO")))
    return table(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="greencache bench chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default=None, help="model directory (default: the demo model)")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of: {', '.join(FAULTS)}")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--fault-s", type=float, default=10.0, help="length of the timed faults: Redis killed, carbon API failing, disk full (s)")
    p.add_argument("--redis-stop-s", type=float, default=10.0)
    p.add_argument("--disk-mb", type=float, default=8.0, help="disk tier capacity (MB; the pool is ~16 MiB)")
    p.add_argument("--tmpfs-mb", type=int, default=64, help="size of the filesystem under the disk tier (MiB)")
    p.add_argument("--warmup-s", type=float, default=30.0, help="load before the baseline is measured (s)")
    p.add_argument("--baseline-s", type=float, default=10.0, help="length of the no-fault baseline (s)")
    p.add_argument("--min-window-s", type=float, default=5.0,
                   help="an instantaneous fault is judged on the requests of at least this long (s)")
    p.add_argument("--settle-s", type=float, default=2.0, help="pause after a fault's window (s)")
    p.add_argument("--after-s", type=float, default=5.0,
                   help="then this long is compared with the baseline again (s; 0 = skip)")
    p.add_argument("--recovery-timeout-s", type=float, default=90.0)
    args = p.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    from benchmarks.report import clean_stdout

    with clean_stdout() as emit:
        out = run(args)
        print(_table(out), file=sys.stderr)
        if args.json:
            emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
