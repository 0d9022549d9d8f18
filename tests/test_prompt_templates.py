"""Prompt templates: prompts/<task>/<mode>.yaml, rendered with strict Jinja; the version hashes what the file says."""

from __future__ import annotations

from importlib import resources

import jinja2
import pytest
import yaml

from personahub.tasks.llm.templates import load_template, parse_template


def shipped_bytes() -> bytes:
    return resources.files("personahub.prompts").joinpath("text_to_persona", "few-shot.yaml").read_bytes()


def test_load_and_render_text_to_persona() -> None:
    template = load_template("text_to_persona")
    assert template.name == "text_to_persona"
    assert template.mode == "few-shot"
    assert template.ref == f"text_to_persona@{template.version}"
    assert len(template.version) == 12
    relations = template.extra["relations"]
    assert set(relations) == {"read", "write", "like", "dislike"}
    assert template.output_schema["required"] == ["persona"]
    assert template.params["max_tokens"] > 0

    messages = template.render(text="Tides and coral reefs of the Pacific.", relation_phrase=relations["write"])
    # system, then each demonstration as a user/assistant pair, then the real question
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(template.examples) + ["user"]
    assert template.examples, "the shipped template carries a demonstration"
    assert "Tides and coral reefs of the Pacific." in messages[-1]["content"]
    assert "Tides" not in messages[1]["content"], "a demonstration renders with its own text"
    assert messages[2]["content"] == template.examples[0]["answer"].strip()
    assert "likely to have written" in messages[-1]["content"]
    assert "{{" not in messages[-1]["content"]
    assert "persona" in messages[0]["content"]
    assert load_template("text_to_persona") is template  # cached


def test_version_changes_with_content_not_with_comments_or_layout() -> None:
    raw = shipped_bytes()
    same = parse_template(raw, "copy")
    assert same.version == load_template("text_to_persona").version
    assert parse_template(raw + b"\n# an edited comment\n", "commented").version == same.version
    relaid = yaml.safe_dump(yaml.safe_load(raw), sort_keys=False, width=60).encode()
    assert relaid != raw and parse_template(relaid, "relaid").version == same.version
    assert parse_template(raw.replace(b"one specific kind", b"one kind"), "x").version != same.version
    assert parse_template(raw.replace(b"temperature: 0.7", b"temperature: 0.8"), "y").version != same.version


def test_templates_are_found_by_task_and_mode() -> None:
    assert load_template("text_to_persona", "few-shot").mode == "few-shot"
    assert load_template("persona_to_persona", "few-shot").name == "persona_to_persona"
    with pytest.raises(FileNotFoundError, match=r"mode 'zero-shot'.*modes there: few-shot"):
        load_template("text_to_persona", "zero-shot")


def test_missing_variable_raises() -> None:
    template = load_template("text_to_persona")
    with pytest.raises(jinja2.UndefinedError, match="relation_phrase"):
        template.render(text="only the text")


def test_no_system_message_when_blank() -> None:
    template = parse_template(b"name: t\nuser: 'Hello {{ who }}'\n", "t.yaml")
    assert template.render(who="you") == [{"role": "user", "content": "Hello you"}]
    assert template.mode == "zero-shot" and template.params == {} and template.output_schema is None


def test_unknown_keys_go_to_extra() -> None:
    template = parse_template(b"name: t\nuser: u\ndescription: d\nrelations: {read: r}\n", "t.yaml")
    assert template.extra == {"relations": {"read": "r"}}


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"name: t\nuser: [unclosed\n", r"t\.yaml is not valid YAML"),
        (b"- a list\n- not a mapping\n", r"t\.yaml is not a YAML mapping"),
        (b"", r"t\.yaml is not a YAML mapping"),
        (b"just a string\n", r"t\.yaml is not a YAML mapping"),
        (b"name: t\n", r"t\.yaml lacks user"),
        (b"user: hi\n", r"t\.yaml lacks name"),
        (b"system: s\n", r"t\.yaml lacks name, user"),
    ],
)
def test_invalid_templates_have_clear_errors(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_template(raw, "t.yaml")


def test_unknown_template_name() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_template"):
        load_template("no_such_template")


def test_examples_must_have_vars_and_answer() -> None:
    base = b"name: t\nuser: 'Q {{ text }}'\n"
    with pytest.raises(ValueError, match="examples"):
        parse_template(base + b"examples:\n  - answer: 'x'\n", "no-vars")
    with pytest.raises(ValueError, match="examples"):
        parse_template(base + b"examples: 'not a list'\n", "not-list")
    ok = parse_template(base + b"examples:\n  - vars: {text: demo}\n    answer: A\n", "ok")
    assert [m["content"] for m in ok.render(text="real")] == ["Q demo", "A", "Q real"]


def test_a_prompts_folder_overrides_the_shipped_files(tmp_path, monkeypatch) -> None:
    shipped = load_template("text_to_persona")
    own = tmp_path / "text_to_persona"
    own.mkdir()
    (own / "few-shot.yaml").write_bytes(shipped_bytes().replace(b"one specific kind", b"one kind"))
    (own / "zero-shot.yaml").write_bytes(shipped_bytes())  # says few-shot inside
    monkeypatch.setenv("PERSONAHUB_PROMPTS_DIR", str(tmp_path))
    mine = load_template("text_to_persona")
    assert mine.version != shipped.version and "one kind" in mine.system
    assert load_template("persona_to_persona").name == "persona_to_persona"  # not in the folder: shipped
    with pytest.raises(ValueError, match="says mode 'few-shot'"):
        load_template("text_to_persona", "zero-shot")
    monkeypatch.delenv("PERSONAHUB_PROMPTS_DIR")
    assert load_template("text_to_persona") is shipped
