"""What `--json` prints when a command fails, so a script never has to parse a traceback or a
human sentence: one object on stdout, with the schema version every JSON report carries."""
from __future__ import annotations

from pydantic import BaseModel

SCHEMA_VERSION = 1          # of every --json report (status, doctor, final, export, guard explain) and this


class ErrorReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    command: str
    error: str               # what went wrong, in one line
    fix: str                 # what to do about it
    exit_code: int


def error(command: str, message: str, fix: str, code: int) -> int:
    """Print the JSON error for `command` and return its exit code."""
    print(ErrorReport(command=command, error=" ".join(message.split()), fix=fix, exit_code=code)
          .model_dump_json(indent=2))
    return code
