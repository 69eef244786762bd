"""Meridian's Python host for truss packages: serves `model/model.py`'s `Model` class on truss's paths.

    python3 truss_host.py DIR --listen HOST:PORT | --listen unix:/path
        [--model-id ID] [--deployment-id ID] [--environment NAME] [--secrets-dir DIR]
        [--max-queued N] [--max-body-bytes N] [--header-timeout S] [--keep-alive-timeout S]
        [--io-timeout S] [--drain-timeout S] [--max-connections N]

The Python side of `meridian serve-model` (src/runtime/README.md): the same flags, log lines and exit codes
(src/core/runtime-exit-codes.ts). Standard library only, Python 3.8 or newer; it never writes into the
package directory.
"""

from __future__ import annotations

import sys

# Before anything is imported: a package mounted read-only must not even be tried for bytecode.
sys.dont_write_bytecode = True

import os  # noqa: E402

# The host's own modules sit beside it; found even under PYTHONSAFEPATH or `python -P`.
_HERE = os.path.dirname(os.path.realpath(__file__))
if _HERE not in [os.path.realpath(p) for p in sys.path if p]:
    sys.path.insert(0, _HERE)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

from _meridian_host import app as app_module  # noqa: E402
from _meridian_host.http11 import Limits, Server  # noqa: E402
from _meridian_host.log import Logger, describe_exception, line_buffered_stdio, route_python_logging  # noqa: E402
from _meridian_host.package import Package, PackageError, read_package  # noqa: E402
from _meridian_host.truss_model import (  # noqa: E402
    LazyDataResolver,
    LoadedModel,
    Secrets,
    construct,
    describe_model,
    import_model_class,
)

# src/core/runtime-exit-codes.ts
EXIT_STOPPED = 0
EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_LOAD_FAILED = 3
EXIT_INVALID_PACKAGE = 4

_LISTEN = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$")
_MODEL_ID = re.compile(r"^[a-z0-9]{8}$")
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENVIRONMENT = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
MIN_PYTHON = (3, 8)
# src/lib/lifeline.ts LIFELINE_ENV
LIFELINE_ENV = "MERIDIAN_LIFELINE_FD"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_arguments(argv: List[str], env: Dict[str, str]) -> argparse.Namespace:
    parser = _Parser(prog="truss_host.py", add_help=False)
    parser.add_argument("dir")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--model-id")
    parser.add_argument("--deployment-id")
    parser.add_argument("--environment")
    parser.add_argument("--secrets-dir", default="/secrets")
    parser.add_argument("--max-queued", default="64")
    parser.add_argument("--max-body-bytes", default=str(32 * 1024 * 1024))
    parser.add_argument("--max-connections", default="1024")
    parser.add_argument("--header-timeout", default="30")
    parser.add_argument("--keep-alive-timeout", default="5")
    parser.add_argument("--io-timeout", default="60")
    parser.add_argument("--drain-timeout", default="10")
    args = parser.parse_args(argv)

    listen = args.listen
    if listen.startswith("unix:"):
        path = listen[len("unix:") :]
        if not path.startswith("/") or "\x00" in path or len(path.encode()) > 107:
            raise UsageError(f"--listen unix: needs an absolute socket path of at most 107 bytes, got {listen!r}")
        args.unix, args.host, args.port = path, None, None
    else:
        match = _LISTEN.match(listen)
        if match is None or int(match.group(3)) > 65535:
            raise UsageError(f"--listen must be HOST:PORT or unix:/path, got {listen!r}")
        args.unix, args.host, args.port = None, match.group(1) or match.group(2), int(match.group(3))

    # Flags win over MERIDIAN_MODEL_ID, MERIDIAN_DEPLOYMENT_ID and MERIDIAN_ENVIRONMENT.
    args.model_id = _non_empty(args.model_id if args.model_id is not None else env.get("MERIDIAN_MODEL_ID"))
    if args.model_id is not None and not _MODEL_ID.match(args.model_id):
        raise UsageError(f"the model id {args.model_id!r} is not 8 lowercase letters or digits")
    args.deployment_id = _non_empty(
        args.deployment_id if args.deployment_id is not None else env.get("MERIDIAN_DEPLOYMENT_ID")
    )
    if args.deployment_id is not None and not _DEPLOYMENT_ID.match(args.deployment_id):
        raise UsageError(f"the deployment id {args.deployment_id!r} is not valid")
    args.environment = _non_empty(
        args.environment if args.environment is not None else env.get("MERIDIAN_ENVIRONMENT")
    )
    if args.environment is not None and not _ENVIRONMENT.match(args.environment):
        raise UsageError(
            f"the environment name {args.environment!r} is not valid: lowercase letters, digits and inner "
            "hyphens, at most 40 characters"
        )
    for name in ("max_queued", "max_body_bytes", "max_connections"):
        text = getattr(args, name)
        if not text.isdigit():
            raise UsageError(f"--{name.replace('_', '-')} must be a whole number")
        setattr(args, name, int(text))
    if args.max_connections < 1:
        raise UsageError("--max-connections must be at least 1")
    for name in ("header_timeout", "keep_alive_timeout", "io_timeout", "drain_timeout"):
        text = getattr(args, name)
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        setattr(args, name, value)
    return args


