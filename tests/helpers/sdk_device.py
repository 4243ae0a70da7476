"""A device made of the AWS IoT Device SDK v2 for Python, as in AWS's fleet-provisioning sample.

:func:`provision_v311` uses ``IotIdentityClient`` over an MQTT 3.1.1 connection (the SDK
subscribes each response topic, one at a time, before publishing); :func:`provision_v5`
uses ``IotIdentityClientV2`` over the SDK's MQTT 5 client (request-response client).
"""

from __future__ import annotations

import concurrent.futures
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from awscrt import mqtt, mqtt5, mqtt_request_response
from awsiot import V2ServiceException, iotidentity, mqtt5_client_builder, mqtt_connection_builder

from tests.helpers.endpoint import Claim

Method = Literal["csr", "keys"]
TIMEOUT = 15.0


@dataclass
class Provisioned:
    """What the device got."""

    certificate_id: str
    certificate_pem: str
    token: str
    thing_name: str
    device_configuration: dict[str, str]
    private_key: str | None = None


@dataclass
class RejectedError(Exception):
    """A ``.../rejected`` answer."""

    status_code: int
    error_code: str
    error_message: str
    step: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sdk_client_id() -> str:
    """A client id like the SDK samples' (``test-`` and a UUID: 41 characters)."""
    hex_ = secrets.token_hex(16)
    return f"test-{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"


def _create_request(method: Method, csr: str | None) -> Any:
    if method == "csr":
        return iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
    return iotidentity.CreateKeysAndCertificateRequest()


def provision_v311(
    port: int,
    claim: Claim,
    ca_file: str,
    *,
    template: str,
    parameters: dict[str, str],
    csr: str | None = None,
    method: Method = "csr",
    client_id: str | None = None,
    token: str | None = None,
) -> Provisioned:
    """Provision over MQTT 3.1.1 with ``IotIdentityClient`` (``clean_session=False``)."""
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=port,
        cert_filepath=str(claim.cert),
        pri_key_filepath=str(claim.key),
        ca_filepath=ca_file,
        client_id=client_id or sdk_client_id(),
        clean_session=False,
        keep_alive_secs=30,
    )
    connection.connect().result(TIMEOUT)
    try:
        identity = iotidentity.IotIdentityClient(connection)
        created: concurrent.futures.Future[Any] = concurrent.futures.Future()
        registered: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def settle(target: concurrent.futures.Future[Any], step: str) -> tuple[Any, Any]:
            def ok(response: Any) -> None:
                if not target.done():
                    target.set_result(response)

            def rejected(error: Any) -> None:
                if not target.done():
                    target.set_exception(
                        RejectedError(
                            error.status_code, error.error_code, error.error_message, step
                        )
                    )

            return ok, rejected

        qos = mqtt.QoS.AT_LEAST_ONCE
        ok, rejected = settle(created, "create")
        if method == "csr":
            sub = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
            identity.subscribe_to_create_certificate_from_csr_accepted(sub, qos, ok)[0].result(
                TIMEOUT
            )
            identity.subscribe_to_create_certificate_from_csr_rejected(sub, qos, rejected)[
                0
            ].result(TIMEOUT)
        else:
            sub = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
            identity.subscribe_to_create_keys_and_certificate_accepted(sub, qos, ok)[0].result(
                TIMEOUT
            )
            identity.subscribe_to_create_keys_and_certificate_rejected(sub, qos, rejected)[
                0
            ].result(TIMEOUT)
        reg_sub = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
        ok2, rejected2 = settle(registered, "register")
        identity.subscribe_to_register_thing_accepted(reg_sub, qos, ok2)[0].result(TIMEOUT)
        identity.subscribe_to_register_thing_rejected(reg_sub, qos, rejected2)[0].result(TIMEOUT)
        if method == "csr":
            identity.publish_create_certificate_from_csr(_create_request(method, csr), qos).result(
                TIMEOUT
            )
        else:
            identity.publish_create_keys_and_certificate(_create_request(method, csr), qos).result(
                TIMEOUT
            )
        cert = created.result(TIMEOUT)
        used_token = token or cert.certificate_ownership_token
        identity.publish_register_thing(
            iotidentity.RegisterThingRequest(
                template_name=template,
                certificate_ownership_token=used_token,
                parameters=parameters,
            ),
            qos,
        ).result(TIMEOUT)
        thing = registered.result(TIMEOUT)
        return Provisioned(
            cert.certificate_id,
            cert.certificate_pem,
            cert.certificate_ownership_token,
            thing.thing_name,
            dict(thing.device_configuration or {}),
            getattr(cert, "private_key", None),
        )
    finally:
        connection.disconnect().result(TIMEOUT)


def _v2_call(future: concurrent.futures.Future[Any], step: str) -> Any:
    try:
        return future.result(TIMEOUT)
    except V2ServiceException as exc:
        error = exc.modeled_error
        if error is None:
            raise
        raise RejectedError(
            error.status_code, error.error_code, error.error_message, step
        ) from None


def provision_v5(
    port: int,
    claim: Claim,
    ca_file: str,
    *,
    template: str,
    parameters: dict[str, str],
    csr: str | None = None,
    method: Method = "csr",
    client_id: str | None = None,
) -> Provisioned:
    """Provision over MQTT 5 with ``IotIdentityClientV2``."""
    connected: concurrent.futures.Future[bool] = concurrent.futures.Future()
    stopped: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def on_success(_: Any) -> None:
        if not connected.done():
            connected.set_result(True)

    def on_failure(data: Any) -> None:
        if not connected.done():
            connected.set_exception(ConnectionError(str(data.exception)))

    def on_stopped(_: Any) -> None:
        if not stopped.done():
            stopped.set_result(True)

    client = mqtt5_client_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=port,
        cert_filepath=str(claim.cert),
        pri_key_filepath=str(claim.key),
        ca_filepath=ca_file,
        client_id=client_id or sdk_client_id(),
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=on_stopped,
        session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
    )
    client.start()
    try:
        connected.result(TIMEOUT)
        identity = iotidentity.IotIdentityClientV2(
            client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=2,
                max_streaming_subscriptions=1,
                operation_timeout_in_seconds=int(TIMEOUT),
            ),
        )
        if method == "csr":
            cert = _v2_call(
                identity.create_certificate_from_csr(_create_request(method, csr)), "create"
            )
        else:
            cert = _v2_call(
                identity.create_keys_and_certificate(_create_request(method, csr)), "create"
            )
        thing = _v2_call(
            identity.register_thing(
                iotidentity.RegisterThingRequest(
                    template_name=template,
                    certificate_ownership_token=cert.certificate_ownership_token,
                    parameters=parameters,
                )
            ),
            "register",
        )
        return Provisioned(
            cert.certificate_id,
            cert.certificate_pem,
            cert.certificate_ownership_token,
            thing.thing_name,
            dict(thing.device_configuration or {}),
            getattr(cert, "private_key", None),
        )
    finally:
        client.stop()
        stopped.result(TIMEOUT)
