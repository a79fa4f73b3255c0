"""DPoP (RFC 9449): a key per session and the proofs that bind its tokens to that key.

With DPoP the IdP binds every access and refresh token a session obtains to the session's own key
pair (``cnf.jkt``). A token copied out of a store dump, a log or a proxy is useless without the
private key, which is never sent to the browser, never logged and kept in the session record only
sealed with the BFF's secret key.

The key is made for the login, before any session exists (the authorization request already carries
``dpop_jkt``, the key's thumbprint): it is derived from the BFF's secret and the login's random
``state``, so the browser's login cookie carries no key material, not even sealed, and an anonymous
``/bff/login`` writes nothing to the store. At the callback the same key is derived again, used for
the code exchange and sealed into the new session's record (:meth:`DpopKey.export`), where it stays
for the session's life: it does not depend on the secret key's rotation once the session has it.

Only the elliptic-curve algorithms are offered (ES256 first): a key is a scalar, cheap to derive, to
seal and to sign with on every proxied call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import typing as t
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = [
    "ALGORITHMS",
    "DpopKey",
    "NonceMemory",
    "SessionKeys",
    "access_token_hash",
    "choose_algorithm",
    "htu",
    "jwk_thumbprint",
]


@dataclass(frozen=True)
class _Curve:
    curve: type[ec.EllipticCurve]
    name: str
    hash: type[hashes.HashAlgorithm]
    size: int  # bytes of a coordinate and of each half of the signature


#: The signing algorithms the BFF can make proofs with, in order of preference.
ALGORITHMS: dict[str, _Curve] = {
    "ES256": _Curve(ec.SECP256R1, "P-256", hashes.SHA256, 32),
    "ES384": _Curve(ec.SECP384R1, "P-384", hashes.SHA384, 48),
}


def choose_algorithm(advertised: t.Sequence[str] | None) -> str | None:
    """The algorithm to sign proofs with: ES256 unless the provider lists only others it supports.

    ``advertised`` is discovery's ``dpop_signing_alg_values_supported``; absent, ES256 (the
    algorithm every DPoP server must accept in practice, and Auth0's). ``None`` when the provider
    accepts none of :data:`ALGORITHMS`.
    """
    if not advertised:
        return "ES256"
    for name in ALGORITHMS:
        if name in advertised:
            return name
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(value: t.Mapping[str, t.Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def jwk_thumbprint(jwk: t.Mapping[str, str]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public EC JWK (the ``dpop_jkt`` / ``cnf.jkt`` value)."""
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


def access_token_hash(token: str) -> str:
    """``ath``: the base64url SHA-256 of the access token a resource request carries."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def htu(url: str) -> str:
    """The ``htu`` of a request to ``url``: the URL without its query and fragment."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


