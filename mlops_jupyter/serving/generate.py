"""MLflow model -> a self-contained FastAPI serving package (templates in ./templates)."""

from __future__ import annotations

import dataclasses

import json
import keyword
import math
import os
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from string import Template

from .. import config
from ..errors import Conflict, InvalidInput, MlopsError, NotFound

TEMPLATES = Path(__file__).parent / "templates"
# template -> where it lands in the package ({module} is the import name)
LAYOUT = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "Dockerfile.tmpl": "Dockerfile",
    "dockerignore.tmpl": ".dockerignore",
    "gitignore.tmpl": ".gitignore",
    "schema.py.tmpl": "{module}/schema.py",
    "app.py": "{module}/app.py",
    "batching.py": "{module}/batching.py",
    "oip.py": "{module}/oip.py",
    "predlog.py": "{module}/predlog.py",
    "__main__.py": "{module}/__main__.py",
    "lambda_handler.py": "{module}/lambda_handler.py",
    "monitoring.py": "{module}/monitoring.py",
    "test_app.py.tmpl": "tests/test_app.py",
}
# MLflow column type -> (python annotation, pandas dtype, pydantic Field constraints, example value).
# Doubles too stay within float32's range: tree models (scikit-learn's, XGBoost, LightGBM) cast their input
# to float32, where a larger magnitude turns into infinity and the model raises: a 5xx for valid JSON.
_FINITE32 = "allow_inf_nan=False, ge=-3.4028234663852886e38, le=3.4028234663852886e38"
COLUMN_TYPES = {
    "double": ("float", "float64", _FINITE32, 0.0),
    "float": ("float", "float32", _FINITE32, 0.0),
    "long": ("int", "int64", "ge=-(2**63), le=2**63 - 1", 0),
    "integer": ("int", "int32", "ge=-(2**31), le=2**31 - 1", 0),
    "boolean": ("bool", "bool", "", False),
    "string": ("str", "object", "", ""),
    "binary": ("str", "object", "", ""),  # JSON carries bytes as (base64) text
    "datetime": ("datetime", "datetime64[ns]", "strict=False", "2024-01-01T00:00:00"),  # ISO text from JSON
}
# what serving needs beyond the model's own requirements; versions are the ones this package was tested with
SERVING_STACK = ("fastapi", "pydantic", "uvicorn", "httptools", "uvloop", "prometheus_client", "pandas", "mangum",
                 "pyarrow")
# where a serving requirement installs at all (uvloop has no Windows build)
MARKERS = {"uvloop": "sys_platform != 'win32'"}
SKLEARN_FORMATS = ("skops", "pickle", "cloudpickle")
# MLflow column type / numpy dtype -> Open Inference Protocol datatype (text, dates and nested values: BYTES)
V2_DATATYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL",
                "float64": "FP64", "float32": "FP32", "float16": "FP16", "bool": "BOOL",
                **{f"{s}int{b}": f"{s.upper()}INT{b}" for s in ("", "u") for b in (8, 16, 32, 64)}}
URI_HELP = ("MODEL_URI is runs:/RUN_ID/PATH, models:/NAME/VERSION, models:/NAME@ALIAS, models:/MODEL_ID "
            "or a local folder holding an MLmodel file")


def generate_package(model_uri: str, out: str | Path, name: str | None = None,
                     settings: config.Settings | None = None, source: str | None = None,
                     environment: str | None = None, reference: dict | None = None) -> Path:
    """Write a serving package for ``model_uri`` into ``out`` (new or empty) and return its path.
    Models are resolved against the project's tracking store (``settings``, default config.resolve()), or against
    ``environment``'s registry (``models:/NAME@prod`` with environment prod). ``source``: the URI the package names
    as its model's origin when ``model_uri`` is a local copy of it. ``reference``: the model's reference profile
    (monitor), for the package's drift gauges; default the one stored with the model's run, if any."""
    settings = project = settings or config.resolve()
    if environment:
        registry = config.environment(settings, environment).registry_uri
        settings = dataclasses.replace(settings, tracking_uri=registry)
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} already exists and is not an empty folder; the generator never overwrites files.",
                       what="package folder", path=str(out))
    with tempfile.TemporaryDirectory(prefix="mlops-serve-") as tmp:
        model_uri = _full_run_uri(model_uri, settings)
        model_dir = fetch_model(model_uri, Path(tmp) / "model", settings)
        spec = _describe(source or model_uri, model_dir, name)
        registered = _registered(model_uri, settings, environment)
        if registered:  # /version says which version of which registered model, in which environment
            spec.update(registered=registered, version=registered["version"])
        spec["reference"] = reference or _reference(spec, [settings, project])
        # build next to the target and move it in at the end: a failure leaves no half-written package
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            _write(staging, spec, model_dir)
            if out.exists():
                out.rmdir()
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out


