"""A typed view of a faust table whose values are msgspec-encoded bytes.

Domain classes take ``MutableMapping``s of typed values; faust tables store bytes. This view
encodes on assignment and decodes on read, and writes only through ``__setitem__`` /
``__delitem__``, which is what makes faust send a changelog entry.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Generic, TypeVar

import msgspec

V = TypeVar("V")


class EncodedTable(MutableMapping[str, V], Generic[V]):
    """``MutableMapping[str, V]`` over a mapping of ``bytes`` (a faust Table or a dict)."""

    __slots__ = ("_decoder", "_encoder", "_raw")

    def __init__(self, raw: MutableMapping[Any, Any], value_type: type[V]) -> None:
        self._raw = raw
        self._decoder = msgspec.json.Decoder(value_type)
        self._encoder = msgspec.json.Encoder()

    def __getitem__(self, key: str) -> V:
        return self._decoder.decode(self._raw[key])

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._raw.get(key)
        return default if raw is None else self._decoder.decode(raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __setitem__(self, key: str, value: V) -> None:
        self._raw[key] = self._encoder.encode(value)

    def __delitem__(self, key: str) -> None:
        del self._raw[key]

    def __iter__(self) -> Iterator[str]:
        for k in self._raw:
            yield k.decode() if isinstance(k, bytes) else k

    def __len__(self) -> int:
        return len(self._raw)
