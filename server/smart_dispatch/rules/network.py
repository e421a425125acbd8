"""The shape of durable-rules' alpha network, and how a ruleset is split to stay inside its limits.

durable-rules 2.0.28 compiles every condition into a tree of alpha nodes shared between rules
(`src/rules/rete.c`); an evaluation walks it depth first (`handleAlpha` in `events.c`). Its
fixed-size tables have limits that it does not all check, measured on this engine:

=====================================  ========  =============================================
what                                   at most   past it
=====================================  ========  =============================================
distinct non-`$nex` children of a node      511  512: every evaluation that reaches the node
                                                 spins forever; 513: `create_ruleset` spins
                                                 forever (open addressing with no empty slot)
`$nex` children and `$or` joins               127  reads past its table
rules ending on one node                    255  error 108 at compile time
rules of one engine ruleset                4096  error 106 at compile time
pending nodes of one evaluation              64  error 303 (`ERR_MAX_STACK_SIZE`) for the facts
                                                 that reach that far: a runtime failure
=====================================  ========  =============================================

Every spin holds the GIL inside C, so nothing else in the process runs and no signal handler
is called. `plan_shards` models the network node for node (sharing as `findAlpha` shares,
one join node per `$or` as `createForwardAlpha` makes) and places the rules, in order, into as
few engine rulesets ("shards") as keep every shard inside the limits. Each shard is evaluated on
its own and the fired rules are merged, so a large ruleset costs one `assert_fact` per shard.
A rule that cannot fit even alone is a `RuleFileError` at its line, naming the limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smart_dispatch.errors import RuleFileError, SmartDispatchError
from smart_dispatch.rules.model import Rule

#: Distinct non-`$nex` children of one alpha node (the engine's hash set has 512 slots and
#: needs one empty).
MAX_BRANCHES = 511
#: `$nex` children plus `$or` joins hanging off one node (a 128-slot list with a 0 sentinel).
MAX_ABSENCE_BRANCHES = 127
#: Rules whose condition ends on the same node (a 256-slot list with a 0 sentinel).
MAX_RULES_PER_NODE = 255
#: Rules of one engine ruleset (`MAX_ACTIONS`, less the adapter's catch-all rule).
MAX_RULES_PER_SHARD = 4095
#: Nodes an evaluation may have pending at once (`MAX_STACK_SIZE`).
MAX_PENDING = 64
#: Engine rulesets one rules version may be split into: each costs one evaluation per decision.
MAX_SHARDS = 32

#: The guard every condition gets (see engine.py): the session state never matches a rule.
STATE_GUARD: Mapping[str, Any] = {"$nex": {"$s": 1}}


@dataclass(eq=False)
class _Node:
    branches: dict[tuple[str, str, str, str], _Node] = field(default_factory=dict)  # non-$nex children
    absences: dict[tuple[str, str, str, str], _Node] = field(default_factory=dict)  # $nex children
    joins: list[_Node] = field(default_factory=list)  # $or join nodes fed by this node
    rules: int = 0

    def pushes(self) -> int:
        """Children an evaluation may push when it reaches this node, at worst: every absence
        and join, one equality per property (distinct values cannot both match), every other
        comparison."""
        equal_on: set[tuple[str, str]] = set()
        count = len(self.absences) + len(self.joins)
        for op, path, kind, _ in self.branches:
            if op == "$eq":  # the engine coerces loosely: literals of another type are apart
                equal_on.add((path, kind))
            else:
                count += 1
        return count + len(equal_on)

    def children(self) -> list[_Node]:
        return [*self.branches.values(), *self.absences.values(), *self.joins]


class _Overflow(SmartDispatchError):
    """A rule would break a limit of the shard being filled (`problem` names it). Caught in
    `_Shard.try_add`, which undoes the insertion: it never leaves this module."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Shard:
    """One engine ruleset's network, built rule by rule; an insertion that overflows is undone."""

    def __init__(self, check_pending: bool) -> None:
        self.check_pending = check_pending
        self.root = _Node()
        self.rules: list[Rule] = []
        self._undo: list[Any] = []
        # the engine adapter's catch-all rule: the guard alone, on the root
        self._atom("$nex", "$s", 1, self.root).rules = 1

    def try_add(self, rule: Rule) -> str | None:
        """Add `rule` when the shard stays inside the limits; otherwise leave it as it was and
        return the limit it would break."""
        self._undo = []
        if len(self.rules) >= MAX_RULES_PER_SHARD:
            return f"more than {MAX_RULES_PER_SHARD} rules in one engine ruleset"
        try:
            end = self._build(rule.when, self.root) if rule.when else self.root
            end = self._atom("$nex", "$s", 1, end)
            if end.rules >= MAX_RULES_PER_NODE:
                raise _Overflow(f"more than {MAX_RULES_PER_NODE} rules with this same condition")
            end.rules += 1
            self._undo.append(lambda: setattr(end, "rules", end.rules - 1))
            if self.check_pending and (pending := _pending(self.root)) > MAX_PENDING:
                raise _Overflow(
                    f"an evaluation could have {pending} conditions pending at once, more than the "
                    f"engine's {MAX_PENDING} (too many $nex, $or or comparison conditions side by side)"
                )
        except _Overflow as exc:
            for undo in reversed(self._undo):
                undo()
            return exc.problem
        self.rules.append(rule)
        return None

    def _build(self, cond: Mapping[str, Any], parent: _Node) -> _Node:
        ((key, value),) = cond.items()
        if key == "$and":
            node = parent
            for part in value:
                node = self._build(part, node)
            return node
        if key == "$or":
            join = _Node()
            for part in value:
                end = self._build(part, parent)
                _room_for_absence(end)
                end.joins.append(join)
                self._undo.append(end.joins.pop)
            return join
        if key.startswith("$"):
            ((path, literal),) = value.items()
            return self._atom(key, path, literal, parent)
        return self._atom("$eq", key, value, parent)

    def _atom(self, op: str, path: str, literal: Any, parent: _Node) -> _Node:
        ident = (op, path, type(literal).__name__, json.dumps(literal, sort_keys=True))
        table = parent.absences if op == "$nex" else parent.branches
        node = table.get(ident)
        if node is not None:
            return node
        if op == "$nex":
            _room_for_absence(parent)
        if op != "$nex" and len(parent.branches) >= MAX_BRANCHES:
            raise _Overflow(
                f"more than {MAX_BRANCHES} distinct conditions follow the same condition "
                "(the engine's limit per node)"
            )
        node = table[ident] = _Node()
        self._undo.append(lambda: table.pop(ident))
        return node


