"""A configuration mistake told in one line: the key, where it was set, and the nearest valid key,
in place of jsonargparse's report (a 60-70-line usage dump, then every branch of each Union the
value failed, down to the one that matters)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from pathlib import Path

# jsonargparse's lines that say how it searched, not what was wrong.
NOISE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Expected a <class 'NoneType'>|"
    r"Given value type: |Given value: )"
)
PARSER_KEY = re.compile(r'^(- )?Parser key "([^"]+)":$')
PARSER_KEY_INLINE = re.compile(r'^(?:- )?Parser key "([^"]+)": (.+)$')
CLASS_PATH = re.compile(r"^(- )?Problem with given class_path '([^']+)':$")
UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted")
UNKNOWN_TOP = re.compile(r"(?:unrecognized arguments: --|does not accept option ')([\w.]+)")
EXPECTED = re.compile(r"Expected a <class '([\w.]+)'>\. Got value: (.*)")
NO_CLASS = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")


def explain(message: str, option_keys: list[str], argv: list[str]) -> str:
    """jsonargparse's error `message` as one line. `option_keys` are the subcommand's own keys
    (`trainer.max_steps`, ...), `argv` the command line (its --config files are searched for the key)."""
    top = UNKNOWN_TOP.search(message)
    if top:
        key = top.group(1)
        return f"{key}: no such option{_nearest(key, option_keys)}{_where(key, argv)}"
    key, class_path, leaf = _deepest(message)
    if leaf is None:
        return message.strip().splitlines()[0]
    if not key:
        return leaf
    if m := UNKNOWN_OPTION.search(leaf):
        name = m.group(1)
        near = _nearest(name, _parameters(class_path)) if class_path else ""
        # A dataclass's fields are written directly under its key (`lora: {r: 8}`), a class's under init_args.
        full = f"{key}.{name}" if _is_dataclass(class_path) else f"{key}.init_args.{name}"
        owner = class_path.rsplit(".", 1)[-1] if class_path else "it"
        return f"{full}: {owner} takes no option '{name}'{near}{_where(full, argv)}"
    if m := NO_CLASS.search(leaf):
        module, name = m.groups()
        classes = [n for n, v in vars(importlib.import_module(module)).items() if inspect.isclass(v)]
        return f"{key}.class_path: {module} has no class '{name}'{_nearest(name, classes)}{_where(key + '.class_path', argv)}"
    if m := EXPECTED.search(leaf):
        return f"{key}: expected {m.group(1)}, got {m.group(2)!r}{_where(key, argv)}"
    return f"{key}: {leaf}{_where(key, argv)}"


def check_failed(message: str) -> str:
    """The message of a check that failed while jsonargparse built a class (a ValueError its
    `__init__` raised), without the Union report around it."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    return _deepest(message)[2] or message


def _deepest(message: str) -> tuple[str, str | None, str | None]:
    """The key the innermost error is about (`model.init_args.engine`), the class it was checked
    against, and that error's first line. Union branches that only say "not None" are dropped."""
    key, class_path, leaf = "", None, None
    for raw in message.splitlines():
        line = raw.strip().removeprefix("error: ").strip()
        if not line or NOISE.match(line):
            continue
        if m := PARSER_KEY_INLINE.match(line):  # `Parser key "config": File does not exist: ...`
            key, leaf = m.group(1), m.group(2)
            break
        if m := PARSER_KEY.match(line):
            part = m.group(2)
            key = f"{key}.init_args.{part}" if class_path and key else (f"{key}.{part}" if key else part)
        elif m := CLASS_PATH.match(line):
            class_path = m.group(2)
        elif leaf is None:
            leaf = line.removeprefix("- ")
    return key, class_path, leaf


def _class(class_path: str | None) -> type | None:
    try:
        module, name = (class_path or "").rsplit(".", 1)
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _is_dataclass(class_path: str | None) -> bool:
    return dataclasses.is_dataclass(_class(class_path))


def _parameters(class_path: str) -> list[str]:
    """The keyword arguments `class_path` takes, its base classes' included (they pass **kwargs on)."""
    cls = _class(class_path)
    if cls is None:
        return []
    names = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names += [p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds and p.name != "self"]
    return list(dict.fromkeys(names))


def _nearest(name: str, candidates: list[str]) -> str:
    near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


def _where(key: str, argv: list[str]) -> str:
    """Where `key` was set: the last --config file that sets it, or the command line."""
    plain = key.replace(".init_args.", ".")
    for arg in argv:
        if arg.startswith("--") and arg[2:].split("=", 1)[0].replace(".init_args.", ".") == plain:
            return " (on the command line)"
    for path in reversed(_config_files(argv)):
        if _sets(path, key.split(".")):
            return f" (in {path})"
    return ""


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _sets(path: str, keys: list[str]) -> bool:
    import yaml

    try:
        node = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    for k in keys:
        if isinstance(node, dict) and k == "init_args" and k not in node:
            continue  # a config may leave init_args out: `engine: {max_new_tokens: 8}`
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True
