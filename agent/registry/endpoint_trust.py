"""The keys and certificates the fleet-provisioning endpoint trusts and signs with.

:func:`load_endpoint_trust` is the one place the endpoint reads them, through
:func:`agent.registry.ca.load_device_issuer`: the device issuer (certificate and key) signs
device certificates; the claim issuer is the only CA whose certificates are claim
certificates. The endpoint never holds the offline root's key or the archive signer's.

Two bundles go to the broker: mosquitto's ``cafile`` (the claim issuer and the root, so
OpenSSL can build a claim certificate's chain to a self-signed anchor) and the plugin's
``claim_cafile`` (the claim issuer alone: a certificate another issuer signed, a device
certificate for example, is no claim certificate even if its chain reaches the root).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from agent.config import RegistrySection
from agent.registry.ca import DeviceIssuer, PrivateKey, cert_to_pem, load_device_issuer


@dataclass(frozen=True, slots=True)
class EndpointTrust:
    """What the endpoint signs with and whom it lets in."""

    issuer: DeviceIssuer

    @property
    def device_issuer_cert(self) -> x509.Certificate:
        """The CA certificate that issues device certificates."""
        return self.issuer.issuer.cert

    @property
    def device_issuer_key(self) -> PrivateKey:
        """Its private key."""
        return self.issuer.issuer.key

    @property
    def claim_issuer_certs(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates claim certificates are issued by."""
        return (self.issuer.claim_issuer_cert,)

    def signing_ca(self) -> DeviceIssuer:
        """The device issuer in the shape :class:`~agent.registry.register.Registry` takes."""
        return self.issuer

    def claim_issuers_pem(self) -> bytes:
        """The claim issuers as one PEM bundle (the plugin's ``claim_cafile``)."""
        return b"".join(cert_to_pem(c) for c in self.claim_issuer_certs)

    def tls_cafile_pem(self) -> bytes:
        """The ``cafile`` of mosquitto: the claim issuers and the root they chain to."""
        return self.claim_issuers_pem() + cert_to_pem(self.issuer.root_cert)


def load_endpoint_trust(section: RegistrySection) -> EndpointTrust:
    """The device issuer and the claim issuer of the registry's CA directory.

    Raises:
        ConfigError: ``CA_MISSING``, ``CA_INVALID`` or ``CA_ROOT_ONLY``.
    """
    return EndpointTrust(load_device_issuer(section.ca_dir))
