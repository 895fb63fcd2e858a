"""What a step asks of the machine, from its cells' tags: ours ``resources:gpu=1;cpu=4;memory=8G`` and Kale's
``limit:nvidia.com/gpu:N`` / ``limit:cpu:N`` / ``limit:memory:SIZE``, normalised to ``{"gpu": n, "cpu": n,
"memory": bytes}``; and the local runner's check that this machine has the GPUs a step asks for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from ..errors import PipelineError

KEYS = {"gpu": "gpu", "nvidia.com/gpu": "gpu", "cpu": "cpu", "memory": "memory"}
# Kubernetes quantities (Kale's limits are Kubernetes limits): K M G T decimal, Ki Mi Gi Ti binary
_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKMGT]i?)?B?$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
EXAMPLE = "e.g. resources:gpu=1;cpu=4;memory=8G or limit:nvidia.com/gpu:1"


def _value(key: str, text: str):
    text = text.strip()
    if key == "memory":
        m = _SIZE.match(text)
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2) or ""])
        raise ValueError(f"memory {text!r} is not a size; give bytes or a number with K, M, G, T (or Ki, Mi, "
                         "Gi, Ti), e.g. memory=8G")
    if key == "cpu" and text.endswith("m") and _NUMBER.match(text[:-1]):  # Kubernetes millicores: 500m
        return float(text[:-1]) / 1000
    if _NUMBER.match(text):
        number = float(text)
        return int(number) if number.is_integer() else number
    raise ValueError(f"{key} {text!r} is not a number of {key}s; e.g. {key}=1")


def parse(tag: str, arg: str) -> dict:
    """``{"gpu"|"cpu"|"memory": value}`` from one ``resources:`` or ``limit:`` tag's argument; ValueError
    saying what is wrong."""
    pairs = []
    if tag == "limit":  # Kale: limit:KEY:VALUE, KEY may hold a '/' (nvidia.com/gpu)
        key, sep, value = arg.rpartition(":")
        if not sep or not key:
            raise ValueError(f"limit:{arg} is not limit:KEY:VALUE; {EXAMPLE}")
        pairs.append((key, value))
    else:
        for part in re.split(r"[;,]", arg):  # ';' (nbformat forbids a comma in a tag); ',' from older notebooks
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"resources:{arg} is not a list of key=value; {EXAMPLE}")
            pairs.append((key, value))
    out = {}
    for key, value in pairs:
        name = KEYS.get(key.strip())
        if name is None:
            raise ValueError(f"{tag}:{arg} asks for {key.strip()!r}; the resources a step can ask for are gpu "
                             f"(Kale: nvidia.com/gpu), cpu and memory, {EXAMPLE}")
        out[name] = _value(name, value)
    return out


def local_gpus() -> tuple[list, str]:
    """The GPUs a step on this machine can use, and where that was read: CUDA_VISIBLE_DEVICES when it is
    set, else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for part in (p.strip() for p in visible.split(",")):
            if not part or part.startswith("-"):  # CUDA stops at the first invalid id: -1 hides every GPU
                break
            ids.append(f"GPU {part}")
        return ids, f"CUDA_VISIBLE_DEVICES={visible!r}"
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "no nvidia-smi on PATH"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi -L failed ({exc})"
    return [ln.strip() for ln in out.stdout.splitlines() if ln.startswith("GPU ")], "nvidia-smi -L"


def check_local(pipe, names) -> None:
    """Raise PipelineError when a step in ``names`` asks for more GPUs than this machine has, listing what
    exists; asks nvidia-smi nothing when no step wants a GPU."""
    wanted = [(s["name"], s.get("resources", {}).get("gpu", 0)) for s in pipe.steps if s["name"] in names]
    wanted = [(n, g) for n, g in wanted if g]
    if not wanted:
        return
    gpus, source = local_gpus()
    short = [(n, g) for n, g in wanted if g > len(gpus)]
    if short:
        asks = ", ".join(f"step {n!r} asks for {g:g} GPU{'s' if g != 1 else ''}" for n, g in short)
        have = f"{len(gpus)}: {'; '.join(gpus)}" if gpus else "none"
        raise PipelineError(f"{asks}, and this machine has {have} ({source}); nothing was run. Run the pipeline "
                            "where the GPUs are, or lower the step's gpu resource tag.",
                            notebook=pipe.source, step=short[0][0])
