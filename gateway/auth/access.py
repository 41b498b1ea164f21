"""The rules: what of its tenant a Principal reaches, and whose a call it starts is.

The tenant always comes from the credential: a request that names another tenant is refused, one that
names none gets the key's. An agent's key reaches the calls whose ``agent`` is the key's, a manager's the
calls of its ``team``; admin and service keys the whole tenant. Calls are matched on the columns stored with
them (calls.tenant, team, agent), so a rule reads the same for a live call and a stored one.
"""

from __future__ import annotations

from dataclasses import replace

import grpc

from gateway.auth.credentials import Principal, Role
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.inputs import CallInfo


def forbidden(message: str) -> InputError:
    return InputError(ErrorCode.FORBIDDEN, message, grpc.StatusCode.PERMISSION_DENIED)


def unauthenticated(message: str) -> InputError:
    return InputError(ErrorCode.UNAUTHENTICATED, message, grpc.StatusCode.UNAUTHENTICATED)


def may_see(principal: Principal, tenant: str, team: str, agent: str) -> bool:
    """Whether ``principal`` may read or watch a call (or a report row) of this tenant, team and agent."""
    if tenant != principal.tenant:
        return False
    if principal.role is Role.AGENT:
        return agent == principal.agent
    if principal.role is Role.MANAGER:
        return team == principal.team
    return True


def check_may_see(principal: Principal, tenant: str, team: str, agent: str, call_id: str) -> None:
    if not may_see(principal, tenant, team, agent):
        raise forbidden(f"call {call_id!r} is not reachable with this key")


def owned_call(principal: Principal, info: CallInfo) -> CallInfo:
    """The metadata of a call ``principal`` starts: the key's tenant, and for an agent or a manager the
    key's agent or team. A value the key does not reach is refused, not silently replaced."""
    tenant = _own(info.tenant, principal.tenant, "tenant")
    agent, team = info.agent, info.team
    if principal.role is Role.AGENT:
        agent = _own(agent, principal.agent, "agent")
        team = team or principal.team
    elif principal.role is Role.MANAGER:
        team = _own(team, principal.team, "team")
    return replace(info, tenant=tenant, agent=agent, team=team)


def _own(given: str, own: str, name: str) -> str:
    if given and given != own:
        raise forbidden(f"metadata.{name} {given!r} is not this key's (it is {own!r}); leave it out")
    return own


def check_admin(principal: Principal) -> None:
    if principal.role is not Role.ADMIN:
        raise forbidden("only an admin key may do this")
