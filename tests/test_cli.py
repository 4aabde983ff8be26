"""The command line as a user meets it: --version, documented options, one-line errors."""

import pytest

from pssl import __version__
from pssl.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"pssl {__version__}"


def test_every_option_of_every_command_is_documented():
    commands = build_parser()._subparsers._group_actions[0].choices
    undocumented = [f"{name} {opt}" for name, sub in commands.items() for action in sub._actions
                    for opt in action.option_strings[-1:] if action.help is None and opt != "--help"]
    assert not undocumented, undocumented
    assert all(sub.description or sub.format_help() for sub in commands.values())


@pytest.mark.parametrize("argv, expected", [
    (["inspect", "/no/such/store.zarr"], "pssl inspect: error: /no/such/store.zarr does not exist"),
    (["explain", "--shard", "/no/shard.parquet", "--zoo", "z.pt", "--out", "o.zarr"],
     "pssl explain: error: no such file or directory: /no/shard.parquet"),
])
def test_user_errors_are_one_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected) and "--debug" in err[0]


def test_wrong_store_and_out_of_range_index_are_one_line(tmp_path, capsys):
    import zarr
    zarr.create_group(store=str(tmp_path / "other.zarr"), zarr_format=3)  # a zarr group, not an explain store
    assert main(["inspect", str(tmp_path / "other.zarr")]) == 2
    assert "explain store format None" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):  # --debug: the traceback, as the error says
        main(["--debug", "inspect", str(tmp_path / "missing.zarr")])


@pytest.mark.parametrize("error", [ValueError("a shape mismatch deep in torch"), KeyError("missing_key"),
                                   FileNotFoundError(2, "No such file or directory", "/a/path/the/code/built")])
def test_a_bug_keeps_its_traceback(error, monkeypatch):
    """Only pssl's InputError and a file the command line named are one-line errors; anything else raised
    under a command is a bug and reaches the user whole."""
    import pssl.store

    def broken(path):
        raise error
    monkeypatch.setattr(pssl.store, "describe", broken)
    with pytest.raises(type(error)):
        main(["inspect", "some.zarr"])


def test_every_command_shows_an_example():
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        assert f"example:\n  pssl {name} " in sub.format_help(), name
