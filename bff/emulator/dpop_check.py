"""Checking DPoP proofs (RFC 9449) as Auth0 does, for the emulator's token endpoint and its APIs.

Security first: a DPoP-bound token is only as safe as the check of its proofs, so this module trusts nothing
of a proof before its signature verifies with the public key the proof itself carries, accepts asymmetric
algorithms only (never ``none``, never a MAC, whatever the configuration says), refuses a ``jwk`` with
private members, and remembers every ``jti`` it accepted for as long as the proof could pass the ``iat``
check, so a copied proof is refused the second time. It verifies with ``cryptography`` directly and shares
no code with the BFF's proof builder (:mod:`bff.dpop`): a bug on one side cannot hide the same bug on the
other.

What is checked (demonstrating-proof-of-possession-dpop.md, Steps 2, 4 and 5; RFC 9449 section 4.3):

- exactly one ``DPoP`` header, holding one compact JWS;
- header: ``typ`` ``dpop+jwt``, ``alg`` one of the configured algorithms, ``jwk`` a public key of the kind
  ``alg`` needs; the signature verifies with that key;
- claims: ``htm`` the request's method, ``htu`` the request's URL as the issuer publishes it (scheme, host
  and port of the issuer; query and fragment ignored), ``iat`` within :data:`PROOF_WINDOW` seconds of the
  emulator's clock either way, ``jti`` present and not seen before, ``ath`` the hash of the access token on
  resource requests, and ``nonce`` the receiving server's current nonce when it requires one.

:class:`ProofGuard` is one receiving server's memory (its nonce, the challenges it issued, the ``jti``\\ s it
accepted); :func:`check_resource_request` applies the resource-server rules of RFC 9449 section 7 to a
request whose access token is already verified. Failures raise :class:`ProofError` (token endpoint) or
:class:`ResourceAuthError` (resource servers); both name the RFC's error code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import re
import secrets
import threading
import typing as t
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "DEFAULT_ALGORITHMS",
    "INVALID_DPOP_PROOF",
    "PROOF_WINDOW",
    "SUPPORTED_ALGORITHMS",
    "USE_DPOP_NONCE",
    "Proof",
    "ProofError",
    "ProofGuard",
    "ResourceAuthError",
    "access_token_hash",
    "bound_key",
    "check_resource_request",
    "jwk_thumbprint",
    "same_htu",
    "verify_proof",
]

INVALID_DPOP_PROOF = "invalid_dpop_proof"
USE_DPOP_NONCE = "use_dpop_nonce"

PROOF_WINDOW = 60
"""A proof's ``iat`` may be this many seconds before or after the emulator's clock."""

DEFAULT_ALGORITHMS: tuple[str, ...] = ("ES256",)
"""What Auth0 advertises in ``dpop_signing_alg_values_supported``."""

_MAX_PROOF_LENGTH = 8192
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _EcAlgorithm:
    crv: str
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    size: int  # bytes of a coordinate, and of each half of the signature


@dataclass(frozen=True)
class _RsaAlgorithm:
    hash: type[hashes.HashAlgorithm]
    pss: bool


_ALGORITHMS: dict[str, _EcAlgorithm | _RsaAlgorithm] = {
    "ES256": _EcAlgorithm("P-256", ec.SECP256R1, hashes.SHA256, 32),
    "ES384": _EcAlgorithm("P-384", ec.SECP384R1, hashes.SHA384, 48),
    "ES512": _EcAlgorithm("P-521", ec.SECP521R1, hashes.SHA512, 66),
    "RS256": _RsaAlgorithm(hashes.SHA256, pss=False),
    "RS384": _RsaAlgorithm(hashes.SHA384, pss=False),
    "RS512": _RsaAlgorithm(hashes.SHA512, pss=False),
    "PS256": _RsaAlgorithm(hashes.SHA256, pss=True),
    "PS384": _RsaAlgorithm(hashes.SHA384, pss=True),
    "PS512": _RsaAlgorithm(hashes.SHA512, pss=True),
}

SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHMS)
"""Every algorithm the emulator can verify; the configured list is a subset of these, all asymmetric."""

_MIN_RSA_BITS = 2048


class ProofError(Exception):
    """A proof the receiving server refuses: ``error`` is ``invalid_dpop_proof`` or ``use_dpop_nonce``.

    ``nonce`` is the server's current nonce, for the ``DPoP-Nonce`` header of a ``use_dpop_nonce`` answer.
    """

    def __init__(self, error: str, description: str, nonce: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.nonce = nonce


@dataclass(frozen=True)
class Proof:
    """A proof that passed every check; ``jkt`` is the RFC 7638 thumbprint of its key."""

    jkt: str
    jti: str
    iat: float
    htm: str
    htu: str
    nonce: str | None
    ath: str | None


def _b64decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_object(segment: str) -> dict[str, t.Any]:
    value = json.loads(_b64decode(segment))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _invalid(description: str) -> ProofError:
    return ProofError(INVALID_DPOP_PROOF, description)


def _coordinate(jwk: t.Mapping[str, t.Any], name: str, size: int) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise _invalid(f"The jwk has no {name}")
    try:
        raw = _b64decode(value)
    except (ValueError, binascii.Error):
        raise _invalid(f"The jwk's {name} is not base64url") from None
    if len(raw) != size:
        raise _invalid(f"The jwk's {name} has the wrong length for its curve")
    return int.from_bytes(raw, "big")


def jwk_thumbprint(jwk: t.Mapping[str, t.Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public EC or RSA JWK: its required members, sorted, no spaces."""
    kty = jwk.get("kty")
    members = ("crv", "kty", "x", "y") if kty == "EC" else ("e", "kty", "n") if kty == "RSA" else None
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise _invalid("The jwk is not an EC or RSA public key")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64encode(hashlib.sha256(canonical.encode()).digest())


