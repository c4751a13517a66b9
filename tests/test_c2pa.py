"""The C2PA manifest on merged outputs: signed with a throwaway certificate chain made here,
read back through the SDK's raw JSON and our summary, checked against tampering, and reported
by `verify`."""
from __future__ import annotations

import datetime
import json
import os

import cv2
import numpy as np
import pytest
import skimage.data

pytest.importorskip("c2pa")
from cryptography import x509  # noqa: E402  (c2pa-python depends on it)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

import c2pa  # noqa: E402
from engine.provenance import c2pa_manifest as cm  # noqa: E402
from engine.provenance.verify import examine  # noqa: E402
from preprocessing import video  # noqa: E402
from preprocessing.errors import UserError  # noqa: E402

RECORD = {"synthetic": True, "kind": "face-swap", "model": {"workdir": "/runs/liae", "step": 5000},
          "merge_options": {"mode": "overlay", "erode": 10},
          "tool": {"name": "faceswap-jax", "version": "0.1.0"}, "created_utc": "2026-01-01T00:00:00+00:00"}
PEM = serialization.Encoding.PEM


def _usage(**on: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def _certificate(subject: str, key, issuer: x509.Certificate | None, issuer_key, *, ca: bool,
                 eku: list | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "faceswap-jax tests")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(_usage(key_cert_sign=ca, crl_sign=ca, digital_signature=not ca), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def chain() -> dict:
    """A throwaway root CA and an end-entity signing certificate with the usages C2PA requires:
    digitalSignature and the emailProtection EKU, not a CA, issued by the root."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Test root CA", ca_key, None, ca_key, ca=True)
    leaf = _certificate("Test signer", key, root, ca_key, ca=False, eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    return {"root": root, "root_key": ca_key, "leaf": leaf,
            "pem": leaf.public_bytes(PEM) + root.public_bytes(PEM),
            "key": key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}


@pytest.fixture()
def clip(tmp_path) -> str:
    """A short real-image H.264 mp4, as the merge writes them."""
    face = cv2.resize(skimage.data.astronaut(), (160, 128), interpolation=cv2.INTER_AREA)
    path = str(tmp_path / "merged.mp4")
    video.write_video(path, [np.roll(face, 4 * i, axis=1) for i in range(6)], 25)
    return path


def frames_of(path: str) -> np.ndarray:
    return np.stack([f.image for f in video.read_frames(path)])


def test_signed_mp4_declares_ai_generated_and_carries_the_record(chain, clip):
    before = frames_of(clip)
    cm.sign_file(clip, RECORD, chain["pem"], chain["key"])
    assert sorted(os.listdir(os.path.dirname(clip))) == ["merged.mp4"]  # the temp file was renamed
    np.testing.assert_array_equal(frames_of(clip), before)  # the manifest leaves the pictures bit-exact

    with c2pa.Reader(clip) as reader:  # the SDK's own view, independent of our summary
        store = json.loads(reader.json())
    active = store["manifests"][store["active_manifest"]]
    by_label = {a["label"]: a["data"] for a in active["assertions"]}
    actions = next(v for k, v in by_label.items() if k.startswith("c2pa.actions"))["actions"]
    assert actions == [{"action": "c2pa.created", "digitalSourceType":
                        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"}]
    assert by_label[cm.RECORD_LABEL] == RECORD
    assert int(active["signature_info"]["cert_serial_number"]) == chain["leaf"].serial_number

    summary = cm.read_manifest(clip)
    assert summary["ai_generated"] and summary["actions"] == ["c2pa.created"]
    assert summary["record"] == RECORD and summary["title"] == "merged.mp4"
    assert summary["signer"]["common_name"] == "Test signer"
    # Without our root among the trust anchors the signature checks but the signer is unknown.
    assert summary["validation_state"] == "Valid"
    assert summary["validation_problems"] == ["signingCredential.untrusted"]
    trusted = cm.read_manifest(clip, trust_anchors_pem=chain["root"].public_bytes(PEM).decode())
    assert trusted["validation_state"] == "Trusted" and trusted["validation_problems"] == []


def test_tampering_after_signing_invalidates_the_manifest(chain, clip):
    cm.sign_file(clip, RECORD, chain["pem"], chain["key"])
    data = bytearray(open(clip, "rb").read())
    at = data.index(b"mdat") + 64  # inside the coded frames, which the manifest's hash covers
    data[at] ^= 0xFF
    open(clip, "wb").write(bytes(data))
    summary = cm.read_manifest(clip)
    assert summary["validation_state"] == "Invalid"
    assert "assertion.bmffHash.mismatch" in summary["validation_problems"]
    assert summary["ai_generated"]  # the declaration is still there to be read


def test_unsigned_files_and_bad_inputs(chain, clip, tmp_path):
    assert cm.read_manifest(clip) is None
    original = open(clip, "rb").read()
    # The SDK refuses a TLS-server certificate (wrong extended key usage) and a key that is not
    # the certificate's.
    web_key = ec.generate_private_key(ec.SECP256R1())
    web = _certificate("Web server", web_key, chain["root"], chain["root_key"], ca=False,
                       eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    web_key_pem = web_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(UserError, match="C2PA signing failed.*certificate is invalid"):
        cm.sign_file(clip, RECORD, web.public_bytes(PEM) + chain["root"].public_bytes(PEM), web_key_pem)
    with pytest.raises(UserError, match="C2PA signing failed.*signature does not match"):
        cm.sign_file(clip, RECORD, chain["pem"], web_key_pem)
    assert open(clip, "rb").read() == original  # a failed signing leaves the output as it was
    assert sorted(os.listdir(tmp_path)) == ["merged.mp4"]
    with pytest.raises(UserError, match="unknown C2PA signing algorithm"):
        cm.sign_file(clip, RECORD, chain["pem"], chain["key"], alg="rs256")
    mkv = str(tmp_path / "merged.mkv")
    video.write_video(mkv, list(frames_of(clip)), 25)
    with pytest.raises(UserError, match="C2PA does not support this format"):
        cm.sign_file(mkv, RECORD, chain["pem"], chain["key"])


def test_verify_reports_the_manifest(chain, clip):
    assert "C2PA manifest" not in examine(clip, max_frames=2).markers
    cm.sign_file(clip, RECORD, chain["pem"], chain["key"])
    findings = examine(clip, max_frames=2)
    assert findings.markers == ["C2PA manifest"]  # no sidecar, tags or watermark on this clip
    line = next(x for x in findings.lines() if x.startswith("C2PA manifest:"))
    assert "declares AI-generated content" in line and "signed by Test signer" in line
    assert "signature Valid (signingCredential.untrusted)" in line