# ---- fetch -----------------------------------------------------------------------------------------
def _is_local(uri: str) -> bool:
    return uri.startswith("file://") or ":/" not in uri


def _full_run_uri(uri: str, settings: config.Settings | None) -> str:
    """``runs:/PREFIX/PATH`` with a run id prefix or a run name (as the runs tables show them) made whole."""
    ref = re.match(r"runs:/([^/]+)/", uri)
    if not ref or len(ref.group(1)) >= 32:
        return uri
    from ..tracking import get_runs

    (run,) = get_runs(settings or config.resolve(), [ref.group(1)])
    return f"runs:/{run.info.run_id}/{uri[ref.end():]}"


def fetch_model(uri: str, dest: Path, settings: config.Settings | None) -> Path:
    """The MLflow model at ``uri`` (runs:/, models:/ or a local folder) copied into ``dest``, resolved against
    ``settings``' store; clear errors for a URI that names no model."""
    if _is_local(uri):
        local = Path(uri.removeprefix("file://")).expanduser()
        if not (local / "MLmodel").is_file():
            why = f"no MLmodel file in {local}" if local.is_dir() else f"no folder {local}"
            raise InvalidInput(f"{uri!r} is not an MLflow model: {why}. {URI_HELP}.", uri=uri)
        shutil.copytree(local, dest)
        return dest
    if not uri.startswith(("runs:/", "models:/")):
        raise InvalidInput(f"cannot read the model URI {uri!r}; {URI_HELP}.", uri=uri)
    settings = settings or config.resolve()
    if settings.is_local_sqlite:
        db = Path(settings.tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise NotFound(f"there is no tracking store at {db} to resolve {uri} from; log the model first "
                           "(%%mlops run --model NAME, or mlops_jupyter.log_model, in a tracked cell), or set the "
                           "project's tracking URI.", uri=uri, store=str(db))
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a progress bar per file is noise here
    # MLflow 3 resolves runs:/ through the run's logged model (models:/m-...), and that lookup uses the
    # process-wide tracking URI whatever download_artifacts is given: set it for the duration
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    try:
        with _use_tracking_uri(settings.tracking_uri):
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest),
                                                       tracking_uri=settings.tracking_uri,
                                                       registry_uri=settings.tracking_uri)
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0][:300]
        raise NotFound(f"cannot fetch {uri} from {settings.tracking_uri}: {first}. Check the run id, model "
                       f"name and version or alias (mlflow ui: {settings.where_to_look()}).", uri=uri,
                       store=settings.tracking_uri) from None
    except OSError as exc:
        raise MlopsError(f"cannot fetch {uri}: {exc}. Check that the run's artifacts are readable.", uri=uri) from None
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet
    path = Path(path)
    if not (path / "MLmodel").is_file():
        raise InvalidInput(f"{uri} holds no MLmodel file, so it is not an MLflow model; point at the model's "
                           "folder (runs:/RUN_ID/model), not at the run or a file inside the model.", uri=uri)
    return path


