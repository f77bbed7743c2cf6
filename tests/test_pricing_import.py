"""Prices imported from the fakes' ``GET /v1/models``, exactly, in both styles.

The fakes publish each model's prices twice: ``pricing`` (USD per token, as strings: OpenRouter)
and ``sats_pricing`` (sats per token, as JSON numbers: Routstr). Whatever the digits, the import
must return the very Decimals the fake was configured with, never a float's approximation. A
provider that cannot be reached or read keeps its last good prices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_asgi.config import Price, RouterConfig
from waterfall_asgi.cost import rank
from waterfall_asgi.pricing import (
    PriceBook,
    PriceImportError,
    missing_prices,
    models_url,
    parse_models,
)
from waterfall_fakes import DEFAULT_MODELS, FakeModel, FakeNetwork, FakeProvider, FakeServer

# More significant digits than a binary float holds: a float would change them.
FINE = Decimal("0.0000001234567890123456789")
FINE_SATS = Decimal("0.0001234567890123456789")
FINE_FEE = Decimal("1.000000000000000000001")
PRECISE = FakeModel(
    id="fake-precise",
    usd_prompt=FINE,
    usd_completion=Decimal("0.00000000000000000001"),
    usd_request=FINE_FEE,
    sats_prompt=FINE_SATS,
    sats_completion=Decimal("123456789.123456789"),
    sats_request=FINE_FEE,
)
MODELS = (*DEFAULT_MODELS, PRECISE)
CHAT = {"model": "cheap", "messages": [{"role": "user", "content": "Hello"}]}


def usd_price(**amounts: Any) -> Price:
    """An imported OpenRouter-style price: published in dollars, kept in usd_micro exactly."""
    return Price(unit="usd_micro", **{k: Decimal(str(v)) * 10**6 for k, v in amounts.items()})


def sat_price(**amounts: Any) -> Price:
    """An imported Routstr-style price: published in sats, kept in msat exactly."""
    return Price(unit="msat", **{k: Decimal(str(v)) * 1000 for k, v in amounts.items()})


def make_config(_rest: dict[str, Any] | None = None, **providers: dict[str, Any]) -> RouterConfig:
    """A config with one provider per keyword, at ``http://NAME/v1`` unless it says otherwise,
    and the other settings in ``_rest``."""
    return RouterConfig.model_validate(
        {
            "providers": {
                name: {"base_url": f"http://{name}/v1", **settings}
                for name, settings in providers.items()
            },
            **(_rest or {}),
        }
    )


def usd(m: FakeModel) -> Price:
    return usd_price(prompt=m.usd_prompt, completion=m.usd_completion, request=m.usd_request)


def sats(m: FakeModel) -> Price:
    return sat_price(prompt=m.sats_prompt, completion=m.sats_completion, request=m.sats_request)


def listings(fake: FakeProvider) -> int:
    """How many times ``fake`` was asked for its models."""
    return len(fake.calls("/v1/models"))


class Faults(httpx.AsyncBaseTransport):
    """The fake network, except that a host in ``answers`` gets a canned reply (or, for
    ``"hang"``, none at all). The fakes script faults for chat requests only, not for
    ``GET /v1/models``, so a failing listing has to be played here."""

    def __init__(self, net: FakeNetwork) -> None:
        self.net = net
        self.answers: dict[str, tuple[int, bytes] | str] = {}
        self.canned = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers.get(request.url.host)
        if answer is None:
            return await self.net.handle_async_request(request)
        self.canned += 1
        if answer == "hang":
            await asyncio.sleep(30)  # cancelled by the import's own deadline
        if answer == "bug":
            raise RuntimeError("a bug in the transport")
        assert isinstance(answer, tuple)
        status, body = answer
        return httpx.Response(status, content=body, request=request)


# -- parse_models -------------------------------------------------------------------------------


def test_openrouter_style_round_trips_exactly() -> None:
    body = FakeProvider(models=MODELS).handle("GET", "/v1/models", {}, b"").body
    prices = parse_models(body, "openrouter")
    assert prices == {m.id: usd(m) for m in MODELS}
    assert prices["fake-precise"].prompt == FINE * 10**6  # in usd_micro, exactly
    assert Decimal(repr(float(FINE))) != FINE  # the test would catch a trip through float


def test_routstr_style_round_trips_exactly() -> None:
    body = FakeProvider(models=MODELS).handle("GET", "/v1/models", {}, b"").body
    assert b'"prompt":0.0001234567890123456789' in body  # a bare JSON number with every digit
    prices = parse_models(body, "routstr")
    assert prices == {m.id: sats(m) for m in MODELS}
    assert prices["fake-precise"].request == FINE_FEE * 1000  # in msat, exactly
    assert Decimal(repr(float(FINE_SATS))) != FINE_SATS


def test_auto_prefers_sats_pricing_and_falls_back_to_pricing() -> None:
    body = (
        b'{"data": ['
        b'{"id": "both", "pricing": {"prompt": "0.1", "completion": "0.2"},'
        b' "sats_pricing": {"prompt": 3, "completion": 4.5, "request": 6}},'
        b'{"id": "usd-only", "pricing": {"prompt": "0.000001", "completion": "0.000002",'
        b' "request": "0.01"}},'
        b'{"id": "sats-only", "sats_pricing": {"prompt": 1e-3, "completion": 0.002}},'
        b'{"id": "neither", "context_length": 8}'
        b"]}"
    )
    warnings: list[str] = []
    assert parse_models(body, "auto", warnings=warnings) == {
        "both": sat_price(prompt=3, completion=Decimal("4.5"), request=6),
        "usd-only": usd_price(
            prompt=Decimal("0.000001"),
            completion=Decimal("0.000002"),
            request=Decimal("0.01"),
        ),
        "sats-only": sat_price(prompt=Decimal("0.001"), completion=Decimal("0.002")),
    }
    assert warnings == ["model 'neither': skipped: has neither `sats_pricing` nor `pricing`"]


def test_a_model_with_an_unusable_price_is_skipped_with_the_reason() -> None:
    body = (
        b'{"object": "list", "data": ['
        b'{"id": "good", "pricing": {"prompt": "0", "completion": "-0"}},'
        b'{"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},'
        b'{"id": "words", "pricing": {"prompt": "cheap", "completion": "0.1"}},'
        b'{"id": "bool", "pricing": {"prompt": true, "completion": "0.1"}},'
        b'{"id": "nan", "pricing": {"prompt": NaN, "completion": "Infinity"}},'
        b'{"id": "spaced", "pricing": {"prompt": " 1", "completion": "1_0"}},'
        b'{"id": "no-completion", "pricing": {"prompt": "0.1"}},'
        b'{"id": "null-prompt", "pricing": {"prompt": null, "completion": "0.1"}},'
        b'{"id": "bad-fee", "pricing": {"prompt": "1", "completion": "1", "request": {}}},'
        b'{"id": "list", "pricing": ["0.1", "0.2"]},'
        b'{"id": "no-pricing", "sats_pricing": {"prompt": 1, "completion": 1}},'
        b'{"id": "", "pricing": {"prompt": "1", "completion": "1"}},'
        b'"not a model",'
        b'{"id": "good", "pricing": {"prompt": "9", "completion": "9"}}'
        b"]}"
    )
    warnings: list[str] = []
    prices = parse_models(body, "openrouter", warnings=warnings)
    assert prices == {"good": usd_price()}
    assert str(prices["good"].completion) == "0"  # -0 is read as 0
    assert warnings == [
        "model 'openrouter/auto': skipped: `pricing.prompt`: '-1' is negative; "
        "`pricing.completion`: '-1' is negative",
        "model 'words': skipped: `pricing.prompt`: 'cheap' is not a number",
        "model 'bool': skipped: `pricing.prompt`: True is not a number",
        "model 'nan': skipped: `pricing.prompt`: Decimal('NaN') is not a finite number; "
        "`pricing.completion`: 'Infinity' is not a number",
        "model 'spaced': skipped: `pricing.prompt`: ' 1' is not a number; "
        "`pricing.completion`: '1_0' is not a number",
        "model 'no-completion': skipped: `pricing.completion` is missing",
        "model 'null-prompt': skipped: `pricing.prompt` is missing",
        "model 'bad-fee': skipped: `pricing.request`: {} is not a number",
        "model 'list': skipped: `pricing` is not an object",
        "model 'no-pricing': skipped: has no `pricing`",
        "data[11]: skipped: no model id",
        "data[12]: skipped: no model id",
        "model 'good': listed twice; the first listing is used",
    ]


def test_routstr_style_reads_numbers_and_numeric_strings() -> None:
    body = (
        b'[{"id": "a", "sats_pricing": {"prompt": 1E-21, "completion": "12.5", "request": 7}},'
        b' {"id": "b", "sats_pricing": {"prompt": -0.5, "completion": 1}}]'
    )
    warnings: list[str] = []
    assert parse_models(body, "routstr", warnings=warnings) == {
        "a": sat_price(prompt=Decimal("1E-21"), completion=Decimal("12.5"), request=7)
    }
    assert warnings == ["model 'b': skipped: `sats_pricing.prompt`: Decimal('-0.5') is negative"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>Bad gateway</html>", "the answer is not JSON (JSONDecodeError)"),
        (b"\xff\xfe\xfa", "the answer is not JSON (UnicodeDecodeError)"),
        (b'{"object": "list"}', "the answer has no list of models"),
        (b'{"data": {"id": "m"}}', "the answer has no list of models"),
        (b'"models"', "the answer has no list of models"),
    ],
)
def test_an_unreadable_answer_raises(body: bytes, why: str) -> None:
    with pytest.raises(PriceImportError) as caught:
        parse_models(body, "auto")
    assert str(caught.value).startswith(why)


def test_an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown price style 'usd'"):
        parse_models(b"[]", "usd")  # type: ignore[arg-type]


def test_without_a_warnings_list_the_problems_are_logged_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = b'[{"id": "x"}, {"id": "y", "pricing": {"prompt": "-2", "completion": "1"}}]'
    with caplog.at_level(logging.WARNING, logger="waterfall_asgi.pricing"):
        assert parse_models(body, "openrouter") == {}
    assert [r.getMessage() for r in caplog.records] == [
        "price import: 2 problem(s): model 'x': skipped: has no `pricing` | "
        "model 'y': skipped: `pricing.prompt`: '-2' is negative"
    ]


# -- the price book, against the fakes ---------------------------------------------------------


@pytest.mark.anyio
async def test_refresh_imports_each_provider_in_its_style_with_its_key_and_headers() -> None:
    net = FakeNetwork(
        {
            "or": FakeProvider(name="or", models=MODELS),
            "rs": FakeProvider(name="rs", models=MODELS),
            "plain": FakeProvider(name="plain"),
        }
    )
    config = make_config(
        **{
            "or": {
                "import_prices": "openrouter",
                "api_key": "sk-or-secret",
                "headers": {"HTTP-Referer": "https://example.test", "X-Title": "waterfall"},
            },
            "rs": {"import_prices": "routstr", "api_key": "cashuA-token"},
            "plain": {},
        }
    )
    book = PriceBook(config)
    assert book.styles == {"or": "openrouter", "rs": "routstr"}
    assert book.prices == {}
    async with httpx.AsyncClient(transport=net) as client:
        assert await book.refresh(client) == {}
    assert dict(book.prices) == {
        **{f"or/{m.id}": usd(m) for m in MODELS},
        **{f"rs/{m.id}": sats(m) for m in MODELS},
    }
    assert book.prices["or/fake-precise"].prompt == FINE * 10**6
    assert book.prices["rs/fake-precise"].prompt == FINE_SATS * 1000
    assert dict(book.models("rs")) == {m.id: sats(m) for m in MODELS}
    assert book.models("plain") == {}
    assert book.errors == {}
    assert book.warnings == {"or": (), "rs": ()}
    (sent,) = net["or"].calls("/v1/models")
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["authorization"] == "Bearer sk-or-secret"
    assert sent.headers["http-referer"] == "https://example.test"
    assert sent.headers["x-title"] == "waterfall"
    assert sent.headers["accept"] == "application/json"
    (sent,) = net["rs"].calls("/v1/models")
    assert sent.headers["authorization"] == "Bearer cashuA-token"
    assert "x-title" not in sent.headers
    assert net["plain"].requests == []  # import_prices not set: never asked


@pytest.mark.anyio
async def test_the_api_key_wins_over_an_extra_authorization_header() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    config = make_config(
        a={"import_prices": "auto", "api_key": "right", "headers": {"Authorization": "wrong"}}
    )
    async with httpx.AsyncClient(transport=net) as client:
        await PriceBook(config).refresh(client)
    assert net["a"].calls("/v1/models")[0].headers["authorization"] == "Bearer right"


@pytest.mark.anyio
async def test_auto_against_the_fakes_reads_sats() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a", models=MODELS)})
    book = PriceBook(make_config(a={"import_prices": "auto"}))
    async with httpx.AsyncClient(transport=net) as client:
        await book.refresh(client)
    assert dict(book.prices) == {f"a/{m.id}": sats(m) for m in MODELS}


@pytest.mark.anyio
async def test_a_provider_that_is_down_keeps_its_last_good_prices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = FakeNetwork({"a": FakeProvider(name="a"), "b": FakeProvider(name="b")})
    book = PriceBook(make_config(a={"import_prices": "openrouter"}, b={"import_prices": "routstr"}))
    caplog.set_level(logging.DEBUG, logger="waterfall_asgi.pricing")
    async with httpx.AsyncClient(transport=net) as client:
        assert await book.refresh(client) == {}
        before = dict(book.prices)
        net.down.add("a")
        assert await book.refresh(client) == {"a": "ConnectError: cannot connect to 'a'"}
        assert await book.refresh(client) == {"a": "ConnectError: cannot connect to 'a'"}
        assert dict(book.prices) == before
        assert book.errors == {"a": "ConnectError: cannot connect to 'a'"}
        net.down.clear()
        assert await book.refresh(client) == {}
    assert book.errors == {}
    assert dict(book.prices) == before
    assert listings(net["a"]) == 2
    assert listings(net["b"]) == 4
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert said == [  # the failure once, however long it lasts, then the recovery
        (
            "WARNING",
            "price import from a failed: ConnectError: cannot connect to 'a' "
            "(keeping 3 earlier prices)",
        ),
        ("INFO", "price import from a: working again (3 models)"),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ((500, b'{"error": {"message": "boom"}}'), "HTTP 500 Internal Server Error"),
        ((404, b"{}"), "HTTP 404 Not Found"),
        ((200, b"{not json"), "the answer is not JSON (JSONDecodeError)"),
        (
            (200, b'{"error": "no models"}'),
            "the answer has no list of models (an object with a `data` array)",
        ),
        (
            (200, b'{"data": [{"id": "m", "pricing": {"prompt": "-1", "completion": "1"}}]}'),
            "no model in the answer has a usable price (1 skipped)",
        ),
        ("hang", "timed out"),
        ("bug", "unexpected error (RuntimeError)"),
    ],
)
async def test_a_failing_listing_keeps_the_previous_prices(
    answer: tuple[int, bytes] | str, why: str
) -> None:
    net = FakeNetwork({"a": FakeProvider(name="a", models=MODELS), "b": FakeProvider(name="b")})
    faults = Faults(net)
    quick = {"first_byte": 0.05, "read": 0.05}
    book = PriceBook(
        make_config(
            a={"import_prices": "openrouter", "timeouts": quick}, b={"import_prices": "routstr"}
        )
    )
    async with httpx.AsyncClient(transport=faults) as client:
        await book.refresh(client)
        before = dict(book.prices)
        assert len(before) == len(MODELS) + len(DEFAULT_MODELS)
        faults.answers["a"] = answer
        assert await book.refresh(client) == {"a": why}
    assert faults.canned == 1
    assert dict(book.prices) == before
    assert book.errors == {"a": why}
    assert listings(net["b"]) == 2  # the other provider was refreshed all the same


@pytest.mark.anyio
async def test_an_answer_larger_than_the_limit_is_a_failure() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    book = PriceBook(make_config(a={"import_prices": "routstr"}), max_bytes=100)
    async with httpx.AsyncClient(transport=net) as client:
        assert await book.refresh(client) == {"a": "the answer is larger than 100 bytes"}
    assert book.prices == {}


@pytest.mark.anyio
async def test_skipped_models_are_logged_once_and_kept_as_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    faults = Faults(net)
    faults.answers["a"] = (
        200,
        b'{"data": [{"id": "ok", "pricing": {"prompt": "1", "completion": "2"}},'
        b' {"id": "free?", "pricing": {"prompt": "-1", "completion": "0"}}]}',
    )
    book = PriceBook(make_config(a={"import_prices": "openrouter"}))
    caplog.set_level(logging.WARNING, logger="waterfall_asgi.pricing")
    async with httpx.AsyncClient(transport=faults) as client:
        for _ in range(3):
            assert await book.refresh(client) == {}
    assert dict(book.prices) == {"a/ok": usd_price(prompt=1, completion=2)}
    note = "model 'free?': skipped: `pricing.prompt`: '-1' is negative"
    assert book.warnings == {"a": (note,)}
    assert [r.getMessage() for r in caplog.records] == [f"price import from a: {note}"]


@pytest.mark.anyio
async def test_a_model_that_leaves_the_listing_loses_its_price() -> None:
    fake = FakeProvider(name="a")
    net = FakeNetwork({"a": fake})
    book = PriceBook(make_config(a={"import_prices": "routstr"}))
    async with httpx.AsyncClient(transport=net) as client:
        await book.refresh(client)
        assert sorted(book.prices) == ["a/fake-large", "a/fake-medium", "a/fake-small"]
        view = book.prices
        fake.config = fake.config.model_copy(update={"models": (PRECISE,)})
        await book.refresh(client)
    assert dict(view) == {"a/fake-precise": sats(PRECISE)}  # the view is live


# -- a real loopback server ---------------------------------------------------------------------


@pytest.fixture
def loopback_fake() -> Iterator[FakeServer]:
    with FakeServer(FakeProvider(name="real", models=MODELS)) as server:
        yield server


@pytest.mark.loopback
@pytest.mark.anyio
async def test_import_over_a_real_loopback_server(loopback_fake: FakeServer) -> None:
    config = RouterConfig.model_validate(
        {
            "providers": {
                "usd": {
                    "base_url": loopback_fake.url,
                    "import_prices": "openrouter",
                    "api_key": "k1",
                    "headers": {"X-Extra": "yes"},
                },
                "sat": {"base_url": loopback_fake.url + "/", "import_prices": "routstr"},
            }
        }
    )
    assert models_url(config.providers["sat"]) == loopback_fake.url + "/models"
    book = PriceBook(config)
    async with httpx.AsyncClient() as client:
        assert await book.refresh(client) == {}
    assert dict(book.prices) == {
        **{f"usd/{m.id}": usd(m) for m in MODELS},
        **{f"sat/{m.id}": sats(m) for m in MODELS},
    }
    calls = loopback_fake.provider.calls("/v1/models")
    assert len(calls) == 2
    sent = {c.headers.get("authorization"): c.headers.get("x-extra") for c in calls}
    assert sent == {"Bearer k1": "yes", None: None}


# -- the interval refresher ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_refreshes_on_the_interval_until_cancelled() -> None:
    fake = FakeProvider(name="a")
    net = FakeNetwork({"a": fake})
    book = PriceBook(make_config(a={"import_prices": "openrouter"}, _rest={"price_refresh": 0.01}))
    async with httpx.AsyncClient(transport=net) as client:
        task = asyncio.create_task(book.run(client))  # the config's interval
        for _ in range(500):  # bounded: at most ~5 s
            if listings(fake) >= 2:
                break
            await asyncio.sleep(0.01)
        assert listings(fake) >= 2
        assert book.prices["a/fake-small"] == usd(DEFAULT_MODELS[0])
        cheaper = DEFAULT_MODELS[0].model_copy(update={"usd_prompt": FINE})
        fake.config = fake.config.model_copy(update={"models": (cheaper,)})
        for _ in range(500):
            if "a/fake-medium" not in book.prices:
                break
            await asyncio.sleep(0.01)
        assert dict(book.prices) == {"a/fake-small": usd(cheaper)}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        count = listings(fake)
        await asyncio.sleep(0.05)
        assert listings(fake) == count  # stopped for good
    assert count >= 3


@pytest.mark.anyio
async def test_run_without_an_interval_returns_at_once() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    book = PriceBook(make_config(a={"import_prices": "openrouter"}))
    async with httpx.AsyncClient(transport=net) as client:
        await asyncio.wait_for(book.run(client), 5)  # price_refresh is None
        await asyncio.wait_for(PriceBook(make_config(a={})).run(client, 0.01), 5)  # no importer
        with pytest.raises(ValueError, match="must be positive, not 0"):
            await book.run(client, 0)
    assert listings(net["a"]) == 0


# -- missing prices, and cost routing on imported prices ----------------------------------------


@pytest.mark.anyio
async def test_missing_lists_route_candidates_without_any_price() -> None:
    net = FakeNetwork({"imp": FakeProvider(name="imp"), "cfg": FakeProvider(name="cfg")})
    config = make_config(
        imp={"import_prices": "routstr"},
        cfg={},
        _rest={
            "chains": {"fast": ["imp/fake-small", "imp/typo-model", "cfg/unpriced"]},
            "routes": {
                "listed": {
                    "deployments": [
                        "imp/fake-medium",
                        "imp/not-listed",
                        {"provider": "cfg", "model": "m", "price": {"prompt": 1}},
                        "cfg/no-price",
                    ]
                },
                "everything": {},
            },
        },
    )
    book = PriceBook(config)
    assert missing_prices(config, book) == [
        "imp/fake-medium",
        "imp/not-listed",
        "cfg/no-price",
        "imp/fake-small",
        "imp/typo-model",
    ]
    async with httpx.AsyncClient(transport=net) as client:
        await book.refresh(client)
    # "cfg/unpriced" is no candidate of "everything": its provider imports nothing
    assert missing_prices(config, book) == ["imp/not-listed", "cfg/no-price", "imp/typo-model"]
    assert missing_prices(config, dict(book.prices)) == missing_prices(config, book)
    assert missing_prices(config) == missing_prices(config, {})


@pytest.mark.anyio
async def test_cost_routing_ranks_on_imported_prices_and_config_prices_win() -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    config = make_config(
        a={"import_prices": "openrouter"},
        _rest={
            "routes": {
                "cheap": {
                    "deployments": [
                        "a/fake-large",
                        "a/fake-small",
                        {
                            "provider": "a",
                            "model": "fake-medium",
                            "price": {"unit": "usd_micro", "prompt": "0", "completion": "0"},
                        },
                    ]
                }
            }
        },
    )
    book = PriceBook(config)
    async with httpx.AsyncClient(transport=net) as client:
        await book.refresh(client)
    assert missing_prices(config, book) == []
    ranking = rank(config, "cheap", CHAT, prices=book.prices)
    assert [d.key for d in ranking.plan] == ["a/fake-medium", "a/fake-small", "a/fake-large"]
    small = ranking.ranked[1]
    assert small.price == usd(DEFAULT_MODELS[0])
    expected = ranking.prompt_tokens * Decimal("0.15") + 256 * Decimal("0.6")  # usd_micro
    assert small.estimate == expected


# -- the property: any exact price survives the trip, in both styles ----------------------------

exact_prices = st.builds(
    lambda digits, exponent: Decimal(f"{digits}E{exponent}"),
    st.integers(0, 10**20 - 1),
    st.integers(-30, 6),
)


@settings(deadline=None, max_examples=60)
@given(
    usd_prices=st.tuples(exact_prices, exact_prices, exact_prices),
    sats_prices=st.tuples(exact_prices, exact_prices, exact_prices),
)
def test_any_exact_price_is_imported_exactly_in_both_styles(
    usd_prices: tuple[Decimal, Decimal, Decimal], sats_prices: tuple[Decimal, Decimal, Decimal]
) -> None:
    model = FakeModel(
        id="m",
        usd_prompt=usd_prices[0],
        usd_completion=usd_prices[1],
        usd_request=usd_prices[2],
        sats_prompt=sats_prices[0],
        sats_completion=sats_prices[1],
        sats_request=sats_prices[2],
    )
    fake = FakeProvider(models=(model,))
    net = FakeNetwork({"or": fake, "rs": fake})
    book = PriceBook(
        make_config(**{"or": {"import_prices": "openrouter"}, "rs": {"import_prices": "routstr"}})
    )

    async def refresh() -> dict[str, str]:
        async with httpx.AsyncClient(transport=net) as client:
            return await book.refresh(client)

    assert asyncio.run(refresh()) == {}
    got_usd, got_sats = book.prices["or/m"], book.prices["rs/m"]
    assert (got_usd.unit, got_usd.prompt, got_usd.completion, got_usd.request) == (
        "usd_micro",
        *(p * 10**6 for p in usd_prices),
    )
    assert (got_sats.unit, got_sats.prompt, got_sats.completion, got_sats.request) == (
        "msat",
        *(p * 1000 for p in sats_prices),
    )
