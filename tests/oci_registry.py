#!/usr/bin/env python3
"""A registry client for tests/all/fleet.rs, written against the OCI distribution API and cosign's
formats directly (urllib and `cryptography`), independent of the Rust client sluice uses.

    oci_registry.py push FILE HOST:PORT/REPO:TAG        # CNCF Wasm artifact; prints the manifest digest
    oci_registry.py manifest HOST:PORT/REPO:REF         # prints the manifest JSON
    oci_registry.py keygen DIR                          # DIR/cosign.key (PKCS#8 PEM), DIR/cosign.pub
    oci_registry.py sign HOST:PORT/REPO DIGEST KEY      # cosign signature under sha256-<hex>.sig
    oci_registry.py sign-blob FILE KEY                  # FILE.sig, as `cosign sign-blob --key`
    oci_registry.py htpasswd USER PASSWORD FILE         # a bcrypt htpasswd file for the registry

With OCI_AUTH=USER:PASSWORD in the environment, every request carries those credentials (Basic).
"""
import base64
import hashlib
import json
import os
import sys
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def split(ref):
    host, rest = ref.split("/", 1)
    if "@" in rest:
        repo, tag = rest.split("@", 1)
    else:
        repo, tag = rest.rsplit(":", 1)
    return host, repo, tag


def request(method, url, data=None, headers=None):
    headers = dict(headers or {})
    if os.environ.get("OCI_AUTH"):
        headers["Authorization"] = "Basic " + base64.b64encode(os.environ["OCI_AUTH"].encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req) as resp:
        return resp.status, dict(resp.headers), resp.read()


def put_blob(host, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers, _ = request("POST", f"http://{host}/v2/{repo}/blobs/uploads/")
    location = headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    sep = "&" if "?" in location else "?"
    request("PUT", f"{location}{sep}digest={digest}", data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    return {"digest": digest, "size": len(data)}


def put_manifest(host, repo, tag, manifest):
    body = json.dumps(manifest, separators=(",", ":")).encode()
    request("PUT", f"http://{host}/v2/{repo}/manifests/{tag}", body, {"Content-Type": MANIFEST})
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push(path, ref):
    host, repo, tag = split(ref)
    component = open(path, "rb").read()
    layer = put_blob(host, repo, component)
    config = json.dumps({"architecture": "wasm", "os": "wasip2", "layerDigests": [layer["digest"]]}).encode()
    config_desc = put_blob(host, repo, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", **config_desc},
        "layers": [{"mediaType": "application/wasm", **layer}],
    }
    print(put_manifest(host, repo, tag, manifest))


def manifest(ref):
    host, repo, tag = split(ref)
    _, _, body = request("GET", f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST})
    print(body.decode())


def keygen(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    with open(f"{directory}/cosign.key", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(f"{directory}/cosign.pub", "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def load_key(path):
    return serialization.load_pem_private_key(open(path, "rb").read(), password=None)


def sign(repo_ref, digest, key_path):
    host, repo = repo_ref.split("/", 1)
    payload = json.dumps({
        "critical": {
            "identity": {"docker-reference": f"{host}/{repo}"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }).encode()
    signature = base64.b64encode(load_key(key_path).sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = put_blob(host, repo, payload)
    config = put_blob(host, repo, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            **layer,
            "annotations": {"dev.cosignproject.cosign/signature": signature},
        }],
    }
    put_manifest(host, repo, digest.replace(":", "-") + ".sig", manifest)


def sign_blob(path, key_path):
    data = open(path, "rb").read()
    signature = load_key(key_path).sign(data, ec.ECDSA(hashes.SHA256()))
    with open(path + ".sig", "w") as f:
        f.write(base64.b64encode(signature).decode())


def htpasswd(user, password, path):
    import bcrypt
    with open(path, "w") as f:
        f.write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"push": push, "manifest": manifest, "keygen": keygen, "sign": sign, "sign-blob": sign_blob,
     "htpasswd": htpasswd}[command](*args)
