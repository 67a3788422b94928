"""The model server's warm start (issue 27): it starts with TRAIN and warms up (trusted code only,
python -I), but imports agent code only after the scorer's GO, which comes once TRAIN has ended
ok. Without GO it exits having run no agent code at all."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from autoresearch.inside import protocol as P
from autoresearch.run.specs import STARTUP

PKG = str(Path(__file__).resolve().parents[2])
SAID = "AGENT CODE IMPORTED"


def _server(tmp_path: Path) -> subprocess.Popen:
    (tmp_path / "train.py").write_text(f"import sys\nprint({SAID!r}, file=sys.stderr, flush=True)\n"
                                       f"def build_model():\n    raise SystemExit(0)\n")
    # a torch.py beside it would shadow torch for a warm-up that is not isolated (-I)
    (tmp_path / "torch.py").write_text(f"import sys\nprint({SAID!r} + ' (torch.py)', file=sys.stderr, flush=True)\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{tmp_path}:{PKG}",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-I", str(STARTUP), "module", "autoresearch.inside.model_server",
                             "--project", str(tmp_path), "--checkpoint", str(tmp_path / "model.pt"), "--vocab", "256"],
                            cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_agent_code_runs_only_after_go_and_never_without_it(tmp_path):
    """Two servers at once (one torch import's time): one the scorer hangs up on (TRAIN did not end
    ok), one that gets GO."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    hung_up, go = _server(tmp_path / "a"), _server(tmp_path / "b")
    go.stdin.write(P.GO)
    go.stdin.flush()
    out, err = hung_up.communicate(b"", timeout=120)
    assert hung_up.returncode == 0, err
    assert b"warm-up" in err and SAID.encode() not in err and P.AGENT_STARTS.encode() not in err, err
    assert out == b"", out

    go.stdin.close()
    text = go.stderr.read().decode(errors="replace")
    go.wait(timeout=120)
    assert f"{SAID}\n" in text and P.AGENT_STARTS in text, text
    assert text.index(P.AGENT_STARTS) < text.index(SAID), "agent code before the clock's marker"
    assert f"{SAID} (torch.py)" not in text, "the warm-up imported a file from the work copy"
