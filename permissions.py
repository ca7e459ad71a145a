"""Who may do what (SPEC section 8): the one table of permission rules.

Every endpoint that needs a role asks `allowed(action, actor, target)`, and db.py asks it
again inside the write step that acts (so a role change racing an action is decided by the
order of the two transactions, never by a stale read). Nothing else compares roles.
"""

from __future__ import annotations

import dataclasses
import enum


class Role(enum.StrEnum):
    """A server role; the order of the members is their rank."""

    MEMBER = "member"
    MODERATOR = "moderator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


CONSOLE = "(console)"  # the command line: the audit log's actor, allowed everything


@dataclasses.dataclass(frozen=True)
class Rule:
    """`least`: the lowest role allowed. `on_user`: the action has a target user, and then a
    moderator acts on members only, an admin on everyone but themselves (nobody acts on
    themselves)."""

    least: Role
    on_user: bool = False


RULES: dict[str, Rule] = {
    "setrole": Rule(Role.ADMIN, on_user=True),
    "banuser": Rule(Role.MODERATOR, on_user=True),
    "unbanuser": Rule(Role.MODERATOR, on_user=True),
    "timeoutuser": Rule(Role.MODERATOR, on_user=True),
    "deleteothers": Rule(Role.MODERATOR, on_user=True),  # someone else's public/channel message
    "getauditlog": Rule(Role.MODERATOR),
    "createinvite": Rule(Role.MODERATOR),
    "linkchannel": Rule(Role.ADMIN),
    "unlinkchannel": Rule(Role.ADMIN),
    "getusers": Rule(Role.MODERATOR),
    "getlinks": Rule(Role.MODERATOR),
}


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who acts: a user (id and role) or the command line (`id` None)."""

    id: int | None
    role: Role

    @classmethod
    def console(cls) -> Actor:
        return cls(None, Role.ADMIN)


def allowed(action: str, actor: Actor, target_id: int | None = None, target_role: str = "") -> bool:
    """Whether `actor` may do `action` (to the user `target_id` of role `target_role`; a
    message written on Discord or by a deleted account has no user: a member's)."""
    rule = RULES[action]
    if actor.id is None:  # the command line
        return True
    if actor.role.rank < rule.least.rank:
        return False
    if not rule.on_user:
        return True
    if target_id is not None and target_id == actor.id:
        return False
    target = Role(target_role or Role.MEMBER)
    return actor.role == Role.ADMIN or target == Role.MEMBER


def may_delete(actor: Actor, message: dict, sender_role: str, channel_creator: int | None) -> bool:
    """deletemessage: the author always; for someone else's `public` or `channel` message a
    moderator or admin (RULES["deleteothers"]), and for a `channel` message the channel's
    creator. DMs and `discord` messages stay their parties' own."""
    if message["sender_id"] is not None and message["sender_id"] == actor.id:
        return True
    if message["kind"] == "channel" and actor.id is not None and channel_creator == actor.id:
        return True
    if message["kind"] not in ("public", "channel"):
        return False
    return allowed("deleteothers", actor, message["sender_id"], sender_role)
