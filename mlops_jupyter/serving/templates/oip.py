"""Open Inference Protocol v2 (the REST API of KServe, Triton, Seldon MLServer) over the same model.

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}] (metadata from the signature),
/v2/models/{name}[/versions/{v}]/ready; POST /v2/models/{name}[/versions/{v}]/infer. Inputs come either
one tensor per column (named as in the signature, shape [n] or [n, 1]) or as one [n, columns] tensor in
signature order. Errors answer {"error": message} (plus this server's error_code and field list).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

DATATYPES = ("BOOL", "BYTES", "FP16", "FP32", "FP64", *(f"{s}INT{b}" for s in ("", "U") for b in (8, 16, 32, 64)))
# MLflow column type -> the datatype families that can carry it (numbers: the first named is the natural one)
FITS = {"double": ("FP", "INT", "UINT"), "float": ("FP", "INT", "UINT"), "long": ("INT", "UINT"),
        "integer": ("INT", "UINT"), "boolean": ("BOOL",)}
SEND = {"FP": "FP64 or FP32", "INT": "INT64 or INT32", "BOOL": "BOOL", "BYTES": "BYTES"}


# ids for answers to requests that sent none: unique per process, and cheaper than a uuid4 per request
_IDS = (f"{os.getpid():x}-{os.urandom(4).hex()}-{n}" for n in itertools.count(1))


class OipError(Exception):
    def __init__(self, status: int, message: str, errors: list | None = None):
        self.status, self.message, self.errors = status, message, errors or []


def _flat(data) -> list:
    """Row-major nested lists -> one flat list (the protocol allows either)."""
    if not any(isinstance(v, list) for v in data):
        return data
    out = []
    for v in data:
        out.extend(_flat(v) if isinstance(v, list) else [v])
    return out


def _tensor(i: int, t) -> tuple[str, list, str, list]:
    where = f"inputs[{i}]"
    if not isinstance(t, dict):
        raise OipError(400, f"{where} must be an object with name, shape, datatype and data")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in t]
    if missing:
        raise OipError(400, f"{where} lacks {', '.join(missing)}",
                       [{"field": f"{where}.{k}", "problem": "required field is missing"} for k in missing])
    name, shape, datatype, data = t["name"], t["shape"], t["datatype"], t["data"]
    if not isinstance(name, str):
        raise OipError(400, f"{where}.name must be a string", [{"field": f"{where}.name", "problem": "not a string"}])
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool)
                                                            and d >= 0 for d in shape):
        raise OipError(400, f"{where}.shape must be a list of sizes (whole numbers >= 0), e.g. [2]",
                       [{"field": f"{where}.shape", "problem": "not a list of sizes"}])
    if datatype not in DATATYPES:
        raise OipError(400, f"{where}.datatype {datatype!r} is not one of {', '.join(DATATYPES)}",
                       [{"field": f"{where}.datatype", "problem": "unknown datatype"}])
    if not isinstance(data, list):
        raise OipError(400, f"{where}.data must be a list of values", [{"field": f"{where}.data", "problem": "not a list"}])
    flat = _flat(data)
    if len(flat) != math.prod(shape):
        raise OipError(400, f"{where}.data holds {len(flat)} values but shape {shape} needs {math.prod(shape)}",
                       [{"field": f"{where}.data", "problem": "does not match the shape"}])
    return name, shape, datatype, flat


def _family(datatype: str) -> str:
    return next((f for f in ("UINT", "INT", "FP") if datatype.startswith(f)), datatype)


def _check_kind(where: str, column: str, kind: str, datatype: str) -> None:
    allowed = FITS.get(kind, ("BYTES",))  # text, dates, nested values travel as BYTES
    if _family(datatype) not in allowed:
        want = SEND[allowed[0]]
        raise OipError(400, f"{where}: column {column!r} is {kind} in the model's signature; send it as {want}, "
                            f"not {datatype}", [{"field": f"{where}.datatype", "problem": f"{kind} column: send {want}"}])


def fitting(kinds: dict[str, str]) -> dict[str, set]:
    """Each column's datatypes that can carry it."""
    return {c: {d for d in DATATYPES if _family(d) in FITS.get(kind, ("BYTES",))} for c, kind in kinds.items()}


