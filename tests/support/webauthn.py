"""A software authenticator: what ``navigator.credentials.create()`` returns, built for real."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import typing as t

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def passkey_credential(options: dict[str, t.Any], origin: str) -> dict[str, t.Any]:
    """A registration response for WebAuthn creation ``options`` with ``none`` attestation.

    A fresh P-256 key; authData holds the rpIdHash, flags UP|UV|AT, a zero sign count and the
    attested credential data (zero AAGUID, the credential id and the COSE public key), so a
    relying party that verifies the attestation for real accepts it.
    """
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    cose_key = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: key.x.to_bytes(32, "big"), -3: key.y.to_bytes(32, "big")})
    credential_id = os.urandom(16)
    auth_data = (
        hashlib.sha256(options["rp"]["id"].encode()).digest()
        + bytes([0x01 | 0x04 | 0x40])
        + (0).to_bytes(4, "big")
        + bytes(16)
        + len(credential_id).to_bytes(2, "big")
        + credential_id
        + cose_key
    )
    attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
    client_data = {"type": "webauthn.create", "challenge": options["challenge"], "origin": origin}
    return {
        "id": b64url(credential_id),
        "rawId": b64url(credential_id),
        "type": "public-key",
        "response": {
            "attestationObject": b64url(attestation),
            "clientDataJSON": b64url(json.dumps(client_data).encode()),
            "transports": ["internal"],
        },
        "authenticatorAttachment": "platform",
        "clientExtensionResults": {},
    }
