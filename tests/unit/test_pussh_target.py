"""Host arguments: user, host, port, IPv6 in brackets, ssh:// URLs, and bad input."""
import pytest

from pussh.errors import UsageError
from pussh.target import Target, parse_target


@pytest.mark.parametrize("text, expected", [
    ("prod", Target("prod")),
    ("deploy@prod", Target("prod", "deploy")),
    ("deploy@prod.example.com:2222", Target("prod.example.com", "deploy", 2222)),
    ("10.232.1.2", Target("10.232.1.2")),
    ("root@10.232.1.2:22", Target("10.232.1.2", "root", 22)),
    ("[::1]:2222", Target("::1", None, 2222)),
    ("deploy@[fe80::1%eth0]:22", Target("fe80::1%eth0", "deploy", 22)),
    ("::1", Target("::1")),
    ("2001:db8::5", Target("2001:db8::5")),
    ("ssh://deploy@prod:2200", Target("prod", "deploy", 2200)),
    ("ssh://prod/", Target("prod")),
    ("ssh://deploy@[2001:db8::5]:22", Target("2001:db8::5", "deploy", 22)),
    ("first.last@host", Target("host", "first.last")),
    ("my_alias", Target("my_alias")),
])
def test_parse(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("", "empty target"),
    ("host:0", "invalid port"),
    ("host:65536", "invalid port"),
    ("host:ssh", "invalid port"),
    ("@host", "invalid user"),
    ("-oProxyCommand=evil", "invalid host"),
    ("host name", "invalid host"),
    ("[::1", "missing ']'"),
    ("[zz::1]:22", "invalid IPv6"),
    ("[::1]x", "invalid target"),
    ("ssh://host/path", "no path"),
    ("a;b", "invalid host"),
])
def test_rejects(text, fragment):
    with pytest.raises(UsageError) as err:
        parse_target(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize("target, text", [
    (Target("prod"), "prod"),
    (Target("prod", "deploy", 2222), "deploy@prod:2222"),
    (Target("::1", "root", 22), "root@[::1]:22"),
])
def test_str_round_trips(target, text):
    assert str(target) == text
    assert parse_target(text) == target



@pytest.mark.parametrize("text", ["user\n@host", "ho\nst", "host\n:22"])
def test_rejects_embedded_newline(text):
    with pytest.raises(UsageError):
        parse_target(text)
