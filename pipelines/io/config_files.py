"""Config files of the commands (``pearl annotate --config``, ``pearl train --config``): YAML or TOML,
read as plain data; each command types and checks the data itself."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


class ConfigFileError(ValueError):
    """A config file that is missing, of an unknown kind, unparsable or not a mapping."""


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """Plain data of a YAML (``.yaml`` / ``.yml``) or TOML (``.toml``) file holding a mapping (an empty
    file is an empty mapping). :class:`ConfigFileError` names the file and what is wrong."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigFileError(f"config file {path}: use a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"config file {path} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping")
    return data