def _plain_records(inputs: list, fits: dict[str, set], required: set[str]) -> list[dict] | None:
    """The common request (one flat [rows] tensor per column, each of a fitting datatype) as rows, with
    few checks; None for anything else, which records_of then checks step by step."""
    names, columns, rows = [], [], None
    for t in inputs:
        if type(t) is not dict:
            return None
        name, data = t.get("name"), t.get("data")
        if name not in fits or t.get("datatype") not in fits[name] or type(data) is not list:
            return None
        if t.get("shape") != [len(data)] or (rows is not None and len(data) != rows) or not data:
            return None
        if any(type(v) is list for v in data):
            return None
        rows = len(data)
        names.append(name)
        columns.append(data)
    if len(set(names)) != len(names) or not required.issubset(names):
        return None
    return [dict(zip(names, values)) for values in zip(*columns)]


def records_of(body, columns: list[str], kinds: dict[str, str], required: set[str],
               fits: dict[str, set] | None = None) -> list[dict]:
    """An inference request's inputs -> row dicts keyed by column (values still unvalidated); ``fits``
    (from ``fitting(kinds)``) enables the quick path for the common request."""
    if fits is not None and isinstance(body, dict) and type(body.get("inputs")) is list:
        rows = _plain_records(body["inputs"], fits, required)
        if rows is not None:
            return rows
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise OipError(400, 'the body must be a JSON object with "inputs": a list of tensors, e.g. '
                            + json.dumps({"inputs": [{"name": columns[0], "shape": [1], "datatype": "FP64",
                                                      "data": [0.0]}]}),
                       [{"field": "inputs", "problem": "required, a non-empty list"}])
    tensors = [_tensor(i, t) for i, t in enumerate(body["inputs"])]
    names = [t[0] for t in tensors]
    if len(tensors) == 1 and names[0] not in kinds:  # one [n, columns] tensor in signature order
        name, shape, datatype, flat = tensors[0]
        if len(shape) != 2 or shape[1] != len(columns):
            raise OipError(400, f"inputs[0] ({name!r}) is no column of this model, so it must be one [rows, "
                                f"{len(columns)}] tensor of all columns in order ({', '.join(columns)}); or send one "
                                "tensor per column, named as the column",
                           [{"field": "inputs[0].shape", "problem": f"expected [rows, {len(columns)}]"}])
        for col in columns:
            _check_kind("inputs[0]", col, kinds[col], datatype)
        width = len(columns)
        return [dict(zip(columns, flat[r * width:(r + 1) * width])) for r in range(shape[0])]
    unknown = [n for n in names if n not in kinds]
    dupes = sorted({n for n in names if names.count(n) > 1})
    missing = [c for c in columns if c in required and c not in names]
    problems = ([{"field": f"inputs[{names.index(n)}].name", "problem": f"unknown column; this model takes: "
                  f"{', '.join(columns)}"} for n in unknown]
                + [{"field": f"inputs[{n}]", "problem": "sent more than once"} for n in dupes]
                + [{"field": f"inputs[{c}]", "problem": "required column is missing"} for c in missing])
    if problems:
        raise OipError(400, "; ".join(f"{p['field']}: {p['problem']}" for p in problems), problems)
    rows = None
    for i, (name, shape, datatype, flat) in enumerate(tensors):
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise OipError(400, f"inputs[{i}] ({name!r}) is one column: its shape must be [rows] or [rows, 1], "
                                f"not {shape}", [{"field": f"inputs[{i}].shape", "problem": "one column: [rows]"}])
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise OipError(400, f"inputs[{i}] ({name!r}) has {shape[0]} rows, inputs[0] has {rows}; every column "
                                "needs one value per row", [{"field": f"inputs[{i}].shape", "problem": "row count differs"}])
        _check_kind(f"inputs[{i}]", name, kinds[name], datatype)
    return [dict(zip(names, values)) for values in zip(*(flat for _, _, _, flat in tensors))]


