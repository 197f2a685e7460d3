"""The shared Redis tier: its password comes from a file or the environment and shows nowhere
(command lines, URLs, logs, stats, errors); `rediss://` connects over TLS."""

from __future__ import annotations

import logging
import subprocess

import pytest
import redis

from cache_store.config import KVStoreConfig
from cache_store.redis_server import RedisServer
from cache_store.tiers import RedisTier

KB = 1024


@pytest.fixture
def secret_redis(tmp_path):
    server = RedisServer(password=True, secrets_dir=tmp_path / "secrets")
    yield server
    server.stop()


def test_password_protects_the_server_and_stays_off_the_command_line(secret_redis):
    assert secret_redis.password and secret_redis.password not in secret_redis.url
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=secret_redis.port).ping()
    cmdline = open(f"/proc/{secret_redis.proc.pid}/cmdline", "rb").read().decode(errors="replace")
    assert secret_redis.password not in cmdline
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret_redis.password not in ps
    mode = __import__("os").stat(secret_redis.password_file).st_mode & 0o777
    assert mode == 0o600


def test_tier_reads_the_password_from_a_file_or_the_environment(secret_redis, monkeypatch):
    t = RedisTier(secret_redis.url, 100 * KB, password_file=secret_redis.password_file)
    t.put_many([("ns:a", b"x" * KB, 0)])
    assert t.get_many(["ns:a"]) == [b"x" * KB]
    monkeypatch.setenv("TEST_REDIS_PASSWORD", secret_redis.password)
    t2 = RedisTier(secret_redis.url, 100 * KB, password_env="TEST_REDIS_PASSWORD")
    assert t2.get_many(["ns:a"]) == [b"x" * KB]
    assert secret_redis.password not in repr(t2.stats())


def test_wrong_password_is_a_miss_and_the_password_is_not_logged(secret_redis, tmp_path, caplog):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    caplog.set_level(logging.WARNING)
    t = RedisTier(secret_redis.url, 100 * KB, password_file=str(wrong), retry_after_s=0.1)
    assert t.get_many(["ns:a"]) == [None]  # degraded, not raised
    t.put_many([("ns:a", b"x", 0)])
    assert t.stats()["errors"] >= 1 and not t.healthy
    assert "unavailable" in caplog.text
    assert "not-the-password" not in caplog.text and secret_redis.password not in caplog.text


def test_config_refuses_a_password_in_the_url():
    with pytest.raises(ValueError, match="password"):
        KVStoreConfig(redis_url="redis://:hunter2@10.0.0.5:6380/0")
    with pytest.raises(ValueError, match="password"):
        KVStoreConfig(redis_url="rediss://user:hunter2@{head}:6380/0")
    assert KVStoreConfig(redis_url="redis://{head}:6380/0").redis_url == "redis://{head}:6380/0"


def _tls_files(d):
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "ext.cnf", "-out", "server.pem")
    return str(d / "server.pem"), str(d / "server.key"), str(d / "ca.pem")


def test_rediss_connects_over_tls_with_a_password(tmp_path):
    server = RedisServer(password=True, secrets_dir=tmp_path / "s", tls=_tls_files(tmp_path))
    try:
        assert server.url.startswith("rediss://")
        t = RedisTier(server.url, 100 * KB, password_file=server.password_file)
        t.put_many([("ns:tls", b"secret chunk", 0)])
        assert t.get_many(["ns:tls"]) == [b"secret chunk"]
        with pytest.raises(redis.ConnectionError):  # plain text to a TLS port does not work
            redis.Redis(port=server.port, password=server.password, socket_timeout=1).ping()
    finally:
        server.stop()
