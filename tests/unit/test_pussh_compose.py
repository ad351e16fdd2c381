"""Compose name rules: files found as docker compose finds them, the project name (flag, environment,
.env, name:, directory), default image names <project>-<service>, interpolation, profiles, bad input."""
import pytest

from pussh import compose as C
from pussh.errors import UsageError


@pytest.mark.parametrize("raw, normal", [
    ("myapp", "myapp"),
    ("My_App.v2", "my_appv2"),
    ("__-lead", "lead"),
    ("with space", "withspace"),
    ("Ünïcode-Dir", "ncode-dir"),
    ("123", "123"),
    ("...", ""),
])
def test_normalize_project_name(raw, normal):
    assert C.normalize_project_name(raw) == normal


def write(d, name, text):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d / name


def test_directory_name_and_default_image(tmp_path):
    d = tmp_path / "Shop_Front.1"
    write(d, "compose.yaml", "services:\n  Web:\n    build: .\n  db:\n    image: postgres:16\n  api:\n"
                             "    build: ./api\n    image: registry.example/api:2\n")
    p = C.load(cwd=d, environ={})
    assert p.name == "shop_front1"
    assert [(s.name, s.image, s.build) for s in p.services] == [
        ("Web", "shop_front1-web", True), ("db", "postgres:16", False), ("api", "registry.example/api:2", True)]


def test_name_precedence(tmp_path):
    d = tmp_path / "dir"
    write(d, "compose.yaml", "name: fromfile\nservices:\n  web:\n    build: .\n")
    assert C.load(cwd=d, environ={}).services[0].image == "fromfile-web"
    write(d, ".env", "COMPOSE_PROJECT_NAME=fromdotenv\n")
    assert C.load(cwd=d, environ={}).name == "fromdotenv"
    assert C.load(cwd=d, environ={"COMPOSE_PROJECT_NAME": "fromenv"}).name == "fromenv"
    assert C.load(cwd=d, environ={"COMPOSE_PROJECT_NAME": "fromenv"}, project_name="flag").name == "flag"


@pytest.mark.parametrize("bad", ["Upper", "-lead", "has space", "dot.ted"])
def test_explicit_name_must_be_normal(tmp_path, bad):
    d = tmp_path / "dir"
    write(d, "compose.yaml", "services:\n  web:\n    build: .\n")
    with pytest.raises(UsageError, match="invalid project name"):
        C.load(cwd=d, environ={}, project_name=bad)


def test_directory_without_usable_name(tmp_path):
    d = tmp_path / "..."
    write(d, "compose.yaml", "services:\n  web:\n    build: .\n")
    with pytest.raises(UsageError, match="no project name"):
        C.load(cwd=d, environ={})
    assert C.load(cwd=d, environ={}, project_name="ok").services[0].image == "ok-web"


def test_file_discovery_order_parents_and_override(tmp_path):
    d = tmp_path / "proj"
    write(d, "docker-compose.yml", "services:\n  old:\n    build: .\n")
    write(d, "compose.yaml", "services:\n  web:\n    build: .\n")
    write(d, "compose.override.yaml", "services:\n  web:\n    image: web:override\n")
    sub = d / "src" / "deep"
    sub.mkdir(parents=True)
    p = C.load(cwd=sub, environ={})  # found in a parent; the project is named after that directory
    assert p.files == [d / "compose.yaml", d / "compose.override.yaml"]
    assert [(s.name, s.image) for s in p.services] == [("web", "web:override")]
    p = C.load(cwd=tmp_path, environ={"COMPOSE_FILE": "proj/docker-compose.yml"})
    assert [s.image for s in p.services] == ["proj-old"]


def test_several_files_merge_in_order(tmp_path):
    a = write(tmp_path / "p", "a.yml", "services:\n  web:\n    build: .\n  db:\n    image: db:1\n")
    b = write(tmp_path / "p", "b.yml", "services:\n  db:\n    image: db:2\n")
    p = C.load([a, b], environ={})
    assert [s.image for s in p.services] == ["p-web", "db:2"]


def test_interpolation(tmp_path):
    d = tmp_path / "i"
    write(d, "compose.yaml", "services:\n  a:\n    image: app:${TAG:-dev}\n  b:\n    image: $REPO/b:${TAG-x}\n"
                             "  c:\n    image: c:$${literal}\n")
    write(d, ".env", "REPO=ghcr.io/me\nTAG=''\n")
    p = C.load(cwd=d, environ={})
    assert [s.image for s in p.services] == ["app:dev", "ghcr.io/me/b:", "c:${literal}"]
    p = C.load(cwd=d, environ={"TAG": "7"})  # the environment wins over .env
    assert [s.image for s in p.services][:2] == ["app:7", "ghcr.io/me/b:7"]
    assert C.interpolate("${X:?set X}", {"X": "1"}) == "1"
    with pytest.raises(UsageError, match="required variable X"):
        C.interpolate("${X:?set X}", {})
    with pytest.raises(UsageError, match="invalid interpolation"):
        C.interpolate("${1bad}", {})


def test_profiles_and_services(tmp_path):
    d = tmp_path / "pr"
    write(d, "compose.yaml", "services:\n  web:\n    build: .\n  debug:\n    build: .\n    profiles: [dbg]\n")
    assert [s.name for s in C.load(cwd=d, environ={}).services] == ["web"]
    assert [s.name for s in C.load(cwd=d, environ={}, profiles=["dbg"]).services] == ["web", "debug"]
    assert [s.name for s in C.load(cwd=d, environ={"COMPOSE_PROFILES": "dbg"}).services] == ["web", "debug"]
    assert [s.name for s in C.load(cwd=d, environ={}, services=["debug"]).services] == ["debug"]
    with pytest.raises(UsageError, match="no such service: nope"):
        C.load(cwd=d, environ={}, services=["nope"])


def test_shared_image_listed_once(tmp_path):
    d = tmp_path / "s"
    write(d, "compose.yaml", "services:\n  a:\n    image: x:1\n  b:\n    image: x:1\n  c:\n    build: .\n")
    assert [(img, [s.name for s in svcs]) for img, svcs in C.load(cwd=d, environ={}).images()] == [
        ("x:1", ["a", "b"]), ("s-c", ["c"])]


@pytest.mark.parametrize("text, fragment", [
    ("services: [\n", "not valid YAML"),
    ("- a\n- b\n", "is a mapping"),
    ("services:\n  - web\n", "services must be a mapping"),
    ("services:\n  web: 3\n", "service web must be a mapping"),
    ("services:\n  web:\n    ports: [80]\n", "neither image: nor build:"),
    ("services: {}\n", "no services"),
    ("", "no services"),
])
def test_bad_files(tmp_path, text, fragment):
    f = write(tmp_path / "b", "compose.yaml", text)
    with pytest.raises(UsageError, match=fragment):
        C.load([f], environ={})


def test_no_compose_file(tmp_path):
    with pytest.raises(UsageError, match="no compose file"):
        C.load(cwd=tmp_path, environ={})
    with pytest.raises(UsageError, match="no compose file"):
        C.load([tmp_path / "missing.yaml"], environ={})
