"""asyncconnmgr: an asyncio- and trio-native connection manager for peer-to-peer hosts."""

from __future__ import annotations

from ._decay import BumpFn as BumpFn
from ._decay import DecayFn as DecayFn
from ._decay import DecayingTag as DecayingTag
from ._decay import DecayingValue as DecayingValue
from ._decay import bump_overwrite as bump_overwrite
from ._decay import bump_sum_bounded as bump_sum_bounded
from ._decay import bump_sum_unbounded as bump_sum_unbounded
from ._decay import decay_expire_when_inactive as decay_expire_when_inactive
from ._decay import decay_fixed as decay_fixed
from ._decay import decay_linear as decay_linear
from ._decay import decay_none as decay_none
from ._diversity import UNKNOWN_GROUP as UNKNOWN_GROUP
from ._diversity import DiversityPolicy as DiversityPolicy
from ._diversity import DiversityReason as DiversityReason
from ._diversity import netgroup as netgroup
from ._errors import ConnManagerError as ConnManagerError
from ._errors import LimitExceededError as LimitExceededError
from ._errors import ManagerClosedError as ManagerClosedError
from ._events import TrimSubscription as TrimSubscription
from ._manager import ConnManager as ConnManager
from ._models import OUTCOMES as OUTCOMES
from ._models import TRIGGERS as TRIGGERS
from ._models import CandidateConn as CandidateConn
from ._models import ManagerInfo as ManagerInfo
from ._models import PeerStatus as PeerStatus
from ._models import TagInfo as TagInfo
from ._models import TrimResult as TrimResult
from ._models import Victim as Victim
from ._null import NullConnManager as NullConnManager
from ._policy import Candidate as Candidate
from ._policy import DefaultPolicy as DefaultPolicy
from ._policy import SortKeyTrimPolicy as SortKeyTrimPolicy
from ._policy import TrimPolicy as TrimPolicy
from ._policy import default_key as default_key
from .abc import Direction as Direction

__version__ = "0.2.0.dev0"

__all__ = [
    "OUTCOMES",
    "TRIGGERS",
    "UNKNOWN_GROUP",
    "BumpFn",
    "Candidate",
    "CandidateConn",
    "ConnManager",
    "ConnManagerError",
    "DecayFn",
    "DecayingTag",
    "DecayingValue",
    "DefaultPolicy",
    "Direction",
    "DiversityPolicy",
    "DiversityReason",
    "LimitExceededError",
    "ManagerClosedError",
    "ManagerInfo",
    "NullConnManager",
    "PeerStatus",
    "SortKeyTrimPolicy",
    "TagInfo",
    "TrimPolicy",
    "TrimResult",
    "TrimSubscription",
    "Victim",
    "bump_overwrite",
    "bump_sum_bounded",
    "bump_sum_unbounded",
    "decay_expire_when_inactive",
    "decay_fixed",
    "decay_linear",
    "decay_none",
    "default_key",
    "netgroup",
]
