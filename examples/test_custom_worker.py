"""The contract test of the custom worker: two lines.

pip install 'trio-orchestrator[examples]'   # pytest, pytest-trio, Hypothesis
pytest examples/test_custom_worker.py
"""

from custom_worker import ShoutWorker

from trio_orchestrator.testing import worker_contract

TestShoutWorker = worker_contract(ShoutWorker, deterministic=True)
