"""bench.callback_endpoints' request framing: what its raw HTTP/1.1 parser hands on."""

from __future__ import annotations

from bench.callback_endpoints import split_requests


def _request(i: int, body: bytes = b'{"n": 1}', length: str = "Content-Length") -> bytes:
    return (f"POST /cb HTTP/1.1\r\nHost: 127.0.0.1\r\n{length}: {len(body)}\r\n"
            f"webhook-id: msg_m{i}_1\r\n\r\n").encode() + body


def test_requests_split_at_their_content_length_whatever_the_header_case():
    """Back-to-back requests come out as (head, body) pairs, the header found in any case."""
    data = (_request(1) + _request(2, b"{}", "content-length")
            + _request(3, b"[1]", "CONTENT-LENGTH"))
    requests, rest = split_requests(data)
    assert [body for _, body in requests] == [b'{"n": 1}', b"{}", b"[1]"]
    assert requests[1][0].endswith(b"webhook-id: msg_m2_1")
    assert rest == b""


def test_an_incomplete_request_is_kept_until_its_body_is_in():
    """A request cut anywhere (in its head or its body) stays in the rest, whole."""
    data = _request(1) + _request(2)
    for cut in range(len(_request(1)) + 1, len(data)):
        requests, rest = split_requests(data[:cut])
        assert len(requests) == 1
        again, left = split_requests(rest + data[cut:])
        assert [body for _, body in again] == [b'{"n": 1}'] and left == b""


def test_a_request_without_content_length_has_no_body():
    """No Content-Length: the request ends at its blank line."""
    requests, rest = split_requests(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST")
    assert requests == [(b"GET / HTTP/1.1\r\nHost: x", b"")]
    assert rest == b"POST"
