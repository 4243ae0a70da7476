"""RegisterThing: evaluate a provisioning template and register its resources.

:class:`Registry` runs the seed's ``RegisterThing {templateBody, parameters}`` and answers
``{certificatePem, resourceArns}``, ``resourceArns`` keyed by the template's logical resource
names. The steps of one registration:

1. the parameters are checked (a string-to-string map, keys at most 2,048 characters, values
   at most 4,096) and completed with the template's defaults;
2. the certificate resource is resolved: a CSR is checked and signed by the CA, a PEM must
   have been issued by the CA, a certificate id must be registered; the certificate's
   pseudo-parameters (``AWS::IoT::Certificate::Id``, ``::CommonName``...) join the parameters;
3. the pre-provisioning hook, when there is one, allows or denies and may override
   parameters; its decision is recorded;
4. the rest of the template is evaluated and written in one transaction, honouring each
   resource's ``OverrideSettings`` when it exists already.

Nothing is written unless every step succeeds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agent.config import RegistrySection
from agent.errors import AgentError, ConfigError, FieldProblem
from agent.registry.ca import (
    DEVICE_ISSUER_CERT,
    ROOT_CERT,
    ROOT_KEY,
    DeviceIssuer,
    load_device_issuer,
)
from agent.registry.certsource import (
    check_certificate_fields,
    given_certificate,
    resolve_certificate,
)
from agent.registry.errors import (
    ParameterError,
    ProvisioningDeniedError,
    ResourceRegistrationFailureError,
)
from agent.registry.hook import HookRequest, PreProvisioningHook, call_hook
from agent.registry.signing import (
    CsrPolicy,
    CsrSigner,
    IssuedCertificate,
)
from agent.registry.storage import (
    CertificateRecord,
    HookDecisionRecord,
    PolicyRecord,
    RegistryReader,
    RegistryStorage,
    RegistryTransaction,
    SqliteRegistryStorage,
)
from agent.registry.template import (
    CERTIFICATE_PREFIX,
    POLICY_NAME_RE,
    Evaluation,
    OverrideAction,
    PolicyResource,
    Template,
    parse_template,
)
from agent.registry.writeplan import plan_certificate, plan_thing, write_registration

_log = logging.getLogger(__name__)

PARAMETER_KEY_MAX = 2048
PARAMETER_VALUE_MAX = 4096
DEFAULT_OVERRIDE: OverrideAction = "REPLACE"

ArnKind = Literal["thing", "cert", "policy", "provisioningtemplate"]


@dataclass(frozen=True, slots=True)
class RegisterThingResult:
    """The outcome of one registration.

    Attributes:
        certificate_pem: the registered certificate (None when the template has none).
        resource_arns: ARNs by logical resource name.
        certificate_id: the certificate's 64-hex id (None when the template has none).
        thing_name: the registered thing's name (None when the template has none).
        device_configuration: the evaluated ``DeviceConfiguration``.
    """

    certificate_pem: str | None
    resource_arns: dict[str, str]
    certificate_id: str | None = None
    thing_name: str | None = None
    device_configuration: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The seed's response: ``{"certificatePem", "resourceArns"}``."""
        body: dict[str, Any] = {}
        if self.certificate_pem is not None:
            body["certificatePem"] = self.certificate_pem
        body["resourceArns"] = dict(self.resource_arns)
        return body


