"""``mlops serve build DIR``: a generated serving package's tests, then its OCI image, with the engine at hand.

Engines, in order of preference: docker, podman, buildah (``--engine`` picks one). All three get the same
command line shape: the package's Dockerfile, ``--build-arg BASE=...`` / ``PIP_INDEX_URL=...``, and this
machine's CA bundle lent as the build secret ``ca-bundle`` (pip inside the build trusts what the host
trusts; the bundle is in no layer). buildah runs with chroot isolation unless BUILDAH_ISOLATION says
otherwise (it needs no user namespaces, so it also works inside a container); its storage is the
engine's own configuration (``CONTAINERS_STORAGE_CONF``, ``STORAGE_DRIVER``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import InvalidInput, NotFound, ServingError
from .run import app_of

ENGINES = ("docker", "podman", "buildah")
# where pip and OpenSSL look for the machine's CA bundle, in the order they do
CA_BUNDLE_VARS = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
CA_BUNDLE_PATHS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
# an image reference: [registry[:port]/]path[:tag] in lower case (the OCI distribution grammar, simplified)
REFERENCE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                       r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
LOG_TAIL = 40  # lines of a failed step's output kept in the error


@dataclass
class Image:
    """A built image: its reference, the engine that built it, its size, how its package's tests went."""

    tag: str
    engine: str
    size_bytes: int
    tests: str
    build_seconds: float
    pushed: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def find_engine(name: str | None = None) -> str:
    """The container engine to build with: ``name`` if given (it must be installed), else the first of
    docker, podman and buildah on PATH that can build here (docker only when its daemon answers)."""
    if name is not None and name not in ENGINES:
        raise InvalidInput(f"{name!r} is not a container engine this builds with; use one of {', '.join(ENGINES)}.",
                           field="engine", value=name)
    installed = [engine for engine in ((name,) if name else ENGINES) if shutil.which(engine)]
    if not installed:
        raise NotFound(f"no container engine found on PATH (looked for {name or ', '.join(ENGINES)}); install "
                       "docker, podman or buildah to build the image.", what="container engine",
                       looked_for=name or ENGINES)
    if name:
        return name
    for engine in installed:
        if engine != "docker" or _docker_answers():
            return engine
    raise NotFound("docker is installed but its daemon is not answering (docker info failed); start the daemon, "
                   "or install podman or buildah, which build without one.", what="container engine",
                   looked_for=ENGINES)


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ca_bundle() -> Path | None:
    """This machine's CA bundle (the one pip and OpenSSL use here), or None."""
    for candidate in [os.environ.get(v) for v in CA_BUNDLE_VARS] + list(CA_BUNDLE_PATHS):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def check_reference(value: str, field: str) -> str:
    if not REFERENCE.fullmatch(value):
        raise InvalidInput(f"{value!r} is not an image reference; write it as [REGISTRY/]NAME[:TAG] in lower "
                           "case, e.g. registry.example.com:5000/team/iris-serving:1.", field=field, value=value)
    return value


