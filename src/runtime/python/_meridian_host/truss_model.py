"""The truss `Model` contract: importing model.py, constructing the class with the keyword arguments its
signature names, and describing each optional method (sync, async, generator) so the server can call it.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional

from .log import describe_exception
from .package import Package

# Methods the host calls, besides the constructor.
METHODS = (
    "load",
    "setup_environment",
    "is_healthy",
    "preprocess",
    "predict",
    "postprocess",
    "chat_completions",
    "completions",
    "embeddings",
    "websocket",
)


class ModelDefinitionError(Exception):
    """The model does not meet the contract (truss answers these with 412)."""


class ModelImportError(Exception):
    """model.py could not be imported or lacks its class: told apart from what load() raises."""


class SecretNotFound(KeyError):
    """Reading a secret that config.yaml does not declare, or that has no value.

    A KeyError, so `name in secrets` and `secrets.get(name)` behave as on any mapping."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "secret not found"


class Secrets(Mapping):
    """The config's `secrets:` names, read-only, each read from `{directory}/{name}` when accessed (so a
    rotated file is seen), else from `TRUSS_SECRET_{name}`, else the config's placeholder, as truss does.
    Values are never part of repr() or of iteration."""

    def __init__(self, declared: Dict[str, Optional[str]], directory: str, environ: Mapping) -> None:
        self._declared = dict(declared)
        self._directory = directory
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str) or name not in self._declared:
            raise SecretNotFound(f"Secret {name!r} is not declared in config.yaml's secrets.")
        value = self._declared[name]
        from_env = self._environ.get("TRUSS_SECRET_" + name)
        if from_env is not None:
            value = from_env
        path = os.path.join(self._directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except FileNotFoundError:
            pass
        except (IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError) as err:
            raise SecretNotFound(f"Secret {name!r} could not be read: {type(err).__name__}") from None
        if not value:
            raise SecretNotFound(
                f"Secret {name!r} has no value: add it to your secrets (it is declared in config.yaml)."
            )
        return value

    def __iter__(self) -> Iterator[str]:
        # As truss: secrets are looked up by name, never listed.
        raise TypeError("Secrets are meant for lookup and can't be iterated on")

    def __len__(self) -> int:
        return len(self._declared)

    def __repr__(self) -> str:
        return f"<Secrets {sorted(self._declared)}>"


class LazyDataResolver:
    """truss's `lazy_data_resolver`: a package's `external_data` is downloaded in the background. Meridian
    refuses `external_data` at push, so everything is already under the data dir."""

    def __init__(self, data_dir: str) -> None:
        self._data_dir = data_dir

    def block_until_download_complete(self, *args: Any, **kwargs: Any) -> str:
        return self._data_dir


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    is_generator: bool
    takes_input: bool


def describe_method(instance: Any, name: str) -> Optional[Method]:
    fn = getattr(instance, name, None)
    if fn is None:
        return None
    if not callable(fn):
        raise ModelDefinitionError(f"`{name}` of the model class is not a method")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        # Builtins without a signature: assume the usual single input.
        return Method(name, fn, False, False, name not in ("load", "is_healthy"))
    takes_input = _binds(signature, 1)
    if not takes_input and not _binds(signature, 0):
        raise ModelDefinitionError(
            f"`{name}` must take one argument (the input) or none, got {name}{signature}; "
            "a request argument is not supported by Meridian's Python host"
        )
    if name in ("load", "is_healthy") and not _binds(signature, 0):
        raise ModelDefinitionError(f"`{name}` must take no argument besides self, got {name}{signature}")
    if name == "setup_environment" and not takes_input:
        raise ModelDefinitionError(f"`setup_environment` must take the environment, got {name}{signature}")
    is_generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    return Method(name, fn, inspect.iscoroutinefunction(fn), is_generator, takes_input)


def _binds(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*([None] * count))
        return True
    except TypeError:
        return False


@dataclass
class LoadedModel:
    instance: Any
    methods: Dict[str, Method]

    def method(self, name: str) -> Optional[Method]:
        return self.methods.get(name)


def module_name(package: Package) -> str:
    """`model.model` for model/model.py, the name it would have if imported from the package root, so
    `from model.model import X` elsewhere finds this module rather than importing it a second time."""
    stem = os.path.splitext(os.path.basename(package.model_file))[0]
    parts = [p for p in package.model_module_dir.split("/") if p not in ("", ".")] + [stem]
    if all(p.isidentifier() for p in parts):
        return ".".join(parts)
    return stem


def import_model_class(package: Package) -> Any:
    """Imports model.py from its path (the package root is the working directory and on sys.path)."""
    name = module_name(package)
    try:
        spec = importlib.util.spec_from_file_location(name, package.model_file)
        if spec is None or spec.loader is None:
            raise ModelImportError(f"could not import {package.model_file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    except ModelImportError:
        raise
    except SystemExit as err:
        raise ModelImportError(f"importing {_relative(package)} called exit({err.code})") from err
    except Exception as err:
        raise ModelImportError(f"could not import {_relative(package)}: {_last_line(err)}") from err
    cls = getattr(module, package.model_class_name, None)
    if cls is None or not inspect.isclass(cls):
        raise ModelImportError(f"{_relative(package)} has no class {package.model_class_name}")
    return cls


def construct(cls: Any, arguments: Dict[str, Any]) -> Any:
    """Passes only the keyword arguments the constructor names, or all of them with **kwargs (truss)."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        chosen = dict(arguments)
    else:
        chosen = {k: v for k, v in arguments.items() if k in parameters}
    return cls(**chosen)


def describe_model(instance: Any) -> LoadedModel:
    methods: Dict[str, Method] = {}
    for name in METHODS:
        described = describe_method(instance, name)
        if described is not None:
            methods[name] = described
    if "predict" not in methods:
        raise ModelDefinitionError("the model class has no predict method")
    ws = methods.get("websocket")
    if ws is not None and (not ws.is_async or ws.is_generator):
        raise ModelDefinitionError("`websocket` must be an `async def websocket(self, ws)`")
    for name in ("load", "setup_environment", "is_healthy"):
        m = methods.get(name)
        if m is not None and m.is_generator:
            raise ModelDefinitionError(f"`{name}` cannot be a generator")
    return LoadedModel(instance, methods)


def _relative(package: Package) -> str:
    return os.path.relpath(package.model_file, package.root)


def _last_line(err: BaseException) -> str:
    return describe_exception(err)["message"]
