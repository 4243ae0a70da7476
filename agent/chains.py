"""X.509 chains checked for the purpose each link must serve.

Every chain the agent and the registry verify names the extended key usage it is for
(``codeSigning`` for the archive signer, ``clientAuth`` for claim and device certificates).
The leaf must carry that usage and must not be a CA; every intermediate that restricts its
usages (an ``extendedKeyUsage`` extension) must allow it. The time is always passed in
explicitly (:class:`cryptography.x509.verification.PolicyBuilder` ``.time``), never taken
from the library's own clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
MAX_CHAIN_DEPTH = 4


class ChainError(ValueError):
    """A chain does not verify for the wanted purpose (the message says why)."""


def extension_policies(
    usage: x509.ObjectIdentifier,
) -> tuple[verification.ExtensionPolicy, verification.ExtensionPolicy]:
    """The CA and end-entity extension policies for chains serving ``usage``."""

    def ca_eku(
        _policy: verification.Policy,
        cert: x509.Certificate,
        eku: x509.ExtendedKeyUsage | None,
    ) -> None:
        if (
            eku is not None
            and usage not in eku
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
        ):
            raise ValueError(
                f"the issuer {cert.subject.rfc4514_string()} may not issue for {usage._name}"  # noqa: SLF001 - the OID's readable name
            )

    def ee_eku(
        _policy: verification.Policy,
        _cert: x509.Certificate,
        eku: x509.ExtendedKeyUsage | None,
    ) -> None:
        if eku is None or usage not in eku:
            raise ValueError(f"extended key usage {usage._name} required")  # noqa: SLF001

    def ee_not_ca(
        _policy: verification.Policy,
        _cert: x509.Certificate,
        constraints: x509.BasicConstraints | None,
    ) -> None:
        if constraints is not None and constraints.ca:
            raise ValueError("a CA certificate is not an end-entity certificate")

    ca_policy = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, ca_eku
    )
    ee_policy = (
        verification.ExtensionPolicy.permit_all()
        .require_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, ee_eku)
        .may_be_present(x509.BasicConstraints, verification.Criticality.AGNOSTIC, ee_not_ca)
    )
    return ca_policy, ee_policy


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    usage: x509.ObjectIdentifier,
) -> list[x509.Certificate]:
    """Verify ``leaf`` up to one of ``anchors`` at time ``at`` for ``usage``.

    Returns:
        The chain, leaf first.

    Raises:
        ChainError: no valid chain for that purpose (the reason in the message).
    """
    ca_policy, ee_policy = extension_policies(usage)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors)))
        .time(at)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        return list(verifier.verify(leaf, list(intermediates)).chain)
    except (verification.VerificationError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ChainError(str(exc)) from None
