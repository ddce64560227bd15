"""Plain literals as bytes, the only thing that crosses between the judge and the program it judges.

    encode([1, (2.5, "x"), {3: None}])  ->  b'[1,{"t":[2.5,"x"]},{"d":[[3,null]]}]'
    decode(that) == [1, (2.5, "x"), {3: None}]

The values are None, bool, int, float (NaN and infinities included), complex, str (lone surrogates
included), bytes, list, tuple, dict, set and frozenset, nested. JSON carries them, with a one-key object
tagging what JSON has no word for. `decode` builds only those exact built-in types, whatever bytes it
is given, so a reply from the program cannot smuggle in an object with a lying `__eq__`, and anything
else (an unknown tag, a key that cannot be hashed, nesting past the interpreter's limit) raises
`NotALiteral`. Written here rather than taken from a library because it is the sandbox's trust boundary:
it must build nothing but these types, and the standard library (pickle, marshal, repr) either runs
code or cannot carry every one of them.

Standard library only: the sandbox harness imports it inside the sandbox, where the project is not.
"""

from __future__ import annotations

import json
import math

TAGS = ("t", "d", "s", "fs", "b", "c", "f")  # tuple, dict, set, frozenset, bytes, complex, non-finite float


class NotALiteral(ValueError):
    """The value, or the bytes, are not one of the plain literals this module carries."""


def encode(value: object) -> bytes:
    try:
        return json.dumps(_out(value), ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    except RecursionError:
        raise NotALiteral("it is nested too deeply (or holds itself)") from None
    except ValueError as e:  # an int too long for int <-> str conversion
        raise NotALiteral(str(e)) from None


def decode(data: bytes) -> object:
    try:
        return _in(json.loads(data))
    except NotALiteral:
        raise
    except RecursionError:
        raise NotALiteral("it is nested too deeply") from None
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise NotALiteral(f"malformed: {type(e).__name__}") from None


def describe(value: object) -> str:
    """The name of a value's type, for a reason such as "returned a map, not a plain literal"."""
    return type(value).__name__


def _out(v: object):
    t = type(v)  # exact types: a subclass could carry behaviour of its own
    if v is None or t in (bool, int, str):
        return v
    if t is float:
        return v if math.isfinite(v) else {"f": repr(v)}
    if t is list:
        return [_out(x) for x in v]
    if t is tuple:
        return {"t": [_out(x) for x in v]}
    if t is dict:
        return {"d": [[_out(k), _out(x)] for k, x in v.items()]}
    if t in (set, frozenset):
        return {"s" if t is set else "fs": [_out(x) for x in v]}
    if t is bytes:
        return {"b": v.hex()}
    if t is complex:
        return {"c": [_out(v.real), _out(v.imag)]}
    raise NotALiteral(f"a {describe(v)} is not a plain literal")


def _in(v):
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [_in(x) for x in v]
    if t is not dict or len(v) != 1:
        raise NotALiteral("malformed: an object that is not a tag")
    (tag, x), = v.items()
    if tag == "f" and x in ("nan", "inf", "-inf"):
        return float(x)
    if tag == "b" and type(x) is str:
        return bytes.fromhex(x)
    if type(x) is not list:
        raise NotALiteral(f"malformed: tag {tag!r}")
    if tag == "t":
        return tuple(_in(y) for y in x)
    if tag == "s":
        return {_in(y) for y in x}
    if tag == "fs":
        return frozenset(_in(y) for y in x)
    if tag == "d":
        out = {}
        for pair in x:
            if type(pair) is not list or len(pair) != 2:
                raise NotALiteral("malformed: a dict entry that is not a pair")
            out[_in(pair[0])] = _in(pair[1])
        return out
    if tag == "c" and len(x) == 2 and all(type(y) in (int, float, dict) for y in x):
        re, im = _in(x[0]), _in(x[1])
        if type(re) is float and type(im) is float:
            return complex(re, im)
    raise NotALiteral(f"malformed: tag {tag!r}")
