"""The certificate resource of a registration (RegisterThing's step 2).

A template's certificate is a CSR the registry signs, a PEM the registry must have issued
(from an accepted CA, optionally named by ``CACertificatePem``), or the id of a registered
certificate; a certificate the caller named by id (fleet provisioning's own) may stand for
it. The certificate's subject fields become the template's certificate pseudo-parameters.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

from agent.errors import FieldProblem
from agent.registry.errors import ResourceRegistrationFailureError
from agent.registry.signing import CsrSigner, IssuedCertificate, describe_certificate_pem
from agent.registry.storage import RegistryReader
from agent.registry.template import CERTIFICATE_PREFIX, Template


def given_certificate(
    certificate_id: str | None, reader: RegistryReader
) -> IssuedCertificate | None:
    """The registered certificate the caller named by id, described; None when none named."""
    if certificate_id is None:
        return None
    record = reader.get_certificate(certificate_id)
    if record is None:
        raise ResourceRegistrationFailureError(
            f"no certificate with id {certificate_id[:64]} is registered",
            reason="CERTIFICATE_NOT_FOUND",
            fields=[FieldProblem("certificateId", "no such certificate")],
        )
    return describe_certificate_pem(record.certificate_pem)


def resolve_certificate(
    tpl: Template,
    params: dict[str, str],
    reader: RegistryReader,
    given: IssuedCertificate | None,
    signer: Callable[[], CsrSigner],
) -> IssuedCertificate | None:
    """The template's certificate resource, signed, checked or looked up (step 2).

    ``given`` is the certificate the caller named by id (the device's own, in fleet
    provisioning); ``signer`` gives the registry's CSR signer, failing when it has no CA.
    """
    env = {**params, **given.parameters} if given else params
    spec = tpl.evaluate_certificate(env)
    if spec is None:
        return given
    path = f"Resources.{spec.logical_id}.Properties.{spec.method}"
    if spec.method == "CertificateSigningRequest":
        return signer().sign(spec.value, path=path)
    if spec.method == "CertificatePem":
        issuer = signer()
        ca_cert = None
        if spec.ca_certificate_pem is not None:
            ca_cert = _check_ca_pem(issuer, spec.ca_certificate_pem, spec.logical_id)
        return issuer.verify_issued(spec.value, path=path, ca_certificate=ca_cert)
    if given is not None and given.certificate_id == spec.value:
        return given
    record = reader.get_certificate(spec.value)
    if record is None:
        raise ResourceRegistrationFailureError(
            f"no certificate with id {spec.value} is registered",
            reason="CERTIFICATE_NOT_FOUND",
            fields=[FieldProblem(path, "no such certificate")],
        )
    return describe_certificate_pem(record.certificate_pem)


def check_certificate_fields(tpl: Template, issued: IssuedCertificate | None) -> None:
    """Refuse a template that uses certificate fields the certificate's subject lacks."""
    facts = issued.parameters if issued else {}
    missing = [f for f in tpl.certificate_fields if f not in facts]
    if missing:
        raise ResourceRegistrationFailureError(
            "the certificate's subject lacks "
            + ", ".join(m.removeprefix(CERTIFICATE_PREFIX) for m in missing)
            + ", which the template uses",
            reason="CERTIFICATE_FIELD_MISSING",
            fields=[FieldProblem(f"Parameters.{m}", "not in the certificate") for m in missing],
        )


def _check_ca_pem(signer: CsrSigner, ca_pem: str, logical_id: str) -> x509.Certificate:
    try:
        given = x509.load_pem_x509_certificate(ca_pem.encode("utf-8"))
    except ValueError:
        given = None
    if given is None or given not in signer.keys.accepted_cas:
        raise ResourceRegistrationFailureError(
            "CACertificatePem is not a CA certificate registered with the registry",
            reason="CA_CERTIFICATE_NOT_REGISTERED",
            fields=[
                FieldProblem(
                    f"Resources.{logical_id}.Properties.CACertificatePem",
                    "not a registered CA certificate",
                )
            ],
        )
    return given
