"""The simulator behind ``nhjc simulate``: pilot enterprises' gateways publishing readings.

Modules, from the data up: ``catalog`` (tables), ``enterprises`` (who, which items),
``load`` (shapes in time), ``plant`` (consumption, vectorised), ``meters`` (what meters
show), ``faults`` and ``frames`` (what goes on the wire), ``scenario`` (the deterministic
message stream), ``publisher`` (paho) and ``runner`` (the clock and the counters).
"""

from tools.sim.counters import Counters
from tools.sim.enterprises import (
    Enterprise,
    Gateway,
    Item,
    credit_code,
    invalid_credit_code,
    items_json,
    items_payload,
    items_records,
    pilot_enterprises,
)
from tools.sim.faults import (
    DEFAULT_RATES,
    FAULT_KINDS,
    FRAME_REASONS,
    MALFORMED_REASONS,
    READING_REASONS,
    FaultSpec,
)
from tools.sim.frames import Limits
from tools.sim.publisher import PublishError
from tools.sim.runner import Simulator, parse_time
from tools.sim.scenario import FaultEvent, Message, Scenario

__all__ = [
    "DEFAULT_RATES", "FAULT_KINDS", "FRAME_REASONS", "MALFORMED_REASONS", "READING_REASONS",
    "Counters", "Enterprise", "FaultEvent", "FaultSpec", "Gateway", "Item", "Limits", "Message",
    "PublishError", "Scenario", "Simulator", "credit_code", "invalid_credit_code", "items_json",
    "items_payload", "items_records", "parse_time", "pilot_enterprises",
]