def access_token_hash(token: str) -> str:
    """``ath``: base64url(SHA-256(the access token's ASCII octets)), without padding."""
    return _b64encode(hashlib.sha256(token.encode("ascii", "replace")).digest())


def _verify_signature(alg: str, jwk: t.Mapping[str, t.Any], signing_input: bytes, signature: bytes) -> None:
    spec = _ALGORITHMS[alg]
    if isinstance(spec, _EcAlgorithm):
        if jwk.get("kty") != "EC" or jwk.get("crv") != spec.crv:
            raise _invalid(f"{alg} needs an EC key on {spec.crv}")
        x, y = _coordinate(jwk, "x", spec.size), _coordinate(jwk, "y", spec.size)
        try:
            key = ec.EllipticCurvePublicNumbers(x, y, spec.curve()).public_key()
        except ValueError:
            raise _invalid("The jwk's point is not on its curve") from None
        if len(signature) != 2 * spec.size:
            raise _invalid("The signature has the wrong length")
        der = encode_dss_signature(
            int.from_bytes(signature[: spec.size], "big"), int.from_bytes(signature[spec.size :], "big")
        )
        try:
            key.verify(der, signing_input, ec.ECDSA(spec.hash()))
        except InvalidSignature:
            raise _invalid("The signature does not verify with the jwk") from None
        return
    if jwk.get("kty") != "RSA":
        raise _invalid(f"{alg} needs an RSA key")
    try:
        modulus = int.from_bytes(_b64decode(str(jwk.get("n", ""))), "big")
        exponent = int.from_bytes(_b64decode(str(jwk.get("e", ""))), "big")
    except (ValueError, binascii.Error):
        raise _invalid("The jwk's n or e is not base64url") from None
    if modulus.bit_length() < _MIN_RSA_BITS or exponent < 3:
        raise _invalid(f"RSA keys must have at least {_MIN_RSA_BITS} bits")
    try:
        rsa_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        raise _invalid("The jwk is not a valid RSA public key") from None
    pad: padding.AsymmetricPadding = (
        padding.PSS(mgf=padding.MGF1(spec.hash()), salt_length=padding.PSS.DIGEST_LENGTH)
        if spec.pss
        else padding.PKCS1v15()
    )
    try:
        rsa_key.verify(signature, signing_input, pad, spec.hash())
    except InvalidSignature:
        raise _invalid("The signature does not verify with the jwk") from None


