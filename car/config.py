"""Config v2: RepoConfig and HubConfig, their defaults, lookup and validation."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

from car import __version__
from car.errors import ConfigError
from car.files import dump_yaml, file_stamp, load_yaml, write_atomic
from car.layout import CAR_DIR, CONFIG_CACHE_NAME, CONFIG_NAME, HubLayout, RepoLayout

VERSION = 2
DEFAULT_CODEX_ARGS = ["exec", "--dangerously-bypass-approvals-and-sandbox", "--json", "-"]
# a config changed this recently may change again within the same timestamp tick, unseen by its
# stat: its parse is not cached
RACY_NS = 1_000_000_000
# a field's metadata "max" is the largest value the checker accepts (numbers are >= 0 anyway); "only"
# is (the one value it accepts, why); "least" is (the smallest whole number it accepts, why); "text" is
# (the regex a string must match, what it expects).
# MAX_SECONDS: far above any sane wait, far below what Event.wait() and the clock arithmetic accept
# (1e10 overflows them after the first run)
MAX_SECONDS = 366 * 24 * 3600
MAX_PORT = 65535
# every string setting ends up in a path, an argv, a socket address or a git message, and the OS takes
# none with a NUL in it (Python raises ValueError: embedded null byte, on every command)
NO_NUL = "expected text without a NUL character (\\0)"
# a field's metadata "text" is (a regex its whole value must match, what it expects): such a value is a
# string in the file, never a number made one (`base_path: 5` is a slip, not "/5").
# BASE_PATH: the URL prefixes the server takes (car.web.server.normalize_base_path applies this rule to
# --base-path too): checked at load, naming the key, rather than as a `--base-path` error at the start
BASE_PATH = (r"\s*/*(?:[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*)?/*\s*", "a URL path such as /car")
# git refuses an empty message (`Aborting commit due to empty commit message`), run after run
COMMIT_MESSAGE = (r"(?s).*\S.*", "a commit message that is not empty, such as '[codex] run #{run_id}'")
# `mode: hub` as a config's text says it, for a file that YAML cannot read (or that fails a check)
HUB_MODE_LINE = re.compile(r"^mode:[ \t]*['\"]?hub\b", re.MULTILINE)


@dataclass(frozen=True)
class DocsConfig:
    todo: str = f"{CAR_DIR}/TODO.md"
    progress: str = f"{CAR_DIR}/PROGRESS.md"
    opinions: str = f"{CAR_DIR}/OPINIONS.md"
    spec: str = f"{CAR_DIR}/SPEC.md"


@dataclass(frozen=True)
class CodexConfig:
    binary: str = "codex"
    args: List[str] = field(default_factory=lambda: list(DEFAULT_CODEX_ARGS))


@dataclass(frozen=True)
class PromptConfig:
    prev_run_max_chars: int = 6000
    template: str = f"{CAR_DIR}/prompt.txt"


@dataclass(frozen=True)
class RunnerConfig:
    sleep_seconds: float = field(default=5, metadata={"max": MAX_SECONDS})
    # 0 turns the other limits off, so a 0 here is as likely meant "no limit" as "no run": neither is guessed
    stop_after_runs: Optional[int] = field(default=None, metadata={"least": (1, "or null for no limit")})
    max_wallclock_seconds: Optional[float] = field(default=None, metadata={"max": MAX_SECONDS})
    kill_grace_seconds: float = field(default=10, metadata={"max": MAX_SECONDS})
    run_timeout_seconds: Optional[float] = field(default=14400, metadata={"max": MAX_SECONDS})
    idle_timeout_seconds: Optional[float] = field(default=1800, metadata={"max": MAX_SECONDS})
    no_progress_runs: Optional[int] = 3


@dataclass(frozen=True)
class GitConfig:
    auto_commit: bool = False
    commit_message_template: str = field(default="[codex] run #{run_id}", metadata={"text": COMMIT_MESSAGE})


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=4173, metadata={"max": MAX_PORT})
    base_path: str = field(default="", metadata={"text": BASE_PATH})


@dataclass(frozen=True)
class LogConfig:
    path: str = f"{CAR_DIR}/codex-autorunner.log"
    max_bytes: int = 10_000_000
    backup_count: int = field(default=3, metadata={"max": 1000})  # each backup is a file looked for


@dataclass(frozen=True)
class HubSection:
    repos_root: str = "."
    manifest: str = f"{CAR_DIR}/manifest.yml"
    # the spec fixes it at 1; another value, taken and ignored, would leave a user looking for repos
    discover_depth: int = field(default=1, metadata={"only": (1, "car finds repos one level below repos_root")})
    auto_init_missing: bool = True
    log: LogConfig = field(default_factory=lambda: LogConfig(path=f"{CAR_DIR}/codex-autorunner-hub.log"))


@dataclass(frozen=True)
class RepoConfig:
    """A repo's config; `root` is the directory holding .codex-autorunner/."""

    root: Path
    docs: DocsConfig = field(default_factory=DocsConfig)
    codex: CodexConfig = field(default_factory=CodexConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    git: GitConfig = field(default_factory=GitConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    warnings: Tuple[str, ...] = ()

    def resolve(self, relative: str) -> Path:
        return (self.root / relative).resolve() if not Path(relative).is_absolute() else Path(relative)

    def doc_path(self, kind: str) -> Path:
        return self.resolve(getattr(self.docs, kind))

    @property
    def log_path(self) -> Path:
        return self.resolve(self.log.path)

    @property
    def template_path(self) -> Path:
        return self.resolve(self.prompt.template)

    def named_files(self) -> List[Tuple[Path, str]]:
        """The files this config names or car keeps, each with what it is: none of them may be the log."""
        docs = [(self.doc_path(f.name), f"docs.{f.name}'s file") for f in dataclasses.fields(self.docs)]
        return [*_layout_files(RepoLayout(self.root)), *docs, (self.template_path, "prompt.template's file")]


@dataclass(frozen=True)
class HubConfig:
    root: Path
    hub: HubSection = field(default_factory=HubSection)
    server: ServerConfig = field(default_factory=ServerConfig)
    warnings: Tuple[str, ...] = ()

    @property
    def repos_root(self) -> Path:
        return (self.root / self.hub.repos_root).resolve()

    @property
    def manifest_path(self) -> Path:
        return (self.root / self.hub.manifest).resolve()

    @property
    def log_path(self) -> Path:
        return (self.root / self.hub.log.path).resolve()

    def named_files(self) -> List[Tuple[Path, str]]:
        return [*_layout_files(HubLayout(self.root)), (self.manifest_path, "hub.manifest's file")]


def _layout_files(layout: Union[RepoLayout, HubLayout]) -> List[Tuple[Path, str]]:
    return [(path, f"car's {path.name}") for path in layout.own_files()]


AnyConfig = Union[RepoConfig, HubConfig]
_SECTIONS = {"repo": RepoConfig, "hub": HubConfig}
_META_FIELDS = {"root", "warnings"}


def find_config(start: Path) -> Optional[Path]:
    """The nearest .codex-autorunner/config.yml walking up from `start`."""
    start = start.resolve()
    for d in (start, *start.parents):
        candidate = d / CAR_DIR / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def default_data(mode: str) -> dict[str, Any]:
    """The full default config of a mode as plain YAML-ready data."""
    cls = _SECTIONS[mode]
    data: dict[str, Any] = {"version": VERSION, "mode": mode}
    for f in dataclasses.fields(cls):
        if f.name not in _META_FIELDS:
            data[f.name] = dataclasses.asdict(f.default_factory())  # type: ignore[misc]
    return data


@functools.lru_cache(maxsize=None)
def default_text(mode: str) -> str:
    """The default config of a mode as YAML text (what init writes), built once per process."""
    return dump_yaml(default_data(mode))


def load_config(path: Path, *, clock_ns: Callable[[], int] = time.time_ns) -> AnyConfig:
    """Read and validate one config.yml; every problem is a ConfigError naming file and key.

    The parsed YAML is kept next to it (.config.json): a command that only reads the config then
    never loads PyYAML (pure Python, ~20 ms to import and parse). Validation runs every time."""
    stamp = file_stamp(path)  # before the read: an edit during it changes the stamp, so it is never cached
    cached = _read_cache(path, stamp)
    config: Optional[AnyConfig] = None
    if cached is not None:
        try:
            config = parse_config(cached["data"], path)
        except ConfigError:
            pass  # parse the YAML after all: then the error names the line
    if config is None:
        data, node = _parse_yaml(path)
        config = parse_config(data, path, node)
        if stamp is not None and clock_ns() - stamp[-1] >= RACY_NS:  # stamp[-1]: the file's ctime
            _write_cache(path, stamp, data)
    return _check_log_path(config, path)


def _check_log_path(config: AnyConfig, path: Path) -> AnyConfig:
    """A log path that can never be a file (a directory, or under a file), or that names a file the
    config or car already uses (a doc, state.json), is a one-line error here, where it is named, and
    the hub lists the repo as error; loading a config creates nothing (the logger makes a missing
    directory, and names the log if it cannot)."""
    log_path, key = config.log_path, "hub.log.path" if isinstance(config, HubConfig) else "log.path"
    if log_path.is_dir():
        raise ConfigError(f"{path}: {key}: {log_path} is a directory; set {key} to a file in it")
    real = os.path.realpath(log_path)  # a symlink or a `..` can name the same file
    what = next((name for named, name in config.named_files() if os.path.realpath(named) == real), None)
    if what is not None:  # the log would append to it, and rotation rename it away
        raise ConfigError(f"{path}: {key}: {log_path} is {what}, which the log would write into; "
                          f"set {key} to a file of its own")
    above = next((p for p in log_path.parents if p.exists()), None)  # the nearest part that is there
    if above is not None and not above.is_dir():
        raise ConfigError(f"{path}: {key}: cannot create the directory of {log_path} ({above} is a file); "
                          f"set {key} to a path in a writable directory")
    return config


def read_config_text(path: Path) -> str:
    """A config file's text; unreadable or not UTF-8 is a ConfigError naming the file and the byte."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise unreadable_config(path, exc) from exc
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save the file as UTF-8") from None


def unreadable_config(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"{path}: cannot read config ({exc.strerror}); make it a readable file (check its "
                       "directory's permissions too), then run again")


def says_hub_mode(path: Path) -> Optional[bool]:
    """Whether a config file's text sets mode: hub, read without YAML or checks; None if unreadable."""
    try:
        return HUB_MODE_LINE.search(path.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return None


def _parse_yaml(path: Path) -> Tuple[Any, Any]:
    """The file's data and its YAML node tree (for line numbers; None for an untouched file)."""
    text = read_config_text(path)
    for mode in _SECTIONS:
        if text == default_text(mode):  # an untouched config: skip the (pure-Python, slow) YAML parse
            return {"mode": mode}, None
    import yaml  # here, not at the top: a cached config never loads it

    try:
        return load_yaml(text, path, ConfigError)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        # `car init --force` would make a hub's root a repo: the mode is read from the text, as YAML failed
        hub = HUB_MODE_LINE.search(text) is not None
        fix = ("fix the file, or move it away and run `car hub init` for a new one" if hub
               else "fix the file or run `car init --force`")
        raise ConfigError(f"{where}: invalid YAML: {problem}; {fix}") from exc


def _read_cache(path: Path, stamp: Optional[List[int]]) -> Optional[dict]:
    """The cached parse if this car made it from the file as it is now; None if stale or unreadable."""
    if stamp is None:
        return None
    try:
        cached = json.loads((path.parent / CONFIG_CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("car") != __version__ or cached.get("stamp") != stamp \
            or "data" not in cached:
        return None
    return cached


def _write_cache(path: Path, stamp: List[int], data: Any) -> None:
    try:
        text = json.dumps({"car": __version__, "stamp": stamp, "data": data}, allow_nan=False)
    except (TypeError, ValueError):  # YAML-only values (a date): such a config is parsed every time
        return
    if json.loads(text)["data"] != data:  # nor one JSON would change (a number as a key)
        return
    try:
        write_atomic(path.parent / CONFIG_CACHE_NAME, text)
    except OSError:
        pass  # a read-only repo: the config is parsed every time


def parse_config(data: Any, path: Path, node: Any = None) -> AnyConfig:
    checker = _Checker(path, node)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise checker.error([], "expected a mapping of settings", data)
    version = data.get("version", VERSION)
    if version != VERSION:
        raise checker.error(["version"], f"expected {VERSION} (this car reads config v{VERSION} only)", version)
    mode = data.get("mode", "repo")
    if mode not in _SECTIONS:
        raise checker.error(["mode"], "expected 'repo' or 'hub'", mode)
    root = path.resolve().parent.parent
    body = {k: v for k, v in data.items() if k not in ("version", "mode")}
    values = checker.build(_SECTIONS[mode], body, [], skip=_META_FIELDS)
    return _SECTIONS[mode](root=root, warnings=tuple(checker.warnings), **values)


class _Checker:
    """Builds dataclasses from YAML data, checking each key's type against its field."""

    def __init__(self, path: Path, node: Any) -> None:
        self.path, self.node, self.warnings = path, node, []  # type: ignore[var-annotated]

    def build(self, cls: type, data: dict, keys: list[str], skip: set[str] = frozenset()) -> dict:  # type: ignore[assignment]
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)} - set(skip)
        for key in data:
            if key not in names:
                self.warnings.append(f"{self.path}: unknown key {'.'.join([*keys, str(key)])} (kept, not used)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for name in names:
            if name in data:
                factory = fields[name].default_factory
                default = factory() if factory is not dataclasses.MISSING else None  # type: ignore[misc]
                out[name] = self.convert(hints[name], data[name], [*keys, name], default, fields[name].metadata)
        return out

    def convert(self, hint: Any, value: Any, keys: list[str], default: Any = None,
                meta: Mapping[str, Any] = MappingProxyType({})) -> Any:
        """`value` checked against the field's type and its metadata (see "max" above), or a ConfigError."""
        most, only, least, text = (meta.get(k) for k in ("max", "only", "least", "text"))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is Union:
            if value is None and type(None) in args:
                return None
            hint = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise self.error(keys, "expected a mapping", value)
            # merge into the field's own default, so a partial hub.log keeps the hub log's path
            return dataclasses.replace(default, **self.build(hint, value, keys))
        if origin in (list, List):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.error(keys, "expected a list of strings", value)
            if any("\0" in v for v in value):
                raise self.error(keys, NO_NUL, value)
            return list(value)
        if hint is bool:
            if not isinstance(value, bool):
                raise self.error(keys, "expected true or false", value)
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.error(keys, "expected a whole number >= 0", value)
            if only is not None and value != only[0]:
                raise self.error(keys, f"expected {only[0]} ({only[1]})", value)
            if least is not None and value < least[0]:
                raise self.error(keys, f"expected a whole number >= {least[0]} ({least[1]})", value)
            if most is not None and value > most:
                raise self.error(keys, f"expected a whole number from 0 to {most}", value)
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise self.error(keys, "expected a number >= 0", value)
            # .inf/.nan are YAML floats: a nan wait never ends, an infinite one overflows the clock
            if (isinstance(value, float) and not math.isfinite(value)) or (most is not None and value > most):
                raise self.error(keys, f"expected a number from 0 to {most}" if most is not None
                                 else "expected a finite number >= 0", value)
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.error(keys, "expected a string", value)
            if "\0" in str(value):
                raise self.error(keys, NO_NUL, value)
            if text is not None and not (isinstance(value, str) and re.fullmatch(text[0], value)):
                raise self.error(keys, f"expected {text[1]}", value)
            return str(value)
        raise AssertionError(f"unhandled config type {hint!r}")

    def error(self, keys: list[str], expected: str, value: Any) -> ConfigError:
        line = self._line(keys)
        where = f"{self.path}:{line}" if line else str(self.path)
        key = ".".join(keys) or "(top level)"
        shown = "null" if value is None else repr(value)
        return ConfigError(f"{where}: {key}: {expected}, got {shown}")

    def _line(self, keys: list[str]) -> Optional[int]:
        import yaml  # loaded already when there is a node to look in

        node = self.node
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                return None
            # the last one: after a `<<:` merge the explicit key follows the merged ones, and wins
            node = next((v for k, v in reversed(node.value) if k.value == key), None)
        return None if node is None or not keys else node.start_mark.line + 1
