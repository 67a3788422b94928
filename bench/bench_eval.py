"""EVAL-stage time for the default task: the one-process evaluator (before issue 13) against the
model server + trusted scorer (after). Goal: after <= 1.5x before.

    .venv/bin/python bench/bench_eval.py [--repeat 5] [--backend none|bwrap|docker] [--train-seconds 5]

Trains the default train.py once (a short budget: eval time does not depend on how well it is
trained), then runs both evaluators alternately on the same checkpoint and prints the min and
median wall seconds of each, the ratio, and the val_bpb of both (they must agree to 1e-6). The
"before" evaluator is taken from git history (BEFORE_REV), run as a plain process on that
revision's prepare.py; "after" is experiment.run_eval under the chosen backend.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BEFORE_REV = "9e1f661"          # the last commit with the one-process autoresearch/evaluate.py


def git_show(path: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE_REV}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", default="none")
    ap.add_argument("--train-seconds", type=float, default=5)
    args = ap.parse_args()

    from autoresearch.program import load_program
    from autoresearch.run.evaluate import run_eval
    from autoresearch.run.inputs import data_folder
    from autoresearch.record.layout import Layout
    from autoresearch.run.outcome import eval_status
    from autoresearch.run.specs import StageInputs, base_env
    from autoresearch.sandbox import choose_backend

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        data = data_folder(ROOT)
        after = tmp / "after"
        run_dir = after / "runs" / "0001"
        (run_dir / "out").mkdir(parents=True)
        for f in ("prepare.py", "train.py", "program.md"):
            shutil.copy(ROOT / f, after / f)
        shutil.copy(ROOT / "train.py", run_dir / "train.py")
        ckpt = run_dir / "out" / "model.pt"
        env = dict(os.environ, AUTORESEARCH_TRAIN_SECONDS=str(args.train_seconds), AUTORESEARCH_SEED="0",
                   AUTORESEARCH_OUT=str(ckpt.parent), AUTORESEARCH_DATA=str(data))
        subprocess.run([sys.executable, "train.py"], cwd=after, env=env, check=True, capture_output=True)

        before = tmp / "before"
        (before / "autoresearch").mkdir(parents=True)
        (before / "prepare.py").write_text(git_show("prepare.py"))
        (before / "autoresearch" / "evaluate.py").write_text(git_show("autoresearch/evaluate.py"))
        shutil.copy(ROOT / "train.py", before / "train.py")
        val = (data / "val" / "val.bin").read_bytes()

        def run_before() -> tuple[float, float]:
            t = time.monotonic()
            p = subprocess.run([sys.executable, str(before / "autoresearch" / "evaluate.py"), "--project", str(before),
                                "--checkpoint", str(ckpt)], input=b"0" * 32 + b"\n" + val, capture_output=True,
                               env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "PYTHONPATH": str(before)})
            wall = time.monotonic() - t
            res = json.loads(p.stdout.decode().splitlines()[-1])
            assert res["status"] == "ok", res
            return wall, res["value"]

        program = load_program(after)
        sandbox = choose_backend(args.backend)
        lay = Layout(after, run_dir, "train.py")

        def run_after() -> tuple[float, float]:
            t = time.monotonic()
            inp = StageInputs(sandbox, program, lay, base_env(sandbox, lay, "/tmp", 0, 0), data)
            res, result = run_eval(inp, data / "val" / "val.bin", tmp / "eval.log")
            wall = time.monotonic() - t
            status, reason = eval_status(res, result, program)
            assert status == "ok" and result is not None, (status, reason)
            return wall, result["value"]

        walls: dict[str, list[float]] = {"before": [], "after": []}
        values: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, fn in (("before", run_before), ("after", run_after)):
                w, v = fn()
                walls[name].append(w)
                values[name] = v
        lay.cleanup()
        for name in ("before", "after"):
            print(f"{name:6s} ({'plain process' if name == 'before' else 'backend ' + sandbox.name}): "
                  f"min {min(walls[name]):.2f} s, median {statistics.median(walls[name]):.2f} s, "
                  f"val_bpb {values[name]:.9f}")
        ratio = min(walls["after"]) / min(walls["before"])
        med = statistics.median(walls["after"]) / statistics.median(walls["before"])
        print(f"after/before: {ratio:.2f}x (min), {med:.2f}x (median); goal <= 1.5x")
        print(f"|val_bpb after - before| = {abs(values['after'] - values['before']):.2e} (must be < 1e-6)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
