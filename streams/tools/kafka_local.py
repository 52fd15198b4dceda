"""A local single-node Apache Kafka broker (KRaft mode) on 127.0.0.1, or a cluster of several
nodes (``start_cluster``: each broker and controller, one cluster id, in ``DIR/node-<id>``).

The broker's jars are resolved from Maven Central with the machine's ``mvn`` (the pom in
``streams/tools/kafka/pom.xml``) and cached under ``~/.cache/segment-stream/kafka-<version>``.
Each data folder holds one broker: its ``server.properties``, KRaft storage, log file and a
``broker.json`` state file with the pid and ports, so ``stop`` stops only what ``start`` started.

With ``sasl`` the only client listener takes SCRAM-SHA-512 (SASL_PLAINTEXT, or SASL_SSL with
``tls`` and a self-signed CA in ``ca.pem``); the controller listener takes SASL/PLAIN with a
secret of the broker's own. ``broker.json`` then also holds what a client needs to connect.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from streams.tools.exceptions import LocalServiceError

logger = logging.getLogger(__name__)

# Kafka 4.1.1: a current release line, KRaft-only (no ZooKeeper), verified end to end with
# aiokafka 0.14 and faust-streaming 0.15.3 (produce, consume, consumer groups, compacted
# changelogs, faust tables and repartitioning).
KAFKA_VERSION = "4.1.1"
JAVA_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
# For a JVM that must start fast rather than run fast: the storage tool (seconds of work) and, with
# SEGMENTS_KAFKA_JAVA_OPTS, brokers that live minutes (the test suite's).
QUICK_JAVA_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                   "-Djava.awt.headless=true"]
STATE_FILE = "broker.json"
LOG_FILE = "kafka.log"
CA_FILE = "ca.pem"
SCRAM_MECHANISM = "SCRAM-SHA-512"
# Kafka takes 4096..16384 iterations for SCRAM-SHA-512.
SCRAM_ITERATIONS = 8192
# What the storage was formatted with (salt and stored key, never the password): a SCRAM user
# can only be added at format time here, so a later start with other credentials must fail.
SCRAM_FILE = "scram.json"
TLS_DIR = "tls"
# Usernames go unquoted into `--add-scram` (split on ",") and the SCRAM exchange: keep them plain.
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("SEGMENTS_CACHE_DIR") or Path(base) / "segment-stream")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "segment-stream" / "kafka"


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}" / "libs"


def resolve_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Resolve the broker's runtime jars with Maven once; later calls use the cache."""
    target = libs_dir(version)
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalServiceError("Maven ('mvn') is not on PATH; it is needed once to fetch Kafka")
    pom_text = resources.files("streams.tools").joinpath("kafka/pom.xml").read_text()
    pom_text = pom_text.replace("@KAFKA_VERSION@", version)
    staging = target.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(pom_text)
        cmd = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if quiet:
            cmd.insert(1, "-q")
        logger.info("resolving Apache Kafka %s from Maven Central", version)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LocalServiceError(f"mvn could not resolve Kafka {version}:\n"
                                    f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    marker.write_text(version + "\n")
    return target


def _classpath(version: str) -> str:
    return str(resolve_jars(version)) + "/*"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalServiceError("Java 17+ ('java') is not on PATH; the local Kafka broker needs it")
    return java


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass(frozen=True)
class BrokerState:
    pid: int
    port: int
    controller_port: int
    version: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """The environment a client needs: KAFKA_BOOTSTRAP_SERVERS and the security settings."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        if self.sasl_mechanism is None:
            return env
        env.update(KAFKA_SECURITY_PROTOCOL=self.security_protocol,
                   KAFKA_SASL_MECHANISM=self.sasl_mechanism,
                   KAFKA_SASL_USERNAME=self.sasl_username or "",
                   KAFKA_SASL_PASSWORD=self.sasl_password or "")
        if self.ssl_cafile:
            env["KAFKA_SSL_CAFILE"] = self.ssl_cafile
        return env

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        if self.sasl_mechanism is None:
            return {}
        kwargs: dict[str, Any] = {
            "security_protocol": self.security_protocol, "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password}
        if self.ssl_cafile:
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        return kwargs


def read_state(data_dir: Path) -> BrokerState | None:
    path = data_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        # Files written before the security fields existed lack them: a PLAINTEXT broker.
        return BrokerState(int(raw["pid"]), int(raw["port"]), int(raw["controller_port"]),
                           str(raw["version"]), str(raw.get("security_protocol", "PLAINTEXT")),
                           raw.get("sasl_mechanism"), raw.get("sasl_username"),
                           raw.get("sasl_password"), raw.get("ssl_cafile"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it may hold passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file keeps its mode through O_CREAT
        f.write(text)


def parse_credentials(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (split at the first colon) as (user, password), or a clear error."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise LocalServiceError("SASL credentials must be given as USER:PASSWORD")
    check_credentials(user, password)
    return user, password


def check_credentials(user: str, password: str) -> None:
    if not USERNAME_RE.fullmatch(user):
        raise LocalServiceError(
            f"SASL user {user!r} is not accepted: use 1-64 letters, digits, '.', '_', '@' or "
            f"'-', starting with a letter or digit")
    # Control characters cannot be written into a JAAS option; anything else can.
    if not password or any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise LocalServiceError("the SASL password must be non-empty, without control characters")


def running_broker(data_dir: Path) -> BrokerState | None:
    state = read_state(data_dir)
    if state is not None and pid_alive(state.pid) and _is_our_broker(state.pid, data_dir):
        return state
    return None


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return str(data_dir / "server.properties").encode() in cmdline


@dataclass(frozen=True)
class Security:
    """The client listener's security: SCRAM-SHA-512 for ``username``, over TLS if ``keystore``."""

    username: str
    password: str = field(repr=False)
    controller_secret: str = field(repr=False)
    keystore: Path | None = None
    keystore_password: str | None = field(default=None, repr=False)
    cafile: Path | None = None

    @property
    def protocol(self) -> str:
        return "SASL_SSL" if self.keystore else "SASL_PLAINTEXT"


def _jaas_quote(value: str) -> str:
    # JAAS option values are Java StreamTokenizer quoted strings: backslash escapes apply.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _prop_escape(value: str) -> str:
    """A value as java.util.Properties reads it back: Kafka loads the file as ISO-8859-1."""
    out = []
    for i, c in enumerate(value):
        if c == "\\":
            out.append("\\\\")
        elif c == " " and i == 0:
            out.append("\\ ")  # a leading blank would be taken for the separator's
        elif 32 <= ord(c) < 127:
            out.append(c)
        else:
            for unit in c.encode("utf-16-be").hex(" ", 2).split():
                out.append("\\u" + unit)
    return "".join(out)


def _security_properties(sec: Security) -> list[str]:
    name = sec.protocol.lower()
    scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
             f"username={_jaas_quote(sec.username)} password={_jaas_quote(sec.password)};")
    # The controller cannot take SCRAM (its users live in the metadata it serves), so it takes
    # PLAIN against one static user; both the server and its in-process client read this entry.
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'username="controller" password={_jaas_quote(sec.controller_secret)} '
             f"user_controller={_jaas_quote(sec.controller_secret)};")
    lines = [
        f"listener.name.{name}.sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"listener.name.{name}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config={_prop_escape(scram)}",
        f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={_prop_escape(plain)}",
        "sasl.mechanism.controller.protocol=PLAIN",
    ]
    if sec.keystore is not None and sec.cafile is not None:
        lines += [
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={_prop_escape(str(sec.keystore))}",
            f"ssl.keystore.password={_prop_escape(sec.keystore_password or '')}",
            f"ssl.key.password={_prop_escape(sec.keystore_password or '')}",
            # The broker's own client (inter-broker) checks the certificate like any other.
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={_prop_escape(str(sec.cafile))}",
            "ssl.client.auth=none",
        ]
    return lines


