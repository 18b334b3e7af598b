"""OpenAPI descriptions of the request and response bodies.

The handlers parse bodies themselves (orjson, column-wise checks: a pydantic model per
candidate would cost more than the forward pass), so FastAPI cannot derive these; they are
written here once and attached to the routes with ``openapi_extra``.
"""

from __future__ import annotations

from typing import Any

SCALAR: dict[str, Any] = {"type": ["string", "number", "integer", "boolean", "null"]}
ERROR = {"description": "what was wrong, naming the field",
         "content": {"application/json": {"schema": {
             "type": "object", "required": ["error"],
             "properties": {"error": {"type": "string"}}}}}}
ERRORS = {"400": {**ERROR, "description": "a client mistake; the message names the field"},
          "404": {**ERROR, "description": "unknown model or version"},
          "413": {**ERROR, "description": "the body is over the server's --max-body-bytes"},
          "422": {**ERROR, "description": "a candidate the model cannot score (a prediction "
                                          "or the score is not a finite number); the message "
                                          "names it"},
          "503": {**ERROR, "description": "the model is not loaded yet"}}
PROBABILITIES = {"type": "object", "additionalProperties": {"type": "number"},
                 "description": "entire-space probability (or prediction) per task"}

RANK_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["candidates"],
    "properties": {
        "context": {"type": "object", "additionalProperties": SCALAR,
                    "description": "context-side features, encoded once per request"},
        "candidates": {
            "description": "item-side features: a list of objects, or an object of equally "
                           "long columns (faster); 'id' is optional and echoed back",
            "oneOf": [
                {"type": "array", "minItems": 1,
                 "items": {"type": "object", "additionalProperties": SCALAR}},
                {"type": "object", "additionalProperties": {"type": "array", "items": SCALAR}},
            ],
        },
        "top_k": {"type": "integer", "minimum": 1,
                  "description": "return the best k (default: all)"},
        "format": {"enum": ["rows", "columns"], "default": "rows",
                   "description": "'columns' answers with parallel arrays"},
        "fusion_weights": {"type": "object", "additionalProperties": {"type": "number",
                                                                      "minimum": 0},
                           "description": "task → weight, overriding the configured fusion's "
                                          "weights for this request (bounded by the server)"},
    },
}

RANK_RESPONSE: dict[str, Any] = {
    "description": "candidates ordered by fused score; the Server-Timing header says where the "
                   "time went (parse, encode, model, respond, total)",
    "content": {"application/json": {"schema": {"oneOf": [
        {"title": "rows", "type": "object", "required": ["model", "version", "ranked"],
         "properties": {
             "model": {"type": "string"}, "version": {"type": "integer"},
             "ranked": {"type": "array", "items": {
                 "type": "object", "required": ["index", "id", "score", "p"],
                 "properties": {"index": {"type": "integer"}, "id": SCALAR,
                                "score": {"type": "number"}, "p": PROBABILITIES}}}}},
        {"title": "columns", "type": "object",
         "required": ["model", "version", "index", "id", "score", "p"],
         "properties": {
             "model": {"type": "string"}, "version": {"type": "integer"},
             "index": {"type": "array", "items": {"type": "integer"}},
             "id": {"type": "array", "items": SCALAR},
             "score": {"type": "array", "items": {"type": "number"}},
             "p": {"type": "object", "additionalProperties": {
                 "type": "array", "items": {"type": "number"}}}}},
    ]}}},
}

TENSOR: dict[str, Any] = {
    "type": "object", "required": ["name", "shape", "datatype"],
    "description": "values in 'data', or (binary tensor data extension) as raw bytes after "
                   "the JSON, their count in parameters.binary_data_size",
    "properties": {"name": {"type": "string"},
                   "shape": {"type": "array", "items": {"type": "integer"}},
                   "datatype": {"type": "string"},
                   "data": {"type": "array", "items": SCALAR},
                   "parameters": {"type": "object", "properties": {
                       "binary_data_size": {"type": "integer", "minimum": 0}}}},
}
BINARY = {"schema": {"type": "string", "format": "binary"},
          "description": "binary tensor data extension: the Inference-Header-Content-Length "
                         "header gives the length of the JSON part; raw tensors follow it"}

INFER_REQUEST: dict[str, Any] = {
    "type": "object", "required": ["inputs"],
    "properties": {"id": {"type": "string"},
                   "inputs": {"type": "array", "items": TENSOR,
                              "description": "one tensor per feature column, shape [N] or "
                                             "[N, 1]"},
                   "outputs": {"type": "array", "items": {
                       "type": "object", "required": ["name"],
                       "properties": {"name": {"type": "string"},
                                      "parameters": {"type": "object", "properties": {
                                          "binary_data": {"type": "boolean"}}}}}},
                   "parameters": {"type": "object", "properties": {
                       "binary_data_output": {"type": "boolean"}}}},
}

INFER_RESPONSE: dict[str, Any] = {
    "description": "per-task probabilities (p_TASK) and the fused score",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["model_name", "model_version", "outputs"],
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                       "id": {"type": "string"},
                       "outputs": {"type": "array", "items": TENSOR}}},
        "application/octet-stream": BINARY}},
}


def body(schema: dict[str, Any], response: dict[str, Any], *,
         binary: bool = False) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body the handler parses itself."""
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if binary:
        content["application/octet-stream"] = BINARY
    return {"requestBody": {"required": True, "content": content},
            "responses": {"200": response, **ERRORS}}
