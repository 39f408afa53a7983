# Starts moto's server with two corrections: its signature check behaves like AWS's,
# and a byte-range GET reads only the requested range.
#
# 1. Signatures.
# AWS builds the canonical query string of a SigV4 request from the *decoded*
# parameters, re-encoded per RFC 3986, so a client may send `prefix=a/b/` (slash
# unencoded) while signing `prefix=a%2Fb%2F`; opendal and most SDKs do exactly that.
# moto hands the raw query string to botocore, which uses it verbatim, so every
# ListObjectsV2 with a nested prefix or a delimiter fails with SignatureDoesNotMatch
# once credentials are enforced. Normalising the query before moto recomputes the
# signature restores AWS's behaviour; nothing else changes.
import sys
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from moto.iam import access_control


def _canonical(component):
    return quote(unquote(component), safe="-_.~")


_original = access_control.IAMRequestBase._create_aws_request


def _create_aws_request(self):
    request = _original(self)
    parts = urlsplit(request.url)
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            pairs.append(_canonical(key) + "=" + _canonical(value))
        request.url = urlunsplit(parts._replace(query="&".join(pairs)))
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request

# 2. Range reads. moto answers every GET by copying the whole object out of its buffer
# (`FakeKey.value`, under the key's lock) and slicing the requested range from the copy,
# so each 4 MiB range of a 1 GiB object costs a 1 GiB read: a shoal worker reading a
# large object block by block would measure moto, not itself. For a GET with one simple
# `bytes=A-B` range, the value is read straight from the buffer at that range and the
# 206 response is built exactly as moto builds it (same headers, same Content-Range).
# Suffix ranges, multiple ranges and HEAD keep moto's own path.
import re  # noqa: E402
import threading  # noqa: E402

from moto.s3 import models as s3_models  # noqa: E402
from moto.s3 import responses as s3_responses  # noqa: E402

_tls = threading.local()
_simple_range = re.compile(r"^bytes=(\d+)-(\d*)$")
_value_prop = s3_models.FakeKey.value


def _value_get(key):
    want = getattr(_tls, "range", None)
    if want is None:
        return _value_prop.fget(key)
    begin, end = want
    size = key.size
    if begin > size - 1:
        _tls.range = None
        return _value_prop.fget(key)
    end = size - 1 if end is None else min(end, size - 1)
    with key.lock:
        key._value_buffer.seek(begin)
        data = key._value_buffer.read(end - begin + 1)
    _tls.served = (begin, end, size)
    return data


s3_models.FakeKey.value = property(_value_get, _value_prop.fset)

_orig_key_response = s3_responses.S3Response.key_response
_orig_handle_range = s3_responses.S3Response._handle_range_header


def _key_response(self, request, full_url, headers):
    m = None
    if request.method == "GET":
        m = _simple_range.match(request.headers.get("range", "") or "")
    if m is None:
        return _orig_key_response(self, request, full_url, headers)
    _tls.range = (int(m.group(1)), int(m.group(2)) if m.group(2) else None)
    _tls.served = None
    try:
        return _orig_key_response(self, request, full_url, headers)
    finally:
        _tls.range = None
        _tls.served = None


def _handle_range_header(self, request, response_headers, response_content):
    served = getattr(_tls, "served", None)
    if served is None:
        return _orig_handle_range(self, request, response_headers, response_content)
    begin, end, size = served
    if begin or end < size - 1:
        for key in [h for h in response_headers if h.startswith("x-amz-checksum-")]:
            del response_headers[key]
    response_headers["content-range"] = f"bytes {begin}-{end}/{size}"
    response_headers["content-length"] = str(len(response_content))
    return 206, response_headers, response_content


s3_responses.S3Response.key_response = _key_response
s3_responses.S3Response._handle_range_header = _handle_range_header

from moto.server import main  # noqa: E402

sys.exit(main())
