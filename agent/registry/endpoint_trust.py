"""The keys and certificates the fleet-provisioning endpoint trusts and signs with.

:func:`load_endpoint_trust` is the one place the endpoint reads them: the device issuer
(certificate and key) signs device certificates, and the claim issuers are the CA
certificates a claim certificate must chain to (mosquitto's ``cafile``, and the plugin's
``claim_cafile``). With the single CA directory of ``edge-agent ca init`` both are its root.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from agent.config import RegistrySection
from agent.registry.ca import CertificateAuthority, PrivateKey, cert_to_pem, load_ca


@dataclass(frozen=True, slots=True)
class EndpointTrust:
    """What the endpoint signs with and whom it lets in.

    Attributes:
        device_issuer_cert: the CA certificate that issues device certificates.
        device_issuer_key: its private key.
        claim_issuer_certs: the CA certificates claim certificates are issued by.
    """

    device_issuer_cert: x509.Certificate
    device_issuer_key: PrivateKey
    claim_issuer_certs: tuple[x509.Certificate, ...]

    def signing_ca(self) -> CertificateAuthority:
        """The device issuer in the shape :class:`~agent.registry.register.Registry` signs with."""
        return CertificateAuthority(
            root_cert=self.device_issuer_cert,
            root_key=self.device_issuer_key,
            signer_cert=self.device_issuer_cert,
            signer_key=self.device_issuer_key,
        )

    def claim_issuers_pem(self) -> bytes:
        """The claim issuers as one PEM bundle (mosquitto's ``cafile``)."""
        return b"".join(cert_to_pem(c) for c in self.claim_issuer_certs)


def load_endpoint_trust(section: RegistrySection) -> EndpointTrust:
    """The device issuer and the claim issuers of the registry's CA directory.

    Raises:
        ConfigError: ``CA_MISSING`` or ``CA_INVALID``.
    """
    ca = load_ca(section.ca_dir)
    return EndpointTrust(ca.root_cert, ca.root_key, (ca.root_cert,))
