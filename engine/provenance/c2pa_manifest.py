"""A signed C2PA manifest that declares a merged output as AI-generated.

Why: the container comment and the sidecar JSON can be forged or stripped by anyone; a C2PA
manifest is the industry format (Content Credentials) that browsers, platforms and
`c2patool` read, and its signature, made with the user's certificate, binds the declaration
to the exact bytes of the file, so an edit afterwards shows as an invalid manifest.

The manifest holds a `c2pa.actions` assertion (action `c2pa.created`, digital source type
IPTC `trainedAlgorithmicMedia`) and our provenance record (engine.merge.outputs.provenance)
as the custom assertion `RECORD_LABEL`. Signing needs an X.509 chain whose leaf is an
end-entity certificate with the digitalSignature key usage and the emailProtection or
documentSigning extended key usage, not a CA (the SDK refuses others: "the certificate is
invalid"); verifiers trust it when its chain ends at one of their trust anchors.
No timestamp authority is contacted, so signing works offline.

Needs the optional `c2pa-python` package: `pip install faceswap-jax[c2pa]`.
"""
from __future__ import annotations

import json
import mimetypes
import os
from typing import Any

import c2pa

from preprocessing.errors import UserError

IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_SOURCE_TYPE = IPTC_SOURCE_TYPES + "trainedAlgorithmicMedia"
# Source types that say a model made (part of) the content.
AI_SOURCE_TYPES = frozenset({AI_SOURCE_TYPE, IPTC_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"})
RECORD_LABEL = "org.faceswap-jax.provenance"
ALGORITHMS = {alg.name.lower(): alg for alg in c2pa.C2paSigningAlg}  # es256 ... ed25519


def _mime_type(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or ""
    if mime not in c2pa.Builder.get_supported_mime_types():
        raise UserError(f"{path}: C2PA does not support this format ({mime or 'unknown'}); "
                        f"use .mp4, .mov, .png or .jpg")
    return mime


def manifest_definition(record: dict[str, Any], title: str) -> dict[str, Any]:
    """The manifest JSON the C2PA builder signs: the AI-generated declaration plus the record."""
    tool = record.get("tool") or {}
    return {
        "claim_generator_info": [{"name": tool.get("name", "faceswap-jax"), "version": str(tool.get("version", "?"))}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions",
             "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": AI_SOURCE_TYPE}]}},
            # A JSON round trip, as the sidecar is written: paths and dates become strings.
            {"label": RECORD_LABEL, "data": json.loads(json.dumps(record, default=str))},
        ],
    }


def sign_file(path: str, record: dict[str, Any], cert_chain_pem: str | bytes, private_key_pem: str | bytes,
              alg: str = "es256") -> None:
    """Embeds a signed manifest in the video or image at `path`, replacing the file atomically
    (a temp file next to it, then a rename). `cert_chain_pem` is the signing certificate
    followed by its issuers, PEM; `alg` one of ALGORITHMS matching the key. UserError when the
    format cannot carry a manifest or the SDK refuses the certificate or key."""
    if alg not in ALGORITHMS:
        raise UserError(f"unknown C2PA signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")
    mime = _mime_type(path)
    as_bytes = [p.encode() if isinstance(p, str) else p for p in (cert_chain_pem, private_key_pem)]
    tmp = path + ".c2pa-partial"
    try:
        with (c2pa.Signer.from_info(c2pa.C2paSignerInfo(ALGORITHMS[alg], *as_bytes, None)) as signer,
              c2pa.Builder(manifest_definition(record, os.path.basename(path))) as builder,
              open(path, "rb") as source, open(tmp, "w+b") as dest):
            builder.sign(signer, mime, source, dest)
        os.replace(tmp, path)
    except c2pa.C2paError as e:
        raise UserError(f"{path}: C2PA signing failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _summary(store: dict[str, Any], state: str | None) -> dict[str, Any]:
    active = store["manifests"][store["active_manifest"]]
    assertions = {a["label"]: a.get("data") for a in active.get("assertions", [])}
    actions = [a for label in ("c2pa.actions", "c2pa.actions.v2")
               for a in (assertions.get(label) or {}).get("actions", [])]
    source_types = [a["digitalSourceType"] for a in actions if "digitalSourceType" in a]
    return {
        "title": active.get("title"),
        "claim_generator": [f"{g.get('name')} {g.get('version')}" for g in active.get("claim_generator_info", [])],
        "signer": active.get("signature_info", {}),
        "actions": [a.get("action") for a in actions],
        "digital_source_types": source_types,
        "ai_generated": any(t in AI_SOURCE_TYPES for t in source_types),
        "record": assertions.get(RECORD_LABEL),
        "validation_state": state,  # 'Invalid', 'Valid' (signature checks) or 'Trusted' (chain too)
        "validation_problems": [s["code"] for s in store.get("validation_status", [])],
    }


def read_manifest(path: str, trust_anchors_pem: str | None = None) -> dict[str, Any] | None:
    """A summary of the active C2PA manifest of a file, or None when it has none: whether it
    declares AI-generated content, our record, the signer and the validation state (checked
    against `trust_anchors_pem`, PEM CA certificates, when given). UserError when the file
    cannot be read as a format C2PA supports."""
    context = c2pa.Context.from_dict({"trust": {"trust_anchors": trust_anchors_pem}}) if trust_anchors_pem else None
    try:
        with open(path, "rb") as f, c2pa.Reader(_mime_type(path), f, context=context) as reader:
            return _summary(json.loads(reader.json()), reader.get_validation_state())
    except c2pa.C2paError.ManifestNotFound:
        return None
    except (c2pa.C2paError, OSError) as e:
        raise UserError(f"{path}: cannot read the C2PA manifest: {e}") from e
