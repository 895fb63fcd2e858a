"""The report as one pull-request comment, posted with the gh CLI and updated in place on later runs (found by a
hidden marker), so a pull request carries one report per pipeline, never a pile of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import InvalidInput, NotFound


def marker(report) -> str:
    return f"<!-- mlops-report: {report.title} -->"


def body(report) -> str:
    """The comment: the report without its images (a comment cannot show local files), naming where they are."""
    text = report.markdown(images=None, embed_plots=False)
    return f"{marker(report)}\n{text}"


def _gh(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(["gh", *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    if out.returncode != 0:
        first = (out.stderr or out.stdout).strip().splitlines()
        raise InvalidInput(f"gh {args[0]} failed: {first[0][:300] if first else 'no output'}; check GH_TOKEN and "
                           "that this is a pull request's checkout.", what="gh", command=" ".join(args[:2]))
    return out.stdout.strip()


def _pull_request() -> str:
    """The pull request's number: from the event GitHub Actions ran for, else the branch's own (gh pr view)."""
    event = os.environ.get("GITHUB_EVENT_PATH")
    if event and Path(event).is_file():
        number = (json.loads(Path(event).read_text()).get("pull_request") or {}).get("number")
        if number:
            return str(number)
    number = _gh("pr", "view", "--json", "number", "--jq", ".number")
    if not number:
        raise NotFound("no pull request for this branch: push it and open one, or write the comment with --dry-run.",
                       what="pull request")
    return number


def post(report, out: os.PathLike, dry_run: bool = False) -> str:
    """Post (or update) the report's comment; with ``dry_run``, write its body beside ``out``. Returns what it did."""
    text = body(report)
    path = Path(out).with_name(Path(out).stem + ".comment.md")
    path.write_text(text)
    if dry_run:
        return f"comment written to {path} (not posted: --dry-run)"
    if shutil.which("gh") is None:
        raise NotFound("the gh CLI is not installed, so the comment cannot be posted; install it (GitHub's runners "
                       "have it), or write the comment with --dry-run.", what="gh")
    number = _pull_request()
    repo = os.environ.get("GITHUB_REPOSITORY") or _gh("repo", "view", "--json", "nameWithOwner", "--jq",
                                                      ".nameWithOwner")
    ids = _gh("api", f"repos/{repo}/issues/{number}/comments", "--paginate", "--jq",
              f'.[] | select(.body | startswith({json.dumps(marker(report))})) | .id').split()
    if ids:
        _gh("api", "-X", "PATCH", f"repos/{repo}/issues/comments/{ids[0]}", "-F", f"body=@{path}")
        return f"updated the report comment on pull request #{number}"
    _gh("pr", "comment", number, "--repo", repo, "--body-file", str(path))
    return f"posted the report on pull request #{number}"
