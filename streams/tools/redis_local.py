"""A throwaway local Redis server on 127.0.0.1 (tests and the demo start one), optionally
with a password and TLS (a self-signed certificate made with the ``openssl`` command)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from streams.tools.exceptions import LocalServiceError
from streams.tools.kafka_local import free_port


@dataclass
class RedisServer:
    data_dir: Path
    port: int = 0
    password: str = field(default="", repr=False)
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.ca_file))}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "redis-cert.pem"  # self-signed: its own CA

    def _config(self) -> Path:
        """The server's settings, in a file only its owner reads (the password is in it)."""
        lines = ["bind 127.0.0.1", "save \"\"", "appendonly no", f"dir {self.data_dir}",
                 "protected-mode yes",
                 # A cache: bounded, the least recently used answers go first.
                 "maxmemory 256mb", "maxmemory-policy allkeys-lru"]
        if self.password:
            lines.append(f'requirepass "{self.password}"')
        if self.tls:
            key = self.data_dir / "redis-key.pem"
            _self_signed(self.ca_file, key)
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {self.ca_file}",
                      f"tls-key-file {key}", f"tls-ca-cert-file {self.ca_file}",
                      "tls-auth-clients no"]
        else:
            lines.append(f"port {self.port}")
        path = self.data_dir / "redis.conf"
        path.touch(mode=0o600)
        path.chmod(0o600)  # (an older file keeps its mode through touch)
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise LocalServiceError("redis-server is not installed (Debian package: redis-server)")
        if not self.port:
            self.port = free_port()
        if self.password and not _SAFE_PASSWORD.fullmatch(self.password):
            raise LocalServiceError("a local Redis password: letters, digits, '-', '_', '.'")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([exe, str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LocalServiceError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise LocalServiceError(f"redis-server on port {self.port} did not answer")

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


_SAFE_PASSWORD = re.compile(r"[A-Za-z0-9._-]{1,128}")  # nothing to quote in redis.conf


def _self_signed(cert: Path, key: Path) -> None:
    """A certificate for 127.0.0.1 (and localhost) that is its own CA."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise LocalServiceError("openssl is not installed (Debian package: openssl)")
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalServiceError(f"openssl could not make a certificate: {proc.stderr[-500:]}")