def default_tag(folder: Path) -> str:
    """NAME:VERSION from the package's pyproject.toml (e.g. iris-serving:3 for registered version 3)."""
    with (folder / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    return f"{project['name']}:{project['version']}"


def package_tests(folder: Path, on_line: Callable[[str], None] | None = None) -> tuple[bool, str, list[str]]:
    """Run the package's own tests with this Python: (passed, pytest's summary line, the output's last lines)."""
    out = _stream([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no"], folder, on_line)
    summary = next((ln.strip("= ") for ln in reversed(out.lines) if re.search(r"\d+ (passed|failed|error)", ln)),
                   f"pytest exited with status {out.status}")
    return out.status == 0, summary, out.tail()


def run_tests(folder: Path, on_line: Callable[[str], None] | None = None) -> str:
    """Run the package's own tests; return pytest's summary line, raise when they fail."""
    ok, summary, tail = package_tests(folder, on_line)
    if not ok:
        raise ServingError(f"the package's tests failed ({summary}), so no image was built; fix the package or "
                           "the model, then build again.", step="tests", folder=str(folder), log=tail)
    return summary


def build_image(folder: str | Path, tag: str | None = None, base: str | None = None, push: str | None = None,
                engine: str | None = None, pip_index: str | None = None, test: bool = True,
                on_line: Callable[[str], None] | None = None) -> Image:
    """Test the serving package in ``folder``, build its image (``tag``, default NAME:VERSION) on ``base``
    (default: the Dockerfile's, the official python image of the model's Python), and push it to the
    registry ``push`` when given. Streams the tools' output to ``on_line``; writes build.json beside the
    Dockerfile (what the sidebar shows)."""
    folder = Path(folder).resolve()
    tag, engine = check_build_request(folder, tag, base, push, engine)
    tests = run_tests(folder, on_line) if test else "not run"
    cmd = _build_command(engine, folder, tag, base, pip_index)
    start = time.monotonic()
    out = _stream(cmd, folder, on_line, env=_engine_env(engine))
    if out.status != 0:
        raise ServingError(f"{engine} could not build {tag} (exit status {out.status}); the end of its output "
                           "says why.", step="build", folder=str(folder), engine=engine, log=out.tail())
    image = Image(tag=tag, engine=engine, size_bytes=image_size(engine, tag), tests=tests,
                  build_seconds=round(time.monotonic() - start, 1))
    if push:
        image.pushed = push_image(engine, tag, push.rstrip("/"), on_line)
    (folder / "build.json").write_text(json.dumps(image.to_json(), indent=2) + "\n")
    return image


def check_build_request(folder: Path, tag: str | None = None, base: str | None = None, push: str | None = None,
                        engine: str | None = None) -> tuple[str, str]:
    """What a build would be refused for, raised before anything runs; else (the tag, the engine)."""
    app_of(folder)  # a generated package, or a clear error
    tag = check_reference(tag or default_tag(folder), "tag")
    if base is not None:
        check_reference(base, "base")
    if push is not None and not REFERENCE.fullmatch(push.rstrip("/")):
        raise InvalidInput(f"{push!r} is not a registry; write it as HOST[:PORT][/PATH], e.g. "
                           "registry.example.com:5000/team.", field="push", value=push)
    return tag, find_engine(engine)


def package_state(folder: Path) -> dict:
    """What the sidebar shows of a package: {"package": is it one, "name", "version", "image": the last
    image built from it (build.json: tag, engine, size_bytes, tests, build_seconds, pushed) or None}."""
    try:
        app_of(folder)
    except NotFound:
        return {"package": False, "name": None, "version": None, "image": None}
    with (folder / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    try:
        image = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        image = None
    return {"package": True, "name": project["name"], "version": str(project["version"]), "image": image}


def _build_command(engine: str, folder: Path, tag: str, base: str | None, pip_index: str | None) -> list[str]:
    # HEALTHCHECK exists only in the docker image format; chroot isolation needs no user namespaces and no OCI
    # runtime, so RUN steps work in containers and on CI machines where crun/runc cannot start
    daemonless = ["--format", "docker", "--isolation", os.environ.get("BUILDAH_ISOLATION", "chroot")]
    cmd = {"docker": ["docker", "build"], "podman": ["podman", "build", *daemonless],
           "buildah": ["buildah", "bud", *daemonless]}[engine]
    cmd += ["-t", tag, "-f", str(folder / "Dockerfile")]
    if base:
        cmd += ["--build-arg", f"BASE={base}"]
    if pip_index:
        cmd += ["--build-arg", f"PIP_INDEX_URL={pip_index}"]
    bundle = ca_bundle()
    if bundle is not None:
        cmd += ["--secret", f"id=ca-bundle,src={bundle}"]
    return cmd + [str(folder)]


def _engine_env(engine: str) -> dict:
    env = dict(os.environ)
    if engine == "docker":
        env.setdefault("DOCKER_BUILDKIT", "1")  # build secrets need BuildKit
    return env


def image_size(engine: str, tag: str) -> int:
    """The image's size in bytes (its layers unpacked, as the engine stores them)."""
    if engine == "buildah":
        out = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True)
        if out.returncode == 0:
            manifest = json.loads(json.loads(out.stdout)["Manifest"])
            return sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
    else:
        out = subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True)
        if out.returncode == 0:
            return int(out.stdout.strip())
    raise ServingError(f"{engine} built {tag} but cannot describe it: {out.stderr.strip()[:300]}", step="inspect",
                       engine=engine, log=out.stderr.splitlines()[-LOG_TAIL:])


def push_image(engine: str, tag: str, registry: str, on_line: Callable[[str], None] | None = None) -> str:
    """Push ``tag`` to ``registry`` under the same name; return the pushed reference."""
    name = tag.rsplit("/", 1)[-1]
    target = f"{registry}/{name}"
    if engine == "buildah":
        steps = [["buildah", "push", tag, f"docker://{target}"]]
    else:
        steps = [[engine, "tag", tag, target], [engine, "push", target]]
    for cmd in steps:
        out = _stream(cmd, Path.cwd(), on_line)
        if out.status != 0:
            raise ServingError(f"{engine} could not push {tag} to {registry} (exit status {out.status}); check the "
                               "registry's address and that this machine is logged in to it.", step="push",
                               engine=engine, registry=registry, log=out.tail())
    return target


@dataclass
class _Output:
    status: int
    lines: list[str]

    def tail(self) -> list[str]:
        return self.lines[-LOG_TAIL:]


def _stream(cmd: list[str], cwd: Path, on_line: Callable[[str], None] | None, env: dict | None = None) -> _Output:
    """Run ``cmd``, handing each output line to ``on_line`` as it comes; keep them all."""
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", stdin=subprocess.DEVNULL) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line)
    return _Output(proc.returncode, lines)
