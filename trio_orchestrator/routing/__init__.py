"""Routing: a model registry, strategies, fallbacks, budgets, and learning from outcomes."""

from .bandit import ArmStatistics, Bandit, reward
from .budget import BudgetExceeded, BudgetLedger, BudgetStatistics
from .registry import (
    CAPABILITIES,
    STRATEGIES,
    AliasConfig,
    AutoConfig,
    BanditConfig,
    BudgetConfig,
    ModelDeployment,
    ModelInfo,
    ModelRegistry,
    Route,
    RoutingConfig,
)
from .router import RouterStatistics, RouterWorker, build_router, falls_back, open_router
from .strategies import (
    Candidate,
    HealthCheck,
    RoutingDecision,
    StrategyContext,
    complexity_score,
    order,
)
from .tokens import estimate_prompt_tokens, precheck, required_capabilities
from .tracker import DeploymentStatistics, OutcomeTracker, TrackerStatistics

__all__ = [
    "CAPABILITIES",
    "STRATEGIES",
    "AliasConfig",
    "ArmStatistics",
    "AutoConfig",
    "Bandit",
    "BanditConfig",
    "BudgetConfig",
    "BudgetExceeded",
    "BudgetLedger",
    "BudgetStatistics",
    "Candidate",
    "DeploymentStatistics",
    "HealthCheck",
    "ModelDeployment",
    "ModelInfo",
    "ModelRegistry",
    "OutcomeTracker",
    "Route",
    "RouterStatistics",
    "RouterWorker",
    "RoutingConfig",
    "RoutingDecision",
    "StrategyContext",
    "TrackerStatistics",
    "build_router",
    "complexity_score",
    "estimate_prompt_tokens",
    "falls_back",
    "open_router",
    "order",
    "precheck",
    "required_capabilities",
    "reward",
]