def verify_proof(proof: str, algorithms: t.Collection[str]) -> tuple[dict[str, t.Any], str]:
    """The claims and key thumbprint of a well-formed proof whose signature verifies with its own ``jwk``.

    Checks the form (compact JWS), ``typ``, ``alg`` (one of ``algorithms`` and of
    :data:`SUPPORTED_ALGORITHMS`, which are all asymmetric), that ``jwk`` is a public key, the signature,
    and that the claims the request binding needs are there. Raises :class:`ProofError`.
    """
    if len(proof) > _MAX_PROOF_LENGTH:
        raise _invalid("The DPoP proof is too long")
    parts = proof.split(".")
    if len(parts) != 3 or not all(parts):
        raise _invalid("The DPoP proof is not a compact JWS")
    try:
        header = _json_object(parts[0])
        claims = _json_object(parts[1])
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _invalid("The DPoP proof is not a compact JWS of two JSON objects") from None
    if header.get("typ") != "dpop+jwt":
        raise _invalid("The DPoP proof's typ is not dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS or alg not in algorithms:
        raise _invalid(f"Unsupported DPoP proof algorithm: {alg}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _invalid("The DPoP proof has no jwk header")
    if _PRIVATE_MEMBERS & set(jwk):
        raise _invalid("The DPoP proof's jwk holds private key material")
    _verify_signature(alg, jwk, f"{parts[0]}.{parts[1]}".encode(), signature)
    for name in ("jti", "htm", "htu"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise _invalid(f"The DPoP proof has no {name}")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise _invalid("The DPoP proof has no numeric iat")
    for name in ("nonce", "ath"):
        if name in claims and not isinstance(claims[name], str):
            raise _invalid(f"The DPoP proof's {name} is not a string")
    return claims, jwk_thumbprint(jwk)


def _normal_url(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, unquote(parts.path or "/")


def same_htu(claim: str, expected: str) -> bool:
    """Whether ``claim`` names ``expected``: scheme and host case-insensitively, the default port implied,
    the path after percent-decoding; query and fragment of either ignored (RFC 9449 section 4.3)."""
    try:
        return _normal_url(claim) == _normal_url(expected)
    except ValueError:  # a port that is not a number
        return False


class ProofGuard:
    """One server's side of DPoP: the nonce it wants, the challenges it sent, the ``jti``\\ s it accepted.

    Thread-safe. ``clock`` is the emulator's (anything with ``now()``), so tests move proof time by moving
    the emulator's clock. The nonce is random and changes only by :meth:`rotate_nonce`;
    ``nonce_description`` is the ``error_description`` of this server's ``use_dpop_nonce`` answers.
    """

    def __init__(self, clock: t.Any, nonce_description: str) -> None:
        self._clock = clock
        self._nonce_description = nonce_description
        self._lock = threading.Lock()
        self._nonce = secrets.token_urlsafe(24)
        self._challenges = 0
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    @property
    def nonce(self) -> str:
        with self._lock:
            return self._nonce

    def rotate_nonce(self) -> str:
        """Replace the nonce; proofs carrying the old one are challenged from now on. Returns the new one."""
        with self._lock:
            self._nonce = secrets.token_urlsafe(24)
            return self._nonce

    @property
    def challenges(self) -> int:
        """``use_dpop_nonce`` answers given since the last :meth:`reset_challenges`."""
        with self._lock:
            return self._challenges

    def reset_challenges(self) -> None:
        with self._lock:
            self._challenges = 0

    def check(
        self,
        values: t.Sequence[str],
        *,
        method: str,
        url: str,
        algorithms: t.Collection[str],
        nonce_required: bool,
        access_token: str | None = None,
    ) -> Proof:
        """Check the ``DPoP`` header ``values`` of a request to ``method url``; raises :class:`ProofError`.

        With ``access_token`` (a resource request) the proof must carry its ``ath``. With ``nonce_required``
        a proof without the current nonce is answered ``use_dpop_nonce``, counted as a challenge; it is
        checked after everything else about the proof, so a challenge is only ever issued to a proof that
        would otherwise pass, and before its ``jti`` is spent, so nothing about a challenged proof is kept.
        """
        # The server joins repeated headers with commas, which a compact JWS never holds.
        if len(values) != 1 or "," in values[0]:
            raise _invalid("A request carries exactly one DPoP proof")
        claims, jkt = verify_proof(values[0].strip(), algorithms)
        if claims["htm"] != method:
            raise _invalid("The DPoP proof's htm does not match the request's method")
        if not same_htu(claims["htu"], url):
            raise _invalid("The DPoP proof's htu does not match the request's URL")
        if access_token is not None:
            if "ath" not in claims:
                raise _invalid("The DPoP proof has no ath")
            if not secrets.compare_digest(claims["ath"], access_token_hash(access_token)):
                raise _invalid("The DPoP proof's ath does not match the access token")
        now = self._clock.now()
        iat = float(claims["iat"])
        if abs(now - iat) > PROOF_WINDOW:
            raise _invalid("The DPoP proof's iat is outside the acceptable window")
        with self._lock:
            if nonce_required and claims.get("nonce") != self._nonce:
                self._challenges += 1
                raise ProofError(USE_DPOP_NONCE, self._nonce_description, self._nonce)
            self._forget_expired(now)
            jti = claims["jti"]
            if jti in self._seen:
                raise _invalid("The DPoP proof has been used before (jti)")
            self._seen.add(jti)
            # The iat check refuses the proof once iat + PROOF_WINDOW has passed; the jti is kept one window
            # longer, so a clock a test moves back a little does not revive it.
            heapq.heappush(self._expiry, (iat + 2 * PROOF_WINDOW, jti))
        return Proof(jkt, jti, iat, claims["htm"], claims["htu"], claims.get("nonce"), claims.get("ath"))

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, jti = heapq.heappop(self._expiry)
            self._seen.discard(jti)


class ResourceAuthError(Exception):
    """A resource request refused for its credentials: 401 and a ``WWW-Authenticate`` challenge.

    ``scheme`` is the scheme the challenge names (``Bearer`` or ``DPoP``); ``error`` is ``invalid_token``,
    ``invalid_dpop_proof`` or ``use_dpop_nonce``; ``nonce`` goes into ``DPoP-Nonce`` when set.
    """

    def __init__(self, scheme: str, error: str, description: str, nonce: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.scheme = scheme
        self.error = error
        self.description = description
        self.nonce = nonce

    def www_authenticate(self, algorithms: t.Sequence[str]) -> str:
        """The challenge: ``DPoP error=..., error_description=..., algs=...`` (RFC 9449 section 7.1), or
        ``Bearer error=...`` for a Bearer request."""
        description = self.description.replace("\\", "").replace('"', "'")
        challenge = f'{self.scheme} error="{self.error}", error_description="{description}"'
        if self.scheme == "DPoP":
            challenge += f', algs="{" ".join(algorithms)}"'
        return challenge

    def headers(self, algorithms: t.Sequence[str]) -> dict[str, str]:
        headers = {"WWW-Authenticate": self.www_authenticate(algorithms)}
        if self.nonce is not None:
            headers["DPoP-Nonce"] = self.nonce
        return headers


def bound_key(claims: t.Mapping[str, t.Any]) -> str | None:
    """The ``cnf.jkt`` of verified access-token claims, if the token is DPoP-bound."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) and jkt else None


def check_resource_request(
    guard: ProofGuard,
    *,
    scheme: str,
    token: str,
    claims: t.Mapping[str, t.Any],
    proofs: t.Sequence[str],
    method: str,
    url: str,
    algorithms: t.Collection[str],
    nonce_required: bool,
) -> None:
    """Apply RFC 9449 section 7 to a request whose access token (``claims``) is already verified.

    ``scheme`` is the Authorization scheme, lower-case (``bearer`` or ``dpop``). A DPoP-bound token must come
    with the ``DPoP`` scheme (``invalid_token`` otherwise, RFC 9449 section 7.2: a bound token used as a
    Bearer token is refused); the ``DPoP`` scheme needs a bound token (``invalid_token``) and a valid proof
    for this request with the token's ``ath`` (``invalid_dpop_proof``, or ``use_dpop_nonce`` with the nonce),
    made with the key the token is bound to (``invalid_token``: the token is not this key's, as Auth0's
    ``auth0-api-python`` answers a ``cnf`` mismatch). An unbound token with the Bearer scheme passes.
    """
    jkt = bound_key(claims)
    if scheme == "bearer":
        if jkt is not None:
            raise ResourceAuthError(
                "DPoP", "invalid_token", "DPoP-bound token requires the DPoP authentication scheme, not Bearer"
            )
        return
    if jkt is None:
        raise ResourceAuthError("DPoP", "invalid_token", "The access token is not DPoP-bound (no cnf.jkt)")
    if not proofs:
        raise ResourceAuthError("DPoP", INVALID_DPOP_PROOF, "The DPoP scheme needs a DPoP proof header")
    try:
        proof = guard.check(
            proofs,
            method=method,
            url=url,
            algorithms=algorithms,
            nonce_required=nonce_required,
            access_token=token,
        )
    except ProofError as exc:
        raise ResourceAuthError("DPoP", exc.error, exc.description, exc.nonce) from None
    if not secrets.compare_digest(proof.jkt, jkt):
        raise ResourceAuthError("DPoP", "invalid_token", "JWT Access Token confirmation mismatch")
