"""URLs read the way the connection reads them: parser differentials refused, hosts plain,
and the default download_hosts covering the S3 endpoints presigned URLs really use."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import example, given
from hypothesis import strategies as st
from urllib3.util import parse_url

from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core.downloads import check_url
from scorefetch.core.errors import RefusedError
from scorefetch.core.urls import UrlError, connect_target, host_allowed, plain_host
from scorefetch.encoura.settings import EncouraConfig

S3 = CollegeBoardConfig(username="u", password="p").download_hosts
OBJECT = "/4300_20261121_101544.csv?X-Amz-Signature=abc&X-Amz-Security-Token=tok"


@pytest.mark.parametrize(
    "url",
    [
        # the reported one: urlsplit sees `127.0.0.1\.s3.amazonaws.com`, urllib3 127.0.0.1
        "https://127.0.0.1\\.s3.amazonaws.com" + OBJECT,
        "https://evil.example\\@bucket.s3.amazonaws.com" + OBJECT,  # backslash before userinfo
        "https://bucket.s3.amazonaws.com\\.evil.example" + OBJECT,
        "https://bucket.s3.amazonaws.com:443@evil.example" + OBJECT,  # userinfo
        "https://s3.amazonaws.com@evil.example" + OBJECT,
        "https://user@bucket.s3.amazonaws.com" + OBJECT,
        "https://%62ucket.s3.amazonaws.com" + OBJECT,  # percent-encoded host
        "https://bucket.s3.amazonaws.com%2f@evil.example" + OBJECT,
        "https://bucket.s3.amazonaws.com%00.evil.example" + OBJECT,
        "https://bücket.s3.amazonaws.com" + OBJECT,  # IDNA: the connection uses xn--
        "https://bucket.s3.amazonaws.com\u3002evil.example" + OBJECT,  # ideographic full stop
        "https://ｂucket.s3.amazonaws.com" + OBJECT,  # fullwidth letter, NFKC-folded by idna
        "https://bucket.s3.amazonaws.com./x.csv",  # trailing dot
        "https://bucket.s3.amazonaws.com:8443/x.csv",  # another port
        "https://bucket.s3.amazonaws.com:0x1bb/x.csv",
        "https://bucket.s3.amazonaws.com:65536/x.csv",
        "https://bucket.s3.amazonaws.com: 443/x.csv",
        "https://[::1%25lo]/x.csv",  # IPv6 zone id
        "https://[fe80::1%25eth0]:443/x.csv",
        "https://bucket.s3.amazon\taws.com/x.csv",  # urlsplit drops tabs, urllib3 does not
        "https://bucket.s3.amazon\naws.com/x.csv",
        " https://bucket.s3.amazonaws.com/x.csv",
        "https://bucket.s3.amazonaws.com/x.csv\r\nHost: evil.example",
        "https://bucket.s3.amazonaws.com/x\x7f.csv",
        "https:\\\\bucket.s3.amazonaws.com/x.csv",
        "https:/bucket.s3.amazonaws.com/x.csv",
        "https:///bucket.s3.amazonaws.com/x.csv",
        "//bucket.s3.amazonaws.com/x.csv",
        "https://bucket_1.s3.amazonaws.com/x.csv",
        "https://-bucket.s3.amazonaws.com/x.csv",
        "http://bucket.s3.amazonaws.com/x.csv",  # plain http to a remote host
        "https://ec2-1-2-3-4.compute-1.amazonaws.com/x.csv",  # someone's EC2 host
        "https://s3.amazonaws.com.evil.example/x.csv",
    ],
)
def test_hostile_download_urls_are_refused(url: str) -> None:
    """Every spelling that two parsers read differently, or that is not a plain host, is
    refused before any connection, with the default download_hosts."""
    with pytest.raises(RefusedError) as caught:
        check_url(url, S3)
    assert "Signature" not in str(caught.value) and "tok" not in str(caught.value)


@pytest.mark.parametrize(
    "host",
    ["127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.0.0.01", "1.2.3", "0x7f000001"],
)
def test_numbers_in_disguise_are_not_hosts(host: str) -> None:
    """What inet_aton would read as an address is refused unless it is a dotted quad."""
    with pytest.raises(UrlError):
        plain_host(host)


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket.s3.amazonaws.com/x.csv",
        "https://s3.amazonaws.com/bucket/x.csv",
        "https://bucket.s3.us-east-1.amazonaws.com/x.csv",  # regional, virtual-hosted
        "https://s3.us-east-1.amazonaws.com/bucket/x.csv",  # regional, path-style
        "https://bucket.s3.dualstack.us-east-1.amazonaws.com/x.csv",
        "https://s3.dualstack.eu-west-1.amazonaws.com/bucket/x.csv",
        "https://bucket.s3-us-west-2.amazonaws.com/x.csv",  # the older dash form
        "https://s3-external-1.amazonaws.com/bucket/x.csv",
        "https://nrccua-datalab-export-files-prod.us-east-1.s3.amazonaws.com/x.csv",
        "https://BUCKET.S3.AMAZONAWS.COM:443/x.csv?X-Amz-Signature=abc",
    ],
)
def test_default_download_hosts_cover_real_s3_endpoints(url: str) -> None:
    """Both vendors' defaults accept the S3 endpoints presigned URLs really use."""
    check_url(url, S3)
    check_url(url, EncouraConfig().download_hosts)


