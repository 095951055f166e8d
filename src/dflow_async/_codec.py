"""JSON encoding of step outputs for the journal: no pickle in the journal itself.

Values JSON cannot hold (arrays, custom objects) are written as blobs next to the journal and
referenced by digest; paths and artifact references keep their type through a small tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path, PurePath
from typing import Any

__all__ = ["decode", "encode", "fingerprint", "plain", "type_label", "unrecordable"]


_SCALARS = frozenset({int, float, str, bool, type(None)})
# one encoder: json.dumps() with any option builds a new JSONEncoder on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=True)


def _c_encoder() -> Any:
    """The C encoder JSONEncoder.encode() builds afresh on every call (its set-up costs more
    than encoding a step's outputs), built once. None where the C accelerator is missing."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    ascii_ = getattr(encoder, "c_encode_basestring_ascii", None)
    if make is None or ascii_ is None:
        return None
    # the arguments JSONEncoder.iterencode passes for _ENCODER's settings; no circular check
    # (markers=None): encode() only sees its own acyclic dicts and lists
    return make(None, _ENCODER.default, ascii_, None, ":", ",", False, False, True)


_C_ENCODE = _c_encoder()


def _dumps(value: Any) -> str:
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def encode(value: Any, blob_dir: Path | None) -> str:
    if _flat(value):  # the common case, straight to the C encoder
        return _dumps(value)
    return _dumps(_to_json(value, blob_dir))


def fingerprint(value: Any) -> str:
    """What encode() would write for ``value``, with each blob named by its digest but not
    written: two values with the same fingerprint are recorded the same way."""
    return _dumps(_to_json(value, None, digest_only=True))


def _flat(value: Any) -> bool:
    """A dict of dicts of scalars (step outputs of plain parameters): JSON as it is."""
    if type(value) is not dict:
        return False
    for inner in value.values():
        if type(inner) is not dict:
            return False
        for k, v in inner.items():
            if type(v) not in _SCALARS or k.startswith("__dfa_"):
                return False
    return True


def plain(outputs: Any) -> bool:
    """Every value of these outputs (one mapping per slice) is a scalar: encode() takes them
    as they are. The driver's per-step check, so a loop rather than any()."""
    for values in outputs:
        for value in values.values():
            if type(value) not in _SCALARS:
                return False
    return True


def type_label(value: Any) -> str:
    """``value``'s class as a message names it: ``int``, ``threading.Lock``."""
    cls = type(value)
    name = cls.__qualname__
    return name if cls.__module__ == "builtins" else f"{cls.__module__}.{name}"


def unrecordable(value: Any) -> Exception | None:
    """Why encode() would fail on ``value``, or None. It walks the value as encode() does, but
    only pickles (into nothing) the parts encode() would write as blobs: a check the driver
    makes where a step's outputs are accepted, so that an output the journal cannot hold fails
    that step instead of the journal's writer, later, with the whole run."""
    try:
        _probe(value)
    except Exception as exc:  # pickling errors are of any class; RecursionError for a cycle
        return exc
    return None


def _probe(value: Any) -> None:
    # the cases of _to_json, in its order
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        items: Any = value
    elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = value.values()
    else:
        if not _tagged(value):  # a blob, for _to_json
            _pickle_into_nothing(value)
        return
    for v in items:
        if type(v) not in _SCALARS:
            _probe(v)


def _tagged(value: Any) -> bool:
    """A path, a BigValue or an ArtifactRef: _to_json writes a reference, not a blob."""
    if isinstance(value, PurePath):
        return True
    name = type(value).__name__
    return name == "BigValue" or (
        name == "ArtifactRef" and callable(getattr(value, "to_json", None))
    )


class _Nowhere:
    __slots__ = ()

    def write(self, data: Any) -> int:
        return len(data)


def _pickle_into_nothing(value: Any) -> None:
    """Pickle as _write_blob does, keeping nothing: large buffers (arrays, bytes) are left
    out of band, so checking an array does not copy it."""
    import cloudpickle

    cloudpickle.CloudPickler(_Nowhere(), protocol=5, buffer_callback=_out_of_band).dump(value)


def _out_of_band(_: Any) -> bool:
    return False


def decode(text: str | None, blob_dir: Path | None) -> Any:
    if text is None:
        return None
    return _from_json(json.loads(text), blob_dir)


def _to_json(value: Any, blob_dir: Path | None, *, digest_only: bool = False) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    d = digest_only
    if isinstance(value, list):
        return [_to_json(v, blob_dir, digest_only=d) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        if any(k.startswith("__dfa_") for k in value):
            items = [[k, _to_json(v, blob_dir, digest_only=d)] for k, v in value.items()]
            return {"__dfa_dict": items}
        return {k: _to_json(v, blob_dir, digest_only=d) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__dfa_tuple": [_to_json(v, blob_dir, digest_only=d) for v in value]}
    ref = getattr(value, "ref", None)
    if isinstance(value, PurePath) and ref is not None:
        return {"__dfa_stored": [str(value), ref.to_json()]}
    if isinstance(value, PurePath):
        return {"__dfa_path": str(value)}
    if type(value).__name__ == "BigValue":
        return {"__dfa_big": value.ref.to_json()}
    to_json = getattr(value, "to_json", None)
    if callable(to_json) and type(value).__name__ == "ArtifactRef":
        return {"__dfa_ref": to_json()}
    if digest_only:
        import cloudpickle

        return {"__dfa_blob": hashlib.sha256(cloudpickle.dumps(value)).hexdigest()}
    return {"__dfa_blob": _write_blob(value, blob_dir)}


def _from_json(value: Any, blob_dir: Path | None) -> Any:
    if isinstance(value, list):
        return [_from_json(v, blob_dir) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "__dfa_tuple":
                return tuple(_from_json(v, blob_dir) for v in inner)
            if tag == "__dfa_path":
                return Path(inner)
            if tag == "__dfa_big":
                from dflow_async._store_ref import ArtifactRef
                from dflow_async._stored import BigValue

                return BigValue(ArtifactRef.from_json(inner))
            if tag == "__dfa_stored":
                from dflow_async._store_ref import ArtifactRef
                from dflow_async._stored import StoredPath

                return StoredPath(inner[0], ArtifactRef.from_json(inner[1]))
            if tag == "__dfa_dict":
                return {k: _from_json(v, blob_dir) for k, v in inner}
            if tag == "__dfa_ref":
                from dflow_async._store_ref import ArtifactRef

                return ArtifactRef.from_json(inner)
            if tag == "__dfa_blob":
                return _read_blob(inner, blob_dir)
        return {k: _from_json(v, blob_dir) for k, v in value.items()}
    return value


def _write_blob(value: Any, blob_dir: Path | None) -> str:
    import cloudpickle

    if blob_dir is None:
        raise TypeError(f"cannot record a {type(value).__name__} value without a blob directory")
    data = cloudpickle.dumps(value)
    name = hashlib.sha256(data).hexdigest()
    target = blob_dir / name
    if not target.exists():
        from dflow_async._store_local import ensure_dir

        ensure_dir(blob_dir)
        tmp = target.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    return name


def _read_blob(name: str, blob_dir: Path | None) -> Any:
    if blob_dir is None or not all(c in "0123456789abcdef" for c in name):
        raise ValueError(f"bad blob reference {name!r} in the journal")
    data = (blob_dir / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != name:
        raise ValueError(f"blob {name} next to the journal is corrupted (digest mismatch)")
    return pickle.loads(data)
