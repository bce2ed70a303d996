"""The contract test of the custom worker: two lines."""

from custom_worker import ShoutWorker

from trio_orchestrator.testing import worker_contract

TestShoutWorker = worker_contract(ShoutWorker, deterministic=True)
