"""An exported pipeline as a Kubeflow Pipelines v2 pipeline: compiled YAML from the KFP SDK (offline), one
component per step that runs papermill on the step notebook (``python -m mlops_jupyter.pipeline.kubeflow``
inside the image), the pipeline parameters from the parameters cell, the hand-off through KFP artifacts, and
each step's resources (GPU, CPU, memory) from its tags.

The image holds the project at its working directory (the notebook's folder and the pipeline folder at the
same paths relative to it as here) and ``mlops-jupyter[pipeline]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
from pathlib import Path

from ..errors import InvalidInput, PipelineError

FILE = "kfp-pipeline.yaml"
HANDOFF = "handoff"  # each component's output artifact: the step's hand-off folder (artifacts/STEP)
_TYPES = (bool, int, float, str, list, dict)


def _param_type(name: str, value):
    kind = next((t for t in _TYPES if type(value) is t), None)
    if kind is None:
        raise PipelineError(f"parameter {name!r} is {value!r}, which a Kubeflow pipeline parameter cannot hold; "
                            "use an int, float, str, bool, list or dict literal.", parameter=name)
    return kind


def _arg_name(step: str) -> str:
    return "from_" + step.replace("-", "_")


def _cpu(value) -> str:
    return str(value) if float(value).is_integer() else f"{int(round(float(value) * 1000))}m"


def _component(pipe, spec: dict, image: str, workdir: str):
    from kfp import dsl

    params = [k for k in pipe.params if k in spec["params"]]  # the parameters the step's code reads
    producers = sorted(set(spec["inputs"].values()))
    sig = [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_param_type(k, pipe.params[k]))
           for k in params]
    sig += [inspect.Parameter(_arg_name(d), inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              annotation=dsl.Input[dsl.Artifact]) for d in producers]
    sig.append(inspect.Parameter(HANDOFF, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 annotation=dsl.Output[dsl.Artifact]))

    def body(*args):
        values = dict(zip([p.name for p in sig], args))
        argv = ["--folder", workdir, "--step", spec["name"], "--handoff", values[HANDOFF].path]
        for k in params:
            argv += ["--param", k, values[k]]
        for d in producers:
            argv += ["--input", d, values[_arg_name(d)].path]
        return dsl.ContainerSpec(image=image, command=["python", "-m", "mlops_jupyter.pipeline.kubeflow"], args=argv)

    body.__signature__ = inspect.Signature(sig)
    body.__name__ = body.__qualname__ = spec["name"].replace("-", "_")
    body.__doc__ = f"Step {spec['name']}: papermill on {spec['notebook']}."
    return dsl.container_component(body)


def compile_pipeline(pipe, image: str, project: Path) -> Path:
    """Compile ``pipe`` (an exported Pipeline) into ``pipe.folder/kfp-pipeline.yaml``; returns its path."""
    if not image or not image.strip():
        raise InvalidInput("--image is empty; name the image the steps run in, e.g. --image "
                           "registry.example.com/team/project:1.0 (it holds the project and mlops-jupyter[pipeline]).",
                           what="image")
    try:
        from kfp import compiler, dsl
    except ImportError:
        raise PipelineError("exporting for Kubeflow needs the KFP SDK, which is not installed; install it with "
                            "pip install 'mlops-jupyter[kfp]'.", what="kfp") from None
    folder = Path(pipe.folder)
    workdir = os.path.relpath(folder, project) if folder.is_relative_to(project) else str(folder)
    components = {s["name"]: _component(pipe, s, image, workdir) for s in pipe.steps}
    names = list(pipe.params)
    sig = [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v, annotation=_param_type(k, v))
           for k, v in pipe.params.items()]

    def body(*args):
        values = dict(zip(names, args))
        tasks = {}
        for spec in pipe.steps:  # pipe.steps is in topological order
            inputs = {_arg_name(d): tasks[d].outputs[HANDOFF] for d in sorted(set(spec["inputs"].values()))}
            task = components[spec["name"]](**{k: values[k] for k in names if k in spec["params"]}, **inputs)
            task.set_display_name(spec["name"])
            task.set_caching_options(False)  # a step's result depends on its image's files, which KFP cannot see
            for dep in spec["deps"]:
                if dep not in spec["inputs"].values():
                    task.after(tasks[dep])
            asks = spec.get("resources", {})
            if asks.get("gpu"):
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(int(asks["gpu"]))
            if asks.get("cpu"):
                task.set_cpu_limit(_cpu(asks["cpu"]))
            if asks.get("memory"):
                task.set_memory_limit(str(int(asks["memory"])))
            tasks[spec["name"]] = task

    body.__signature__ = inspect.Signature(sig)
    body.__name__ = body.__qualname__ = "pipeline"
    flow = dsl.pipeline(name=pipe.name.lower().replace("_", "-"),
                        description=f"the steps of {Path(pipe.source).name}, exported by mlops-jupyter")(body)
    out = folder / FILE
    compiler.Compiler().compile(flow, str(out))
    return out


def _typed(text: str, default):
    """A parameter's value as KFP hands it to the container (a string), back in the type of its default."""
    if isinstance(default, str):
        return text
    return json.loads(text.lower() if isinstance(default, bool) else text)


def main(argv=None) -> int:
    """Inside a KFP component: the producers' hand-off in place, papermill on the step notebook, the step's
    hand-off out to its artifact."""
    import papermill as pm

    from . import load

    p = argparse.ArgumentParser(prog="python -m mlops_jupyter.pipeline.kubeflow")
    p.add_argument("--folder", required=True)
    p.add_argument("--step", required=True)
    p.add_argument("--handoff", required=True)
    p.add_argument("--param", nargs=2, action="append", default=[])
    p.add_argument("--input", nargs=2, action="append", default=[])
    args = p.parse_args(argv)
    pipe = load(args.folder)
    spec = pipe.step(args.step)
    for producer, path in args.input:
        shutil.copytree(path, pipe.folder / "artifacts" / producer, dirs_exist_ok=True)
    params = {k: _typed(v, pipe.params[k]) for k, v in args.param}
    out = pipe.folder / "runs" / f"{args.step}.ipynb"
    out.parent.mkdir(exist_ok=True)
    pm.execute_notebook(str(pipe.folder / spec["notebook"]), str(out), parameters=params,
                        cwd=str((pipe.folder / pipe.root).resolve()), kernel_name=pipe.kernel)
    made = pipe.folder / "artifacts" / args.step
    Path(args.handoff).mkdir(parents=True, exist_ok=True)
    if made.is_dir():
        shutil.copytree(made, args.handoff, dirs_exist_ok=True)
    shutil.copy(out, Path(args.handoff) / f"{args.step}.ipynb")  # the executed notebook comes back with the data
    return 0


if __name__ == "__main__":
    sys.exit(main())
