"""The CLI restates no default: every flag's default stays in its owner (options dataclass, schema, signature)."""

from __future__ import annotations

import argparse

import pytest

from mmtune.cli import _parser, main


def _actions(parser: argparse.ArgumentParser, where: str = "mmtune"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{where} {name}")
        else:
            yield where, action


def test_no_flag_restates_a_default():
    restated = [(where, a.option_strings or a.dest, a.default) for where, a in _actions(_parser())
                if a.default not in (None, argparse.SUPPRESS, False, []) and not isinstance(a, argparse._HelpAction)]
    assert len(list(_actions(_parser()))) > 100  # the walk reaches every subcommand's flags
    assert restated == []


def test_every_help_text_reads_its_defaults_from_their_owners():
    from mmtune.cli import _Defaults

    for where, action in _actions(_parser()):
        help_text = (action.help or "") if action.help is not argparse.SUPPRESS else ""
        # a {Owner.field} that does not resolve (or a stray brace) raises here, as `mmtune ... --help` would
        help_text.format_map(_Defaults())


def test_values_the_parser_does_not_list_are_refused_in_one_line_by_their_owner(capsys):
    assert main(["eval", "missing-run", "--data", "x.jsonl", "--metric", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mmtune: error: metrics: unknown ['bogus']; choose from exact, numeric, loss, vqa, choice, cider"]


@pytest.mark.parametrize("field,value", [("share", "all"), ("scheduler", "ddim"), ("dtype", "int8")])
def test_edit_generation_options_check_every_literal(field, value):
    from mmtune.datagen.edits.options import EditGenOptions
    from mmtune.errors import ConfigError

    EditGenOptions().check()
    with pytest.raises(ConfigError, match=rf"^edits: {field} must be one of .* \(got '{value}'\)$"):
        EditGenOptions(**{field: value}).check()
