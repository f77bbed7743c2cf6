"""``waterfall-asgi check-config FILE``: exit codes and what it prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from waterfall_asgi.cli import main

SECRET = "sk-wf-cli-Yt5-DISTINCTIVE-secret"
ENV = "WF_TEST_CLI_KEY"

GOOD = f"""\
client_keys = ["{SECRET}-client"]

[providers.a]
base_url = "http://127.0.0.1:9/v1"
api_key = "{SECRET}"

[providers.b]
base_url = "http://127.0.0.1:10/v1"
api_key_env = "{ENV}"

[chains]
fast = ["a/m1", "b/m2"]
cheap = ["b/m2"]
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check-config", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET + "-env")


def test_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.toml"
    path.write_text(GOOD, encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert (code, err) == (0, "")
    assert out == f"{path}: OK — 2 providers, chains: fast (2 entries), cheap (1 entries)\n"
    assert SECRET not in out


def test_a_good_file_without_chains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.json"
    path.write_text('{"providers": {"a": {"base_url": "https://a.example"}}}', encoding="utf-8")
    assert run(capsys, str(path)) == (0, f"{path}: OK — 1 providers, chains: none\n", "")


def test_a_file_with_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.toml"
    bad = GOOD.replace('"a/m1"', '"a-m1"').replace("http://127.0.0.1:10", "ftp://x")
    path.write_text(bad, encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert (code, out) == (1, "")
    assert err == (
        f"{path}: invalid config\n"
        "  providers.b.base_url: must start with http:// or https://\n"
        "  chains.fast.0: 'a-m1' is not of the form 'provider/model'\n"
    )
    assert SECRET not in err


def test_a_file_with_a_bad_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "providers:\n  a: {base_url: 'http://a'}\nchains:\n  fast: [a/m, b/m]\n"
        "default_chain: slow\n",
        encoding="utf-8",
    )
    assert run(capsys, str(path)) == (
        1,
        "",
        f"{path}: invalid config\n"
        "  chains.fast.1: unknown provider 'b'\n"
        "  default_chain: no chain named 'slow'\n",
    )


def test_a_missing_env_var(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV)
    path = tmp_path / "router.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert run(capsys, str(path)) == (
        1,
        "",
        f"{path}: invalid config\n"
        f"  providers.b.api_key_env: environment variable {ENV} is not set\n",
    )


def test_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert run(capsys, str(path)) == (
        1,
        "",
        f"{path}: invalid config\n  {path}: cannot read: No such file or directory\n",
    )


def test_a_syntax_error_does_not_print_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(f"providers:\n  a:\n    api_key: '{SECRET}\n", encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"{path}: invalid config\n  {path}: not valid YAML: ")
    assert SECRET not in err


def test_no_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "the following arguments are required: file" in err


def test_every_mistake_of_a_broken_file_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Structure (a string where a list goes, a misspelt key) and references (an unknown
    # provider, an unknown default chain) together: pydantic alone stops at the first kind.
    path = tmp_path / "router.toml"
    path.write_text(
        'default_chain = "fsat"\n\n'
        '[providers.openai]\nbase_url = "https://api.openai.com/v1"\napi_kye = "x"\n\n'
        '[chains]\nfast = ["opneai/gpt-4o-mini", "openai/gpt-4o"]\nsmart = "openai/gpt-4o"\n',
        encoding="utf-8",
    )
    code, out, err = run(capsys, str(path))
    assert (code, out) == (1, "")
    assert err == (
        f"{path}: invalid config\n"
        "  providers.openai.api_kye: unknown setting (did you mean 'api_key'?)\n"
        "  chains.smart: should be a list (in TOML: [...]), not text\n"
        "  chains.fast.0: unknown provider 'opneai' (did you mean 'openai'?)\n"
        "  default_chain: no chain named 'fsat' (did you mean 'fast'?)\n"
    )


def test_a_file_in_a_format_it_does_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "router.ini"
    path.write_text("[providers.a]\nbase_url = http://a\n", encoding="utf-8")
    code, out, err = run(capsys, str(path))
    assert (code, out) == (1, "")
    assert err.startswith(
        f"{path}: invalid config\n  {path}: not a config format this reads: a config is TOML "
        "(.toml), YAML (.yaml, .yml) or JSON (.json; "
    )


def test_what_only_the_mounted_router_would_find(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cost route's entry without any price: the keys are right, but the router cannot start.
    path = tmp_path / "router.toml"
    path.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n\n'
        '[routes.auto]\ndeployments = ["a/m1"]\n',
        encoding="utf-8",
    )
    assert run(capsys, str(path)) == (
        1,
        "",
        f"{path}: invalid config\n  routes: no price for a/m1\n",
    )
