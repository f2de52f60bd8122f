"""Parsing of config-file arguments: `--config=configs/digits.py:tarflow,smoke,steps=200` (big_vision style)."""

from __future__ import annotations

from typing import Any


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """Parses "name,flag,key=value" against `defaults` and returns the merged values.

  A bare word sets a boolean default to True; key=value converts the value to the default's type.
  Words and keys that `defaults` does not have raise ValueError, so typos never pass silently.
  """
  values = dict(defaults)
  for token in filter(None, (arg or "").split(",")):
    key, has_value, raw = token.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known arguments: {sorted(defaults)}")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value: {key}=...")
      values[key] = True
    elif isinstance(default, bool):
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key!r} must be true or false, got {raw!r}")
      values[key] = raw.lower() in ("true", "1")
    else:
      values[key] = type(default)(raw) if default is not None else raw
  return values
