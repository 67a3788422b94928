"""Issue 16's must-show, for two legacy repos written to look like the real ones
(tests/fixtures/nanogpt_like, tests/fixtures/clip_like), set up as a new user would and driven
by the real Claude Code CLI with a scripted model:

clone -> `autoresearch init --eval-command ... --editable ...` (its check runs the command once)
-> program.md edited (mounts, run.python, eval.model) -> doctor -> commit -> `./run.sh -m baseline`
-> a session: the baseline decided, then three experiments, all in trusted eval_command mode:
  - a crash touching three files, reverted across all of them;
  - a model.py + config change, kept as ONE commit holding exactly the measured snapshot;
  - a train.py change that prints a forged metric: ignored, the recorded value is eval.py's.
The wall clock from the clone to the first decided experiment is printed (`-s` shows it)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from e2e.fake_api import FakeAPI, Turn, bash, edit, end_turn, human, read, say
from e2e.harness import Project, run_claude
from e2e.legacy import (Clock, add_to_front_matter, autoresearch, clone, commit_setup, repo_venv, rows, sh,
                        snapshot_at)
from e2e.story import as_float, note, runs

pytestmark = [pytest.mark.claude, pytest.mark.slow, pytest.mark.usefixtures("bwrap_available", "claude_cli")]
TIMEOUT = 600


def run(why: str) -> Turn:
    return bash(f'./run.sh -m "{why}"', description="run one experiment")


def loop_script(clock: Clock, crash: list[Turn], keep: list[Turn], forged: list[Turn],
                files: tuple[str, ...]) -> list[Turn]:
    """Baseline decided; then crash, keep, forged (each: read what it edits, edit, run, note, end)."""
    reads = say("Reading the code first.") + read(files[0]) + read(files[1]) + read(files[2])
    return [
        say("A baseline is measured but not decided: noting it, then ending my turn.") + read("scratchpad.md"),
        note("1 | baseline (run 0001, run by hand) | see run 0001 | the reference"),
        end_turn("Baseline noted."),
        human(lambda: clock.mark("baseline decided")) + reads,
        *crash,
        note("2 | three-file change | crashed | reverted"),
        end_turn("It crashed."),
        human(lambda: clock.mark("first experiment decided")) + say("Re-reading after the revert.")
        + read(files[0]) + read(files[1]),
        *keep,
        note("3 | model.py + config | better | expect a keep"),
        end_turn("Better, I think."),
        say("Next: a cheaper or gentler variant.") + read(files[2]),
        *forged,
        note("4 | cheaper variant | worse (it prints a bogus number) | expect a discard"),
        end_turn("Recorded."),
    ]


def session(proj: Project, script: list[Turn], experiments: int = 4, crash_run: str = "0002"):
    with FakeAPI(project=str(proj.root)) as fake:
        fake.script = script
        res = run_claude(proj, fake.url, "Follow program.md. Start now.", timeout=TIMEOUT,
                         env={"AUTORESEARCH_MAX_EXPERIMENTS": str(experiments), **proj.env})
        assert res.result["subtype"] == "success" and not res.result["is_error"], res.describe()
        assert fake.overruns == 0 and max(r.step for r in fake.main_requests) == len(script) - 1, res.describe()
        assert res.result["permission_denials"] == [], res.result["permission_denials"]
        errors = [(r.name, r.input.get("file_path") or r.input.get("command"), r.text[:300])
                  for r in fake.results() if r.is_error and not r.text.startswith(f"Exit code 1\nrun {crash_run}:")]
        assert not errors, errors
        return res, fake


def check_loop(proj: Project, metric: str, changed: dict[str, str], crash_files: tuple[str, ...]) -> dict:
    """What every legacy loop must show; `changed`: file -> a string only the kept version holds."""
    rs = runs(proj.root)
    assert list(rs) == ["0001", "0002", "0003", "0004"], rs
    assert [rs[k]["status"] for k in rs] == ["ok", "crash", "ok", "ok"], {k: rs[k]["reason"] for k in rs}
    assert {rs[k]["mode"] for k in rs} == {"eval_command"}
    got = rows(proj, metric)
    assert [r.status for r in got] == ["keep", "crash", "keep", "discard"], got
    assert got[1].value == "", "a crash records no metric value"
    base, kept, forged = (rs[k]["metric_value"] for k in ("0001", "0003", "0004"))
    for r, v in zip((got[0], got[2], got[3]), (base, kept, forged)):
        assert as_float(r.value) == pytest.approx(v, abs=1e-6)

    # git: the user's branch untouched; a run branch with the baseline keep and ONE commit for run 0003
    branch = proj.git("rev-parse", "--abbrev-ref", "HEAD").strip()
    assert branch.startswith("autoresearch/"), branch
    log = proj.git("log", "--format=%H %s", "main..HEAD").splitlines()
    assert len(log) == 2, log
    keep = proj.git("log", "--format=%H", "-n1", "--grep", "Autoresearch-Run: 0003").strip()
    assert keep == proj.git("rev-parse", "HEAD").strip() and "Autoresearch-Run: 0003" in proj.git("show", "-s", keep)
    touched = set(proj.git("show", "--format=", "--name-only", keep).split())
    assert touched == {*changed, "scratchpad.md"}, touched
    assert snapshot_at(proj, keep) == rs["0003"]["snapshot_sha256"], "the commit holds exactly the measured snapshot"
    for f, marker in changed.items():
        assert marker in proj.git("show", f"{keep}:{f}"), (f, marker)
    patch = proj.read("runs/0003/diff.patch")
    assert all(f"b/{f}" in patch for f in changed), patch
    # the crash touched every one of crash_files; all are back as committed, and so are the rest
    crash_patch = proj.read("runs/0002/diff.patch")
    assert all(f"b/{f}" in crash_patch for f in crash_files), crash_patch
    for f in {*crash_files, *changed}:
        assert proj.read(f) == proj.git("show", f"HEAD:{f}"), f"{f} differs from the branch head"
    assert proj.git("status", "--porcelain", "--untracked-files=no").strip() in ("", "M scratchpad.md"), \
        proj.git("status", "--porcelain")
    return rs


# ------------------------------------------------------------------------------------------ nanoGPT

NG_CFG = "config/train_tiny.py"
NG_CRASH = [edit(NG_CFG, "n_head = 2", "n_head = 5") + edit("model.py", "self.act = nn.ReLU()",
                                                              "self.act = nn.GELU()")
            + edit("train.py", "eval_iters = 4", "eval_iters = 8"),
            run("5 heads, GELU, steadier loss estimates")]
NG_KEEP = [edit(NG_CFG, "learning_rate = 3e-4", "learning_rate = 1e-2")
           + edit("model.py", "self.act = nn.ReLU()", "self.act = nn.GELU()"),
           run("lr 1e-2 and GELU: the baseline barely moves in 60 steps")]
NG_FORGED = [edit("train.py", "torch.manual_seed(1337)",
                  "max_iters = max_iters // 4  # a quarter of the steps\ntorch.manual_seed(1337)")
             + edit("train.py", "print(f\"trained {max_iters}", "print(\"val loss 0.0000\")\n"
                    "print(\"val_loss: 0.0\")\nprint(f\"trained {max_iters}"),
             run("a quarter of the steps")]


def test_nanogpt_like_repo(tmp_path: Path) -> None:
    clock = Clock()
    proj = clone(tmp_path, "nanogpt_like")
    held = tmp_path / "heldout"
    held.mkdir()
    sh(proj, "python3", "data/make_text.py", "--seed", "2", "--chars", "6000", "--out", str(held / "val.txt"))
    init = autoresearch(proj, "init", "-C", ".", "--command", f"python train.py {NG_CFG}", "--metric", "val_loss",
                        "--direction", "minimize", "--editable", "model.py", "--editable", "config/*.py",
                        "--eval-command", f"python eval.py --val {held / 'val.txt'}", "--budget", "20",
                        "--backend", "bwrap", "--check-seconds", "20")
    out = " ".join((init.stdout + init.stderr).split())
    assert init.returncode == 0, out
    # its check ran the command: training started; the eval script could not see the held-out file yet
    assert "step 60: train loss" in out and "FileNotFoundError" in out, out
    assert f"mounts: [{{path: {held}, stages: [eval, final]}}]" in out, out
    add_to_front_matter(proj, "deadline_hours: 10", f"mounts:\n- {{path: {held}, stages: [eval, final]}}")
    doctor = autoresearch(proj, "doctor", "-C", ".")
    assert doctor.returncode == 0 and f"mount {held}" in doctor.stdout, doctor.stdout + doctor.stderr
    commit_setup(proj)
    base = sh(proj, "./run.sh", "-m", "baseline")
    assert base.returncode == 0 and "val_loss:" in base.stdout, base.stdout + base.stderr
    clock.mark("baseline measured")

    res, fake = session(proj, loop_script(clock, NG_CRASH, NG_KEEP, NG_FORGED, ("model.py", NG_CFG, "train.py")))
    clock.mark("session ended")
    print("\n" + clock.report("nanogpt_like"))
    rs = check_loop(proj, "val_loss", {"model.py": "nn.GELU()", NG_CFG: "learning_rate = 1e-2"},
                    ("model.py", NG_CFG, "train.py"))
    assert rs["0003"]["metric_value"] < rs["0001"]["metric_value"] - 0.5
    # the forged printed value is only log text; the record is what eval.py measured
    assert "val loss 0.0000" in proj.read("runs/0004/train.log") and rs["0004"]["metric_value"] > 1.0
    assert f"held-out val loss {rs['0004']['metric_value']:.4f}" in proj.eval_log("0004")
    # nanoGPT's out_dir: written in each stage's work copy, never into the project
    assert "saved checkpoint to out" in proj.read("runs/0001/train.log") and not proj.path("out").exists()
    assert proj.path("runs/0003/out/ckpt.pt").is_file()


# ------------------------------------------------------------------------------------------ CLIP

CL_CFG = "conf/config.yaml"
CL_CRASH = [edit(CL_CFG, "hidden: 32", "hidden: 48")
            + edit("model.py", "pooled = (self.tok(ids) * mask).sum(1)", "pooled = (self.tok(ids) * mask).sum(2)")
            + edit("train.py", 'print(f"epoch {epoch}: loss', 'print(f"epoch {epoch}: contrastive loss'),
            run("wider encoders, token pooling")]
CL_KEEP = [edit(CL_CFG, "lr: 3.0e-4", "lr: 1.0e-2")
           + edit("model.py", "nn.Linear(in_dim, hidden), nn.ReLU()", "nn.Linear(in_dim, hidden), nn.GELU()"),
           run("lr 1e-2 and GELU in the image encoder")]
CL_FORGED = [edit("train.py", 'lr=t["lr"])', 'lr=t["lr"] / 100)')
             + edit("train.py", '    print(f"run folder: {run_dir}")',
                    '    print("val acc 1.0")\n    print("recall_at_1: 1.0")\n    print(f"run folder: {run_dir}")'),
             run("a gentler learning rate")]


def test_clip_like_repo(tmp_path: Path) -> None:
    clock = Clock()
    proj = clone(tmp_path, "clip_like")
    data = tmp_path / "clip_data"                     # outside the repo, as a lab's data set is
    sh(proj, str(Path(__file__).parents[2] / ".venv" / "bin" / "python"), "scripts/make_data.py", str(data))
    py = repo_venv(proj)
    init = autoresearch(proj, "init", "-C", ".", "--command", f"python train.py data.root={data}",
                        "--metric", "recall_at_1", "--direction", "maximize", "--editable", "model.py",
                        "--editable", CL_CFG, "--eval-command", f"python eval.py --heldout {data / 'heldout'}",
                        "--budget", "20", "--backend", "bwrap", "--check-seconds", "20")
    out = " ".join((init.stdout + init.stderr).split())
    assert init.returncode == 0, out
    # the check ran it with the bundle's Python: the repo's pinned dependency is missing, and it says where
    assert "needs the module 'tabulate'" in out and "run.python: .venv/bin/python" in out, out
    add_to_front_matter(proj, "  mode: eval_command", "  python: .venv/bin/python")
    add_to_front_matter(proj, "eval:", "  model: model.py:load")
    add_to_front_matter(proj, "  direction: maximize", "  floor: 0.0\n  ceiling: 1.0")
    add_to_front_matter(proj, "deadline_hours: 10", f"mounts:\n- {{path: {data / 'train'}, stages: [train]}}\n"
                                                    f"- {{path: {data / 'heldout'}, stages: [eval, final]}}")
    doctor = autoresearch(proj, "doctor", "-C", ".")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    commit_setup(proj)
    base = sh(proj, "./run.sh", "-m", "baseline")
    assert base.returncode == 0 and "recall_at_1:" in base.stdout, base.stdout + base.stderr
    clock.mark("baseline measured")

    res, fake = session(proj, loop_script(clock, CL_CRASH, CL_KEEP, CL_FORGED, ("model.py", CL_CFG, "train.py")))
    clock.mark("session ended")
    print("\n" + clock.report("clip_like"))
    rs = check_loop(proj, "recall_at_1", {"model.py": "nn.GELU()", CL_CFG: "lr: 1.0e-2"},
                    ("model.py", CL_CFG, "train.py"))
    assert rs["0003"]["metric_value"] > rs["0001"]["metric_value"] + 0.1
    # the repo's venv ran both stages (its pinned tabulate printed the table); the fingerprint says so
    assert "| split   |   recall@1 |" in proj.read("runs/0001/train.log")
    assert all(rs[k]["fingerprint"]["interpreter"].startswith(f"{py} 3.") for k in rs)
    # the evaluator split: eval.py asked the model server; the forged prints are only log text
    assert rs["0004"]["extra"]["eval_requests"] > 0 and rs["0004"]["extra"]["eval_servers"] == 2
    assert "val acc 1.0" in proj.read("runs/0004/train.log") and rs["0004"]["metric_value"] < 1.0
    assert f"{rs['0004']['metric_value']:.4f}" in proj.eval_log("0004")
    # Hydra's run folder: written in the work copy (the run's metrics.json too), never into the project
    assert "run folder: outputs/" in proj.read("runs/0001/train.log") and not proj.path("outputs").exists()


# ------------------------------------------------------------------------------------------ Lightning

LT_CFG = "conf/config.yaml"
LT_COMMAND = "python train.py trainer.devices=2"
MODULE = "litclf/module.py"


def test_lightning_like_repo(tmp_path: Path) -> None:
    """A Lightning-style project (tests/fixtures/lightning_like): DDP over two CPU ranks (gloo) in the
    sandbox, Hydra-style overrides, a built-in validation whose closing table is the metric (inline
    mode), torch.hub weights that must come from the cache, W&B-style logging and checkpoints in its
    own tree. init -> doctor --trial -> baseline -> three decided experiments with the real CLI
    (a keep, a crash in the package, reverted, and a discard)."""
    clock = Clock()
    proj = clone(tmp_path, "lightning_like")
    cache = tmp_path / "cache"                        # the lab's download cache, outside the repo
    sh(proj, str(Path(__file__).parents[2] / ".venv" / "bin" / "python"), "scripts/fetch_weights.py", str(cache))
    # a 60 s budget: a run takes ~4 s here, but its two spawned ranks each import torch, and on a loaded
    # CI machine one was killed at 20 s + the margin (the budget only bounds it: runs end on their own)
    init = autoresearch(proj, "init", "-C", ".", "--command", LT_COMMAND, "--metric", "val_loss",
                        "--direction", "minimize", "--editable", "litclf/", "--editable", LT_CFG,
                        "--budget", "60", "--backend", "bwrap", "--no-check")
    out = " ".join((init.stdout + init.stderr).split())
    assert init.returncode == 0, out
    # runs have no network: W&B goes offline in run.env; the torch.hub weights are named for sandbox.cache
    assert "the code imports torch.hub, wandb" in out and "torch/hub/checkpoints" in out, out
    assert "WANDB_MODE: offline" in proj.read("program.md")
    clock.mark("init")
    add_to_front_matter(proj, "  backend: bwrap", f"  cache: {cache}")
    doctor = autoresearch(proj, "doctor", "-C", ".", "--trial", "20")
    dout = " ".join((doctor.stdout + doctor.stderr).split())
    assert doctor.returncode == 0 and "value 0." in dout and dout.rstrip().endswith("ready"), dout
    # the config's seed: 42 wins over the harness's seed: said, with where (issue 29, honest noise)
    assert "the seed is ignored" in dout and "conf/config.yaml:2: seed: 42" in dout, dout
    assert f"calibrate vary the repo's own seed: it runs `{LT_COMMAND} seed={{seed}}`" in dout, dout
    clock.mark("doctor --trial")
    commit_setup(proj)
    base = sh(proj, "./run.sh", "-m", "baseline")
    assert base.returncode == 0 and "val_loss:" in base.stdout, base.stdout + base.stderr
    clock.mark("baseline measured")

    script = [
        say("A baseline is measured but not decided: noting it, then ending my turn.") + read("scratchpad.md"),
        note("1 | baseline (run 0001, run by hand) | see run 0001 | the reference"),
        end_turn("Baseline noted."),
        human(lambda: clock.mark("baseline decided")) + say("Reading the config first.") + read(LT_CFG),
        edit(LT_CFG, "lr: 0.003", "lr: 0.03"),
        run("lr 10x: SGD with momentum barely moves in 4 epochs"),
        note("2 | lr 0.03 | better | expect a keep"),
        end_turn("Better, I think."),
        human(lambda: clock.mark("first experiment decided")) + read(MODULE),
        edit(MODULE, "return self.head(self.act(self.backbone(x)))", "return self.head(self.act(self.backbone(x, 2)))"),
        run("a second input to the backbone"),
        note("3 | backbone(x, 2) | crashed | reverted"),
        end_turn("It crashed."),
        say("A much smaller step instead.") + read(LT_CFG),
        edit(LT_CFG, "lr: 0.03", "lr: 0.0003"),
        run("lr 100x smaller"),
        note("4 | lr 0.0003 | worse | expect a discard"),
        end_turn("Recorded."),
    ]
    session(proj, script, experiments=4, crash_run="0003")
    print("\n" + clock.report("lightning_like"))
    rs = runs(proj.root)
    assert list(rs) == ["0001", "0002", "0003", "0004"], rs
    assert [rs[k]["status"] for k in rs] == ["ok", "ok", "crash", "ok"], {k: rs[k]["reason"] for k in rs}
    got = rows(proj, "val_loss")
    assert [r.status for r in got] == ["keep", "keep", "crash", "discard"], got
    # the crash and the discard were reverted: the package and the config are the kept ones
    assert "self.backbone(x))" in proj.read(MODULE) and "lr: 0.03\n" in proj.read(LT_CFG)
    assert rs["0004"]["metric_value"] > rs["0002"]["metric_value"]
    assert rs["0002"]["metric_value"] < rs["0001"]["metric_value"] - 0.05
    log = proj.read("runs/0002/train.log")
    # both ranks trained (one process group of two); the value is the closing table's, not an epoch line's
    assert re.search(rf"val_loss\s+{rs['0002']['metric_value']:.6f}", log), log[-2000:]
    assert all(f"GLOBAL_RANK: {r}, MEMBER: {r + 1}/2" in log for r in (0, 1)) and "Downloading" not in log
    keep = proj.git("log", "--format=%H", "-n1", "--grep", "Autoresearch-Run: 0002").strip()
    assert keep == proj.git("rev-parse", "HEAD").strip()          # the crash and the discard left no commit
    assert set(proj.git("show", "--format=", "--name-only", keep).split()) == {LT_CFG, "scratchpad.md"}
    assert snapshot_at(proj, keep) == rs["0002"]["snapshot_sha256"]
    # checkpoints and logs went to the run's work copy, never into the project
    assert not proj.path("lightning_logs").exists() and not proj.path("wandb").exists()
