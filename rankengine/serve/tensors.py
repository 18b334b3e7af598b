"""The binary tensor data extension of the Open Inference Protocol (as Triton and KServe speak it).

A request whose ``Inference-Header-Content-Length`` header is set carries that many bytes of JSON
and then the raw bytes of every input whose ``parameters.binary_data_size`` says so, in input
order. Numbers are little-endian; a BYTES element is a 4-byte little-endian length and its bytes.
Standard clients (``tritonclient``) send and ask for this by default.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from rankengine.serve.scoring import BadRequestError

HEADER = "inference-header-content-length"
EXTENSION = "binary_tensor_data"

NUMERIC = {
    "BOOL": np.dtype("bool"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}


def split_body(raw: bytes, header: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body."""
    if header is None:
        return raw, b""
    digits = header.strip()  # int() would also take '1_0', '+5' and non-ASCII digits
    size = int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 20 else -1
    if not 0 <= size <= len(raw):
        raise BadRequestError(f"Inference-Header-Content-Length is {header!r}; expected a "
                              f"byte count between 0 and the body's {len(raw)} bytes")
    return raw[:size], raw[size:]


def binary_size(name: str, tensor: dict[str, Any]) -> int | None:
    """The tensor's ``binary_data_size`` parameter, checked; None when its data is JSON."""
    parameters = tensor.get("parameters")
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise BadRequestError(f"input '{name}': 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError(f"input '{name}': binary_data_size must be a byte count, "
                              f"found {size!r}")
    return size


def decode(name: str, datatype: Any, rows: int, chunk: bytes) -> np.ndarray | list[str]:
    """The ``rows`` values of one binary input tensor."""
    if datatype == "BYTES":
        return _decode_bytes(name, rows, chunk)
    dtype = NUMERIC.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadRequestError(f"input '{name}': datatype {datatype!r} cannot be sent as binary "
                              f"data here; expected BYTES or one of {', '.join(NUMERIC)}")
    if len(chunk) != rows * dtype.itemsize:
        raise BadRequestError(f"input '{name}': {len(chunk)} bytes of binary data; {rows} "
                              f"{datatype} values take {rows * dtype.itemsize}")
    values = np.frombuffer(chunk, dtype=dtype)
    if dtype == NUMERIC["UINT64"]:
        too_big = np.flatnonzero(values > np.uint64(np.iinfo(np.int64).max))
        if len(too_big):
            raise BadRequestError(f"input '{name}'[{too_big[0]}]: {values[too_big[0]]} does "
                                  f"not fit in int64")
    if dtype.kind in "iu":
        return values.astype(np.int64)  # feature columns are int64 or float64
    return values.astype(np.float64) if dtype.kind == "f" else values


def _decode_bytes(name: str, rows: int, chunk: bytes) -> list[str]:
    out: list[str] = []
    offset = 0
    for row in range(rows):
        if offset + 4 > len(chunk):
            raise BadRequestError(f"input '{name}'[{row}]: binary data ends before the "
                                  f"element's 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise BadRequestError(f"input '{name}'[{row}]: element of {length} bytes runs "
                                  f"past the end of its binary data")
        try:
            out.append(chunk[offset:offset + length].decode())
        except UnicodeDecodeError:
            raise BadRequestError(f"input '{name}'[{row}]: element is not UTF-8 text") from None
        offset += length
    if offset != len(chunk):
        raise BadRequestError(f"input '{name}': {len(chunk) - offset} bytes of binary data "
                              f"after its {rows} elements")
    return out


def wants_binary(payload: dict[str, Any], output: dict[str, Any] | None) -> bool:
    """Whether an output goes back as binary data: its own ``binary_data`` parameter, else the
    request's ``binary_data_output``."""
    own = (output or {}).get("parameters")
    if isinstance(own, dict) and "binary_data" in own:
        return bool(own["binary_data"])
    request = payload.get("parameters")
    return isinstance(request, dict) and bool(request.get("binary_data_output"))