@dataclass(frozen=True, slots=True)
class PreparedRegistration:
    """A registration checked and evaluated, ready for :meth:`Registry.commit`.

    Attributes:
        evaluation: the evaluated template.
        certificate: the certificate of the certificate resource (None without one).
    """

    evaluation: Evaluation
    certificate: IssuedCertificate | None


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, str]:
    """Check a RegisterThing parameter map against the seed's model.

    Raises:
        ParameterError: ``PARAMETER_INVALID`` with the path of every bad entry.
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise ParameterError(
            "parameters must be a map of strings to strings",
            fields=[FieldProblem("parameters", "must be an object")],
        )
    forged = [k for k in parameters if isinstance(k, str) and k.startswith(CERTIFICATE_PREFIX)]
    if forged:
        raise ParameterError(
            f"parameters may not set {forged[0][:64]!r}: certificate pseudo-parameters come "
            "only from the certificate",
            reason="CERTIFICATE_PARAMETER_NOT_ALLOWED",
            fields=[
                FieldProblem(f"parameters.{k[:64]}", "set by the certificate only") for k in forged
            ],
        )
    problems: list[FieldProblem] = []
    for key, value in parameters.items():
        if not isinstance(key, str) or len(key) > PARAMETER_KEY_MAX:
            problems.append(
                FieldProblem(f"parameters.{str(key)[:64]}", "keys are strings of at most 2048")
            )
        elif not isinstance(value, str):
            problems.append(FieldProblem(f"parameters.{key}", "must be a string"))
        elif len(value) > PARAMETER_VALUE_MAX:
            problems.append(FieldProblem(f"parameters.{key}", "at most 4096 characters"))
    if problems:
        raise ParameterError(
            f"parameters are not valid: {problems[0].path}: {problems[0].message}",
            fields=problems,
        )
    return dict(parameters)


def policy_name_for(document: str) -> str:
    """The name of a policy created from a template's document: its SHA-256, 64 hex."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