# ---- describe ------------------------------------------------------------------------------------
def _describe(uri: str, model_dir: Path, name: str | None) -> dict:
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    flavors = mlmodel.get("flavors") or {}
    pyfunc, sk = flavors.get("python_function"), flavors.get("sklearn")
    if pyfunc is None:
        raise InvalidInput(f"{uri} has no python_function flavor ({', '.join(flavors) or 'no flavors'}), so it "
                           "cannot be served from Python; log it with an MLflow flavor that has one.", uri=uri)
    columns = _columns(uri, mlmodel.get("signature"))
    if sk and sk.get("serialization_format") in SKLEARN_FORMATS and not sk.get("code"):
        loader, model_file = sk["serialization_format"], sk["pickled_model"]
        trusted = sk.get("skops_trusted_types") or []
    else:
        loader, model_file, trusted = "pyfunc", None, []

    reqs = _requirements(model_dir)
    if sk and sk.get("sklearn_version"):  # an unpinned scikit-learn: pin the version that saved the model
        reqs = [f"scikit-learn=={sk['sklearn_version']}" if r.lower().replace("_", "-") == "scikit-learn" else r
                for r in reqs]
    if loader != "pyfunc":  # the native loader needs no mlflow: a smaller package and a faster start
        reqs = [r for r in reqs if _req_name(r) not in ("mlflow", "mlflow-skinny")]
        if loader != "pickle":
            reqs += _pins([loader], have=reqs)
    deps = reqs + _pins(SERVING_STACK, have=reqs)

    python_full = str(pyfunc.get("python_version") or "3.11")
    # models:/NAME/... -> NAME; runs:/RUN/PATH or a folder -> its last part; models:/MODEL_ID -> "model"
    registered = re.match(r"models:/([^/@]+)[/@]", uri)
    default_name = registered.group(1) if registered else (
        "model" if uri.startswith("models:/") else Path(uri.removeprefix("file://").rstrip("/")).name)
    dist = re.sub(r"[^a-z0-9]+", "-", (name or default_name).lower()).strip("-") or "model"
    module = re.sub(r"\W", "_", dist.replace("-", "_"))
    module = (module if module[0].isalpha() else "m_" + module) + "_serving"
    examples = _examples(model_dir, mlmodel, columns)
    gen = f"mlops-jupyter {_version('mlops-jupyter') or ''}".strip()
    outputs = (mlmodel.get("signature") or {}).get("outputs")
    return {
        "name": dist, "dist_name": f"{dist}-serving", "module": module, "version": _version_of(uri),
        "model_uri": uri, "run_id": mlmodel.get("run_id"), "model_id": mlmodel.get("model_id"),
        "mlflow_version": mlmodel.get("mlflow_version"), "flavor": "sklearn" if sk else "python_function",
        "loader": loader, "model_file": model_file, "trusted_types": trusted,
        "predict_fn": pyfunc.get("predict_fn") or "predict", "python_full": python_full,
        "python_xy": ".".join(python_full.split(".")[:2]), "columns": columns, "examples": examples,
        "dependencies": deps, "requirement_names": [_req_name(r) for r in deps], "generated_by": gen,
        "outputs": _outputs_text(outputs), "v2_outputs": _v2_outputs(outputs),
    }


def _columns(uri: str, signature: dict | None) -> list[dict]:
    if not signature or not signature.get("inputs"):
        raise InvalidInput(
            f"{uri} was logged without a signature, so the server cannot know its columns and types. Log it "
            "again from a tracked cell with the data it was fit on: mlops_jupyter.log_model(model, X_train) adds "
            "the signature, an input_example, pinned requirements and the types skops must trust; with MLflow's "
            "own API, pass signature=infer_signature(X_train, model.predict(X_train)). Then generate again.",
            uri=uri)
    inputs = json.loads(signature["inputs"])
    tensors = [c for c in inputs if c.get("type") == "tensor" or "name" not in c]
    if tensors:
        raise InvalidInput(f"{uri} has a tensor signature (unnamed arrays); the generated server needs named "
                           "columns. Log the model with a DataFrame input_example so its signature names the columns.",
                           uri=uri)
    cols = []
    for c in inputs:
        kind = c["type"] if isinstance(c["type"], str) else "object"
        if kind not in COLUMN_TYPES and kind not in ("array", "object", "map"):
            raise InvalidInput(f"column {c['name']!r} of {uri} has type {kind!r}, which the generator does not know.",
                               uri=uri, column=c["name"])
        cols.append({"name": c["name"], "type": kind, "required": c.get("required", True)})
    return cols


def _requirements(model_dir: Path) -> list[str]:
    req = model_dir / "requirements.txt"
    if req.is_file():
        lines = req.read_text().splitlines()
    elif (model_dir / "conda.yaml").is_file():
        import yaml

        deps = yaml.safe_load((model_dir / "conda.yaml").read_text()).get("dependencies", [])
        lines = next((d["pip"] for d in deps if isinstance(d, dict) and "pip" in d), [])
    else:
        lines = []
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(("#", "-"))]