def _non_empty(value: Optional[str]) -> Optional[str]:
    return None if value is None or value == "" else value


def model_environment(package: Package, args: argparse.Namespace) -> Dict[str, str]:
    """The package's environment_variables plus the replica's identity (as modelEnvironment() in
    src/runtime/package.ts); set before model.py is imported."""
    variables = dict(package.environment_variables)
    if args.model_id is not None:
        variables["MERIDIAN_MODEL_ID"] = args.model_id
    if args.deployment_id is not None:
        variables["MERIDIAN_DEPLOYMENT_ID"] = args.deployment_id
    if args.environment is not None:
        variables["MERIDIAN_ENVIRONMENT"] = args.environment
    return variables


def prepare_imports(package: Package, host_dir: str) -> None:
    """The package root right after the host's own directory (as truss's server directory is), then the
    bundled packages and external package dirs at the end, as truss appends them."""
    path = [p for p in sys.path if os.path.realpath(p or ".") != package.root]
    position = 1 if path and os.path.realpath(path[0] or ".") == host_dir else 0
    path.insert(position, package.root)
    for extra in [package.packages_dir, *package.external_dirs]:
        if os.path.isdir(extra) and extra not in path:
            path.append(extra)
    sys.path[:] = path


def make_loader(package: Package, secrets: Secrets, environment: Optional[Dict[str, str]]):
    def load(host: app_module.Host) -> LoadedModel:
        cls = import_model_class(package)
        instance = construct(
            cls,
            {
                "config": package.config,
                "data_dir": pathlib.Path(package.data_dir),
                "secrets": secrets,
                "environment": environment,
                "lazy_data_resolver": LazyDataResolver(package.data_dir),
            },
        )
        model = describe_model(instance)
        setup = model.method("setup_environment")
        if setup is not None and environment is not None:
            host.run_sync(setup, environment)
        load_method = model.method("load")
        if load_method is not None:
            host.run_sync(load_method)
        return model

    return load


