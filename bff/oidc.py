"""The OpenID provider as the BFF sees it: discovery, JWKS, authorization URLs, ID tokens.

Discovery and JWKS are fetched lazily, cached, and refreshed: JWKS again when a token names an
unknown ``kid`` (key rotation), at most once a minute so a forged ``kid`` cannot make the BFF
hammer the IdP. ID tokens are validated in full (signature, ``iss``, ``aud``/``azp``, ``exp``,
``iat``, ``nonce``) before anything from them is trusted.
"""

from __future__ import annotations

import threading
import typing as t
from urllib.parse import urlencode

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from .clock import Clock
from .dpop import choose_algorithm
from .errors import Problem, ProblemKind
from .settings import Settings

__all__ = ["AuthorizationRequest", "Provider"]

_METADATA_TTL = 3600.0
_JWKS_MIN_INTERVAL = 60.0
_CLOCK_SKEW = 60


class AuthorizationRequest(t.NamedTuple):
    url: str
    state: str
    nonce: str
    code_verifier: str


def _idp_unavailable(detail: str) -> Problem:
    return Problem(ProblemKind.IDP_UNAVAILABLE, detail, headers={"Retry-After": "1"})


def _idp_misconfigured(detail: str) -> Problem:
    return Problem(ProblemKind.IDP_MISCONFIGURED, detail)


