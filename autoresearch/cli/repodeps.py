"""What a legacy repo reaches for at run time that a sandbox without network refuses: W&B logging,
Hugging Face / timm pretrained weights. Found from the imports of its tracked Python files, so
init can write the offline settings into program.md (run.env) and name the cache the weights
must come from, instead of every run crashing on a DNS lookup.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..gitops import git

MAX_FILES = 400
MAX_BYTES = 512 * 1024

# module -> the variables that keep it from the network
OFFLINE: dict[str, dict[str, str]] = {
    "wandb": {"WANDB_MODE": "offline"},
    "transformers": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    "huggingface_hub": {"HF_HUB_OFFLINE": "1"},
    "datasets": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    "timm": {"HF_HUB_OFFLINE": "1"},
    "open_clip": {"HF_HUB_OFFLINE": "1"},
    "torch.hub": {},        # load_state_dict_from_url / torch.hub.load: from $XDG_CACHE_HOME/torch/hub once cached
}
WEIGHTS = ("transformers", "huggingface_hub", "timm", "open_clip", "datasets", "torch.hub")
_HUB = re.compile(r"\btorch\.hub\.|\bload_state_dict_from_url\(|\bdownload_url_to_file\(")


def imported(root: Path) -> set[str]:
    """The modules of OFFLINE the repo's tracked Python files import (torch.hub: calls)."""
    p = git(root, "ls-files", "-z", "--", "*.py", check=False)
    files = [f for f in p.stdout.split("\0") if f][:MAX_FILES] if p.returncode == 0 else []
    rx = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(m for m in OFFLINE if "." not in m) + r")\b", re.M)
    found: set[str] = set()
    for f in files:
        path = Path(root) / f
        try:
            if path.stat().st_size > MAX_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            found |= set(rx.findall(text)) | ({"torch.hub"} if _HUB.search(text) else set())
        except OSError:
            continue
    return found


def offline_env(mods: set[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for m in sorted(mods):
        env.update(OFFLINE[m])
    return env


def cache_note(mods: set[str], home: Path | None = None) -> str | None:
    """Where pretrained weights must come from when the repo loads them: a folder already holding
    them, named in sandbox.cache (runs have no network)."""
    if not mods & set(WEIGHTS):
        return None
    home = home or Path.home()
    have = [str(p) for p in (home / ".cache" / "huggingface", home / ".cache" / "torch") if p.is_dir()]
    where = f" ({' and '.join(have)} hold downloads on this machine)" if have else ""
    return (f"the code loads pretrained weights ({', '.join(sorted(mods & set(WEIGHTS)))}), and runs have no "
            f"network: download them once by hand, then set sandbox.cache in program.md to the folder that holds "
            f"them{where}" + ("; run.env has HF_HUB_OFFLINE=1 so a missing file fails at once instead of hanging"
                              if offline_env(mods).get("HF_HUB_OFFLINE") else
                              " (torch.hub looks in <cache>/torch/hub/checkpoints/)"))
