"""Security: the worker refuses the development pseudonym key; SASL_SSL (SCRAM-SHA-512 over TLS) on a broker of this
module's own, with a CA and a broker certificate made here by openssl, works with the right credentials and fails
closed in one line on wrong ones; the web server binds loopback and serves none of Faust's table or router views."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.settings import DEV_PSEUDONYM_KEY, Settings
from pmon_harness import PMON, free_port, pmon_env, wait_for
from simulation.simulator import SimulationSpec, simulate
from tests.conftest import ROOT
from tests.helpers import one_line, run_pmon

SCRAM_USER = "pmon"
# How long a refused login may take to become the one-line error (the client does not retry it).
FAIL_CLOSED_SECONDS = 30


# --------------------------------------------------------------------------- the development key
def test_the_worker_refuses_the_development_key_in_one_line_unless_told_it_is_a_development_run(tmp_path):
    # No broker is needed: the key is checked before any connection (an unreachable bootstrap proves it).
    nowhere = {"PMON_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    refused = run_pmon("worker", cwd=tmp_path, env=nowhere)
    line = one_line(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    assert line.startswith("pmon worker: error: the pseudonym key is the built-in development key"), line
    assert "set PMON_PSEUDONYM_KEY" in line and "PMON_DEVELOPMENT=true" in line, line
    assert DEV_PSEUDONYM_KEY not in line, "the message names the variable, not the key"

    empty = run_pmon("worker", cwd=tmp_path, env={**nowhere, "PMON_PSEUDONYM_KEY": ""})
    assert empty.returncode == 2 and "PMON_PSEUDONYM_KEY is empty" in one_line(empty.stderr)

    # Told it is a development run, the worker takes the key and goes on to the broker (here: none, not waited for).
    development = run_pmon("worker", cwd=tmp_path, env={**nowhere, "PMON_DEVELOPMENT": "true",
                                                         "PMON_BROKER_WAIT_SECONDS": "0"})
    assert development.returncode == 2 and "no Kafka broker at" in development.stderr.splitlines()[-1], \
        development.stderr


# --------------------------------------------------------------------------- loopback and web views
def _listening(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net/tcp and tcp6 (this namespace)."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:   # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                found.add(socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, words))
    return found


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one (the source address of a route outward)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))   # UDP: no packet is sent
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.kafka
def test_the_web_server_binds_loopback_only_and_serves_no_faust_table_or_router_view(isolated_settings,
                                                                                     start_worker):
    settings = isolated_settings()   # default web host; a random key: the worker starts with a real key
    assert settings.web_host == "127.0.0.1"
    worker = start_worker(settings)
    assert _listening(settings.web_port) == {"127.0.0.1"}, "listening beyond loopback"
    other = _other_address()
    if other is not None:   # a machine without another address has nothing more to try
        with pytest.raises(OSError):
            socket.create_connection((other, settings.web_port), timeout=2).close()

    ours = {"/health": 200, "/metrics": 200, "/pmon/report/?initiative=nothing-here": 404}
    for path, status in ours.items():
        assert _status(worker.url + path)[0] == status, path
    assert _status(worker.url + "/ready")[0] in (200, 503)
    # Faust's views: tables and router (keys and values of state), graph, stats, assignment, performance.
    faust_views = ["/router/", "/router/topics", "/router/users/", "/table/", "/table/users/",
                   "/table/users/x/", "/graph/", "/stats/", "/assignment/", "/performance/"]
    served = {path: _status(worker.url + path) for path in faust_views}
    assert all(status == 404 for status, _ in served.values()), served
    # Faust's production index stays at "/": a fixed body, nothing of the state.
    assert _status(worker.url + "/") == (200, b'{"status":"OK"}')


# --------------------------------------------------------------------------- SASL_SSL
@dataclass(frozen=True)
class SecureBroker:
    bootstrap: str          # the SASL_SSL listener
    ca_file: Path           # the CA that signed the broker's certificate
    password: str           # the SCRAM user's


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path, store_password: str) -> tuple[Path, Path]:
    """A CA, a broker certificate it signs for 127.0.0.1 and localhost, and the broker's PKCS12 keystore."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=pmon-test-ca", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
             "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{store_password}", cwd=folder)
    # keytool reads it as the broker's JVM will: a keystore Java cannot open fails here, not in the broker log.
    subprocess.run(["keytool", "-list", "-keystore", "broker.p12", "-storetype", "PKCS12",
                    "-storepass", store_password], cwd=folder, check=True, capture_output=True, timeout=60)
    return folder / "ca.pem", folder / "broker.p12"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """scripts/kafka-local.sh's broker with its opt-in SASL_SSL listener, for this module; stopped in any case."""
    folder = tmp_path_factory.mktemp("sasl-ssl")
    store_password, password = secrets.token_hex(8), secrets.token_hex(12)
    ca_file, keystore = _certificates(folder, store_password)
    secure_port = free_port()
    env = {**os.environ, "PMON_KAFKA_PORT": str(free_port()), "PMON_KAFKA_RUN_DIR": str(folder / "kafka"),
           "PMON_KAFKA_SASL_SSL_PORT": str(secure_port), "PMON_KAFKA_SSL_KEYSTORE": str(keystore),
           "PMON_KAFKA_SSL_KEYSTORE_PASSWORD": store_password, "PMON_KAFKA_SCRAM_USER": SCRAM_USER,
           "PMON_KAFKA_SCRAM_PASSWORD": password}
    script = ["bash", str(ROOT / "scripts" / "kafka-local.sh")]
    try:
        subprocess.run([*script, "up"], env=env, check=True, timeout=180)
        yield SecureBroker(f"127.0.0.1:{secure_port}", ca_file, password)
    finally:
        subprocess.run([*script, "down"], env=env, check=False, timeout=120)