def _room_for_absence(node: _Node) -> None:
    if len(node.absences) + len(node.joins) >= MAX_ABSENCE_BRANCHES:
        raise _Overflow(f"more than {MAX_ABSENCE_BRANCHES} $nex conditions and $or joins on one node")


def _pending(root: _Node) -> int:
    """The most nodes the engine's depth-first walk can have on its stack, at worst."""
    memo: dict[int, int] = {}

    def need(node: _Node) -> int:
        known = memo.get(id(node))
        if known is not None:
            return known
        pushes = node.pushes()
        deepest = max((need(child) for child in node.children()), default=0)
        result = max(pushes, pushes - 1 + deepest) if pushes else 0
        memo[id(node)] = result
        return result

    return need(root)


def plan_shards(rules: Sequence[Rule]) -> list[list[Rule]]:
    """Split `rules` (in firing order) into engine rulesets that each stay inside the limits.
    Raises `RuleFileError` for a rule that fits in no ruleset alone, or when more than
    `MAX_SHARDS` would be needed.

    The stack bound is checked once per shard; only a shard that breaks it is placed again
    rule by rule with the (quadratic) check after every rule."""
    shards: list[list[Rule]] = []
    for shard in _first_fit(rules, check_pending=False):
        if _pending(shard.root) > MAX_PENDING:
            shards += [placed.rules for placed in _first_fit(shard.rules, check_pending=True)]
        else:
            shards.append(shard.rules)
    if len(shards) > MAX_SHARDS:
        rule = shards[MAX_SHARDS][0]
        raise RuleFileError(
            rule.file,
            rule.line,
            f"the ruleset needs {len(shards)} engine rulesets, more than {MAX_SHARDS} "
            f"(each holds at most {MAX_BRANCHES} distinct conditions after a shared one); "
            "merge rules with $or or move values into fewer conditions",
        )
    return shards


def _first_fit(rules: Sequence[Rule], *, check_pending: bool) -> list[_Shard]:
    shards: list[_Shard] = []
    for rule in rules:
        if any(shard.try_add(rule) is None for shard in shards):
            continue
        shard = _Shard(check_pending)
        problem = shard.try_add(rule)
        if problem is not None:
            raise RuleFileError(rule.file, rule.line, f"rule {rule.name!r}: {problem}")
        shards.append(shard)
        if len(shards) > MAX_SHARDS:
            break  # reported by plan_shards
    return shards
