"""10,000 lines with 1% bad ones through the real RegisterThing: exact counts and reports."""

from __future__ import annotations

import json
import sqlite3

from tests.integration.bulk.conftest import START, Env

TEMPLATE = {
    "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Site": {"Type": "String", "Default": "lab"},
        "Slot": {"Type": "String", "Default": "0"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["-", ["edge", {"Ref": "SerialNumber"}]]},
                "AttributePayload": {
                    "site": {"Ref": "Site"},
                    "rack": {"Fn::Select": [{"Ref": "Slot"}, ["a", "b"]]},
                },
            },
        }
    },
}

#: bad line kinds, with the reason each is reported with
BAD = [
    ("not json", "{oops", "LINE_NOT_JSON"),
    ("not an object", '["SerialNumber", "1"]', "LINE_NOT_OBJECT"),
    ("empty", "", "LINE_EMPTY"),
    ("parameter missing", '{"Site": "lab"}', "PARAMETER_MISSING"),
    ("number value", '{"SerialNumber": 7}', "PARAMETER_INVALID"),
    (
        "template failure: select out of range",
        '{"SerialNumber": "x{n}", "Slot": "5"}',
        "TEMPLATE_EVALUATION_FAILED",
    ),
    (
        "template failure: bad thing name",
        '{"SerialNumber": "has space {n}"}',
        "TEMPLATE_EVALUATION_FAILED",
    ),
]


def test_ten_thousand_lines_one_percent_bad(env: Env) -> None:
    expected_errors: dict[int, str] = {}
    with (env.bulk_root / "factory" / "devices.jsonl").open("w", encoding="utf-8") as out:
        for n in range(1, 10_001):
            if n % 100 == 50:
                _, line, reason = BAD[(n // 100) % len(BAD)]
                expected_errors[n] = reason
                out.write(line.replace("{n}", str(n)) + "\n")
            else:
                out.write(json.dumps({"SerialNumber": f"{n:05d}", "Slot": str(n % 2)}) + "\n")
    template = env.root / "template.json"
    template.write_text(json.dumps(TEMPLATE), encoding="utf-8")
    run = env.run(
        *START,
        "--template-body",
        str(template),
    )
    described = json.loads(run.stdout)
    assert described["status"] == "Completed"
    assert (described["successCount"], described["failureCount"]) == (9900, 100)
    task_id = described["taskId"]

    results = [
        json.loads(x)
        for x in env.run("bulk", "reports", task_id, "--type", "RESULTS").stdout.splitlines()
    ]
    errors = [
        json.loads(x)
        for x in env.run("bulk", "reports", task_id, "--type", "ERRORS").stdout.splitlines()
    ]
    assert [r["lineNumber"] for r in results] == [
        n for n in range(1, 10_001) if n not in expected_errors
    ]
    assert {e["lineNumber"]: e["error"]["reason"] for e in errors} == expected_errors
    assert [e["lineNumber"] for e in errors] == sorted(expected_errors)
    first = results[0]["response"]
    assert first == {
        "CertificatePem": "",
        "ResourceArns": {"thing": "arn:aws:iot:eu-west-1:111122223333:thing/edge-00001"},
    }
    # template failures name the JSON path of the failing function
    select_error = next(e for e in errors if "Select" in json.dumps(e))
    assert any("Fn::Select" in f["path"] for f in select_error["error"]["fields"])
    with sqlite3.connect(env.database) as db:
        rows = db.execute("SELECT name, attributes FROM registry_things ORDER BY name").fetchall()
    assert len(rows) == 9900
    assert rows[0] == ("edge-00001", '{"site":"lab","rack":"b"}')
