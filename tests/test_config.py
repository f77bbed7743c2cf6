"""Router configuration: loading from files and mappings, exact error messages, secrets."""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from waterfall_asgi.config import (
    ConfigError,
    Deployment,
    Provider,
    RouterConfig,
    RoutingPolicy,
    load_config,
)

SECRET = "sk-wf-7Zq9-DISTINCTIVE-x0x0-secret"
ENV_SECRET = "sk-wf-env-Kp3-ANOTHER-distinctive-key"
CLIENT_SECRET = "ck-wf-client-Rr8-distinctive"
ENV = "WF_TEST_CONFIG_KEY"
UNSET_ENV = "WF_TEST_CONFIG_KEY_THAT_IS_NEVER_SET"

BASE: dict[str, Any] = {
    "providers": {
        "a": {"base_url": "http://127.0.0.1:9/v1"},
        "b": {"base_url": "https://b.example/v1/"},
    },
    "chains": {"fast": ["a/m1", "b/m2"]},
}

TOML = """\
prefix = "/api/"
default_chain = "fast"

[providers.a]
base_url = "http://127.0.0.1:9/v1"
api_key_env = "WF_TEST_CONFIG_KEY"
headers = { "x-team" = "blue" }

[providers.a.timeouts]
read = 5.5

[providers.b]
base_url = "https://b.example/v1/"

[chains]
fast = ["a/m1", "b/org/m2"]
cheap = ["b/org/m2"]

[policy]
fall_through = [429, 400]
default_cooldown = 12
"""

YAML = """\
prefix: /api/
default_chain: fast
providers:
  a:
    base_url: http://127.0.0.1:9/v1
    api_key_env: WF_TEST_CONFIG_KEY
    headers: {x-team: blue}
    timeouts: {read: 5.5}
  b:
    base_url: https://b.example/v1/
chains:
  fast: [a/m1, b/org/m2]
  cheap: [b/org/m2]
policy:
  fall_through: [429, 400]
  default_cooldown: 12
"""

JSON_DATA: dict[str, Any] = {
    "prefix": "/api/",
    "default_chain": "fast",
    "providers": {
        "a": {
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": ENV,
            "headers": {"x-team": "blue"},
            "timeouts": {"read": 5.5},
        },
        "b": {"base_url": "https://b.example/v1/"},
    },
    "chains": {"fast": ["a/m1", "b/org/m2"], "cheap": ["b/org/m2"]},
    "policy": {"fall_through": [429, 400], "default_cooldown": 12},
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, ENV_SECRET)
    monkeypatch.delenv(UNSET_ENV, raising=False)


