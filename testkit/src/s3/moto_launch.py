# Starts moto's server with one correction that makes its signature check behave
# like AWS's.
#
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

from moto.server import main  # noqa: E402

sys.exit(main())