class DpopKey:
    """One session's private key, and the proofs made with it.

    Thread-safe: signing keeps no state. ``repr`` names only the thumbprint, so a key that ends up in
    a log line or a traceback shows nothing that signs.
    """

    __slots__ = ("_ath", "_curve", "_header", "_private", "_signature", "algorithm", "thumbprint")

    def __init__(self, algorithm: str, private: ec.EllipticCurvePrivateKey) -> None:
        self.algorithm = algorithm
        self._curve = ALGORITHMS[algorithm]
        self._private = private
        self._signature = ec.ECDSA(self._curve.hash())
        # The last token's ``ath``: a session presents one access token many times in a row.
        self._ath: tuple[str, str] = ("", "")
        numbers = private.public_key().public_numbers()
        size = self._curve.size
        jwk = {
            "kty": "EC",
            "crv": self._curve.name,
            "x": _b64(numbers.x.to_bytes(size, "big")),
            "y": _b64(numbers.y.to_bytes(size, "big")),
        }
        self.thumbprint = jwk_thumbprint(jwk)
        self._header = _json_b64({"typ": "dpop+jwt", "alg": algorithm, "jwk": jwk})

    def __repr__(self) -> str:
        return f"DpopKey({self.algorithm}, jkt={self.thumbprint})"

    @classmethod
    def generate(cls, algorithm: str = "ES256") -> DpopKey:
        return cls(algorithm, ec.generate_private_key(ALGORITHMS[algorithm].curve()))

    @classmethod
    def derive(cls, secret: bytes, label: str, algorithm: str = "ES256") -> DpopKey:
        """The key for ``label`` (a login's ``state``) under ``secret``: the same inputs give the same key.

        The scalar is an HMAC-SHA-512 stream reduced into ``[1, n-1]``; with at least 16 bytes more output
        than the curve order has, the bias is below 2^-128.
        """
        curve = ALGORITHMS[algorithm]
        order = _ORDERS[algorithm]
        stream = b""
        counter = 0
        while len(stream) < curve.size + 16:
            counter += 1
            stream += hmac.new(secret, f"bff/dpop/{counter}/{label}".encode(), hashlib.sha512).digest()
        scalar = int.from_bytes(stream, "big") % (order - 1) + 1
        return cls(algorithm, ec.derive_private_key(scalar, curve.curve()))

    def export(self) -> bytes:
        """The private key as a compact string (algorithm and scalar), for sealing into the record only."""
        scalar = self._private.private_numbers().private_value
        return f"{self.algorithm}:{scalar:x}".encode()

    @classmethod
    def load(cls, exported: bytes) -> DpopKey | None:
        """A key from :meth:`export`; ``None`` for anything else."""
        try:
            algorithm, _, scalar = exported.decode().partition(":")
            curve = ALGORITHMS[algorithm]
            return cls(algorithm, ec.derive_private_key(int(scalar, 16), curve.curve()))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def proof(
        self,
        method: str,
        url: str,
        *,
        now: float,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        """A fresh proof for one request: ``htm``, ``htu`` (no query or fragment), ``iat``, a unique
        ``jti``; ``nonce`` when the server asked for one, ``ath`` when the request carries a token."""
        claims: dict[str, t.Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": htu(url) if "?" in url or "#" in url else url,
            "iat": int(now),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            last, ath = self._ath
            if last != access_token:
                ath = access_token_hash(access_token)
                self._ath = (access_token, ath)
            claims["ath"] = ath
        signing_input = f"{self._header}.{_json_b64(claims)}"
        der = self._private.sign(signing_input.encode(), self._signature)
        r, s = decode_dss_signature(der)
        size = self._curve.size
        return f"{signing_input}.{_b64(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


_ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
}


class NonceMemory:
    """The latest ``DPoP-Nonce`` each server (scheme and authority) gave, for this process.

    Remembered so that a steady state sends the current nonce first time and needs no retry; a
    server that rotates its nonce costs one retry per rotation and process.
    """

    def __init__(self) -> None:
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _server(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def get(self, url: str) -> str | None:
        return self._nonces.get(self._server(url))

    def remember(self, url: str, nonce: str | None) -> None:
        if nonce:
            with self._lock:
                self._nonces[self._server(url)] = nonce


class SessionKeys:
    """Makes, seals and opens the sessions' DPoP keys (see the module docstring).

    ``secret`` is derived from the BFF's secret key for this purpose only. Opened keys are cached by
    their sealed form, so a proxied call neither decrypts nor rebuilds the key; a new key has a new
    sealed form, so the cache can never hand out another session's key.
    """

    _CACHE_SIZE = 4096

    def __init__(self, secret: bytes, seal: t.Callable[[bytes], bytes], open_: t.Callable[[bytes], bytes | None]):
        self._secret = secret
        self._seal = seal
        self._open = open_
        self._opened: dict[bytes, DpopKey] = {}

    def for_login(self, state: str, algorithm: str) -> DpopKey:
        """The key of the login whose ``state`` this is: derived again, identically, at its callback."""
        return DpopKey.derive(self._secret, state, algorithm)

    def seal(self, key: DpopKey) -> bytes:
        return self._seal(key.export())

    def open(self, sealed: bytes | None) -> DpopKey | None:
        """The key a session record holds, or ``None`` (no key: the session uses Bearer tokens)."""
        if sealed is None:
            return None
        key = self._opened.get(sealed)
        if key is None:
            exported = self._open(sealed)
            key = DpopKey.load(exported) if exported is not None else None
            if key is None:
                return None
            if len(self._opened) >= self._CACHE_SIZE:
                self._opened.clear()
            self._opened[sealed] = key
        return key
