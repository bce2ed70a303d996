"""Tools for testing workers and what wraps them, the way :mod:`trio.testing` tests Trio code.

- :mod:`.strategies`: Hypothesis strategies for requests and fault schedules, and
  :class:`ScriptedWorker`, a worker that follows a fault schedule.
- :mod:`.contract`: the worker contract, as a base class for pytest (:class:`WorkerContract`)
  and as a function (:func:`check_worker`).
- :mod:`.fake_provider`: a real HTTP server speaking the OpenAI and Anthropic wire formats,
  with scripted faults (:func:`open_fake_provider`; its scripts are
  :class:`FakeBehaviour`, ``fake_provider.Behaviour``).
"""

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

__all__ = [
    "WORKER_ERRORS",
    "Behaviour",
    "BreakGrammar",
    "ContractViolation",
    "Fail",
    "FakeBehaviour",
    "FakeProvider",
    "FakeProviderStatistics",
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