def _req_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0].lower().replace("_", "-")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pins(names, have: list[str]) -> list[str]:
    taken = {_req_name(r) for r in have}
    out = []
    for n in names:
        if n.replace("_", "-") not in taken:
            v = _version(n)
            out.append((f"{n}=={v}" if v else n) + (f"; {MARKERS[n]}" if n in MARKERS else ""))
    return out


def _registered(uri: str, settings: config.Settings, environment: str | None) -> dict | None:
    """{model, version, alias, environment, run_id} of a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI,
    read from the registry it was fetched from (``environment``'s, or the project's store: None); None for any
    other URI."""
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", uri)
    if not m:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    name, version, alias = m.groups()
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    # a version copied into another environment's registry names the run that trained it (tag mlops.run)
    return {"model": name, "version": str(mv.version), "alias": alias, "environment": environment,
            "run_id": (mv.tags or {}).get("mlops.run") or mv.run_id}


def _version_of(uri: str) -> str:
    m = re.match(r"models:/[^/@]+/(\d+)$", uri)  # a registered version becomes the package version
    return m.group(1) if m else "0"


def _outputs_text(outputs) -> str:
    if not outputs:
        return "the model's signature does not describe them"
    spec = json.loads(outputs)
    return ", ".join(o.get("name") or o.get("tensor-spec", {}).get("dtype") or o.get("type", "?") for o in spec)


def _v2_outputs(outputs) -> list[dict]:
    """The signature's outputs as Open Inference Protocol tensor metadata (one "predict" tensor if unnamed)."""
    spec = json.loads(outputs) if outputs else [{}]
    out = []
    for i, o in enumerate(spec):
        kind = o.get("tensor-spec", {}).get("dtype") if o.get("type") == "tensor" else o.get("type")
        shape = o.get("tensor-spec", {}).get("shape") or [-1]
        name = o.get("name") or ("predict" if len(spec) == 1 else f"output_{i}")
        out.append({"name": name, "datatype": V2_DATATYPES.get(kind, "BYTES"), "shape": shape})
    return out


def _examples(model_dir: Path, mlmodel: dict, columns: list[dict]) -> list[dict]:
    """Up to 3 rows of the model's input example, or one row made up from the column types."""
    info = mlmodel.get("saved_input_example_info") or {}
    path = model_dir / info.get("artifact_path", "input_example.json")
    rows = []
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "columns" in data and "data" in data:
            rows = [dict(zip(data["columns"], r)) for r in data["data"]]
        elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
            rows = data
        elif isinstance(data, dict) and all(not isinstance(v, (list, dict)) for v in data.values()):
            rows = [data]
    names = [c["name"] for c in columns]
    # NaN/inf cannot be written as Python literals or JSON: such rows make no example
    finite = (lambda v: not isinstance(v, float) or math.isfinite(v))
    rows = [{n: r.get(n) for n in names} for r in rows if isinstance(r, dict)
            and all(c["name"] in r for c in columns if c["required"]) and all(finite(v) for v in r.values())][:3]
    made_up = {"array": [], "object": {}, "map": {}}
    return rows or [{c["name"]: COLUMN_TYPES[c["type"]][3] if c["type"] in COLUMN_TYPES else made_up[c["type"]]
                     for c in columns}]


# ---- write ----------------------------------------------------------------------------------------
def _field_name(column: str, taken: set) -> str:
    slug = re.sub(r"\W+", "_", column).strip("_").lower() or "column"
    if slug[0].isdigit() or keyword.iskeyword(slug) or slug.startswith("model_") or slug in _BASEMODEL_NAMES:
        slug = "c_" + slug
    name, i = slug, 2
    while name in taken:
        name, i = f"{slug}_{i}", i + 1
    taken.add(name)
    return name


_BASEMODEL_NAMES = {"copy", "dict", "json", "schema", "schema_json", "construct", "validate", "fields",
                    "parse_obj", "parse_raw", "parse_file", "from_orm", "update_forward_refs"}


