"""Property: whatever a template holds, it evaluates to strings or fails with a located error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import AgentError
from agent.registry.template import parse_template

FUNCTIONS = ["Ref", "Fn::Join", "Fn::Select", "Fn::Split", "Fn::FindInMap", "Fn::Sub", "Fn::If"]
NAMES = ["Serial", "List", "Nope", "AWS::IoT::Certificate::Id", "Lists", "k", "v", ""]

scalars = st.one_of(
    st.sampled_from(NAMES),
    st.text(alphabet="ab,${}!-_ ", max_size=8),
    st.integers(min_value=-3, max_value=5),
    st.booleans(),
    st.none(),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FUNCTIONS), children, min_size=1, max_size=1),
        st.dictionaries(st.sampled_from(NAMES), children, max_size=2),
    )


values = st.recursive(scalars, _extend, max_leaves=12)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=values,
    groups=values,
    config=values,
    params=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["a,b", "1", "", "x y"])),
)
def test_only_agent_errors(name: Any, groups: Any, config: Any, params: dict[str, str]) -> None:
    body = {
        "Parameters": {"Serial": {"Type": "String"}, "List": {"Type": "String", "Default": "a,b"}},
        "Mappings": {"Lists": {"k": {"v": ["a", "b"], "s": "x"}}},
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": name, "ThingGroups": groups},
            }
        },
        "DeviceConfiguration": {"c": config},
    }
    try:
        template = parse_template(json.dumps(body))
        evaluation = template.evaluate(template.resolve_parameters(params))
    except AgentError as exc:
        assert exc.code == "InvalidRequestException"
        assert exc.fields, "every template error names a path"
        assert all(f.path for f in exc.fields)
    else:
        assert evaluation.thing is not None
        assert isinstance(evaluation.thing.thing_name, str)
        assert all(isinstance(g, str) for g in evaluation.thing.thing_groups or ())
        assert all(isinstance(v, str) for v in evaluation.device_configuration.values())
