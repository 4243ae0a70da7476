"""The registry's errors, named after the RegisterThing and CreateProvisioningTemplate seeds.

Template problems are :class:`TemplateError` (``InvalidRequestException`` 400) and name the
JSON path of every offending element in ``fields`` (``Resources.thing.Properties.ThingName``).
"""

from __future__ import annotations

from agent.errors import EXIT_REJECTED, AgentError, InvalidRequestError


class TemplateError(InvalidRequestError):
    """The template is not valid, or cannot be evaluated with the given parameters."""

    default_reason = "TEMPLATE_INVALID"


class ParameterError(InvalidRequestError):
    """A RegisterThing parameter is missing, too long or not a string."""

    default_reason = "PARAMETER_INVALID"


class CsrError(InvalidRequestError):
    """A certificate signing request was refused (signature, key type or size, subject)."""

    default_reason = "CSR_INVALID"


class ConflictingResourceUpdateError(AgentError):
    """An existing resource conflicts with the template.

    Seed ``ConflictingResourceUpdateException`` (409).

    Raised for ``OverrideSettings`` ``FAIL`` on a property that would change, and when a
    concurrent registration changed the same resource.
    """

    code = "ConflictingResourceUpdateException"
    status_code = 409
    exit_code = EXIT_REJECTED
    default_reason = "RESOURCE_CONFLICT"


class ResourceRegistrationFailureError(AgentError):
    """A resource could not be registered (seed ``ResourceRegistrationFailureException``)."""

    code = "ResourceRegistrationFailureException"
    status_code = 400
    exit_code = EXIT_REJECTED
    default_reason = "RESOURCE_REGISTRATION_FAILED"


class UnauthorizedError(AgentError):
    """The request is not authorized (seed ``UnauthorizedException``)."""

    code = "UnauthorizedException"
    status_code = 401
    exit_code = EXIT_REJECTED
    default_reason = "ACCESS_DENIED"


class ProvisioningDeniedError(UnauthorizedError):
    """The pre-provisioning hook did not allow provisioning (or failed, which denies)."""

    default_reason = "ACCESS_DENIED"