def _secure_settings(broker: SecureBroker, folder: Path, **overrides: Any) -> Settings:
    run = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "kafka_bootstrap": broker.bootstrap, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": SCRAM_USER, "sasl_password": broker.password, "ssl_cafile": broker.ca_file,
        "topic_prefix": f"s{run}", "app_id": f"pmon-secure-{run}", "topic_partitions": 2, "web_port": free_port(),
        "plan_dir": folder / f"plans-{run}", "log_level": "WARNING", "pseudonym_key": secrets.token_hex(16)}
    values.update(overrides)
    return Settings(**values)


def _pmon(settings: Settings, *args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """`pmon ARGS` with exactly these settings as its PMON_* variables, and how long it took."""
    started = time.monotonic()
    done = subprocess.run([str(PMON), *args], env=pmon_env(settings), cwd=cwd, capture_output=True, text=True,
                          timeout=180, check=False)
    return done, time.monotonic() - started


@pytest.mark.kafka
def test_with_the_right_credentials_simulate_produces_and_a_worker_counts_every_record(secure_broker, start_worker,
                                                                                      tmp_path):
    settings = _secure_settings(secure_broker, tmp_path)
    produced, _ = _pmon(settings, "simulate", "--days", "1", "--to-kafka", cwd=tmp_path)
    assert produced.returncode == 0, produced.stderr
    expected: dict[str, int] = {}
    initiatives = set()
    for record in simulate(SimulationSpec(days=1)):   # the same seed and days as the command's
        expected[record.topic] = expected.get(record.topic, 0) + 1
        if record.topic == "engagement":
            initiatives.add(record.event.initiative)
    assert f"produced {sum(expected.values()):,} records" in produced.stderr

    # Both stages (aiokafka clients) and the rule-change agent (Faust's transport) read over SASL_SSL, and
    # stage 2 counts every engagement event once (records received may include a batch read again).
    worker = start_worker(settings)
    seen = lambda: {topic: worker.records_seen(topic) for topic in expected}  # noqa: E731
    total = lambda: sum(worker.counted(initiative) for initiative in initiatives)  # noqa: E731
    wait_for(lambda: all(seen()[t] >= n for t, n in expected.items()) and total() >= expected["engagement"],
             timeout=240, what=f"the worker to read {expected} and count the engagement",
             on_timeout=lambda: f"{seen()} counted {total()}\n{worker.log()}")
    assert total() == expected["engagement"]
    listed, _ = _pmon(settings, "incidents", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr


@pytest.mark.kafka
def test_a_wrong_password_or_an_untrusted_broker_fails_closed_in_one_line(secure_broker, tmp_path):
    wrong = _secure_settings(secure_broker, tmp_path, sasl_password=secrets.token_hex(12))
    for command in (["simulate", "--days", "1", "--to-kafka"], ["incidents", "list"]):
        done, took = _pmon(wrong, *command, cwd=tmp_path)
        line = one_line(done.stderr)
        assert done.returncode == 2 and took < FAIL_CLOSED_SECONDS, (done.returncode, took, line)
        assert f"authentication failed at {secure_broker.bootstrap} as '{SCRAM_USER}' with SCRAM-SHA-512" in line
        assert line.endswith("check PMON_SASL_USERNAME and PMON_SASL_PASSWORD (and PMON_SASL_MECHANISM)"), line
        assert secure_broker.password not in line and wrong.sasl_password.get_secret_value() not in line

    # The worker too: it refuses before it starts (its own log lines come first; the last is the error).
    done, took = _pmon(wrong, "worker", cwd=tmp_path)
    assert done.returncode == 2 and took < FAIL_CLOSED_SECONDS, (done.returncode, took, done.stderr)
    assert "error: authentication failed" in done.stderr.splitlines()[-1], done.stderr

    # A broker whose certificate no configured CA signed: no credentials are sent, one line says why.
    untrusted = _secure_settings(secure_broker, tmp_path, ssl_cafile=None)
    done, took = _pmon(untrusted, "incidents", "list", cwd=tmp_path)
    line = one_line(done.stderr)
    assert done.returncode == 2 and took < FAIL_CLOSED_SECONDS, (done.returncode, took, line)
    assert "TLS: the certificate of" in line and "set PMON_SSL_CAFILE to the CA that signed it" in line, line
