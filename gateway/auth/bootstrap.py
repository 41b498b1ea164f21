"""The first key of a deployment: ``CALLSENSE_BOOTSTRAP_KEY`` (a Kubernetes secret, a CI variable) is
registered as an admin key of ``CALLSENSE_BOOTSTRAP_TENANT`` ("default") when the database holds no key
yet. ``callsense up`` makes one and prints it once; elsewhere, ``callsense keys create`` after the fact.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import psycopg

from gateway.auth.credentials import Role, parse_key
from gateway.auth.key_store import KeyStore

log = logging.getLogger(__name__)

BOOTSTRAP_KEY_ENV = "CALLSENSE_BOOTSTRAP_KEY"
BOOTSTRAP_TENANT_ENV = "CALLSENSE_BOOTSTRAP_TENANT"
DEFAULT_TENANT = "default"


async def register_bootstrap_key(keys: KeyStore, env: Mapping[str, str] | None = None) -> bool:
    """Register the environment's bootstrap key if it is set and no key exists; True when registered."""
    env = os.environ if env is None else env
    token = env.get(BOOTSTRAP_KEY_ENV, "").strip()
    if not token:
        return False
    if parse_key(token) is None:
        raise ValueError(f"{BOOTSTRAP_KEY_ENV} is not a callsense key (csk_<12 hex>_<43 base64url>)")
    if await keys.has_keys():
        return False
    tenant = env.get(BOOTSTRAP_TENANT_ENV, "").strip() or DEFAULT_TENANT
    try:
        await keys.create_key(tenant, Role.ADMIN, name="bootstrap", token=token)
    except psycopg.errors.UniqueViolation:
        return False  # another replica registered it first
    log.info("registered the bootstrap admin key of tenant %r", tenant)
    return True
