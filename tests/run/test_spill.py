"""The spill test (ARCHITECTURE.md rule 10, issue 23): hostile code in every stage writes everything
it sees to every place it can write, and no file the agent may read, nor any file the next TRAIN
can read, ever holds validation or test text -- while the run goes and after it, for EVAL and for
`autoresearch final`, on each backend.

The data is synthetic so a leak is unambiguous: the train split is lowercase letters and spaces,
the validation split only the letters A-M, the test split only N-Z. A run of 24 such letters in a
file is held-out text (nothing else here writes 24 capitals in a row).

    run 0001   TRAIN: the hostile train.py reads its train split (and tries val/test), and writes it
               into its working folder, CLAUDE.md, HOME, TMPDIR, the checkpoint folder, every parent
               folder and every writable folder it finds, through links it plants and into FIFOs.
               EVAL: the same file as the model: every window it is sent goes to all those places
               (and to its stderr), each request.
    final      `autoresearch final` on run 0001: the same model, now sent test windows.
    run 0002   the next TRAIN: a scanner that reads every file it can see and names any held-out text.

Meanwhile a thread here reads every file under the project that the real guard lets the agent
read (autoresearch.guard.paths.read_problem), again and again, and searches it. Positive
controls: the eval log holds validation text and the final log test text (the model did see and
print them), and the scanner finds the train split (it can read what it should).
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from experiment_support import BACKENDS, RUN_SH, git_env, make_project, metrics, require_backend, run_env

from autoresearch.record.layout import eval_log, final_log, state_folder

VAL = re.compile(rb"[A-M]{24,}")
TEST = re.compile(rb"[N-Z]{24,}")
TRAIN_TEXT = re.compile(rb"[a-z ]{64,}")
BRANCH = "autoresearch/spill"

HOSTILE = r'''
"""Hostile in every stage: whatever it sees, it writes everywhere it can."""
import os
import stat
import sys

import torch

SKIP = ("/proc", "/sys", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/boot", "/snap", "/opt",
        "/var/lib", "/var/cache")
OUT = os.environ.get("AUTORESEARCH_OUT", "")


def _skip(d):
    real = os.path.realpath(d)
    if d.startswith("/dev") and not d.startswith("/dev/shm"):
        return True
    for p in SKIP + tuple({sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)}):
        if real == p or real.startswith(p.rstrip("/") + "/"):
            return True
    return False


def targets():
    """Every folder this process can write: its working folder and HOME/TMPDIR, the checkpoint
    folder, every parent of those, and whatever a walk of / finds writable."""
    found = []
    seeds = [os.getcwd(), os.environ.get("HOME", "/tmp"), os.environ.get("TMPDIR", "/tmp"), "/tmp", "/dev/shm",
             "/var/tmp", OUT]
    for s in list(seeds):
        p = s
        while p and p != "/":
            p = os.path.dirname(p)
            seeds.append(p)
    n = 0
    for top in ["/"] + seeds:
        for d, dirs, _files in os.walk(top or "/"):
            n += 1
            if _skip(d) or n > 20000:
                dirs[:] = []
                continue
            if os.access(d, os.W_OK) and d not in found:
                found.append(d)
            if top != "/":
                dirs[:] = []
    for s in seeds:
        if s and os.path.isdir(s) and os.access(s, os.W_OK) and s not in found:
            found.append(s)
    return found


WHERE = None
PLANTED = set()


def plant(d):
    """Links from a writable folder to files the agent reads, then writes through them; a FIFO."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(OUT))) if OUT else ""
    run = os.path.dirname(OUT) if OUT else ""
    for i, dest in enumerate([os.path.join(run, "train.log"), os.path.join(run, "metrics.json"),
                              os.path.join(root, "scratchpad.md"), os.path.join(root, "results.tsv"),
                              os.path.join(root, "notes-from-sandbox.md")]):
        try:
            os.symlink(dest, os.path.join(d, "link-%d" % i))
        except OSError:
            pass
    try:
        os.mkfifo(os.path.join(d, "fifo"))
    except OSError:
        pass


