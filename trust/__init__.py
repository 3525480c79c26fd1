"""The trust engine: policies, fast rules, client store, trust agent.

Every inbound message passes :meth:`TrustEngine.evaluate` before the agent runs; see
``docs/trust-policies.md`` and ``docs/trust-operations.md``.
"""

from trust.engine import TrustConfig as TrustConfig
from trust.engine import TrustEngine as TrustEngine
from trust.engine import TrustOutcome as TrustOutcome
from trust.engine import open_trust_engine as open_trust_engine
from trust.model import ConsultAgent as ConsultAgent
from trust.model import Decision as Decision
from trust.policy import Policy as Policy
from trust.policy import PolicyError as PolicyError
from trust.rules import decide as decide