def test_loopback_http_with_port_is_allowed() -> None:
    """The sandbox: http on loopback, any port, IPv4 and IPv6."""
    check_url("http://127.0.0.1:8080/b/x.csv?X-Amz-Signature=1", ["127.0.0.1"])
    check_url("http://[::1]:8080/b/x.csv", ["::1"])
    assert connect_target("http://[::1]:8080/x").host == "::1"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("bucket.s3.us-east-1.amazonaws.com", True),
        ("s3.dualstack.us-east-1.amazonaws.com", True),
        ("a.b.s3.amazonaws.com", True),
        ("s3.a.b.amazonaws.com", False),  # a middle `*` is one label
        ("s3-.amazonaws.com", False),
        ("amazonaws.com", False),
        ("evils3.amazonaws.com", False),
    ],
)
def test_label_wildcards(host: str, allowed: bool) -> None:
    """`*.` at the front is one or more labels; elsewhere `*` stays inside one label."""
    assert host_allowed(host, S3) is allowed


@pytest.mark.parametrize(
    "base_url",
    [
        "https://user:secret@scoresdownload.collegeboard.org",
        "https://scoresdownload.collegeboard.org\\@evil.example",
        "http://127.0.0.1\\.evil.example",
        "https://scoresdownload.collegeboard.org.",
        "https://[::1%25lo]/v1",
        "https://scöresdownload.collegeboard.org",
    ],
)
def test_base_url_is_checked_like_a_download_url(base_url: str) -> None:
    """A base_url with userinfo, backslashes, odd hosts is a config error, not a leak."""
    with pytest.raises(ValueError) as caught:
        CollegeBoardConfig(username="u", password="p", base_url=base_url)
    assert "secret" not in str(caught.value)


# Pieces of hostile URLs: every character that ends or splits an authority somewhere.
_PIECES = st.sampled_from(
    ["http", "https", ":", "//", "/", "?", "#", "@", ":443", ":80", "[", "]", "::1", "%25",
     "%2f", "%40", "%3f", "a", "b.c", "bucket.s3.amazonaws.com", "127.0.0.1", "evil.example",
     "=", "&", ";", "..", "%", "%zz", "X-Amz-Signature=ab", "user:pw"]
)  # fmt: skip


def _readings(url: str) -> tuple[object, ...]:
    """What each reader makes of where `url` connects: urlsplit, urllib3, requests."""

    def read(reader: Callable[[], tuple[object, ...]]) -> tuple[object, ...]:
        try:
            return reader()
        except Exception as exc:  # noqa: BLE001 - which readers refuse is part of the reading
            return ("raises", type(exc).__name__)

    def ours() -> tuple[object, ...]:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc, parts.hostname, parts.port)

    def theirs(text: str) -> tuple[object, ...]:
        parts = parse_url(text)
        return (parts.scheme, parts.auth, parts.host, parts.port)

    prepared = read(lambda: (requests.Request("GET", url).prepare().url or "",))
    sent = theirs(str(prepared[0])) if prepared[0] != "raises" else prepared
    return read(ours), read(lambda: theirs(url)), sent


@given(
    scheme=st.sampled_from(["http://", "https://", "HTTPS://", "https:/", "https:", ""]),
    head=st.lists(_PIECES, max_size=8).map("".join),
    tail=st.lists(_PIECES, max_size=8).map("".join),
)
@example(scheme="https://", head="a?@evil.example", tail="")
@example(scheme="https://", head="bucket.s3.amazonaws.com", tail="@evil.example:1")
def test_no_reader_lets_the_query_move_the_host(scheme: str, head: str, tail: str) -> None:
    """connect_target reads a URL without its query and fragment (a presigned URL's bulk):
    for an http(s) URL by urlsplit's reading (the others are refused before any other),
    every reader (urlsplit, urllib3, requests' preparation) reads the same scheme, userinfo,
    host and port — or refuses alike — with or without what follows the first `?`/`#`."""
    for mark in ("?", "#"):
        url = scheme + head + mark + tail
        if not url.lower().startswith(("http:", "https:")):
            continue
        cut = re.split(r"[?#]", url, maxsplit=1)[0]
        assert _readings(url) == _readings(cut), url
