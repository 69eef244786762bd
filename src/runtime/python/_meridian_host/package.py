"""A truss package on disk, as the Python host reads it: config.yaml parsed and the keys the host acts on
validated with the same rules as ``src/core/model-config.ts`` (a package the control plane accepted
reads the same here), plus truss's defaults filled in, as truss's own server sees its config."""

from __future__ import annotations

import copy
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from . import yaml_subset

CONFIG_FILE = "config.yaml"
RESERVED_VARIABLE_PREFIX = "MERIDIAN_"
# POSIX names for environment variables (IEEE Std 1003.1, Base Definitions §8.1).
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A secret is a file under the secrets directory, so its name is one safe path segment.
SECRET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYTHON_VERSION = re.compile(r"^py3([0-9]{1,2})$")
MAX_CONFIG_BYTES = 1024 * 1024

# truss's defaults for the keys its server reads (truss-config.schema.json).
DEFAULTS: Dict[str, Any] = {
    "model_metadata": {},
    "environment_variables": {},
    "secrets": {},
    "requirements": [],
    "external_package_dirs": [],
    "model_module_dir": "model",
    "model_class_filename": "model.py",
    "model_class_name": "Model",
    "bundled_packages_dir": "packages",
    "data_dir": "data",
}
DEFAULT_PREDICT_CONCURRENCY = 1


class PackageError(Exception):
    """A package that cannot be served: names the file and, for config.yaml, the key at fault."""

    def __init__(self, file: str, key: Optional[str], message: str) -> None:
        super().__init__(message)
        self.file = file
        self.key = key


@dataclass(frozen=True)
class Package:
    root: str
    config: Dict[str, Any]
    """The whole parsed config, with truss's defaults, as the model's `config` argument."""
    model_file: str
    model_module_dir: str
    model_class_name: str
    packages_dir: str
    external_dirs: List[str]
    """External package dirs inside the package; those outside were gathered into packages/ by truss."""
    outside_dirs: List[str]
    data_dir: str
    environment_variables: Dict[str, str]
    secrets: Dict[str, Optional[str]]
    predict_concurrency: int
    python_version: Optional[str]
    ignored_keys: List[str]


def _fail(key: str, message: str) -> PackageError:
    return PackageError(CONFIG_FILE, key, f"{CONFIG_FILE}: {key} {message}")


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return yaml_subset.js_json(value)


