"""BigParameter values: JSON when JSON gives back exactly the same value, else a pickle."""

from __future__ import annotations

import json
import math
import pickle

__all__ = ["VALUE_CODECS", "decode_value", "encode_value"]

VALUE_CODECS = {"value.json": "json", "value.pickle": "pickle"}  # ref name -> codec


def encode_value(value: object) -> tuple[bytes, str]:
    """(bytes, ref name). JSON when it round-trips exactly (no tuples, int keys, NaN or
    subclasses silently changing type), since JSON is readable and language-neutral."""
    try:
        if _json_exact(value):
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return text.encode(), "value.json"
    except (RecursionError, UnicodeEncodeError):  # deep nesting; lone surrogates (file names)
        pass
    import cloudpickle  # pickles by value what lives in __main__, as workers need

    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), "value.pickle"


def _json_exact(value: object) -> bool:
    t = type(value)
    if value is None or t in (str, bool, int):
        return True
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if t is list:
        return all(_json_exact(v) for v in value)  # type: ignore[attr-defined]
    if t is dict:
        items = value.items()  # type: ignore[attr-defined]
        return all(type(k) is str and _json_exact(v) for k, v in items)
    return False


def decode_value(data: bytes, codec: str) -> object:
    if codec == "json":
        return json.loads(data)
    return pickle.loads(data)  # the store is trusted like the code that workers unpickle