def _server_properties(data_dir: Path, port: int, controller_port: int,
                       security: Security | None = None, *, node_id: int = 1,
                       voters: str | None = None) -> str:
    """One node's configuration; ``voters`` (``id@host:port,...``): the controller quorum of a
    cluster of several nodes, whose internal topics are then replicated on up to three."""
    # Invariant: with `security`, every listener authenticates. The controller listener is
    # reachable too: over PLAINTEXT it would let anyone alter broker configs (KIP-919).
    client = security.protocol if security else "PLAINTEXT"
    controller = "SASL_PLAINTEXT" if security else "PLAINTEXT"
    nodes = voters.count("@") if voters else 1
    rf, isr = min(3, nodes), min(2, nodes)
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={voters or f'1@127.0.0.1:{controller_port}'}",
        f"listeners={client}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners={client}://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={client}",
        f"listener.security.protocol.map=CONTROLLER:{controller},{client}:{client}",
        *(_security_properties(security) if security else []),
        f"log.dirs={data_dir / 'data'}",
        "num.partitions=8",
        f"offsets.topic.replication.factor={rf}",
        "offsets.topic.num.partitions=10",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={isr}",
        # A local broker: members join at once instead of waiting 3 s for more.
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        # A local broker keeps what it is given: time-based retention would delete replayed or
        # synthetic events whose record timestamps lie in the past as soon as it checks.
        "log.retention.ms=-1",
        "",
    ])


