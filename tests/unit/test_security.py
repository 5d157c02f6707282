"""Security (issue 6, section 7): Kafka security settings reach faust and aiokafka unchanged,
nothing read from a topic is ever unpickled, the web server binds to localhost by default, and
message size limits apply before decoding.

TLS tests use a real throwaway CA made with ``cryptography`` when installed, else the
``openssl`` command line, and prove the contexts work with a TLS handshake on 127.0.0.1.
"""

from __future__ import annotations

import ast
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from streamer.app.kafka import aiokafka_kwargs, faust_broker_urls, faust_credentials, ssl_context
from streamer.events import EventCodec, InvalidEvent
from streamer.settings import KafkaSettings, Settings

STREAMER = Path(__file__).resolve().parents[2] / "streamer"


# -- a throwaway PKI ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # a CA that signed nothing here: verifying against it must fail
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki_openssl(d: Path) -> Pki:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=streamer-test-{ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=streamer-test-{name}", cwd=d)
        ext = ["-extfile", "server.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=d)
    return Pki(d / "ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key",
               d / "client.pem", d / "client.key")


def _make_pki_cryptography(d: Path) -> Pki:  # pragma: no cover - used when installed
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def cert(cn: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool,
             san: bool = False) -> Any:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    paths: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamer-test-ca")])
    for name in ("ca", "other-ca", "server", "client"):
        key = ca_key if name == "ca" else ec.generate_private_key(ec.SECP256R1())
        if name in ("ca", "other-ca"):
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"streamer-test-{name}")])
            c = cert(f"streamer-test-{name}", key, subject, key, ca=True)
        else:
            c = cert(f"streamer-test-{name}", key, ca_name, ca_key, ca=False,
                     san=name == "server")
        paths[name] = d / f"{name}.pem"
        paths[name].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        write_key(key, d / f"{name}.key")
    return Pki(paths["ca"], paths["other-ca"], paths["server"], d / "server.key",
               paths["client"], d / "client.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.fail("the TLS tests need the openssl CLI (or the cryptography package)")
        return _make_pki_openssl(d)
    return _make_pki_cryptography(d)  # pragma: no cover


def _tls_handshake(client: ssl.SSLContext, pki: Pki, *, require_client_cert: bool) -> str | None:
    """Handshake with a one-shot TLS server on 127.0.0.1 (certificate from ``pki``'s CA);
    returns the client certificate's CN the server saw (None without one)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    seen: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert()
                    seen["cn"] = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as e:
                seen["error"] = e

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(10)
    cn: str | None = seen.get("cn")
    return cn


# -- PLAINTEXT -------------------------------------------------------------------------------
def test_plaintext_has_no_credentials_and_no_tls() -> None:
    k = KafkaSettings(bootstrap_servers="a:9092, b:9093")
    assert faust_credentials(k) is None
    assert ssl_context(k) is None
    assert aiokafka_kwargs(k) == {"bootstrap_servers": "a:9092, b:9093",
                                  "security_protocol": "PLAINTEXT"}
    assert faust_broker_urls(k) == ["kafka://a:9092", "kafka://b:9093"]


# -- SASL_PLAINTEXT --------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_maps_to_faust_and_aiokafka(mechanism: str) -> None:
    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                      sasl_username="svc-streamer", sasl_password="s3cret")
    creds = faust_credentials(k)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_PLAINTEXT"
    assert creds.mechanism.value == mechanism
    assert (creds.username, creds.password, creds.ssl_context) == ("svc-streamer", "s3cret", None)
    kw = aiokafka_kwargs(k)
    assert kw == {"bootstrap_servers": k.bootstrap_servers, "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": mechanism, "sasl_plain_username": "svc-streamer",
                  "sasl_plain_password": "s3cret"}


def test_sasl_mechanism_defaults_to_plain() -> None:
    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")
    creds = faust_credentials(k)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "PLAIN"
    assert aiokafka_kwargs(k)["sasl_mechanism"] == "PLAIN"


# -- SSL and SASL_SSL with a real CA -----------------------------------------------------------
def test_ssl_context_verifies_against_the_configured_ca(pki: Pki) -> None:
    ctx = ssl_context(KafkaSettings(security_protocol="SSL", ssl_cafile=str(pki.ca)))
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]
    assert {"commonName": "streamer-test-ca"} in subjects
    assert _tls_handshake(ctx, pki, require_client_cert=False) is None


def test_ssl_context_rejects_a_broker_signed_by_another_ca(pki: Pki) -> None:
    ctx = ssl_context(KafkaSettings(security_protocol="SSL", ssl_cafile=str(pki.other_ca)))
    assert ctx is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(ctx, pki, require_client_cert=False)


def test_mutual_tls_presents_the_client_certificate(pki: Pki) -> None:
    k = KafkaSettings(security_protocol="SSL", ssl_cafile=str(pki.ca),
                      ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key))
    ctx = ssl_context(k)
    assert ctx is not None
    assert _tls_handshake(ctx, pki, require_client_cert=True) == "streamer-test-client"


def test_mismatched_client_key_fails_at_startup(pki: Pki) -> None:
    k = KafkaSettings(security_protocol="SSL", ssl_cafile=str(pki.ca),
                      ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.server_key))
    with pytest.raises(ssl.SSLError):
        ssl_context(k)


def test_missing_ca_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ssl_context(KafkaSettings(security_protocol="SSL",
                                  ssl_cafile=str(tmp_path / "missing.pem")))


def test_ssl_maps_to_faust_and_aiokafka(pki: Pki) -> None:
    k = KafkaSettings(security_protocol="SSL", ssl_cafile=str(pki.ca))
    creds = faust_credentials(k)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol.value == "SSL"
    assert isinstance(creds.context, ssl.SSLContext)
    assert _tls_handshake(creds.context, pki, require_client_cert=False) is None
    kw = aiokafka_kwargs(k)
    assert kw["security_protocol"] == "SSL" and isinstance(kw["ssl_context"], ssl.SSLContext)
    assert not any(key.startswith("sasl") for key in kw)


def test_sasl_ssl_maps_to_faust_and_aiokafka(pki: Pki) -> None:
    k = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="svc", sasl_password="pw", ssl_cafile=str(pki.ca),
                      ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key))
    creds = faust_credentials(k)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL"
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert (creds.username, creds.password) == ("svc", "pw")
    assert creds.ssl_context is not None
    assert _tls_handshake(creds.ssl_context, pki, require_client_cert=True) == (
        "streamer-test-client")
    kw = aiokafka_kwargs(k)
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512", "svc", "pw")
    assert _tls_handshake(kw["ssl_context"], pki, require_client_cert=True) == (
        "streamer-test-client")


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_and_aiokafka_clients_get_the_same_connection_arguments(
        protocol: str, pki: Pki) -> None:
    """faust turns ``broker_credentials`` into aiokafka arguments itself; they must equal the
    ones streamer's own aiokafka clients (readers, trainer, storefront) get."""
    sasl = {"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u", "sasl_password": "p"}
    k = KafkaSettings(security_protocol=protocol,
                      **(sasl if protocol.startswith("SASL") else {}),
                      **({"ssl_cafile": str(pki.ca)} if protocol.endswith("SSL") else {}))
    via_faust = dict(credentials_to_aiokafka_auth(faust_credentials(k)))
    direct = aiokafka_kwargs(k)
    assert direct.pop("bootstrap_servers") == k.bootstrap_servers
    for key in set(via_faust) | set(direct):
        a, b = via_faust.get(key), direct.get(key)
        if isinstance(a, ssl.SSLContext) or isinstance(b, ssl.SSLContext):
            # Two contexts built from the same settings: same verification, same CA.
            assert isinstance(a, ssl.SSLContext) and isinstance(b, ssl.SSLContext)
            assert (a.verify_mode, a.check_hostname, a.get_ca_certs()) == (
                b.verify_mode, b.check_hostname, b.get_ca_certs())
        else:
            assert a == b, key


@pytest.mark.parametrize(("fields", "refused", "instead"), [
    # TLS files with a protocol without TLS: the password went in cleartext, and a CA file
    # that does not exist was no error.
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "hunter2",
      "ssl_cafile": "/nonexistent/ca.pem"}, "SSL_CAFILE set", "PROTOCOL=SASL_SSL"),
    ({"security_protocol": "PLAINTEXT", "ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"},
     "SSL_CERTFILE, STREAMER__KAFKA__SSL_KEYFILE set", "PROTOCOL=SSL "),
    # SASL settings with a protocol without SASL: dropped.
    ({"security_protocol": "PLAINTEXT", "sasl_username": "u", "sasl_password": "hunter2",
      "sasl_mechanism": "SCRAM-SHA-512"},
     "SASL_MECHANISM, STREAMER__KAFKA__SASL_USERNAME, STREAMER__KAFKA__SASL_PASSWORD set",
     "PROTOCOL=SASL_PLAINTEXT "),
    ({"security_protocol": "SSL", "sasl_password": "hunter2"}, "SASL_PASSWORD set",
     "PROTOCOL=SASL_SSL "),
    # SASL without its credentials: faust got a user name of ''.
    ({"security_protocol": "SASL_PLAINTEXT"}, "needs STREAMER__KAFKA__SASL_USERNAME, "
     "STREAMER__KAFKA__SASL_PASSWORD", "without SASL"),
    ({"security_protocol": "SASL_SSL", "sasl_password": "hunter2"},
     "needs STREAMER__KAFKA__SASL_USERNAME:", "without SASL"),
    # A client key without its certificate: never loaded.
    ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, "SSL_KEYFILE set without", "unset"),
])
def test_security_settings_the_protocol_would_ignore_are_refused(
        fields: dict[str, str], refused: str, instead: str) -> None:
    for build in (lambda: Settings(kafka=fields), lambda: KafkaSettings(**fields)):
        with pytest.raises(ValidationError) as raised:
            build()
        message = str(raised.value)
        assert refused in message and instead in message, message
        assert "hunter2" not in message  # the section's input (the password) is never shown