def changed(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``base`` (default :data:`BASE`) with the dotted ``path`` set to ``value``
    (or removed when ``value`` is :data:`REMOVE`)."""
    data = copy.deepcopy(BASE if base is None else base)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is REMOVE:
        del node[last]
    else:
        node[last] = value
    return data


REMOVE = object()


def error_of(source: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return str(info.value)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("router.toml", TOML),
        ("router.TOML", TOML),
        ("router.yaml", YAML),
        ("router.yml", YAML),
        ("router.json", json.dumps(JSON_DATA)),
        ("router.conf", json.dumps(JSON_DATA)),  # any other name is read as JSON
    ],
)
def test_every_file_format_gives_the_same_config(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    from_file = load_config(path)
    assert from_file == load_config(str(path)) == load_config(JSON_DATA)
    assert from_file.prefix == "/api"
    assert from_file.default_chain == "fast"
    a, b = from_file.providers["a"], from_file.providers["b"]
    assert a.base_url == "http://127.0.0.1:9/v1"
    assert b.base_url == "https://b.example/v1"  # the trailing slash is dropped
    assert a.api_key is not None
    assert a.api_key.get_secret_value() == ENV_SECRET
    assert b.api_key is None
    assert {k: v.get_secret_value() for k, v in a.headers.items()} == {"x-team": "blue"}
    assert (a.timeouts.read, a.timeouts.connect, a.timeouts.first_byte) == (5.5, 5.0, 60.0)
    assert [d.key for d in from_file.chains["fast"]] == ["a/m1", "b/org/m2"]
    assert from_file.chains["cheap"] == (Deployment(provider="b", model="org/m2"),)
    assert from_file.policy.fall_through == frozenset({429, 400})
    assert from_file.policy.default_cooldown == 12.0
    assert from_file.policy.max_cooldown == 3600.0


def test_a_mapping_of_any_kind_and_a_config_object_are_accepted() -> None:
    config = load_config(BASE)
    assert load_config(types.MappingProxyType(copy.deepcopy(BASE))) == config
    assert load_config(config) is config
    built = RouterConfig(
        providers={
            "a": Provider(base_url="http://127.0.0.1:9/v1"),
            "b": Provider(base_url="https://b.example/v1/"),
        },
        chains={"fast": (Deployment(provider="a", model="m1"), Deployment.model_validate("b/m2"))},
    )
    assert built == config


def test_defaults() -> None:
    config = load_config({"providers": {}})
    assert config.prefix == "/v1"
    assert config.chains == {}
    assert config.deployments == ()
    assert config.default_chain is None
    assert config.client_keys == ()
    assert config.policy == RoutingPolicy()
    assert config.policy.accept == "first_event"
    assert config.policy.cool_on_zero_remaining is True
    assert config.limits.max_body_bytes == 4 * 1024 * 1024


def test_the_stall_timeout_is_at_most_read() -> None:
    def timeouts(**given: float) -> tuple[float, float]:
        config = load_config({"providers": {"a": {"base_url": "http://a/v1", "timeouts": given}}})
        t = config.providers["a"].timeouts
        return t.stall, t.read

    assert timeouts() == (15, 60)  # the defaults
    assert timeouts(stall=60) == (60, 60)
    assert timeouts(read=5) == (5, 5)  # unset: no longer than read
    with pytest.raises(ConfigError) as caught:
        timeouts(read=5, stall=6)
    assert str(caught.value) == "providers.a.timeouts: stall (6) must not exceed read (5)"
    with pytest.raises(ConfigError, match=r"providers\.a\.timeouts\.stall: "):
        timeouts(stall=0)


def test_a_chain_entry_may_be_a_mapping_and_a_model_may_contain_slashes() -> None:
    config = load_config(
        changed("chains.fast", [{"provider": "a", "model": "m1"}, "b/meta-llama/llama-3/8b"])
    )
    second = config.chains["fast"][1]
    assert (second.provider, second.model, second.key) == ("b", "meta-llama/llama-3/8b", second.key)
    assert second.key == "b/meta-llama/llama-3/8b"


def test_an_entry_is_priced_as_first_listed() -> None:
    config = RouterConfig.model_validate(
        {
            "providers": {"a": {"base_url": "http://a/v1"}},
            "deployments": [
                {"provider": "a", "model": "m1", "price": {"unit": "msat", "prompt": 1}},
                "a/m2",
            ],
            "chains": {
                "fast": [
                    "a/m1",  # takes m1's listed price
                    {"provider": "a", "model": "m2", "price": {"unit": "msat", "prompt": 9}},
                    {"provider": "a", "model": "m3", "price": {"unit": "msat", "prompt": 3}},
                ]
            },
        }
    )
    listed = config.listed_prices()
    assert {k: p.prompt for k, p in listed.items()} == {"a/m1": 1, "a/m3": 3}  # m2: first unpriced
    first, second, third = config.chains["fast"]
    assert config.price_of(first) is listed["a/m1"]
    assert config.price_of(second) is second.price  # its own price comes first
    assert config.price_of(Deployment(provider="a", model="m2")) is None
    assert config.price_of(Deployment(provider="a", model="other")) is None
    assert config.price_of(third) is third.price


def test_config_is_frozen() -> None:
    config = load_config(BASE)
    with pytest.raises(ValidationError):
        config.prefix = "/other"  # type: ignore[misc]


# -- every mistake names its key ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            changed("providers.a.base_url", "ftp://x"),
            "providers.a.base_url: must start with http:// or https://",
            id="base_url-scheme",
        ),
        pytest.param(
            changed("providers.a.base_url", REMOVE),
            "providers.a.base_url: a required setting, not given",
            id="base_url-missing",
        ),
        pytest.param(
            changed("providers.b.base_url", 5),
            "providers.b.base_url: should be text (a string), not a number",
            id="base_url-type",
        ),
        pytest.param(
            changed("providers", REMOVE),
            "providers: a required setting, not given",
            id="no-providers",
        ),
        pytest.param(
            changed("providers", ["a"]),
            "providers: should be a table of settings, not a list",
            id="providers-list",
        ),
        pytest.param(
            changed("chains.fast", ["a/m1", "a"]),
            "chains.fast.1: 'a' is not of the form 'provider/model'",
            id="entry-no-slash",
        ),
        pytest.param(
            changed("chains.fast", ["/m1"]),
            "chains.fast.0: '/m1' is not of the form 'provider/model'",
            id="entry-no-provider",
        ),
        pytest.param(
            changed("chains.fast", ["a/"]),
            "chains.fast.0: 'a/' is not of the form 'provider/model'",
            id="entry-no-model",
        ),
        pytest.param(
            changed("chains.fast", [{"provider": "a"}]),
            "chains.fast.0.model: a required setting, not given",
            id="entry-mapping-no-model",
        ),
        pytest.param(
            changed("chains.fast", ["b/m1", {"provider": "a", "model": "m", "x": 1}]),
            "chains.fast.1.x: unknown setting (known here: provider, model, price)",
            id="entry-mapping-extra",
        ),
        pytest.param(
            changed("chains.fast", ["zz/m1"]),
            "chains.fast.0: unknown provider 'zz'",
            id="entry-unknown-provider",
        ),
        pytest.param(
            changed("chains.fast", []),
            "chains.fast: a chain needs at least one entry",
            id="chain-empty",
        ),
        pytest.param(
            changed("chains.fast", "a/m1"),
            "chains.fast: should be a list (in TOML: [...]), not text",
            id="chain-not-a-list",
        ),
        pytest.param(
            changed("deployments", ["a/m9", "q/m9"]),
            "deployments.1: unknown provider 'q'",
            id="deployment-unknown-provider",
        ),
        pytest.param(
            changed("default_chain", "slow"),
            "default_chain: no chain named 'slow'",
            id="default_chain",
        ),
        pytest.param(
            changed("bogus", 1),
            "bogus: unknown setting (known here: prefix, providers, deployments, chains, "
            "default_chain, client_keys, policy, limits, upstream, ledger, cooldowns, models, "
            "routes, rates, price_refresh, metrics, tracing)",
            id="extra-top",
        ),
        pytest.param(
            changed("providers.a.bse_url", "http://x"),
            "providers.a.bse_url: unknown setting (did you mean 'base_url'?)",
            id="extra-provider",
        ),
        pytest.param(
            changed("providers.a.timeouts", {"raed": 1}),
            "providers.a.timeouts.raed: unknown setting (did you mean 'read'?)",
            id="extra-timeouts",
        ),
        pytest.param(
            changed("policy", {"fallthrough": [429]}),
            "policy.fallthrough: unknown setting (did you mean 'fall_through'?)",
            id="extra-policy",
        ),
        pytest.param(
            changed("providers.a.timeouts", {"read": 0}),
            "providers.a.timeouts.read: should be greater than 0",
            id="timeout-zero",
        ),
        pytest.param(
            changed("policy", {"default_cooldown": -1}),
            "policy.default_cooldown: should be greater than or equal to 0",
            id="cooldown-negative",
        ),
        pytest.param(
            changed("policy", {"fall_through": [429, "soon"]}),
            "policy.fall_through.1: should be a whole number, not text",
            id="fall_through-type",
        ),
        pytest.param(
            changed("policy", {"accept": "eventually"}),
            "policy.accept: should be 'first_event' or 'headers'",
            id="accept",
        ),
        pytest.param(
            changed("limits", {"max_body_bytes": 0}),
            "limits.max_body_bytes: should be greater than or equal to 1",
            id="max_body_bytes",
        ),
        pytest.param(changed("prefix", "v1"), "prefix: must start with '/'", id="prefix"),
        pytest.param(
            changed("providers.a.api_key_env", UNSET_ENV),
            f"providers.a.api_key_env: environment variable {UNSET_ENV} is not set",
            id="env-unset",
        ),
    ],
)
def test_a_mistake_is_reported_with_its_exact_key(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


def test_every_field_mistake_is_reported_one_per_line() -> None:
    data = changed("providers.a.base_url", "ftp://x")
    data = changed("chains.fast", ["a/m1", "nope"], data)
    data = changed("providers.b.timeouts", {"read": -1}, data)
    data = changed("typo", True, data)
    assert error_of(data).splitlines() == [
        "providers.a.base_url: must start with http:// or https://",
        "providers.b.timeouts.read: should be greater than 0",
        "chains.fast.1: 'nope' is not of the form 'provider/model'",
        "typo: unknown setting (known here: prefix, providers, deployments, chains, "
        "default_chain, client_keys, policy, limits, upstream, ledger, cooldowns, models, "
        "routes, rates, price_refresh, metrics, tracing)",
    ]


def test_every_reference_mistake_is_reported_one_per_line() -> None:
    data = changed("chains", {"fast": ["a/m1", "x/m", "y/m"], "empty": [], "ok": ["b/m"]})
    data = changed("deployments", ["z/m"], data)
    data = changed("default_chain", "slow", data)
    assert error_of(data).splitlines() == [
        "chains.fast.1: unknown provider 'x'",
        "chains.fast.2: unknown provider 'y'",
        "chains.empty: a chain needs at least one entry",
        "deployments.0: unknown provider 'z'",
        "default_chain: no chain named 'slow'",
    ]


def test_regression_a_value_containing_a_semicolon_stays_on_one_line() -> None:
    # The problems used to be joined and split on "; ", so this message was cut in two.
    assert error_of(changed("chains.fast", ["a; b"])).splitlines() == [
        "chains.fast.0: 'a; b' is not of the form 'provider/model'"
    ]


def test_api_key_wins_over_api_key_env_and_env_is_then_not_needed() -> None:
    data = changed("providers.a", {"base_url": "http://x", "api_key": SECRET, "api_key_env": ENV})
    key = load_config(data).providers["a"].api_key
    assert key is not None
    assert key.get_secret_value() == SECRET
    data = changed("providers.a.api_key_env", UNSET_ENV, data)
    key = load_config(data).providers["a"].api_key
    assert key is not None
    assert key.get_secret_value() == SECRET


def test_a_wrong_api_key_is_reported_once_without_an_env_complaint() -> None:
    data = changed("providers.a", {"base_url": "http://x", "api_key": 12, "api_key_env": UNSET_ENV})
    assert error_of(data) == "providers.a.api_key: should be text (a string), not a number"


# -- files -------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert error_of(path) == f"{path}: cannot read: No such file or directory"


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: cannot read: Is a directory"


def test_regression_a_file_that_is_not_utf8_gives_a_config_error(tmp_path: Path) -> None:
    # It used to escape as a UnicodeDecodeError.
    path = write(tmp_path, "latin1.toml", b'prefix = "/v1"\n# caf\xe9\n')
    assert error_of(path) == f"{path}: not UTF-8 text (at byte 20)"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "[providers\n", "not valid TOML: Expected ']' at the end of a table "),
        ("bad.toml", "a = 1\na = 2\n", "not valid TOML: Cannot overwrite a value "),
        ("bad.json", '{"providers": {},}', "not valid JSON: Expecting property name enclosed in "),
        (
            "bad.conf",
            "providers = {}",
            "not a config format this reads: a config is TOML (.toml), YAML (.yaml, .yml) or "
            "JSON (.json; also any other name, but this is not valid JSON: Expecting value: ",
        ),
        ("bad.yaml", "providers: [a\n", "not valid YAML: while parsing a flow sequence: "),
        ("bad.yml", "a: b: c\n", "not valid YAML: mapping values are not allowed here "),
    ],
)
def test_syntax_errors_name_the_file_and_the_format(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path, name, text)
    assert error_of(path).startswith(f"{path}: {message}")


def test_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "providers:\n  a:\n    base_url: [x\n")
    assert error_of(path) == (
        f"{path}: not valid YAML: while parsing a flow sequence: expected ',' or ']', "
        "but got '<stream end>' (at line 4, column 1)"
    )


@pytest.mark.parametrize(
    ("name", "text", "got"),
    [
        ("empty.yaml", "", "nothing"),
        ("list.yaml", "- a\n- b\n", "a list"),
        ("list.json", "[1, 2]", "a list"),
        ("scalar.json", '"providers"', "a str"),
    ],
)
def test_the_top_level_must_be_a_table(tmp_path: Path, name: str, text: str, got: str) -> None:
    path = write(tmp_path, name, text)
    assert error_of(path) == f"{path}: the top level must be a table of settings, not {got}"


def test_yaml_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes ``import yaml`` raise ImportError
    path = write(tmp_path, "router.yaml", YAML)
    assert error_of(path) == f"{path}: YAML needs PyYAML (pip install 'waterfall-asgi[yaml]')"


def test_a_config_error_in_a_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "router.toml", TOML.replace('["a/m1", ', '["a-m1", '))
    assert error_of(path) == "chains.fast.0: 'a-m1' is not of the form 'provider/model'"


# -- secrets -----------------------------------------------------------------------------------
SECRET_CONFIG: dict[str, Any] = {
    "providers": {
        "direct": {"base_url": "http://127.0.0.1:9/v1", "api_key": SECRET},
        "env": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": ENV},
    },
    "chains": {"fast": ["direct/m", "env/m"]},
    "client_keys": [CLIENT_SECRET],
}
SECRETS = (SECRET, ENV_SECRET, CLIENT_SECRET)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret[5:20] not in text  # nor a recognisable part of it


def test_secrets_are_kept_and_usable() -> None:
    config = load_config(SECRET_CONFIG)
    direct, env = (config.providers[n].api_key for n in ("direct", "env"))
    assert direct == SecretStr(SECRET)
    assert env == SecretStr(ENV_SECRET)
    assert [k.get_secret_value() for k in config.client_keys] == [CLIENT_SECRET]


def test_secrets_never_appear_in_repr_str_or_dumps() -> None:
    config = load_config(SECRET_CONFIG)
    dumped = json.loads(config.model_dump_json())
    # pydantic's SecretStr serialises to a mask in JSON mode
    assert dumped["providers"]["direct"]["api_key"] == "**********"
    assert dumped["providers"]["env"]["api_key"] == "**********"
    assert dumped["client_keys"] == ["**********"]
    for text in (
        repr(config),
        str(config),
        repr(config.providers["direct"]),
        str(config.providers["env"]),
        config.model_dump_json(),
        config.model_dump_json(indent=2),
        json.dumps(config.model_dump(mode="json")),
        repr(config.model_dump()),
        str(config.model_dump()),
    ):
        assert_no_secret(text)


def _secret_mistakes() -> list[Any]:
    direct = "providers.direct"
    return [
        changed(f"{direct}.base_url", "ftp://x", SECRET_CONFIG),
        changed(f"{direct}.api_key", [SECRET], SECRET_CONFIG),
        changed(f"{direct}.api_key", {"value": SECRET}, SECRET_CONFIG),
        changed(f"{direct}.base_url", SECRET, SECRET_CONFIG),
        changed(f"{direct}.headers", {"authorization": [SECRET]}, SECRET_CONFIG),
        changed("client_keys", SECRET, SECRET_CONFIG),
        changed("client_keys", [CLIENT_SECRET, {"k": SECRET}], SECRET_CONFIG),
        changed("client_keys", CLIENT_SECRET, SECRET_CONFIG),
        changed("providers.env.api_key_env", UNSET_ENV, SECRET_CONFIG),
        changed("providers.env.timeouts", {"read": 0}, SECRET_CONFIG),
        changed("default_chain", "nope", SECRET_CONFIG),
        changed("chains.fast", ["direct/m", "nope/m"], SECRET_CONFIG),
        changed("policy", {"x": SECRET}, SECRET_CONFIG),
    ]


@pytest.mark.parametrize("data", _secret_mistakes())
def test_secrets_never_appear_in_config_errors(data: dict[str, Any]) -> None:
    assert_no_secret(error_of(data))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("s.yaml", f'providers:\n  a:\n    api_key: "{SECRET}\n'),  # unterminated string
        ("s.yaml", f"providers:\n  a:\n    api_key: {SECRET}: {SECRET}\n"),
        ("s.yaml", f"providers:\n  a:\n    api_key: [{SECRET}\n"),
        ("s.yaml", f"providers:\n  a:\n    api_key: {SECRET}\n   b: {SECRET}\n"),
        ("s.yaml", f"client_keys: [{CLIENT_SECRET}, {SECRET}]]\n"),
        ("s.yaml", f"providers:\n\tapi_key: {SECRET}\n"),
        ("s.yaml", f'api_key: "{SECRET}" {SECRET}\n'),
        ("s.toml", f'[providers.a]\napi_key = "{SECRET}\n'),
        ("s.toml", f"[providers.a]\napi_key = {SECRET}\n"),
        ("s.toml", f'[providers.a]\napi_key = "x" "{SECRET}"\n'),
        ("s.json", f'{{"providers": {{"a": {{"api_key": "{SECRET}\n"}}}}}}'),
        ("s.json", f'{{"providers": {{"a": {{"api_key": {SECRET}}}}}}}'),
        ("s.json", f'{{"client_keys": ["{CLIENT_SECRET}" "{SECRET}"]}}'),
    ],
)
def test_regression_yaml_syntax_errors_no_longer_quote_the_secret(
    tmp_path: Path, name: str, text: str
) -> None:
    # PyYAML's message quotes the offending source line; it used to reach ConfigError as is.
    path = write(tmp_path, name, text)
    message = error_of(path)
    assert message.startswith(f"{path}: not valid ")
    assert_no_secret(message)


def test_secrets_in_a_file_never_reach_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.toml",
        f'client_keys = ["{CLIENT_SECRET}"]\n[providers.a]\nbase_url = "http://x"\n'
        f'api_key = "{SECRET}"\n[providers.b]\nbase_url = "http://y"\napi_key_env = "{ENV}"\n',
    )
    config = load_config(path)
    assert_no_secret(repr(config) + str(config) + config.model_dump_json())


# -- deployments and policy --------------------------------------------------------------------
def test_all_deployments_in_config_order_without_duplicates() -> None:
    config = load_config(
        {
            "providers": {"a": {"base_url": "http://a"}, "b": {"base_url": "http://b"}},
            "deployments": ["b/solo", "a/m1", "b/solo"],
            "chains": {
                "fast": ["a/m2", "a/m1", "b/x/y"],
                "slow": ["b/x/y", "a/m3", "a/m2"],
            },
        }
    )
    assert [d.key for d in config.all_deployments()] == [
        "b/solo",
        "a/m1",
        "a/m2",
        "b/x/y",
        "a/m3",
    ]
    assert config.all_deployments()[3] == Deployment(provider="b", model="x/y")


def test_all_deployments_of_an_empty_config() -> None:
    assert load_config({"providers": {}}).all_deployments() == []


@pytest.mark.parametrize("status", [401, 402, 403, 408, 429, *range(500, 600)])
def test_default_policy_falls_through_on(status: int) -> None:
    assert RoutingPolicy().falls_through(status) is True


@pytest.mark.parametrize("status", [200, 204, 301, 400, 404, 405, 409, 413, 422, 451, 499])
def test_default_policy_does_not_fall_through_on(status: int) -> None:
    assert RoutingPolicy().falls_through(status) is False


def test_fall_through_is_configurable_but_5xx_always_falls_through() -> None:
    policy = load_config(changed("policy", {"fall_through": [400, 404]})).policy
    assert [
        s for s in (400, 401, 402, 403, 404, 408, 413, 422, 429) if policy.falls_through(s)
    ] == [
        400,
        404,
    ]
    assert all(policy.falls_through(s) for s in range(500, 600))
    assert RoutingPolicy(fall_through=frozenset()).falls_through(429) is False
    assert RoutingPolicy(fall_through=frozenset()).falls_through(503) is True


def test_extra_header_values_are_secrets_too() -> None:
    config = load_config(
        {
            "providers": {
                "az": {"base_url": "https://az.example/v1", "headers": {"api-key": "hdr-secret-42"}}
            },
            "chains": {"c": ["az/m"]},
        }
    )
    for text in (repr(config), str(config), config.model_dump_json()):
        assert "hdr-secret-42" not in text
    assert config.providers["az"].headers["api-key"].get_secret_value() == "hdr-secret-42"


def test_a_route_lists_each_deployment_once() -> None:
    with pytest.raises(ConfigError, match=r"routes\.auto\.deployments: 'a/m' is listed twice"):
        load_config(
            {
                "providers": {"a": {"base_url": "http://a/v1"}},
                "routes": {"auto": {"deployments": ["a/m", "a/n", "a/m"]}},
            }
        )
