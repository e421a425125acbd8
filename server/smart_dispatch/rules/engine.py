"""The durable-rules adapter: every engine-specific detail lives in this module.

We drive durable-rules' C engine (`durable_rules_engine`, shipped in the durable-rules package)
directly instead of through `durable.lang` / `durable.engine.Host`:

- no Host, so none of its self-rearming timer threads (they crashed the process under concurrent
  sessions); calls are synchronous, GIL-bound, made inline from the event loop;
- `assert_fact` fires every matching rule; we read the fired rule names from the action frames
  and complete them without dispatching Python actions (action dispatch is most of the cost);
  effects are applied afterwards in plain Python, in priority order;
- one unique session id per evaluation, deleted in `finally` (state otherwise lives forever and
  the 1,025th live session raises MemoryError);
- every condition gets `{"$nex": {"$s": 1}}` so the session's own state object never matches a
  rule (that loops forever inside C holding the GIL);
- an internal catch-all rule (lowest priority) always fires: deleting a session in which no rule
  fired frees an action context durable-rules never initialised (abort / SIGSEGV);
- a ruleset is registered under a unique versioned name and deleted with `close()`, so reloads
  can build a new version beside the old one;
- a ruleset larger than one engine ruleset can hold is split into shards (network.py), each
  evaluated in turn; the fired rules are merged in firing order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from durable import engine as _durable

from smart_dispatch.errors import EngineError as EngineError  # defined there, with the tree
from smart_dispatch.errors import SmartDispatchError
from smart_dispatch.rules.model import Rule, Ruleset
from smart_dispatch.rules.network import STATE_GUARD, plan_shards

_C = _durable.durable_rules_engine
_STATE_GUARD = dict(STATE_GUARD)
_CATCH_ALL = "__sd_catch_all__"
_LOWEST_PRIORITY = 65535
#: Distinct projected fact documents whose matches one compiled version remembers.
MEMO_SIZE = 4096


def to_durable(rules: Sequence[Rule]) -> dict[str, Any]:
    """The durable-rules JSON definition of `rules`: one rule per rule, guarded."""
    definition: dict[str, Any] = {}
    for rule in rules:
        condition = {"$and": [dict(rule.when), _STATE_GUARD]} if rule.when else dict(_STATE_GUARD)
        definition[rule.name] = {"pri": rule.priority, "all": [{"m": condition}]}
    definition[_CATCH_ALL] = {"pri": _LOWEST_PRIORITY, "all": [{"m": dict(_STATE_GUARD)}]}
    return definition


def condition_error(rule_name: str, when: Mapping[str, Any]) -> EngineError | None:
    """Compile one rule alone; the error durable-rules gives for it, or None when it is fine."""
    definition = {rule_name: {"all": [{"m": {"$and": [dict(when), _STATE_GUARD]} if when else _STATE_GUARD}]}}
    try:
        handle = _C.create_ruleset(f"check_{uuid.uuid4().hex}", json.dumps(definition))
    except Exception as exc:  # durable_rules_engine.error carries only a message
        return EngineError(f"durable-rules rejects the condition: {exc}")
    _C.delete_ruleset(handle)
    return None


class CompiledRules:
    """One ruleset version compiled into the engine (one or more engine rulesets, see
    network.py). Not thread-safe: call from one thread. Raises `RuleFileError` for a ruleset
    over the engine's limits and `EngineError` for one durable-rules refuses."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self._order = {rule.name: index for index, rule in enumerate(ruleset.rules)}
        self._paths = [path.split(".") for path in sorted(ruleset.referenced_paths)]
        self._sids = itertools.count()
        self._memo: dict[str, tuple[str, ...]] = {}
        self._handles: list[int] = []
        tag = f"sd_{ruleset.version}_{uuid.uuid4().hex[:8]}"
        try:
            for index, shard in enumerate(plan_shards(ruleset.rules)):
                definition = json.dumps(to_durable(shard))
                self._handles.append(_C.create_ruleset(f"{tag}_{index}", definition))
        except Exception as exc:
            self.close()
            if isinstance(exc, SmartDispatchError):
                raise
            raise EngineError(f"durable-rules rejects the ruleset: {exc}") from exc

    @property
    def shards(self) -> int:
        """Engine rulesets this version is split into (each costs one evaluation)."""
        return len(self._handles)

    def matches(self, facts: Mapping[str, Any]) -> list[str]:
        """Names of every rule whose condition holds for `facts`, in firing order.

        An evaluation depends on nothing but the projected facts (a fresh session each time), so
        the last `MEMO_SIZE` distinct projections are remembered with their answer."""
        if not self._handles:
            raise EngineError("ruleset is closed")
        try:
            document = json.dumps(project(facts, self._paths), allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:  # a non-finite number, or not a JSON value
            raise EngineError(f"durable-rules rejected the facts: {exc}") from exc
        known = self._memo.get(document)
        if known is not None:
            return list(known)
        matched = []
        for handle in self._handles:
            matched += self._evaluate(handle, document)
        if len(self._handles) > 1:
            matched.sort(key=self._order.__getitem__)
        if len(self._memo) >= MEMO_SIZE:
            del self._memo[next(iter(self._memo))]  # the oldest entry
        self._memo[document] = tuple(matched)
        return matched

    def _evaluate(self, handle: int, document: str) -> list[str]:
        sid = str(next(self._sids))
        session = f'{document[:-1]}{"," if len(document) > 2 else ""}"sid":"{sid}"}}'
        try:
            result = _C.assert_fact(handle, session)
        except Exception as exc:  # the engine refused the fact: no usable session was left
            with contextlib.suppress(Exception):
                _C.delete_state(handle, sid)
            raise EngineError(f"durable-rules rejected the facts: {exc}") from exc
        fired: list[str] = []
        try:
            state_handle = result[1]
            frame = _C.start_action_for_state(handle, state_handle)
            action = frame[1] if frame else None
            while action:
                fired.append(self._fired_rule(action))
                action = _C.complete_and_start_action(handle, state_handle)
        except Exception as exc:
            raise EngineError(f"durable-rules failed on the facts: {exc}") from exc
        finally:
            _C.delete_state(handle, sid)
        matched = [name for name in fired if name != _CATCH_ALL]
        matched.sort(key=self._order.__getitem__)
        return matched

    def _fired_rule(self, action: str) -> str:
        """The rule of one action frame, `{"<rule name>":{"m":{...}}}`. Rule names are plain
        (`[A-Za-z][A-Za-z0-9_.-]*`, nothing JSON escapes), so the name is the first key as
        written; anything else is parsed as JSON."""
        name = action[2 : action.find('"', 2)]
        if action.startswith('{"') and (name in self._order or name == _CATCH_ALL):
            return name
        (parsed,) = json.loads(action)
        return str(parsed)

    def close(self) -> None:
        """Free the engine's rulesets. Safe to call twice."""
        while self._handles:
            _C.delete_ruleset(self._handles.pop())


def project(facts: Mapping[str, Any], paths: Sequence[list[str]]) -> dict[str, Any]:
    """Copy only the `paths` of `facts` the rules reference (the engine caps the number of
    flattened properties per fact, and fewer properties match faster)."""
    out: dict[str, Any] = {}
    for parts in paths:
        node: Any = facts
        for part in parts:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if isinstance(node, Mapping):
                continue
            target = out
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = node
    return out