def _schema_parts(columns: list[dict]) -> dict:
    taken, fields, lines, dtypes = set(), [], [], {}
    for c in columns:
        field = _field_name(c["name"], taken)
        fields.append(field)
        annotation, dtype, constraints, _ = COLUMN_TYPES.get(c["type"], ("Any", None, "", None))
        if c["type"] in ("array", "object", "map"):
            annotation = {"array": "list[Any]", "object": "dict[str, Any]", "map": "dict[str, Any]"}[c["type"]]
        args = [f"alias={c['name']!r}"] + ([constraints] if constraints else [])
        if not c["required"]:
            annotation, args = f"{annotation} | None", ["None"] + args
        lines.append(f"    {field}: {annotation} = Field({', '.join(args)})  # MLflow type: {c['type']}")
        if dtype:
            dtypes[c["name"]] = dtype
    return {"fields": fields, "row_fields": "\n".join(lines), "dtypes": dtypes}


def _write(root: Path, spec: dict, model_dir: Path) -> None:
    module = spec["module"]
    columns = [c["name"] for c in spec["columns"]]
    parts = _schema_parts(spec["columns"])
    example = spec["examples"]
    values = {
        **{k: v if v is not None else "none" for k, v in spec.items() if isinstance(v, str) or v is None},
        "columns": repr(columns), "fields": repr(parts["fields"]), "dtypes": repr(parts["dtypes"]),
        "example_rows": repr(example), "row_fields": parts["row_fields"],
        "dependencies": "\n".join(f"    {json.dumps(d)}," for d in spec["dependencies"]),
        "column_list": ", ".join(f"`{c['name']}` ({c['type']}{'' if c['required'] else ', optional'})"
                                 for c in spec["columns"]),
        "predict_body": _shell_quote(json.dumps({"rows": example[:2]})),
        "invocations_body": _shell_quote(json.dumps(
            {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in example[:2]]}})),
    }
    for template, target in LAYOUT.items():
        dest = root / target.format(module=module)
        dest.parent.mkdir(parents=True, exist_ok=True)
        text = (TEMPLATES / template).read_text()
        dest.write_text(Template(text).substitute(values) if template.endswith(".tmpl") else text)
    (root / module / "__init__.py").write_text(f'"""Serving package for {spec["model_uri"]}."""\n')
    runtime = {k: spec[k] for k in ("name", "module", "version", "model_uri", "run_id", "model_id", "flavor",
                                    "loader", "model_file", "trusted_types", "predict_fn", "mlflow_version",
                                    "generated_by", "requirement_names", "columns")}
    # the Open Inference Protocol's metadata, from the signature
    runtime["inputs"] = [{"name": c["name"], "datatype": V2_DATATYPES.get(c["type"], "BYTES"), "shape": [-1]}
                         for c in spec["columns"]]
    runtime["outputs"] = spec["v2_outputs"]
    runtime["registered"] = spec.get("registered")
    (root / module / "serving.json").write_text(json.dumps(runtime, indent=2) + "\n")
    shutil.copytree(model_dir, root / module / "mlflow_model")
    # the drift gauges (monitoring.py) run the same code as `mlops monitor`: these two modules import no mlops_jupyter
    monitor_code = Path(__file__).parent.parent / "monitor"
    for part in ("drift.py", "logs.py"):
        shutil.copy(monitor_code / part, root / module / part)
    if spec.get("reference"):
        (root / module / "reference.json").write_text(json.dumps(spec["reference"], separators=(",", ":")))


def _reference(spec: dict, stores: list) -> dict | None:
    """The model's reference profile (monitor), for the package's drift gauges, from the first of ``stores`` that
    holds the model's run (a registry's version may come from the project's store); None when it has none."""
    from .. import monitor

    run_id = (spec.get("registered") or {}).get("run_id") or spec.get("run_id")
    m = re.match(r"runs:/[0-9a-f]{32}/(.+)", spec.get("model_uri") or "")
    for settings in {s.tracking_uri: s for s in stores}.values() if run_id else []:
        try:
            return monitor.load_reference(settings, run_id, m.group(1) if m else None)
        except Exception:  # noqa: BLE001 - no reference (or not this store's run): the package just has no gauges
            continue
    return None


def _shell_quote(text: str) -> str:
    return text.replace("'", "'\\''")  # inside the README's single-quoted curl -d '...'
