"""What a run starts from, read before it runs: the budget, the seed, the project's prepare.py
and its data, the evaluator's version (for the fingerprint), and the diff of the whole editable set
against the branch head."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path

from ..program import Program
from ..record import HarnessError, METRICS_FILE, run_dirs
from ..registry import from_log


def resolve_budget(program: Program, budget: float | None) -> float:
    """--budget, else $AUTORESEARCH_TRAIN_SECONDS (one run), else program.md budget.train_seconds."""
    if budget is None and (env := os.environ.get("AUTORESEARCH_TRAIN_SECONDS")):
        try:
            budget = float(env)
        except ValueError:
            raise HarnessError(f"AUTORESEARCH_TRAIN_SECONDS={env!r} is not a number of seconds") from None
    if budget is None:
        budget = program.budget.train_seconds
    if not (math.isfinite(budget) and budget > 0):
        raise HarnessError(f"the training budget must be a positive number of seconds, not {budget}")
    return float(budget)


def earlier_runs_of(root: Path, sha: str) -> int:
    """How many runs in runs/ ran a train.py with this sha256 (unreadable metrics count as other code)."""
    n = 0
    for d in run_dirs(root):
        try:
            n += json.loads((d / METRICS_FILE).read_text()).get("train_py_sha256") == sha
        except (OSError, ValueError, AttributeError):
            pass
    return n


def derive_seed(root: Path, program: Program, sha: str, seed: int | None) -> int:
    """--seed, else program.seed + the number of earlier runs of this exact train.py, so a
    re-run of unchanged code (a confirmation run) gets a fresh seed automatically."""
    return seed if seed is not None else program.seed + earlier_runs_of(root, sha)


def load_prepare(root: Path):
    """The project's prepare.py (trusted, fixed): where the data lives."""
    path = root / "prepare.py"
    spec = importlib.util.spec_from_file_location("_autoresearch_project_prepare", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise HarnessError(f"{path} not found: the two-stage mode needs the project's prepare.py "
                           f"(or set run.mode: inline in program.md)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def data_folder(root: Path) -> Path:
    """The prepared dataset: $AUTORESEARCH_DATA, else prepare.py's default; train and val must exist."""
    env = os.environ.get("AUTORESEARCH_DATA")
    data = Path(env) if env else Path(load_prepare(root).data_dir())
    for split in ("train", "val"):
        if not (data / split / f"{split}.bin").is_file():
            raise HarnessError(f"{data / split / f'{split}.bin'} not found: prepare the data first "
                               f"(.venv/bin/python prepare.py, or scripts/bootstrap.sh)")
    return data.resolve()


def evaluator_version(root: Path, program: Program) -> str:
    """What scores a run, for the fingerprint: the scorer's fixed slice and context (prepare.py),
    or the inline regex. Two runs scored differently are never compared."""
    if from_log(program.run.mode):
        return f"inline:{hashlib.sha256((program.run.metric_regex or '').encode()).hexdigest()[:12]}"
    try:
        prep = load_prepare(root)
        return f"scorer:{int(prep.EVAL_BYTES)}B:ctx{int(prep.CONTEXT_LEN)}"
    except Exception:                                 # noqa: BLE001 -- a broken prepare.py fails the run later
        return "scorer:?"


def write_diff(root: Path, run_dir: Path, files: dict[str, bytes | None]) -> str | None:
    """diff.patch: every file of the run's snapshot (the whole editable set, as it ran) against the
    branch head, in git's format (`git apply` takes it); returns a note when there is no head."""
    from ..gitops import GitError, head_commit, show_blob
    try:
        head = head_commit(root)
        if head is None:
            raise GitError("no commit yet")
        patch = "".join(_file_diff(path, show_blob(root, head, path), files[path]) for path in sorted(files))
        (run_dir / "diff.patch").write_text(patch)
        return None
    except (GitError, OSError) as e:
        note = f"no diff against a branch head: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        (run_dir / "diff.patch").write_text(f"# {note}\n")
        return note


def _file_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    """One file's part of a git-style patch ("" when unchanged)."""
    import difflib
    if old == new:
        return ""
    head = f"diff --git a/{path} b/{path}\n"
    if old is None:
        head += "new file mode 100644\n"
    elif new is None:
        head += "deleted file mode 100644\n"
    a, b = ("/dev/null" if old is None else f"a/{path}"), ("/dev/null" if new is None else f"b/{path}")
    try:
        old_t, new_t = (old or b"").decode(), (new or b"").decode()
    except UnicodeDecodeError:
        return head + f"Binary files {a} and {b} differ\n"
    lines = []
    for line in difflib.unified_diff(old_t.splitlines(keepends=True), new_t.splitlines(keepends=True), a, b):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return head + "".join(lines)


def branch_head(root: Path) -> str | None:
    """The commit the run starts from (None outside a repository)."""
    from ..gitops import head_commit
    try:
        return head_commit(root)
    except OSError:
        return None