def _kind(values: list) -> str:
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"


def _datatype(values: list, declared: str | None) -> str:
    found = _kind(values)
    # keep the signature's name when the values fit it (FP32 stays FP32 in the metadata and the answer)
    if declared and (declared == found or (found == "INT64" and declared.startswith(("INT", "UINT")))
                     or (found in ("FP64", "INT64") and declared.startswith("FP"))):
        return declared
    return found


def _bytes(values: list) -> list:
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


def outputs_of(predictions: list, declared: list[dict]) -> list[dict]:
    """One prediction per row -> output tensors: scalars give [n], equal-length lists [n, k], row objects
    (a DataFrame's records) one [n] tensor per key."""
    n = len(predictions)
    first = predictions[0] if predictions else None
    if isinstance(first, dict) and all(isinstance(p, dict) and p.keys() == first.keys() for p in predictions):
        columns = {k: [p[k] for p in predictions] for k in first}
    elif isinstance(first, list) and all(isinstance(p, list) and len(p) == len(first) for p in predictions):
        flat = [v for p in predictions for v in p]
        dtype = _datatype(flat, declared[0]["datatype"] if len(declared) == 1 else None)
        name = declared[0]["name"] if len(declared) == 1 else "predict"
        return [{"name": name, "shape": [n, len(first)], "datatype": dtype,
                 "data": _bytes(flat) if dtype == "BYTES" else flat}]
    else:
        columns = {declared[0]["name"] if len(declared) == 1 else "predict": predictions}
    by_name = {d["name"]: d["datatype"] for d in declared}
    out = []
    for name, values in columns.items():
        dtype = _datatype(values, by_name.get(name))
        out.append({"name": str(name), "shape": [n], "datatype": dtype,
                    "data": _bytes(values) if dtype == "BYTES" else values})
    return out