def test_security_settings_from_the_environment_are_checked_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER__KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMER__KAFKA__SASL_USERNAME", "u")
    monkeypatch.setenv("STREAMER__KAFKA__SASL_PASSWORD", "hunter2")
    assert Settings().kafka.security_protocol == "SASL_PLAINTEXT"
    monkeypatch.setenv("STREAMER__KAFKA__SSL_CAFILE", "/etc/kafka/ca.pem")
    with pytest.raises(ValidationError, match="STREAMER__KAFKA__SSL_CAFILE set"):
        Settings()
    monkeypatch.setenv("STREAMER__KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    assert Settings().kafka.ssl_cafile == "/etc/kafka/ca.pem"


def test_worker_app_gets_the_credentials(pki: Pki) -> None:
    from streamer.app.factory import create_app

    settings = Settings(kafka={"bootstrap_servers": "broker-1:9093,broker-2:9093",
                               "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                               "sasl_username": "svc", "sasl_password": "pw",
                               "ssl_cafile": str(pki.ca)},
                        worker={"app_id": "security-test"})
    conf = create_app(settings).app.conf
    creds = conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.username, creds.password) == ("SASL_SSL", "svc", "pw")
    assert [str(u) for u in conf.broker] == ["kafka://broker-1:9093", "kafka://broker-2:9093"]