class Registry:
    """The local registry of things, certificates and policies.

    Thread-safe as far as its storage is (the SQLite storage serialises writers across
    threads and processes). Parse a template once (:func:`parse_template`) and pass the
    :class:`Template` to every call when registering many devices.
    """

    def __init__(
        self,
        storage: RegistryStorage,
        ca: DeviceIssuer | None,
        *,
        region: str,
        account: str,
        csr_policy: CsrPolicy | None = None,
        hook_timeout: float = 5.0,
    ) -> None:
        self.storage = storage
        self.ca = ca
        self.region = region
        self.account = account
        self.hook_timeout = hook_timeout
        self._signer = CsrSigner(ca, csr_policy) if ca is not None else None
        self._arn_prefix = f"arn:aws:iot:{region}:{account}:"
        self._policy_names: dict[str, str] = {}

    @classmethod
    def from_config(
        cls, section: RegistrySection, *, storage: RegistryStorage | None = None
    ) -> Registry:
        """A registry from the ``[registry]`` section (device issuer from ``ca_dir``).

        ``ca_dir`` is loaded with :func:`~agent.registry.ca.load_device_issuer` when it holds
        any PKI file; a directory holding only the offline root key is refused.

        Args:
            section: the configuration.
            storage: the storage to use (default: SQLite at ``section.database``).
        """
        has_pki = any(
            (section.ca_dir / f).exists() for f in (ROOT_CERT, ROOT_KEY, DEVICE_ISSUER_CERT)
        )
        ca = load_device_issuer(section.ca_dir) if has_pki else None
        if storage is None:
            storage = SqliteRegistryStorage.open(section.database)
        return cls(
            storage,
            ca,
            region=section.region,
            account=section.account,
            csr_policy=CsrPolicy.from_config(section),
            hook_timeout=section.hook_timeout_seconds,
        )

    def arn(self, kind: ArnKind, name: str) -> str:
        """``arn:aws:iot:<region>:<account>:<kind>/<name>``."""
        return f"{self._arn_prefix}{kind}/{name}"

    # --- administration used by tests, the demo and operators ---------------------------

    def create_policy(self, name: str, document: str | Mapping[str, Any]) -> str:
        """Create or replace a named policy; returns its ARN."""
        if POLICY_NAME_RE.fullmatch(name) is None:
            raise ParameterError(
                f"the policy name {name[:64]!r} does not match {POLICY_NAME_RE.pattern}",
                fields=[FieldProblem("policyName", f"must match {POLICY_NAME_RE.pattern}")],
            )
        text = document if isinstance(document, str) else json.dumps(document)
        with self.storage.transaction() as tx:
            tx.put_policy(PolicyRecord(name=name, document=text))
        return self.arn("policy", name)

    def register_certificate(
        self, certificate_pem: str, *, status: Literal["ACTIVE", "INACTIVE"] = "ACTIVE"
    ) -> str:
        """Register a certificate issued by the CA (fleet provisioning's create-from-csr).

        Returns:
            The certificate id.
        """
        issued = self._signer_or_fail().verify_issued(certificate_pem, path="certificatePem")
        now = dt.datetime.now(dt.UTC)
        with self.storage.transaction() as tx:
            if tx.get_certificate(issued.certificate_id) is None:
                tx.put_certificate(
                    CertificateRecord(
                        issued.certificate_id, issued.certificate_pem, status, now, now
                    )
                )
        return issued.certificate_id

    def sign_csr(self, csr_pem: str) -> IssuedCertificate:
        """Check and sign a CSR without registering anything."""
        return self._signer_or_fail().sign(csr_pem)

    def create_certificate_from_csr(
        self, csr_pem: str, *, status: Literal["ACTIVE", "INACTIVE"] = "ACTIVE"
    ) -> IssuedCertificate:
        """Sign a CSR and register the certificate (fleet provisioning's CreateCertificateFromCsr).

        Raises:
            CsrError: the CSR was refused (field ``certificateSigningRequest``).
        """
        issued = self._signer_or_fail().sign(csr_pem)
        now = dt.datetime.now(dt.UTC)
        with self.storage.transaction() as tx:
            tx.put_certificate(
                CertificateRecord(issued.certificate_id, issued.certificate_pem, status, now, now)
            )
        return issued

    # --- RegisterThing ----------------------------------------------------------------

    def register_thing(
        self,
        template_body: Template | str | Mapping[str, Any],
        parameters: Mapping[str, Any] | None = None,
        *,
        transaction: RegistryTransaction | None = None,
        hook: PreProvisioningHook | None = None,
        template_arn: str = "",
        client_id: str = "",
        claim_certificate_id: str = "",
        certificate_id: str | None = None,
        now: dt.datetime | None = None,
    ) -> RegisterThingResult:
        """Run RegisterThing: :meth:`prepare` then :meth:`commit`.

        Args:
            template_body: the template body (JSON text or object) or, to skip parsing it
                again, a :class:`Template` from :func:`parse_template`.
            parameters: the device's parameters (string to string).
            transaction: an open storage transaction to write into (bulk registration
                batches many lines into one). Without one, the registration commits its own
                transaction. A refused registration writes nothing into it.
            hook: the pre-provisioning hook to ask, if any.
            template_arn: the template's ARN, sent to the hook and recorded.
            client_id: the MQTT client id, sent to the hook.
            claim_certificate_id: the claim certificate's id, sent to the hook.
            certificate_id: see :meth:`prepare`.
            now: the registration time (default: the current time).

        Returns:
            The certificate PEM and the ARNs by logical resource name.

        Raises:
            TemplateError: the template is invalid or its evaluation failed (JSON path in
                ``fields``).
            ParameterError: a parameter is missing or breaks the limits.
            CsrError: the CSR was refused.
            ProvisioningDeniedError: the hook denied (reason ``HOOK_*``).
            ResourceRegistrationFailureError: a named certificate or policy does not exist,
                the certificate lacks a declared subject field, or it was not issued by the CA.
            ConflictingResourceUpdateError: ``OverrideSettings`` ``FAIL`` on a change.
        """
        prepared = self.prepare(
            template_body,
            parameters,
            reader=transaction,
            hook=hook,
            hook_transaction=transaction,
            template_arn=template_arn,
            client_id=client_id,
            claim_certificate_id=claim_certificate_id,
            certificate_id=certificate_id,
        )
        return self.commit(prepared, transaction=transaction, now=now)

    def prepare(
        self,
        template_body: Template | str | Mapping[str, Any],
        parameters: Mapping[str, Any] | None = None,
        *,
        reader: RegistryReader | None = None,
        hook: PreProvisioningHook | None = None,
        hook_transaction: RegistryTransaction | None = None,
        template_arn: str = "",
        client_id: str = "",
        claim_certificate_id: str = "",
        certificate_id: str | None = None,
    ) -> PreparedRegistration:
        """Everything of a registration that needs no write lock.

        Checks the parameters, resolves the certificate (a CSR is checked and signed here,
        the CPU-heavy part), asks the hook and evaluates the template. Run it outside any
        transaction so other writers are not held up, then :meth:`commit` the result.

        Args:
            template_body: as for :meth:`register_thing`.
            parameters: as for :meth:`register_thing`.
            reader: where a ``CertificateId`` is looked up (default: the storage).
            hook: the pre-provisioning hook to ask, if any.
            hook_transaction: where the hook's decision is recorded (default: its own
                transaction).
            template_arn: the template's ARN, sent to the hook and recorded.
            client_id: the MQTT client id, sent to the hook.
            claim_certificate_id: the claim certificate's id, sent to the hook.
            certificate_id: the id of a registered certificate the request is made with
                (fleet provisioning: the certificate behind the ownership token); its
                pseudo-parameters, ``AWS::IoT::Certificate::Id`` included, come from it.

        Raises:
            AgentError: as :meth:`register_thing`, except the errors found against the
                registry's contents (missing policy, override conflicts).
        """
        tpl = (
            template_body if isinstance(template_body, Template) else parse_template(template_body)
        )
        caller_params = check_parameters(parameters)
        params = tpl.resolve_parameters(caller_params)
        source = reader or self.storage
        given = given_certificate(certificate_id, source)
        issued = resolve_certificate(tpl, params, source, given, self._signer_or_fail)
        check_certificate_fields(tpl, issued)
        if issued is not None:
            params = {**params, **issued.parameters}
        if hook is not None:
            params = self._ask_hook(
                hook,
                issued,
                caller_params,
                params,
                hook_transaction,
                template_arn=template_arn,
                client_id=client_id,
                claim_certificate_id=claim_certificate_id,
            )
        return PreparedRegistration(tpl.evaluate(params), issued)

    def commit(
        self,
        prepared: PreparedRegistration,
        *,
        transaction: RegistryTransaction | None = None,
        now: dt.datetime | None = None,
    ) -> RegisterThingResult:
        """Check a prepared registration against the registry and write it.

        Args:
            prepared: from :meth:`prepare`.
            transaction: an open transaction to write into (default: its own).
            now: the registration time (default: the current time).

        Raises:
            ResourceRegistrationFailureError: a named policy does not exist.
            ConflictingResourceUpdateError: ``OverrideSettings`` ``FAIL`` on a change.
        """
        when = now or dt.datetime.now(dt.UTC)
        scope: AbstractContextManager[Any] = (
            self.storage.transaction() if transaction is None else nullcontext(transaction)
        )
        with scope as tx:
            result = self._apply(tx, prepared.evaluation, prepared.certificate, when)
        _log.debug(
            "registered thing %s with certificate %s", result.thing_name, result.certificate_id
        )
        return result

    def register_batch(
        self,
        template_body: Template | str | Mapping[str, Any],
        parameter_sets: Iterable[Mapping[str, Any] | None],
        *,
        hook: PreProvisioningHook | None = None,
        template_arn: str = "",
    ) -> list[RegisterThingResult | AgentError]:
        """Register many devices; one failure never stops the others.

        Every registration is prepared first, outside any transaction (CSR signing and the
        hook do not hold the write lock), then all are committed in one transaction.

        Returns:
            One entry per parameter set, in order: the result or the error it raised.
        """
        tpl = (
            template_body if isinstance(template_body, Template) else parse_template(template_body)
        )
        prepared: list[PreparedRegistration | AgentError] = []
        for params in parameter_sets:
            try:
                prepared.append(self.prepare(tpl, params, hook=hook, template_arn=template_arn))
            except AgentError as exc:
                prepared.append(exc)
        outcomes: list[RegisterThingResult | AgentError] = []
        now = dt.datetime.now(dt.UTC)
        with self.storage.transaction() as tx:
            for item in prepared:
                if isinstance(item, AgentError):
                    outcomes.append(item)
                    continue
                try:
                    outcomes.append(self.commit(item, transaction=tx, now=now))
                except AgentError as exc:
                    outcomes.append(exc)
        return outcomes

    # --- steps ---------------------------------------------------------------------------

    def _signer_or_fail(self) -> CsrSigner:
        if self._signer is None:
            raise ConfigError(
                "the registry has no CA; create one with 'edge-agent ca init' and set "
                "registry.ca_dir",
                reason="CA_MISSING",
            )
        return self._signer

    def _ask_hook(
        self,
        hook: PreProvisioningHook,
        issued: IssuedCertificate | None,
        caller_params: dict[str, str],
        params: dict[str, str],
        transaction: RegistryTransaction | None,
        *,
        template_arn: str,
        client_id: str,
        claim_certificate_id: str,
    ) -> dict[str, str]:
        if hook.timeout > self.hook_timeout:
            hook = replace(hook, timeout=self.hook_timeout)
        certificate_id = issued.certificate_id if issued else ""
        decision = call_hook(
            hook,
            HookRequest(
                certificate_id=certificate_id,
                certificate_pem=issued.certificate_pem if issued else "",
                template_arn=template_arn,
                parameters=caller_params,
                claim_certificate_id=claim_certificate_id,
                client_id=client_id,
            ),
        )
        record = HookDecisionRecord(
            certificate_id, template_arn, decision.allowed, decision.reason, decision.detail
        )
        if transaction is None:
            with self.storage.transaction() as tx:
                tx.record_hook_decision(record)
        else:
            transaction.record_hook_decision(record)
        if not decision.allowed:
            raise ProvisioningDeniedError(
                f"the pre-provisioning hook denied provisioning: {decision.detail}",
                reason=decision.reason,
            )
        # The certificate's own facts cannot be overridden or supplied by the hook.
        facts = issued.parameters if issued else {}
        overrides = {
            k: v
            for k, v in decision.parameter_overrides.items()
            if not k.startswith(CERTIFICATE_PREFIX)
        }
        return {**params, **overrides, **facts}

    def _apply(
        self,
        tx: RegistryTransaction,
        evaluation: Evaluation,
        issued: IssuedCertificate | None,
        now: dt.datetime,
    ) -> RegisterThingResult:
        """Check every resource against the registry first, then write them all.

        Every check that can refuse the registration (override conflicts, missing
        policies) runs before the first write, so a refused registration writes nothing
        without needing a savepoint.
        """
        arns: dict[str, str] = {}
        certificate_id = None
        certificate_record = None
        if evaluation.certificate is not None and issued is not None:
            certificate_id = issued.certificate_id
            certificate_record = plan_certificate(tx, evaluation.certificate, issued, now)
            arns[evaluation.certificate.logical_id] = self.arn("cert", certificate_id)
        thing_name = None
        thing_record = None
        if evaluation.thing is not None:
            thing_name = evaluation.thing.thing_name
            thing_record = plan_thing(tx, evaluation.thing, now)
            arns[evaluation.thing.logical_id] = self.arn("thing", thing_name)
        policy_names: list[str] = []
        new_policies: list[PolicyRecord] = []
        for policy in evaluation.policies:
            name, record = self._plan_policy(tx, policy, now)
            policy_names.append(name)
            if record is not None and all(p.name != name for p in new_policies):
                new_policies.append(record)
            if policy.policy_document is not None:
                arns[policy.logical_id] = self.arn("policy", name)
        write_registration(
            tx,
            certificate_record,
            thing_record,
            new_policies,
            attach=(certificate_id, thing_name, policy_names),
        )
        return RegisterThingResult(
            certificate_pem=issued.certificate_pem if issued else None,
            resource_arns=arns,
            certificate_id=certificate_id,
            thing_name=thing_name,
            device_configuration=evaluation.device_configuration,
        )

    def _plan_policy(
        self, tx: RegistryTransaction, policy: PolicyResource, now: dt.datetime
    ) -> tuple[str, PolicyRecord | None]:
        if policy.policy_name is not None:
            if tx.get_policy(policy.policy_name) is None:
                raise ResourceRegistrationFailureError(
                    f"no policy named {policy.policy_name!r} exists",
                    reason="POLICY_NOT_FOUND",
                    fields=[
                        FieldProblem(
                            f"Resources.{policy.logical_id}.Properties.PolicyName",
                            "no such policy",
                        )
                    ],
                )
            return policy.policy_name, None
        assert policy.policy_document is not None  # noqa: S101 - one of the two is set
        name = self._policy_names.get(policy.policy_document)
        if name is None:
            name = policy_name_for(policy.policy_document)
            if len(self._policy_names) < _POLICY_NAME_CACHE:
                self._policy_names[policy.policy_document] = name
        if tx.get_policy(name) is not None:
            return name, None
        return name, PolicyRecord(name, policy.policy_document, now)


_POLICY_NAME_CACHE = 256
