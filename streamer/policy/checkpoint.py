"""Policy versions as bytes: safetensors weights plus JSON metadata, never pickle.

What travels on ``policy-updates``: the scorer's tensors, the :class:`PolicyShape` that fixes
how they are used (feature order, discounts, temperature, floor, ...), and promotion metadata
(version, parent, OPE estimates and interval, training size, device, seconds). Loading
refuses anything it cannot trust: oversized input, non-finite weights, a shape field of the
wrong type (``max_variants`` 2.5, a non-finite temperature), tensors that do not match the
shape, or a shape and weights whose hash is not the version they claim
(:func:`~streamer.policy.torch_policy.version_of`). A version published before its name
covered the shape is named by its weights alone: it loads under that name, its weights
checked (:func:`~streamer.policy.torch_policy.weights_version_of`), as it always did.

>>> policy = TorchPolicy.initial(("score", "discount"), seed=1)
>>> data = policy_to_bytes(policy, {"train_size": 10})
>>> loaded, meta = policy_from_bytes(data)
>>> loaded.version == policy.version, meta["train_size"], meta["parent"]
(True, 10, None)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from streamer.policy.network import VariantScorer
from streamer.policy.torch_policy import (
    PolicyShape,
    ShapeDocument,
    TorchPolicy,
    version_of,
    weights_version_of,
)

#: Far above a small scorer's size (tens of KB), far below what could exhaust memory.
MAX_CHECKPOINT_BYTES = 16 * 1024 * 1024
_SHAPE_KEY = "streamer.shape"
_META_KEY = "streamer.meta"
#: The metadata, typed: a JSON object (json.loads gave any value, and a string or a list
#: raised AttributeError past every reader of the topic), without NaN, Infinity or 1e999
#: (which json.loads read as infinity). Its errors are ValueErrors.
_decode_meta = msgspec.json.Decoder(dict[str, Any]).decode


class UnsafeCheckpointError(ValueError):
    """A policy that must not be published or loaded (non-finite, malformed, tampered)."""


def weights_are_finite(policy: TorchPolicy) -> bool:
    """True when every weight of the policy's scorer is finite."""
    return all(bool(torch.isfinite(t).all()) for t in policy.scorer.state_dict().values())


def policy_to_bytes(policy: TorchPolicy, metadata: Mapping[str, Any] | None = None) -> bytes:
    """Serialise ``policy`` with JSON-able ``metadata`` (``version`` and ``parent`` are
    always set from the policy). Raises :class:`UnsafeCheckpointError` on non-finite
    weights: such a policy is never published."""
    if not weights_are_finite(policy):
        raise UnsafeCheckpointError(f"policy {policy.version} has non-finite weights")
    meta = {**(metadata or {}), "version": policy.version, "parent": policy.parent}
    tensors = {k: v.detach().contiguous() for k, v in policy.scorer.state_dict().items()}
    return save(
        tensors,
        metadata={
            "format": "pt",
            _SHAPE_KEY: policy.shape.document().decode(),
            _META_KEY: json.dumps(meta, allow_nan=False),
        },
    )


def policy_from_bytes(data: bytes) -> tuple[TorchPolicy, dict[str, Any]]:
    """The policy and metadata serialised by :func:`policy_to_bytes`.

    Raises :class:`UnsafeCheckpointError` (chained to the cause) on anything untrustworthy.
    """
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise UnsafeCheckpointError(f"checkpoint of {len(data)} bytes exceeds the limit")
    try:
        tensors = load(data)
        header = _header_metadata(data)
        shape = _shape_from_json(header[_SHAPE_KEY])
        meta = _decode_meta(header[_META_KEY])
        # A fresh scorer of the claimed size is built before the tensors are compared with
        # it: a claimed size the tensors could not hold is refused first, not allocated.
        weights = sum(t.numel() for t in tensors.values())
        if shape.hidden * (shape.hidden + len(shape.feature_names)) > weights:
            raise ValueError(f"hidden size {shape.hidden} does not fit the tensors")
        scorer = shape.scorer()
        scorer.load_state_dict(tensors, strict=True)
    except (SafetensorError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise UnsafeCheckpointError(f"malformed policy checkpoint: {e}") from e
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise UnsafeCheckpointError(f"policy {meta.get('version')} has non-finite weights")
    version = meta.get("version")
    if not isinstance(version, str) or not _names(version, scorer, shape):
        raise UnsafeCheckpointError(
            f"shape and weights do not match the version they claim: {version}")
    return TorchPolicy(scorer, shape, version=version, parent=meta.get("parent")), meta


def _names(version: str, scorer: VariantScorer, shape: PolicyShape) -> bool:
    """True when ``version`` is the name of this shape and these weights: their
    :func:`version_of`, or for a record published before names covered the shape, the
    weights' own (:func:`weights_version_of`; its shape was never part of its name)."""
    prefix = version.rsplit("-", 1)[0]
    return (version == version_of(scorer, shape, prefix)
            or version == weights_version_of(scorer, prefix))


def _shape_from_json(text: str) -> PolicyShape:
    """The :class:`PolicyShape` a checkpoint claims (:class:`ShapeDocument`); ``ValueError``
    on anything else, feature names that repeat included."""
    doc = msgspec.json.decode(text, type=ShapeDocument)
    if len(set(doc.feature_names)) != len(doc.feature_names):
        raise ValueError("feature_names repeat a name")
    return PolicyShape(
        feature_names=tuple(doc.feature_names),
        hidden=doc.hidden,
        discount_levels=tuple(doc.discount_levels),
        temperature=doc.temperature,
        floor=doc.floor,
        max_variants=doc.max_variants,
        value_prior=doc.value_prior,
        prior_scale=doc.prior_scale,
        discount_one_hot=doc.discount_one_hot,
    )


def _header_metadata(data: bytes) -> dict[str, str]:
    # safetensors.torch.load drops the metadata; the header is an 8-byte little-endian length
    # followed by JSON, whose "__metadata__" holds our string map.
    if len(data) < 8:
        raise ValueError("truncated header")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8 : 8 + length])
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    return {str(k): str(v) for k, v in meta.items()}
