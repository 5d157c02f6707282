"""The versions on ``policy-updates`` and which one is live: what workers, the trainer and
``streamer policy`` all derive from reading that topic in order.

Two kinds of record, both keyed ``"policy"`` (one key, so one partition: their order is the
order they were published in):

- a **version**: safetensors bytes from :func:`~streamer.policy.checkpoint.policy_to_bytes`
  (weights, shape and promotion metadata). It becomes live.
- a **rollback**: JSON ``{"kind": "rollback", "version": V, ...}`` (:func:`rollback_record`,
  :class:`RollbackRecord`). The earlier version ``V`` becomes live again (``V`` may be the base
  policy's version, the v0 policy every worker starts with). Told apart from a checkpoint by its
  first bytes: a checkpoint starts with an 8-byte little-endian header length, which would have
  to exceed 2**40 to read as ``{"kind"``.

Nothing is ever unpickled, and a record that cannot be trusted (non-finite weights, a
tampered or malformed checkpoint, a rollback to a version never seen) changes nothing:
:meth:`PolicyVersions.apply` raises and the live version stays. Neither does a version this
process could not serve: one whose features are not all among the ``features`` it computes
(a trainer of a newer release during a rolling upgrade): adopted, every decision would raise.

>>> from streamer.policy.torch_policy import TorchPolicy
>>> versions = PolicyVersions(base_version="v0-greedy")
>>> p = TorchPolicy.initial(("x",), seed=3)
>>> change = versions.apply(policy_to_bytes(p, {"estimate": 1.5}))
>>> change.kind, change.version == p.version, versions.live_version == p.version
('version', True, True)
>>> versions.apply(rollback_record("v0-greedy", reason="test")).policy is None  # base again
True
>>> [(v.version == p.version, v.live) for v in versions.versions()]
[(False, True), (True, False)]
>>> serving = PolicyVersions(base_version="v0-greedy", features=("y",))
>>> try:
...     serving.apply(policy_to_bytes(p))
... except UnsafeCheckpointError as e:  # needs "x", which this process does not compute
...     print(str(e).rsplit(": ", 1)[1], serving.live_version, serving.rejected)
x v0-greedy 1
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from streamer.events import typed_decoder
from streamer.policy.checkpoint import UnsafeCheckpointError, policy_from_bytes, policy_to_bytes
from streamer.policy.torch_policy import TorchPolicy

_ROLLBACK_PREFIX = b'{"kind"'
#: A rollback record is a few hundred bytes; anything much larger starting like one is not.
_MAX_ROLLBACK_BYTES = 16 * 1024

ChangeKind = Literal["version", "rollback"]

__all__ = [
    "PolicyChange",
    "PolicyVersions",
    "RollbackRecord",
    "UnsafeCheckpointError",
    "VersionInfo",
    "policy_to_bytes",
    "rollback_record",
]


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """What one record did: ``version`` is live now; ``policy`` is its TorchPolicy (None for
    the base policy, which each process builds itself); ``metadata`` as published."""

    kind: ChangeKind
    version: str
    policy: TorchPolicy | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A known version, its metadata, and whether it is the live one."""

    version: str
    metadata: dict[str, Any]
    live: bool


class RollbackRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A rollback record as it is on the topic. Decoded typed, so that a record that only
    starts like one (deeply nested JSON, invalid UTF-8, a version of another type) is refused
    like any malformed one, never raised past the readers of the topic, which keeps it forever.
    """

    kind: Literal["rollback"]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    ts: int | None = None


#: Raises InvalidEvent (a ValueError) for anything but a RollbackRecord.
_decode_rollback = typed_decoder(RollbackRecord, _MAX_ROLLBACK_BYTES)


def rollback_record(version: str, *, reason: str = "", ts_ms: int | None = None) -> bytes:
    """The bytes of a rollback to ``version`` (see the module doc).

    >>> rollback_record("torch-abc", reason="bad week", ts_ms=1)
    b'{"kind":"rollback","version":"torch-abc","reason":"bad week","ts":1}'
    """
    if not version or len(version) > 200:
        raise ValueError("a rollback needs a version id of 1-200 characters")
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return msgspec.json.encode(RollbackRecord(kind="rollback", version=version,
                                              reason=reason[:1000], ts=ts))


class PolicyVersions:
    """Versions read from ``policy-updates`` (the newest ``max_versions`` kept, plus the
    base), and the live one. Pure and not thread-safe: feed it records in topic order.

    ``features``: the feature names this process's featurizer provides (a worker's
    ``streamer.online.FEATURE_NAMES``); a version needing any other is refused like an
    untrusted one, so it is never live here and a rollback to it is to an unknown version.
    None: any (a reader that only lists versions).

    ``max_variants``: the most variants this process shows per offer (``offers.max_variants``):
    every version is kept :meth:`TorchPolicy.capped <streamer.policy.torch_policy.TorchPolicy.
    capped>` to it, so a version whose checkpoint shows more is served (and, in the trainer,
    evaluated and fine-tuned) showing that many; one showing fewer keeps its own. None: as
    each checkpoint says."""

    def __init__(self, *, base_version: str, max_versions: int = 50,
                 features: Iterable[str] | None = None,
                 max_variants: int | None = None) -> None:
        if max_versions <= 0:
            raise ValueError("max_versions must be positive")
        if max_variants is not None and max_variants <= 0:
            raise ValueError("max_variants must be positive (or None: as each version says)")
        self.base_version = base_version
        self.max_versions = max_versions
        self.features = None if features is None else frozenset(features)
        self.max_variants = max_variants
        self._known: OrderedDict[str, tuple[TorchPolicy, dict[str, Any]]] = OrderedDict()
        self._live = base_version
        self.rejected = 0

    @property
    def live_version(self) -> str:
        return self._live

    @property
    def live_policy(self) -> TorchPolicy | None:
        """The live TorchPolicy, or None while the base policy is live."""
        entry = self._known.get(self._live)
        return None if entry is None else entry[0]

    def apply(self, data: bytes) -> PolicyChange:
        """Apply one record; return what is live now. Raises :class:`UnsafeCheckpointError`
        for an untrustworthy checkpoint and ``ValueError`` for a malformed rollback or one to
        an unknown version; then nothing changes (``rejected`` counts them)."""
        try:
            change = self._apply(data)
        except ValueError:  # UnsafeCheckpointError is a ValueError
            self.rejected += 1
            raise
        self._live = change.version
        return change

    def _apply(self, data: bytes) -> PolicyChange:
        if data.startswith(_ROLLBACK_PREFIX):
            try:
                record = _decode_rollback(data)
            except ValueError as e:  # InvalidEvent: too large, not JSON, not a rollback
                raise ValueError(f"malformed rollback record: {e}") from e
            target, body = record.version, msgspec.structs.asdict(record)
            if target == self.base_version:
                return PolicyChange("rollback", target, None, body)
            if target not in self._known:
                raise ValueError(f"rollback to unknown version {target!r}")
            policy, _ = self._known[target]
            return PolicyChange("rollback", target, policy, body)
        policy, meta = policy_from_bytes(data)
        policy = policy.capped(self.max_variants)
        if self.features is not None:
            missing = [f for f in policy.shape.feature_names if f not in self.features]
            if missing:
                raise UnsafeCheckpointError(
                    f"policy {policy.version} needs features this process does not compute: "
                    + ", ".join(missing[:10]))
        self._known.pop(policy.version, None)
        self._known[policy.version] = (policy, meta)
        while len(self._known) > self.max_versions:
            oldest = next(iter(self._known))
            if oldest == self._live:  # never forget the live one
                self._known.move_to_end(oldest)
                if len(self._known) <= 1:
                    break
                continue
            del self._known[oldest]
        return PolicyChange("version", policy.version, policy, meta)

    def knows(self, version: str) -> bool:
        """True for the base version and every version kept."""
        return version == self.base_version or version in self._known

    def versions(self) -> list[VersionInfo]:
        """The base version, then the kept versions oldest first, each with ``live``."""
        base = VersionInfo(self.base_version, {"kind": "base"}, self._live == self.base_version)
        return [base] + [
            VersionInfo(v, meta, v == self._live) for v, (_, meta) in self._known.items()
        ]
