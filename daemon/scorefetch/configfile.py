"""Reading the configuration file: strict YAML, `${VAR}` expansion, `x_file` secrets,
and error messages that name the file and the key path (validation is config.py's)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from scorefetch.core.errors import ConfigError

# Each secret `x` may also be given as `x_file`; all are masked by check-config.
SECRET_KEYS = frozenset({"password", "api_key", "client_secret", "refresh_token", "certificate"})
_NAMED_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*): (.*)$", re.S)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The YAML at `path` as a mapping, `${VAR}` expanded and secrets read from their files
    (relative to `$CREDENTIALS_DIRECTORY` when set, else to the file's folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    secrets_dir = Path(env["CREDENTIALS_DIRECTORY"]) if env.get("CREDENTIALS_DIRECTORY") else None
    expanded: dict[str, Any] = _expand(raw, (), path, env, secrets_dir or path.parent)
    return expanded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the line: that line may be a password."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = [
        f"line {mark.line + 1}, column {mark.column + 1}: {text}" if mark else text
        for mark, text in ((exc.context_mark, exc.context), (exc.problem_mark, exc.problem))
        if text
    ]
    return "; ".join(parts) or "syntax error"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (a typo, like unknown keys)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def key_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(path: Path, err: Any) -> str:
    # Drop pydantic's union/validator branch names ("function-after[...]") from the location.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        message = f"{err['input']!r} is not one of {expected}"
    elif kind == "union_tag_invalid":  # tags are spelled key[value], see _tag
        key, _, value = str(ctx["tag"]).partition("[")
        expected = re.sub(r"'[a-z_]+\[([^]]*)\]'", r"\1", str(ctx["expected_tags"]))
        loc, message = (*loc, key), f"{value[:-1]!r} is not one of {expected}"
    elif kind == "union_tag_not_found":
        loc, message = (*loc, str(ctx["discriminator"]).strip("'()")), "required key is missing"
    elif kind == "model_type":
        message = "must be a mapping of keys"
    elif kind == "extra_forbidden":
        message = "unknown key (check the spelling)"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
        # A model validator names the key it is about as "key: reason".
        named = _NAMED_KEY.match(message) if kind == "value_error" else None
        if named:
            loc, message = (*loc, *named.group(1).split(".")), named.group(2)
    return f"{path}: {key_path(loc)}: {message}"


def _expand(
    node: Any, loc: tuple[str | int, ...], path: Path, env: dict[str, str], base: Path
) -> Any:
    """Expand ${VAR} in every string and turn `x_file` secrets into `x`."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(
                    f"{path}: {key_path(loc)}: environment variable {name} is not set"
                )
            return env[name]

        return _VAR.sub(substitute, node)
    if isinstance(node, list):
        return [_expand(item, (*loc, i), path, env, base) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    disabled = node.get("enabled") is False  # its secrets are not needed: may be missing
    for key, value in node.items():
        key = str(key)
        name = key.removesuffix("_file")
        if key.endswith("_file") and name in SECRET_KEYS:
            if name in node:
                raise ConfigError(
                    f"{path}: {key_path((*loc, key))}: give {name} or {key}, not both"
                )
            try:
                out[name] = _read_secret(
                    _expand(value, (*loc, key), path, env, base), (*loc, key), path, base
                )
            except ConfigError:
                if not disabled:
                    raise
        else:
            out[key] = _expand(value, (*loc, key), path, env, base)
    return out


def _read_secret(value: Any, loc: tuple[str | int, ...], path: Path, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {key_path(loc)}: must be a file path")
    secret_path = base / value  # an absolute value replaces base
    try:
        secret = secret_path.read_text(encoding="utf-8").strip("\r\n")
    except OSError as exc:
        raise ConfigError(
            f"{path}: {key_path(loc)}: cannot read {secret_path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {key_path(loc)}: {secret_path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{path}: {key_path(loc)}: {secret_path} is empty")
    return secret
