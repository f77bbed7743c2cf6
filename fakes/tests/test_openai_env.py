"""``fake_openai_env``: the official SDKs reach the fake through their environment variables,
with no change to the code under test (run under ``pytester``, in-process)."""

from __future__ import annotations

import os
import shutil

import pytest

APP = '''
import openai

def summarise(text):
    """Application code: it builds its client from the environment, as most apps do."""
    client = openai.OpenAI(max_retries=0)
    answer = client.chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": text}], max_tokens=3
    )
    return answer.choices[0].message.content
'''


def run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(app=APP)
    pytester.makepyfile(test_app=source)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "error")


def test_the_sdk_reaches_the_fake_unchanged(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import os
import pytest
from app import summarise
from waterfall_fakes.pytest_plugin import FAKE_API_KEY

def test_summarise(fake_openai_env):
    assert summarise("hello there")
    (request,) = fake_openai_env.provider.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer " + FAKE_API_KEY
    assert os.environ["OPENAI_BASE_URL"] == fake_openai_env.url

@pytest.mark.fake_config(api_key="sk-test-key", script=["status:code=503"])
def test_the_fakes_own_key_and_script(fake_openai_env):
    import openai
    with pytest.raises(openai.InternalServerError):
        summarise("hello")
    assert fake_openai_env.provider.requests[0].status == 503
    assert os.environ["OPENAI_API_KEY"] == "sk-test-key"
""",
    )
    result.assert_outcomes(passed=2)


def test_the_environment_is_restored(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere.invalid/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = run(
        pytester,
        """
def test_uses(fake_openai_env):
    pass
""",
    )
    result.assert_outcomes(passed=1)
    assert os.environ["OPENAI_BASE_URL"] == "http://elsewhere.invalid/v1"
    assert "OPENAI_API_KEY" not in os.environ


def test_a_failure_prints_what_the_fake_received(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import pytest
from app import summarise

@pytest.mark.fake_config(script=["rate_limit:seconds=2"])
def test_fails(fake_openai_env):
    import openai
    with pytest.raises(openai.RateLimitError):
        summarise("hi")
    assert False, "look at the journal"
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*waterfall-fakes (call)*",
            "'fake' received 1 request, a script of 1 step",
            "  1. POST /v1/chat/completions -> 429  [[]rate_limit:seconds=2.0[]] by script:0",
        ]
    )


@pytest.mark.loopback
def test_a_node_process_started_by_the_test_uses_the_fake(pytester: pytest.Pytester) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = run(
        pytester,
        f"""
import subprocess

SCRIPT = '''
const r = await fetch(process.env.OPENAI_BASE_URL + "/models",
    {{headers: {{authorization: "Bearer " + process.env.OPENAI_API_KEY}}}});
console.log(r.status, (await r.json()).data.length);
'''

def test_node(fake_openai_env):
    done = subprocess.run(
        [{node!r}, "--input-type=module", "-e", SCRIPT],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout.split() == ["200", "3"]
    (request,) = fake_openai_env.provider.requests
    assert request.headers["authorization"].startswith("Bearer sk-")
""",
    )
    result.assert_outcomes(passed=1)