def _format_storage(java: str, cp: str, data_dir: Path, props: Path,
                    sasl: tuple[str, str] | None = None, cluster_id: str | None = None,
                    java_opts: list[str] | None = None) -> None:
    if (data_dir / "data" / "meta.properties").exists():
        if sasl is not None:
            _check_formatted_scram(data_dir, *sasl)
        return
    cluster_id = cluster_id or _cluster_id()
    args = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
            "--ignore-formatted"]
    record = None
    if sasl is not None:
        user, password = sasl
        salt = secrets.token_bytes(32)
        salted = _salted_password(password, salt, SCRAM_ITERATIONS)
        # The salted password, not the password: the tool splits its argument at ",".
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},iterations={SCRAM_ITERATIONS},"
                 f"salt={_b64(salt)},saltedpassword={_b64(salted)}]"]
        record = {"username": user, "mechanism": SCRAM_MECHANISM, "salt": _b64(salt),
                  "iterations": SCRAM_ITERATIONS, "stored_key": _b64(_stored_key(salted))}
    # The arguments go in a private @argfile: a credential on a command line is world-readable.
    argfile = data_dir / "format.args"
    _write_private(argfile, "".join(_argfile_quote(a) + "\n" for a in args))
    try:
        proc = subprocess.run([java, *(java_opts or QUICK_JAVA_OPTS), "-cp", cp, _log4j_flag(),
                               f"@{argfile}"],
                              capture_output=True, text=True, check=False)
    finally:
        argfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise LocalServiceError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")
    if record is not None:
        _write_private(data_dir / SCRAM_FILE, json.dumps(record))


def _argfile_quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # SCRAM's Hi() is PBKDF2; Kafka and aiokafka both take the password's UTF-8 bytes as is.
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


def _stored_key(salted: bytes) -> bytes:
    return hashlib.sha512(hmac.digest(salted, b"Client Key", "sha512")).digest()


def _check_formatted_scram(data_dir: Path, user: str, password: str) -> None:
    """Fail unless the existing storage was formatted with this SCRAM user and password."""
    try:
        rec = json.loads((data_dir / SCRAM_FILE).read_text())
        salted = _salted_password(password, base64.b64decode(rec["salt"]), int(rec["iterations"]))
        same = rec["username"] == user and hmac.compare_digest(
            base64.b64decode(rec["stored_key"]), _stored_key(salted))
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise LocalServiceError(
            f"the broker storage in {data_dir} was formatted without SASL user {user!r} or with "
            f"another password; SCRAM users are set when the storage is formatted, so use a "
            f"new --data folder (or delete this one)")


