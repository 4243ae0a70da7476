"""Template parsing (every error with its JSON path) and evaluation of each function."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.registry.errors import ParameterError, TemplateError
from agent.registry.template import (
    CERTIFICATE_PREFIX,
    TEMPLATE_BODY_MAX,
    Template,
    parse_template,
)
from tests.helpers.registry import example_template


def thing_template(name: Any, **sections: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Parameters": {
            "Serial": {"Type": "String"},
            "Site": {"Type": "String", "Default": "lab"},
            "List": {"Type": "String", "Default": "a,b,c"},
            "Index": {"Type": "String", "Default": "1"},
            "Region": {"Type": "String", "Default": "eu"},
        },
        "Mappings": {
            "Endpoints": {
                "eu": {"Url": "https://eu.example", "Ntp": "ntp.eu.example"},
                "us": {"Url": "https://us.example", "Ntp": "ntp.us.example"},
            }
        },
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": name}}},
    }
    body.update(sections)
    return body


def evaluate_name(name: Any, params: dict[str, str] | None = None) -> str:
    template = parse_template(json.dumps(thing_template(name)))
    evaluation = template.evaluate(
        template.resolve_parameters({"Serial": "42"} if params is None else params)
    )
    assert evaluation.thing is not None
    return evaluation.thing.thing_name


def problems(body: Any) -> list[tuple[str, str]]:
    with pytest.raises(TemplateError) as caught:
        parse_template(body if isinstance(body, str) else json.dumps(body))
    error = caught.value
    assert error.code == "InvalidRequestException"
    assert error.status_code == 400
    assert error.fields, "every template error names its path"
    return [(f.path, f.message) for f in error.fields]


def paths(body: Any) -> list[str]:
    return [p for p, _ in problems(body)]


# --- intrinsic functions ----------------------------------------------------------------


def test_ref_uses_the_parameter_value() -> None:
    assert evaluate_name({"Ref": "Serial"}) == "42"


def test_ref_falls_back_to_the_default() -> None:
    assert evaluate_name({"Ref": "Site"}) == "lab"
    assert evaluate_name({"Ref": "Site"}, {"Site": "plant-7"}) == "plant-7"


def test_join_concatenates_with_the_delimiter() -> None:
    name = {"Fn::Join": ["-", ["edge", {"Ref": "Site"}, {"Ref": "Serial"}]]}
    assert evaluate_name(name) == "edge-lab-42"
    assert evaluate_name({"Fn::Join": ["", ["a", "b"]]}) == "ab"


def test_join_over_a_split_list() -> None:
    name = {"Fn::Join": ["_", {"Fn::Split": [",", {"Ref": "List"}]}]}
    assert evaluate_name(name) == "a_b_c"


def test_select_by_literal_string_and_parameter_index() -> None:
    assert evaluate_name({"Fn::Select": [0, ["x", "y"]]}) == "x"
    assert evaluate_name({"Fn::Select": ["1", ["x", "y"]]}) == "y"
    assert evaluate_name({"Fn::Select": [{"Ref": "Index"}, ["x", "y"]]}) == "y"


def test_select_from_split() -> None:
    name = {"Fn::Select": [2, {"Fn::Split": [",", {"Ref": "List"}]}]}
    assert evaluate_name(name) == "c"


def test_select_out_of_range_fails_with_the_index_path() -> None:
    with pytest.raises(TemplateError) as caught:
        evaluate_name({"Fn::Select": [{"Ref": "Index"}, ["only"]]})
    assert caught.value.reason == "TEMPLATE_EVALUATION_FAILED"
    assert caught.value.fields[0].path == "Resources.thing.Properties.ThingName.Fn::Select[0]"


def test_select_with_a_non_integer_index_fails() -> None:
    with pytest.raises(TemplateError) as caught:
        evaluate_name({"Fn::Select": [{"Ref": "Site"}, ["x"]]}, {"Serial": "1"})
    assert caught.value.fields[0].path == "Resources.thing.Properties.ThingName.Fn::Select[0]"
    assert "not an integer" in caught.value.fields[0].message


def test_split_then_select_the_middle() -> None:
    name = {"Fn::Select": [1, {"Fn::Split": ["/", "a/b/c"]}]}
    assert evaluate_name(name) == "b"


def test_find_in_map_with_literal_and_parameter_keys() -> None:
    body = thing_template(
        "t1",
        DeviceConfiguration={
            "url": {"Fn::FindInMap": ["Endpoints", {"Ref": "Region"}, "Url"]},
            "ntp": {"Fn::FindInMap": ["Endpoints", "us", "Ntp"]},
        },
    )
    template = parse_template(body)
    config = template.evaluate(template.resolve_parameters({})).device_configuration
    assert config == {"url": "https://eu.example", "ntp": "ntp.us.example"}


@pytest.mark.parametrize(
    ("region", "key", "path_suffix"),
    [("asia", "Url", "[1]"), ("eu", "Port", "[2]")],
)
def test_find_in_map_missing_key_names_the_argument(
    region: str, key: str, path_suffix: str
) -> None:
    body = thing_template(
        "t1", DeviceConfiguration={"v": {"Fn::FindInMap": ["Endpoints", {"Ref": "Region"}, key]}}
    )
    template = parse_template(body)
    with pytest.raises(TemplateError) as caught:
        template.evaluate(template.resolve_parameters({"Region": region}))
    assert caught.value.reason == "MAPPING_KEY_NOT_FOUND"
    assert caught.value.fields[0].path == f"DeviceConfiguration.v.Fn::FindInMap{path_suffix}"


def test_sub_string_form_with_parameters_and_escapes() -> None:
    assert evaluate_name({"Fn::Sub": "edge-${Site}-${Serial}"}) == "edge-lab-42"
    body = thing_template("t", DeviceConfiguration={"v": {"Fn::Sub": "${!Literal}-${Serial}"}})
    template = parse_template(body)
    config = template.evaluate(template.resolve_parameters({"Serial": "9"})).device_configuration
    assert config == {"v": "${Literal}-9"}


def test_sub_list_form_with_variables() -> None:
    name = {
        "Fn::Sub": [
            "${prefix}-${Serial}",
            {"prefix": {"Fn::Join": ["", ["x", {"Ref": "Site"}]]}},
        ]
    }
    assert evaluate_name(name) == "xlab-42"


def test_sub_reads_certificate_pseudo_parameters() -> None:
    name = {"Fn::Sub": "dev-${AWS::IoT::Certificate::CommonName}"}
    params = {"Serial": "1", CERTIFICATE_PREFIX + "CommonName": "abc"}
    assert evaluate_name(name, params) == "dev-abc"


def test_a_missing_parameter_names_where_it_is_referenced() -> None:
    with pytest.raises(ParameterError) as caught:
        evaluate_name({"Fn::Join": ["", ["e-", {"Ref": "Serial"}]]}, {})
    error = caught.value
    assert error.reason == "PARAMETER_MISSING"
    assert error.code == "InvalidRequestException"
    assert error.fields[0].path == "Resources.thing.Properties.ThingName.Fn::Join[1][1].Ref"
    assert "Serial" in error.message


def test_evaluated_names_are_checked_against_the_thing_name_pattern() -> None:
    with pytest.raises(TemplateError) as caught:
        evaluate_name({"Ref": "Serial"}, {"Serial": "has space"})
    assert caught.value.fields[0].path == "Resources.thing.Properties.ThingName"


def test_number_parameters_must_be_numbers() -> None:
    body = thing_template("t", Parameters={"Count": {"Type": "Number", "Default": 3}})
    template = parse_template(body)
    assert template.resolve_parameters({})["Count"] == "3"
    with pytest.raises(ParameterError) as caught:
        template.resolve_parameters({"Count": "three"})
    assert caught.value.fields[0].path == "parameters.Count"


def test_status_is_case_insensitive_and_policy_documents_take_functions() -> None:
    body = {
        "Parameters": {"Topic": {"Type": "String"}},
        "Resources": {
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificateId": "A" * 64, "Status": "Active"},
            },
            "policy": {
                "Type": "AWS::IoT::Policy",
                "Properties": {
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{"Resource": [{"Fn::Sub": "topic/${Topic}"}]}],
                    }
                },
            },
        },
    }
    template = parse_template(body)
    evaluation = template.evaluate(template.resolve_parameters({"Topic": "t1"}))
    assert evaluation.certificate is not None
    assert evaluation.certificate.status == "ACTIVE"
    assert evaluation.certificate.value == "a" * 64
    document = evaluation.policies[0].policy_document
    assert document is not None
    assert json.loads(document)["Statement"][0]["Resource"] == ["topic/t1"]


def test_a_template_is_reusable_across_evaluations() -> None:
    template = parse_template(thing_template({"Fn::Sub": "n-${Serial}"}))
    names = []
    for serial in ("1", "2", "3"):
        evaluation = template.evaluate(template.resolve_parameters({"Serial": serial}))
        assert evaluation.thing is not None
        names.append(evaluation.thing.thing_name)
    assert names == ["n-1", "n-2", "n-3"]


# --- the reference notes' example ---------------------------------------------------------


def test_reference_example_template_parses_and_evaluates() -> None:
    template = parse_template(json.dumps(example_template()))
    assert isinstance(template, Template)
    assert template.resource_types == {
        "thing": "AWS::IoT::Thing",
        "certificate": "AWS::IoT::Certificate",
        "policy": "AWS::IoT::Policy",
    }
    assert template.certificate_method == "CertificateId"
    params = template.resolve_parameters(
        {"SerialNumber": "123", "AWS::IoT::Certificate::Id": "b" * 64}
    )
    evaluation = template.evaluate(params)
    assert evaluation.thing is not None
    assert evaluation.thing.thing_name == "edge-123"
    assert evaluation.thing.attributes == {"site": "lab", "serial": "123"}
    assert evaluation.thing.thing_groups == ("edge-appliances",)
    assert evaluation.thing.overrides == {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING"}
    assert evaluation.policies[0].policy_name == "EdgeAppliancePolicy"
    assert evaluation.device_configuration == {"ntpServer": "pool.ntp.org"}


# --- parse errors, each with its JSON path -----------------------------------------------


def mutated(change: Any) -> dict[str, Any]:
    body = copy.deepcopy(example_template())
    change(body)
    return body


def _set(path: list[str], value: Any) -> Any:
    def change(body: dict[str, Any]) -> None:
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _delete(path: list[str]) -> Any:
    def change(body: dict[str, Any]) -> None:
        node = body
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


THING = ["Resources", "thing", "Properties"]
CERT = ["Resources", "certificate", "Properties"]
POLICY = ["Resources", "policy", "Properties"]

PARSE_ERRORS = [
    (_set(["Conditions"], {}), "Conditions"),
    (_delete(["Resources"]), "Resources"),
    (_set(["Resources"], []), "Resources"),
    (_set(["Resources"], {}), "Resources"),
    (_set(["Resources", "thing", "Type"], "AWS::S3::Bucket"), "Resources.thing.Type"),
    (_delete(["Resources", "thing", "Properties"]), "Resources.thing.Properties"),
    (_set(["Resources", "thing", "Metadata"], {}), "Resources.thing.Metadata"),
    (_set(["Resources", "bad name!"], {}), "Resources.bad name!"),
    (_delete([*THING, "ThingName"]), "Resources.thing.Properties.ThingName"),
    (_set([*THING, "Color"], "red"), "Resources.thing.Properties.Color"),
    (_set([*THING, "ThingName"], 7), "Resources.thing.Properties.ThingName"),
    (_set([*THING, "ThingName"], "has space"), "Resources.thing.Properties.ThingName"),
    (_set([*THING, "ThingTypeName"], "a/b"), "Resources.thing.Properties.ThingTypeName"),
    (_set([*THING, "BillingGroup"], ""), "Resources.thing.Properties.BillingGroup"),
    (_set([*THING, "ThingGroups"], ["ok", "not ok"]), "Resources.thing.Properties.ThingGroups[1]"),
    (
        _set([*THING, "AttributePayload"], {"a": 'quote"d'}),
        "Resources.thing.Properties.AttributePayload.a",
    ),
    (_set([*POLICY, "PolicyName"], "no spaces"), "Resources.policy.Properties.PolicyName"),
    (_set([*CERT, "CertificateId"], "abc"), "Resources.certificate.Properties.CertificateId"),
    (_set([*THING, "AttributePayload"], ["a"]), "Resources.thing.Properties.AttributePayload"),
    (
        _set([*THING, "AttributePayload"], {"bad name": "x"}),
        "Resources.thing.Properties.AttributePayload.bad name",
    ),
    (_set([*THING, "ThingGroups"], "g1"), "Resources.thing.Properties.ThingGroups"),
    (
        _set([*THING, "ThingGroups"], {"Ref": "Site"}),
        "Resources.thing.Properties.ThingGroups.Ref",
    ),
    (_set([*CERT, "CertificatePem"], "x"), "Resources.certificate.Properties"),
    (_delete([*CERT, "CertificateId"]), "Resources.certificate.Properties"),
    (
        _set([*CERT, "CACertificatePem"], "x"),
        "Resources.certificate.Properties.CACertificatePem",
    ),
    (_set([*CERT, "Status"], "PENDING"), "Resources.certificate.Properties.Status"),
    (_set([*POLICY, "PolicyDocument"], "{}"), "Resources.policy.Properties"),
    (_delete([*POLICY, "PolicyName"]), "Resources.policy.Properties"),
    (
        lambda b: b["Resources"]["policy"].update({"Properties": {"PolicyDocument": "{not"}}),
        "Resources.policy.Properties.PolicyDocument",
    ),
    (
        lambda b: b["Resources"]["policy"].update({"Properties": {"PolicyDocument": "[1]"}}),
        "Resources.policy.Properties.PolicyDocument",
    ),
    (
        _set(["Resources", "policy", "OverrideSettings"], {"PolicyName": "REPLACE"}),
        "Resources.policy.OverrideSettings",
    ),
    (
        _set(["Resources", "thing", "OverrideSettings", "ThingTypeName"], "MERGE"),
        "Resources.thing.OverrideSettings.ThingTypeName",
    ),
    (
        _set(["Resources", "thing", "OverrideSettings", "ThingName"], "REPLACE"),
        "Resources.thing.OverrideSettings.ThingName",
    ),
    (
        _set(["Resources", "certificate", "OverrideSettings"], {"Status": "MERGE"}),
        "Resources.certificate.OverrideSettings.Status",
    ),
    (_set([*THING, "ThingName"], {"Ref": "Nope"}), "Resources.thing.Properties.ThingName.Ref"),
    (_set([*THING, "ThingName"], {"Ref": ["x"]}), "Resources.thing.Properties.ThingName.Ref"),
    (
        _set([*THING, "ThingName"], {"Fn::Join": ["", "abc", "x"]}),
        "Resources.thing.Properties.ThingName.Fn::Join",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Select": ["first", ["a"]]}),
        "Resources.thing.Properties.ThingName.Fn::Select[0]",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Select": [0]}),
        "Resources.thing.Properties.ThingName.Fn::Select",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Select": [0, {"Fn::Split": ["", "a"]}]}),
        "Resources.thing.Properties.ThingName.Fn::Select[1].Fn::Split[0]",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Split": [",", "a,b"]}),
        "Resources.thing.Properties.ThingName.Fn::Split",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::FindInMap": ["Nowhere", "a", "b"]}),
        "Resources.thing.Properties.ThingName.Fn::FindInMap[0]",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::FindInMap": ["Nowhere", "a"]}),
        "Resources.thing.Properties.ThingName.Fn::FindInMap",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Sub": "x-${Unknown}"}),
        "Resources.thing.Properties.ThingName.Fn::Sub",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Sub": ["x-${a}", {"a": {"Ref": "Nope"}}]}),
        "Resources.thing.Properties.ThingName.Fn::Sub[1].a.Ref",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::Sub": 5}),
        "Resources.thing.Properties.ThingName.Fn::Sub",
    ),
    (
        _set([*THING, "ThingName"], {"Fn::If": ["c", "a", "b"]}),
        "Resources.thing.Properties.ThingName.Fn::If",
    ),
    (_set([*THING, "ThingName"], {"a": 1, "b": 2}), "Resources.thing.Properties.ThingName"),
    (_set(["Mappings"], {"M": {"k": {"v": {"Ref": "Site"}}}}), "Mappings.M.k.v"),
    (_set(["Mappings"], {"M": {"k": {"v": True}}}), "Mappings.M.k.v"),
    (_set(["Mappings"], {"M": []}), "Mappings.M"),
    (_set(["Parameters", "Site", "Type"], "List"), "Parameters.Site.Type"),
    (_set(["Parameters", "Site", "Default"], ["x"]), "Parameters.Site.Default"),
    (_set(["Parameters", "Site", "AllowedValues"], ["x"]), "Parameters.Site.AllowedValues"),
    (_set(["Parameters", "Site"], "String"), "Parameters.Site"),
    (_set(["Parameters"], []), "Parameters"),
    (
        _set(["Parameters", "N"], {"Type": "Number", "Default": "x"}),
        "Parameters.N.Default",
    ),
    (_set(["DeviceConfiguration", "nested"], {"a": "b"}), "DeviceConfiguration.nested"),
    (_set(["DeviceConfiguration", "list"], ["a"]), "DeviceConfiguration.list"),
    (_set(["DeviceConfiguration"], "x"), "DeviceConfiguration"),
    (
        _set(
            ["Resources", "thing2"], {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"}}
        ),
        "Resources.thing2",
    ),
    (
        _set(
            ["Resources", "cert2"],
            {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": "x"}},
        ),
        "Resources.cert2",
    ),
]


@pytest.mark.parametrize(("change", "path"), PARSE_ERRORS, ids=[p for _, p in PARSE_ERRORS])
def test_parse_error_names_its_json_path(change: Any, path: str) -> None:
    found = paths(mutated(change))
    assert path in found, found


def test_every_problem_is_reported_at_once() -> None:
    def change(body: dict[str, Any]) -> None:
        body["Resources"]["thing"]["Properties"]["ThingName"] = {"Ref": "Nope"}
        body["Resources"]["certificate"]["Properties"]["Status"] = "SOMETIMES"
        body["Extra"] = 1

    found = paths(mutated(change))
    assert set(found) >= {
        "Resources.thing.Properties.ThingName.Ref",
        "Resources.certificate.Properties.Status",
        "Extra",
    }


def test_body_that_is_not_json() -> None:
    assert problems("{not json")[0][0] == "templateBody"


def test_body_that_is_not_an_object() -> None:
    assert problems("[1, 2]")[0][0] == "templateBody"


def test_duplicate_keys_are_refused() -> None:
    text = '{"Resources": {}, "Resources": {}}'
    found = problems(text)
    assert found[0][0] == "templateBody"
    assert "duplicate" in found[0][1]


def test_body_longer_than_the_seed_limit() -> None:
    body = json.dumps(example_template())
    body += " " * (TEMPLATE_BODY_MAX + 1 - len(body))
    with pytest.raises(TemplateError) as caught:
        parse_template(body)
    assert caught.value.reason == "TEMPLATE_TOO_LARGE"
    assert caught.value.fields[0].path == "templateBody"
    parse_template(body[:TEMPLATE_BODY_MAX])


def test_error_wire_shape() -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template(mutated(_delete([*THING, "ThingName"])))
    wire = caught.value.to_dict()["error"]
    assert wire["code"] == "InvalidRequestException"
    assert wire["statusCode"] == 400
    assert wire["reason"] == "TEMPLATE_INVALID"
    assert {"path": "Resources.thing.Properties.ThingName", "message": "is required"} in wire[
        "fields"
    ]


def test_template_type_rules() -> None:
    from agent.registry.template import check_template_type

    fleet = parse_template(example_template())
    check_template_type(fleet, "FLEET_PROVISIONING")
    with pytest.raises(TemplateError) as caught:
        check_template_type(fleet, "JITP")
    assert [f.path for f in caught.value.fields] == ["DeviceConfiguration"]

    body = example_template()
    body["Resources"]["certificate"]["Properties"] = {"CertificateSigningRequest": "x"}
    with pytest.raises(TemplateError) as caught:
        check_template_type(parse_template(body), "FLEET_PROVISIONING")
    assert caught.value.fields[0].path == (
        "Resources.certificate.Properties.CertificateSigningRequest"
    )


@pytest.mark.parametrize("function", ["Fn::Join", "Fn::Select"])
def test_list_functions_refuse_a_mapping_string(function: str) -> None:
    lookup = {"Fn::FindInMap": ["Endpoints", "eu", "Url"]}
    name = {"Fn::Join": ["", lookup]} if function == "Fn::Join" else {"Fn::Select": [0, lookup]}
    with pytest.raises(TemplateError) as caught:
        evaluate_name(name)
    assert caught.value.fields[0].path == f"Resources.thing.Properties.ThingName.{function}[1]"
    assert caught.value.fields[0].message == "must be a list"


def test_find_in_map_list_values_feed_list_functions() -> None:
    body = thing_template(
        {"Fn::Join": ["_", {"Fn::FindInMap": ["Lists", "k", "v"]}]},
        Mappings={"Lists": {"k": {"v": ["a", "b"]}}},
    )
    template = parse_template(body)
    evaluation = template.evaluate(template.resolve_parameters({}))
    assert evaluation.thing is not None
    assert evaluation.thing.thing_name == "a_b"


@given(
    items=st.lists(st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8), min_size=1, max_size=6),
    delimiter=st.sampled_from([",", "/", ";", "|"]),
    data=st.data(),
)
def test_split_select_join_round_trip(
    items: list[str], delimiter: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(items) - 1))
    body = thing_template(
        {"Fn::Select": [index, {"Fn::Split": [delimiter, {"Ref": "Serial"}]}]},
        DeviceConfiguration={
            "joined": {"Fn::Join": [delimiter, {"Fn::Split": [delimiter, {"Ref": "Serial"}]}]}
        },
    )
    template = parse_template(body)
    evaluation = template.evaluate(template.resolve_parameters({"Serial": delimiter.join(items)}))
    assert evaluation.thing is not None
    assert evaluation.thing.thing_name == items[index]
    assert evaluation.device_configuration["joined"] == delimiter.join(items)


def test_deep_nesting_is_refused_with_its_path() -> None:
    name: Any = "x"
    for _ in range(40):
        name = {"Fn::Join": ["", [name]]}
    with pytest.raises(TemplateError) as caught:
        parse_template(json.dumps(thing_template(name)))
    path = caught.value.fields[0].path
    assert path.startswith("Resources.thing.Properties.ThingName.Fn::Join[1][0].Fn::Join")
    assert "deeper than 32" in caught.value.fields[0].message


def test_json_too_deep_for_the_decoder() -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template("[" * 5000 + "]" * 5000)
    assert caught.value.fields[0].path == "templateBody"


def test_moderate_nesting_is_fine() -> None:
    name: Any = {"Ref": "Serial"}
    for _ in range(8):
        name = {"Fn::Join": ["", ["a", name]]}
    assert evaluate_name(name) == "a" * 8 + "42"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (
            {"Fn::Split": [",", {"Fn::FindInMap": ["Lists", "k", "v"]}]},
            "Fn::Select[1].Fn::Split[1].Fn::FindInMap",
        ),
        (
            {"Fn::Sub": ["${x}", {"x": {"Fn::FindInMap": ["Lists", "k", "v"]}}]},
            "Fn::Sub[1].x.Fn::FindInMap",
        ),
        (
            {"Fn::FindInMap": ["Lists", {"Fn::FindInMap": ["Lists", "k", "v"]}, "v"]},
            "Fn::FindInMap[1].Fn::FindInMap",
        ),
        ({"Fn::FindInMap": ["Lists", "k", "v"]}, "Fn::FindInMap"),
    ],
    ids=["split-source", "sub-variable", "map-key", "thing-name"],
)
def test_a_list_from_a_mapping_where_a_string_is_needed(name: Any, path: str) -> None:
    if "Fn::Split" in name:
        name = {"Fn::Select": [0, name]}
    body = thing_template(name, Mappings={"Lists": {"k": {"v": ["a", "b"]}}})
    template = parse_template(body)
    with pytest.raises(TemplateError) as caught:
        template.evaluate(template.resolve_parameters({}))
    assert caught.value.fields[0].path == f"Resources.thing.Properties.ThingName.{path}"
    assert caught.value.fields[0].message == "must evaluate to a string"