def add_routes(app: FastAPI, spec: dict, columns: list[str], kinds: dict[str, str], required: set[str],
               example: dict, predict: Callable[[list, Request], Awaitable[list]],
               validate: Callable[[list, str], list], ready: Callable[[], str | None],
               bad_input: type[Exception]) -> None:
    """Add the v2 routes for one model to ``app`` (on the app itself: an included router adds a layer of
    matching to every request). ``predict(rows, request)`` scores validated rows, ``validate`` turns row
    dicts into them (raising ``bad_input`` with status/message/errors), ``ready()`` gives None when
    ready or why not."""
    tags = ["Open Inference Protocol v2"]
    fits = fitting(kinds)
    name, version = spec["name"], str(spec["version"])
    declared = spec["outputs"]

    def error(status: int, message: str, errors: list | None = None, **extra) -> JSONResponse:
        body = {"error": message, "error_code": {400: "BAD_REQUEST", 404: "NOT_FOUND"}.get(status, "UNAVAILABLE"),
                **extra}
        if errors:
            body["errors"] = errors
        return JSONResponse(body, status_code=status)

    def unknown(model: str, ver: str | None) -> JSONResponse | None:
        if model != name:
            return error(404, f"no model {model!r} here; this server serves {name!r}")
        if ver is not None and ver != version:
            return error(404, f"model {name!r} has no version {ver!r}; it is version {version!r}")
        return None

    # infer first: routes are matched in order, and it is the one that must be quick
    doc = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": list(DATATYPES)}, "parameters": {"type": "object"},
                    "data": {"type": "array"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                   "properties": {"name": {"type": "string"}}}}}},
        "example": {"inputs": [dict(i, shape=[1], data=[example[i["name"]]]) for i in spec["inputs"]]},
    }}}}
    # the path's parameters are read from the request, not declared as arguments: FastAPI's validation of
    # declared ones costs more than the rest of the route; so the docs declare them here
    path_param = {"in": "path", "required": True, "schema": {"type": "string"}}
    infer_doc = {**doc, "parameters": [{"name": "model_name", **path_param}]}
    infer_version_doc = {**doc, "parameters": [{"name": "model_name", **path_param},
                                               {"name": "model_version", **path_param}]}

    answers = {400: {"description": "bad input"}, 404: {"description": "no such model"},
               503: {"description": "saturated; retry after Retry-After seconds"}}

    # the lower decorator registers first: the common path is matched before the versioned one
    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", tags=tags, openapi_extra=infer_version_doc,
              responses=answers)
    @app.post("/v2/models/{model_name}/infer", tags=tags, openapi_extra=infer_doc, responses=answers)
    async def infer(request: Request):
        """Predictions for the rows in the request's input tensors."""
        path = request.path_params
        refused = unknown(path["model_name"], path.get("model_version"))
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return error(400, f"the body is not valid JSON ({exc})")
        try:
            records = records_of(body, columns, kinds, required, fits)
            wanted = body.get("outputs")
            if wanted is not None and (not isinstance(wanted, list)
                                       or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted)):
                raise OipError(400, 'outputs must be a list of {"name": ...} objects',
                               [{"field": "outputs", "problem": "not a list of named outputs"}])
            rows = validate(records, "inputs")
        except OipError as exc:
            return error(exc.status, exc.message, exc.errors)
        except bad_input as exc:
            return error(exc.status, exc.message, exc.errors)
        outputs = outputs_of(await predict(rows, request), declared)
        if wanted is not None:
            names = [o["name"] for o in wanted]
            have = {o["name"]: o for o in outputs}
            missing = [n for n in names if n not in have]
            if missing:
                return error(400, f"no output named {', '.join(map(repr, missing))}; this model gives "
                                  f"{', '.join(have)}", [{"field": "outputs", "problem": "unknown output"}])
            outputs = [have[n] for n in names]
        request_id = body.get("id")
        # a Response as it is: FastAPI's encoder would walk every value again (~70 us a request)
        return JSONResponse({"model_name": name, "model_version": version,
                             "id": request_id if isinstance(request_id, str) else next(_IDS), "outputs": outputs})

    @app.get("/v2", tags=tags)
    async def server_metadata():
        """Server metadata."""
        return {"name": f"{name}-serving", "version": spec["generated_by"], "extensions": []}

    @app.get("/v2/health/live", tags=tags)
    async def live():
        """Alive: the process answers."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=tags, responses={503: {"description": "not ready: loading or saturated"}})
    async def server_ready():
        """Ready: the model is loaded and the server is not saturated."""
        why = ready()
        return {"ready": True} if why is None else error(503, why, ready=False)

    @app.get("/v2/models/{model_name}/ready", tags=tags, responses={404: {"description": "no such model"}})
    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=tags,
             responses={404: {"description": "no such model"}})
    async def model_ready(model_name: str, model_version: str | None = None):
        """Whether this model (and version) is ready for inference."""
        why = ready()
        return unknown(model_name, model_version) or (
            {"name": name, "ready": True} if why is None else error(503, why, name=name, ready=False))

    @app.get("/v2/models/{model_name}", tags=tags, responses={404: {"description": "no such model"}})
    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=tags,
             responses={404: {"description": "no such model"}})
    async def model_metadata(model_name: str, model_version: str | None = None):
        """The model's inputs and outputs, from its MLflow signature."""
        return unknown(model_name, model_version) or {
            "name": name, "versions": [version], "platform": f"mlflow_{spec['flavor']}",
            "inputs": spec["inputs"], "outputs": declared}

