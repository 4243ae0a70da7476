"""Fleet-provisioning requests answered in-process: payloads, tokens, claims, every bad input."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.archive.make import issue_claim_certificate
from agent.mqtt.fleet import generate_device_key
from agent.mqtt.fleet import make_csr as appliance_csr
from agent.registry.ca import CertificateAuthority, cert_to_pem, generate_key, init_ca
from agent.registry.fleet import (
    FleetProvisioning,
    FleetReply,
    FleetRequest,
    RejectedError,
    parse_topic,
)
from agent.registry.register import Registry
from agent.registry.storage import SqliteRegistryStorage
from agent.registry.template import validate_template_body
from agent.registry.templates_store import TemplateStore
from agent.store import Store
from tests.helpers.endpoint import ROLE_ARN
from tests.helpers.registry import (
    example_template,
    make_csr,
    tampered_csr,
    weak_rsa_csr,
    write_hook,
)

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
KEYS_TOPIC = "$aws/certificates/create/json"
REGISTER = "$aws/provisioning-templates/{}/provision/{}"


@pytest.fixture(scope="module")
def fleet_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return init_ca(tmp_path_factory.mktemp("fleet-ca") / "ca")


@dataclass
class Claim:
    name: str
    pem: str
    fingerprint: str

    def request(self, topic: str, body: Any, *, raw: bytes | None = None) -> FleetRequest:
        if raw is None:
            fmt = topic.rsplit("/", 1)[-1]
            raw = cbor2.dumps(body) if fmt == "cbor" else json.dumps(body).encode()
        return FleetRequest(topic, raw, self.fingerprint, self.pem, "client-1")


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class World:
    fleet: FleetProvisioning
    storage: SqliteRegistryStorage
    templates: TemplateStore
    ca: CertificateAuthority
    clock: Clock
    tmp: Path

    def claim(self, name: str = "dev-1") -> Claim:
        """A claim certificate as the archive tool issues it (no CN past 64 characters)."""
        key = generate_key("ec-p256")
        now = dt.datetime.now(dt.UTC)
        cert = issue_claim_certificate(
            self.ca.factory(),
            name,
            key.public_key(),
            now - dt.timedelta(minutes=5),
            dt.timedelta(days=1),
        )
        return Claim(name, cert_to_pem(cert).decode(), cert.fingerprint(hashes.SHA256()).hex())

    def template(self, name: str = "edge-fleet", **extra: Any) -> None:
        request = {
            "templateName": name,
            "templateBody": json.dumps(example_template()),
            "provisioningRoleArn": ROLE_ARN,
            "enabled": True,
            "type": "FLEET_PROVISIONING",
            **extra,
        }
        self.templates.create(request)

    def count(self, table: str) -> int:
        row = self.storage.store.db.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(row[0])


@pytest.fixture
def world(tmp_path: Path, fleet_ca: CertificateAuthority) -> Iterator[World]:
    store = Store(tmp_path / "registry.db")
    storage = SqliteRegistryStorage(store, owns_store=True)
    registry = Registry(
        storage, fleet_ca.registry(), region="eu-west-1", account="111122223333", hook_timeout=0.5
    )
    registry.create_policy("EdgeAppliancePolicy", {"Version": "2012-10-17", "Statement": []})
    templates = TemplateStore(
        store, region="eu-west-1", account="111122223333", body_validator=validate_template_body
    )
    clock = Clock()
    fleet = FleetProvisioning(registry, storage, templates, clock=clock)
    w = World(fleet, storage, templates, fleet_ca, clock, tmp_path)
    w.template()
    try:
        yield w
    finally:
        storage.close()


def answer(world: World, request: FleetRequest) -> FleetReply:
    reply = world.fleet.handle(request)
    assert reply is not None
    return reply


def rejected(reply: FleetReply, status: int, code: str) -> str:
    assert not reply.accepted, reply.body
    assert reply.topic.endswith("/rejected")
    assert set(reply.body) == {"statusCode", "errorCode", "errorMessage"}
    assert (reply.body["statusCode"], reply.body["errorCode"]) == (status, code)
    message: str = reply.body["errorMessage"]
    return message


def create(world: World, claim: Claim, common_name: str | None = None) -> dict[str, Any]:
    reply = answer(
        world,
        claim.request(
            CSR_TOPIC, {"certificateSigningRequest": make_csr(common_name or claim.name)}
        ),
    )
    assert reply.accepted, reply.body
    assert reply.topic == CSR_TOPIC + "/accepted"
    return reply.body


def register(
    world: World,
    claim: Claim,
    token: str,
    *,
    name: str = "edge-fleet",
    fmt: str = "json",
    serial: str = "1",
) -> FleetReply:
    body = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": serial}}
    return answer(world, claim.request(REGISTER.format(name, fmt), body))


def test_topics() -> None:
    assert parse_topic(CSR_TOPIC) == ("CreateCertificateFromCsr", "", "json")
    assert parse_topic("$aws/certificates/create/cbor") == ("CreateKeysAndCertificate", "", "cbor")
    assert parse_topic(REGISTER.format("a-b_1", "json")) == ("RegisterThing", "a-b_1", "json")
    for topic in (
        "$aws/certificates/create/xml",
        "$aws/provisioning-templates/a+b/provision/json",
        "$aws/things/x/shadow/get",
        CSR_TOPIC + "/accepted",
        "x" * 10,
    ):
        assert parse_topic(topic) is None


def test_csr_then_register_thing(world: World) -> None:
    claim = world.claim()
    created = create(world, claim)
    assert set(created) == {"certificateOwnershipToken", "certificateId", "certificatePem"}
    record = world.storage.get_certificate(created["certificateId"])
    assert record is not None
    assert record.status == "INACTIVE"  # pending until RegisterThing
    reply = register(world, claim, created["certificateOwnershipToken"])
    assert reply.accepted
    assert reply.body == {
        "deviceConfiguration": {"ntpServer": "pool.ntp.org"},
        "thingName": "edge-1",
    }
    assert world.storage.thing_principals("edge-1") == (created["certificateId"],)
    record = world.storage.get_certificate(created["certificateId"])
    assert record is not None
    assert record.status == "ACTIVE"
    assert world.count("fleet_tokens") == 1
    stored = world.storage.store.db.execute("SELECT token_sha256 FROM fleet_tokens").fetchone()[0]
    assert stored != created["certificateOwnershipToken"]  # only the hash is kept


def test_cbor_both_ways(world: World) -> None:
    claim = world.claim()
    topic = "$aws/certificates/create-from-csr/cbor"
    reply = answer(world, claim.request(topic, {"certificateSigningRequest": make_csr(claim.name)}))
    assert reply.accepted
    assert cbor2.loads(reply.payload) == reply.body
    token = reply.body["certificateOwnershipToken"]
    done = register(world, claim, token, fmt="cbor")
    assert done.topic == REGISTER.format("edge-fleet", "cbor") + "/accepted"
    assert cbor2.loads(done.payload)["thingName"] == "edge-1"
    bad = answer(world, claim.request(REGISTER.format("edge-fleet", "cbor"), None, raw=b"\xff\x00"))
    rejected(bad, 400, "InvalidPayload")
    assert isinstance(cbor2.loads(bad.payload)["statusCode"], int)


def test_create_keys_and_certificate_accepts_empty_object(world: World) -> None:
    claim = world.claim()
    for raw in (b"{}", b""):
        reply = answer(world, claim.request(KEYS_TOPIC, None, raw=raw))
        assert reply.accepted
        assert set(reply.body) == {
            "certificateId",
            "certificatePem",
            "privateKey",
            "certificateOwnershipToken",
        }
        cert = x509.load_pem_x509_certificate(reply.body["certificatePem"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == claim.name
    assert register(world, claim, reply.body["certificateOwnershipToken"]).accepted


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b'{"a": 1, "a": 2}', b"\xff\xfe", b"NaN"],
)
def test_malformed_json_is_rejected_and_writes_nothing(world: World, raw: bytes) -> None:
    claim = world.claim()
    for topic in (CSR_TOPIC, KEYS_TOPIC, REGISTER.format("edge-fleet", "json")):
        if topic == KEYS_TOPIC and raw == b"":
            continue
        rejected(answer(world, claim.request(topic, None, raw=raw)), 400, "InvalidPayload")
    assert world.count("registry_certificates") == 0
    assert world.count("fleet_tokens") == 0


def test_oversize_payload(world: World) -> None:
    claim = world.claim()
    raw = json.dumps({"certificateSigningRequest": "x" * 70000}).encode()
    message = rejected(
        answer(world, claim.request(CSR_TOPIC, None, raw=raw)), 400, "InvalidPayload"
    )
    assert "65536" in message
    assert world.count("registry_certificates") == 0


def test_missing_fields(world: World) -> None:
    claim = world.claim()
    rejected(answer(world, claim.request(CSR_TOPIC, {})), 400, "InvalidPayload")
    rejected(
        answer(world, claim.request(CSR_TOPIC, {"certificateSigningRequest": 5})),
        400,
        "InvalidPayload",
    )
    empty = answer(
        world,
        claim.request(REGISTER.format("edge-fleet", "json"), {"certificateOwnershipToken": ""}),
    )
    assert (
        rejected(empty, 400, "InvalidCertificateOwnershipToken")
        == "Certificate ownership token cannot be empty."
    )
    token = create(world, claim)["certificateOwnershipToken"]
    bad_params = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": 5}}
    rejected(
        answer(world, claim.request(REGISTER.format("edge-fleet", "json"), bad_params)),
        400,
        "InvalidPayload",
    )


@pytest.mark.parametrize(
    ("csr", "what"),
    [
        (tampered_csr, "signature"),
        (weak_rsa_csr, "bits"),
        (lambda: make_csr("someone-else"), "common name"),
    ],
)
def test_refused_csrs(world: World, csr: Any, what: str) -> None:
    claim = world.claim("device-aaaa" if what == "signature" else "dev-1")
    reply = answer(world, claim.request(CSR_TOPIC, {"certificateSigningRequest": csr()}))
    assert what in rejected(reply, 400, "InvalidCsr")
    assert world.count("registry_certificates") == 0


LONG_NAME = "cold-store-7-" + "x" * 60  # 73 characters: more than a CN holds


def test_the_appliance_csr_is_accepted_for_its_claim(world: World) -> None:
    """The CSR ``provision fleet`` builds (CN = the thing name) passes the claim rule."""
    claim = world.claim("hub-17")
    csr = appliance_csr(generate_device_key("ec-p256"), "hub-17").decode()
    reply = answer(world, claim.request(CSR_TOPIC, {"certificateSigningRequest": csr}))
    assert reply.accepted, reply.body
    cert = x509.load_pem_x509_certificate(reply.body["certificatePem"].encode())
    assert cert.subject.rfc4514_string() == "CN=hub-17"


def test_a_name_longer_than_a_common_name_is_refused_clearly(world: World) -> None:
    """Such a claim has no CN: the appliance's CSR has an empty subject, refused as such;
    CreateKeysAndCertificate is refused rather than naming every such device alike."""
    claim = world.claim(LONG_NAME)
    csr = appliance_csr(generate_device_key("ec-p256"), LONG_NAME).decode()
    assert x509.load_pem_x509_csr(csr.encode()).subject.rfc4514_string() == ""
    reply = answer(world, claim.request(CSR_TOPIC, {"certificateSigningRequest": csr}))
    assert "no common name" in rejected(reply, 400, "InvalidCsr")
    reply = answer(world, claim.request(KEYS_TOPIC, None, raw=b"{}"))
    assert "longer than 64" in rejected(reply, 400, "InvalidRequest")
    assert world.count("registry_certificates") == 0


def test_any_subject_when_configured(world: World) -> None:
    world.fleet.csr_subject = "any"
    claim = world.claim()
    assert create(world, claim, "someone-else")["certificateId"]


def test_unknown_and_disabled_templates(world: World) -> None:
    claim = world.claim()
    token = create(world, claim)["certificateOwnershipToken"]
    rejected(register(world, claim, token, name="nope"), 404, "ResourceNotFound")
    world.template("off", enabled=False)
    assert "disabled" in rejected(register(world, claim, token, name="off"), 400, "InvalidRequest")
    assert world.storage.count_things() == 0
    assert register(world, claim, token).accepted  # the token was not spent


def test_hook_denies_and_times_out(world: World) -> None:
    deny = write_hook(world.tmp, "deny.py", 'print(json.dumps({"allowProvisioning": False}))')
    slow = write_hook(world.tmp, "slow.py", "time.sleep(5)")
    world.template("denied", preProvisioningHook={"targetArn": str(deny)})
    world.template("slow", preProvisioningHook={"targetArn": str(slow)})
    claim = world.claim()
    token = create(world, claim)["certificateOwnershipToken"]
    rejected(register(world, claim, token, name="denied"), 403, "AccessDenied")
    assert "did not answer" in rejected(
        register(world, claim, token, name="slow"), 403, "AccessDenied"
    )
    assert world.storage.count_things() == 0
    assert world.count("fleet_claims") == 0


def test_token_of_another_claim_is_rejected_and_writes_nothing(world: World) -> None:
    first, second = world.claim("dev-1"), world.claim("dev-2")
    token = create(world, first)["certificateOwnershipToken"]
    message = rejected(register(world, second, token), 400, "InvalidCertificateOwnershipToken")
    assert token not in message
    assert world.storage.count_things() == 0
    rejected(register(world, second, "made-up-token"), 400, "InvalidCertificateOwnershipToken")
    assert register(world, first, token).accepted  # its owner may still use it


def test_token_expires_after_an_hour(world: World) -> None:
    claim = world.claim()
    token = create(world, claim)["certificateOwnershipToken"]
    world.clock.now += dt.timedelta(minutes=59)
    world.fleet.claim_registrations = 0
    assert register(world, claim, token).accepted
    other = world.claim("dev-2")
    token = create(world, other)["certificateOwnershipToken"]
    world.clock.now += dt.timedelta(hours=1, seconds=1)
    message = rejected(register(world, other, token), 400, "InvalidCertificateOwnershipToken")
    assert "expired" in message


def test_one_registration_per_claim(world: World) -> None:
    claim = world.claim()
    assert register(world, claim, create(world, claim)["certificateOwnershipToken"]).accepted
    second = answer(world, claim.request(KEYS_TOPIC, {}))
    rejected(
        register(world, claim, second.body["certificateOwnershipToken"], serial="2"),
        403,
        "ClaimCertificateAlreadyUsed",
    )
    assert world.storage.get_thing("edge-2") is None


def test_shared_claims_when_unlimited(world: World) -> None:
    world.fleet.claim_registrations = 0
    world.fleet.csr_subject = "any"
    claim = world.claim("fleet-claim")
    for serial in ("1", "2", "3"):
        token = create(world, claim, f"dev-{serial}")["certificateOwnershipToken"]
        assert register(world, claim, token, serial=serial).accepted
    assert world.storage.count_things() == 3


def test_retries_get_the_same_answers(world: World) -> None:
    claim = world.claim()
    csr = make_csr(claim.name)
    first = answer(world, claim.request(CSR_TOPIC, {"certificateSigningRequest": csr}))
    again = answer(world, claim.request(CSR_TOPIC, {"certificateSigningRequest": csr}))
    assert first.body["certificateId"] == again.body["certificateId"]
    assert world.count("registry_certificates") == 1
    token = again.body["certificateOwnershipToken"]
    one = register(world, claim, token)
    two = register(world, claim, token)
    assert one.accepted
    assert two.accepted
    assert one.body == two.body
    assert world.count("fleet_claims") == 1
    assert (
        world.storage.store.db.execute("SELECT registrations FROM fleet_claims").fetchone()[0] == 1
    )
    # the same token on another template is not a retry
    world.template("other")
    rejected(register(world, claim, token, name="other"), 400, "InvalidCertificateOwnershipToken")


def test_other_topics_are_not_answered(world: World) -> None:
    assert world.fleet.handle(world.claim().request("$aws/things/x/shadow/get", {})) is None


def test_group_commit_shares_transactions_and_isolates_failures(world: World) -> None:
    import concurrent.futures
    import dataclasses
    import threading

    from agent.registry.group_commit import GroupCommitter

    committer = GroupCommitter(world.tmp / "registry.db")
    local = threading.local()
    opened: list[SqliteRegistryStorage] = []
    lock = threading.Lock()

    def thread_world() -> World:
        # as ``registry serve`` runs it: a handler and connection per thread, one committer
        if not hasattr(local, "world"):
            store = Store(world.tmp / "registry.db")
            storage = SqliteRegistryStorage(store, owns_store=True)
            registry = Registry(
                storage, world.ca.registry(), region="eu-west-1", account="111122223333"
            )
            templates = TemplateStore(
                store,
                region="eu-west-1",
                account="111122223333",
                body_validator=validate_template_body,
            )
            fleet = FleetProvisioning(
                registry, storage, templates, clock=world.clock, committer=committer
            )
            local.world = dataclasses.replace(
                world, fleet=fleet, storage=storage, templates=templates
            )
            with lock:
                opened.append(storage)
        mine: World = local.world
        return mine

    try:
        claims = [world.claim(f"dev-{i}") for i in range(12)]

        def one(i: int) -> FleetReply:
            here = thread_world()
            claim = claims[i]
            created = create(here, claim)
            if i % 4 == 0:
                return register(here, world.claim("thief"), created["certificateOwnershipToken"])
            return register(here, claim, created["certificateOwnershipToken"], serial=str(i))

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(one, range(12)))
        for i, reply in enumerate(replies):
            if i % 4 == 0:
                rejected(reply, 400, "InvalidCertificateOwnershipToken")
            else:
                assert reply.accepted, reply.body
        assert world.storage.count_things() == 9
        assert world.count("registry_certificates") == 12
    finally:
        committer.close()
        for storage in opened:
            storage.close()


def test_a_claim_certificate_verified_once_is_still_refused_outside_its_validity(
    world: World,
) -> None:
    claim = world.claim()  # valid for one day from five minutes ago
    token = create(world, claim)["certificateOwnershipToken"]  # verified, remembered
    world.clock.now += dt.timedelta(days=1)
    rejected(register(world, claim, token), 401, "Unauthorized")
    world.clock.now -= dt.timedelta(days=1, minutes=10)  # before its notBefore
    rejected(answer(world, claim.request(KEYS_TOPIC, {})), 401, "Unauthorized")
    world.clock.now += dt.timedelta(minutes=10)
    assert register(world, claim, token).accepted
    assert world.storage.count_things() == 1


def test_a_certificate_of_another_issuer_is_refused_even_with_a_known_fingerprint(
    world: World, tmp_path: Path
) -> None:
    claim = world.claim()
    create(world, claim)
    other = init_ca(tmp_path / "other").claim_issuer
    key = generate_key("ec-p256")
    cert = other.issue(
        common_name=claim.name,
        public_key=key.public_key(),
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5),
        lifetime=dt.timedelta(days=1),
    )
    forged = Claim(claim.name, cert_to_pem(cert).decode(), claim.fingerprint)
    rejected(answer(world, forged.request(KEYS_TOPIC, {})), 401, "Unauthorized")


def test_steps_yield_each_write_and_take_its_result_when_durable(world: World) -> None:
    """The event-loop path: the caller runs the writes (here through ``submit``)."""
    from agent.registry.fleet import drive
    from agent.registry.group_commit import GroupCommitter

    committer = GroupCommitter(world.tmp / "registry.db")
    try:
        claim = world.claim()
        csr = make_csr(claim.name)
        steps = world.fleet.steps(claim.request(CSR_TOPIC, {"certificateSigningRequest": csr}))
        assert steps is not None
        write = next(steps)  # signed, nothing written yet
        assert world.count("registry_certificates") == 0
        outcome: list[tuple[object, BaseException | None]] = []
        done = threading.Event()

        def on_done(result: object, error: BaseException | None) -> None:
            outcome.append((result, error))
            done.set()

        committer.submit(write, on_done)
        assert done.wait(10)
        assert world.count("registry_certificates") == 1  # durable before the steps resume
        (result, error) = outcome[0]
        assert error is None
        with pytest.raises(StopIteration) as finished:
            steps.send(result)
        reply: FleetReply = finished.value.value
        assert reply.accepted
        token = reply.body["certificateOwnershipToken"]

        # a write that fails is thrown into the steps: a rejection, nothing written
        world.fleet.claim_registrations = 1
        steps = world.fleet.steps(claim.request(REGISTER.format("edge-fleet", "json"), {
            "certificateOwnershipToken": token, "parameters": {"SerialNumber": "1"}
        }))  # fmt: skip
        assert steps is not None
        next(steps)  # checked and evaluated; the write is not run: it fails, as if refused
        with pytest.raises(StopIteration) as finished:
            steps.throw(RejectedError(403, "ClaimCertificateAlreadyUsed", "used"))
        rejected(finished.value.value, 403, "ClaimCertificateAlreadyUsed")
        assert world.storage.count_things() == 0
        # driven to the end with a blocking writer, the same request registers
        steps = world.fleet.steps(claim.request(REGISTER.format("edge-fleet", "json"), {
            "certificateOwnershipToken": token, "parameters": {"SerialNumber": "1"}
        }))  # fmt: skip
        assert steps is not None
        assert drive(steps, committer.run).accepted
        assert world.storage.count_things() == 1
    finally:
        committer.close()


def test_only_hooked_registrations_are_blocking(world: World) -> None:
    deny = write_hook(world.tmp, "deny.py", 'print(json.dumps({"allowProvisioning": False}))')
    world.template("hooked", preProvisioningHook={"targetArn": str(deny)})
    claim = world.claim()
    assert world.fleet.blocking(claim.request(REGISTER.format("hooked", "json"), {}))
    assert not world.fleet.blocking(claim.request(REGISTER.format("edge-fleet", "json"), {}))
    assert not world.fleet.blocking(claim.request(REGISTER.format("missing", "json"), {}))
    assert not world.fleet.blocking(claim.request(KEYS_TOPIC, {}))