def _keytool() -> str:
    java = Path(_java()).resolve()
    keytool = java.parent / "keytool"
    if keytool.exists():
        return str(keytool)
    found = shutil.which("keytool")
    if found is None:
        raise LocalServiceError("the JDK's 'keytool' is not on PATH; --tls needs it")
    return found


def _ensure_tls(data_dir: Path) -> tuple[Path, str, Path]:
    """The broker's PKCS12 keystore, its password and the CA file; made once per data folder.

    A throwaway CA signs one certificate for IP 127.0.0.1 and DNS localhost; its key is deleted
    afterwards, so nothing else can ever carry its signature. Clients trust ``ca.pem`` only.
    """
    tls = data_dir / TLS_DIR
    keystore, pwfile, cafile = tls / "broker.p12", tls / "keystore.password", data_dir / CA_FILE
    if keystore.exists() and pwfile.exists() and cafile.exists():
        return keystore, pwfile.read_text().strip(), cafile
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir(mode=0o700, parents=True)
    password = secrets.token_urlsafe(24)
    ca_store = tls / "ca.p12"
    keytool = _keytool()
    env = {**os.environ, "SEGMENTS_KEYSTORE_PASS": password}

    def run(*args: str, stdin: str | None = None) -> str:
        # Quick-starting JVM flags: each call is a fresh JVM doing a few milliseconds of work.
        proc = subprocess.run(
            [keytool, "-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", *args,
             "-storetype", "PKCS12", "-storepass:env", "SEGMENTS_KEYSTORE_PASS"],
            input=stdin, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise LocalServiceError(f"keytool {args[0]} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    key = ["-keyalg", "EC", "-groupname", "secp256r1"]
    run("-genkeypair", "-alias", "ca", *key, "-dname", "CN=segment-stream local Kafka CA",
        "-ext", "bc:c", "-ext", "KU=keyCertSign,cRLSign", "-validity", "3650",
        "-keystore", str(ca_store))
    run("-genkeypair", "-alias", "broker", *key, "-dname", "CN=localhost", "-validity", "3650",
        "-keystore", str(keystore))
    csr = run("-certreq", "-alias", "broker", "-keystore", str(keystore))
    cert = run("-gencert", "-alias", "ca", "-keystore", str(ca_store), "-rfc",
               "-ext", "SAN=IP:127.0.0.1,DNS:localhost", "-ext", "KU=digitalSignature",
               "-ext", "EKU=serverAuth,clientAuth", "-validity", "3650", stdin=csr)
    ca_pem = run("-exportcert", "-alias", "ca", "-keystore", str(ca_store), "-rfc")
    # The reply with its whole chain, so the broker presents the CA too.
    run("-importcert", "-alias", "broker", "-noprompt", "-keystore", str(keystore),
        stdin=cert + ca_pem)
    ca_store.unlink()
    _write_private(pwfile, password + "\n")
    cafile.write_text(ca_pem)
    return keystore, password, cafile


def _cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64, as `kafka-storage random-uuid` makes.

    Like Kafka's own Uuid.randomUuid, never one that starts with "-": the storage tool's
    argument parser would read it as an option ("--cluster-id: expected one argument"),
    which failed one format in 32.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def broker_java_opts() -> list[str]:
    """The single broker's JVM options: SEGMENTS_KAFKA_JAVA_OPTS (blank-separated) if set."""
    return os.environ.get("SEGMENTS_KAFKA_JAVA_OPTS", "").split() or list(JAVA_OPTS)


def _log4j_flag() -> str:
    conf = resources.files("streams.tools").joinpath("kafka/log4j2.properties")
    return f"-Dlog4j2.configurationFile={conf}"


def wait_until_ready(bootstrap: str, timeout_s: float, pid: int | None = None,
                     client_kwargs: Mapping[str, Any] | None = None) -> None:
    """Block until the broker answers a metadata request (or fail with a clear error).

    ``client_kwargs`` are aiokafka's security arguments (``BrokerState.aiokafka_kwargs``).
    """
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                     **(client_kwargs or {}))
        try:
            await client.start()
            await client.describe_cluster()
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    deadline = time.monotonic() + timeout_s
    # Connection refused is expected while it boots: aiokafka's log is kept, not shown; its
    # last line names the cause (aiokafka raises "Unable to bootstrap" for a bad password too).
    quiet = logging.getLogger("aiokafka")
    level, propagate = quiet.level, quiet.propagate
    last = _LastRecord()
    quiet.setLevel(logging.WARNING)
    quiet.propagate = False
    quiet.addHandler(last)
    try:
        while time.monotonic() < deadline:
            if pid is not None and not pid_alive(pid):
                raise LocalServiceError("the Kafka broker exited during startup")
            if asyncio.run(probe()):
                return
            # The listener opens once the SCRAM users are loaded: refusals are not transient.
            if last.auth_failures >= 3:
                raise LocalServiceError(f"the Kafka broker at {bootstrap} refused the "
                                        f"credentials: {last.message}")
            time.sleep(0.3)
    finally:
        quiet.removeHandler(last)
        quiet.setLevel(level)
        quiet.propagate = propagate
    raise LocalServiceError(
        f"the Kafka broker at {bootstrap} did not answer within {timeout_s:.0f} s"
        + (f" (last client error: {last.message})" if last.message else ""))


class _LastRecord(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""
        self.auth_failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()
        if "SaslAuthenticationFailed" in self.message:
            self.auth_failures += 1


def start(port: int = 9092, data_dir: Path | None = None, timeout_s: float = 90.0,
          version: str = KAFKA_VERSION, *, sasl: tuple[str, str] | None = None,
          tls: bool = False) -> tuple[BrokerState, bool]:
    """Start a broker for ``data_dir``; returns (state, started_now).

    ``sasl=(user, password)``: the client listener takes SCRAM-SHA-512 for that user only;
    ``tls`` (needs ``sasl``): over TLS, with the CA certificate written to ``data_dir/ca.pem``.
    """
    if tls and sasl is None:
        raise LocalServiceError("TLS needs SASL credentials here (--tls goes with --sasl)")
    if sasl is not None:
        check_credentials(*sasl)
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    current = running_broker(data_dir)
    if current is not None:
        wanted = ("SASL_SSL" if tls else "SASL_PLAINTEXT") if sasl else "PLAINTEXT"
        if current.security_protocol != wanted or (
                sasl is not None and (current.sasl_username, current.sasl_password) != sasl):
            raise LocalServiceError(
                f"a broker with other security settings ({current.security_protocol}) is "
                f"already running for {data_dir}; stop it first")
        return current, False
    if not port_free(port):
        raise LocalServiceError(
            f"port {port} on 127.0.0.1 is already in use by another program; "
            f"choose another with --port")
    previous = read_state(data_dir)
    controller_port = previous.controller_port if previous else 0
    if not controller_port or controller_port == port or not port_free(controller_port):
        controller_port = free_port()
    java = _java()
    cp = _classpath(version)
    security = None
    if sasl is not None:
        keystore = keystore_password = cafile = None
        if tls:
            keystore, keystore_password, cafile = _ensure_tls(data_dir)
        security = Security(sasl[0], sasl[1], secrets.token_urlsafe(24), keystore,
                            keystore_password, cafile)
    props = data_dir / "server.properties"
    _write_private(props, _server_properties(data_dir, port, controller_port, security))
    _format_storage(java, cp, data_dir, props, sasl)
    log = open(data_dir / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child process
    try:
        proc = subprocess.Popen(
            [java, *broker_java_opts(), "-cp", cp, _log4j_flag(), "kafka.Kafka", str(props)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=data_dir)
    finally:
        log.close()
    state = BrokerState(proc.pid, port, controller_port, version)
    if security is not None:
        state = BrokerState(proc.pid, port, controller_port, version, security.protocol,
                            SCRAM_MECHANISM, security.username, security.password,
                            str(security.cafile) if security.cafile else None)
    _write_private(data_dir / STATE_FILE, json.dumps(asdict(state)))
    try:
        wait_until_ready(state.bootstrap, timeout_s, pid=proc.pid,
                         client_kwargs=state.aiokafka_kwargs())
    except LocalServiceError as exc:
        _terminate(proc.pid, 10)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        raise LocalServiceError(f"{exc}; last lines of {data_dir / LOG_FILE}:\n"
                                f"{tail(data_dir / LOG_FILE)}") from None
    return state, True


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop(data_dir: Path | None = None, timeout_s: float = 30.0) -> BrokerState | None:
    """Stop the broker of ``data_dir`` (a clean shutdown, SIGKILL after ``timeout_s``)."""
    data_dir = (data_dir or default_data_dir()).resolve()
    state = running_broker(data_dir)
    if state is not None:
        _terminate(state.pid, timeout_s)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return state


# -- a cluster of several nodes on loopback ----------------------------------------------------

CLUSTER_FILE = "cluster.json"
# Several JVMs share a small machine: each node gets a small heap.
CLUSTER_JAVA_OPTS = ["-Xms128m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     "-Djava.awt.headless=true"]


@dataclass(frozen=True)
class ClusterState:
    """The nodes of a local cluster (each broker and controller), in ``DIR/node-<id>``."""

    nodes: tuple[BrokerState, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def version(self) -> str:
        return self.nodes[0].version


def _node_dir(data_dir: Path, node_id: int) -> Path:
    return data_dir / f"node-{node_id}"


def read_cluster(data_dir: Path) -> ClusterState | None:
    try:
        raw = json.loads((data_dir / CLUSTER_FILE).read_text())
        return ClusterState(tuple(BrokerState(int(n["pid"]), int(n["port"]),
                                              int(n["controller_port"]), str(n["version"]))
                                  for n in raw["nodes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_cluster(data_dir: Path) -> ClusterState | None:
    """The cluster of ``data_dir`` if every one of its nodes runs."""
    state = read_cluster(data_dir)
    if state is None:
        return None
    for i, node in enumerate(state.nodes, start=1):
        if not (pid_alive(node.pid) and _is_our_broker(node.pid, _node_dir(data_dir, i))):
            return None
    return state


def brokers_up(bootstrap: str) -> int:
    """How many brokers the cluster's metadata lists (0 when it does not answer)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def count() -> int:
        client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await client.start()
            return len((await client.describe_cluster())["brokers"])
        except Exception:
            return 0
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    return asyncio.run(count())


def start_cluster(brokers: int = 3, port: int = 9092, data_dir: Path | None = None,
                  timeout_s: float = 120.0, version: str = KAFKA_VERSION
                  ) -> tuple[ClusterState, bool]:
    """Start ``brokers`` nodes (each broker and controller, one cluster id, a quorum of all of
    them) on 127.0.0.1, client ports from ``port`` on where free; returns (state, started_now).
    Ready once the metadata lists every broker."""
    if brokers < 2:
        raise LocalServiceError("a cluster has 2 nodes or more (one node: `kafka start`)")
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    current = running_cluster(data_dir)
    if current is not None:
        return current, False
    if running_broker(data_dir) is not None:
        raise LocalServiceError(f"a single broker is already running for {data_dir}; stop it "
                                f"first or use another --data folder")
    previous = read_cluster(data_dir)
    stop_cluster(data_dir)  # what is left of a cluster that did not fully run
    ports: list[tuple[int, int]] = []
    taken: set[int] = set()

    def pick(wanted: int) -> int:
        chosen = wanted if wanted and wanted not in taken and port_free(wanted) else free_port()
        while chosen in taken:
            chosen = free_port()
        taken.add(chosen)
        return chosen

    for i in range(brokers):
        old = previous.nodes[i] if previous and i < len(previous.nodes) else None
        client = pick(port + i if port else 0)
        ports.append((client, pick(old.controller_port if old else 0)))
    voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, start=1))
    java, cp = _java(), _classpath(version)
    cluster_id_file = data_dir / "cluster.id"
    if not cluster_id_file.exists():
        cluster_id_file.write_text(_cluster_id() + "\n")
    cluster_id = cluster_id_file.read_text().strip()
    nodes = []
    for i, (client, controller) in enumerate(ports, start=1):
        node = _node_dir(data_dir, i)
        node.mkdir(exist_ok=True)
        props = node / "server.properties"
        _write_private(props, _server_properties(node, client, controller, node_id=i,
                                                 voters=voters))
        _format_storage(java, cp, node, props, cluster_id=cluster_id,
                        java_opts=CLUSTER_JAVA_OPTS)
        pid = _launch_node(java, cp, node)
        nodes.append(BrokerState(pid, client, controller, version))
    state = ClusterState(tuple(nodes))
    _write_private(data_dir / CLUSTER_FILE,
                   json.dumps({"nodes": [asdict(n) for n in state.nodes]}))
    deadline = time.monotonic() + timeout_s
    quiet = logging.getLogger("aiokafka")  # connections are refused while the nodes boot
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        _wait_for_brokers(state, data_dir, brokers, deadline, timeout_s)
    finally:
        quiet.setLevel(level)
    return state, True


def _launch_node(java: str, cp: str, node: Path) -> int:
    log = open(node / LOG_FILE, "ab")  # noqa: SIM115 - handed to the child process
    try:
        proc = subprocess.Popen(
            [java, *CLUSTER_JAVA_OPTS, "-cp", cp, _log4j_flag(), "kafka.Kafka",
             str(node / "server.properties")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=node)
    finally:
        log.close()
    return proc.pid


def restart_node(data_dir: Path, node_id: int, timeout_s: float = 120.0) -> ClusterState:
    """Start node ``node_id`` (1-based) of the cluster of ``data_dir`` again after it stopped
    or was killed, with its data and ports; ready once the metadata lists every broker."""
    data_dir = data_dir.resolve()
    state = read_cluster(data_dir)
    if state is None or not 1 <= node_id <= len(state.nodes):
        raise LocalServiceError(f"no node {node_id} in a cluster of {data_dir}")
    old = state.nodes[node_id - 1]
    node = _node_dir(data_dir, node_id)
    if pid_alive(old.pid) and _is_our_broker(old.pid, node):
        return state
    pid = _launch_node(_java(), _classpath(old.version), node)
    nodes = list(state.nodes)
    nodes[node_id - 1] = BrokerState(pid, old.port, old.controller_port, old.version)
    state = ClusterState(tuple(nodes))
    _write_private(data_dir / CLUSTER_FILE,
                   json.dumps({"nodes": [asdict(n) for n in state.nodes]}))
    _wait_for_brokers(state, data_dir, len(nodes), time.monotonic() + timeout_s, timeout_s)
    return state


def _wait_for_brokers(state: ClusterState, data_dir: Path, brokers: int, deadline: float,
                      timeout_s: float) -> None:
    while brokers_up(state.bootstrap) < brokers:
        dead = [i for i, n in enumerate(state.nodes, start=1) if not pid_alive(n.pid)]
        if dead or time.monotonic() > deadline:
            stop_cluster(data_dir)
            why = f"node {dead[0]} exited" if dead else f"not ready within {timeout_s:.0f} s"
            node_log = _node_dir(data_dir, dead[0] if dead else 1) / LOG_FILE
            raise LocalServiceError(f"the Kafka cluster in {data_dir}: {why}; last lines of "
                                    f"{node_log}:\n{tail(node_log)}")
        time.sleep(0.5)


def stop_cluster(data_dir: Path | None = None, timeout_s: float = 30.0) -> ClusterState | None:
    """Stop every node of the cluster of ``data_dir`` that runs (only what start started)."""
    data_dir = (data_dir or default_data_dir()).resolve()
    state = read_cluster(data_dir)
    if state is None:
        return None
    # In parallel: a node stopping alone waits for the quorum it is leaving.
    running = [n for i, n in enumerate(state.nodes, start=1)
               if pid_alive(n.pid) and _is_our_broker(n.pid, _node_dir(data_dir, i))]
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
    for node in running:
        _terminate(node.pid, timeout_s)
    (data_dir / CLUSTER_FILE).unlink(missing_ok=True)
    return state if running else None
