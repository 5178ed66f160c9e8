"""The Host check and the head size of app/server/guard.py, on the pure functions: each hostile form decided on
purpose (the module's docstring says why)."""

from __future__ import annotations

import pytest

from app.server.guard import HEAD_LIMIT_BYTES, canonical, head_size, host_allowed, host_name, is_loopback

NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize("header", [
    "127.0.0.1", "127.0.0.1:8642", "127.5.6.7", "127.255.255.254:1", "localhost", "localhost:8642",
    "LOCALHOST:8642", "LocalHost", "localhost.", "localhost.:8642", "127.0.0.1.", "[::1]", "[::1]:8642",
    "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]:8642", "localhost:",
])
def test_loopback_forms_pass(header: str) -> None:
    assert host_allowed([header.encode()], NONE)


@pytest.mark.parametrize("header", [
    "127.0.0.1.evil.example",  # the old prefix match let this through
    "localhost.evil.example",
    "evil.example",
    "foo.localhost",  # resolves to loopback in browsers, but only exact names pass
    "127.1",  # inet_aton's short form: a name for ipaddress, and no allowlist holds it
    "0x7f.1",  # inet_aton's hex form
    "0x7f000001",
    "2130706433",  # inet_aton's single number
    "127.000.000.001",  # leading zeros: octal to some resolvers, refused by ipaddress
    "localhost..",  # only one trailing dot is dropped
    "",
    ":8642",
    "localhost:http",
    "localhost:99999",
    "localhost:8642:1",
    "::1",  # an IPv6 literal needs brackets in a Host header
    "[::1",
    "[::1]x",
    "[127.0.0.1]",
    "[::ffff:10.0.0.1]",
    "10.0.0.1",
    "0.0.0.0",
    "[::]",
    "localhost\u00b9",  # a non-ASCII digit is no port
])
def test_other_forms_are_refused(header: str) -> None:
    assert not host_allowed([header.encode("latin-1", "replace")], NONE)


def test_a_missing_host_passes_and_two_hosts_do_not() -> None:
    # HTTP/1.0 clients may omit Host; browsers (the only DNS-rebinding vector) always send it.
    assert host_allowed([], NONE)
    assert not host_allowed([b"127.0.0.1", b"evil.example"], NONE)
    assert not host_allowed([b"localhost", b"localhost"], NONE)


def test_allowed_hosts_are_exact_names_with_the_same_normalization() -> None:
    extra = frozenset({"box.lan", "fe80::1"})
    for header in ("box.lan", "BOX.LAN:8642", "box.lan.", "[fe80::1]:8642", "[FE80:0::1]"):
        assert host_allowed([header.encode()], extra), header
    for header in ("box.lan.evil.example", "evil.box.lan", "box.lan..", "box", "[fe80::2]"):
        assert not host_allowed([header.encode()], extra), header


def test_host_name_normalizes() -> None:
    assert host_name("LOCALHOST.:8642") == "localhost"
    assert host_name("[0:0::1]:80") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("127.1") == "127.1"  # a name, not an address
    assert host_name("") is None and host_name("a:b") is None and host_name("[::1]:") == "::1"
    assert canonical("Box.Lan.") == "box.lan" and canonical("::FFFF:127.0.0.1") == "::ffff:7f00:1"
    assert canonical("") is None and canonical(".") is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("localhost", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.2", False), ("127.1", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example", False), ("example.org", False), ("", False),
])
def test_is_loopback_uses_the_same_parsing(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _scope(path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, object]:
    return {"method": "GET", "path": path, "raw_path": path.encode(), "query_string": query, "headers": headers}


def test_head_size_counts_the_request_line_and_headers_as_sent() -> None:
    raw = b"GET /v1/models?a=1 HTTP/1.1\r\nhost: localhost\r\nx-big: abc\r\n\r\n"
    scope = _scope("/v1/models", b"a=1", [(b"host", b"localhost"), (b"x-big", b"abc")])
    assert head_size(scope) == len(raw)
    assert head_size(_scope("/", b"", [])) == len(b"GET / HTTP/1.1\r\n\r\n")
    at_limit = _scope("/", b"", [(b"x", b"a" * (HEAD_LIMIT_BYTES - 23))])
    assert head_size(at_limit) == HEAD_LIMIT_BYTES