def test_kafka_clients_in_streamer_all_use_the_mapped_settings() -> None:
    """Every aiokafka client streamer builds gets ``aiokafka_kwargs`` (security included);
    the embedded broker's own helpers (loopback, plaintext by design) are the exception."""
    offenders = []
    for path in STREAMER.rglob("*.py"):
        text = path.read_text()
        if path.name in ("broker.py", "kafka.py"):
            continue
        builds_client = any(f"{c}(" in text for c in ("AIOKafkaConsumer", "AIOKafkaProducer",
                                                        "AIOKafkaAdminClient"))
        if builds_client and "aiokafka_kwargs(" not in text:
            offenders.append(str(path.relative_to(STREAMER.parent)))
    assert offenders == []


def test_password_is_never_shown() -> None:
    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                      sasl_password="hunter2-secret")
    assert "hunter2-secret" not in repr(k) and "hunter2-secret" not in str(k)
    assert "hunter2-secret" not in repr(Settings(kafka=k.model_dump()))
    assert "hunter2-secret" not in repr(faust_credentials(k))


# -- nothing read from a topic is unpickled ----------------------------------------------------
_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal",
                      "jsonpickle"}
_FORBIDDEN_CALLS = {("pickle", "loads"), ("pickle", "load"), ("joblib", "load"),
                    ("numpy", "load"), ("np", "load"), ("yaml", "load"), ("yaml", "unsafe_load")}


