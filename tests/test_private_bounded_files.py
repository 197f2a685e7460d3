"""Files GreenCache writes are private to their owner and bounded in size: KV chunks (derived
from prompts), the autoscaler's state and its decision log."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone

from autoscaler.policies import Observation
from autoscaler.state import AutoscalerState
from cache_store.tiers import DiskTier


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_kv_chunks_and_their_directory_are_owner_only(tmp_path):
    t = DiskTier(tmp_path / "kv", 1 << 20)
    t.put_many([("ns:a", b"x" * 100, 0)])
    assert _mode(tmp_path / "kv") == 0o700
    for f in (tmp_path / "kv").iterdir():
        assert _mode(f) & 0o077 == 0, f.name


def test_decision_log_rotates_and_state_is_private(tmp_path):
    state = AutoscalerState(tmp_path, max_log_bytes=2000, keep=2)
    for i in range(60):
        state.append_decision({"cycle": i, "pad": "y" * 100})
    state.save_last({"cycle": 59})
    d = tmp_path / "autoscaler"
    logs = sorted(p.name for p in d.iterdir() if p.name.startswith("decisions"))
    assert logs == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]  # no more than `keep` old ones
    assert all(os.path.getsize(d / n) <= 2000 + 200 for n in logs)
    last_cycle = json.loads((d / "decisions.jsonl").read_text().splitlines()[-1])["cycle"]
    assert last_cycle == 59
    assert _mode(d) == 0o700 and _mode(d / "decisions.jsonl") == 0o600 and _mode(d / "last.json") == 0o600


def test_logged_observations_summarise_the_access_sample():
    obs = Observation(trace_time=datetime(2023, 6, 1, tzinfo=timezone.utc), intensity_forecast=[50.0],
                      arrival_rps=1.0, access_sample=[f"{i:016x}" for i in range(4000)])
    s = obs.summary()
    assert "access_sample" not in s and s["access_sample_size"] == 4000
    assert len(json.dumps(s)) < 1000 < len(json.dumps(obs.to_json()))