def read_package(directory: str) -> Package:
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise PackageError(root, None, f"{root} is not a model package directory")
    config_path = os.path.join(root, CONFIG_FILE)
    try:
        with open(config_path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        raise PackageError(CONFIG_FILE, None, f"{config_path} is missing") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise PackageError(CONFIG_FILE, "(document)", f"{CONFIG_FILE} is larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(CONFIG_FILE, "(document)", f"{CONFIG_FILE} is not UTF-8 text") from None
    try:
        raw = yaml_subset.parse(text)
    except yaml_subset.YamlError as err:
        raise PackageError(
            CONFIG_FILE, "(document)", f"{CONFIG_FILE} is not valid YAML (line {err.line}): {err.reason}"
        ) from None
    return package_from(root, raw)


def package_from(root: str, raw: Any) -> Package:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PackageError(CONFIG_FILE, "(document)", f"{CONFIG_FILE} must be a mapping of keys, got {describe(raw)}")
    if raw.get("docker_server") is not None:
        raise _fail(
            "docker_server",
            "is set: this package runs its own server (start_command), which `meridian serve-model` hosts, "
            "not the Python host",
        )

    config = copy.deepcopy(raw)
    for key, value in DEFAULTS.items():
        if config.get(key) is None:
            config[key] = copy.deepcopy(value)
    runtime = config.get("runtime")
    if runtime is None:
        runtime = config["runtime"] = {}
    if not isinstance(runtime, dict):
        raise _fail("runtime", f"must be a mapping, got {describe(runtime)}")
    concurrency = runtime.get("predict_concurrency")
    if concurrency is None:
        concurrency = runtime["predict_concurrency"] = DEFAULT_PREDICT_CONCURRENCY
    if isinstance(concurrency, float) and concurrency.is_integer() and abs(concurrency) < 2**53:
        # YAML's 4.0 and 4e0 are JavaScript's integer 4, which the control plane accepted.
        concurrency = runtime["predict_concurrency"] = int(concurrency)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise _fail("runtime.predict_concurrency", f"must be a positive integer, got {describe(concurrency)}")

    if not isinstance(config["model_metadata"], dict):
        raise _fail("model_metadata", f"must be a mapping, got {describe(config['model_metadata'])}")
    name = config.get("model_name")
    if name is not None and (not isinstance(name, str) or name.strip() == ""):
        raise _fail("model_name", f"must be a non-empty string, got {describe(name)}")

    module_dir = _relative_path(config, "model_module_dir")
    filename = _string(config, "model_class_filename")
    if "/" in filename or filename in (".", "..") or not filename.endswith(".py"):
        raise _fail("model_class_filename", f"must be a file name ending in .py, got {describe(filename)}")
    class_name = _string(config, "model_class_name")
    if not _IDENTIFIER.match(class_name):
        raise _fail("model_class_name", f"must be a Python class name, got {describe(class_name)}")
    packages_dir = _relative_path(config, "bundled_packages_dir")
    data_dir = _relative_path(config, "data_dir")

    external = config["external_package_dirs"]
    if not isinstance(external, list) or not all(isinstance(d, str) and d != "" for d in external):
        raise _fail("external_package_dirs", "must be a list of directory paths")
    inside: List[str] = []
    outside: List[str] = []
    for entry in external:
        resolved = os.path.normpath(os.path.join(root, entry))
        (inside if _within(root, resolved) else outside).append(resolved if _within(root, resolved) else entry)

    variables = _environment_variables(config["environment_variables"])
    secrets = _secrets(config["secrets"])
    version = config.get("python_version")
    if version is not None and (not isinstance(version, str) or not _PYTHON_VERSION.match(version)):
        raise _fail("python_version", f"must name a Python 3 version such as py311, got {describe(version)}")

    model_file = os.path.join(root, module_dir, filename)
    if not os.path.isfile(model_file):
        raise PackageError(
            posixpath.join(module_dir, filename), None, f"the package has no {posixpath.join(module_dir, filename)}"
        )
    known = set(DEFAULTS) | {"runtime", "model_name", "python_version", "requirements_file", "docker_server"}
    ignored = sorted(k for k in raw if k not in known)
    return Package(
        root=root,
        config=config,
        model_file=model_file,
        model_module_dir=module_dir,
        model_class_name=class_name,
        packages_dir=os.path.join(root, packages_dir),
        external_dirs=inside,
        outside_dirs=outside,
        data_dir=os.path.join(root, data_dir),
        environment_variables=variables,
        secrets=secrets,
        predict_concurrency=concurrency,
        python_version=version,
        ignored_keys=ignored,
    )


def _string(config: Dict[str, Any], key: str) -> str:
    value = config[key]
    if not isinstance(value, str) or value == "":
        raise _fail(key, f"must be a non-empty string, got {describe(value)}")
    return value


def _relative_path(config: Dict[str, Any], key: str) -> str:
    """A directory inside the package: relative, without `..`; the model must not reach outside it."""
    value = _string(config, key)
    normal = posixpath.normpath(value)
    if value.startswith("/") or normal == ".." or normal.startswith("../") or "\\" in value or "\x00" in value:
        raise _fail(key, f"must be a path inside the package, got {describe(value)}")
    return normal


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _environment_variables(value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise _fail("environment_variables", f"must be a mapping of names to values, got {describe(value)}")
    out: Dict[str, str] = {}
    for name, v in value.items():
        key = f"environment_variables.{name}"
        if not _VARIABLE_NAME.match(name):
            raise _fail(key, "is not a valid environment variable name")
        if name.startswith(RESERVED_VARIABLE_PREFIX):
            raise _fail(key, f"names starting with {RESERVED_VARIABLE_PREFIX} are set by the runtime")
        if isinstance(v, str):
            out[name] = v
        elif isinstance(v, (bool, int, float)):
            # As the JavaScript side writes them (String(value)), so both runtimes see the same text.
            out[name] = yaml_subset.js_string(v)
        else:
            raise _fail(key, f"must be a string, number or boolean, got {describe(v)}")
    return out


def _secrets(value: Any) -> Dict[str, Optional[str]]:
    if not isinstance(value, dict):
        raise _fail("secrets", f"must be a mapping of secret names to null, got {describe(value)}")
    out: Dict[str, Optional[str]] = {}
    for name, default in value.items():
        key = f"secrets.{name}"
        if not SECRET_NAME.match(name):
            raise _fail(key, "is not a valid secret name (letters, digits, '_', '-' and '.', at most 128)")
        if default is not None and not isinstance(default, str):
            raise _fail(key, f"must be null (a placeholder) or a string, got {describe(default)}")
        out[name] = default
    return out
