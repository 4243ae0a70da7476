"""Registry-side seed patterns: whole-value, ASCII semantics (the same helper as the archive)."""

from __future__ import annotations

import pytest

from agent.errors import AgentError
from agent.registry.register import Registry
from agent.registry.template_fields import check_template_name


def _thing(name: str) -> dict[str, object]:
    return {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": name}}}}


@pytest.mark.parametrize("name", ["edge-1", "a", "A:b_c-9", "x" * 128])
def test_thing_names_at_the_edges_are_accepted(registry: Registry, name: str) -> None:
    assert registry.register_thing(_thing(name)).thing_name == name


@pytest.mark.parametrize("name", ["edge-1\n", "edge\u0661", "\u00e9", "x" * 129, "", "a b"])
def test_thing_names_past_the_edges_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(AgentError) as caught:
        registry.register_thing(_thing(name))
    assert caught.value.code == "InvalidRequestException"


@pytest.mark.parametrize("name", ["Policy_1", "a+=,.@-", "p" * 128])
def test_policy_names_at_the_edges_are_accepted(registry: Registry, name: str) -> None:
    assert registry.create_policy(name, {"Version": "2012-10-17", "Statement": []})


@pytest.mark.parametrize("name", ["Policy\n", "Pol\u00e9", "Pol\u0661", "p" * 129, "a b"])
def test_policy_names_past_the_edges_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(AgentError):
        registry.create_policy(name, {"Version": "2012-10-17", "Statement": []})


@pytest.mark.parametrize("name", ["t", "T-1_x", "t" * 36])
def test_template_names_at_the_edges(name: str) -> None:
    assert check_template_name(name) == name


@pytest.mark.parametrize("name", ["t\n", "t\u0661", "t" * 37, "", "t.x"])
def test_template_names_past_the_edges(name: str) -> None:
    with pytest.raises(AgentError):
        check_template_name(name)