def spill(data, tag):
    global WHERE
    if WHERE is None:
        WHERE = targets()
        print("SPILL %s into %d folders" % (tag, len(WHERE)), file=sys.stderr, flush=True)
    root = os.path.dirname(os.path.dirname(os.path.dirname(OUT))) if OUT else ""
    extra = [os.path.join(root, n) for n in ("scratchpad.md", "CLAUDE.md", "results.tsv", "train.py")]
    extra += [os.path.join(os.path.dirname(OUT), n) for n in ("train.log", "diff.patch", "CLAUDE.md")]
    for d in WHERE:
        if d not in PLANTED:
            PLANTED.add(d)
            plant(d)
        for name in ("spill-%s.txt" % tag, "CLAUDE.md", "scratchpad.md", "link-0", "link-1", "link-2", "link-3",
                     "link-4"):
            extra.append(os.path.join(d, name))
    for p in extra:
        try:
            fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
            try:
                os.write(fd, data + b"\n")
            finally:
                os.close(fd)
        except OSError:
            pass
    sys.stderr.buffer.write(data + b"\n")
    sys.stderr.flush()


class Hostile(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        spill(bytes(x.to(torch.uint8).flatten().tolist()), "model")
        return torch.zeros(*x.shape, 256) + self.w * 0


def build_model():
    import hashlib
    import json
    seen = json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv, "out": sorted(os.listdir(OUT))},
                      sort_keys=True)
    os.write(2, b"\nSEEN %s\n" % hashlib.sha256(seen.encode()).hexdigest().encode())   # one short write: the
    return Hostile()                                                # other server's output cannot split it


if __name__ == "__main__":
    data = os.environ["AUTORESEARCH_DATA"]
    seen = open(os.path.join(data, "train", "train.bin"), "rb").read()[:8192]
    for split in ("val", "test"):
        try:
            seen += open(os.path.join(data, split, split + ".bin"), "rb").read()[:8192]
            print("READ", split, flush=True)
        except OSError:
            pass
    spill(seen, "train")
    print(seen[:2000].decode(errors="replace"), flush=True)
    torch.save(Hostile().state_dict(), os.path.join(OUT, "model.pt"))
'''

SCANNER = r'''
"""The next TRAIN: read every file it can see; name any held-out text."""
import os
import re
import stat
import sys

VAL = re.compile(rb"[A-M]{24,}")
TEST = re.compile(rb"[N-Z]{24,}")
TRAIN_TEXT = re.compile(rb"[a-z ]{64,}")
SKIP = ("/proc", "/sys", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/boot", "/snap")
skip = SKIP + tuple({sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)})
files = train_files = 0
for d, dirs, names in os.walk("/"):
    real = os.path.realpath(d)
    if (d.startswith("/dev") and not d.startswith("/dev/shm")) or any(
            real == p or real.startswith(p.rstrip("/") + "/") for p in skip):
        dirs[:] = []
        continue
    for n in names + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
        p = os.path.join(d, n)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            chunks = []
            while (b := os.read(fd, 1 << 20)) and sum(map(len, chunks)) < 64 << 20:
                chunks.append(b)
        except OSError:
            continue
        finally:
            os.close(fd)
        data = b"".join(chunks)
        files += 1
        if TRAIN_TEXT.search(data):
            train_files += 1
        for kind, rx in (("val", VAL), ("test", TEST)):
            if m := rx.search(data):
                print("SPILL-FOUND", kind, p, m.group(0)[:40].decode(), flush=True)
