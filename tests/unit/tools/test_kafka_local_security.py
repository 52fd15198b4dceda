"""The secure local broker's configuration: every listener authenticates, secrets stay private."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from streams.cli import main
from streams.tools import kafka_local
from streams.tools.exceptions import LocalServiceError


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


def _unescape(value: str) -> str:
    # What java.util.Properties reads back (for values without a leading blank).
    decoded = value.encode("latin-1").decode("unicode_escape")
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16")


def _security(tmp_path: Path, tls: bool) -> kafka_local.Security:
    return kafka_local.Security(
        "alice", 'p,a"s\\s=w]ö rd€𝄞', "controller-secret",
        tmp_path / "tls/broker.p12" if tls else None, "ks-pass" if tls else None,
        tmp_path / "ca.pem" if tls else None)


@pytest.mark.parametrize("tls", [False, True])
def test_no_listener_takes_unauthenticated_clients(tmp_path: Path, tls: bool) -> None:
    sec = _security(tmp_path, tls)
    props = _props(kafka_local._server_properties(tmp_path, 9999, 9998, sec))
    protocol = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    assert props["listeners"] == f"{protocol}://127.0.0.1:9999,CONTROLLER://127.0.0.1:9998"
    assert props["advertised.listeners"] == f"{protocol}://127.0.0.1:9999"
    assert props["inter.broker.listener.name"] == protocol
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert protocols == {"CONTROLLER": "SASL_PLAINTEXT", protocol: protocol}
    name = protocol.lower()
    assert props[f"listener.name.{name}.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    jaas = _unescape(props[f"listener.name.{name}.scram-sha-512.sasl.jaas.config"])
    assert jaas.endswith('username="alice" password="p,a\\"s\\\\s=w]ö rd€𝄞";')
    assert ("ssl.keystore.location" in props) == tls
    if tls:
        assert props["ssl.truststore.location"] == str(tmp_path / "ca.pem")


def test_plain_broker_keeps_its_plaintext_listener(tmp_path: Path) -> None:
    props = _props(kafka_local._server_properties(tmp_path, 9999, 9998))
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert not any("sasl" in key for key in props)


def test_client_env_and_old_state_files(tmp_path: Path) -> None:
    plain = kafka_local.BrokerState(1, 9092, 9093, "4.1.1")
    assert plain.client_env() == {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    assert plain.aiokafka_kwargs() == {}
    # A broker.json from before the security fields: read as a PLAINTEXT broker.
    (tmp_path / "broker.json").write_text(
        json.dumps({"pid": 1, "port": 9092, "controller_port": 9093, "version": "4.1.1"}))
    assert kafka_local.read_state(tmp_path) == plain
    secure = kafka_local.BrokerState(1, 9092, 9093, "4.1.1", "SASL_PLAINTEXT", "SCRAM-SHA-512",
                                     "alice", "pw")
    assert secure.client_env() == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": "pw"}
    assert "pw" not in repr(secure)


def test_private_files_are_owner_only_even_if_they_existed(tmp_path: Path) -> None:
    path = tmp_path / "server.properties"
    path.write_text("old")
    path.chmod(0o644)
    kafka_local._write_private(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_are_checked() -> None:
    assert kafka_local.parse_credentials("u:p:a:ss") == ("u", "p:a:ss")
    for bad in ("nocolon", ":pw", "user:", "bad user:pw", "a,b:pw", "u:p\nx"):
        with pytest.raises(LocalServiceError):
            kafka_local.parse_credentials(bad)
    with pytest.raises(LocalServiceError, match="TLS needs SASL"):
        kafka_local.start(tls=True)


def test_formatted_scram_user_must_match(tmp_path: Path) -> None:
    salt = b"0123456789abcdef"
    salted = kafka_local._salted_password("pw", salt, 4096)
    (tmp_path / kafka_local.SCRAM_FILE).write_text(json.dumps({
        "username": "alice", "salt": kafka_local._b64(salt), "iterations": 4096,
        "stored_key": kafka_local._b64(kafka_local._stored_key(salted))}))
    kafka_local._check_formatted_scram(tmp_path, "alice", "pw")
    for user, password in (("alice", "other"), ("bob", "pw")):
        with pytest.raises(LocalServiceError, match="new --data folder"):
            kafka_local._check_formatted_scram(tmp_path, user, password)


def test_cli_rejects_tls_without_sasl_and_bad_credentials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kafka", "start", "--data", str(tmp_path), "--tls"]) == 1
    assert "--tls needs --sasl" in capsys.readouterr().err
    assert main(["kafka", "start", "--data", str(tmp_path), "--sasl", "nocolon"]) == 1
    assert "USER:PASSWORD" in capsys.readouterr().err
