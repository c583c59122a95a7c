"""The one error type for invalid configuration values."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option to change."""


def check(cond: bool, option: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{option}: {msg}")