def _problems(path: Path, root: Path = STREAMER.parent) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in _FORBIDDEN_MODULES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else (
                owner.attr if isinstance(owner, ast.Attribute) else "")
            call = (name, node.func.attr)
            keywords = {k.arg: k.value for k in node.keywords}
            if call == ("torch", "load"):
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append("torch.load without weights_only=True")
            elif call in (("numpy", "load"), ("np", "load")):
                safe = keywords.get("allow_pickle")
                if isinstance(safe, ast.Constant) and safe.value is True:
                    found.append("numpy.load(allow_pickle=True)")
            elif call in _FORBIDDEN_CALLS:
                found.append(".".join(call))
    return [f"{path.relative_to(root)}:{p}" for p in found]


def test_no_module_unpickles_anything() -> None:
    files = list(STREAMER.rglob("*.py"))
    assert len(files) > 20  # the walk found the package
    problems = [p for f in files for p in _problems(f)]
    assert problems == []


def test_the_unpickling_check_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom dill import loads\nimport torch, joblib\n"
                   "torch.load(f)\ntorch.load(f, weights_only=False)\njoblib.load(f)\n"
                   "pickle.loads(b'')\n")
    good = tmp_path / "good.py"
    good.write_text("import torch\ntorch.load(f, weights_only=True)\n")
    assert [p.split(":", 1)[1] for p in _problems(bad, tmp_path)] == [
        "import pickle", "from dill import ...", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "joblib.load", "pickle.loads"]
    assert _problems(good, tmp_path) == []


# -- the web server binds to localhost -------------------------------------------------------
def test_web_server_binds_to_localhost_by_default() -> None:
    from streamer.app.factory import create_app

    assert Settings().worker.web_host == "127.0.0.1"
    conf = create_app(Settings(worker={"app_id": "security-web-test"})).app.conf
    assert conf.web_bind == "127.0.0.1"
    assert conf.web_host == "127.0.0.1"


def test_web_bind_address_is_configurable() -> None:
    from streamer.app.factory import create_app

    settings = Settings(worker={"app_id": "security-web-test-2", "web_host": "0.0.0.0"})
    assert create_app(settings).app.conf.web_bind == "0.0.0.0"


def test_trainer_metrics_bind_to_localhost_unless_configured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client

    import streamer.observability
    from streamer.app import trainer

    bound: list[tuple[int, str]] = []
    monkeypatch.setattr(prometheus_client, "start_http_server",
                        lambda port, addr, registry: bound.append((port, addr)))
    monkeypatch.setattr(streamer.observability, "configure_logging", lambda level: None)
    monkeypatch.setattr(trainer.asyncio, "run", lambda main: main.close())  # no Kafka here
    assert Settings().trainer.metrics_host == "127.0.0.1"
    trainer.main(Settings(trainer={"metrics_port": 9100}))
    trainer.main(Settings(trainer={"metrics_port": 9100, "metrics_host": "0.0.0.0"}))
    trainer.main(Settings())  # no port: not served
    assert bound == [(9100, "127.0.0.1"), (9100, "0.0.0.0")]


# -- size limits before decoding ---------------------------------------------------------------
class _NotABuffer:
    """Claims a huge length and has no bytes: decoding it would raise TypeError."""

    def __len__(self) -> int:
        return 10**9


def test_size_limit_applies_before_decoding() -> None:
    codec = EventCodec(max_message_bytes=64)
    for decode in (codec.decode_click, codec.decode_purchase):
        with pytest.raises(InvalidEvent) as e:
            decode(_NotABuffer())  # type: ignore[arg-type]
        assert e.value.kind == "too_large"
    valid = (b'{"event_id":"e","ts":1700000000000,"user_id":"u","session_id":"s",'
             b'"item_id":"i","kind":"view"}')
    assert len(valid) > 64
    with pytest.raises(InvalidEvent, match="too_large"):
        codec.decode_click(valid)  # valid JSON, still refused: size comes first
    assert EventCodec(max_message_bytes=1024).decode_click(valid).item_id == "i"


def test_worker_codec_uses_the_configured_limit() -> None:
    from streamer.app.factory import create_app

    sa = create_app(Settings(kafka={"max_message_bytes": 100}, worker={"app_id": "sec-size"}))
    with pytest.raises(InvalidEvent) as e:
        sa.codec.decode_purchase(b" " * 101)
    assert e.value.kind == "too_large"
