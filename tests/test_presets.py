"""The presets for OpenAI-compatible services: the table, the configuration it gives, and
the preset worker's checks (the served path is ``tests/conformance/test_presets.py`` and
``test_local_servers.py``)."""

from __future__ import annotations

import httpx
import pytest

from trio_orchestrator.config import parse_config
from trio_orchestrator.errors import ConfigError, UnsupportedParameter
from trio_orchestrator.testing.fake_provider import open_fake_provider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig, build_worker
from trio_orchestrator.workers.kinds import FEATURES
from trio_orchestrator.workers.preset import PresetWorker, check_refusals
from trio_orchestrator.workers.presets import PRESETS

CLOUD = sorted(kind for kind, preset in PRESETS.items() if not preset.local)
LOCAL = sorted(kind for kind, preset in PRESETS.items() if preset.local)


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_a_preset_builds_a_worker_for_its_service(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kind = "<preset>"`` alone builds a PresetWorker at the service's base URL."""
    preset = PRESETS[kind]
    if preset.api_key_env:
        monkeypatch.setenv(preset.api_key_env, "sk-from-env-0123456789")
    worker = build_worker(ProvidersConfig([ProviderConfig(kind)]), httpx.AsyncClient())  # type: ignore[arg-type]
    assert isinstance(worker, PresetWorker)
    assert worker.base_url == preset.base_url
    assert (worker.keys is None) == preset.local


@pytest.mark.parametrize("kind", CLOUD)
def test_a_cloud_preset_without_its_key_names_the_variable(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cloud preset with no key and its variable unset is a ConfigError naming it."""
    variable = PRESETS[kind].api_key_env
    assert variable
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match=variable):
        ProviderConfig(kind).keys()  # type: ignore[arg-type]


def test_keys_in_the_entry_win_over_the_services_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``api_keys`` given, the preset's variable is not read (nor required)."""
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    keys = ProviderConfig("groq", api_keys=["gsk-mine-0123456789"]).keys()
    assert [k.reveal() for k in keys] == ["gsk-mine-0123456789"]


def test_ollamas_native_api_is_refused_as_base_url() -> None:
    """An ollama base_url at its native ``/api`` is refused: the gateway speaks ``/v1``."""
    with pytest.raises(ConfigError, match="/v1"):
        parse_config(
            '[[providers.providers]]\nkind = "ollama"\nbase_url = "http://localhost:11434/api"\n'
        )


def test_an_allowed_value_passes_and_another_is_refused() -> None:
    """Groq takes ``n = 1`` and refuses ``n = 2``, naming ``n``."""
    check_refusals(PRESETS["groq"], {"model": "m", "n": 1}, "groq")
    with pytest.raises(UnsupportedParameter) as caught:
        check_refusals(PRESETS["groq"], {"model": "m", "n": 2}, "groq")
    assert caught.value.param == "n"


@pytest.mark.parametrize("kind", [k for k in LOCAL if FEATURES[k].lists_models])
async def test_a_local_server_lists_its_models(kind: str) -> None:
    """A local preset that has a ``/models`` listing answers ``list_models`` from it."""
    async with open_fake_provider() as fake, httpx.AsyncClient() as client:
        provider = ProviderConfig(kind, base_url=fake.openai_base_url)  # type: ignore[arg-type]
        worker = build_worker(ProvidersConfig([provider]), client)
        assert isinstance(worker, PresetWorker)
        assert await worker.list_models() == list(fake.models)
