"""What each kind of assignment asks a node to run, checked: the bounds and names a
node relies on (the API's serializers check types). Kind ``command``: a buyer's
program, its environment and its files. Kind ``train`` is made by the platform, not
sent by a buyer: its spec (the runtime's work spec, checked by runtime.spec, and the
control plane's plan) is built in marketplace/assignments/training.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from core.validation import field_error

MAX_COMMAND_ARGS = 256
MAX_ARG_CHARS = 4096
MAX_COMMAND_CHARS = 64 * 1024
MAX_ENV_VARS = 64
MAX_ENV_NAME_CHARS = 128
MAX_ENV_VALUE_CHARS = 4096
MAX_FILES = 16
MAX_FILE_NAME_CHARS = 100
MAX_FILE_CHARS = 256 * 1024
MAX_FILES_CHARS = 1024 * 1024

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # no path: one file in the work dir
# Set by the node from the lease; a run may not point itself at other GPUs.
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"})


def _no_nul(name: str, value: str) -> None:
    if "\x00" in value:
        raise field_error(name, "must not contain NUL characters")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    command: list[str]
    env: dict[str, str]
    files: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"command": self.command, "env": self.env, "files": self.files}


def command_spec_check(
    *, command: list[str], env: dict[str, str], files: dict[str, str]
) -> CommandSpec:
    """Bounds and names of a run's command, environment and files (the API's serializer
    checks types; these are the rules a node relies on)."""
    if not 1 <= len(command) <= MAX_COMMAND_ARGS:
        raise field_error("command", f"must have 1 to {MAX_COMMAND_ARGS} arguments")
    for position, arg in enumerate(command):
        if len(arg) > MAX_ARG_CHARS:
            raise field_error(f"command[{position}]", f"longer than {MAX_ARG_CHARS} characters")
        _no_nul(f"command[{position}]", arg)
    if not command[0]:
        raise field_error("command[0]", "the program must not be empty")
    if sum(len(arg) for arg in command) > MAX_COMMAND_CHARS:
        raise field_error("command", f"longer than {MAX_COMMAND_CHARS} characters in all")
    if len(env) > MAX_ENV_VARS:
        raise field_error("env", f"at most {MAX_ENV_VARS} variables")
    for name, value in env.items():
        if len(name) > MAX_ENV_NAME_CHARS or not ENV_NAME.match(name):
            raise field_error(f"env.{name[:40]}", "a name is letters, digits and _")
        if name in RESERVED_ENV:
            raise field_error(f"env.{name}", "is set by the node to the leased GPUs")
        if len(value) > MAX_ENV_VALUE_CHARS:
            raise field_error(f"env.{name}", f"longer than {MAX_ENV_VALUE_CHARS} characters")
        _no_nul(f"env.{name}", value)
    if len(files) > MAX_FILES:
        raise field_error("files", f"at most {MAX_FILES} files")
    for name, text in files.items():
        if len(name) > MAX_FILE_NAME_CHARS or not FILE_NAME.match(name):
            raise field_error(
                f"files.{name[:40]}",
                "a file name is letters, digits, '.', '_' and '-' (no directories)",
            )
        if len(text) > MAX_FILE_CHARS:
            raise field_error(f"files.{name}", f"longer than {MAX_FILE_CHARS} characters")
        _no_nul(f"files.{name}", text)
    if sum(len(text) for text in files.values()) > MAX_FILES_CHARS:
        raise field_error("files", f"longer than {MAX_FILES_CHARS} characters in all")
    return CommandSpec(command=list(command), env=dict(env), files=dict(files))
