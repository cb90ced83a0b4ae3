#!/usr/bin/env python3
"""Keys and tokens for tests/auth_jwt.rs, made with PyJWT and cryptography: a JWT library sluice
does not use, so the tests check sluice against tokens it did not mint itself.

    python3 tests/jwt/sign.py OUTDIR

Writes OUTDIR/jwks.json (RSA `rsa-1`, EC P-256 `ec-1`), OUTDIR/jwks-all.json (those, EC P-384
`ec-384` and Ed25519 `ed-1`), OUTDIR/rsa.pem and OUTDIR/ed25519.pem (public keys, PEM), and
OUTDIR/tokens.json: {name: token}, with `every/<ALG>` a valid token for each algorithm and
`short_lived` one that expires 5 s after it was made.
"""
import base64
import hashlib
import hmac
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "test-hmac-secret-of-32-bytes-ok!"
ISSUER = "https://issuer.test"
AUDIENCE = "api"

out = sys.argv[1]
now = int(time.time())

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ec384_key = ec.generate_private_key(ec.SECP384R1())
ed_key = ed25519.Ed25519PrivateKey.generate()


def pem(public_key):
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


rsa_pem = pem(rsa_key.public_key())
with open(f"{out}/rsa.pem", "wb") as f:
    f.write(rsa_pem)
with open(f"{out}/ed25519.pem", "wb") as f:
    f.write(pem(ed_key.public_key()))

rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
rsa_jwk.update(kid="rsa-1", use="sig")
ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
ec_jwk.update(kid="ec-1", use="sig", alg="ES256")
ec384_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec384_key.public_key()))
ec384_jwk.update(kid="ec-384", use="sig", alg="ES384")
ed_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key.public_key()))
ed_jwk.update(kid="ed-1", use="sig")
with open(f"{out}/jwks.json", "w") as f:
    json.dump({"keys": [rsa_jwk, ec_jwk]}, f)
with open(f"{out}/jwks-all.json", "w") as f:
    json.dump({"keys": [rsa_jwk, ec_jwk, ec384_jwk, ed_jwk]}, f)


def claims(**changes):
    base = {"sub": "user-42", "role": "admin", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with(key_bytes, payload):
    """HS256 by hand: PyJWT refuses a PEM public key as an HMAC secret, an attacker does not."""
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(key_bytes, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


tokens = {
    "hs256": jwt.encode(claims(), SECRET, algorithm="HS256"),
    "hs512": jwt.encode(claims(), SECRET, algorithm="HS512"),
    "short_lived": jwt.encode(claims(exp=now + 5), SECRET, algorithm="HS256"),
    "rs256": jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "ps256": jwt.encode(claims(), rsa_key, algorithm="PS256", headers={"kid": "rsa-1"}),
    "es256": jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"}),
    "eddsa": jwt.encode(claims(), ed_key, algorithm="EdDSA"),
    "expired": jwt.encode(claims(exp=now - 3600), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "within_leeway": jwt.encode(claims(exp=now - 5), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "not_yet_valid": jwt.encode(claims(nbf=now + 3600), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "wrong_issuer": jwt.encode(claims(iss="https://evil.test"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "wrong_audience": jwt.encode(claims(aud="other"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "no_exp": jwt.encode(claims(exp=None), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "bad_signature": jwt.encode(claims(), other_rsa, algorithm="RS256", headers={"kid": "rsa-1"}),
    "unknown_kid": jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-9"}),
    "alg_none": jwt.encode(claims(), None, algorithm="none"),
    "confusion": hs256_with(rsa_pem, claims()),
}
# One valid token per algorithm sluice supports, keys from jwks-all.json (HMAC: SECRET).
signers = {
    "HS256": (SECRET, None), "HS384": (SECRET, None), "HS512": (SECRET, None),
    "RS256": (rsa_key, "rsa-1"), "RS384": (rsa_key, "rsa-1"), "RS512": (rsa_key, "rsa-1"),
    "PS256": (rsa_key, "rsa-1"), "PS384": (rsa_key, "rsa-1"), "PS512": (rsa_key, "rsa-1"),
    "ES256": (ec_key, "ec-1"), "ES384": (ec384_key, "ec-384"), "EdDSA": (ed_key, "ed-1"),
}
for alg, (key, kid) in signers.items():
    headers = {"kid": kid} if kid else None
    tokens[f"every/{alg}"] = jwt.encode(claims(), key, algorithm=alg, headers=headers)

with open(f"{out}/tokens.json", "w") as f:
    json.dump(tokens, f)
