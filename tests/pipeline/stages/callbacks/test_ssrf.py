"""The SSRF guard: which callback URLs and which addresses are refused, and why."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.stages.callbacks.ssrf import (
    MAX_URL_LENGTH,
    CallbackURL,
    RefusedURL,
    check_url,
    refused_address,
)

LOOPBACK_V4 = (ipaddress.ip_network("127.0.0.0/8"),)


def refused(address: str, allowed: tuple = ()) -> str | None:
    return refused_address(ipaddress.ip_address(address), allowed)


def refusal(url: str, *, allow_http: bool = False) -> str:
    with pytest.raises(RefusedURL) as info:
        check_url(url, allow_http=allow_http)
    return info.value.reason


# --- addresses ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "reason"), [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private network (10.0.0.0/8)"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("169.254.1.1", "link-local"),
    ("172.16.0.1", "private network (172.16.0.0/12)"),
    ("172.31.255.255", "private network (172.16.0.0/12)"),
    ("192.0.0.8", "reserved (IETF protocol assignments)"),
    ("192.0.2.10", "documentation"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("192.168.1.1", "private network (192.168.0.0/16)"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.1", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.7", "documentation"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::a00:1", "IPv4-compatible address (deprecated)"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("100::1", "discard-only"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "ORCHID"),
    ("2001:20::1", "ORCHIDv2"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("5f00::1", "SRv6"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("4000::1", "outside IPv6 global unicast"),
])
def test_every_internal_range_is_refused_with_its_reason(address: str, reason: str) -> None:
    """A representative address of each refused range is refused, naming the range."""
    why = refused(address)
    assert why is not None and reason in why


@pytest.mark.parametrize(("address", "inner", "reason"), [
    ("::ffff:127.0.0.1", "127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "10.0.0.1", "private network"),
    ("::ffff:169.254.169.254", "169.254.169.254", "cloud metadata"),
    ("64:ff9b::a00:1", "10.0.0.1", "private network"),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", "127.0.0.1", "loopback"),
    ("2002:a00:1::1", "10.0.0.1", "private network"),  # 6to4 of 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1", "private network"),  # Teredo
])
def test_addresses_embedding_ipv4_are_judged_by_that_ipv4(address: str, inner: str,
                                                          reason: str) -> None:
    """IPv4-mapped, NAT64, 6to4 and Teredo addresses are refused for their embedded address."""
    why = refused(address)
    assert why is not None and inner in why and reason in why


@pytest.mark.parametrize("address", ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_addresses_embedding_a_public_ipv4_pass(address: str) -> None:
    """A translation prefix in front of a public IPv4 address is not refused for the prefix."""
    assert refused(address) is None


@pytest.mark.parametrize(("address", "service"), [
    ("169.254.169.254", "instance metadata"),
    ("169.254.170.2", "ECS task metadata"),
    ("fd00:ec2::254", "instance metadata over IPv6"),
    ("100.100.100.200", "Alibaba"),
])
def test_metadata_endpoints_have_their_own_reason(address: str, service: str) -> None:
    """Metadata endpoints are refused as such, not only as link-local or private addresses."""
    why = refused(address)
    assert why is not None and why.startswith("cloud metadata endpoint") and service in why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111",
                                     "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    """Ordinary public unicast addresses are not refused."""
    assert refused(address) is None


def test_allow_list_lets_its_networks_through() -> None:
    """An address inside an allowed network passes; one outside it is still refused."""
    assert refused("127.0.0.1", LOOPBACK_V4) is None
    assert refused("127.8.9.10", LOOPBACK_V4) is None
    assert refused("10.0.0.1", LOOPBACK_V4) is not None
    assert refused("::1", LOOPBACK_V4) is not None


def test_metadata_endpoints_are_refused_even_when_allowed() -> None:
    """No allow-list opens the credentials endpoints, not even their whole networks."""
    link_local = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert "metadata" in (refused("169.254.169.254", link_local) or "")
    assert "metadata" in (refused("fd00:ec2::254", link_local) or "")
    assert refused("169.254.1.1", link_local) is None


def test_allow_list_applies_to_the_embedded_ipv4() -> None:
    """::ffff:127.0.0.1 passes when 127.0.0.0/8 is allowed (it is the same destination)."""
    assert refused("::ffff:127.0.0.1", LOOPBACK_V4) is None
    assert refused("::ffff:10.0.0.1", LOOPBACK_V4) is not None


# --- URLs ---------------------------------------------------------------------------------------

def test_https_url_is_normalised() -> None:
    """Scheme and host lower-cased, default port filled in, fragment dropped."""
    url = check_url("HTTPS://Hooks.Customer.TEST/status/cb?id=7&x=a%20b#frag", allow_http=False)
    assert url == CallbackURL("https", "hooks.customer.test", 443, "/status/cb?id=7&x=a%20b")
    assert url.origin == "https://hooks.customer.test"
    assert url.authority == "hooks.customer.test"


def test_explicit_port_and_empty_path() -> None:
    """A non-default port is kept (and shown in the authority); an empty path becomes "/"."""
    url = check_url("https://hooks.customer.test:8443", allow_http=False)
    assert (url.port, url.target) == (8443, "/")
    assert url.origin == "https://hooks.customer.test:8443"


def test_idna_host_is_encoded() -> None:
    """An internationalised host becomes its ASCII (punycode) form, per UTS 46."""
    url = check_url("https://Bücher.Example/cb", allow_http=False)
    assert url.host == "xn--bcher-kva.example"


def test_non_ascii_path_is_percent_encoded() -> None:
    """The request target is ASCII: other characters are percent-encoded as UTF-8."""
    assert check_url("https://a.example/é?q=ü", allow_http=False).target == "/%C3%A9?q=%C3%BC"


def test_ipv6_literal_loses_its_brackets() -> None:
    """An IPv6 host is stored bare (for address checks) and bracketed in the authority."""
    url = check_url("https://[2606:4700:0::1111]:8443/cb", allow_http=False)
    assert url.host == "2606:4700::1111"
    assert url.authority == "[2606:4700::1111]:8443"


def test_http_only_when_allowed() -> None:
    """http:// is refused unless allow_http; then its default port is 80."""
    assert "scheme 'http' not allowed" in refusal("http://hooks.customer.test/cb")
    assert check_url("http://hooks.customer.test/cb", allow_http=True).port == 80


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://hooks.customer.test/x", "scheme 'ftp' not allowed"),
    ("file:///etc/passwd", "scheme 'file' not allowed"),
    ("gopher://hooks.customer.test/", "scheme 'gopher' not allowed"),
    ("//hooks.customer.test/cb", "scheme '(none)' not allowed"),
    ("https://user:pw@hooks.customer.test/", "credentials"),
    ("https://hooks.customer.test@10.0.0.1/", "credentials"),
    ("https:///cb", "no host"),
    ("https://:443/cb", "no host"),
    ("https://hooks.customer.test:0/", "bad port"),
    ("https://hooks.customer.test:65536/", "bad port"),
    ("https://hooks.customer.test:http/", "bad port"),
    ("https://hooks.customer.test:+443/", "bad port"),
    ("https://hooks.customer.test /cb", "whitespace"),
    ("https://hooks.customer.test/c\tb", "whitespace"),
    ("https://hooks.customer.test/cb\r\nX-Injected: 1", "whitespace"),
    ("https://hooks.customer.test/\x00", "control"),
    ("https://hooks\u200b.customer.test/", "invisible"),
    ("https://evil.test\\@hooks.customer.test/", "backslash"),
    ("https://[::1/cb", "malformed URL"),
    ("https://[127.0.0.1]/", "malformed URL"),
    ("https://[v1.zz]/", "not an IPv6 address in brackets"),
    ("https://[fe80::1%25eth0]/", "zone"),
    ("https://2130706433/", "numeric host"),
    ("https://0x7f.0.0.1/", "numeric host"),
    ("https://127.1/", "numeric host"),
    ("https://010.0.0.1/", "numeric host"),
    ("https://%31%32%37.0.0.1/", "invalid host name"),
    ("https://a..b.example/", "invalid host name"),
    ("https://\u2488.example/", "internationalised"),  # U+2488 DIGIT ONE FULL STOP
])
def test_url_refusals_say_why(url: str, reason: str) -> None:
    """Each kind of refused URL raises RefusedURL with a reason naming the problem."""
    assert reason in refusal(url)


def test_overlong_url_is_refused() -> None:
    """A URL longer than 2,048 characters is refused; one of exactly 2,048 is accepted."""
    base = "https://hooks.customer.test/"
    assert check_url(base + "a" * (MAX_URL_LENGTH - len(base)), allow_http=False)
    assert "longer than 2,048" in refusal(base + "a" * (MAX_URL_LENGTH - len(base) + 1))


def test_refused_url_is_a_telex_error() -> None:
    """Callers can catch it with the rest of the TelexError family."""
    from pipeline.errors import TelexError

    assert issubclass(RefusedURL, TelexError)
