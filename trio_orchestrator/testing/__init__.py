"""Tools for testing workers and what wraps them, the way :mod:`trio.testing` tests Trio code.

- :mod:`.strategies`: Hypothesis strategies for requests and fault schedules, and
  :class:`ScriptedWorker`, a worker that follows a fault schedule.
- :mod:`.contract`: the worker contract, as a base class for pytest (:class:`WorkerContract`)
  and as a function (:func:`check_worker`).
- :mod:`.fake_provider`: a real HTTP server speaking the OpenAI and Anthropic wire formats,
  with scripted faults (:func:`open_fake_provider`; its scripts are
  :class:`FakeBehaviour`, ``fake_provider.Behaviour``).

Importing this package, or :mod:`.fake_provider`, needs neither pytest nor Hypothesis:
each name is imported from its module on first use, and only the contract and the
strategies are built on them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contract import (
        ContractViolation,
        WorkerContract,
        check_call,
        check_worker,
        check_worker_async,
        worker_contract,
    )
    from .fake_provider import Behaviour as FakeBehaviour
    from .fake_provider import (
        FakeProvider,
        FakeProviderStatistics,
        FaultMix,
        RecordedRequest,
        open_fake_provider,
    )
    from .strategies import (
        WORKER_ERRORS,
        Behaviour,
        BreakGrammar,
        Fail,
        Hang,
        ScriptedWorker,
        ScriptedWorkerStatistics,
        Stall,
        Succeed,
        behaviours,
        fault_schedules,
        generation_params,
        messages,
        prompt_requests,
        tools,
        worker_errors,
    )

# Where each public name lives: (module, name in it).
_WHERE: dict[str, tuple[str, str]] = {
    "Behaviour": ("strategies", "Behaviour"),
    "BreakGrammar": ("strategies", "BreakGrammar"),
    "ContractViolation": ("contract", "ContractViolation"),
    "Fail": ("strategies", "Fail"),
    "FakeBehaviour": ("fake_provider", "Behaviour"),
    "FakeProvider": ("fake_provider", "FakeProvider"),
    "FakeProviderStatistics": ("fake_provider", "FakeProviderStatistics"),
    "FaultMix": ("fake_provider", "FaultMix"),
    "Hang": ("strategies", "Hang"),
    "RecordedRequest": ("fake_provider", "RecordedRequest"),
    "ScriptedWorker": ("strategies", "ScriptedWorker"),
    "ScriptedWorkerStatistics": ("strategies", "ScriptedWorkerStatistics"),
    "Stall": ("strategies", "Stall"),
    "Succeed": ("strategies", "Succeed"),
    "WORKER_ERRORS": ("strategies", "WORKER_ERRORS"),
    "WorkerContract": ("contract", "WorkerContract"),
    "behaviours": ("strategies", "behaviours"),
    "check_call": ("contract", "check_call"),
    "check_worker": ("contract", "check_worker"),
    "check_worker_async": ("contract", "check_worker_async"),
    "fault_schedules": ("strategies", "fault_schedules"),
    "generation_params": ("strategies", "generation_params"),
    "messages": ("strategies", "messages"),
    "open_fake_provider": ("fake_provider", "open_fake_provider"),
    "prompt_requests": ("strategies", "prompt_requests"),
    "tools": ("strategies", "tools"),
    "worker_contract": ("contract", "worker_contract"),
    "worker_errors": ("strategies", "worker_errors"),
}

__all__ = [
    "WORKER_ERRORS",
    "Behaviour",
    "BreakGrammar",
    "ContractViolation",
    "Fail",
    "FakeBehaviour",
    "FakeProvider",
    "FakeProviderStatistics",
    "FaultMix",
    "Hang",
    "RecordedRequest",
    "ScriptedWorker",
    "ScriptedWorkerStatistics",
    "Stall",
    "Succeed",
    "WorkerContract",
    "behaviours",
    "check_call",
    "check_worker",
    "check_worker_async",
    "fault_schedules",
    "generation_params",
    "messages",
    "open_fake_provider",
    "prompt_requests",
    "tools",
    "worker_contract",
    "worker_errors",
]


def __getattr__(name: str) -> Any:
    """Import ``name`` from its module on first use (PEP 562)."""
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # once imported, found without this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
