"""Where a repository fixes its own random seed, and what may override an edited setting.

A legacy repo often seeds with a constant (`torch.manual_seed(1337)`, `seed: 42` in a config,
`--seed 0` on the command line), so the seed the harness gives (AUTORESEARCH_SEED) changes
nothing: calibration then sees bit-identical runs. Saying "sigma 0, calibrated" would be a lie
(a change that only moves the random sequence looks like a win), so calibrate and status name
these places instead. The same scan names what could override an edited default (config files
and flags on the command line) when a result is bit-identical to the best.

Pure reading of the project's own files; nothing here runs repository code.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..gitops import git

MAX_FILES = 400                       # tracked files scanned at most (a big repo: the first ones)
MAX_BYTES = 512 * 1024                # a file larger than this is data, not code
MAX_HITS = 6
CODE_EXT = (".py", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini")
CONFIG_EXT = (".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".py")

# a seeding call with a literal number: torch.manual_seed(1337), np.random.seed(0), random.seed(42),
# tf.random.set_seed(1), seed_everything(7), set_seed(3), torch.cuda.manual_seed_all(1)
_CALL = re.compile(r"\b(?:manual_seed(?:_all)?|random\.seed|set_seed|seed_everything|PRNGKey|default_rng|RandomState)"
                   r"\(\s*(?:seed\s*=\s*)?\d+\s*[,)]")
# a seed setting with a literal number: seed = 1337, seed: 42, "seed": 0, seed=3 (a config default)
_SETTING = re.compile(r"""(?:^|[\s,{(])["']?(?:\w*_)?seed["']?\s*[:=]\s*\d+\b""", re.I)
# a seed flag or parameter with a literal default: add_argument("--seed", type=int, default=0), seed: int = 1234
_DEFAULT = re.compile(r"""add_argument\(\s*["']--?[\w-]*seed["'].*\bdefault\s*=\s*\d+|\bseed\s*:\s*int\s*=\s*\d+""", re.I)
_READS_HARNESS = re.compile(r"AUTORESEARCH_SEED")


def _tracked(root: Path) -> list[str]:
    p = git(root, "ls-files", "-z", check=False)
    if p.returncode != 0:
        return []
    return [f for f in p.stdout.split("\0") if f.endswith(CODE_EXT)][:MAX_FILES]


def _lines(path: Path) -> list[str]:
    try:
        if path.stat().st_size > MAX_BYTES:
            return []
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def reads_harness_seed(root: Path, files: list[str]) -> bool:
    return any(_READS_HARNESS.search("\n".join(_lines(Path(root) / f))) for f in files)


def fixed_seeds(root: Path, first: list[str], command: list[str] | None = None) -> list[str]:
    """Places where the repo fixes a seed to a constant, as `file:line: text` (the files in
    `first` -- the training script and the editable set -- before the rest of the tracked code),
    then seed flags on the training command. At most MAX_HITS."""
    root = Path(root)
    out: list[str] = []
    for word in command or []:
        if re.fullmatch(r"(?:--|\+{0,2})[\w.-]*seed[\w.-]*=\d+", word, re.I):
            out.append(f"run.command: {word}")
    for i, word in enumerate(command or []):
        if re.fullmatch(r"--?[\w.-]*seed", word, re.I) and i + 1 < len(command or []) and \
                re.fullmatch(r"\d+", (command or [])[i + 1]):
            out.append(f"run.command: {word} {(command or [])[i + 1]}")
    seen: set[str] = set()
    for rel in [*first, *_tracked(root)]:
        if rel in seen or len(out) >= MAX_HITS:
            continue
        seen.add(rel)
        for n, line in enumerate(_lines(root / rel), 1):
            text = line.strip()
            if not text or text.startswith("#") or _READS_HARNESS.search(text):
                continue
            if _CALL.search(text) or _SETTING.search(text) or _DEFAULT.search(text):
                out.append(f"{rel}:{n}: {text[:100]}")
                if len(out) >= MAX_HITS:
                    break
    return out[:MAX_HITS]


def overriders(root: Path, command: list[str] | None) -> list[str]:
    """What on the training command could override a default edited in code: config files it
    names (`--config cfg.yaml`, `config/train.py`, `+experiment=x`) and its flags (`--lr 3e-4`,
    `optimizer.lr=1e-3`). Empty when the command is just the script."""
    out: list[str] = []
    for i, word in enumerate((command or [])[1:], 1):
        value = word.split("=", 1)[-1]
        if value.endswith(CONFIG_EXT) and i > 1 and (Path(root) / value).is_file():
            out.append(f"config file {value}")
        elif word.startswith("-") and "=" not in word and word not in ("-u", "-m", "-O", "-B") and \
                i + 1 < len(command or []) and not (command or [])[i + 1].startswith("-"):
            out.append(f"flag {word} {(command or [])[i + 1]}")
        elif word.startswith("-") and "=" in word:
            out.append(f"flag {word}")
        elif re.fullmatch(r"[+~]{0,2}[A-Za-z_][\w.]*=\S+", word):
            out.append(f"override {word}")
    return out[:MAX_HITS]


# ------------------------------------------------------------------ the seed the repo does read

_FLAG_VALUE = re.compile(r"(--?[\w.-]*seed)", re.I)
_ARGPARSE_FLAG = re.compile(r"""add_argument\(\s*["'](--?[\w-]*seed)["']""", re.I)
_WORD = re.compile(r"[+~]{0,2}[A-Za-z_][\w.]*=\S*")


def _yaml_seed_key(path: Path) -> str | None:
    """The dotted key of the first integer `*seed` setting in a YAML config (`seed`, `train.seed`)."""
    import yaml
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, yaml.YAMLError):
        return None

    def walk(node, prefix: str) -> str | None:
        if not isinstance(node, dict):
            return None
        for k, v in node.items():
            if isinstance(k, str) and re.fullmatch(r"(?:\w*_)?seed", k, re.I) and isinstance(v, int) \
                    and not isinstance(v, bool):
                return prefix + k
        for k, v in node.items():
            if isinstance(k, str) and (hit := walk(v, f"{prefix}{k}.")):
                return hit
        return None
    return walk(doc, "")


def seed_override(root: Path, command: list[str] | None, where: list[str]) -> list[str] | None:
    """The training command with the repo's OWN seed set to `{seed}` (a placeholder), when the
    place the repo fixes it (`where`, from fixed_seeds) is one the command line can reach:

      run.command: --seed 0 / seed=3      that word's value is replaced
      a YAML config's `seed: 42`          a Hydra-style override `seed={seed}` (`train.seed=...`) is
                                          added -- only for a command that already takes such
                                          `key=value` overrides, so the repo is known to read them
      argparse `--seed ... default=0`     `--seed {seed}` is added (in the training script only)

    None when no such place is found (a seed fixed in code: only an edit can change it). With it,
    calibrate measures the noise a change that only moves the random sequence brings."""
    argv = list(command or [])
    if not argv:
        return None
    for i, word in enumerate(argv):
        if re.fullmatch(r"(?:--|\+{0,2})[\w.-]*seed[\w.-]*=\d+", word, re.I):
            return [*argv[:i], word.split("=", 1)[0] + "={seed}", *argv[i + 1:]]
        if _FLAG_VALUE.fullmatch(word) and i + 1 < len(argv) and argv[i + 1].isdigit():
            return [*argv[:i + 1], "{seed}", *argv[i + 2:]]
    hydra = any(_WORD.fullmatch(w) and not w.startswith("-") for w in argv[1:])
    script = next((w for w in argv if w.endswith(".py") and not w.startswith("-")), None)
    for hit in where:
        rel = hit.split(":", 1)[0]
        if rel.endswith((".yaml", ".yml")) and hydra and (key := _yaml_seed_key(Path(root) / rel)):
            return [*argv, f"{key}={{seed}}"]
        if rel == script and (m := _ARGPARSE_FLAG.search(hit)):
            return [*argv, m.group(1), "{seed}"]
    return None


def with_seed(command: list[str], seed: int) -> list[str]:
    """seed_override's command for one seed."""
    return [w.replace("{seed}", str(seed)) for w in command]