async def serve(args: argparse.Namespace, package: Package, logger: Logger) -> int:
    loop = asyncio.get_running_loop()
    finished: asyncio.Future = loop.create_future()

    def finish(code: int) -> None:
        if not finished.done():
            finished.set_result(code)

    host = app_module.Host(logger, package.predict_concurrency, args.max_queued, finish)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        io_timeout=args.io_timeout,
        max_connections=args.max_connections,
    )

    def on_fault(err: BaseException) -> None:
        logger.error("request handler failed", err=describe_exception(err))

    server = Server(host.handle, limits, on_fault)
    try:
        if args.unix is not None:
            _remove_stale_socket(args.unix)
            address = await server.listen_unix(args.unix)
        else:
            address = await server.listen_tcp(args.host, args.port)
    except OSError as err:
        listen = args.listen
        logger.error("listen failed", listen=listen, err=describe_exception(err))
        return EXIT_FAULT
    logger.info("listening", address=address)

    draining = {"signal": None}

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if draining["signal"] is not None:
            # A second Ctrl-C means "now"; a repeated SIGTERM does not cut the drain short.
            if signum == signal.SIGINT:
                logger.warn("second interrupt; exiting without draining", signal=name)
                os._exit(EXIT_FAULT)
            return
        draining["signal"] = name
        logger.info("signal received; draining", signal=name)
        finish(EXIT_STOPPED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    environment = None if args.environment is None else {"name": args.environment}
    secrets = Secrets(package.secrets, args.secrets_dir, os.environ)
    logger.info(
        "loading model",
        model_name=package.config.get("model_name"),
        kind="python",
        python=".".join(map(str, sys.version_info[:3])),
        executable=sys.executable,
        ignored_keys=package.ignored_keys,
    )
    host.start_loading(make_loader(package, secrets, environment))

    code = await finished
    if code == EXIT_STOPPED and draining["signal"] is not None:
        host.state = "stopping"
        logger.info("draining", running=host.limiter.running, queued=host.limiter.queued)
        cut = await server.drain(args.drain_timeout)
        if cut:
            logger.warn("drain timed out; closing connections", drain_timeout_s=args.drain_timeout, cut=cut)
        logger.info("stopped")
    else:
        if server.listener is not None:
            server.listener.close()
        for connection in list(server.connections):
            connection.abort()
    if args.unix is not None:
        _remove_socket(args.unix)
    return code


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a previous run is replaced; any other file at the path is not touched."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_socket(path: str) -> None:
    try:
        _remove_stale_socket(path)
    except OSError:
        pass


def watch_lifeline(logger: Logger) -> None:
    """src/lib/lifeline.ts: a plane running replicas without a sandbox passes a pipe it never writes as the
    descriptor MERIDIAN_LIFELINE_FD names; end-of-file on it means the plane is gone, however it died, and
    the host exits as `meridian serve-model` does. The variable is taken out of the environment first, so
    the model and what it starts never see it."""
    value = os.environ.pop(LIFELINE_ENV, None)
    if value is None or not value.isdigit() or int(value) < 3:
        return
    fd = int(value)
    # Not inherited by what the model starts: only this process watches the pipe.
    try:
        os.set_inheritable(fd, False)
    except OSError:
        return

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        logger.error("the plane that started this replica is gone; exiting")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAULT)

    threading.Thread(target=watch, name="meridian-lifeline", daemon=True).start()


def main(argv: List[str]) -> int:
    env = dict(os.environ)
    try:
        args = parse_arguments(argv, env)
    except UsageError as err:
        sys.stderr.write(f"truss_host.py: {err}\n")
        return EXIT_USAGE
    logger = Logger(
        {
            "pid": os.getpid(),
            "model_id": args.model_id,
            "deployment_id": args.deployment_id,
            "environment": args.environment,
        }
    )
    if sys.version_info[:2] < MIN_PYTHON:
        logger.error("unsupported python", error=f"the Python host needs Python 3.8 or newer, not {sys.version.split()[0]}")
        return EXIT_FAULT
    line_buffered_stdio()
    route_python_logging(logger)
    watch_lifeline(logger)
    try:
        package = read_package(args.dir)
    except PackageError as err:
        detail: Dict[str, Any] = {"file": err.file}
        if err.key is not None:
            detail["key"] = err.key
        logger.error("invalid model package", error_code="invalid_model_package", detail=detail, error=str(err))
        return EXIT_INVALID_PACKAGE
    if package.python_version is not None:
        running = f"py{sys.version_info[0]}{sys.version_info[1]}"
        if running != package.python_version:
            logger.warn("python version differs", wanted=package.python_version, running=running)
    for outside in package.outside_dirs:
        logger.warn(
            "external package dir outside the package; not on sys.path",
            dir=outside,
            hint="truss push gathers external_package_dirs into packages/",
        )
    os.environ.update(model_environment(package, args))
    os.chdir(package.root)
    prepare_imports(package, _HERE)
    try:
        return asyncio.run(serve(args, package, logger))
    except Exception as err:  # noqa: BLE001 - a fault of the host itself
        logger.error("host fault", err=describe_exception(err))
        return EXIT_FAULT


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Without waiting for threads the model may have left running (a stuck predict must not hold the exit).
    os._exit(code)
