"""Load `shipyard.yaml`: parse, resolve secret references, apply env overrides, validate.

A bad file fails fast with one `ConfigError` that lists every problem with the file, the key
path, the bad value and what to do about it.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from shipyard.config import env
from shipyard.config.schema import Config
from shipyard.errors import ConfigError

__all__ = ["inline_secrets", "install_python_path", "load_config", "parse_config"]



def load_config(
    path: str | Path, *, environ: Mapping[str, str] | None = None, secrets: bool = True,
    strict: bool = False,
) -> Config:
    """Read and validate a config file.

    With `secrets=False` (read-only tools such as `shipyard traces`), secret references that
    cannot be resolved are replaced by a placeholder instead of failing. With `strict=True`, a
    secret written inline in the file (not as `{$env: NAME}` or `{$file: path}`) is an error;
    otherwise `inline_secrets(config)` lists them for a warning.

    >>> config = load_config("examples/quickstart/shipyard.yaml")  # doctest: +SKIP
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Config file '{file}' does not exist; create one with 'shipyard init' "
            "or pass the right path with --config."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file '{file}' cannot be read: {exc}.") from None
    return parse_config(text, source=str(file), base_dir=file.parent, environ=environ,
                        secrets=secrets, strict=strict)


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    secrets: bool = True,
    strict: bool = False,
) -> Config:
    """Validate config text (YAML). `base_dir` anchors relative `$file` references; `strict`
    refuses secrets written inline (see `load_config`)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source}: is not valid YAML{where}: {problem}. Fix the syntax "
            "(check indentation and quotes)."
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (server, providers, "
            f"models, ...), not a {type(raw).__name__}."
        )
    problems: list[str] = []
    referenced: set[str] = set()
    resolved = _resolve(raw, "", base_dir or Path.cwd(), environ, problems,
                        None if secrets else _PLACEHOLDER, referenced)
    if problems:
        raise ConfigError(_join(source, problems))
    _apply_overrides(resolved, env.overrides(environ), problems, referenced)
    if problems:
        raise ConfigError(_join(source, problems))
    folder = base_dir or Path.cwd()
    if isinstance(resolved.get("python_path"), list):
        resolved["python_path"] = [
            str((folder / p).resolve()) if isinstance(p, str) else p
            for p in resolved["python_path"]
        ]
    _anchor_paths(resolved, folder)
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_join(source, _explain(exc, resolved))) from None
    inline = [path for path in _secret_paths(config, "") if path not in referenced]
    config._inline_secrets = inline
    if strict and inline:
        raise ConfigError(_join(source, [
            f"key '{path}' holds a secret written inline; reference it as {{$env: NAME}} or "
            "{$file: path} instead (--strict refuses inline secrets)" for path in inline]))
    return config


def inline_secrets(config: Config) -> list[str]:
    """Keys of `config` whose secret was written inline in the file instead of referenced
    (`{$env: NAME}` / `{$file: path}`): committed with the file, and in every copy of it."""
    return list(config._inline_secrets)


def _secret_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield path
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_paths(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_paths(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _secret_paths(item, f"{path}[{i}]")


def _anchor_paths(resolved: dict[str, Any], folder: Path) -> None:
    """Relative file paths of the lifecycle (model artifacts, training data, the artifact
    store) are relative to the config file, wherever the command runs."""
    def anchor(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            path = Path(section[key]).expanduser()
            section[key] = str(path if path.is_absolute() else (folder / path).resolve())

    anchor(resolved.get("lifecycle"), "artifact_dir")
    services = resolved.get("services")
    if isinstance(services, dict):
        for service in services.values():
            if isinstance(service, dict):
                anchor(service, "model")
                anchor(service.get("retrain"), "data")
                anchor(service.get("retrain"), "eval_data")


def install_python_path(config: Config) -> None:
    """Put the config's `python_path` folders first on `sys.path`, so its `module:function`
    references import, then import its `plugins` (which may register guards). The one place
    start-up changes the import path (called by `create_app` and by commands that import a
    config's code)."""
    for folder in reversed(config.python_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for i, module in enumerate(config.plugins):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"Config key 'plugins[{i}]' is '{module}', which cannot be imported ({exc}); "
                "check the module name and `python_path`.") from None


def _join(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"{source}: {len(problems)} problems:\n{lines}"


_PLACEHOLDER = "unresolved-secret-placeholder"


def _resolve(
    node: Any,
    path: str,
    base_dir: Path,
    environ: Mapping[str, str] | None,
    problems: list[str],
    placeholder: str | None = None,
    referenced: set[str] | None = None,
) -> Any:
    if isinstance(node, dict) and set(node) in ({"$env"}, {"$file"}) and referenced is not None:
        referenced.add(path)
    if isinstance(node, dict):
        if set(node) == {"$env"}:
            name = node["$env"]
            value = env.get(str(name), environ)
            if value is None and placeholder is not None:
                return placeholder
            if value is None:
                problems.append(
                    f"key '{path}' references environment variable {name}, which is not set; "
                    f"export {name}=... before starting Shipyard."
                )
            return value
        if set(node) == {"$file"}:
            file = Path(str(node["$file"]))
            if not file.is_absolute():
                file = base_dir / file
            try:
                return file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                if placeholder is not None:
                    return placeholder
                problems.append(
                    f"key '{path}' references file '{file}', which cannot be read "
                    f"({exc.strerror or exc}); create it or fix the path."
                )
                return None
        if any(str(k).startswith("$") for k in node):
            problems.append(
                f"key '{path}' has {sorted(node)}; a secret reference is exactly one of "
                "{$env: NAME} or {$file: path}."
            )
            return None
        return {
            str(k): _resolve(v, f"{path}.{k}" if path else str(k), base_dir, environ, problems,
                             placeholder, referenced)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            _resolve(v, f"{path}[{i}]", base_dir, environ, problems, placeholder, referenced)
            for i, v in enumerate(node)
        ]
    return node


def _apply_overrides(data: dict[str, Any], values: dict[str, str], problems: list[str],
                     referenced: set[str]) -> None:
    for name, value in sorted(values.items()):
        section, _, key = name.partition("_")
        model = Config.model_fields.get(section)
        if section not in env.SECTIONS or model is None or not key:
            continue
        fields = model.annotation.model_fields  # type: ignore[union-attr]
        if key not in fields:
            problems.append(
                f"environment variable SHIPYARD_{name.upper()} names no setting "
                f"'{section}.{key}'{_suggest(key, fields)}."
            )
            continue
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            continue
        target[key] = value
        referenced.add(f"{section}.{key}")  # from the environment: not in the file


def _suggest(word: str, options: Mapping[str, Any] | list[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _model_for_parent(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    # Walk the loc, treating mapping keys (aliases) as transparent.
    model: Any = Config
    i = 0
    while i < len(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(loc[i]))
        if field is None:
            return None
        annotation = field.annotation
        args: tuple[Any, ...] = getattr(annotation, "__args__", ())
        if getattr(annotation, "__origin__", None) is dict and len(args) == 2:
            model = args[1]
            i += 2
            continue
        model = annotation
        i += 1
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _explain(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        key = ".".join(str(p) for p in loc)
        kind = err["type"]
        msg = str(err["msg"])
        if kind == "extra_forbidden":
            parent = _model_for_parent(loc[:-1])
            hint = _suggest(str(loc[-1]), parent.model_fields) if parent else ""
            out.append(
                f"key '{key}' is not a known setting{hint or ''}; remove it or check the "
                "spelling (see docs/configuration.md)."
            )
            continue
        if kind == "missing":
            out.append(f"key '{key}' is required but missing; add it (see docs/configuration.md).")
            continue
        value = _lookup(data, loc)
        shown = _show(value, key)
        if kind == "value_error":
            msg = msg.removeprefix("Value error, ")
            where = f"key '{key}'" if key else "the config"
            out.append(f"{where}: {msg}.")
            continue
        field_help = ""
        parent = _model_for_parent(loc[:-1]) if loc else None
        if parent is not None and str(loc[-1]) in parent.model_fields:
            field_help = parent.model_fields[str(loc[-1])].description or ""
        fix = f" ({field_help})" if field_help else ""
        out.append(f"key '{key}' is {shown}; it {_lower_first(msg)}{fix}.")
    return out


def _show(value: Any, key: str) -> str:
    if any(word in key for word in ("api_key", "secret", "password", "token")):
        return "set (value hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lower_first(msg: str) -> str:
    msg = msg.rstrip(".")
    if msg.startswith("Input should be"):
        return "should be" + msg[len("Input should be") :]
    return msg[:1].lower() + msg[1:]
