"""The registry of token-weighting methods: every list of methods in vcore and its tests derives from it.

A method registers itself by decorating its class (``@register``). The built-in methods are registered when
:mod:`vcore.methods` is imported, in the order of tables and figures (SFT first: every comparison is against it). A
method defined outside vcore registers when its config is typed: its YAML names the class with ``_target_``
(``_target_: my_package.my_module.MyWeighting``), which :func:`method_class` imports (docs/adding_a_method.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vcore.checks import ConfigError
from vcore.methods.base import MethodConfig, MethodContext, TokenWeighting

_METHODS: dict[str, type[TokenWeighting]] = {}


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[TokenWeighting]) -> type[TokenWeighting]:
    """Class decorator: add a method under its ``name``. Its ``Config`` must be a :class:`MethodConfig` dataclass whose
    ``name`` defaults to the method's. Registering the same class again (a module imported twice) is a no-op."""
    if not (isinstance(cls, type) and issubclass(cls, TokenWeighting)):
        raise TypeError(f"{cls!r} is not a TokenWeighting subclass (vcore.methods.base)")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, MethodConfig)) or config is MethodConfig:
        raise TypeError(f"{_path(cls)}.Config must be a dataclass subclassing vcore.methods.base.MethodConfig")
    default = getattr(config, "__dataclass_fields__", {}).get("name")
    if default is None or default.default != cls.name:
        raise TypeError(f"{_path(cls)}.Config: its name must default to the method's name {cls.name!r}")
    known = _METHODS.get(cls.name)
    if known is not None and _path(known) != _path(cls):
        raise ConfigError(f"method.name={cls.name!r} is taken by {_path(known)}; give {_path(cls)} another name")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Every registered method, built-in ones first in their order (the order of tables and figures)."""
    return tuple(_METHODS)


def import_method(target: str, option: str = "method._target_") -> type[TokenWeighting]:
    """The class ``target`` (``package.module.Class``) names, imported and registered."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if module_name else None
    except ImportError as err:
        raise ConfigError(
            f"{option}={target!r}: cannot import {module_name!r} ({err}); put its directory on PYTHONPATH"
        ) from err
    if cls is None:
        raise ConfigError(f"{option}={target!r}: no class {attr!r} in module {module_name!r}")
    try:
        return register(cls)
    except TypeError as err:
        raise ConfigError(f"{option}={target!r}: {err}") from err


def method_class(cfg: Any) -> type[TokenWeighting]:
    """The class of a method config (typed or not): its ``_target_`` if set, else its ``name`` in the registry."""
    target = cfg.get("_target_") if isinstance(cfg, (dict, DictConfig)) else getattr(cfg, "_target_", None)
    if target:
        return import_method(target)
    name = cfg.get("name") if isinstance(cfg, (dict, DictConfig)) else getattr(cfg, "name", None)
    if name not in _METHODS:
        raise ConfigError(
            f"method.name: unknown method {name!r}; choose one of {', '.join(_METHODS)}, or name your own class with "
            "method._target_ (docs/adding_a_method.md)"
        )
    return _METHODS[name]


def schemas() -> dict[str, type[MethodConfig]]:
    """``base_<name>`` -> config schema of every registered method (the ``method`` group of Hydra's ConfigStore)."""
    return {f"base_{name}": cls.Config for name, cls in _METHODS.items()}


def typed_method_node(node: DictConfig) -> DictConfig:
    """The ``method`` node typed by its method's schema. A built-in method's YAML extends ``base_<name>`` and is typed
    by Hydra already; an untyped node (a YAML naming its class with ``_target_``) is merged into that class's
    ``Config`` here, so an unknown key or a wrong type fails now, naming the key, before anything is loaded."""
    if OmegaConf.get_type(node) is not dict:
        return node
    cls = method_class(node)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls.Config), node)
    except OmegaConfBaseException as err:  # omegaconf's message names the key; say which option group it is in
        raise ConfigError(f"method ({_path(cls)}): {err}") from err
    if typed.name != cls.name:
        raise ConfigError(
            f"method.name={typed.name!r}: {_path(cls)} is the method {cls.name!r}; drop method.name or set it to that"
        )
    return typed


def build_method(cfg: MethodConfig, ctx: MethodContext) -> TokenWeighting:
    """The weighting ``cfg`` describes (a typed method config), built in ``ctx``."""
    return method_class(cfg).build(cfg, ctx)
