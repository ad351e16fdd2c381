"""Compose projects: the image of every service, named as `docker compose` (v2) names them, read
from the compose file(s) with PyYAML (no compose plugin needed).

- Files: `-f` (repeatable), else `$COMPOSE_FILE` (':'-separated), else the first of compose.yaml,
  compose.yml, docker-compose.yml, docker-compose.yaml in the current directory or the nearest parent
  that has one, with its override file (compose.override.yaml, ...) when present. Later files
  override the keys of earlier ones, service by service.
- Project name: `-p`, else `$COMPOSE_PROJECT_NAME` (environment or the project's `.env`), else the
  top-level `name:`, else the project directory's name normalized (lowercase; only a-z 0-9 _ -
  kept; leading _ and - dropped). A name given explicitly must already be normal.
- Image of a service: its `image:` (interpolated: $VAR, ${VAR}, ${VAR:-default}, ...), else, when it
  only has `build:`, `<project>-<service>`.
- Services with `profiles:` count only when one of them is active (`--profile`, `$COMPOSE_PROFILES`)
  or the service is named explicitly."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = ("compose.override.yml", "compose.override.yaml", "docker-compose.override.yml",
                  "docker-compose.override.yaml")
_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_VAR = re.compile(r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[^}]*)\})")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


@dataclass
class Service:
    name: str
    image: str
    build: bool  # it has a build section (its image is made locally)


@dataclass
class Project:
    name: str
    directory: Path
    files: list[Path]
    services: list[Service] = field(default_factory=list)

    def images(self) -> list[tuple[str, list[Service]]]:
        """Each image once (services may share one), in service order."""
        out: dict[str, list[Service]] = {}
        for s in self.services:
            out.setdefault(s.image, []).append(s)
        return list(out.items())


def normalize_project_name(name: str) -> str:
    """compose-go's NormalizeProjectName: lowercase, keep [a-z0-9_-], strip leading '_' and '-'."""
    return "".join(re.findall(r"[a-z0-9_-]", name.lower())).lstrip("_-")


def default_image(project: str, service: str) -> str:
    return f"{project}-{service.lower()}"


def interpolate(value: str, env: Mapping[str, str], where: str = "") -> str:
    """Compose's variable substitution in one string."""
    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        b = _BRACED.match(m.group("braced"))
        if not b:
            raise UsageError(f"{where}invalid interpolation format: ${{{m.group('braced')}}}")
        name, op, arg = b.group("name"), b.group("op"), b.group("arg") or ""
        val = env.get(name)
        if op is None:
            return val or ""
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op == ":+":
            return arg if val else ""
        if op == "+":
            return arg if val is not None else ""
        if (op == ":?" and not val) or (op == "?" and val is None):
            raise UsageError(f"{where}required variable {name} is missing a value" + (f": {arg}" if arg else ""))
        return val or ""
    return _VAR.sub(sub, value)


def find_files(cwd: Path, environ: Mapping[str, str]) -> list[Path]:
    if environ.get("COMPOSE_FILE"):
        sep = environ.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        return [(cwd / f).resolve() for f in environ["COMPOSE_FILE"].split(sep) if f]
    for d in (cwd, *cwd.parents):
        for name in DEFAULT_FILES:
            if (d / name).is_file():
                files = [d / name]
                override = next((d / o for o in OVERRIDE_FILES if (d / o).is_file()), None)
                return files + ([override] if override else [])
    raise UsageError(f"no compose file: none of {', '.join(DEFAULT_FILES)} in {cwd} or its parents (pass -f FILE)")


def read_env_file(path: Path) -> dict[str, str]:
    """The project's .env: KEY=VALUE lines, # comments, optional quotes."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return out
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _read_yaml(path: Path) -> dict:
    import yaml  # imported only by `pussh compose`
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"no compose file {path}") from None
    except OSError as err:
        raise UsageError(f"cannot read the compose file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}: not valid YAML{at}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a compose file is a mapping (with services:), not a {type(data).__name__}")
    return data


def load(files: Sequence[str | os.PathLike] = (), *, project_name: str | None = None, profiles: Sequence[str] = (),
         services: Sequence[str] = (), cwd: str | os.PathLike | None = None,
         environ: Mapping[str, str] | None = None) -> Project:
    """The project's services and their image names. Raises UsageError (one line) on bad input."""
    base = Path(cwd or os.getcwd()).resolve()
    environ = dict(os.environ if environ is None else environ)
    paths = [(base / f).resolve() for f in files] if files else find_files(base, environ)
    directory = paths[0].parent
    env = {**read_env_file(directory / ".env"), **environ}  # the environment wins over .env

    merged: dict[str, dict] = {}
    name_in_file: str | None = None
    for path in paths:
        data = _read_yaml(path)
        if data.get("name") is not None:
            name_in_file = interpolate(str(data["name"]), env, f"{path}: name: ")
        svcs = data.get("services") or {}
        if not isinstance(svcs, dict):
            raise UsageError(f"{path}: services must be a mapping of service names")
        for svc, body in svcs.items():
            body = body or {}
            if not isinstance(body, dict):
                raise UsageError(f"{path}: service {svc} must be a mapping")
            merged.setdefault(str(svc), {}).update(body)
    if not merged:
        raise UsageError(f"{paths[0]}: no services")

    name, source = None, ""
    for value, source in ((project_name, "-p"), (env.get("COMPOSE_PROJECT_NAME"), "COMPOSE_PROJECT_NAME"),
                          (name_in_file, "name:")):
        if value:
            name = value
            break
    if name is not None:
        if not _VALID_NAME.match(name):
            raise UsageError(f"invalid project name {name!r} ({source}): only lowercase letters, digits, '-' and '_', "
                             "starting with a letter or digit")
    else:
        name = normalize_project_name(directory.name)
        if not name:
            raise UsageError(f"no project name: the directory name {directory.name!r} has no usable characters "
                             "(pass -p NAME or set name: in the compose file)")

    unknown = [s for s in services if s not in merged]
    if unknown:
        raise UsageError(f"no such service: {unknown[0]} (the project has {', '.join(merged)})")
    active = set(profiles) or {p for p in env.get("COMPOSE_PROFILES", "").split(",") if p}
    project = Project(name, directory, paths)
    for svc, body in merged.items():
        if services and svc not in services:
            continue
        svc_profiles = body.get("profiles") or []
        if svc_profiles and not services and not ("*" in active or active & {str(p) for p in svc_profiles}):
            continue
        image = body.get("image")
        if image is not None:
            image = interpolate(str(image), env, f"service {svc}: image: ").strip()
        if not image:
            if "build" not in body:
                raise UsageError(f"service {svc} has neither image: nor build:")
            image = default_image(name, svc)
        project.services.append(Service(svc, image, "build" in body))
    if not project.services:
        raise UsageError(f"{paths[0]}: no service is active (profiles: pass --profile NAME)")
    return project
