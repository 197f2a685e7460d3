"""`greencache serve` end to end: starts, answers, and stops on SIGTERM leaving nothing behind.

Run in both ingress modes: direct (the default; the ingress replica owns the public port) and
through Ray Serve's HTTP proxy (`--no-direct-ingress`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import openai
import psutil
import pytest

from conftest import free_port


def _listener(family: list[psutil.Process], port: int) -> str:
    """Command line of the process listening on `port` (among `family`)."""
    for p in family:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp")):
                return " ".join(p.cmdline())
        except psutil.Error:
            continue
    return ""


@pytest.mark.parametrize("mode", ["direct", "proxy"])
def test_serve_command_lifecycle(demo_model, tmp_path, mode):
    port = free_port()
    env = dict(os.environ, GREENCACHE_HOME=str(tmp_path))
    extra = ["--no-direct-ingress"] if mode == "proxy" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "greencache.cli", "serve", "--port", str(port), "--model", str(demo_model),
         "--served-model-name", "demo", "--max-model-len", "512", "--engine-arg", "max_num_seqs=8", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "GreenCache is serving" in line:
                break
        assert any("GreenCache is serving 'demo' at http://127.0.0.1:%d/v1" % port in l for l in lines), "".join(lines)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop")
        assert client.models.list().data[0].max_model_len == 512
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="demo", prompt="hello", max_tokens=6, stream=True, extra_body={"ignore_eos": True}))
        assert text

        family = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(p.name() for p in family)
        assert "raylet" in names and len(family) >= 4, names
        owner = _listener(family, port)
        assert ("OpenAIIngress" if mode == "direct" else "ProxyActor") in owner, owner

        if mode == "direct":  # Serve restarts a dead ingress replica, and it takes the port back
            ingress = next(p for p in family if "OpenAIIngress" in " ".join(p.cmdline()))
            ingress.kill()
            deadline = time.monotonic() + 90
            while True:
                try:
                    r = client.with_options(timeout=10, max_retries=0).completions.create(
                        model="demo", prompt="again", max_tokens=2)
                    break
                except openai.APIError:
                    assert time.monotonic() < deadline, "the port did not come back after the ingress died"
                    time.sleep(1)
            assert r.choices[0].text is not None
            family = psutil.Process(proc.pid).children(recursive=True)
            assert "OpenAIIngress" in _listener(family, port)

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "stopped" in out
        time.sleep(1)
        left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
