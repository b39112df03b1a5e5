"""The settings of a command: options over `PMON_*` variables over the config file over defaults.

The config file is TOML whose keys are the settings' names (those of
docs/configuration.md, lower case, without `PMON_`); tables hold the structured
ones (experiments, allocations, consent policies, roster). It is `--config
FILE`, else `PMON_CONFIG`, else `pmon.toml` in the working directory when there
is one. Every error is one line naming where the bad value came from (the file
and its key, the variable, or the option) and how to fix it.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "pmon.toml").write_text('alert_threshold = 0.1\\n[roster."Testing Lead"]\\npeople = ["Ana"]\\n')
>>> loaded = load_settings(folder / "pmon.toml", overrides={"log_level": "ERROR"})
>>> loaded.settings.alert_threshold, loaded.settings.log_level, loaded.settings.roster["Testing Lead"].people
(0.1, 'ERROR', ['Ana'])
>>> loaded.sources["alert_threshold"], loaded.sources["log_level"], loaded.sources["significance"]
('file', 'option', 'default')
>>> _ = (folder / "bad.toml").write_text("alert_treshold = 0.1\\n")
>>> load_settings(folder / "bad.toml")
Traceback (most recent call last):
...
monitor.config_file.ConfigError: ... unknown key 'alert_treshold' — did you mean 'alert_threshold'? ...
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_settings import SettingsError

from monitor.exceptions import MonitorError
from monitor.settings import Settings

DEFAULT_FILE = Path("pmon.toml")
CONFIG_VARIABLE = "PMON_CONFIG"
Source = Literal["option", "env", "file", "default"]


class ConfigError(MonitorError):
    """The settings cannot be built: one line saying which value is wrong, where it came from, and the fix."""


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    sources: dict[str, Source]  # setting name -> where its value came from
    file: Path | None


def config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The config file in force: `explicit`, else PMON_CONFIG, else ./pmon.toml if it exists."""
    if explicit is None and environ.get(CONFIG_VARIABLE):
        explicit = Path(environ[CONFIG_VARIABLE])
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(
                f"config file {explicit} does not exist — pass an existing file to --config "
                f"or {CONFIG_VARIABLE}, or remove it to use the defaults"
            )
        return explicit
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings; a one-line error for bad TOML or a key that is not a setting."""
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc} — fix the syntax there") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror} — check the path and its permissions") from None
    known = Settings.model_fields
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{path}: unknown key {key!r} — {hint}the keys are the settings' names, listed in docs/configuration.md"
            )
    return values


def _variable(name: str) -> str:
    return f"PMON_{name.upper()}"


def stray_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per `PMON_*` variable that is no setting (so nothing reads it as one), with the setting it is
    closest to: a misspelt variable is otherwise silently ignored. The scripts' own variables (the local
    broker's port, the tests' logs) are listed too, as not settings.

    >>> stray_variables({"PMON_BACH_SIZE": "5", "PMON_BATCH_SIZE": "5", "PMON_CONFIG": "x", "HOME": "/"})
    ['PMON_BACH_SIZE is not a setting and is ignored — did you mean PMON_BATCH_SIZE?']
    """
    known = sorted(_variable(name) for name in Settings.model_fields)
    lines = []
    for key in sorted(environ):
        name = key.upper()
        if not name.startswith("PMON_") or name in known or name == CONFIG_VARIABLE:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" — did you mean {close[0]}?" if close else ""
        lines.append(f"{key} is not a setting and is ignored{hint}")
    return lines


def load_settings(
    explicit: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    option_names: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Settings from `overrides` (options; None values are left out) over the `PMON_*` variables over the config
    file over the defaults. `option_names` maps a setting to the option that set it, for errors."""
    environ = os.environ
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = config_file(explicit, environ)
    from_file = read_file(path) if path is not None else {}
    in_env = {name for name in Settings.model_fields if any(key.upper() == _variable(name) for key in environ)}
    sources: dict[str, Source] = {
        name: "option" if name in overrides else "env" if name in in_env else "file" if name in from_file else "default"
        for name in Settings.model_fields
    }
    # The environment outranks the file: a value set in both is taken from the environment (Settings reads it).
    values = {**{k: v for k, v in from_file.items() if k not in in_env}, **overrides}
    try:
        settings = Settings(**values)
    except SettingsError as exc:
        field = re.search(r'field "(\w+)"', str(exc))
        name = _variable(field.group(1)) if field else "a PMON_* variable"
        raise ConfigError(
            f"{name}: not valid JSON — write it as JSON (see docs/configuration.md), "
            f"or set it in the config file as a TOML table"
        ) from None
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources, path, option_names or {})) from None
    return LoadedSettings(settings, sources, path)


def _explain(
    exc: ValidationError, sources: Mapping[str, Source], path: Path | None, option_names: Mapping[str, str]
) -> str:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if not location:  # a rule over several settings: name them with where each came from
        named = [name for name in sources if re.search(rf"\b{name}\b", message)]
        where = ", ".join(f"{name} ({_where(name, sources[name], path, option_names)})" for name in named)
        return f"invalid settings: {message} — fix {where or 'the settings'}"
    name, entry = location[0], ".".join(location[1:])
    source = sources.get(name, "default")
    where = _where(name, source, path, option_names)
    if source == "file":
        key = ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"' for part in location)
        return f"{path}: key {key}: {message} — fix it in {path}"
    return f"invalid setting {where}{f' (entry {entry})' if entry else ''}: {message} — fix {where}"


def _where(name: str, source: Source, path: Path | None, option_names: Mapping[str, str]) -> str:
    if source == "option":
        return option_names.get(name, f"--{name.replace('_', '-')}")
    if source == "file":
        return f"{path} key {name}"
    if source == "default":
        return f"default; set {_variable(name)} or {name} in the config file"
    return _variable(name)
