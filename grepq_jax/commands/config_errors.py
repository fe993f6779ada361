"""One-line messages for the mistakes people make with a config on the command
line: a file that does not exist or fails to load, an unknown variant, a
misspelt field. ml_collections reports each with a long traceback or a
repr of a KeyError; these say what was wrong and what to type instead."""

import os
import re

import ml_collections


class ConfigFileError(Exception):
    """The --config file could not be loaded."""


def loaded_config(config_flag) -> ml_collections.ConfigDict | None:
    """The --config flag's ConfigDict; None when --config was not given.

    Raises ConfigFileError when the file could not be loaded (ml_collections
    defers that error to the first use of the config).
    """
    value = config_flag.value
    if value is None or isinstance(value, ml_collections.ConfigDict):
        return value
    path = config_flag.config_filename or ""
    if path and not os.path.exists(path):
        raise ConfigFileError(
            f"config file {path} does not exist (relative paths are taken "
            f"from {os.getcwd()})")
    try:
        value.to_dict()  # ml_collections' stand-in raises its load error.
    except Exception as error:  # pylint: disable=broad-except
        raise ConfigFileError(
            f"config file {path} could not be loaded: {_last_line(error)}"
        ) from None
    raise ConfigFileError(f"config file {path} could not be loaded")


_DID_YOU_MEAN = re.compile(r"'(?P<key>[^']+)'\s*(?:Did you mean \"(?P<hint>[^\"]+)\")?")


def describe(error: Exception, argv: list[str]) -> str:
    """A one-line message for an error raised while parsing the flags."""
    if isinstance(error, AttributeError):  # ml_collections: an unknown field.
        return _unknown_field(error, argv)
    return _last_line(error)


def _unknown_field(error: AttributeError, argv: list[str]) -> str:
    inner = error.args[0] if error.args else error
    text = inner.args[0] if getattr(inner, "args", None) else str(inner)
    match = _DID_YOU_MEAN.search(str(text))
    if not match:
        return f"unknown config field: {text}"
    key, hint = match["key"], match["hint"]
    # The override as typed names the whole path: data.pth, not just pth.
    for arg in argv[1:]:
        if arg.startswith("--config."):
            parts = arg[len("--config."):].split("=", 1)[0].split(".")
            if key in parts:
                prefix = parts[: parts.index(key)]
                key = ".".join(prefix + [key])
                hint = hint and ".".join(prefix + [hint])
                break
    message = f"unknown config field {key}"
    return f"{message}; did you mean {hint}?" if hint else message


def _last_line(error: Exception) -> str:
    """The message that matters in an error whose text ends with a traceback
    (a config's get_config raising ValueError, say): its last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    if len(lines) > 1 and lines[0].startswith("flag --"):
        flag = lines[0].split(": ", 1)[0]
        return f"{flag}: {last}"
    return last