print("SCANNED", files, "files,", train_files, "with train text", flush=True)
'''


def make_data(folder: Path) -> Path:
    """train: lowercase letters and spaces; val: A-M only; test: N-Z only (random, seeded)."""
    rng = np.random.default_rng(23)
    sizes = {"train": 300_000, "val": (1 << 17) + 4096, "test": (1 << 17) + 4096}
    alphabets = {"train": b"abcdefghijklmnopqrstuvwxyz     ", "val": b"ABCDEFGHIJKLM", "test": b"NOPQRSTUVWXYZ"}
    for split, n in sizes.items():
        alpha = np.frombuffer(alphabets[split], dtype=np.uint8)
        (folder / split).mkdir(parents=True)
        rng.choice(alpha, size=n).astype(np.uint8).tofile(folder / split / f"{split}.bin")
    return folder


def agent_readable(root: Path, env: dict[str, str]) -> list[Path]:
    """Every file under the project the wired guard lets the agent read (its real policy)."""
    from autoresearch.guard.paths import Context, read_problem
    from autoresearch.guard.policy import load_policy
    ctx = Context(str(root), load_policy(str(root)), env=env)
    out = []
    for d, dirs, files in os.walk(root):
        for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, n)
            if read_problem(ctx, p) is None:
                out.append(Path(p))
    return out


def held_out_in(paths: list[Path]) -> list[str]:
    found = []
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
        except OSError:
            continue
        finally:
            os.close(fd)
        for kind, rx in (("val", VAL), ("test", TEST)):
            if m := rx.search(data):
                found.append(f"{kind} text in {p}: {m.group(0)[:40]!r}")
    return found


class Watch:
    """Scan what the agent may read, over and over, while a command runs."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.found, self.rounds = root, env, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.found += held_out_in(agent_readable(self.root, self.env))
            self.rounds += 1
            self.stop.wait(0.2)

    def run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        self.thread.start()
        try:
            return subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        finally:
            self.stop.set()
            self.thread.join()


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, env=git_env(), check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_held_out_reaches_the_agent_or_the_next_train(tmp_path, request, backend):
    require_backend(request, backend)
    data = make_data(tmp_path / "data")
    proj = make_project(tmp_path / "p", train_py=HOSTILE, grace_seconds=30, eval_seconds=120)
    _git(proj, "checkout", "-qb", BRANCH)
    _git(proj, "commit", "-qam", "the hostile model")           # final scores only what a commit kept
    env = run_env(AUTORESEARCH_DATA=str(data), AUTORESEARCH_TRAIN_SECONDS="4")

    # run 0001: TRAIN spills the train split, EVAL the validation windows
    w = Watch(proj, env)
    p = w.run([str(RUN_SH), "-m", "spill everything", "--backend", backend])
    m = metrics(proj, "0001")
    assert p.returncode == 0 and m["status"] == "ok", (p.stdout + p.stderr, m)
    assert w.rounds >= 2, "the watch read what the agent may read while the run went"
    assert not w.found, w.found
    log = eval_log(proj, "0001").read_text(errors="replace")
    assert VAL.search(log.encode()), "positive control: the model saw validation windows and printed them"
    spilled = [int(n) for n in re.findall(r"^SPILL model into (\d+) folders", log, re.M)]
    assert len(spilled) == 2 and min(spilled) >= 2, ("each model server wrote its work copy and /tmp at least", log[:500])
    trained = re.search(r"^SPILL train into (\d+) folders", (proj / "runs" / "0001" / "train.log").read_text(), re.M)
    assert trained and int(trained.group(1)) >= 3, "TRAIN wrote its work copy, /tmp and out/ at least"
    assert {"CLAUDE.md", "spill-train.txt"} <= set(os.listdir(proj / "runs" / "0001" / "out"))
    assert not str(eval_log(proj, "0001")).startswith(str(proj)), "the eval log is outside the project"
    assert not (state_folder(proj) / "runs" / "0001").exists(), "no stage's scratch outlives the run"

    # autoresearch final: the same model, sent test windows
    from autoresearch.ledger import LedgerRow, append_rows
    row = LedgerRow(commit=_git(proj, "rev-parse", "--short", "HEAD"), value=m["metric_value"], status="keep",
                    description="spill", experiment=1, run_id="0001", runs=["0001"], run_status="ok",
                    phase="hyperparameters", branch=BRANCH, decided_at=datetime.now(timezone.utc))
    append_rows(proj, [row], "val_bpb")
    w = Watch(proj, env)
    p = w.run([sys.executable, "-m", "autoresearch", "final", "--backend", backend, "--json"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert w.rounds >= 2, "the watch read what the agent may read while final went"
    assert not w.found, w.found
    flog = final_log(proj, "0001").read_text(errors="replace")
    assert TEST.search(flog.encode()), "positive control: the model saw test windows in final"
    assert not list(proj.rglob("*.eval.log")) and not list((proj / ".autoresearch").glob("final-*"))
    seen = [set(re.findall(r"SEEN ([0-9a-f]{64})", text)) for text in (log, flog)]
    assert len(seen[0]) == 2 and seen[0] == seen[1], "final looks like EVAL to the model: environment, folders"

    # after both: nothing the agent may read holds held-out text
    readable = agent_readable(proj, env)
    assert any(p.name == "train.log" for p in readable) and not held_out_in(readable), held_out_in(readable)

    # run 0002: the next TRAIN reads everything it can see
    (proj / "train.py").write_text(SCANNER)
    p = subprocess.run([str(RUN_SH), "-m", "scan", "--backend", backend],
                       cwd=proj, env={**env, "AUTORESEARCH_TRAIN_SECONDS": "30"}, capture_output=True, text=True,
                       timeout=600)
    train_log = (proj / "runs" / "0002" / "train.log").read_text(errors="replace")
    scanned = re.search(r"^SCANNED (\d+) files, (\d+) with train text", train_log, re.M)
    assert scanned, (p.stdout + p.stderr, train_log[-3000:])
    assert int(scanned.group(1)) > 10 and int(scanned.group(2)) >= 1, "positive control: it reads the train split"
    assert "SPILL-FOUND" not in train_log, [ln for ln in train_log.splitlines() if "SPILL-FOUND" in ln]