class Provider:
    """Cached view of the IdP; one per app, thread-safe."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._http = requests.Session()
        self._lock = threading.Lock()
        self._metadata: dict[str, t.Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0

    # Discovery -------------------------------------------------------------------------------

    def metadata(self) -> dict[str, t.Any]:
        """The discovery document; raises a 502 problem when the IdP cannot be reached."""
        with self._lock:
            if self._metadata is not None and self._clock.now() - self._metadata_at < _METADATA_TTL:
                return self._metadata
        document = self._get_json(self._settings.discovery_url, "discovery document")
        issuer = document.get("issuer")
        # Discovery requires the document's issuer to be the one it was fetched for; a trailing slash
        # is the only difference tolerated (operators write Auth0's domain without it), and from here
        # on the provider's exact spelling is the one tokens are checked against.
        if not isinstance(issuer, str) or issuer.rstrip("/") != self._settings.issuer_base:
            raise _idp_misconfigured(
                f"The discovery document names issuer {issuer!r}, not BFF_ISSUER_URL {self._settings.issuer_url!r}."
            )
        with self._lock:
            self._metadata = document
            self._metadata_at = self._clock.now()
        return document

    def endpoint(self, name: str) -> str:
        value = self.metadata().get(name)
        if not isinstance(value, str) or not value:
            raise _idp_misconfigured(f"The discovery document has no {name}.")
        return value

    def issuer(self) -> str:
        """The provider's issuer exactly as its discovery document spells it (what ``iss`` must equal)."""
        return str(self.metadata()["issuer"])

    def revocation_endpoint(self) -> str | None:
        """Where refresh tokens are revoked, if the provider advertises it (RFC 7009)."""
        value = self.metadata().get("revocation_endpoint")
        return value if isinstance(value, str) and value else None

    def dpop_algorithm(self) -> str | None:
        """The algorithm for DPoP proofs (ES256 unless the provider lists only another one the BFF
        makes); ``None`` when the provider lists none of them."""
        advertised = self.metadata().get("dpop_signing_alg_values_supported")
        return choose_algorithm(advertised if isinstance(advertised, list) else None)

    def dpop_status(self) -> str:
        """What discovery says of DPoP, for ``bff check``."""
        advertised = self.metadata().get("dpop_signing_alg_values_supported")
        if not isinstance(advertised, list) or not advertised:
            return "no dpop_signing_alg_values_supported (DPoP proofs will use ES256)"
        chosen = self.dpop_algorithm()
        listed = ", ".join(str(alg) for alg in advertised)
        if chosen is None:
            return f"dpop_signing_alg_values_supported lists only {listed}, none of which the BFF signs with"
        return f"dpop_signing_alg_values_supported: {listed} (proofs use {chosen})"

    def skipped_features(self) -> list[str]:
        """What the BFF leaves out with this provider, because its discovery document does not offer it."""
        metadata = self.metadata()
        skipped = []
        if not metadata.get("revocation_endpoint"):
            skipped.append("no revocation_endpoint: refresh tokens are not revoked when a session ends")
        if not metadata.get("end_session_endpoint"):
            skipped.append("no end_session_endpoint: logout ends the BFF session, not the provider's")
        if not metadata.get("backchannel_logout_supported"):
            skipped.append("backchannel_logout_supported is not true: the provider will not send logout tokens")
        return skipped

    def _get_json(self, url: str, what: str) -> dict[str, t.Any]:
        try:
            response = self._http.get(url, timeout=self._settings.token_timeout)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as error:
            raise _idp_unavailable(f"Could not fetch the {what} ({type(error).__name__}).") from error
        if not isinstance(document, dict):
            raise _idp_misconfigured(f"The {what} is not a JSON object.")
        return document

    def _keys(self, *, refresh: bool) -> KeySet:
        with self._lock:
            fresh_enough = self._clock.now() - self._jwks_at < _JWKS_MIN_INTERVAL
            if self._jwks is not None and (not refresh or fresh_enough):
                return self._jwks
        document = self._get_json(self.endpoint("jwks_uri"), "JWKS")
        try:
            keys = KeySet.import_key_set(t.cast(t.Any, document))
        except (JoseError, ValueError, KeyError) as error:
            raise _idp_misconfigured("The JWKS could not be parsed.") from error
        with self._lock:
            self._jwks = keys
            self._jwks_at = self._clock.now()
        return keys

    # Authorization ---------------------------------------------------------------------------

    def authorization_request(
        self, extra: t.Mapping[str, str], *, dpop_jkt: t.Callable[[str], str] | None = None
    ) -> AuthorizationRequest:
        """A code + PKCE (S256) authorization URL with fresh ``state`` and ``nonce``; with ``dpop_jkt``,
        the thumbprint of the login's DPoP key (a function of the state) binds the code to that key."""
        code_verifier = generate_token(64)
        state = generate_token(43)
        nonce = generate_token(32)
        client = OAuth2Session(
            self._settings.client_id,
            scope=extra.get("scope", self._settings.scopes),
            redirect_uri=self._settings.redirect_uri,
            code_challenge_method="S256",
        )
        params = {key: value for key, value in extra.items() if key != "scope"}
        if self._settings.audience:
            params[self._settings.resource_parameter] = self._settings.audience
        if dpop_jkt is not None:
            params["dpop_jkt"] = dpop_jkt(state)
        url, state = client.create_authorization_url(
            self.endpoint("authorization_endpoint"), state=state, code_verifier=code_verifier, nonce=nonce, **params
        )
        return AuthorizationRequest(url=url, state=state, nonce=nonce, code_verifier=code_verifier)

    def logout_url(self, idp_sid: str | None) -> str:
        """RP-initiated logout at the IdP (``/oidc/logout``), returning to the SPA's root.

        Security: the URL goes to the browser, so it carries ``client_id`` and the IdP session id as
        ``logout_hint`` (which Auth0 accepts), never the ID token as ``id_token_hint``.
        """
        endpoint = self.metadata().get("end_session_endpoint")
        if not endpoint:
            # The provider offers no RP-initiated logout: the BFF session is over; go home.
            return self._settings.post_logout_redirect_uri
        params = {
            "client_id": self._settings.client_id,
            "post_logout_redirect_uri": self._settings.post_logout_redirect_uri,
        }
        if idp_sid:
            params["logout_hint"] = idp_sid
        return f"{endpoint}?{urlencode(params)}"

    # Signed tokens ---------------------------------------------------------------------------

    def verified_claims(self, token: str) -> dict[str, t.Any]:
        """The claims of an RS256 JWT signed with one of the IdP's keys, else ``JoseError``/``ValueError``.

        Only the signature is checked here; the caller must validate every claim it relies on. An
        unknown ``kid`` refetches the JWKS at most once a minute, so forged tokens cannot make the
        BFF hammer the IdP.
        """
        try:
            return dict(jwt.decode(token, self._keys(refresh=False), algorithms=["RS256"]).claims)
        except (JoseError, ValueError):
            return dict(jwt.decode(token, self._keys(refresh=True), algorithms=["RS256"]).claims)

    # ID tokens -------------------------------------------------------------------------------

    def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, t.Any]:
        """Return the ID token's claims, or raise a 400 problem if any check fails."""
        try:
            claims = self.verified_claims(id_token)
            registry = JWTClaimsRegistry(
                now=lambda: int(self._clock.now()),
                leeway=_CLOCK_SKEW,
                iss={"essential": True, "value": self.issuer()},
                aud={"essential": True, "value": self._settings.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(claims)
        except (JoseError, ValueError) as error:
            raise Problem(
                ProblemKind.LOGIN_FAILED, f"The ID token is not valid ({type(error).__name__})."
            ) from error
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self._settings.client_id:
            raise Problem(ProblemKind.LOGIN_FAILED, "The ID token was issued to another party.")
        return claims
