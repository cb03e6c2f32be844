"""JSON Schemas (cai.schemas, cai.constitution.schema): made from the loaders' own definitions,
shipped current, named by every shipped YAML file's first line, and in agreement with the
loaders on good and broken files."""

import dataclasses
import json

import jsonschema
import pytest
import yaml
from conftest import ROOT, run_cai
from test_constitution import BROKEN, GOOD

from cai import constitution as C
from cai import schemas
from cai.constitution.loader import ID_PATTERN, SECTION_FIELDS, TOP_KEYS
from cai.foundation.errors import CaiError
from cai.foundation.options import opt

CONSTITUTIONS = sorted((ROOT / "constitutions").glob("*.yaml"))
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def validator(path) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((ROOT / path).read_text()))


def schema_accepts(check: jsonschema.Draft7Validator, text: str) -> bool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return not list(check.iter_errors(data))


def test_shipped_schema_files_are_current():
    for rel, make in schemas.SHIPPED.items():
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert text == schemas.dumps(make()), f"{rel} is stale: run python -m cai.schemas"
        jsonschema.Draft7Validator.check_schema(json.loads(text))


def test_cai_constitution_schema_prints_the_shipped_file():
    result = run_cai("constitution", "schema")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "constitutions/constitution.schema.json").read_text()


def test_schema_and_validator_agree_on_every_constitution():
    check = validator("constitutions/constitution.schema.json")
    for path in CONSTITUTIONS:
        C.load(path)
        assert schema_accepts(check, path.read_text()), path
    assert schema_accepts(check, GOOD)
    for name, text in BROKEN.items():
        with pytest.raises(C.ConstitutionError) as e:
            C.parse(text, "c.yaml")
        # the schema rejects the file unless every problem is one it cannot express
        only_beyond = all(not p.in_schema for p in e.value.problems)
        assert schema_accepts(check, text) == only_beyond, (name, e.value.problems)
    assert not schema_accepts(check, BROKEN["many-problems"])
    assert schema_accepts(check, BROKEN["only-a-duplicate-id"])  # what only the validator sees


def test_schema_offers_every_key_with_its_help():
    """What an editor completes: every key the validator allows, each with a description."""
    s = C.schema()
    assert list(s["properties"]) == list(TOP_KEYS)
    for name, (required, optional) in SECTION_FIELDS.items():
        entry = s["properties"][name]["items"]
        assert list(entry["properties"]) == [*required, *optional]
        assert entry["required"] == list(required)
        assert all(p["description"] for p in entry["properties"].values())
    item = s["properties"]["critique_revision"]["items"]["properties"]["id"]
    assert item["pattern"] == ID_PATTERN.pattern
    answer = s["properties"]["preference_examples"]["items"]["properties"]["answer"]
    assert answer["enum"] == ["A", "B"]


def _kind(path) -> str:
    return path.stem.split("-")[0]


def test_every_shipped_yaml_names_its_schema_on_the_first_line():
    for path in CONSTITUTIONS + CONFIGS:
        first = path.read_text().splitlines()[0]
        assert first.startswith(schemas.MODELINE), path
        target = schemas.modeline_target(path)
        expected = "constitution" if path in CONSTITUTIONS else _kind(path)
        assert target.name == f"{expected}.schema.json" and target.is_file(), path
        assert schema_accepts(jsonschema.Draft7Validator(json.loads(target.read_text())),
                              path.read_text()), path


def test_the_modeline_does_not_break_the_loaders():
    """The first-line comment is plain YAML: every shipped file still loads, and line numbers
    in messages still count from the top of the file."""
    from cai.pipeline.stages import Pipeline
    from cai.train import trainer

    for path in CONFIGS:
        if _kind(path) == "pipeline":
            assert Pipeline(path).stages
        else:
            cfg = trainer(_kind(path)).load_config(str(path), [])
            assert cfg.algo == _kind(path) and cfg.output_dir
    assert all(C.load(p).name for p in CONSTITUTIONS)
    with pytest.raises(C.ConstitutionError, match=r"c.yaml:3: unknown key 'nam'"):
        C.parse(f"{schemas.MODELINE}constitution.schema.json\n# a comment\nnam: x\n", "c.yaml")


def test_config_schemas_reject_what_the_loaders_reject(tmp_path):
    from cai.train import sft

    check = validator("configs/schemas/sft.schema.json")
    good = (ROOT / "configs/sft.yaml").read_text()
    for bad, message in ((good.replace("  r: 16", "  rank: 16"), "unknown key 'lora.rank'"),
                         (good.replace("  r: 16", "  r: [16]"), "expected an integer"),
                         (good + "optimizer: {}\n", "unknown section 'optimizer'")):
        assert not schema_accepts(check, bad)
        path = tmp_path / "bad.yaml"
        path.write_text(bad)
        with pytest.raises(CaiError, match=message):
            sft.load_config(str(path), [])
    pipeline = validator("configs/schemas/pipeline.schema.json")
    text = (ROOT / "configs/pipeline.yaml").read_text()
    assert "\n  limit: " in text  # the misspelling below must change the text
    assert not schema_accepts(pipeline, text.replace("\n  limit: ", "\n  limt: ", 1))
    assert not schema_accepts(pipeline, text.replace("preference: dpo", "preference: sgd"))


def test_dataclass_schema_by_hand():
    @dataclasses.dataclass
    class Options:
        name: str = opt("x", "a name")
        count: int | None = opt(None, "how many")
        rate: float = opt(0.5)
        on: bool = opt(True, "switch")
        ids: list[str] = opt(help="some ids", factory=lambda: ["a"])
        files: list[str] | None = opt(None)
        extra: dict = opt(help="anything", factory=dict)

    assert schemas.dataclass_schema(Options, "the options") == {
        "description": "the options", "type": "object", "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "description": "a name", "default": "x"},
            "count": {"type": ["integer", "null"], "description": "how many"},
            "rate": {"type": "number", "default": 0.5},
            "on": {"type": "boolean", "description": "switch", "default": True},
            # a list may also be one comma-separated string, as the loaders take it
            "ids": {"type": ["array", "string"], "items": {"type": "string"},
                    "description": "some ids", "default": ["a"]},
            "files": {"type": ["array", "string", "null"], "items": {"type": "string"}},
            "extra": {"type": "object", "description": "anything"}}}
