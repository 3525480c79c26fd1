"""The trust engine: policies, fast rules, client store, trust agent.

Every inbound message passes :meth:`TrustEngine.evaluate` before the agent runs; see
``docs/trust-policies.md`` and ``docs/trust-operations.md``.
"""

from trust._engine import TrustConfig as TrustConfig
from trust._engine import TrustEngine as TrustEngine
from trust._engine import TrustOutcome as TrustOutcome
from trust._engine import open_trust_engine as open_trust_engine
from trust._model import ConsultAgent as ConsultAgent
from trust._model import Decision as Decision
from trust._policy import Policy as Policy
from trust._policy import PolicyError as PolicyError
from trust._rules import decide as decide
from trust._stats import EngineSnapshot as EngineSnapshot
from trust._store.postgres import PgTx as PgTx
from trust._store.sqlite import SqliteBackend as SqliteBackend

__all__ = [
    "ConsultAgent",
    "Decision",
    "EngineSnapshot",
    "PgTx",
    "Policy",
    "PolicyError",
    "SqliteBackend",
    "TrustConfig",
    "TrustEngine",
    "TrustOutcome",
    "decide",
    "open_trust_engine",
]
