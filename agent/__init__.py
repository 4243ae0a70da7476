"""edge-agent: the on-device provisioning agent."""

from agent.errors import AgentError, FieldProblem

__all__ = ["AgentError", "FieldProblem", "__version__"]

__version__ = "0.1.0"
